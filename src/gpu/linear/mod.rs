//! A linear head on the GPU: host slices in and `Output` and gradients back
//! (`LinearCrossEntropy::compute` on `Backend::Gpu`), or device buffers recorded into the
//! caller's encoder ([`Gpu::record_linear_cross_entropy`], `device.rs`). Both record the same
//! dispatches over the same [`Bindings`]; a host call uploads into the pool first and reads
//! back after.
//!
//! A recorded call first checks the targets on the device (an out-of-range one raises the
//! flag and counts as ignored). Forward: `linear_partials.wgsl` folds each tile of `h·Wᵀ + b`
//! into the partials of each (row, split); the softmax rows pass finishes every row (loss,
//! LSE, metrics, its sums and gradient coefficients); the fixed-order reduction gives the loss
//! and the mean's denominators. A host call gathers the computed rows (ignored ones left out
//! unless LSE or metrics are asked for) and uploads `h` and `W` in their f16 / bf16 dtype when
//! they share one (and D is even), else as f32; its loss is summed from the rows' sums on the
//! host in f64 with the plan's denominators (its backward, like a recorded call's, scales by
//! the device's reduced totals). Inputs larger than one storage binding are cut into chunks
//! of rows and pieces of `W` ([`Pieces`]; a recorded call's `W` stored [D × V] is bound whole
//! in every piece, or refused); the rows' sums are reduced from one binding, so a call takes
//! at most `max_binding / 16` rows (8 Mi at 128 MiB).
//!
//! Backward (when a gradient is asked for), vocabulary chunk by chunk in order ([`Backward`]):
//! `linear_gradient.wgsl` recomputes the chunk's logits and writes `G`,
//! `linear_weight_gradient.wgsl` the chunk's rows of `dW = Gᵀ·h` and its `db`,
//! `linear_hidden_gradient.wgsl` adds `G·W[chunk]` into `dh` (the first chunk writes, unless
//! the destination adds). Every value has one owner, so two runs give the same bits; a
//! gradient not asked for is not computed.
//!
//! Inside each chunk the rows go in groups that fit a binding; `dW` and `db` add over the
//! groups in row order. The chunked strategy ([`Strategy::Chunked`]) turns the loops around:
//! group of rows by group (whole tiles of 64 within the scratch budget, at least one tile,
//! `cut::chunked_rows`),
//! `linear_partials.wgsl` also stores the group's logits chunk-major (`FLAG_STORED_LOGITS`), the
//! rows pass finishes its rows, and its backward chunk by chunk takes `G` from the stored
//! logits in place (no second product); a mean's denominators come first, from the target
//! pass and the reduction, since the first gradient precedes the last row's loss. Focal loss
//! with smoothing reads the stored logits in its focal pass too. Focal loss with label smoothing takes two more passes after the rows
//! pass (every class's focal factor needs the final log-sum-exp): `linear_focal.wgsl`
//! recomputes the logits and sums each (row, split)'s focal terms, `linear_focal_rows.wgsl`
//! adds them per row and finishes its loss and coefficient.
//!
//! Layout: `cut.rs` how a call is cut to the bindings, `bindings.rs` every range a call binds
//! (and the pool's scratch), `launches.rs` its dispatches in order, `buffers.rs` a host call's
//! upload and read-back, `device.rs` the recorded call's API, `shard.rs` a vocabulary shard's
//! calls (the host call stopped where a shard's part ends); this file the two calls and the
//! recording.

mod bindings;
mod buffers;
mod cut;
mod device;
mod launches;
mod product;
mod shard;

pub use self::device::{
    DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch, DeviceLinearOutputs, DeviceMatrix,
};

