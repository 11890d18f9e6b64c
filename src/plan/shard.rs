//! The checks of the vocabulary-parallel calls (`crate::shard`): a shard and its inputs, the
//! partials `combine` merges, and the combined rows a backward takes.

use crate::error::{Error, Result};
use crate::input::{Layout, Logits, Targets};
use crate::options::{CrossEntropy, InputKind, Reduction};
use crate::shard::{Combined, RowPartial, Shard, ShardInput};

/// Vocabulary shards take logits (not probabilities) and valid options.
fn supported(options: &CrossEntropy) -> Result<()> {
    options.validate()?;
    if !matches!(options.input, InputKind::Logits) {
        return Err(Error::Unsupported(
            "vocab-parallel partials take logits, not probabilities".into(),
        ));
    }
    Ok(())
}

/// A shard inside a vocabulary of at least one class.
pub(crate) fn bounds(shard: Shard) -> Result<()> {
    if shard.classes == 0 {
        return Err(Error::NoClasses);
    }
    if shard
        .start
        .checked_add(shard.width)
        .is_none_or(|end| end > shard.classes)
    {
        return Err(Error::Shape {
            what: "shard",
            expected: shard.classes,
            actual: shard.start.saturating_add(shard.width),
            shape: format!("{shard:?}"),
        });
    }
    Ok(())
}

/// One shard's call: the shard inside its vocabulary, row-major logits of its width, class
/// index targets in range of the whole vocabulary, its slice of class weights.
pub(crate) fn shard(options: &CrossEntropy, shard: Shard, input: &ShardInput<'_>) -> Result<()> {
    let ShardInput {
        logits,
        targets,
        class_weights,
    } = input;
    let (targets, class_weights) = (*targets, *class_weights);
    supported(options)?;
    bounds(shard)?;
    if logits.layout() != Layout::Rows {
        return Err(Error::Unsupported(
            "vocab-parallel partials take row-major logits".into(),
        ));
    }
    if logits.classes() != shard.width {
        return Err(Error::Shape {
            what: "shard logits (classes)",
            expected: shard.width,
            actual: logits.classes(),
            shape: logits.shape_string(),
        });
    }
    logits.check()?;
    if matches!(targets, Targets::Dense(_)) {
        return Err(Error::Unsupported(
            "vocab-parallel partials take class-index targets".into(),
        ));
    }
    if targets.len() != logits.rows() {
        return Err(Error::Shape {
            what: "targets",
            expected: logits.rows(),
            actual: targets.len(),
            shape: logits.shape_string(),
        });
    }
    for row in 0..targets.len() {
        let y = targets.index(row).unwrap_or_default();
        if y != options.ignore_index && (y < 0 || y as u64 >= shard.classes as u64) {
            return Err(Error::TargetOutOfRange {
                row,
                value: y,
                classes: shard.classes,
                ignore_index: options.ignore_index,
            });
        }
    }
    if let Some(w) = class_weights {
        if w.len() != shard.width {
            return Err(Error::Shape {
                what: "class_weights",
                expected: shard.width,
                actual: w.len(),
                shape: format!("{shard:?}"),
            });
        }
        if let Some((index, value)) = super::bad_weight(w) {
            return Err(Error::BadWeight {
                what: "class_weights",
                index: shard.start + index,
                value,
            });
        }
    }
    Ok(())
}

/// Focal loss with smoothing, round 2 on one shard: the shard's call, rows matching
/// `combined`, and a focal round pending.
pub(crate) fn focal_round(
    options: &CrossEntropy,
    shard_: Shard,
    input: &ShardInput<'_>,
    combined: &Combined,
) -> Result<()> {
    shard(options, shard_, input)?;
    combined_rows(combined, &input.logits)?;
    if !combined.needs_focal_round() {
        return Err(Error::Unsupported(
            "no focal round is pending: only focal loss with label smoothing needs one \
             (Combined::needs_focal_round)"
                .into(),
        ));
    }
    Ok(())
}

/// A shard's backward: the shard's call, rows matching `combined` with no focal round
/// pending, and a gradient of `rows × shard.width` values.
pub(crate) fn backward(
    options: &CrossEntropy,
    shard_: Shard,
    input: &ShardInput<'_>,
    combined: &Combined,
    gradient_len: usize,
) -> Result<()> {
    shard(options, shard_, input)?;
    combined_rows(combined, &input.logits)?;
    if combined.needs_focal_round() {
        return Err(Error::Unsupported(
            "focal loss with label smoothing needs its second round before the backward \
             pass: shard_focal on every shard, then combine_focal"
                .into(),
        ));
    }
    let logits = &input.logits;
    if gradient_len != logits.rows() * shard_.width {
        return Err(Error::Shape {
            what: "gradient",
            expected: logits.rows() * shard_.width,
            actual: gradient_len,
            shape: logits.shape_string(),
        });
    }
    Ok(())
}

/// `combined` has one row per logits row.
fn combined_rows(combined: &Combined, logits: &Logits<'_>) -> Result<()> {
    if combined.rows.len() == logits.rows() {
        return Ok(());
    }
    Err(Error::Shape {
        what: "combined rows",
        expected: logits.rows(),
        actual: combined.rows.len(),
        shape: logits.shape_string(),
    })
}

/// `combine`'s inputs: one partial per row from every shard, class-index targets, per-row
/// sample weights (finite, non-negative), an upstream of one value per row for
/// `Reduction::None` and one value otherwise.
pub(crate) fn combine(
    options: &CrossEntropy,
    classes: usize,
    partials: &[&[RowPartial]],
    targets: Targets<'_>,
    sample_weights: Option<&[f32]>,
    upstream: Option<&[f32]>,
) -> Result<()> {
    supported(options)?;
    if classes == 0 {
        return Err(Error::NoClasses);
    }
    let rows = targets.len();
    let shape = |expected: usize, actual: usize, what: &'static str, shape: String| {
        Err(Error::Shape {
            what,
            expected,
            actual,
            shape,
        })
    };
    if let Some(s) = sample_weights {
        if s.len() != rows {
            return shape(rows, s.len(), "sample_weights", format!("rows {rows}"));
        }
        if let Some((index, value)) = super::bad_weight(s) {
            return Err(Error::BadWeight {
                what: "sample_weights",
                index,
                value,
            });
        }
    }
    if matches!(targets, Targets::Dense(_)) {
        return Err(Error::Unsupported(
            "vocab-parallel partials take class-index targets".into(),
        ));
    }
    for p in partials {
        if p.len() != rows {
            return shape(rows, p.len(), "shard partials", format!("rows {rows}"));
        }
    }
    match (options.reduction, upstream) {
        (Reduction::None, Some(u)) if u.len() != rows => {
            shape(rows, u.len(), "upstream", format!("rows {rows}"))
        }
        (Reduction::Sum | Reduction::Mean, Some(u)) if u.len() != 1 => {
            shape(1, u.len(), "upstream", "scalar".into())
        }
        _ => Ok(()),
    }
}
