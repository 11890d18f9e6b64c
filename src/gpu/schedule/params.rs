//! The `Params` of a call: the fields every dispatch shares (shape, options, flags, the
//! reduction code), and the blocks of each dispatch (its chunk, piece or pass) in one uniform
//! buffer.

use super::super::abi::{
    Params, ReductionCode, FLAG_ALPHA, FLAG_CHECK_TARGETS, FLAG_DENSE, FLAG_ENTROPY,
    FLAG_FOCAL_ALL, FLAG_GRADIENT, FLAG_KEEP_LOSSES, FLAG_POS_WEIGHT, FLAG_SAMPLE_WEIGHTS,
    FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS,
};
use super::super::device::{DeviceBatch, DeviceGradient, DeviceOutputs};
use super::super::encode::Window;
use super::super::launch::LaunchShape;
use super::Call;
use crate::options::InputKind;
use crate::plan::Loss;
use std::ops::Range;

/// The call's shared `Params`: `spatial` is `S` of the (N, C, S) layout (0 for rows), `dense`
/// whether the targets are dense, `want_entropy` whether the metrics are asked for.
#[allow(clippy::too_many_arguments)]
pub(super) fn shared(
    job: Loss,
    batch: &DeviceBatch,
    out: &DeviceOutputs,
    shape: LaunchShape,
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
    if out.rows.is_some() {
        flags |= FLAG_KEEP_LOSSES;
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
            if crate::plan::needs_focal_pass(&o, dense) {
                flags |= FLAG_FOCAL_ALL;
            }
            o.reduction
        }
        Loss::Binary(o) => {
            if batch.pos_weight.is_some() {
                flags |= FLAG_POS_WEIGHT;
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

/// Every dispatch's `Params` block, in one uniform buffer at the adapter's uniform stride:
/// one per chunk, one per reduction pass, the targets pass's, one per long-row piece, one
/// per backward run.
#[derive(Default)]
pub(super) struct Blocks {
    /// The blocks, in buffer order.
    pub params: Vec<Params>,
    uniforms: Option<wgpu::Buffer>,
    stride: u64,
    /// The reduction passes' blocks.
    pub reduce: Range<usize>,
    /// The targets pass's block.
    pub targets: usize,
    /// The first long-row piece's block.
    pub pieces: usize,
    /// The first backward run's block.
    pub runs: usize,
}

impl Blocks {
    /// The blocks of `call`, from the shared `base`.
    pub(super) fn new(call: &Call, base: Params) -> Blocks {
        let (reduce_items, is_softmax) = (call.plan.reduce_items, call.plan.softmax);
        let classes = call.plan.classes as u64;
        // The element offsets a window of elements `first .. first + count` starts at.
        let offsets = |first: u64, count: u64| {
            let (_, elem_offset) = call.logits(first, count);
            let (_, f32_offset) = call.f32s(call.targets_buffer, first, count);
            (elem_offset, f32_offset)
        };
        let mut params: Vec<Params> = Vec::new();
        for chunk in &call.plan.chunks {
            let first = chunk.row0 as u64 * classes;
            let count = chunk.rows as u64 * classes;
            let (elem_offset, f32_offset) = offsets(first, count);
            params.push(Params {
                rows: chunk.rows as u32,
                row0: if is_softmax {
                    chunk.row0 as u32
                } else {
                    (first / 4) as u32
                },
                elem_offset,
                f32_offset,
                elems: count as u32,
                first_row: chunk.row0 as u32,
                ..base
            });
        }
        let reduce_start = params.len();
        for (count, _, _) in super::reduce_passes(reduce_items) {
            params.push(Params {
                elems: count as u32,
                ..base
            });
        }
        let reduce = reduce_start..params.len();
        // The fused kernel's targets pass covers every row at once (targets and sample
        // weights are bound whole).
        let targets = params.len();
        params.push(Params {
            rows: call.plan.rows as u32,
            ..base
        });
        let pieces = params.len();
        for piece in &call.plan.pieces {
            let (first, count, col0) = call.piece_span(piece);
            let (elem_offset, f32_offset) = offsets(first, count);
            params.push(Params {
                rows: 1,
                row0: piece.row as u32,
                elem_offset,
                f32_offset,
                col0: col0 as u32,
                split0: piece.split0,
                ..base
            });
        }
        let runs = params.len();
        for &(first, count) in &call.plan.runs {
            let (elem_offset, f32_offset) = offsets(first, count);
            params.push(Params {
                row0: (first / classes) as u32,
                col0: (first % classes) as u32,
                elem_offset,
                f32_offset,
                elems: count as u32,
                ..base
            });
        }
        let (uniforms, stride) = call.gpu.uniform_blocks(&params);
        Blocks {
            params,
            uniforms: Some(uniforms),
            stride,
            reduce,
            targets,
            pieces,
            runs,
        }
    }

    /// Block `i` as a uniform binding.
    pub(super) fn window(&self, i: usize) -> Window<'_> {
        Window {
            buffer: self.uniforms.as_ref().expect("blocks built"),
            offset: i as u64 * self.stride,
            size: std::mem::size_of::<Params>() as u64,
        }
    }
}
