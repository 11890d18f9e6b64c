//! The checks of a linear cross-entropy call (`crate::linear`) and what it decides once: the
//! rows that need products, the mean's denominators, the strategy and its tile sizes.

use super::bad_weight;
use crate::error::{Error, Result};
use crate::gpu::{DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch, DeviceLinearOutputs};
use crate::input::Targets;
use crate::linear::{
    GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy, WeightLayout,
};
use crate::options::{CrossEntropy, InputKind, Reduction};
use crate::shard::{Combined, Shard};

/// Rows of one forward tile of the fused strategy.
pub(crate) const TILE_ROWS: usize = 512;
/// Vocabulary columns of one forward tile (and of one widened piece of `W`).
pub(crate) const TILE_COLUMNS: usize = 512;
/// Forward tiles one task merges before its partials join the row's others: tasks own
/// (row tile, segment of `SEGMENT_TILES · TILE_COLUMNS` columns), so a short batch over a
/// large vocabulary still has work for every core; the split depends on the shape only.
pub(crate) const SEGMENT_TILES: usize = 16;
/// Fewest vocabulary columns in a fused backward chunk.
const MIN_CHUNK: usize = 64;
/// Most vocabulary columns in a fused backward chunk (beyond it the GEMMs gain nothing).
const MAX_CHUNK: usize = 4096;
/// `Auto` takes `Chunked` when this many rows (or all) of logits fit the budget.
const CHUNKED_MIN_ROWS: usize = 256;

/// A checked linear cross-entropy call.
#[derive(Debug, Clone)]
pub(crate) struct LinearPlan {
    pub options: CrossEntropy,
    /// The columns this call owns: the whole vocabulary (`0..V` of `V`), or a shard's.
    pub shard: Shard,
    /// `N`, `D`, `V` (the shard's width).
    pub rows: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// How `W` and `dW` are stored.
    pub weight_layout: WeightLayout,
    /// The rows that get products, ascending: the valid ones, or all when LSE or metrics are
    /// asked for.
    pub computed: Vec<usize>,
    /// The mean's denominators over valid rows: `Σ s[n]·w[y[n]]` and `Σ s[n]`.
    pub denominators: (f64, f64),
    /// `Fused` or `Chunked`, never `Auto`.
    pub strategy: Strategy,
    /// Whether `strategy` was chosen by `Auto` (the GPU falls back to `Fused` where it cannot
    /// hold 64 rows of logits in a binding; an explicit `Chunked` is refused there).
    pub auto: bool,
    /// Chunked: rows of logits held at once. Fused: rows of one gradient block.
    pub group_rows: usize,
    /// Fused: vocabulary columns of one backward chunk.
    pub chunk_columns: usize,
    /// Whether any gradient is asked for.
    pub gradient: bool,
}

/// Checks `batch` and `request` (SEMANTICS.md section 7) and plans the call.
pub(crate) fn check(
    loss: &LinearCrossEntropy,
    batch: &LinearBatch<'_>,
    request: &LinearRequest<'_>,
) -> Result<LinearPlan> {
    check_call(loss, batch, request, None)
}

/// Checks one vocabulary shard's call (`LinearCrossEntropy::shard_partials`, `shard_focal`,
/// `shard_backward`): `batch.weight` holds the shard's rows of `W` (and `bias`, `class_weights`
/// its slices), the targets are global; sample weights and the request's upstream, per-row
/// outputs and LSE belong to `combine`. Every row is computed, with the fused strategy.
pub(crate) fn check_shard(
    loss: &LinearCrossEntropy,
    shard: Shard,
    batch: &LinearBatch<'_>,
    request: &LinearRequest<'_>,
) -> Result<LinearPlan> {
    super::shard::bounds(shard)?;
    if batch.sample_weights.is_some()
        || request.upstream.is_some()
        || request.row_losses
        || request.lse
        || request.metrics
    {
        return Err(Error::Unsupported(
            "a shard's linear call takes no sample weights, upstream or per-row outputs: they \
             belong to CrossEntropy::combine_weighted"
                .into(),
        ));
    }
    check_call(loss, batch, request, Some(shard))
}

