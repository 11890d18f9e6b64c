//! The SIMD CPU backend.
//!
//! Rows are cut into blocks of about `BLOCK_ELEMENTS` values (whole samples for the
//! `(N, C, d…)` layout), blocks run in parallel on rayon's pool, and every per-row result
//! comes back in row order; the batch loss is summed block by block in that order, in f64, so
//! the bits do not depend on the number of threads. Each row is read once by the fused forward
//! (`row::Forward`) and, for a gradient, once more from cache by `row::Backward`. Focal
//! loss with smoothing or soft targets reads the row once more in between (`focal`): every
//! class's `(1 − p)^γ` needs the row's final log-sum-exp.
//!
//! Contiguous f32 rows are read in place. f16/bf16 rows and strided `(N, C, d…)` rows are first
//! widened (or gathered) into one row-sized f32 buffer per block, and their gradients written
//! back from it.

mod bce;
mod blocks;
mod exp;
mod focal;
pub(crate) mod linear;
mod log;
mod probability;
pub(crate) mod row;
pub(crate) mod scalar;
mod shard;
mod short;
pub mod simd;
mod softmax;

pub(crate) use shard::{shard_backward, shard_focal, shard_partials};

pub use simd::SimdLevel;

use crate::error::Result;
use crate::input::{Batch, Element, Layout, Storage, Targets};
use crate::output::{Gradient, Metrics, Output, Request};
use crate::plan::{Loss, Plan};
use rayon::prelude::*;

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
    let ctx = Call {
        level,
        plan,
        targets,
        w: class_weights,
        pos_weight,
        sample_weights,
        upstream: request.upstream,
        want_rows,
        want_lse: request.lse,
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
    Ok(ctx.assemble(blocks))
}

/// What one row gives.
#[derive(Debug, Clone, Copy, Default)]
struct RowOutcome {
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

/// What one block gives: its rows' loss sums, the per-row outputs asked for, and BCE's
/// per-element losses (row-major).
#[derive(Debug, Default)]
struct BlockOut {
    /// `Σ ce` over the block's rows in row order, sample weights applied.
    ce: f64,
    /// `Σ z-loss` likewise.
    z_loss: f64,
    /// Per row, when asked: losses, LSE, metrics.
    losses: Vec<f32>,
    lse: Vec<f32>,
    metrics: Metrics,
    elements: Vec<f32>,
}

impl BlockOut {
    /// Adds one row's outcome (its per-row outputs where `call` asks for them).
    fn push(&mut self, call: &Call<'_>, r: &RowOutcome) {
        self.ce += r.ce;
        self.z_loss += r.z_loss;
        if call.want_rows {
            self.losses.push(r.loss);
        }
        if call.want_lse {
            self.lse.push(r.lse);
        }
        if call.want_metrics {
            let m = &mut self.metrics;
            m.argmax.push(r.argmax);
            m.correct.push(r.correct);
            m.target_prob.push(r.target_prob);
            m.entropy.push(r.entropy);
            m.confidence.push(r.confidence);
            m.valid.push(r.valid);
        }
    }
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

struct Call<'a> {
    level: SimdLevel,
    plan: &'a Plan,
    targets: Targets<'a>,
    w: Option<&'a [f32]>,
    pos_weight: Option<&'a [f32]>,
    sample_weights: Option<&'a [f32]>,
    upstream: Option<&'a [f32]>,
    /// Per-row losses are returned (asked, or `Reduction::None`).
    want_rows: bool,
    want_lse: bool,
    want_metrics: bool,
}

impl Call<'_> {
    /// Gathers the blocks' rows into the output; sums the loss in block order, in f64.
    fn assemble(&self, blocks: Vec<BlockOut>) -> Output {
        let (ce, z_loss) = blocks
            .iter()
            .fold((0f64, 0f64), |(ce, z), b| (ce + b.ce, z + b.z_loss));
        let mut out = Output {
            loss: self.plan.reduce(ce, z_loss).map(|v| v as f32),
            ..Output::default()
        };
        if let Loss::Binary(_) = self.plan.loss {
            if self.want_rows {
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
        // Each block's columns, moved (empty where not asked for).
        let (mut losses, mut lse, mut m) = (Vec::new(), Vec::new(), Metrics::default());
        for b in blocks {
            losses.extend(b.losses);
            lse.extend(b.lse);
            m.argmax.extend(b.metrics.argmax);
            m.correct.extend(b.metrics.correct);
            m.target_prob.extend(b.metrics.target_prob);
            m.entropy.extend(b.metrics.entropy);
            m.confidence.extend(b.metrics.confidence);
            m.valid.extend(b.metrics.valid);
        }
        out.row_losses = self.want_rows.then_some(losses);
        out.lse = self.want_lse.then_some(lse);
        out.metrics = self.want_metrics.then_some(m);
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
        let short = self.takes_short_path(grad.is_some() || in_place);
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
            .map(|(b, (src, grad))| match self.plan.loss {
                Loss::Binary(options) => {
                    self.bce_block(options, b * block_rows, src, grad, in_place)
                }
                Loss::Softmax(_) if short => self.short_block(b * block_rows, src, grad, in_place),
                Loss::Softmax(_) => self.softmax_block(b * block_rows, src, grad, in_place),
            })
            .collect()
    }
}
