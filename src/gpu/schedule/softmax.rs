//! The softmax launches of a call: the fused kernel per chunk (after the targets pass), or
//! partials (per chunk, or per piece of a long row) → rows → [focal] per chunk and the
//! backward after the reduction.

use super::super::launch::{Chunk, LaunchShape, Piece};
use super::super::launchers::{Backward, Focal, Fused, Partials, Rows, Targets};
use super::super::{encode::grid, ShaderVariant};
use super::{Call, Kernel, LogitLoad, Store, Variant, Window};
use crate::gpu::abi::{COEF_BYTES, ROW_BYTES};
use crate::input::{Dtype, Layout};

impl Call<'_> {
    /// Before the fused kernel: index targets checked, the mean's denominators per reduction slot.
    pub(super) fn targets_pass(&self, pass: &mut wgpu::ComputePass) {
        let variant = Variant::new(Kernel::SoftmaxTargets, LogitLoad::F32, self.target_load)
            .with_writable(self.plan.writable)
            .with_short_tiles(self.plan.rows_per_invocation > 1);
        let s = &self.scratch;
        let targets = Targets {
            params: self.blocks.window(self.blocks.targets),
            targets: self.index_targets(),
            class_weights: self.class_weights(),
            row_sums: Window::whole(&s.row_sums),
            target_error: s.error.head(4),
            sample_weights: self.sample_weights(),
        };
        // The fused kernel's tiles: WG invocations of k rows each per workgroup.
        let per_invocation = self.plan.rows_per_invocation as u64;
        let (x, y) = grid((self.plan.rows as u64).div_ceil(per_invocation));
        self.gpu.launch(
            pass,
            &self.gpu.pipeline(variant),
            &targets.entries(),
            (x, y, 1),
        );
    }

    /// The whole softmax of chunk `i`, one read and one write per logit.
    pub(super) fn fused_chunk(
        &self,
        pass: &mut wgpu::ComputePass,
        i: usize,
        chunk: Chunk,
        shape: LaunchShape,
    ) {
        let (first, count) = self.span(chunk);
        let logits = self.logits(first, count).0;
        let load = if self.vec4_loads(&logits, i) && self.plan.store != Store::InPlace {
            LogitLoad::F32x4
        } else {
            self.scalar_load
        };
        let variant = Variant::new(Kernel::SoftmaxFused, load, self.target_load)
            .with_writable(self.plan.writable)
            .with_store(self.plan.store)
            .with_subgroups(self.gpu.variant == ShaderVariant::Subgroup)
            .with_short_tiles(self.plan.rows_per_invocation > 1);
        let s = &self.scratch;
        let fused = Fused {
            params: self.blocks.window(i),
            logits,
            gradient: self.gradient(first, count),
            targets: self.chunk_targets(first, count),
            class_weights: self.class_weights(),
            rows: s.row_out.head(self.plan.rows as u64 * ROW_BYTES),
            row_sums: Window::whole(&s.row_sums),
            scale_source: (self.plan.store != Store::Save).then(|| self.scale_source()),
            sample_weights: self.sample_weights(),
            target_error: self.plan.store.loss_only().then(|| s.error.head(4)),
            coefficients: (self.plan.store == Store::Save)
                .then(|| s.coefs.head(self.plan.rows as u64 * COEF_BYTES)),
        };
        self.gpu.launch(
            pass,
            &self.gpu.pipeline(variant),
            &fused.entries(),
            shape.grid(
                chunk.rows.div_ceil(self.plan.rows_per_invocation as usize),
                1,
            ),
        );
    }

    /// Chunk `i` on the three-pass path: partials (of the chunk's rows, or of each long row
    /// a piece at a time), rows, and the focal pass when every class is focal.
    pub(super) fn three_pass_chunk(&self, pass: &mut wgpu::ComputePass, i: usize, chunk: Chunk) {
        let (first, count) = self.span(chunk);
        let logits = self.logits(first, count).0;
        let targets = self.chunk_targets(first, count);
        if self.plan.long_rows {
            for (j, piece) in self.plan.pieces.iter().enumerate() {
                let (first, count, _) = self.piece_span(piece);
                let piece_targets = self.chunk_targets(first, count);
                let logits = self.logits(first, count).0;
                let block = self.blocks.pieces + j;
                self.partials(pass, block, logits, piece_targets, 1, piece.splits);
            }
        } else {
            self.partials(pass, i, logits, targets, chunk.rows, self.plan.shape.splits);
        }

        // Rows: no logits, the target's logit comes from the partials pass.
        let s = &self.scratch;
        let variant = Variant::new(Kernel::SoftmaxRows, self.scalar_load, self.target_load)
            .with_writable(self.plan.writable);
        let rows = Rows {
            params: self.blocks.window(i),
            targets: self.index_targets(),
            class_weights: self.class_weights(),
            partials: Window::whole(&s.partials),
            rows: s.row_out.head(self.plan.rows as u64 * ROW_BYTES),
            row_sums: Window::whole(&s.row_sums),
            coefficients: s.coefs.head(self.plan.rows as u64 * COEF_BYTES),
            sample_weights: self.sample_weights(),
            target_logits: Window::whole(&s.target_logits),
        };
        let (x, y) = grid(chunk.rows as u64);
        self.gpu.launch(
            pass,
            &self.gpu.pipeline(variant),
            &rows.entries(),
            (x, y, 1),
        );

        // Focal loss with smoothing or soft targets: every class's (1 − p)^γ, from the
        // row's final LSE (one more read of the row).
        if self.plan.focal_all {
            let variant = Variant::new(Kernel::SoftmaxFocal, self.scalar_load, self.target_load)
                .with_writable(self.plan.writable);
            let focal = Focal {
                params: self.blocks.window(i),
                logits,
                targets,
                class_weights: self.class_weights(),
                rows: s.row_out.head(self.plan.rows as u64 * ROW_BYTES),
                row_sums: Window::whole(&s.row_sums),
                coefficients: s.coefs.head(self.plan.rows as u64 * COEF_BYTES),
            };
            self.gpu.launch(
                pass,
                &self.gpu.pipeline(variant),
                &focal.entries(),
                self.plan.shape.grid(chunk.rows, 1),
            );
        }
    }

    /// The partials pass over `rows` rows (`splits` splits each) of `logits`, with block
    /// `block`.
    fn partials(
        &self,
        pass: &mut wgpu::ComputePass,
        block: usize,
        logits: Window,
        targets: Window,
        rows: usize,
        splits: u32,
    ) {
        let load = if self.vec4_loads(&logits, block) {
            LogitLoad::F32x4
        } else {
            self.scalar_load
        };
        let variant = Variant::new(Kernel::SoftmaxPartials, load, self.target_load)
            .with_writable(self.plan.writable)
            .with_subgroups(self.gpu.variant == ShaderVariant::Subgroup);
        let s = &self.scratch;
        let partials = Partials {
            params: self.blocks.window(block),
            logits,
            targets,
            class_weights: self.class_weights(),
            partials: Window::whole(&s.partials),
            target_error: s.error.head(4),
            target_logits: Window::whole(&s.target_logits),
        };
        self.gpu.launch(
            pass,
            &self.gpu.pipeline(variant),
            &partials.entries(),
            self.plan.shape.grid(rows, splits),
        );
    }

    /// The gradient, from the saved row coefficients and the reduced totals: over the
    /// chunks, or over runs of elements of long rows.
    pub(super) fn backward(&self, pass: &mut wgpu::ComputePass) {
        let pipeline = |load| {
            let variant = Variant::new(Kernel::SoftmaxBackward, load, self.target_load)
                .with_writable(self.plan.writable)
                .with_store(self.plan.store);
            self.gpu.pipeline(variant)
        };
        // (block, first element, elements).
        let spans: Vec<(usize, u64, u64)> = if self.plan.long_rows {
            (self.blocks.runs..)
                .zip(self.plan.runs.iter().copied())
                .map(|(i, (first, count))| (i, first, count))
                .collect()
        } else {
            (0..)
                .zip(&self.plan.chunks)
                .filter(|(_, chunk)| chunk.rows > 0)
                .map(|(i, &chunk)| {
                    let (first, count) = self.span(chunk);
                    (i, first, count)
                })
                .collect()
        };
        for (i, first, count) in spans {
            let logits = self.logits(first, count).0;
            // Elements in 16-byte groups: the flat kernel needs no aligned rows.
            let vec4 = self.batch.dtype == Dtype::F32
                && self.plan.store == Store::Separate
                && logits.size.is_multiple_of(16)
                && self.blocks.params[i].elem_offset.is_multiple_of(4);
            let pipeline = pipeline(if vec4 {
                LogitLoad::F32x4
            } else {
                self.scalar_load
            });
            let backward = Backward {
                params: self.blocks.window(i),
                logits,
                gradient: self.gradient(first, count),
                targets: self.chunk_targets(first, count),
                class_weights: self.class_weights(),
                coefficients: self.scratch.coefs.head(self.plan.rows as u64 * COEF_BYTES),
                scale_source: self.scale_source(),
            };
            let (x, y) = grid(count.div_ceil(4));
            self.gpu
                .launch(pass, &pipeline, &backward.entries(), (x, y, 1));
        }
    }

    /// The elements of a chunk: (first, count).
    pub(super) fn span(&self, chunk: Chunk) -> (u64, u64) {
        let classes = self.plan.classes as u64;
        (chunk.row0 as u64 * classes, chunk.rows as u64 * classes)
    }

    /// The elements of a long row's piece and its first class: (first, count, col0).
    pub(super) fn piece_span(&self, piece: &Piece) -> (u64, u64, u64) {
        let (span, classes) = (self.plan.shape.span as u64, self.plan.classes as u64);
        let col0 = piece.split0 as u64 * span;
        let count = (piece.splits as u64 * span).min(classes - col0);
        (piece.row as u64 * classes + col0, count, col0)
    }

    /// The targets a kernel over elements `first .. first + count` binds: those elements of
    /// dense targets, or the index targets whole.
    fn chunk_targets(&self, first: u64, count: u64) -> Window<'_> {
        if self.plan.dense {
            self.f32s(self.targets_buffer, first, count).0
        } else {
            self.index_targets()
        }
    }

    /// f32 logits are read as vec4 where the window and its rows are 16-byte aligned.
    fn vec4_loads(&self, logits: &Window, block: usize) -> bool {
        self.batch.dtype == Dtype::F32
            && self.plan.layout == Layout::Rows
            && self.plan.classes.is_multiple_of(4)
            && logits.size.is_multiple_of(16)
            && self.blocks.params[block].elem_offset.is_multiple_of(4)
    }
}
