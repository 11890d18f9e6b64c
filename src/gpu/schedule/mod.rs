//! The schedule of one call: which kernels run, over which windows, in which order. Softmax
//! cross-entropy is fused (a targets pass, then one kernel per chunk) or three-pass
//! (partials → rows → [focal] per chunk, long rows in pieces; the backward after the
//! reduction); BCE is one element pass per chunk; every call ends in the fixed-order
//! reduction. Recorded into the caller's encoder, in one compute pass.
//!
//! Every decision (chunks, launch shape, fused or not, long rows) is taken once by
//! `plan::gpu::GpuCall`; `record` orders the launches, and `softmax.rs` and `bce.rs` fill
//! the launchers of `launchers.rs` from the call.

mod bce;
mod params;
mod scratch;
mod softmax;

use super::device::{
    DeviceBatch, DeviceGradient, DeviceOutputs, DeviceSaved, DeviceTargets, DeviceUpstream,
};
use super::encode::{window, Region, Window};
use super::launchers::Reduce;
use super::pipelines::{Kernel, LogitLoad, Store, TargetLoad, Variant, WORKGROUP_SIZE};
use super::pool::{Pool, Role};
use super::Gpu;
use crate::error::Result;
use crate::input::Layout;
use crate::options::Reduction;
use crate::plan::device::check_backward;
use crate::plan::gpu::GpuCall;
use crate::plan::Loss;
use params::Blocks;
use scratch::Scratch;

/// The out-of-range-target flag of recorded calls (read by `take_target_error`), and the one
/// host-slice calls clear, check and own, so a host call never loses a recorded call's flag.
pub(super) const RECORDED_CALL_ERROR: Role = Role::RecordedTargetError;
pub(super) const HOST_CALL_ERROR: Role = Role::HostTargetError;

/// One call: its decisions ([`GpuCall`]) and the buffers every launch of it binds.
struct Call<'a> {
    gpu: &'a Gpu,
    batch: &'a DeviceBatch<'a>,
    out: &'a DeviceOutputs<'a>,
    plan: GpuCall,
    scalar_load: LogitLoad,
    target_load: TargetLoad,
    targets_buffer: wgpu::BufferSlice<'a>,
    scratch: Scratch,
    blocks: Blocks,
    /// A backward whose scalar upstream is on the device (`DeviceUpstream::Device`): the
    /// pooled block it was copied into, the upstream at word 4 (after the softmax totals).
    device_upstream: Option<wgpu::Buffer>,
}

/// Records one call into `encoder`, using the pool's scratch buffers: the decisions of
/// [`GpuCall::new`], then the launches in order (the targets pass, the chunks, the reduction,
/// the three-pass backward), in one compute pass.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    gpu: &Gpu,
    pool: &mut Pool,
    encoder: &mut wgpu::CommandEncoder,
    job: Loss,
    batch: &DeviceBatch,
    out: &DeviceOutputs,
    want_entropy: bool,
    error_role: Role,
) -> Result<()> {
    let plan = GpuCall::new(job, batch, out, gpu.adapter_limits())?;
    let scratch = scratch(gpu, pool, &plan, out, error_role, true)?;
    let call = Call::new(gpu, job, (batch, out), plan, scratch, want_entropy, None);

    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("xent"),
        timestamp_writes: None,
    });
    let plan = &call.plan;
    if plan.targets_first {
        call.targets_pass(&mut pass);
        if plan.reduce_first {
            call.reduce(&mut pass);
        }
    }
    for (i, &chunk) in plan.chunks.iter().enumerate() {
        if chunk.rows == 0 {
            continue;
        }
        match (plan.softmax, plan.fused) {
            (true, Some(fused)) => call.fused_chunk(&mut pass, i, chunk, fused),
            (true, None) => call.three_pass_chunk(&mut pass, i, chunk),
            (false, _) => call.bce_chunk(&mut pass, i, chunk),
        }
    }
    call.reduce(&mut pass);
    if plan.backward {
        call.backward(&mut pass);
    }
    Ok(())
}

