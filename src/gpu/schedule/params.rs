//! The parameters every dispatch of a call shares: shape, options, flags and the reduction code
//! (`Params` in `abi.rs`); a dispatch then sets its own chunk fields on a copy.

use super::super::abi::{
    Params, ReductionCode, FLAG_ALPHA, FLAG_CHECK_TARGETS, FLAG_DENSE, FLAG_ENTROPY,
    FLAG_FOCAL_ALL, FLAG_GRADIENT, FLAG_KEEP_LOSSES, FLAG_POS_WEIGHT, FLAG_SAMPLE_WEIGHTS,
    FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS,
};
use super::super::device::{DeviceBatch, DeviceGradient, DeviceOutputs};
use super::super::launch::Shape;
use crate::options::InputKind;
use crate::plan::Loss;

/// The call's shared `Params`: `spatial` is `S` of the (N, C, S) layout (0 for rows), `dense`
/// whether the targets are dense, `want_entropy` whether the metrics are asked for.
#[allow(clippy::too_many_arguments)]
pub(super) fn shared(
    job: Loss,
    batch: &DeviceBatch,
    out: &DeviceOutputs,
    shape: Shape,
    spatial: u32,
    dense: bool,
    want_entropy: bool,
) -> Params {
    let (rows, classes) = (batch.rows, batch.classes);
    let mut base = Params {
        classes: classes as u32,
        spatial,
        splits: shape.splits,
        span: shape.span,
        invocations_per_row: shape.invocations_per_row,
        upstream: out.upstream_scalar,
        ..Params::default()
    };
    let mut flags = 0;
    if batch.class_weights.is_some() {
        flags |= FLAG_WEIGHTS;
    }
    if dense {
        flags |= FLAG_DENSE;
    }
    if out.upstream.is_some() {
        flags |= FLAG_UPSTREAM;
    }
    if batch.sample_weights.is_some() {
        flags |= FLAG_SAMPLE_WEIGHTS;
    }
    let reduction = match job {
        Loss::Softmax(o) => {
            base.scale = o.logit_scale;
            base.cap = o.softcap.unwrap_or(0.0);
            base.prob_eps = match o.input {
                InputKind::Logits => 0.0,
                InputKind::Probabilities { eps } => eps,
            };
            base.smoothing = o.label_smoothing;
            base.uniform = o.label_smoothing / classes as f32;
            base.z_loss = o.z_loss;
            base.ignore_lo = o.ignore_index as u64 as u32;
            base.ignore_hi = ((o.ignore_index as u64) >> 32) as u32;
            if o.label_smoothing > 0.0 {
                flags |= FLAG_WANT_WZ;
            }
            if want_entropy {
                flags |= FLAG_ENTROPY;
            }
            if !dense {
                flags |= FLAG_CHECK_TARGETS | FLAG_TARGET_LOGIT;
            }
            base.focal_gamma = o.focal_gamma;
            if o.is_focal() && (dense || o.label_smoothing > 0.0) {
                flags |= FLAG_FOCAL_ALL;
            }
            o.reduction
        }
        Loss::Binary(o) => {
            if batch.pos_weight.is_some() {
                flags |= FLAG_POS_WEIGHT;
            }
            if out.rows.is_some() {
                flags |= FLAG_KEEP_LOSSES;
            }
            if !matches!(out.gradient, DeviceGradient::None) {
                flags |= FLAG_GRADIENT;
            }
            if let Some(alpha) = o.focal_alpha {
                flags |= FLAG_ALPHA;
                base.focal_alpha = alpha;
            }
            base.smoothing = o.label_smoothing;
            base.focal_gamma = o.focal_gamma;
            base.denominator = (rows as f64 * classes as f64) as f32;
            o.reduction
        }
    };
    base.flags = flags;
    base.reduction = ReductionCode::from(reduction) as u32;
    base
}