use self::bindings::Bindings;
use self::cut::{chunked_rows, Backward, Pieces};
use self::launches::{
    backward_launches, chunked_launches, forward_launches, reduce_launches, target_check, Launch,
};
use super::abi::binding::PARAMS;
use super::abi::{
    Params, ReductionCode, FLAG_BIAS, FLAG_ENTROPY, FLAG_FOCAL_ALL, FLAG_SAMPLE_WEIGHTS,
    FLAG_SKIP_IGNORED, FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS,
};
use super::encode::Window;
use super::pipelines::{Kernel, LogitLoad, TargetLoad, Variant};
use super::Gpu;
use crate::error::Result;
use crate::input::Dtype;
use crate::linear::{LinearBatch, LinearRequest, Strategy};
use crate::options::{CrossEntropy, Reduction};
use crate::output::Output;
use crate::plan::linear::LinearPlan;

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
        let call = HostCall::new(self, plan, batch, request, request.metrics)?;
        // One call at a time holds the pool: its buffers are this call's until the read-back.
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        self.scoped(|| {
            let cut = (&call.pieces, call.backward.as_ref());
            let bindings = buffers::upload(self, pool, plan, batch, request, (call.load, cut));
            let launches = call_launches(&bindings, cut, call.base);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            self.record_linear(&mut encoder, &launches, &bindings, call.load);
            self.queue.submit([encoder.finish()]);
            let (records, sums) = buffers::read_back(self, pool, &bindings, plan, request, true)?;
            Ok(buffers::output(plan, request, &records, &sums))
        })
    }

    /// Records `launches` (over `b`, `h` and `W` loaded as `load`) into `encoder` in one
    /// compute pass, every dispatch's `Params` block in one uniform buffer at the adapter's
    /// stride.
    fn record_linear(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        launches: &[Launch<'_>],
        b: &Bindings,
        load: LogitLoad,
    ) {
        let blocks: Vec<Params> = launches.iter().map(|l| l.params).collect();
        let (uniforms, stride) = self.uniform_blocks(&blocks);
        let size = std::mem::size_of::<Params>();
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
            // Only the passes that read targets take their type; the rest have one variant.
            let variant = match launch.kernel {
                Kernel::Reduce => Variant::plain(Kernel::Reduce),
                Kernel::SoftmaxTargets | Kernel::LinearCompact => {
                    Variant::new(launch.kernel, LogitLoad::F32, b.target_load)
                }
                // It binds no logits, and a softmax call builds it with the scalar load:
                // the same pipeline, not the same source compiled under another variant.
                Kernel::SoftmaxRows => Variant::new(launch.kernel, load.as_scalar(), b.target_load),
                kernel => Variant::new(kernel, load, TargetLoad::I64),
            }
            .with_writable(b.writable);
            let variant = match launch.kernel.is_linear() {
                true => variant.with_weight_transposed(b.weight_transposed),
                false => variant,
            };
            self.launch(&mut pass, &self.pipeline(variant), &entries, launch.groups);
        }
    }
}

/// What a host-slice call (whole or a shard's) decides before it uploads: how `h` and `W`
/// are loaded, the cut, the shared `Params`.
struct HostCall {
    load: LogitLoad,
    pieces: Pieces,
    backward: Option<Backward>,
    base: Params,
}

impl HostCall {
    /// `metrics`: the partials sum what entropy needs.
    fn new(
        gpu: &Gpu,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        request: &LinearRequest<'_>,
        metrics: bool,
    ) -> Result<HostCall> {
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        // h and W in their own dtype when they share an f16 or bf16 one and D is even (so
        // every window of whole rows is whole words), else both widened to f32.
        let dtype = batch.hidden.dtype();
        let load = match dtype {
            Dtype::F16 | Dtype::Bf16 if batch.weight.dtype() == dtype && d % 2 == 0 => {
                linear_load(dtype, d)
            }
            _ => linear_load(Dtype::F32, d),
        };
        let element = if load.is_half() { 2 } else { 4 };
        let chunked = (plan.strategy == Strategy::Chunked).then_some((plan.group_rows, plan.auto));
        let (pieces, backward) = cut((n, d, v), element, plan.gradient, gpu.max_binding, chunked)?;
        let flags = Flags {
            class_weights: batch.class_weights.is_some(),
            sample_weights: batch.sample_weights.is_some(),
            bias: batch.bias.is_some(),
            metrics,
            per_row_upstream: plan.options.reduction == Reduction::None
                && request.upstream.is_some(),
            // Ignored rows are left out before the upload.
            skip_ignored: false,
        };
        let upstream = match (plan.options.reduction, request.upstream) {
            (Reduction::Sum | Reduction::Mean, Some(u)) => u[0],
            _ => 1.0,
        };
        let columns = (d, v, plan.shard.classes);
        let base = Params {
            ignore_lo: buffers::IGNORED as u32,
            ignore_hi: (buffers::IGNORED >> 32) as u32,
            ..base_params(&plan.options, columns, flags, upstream, &pieces)
        };
        Ok(HostCall {
            load,
            pieces,
            backward,
            base,
        })
    }
}

/// How the kernels load `h` and `W` of `dtype` and hidden size `d`: four values at a time
/// where D is a multiple of 4 (f32 as 16-byte vec4s, f16 / bf16 as two words; every row window
/// then starts at a multiple of four values).
pub(super) fn linear_load(dtype: Dtype, d: usize) -> LogitLoad {
    match (LogitLoad::scalar(dtype), d.is_multiple_of(4)) {
        (LogitLoad::F32, true) => LogitLoad::F32x4,
        (LogitLoad::F16, true) => LogitLoad::F16x4,
        (LogitLoad::Bf16, true) => LogitLoad::Bf16x4,
        (load, _) => load,
    }
}

