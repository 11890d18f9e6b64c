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
pub(crate) mod row;
pub(crate) mod scalar;
mod shard;
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

/// What one block gives: its rows in order, and BCE's per-element losses (row-major).
#[derive(Debug, Default)]
struct BlockOut {
    rows: Vec<RowOutcome>,
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

struct Call<'a> {
    level: SimdLevel,
    plan: &'a Plan,
    targets: Targets<'a>,
    w: Option<&'a [f32]>,
    pos_weight: Option<&'a [f32]>,
    sample_weights: Option<&'a [f32]>,
    upstream: Option<&'a [f32]>,
    want_metrics: bool,
}

impl Call<'_> {
    /// Gathers the blocks' rows into the output; sums the loss in row order, in f64.
    fn assemble(&self, blocks: Vec<BlockOut>, want_rows: bool, want_lse: bool) -> Output {
        let rows: Vec<RowOutcome> = blocks.iter().flat_map(|b| b.rows.iter().copied()).collect();
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
            .map(|(b, (src, grad))| match self.plan.loss {
                Loss::Binary(options) => {
                    self.bce_block(options, b * block_rows, src, grad, in_place)
                }
                Loss::Softmax(_) => self.softmax_block(b * block_rows, src, grad, in_place),
            })
            .collect()
    }
}
