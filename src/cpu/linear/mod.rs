//! Linear cross-entropy on the CPU (`crate::linear`): logits tiles from the `gemm` crate, the
//! vocabulary-parallel row kernels (`cpu::shard`) on each tile, `combine` for the rows.
//!
//! The products see only the rows the plan computes (`LinearPlan::computed`), gathered as f32
//! (`Rows`); per-row inputs and outputs are gathered and scattered with them. f16/bf16 weight
//! rows are widened a tile at a time.

pub(crate) mod gemm;

use self::gemm::{Mode, Shape, Threads};
use super::row::{RowIo, CHUNK};
use super::shard::{row_backward, row_fill, row_focal, row_partial, weight_sum};
use super::simd::SimdLevel;
use crate::error::Result;
use crate::input::{Matrix, Targets};
use crate::linear::{GradientBuffer, LinearBatch, LinearRequest, Strategy, WeightLayout};
use crate::math::reduce::loss;
use crate::options::Reduction;
use crate::output::{Metrics, Output};
use crate::plan::linear::{LinearPlan, SEGMENT_TILES, TILE_COLUMNS, TILE_ROWS};
use crate::shard::{Combined, FocalPartial, RowFill, RowGradient, RowPartial, Shard};
use rayon::prelude::*;
use std::borrow::Cow;

/// Runs a checked linear cross-entropy call.
pub(crate) fn run(
    level: SimdLevel,
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
    request: &mut LinearRequest<'_>,
) -> Result<Output> {
    let call = Call::new(level, plan, batch, request.upstream);
    let mut grads = Gradients::of(request, plan);
    let (combined, sums) = match plan.strategy {
        Strategy::Chunked => call.chunked(&mut grads)?,
        _ => {
            let combined = call.fused_forward()?;
            if plan.gradient {
                call.fused_backward(&combined, &mut grads);
            }
            let sums = combined.sums;
            (combined, sums)
        }
    };
    grads.finish(plan);
    Ok(call.output(combined, sums, request))
}

/// One vocabulary shard's partials (`LinearCrossEntropy::shard_partials`; every row).
pub(crate) fn shard_partials(
    level: SimdLevel,
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
) -> Vec<RowPartial> {
    Call::new(level, plan, batch, None).fused_partials()
}

/// One vocabulary shard's focal sums (`LinearCrossEntropy::shard_focal`), its segments added.
pub(crate) fn shard_focal(
    level: SimdLevel,
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
    combined: &Combined,
) -> Vec<FocalPartial> {
    let segments = Call::new(level, plan, batch, None).focal_sums(combined);
    (0..plan.rows)
        .map(|row| {
            let (loss, g_sum) = segments.iter().fold((0f64, 0f64), |(l, g), s| {
                (l + s[row].loss as f64, g + s[row].g_sum as f64)
            });
            FocalPartial {
                loss: loss as f32,
                g_sum: g_sum as f32,
            }
        })
        .collect()
}

/// One vocabulary shard's gradients (`LinearCrossEntropy::shard_backward`): its rows of `dW`
/// and `db`, and its part of `dh`.
pub(crate) fn shard_backward(
    level: SimdLevel,
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
    combined: &Combined,
    request: &mut LinearRequest<'_>,
) {
    let call = Call::new(level, plan, batch, None);
    let mut grads = Gradients::of(request, plan);
    call.fused_backward(combined, &mut grads);
    grads.finish(plan);
}

/// The head's weight and bias, a block of classes at a time.
struct Head<'a> {
    weight: &'a Matrix<'a>,
    layout: WeightLayout,
    /// The bias widened once (V values).
    bias: Option<Vec<f32>>,
}

impl Head<'_> {
    /// Classes `columns` of `W` as f32 rows [width × D] (borrowed, or widened or transposed
    /// into `buf`) and their bias.
    fn block<'b>(
        &'b self,
        columns: std::ops::Range<usize>,
        buf: &'b mut Vec<f32>,
    ) -> (&'b [f32], Option<&'b [f32]>) {
        let bias = self.bias.as_deref().map(|b| &b[columns.clone()]);
        let w = match self.layout {
            WeightLayout::VocabMajor => self.weight.rows_f32(columns, buf),
            WeightLayout::HiddenMajor => self.weight.columns_f32(columns, buf),
        };
        (w, bias)
    }
}

