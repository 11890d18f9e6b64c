//! A linear head on the GPU (host slices in, `Output` and gradients back).
//!
//! Forward: the computed rows' `h` and the head's `W` are uploaded in their f16 / bf16 dtype
//! when they share one (and D is even), else as f32, `b` as f32; `linear_partials.wgsl` folds
//! each tile of `h·Wᵀ + b` into the partials of each (row, split); the softmax rows pass
//! finishes every row (loss, LSE, metrics, its sums and gradient coefficients). The reduced
//! loss is summed from the rows' sums on the host in f64, in row order, with the plan's
//! denominators. Inputs larger than one storage binding are cut into chunks of rows and pieces
//! of `W` ([`Pieces`]).
//!
//! Backward (when a gradient is asked for), vocabulary chunk by chunk in order ([`Backward`]):
//! `linear_gradient.wgsl` recomputes the chunk's logits and writes `G`,
//! `linear_weight_gradient.wgsl` the chunk's rows of `dW = Gᵀ·h` and its `db`,
//! `linear_hidden_gradient.wgsl` adds `G·W[chunk]` into `dh` (the first chunk writes). Every
//! value has one owner, so two runs give the same bits. The results are read back and written
//! or added into the caller's buffers.
//!
//! Inside each chunk the rows go in groups that fit a binding; `dW` and `db` add over the
//! groups in row order. Focal loss with label smoothing takes two more passes after the rows
//! pass (every class's focal factor needs the final log-sum-exp): `linear_focal.wgsl`
//! recomputes the logits and sums each (row, split)'s focal terms, `linear_focal_rows.wgsl`
//! adds them per row and finishes its loss and coefficient.
//!
//! Layout: `cut.rs` how a call is cut to the bindings, `buffers.rs` its buffers (upload and
//! read-back), `launches.rs` its dispatches in order; this file the call and its output.

mod buffers;
mod cut;
mod launches;

use self::buffers::Buffers;
use self::cut::{Backward, Pieces};
use self::launches::{backward_launches, forward_launches};
use super::abi::binding::PARAMS;
use super::abi::{
    Params, ReductionCode, FLAG_BIAS, FLAG_ENTROPY, FLAG_FOCAL_ALL, FLAG_SAMPLE_WEIGHTS,
    FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS,
};
use super::device::GpuRow;
use super::encode::Window;
use super::pipelines::{LogitLoad, TargetLoad, Variant};
use super::Gpu;
use crate::error::Result;
use crate::input::{Dtype, Matrix};
use crate::linear::{LinearBatch, LinearRequest};
use crate::math::reduce::loss;
use crate::options::Reduction;
use crate::output::Output;
use crate::plan::linear::LinearPlan;
use wgpu::util::DeviceExt;

/// Rows of one workgroup's tile (`BM` in the shader, defined by the ABI).
pub(super) const TILE_ROWS: usize = super::abi::LINEAR_TILE as usize;
/// Workgroups a forward aims for (row tiles × splits): enough to fill a large GPU.
pub(super) const WORKGROUPS: usize = 1024;

impl Gpu {
    /// A checked linear call (module docs): upload, record the forward and, for gradients,
    /// the backward, submit once, read back what the request asks for.
    pub(crate) fn linear(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        request: &mut LinearRequest<'_>,
    ) -> Result<Output> {
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        // h and W in their own dtype when they share an f16 or bf16 one and D is even (so
        // every window of whole rows is whole words), else both widened to f32.
        let dtype = batch.hidden.dtype();
        let load = match dtype {
            Dtype::F16 | Dtype::Bf16 if batch.weight.dtype() == dtype && d % 2 == 0 => {
                LogitLoad::scalar(dtype)
            }
            _ => LogitLoad::F32,
        };
        let element = if load == LogitLoad::F32 { 4 } else { 2 };
        let pieces = Pieces::new((n, d, v), element, self.max_binding)?;
        let backward = match plan.gradient {
            true => Some(Backward::new((n, d, v), element, self.max_binding)?),
            false => None,
        };
        let base = base_params(plan, batch, request, &pieces);
        // One call at a time holds the pool: its buffers are this call's until the read-back.
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        self.scoped(|| {
            let cut = (load, &pieces, &backward);
            let buffers = Buffers::upload(self, plan, batch, request, cut, pool);
            let mut launches = forward_launches(&buffers, &pieces, base);
            if let Some(back) = &backward {
                launches.extend(backward_launches(&buffers, back, base));
            }
            // Every launch's Params block in one uniform buffer, at the adapter's stride.
            let size = std::mem::size_of::<Params>();
            let stride = (size as u64).next_multiple_of(self.uniform_alignment);
            let mut bytes = vec![0u8; stride as usize * launches.len().max(1)];
            for (i, launch) in launches.iter().enumerate() {
                bytes[i * stride as usize..][..size]
                    .copy_from_slice(bytemuck::bytes_of(&launch.params));
            }
            let uniforms = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("xent linear params"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("xent linear"),
                    timestamp_writes: None,
                });
                for (i, launch) in launches.iter().enumerate() {
                    let params = Window {
                        buffer: &uniforms,
                        offset: i as u64 * stride,
                        size: size as u64,
                    };
                    let mut entries = vec![(PARAMS, params)];
                    entries.extend(launch.windows.iter().copied());
                    let variant = Variant::new(launch.kernel, load, TargetLoad::I64);
                    self.launch(&mut pass, &self.pipeline(variant), &entries, launch.groups);
                }
            }
            self.queue.submit([encoder.finish()]);
            buffers.read_back(self, pool, plan, request)
        })
    }
}