/// Records the backward of a softmax call from a forward's saved rows (`saved`): the gradient
/// pass alone, over the logits, with the saved coefficients and totals, the upstream a host
/// scalar, a device scalar (copied beside the totals into a pooled block, which the kernel
/// reads under `FLAG_DEVICE_UPSTREAM`) or per-row values.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_backward(
    gpu: &Gpu,
    pool: &mut Pool,
    encoder: &mut wgpu::CommandEncoder,
    options: &crate::options::CrossEntropy,
    batch: &DeviceBatch,
    saved: DeviceSaved,
    gradient: DeviceGradient,
    upstream: DeviceUpstream,
) -> Result<()> {
    let job = Loss::Softmax(*options);
    // The plan of a three-pass call with this gradient and upstream; its loss goes nowhere.
    let nowhere = pool.get(&gpu.device, Role::Loss, 16, super::encode::storage_usage());
    let out = backward_outputs(nowhere.slice(..), gradient, upstream, Some(saved));
    let adapter = crate::plan::gpu::Adapter {
        fused: false,
        ..gpu.adapter_limits()
    };
    check_backward(batch, Some(&saved), &gradient, &upstream, options.reduction)?;
    let plan = GpuCall::new(job, batch, &out, adapter)?;
    let mut scratch = scratch(gpu, pool, &plan, &out, RECORDED_CALL_ERROR, false)?;
    // The sum reads only the upstream; the mean the saved totals beside it.
    let totals = (options.reduction == Reduction::Mean).then_some(saved.totals);
    let block = upstream_block(gpu, pool, encoder, upstream, totals);
    if let Some(block) = &block {
        scratch.totals = Region::whole(block);
    }
    let call = Call::new(gpu, job, (batch, &out), plan, scratch, false, block);
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("xent backward"),
        timestamp_writes: None,
    });
    call.backward(&mut pass);
    Ok(())
}

/// Records the gradient of binary cross-entropy with logits, recomputed from the logits and
/// targets (BCE keeps no per-row state): the element pass alone, the upstream a host scalar,
/// a device scalar (copied into a pooled block, read under `FLAG_DEVICE_UPSTREAM`) or
/// per-element values. No loss is written.
pub(super) fn record_binary_backward(
    gpu: &Gpu,
    pool: &mut Pool,
    encoder: &mut wgpu::CommandEncoder,
    options: &crate::options::BinaryCrossEntropy,
    batch: &DeviceBatch,
    gradient: DeviceGradient,
    upstream: DeviceUpstream,
) -> Result<()> {
    let job = Loss::Binary(*options);
    check_backward(batch, None, &gradient, &upstream, options.reduction)?;
    let nowhere = pool.get(&gpu.device, Role::Loss, 16, super::encode::storage_usage());
    let out = backward_outputs(nowhere.slice(..), gradient, upstream, None);
    let plan = GpuCall::new(job, batch, &out, gpu.adapter_limits())?;
    let scratch = scratch(gpu, pool, &plan, &out, RECORDED_CALL_ERROR, false)?;
    let block = upstream_block(gpu, pool, encoder, upstream, None);
    let call = Call::new(gpu, job, (batch, &out), plan, scratch, false, block);
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("xent binary backward"),
        timestamp_writes: None,
    });
    for (i, &chunk) in call.plan.chunks.iter().enumerate() {
        if chunk.rows > 0 {
            call.bce_chunk(&mut pass, i, chunk);
        }
    }
    Ok(())
}

/// The outputs of a backward: its loss goes to `nowhere`, the upstream where the kernels read
/// it (per row or element in `upstream`, a host scalar in `upstream_scalar`, a device scalar
/// through [`upstream_block`]).
fn backward_outputs<'a>(
    nowhere: wgpu::BufferSlice<'a>,
    gradient: DeviceGradient<'a>,
    upstream: DeviceUpstream<'a>,
    saved: Option<DeviceSaved<'a>>,
) -> DeviceOutputs<'a> {
    DeviceOutputs {
        loss: nowhere,
        rows: None,
        gradient,
        upstream: match upstream {
            DeviceUpstream::Rows(u) => Some(u),
            _ => None,
        },
        upstream_scalar: match upstream {
            DeviceUpstream::Scalar(u) => u,
            _ => 1.0,
        },
        target_error: None,
        saved,
    }
}