/// Everything the strategies share: the plan, the computed rows' inputs gathered in their
/// order, and the head.
struct Call<'a> {
    level: SimdLevel,
    plan: &'a LinearPlan,
    /// `h` of the computed rows, f32 [N' × D].
    hidden: Cow<'a, [f32]>,
    head: Head<'a>,
    targets: Vec<i64>,
    class_weights: Option<&'a [f32]>,
    sample_weights: Option<Vec<f32>>,
    /// The upstream: per computed row for `Reduction::None`, else the scalar.
    upstream: Option<Vec<f32>>,
}

/// Columns of `W` widened (or borrowed) at once by the chunked strategy's products.
const PIECE_COLUMNS: usize = 8 * TILE_COLUMNS;

impl<'a> Call<'a> {
    fn new(
        level: SimdLevel,
        plan: &'a LinearPlan,
        batch: &'a LinearBatch<'a>,
        upstream: Option<&[f32]>,
    ) -> Self {
        let rows = &plan.computed;
        let gather = |v: &[f32]| rows.iter().map(|&r| v[r]).collect::<Vec<f32>>();
        let hidden = match batch.hidden.f32_data() {
            Some(h) if rows.len() == plan.rows => Cow::Borrowed(h),
            _ => {
                let mut buf = Vec::new();
                let mut h = Vec::with_capacity(rows.len() * plan.hidden);
                for &r in rows {
                    h.extend_from_slice(batch.hidden.rows_f32(r..r + 1, &mut buf));
                }
                Cow::Owned(h)
            }
        };
        let upstream = upstream.map(|u| match plan.options.reduction {
            Reduction::None => gather(u),
            _ => u.to_vec(),
        });
        let bias = batch
            .bias
            .as_ref()
            .map(|b| b.rows_f32(0..1, &mut Vec::new()).to_vec());
        Call {
            level,
            plan,
            hidden,
            head: Head {
                weight: &batch.weight,
                layout: batch.weight_layout,
                bias,
            },
            targets: rows
                .iter()
                .map(|&r| batch.targets.index(r).unwrap_or_default())
                .collect(),
            class_weights: batch.class_weights,
            sample_weights: batch.sample_weights.map(gather),
            upstream,
        }
    }

    /// Rows `range` of the computed rows' `h`.
    fn hidden(&self, range: std::ops::Range<usize>) -> &[f32] {
        let d = self.plan.hidden;
        &self.hidden[range.start * d..range.end * d]
    }

    /// The class weights of `shard`'s columns (the call's own are those of its shard).
    fn class_weights(&self, shard: Shard) -> Option<&[f32]> {
        let start = shard.start - self.plan.shard.start;
        self.class_weights.map(|w| &w[start..start + shard.width])
    }

    /// Columns `start..start + width` of this call's `W` as a shard of the whole vocabulary.
    fn shard(&self, start: usize, width: usize) -> Shard {
        Shard {
            start: self.plan.shard.start + start,
            width,
            classes: self.plan.shard.classes,
        }
    }

    /// `combine` over computed rows `range`, with the whole batch's denominators.
    fn combine(&self, range: std::ops::Range<usize>, partials: &[RowPartial]) -> Result<Combined> {
        let upstream = match (&self.upstream, self.plan.options.reduction) {
            (Some(u), Reduction::None) => Some(&u[range.clone()]),
            (u, _) => u.as_deref(),
        };
        self.plan.options.combine_rows(
            self.plan.vocab,
            &[partials],
            Targets::I64(&self.targets[range.clone()]),
            self.sample_weights.as_deref().map(|s| &s[range]),
            upstream,
            Some(self.plan.denominators),
        )
    }

