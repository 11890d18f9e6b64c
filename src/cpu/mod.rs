//! The SIMD CPU backend.
//!
//! Rows are cut into blocks of about `BLOCK_ELEMENTS` values (whole samples for the
//! `(N, C, d…)` layout), blocks run in parallel on rayon's pool, each writing its rows of the
//! output's per-row columns in place (`Columns`); the batch loss is summed block by block in
//! row order, in f64, so the bits do not depend on the number of threads. Each row is read once by the fused forward
//! (`row::Forward`) and, for a gradient, once more from cache by `row::Backward`. Focal
//! loss with smoothing or soft targets reads the row once more in between (`focal`): every
//! class's `(1 − p)^γ` needs the row's final log-sum-exp.
//!
//! Contiguous f32 rows are read in place. f16/bf16 rows and strided `(N, C, d…)` rows are first
//! widened (or gathered) into one row-sized f32 buffer per block, and their gradients written
//! back from it. BCE is element-wise: its blocks are cut into pieces of contiguous elements in
//! either layout (`bce.rs`), read in place (f16/bf16 widened a piece at a time).

mod bce;
mod binary;
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
use crate::input::{Batch, Element, Storage, Targets};
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
    let (blocks, columns) = match logits.storage {
        Storage::F32(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::F16(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::Bf16(d) => ctx.drive(Data::Shared(d), grad, false),
        Storage::F32Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
        Storage::F16Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
        Storage::Bf16Mut(d) => ctx.drive(Data::Exclusive(d), grad, in_place),
    };
    Ok(ctx.assemble(blocks, columns))
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

/// What one block gives: its rows' loss sums.
#[derive(Debug, Default)]
struct BlockOut {
    /// `Σ ce` over the block's rows in row order, sample weights applied.
    ce: f64,
    /// `Σ z-loss` likewise.
    z_loss: f64,
}

/// One block's rows of the per-row outputs asked for (losses, LSE, metrics; BCE's
/// per-element losses): slices of the output's own columns, empty where not asked for.
/// Blocks write their rows in place, so a call with metrics allocates each column once, for
/// every row, and copies nothing after.
#[derive(Debug, Default)]
struct Columns<'a> {
    /// BCE's per-element losses of the block's rows, in the logits' layout.
    elements: &'a mut [f32],
    losses: &'a mut [f32],
    lse: &'a mut [f32],
    argmax: &'a mut [u32],
    correct: &'a mut [bool],
    target_prob: &'a mut [f32],
    entropy: &'a mut [f32],
    confidence: &'a mut [f32],
    valid: &'a mut [bool],
}

impl Columns<'_> {
    /// Writes the block's row `i` where it is asked for.
    fn put(&mut self, i: usize, r: &RowOutcome) {
        if !self.losses.is_empty() {
            self.losses[i] = r.loss;
        }
        if !self.lse.is_empty() {
            self.lse[i] = r.lse;
        }
        if !self.argmax.is_empty() {
            self.argmax[i] = r.argmax;
            self.correct[i] = r.correct;
            self.target_prob[i] = r.target_prob;
            self.entropy[i] = r.entropy;
            self.confidence[i] = r.confidence;
            self.valid[i] = r.valid;
        }
    }
}

/// The output's per-row columns, one per output asked for (empty otherwise), for `rows` rows.
struct RowColumns {
    /// BCE's per-element losses (`rows · classes`, the logits' layout).
    elements: Vec<f32>,
    losses: Vec<f32>,
    lse: Vec<f32>,
    metrics: Metrics,
}

impl RowColumns {
    fn new(call: &Call<'_>, rows: usize) -> Self {
        // (BCE has no LSE or metrics, and its per-row losses are per element.)
        let softmax = matches!(call.plan.loss, Loss::Softmax(_));
        let len = |asked: bool| if asked && softmax { rows } else { 0 };
        let m = len(call.want_metrics);
        let elements = if call.want_rows && !softmax {
            rows * call.plan.classes
        } else {
            0
        };
        RowColumns {
            elements: vec![0.0; elements],
            losses: vec![0.0; len(call.want_rows)],
            lse: vec![0.0; len(call.want_lse)],
            metrics: Metrics {
                argmax: vec![0; m],
                correct: vec![false; m],
                target_prob: vec![0.0; m],
                entropy: vec![0.0; m],
                confidence: vec![0.0; m],
                valid: vec![false; m],
            },
        }
    }

