//! The BCE launches of a call: the per-class weights gathered once, then one element pass
//! per chunk (loss, gradient and the per-vec4 sums the reduction reads).

use super::super::encode::grid;
use super::super::launch::Chunk;
use super::super::launchers::{Bce, BceClasses};
use super::{Call, Kernel, Variant, Window};
use crate::gpu::pipelines::TargetLoad;

impl Call<'_> {
    /// Chunk `i` of a BCE call (the first also gathers the per-class weights).
    pub(super) fn bce_chunk(&self, pass: &mut wgpu::ComputePass, i: usize, chunk: Chunk) {
        let (first, count) = self.span(chunk);
        let s = &self.scratch;
        let class_params = s.class_params.as_ref().expect("allocated for BCE");
        if i == 0 {
            let classes = BceClasses {
                params: self.blocks.window(i),
                class_weights: self.class_weights(),
                pos_weight: self
                    .input_or_stand_in(self.batch.pos_weight, self.plan.classes as u64 * 4),
                class_params: Window::whole(class_params),
            };
            let (x, y) = grid(self.plan.classes as u64);
            self.gpu.launch(
                pass,
                &self
                    .gpu
                    .pipeline(Variant::plain(Kernel::BceClasses).with_writable(self.plan.writable)),
                &classes.entries(),
                (x, y, 1),
            );
        }
        let bce = Bce {
            params: self.blocks.window(i),
            logits: self.logits(first, count).0,
            gradient: self.gradient(first, count),
            targets: self.f32s(self.targets_buffer, first, count).0,
            row_sums: Window::whole(&s.row_sums),
            upstream: match (self.out.upstream, &self.device_upstream) {
                (Some(u), _) => self.f32s(u, first, count).0,
                (None, Some(block)) => Window::whole(block),
                (None, None) => Window::whole(&s.dummy_read),
            },
            losses: match self.out.rows {
                Some(r) => self.f32s(r, first, count).0,
                None => Window::whole(&s.dummy_write),
            },
            sample_weights: self.sample_weights(),
            class_params: Window::whole(class_params),
        };
        let variant = Variant::new(Kernel::Bce, self.scalar_load, TargetLoad::Dense)
            .with_writable(self.plan.writable)
            .with_store(self.plan.store);
        let (x, y) = grid(count.div_ceil(4));
        self.gpu
            .launch(pass, &self.gpu.pipeline(variant), &bce.entries(), (x, y, 1));
    }
}
