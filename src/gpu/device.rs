//! Device-resident inputs and outputs: for trainers whose logits already live in a
//! `wgpu::Buffer` and who record the loss into their own command encoder.
//!
//! What the caller's side needs (`examples/train_digits.rs` is a whole trainer built this way):
//! - A device allowing 256-invocation workgroups and 8 storage buffers per shader stage:
//!   `wgpu::Limits::default()` or the adapter's own limits. `Limits::downlevel_defaults()`
//!   allows only 4 storage buffers, and [`Gpu::from_device`](super::Gpu::from_device) refuses it.
//! - Buffers with `STORAGE` usage and nothing else: a recorded call neither copies nor clears
//!   the caller's buffers (add `COPY_SRC` only to copy results out yourself;
//!   `record_row_counts` clears its counts, which need `COPY_DST`; a backward with a device
//!   upstream copies it, and for the mean the saved totals, which need `COPY_SRC`).
//! - Every buffer is a `wgpu::BufferSlice` (`buffer.slice(..)` for a whole one): a tensor at an
//!   offset inside a larger buffer is bound there, no copy. Offsets are multiples of the
//!   device's `min_storage_buffer_offset_alignment` (256 bytes on most; else
//!   `Error::Misaligned`). Inputs and outputs may share a `wgpu::Buffer` (as a framework's
//!   sub-allocated tensors do): the call then takes kernels whose storage bindings are all
//!   `read_write`, since wgpu refuses one buffer bound read-only and writable in a dispatch.
//!   An output's bytes must be its own (overlapping another slice: `Error::Unsupported`).
//! - Scratch buffers are xent's and are reused by the next recorded call: each call writes
//!   every scratch value it reads in its own commands, so calls recorded into any encoders
//!   and submitted in any order (from any thread) are safe; host-slice calls on the same
//!   `Gpu` use scratch of their own. Each call allocates only a small uniform buffer and its
//!   bind groups.
//! - Accuracy without reading every row's record back:
//!   [`Gpu::record_row_counts`](super::Gpu::record_row_counts) counts valid and correct rows
//!   on the device.
//! - A target out of range sets a flag: by default one shared by every recorded call on that
//!   [`Gpu`] until [`Gpu::take_target_error`] reads
//!   it (the lowest such row of any of those calls; a blocking read). A trainer that never
//!   waits passes its own buffer ([`DeviceOutputs::target_error`]) and copies it out beside
//!   the loss. Host-slice calls on the same `Gpu` use a flag of their own, so they neither
//!   clear nor report a recorded call's.
//!
//! ```
//! use wgpu::util::DeviceExt;
//! use xent::gpu::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, Gpu};
//! use xent::{CrossEntropy, Dtype};
//!
//! // A trainer's device (here from xent; `Gpu::from_device(device, queue)` wraps your own).
//! let Ok(gpu) = Gpu::new() else {
//!     eprintln!("no GPU adapter: this example needs one");
//!     return Ok(());
//! };
//! let (rows, classes) = (2, 3);
//! let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
//! let init = |bytes: &[u8]| {
//!     gpu.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytes, usage: storage })
//! };
//! let logits = init(bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5]));
//! let targets = init(bytemuck::cast_slice(&[2i64, 0]));
//! let loss = init(&[0u8; 4]);
//! let dlogits = init(&[0u8; 24]);
//! let batch = DeviceBatch::new(
//!     logits.slice(..),
//!     Dtype::F32,
//!     rows,
//!     classes,
//!     DeviceTargets::I64(targets.slice(..)),
//! );
//! let outputs = DeviceOutputs::new(loss.slice(..)).gradient(DeviceGradient::Into(dlogits.slice(..)));
//! // One training step's encoder: your forward pass, then the loss and its gradient, then
//! // your backward pass; nothing is read back.
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! gpu.record_cross_entropy(&mut encoder, &CrossEntropy::new(), &batch, &outputs)?;
//! gpu.queue().submit([encoder.finish()]);
//! assert_eq!(gpu.take_target_error()?, None);
//! # Ok::<(), xent::Error>(())
//! ```

