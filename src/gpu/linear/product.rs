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
    /// [`WeightLayout`]; `logits` in a buffer apart from the inputs.
    ///
    /// Errors ([`Error::Unsupported`]): a slice smaller than its shape or at an offset that is
    /// not a multiple of the device's storage alignment, `h`, `W` or the logits larger than one
    /// storage binding, `h` and `W` of different dtypes or hidden sizes (or an odd one in f16 /
    /// bf16); a device error.
    pub fn record_linear_product(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        batch: &DeviceLinearBatch<'_>,
        logits: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        let (h, w) = (&batch.hidden, &batch.weight);
        let (n, d, v) = (h.rows, h.cols, batch.weight_shape().0);
        let element = h.dtype.size() as u64;
        let needs = [
            ("hidden", h.data.size(), (n * d) as u64 * element),
            ("weight", w.data.size(), (v * d) as u64 * element),
            ("logits", logits.size(), (n * v) as u64 * 4),
        ];
        let offsets = [h.data.offset(), w.data.offset(), logits.offset()];
        let offsets = offsets.into_iter().chain(batch.bias.map(|b| b.offset()));
        if let Some(offset) = offsets
            .into_iter()
            .find(|o| o % self.storage_alignment != 0)
        {
            return Err(Error::Unsupported(format!(
                "a slice at offset {offset}, not a multiple of the storage alignment {}",
                self.storage_alignment
            )));
        }
        if batch.bias.is_some_and(|b| b.size() < v as u64 * 4) {
            return Err(Error::Unsupported(format!(
                "a bias slice shorter than {v} f32"
            )));
        }
        for (what, size, bytes) in needs {
            if size < bytes || bytes > self.max_binding {
                return Err(Error::Unsupported(format!(
                    "the plain product binds the whole {what}: {bytes} bytes in a slice of \
                     {size} and one binding of {}",
                    self.max_binding
                )));
            }
        }
        if h.dtype != w.dtype || batch.weight_shape().1 != d || (element == 2 && d % 2 == 1) {
            return Err(Error::Unsupported(format!(
                "the plain product takes h and W of one dtype and hidden size (even for \
                 f16 / bf16); got {:?} [{n} × {d}] and {:?} [{} × {}]",
                h.dtype, w.dtype, w.rows, w.cols
            )));
        }
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
            .with_weight_transposed(transposed);
        let groups = (
            n.div_ceil(TILE_ROWS) as u32,
            v.div_ceil(TILE_ROWS) as u32,
            1,
        );
        self.scoped(|| {
            self.dispatch(encoder, &self.pipeline(variant), &product.entries(), groups);
            Ok(())
        })
    }
}