    /// Runs `per_row` on every (computed row, forward tile) of the fused strategy: tasks own a
    /// row tile and a segment of columns, and fold the segment's tiles into one accumulator
    /// per row, in column order. Returns the accumulators by segment, then row.
    fn tiles<A: Copy + Send + Sync>(
        &self,
        init: A,
        per_row: impl Fn(&mut A, usize, &[f32], Shard, &mut [f32]) + Sync,
    ) -> Vec<Vec<A>> {
        let (n, vocab, d) = (self.plan.computed.len(), self.plan.vocab, self.plan.hidden);
        let row_tiles = n.div_ceil(TILE_ROWS);
        let segment_columns = SEGMENT_TILES * TILE_COLUMNS;
        let segments = vocab.div_ceil(segment_columns);
        let tasks: Vec<Vec<A>> = (0..row_tiles * segments)
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new(), vec![0f32; CHUNK]),
                |(x, w_buf, z_buf), task| {
                    let (tile, segment) = (task / segments, task % segments);
                    let r0 = tile * TILE_ROWS;
                    let rows = TILE_ROWS.min(n - r0);
                    let mut acc = vec![init; rows];
                    let end = vocab.min((segment + 1) * segment_columns);
                    for start in (segment * segment_columns..end).step_by(TILE_COLUMNS) {
                        let width = TILE_COLUMNS.min(end - start);
                        let (w, bias) = self.head.block(start..start + width, w_buf);
                        x.resize(rows * width, 0.0);
                        let out = Shape::dense(rows, width);
                        gemm::logits(
                            Threads::One,
                            (x, out),
                            self.hidden(r0..r0 + rows),
                            w,
                            bias,
                            d,
                        );
                        let shard = self.shard(start, width);
                        for (i, a) in acc.iter_mut().enumerate() {
                            per_row(a, r0 + i, &x[i * width..(i + 1) * width], shard, z_buf);
                        }
                    }
                    acc
                },
            )
            .collect();
        (0..segments)
            .map(|s| {
                (0..row_tiles)
                    .flat_map(|t| tasks[t * segments + s].iter().copied())
                    .collect()
            })
            .collect()
    }

    /// Every computed row's partial over the call's columns: tiles folded per segment, the
    /// segments merged in column order.
    fn fused_partials(&self) -> Vec<RowPartial> {
        let options = &self.plan.options;
        let segments = self.tiles(RowPartial::default(), |acc, row, x, shard, z_buf| {
            let w = self.class_weights(shard);
            let p = row_partial(
                self.level,
                options,
                shard,
                (x, self.targets[row]),
                (w, weight_sum(shard, w)),
                z_buf,
            );
            *acc = acc.merge(&p);
        });
        (0..self.plan.computed.len())
            .map(|row| {
                segments
                    .iter()
                    .fold(RowPartial::default(), |acc, s| acc.merge(&s[row]))
            })
            .collect()
    }

    /// The focal round's sums of every computed row over the call's columns, one slice per
    /// segment (`combine_focal` adds them in order).
    fn focal_sums(&self, combined: &Combined) -> Vec<Vec<FocalPartial>> {
        let options = &self.plan.options;
        let segments = self.tiles((0f64, 0f64), |acc, row, x, shard, _| {
            let r = &combined.rows[row];
            let f = row_focal(self.level, options, shard, x, self.class_weights(shard), r);
            *acc = (acc.0 + f.loss as f64, acc.1 + f.g_sum as f64);
        });
        segments
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&(loss, g_sum)| FocalPartial {
                        loss: loss as f32,
                        g_sum: g_sum as f32,
                    })
                    .collect()
            })
            .collect()
    }

    /// The fused forward: every row's partial over the vocabulary, combined (and the focal
    /// round's sums added when the options need them).
    fn fused_forward(&self) -> Result<Combined> {
        let partials = self.fused_partials();
        let mut combined = self.combine(0..partials.len(), &partials)?;
        if combined.needs_focal_round() {
            let sums = self.focal_sums(&combined);
            let views: Vec<&[FocalPartial]> = sums.iter().map(|s| &s[..]).collect();
            self.plan.options.combine_focal(&mut combined, &views)?;
        }
        Ok(combined)
    }

    /// `G = dloss/dx` of computed rows `r0..r0 + rows` over columns `start..start + width`
    /// into `g` (row stride `width`): the logits from the head's rows `w` and `bias`, then
    /// each row's gradient in place from its coefficients in `combined`.
    #[allow(clippy::type_complexity)]
    fn gradient_block(
        &self,
        g: &mut [f32],
        ((r0, rows), (start, width), (w, bias)): (
            (usize, usize),
            (usize, usize),
            (&[f32], Option<&[f32]>),
        ),
        combined: &Combined,
    ) {
        let out = Shape::dense(rows, width);
        let h = self.hidden(r0..r0 + rows);
        gemm::logits(Threads::Pool, (g, out), h, w, bias, self.plan.hidden);
        let shard = self.shard(start, width);
        self.backward_in_place(&mut g[..rows * width], shard, &combined.rows[r0..r0 + rows]);
    }

    /// Overwrites each row of `x` (logits of `shard`'s columns, one row per entry of `rows`)
    /// with its gradient.
    fn backward_in_place(&self, x: &mut [f32], shard: Shard, rows: &[RowGradient]) {
        let cw = self.class_weights(shard);
        x.par_chunks_mut(shard.width)
            .zip(rows)
            .for_each(|(row, r)| {
                if r.fill == RowFill::Compute {
                    let io = RowIo::InPlace(row);
                    row_backward(self.level, &self.plan.options, shard, io, cw, r);
                } else {
                    row_fill(row, r);
                }
            });
    }

    /// The fused backward: vocabulary chunk by chunk in order, each over row groups in order,
    /// `G` recomputed, then `dW[chunk] (+)= Gᵀ·h`, `db[chunk] += Σ_rows G`, `dh += G·W[chunk]`.
    fn fused_backward(&self, combined: &Combined, grads: &mut Gradients<'_, '_>) {
        let (n, vocab) = (self.plan.computed.len(), self.plan.vocab);
        let (columns, group) = (self.plan.chunk_columns, self.plan.group_rows);
        let mut g = Vec::new();
        let mut w_buf = Vec::new();
        for (chunk, start) in (0..vocab).step_by(columns).enumerate() {
            let width = columns.min(vocab - start);
            let (w, bias) = self.head.block(start..start + width, &mut w_buf);
            for (index, r0) in (0..n).step_by(group).enumerate() {
                let rows = group.min(n - r0);
                g.resize(rows * width, 0.0);
                let block = ((r0, rows), (start, width), (w, bias));
                self.gradient_block(&mut g, block, combined);
                let shape = Shape::dense(rows, width);
                grads.add(
                    self,
                    (&g, shape),
                    (r0, start),
                    (w, (index == 0, chunk == 0)),
                );
            }
        }
    }

    /// The chunked strategy: a group of rows' logits at a time, forward, focal round and
    /// gradient in place, then the products; returns the rows' combined results (concatenated
    /// over groups) and the loss sums.
    fn chunked(&self, grads: &mut Gradients<'_, '_>) -> Result<(Combined, (f64, f64))> {
        let (n, vocab) = (self.plan.computed.len(), self.plan.vocab);
        let group = self.plan.group_rows;
        let options = &self.plan.options;
        let whole = self.shard(0, vocab);
        let cw = self.class_weights(whole);
        let mut x = Vec::new();
        let mut w_buf = Vec::new();
        let mut all = Combined::default();
        let mut sums = (0f64, 0f64);
        for (index, r0) in (0..n).step_by(group).enumerate() {
            let rows = group.min(n - r0);
            x.resize(rows * vocab, 0.0);
            for start in (0..vocab).step_by(PIECE_COLUMNS) {
                let width = PIECE_COLUMNS.min(vocab - start);
                let (w, bias) = self.head.block(start..start + width, &mut w_buf);
                let out = Shape {
                    rows,
                    cols: width,
                    stride: vocab,
                };
                let h = self.hidden(r0..r0 + rows);
                gemm::logits(
                    Threads::Pool,
                    (&mut x[start..], out),
                    h,
                    w,
                    bias,
                    self.plan.hidden,
                );
            }
            let total = cw.map_or(vocab as f32, |_| weight_sum(whole, cw));
            let partials: Vec<RowPartial> = x
                .par_chunks(vocab)
                .enumerate()
                .map_init(
                    || vec![0f32; CHUNK],
                    |z_buf, (i, row)| {
                        let y = self.targets[r0 + i];
                        row_partial(self.level, options, whole, (row, y), (cw, total), z_buf)
                    },
                )
                .collect();
            let mut combined = self.combine(r0..r0 + rows, &partials)?;
            if combined.needs_focal_round() {
                let focal: Vec<FocalPartial> = x
                    .par_chunks(vocab)
                    .zip(&combined.rows)
                    .map(|(row, r)| row_focal(self.level, options, whole, row, cw, r))
                    .collect();
                options.combine_focal(&mut combined, &[&focal])?;
            }
            if self.plan.gradient {
                self.backward_in_place(&mut x, whole, &combined.rows);
                for (piece, start) in (0..vocab).step_by(PIECE_COLUMNS).enumerate() {
                    let width = PIECE_COLUMNS.min(vocab - start);
                    let (w, _) = self.head.block(start..start + width, &mut w_buf);
                    let shape = Shape {
                        rows,
                        cols: width,
                        stride: vocab,
                    };
                    grads.add(
                        self,
                        (&x[start..], shape),
                        (r0, start),
                        (w, (index == 0, piece == 0)),
                    );
                }
            }
            sums = (sums.0 + combined.sums.0, sums.1 + combined.sums.1);
            all.append(combined);
        }
        Ok((all, sums))
    }

    /// The call's output from the computed rows' results.
    fn output(&self, combined: Combined, sums: (f64, f64), request: &LinearRequest<'_>) -> Output {
        let reduction = self.plan.options.reduction;
        let want_rows = request.row_losses || reduction == Reduction::None;
        let out = combined.output;
        let row_losses = want_rows.then(|| {
            let mut all = vec![0f32; self.plan.rows];
            for (&row, &v) in self
                .plan
                .computed
                .iter()
                .zip(out.row_losses.iter().flatten())
            {
                all[row] = v;
            }
            all
        });
        Output {
            loss: loss(reduction, sums, self.plan.denominators).map(|v| v as f32),
            row_losses,
            lse: if request.lse { out.lse } else { None },
            metrics: if request.metrics { out.metrics } else { None },
        }
    }
}

