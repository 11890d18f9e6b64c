//! A linear head on device buffers, recorded into the caller's encoder
//! ([`Gpu::record_linear_cross_entropy`]): for trainers whose hidden states and head weight
//! live in `wgpu::Buffer`s.
//!
//! Every buffer is a `wgpu::BufferSlice` (`buffer.slice(..)` for a whole one): a tensor that
//! sits at an offset inside a larger buffer is bound there, no copy. Offsets must be multiples
//! of the device's `min_storage_buffer_offset_alignment` (256 bytes on most). Inputs and
//! outputs may share a `wgpu::Buffer` (the call then takes its kernels' writable variants),
//! but an output's bytes must be its own (`Error::Unsupported`). What the rest of the device API says holds
//! here too ([`device`](crate::gpu::device)): `STORAGE` usage, scratch reused by the next
//! call, a target out of range raising a flag (every pass after the check treats its row as
//! ignored), nothing read back.
//!
//! Which rows are ignored is known only on the device, so without per-row records
//! (`outputs.rows` unset) the rows are compacted there (`FLAG_SKIP_IGNORED`): one small pass per
//! window of rows (`shaders/linear_compact.wgsl`) orders them, the rows that count first, and
//! every tile kernel (forward, focal pass, backward) takes its rows in that order
//! (`shaders/include/linear_order.wgsl`), a tile past the rows that count taking no product.
//! Ignored rows then cost no GEMM work wherever they sit (scattered, as a masked-LM batch's,
//! or in spans, as a prompt's or padding's), as in a host call, which leaves them out before
//! the upload. Each row's products are the same sums in the same order whichever tile takes
//! it, and `dW` sums the rows that count in row order, so the bits are those of taking every
//! product, except that a non-finite `h` of an ignored row no longer reaches `dW` through its
//! zero gradient (as SEMANTICS.md section 6 leaves a zero coefficient's term out). With
//! records every row gets products (its LSE and metrics are asked for).

use super::bindings::{Bindings, Destination, Region, Scratch};
use super::{base_params, call_launches, cut, linear_load, Flags};
use crate::error::Result;
use crate::gpu::encode::storage_usage;
use crate::gpu::pipelines::{LogitLoad, TargetLoad};
use crate::gpu::pool::Role;
use crate::gpu::schedule::RECORDED_CALL_ERROR;
use crate::gpu::Gpu;
use crate::input::Dtype;
use crate::linear::{LinearCrossEntropy, Strategy, WeightLayout};
use crate::options::Reduction;

/// A row-major matrix in a device buffer: `rows × cols` values of `dtype`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMatrix<'a> {
    /// The values (at least `rows × cols × dtype.size()` bytes).
    pub data: wgpu::BufferSlice<'a>,
    /// Their element type.
    pub dtype: Dtype,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl<'a> DeviceMatrix<'a> {
    /// `rows × cols` values of `dtype` at the start of `data`.
    pub fn new(data: wgpu::BufferSlice<'a>, dtype: Dtype, rows: usize, cols: usize) -> Self {
        DeviceMatrix {
            data,
            dtype,
            rows,
            cols,
        }
    }
}

/// Class-index targets in a device buffer, one per row.
#[derive(Debug, Clone, Copy)]
pub enum DeviceIndexTargets<'a> {
    /// i32 indices.
    I32(wgpu::BufferSlice<'a>),
    /// i64 indices (little-endian word pairs).
    I64(wgpu::BufferSlice<'a>),
}

impl<'a> From<DeviceIndexTargets<'a>> for crate::gpu::DeviceTargets<'a> {
    fn from(targets: DeviceIndexTargets<'a>) -> Self {
        match targets {
            DeviceIndexTargets::I32(t) => Self::I32(t),
            DeviceIndexTargets::I64(t) => Self::I64(t),
        }
    }
}

/// Where a recorded call puts one gradient (f32).
#[derive(Debug, Clone, Copy)]
pub enum DeviceGradientSlice<'a> {
    /// Written over.
    Write(wgpu::BufferSlice<'a>),
    /// Added to (accumulation over micro-batches). The call adds as it goes: `dh` once per
    /// vocabulary chunk (at least ⌈V / 4096⌉ of them: a chunk's width depends on N, D and the
    /// binding size), `dW` and `db` once per group of rows (one that fits a binding, or with
    /// the chunked strategy one within the scratch budget: every 64 rows or more), each add a
    /// rounding at the buffer's magnitude.
    Add(wgpu::BufferSlice<'a>),
}

/// The inputs of a recorded linear head: `cross_entropy(h·Wᵀ + b, y)`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLinearBatch<'a> {
    /// Hidden states `h` [N × D]: f32, f16 or bf16, the weight's dtype (D even for f16 and bf16).
    pub hidden: DeviceMatrix<'a>,
    /// The head's weight: `W` [V × D] (`nn.Linear` layout), or [D × V] with
    /// [`WeightLayout::HiddenMajor`].
    pub weight: DeviceMatrix<'a>,
    /// How `weight` (and the weight gradient) is stored. [D × V] is read in place, no copy;
    /// the whole of it must then fit one storage binding (`Error::Unsupported` otherwise:
    /// [V × D] is cut into pieces of vocabulary rows).
    pub weight_layout: WeightLayout,
    /// The head's bias `b` \[V\], f32.
    pub bias: Option<wgpu::BufferSlice<'a>>,
    /// Targets \[N\].
    pub targets: DeviceIndexTargets<'a>,
    /// Per-class weights \[V\], f32.
    pub class_weights: Option<wgpu::BufferSlice<'a>>,
    /// Per-row sample weights \[N\], f32 (not checked on the device: finite, non-negative).
    pub sample_weights: Option<wgpu::BufferSlice<'a>>,
}

