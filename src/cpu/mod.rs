//! The SIMD CPU backend.
//!
//! Rows are cut into blocks of about [`BLOCK_ELEMENTS`] values (whole samples for the
//! `(N, C, d…)` layout), blocks run in parallel on rayon's pool, and every per-row result
//! comes back in row order; the batch loss is summed block by block in that order, in f64, so
//! the bits do not depend on the number of threads. Each row is read once by the fused forward
//! ([`row::Forward`]) and, for a gradient, once more from cache by [`row::Backward`]. Focal
//! loss with smoothing or soft targets reads the row once more in between (`focal`): every
//! class's `(1 − p)^γ` needs the row's final log-sum-exp.
//!
//! Contiguous f32 rows are read in place. f16/bf16 rows and strided `(N, C, d…)` rows are first
//! widened (or gathered) into one row-sized f32 buffer per block, and their gradients written
//! back from it.

mod exp;
mod focal;
pub(crate) mod row;
pub(crate) mod scalar;
mod shard;
pub mod simd;

pub(crate) use shard::{shard_backward, shard_focal, shard_partials};

pub use simd::SimdLevel;

use crate::error::Result;
use crate::input::{Batch, Dtype, Element, Layout, Storage, Targets};
use crate::options::InputKind;
use crate::output::{Gradient, Metrics, Output, Request};
use crate::plan::{Loss, Plan};
use rayon::prelude::*;
use row::{Backward, Exps, ExpsIo, Forward, Rescale, RowIo, Transform};
use scalar::{term, ProbTarget};

/// Values per parallel block (256 KiB of f32): large enough to amortize scheduling, small
/// enough to balance 2..64 cores on a typical batch.
pub(crate) const BLOCK_ELEMENTS: usize = 1 << 16;