/// Combined results of consecutive row groups, appended in order.
trait Append {
    fn append(&mut self, next: Combined);
}

impl Append for Combined {
    fn append(&mut self, next: Combined) {
        let out = &mut self.output;
        let extend = |a: &mut Option<Vec<f32>>, b: Option<Vec<f32>>| {
            a.get_or_insert_with(Vec::new)
                .extend(b.into_iter().flatten())
        };
        extend(&mut out.row_losses, next.output.row_losses);
        extend(&mut out.lse, next.output.lse);
        if let Some(m) = next.output.metrics {
            let all: &mut Metrics = out.metrics.get_or_insert_with(Metrics::default);
            all.argmax.extend(m.argmax);
            all.correct.extend(m.correct);
            all.target_prob.extend(m.target_prob);
            all.entropy.extend(m.entropy);
            all.confidence.extend(m.confidence);
            all.valid.extend(m.valid);
        }
        self.rows.extend(next.rows);
    }
}

/// The caller's gradient buffers while a call runs. `dh` goes straight into the caller's
/// buffer when every row is computed, else into `dh_rows` (the computed rows) and is
/// scattered at the end; `db` is summed in f64 and written at the end.
struct Gradients<'r, 'g> {
    dh: Option<&'r mut GradientBuffer<'g>>,
    dh_rows: Option<Vec<f32>>,
    dw: Option<&'r mut GradientBuffer<'g>>,
    db: Option<&'r mut GradientBuffer<'g>>,
    db_sums: Vec<f64>,
}