/// The fields every dispatch of a call shares: shape, options, flags, the reduction.
fn base_params(
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
    request: &LinearRequest<'_>,
    pieces: &Pieces,
) -> Params {
    let options = plan.options;
    let mut flags = FLAG_TARGET_LOGIT;
    for (on, flag) in [
        (batch.class_weights.is_some(), FLAG_WEIGHTS),
        (batch.sample_weights.is_some(), FLAG_SAMPLE_WEIGHTS),
        (options.label_smoothing > 0.0, FLAG_WANT_WZ),
        (request.metrics, FLAG_ENTROPY),
        (batch.bias.is_some(), FLAG_BIAS),
        // Focal loss with smoothing: the rows pass leaves the loss to the focal passes.
        (
            crate::plan::needs_focal_pass(&options, false),
            FLAG_FOCAL_ALL,
        ),
        // The backward's per-row upstream (`none`).
        (
            options.reduction == Reduction::None && request.upstream.is_some(),
            FLAG_UPSTREAM,
        ),
    ] {
        if on {
            flags |= flag;
        }
    }
    Params {
        classes: plan.vocab as u32,
        splits: pieces.splits as u32,
        span: pieces.span as u32,
        invocations_per_row: 1,
        flags,
        reduction: ReductionCode::from(options.reduction) as u32,
        scale: options.logit_scale,
        cap: options.softcap.unwrap_or(0.0),
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
        uniform: options.label_smoothing / plan.vocab as f32,
        ignore_lo: options.ignore_index as u64 as u32,
        ignore_hi: ((options.ignore_index as u64) >> 32) as u32,
        // The scalar upstream of sum and mean (the backward's scales).
        upstream: match (options.reduction, request.upstream) {
            (Reduction::Sum | Reduction::Mean, Some(u)) => u[0],
            _ => 1.0,
        },
        focal_gamma: options.focal_gamma,
        hidden: plan.hidden as u32,
        ..Params::default()
    }
}

/// The gradients read back (`dh` of the computed rows, `dW`, `db`) into the caller's buffers,
/// written or added as each asks; `dh` of rows not computed is left (add) or zero (write).
pub(super) fn deliver(
    plan: &LinearPlan,
    request: &mut LinearRequest<'_>,
    (dh, dw, db): (&[f32], &[f32], &[f32]),
) {
    let d = plan.hidden;
    if let Some(out) = request.hidden_gradient.as_mut() {
        let adds = out.adds();
        let out = out.data();
        if !adds {
            out.fill(0.0);
        }
        for (i, &r) in plan.computed.iter().enumerate() {
            for (o, &g) in out[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&dh[i * d..(i + 1) * d])
            {
                *o = if adds { *o + g } else { g };
            }
        }
    }
    for (buffer, values) in [
        (request.weight_gradient.as_mut(), dw),
        (request.bias_gradient.as_mut(), db),
    ] {
        if let Some(out) = buffer {
            let adds = out.adds();
            for (o, &g) in out.data().iter_mut().zip(values) {
                *o = if adds { *o + g } else { g };
            }
        }
    }
}

/// All of `m` (`rows` rows) as f32 words: borrowed-and-copied for f32, widened otherwise.
pub(super) fn f32_words(m: &Matrix<'_>, rows: usize) -> Vec<f32> {
    m.rows_f32(0..rows, &mut Vec::new()).to_vec()
}

/// The call's output from the computed rows' records and sums.
pub(super) fn output(
    plan: &LinearPlan,
    request: &LinearRequest<'_>,
    records: &[GpuRow],
    sums: &[[f32; 4]],
) -> Output {
    let reduction = plan.options.reduction;
    let (ce, z) = sums.iter().fold((0f64, 0f64), |(ce, z), s| {
        (ce + s[0] as f64, z + s[1] as f64)
    });
    let row_losses = (request.row_losses || reduction == Reduction::None).then(|| {
        let mut all = vec![0f32; plan.rows];
        for (&row, r) in plan.computed.iter().zip(records) {
            all[row] = r.loss;
        }
        all
    });
    Output {
        loss: loss(reduction, (ce, z), plan.denominators).map(|v| v as f32),
        row_losses,
        lse: request.lse.then(|| records.iter().map(|r| r.lse).collect()),
        metrics: request.metrics.then(|| super::host::metrics(records)),
    }
}