/// A device scalar upstream copied into a pooled block at word 4, after the softmax mean's
/// saved `totals` (words 0..4) where given; `None` for other upstreams.
fn upstream_block(
    gpu: &Gpu,
    pool: &mut Pool,
    encoder: &mut wgpu::CommandEncoder,
    upstream: DeviceUpstream,
    totals: Option<wgpu::BufferSlice>,
) -> Option<wgpu::Buffer> {
    let DeviceUpstream::Device(u) = upstream else {
        return None;
    };
    let block = pool.get(
        &gpu.device,
        Role::UpstreamBlock,
        32,
        super::encode::storage_usage(),
    );
    if let Some(totals) = totals {
        encoder.copy_buffer_to_buffer(totals.buffer(), totals.offset(), &block, 0, 16);
    }
    encoder.copy_buffer_to_buffer(u.buffer(), u.offset(), &block, 16, 4);
    Some(block)
}

/// The pooled scratch of `plan`'s call, its target-error flag `error_role`'s where `out` has
/// none; `forward`: whether its forward runs (a backward alone binds no partials).
fn scratch(
    gpu: &Gpu,
    pool: &mut Pool,
    plan: &GpuCall,
    out: &DeviceOutputs,
    error_role: Role,
    forward: bool,
) -> Result<Scratch> {
    let three_pass = forward && plan.softmax && plan.fused.is_none();
    Scratch::take(
        pool,
        &gpu.device,
        (plan.rows, plan.classes),
        three_pass.then_some(plan.shape),
        (plan.reduce_items, plan.softmax),
        out,
        error_role,
        gpu.max_binding,
    )
}

impl<'a> Call<'a> {
    /// The call of `plan` on `batch` and `out` with its scratch, and every dispatch's `Params`
    /// block from the shared fields (with `FLAG_DEVICE_UPSTREAM` where the upstream is in a
    /// device block).
    fn new(
        gpu: &'a Gpu,
        job: Loss,
        (batch, out): (&'a DeviceBatch<'a>, &'a DeviceOutputs<'a>),
        plan: GpuCall,
        scratch: Scratch,
        want_entropy: bool,
        device_upstream: Option<wgpu::Buffer>,
    ) -> Call<'a> {
        let spatial = match plan.layout {
            Layout::Rows => 0,
            Layout::ClassDim1 { spatial } => spatial as u32,
        };
        let mut base = params::shared(
            job,
            batch,
            out,
            plan.shape,
            spatial,
            plan.dense,
            want_entropy,
        );
        if device_upstream.is_some() {
            base.flags |= super::abi::FLAG_DEVICE_UPSTREAM;
        }
        if let Some(fused) = plan.fused {
            base.invocations_per_row = fused.invocations_per_row;
        }
        let mut call = Call {
            gpu,
            batch,
            out,
            scalar_load: LogitLoad::scalar(batch.dtype),
            target_load: match batch.targets {
                DeviceTargets::I32(_) => TargetLoad::I32,
                DeviceTargets::I64(_) => TargetLoad::I64,
                DeviceTargets::Dense(_) => TargetLoad::Dense,
            },
            targets_buffer: match batch.targets {
                DeviceTargets::I32(t) | DeviceTargets::I64(t) | DeviceTargets::Dense(t) => t,
            },
            scratch,
            blocks: Blocks::default(),
            plan,
            device_upstream,
        };
        call.blocks = Blocks::new(&call, base);
        call
    }
}

/// A buffer the fixed-order reduction reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    RowSums,
    Ping,
    Pong,
    Totals,
}

/// The fixed-order reduction of `items` row sums, pass by pass: the pass's input count, where
/// it reads and where it writes. Each pass takes 4·WG inputs to one; the last writes the
/// totals (and the loss), the ones before alternate between ping and pong.
pub(super) fn reduce_passes(items: u64) -> Vec<(u64, Stage, Stage)> {
    let mut passes = Vec::new();
    let (mut count, mut source) = (items, Stage::RowSums);
    loop {
        let next = count.div_ceil(4 * WORKGROUP_SIZE as u64);
        let target = match (next <= 1, passes.len() % 2) {
            (true, _) => Stage::Totals,
            (false, 0) => Stage::Ping,
            (false, _) => Stage::Pong,
        };
        passes.push((count, source, target));
        if next <= 1 {
            return passes;
        }
        (count, source) = (next, target);
    }
}