impl<'r, 'g> Gradients<'r, 'g> {
    fn of(request: &'r mut LinearRequest<'g>, plan: &LinearPlan) -> Self {
        let all = plan.computed.len() == plan.rows;
        let mut grads = Gradients {
            dh_rows: (request.hidden_gradient.is_some() && !all)
                .then(|| vec![0f32; plan.computed.len() * plan.hidden]),
            db_sums: if request.bias_gradient.is_some() {
                vec![0f64; plan.vocab]
            } else {
                Vec::new()
            },
            dh: request.hidden_gradient.as_mut(),
            dw: request.weight_gradient.as_mut(),
            db: request.bias_gradient.as_mut(),
        };
        // With no computed rows (or no columns) no product writes: the written buffers are
        // zeros.
        if plan.computed.is_empty() || plan.vocab == 0 {
            for g in [&mut grads.dh, &mut grads.dw].into_iter().flatten() {
                if !g.adds() {
                    g.data().fill(0.0);
                }
            }
        }
        grads
    }

    /// Adds one gradient block `g` (rows from computed row `r0`, columns from `start`, the
    /// head's rows `w` for those columns) into `dW`, `db` and `dh`. `first.0`: the first block
    /// of these columns (it writes `dW` in write mode); `first.1`: the first block of these
    /// rows (it writes `dh`).
    fn add(
        &mut self,
        call: &Call<'_>,
        (g, shape): (&[f32], Shape),
        (r0, start): (usize, usize),
        (w, first): (&[f32], (bool, bool)),
    ) {
        let d = call.plan.hidden;
        let (rows, width) = (shape.rows, shape.cols);
        if let Some(dw) = self.dw.as_mut() {
            let mode = if first.0 && !dw.adds() {
                Mode::Write
            } else {
                Mode::Add
            };
            let h = call.hidden(r0..r0 + rows);
            match call.head.layout {
                WeightLayout::VocabMajor => {
                    let dw = &mut dw.data()[start * d..(start + width) * d];
                    gemm::weight_gradient(Threads::Pool, mode, dw, (g, shape), h, d);
                }
                WeightLayout::HiddenMajor => {
                    let dw = (&mut dw.data()[start..], call.plan.vocab);
                    gemm::weight_gradient_hidden_major(Threads::Pool, mode, dw, (g, shape), h, d);
                }
            }
        }
        if !self.db_sums.is_empty() {
            self.db_sums[start..start + width]
                .par_chunks_mut(256)
                .enumerate()
                .for_each(|(b, sums)| {
                    for r in 0..rows {
                        let row = &g[r * shape.stride + b * 256..];
                        for (s, v) in sums.iter_mut().zip(row) {
                            *s += *v as f64;
                        }
                    }
                });
        }
        let dh = match (&mut self.dh_rows, self.dh.as_mut()) {
            (Some(rows_buf), _) => Some((&mut rows_buf[..], false)),
            (None, Some(dh)) => {
                let adds = dh.adds();
                Some((dh.data(), adds))
            }
            (None, None) => None,
        };
        if let Some((dh, adds)) = dh {
            let mode = if first.1 && !adds {
                Mode::Write
            } else {
                Mode::Add
            };
            let dh = &mut dh[r0 * d..(r0 + rows) * d];
            gemm::hidden_gradient(Threads::Pool, mode, dh, (g, shape), w, d);
        }
    }

    /// Scatters `dh` of the computed rows and writes `db`.
    fn finish(self, plan: &LinearPlan) {
        let d = plan.hidden;
        if let (Some(rows), Some(dh)) = (self.dh_rows, self.dh) {
            let adds = dh.adds();
            let out = dh.data();
            if !adds {
                out.fill(0.0);
            }
            for (i, &r) in plan.computed.iter().enumerate() {
                let src = &rows[i * d..(i + 1) * d];
                for (o, v) in out[r * d..(r + 1) * d].iter_mut().zip(src) {
                    *o = if adds { *o + v } else { *v };
                }
            }
        }
        if let Some(db) = self.db {
            let adds = db.adds();
            for (o, s) in db.data().iter_mut().zip(&self.db_sums) {
                *o = if adds { *o + *s as f32 } else { *s as f32 };
            }
        }
    }
}