/// A whole call's dispatches: the target check (a recorded call), the forward, the reduction,
/// the backward.
fn call_launches<'a>(
    b: &'a Bindings,
    (pieces, backward): (&Pieces, Option<&Backward>),
    base: Params,
) -> Vec<Launch<'a>> {
    if let Some(back) = backward.filter(|back| back.stored) {
        return chunked_launches(b, pieces, back, base);
    }
    let mut launches: Vec<_> = target_check(b, base, false).into_iter().collect();
    launches.extend(forward_launches(b, pieces, base));
    launches.extend(reduce_launches(b, base));
    if let Some(back) = backward {
        launches.extend(backward_launches(b, back, base));
    }
    launches
}

#[cfg(feature = "cli")]
impl Gpu {
    /// Whether a recorded chunked call of `shape` (`h` and `W` of `element` bytes a value, a
    /// budget of `budget_rows` rows of logits) holds every row's logits in one group, as the
    /// bench's materialized baseline needs: the cut the call itself takes.
    pub(crate) fn chunked_holds_every_row(
        &self,
        shape: (usize, usize, usize),
        element: u64,
        budget_rows: usize,
    ) -> bool {
        let cut = cut(
            shape,
            element,
            true,
            self.max_binding,
            Some((budget_rows, false)),
        );
        matches!(cut, Ok((_, Some(back))) if back.stored && back.groups.len() == 1)
    }
}

/// How a call of `(n, d, v)` with `element` bytes per value of `h` and `W` is cut to the
/// bindings: the forward's pieces and, for a gradient, the backward's chunks.
/// `chunked`: the chunked strategy's rows of logits within the budget and whether `Auto` chose
/// it (it needs a gradient and rows; else, or where `Auto` cannot hold it, the fused cut).
fn cut(
    shape: (usize, usize, usize),
    element: u64,
    gradient: bool,
    max_binding: u64,
    chunked: Option<(usize, bool)>,
) -> Result<(Pieces, Option<Backward>)> {
    let chunked = chunked.filter(|_| gradient && shape.0 > 0);
    let group = match chunked {
        Some(rows) => chunked_rows(shape, element, max_binding, rows)?,
        None => None,
    };
    let pieces = Pieces::new(shape, element, max_binding, group)?;
    // The stored groups are the forward's row chunks.
    let stored = group.map(|_| pieces.row_chunks[0].1);
    let backward = match gradient {
        true => Some(Backward::new(shape, element, max_binding, stored)?),
        false => None,
    };
    Ok((pieces, backward))
}

/// Which optional inputs and outputs a call has (its `Params` flags beside the options').
pub(super) struct Flags {
    pub(super) class_weights: bool,
    pub(super) sample_weights: bool,
    pub(super) bias: bool,
    /// Entropy and confidence for the metrics.
    pub(super) metrics: bool,
    /// `Reduction::None` with a per-row upstream.
    pub(super) per_row_upstream: bool,
    /// Ignored rows compacted on the device and given no products (a recorded call without
    /// per-row records).
    pub(super) skip_ignored: bool,
}

/// The fields every dispatch of a call shares: shape, options, flags, the reduction, the
/// scalar upstream of sum and mean.
/// `(hidden, vocab, classes)`: D, the call's columns (a shard's width) and the softmax's
/// classes (the whole vocabulary, for smoothing's `ε / C`).
fn base_params(
    options: &CrossEntropy,
    (hidden, vocab, classes): (usize, usize, usize),
    with: Flags,
    upstream: f32,
    pieces: &Pieces,
) -> Params {
    let mut flags = FLAG_TARGET_LOGIT;
    for (on, flag) in [
        (with.class_weights, FLAG_WEIGHTS),
        (with.sample_weights, FLAG_SAMPLE_WEIGHTS),
        (options.label_smoothing > 0.0, FLAG_WANT_WZ),
        (with.metrics, FLAG_ENTROPY),
        (with.bias, FLAG_BIAS),
        // Focal loss with smoothing: the rows pass leaves the loss to the focal passes.
        (
            crate::plan::needs_focal_pass(options, false),
            FLAG_FOCAL_ALL,
        ),
        (with.per_row_upstream, FLAG_UPSTREAM),
        (with.skip_ignored, FLAG_SKIP_IGNORED),
    ] {
        if on {
            flags |= flag;
        }
    }
    Params {
        classes: vocab as u32,
        splits: pieces.splits as u32,
        span: pieces.span as u32,
        invocations_per_row: 1,
        flags,
        reduction: ReductionCode::from(options.reduction) as u32,
        scale: options.logit_scale,
        cap: options.softcap.unwrap_or(0.0),
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
        uniform: options.label_smoothing / classes as f32,
        ignore_lo: options.ignore_index as u64 as u32,
        ignore_hi: ((options.ignore_index as u64) >> 32) as u32,
        upstream,
        focal_gamma: options.focal_gamma,
        hidden: hidden as u32,
        ..Params::default()
    }
}