impl<'a> DeviceLinearBatch<'a> {
    /// The weight's (vocabulary, hidden size), read through its layout.
    pub(crate) fn weight_shape(&self) -> (usize, usize) {
        self.weight_layout.shape(self.weight.rows, self.weight.cols)
    }

    /// Hidden states, weight and targets; no bias or weights (set the fields for those).
    pub fn new(
        hidden: DeviceMatrix<'a>,
        weight: DeviceMatrix<'a>,
        targets: DeviceIndexTargets<'a>,
    ) -> Self {
        DeviceLinearBatch {
            hidden,
            weight,
            weight_layout: WeightLayout::VocabMajor,
            bias: None,
            targets,
            class_weights: None,
            sample_weights: None,
        }
    }
}

/// The outputs of a recorded linear head. Nothing is read back.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLinearOutputs<'a> {
    /// Receives the reduced loss, one f32 (for `Reduction::None` the sum, unused).
    pub loss: wgpu::BufferSlice<'a>,
    /// Receives one [`GpuRow`](crate::gpu::GpuRow) per row (N × 32 bytes): loss, LSE, metrics.
    pub rows: Option<wgpu::BufferSlice<'a>>,
    /// `dh` [N × D], f32.
    pub hidden_gradient: Option<DeviceGradientSlice<'a>>,
    /// `dW` [V × D] (or [D × V], as the batch's `weight_layout`), f32.
    pub weight_gradient: Option<DeviceGradientSlice<'a>>,
    /// `db` \[V\], f32 (the gradient of a zero bias when the batch has none).
    pub bias_gradient: Option<DeviceGradientSlice<'a>>,
    /// `Reduction::None`: the per-row upstream gradient \[N\], f32.
    pub upstream: Option<wgpu::BufferSlice<'a>>,
    /// `Sum`/`Mean`: the scalar upstream gradient (1 for a plain loss).
    pub upstream_scalar: f32,
    /// Where an out-of-range target is flagged, as in
    /// [`DeviceOutputs::target_error`](crate::gpu::DeviceOutputs::target_error); `None`: the
    /// [`Gpu`]'s own flag, read by [`Gpu::take_target_error`].
    pub target_error: Option<wgpu::BufferSlice<'a>>,
}

impl<'a> DeviceLinearOutputs<'a> {
    /// The loss only, with upstream 1 (set the other fields as needed).
    pub fn new(loss: wgpu::BufferSlice<'a>) -> Self {
        DeviceLinearOutputs {
            loss,
            rows: None,
            hidden_gradient: None,
            weight_gradient: None,
            bias_gradient: None,
            upstream: None,
            upstream_scalar: 1.0,
            target_error: None,
        }
    }

    /// Whether any gradient is asked for.
    pub fn wants_gradient(&self) -> bool {
        self.hidden_gradient.is_some()
            || self.weight_gradient.is_some()
            || self.bias_gradient.is_some()
    }
}

impl DeviceGradientSlice<'_> {
    fn destination(self) -> Destination {
        match self {
            DeviceGradientSlice::Write(s) => Destination {
                region: Region::slice(s),
                adds: false,
            },
            DeviceGradientSlice::Add(s) => Destination {
                region: Region::slice(s),
                adds: true,
            },
        }
    }
}