fn check_call(
    loss: &LinearCrossEntropy,
    batch: &LinearBatch<'_>,
    request: &LinearRequest<'_>,
    shard: Option<Shard>,
) -> Result<LinearPlan> {
    let options = loss.loss;
    options.validate()?;
    if !matches!(options.input, InputKind::Logits) {
        return Err(Error::Unsupported(
            "linear cross-entropy computes logits; probability inputs need them given".into(),
        ));
    }
    let (hidden, weight) = (&batch.hidden, &batch.weight);
    hidden.check("hidden")?;
    weight.check("weight")?;
    let (rows, dim) = (hidden.rows(), hidden.cols());
    let (vocab, weight_dim) = batch.weight_shape();
    let shape = format!(
        "hidden [{rows} × {dim}], weight [{} × {}] ({:?})",
        weight.rows(),
        weight.cols(),
        batch.weight_layout
    );
    let len = |what: &'static str, actual: usize, expected: usize| {
        if actual == expected {
            Ok(())
        } else {
            Err(Error::Shape {
                what,
                expected,
                actual,
                shape: shape.clone(),
            })
        }
    };
    let sharded = shard.is_some();
    if vocab == 0 && !sharded {
        return Err(Error::NoClasses);
    }
    let shard = shard.unwrap_or(Shard {
        start: 0,
        width: vocab,
        classes: vocab,
    });
    len("weight (classes)", vocab, shard.width)?;
    len("weight (hidden size)", weight_dim, dim)?;
    if let Some(b) = &batch.bias {
        b.check("bias")?;
        len("bias", b.len(), vocab)?;
    }
    let y = |row: usize| batch.targets.index(row).unwrap_or_default();
    if matches!(batch.targets, Targets::Dense(_)) {
        return Err(Error::Unsupported(
            "linear cross-entropy takes class-index targets; soft targets are N × V".into(),
        ));
    }
    len("targets", batch.targets.len(), rows)?;
    for row in 0..rows {
        let value = y(row);
        if value != options.ignore_index && !(0..shard.classes as i64).contains(&value) {
            return Err(Error::TargetOutOfRange {
                row,
                value,
                classes: shard.classes,
                ignore_index: options.ignore_index,
            });
        }
    }
    for (what, weights, n) in [
        ("class_weights", batch.class_weights, vocab),
        ("sample_weights", batch.sample_weights, rows),
    ] {
        if let Some(w) = weights {
            len(what, w.len(), n)?;
            if let Some((index, value)) = bad_weight(w) {
                return Err(Error::BadWeight { what, index, value });
            }
        }
    }
    if let Some(u) = request.upstream {
        let expected = if options.reduction == Reduction::None {
            rows
        } else {
            1
        };
        len("upstream", u.len(), expected)?;
    }
    for (what, buffer, expected) in [
        ("hidden gradient", &request.hidden_gradient, rows * dim),
        ("weight gradient", &request.weight_gradient, vocab * dim),
        ("bias gradient", &request.bias_gradient, vocab),
    ] {
        if let Some(g) = buffer {
            len(what, GradientBuffer::len(g), expected)?;
        }
    }

    // The mean's denominators, in row order (as `combine` sums them).
    let valid = |row: usize| y(row) != options.ignore_index;
    let (mut weight_sum, mut count) = (0f64, 0f64);
    for row in (0..rows).filter(|&r| valid(r)) {
        let s = batch.sample_weights.map_or(1.0, |s| s[row] as f64);
        // A shard's plan leaves the denominators to `combine`.
        let w = batch
            .class_weights
            .and_then(|w| w.get(y(row) as usize))
            .map_or(1.0, |&w| w as f64);
        count += s;
        weight_sum += s * w;
    }
    let every_row = request.lse || request.metrics || sharded;
    let computed: Vec<usize> = (0..rows).filter(|&r| every_row || valid(r)).collect();
    let gradient = request.wants_gradient();
    let budget = loss.scratch_bytes.max(1);
    let (strategy, chunked_rows) = match sharded {
        true => (Strategy::Fused, 1),
        false => strategy(loss, computed.len(), vocab, gradient),
    };
    // Fused backward: the widest chunk (a multiple of 64 columns) whose gradient block over
    // every computed row fits; below the narrowest, rows are split too.
    let n = computed.len().max(1);
    let chunk_columns = (budget / (n * 4) / MIN_CHUNK * MIN_CHUNK).clamp(MIN_CHUNK, MAX_CHUNK);
    let group_rows = match strategy {
        Strategy::Chunked => chunked_rows,
        _ => (budget / (chunk_columns * 4)).clamp(1, n),
    };
    Ok(LinearPlan {
        options,
        shard,
        rows,
        hidden: dim,
        vocab,
        weight_layout: batch.weight_layout,
        computed,
        denominators: (weight_sum, count),
        strategy,
        auto: loss.strategy == Strategy::Auto,
        group_rows,
        chunk_columns: chunk_columns.min(vocab).max(1),
        gradient,
    })
}