use super::abi::{Params, ROW_BYTES};
use super::encode::{grid, storage_usage, Window};
use super::launchers::CountRows;
use super::pipelines::{Kernel, Variant};
use super::schedule::RECORDED_CALL_ERROR;
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Dtype, Layout};
use crate::options::{BinaryCrossEntropy, CrossEntropy};
use crate::plan::Loss;

/// Targets already on the device. Buffers need `STORAGE` usage.
#[derive(Debug, Clone, Copy)]
pub enum DeviceTargets<'a> {
    /// `rows` i32 class indices.
    I32(wgpu::BufferSlice<'a>),
    /// `rows` i64 class indices (little-endian word pairs).
    I64(wgpu::BufferSlice<'a>),
    /// `rows × classes` f32, the logits' layout (soft targets, or BCE targets).
    Dense(wgpu::BufferSlice<'a>),
}

/// Where a recorded call writes d loss / d logits.
#[derive(Debug, Clone, Copy, Default)]
pub enum DeviceGradient<'a> {
    /// No gradient.
    #[default]
    None,
    /// Into this f32 slice (`rows × classes`, the logits' layout; `STORAGE`).
    Into(wgpu::BufferSlice<'a>),
    /// Into this slice in the logits' own dtype (`rows × classes` in their layout; f16 and
    /// bf16 as 2-byte values, the slice padded to a whole 4 bytes; for f32 logits the same as
    /// `Into`): a half-precision trainer's gradient without an f32 buffer or a copy of the
    /// logits. Values are the f32 gradient rounded to nearest, as `InPlace` writes them.
    IntoLogitsDtype(wgpu::BufferSlice<'a>),
    /// Over the logits buffer, in its dtype.
    InPlace,
}

/// The inputs of a recorded call.
#[derive(Debug, Clone, Copy)]
pub struct DeviceBatch<'a> {
    /// Logits: `rows × classes` values of `dtype` (`STORAGE`; the slice at least that many
    /// bytes padded to 4).
    pub logits: wgpu::BufferSlice<'a>,
    /// Element type of `logits`.
    pub dtype: Dtype,
    /// Rows.
    pub rows: usize,
    /// Classes.
    pub classes: usize,
    /// Layout of logits, dense targets and gradient.
    pub layout: Layout,
    /// Targets.
    pub targets: DeviceTargets<'a>,
    /// Per-class weights (`classes` f32), or BCE's `weight`.
    pub class_weights: Option<wgpu::BufferSlice<'a>>,
    /// BCE's `pos_weight` (`classes` f32).
    pub pos_weight: Option<wgpu::BufferSlice<'a>>,
    /// Per-row sample weights `s[n]` (`rows` f32; for BCE they scale every element of the
    /// row). They are not checked on the device: pass finite, non-negative values.
    pub sample_weights: Option<wgpu::BufferSlice<'a>>,
}

/// The outputs of a recorded call. Nothing is read back.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOutputs<'a> {
    /// Receives the reduced loss as one f32 at the slice's start (`STORAGE`, at least 4 bytes). For
    /// `Reduction::None` it receives the sum, unused.
    pub loss: wgpu::BufferSlice<'a>,
    /// Softmax: receives one [`GpuRow`] per row (`STORAGE`, `rows × 32` bytes). BCE: receives
    /// the per-element losses as f32 in the logits' layout. Optional.
    pub rows: Option<wgpu::BufferSlice<'a>>,
    /// Gradient destination.
    pub gradient: DeviceGradient<'a>,
    /// `Reduction::None`: per-row (softmax) or per-element (BCE) upstream gradient, f32.
    pub upstream: Option<wgpu::BufferSlice<'a>>,
    /// `Sum`/`Mean`: the scalar upstream gradient (1 for a plain loss).
    pub upstream_scalar: f32,
    /// Where an out-of-range class-index target is flagged (`STORAGE`, at least 4 bytes):
    /// one u32 that the call raises with an atomic max and never clears, decoded by
    /// [`target_error_row`]. Zero-initialized buffers start "no error"; clear it yourself
    /// (`CommandEncoder::clear_buffer`) after reading it. Copy it out beside the loss every K
    /// steps and no call ever waits on the device. `None`: the [`Gpu`]'s own flag,
    /// read (blocking) by [`Gpu::take_target_error`](super::Gpu::take_target_error).
    pub target_error: Option<wgpu::BufferSlice<'a>>,
    /// Softmax: where the call saves its per-row state for a later
    /// [`Gpu::record_cross_entropy_backward`] (its gradient, if any, can't be in place). Loss
    /// only, rows that fit the fused kernel take it: one read of the logits, each row's state
    /// written beside its loss; with a gradient the call takes the three-pass path. A
    /// backward planned with f32 gradient windows may cut rows finer than the forward did: a
    /// forward that only just fits a binding can save state whose backward is refused (long
    /// rows with focal loss and smoothing).
    pub saved: Option<DeviceSaved<'a>>,
}

/// Bytes of one row's saved state ([`DeviceSaved::rows`]).
pub const SAVED_ROW_BYTES: u64 = super::abi::COEF_BYTES;

/// A softmax forward's per-row state, saved into the caller's slices
/// ([`DeviceOutputs::saved`]) and read by [`Gpu::record_cross_entropy_backward`]: per row the
/// kernels' row coefficients (the row's max and log-sum-exp, its gradient coefficients, its
/// target and sample weight: [`SAVED_ROW_BYTES`] each), and the reduced totals
/// `(ce, z, D, Σs)` the mean's gradient divides by. Opaque: written and read by xent only.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSaved<'a> {
    /// `rows × SAVED_ROW_BYTES` bytes.
    pub rows: wgpu::BufferSlice<'a>,
    /// 16 bytes.
    pub totals: wgpu::BufferSlice<'a>,
}

