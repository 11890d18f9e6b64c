//! How `xent eval` reads its tensors' shapes: PyTorch's (N, C) and (N, C, d…) layouts, the
//! shapes of targets and weights against them, and the logits view of a file.

use super::super::files::{shape_string, Data, Tensor};
use super::super::CliError;
use super::LossKind;
use crate::input::Element;
use crate::Logits;
use std::borrow::Cow;

/// How the logits are laid out, from their shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) rows: usize,
    pub(super) classes: usize,
    /// `Some(spatial)` for the `(N, C, d1, …)` layout (softmax only).
    pub(super) spatial: Option<usize>,
    /// Shape of the per-row (per-element for BCE) losses.
    pub(super) loss_shape: Vec<usize>,
}

pub(super) fn geometry(logits: &Tensor, loss: LossKind) -> Result<Geometry, CliError> {
    let shape = &logits.shape;
    let g = match (shape.len(), loss) {
        (0, _) => {
            return Err(logits
                .error("logits have shape (), a scalar; expected (N, C), (C,) or (N, C, d1, …)"))
        }
        (1, LossKind::Ce) => Geometry {
            rows: 1,
            classes: shape[0],
            spatial: None,
            loss_shape: vec![],
        },
        (2, LossKind::Ce) => Geometry {
            rows: shape[0],
            classes: shape[1],
            spatial: None,
            loss_shape: vec![shape[0]],
        },
        (_, LossKind::Ce) => {
            let spatial: usize = shape[2..].iter().product();
            let mut loss_shape = vec![shape[0]];
            loss_shape.extend_from_slice(&shape[2..]);
            Geometry {
                rows: shape[0] * spatial,
                classes: shape[1],
                // No positions at all: an empty batch, as contiguous rows.
                spatial: (spatial > 0).then_some(spatial),
                loss_shape,
            }
        }
        (n, LossKind::Bce) => Geometry {
            rows: shape[..n - 1].iter().product(),
            classes: shape[n - 1],
            spatial: None,
            loss_shape: shape.clone(),
        },
    };
    if g.classes == 0 {
        return Err(logits.error(format!(
            "logits of shape {} have no classes",
            logits.shape_string()
        )));
    }
    Ok(g)
}

/// Per-row index targets: int32 or int64, with the shape the logits imply.
pub(super) fn check_index_targets(
    targets: &Tensor,
    logits: &Tensor,
    g: &Geometry,
) -> Result<(), CliError> {
    if !matches!(targets.data, Data::I32(_) | Data::I64(_)) {
        return Err(targets.error(format!(
            "dtype {} is not allowed for class-index targets: expected int32 or int64 \
             (probability targets go in --soft-targets)",
            targets.file_dtype
        )));
    }
    let fits = targets.shape == g.loss_shape || (g.loss_shape.is_empty() && targets.shape == [1]);
    if !fits {
        return Err(targets.error(format!(
            "targets have shape {} but {} of shape {} needs {}",
            targets.shape_string(),
            logits.source,
            logits.shape_string(),
            shape_string(&g.loss_shape)
        )));
    }
    Ok(())
}

pub(super) fn same_shape(t: &Tensor, logits: &Tensor, what: &str) -> Result<(), CliError> {
    if t.shape != logits.shape {
        return Err(t.error(format!(
            "{what} have shape {} but the logits have {}; they must match",
            t.shape_string(),
            logits.shape_string()
        )));
    }
    Ok(())
}

/// The shape of one value per row: the per-row losses' shape (softmax), the logits' shape
/// without the class dimension (BCE).
pub(super) fn row_shape(logits: &Tensor, g: &Geometry, loss: LossKind) -> Vec<usize> {
    match loss {
        LossKind::Ce => g.loss_shape.clone(),
        LossKind::Bce => logits.shape[..logits.shape.len() - 1].to_vec(),
    }
}

/// Sample weights: float, one per row, in the rows' shape. Errors name the option.
pub(super) fn sample_weights<'a>(
    t: &'a Tensor,
    logits: &Tensor,
    g: &Geometry,
    loss: LossKind,
) -> Result<Cow<'a, [f32]>, CliError> {
    let option =
        |problem: String| CliError::usage(format!("--sample-weights {}: {problem}", t.source));
    let want = row_shape(logits, g, loss);
    let fits = t.shape == want || (want.is_empty() && t.shape == [1]);
    if !fits {
        return Err(option(format!(
            "has shape {} but {} of shape {} has {} rows; expected {}",
            t.shape_string(),
            logits.source,
            logits.shape_string(),
            g.rows,
            shape_string(&want)
        )));
    }
    t.to_f32("sample weights").map_err(|_| {
        option(format!(
            "dtype {} is not allowed: expected float32, float16, bfloat16 or float64",
            t.file_dtype
        ))
    })
}

pub(super) fn per_class<'a>(
    t: &'a Tensor,
    g: &Geometry,
    what: &str,
) -> Result<Cow<'a, [f32]>, CliError> {
    if t.shape != [g.classes] {
        return Err(t.error(format!(
            "{what} have shape {} but there are {} classes; expected ({},)",
            t.shape_string(),
            g.classes,
            g.classes
        )));
    }
    t.to_f32(what)
}

pub(super) fn logits_view<'a>(t: &'a Tensor, g: &Geometry) -> Logits<'a> {
    fn view<'a, T: Element>(d: &'a [T], g: &Geometry) -> Logits<'a> {
        match g.spatial {
            None => Logits::new(d, g.rows, g.classes),
            Some(s) => Logits::class_dim1(d, g.rows.checked_div(s).unwrap_or(0), g.classes, s),
        }
    }
    match &t.data {
        Data::F32(b) => view(b.as_slice(), g),
        Data::F16(b) => view(b.as_slice(), g),
        Data::Bf16(b) => view(b.as_slice(), g),
        Data::I32(_) | Data::I64(_) => unreachable!("checked by the caller"),
    }
}