/// Runs a checked plan on the CPU at `level`.
pub(crate) fn run(
    level: SimdLevel,
    plan: &Plan,
    batch: Batch<'_>,
    request: Request<'_>,
) -> Result<Output> {
    let Batch {
        logits,
        targets,
        class_weights,
        pos_weight,
        sample_weights,
    } = batch;
    let want_rows = request.row_losses || plan.reduction == crate::Reduction::None;
    let ctx = Ctx {
        level,
        plan,
        targets,
        w: class_weights,
        pos_weight,
        sample_weights,
        upstream: request.upstream,
        want_metrics: request.metrics,
    };
    let in_place = matches!(request.gradient, Gradient::InPlace);
    let grad = match request.gradient {
        Gradient::Into(g) => Some(g),
        _ => None,
    };
    let blocks = match logits.storage {
        Storage::F32(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::F16(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::Bf16(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::F32Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
        Storage::F16Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
        Storage::Bf16Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
    };
    Ok(ctx.assemble(blocks, want_rows, request.lse))
}

/// What one row gives.
#[derive(Debug, Clone, Copy, Default)]
struct RowResult {
    loss: f32,
    ce: f64,
    z_loss: f64,
    lse: f32,
    /// `lse` as `max + log_sum` (see [`row::Backward::log_sum`]).
    max: f32,
    log_sum: f32,
    argmax: u32,
    correct: bool,
    target_prob: f32,
    entropy: f32,
    confidence: f32,
    valid: bool,
    /// The cross-entropy part's coefficient of `p[c]` in the gradient (before scaling).
    p_coefficient: f32,
    /// Focal loss with index targets and no smoothing: `w[y]·g[y]`, the target's coefficient
    /// in place of `(1−ε)·w[y]` (0 otherwise).
    focal_target: f32,
}

/// What one block gives: its rows in order, and BCE's per-element losses (row-major).
#[derive(Debug, Default)]
struct BlockOut {
    rows: Vec<RowResult>,
    elements: Vec<f32>,
}

/// A block of logits, read-only or writable.
enum Data<'a, T> {
    Shared(&'a [T]),
    Exclusive(&'a mut [T]),
}

impl<T> Data<'_, T> {
    fn get(&self) -> &[T] {
        match self {
            Data::Shared(d) => d,
            Data::Exclusive(d) => d,
        }
    }
}

struct Ctx<'a> {
    level: SimdLevel,
    plan: &'a Plan,
    targets: Targets<'a>,
    w: Option<&'a [f32]>,
    pos_weight: Option<&'a [f32]>,
    sample_weights: Option<&'a [f32]>,
    upstream: Option<&'a [f32]>,
    want_metrics: bool,
}

impl Ctx<'_> {
    /// Gathers the blocks' rows into the output; sums the loss in row order, in f64.
    fn assemble(&self, blocks: Vec<BlockOut>, want_rows: bool, want_lse: bool) -> Output {
        let rows: Vec<RowResult> = blocks.iter().flat_map(|b| b.rows.iter().copied()).collect();
        let (ce, z_loss) = rows
            .iter()
            .fold((0f64, 0f64), |(ce, z), r| (ce + r.ce, z + r.z_loss));
        let mut out = Output {
            loss: self.plan.reduce(ce, z_loss).map(|v| v as f32),
            ..Output::default()
        };
        if let Loss::Binary(_) = self.plan.loss {
            if want_rows {
                let row_major: Vec<f32> = blocks.into_iter().flat_map(|b| b.elements).collect();
                out.row_losses = Some(match self.plan.layout {
                    Layout::Rows => row_major,
                    layout => {
                        let classes = self.plan.classes;
                        let mut v = vec![0f32; row_major.len()];
                        for (i, &loss) in row_major.iter().enumerate() {
                            v[layout.offset(i / classes, i % classes, classes)] = loss;
                        }
                        v
                    }
                });
            }
            return out;
        }
        if want_rows {
            out.row_losses = Some(rows.iter().map(|r| r.loss).collect());
        }
        if want_lse {
            out.lse = Some(rows.iter().map(|r| r.lse).collect());
        }
        if self.want_metrics {
            out.metrics = Some(Metrics {
                argmax: rows.iter().map(|r| r.argmax).collect(),
                correct: rows.iter().map(|r| r.correct).collect(),
                target_prob: rows.iter().map(|r| r.target_prob).collect(),
                entropy: rows.iter().map(|r| r.entropy).collect(),
                confidence: rows.iter().map(|r| r.confidence).collect(),
                valid: rows.iter().map(|r| r.valid).collect(),
            });
        }
        out
    }

    /// Cuts the data (and the gradient) into blocks and runs them in parallel.
    fn drive<T: Element>(
        &self,
        data: Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
    ) -> Vec<BlockOut> {
        let classes = self.plan.classes;
        let unit = self.plan.layout.rows_per_block() * classes;
        let block = unit * (BLOCK_ELEMENTS / unit).max(1);
        let sources: Vec<Data<T>> = match data {
            Data::Shared(d) => d.chunks(block).map(Data::Shared).collect(),
            Data::Exclusive(d) => d.chunks_mut(block).map(Data::Exclusive).collect(),
        };
        let grads: Vec<Option<&mut [f32]>> = match grad {
            Some(g) => g.chunks_mut(block).map(Some).collect(),
            None => sources.iter().map(|_| None).collect(),
        };
        let block_rows = block / classes;
        sources
            .into_par_iter()
            .zip(grads)
            .enumerate()
            .map(|(b, (src, grad))| self.block(b * block_rows, src, grad, in_place))
            .collect()
    }

    /// One block: forward (and backward) of each of its rows.
    fn block<T: Element>(
        &self,
        first_row: usize,
        mut src: Data<'_, T>,
        mut grad: Option<&mut [f32]>,
        in_place: bool,
    ) -> BlockOut {
        let classes = self.plan.classes;
        let layout = self.plan.layout;
        let rows = src.get().len() / classes;
        let direct = T::DTYPE == Dtype::F32 && layout == Layout::Rows;
        let wants_grad = in_place || grad.is_some();
        // Row scratch, allocated only for the rows that need a gathered copy.
        let gathers_targets = matches!(self.targets, Targets::Dense(_)) && layout != Layout::Rows;
        let gathers_logits = !direct || matches!(self.plan.loss, Loss::Binary(_));
        let mut x_buf = vec![0f32; if gathers_logits { classes } else { 0 }];
        let mut t_buf = vec![0f32; if gathers_targets { classes } else { 0 }];
        let mut g_buf = Vec::new();
        let mut z_buf = vec![0f32; row::CHUNK];
        // The forward keeps its exps for the backward, in the gradient row when that is
        // separate from the logits, else in `e_buf`.
        let keep_exps = wants_grad && self.backward_rescales();
        let separate_grad = direct && !in_place && grad.is_some();
        let mut e_buf = vec![
            0f32;
            if keep_exps && !separate_grad {
                classes
            } else {
                0
            }
        ];
        let mut shifts = vec![0f32; classes.div_ceil(row::CHUNK)];
        let mut out = BlockOut {
            rows: Vec::with_capacity(rows),
            elements: Vec::new(),
        };
        if let Loss::Binary(_) = self.plan.loss {
            out.elements = vec![0f32; rows * classes];
            g_buf = vec![0f32; classes];
        }
        for i in 0..rows {
            let row = first_row + i;
            let span = i * classes..(i + 1) * classes;
            if !direct {
                gather(src.get(), layout, i, &mut x_buf);
            }
            let t: Option<&[f32]> = match self.targets {
                Targets::Dense(t) if layout == Layout::Rows => {
                    Some(&t[row * classes..(row + 1) * classes])
                }
                Targets::Dense(t) => {
                    gather(&t[first_row * classes..], layout, i, &mut t_buf);
                    Some(&t_buf)
                }
                _ => None,
            };
            let x: &[f32] = if direct {
                bytemuck::cast_slice(&src.get()[span.clone()])
            } else {
                &x_buf
            };

            let sample_weight = self.sample_weights.map_or(1.0, |s| s[row]);
            if let Loss::Binary(options) = self.plan.loss {
                let losses = &mut out.elements[span.clone()];
                let g = wants_grad.then_some(&mut g_buf[..]);
                let ce = scalar::binary_row(
                    x,
                    t.unwrap_or(&[]),
                    self.w,
                    self.pos_weight,
                    scalar::BinaryOptions {
                        smoothing: options.label_smoothing,
                        gamma: options.focal_gamma,
                        alpha: options.focal_alpha,
                        sample_weight,
                    },
                    losses,
                    g,
                    |c| {
                        self.plan
                            .row_scales(self.upstream, layout.offset(row, c, classes), 1.0)
                            .0
                    },
                );
                out.rows.push(RowResult {
                    ce,
                    valid: true,
                    ..RowResult::default()
                });
                if wants_grad {
                    x_buf.copy_from_slice(&g_buf);
                    self.write_back(&mut src, grad.as_deref_mut(), in_place, i, &x_buf);
                }
                continue;
            }

            let exps = keep_exps.then(|| Exps {
                values: match grad.as_deref_mut() {
                    Some(g) if separate_grad => &mut g[span.clone()],
                    _ => &mut e_buf[..],
                },
                shifts: &mut shifts[..],
            });
            let mut result = self.forward(row, x, t, &mut z_buf, exps);
            // NaN rows are decided before the sample weight (0·inf must not turn a row NaN).
            let nan_row = result.loss.is_nan();
            if sample_weight != 1.0 {
                result.ce *= sample_weight as f64;
                result.z_loss *= sample_weight as f64;
                result.loss = if nan_row {
                    f32::NAN
                } else {
                    (result.ce + result.z_loss) as f32
                };
            }
            out.rows.push(result);
            if !wants_grad {
                continue;
            }
            let (a, b) = self.plan.row_scales(self.upstream, row, sample_weight);
            let fill = if !result.valid {
                Some(0.0)
            } else if nan_row {
                Some(f32::NAN)
            } else {
                None
            };
            match (direct, &mut src, grad.as_deref_mut()) {
                (true, Data::Exclusive(d), _) if in_place => {
                    let dx: &mut [f32] = bytemuck::cast_slice_mut(&mut d[span]);
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    self.backward(row, RowIo::InPlace(dx), t, &result, (a, b), fill, kept);
                }
                (true, data, Some(g)) => {
                    let x: &[f32] = bytemuck::cast_slice(&data.get()[span.clone()]);
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    self.backward(
                        row,
                        RowIo::Separate(x, &mut g[span]),
                        t,
                        &result,
                        (a, b),
                        fill,
                        kept,
                    );
                }
                _ => {
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    let io = RowIo::InPlace(&mut x_buf);
                    self.backward(row, io, t, &result, (a, b), fill, kept);
                    self.write_back(&mut src, grad.as_deref_mut(), in_place, i, &x_buf);
                }
            }
        }
        out
    }

    /// Writes a row's gradient from `dx` into the gradient block or over the logits.
    fn write_back<T: Element>(
        &self,
        src: &mut Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
        i: usize,
        dx: &[f32],
    ) {
        let layout = self.plan.layout;
        match (grad, src) {
            (Some(g), _) => scatter(dx, layout, i, g),
            (None, Data::Exclusive(d)) if in_place => match layout {
                Layout::Rows => T::narrow(dx, &mut d[i * dx.len()..(i + 1) * dx.len()]),
                _ => {
                    let classes = dx.len();
                    for (c, &v) in dx.iter().enumerate() {
                        d[layout.offset(i, c, classes)] = T::from_f32(v);
                    }
                }
            },
            _ => {}
        }
    }

    /// Forward of one softmax row (logits or probabilities).
    fn forward(
        &self,
        row: usize,
        x: &[f32],
        t: Option<&[f32]>,
        z_buf: &mut [f32],
        exps: Option<Exps<'_>>,
    ) -> RowResult {
        let opts = self.plan.softmax();
        let classes = self.plan.classes;
        let eps = opts.label_smoothing as f64;
        let c_f = classes as f64;
        let index = self.targets.index(row);
        let valid = index != Some(opts.ignore_index);
        let w = |c: usize| self.w.map_or(1.0, |w| w[c] as f64);
        let w_sum = self.plan.class_weight_sum;

        if let InputKind::Probabilities { eps: floor } = opts.input {
            let target = match (t, index) {
                (Some(t), _) => ProbTarget::Dense(t),
                (None, Some(y)) if valid => ProbTarget::Index(y as usize),
                _ => ProbTarget::Index(0),
            };
            let r = scalar::probability_row(x, target, prob_options(&opts, floor), self.w);
            let (target_prob, correct) = match target {
                ProbTarget::Dense(t) => (
                    t.iter()
                        .zip(x)
                        .map(|(&t, &q)| t as f64 * (q as f64).clamp(floor as f64, 1.0))
                        .sum::<f64>(),
                    crate::reference::first_max(&t.iter().map(|&v| v as f64).collect::<Vec<_>>())
                        == r.argmax,
                ),
                ProbTarget::Index(y) if valid => {
                    ((x[y] as f64).clamp(floor as f64, 1.0), r.argmax == y as u32)
                }
                _ => (0.0, false),
            };
            let ce = if valid { r.ce } else { 0.0 };
            return RowResult {
                loss: ce as f32,
                ce,
                z_loss: 0.0,
                lse: 0.0,
                max: 0.0,
                log_sum: 0.0,
                argmax: r.argmax,
                correct,
                target_prob: target_prob as f32,
                entropy: r.entropy as f32,
                confidence: r.confidence as f32,
                valid,
                p_coefficient: 0.0,
                focal_target: 0.0,
            };
        }

        let transform = Transform {
            scale: opts.logit_scale,
            softcap: opts.softcap,
        };
        let st = simd::dispatch(
            self.level,
            Forward {
                x,
                t,
                w: self.w,
                transform,
                want_wz: valid && eps > 0.0,
                want_metrics: self.want_metrics,
                z_buf,
                exps,
            },
        );
        let lse = st.lse();
        // Every logp below is `(z − m) − ln Σ exp(z − m)` (SEMANTICS.md section 1), never
        // `z − lse`: `lse` is an output (and z-loss's), and loses `logp` below the last place
        // of a large `m`.
        let finite = lse.is_finite();
        let log_sum = st.log_sum();
        let argmax = if st.nans > 0 {
            x.iter()
                .position(|&v| transform.scalar(v).is_nan())
                .unwrap_or(0) as u32
        } else {
            st.argmax
        };
        let mut r = RowResult {
            lse: lse as f32,
            max: if finite { st.max } else { lse as f32 },
            log_sum: if finite { log_sum as f32 } else { 0.0 },
            argmax,
            entropy: if finite {
                (log_sum - st.sum_ez / st.sum_exp) as f32
            } else {
                f32::NAN
            },
            confidence: if finite {
                (-log_sum).exp() as f32
            } else {
                f32::NAN
            },
            valid,
            ..RowResult::default()
        };
        // A zero coefficient leaves its term out (SEMANTICS.md section 6), so a NaN row is
        // made NaN explicitly.
        let ce = match (t, index) {
            (Some(t), _) => {
                let sum_wt = term(1.0 - eps, st.sum_wt) + eps / c_f * w_sum;
                let sum_wtz = term(1.0 - eps, st.sum_wtz) + term(eps / c_f, st.sum_wz);
                r.target_prob = (st.sum_te / st.sum_exp) as f32;
                r.correct =
                    crate::reference::first_max(&t.iter().map(|&v| v as f64).collect::<Vec<_>>())
                        == argmax;
                r.p_coefficient = sum_wt as f32;
                sum_wt * log_sum - sum_wtz
            }
            (None, Some(y)) if valid => {
                let y = y as usize;
                // A NaN or +inf logit, or a row of −inf only, makes the row NaN (PyTorch).
                let logp_y = if finite {
                    scalar::log_p(transform.scalar(x[y]), st.max, log_sum)
                } else {
                    f64::NAN
                };
                r.target_prob = logp_y.exp() as f32;
                r.correct = argmax == y as u32;
                r.p_coefficient = ((1.0 - eps) * w(y) + eps / c_f * w_sum) as f32;
                scalar::index_ce((eps, c_f), (w(y), logp_y), (w_sum, log_sum, st.sum_wz))
            }
            _ => return RowResult { loss: 0.0, ..r },
        };
        let ce = if !finite {
            f64::NAN
        } else if opts.is_focal() {
            self.focal_forward(row, x, t, (st.max, log_sum), &mut r)
        } else {
            ce
        };
        let lambda = opts.z_loss as f64;
        r.z_loss = if lambda > 0.0 {
            lambda * lse * lse
        } else {
            0.0
        };
        r.ce = ce;
        r.loss = (ce + r.z_loss) as f32;
        if ce.is_nan() {
            r.loss = f32::NAN;
        }
        r
    }

    /// Whether the backward of this call rescales the forward's exps ([`Rescale`]) rather
    /// than taking them again: logits, and not the focal pass over the row.
    fn backward_rescales(&self) -> bool {
        let opts = self.plan.softmax();
        opts.input == InputKind::Logits
            && !(opts.is_focal()
                && (matches!(self.targets, Targets::Dense(_)) || opts.label_smoothing > 0.0))
    }

    /// Backward of one softmax row into `io`; `fill` short-cuts ignored (0) and NaN rows.
    /// `kept`: the forward's exps (a scratch row, used when `io` is in place) and their
    /// per-chunk shifts.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        row: usize,
        mut io: RowIo<'_>,
        t: Option<&[f32]>,
        r: &RowResult,
        (a, b): (f32, f32),
        fill: Option<f32>,
        kept: Option<(&[f32], &mut [f32])>,
    ) {
        if let Some(v) = fill {
            match &mut io {
                RowIo::InPlace(d) | RowIo::Separate(_, d) => d.fill(v),
            }
            return;
        }
        let opts = self.plan.softmax();
        let eps = opts.label_smoothing;
        let classes = self.plan.classes;
        let e = eps / classes as f32;
        let index = self.targets.index(row).map(|y| y as usize);

        if let InputKind::Probabilities { eps: floor } = opts.input {
            let target = match t {
                Some(t) => ProbTarget::Dense(t),
                None => ProbTarget::Index(index.unwrap_or(0)),
            };
            let options = prob_options(&opts, floor);
            match io {
                RowIo::InPlace(d) => {
                    let q = d.to_vec();
                    scalar::probability_backward(&q, target, options, self.w, a, d)
                }
                RowIo::Separate(q, d) => {
                    scalar::probability_backward(q, target, options, self.w, a, d)
                }
            }
            return;
        }

        let transform = Transform {
            scale: opts.logit_scale,
            softcap: opts.softcap,
        };
        let k = a * r.p_coefficient + b * 2.0 * opts.z_loss * r.lse;
        if opts.is_focal() && (t.is_some() || eps > 0.0) {
            self.focal_backward(io, t, index, r, k, a);
            return;
        }
        // Index targets: the −(1−ε)·w[y] at the target (focal: −w[y]·g[y]), added after the
        // vector pass.
        let target_fix = match (t, index) {
            (None, Some(y)) => {
                let zy = transform.scalar(match &io {
                    RowIo::InPlace(d) => d[y],
                    RowIo::Separate(x, _) => x[y],
                });
                let w_y = self.w.map_or(1.0, |w| w[y]);
                let coefficient = if opts.is_focal() {
                    r.focal_target
                } else {
                    (1.0 - eps) * w_y
                };
                Some((y, a * coefficient * transform.scalar_slope(zy)))
            }
            _ => None,
        };
        let coef_t = if t.is_some() { 1.0 - eps } else { 0.0 };
        if let Some((scratch, shifts)) = kept {
            // F = K·exp(shift − max − ln s), in f64 before rounding.
            let (max, log_sum) = (r.max as f64, r.log_sum as f64);
            for f in shifts.iter_mut() {
                *f = (k as f64 * (*f as f64 - max - log_sum).exp()) as f32;
            }
            let io = match io {
                RowIo::Separate(x, dx) => ExpsIo::InGradient { x, dx },
                RowIo::InPlace(x) => ExpsIo::InScratch { exps: scratch, x },
            };
            simd::dispatch(
                self.level,
                Rescale {
                    io,
                    t,
                    w: self.w,
                    transform,
                    factors: shifts,
                    a,
                    b: coef_t,
                    e,
                    target_fix,
                },
            );
            return;
        }
        simd::dispatch(
            self.level,
            Backward {
                io,
                t,
                w: self.w,
                transform,
                shift: r.max,
                log_sum: r.log_sum,
                k,
                a,
                b: coef_t,
                e,
                target_fix,
            },
        );
    }
}