/// The upstream gradient of a recorded backward.
#[derive(Debug, Clone, Copy)]
pub enum DeviceUpstream<'a> {
    /// `Sum`/`Mean`: a host scalar (1 for a plain loss).
    Scalar(f32),
    /// `Sum`/`Mean`: one f32 at the slice's start, on the device (an autodiff framework's
    /// incoming gradient; the slice's buffer needs `COPY_SRC`, and so does the saved totals').
    Device(wgpu::BufferSlice<'a>),
    /// `None`: one f32 per row (softmax) or per element (BCE).
    Rows(wgpu::BufferSlice<'a>),
}

/// The lowest row with an out-of-range target, from the u32 a target-error flag holds
/// ([`DeviceOutputs::target_error`]): 0 means none.
pub fn target_error_row(flag: u32) -> Option<usize> {
    (flag != 0).then(|| (u32::MAX - flag) as usize)
}

/// One row's results as the softmax kernels store them (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GpuRow {
    /// The row's loss (0 when ignored).
    pub loss: f32,
    /// Log-sum-exp of the transformed logits.
    pub lse: f32,
    /// Argmax.
    pub argmax: u32,
    /// Bit 0: valid (not ignored); bit 1: correct.
    pub flags: u32,
    /// Probability of the target.
    pub target_prob: f32,
    /// Entropy.
    pub entropy: f32,
    /// Max probability.
    pub confidence: f32,
    /// Padding.
    pub _pad: u32,
}

impl<'a> DeviceBatch<'a> {
    /// Row-major logits and their targets; no weights (set the public fields for those).
    pub fn new(
        logits: wgpu::BufferSlice<'a>,
        dtype: Dtype,
        rows: usize,
        classes: usize,
        targets: DeviceTargets<'a>,
    ) -> Self {
        DeviceBatch {
            logits,
            dtype,
            rows,
            classes,
            layout: Layout::Rows,
            targets,
            class_weights: None,
            pos_weight: None,
            sample_weights: None,
        }
    }
}