impl Gpu {
    /// Records linear cross-entropy on device buffers into `encoder` (module docs of
    /// [`xent::linear`](crate::linear) for the math and options, [`DeviceLinearBatch`] for the
    /// buffers): the target check, the forward (tiles of `h·Wᵀ + b` folded into per-row
    /// partials, the rows pass), the fixed-order reduction into `outputs.loss`, and for
    /// gradients the backward vocabulary chunk by chunk. `loss` carries the options, the
    /// strategy and the scratch budget as [`LinearCrossEntropy::compute`] takes them (the
    /// chunked strategy's stored logits come from this `Gpu`'s recorded-call scratch; rows are
    /// all `N`, ignored ones included). Two runs give the same bits.
    ///
    /// Errors (before anything is recorded): a buffer smaller than its shape, a misaligned
    /// offset, shapes that disagree, `h` and `W` of different dtypes or f16/bf16 with an odd
    /// hidden size, probability inputs, bad options, a per-row upstream with a reduction
    /// other than `None`, a call larger than the device's bindings, and an explicit
    /// `Strategy::Chunked` whose 64 rows of logits outgrow a binding
    /// ([`Error::Unsupported`](crate::Error::Unsupported)); a device error.
    pub fn record_linear_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        loss: &LinearCrossEntropy,
        batch: &DeviceLinearBatch<'_>,
        outputs: &DeviceLinearOutputs<'_>,
    ) -> Result<()> {
        let options = &loss.loss;
        let writable =
            crate::plan::linear::check_device(options, batch, outputs, self.storage_alignment)?;
        let transposed = batch.weight_layout == WeightLayout::HiddenMajor;
        let (n, d, v) = (batch.hidden.rows, batch.hidden.cols, batch.weight_shape().0);
        let dtype = batch.hidden.dtype;
        let element = dtype.size() as u64;
        // [D × V] is bound whole, and read as vec4s along the vocabulary only where V allows.
        let load = match transposed && !v.is_multiple_of(4) {
            true => LogitLoad::scalar(dtype),
            false => linear_load(dtype, d),
        };
        // ... and so is its f32 gradient.
        let whole = match outputs.weight_gradient {
            Some(_) => element.max(4),
            None => element,
        };
        if transposed && (d * v) as u64 * whole > self.max_binding {
            return Err(crate::Error::Unsupported(format!(
                "a [D × V] head weight (and its f32 gradient) is bound whole; [{d} × {v}] of \
                 {whole}-byte values is larger than one storage binding of {} bytes (pass it \
                 [V × D], which is cut into pieces)",
                self.max_binding
            )));
        }
        let gradient = outputs.wants_gradient();
        let chunked = match crate::plan::linear::strategy(loss, n, v, gradient) {
            (Strategy::Chunked, rows) => Some((rows, loss.strategy == Strategy::Auto)),
            _ => None,
        };
        let (pieces, backward) = cut((n, d, v), element, gradient, self.max_binding, chunked)?;
        let flags = Flags {
            class_weights: batch.class_weights.is_some(),
            sample_weights: batch.sample_weights.is_some(),
            bias: batch.bias.is_some(),
            metrics: outputs.rows.is_some(),
            per_row_upstream: outputs.upstream.is_some(),
            // Without per-row records no ignored row's products are wanted.
            skip_ignored: outputs.rows.is_none(),
        };
        let upstream = match options.reduction {
            Reduction::None => 1.0,
            _ => outputs.upstream_scalar,
        };
        let base = base_params(options, (d, v, v), flags, upstream, &pieces);
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        self.scoped(|| {
            let focal = crate::plan::needs_focal_pass(options, false);
            let scratch = Scratch::take(&self.device, pool, n, (&pieces, backward.as_ref()), focal);
            let mut pooled =
                |role, bytes| Region::whole(&pool.get(&self.device, role, bytes, storage_usage()));
            let (targets, target_load) = match batch.targets {
                DeviceIndexTargets::I32(t) => (t, TargetLoad::I32),
                DeviceIndexTargets::I64(t) => (t, TargetLoad::I64),
            };
            let slice = |s: Option<wgpu::BufferSlice<'_>>| s.map(Region::slice);
            let bindings = Bindings {
                hidden: Region::slice(batch.hidden.data),
                weight: Region::slice(batch.weight.data),
                weight_transposed: transposed,
                bias: slice(batch.bias),
                targets: Region::slice(targets),
                target_load,
                class_weights: slice(batch.class_weights),
                sample_weights: slice(batch.sample_weights),
                upstream: slice(outputs.upstream),
                target_error: Some(match outputs.target_error {
                    Some(flag) => Region::slice(flag),
                    None => pooled(RECORDED_CALL_ERROR, 16),
                }),
                loss: Region::slice(outputs.loss),
                records: match outputs.rows {
                    Some(r) => Region::slice(r),
                    None => pooled(Role::RowsOut, n as u64 * crate::gpu::abi::ROW_BYTES),
                },
                hidden_gradient: outputs
                    .hidden_gradient
                    .map(DeviceGradientSlice::destination),
                weight_gradient: outputs
                    .weight_gradient
                    .map(DeviceGradientSlice::destination),
                bias_gradient: outputs.bias_gradient.map(DeviceGradientSlice::destination),
                scratch,
                writable,
                element,
                shape: (n, d, v),
            };
            let launches = call_launches(&bindings, (&pieces, backward.as_ref()), base);
            self.record_linear(encoder, &launches, &bindings, load);
            Ok(())
        })
    }
}