impl Call<'_> {
    /// The logits of elements `first .. first + count` and the element offset inside the
    /// window.
    fn logits(&self, first: u64, count: u64) -> (Window<'_>, u32) {
        let align = self.gpu.storage_alignment;
        let logits = Window::slice(self.batch.logits);
        window(logits, first, count, self.plan.elem, align, 4)
    }

    /// The same elements of an f32 slice in the logits' layout (dense targets, gradient,
    /// BCE's upstream and element losses).
    fn f32s<'b>(&self, slice: wgpu::BufferSlice<'b>, first: u64, count: u64) -> (Window<'b>, u32) {
        let align = self.gpu.storage_alignment;
        window(Window::slice(slice), first, count, 4, align, 4)
    }

    /// The first `bytes` of an optional input, or the stand-in.
    fn input_or_stand_in<'b>(
        &'b self,
        input: Option<wgpu::BufferSlice<'b>>,
        bytes: u64,
    ) -> Window<'b> {
        match input {
            Some(s) => Window::slice(s).first(bytes),
            None => Window::head(&self.scratch.dummy_read, bytes),
        }
    }

    /// Class weights (a stand-in when unweighted).
    fn class_weights(&self) -> Window<'_> {
        let bytes = self.plan.classes as u64 * 4;
        self.input_or_stand_in(self.batch.class_weights, bytes)
    }

    /// Per-row sample weights (a stand-in without them).
    fn sample_weights(&self) -> Window<'_> {
        let bytes = self.plan.rows as u64 * 4;
        self.input_or_stand_in(self.batch.sample_weights, bytes)
    }

    /// Index targets, bound whole: every chunk reads them by global row.
    fn index_targets(&self) -> Window<'_> {
        let bytes = if self.target_load == TargetLoad::I64 {
            8
        } else {
            4
        };
        Window::slice(self.targets_buffer).first(self.plan.rows as u64 * bytes)
    }

    /// What the gradient's scales read: per-row upstream values, the mean's totals, or a
    /// device upstream's block (the totals, then the upstream).
    fn scale_source(&self) -> Window<'_> {
        match (self.plan.reduction, self.out.upstream) {
            (Reduction::None, Some(u)) => Window::slice(u).first(self.plan.rows as u64 * 4),
            // A device upstream's block: (ce, z, D, Σs, upstream), for the sum too.
            (Reduction::Mean | Reduction::Sum, _) if self.device_upstream.is_some() => {
                self.scratch.totals.head(20)
            }
            (Reduction::Mean, _) => self.scratch.totals.head(16),
            _ => Window::whole(&self.scratch.dummy_read),
        }
    }

    /// The gradient window of elements `first .. first + count`: none in place (the logits
    /// are the gradient) or loss only through the fused kernel, a stand-in for other kernels
    /// without a gradient.
    fn gradient(&self, first: u64, count: u64) -> Option<Window<'_>> {
        match (self.out.gradient, self.plan.store) {
            (DeviceGradient::IntoLogitsDtype(g), Store::SeparateHalf) => {
                // The logits' geometry: both slices start storage-aligned, so the kernels'
                // `elem_offset` indexes this window too.
                let align = self.gpu.storage_alignment;
                let (window, offset) = window(Window::slice(g), first, count, 2, align, 4);
                debug_assert_eq!(offset, self.logits(first, count).1);
                Some(window)
            }
            (DeviceGradient::Into(g) | DeviceGradient::IntoLogitsDtype(g), _) => {
                Some(self.f32s(g, first, count).0)
            }
            (_, Store::InPlace | Store::None | Store::Save) => None,
            _ => Some(Window::whole(&self.scratch.dummy_write)),
        }
    }

    /// The fixed-order reduction: row sums → … → totals and the loss.
    fn reduce(&self, pass: &mut wgpu::ComputePass) {
        let pipeline = self
            .gpu
            .pipeline(Variant::plain(Kernel::Reduce).with_writable(self.plan.writable));
        let s = &self.scratch;
        let stage = |stage: Stage| match stage {
            Stage::RowSums => Window::whole(&s.row_sums),
            Stage::Ping => Window::whole(&s.ping),
            Stage::Pong => Window::whole(&s.pong),
            Stage::Totals => s.totals.head(16),
        };
        let passes = reduce_passes(self.plan.reduce_items);
        for (i, (_, source, target)) in self.blocks.reduce.clone().zip(passes) {
            let reduce = Reduce {
                params: self.blocks.window(i),
                input: stage(source),
                output: stage(target),
                loss: Window::slice(self.out.loss).first(4),
            };
            let groups = (self.blocks.params[i].elems as u64)
                .div_ceil(4 * WORKGROUP_SIZE as u64)
                .max(1) as u32;
            self.gpu
                .launch(pass, &pipeline, &reduce.entries(), (groups, 1, 1));
        }
    }
}
