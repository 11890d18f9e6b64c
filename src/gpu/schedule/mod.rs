//! The schedule of one call: which kernels run, over which windows, in which order. Softmax
//! cross-entropy is fused (a targets pass, then one kernel per chunk) or three-pass
//! (partials → rows → [focal] per chunk, long rows in pieces; the backward after the
//! reduction); BCE is one element pass per chunk; every call ends in the fixed-order
//! reduction. Recorded into the caller's encoder, in one compute pass.
//!
//! `record` takes every decision once (chunks, launch shape, fused or not, long rows) into a
//! [`Call`]; `softmax.rs` and `bce.rs` fill the launchers of `launchers.rs` from it.

mod bce;
mod params;
mod scratch;
mod softmax;

use super::device::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets};
use super::encode::{window, Window};
use super::launch::{
    binding_room, chunks, flat_pieces, fused_shape, launch_shape, row_pieces, Chunk, LaunchShape,
    Piece,
};
use super::launchers::Reduce;
use super::pipelines::{Kernel, LogitLoad, Store, TargetLoad, Variant, WORKGROUP_SIZE};
use super::pool::{Pool, Role};
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::Layout;
use crate::options::Reduction;
use crate::plan::Loss;
use params::Blocks;
use scratch::Scratch;

/// The out-of-range-target flag of recorded calls (read by `take_target_error`), and the one
/// host-slice calls clear, check and own, so a host call never loses a recorded call's flag.
pub(super) const RECORDED_CALL_ERROR: Role = Role::RecordedTargetError;
pub(super) const HOST_CALL_ERROR: Role = Role::HostTargetError;

/// One call, its decisions taken: what every launch of it shares.
struct Call<'a> {
    gpu: &'a Gpu,
    batch: &'a DeviceBatch<'a>,
    out: &'a DeviceOutputs<'a>,
    rows: usize,
    classes: usize,
    layout: Layout,
    /// Bytes of one logit.
    elem: u64,
    /// Dense targets (soft targets, or BCE's).
    dense: bool,
    store: Store,
    scalar_load: LogitLoad,
    target_load: TargetLoad,
    /// The three-pass launch shape (splits per row, invocations per row).
    shape: LaunchShape,
    /// The fused kernel's shape, when the call takes it.
    fused: Option<LaunchShape>,
    /// Runs of whole rows that fit a binding.
    chunks: Vec<Chunk>,
    /// Rows longer than a binding (even 4 of them).
    long_rows: bool,
    /// Long rows: the partials pass's pieces (whole splits of a row) and the backward's runs
    /// of elements.
    pieces: Vec<Piece>,
    runs: Vec<(u64, u64)>,
    /// Focal loss with smoothing or soft targets: the focal pass runs after rows.
    focal_all: bool,
    reduction: Reduction,
    targets_buffer: &'a wgpu::Buffer,
    scratch: Scratch,
    blocks: Blocks,
}