impl Ctx<'_> {
    /// Focal loss (SEMANTICS.md section 2c) of one valid row whose log-sum-exp is known: the
    /// cross-entropy part, and the row's gradient coefficients in `r`.
    ///
    /// Index targets without smoothing need only `p[y]`: `ce = −w[y]·f[y]·logp[y]` and the
    /// gradient is plain cross-entropy's with `w[y]` replaced by `w[y]·g[y]`
    /// ([`scalar::focal_factors`] has the derivation). With smoothing or soft targets every
    /// class's `(1 − p[c])^γ` needs the final `lse`: one more pass over the row, which is still
    /// in cache (SIMD for a whole `γ`, scalar for a fractional one: [`focal::FocalRow`]),
    /// `ce = −Σ_c a[c]·f[c]·logp[c]` and `G = Σ_c a[c]·g[c]` (`a[c] = w[c]·t'[c]`), and the
    /// backward pass ([`Ctx::focal_backward`]) writes `dz[c] = G·p[c] − a[c]·g[c]`.
    fn focal_forward(
        &self,
        row: usize,
        x: &[f32],
        t: Option<&[f32]>,
        (max, log_sum): (f32, f64),
        r: &mut RowResult,
    ) -> f64 {
        let opts = self.plan.softmax();
        let gamma = opts.focal_gamma as f64;
        let eps = opts.label_smoothing as f64;
        let transform = Transform {
            scale: opts.logit_scale,
            softcap: opts.softcap,
        };
        let w = |c: usize| self.w.map_or(1.0, |w| w[c] as f64);
        let index = self.targets.index(row).map(|y| y as usize);
        if let (None, Some(y), true) = (t, index, eps == 0.0) {
            // The same split form as the backward's `(z − max) − log_sum`.
            let l = scalar::log_p(transform.scalar(x[y]), max, log_sum);
            let (f, g) = scalar::focal_factors(l, gamma);
            r.p_coefficient = (w(y) * g) as f32;
            r.focal_target = r.p_coefficient;
            return -term(w(y), f * l);
        }
        let target = index
            .filter(|_| t.is_none())
            .map(|y| (y, (1.0 - eps) * w(y)));
        let (loss, g_sum) = self
            .focal_row(t, (max, log_sum))
            .sums(self.level, x, target);
        r.p_coefficient = g_sum as f32;
        -loss
    }

    /// The focal passes of a row with dense targets `t` (or index targets) and log-sum-exp
    /// `max + log_sum`.
    fn focal_row<'a>(
        &'a self,
        t: Option<&'a [f32]>,
        (max, log_sum): (f32, f64),
    ) -> focal::FocalRow<'a> {
        let opts = self.plan.softmax();
        let eps = opts.label_smoothing;
        focal::FocalRow {
            t,
            w: self.w,
            transform: Transform {
                scale: opts.logit_scale,
                softcap: opts.softcap,
            },
            max,
            log_sum,
            b: if t.is_some() { 1.0 - eps } else { 0.0 },
            e: eps / self.plan.classes as f32,
            gamma: opts.focal_gamma,
        }
    }

    /// The backward pass of focal loss with smoothing or soft targets (over the row in cache;
    /// SIMD for a whole `γ`): `dz[c] = k·p[c] − a·a[c]·g[c]`, `k` the row's coefficient of `p`
    /// (scales and z-loss included), `a` the scale of the cross-entropy part.
    fn focal_backward(
        &self,
        io: RowIo<'_>,
        t: Option<&[f32]>,
        index: Option<usize>,
        r: &RowResult,
        k: f32,
        a: f32,
    ) {
        let eps = self.plan.softmax().label_smoothing;
        let target = index
            .filter(|_| t.is_none())
            .map(|y| (y, a * (1.0 - eps) * self.w.map_or(1.0, |w| w[y])));
        // max and log_sum as the plain backward takes them (see `row::Backward::log_sum`).
        self.focal_row(t, (r.max, r.log_sum as f64))
            .backward(self.level, io, k, a, target);
    }
}