/// The strategy of a call of `rows` rows that get products and a vocabulary of `vocab` (never
/// `Auto`), and the rows of logits the scratch budget holds (at least 1, at most `rows`).
pub(crate) fn strategy(
    loss: &LinearCrossEntropy,
    rows: usize,
    vocab: usize,
    gradient: bool,
) -> (Strategy, usize) {
    let budget = loss.scratch_bytes.max(1);
    let chunked_rows = (budget / vocab.saturating_mul(4).max(1)).clamp(1, rows.max(1));
    let strategy = match loss.strategy {
        Strategy::Auto if gradient && chunked_rows >= CHUNKED_MIN_ROWS.min(rows) => {
            Strategy::Chunked
        }
        Strategy::Auto => Strategy::Fused,
        s => s,
    };
    (strategy, chunked_rows)
}

/// What a shard's focal round (`focal: true`) or backward needs of the combined rows: one per
/// row of `plan`, and the focal round pending (or done, for the backward).
pub(crate) fn check_combined(plan: &LinearPlan, combined: &Combined, focal: bool) -> Result<()> {
    if combined.rows.len() != plan.rows {
        return Err(Error::Shape {
            what: "combined rows",
            expected: plan.rows,
            actual: combined.rows.len(),
            shape: format!("hidden [{} × {}]", plan.rows, plan.hidden),
        });
    }
    match (focal, combined.needs_focal_round()) {
        (true, false) => Err(Error::Unsupported(
            "no focal round is pending: only focal loss with label smoothing needs one \
             (Combined::needs_focal_round)"
                .into(),
        )),
        (false, true) => Err(Error::Unsupported(
            "focal loss with label smoothing needs its second round before the backward pass: \
             shard_focal on every shard, then combine_focal"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Checks a recorded linear call (`Gpu::record_linear_cross_entropy`): the options, the
/// shapes against each other, every slice's size and offset (`alignment`: the device's
/// storage-buffer offset alignment), the dtypes the kernels load. The values inside the
/// buffers are the device's to check (targets raise a flag). Returns whether an output shares
/// a buffer with an input (`plan::device::separate`).
pub(crate) fn check_device(
    options: &CrossEntropy,
    batch: &DeviceLinearBatch<'_>,
    outputs: &DeviceLinearOutputs<'_>,
    alignment: u64,
) -> Result<bool> {
    options.validate()?;
    if !matches!(options.input, InputKind::Logits) {
        return Err(Error::Unsupported(
            "linear cross-entropy computes logits; probability inputs need them given".into(),
        ));
    }
    let (h, w) = (&batch.hidden, &batch.weight);
    let (vocab, w_dim) = batch.weight_shape();
    let (rows, dim) = (h.rows, h.cols);
    let shape = || {
        format!(
            "hidden [{rows} × {dim}], weight [{} × {}] ({:?})",
            w.rows, w.cols, batch.weight_layout
        )
    };
    if vocab == 0 {
        return Err(Error::NoClasses);
    }
    if w_dim != dim {
        return Err(Error::Shape {
            what: "weight (hidden size)",
            expected: dim,
            actual: w_dim,
            shape: shape(),
        });
    }
    if h.dtype != w.dtype {
        return Err(Error::Unsupported(format!(
            "a recorded linear head loads h and W in one dtype; got {:?} and {:?}",
            h.dtype, w.dtype
        )));
    }
    if dim == 0 || (h.dtype.size() == 2 && dim % 2 == 1) {
        return Err(Error::Unsupported(format!(
            "a recorded linear head needs a hidden size of at least 1, and an even one for \
             f16 and bf16 (whole 32-bit words per row); got {dim}"
        )));
    }
    let overflow = || Error::Overflow { shape: shape() };
    let bytes = |count: usize, each: usize| -> Result<u64> {
        (count as u64).checked_mul(each as u64).ok_or_else(overflow)
    };
    let element = h.dtype.size();
    let (n, d, v) = (rows, dim, vocab);
    fn gradient(g: Option<DeviceGradientSlice<'_>>) -> Option<wgpu::BufferSlice<'_>> {
        g.map(|g| match g {
            DeviceGradientSlice::Write(s) | DeviceGradientSlice::Add(s) => s,
        })
    }
    let (targets, target_bytes) = match batch.targets {
        DeviceIndexTargets::I32(t) => (t, 4),
        DeviceIndexTargets::I64(t) => (t, 8),
    };
    let (Some(nd), Some(vd)) = (n.checked_mul(d), v.checked_mul(d)) else {
        return Err(overflow());
    };
    let reads = [
        ("hidden buffer (bytes)", Some(h.data), bytes(nd, element)?),
        ("weight buffer (bytes)", Some(w.data), bytes(vd, element)?),
        ("bias buffer (bytes)", batch.bias, bytes(v, 4)?),
        (
            "targets buffer (bytes)",
            Some(targets),
            bytes(n, target_bytes)?,
        ),
        (
            "class_weights buffer (bytes)",
            batch.class_weights,
            bytes(v, 4)?,
        ),
        (
            "sample_weights buffer (bytes)",
            batch.sample_weights,
            bytes(n, 4)?,
        ),
        ("upstream buffer (bytes)", outputs.upstream, bytes(n, 4)?),
    ];
    let writes = [
        ("loss buffer (bytes)", Some(outputs.loss), 4),
        ("rows buffer (bytes)", outputs.rows, bytes(n, 32)?),
        (
            "hidden gradient buffer (bytes)",
            gradient(outputs.hidden_gradient),
            bytes(nd, 4)?,
        ),
        (
            "weight gradient buffer (bytes)",
            gradient(outputs.weight_gradient),
            bytes(vd, 4)?,
        ),
        (
            "bias gradient buffer (bytes)",
            gradient(outputs.bias_gradient),
            bytes(v, 4)?,
        ),
        ("target error buffer (bytes)", outputs.target_error, 4),
    ];
    for &(what, slice, size) in reads.iter().chain(&writes) {
        if let Some(slice) = slice {
            super::device::slice_fits(what, slice, size, alignment, shape)?;
        }
    }
    let shared = super::device::separate(&reads, &writes)?;
    if outputs.upstream.is_some() && options.reduction != Reduction::None {
        return Err(Error::Unsupported(
            "a per-row upstream buffer goes with Reduction::None; use upstream_scalar".into(),
        ));
    }
    Ok(shared)
}