impl Gpu {
    /// Records one call into `encoder`, using the pool's scratch buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        pool: &mut Pool,
        encoder: &mut wgpu::CommandEncoder,
        job: Loss,
        batch: &DeviceBatch,
        out: &DeviceOutputs,
        want_entropy: bool,
        error_role: Role,
    ) -> Result<()> {
        crate::plan::device::check(batch, out, &job)?;
        let (rows, classes, layout) = (batch.rows, batch.classes, batch.layout);
        let is_softmax = matches!(job, Loss::Softmax(_));
        let elem = batch.dtype.size() as u64;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        let f32_windows = dense || matches!(out.gradient, DeviceGradient::Into(_)) || !is_softmax;
        let bytes_per_element = if f32_windows { 4 } else { elem };
        let chunked = chunks(
            rows,
            classes,
            layout,
            bytes_per_element,
            self.max_binding,
            self.storage_alignment,
        );
        // Rows too long for a binding (even 4 of them): softmax over contiguous rows binds each
        // row a piece of whole splits at a time, and the backward a run of elements at a time.
        let long_rows = chunked.is_none();
        if long_rows && (layout != Layout::Rows || !is_softmax) {
            return Err(Error::Unsupported(format!(
                "rows of {} bytes are bound at least four at a time (whole samples of the (N, C, d…) layout), \
                 and that is larger than the device's storage binding limit ({} bytes)",
                classes as u64 * bytes_per_element,
                self.max_binding
            )));
        }
        if batch.class_weights.is_some() && classes as u64 * 4 > self.max_binding {
            return Err(Error::Unsupported(format!(
                "class weights for {classes} classes are larger than the device's storage binding limit ({} bytes)",
                self.max_binding
            )));
        }
        let chunk_list = chunked.unwrap_or_else(|| vec![Chunk { row0: 0, rows }]);
        let room = binding_room(self.max_binding, self.storage_alignment);
        let mut shape = launch_shape(rows, classes, layout);
        if long_rows {
            shape = shape.fitting(classes, bytes_per_element, room);
        }
        let spatial = match layout {
            Layout::Rows => 0,
            Layout::ClassDim1 { spatial } => spatial as u32,
        };
        let store = if matches!(out.gradient, DeviceGradient::InPlace) {
            Store::InPlace
        } else {
            Store::Separate
        };
        let reduce_items = if is_softmax {
            rows as u64
        } else {
            (rows as u64 * classes as u64).div_ceil(4)
        };
        let scratch = Scratch::take(
            pool,
            &self.device,
            (rows, classes),
            shape,
            (reduce_items, is_softmax),
            out,
            error_role,
            self.max_binding,
        )?;
        let mut base = params::shared(job, batch, out, shape, spatial, dense, want_entropy);
        let focal_all = base.flags & super::abi::FLAG_FOCAL_ALL != 0;
        if long_rows && focal_all {
            return Err(Error::Unsupported(format!(
                "focal loss with smoothing or soft targets on rows longer than the storage binding limit ({} bytes)",
                self.max_binding
            )));
        }
        // Forward and backward in one read when the row fits the fused kernel (its header
        // lists the exclusions), with the fused kernel's own invocations per row.
        let fused = fused_shape(classes, layout).filter(|_| {
            is_softmax
                && self.fused
                && !long_rows
                && !matches!(out.gradient, DeviceGradient::None)
                && !focal_all
                && !(store == Store::InPlace && elem == 2 && classes % 2 == 1)
        });
        if let Some(fused_shape) = fused {
            base.invocations_per_row = fused_shape.invocations_per_row;
        }
        let (pieces, runs) = if long_rows {
            (
                row_pieces(rows, shape, bytes_per_element, room),
                flat_pieces(rows as u64 * classes as u64, bytes_per_element, room),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let targets_buffer = match batch.targets {
            DeviceTargets::I32(t) | DeviceTargets::I64(t) | DeviceTargets::Dense(t) => t,
        };
        let mut call = Call {
            gpu: self,
            batch,
            out,
            rows,
            classes,
            layout,
            elem,
            dense,
            store,
            scalar_load: LogitLoad::scalar(batch.dtype),
            target_load: match batch.targets {
                DeviceTargets::I32(_) => TargetLoad::I32,
                DeviceTargets::I64(_) => TargetLoad::I64,
                DeviceTargets::Dense(_) => TargetLoad::Dense,
            },
            shape,
            fused,
            chunks: chunk_list,
            long_rows,
            pieces,
            runs,
            focal_all,
            reduction: job.reduction(),
            targets_buffer,
            scratch,
            blocks: Blocks::default(),
        };
        call.blocks = Blocks::new(&call, base, reduce_items, is_softmax);

        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent"),
            timestamp_writes: None,
        });
        if call.fused.is_some()
            && (base.flags & super::abi::FLAG_CHECK_TARGETS != 0
                || call.reduction == Reduction::Mean)
        {
            // Index targets checked, and the mean's D and Σ s reduced into `totals` before
            // the fused kernel scales its gradient by them.
            call.targets_pass(&mut pass);
            if call.reduction == Reduction::Mean {
                call.reduce(&mut pass);
            }
        }
        for (i, &chunk) in call.chunks.iter().enumerate() {
            if chunk.rows == 0 {
                continue;
            }
            match (is_softmax, call.fused) {
                (true, Some(fused)) => call.fused_chunk(&mut pass, i, chunk, fused),
                (true, None) => call.three_pass_chunk(&mut pass, i, chunk),
                (false, _) => call.bce_chunk(&mut pass, i, chunk),
            }
        }
        call.reduce(&mut pass);
        if is_softmax && call.fused.is_none() && !matches!(out.gradient, DeviceGradient::None) {
            call.backward(&mut pass);
        }
        Ok(())
    }
}