impl<'a> DeviceOutputs<'a> {
    /// The loss only, with upstream 1 (set `gradient`, `rows`, `upstream` as needed).
    pub fn new(loss: wgpu::BufferSlice<'a>) -> Self {
        DeviceOutputs {
            loss,
            rows: None,
            gradient: DeviceGradient::None,
            upstream: None,
            upstream_scalar: 1.0,
            target_error: None,
            saved: None,
        }
    }

    /// Also save the per-row state for [`Gpu::record_cross_entropy_backward`].
    pub fn save(mut self, saved: DeviceSaved<'a>) -> Self {
        self.saved = Some(saved);
        self
    }

    /// Also write the gradient.
    pub fn gradient(mut self, gradient: DeviceGradient<'a>) -> Self {
        self.gradient = gradient;
        self
    }

    /// Flag out-of-range targets in this buffer rather than the `Gpu`'s own.
    pub fn target_error(mut self, flag: wgpu::BufferSlice<'a>) -> Self {
        self.target_error = Some(flag);
        self
    }
}

impl GpuRow {
    /// The row was not ignored.
    pub fn valid(&self) -> bool {
        self.flags & 1 != 0
    }
    /// The argmax equals the target (valid rows only).
    pub fn correct(&self) -> bool {
        self.flags & 2 != 0
    }
}