/// The scalar probability-input path's options (SEMANTICS.md section 2b) for clamp `floor`.
fn prob_options(options: &crate::CrossEntropy, floor: f32) -> scalar::ProbOptions {
    scalar::ProbOptions {
        floor,
        smoothing: options.label_smoothing,
        gamma: options.focal_gamma,
    }
}

/// Row `i` of a block in `layout`, widened into a contiguous f32 row.
fn gather<T: Element>(block: &[T], layout: Layout, i: usize, row: &mut [f32]) {
    let classes = row.len();
    match layout {
        Layout::Rows => T::widen(&block[i * classes..(i + 1) * classes], row),
        Layout::ClassDim1 { .. } => {
            for (c, v) in row.iter_mut().enumerate() {
                *v = block[layout.offset(i, c, classes)].to_f32();
            }
        }
    }
}

/// A contiguous f32 row into row `i` of a block in `layout`.
fn scatter(row: &[f32], layout: Layout, i: usize, block: &mut [f32]) {
    let classes = row.len();
    match layout {
        Layout::Rows => block[i * classes..(i + 1) * classes].copy_from_slice(row),
        Layout::ClassDim1 { .. } => {
            for (c, &v) in row.iter().enumerate() {
                block[layout.offset(i, c, classes)] = v;
            }
        }
    }
}