impl Call<'_> {
    /// The logits of elements `first .. first + count` and the element offset inside the
    /// window.
    fn logits(&self, first: u64, count: u64) -> (Window<'_>, u32) {
        let align = self.gpu.storage_alignment;
        window(self.batch.logits, first, count, self.elem, align, 4)
    }

    /// The same elements of an f32 buffer in the logits' layout (dense targets, gradient,
    /// BCE's upstream and element losses).
    fn f32s<'b>(&self, buffer: &'b wgpu::Buffer, first: u64, count: u64) -> (Window<'b>, u32) {
        window(buffer, first, count, 4, self.gpu.storage_alignment, 4)
    }

    /// Class weights (a stand-in when unweighted).
    fn class_weights(&self) -> Window<'_> {
        let weights = self.batch.class_weights;
        Window::head(
            weights.unwrap_or(&self.scratch.dummy_read),
            self.classes as u64 * 4,
        )
    }

    /// Per-row sample weights (a stand-in without them).
    fn sample_weights(&self) -> Window<'_> {
        let weights = self.batch.sample_weights;
        Window::head(
            weights.unwrap_or(&self.scratch.dummy_read),
            self.rows as u64 * 4,
        )
    }

    /// Index targets, bound whole: every chunk reads them by global row.
    fn index_targets(&self) -> Window<'_> {
        let bytes = if self.target_load == TargetLoad::I64 {
            8
        } else {
            4
        };
        Window::head(self.targets_buffer, self.rows as u64 * bytes)
    }

    /// What the gradient's scales read: per-row upstream values, or the mean's totals.
    fn scale_source(&self) -> Window<'_> {
        Window::whole(match self.reduction {
            Reduction::None => self.out.upstream.unwrap_or(&self.scratch.dummy_read),
            Reduction::Sum => &self.scratch.dummy_read,
            Reduction::Mean => &self.scratch.totals,
        })
    }

    /// The gradient window of elements `first .. first + count` (a stand-in, unbound, in
    /// place or without a gradient).
    fn gradient(&self, first: u64, count: u64) -> Window<'_> {
        match self.out.gradient {
            DeviceGradient::Into(g) => self.f32s(g, first, count).0,
            _ => Window::whole(&self.scratch.dummy_write),
        }
    }

    /// The fixed-order reduction: row sums → … → totals and the loss.
    fn reduce(&self, pass: &mut wgpu::ComputePass) {
        let pipeline = self.gpu.pipeline(Variant::plain(Kernel::Reduce));
        let passes = self.blocks.reduce.clone();
        let s = &self.scratch;
        let mut source = &s.row_sums;
        for i in passes.clone() {
            let target = if i + 1 == passes.end {
                &s.totals
            } else if (i - passes.start).is_multiple_of(2) {
                &s.ping
            } else {
                &s.pong
            };
            let reduce = Reduce {
                params: self.blocks.window(i),
                input: Window::whole(source),
                output: Window::whole(target),
                loss: Window::whole(self.out.loss),
            };
            let groups = (self.blocks.params[i].elems as u64)
                .div_ceil(4 * WORKGROUP_SIZE as u64)
                .max(1) as u32;
            self.gpu
                .launch(pass, &pipeline, &reduce.entries(), (groups, 1, 1));
            source = target;
        }
    }
}
