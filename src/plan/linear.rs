//! The checks of a linear cross-entropy call (`crate::linear`) and what it decides once: the
//! rows that need products, the mean's denominators, the strategy and its tile sizes.

use super::bad_weight;
use crate::error::{Error, Result};
use crate::input::Targets;
use crate::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy};
use crate::options::{CrossEntropy, InputKind, Reduction};

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
    /// `N`, `D`, `V`.
    pub rows: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// The rows that get products, ascending: the valid ones, or all when LSE or metrics are
    /// asked for.
    pub computed: Vec<usize>,
    /// The mean's denominators over valid rows: `Σ s[n]·w[y[n]]` and `Σ s[n]`.
    pub denominators: (f64, f64),
    /// `Fused` or `Chunked`, never `Auto`.
    pub strategy: Strategy,
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
    let (rows, dim, vocab) = (hidden.rows(), hidden.cols(), weight.rows());
    let shape = format!(
        "hidden [{rows} × {dim}], weight [{vocab} × {}]",
        weight.cols()
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
    if vocab == 0 {
        return Err(Error::NoClasses);
    }
    len("weight (hidden size)", weight.cols(), dim)?;
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
        if value != options.ignore_index && !(0..vocab as i64).contains(&value) {
            return Err(Error::TargetOutOfRange {
                row,
                value,
                classes: vocab,
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
        let w = batch.class_weights.map_or(1.0, |w| w[y(row) as usize]) as f64;
        count += s;
        weight_sum += s * w;
    }
    let every_row = request.lse || request.metrics;
    let computed: Vec<usize> = (0..rows).filter(|&r| every_row || valid(r)).collect();
    let gradient = request.wants_gradient();
    let budget = loss.scratch_bytes.max(1);
    let chunked_rows = (budget / vocab.saturating_mul(4)).clamp(1, computed.len().max(1));
    let strategy = match loss.strategy {
        Strategy::Auto if gradient && chunked_rows >= CHUNKED_MIN_ROWS.min(computed.len()) => {
            Strategy::Chunked
        }
        Strategy::Auto => Strategy::Fused,
        s => s,
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
        rows,
        hidden: dim,
        vocab,
        computed,
        denominators: (weight_sum, count),
        strategy,
        group_rows,
        chunk_columns: chunk_columns.min(vocab),
        gradient,
    })
}
