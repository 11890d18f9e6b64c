//! A linear head's plain product into an `N × V` buffer (`linear_product.wgsl`): the ceiling
//! `xent bench --linear` measures the GPU's linear kernels against, from the same tile product;
//! and the logits themselves, for callers that keep them.

use super::{linear_load, TILE_ROWS};
use crate::error::{Error, Result};
use crate::gpu::abi::{Params, FLAG_BIAS};
use crate::gpu::encode::{storage_usage, Region, Window};
use crate::gpu::launchers::LinearProduct;
use crate::gpu::pipelines::{Kernel, LogitLoad, TargetLoad, Variant};
use crate::gpu::pool::Role;
use crate::gpu::{DeviceLinearBatch, Gpu};
use crate::linear::WeightLayout;

impl Gpu {
    /// Records the logits `x = h·Wᵀ + b` of `batch` (its targets and class or sample weights
    /// unused) into `logits`, f32 [N × V] row-major, in one dispatch: the product the linear
    /// cross-entropy kernels fold instead of storing (the same sums in the same order), for a
    /// baseline or for callers that need the logits. `W` in either
    /// [`WeightLayout`]; `logits` in bytes of their own (beside the inputs in one buffer, or
    /// not).
    ///
    /// Errors ([`Error::Unsupported`]): a slice smaller than its shape or at an offset that is
    /// not a multiple of the device's storage alignment, `h`, `W` or the logits larger than one
    /// storage binding or than the grid's tiles, `h` and `W` of different dtypes or hidden
    /// sizes (or an odd one in f16 / bf16, or an empty one), logits overlapping an input;
    /// [`Error::Overflow`] for sizes past `u64`; a device error.
    pub fn record_linear_product(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        batch: &DeviceLinearBatch<'_>,
        logits: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        let (h, w) = (&batch.hidden, &batch.weight);
        let (n, d, v) = (h.rows, h.cols, batch.weight_shape().0);
        let element = h.dtype.size() as u64;
        let shape = || format!("hidden [{n} × {d}], weight [{} × {}]", w.rows, w.cols);
        if h.dtype != w.dtype || batch.weight_shape().1 != d || d == 0 || v == 0 {
            return Err(Error::Unsupported(format!(
                "the plain product takes h and W of one dtype and hidden size, neither empty; \
                 got {:?} and {:?}, {}",
                h.dtype,
                w.dtype,
                shape()
            )));
        }
        if element == 2 && d % 2 == 1 {
            return Err(Error::Unsupported(format!(
                "f16 / bf16 h and W need an even hidden size (whole 32-bit words); got {d}"
            )));
        }
        let bytes = |count: Option<usize>, each: u64| {
            count
                .and_then(|c| (c as u64).checked_mul(each))
                .ok_or_else(|| Error::Overflow { shape: shape() })
        };
        let needs = [
            ("hidden", h.data, bytes(n.checked_mul(d), element)?),
            ("weight", w.data, bytes(v.checked_mul(d), element)?),
            ("logits", logits, bytes(n.checked_mul(v), 4)?),
        ];
        let bias = batch.bias.map(|b| ("bias", b, v as u64 * 4));
        for (what, slice, size) in needs.into_iter().chain(bias) {
            if slice.offset() % self.storage_alignment != 0 {
                return Err(Error::Unsupported(format!(
                    "the {what} slice at offset {}, not a multiple of the storage alignment {}",
                    slice.offset(),
                    self.storage_alignment
                )));
            }
            if slice.size() < size || size > self.max_binding {
                return Err(Error::Unsupported(format!(
                    "the plain product binds the whole {what}: {size} bytes in a slice of {} \
                     and one binding of {}",
                    slice.size(),
                    self.max_binding
                )));
            }
        }
        let most = self.device.limits().max_compute_workgroups_per_dimension as usize;
        let groups = (n.div_ceil(TILE_ROWS), v.div_ceil(TILE_ROWS));
        if groups.0 > most || groups.1 > most {
            return Err(Error::Unsupported(format!(
                "the plain product takes at most {most} tiles of 64 rows and of 64 classes; \
                 {}",
                shape()
            )));
        }
        // The logits' bytes their own; beside the inputs in one buffer, the writable variant.
        let reads: Vec<_> = needs[..2]
            .iter()
            .copied()
            .chain(bias)
            .map(|(what, slice, size)| (what, Some(slice), size))
            .collect();
        let (what, slice, size) = needs[2];
        let writable = crate::plan::device::separate(&reads, &[(what, Some(slice), size)])?;
        let transposed = batch.weight_layout == WeightLayout::HiddenMajor;
        let load = match transposed && !v.is_multiple_of(4) {
            true => LogitLoad::scalar(h.dtype),
            false => linear_load(h.dtype, d),
        };
        let params = Params {
            rows: n as u32,
            classes: v as u32,
            span: v as u32,
            hidden: d as u32,
            flags: if batch.bias.is_some() { FLAG_BIAS } else { 0 },
            ..Params::default()
        };
        let (uniforms, _) = self.uniform_blocks(&[params]);
        let mut pool = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let stand_in =
            Region::whole(&pool.get(&self.device, Role::UnusedInput, 16, storage_usage()));
        let slice = |s: wgpu::BufferSlice<'_>| Region::slice(s);
        let (hidden, weight, out) = (slice(h.data), slice(w.data), slice(logits));
        let bias = batch.bias.map(slice);
        let product = LinearProduct {
            params: Window {
                buffer: &uniforms,
                offset: 0,
                size: std::mem::size_of::<Params>() as u64,
            },
            logits: out.head(needs[2].2),
            hidden: hidden.head(needs[0].2),
            head_weight: weight.head(needs[1].2),
            head_bias: bias
                .as_ref()
                .map_or(stand_in.head(16), |b| b.head(v as u64 * 4)),
        };
        let variant = Variant::new(Kernel::LinearProduct, load, TargetLoad::I64)
            .with_weight_transposed(transposed)
            .with_writable(writable);
        let groups = (groups.0 as u32, groups.1 as u32, 1);
        self.scoped(|| {
            self.dispatch(encoder, &self.pipeline(variant), &product.entries(), groups);
            Ok(())
        })
    }
}