impl Gpu {
    /// Records softmax cross-entropy on device buffers into `encoder`: loss (and per-row
    /// records, gradient) land in `outputs`' buffers; nothing is read back. Reuses the scratch
    /// buffers of earlier calls; allocates one small uniform buffer and the bind groups. A
    /// target out of range is reported by [`Gpu::take_target_error`].
    pub fn record_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        options: &CrossEntropy,
        batch: &DeviceBatch,
        outputs: &DeviceOutputs,
    ) -> Result<()> {
        let entropy = outputs.rows.is_some();
        self.record_device(encoder, Loss::Softmax(*options), batch, outputs, entropy)
    }

    /// Records the gradient of a softmax call whose forward saved its per-row state
    /// ([`DeviceOutputs::saved`]): one read of the logits and one write of the gradient
    /// (`gradient`: into a slice, or in place over the logits), each element's softmax from
    /// the saved log-sum-exp. `options` and `batch` are the forward's; `upstream` a host
    /// scalar, a device scalar or per-row values as the reduction takes. For autodiff: the
    /// forward records the loss and saves, the backward runs when the loss's gradient arrives.
    pub fn record_cross_entropy_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        options: &CrossEntropy,
        batch: &DeviceBatch,
        saved: DeviceSaved<'_>,
        gradient: DeviceGradient<'_>,
        upstream: DeviceUpstream<'_>,
    ) -> Result<()> {
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        self.scoped(|| {
            super::schedule::record_backward(
                self, &mut pool, encoder, options, batch, saved, gradient, upstream,
            )
        })
    }

    /// Records binary cross-entropy with logits on device buffers into `encoder`.
    pub fn record_binary_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        options: &BinaryCrossEntropy,
        batch: &DeviceBatch,
        outputs: &DeviceOutputs,
    ) -> Result<()> {
        self.record_device(encoder, Loss::Binary(*options), batch, outputs, false)
    }

    /// Records the gradient of binary cross-entropy with logits, recomputed from the logits
    /// and targets (BCE keeps no per-row state): one read of each and one write of the gradient
    /// (`gradient`: into a slice, or in place over the logits); no loss is written.
    /// `upstream` a host scalar, a device scalar (sum, mean) or per-element values (none).
    /// For autodiff: the backward of a [`Gpu::record_binary_cross_entropy`] forward, run when
    /// the loss's gradient arrives on the device.
    pub fn record_binary_cross_entropy_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        options: &BinaryCrossEntropy,
        batch: &DeviceBatch,
        gradient: DeviceGradient<'_>,
        upstream: DeviceUpstream<'_>,
    ) -> Result<()> {
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        self.scoped(|| {
            super::schedule::record_binary_backward(
                self, &mut pool, encoder, options, batch, gradient, upstream,
            )
        })
    }

    /// A recorded call of either loss, on the pool's scratch, flagging bad targets in the
    /// caller's flag or the `Gpu`'s own.
    fn record_device(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        loss: Loss,
        batch: &DeviceBatch,
        outputs: &DeviceOutputs,
        want_entropy: bool,
    ) -> Result<()> {
        if outputs.saved.is_some() && matches!(outputs.gradient, DeviceGradient::InPlace) {
            return Err(Error::Unsupported(
                "a forward that saves its state for a later backward keeps the logits: its \
                 gradient can't be written over them"
                    .into(),
            ));
        }
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        self.scoped(|| {
            let error = RECORDED_CALL_ERROR;
            super::schedule::record(
                self,
                &mut pool,
                encoder,
                loss,
                batch,
                outputs,
                want_entropy,
                error,
            )
        })
    }

    /// Records device-side accuracy counts: from the per-row records a softmax call wrote
    /// into [`DeviceOutputs::rows`] (`rows` × [`GpuRow`]), writes two u32 into `counts`
    /// (`STORAGE | COPY_DST`, at least 8 bytes): the valid (not ignored) rows and the correct ones, so
    /// an evaluation reads back 8 bytes instead of every record (accuracy = correct / valid).
    /// Clears `counts` first; integer atomics make the counts exact in any order.
    pub fn record_row_counts(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        records: wgpu::BufferSlice<'_>,
        rows: usize,
        counts: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        let alignment = self.storage_alignment;
        let need = |what: &'static str, slice: wgpu::BufferSlice<'_>, bytes: u64| {
            crate::plan::device::slice_fits(what, slice, bytes, alignment, || {
                format!("rows {rows}")
            })
        };
        need(
            "row records buffer (bytes)",
            records,
            rows as u64 * ROW_BYTES,
        )?;
        need("counts buffer (bytes)", counts, 8)?;
        let writable = crate::plan::device::separate(
            &[(
                "row records buffer (bytes)",
                Some(records),
                rows as u64 * ROW_BYTES,
            )],
            &[("counts buffer (bytes)", Some(counts), 8)],
        )?;
        let rows_u32 = u32::try_from(rows).map_err(|_| Error::Overflow {
            shape: format!("rows {rows}"),
        })?;
        self.scoped(|| {
            encoder.clear_buffer(counts.buffer(), counts.offset(), Some(8));
            if rows == 0 {
                return Ok(());
            }
            let pipeline = self.pipeline(Variant::plain(Kernel::CountRows).with_writable(writable));
            let params = Params {
                elems: rows_u32,
                ..Params::default()
            };
            let uniform = self.uniform(&params);
            let count = CountRows {
                params: Window::whole(&uniform),
                records: Window::slice(records).first(rows as u64 * ROW_BYTES),
                counts: Window::slice(counts).first(8),
            };
            let (x, y) = grid(rows as u64);
            self.dispatch(encoder, &pipeline, &count.entries(), (x, y, 1));
            Ok(())
        })
    }

    /// The lowest row whose target was out of range in any recorded call since the last
    /// check (reads 4 bytes back, then clears the flag).
    pub fn take_target_error(&self) -> Result<Option<usize>> {
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let error = pool.get(&self.device, RECORDED_CALL_ERROR, 16, storage_usage());
        let flag = u32::from_le_bytes(
            self.read_back(&mut pool, &error, 4)?[..4]
                .try_into()
                .unwrap_or_default(),
        );
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&error, 0, None);
        self.queue.submit([encoder.finish()]);
        Ok((flag != 0).then(|| (u32::MAX - flag) as usize))
    }
}