    /// The columns cut into blocks of `block_rows` rows (of `classes` elements): `blocks` of
    /// them.
    fn split(&mut self, (block_rows, classes): (usize, usize), blocks: usize) -> Vec<Columns<'_>> {
        // An empty column (not asked for) gives every block an empty slice; any other, one
        // chunk a block.
        fn cut<T>(
            column: &mut [T],
            (rows, blocks): (usize, usize),
        ) -> impl Iterator<Item = &mut [T]> {
            debug_assert!(column.is_empty() || column.len().div_ceil(rows) == blocks);
            column
                .chunks_mut(rows)
                .chain(std::iter::repeat_with(|| &mut [][..]))
        }
        // A block holds whole samples of the (N, C, d…) layout, so its elements are one run.
        let mut elements = cut(&mut self.elements, (block_rows * classes, blocks));
        let block_rows = (block_rows, blocks);
        let m = &mut self.metrics;
        let mut losses = cut(&mut self.losses, block_rows);
        let mut lse = cut(&mut self.lse, block_rows);
        let mut argmax = cut(&mut m.argmax, block_rows);
        let mut correct = cut(&mut m.correct, block_rows);
        let mut target_prob = cut(&mut m.target_prob, block_rows);
        let mut entropy = cut(&mut m.entropy, block_rows);
        let mut confidence = cut(&mut m.confidence, block_rows);
        let mut valid = cut(&mut m.valid, block_rows);
        let mut next = || Columns {
            elements: elements.next().unwrap_or_default(),
            losses: losses.next().unwrap_or_default(),
            lse: lse.next().unwrap_or_default(),
            argmax: argmax.next().unwrap_or_default(),
            correct: correct.next().unwrap_or_default(),
            target_prob: target_prob.next().unwrap_or_default(),
            entropy: entropy.next().unwrap_or_default(),
            confidence: confidence.next().unwrap_or_default(),
            valid: valid.next().unwrap_or_default(),
        };
        (0..blocks).map(|_| next()).collect()
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
    /// The output from the blocks and the columns they wrote; sums the loss in block order, in f64.
    fn assemble(&self, blocks: Vec<BlockOut>, columns: RowColumns) -> Output {
        let (ce, z_loss) = blocks
            .iter()
            .fold((0f64, 0f64), |(ce, z), b| (ce + b.ce, z + b.z_loss));
        let mut out = Output {
            loss: self.plan.reduce(ce, z_loss).map(|v| v as f32),
            ..Output::default()
        };
        if let Loss::Binary(_) = self.plan.loss {
            out.row_losses = self.want_rows.then_some(columns.elements);
            return out;
        }
        out.row_losses = self.want_rows.then_some(columns.losses);
        out.lse = self.want_lse.then_some(columns.lse);
        out.metrics = self.want_metrics.then_some(columns.metrics);
        out
    }

    /// Cuts the data (and the gradient) into blocks and runs them in parallel.
    fn drive<T: Element>(
        &self,
        data: Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
    ) -> (Vec<BlockOut>, RowColumns) {
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
        let mut columns = RowColumns::new(self, self.plan.rows);
        let outs = columns.split((block_rows, classes), sources.len());
        let blocks = sources
            .into_par_iter()
            .zip(grads)
            .zip(outs)
            .enumerate()
            .map(|(b, ((src, grad), out))| {
                let first = b * block_rows;
                match self.plan.loss {
                    Loss::Binary(options) => {
                        self.bce_block(options, first, src, grad, in_place, out)
                    }
                    Loss::Softmax(_) if short => self.short_block(first, src, grad, in_place, out),
                    Loss::Softmax(_) => self.softmax_block(first, src, grad, in_place, out),
                }
            })
            .collect();
        (blocks, columns)
    }
}
