//! The schedule of one call: which kernels run, over which windows, in which order, for
//! softmax cross-entropy (fused, or partials → rows → [focal] → backward, with long rows in
//! pieces) and BCE, then the fixed-order reduction. Recorded into the caller's encoder.

use super::abi::{Params, FLAG_CHECK_TARGETS, FLAG_FOCAL_ALL};
use super::device::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets};
use super::encode::{grid, window, Window};
use super::launch::{
    binding_room, chunks, flat_pieces, fused_shape, launch_shape, row_pieces, Chunk,
};
use super::launchers::{Backward, Bce, BceClasses, Focal, Fused, Partials, Reduce, Rows, Targets};
use super::pipelines::{Kernel, LogitLoad, Store, TargetLoad, Variant, WORKGROUP_SIZE};
use super::pool::Pool;
mod params;
mod scratch;

use scratch::Scratch;

use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Dtype, Layout};
use crate::options::Reduction;
use crate::plan::Loss;
use wgpu::util::DeviceExt;

/// The out-of-range-target flag of recorded calls (read by `take_target_error`), and the one
/// host-slice calls clear, check and own, so a host call never loses a recorded call's flag.
pub(super) const RECORDED_CALL_ERROR: &str = "xent target error";
pub(super) const HOST_CALL_ERROR: &str = "xent host-call target error";

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
        error_role: &'static str,
    ) -> Result<()> {
        crate::plan::device::check(batch, out, &job)?;
        let (rows, classes, layout) = (batch.rows, batch.classes, batch.layout);
        let device = &self.device;
        let elem = batch.dtype.size() as u64;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        let f32_windows = dense
            || matches!(out.gradient, DeviceGradient::Into(_))
            || matches!(job, Loss::Binary(_));
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
        let unsupported = || {
            Error::Unsupported(format!(
                "one row ({} bytes) is larger than the device's storage binding limit ({} bytes)",
                classes as u64 * bytes_per_element,
                self.max_binding
            ))
        };
        if long_rows && (layout != Layout::Rows || matches!(job, Loss::Binary(_))) {
            return Err(unsupported());
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
        let scalar_load = match batch.dtype {
            Dtype::F32 => LogitLoad::F32,
            Dtype::F16 => LogitLoad::F16,
            Dtype::Bf16 => LogitLoad::Bf16,
        };
        let target_load = match batch.targets {
            DeviceTargets::I32(_) => TargetLoad::I32,
            DeviceTargets::I64(_) => TargetLoad::I64,
            DeviceTargets::Dense(_) => TargetLoad::Dense,
        };
        let store = if matches!(out.gradient, DeviceGradient::InPlace) {
            Store::InPlace
        } else {
            Store::Separate
        };
        let targets_buffer = match batch.targets {
            DeviceTargets::I32(t) | DeviceTargets::I64(t) | DeviceTargets::Dense(t) => t,
        };

        // Scratch, reused across calls.
        let (reduce_items, is_softmax) = match job {
            Loss::Softmax(_) => (rows as u64, true),
            Loss::Binary(_) => ((rows as u64 * classes as u64).div_ceil(4), false),
        };
        let Scratch {
            partials,
            coefs,
            row_sums,
            ping,
            pong,
            totals,
            target_logits,
            error,
            dummy_read,
            dummy_write,
            class_params,
            row_out,
        } = Scratch::take(
            pool,
            device,
            (rows, classes),
            shape,
            (reduce_items, is_softmax),
            out,
            error_role,
            self.max_binding,
        )?;
        let mut base = params::shared(job, batch, out, shape, spatial, dense, want_entropy);
        let reduction = job.reduction();
        let flags = base.flags;
        let focal_all = flags & FLAG_FOCAL_ALL != 0;
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
        let mut params: Vec<Params> = Vec::new();
        for chunk in &chunk_list {
            let first = chunk.row0 as u64 * classes as u64;
            let count = chunk.rows as u64 * classes as u64;
            let (_, elem_offset) =
                window(batch.logits, first, count, elem, self.storage_alignment, 4);
            let (_, f32_offset) =
                window(targets_buffer, first, count, 4, self.storage_alignment, 4);
            params.push(Params {
                rows: chunk.rows as u32,
                row0: if is_softmax {
                    chunk.row0 as u32
                } else {
                    (first / 4) as u32
                },
                elem_offset,
                f32_offset,
                elems: count as u32,
                first_row: chunk.row0 as u32,
                ..base
            });
        }
        let mut count = reduce_items;
        loop {
            params.push(Params {
                elems: count as u32,
                ..base
            });
            count = count.div_ceil(4 * WORKGROUP_SIZE as u64);
            if count <= 1 {
                break;
            }
        }
        let reduce_passes = chunk_list.len()..params.len();
        // The fused kernel's targets pass covers every row at once (targets and sample weights
        // are bound whole).
        let targets_params = params.len();
        params.push(Params {
            rows: rows as u32,
            ..base
        });
        // Long rows: the partials pass's pieces (row, whole splits), then the backward's runs.
        let pieces = if long_rows {
            row_pieces(rows, shape, bytes_per_element, room)
        } else {
            Vec::new()
        };
        let piece_span = |split0: u32, splits: u32, row: usize| {
            let col0 = split0 as u64 * shape.span as u64;
            let count = (splits as u64 * shape.span as u64).min(classes as u64 - col0);
            (row as u64 * classes as u64 + col0, count, col0)
        };
        let piece_params = params.len();
        for piece in &pieces {
            let (first, count, col0) = piece_span(piece.split0, piece.splits, piece.row);
            let (_, elem_offset) =
                window(batch.logits, first, count, elem, self.storage_alignment, 4);
            let (_, f32_offset) =
                window(targets_buffer, first, count, 4, self.storage_alignment, 4);
            params.push(Params {
                rows: 1,
                row0: piece.row as u32,
                elem_offset,
                f32_offset,
                col0: col0 as u32,
                split0: piece.split0,
                ..base
            });
        }
        let runs = if long_rows {
            flat_pieces(rows as u64 * classes as u64, bytes_per_element, room)
        } else {
            Vec::new()
        };
        let run_params = params.len();
        for &(first, count) in &runs {
            let (_, elem_offset) =
                window(batch.logits, first, count, elem, self.storage_alignment, 4);
            let (_, f32_offset) =
                window(targets_buffer, first, count, 4, self.storage_alignment, 4);
            params.push(Params {
                row0: (first / classes as u64) as u32,
                col0: (first % classes as u64) as u32,
                elem_offset,
                f32_offset,
                elems: count as u32,
                ..base
            });
        }
        let stride =
            (std::mem::size_of::<Params>() as u64).next_multiple_of(self.uniform_alignment);
        let mut bytes = vec![0u8; stride as usize * params.len()];
        for (i, p) in params.iter().enumerate() {
            bytes[i * stride as usize..][..std::mem::size_of::<Params>()]
                .copy_from_slice(bytemuck::bytes_of(p));
        }
        let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("xent params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let params_window = |i: usize| Window {
            buffer: &uniforms,
            offset: i as u64 * stride,
            size: std::mem::size_of::<Params>() as u64,
        };
        let weights = Window::head(
            batch.class_weights.unwrap_or(&dummy_read),
            classes as u64 * 4,
        );
        let sample_weights =
            Window::head(batch.sample_weights.unwrap_or(&dummy_read), rows as u64 * 4);
        // Index targets are bound whole (every chunk reads them by global row).
        let index_targets = Window::head(
            targets_buffer,
            rows as u64 * if target_load == TargetLoad::I64 { 8 } else { 4 },
        );
        // What the gradient's scales read: per-row upstream values, the mean's totals.
        let scale_source = Window::whole(match reduction {
            Reduction::None => out.upstream.unwrap_or(&dummy_read),
            Reduction::Sum => &dummy_read,
            Reduction::Mean => &totals,
        });

        // The fixed-order reduction: row sums → … → totals and the loss.
        let reduce = self.pipeline(Variant::plain(Kernel::Reduce));
        let record_reduce = |pass: &mut wgpu::ComputePass| {
            let mut source = &row_sums;
            for i in reduce_passes.clone() {
                let target = if i + 1 == reduce_passes.end {
                    &totals
                } else if (i - reduce_passes.start) % 2 == 0 {
                    &ping
                } else {
                    &pong
                };
                self.launch(
                    pass,
                    &reduce,
                    &Reduce {
                        params: params_window(i),
                        input: Window::whole(source),
                        output: Window::whole(target),
                        loss: Window::whole(out.loss),
                    }
                    .entries(),
                    (
                        (params[i].elems as u64)
                            .div_ceil(4 * WORKGROUP_SIZE as u64)
                            .max(1) as u32,
                        1,
                        1,
                    ),
                );
                source = target;
            }
        };

        // f32 logits read as vec4 where the window and its rows are 16-byte aligned.
        let vec4_loads = |logits: &Window, p: &Params| {
            batch.dtype == Dtype::F32
                && layout == Layout::Rows
                && classes.is_multiple_of(4)
                && logits.size.is_multiple_of(16)
                && p.elem_offset.is_multiple_of(4)
        };
        let record_partials = |pass: &mut wgpu::ComputePass,
                               i: usize,
                               logits: Window,
                               targets: Window,
                               rows: usize,
                               splits: u32| {
            let variant = Variant::new(
                Kernel::SoftmaxPartials,
                if vec4_loads(&logits, &params[i]) {
                    LogitLoad::F32x4
                } else {
                    scalar_load
                },
                target_load,
            )
            .with_subgroups(self.variant == super::ShaderVariant::Subgroup);
            self.launch(
                pass,
                &self.pipeline(variant),
                &Partials {
                    params: params_window(i),
                    logits,
                    targets,
                    class_weights: weights,
                    partials: Window::whole(&partials),
                    target_error: Window::whole(&error),
                    target_logits: Window::whole(&target_logits),
                }
                .entries(),
                shape.grid(rows, splits),
            );
        };

        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent"),
            timestamp_writes: None,
        });
        if fused.is_some() && (flags & FLAG_CHECK_TARGETS != 0 || reduction == Reduction::Mean) {
            // Index targets checked, and the mean's D and Σ s reduced into `totals` before
            // the fused kernel scales its gradient by them.
            let pipeline = self.pipeline(Variant::new(
                Kernel::SoftmaxTargets,
                LogitLoad::F32,
                target_load,
            ));
            let (x, y) = grid(rows as u64);
            self.launch(
                &mut pass,
                &pipeline,
                &Targets {
                    params: params_window(targets_params),
                    targets: index_targets,
                    class_weights: weights,
                    row_sums: Window::whole(&row_sums),
                    target_error: Window::whole(&error),
                    sample_weights,
                }
                .entries(),
                (x, y, 1),
            );
            if reduction == Reduction::Mean {
                record_reduce(&mut pass);
            }
        }
        for (i, chunk) in chunk_list.iter().enumerate() {
            let p = &params[i];
            let first = chunk.row0 as u64 * classes as u64;
            let count = chunk.rows as u64 * classes as u64;
            let (logits_scalar, _) =
                window(batch.logits, first, count, elem, self.storage_alignment, 4);
            let (f32_targets, _) =
                window(targets_buffer, first, count, 4, self.storage_alignment, 4);
            let targets_window = if dense { f32_targets } else { index_targets };
            if chunk.rows == 0 {
                continue;
            }
            let x4 = vec4_loads(&logits_scalar, p);
            if let Some(fused_shape) = fused {
                // The whole softmax, one read and one write per logit.
                let variant = Variant::new(
                    Kernel::SoftmaxFused,
                    if x4 && store == Store::Separate {
                        LogitLoad::F32x4
                    } else {
                        scalar_load
                    },
                    target_load,
                )
                .with_store(store)
                .with_subgroups(self.variant == super::ShaderVariant::Subgroup);
                let pipeline = self.pipeline(variant);
                // In place the gradient is the logits: the stand-in is not bound.
                let gradient = match out.gradient {
                    DeviceGradient::Into(g) => {
                        window(g, first, count, 4, self.storage_alignment, 4).0
                    }
                    _ => Window::whole(&dummy_write),
                };
                let fused = Fused {
                    params: params_window(i),
                    logits: logits_scalar,
                    gradient,
                    targets: targets_window,
                    class_weights: weights,
                    rows: Window::whole(&row_out),
                    row_sums: Window::whole(&row_sums),
                    scale_source,
                    sample_weights,
                };
                self.launch(
                    &mut pass,
                    &pipeline,
                    &fused.entries(),
                    fused_shape.grid(chunk.rows, 1),
                );
            } else if is_softmax {
                // Pass 1: partials, of the chunk's rows, or of each long row a piece at a time.
                if long_rows {
                    for (j, piece) in pieces.iter().enumerate() {
                        let (first, count, _) = piece_span(piece.split0, piece.splits, piece.row);
                        let (logits_piece, _) =
                            window(batch.logits, first, count, elem, self.storage_alignment, 4);
                        let (f32_piece, _) =
                            window(targets_buffer, first, count, 4, self.storage_alignment, 4);
                        record_partials(
                            &mut pass,
                            piece_params + j,
                            logits_piece,
                            if dense { f32_piece } else { index_targets },
                            1,
                            piece.splits,
                        );
                    }
                } else {
                    record_partials(
                        &mut pass,
                        i,
                        logits_scalar,
                        targets_window,
                        chunk.rows,
                        shape.splits,
                    );
                }

                // Pass 2: rows (no logits: the target's logit comes from pass 1).
                let variant = Variant::new(Kernel::SoftmaxRows, scalar_load, target_load);
                let pipeline = self.pipeline(variant);
                let (x, y) = grid(chunk.rows as u64);
                self.launch(
                    &mut pass,
                    &pipeline,
                    &Rows {
                        params: params_window(i),
                        targets: index_targets,
                        class_weights: weights,
                        partials: Window::whole(&partials),
                        rows: Window::whole(&row_out),
                        row_sums: Window::whole(&row_sums),
                        coefficients: Window::whole(&coefs),
                        sample_weights,
                        target_logits: Window::whole(&target_logits),
                    }
                    .entries(),
                    (x, y, 1),
                );

                // Focal loss with smoothing or soft targets: every class's (1 − p)^γ, from
                // the row's final LSE (one more read of the row).
                if focal_all {
                    let variant = Variant::new(Kernel::SoftmaxFocal, scalar_load, target_load);
                    let pipeline = self.pipeline(variant);
                    self.launch(
                        &mut pass,
                        &pipeline,
                        &Focal {
                            params: params_window(i),
                            logits: logits_scalar,
                            targets: targets_window,
                            class_weights: weights,
                            rows: Window::whole(&row_out),
                            row_sums: Window::whole(&row_sums),
                            coefficients: Window::whole(&coefs),
                        }
                        .entries(),
                        shape.grid(chunk.rows, 1),
                    );
                }
            } else {
                // BCE: loss and gradient in one pass.
                let (grad_window, logits_window) = match out.gradient {
                    DeviceGradient::Into(g) => (
                        window(g, first, count, 4, self.storage_alignment, 4).0,
                        logits_scalar,
                    ),
                    _ => (Window::whole(&dummy_write), logits_scalar),
                };
                let losses = match out.rows {
                    Some(r) => window(r, first, count, 4, self.storage_alignment, 4).0,
                    None => Window::whole(&dummy_write),
                };
                let upstream = match out.upstream {
                    Some(u) => window(u, first, count, 4, self.storage_alignment, 4).0,
                    None => Window::whole(&dummy_read),
                };
                let class_params = class_params.as_ref().expect("allocated for BCE");
                if i == 0 {
                    // Per-class weights gathered once per call.
                    let pipeline = self.pipeline(Variant::plain(Kernel::BceClasses));
                    let (x, y) = grid(classes as u64);
                    self.launch(
                        &mut pass,
                        &pipeline,
                        &BceClasses {
                            params: params_window(i),
                            class_weights: weights,
                            pos_weight: Window::head(
                                batch.pos_weight.unwrap_or(&dummy_read),
                                classes as u64 * 4,
                            ),
                            class_params: Window::whole(class_params),
                        }
                        .entries(),
                        (x, y, 1),
                    );
                }
                let variant =
                    Variant::new(Kernel::Bce, scalar_load, TargetLoad::Dense).with_store(store);
                let pipeline = self.pipeline(variant);
                let (x, y) = grid(count.div_ceil(4));
                self.launch(
                    &mut pass,
                    &pipeline,
                    &Bce {
                        params: params_window(i),
                        logits: logits_window,
                        gradient: grad_window,
                        targets: f32_targets,
                        row_sums: Window::whole(&row_sums),
                        upstream,
                        losses,
                        sample_weights,
                        class_params: Window::whole(class_params),
                    }
                    .entries(),
                    (x, y, 1),
                );
            }
        }

        record_reduce(&mut pass);

        // Pass 3: the softmax gradient, from the saved LSE and the reduced totals.
        if is_softmax && fused.is_none() && !matches!(out.gradient, DeviceGradient::None) {
            let variant =
                Variant::new(Kernel::SoftmaxBackward, scalar_load, target_load).with_store(store);
            let pipeline = self.pipeline(variant);
            // (params block, first element, elements): the chunks, or runs of long rows.
            let spans: Vec<(usize, u64, u64)> = if long_rows {
                (run_params..)
                    .zip(runs.iter().copied())
                    .map(|(i, (f, c))| (i, f, c))
                    .collect()
            } else {
                (0..)
                    .zip(&chunk_list)
                    .filter(|(_, chunk)| chunk.rows > 0)
                    .map(|(i, chunk)| {
                        let first = chunk.row0 as u64 * classes as u64;
                        (i, first, chunk.rows as u64 * classes as u64)
                    })
                    .collect()
            };
            for (i, first, count) in spans {
                let (logits_window, _) =
                    window(batch.logits, first, count, elem, self.storage_alignment, 4);
                let (f32_targets, _) =
                    window(targets_buffer, first, count, 4, self.storage_alignment, 4);
                let grad_window = match out.gradient {
                    DeviceGradient::Into(g) => {
                        window(g, first, count, 4, self.storage_alignment, 4).0
                    }
                    _ => Window::whole(&dummy_write),
                };
                let (x, y) = grid(count.div_ceil(4));
                self.launch(
                    &mut pass,
                    &pipeline,
                    &Backward {
                        params: params_window(i),
                        logits: logits_window,
                        gradient: grad_window,
                        targets: if dense { f32_targets } else { index_targets },
                        class_weights: weights,
                        coefficients: Window::whole(&coefs),
                        scale_source,
                    }
                    .entries(),
                    (x, y, 1),
                );
            }
        }
        drop(pass);
        Ok(())
    }
}
