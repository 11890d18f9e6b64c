//! The GPU side of vocabulary-parallel cross-entropy: the partials kernel over one shard's
//! columns, the focal pass of the unsharded path over them for focal loss with smoothing
//! (its per-row sums are the shard's `FocalPartial`s), and the backward kernel driven by the
//! combined (global) row coefficients.

use super::abi::{
    Params, Partial, ReductionCode, RowCoef, COEF_BYTES, FLAG_ENTROPY, FLAG_WANT_WZ, FLAG_WEIGHTS,
    PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES,
};
use super::encode::{grid, storage_usage, window, Window};
use super::launch::{chunks, launch_shape, Chunk, LaunchShape};
use super::launchers::{Backward, Focal, Partials};
use super::pipelines::{Kernel, LogitLoad, Pipeline, TargetLoad, Variant};
use super::pool::{Pool, Role};
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Dtype, Layout, Logits, Targets};
use crate::options::CrossEntropy;
use crate::shard::{Combined, FocalPartial, RowFill, RowPartial, Shard};

/// One chunk's dispatch of a row-segment kernel.
struct Segment<'r> {
    /// Its `Params` block.
    params: wgpu::Buffer,
    /// Its logits.
    logits: Window<'r>,
    /// Its grid.
    groups: (u32, u32, u32),
}

/// One shard call's logits on the device, and its rows cut into chunks that fit a binding.
struct ShardRows {
    /// The uploaded logits, `rows × width`.
    logits: wgpu::Buffer,
    /// Chunks with at least one row.
    chunks: Vec<Chunk>,
    width: usize,
    /// Bytes per logit.
    elem: u64,
}

impl ShardRows {
    /// The first element and the element count of `chunk`.
    fn span(&self, chunk: Chunk) -> (u64, u64) {
        (
            chunk.row0 as u64 * self.width as u64,
            chunk.rows as u64 * self.width as u64,
        )
    }

    /// The logits window of `chunk` (its length rounded to `round` bytes) and the element
    /// offset of the chunk's first logit inside it.
    fn window(&self, chunk: Chunk, alignment: u64, round: u64) -> (Window<'_>, u32) {
        let (first, count) = self.span(chunk);
        window(
            Window::whole(&self.logits),
            first,
            count,
            self.elem,
            alignment,
            round,
        )
    }
}

/// The buffers of [`Gpu::upload_rows`].
struct RowInputs {
    weights: wgpu::Buffer,
    coefs: wgpu::Buffer,
    dummy: wgpu::Buffer,
}

impl Gpu {
    /// Uploads a shard's logits (inside a `scoped` call) and cuts its rows into chunks whose
    /// windows of `bytes_per_element` (the logits', or 4 where f32 gradients are bound per
    /// chunk too) fit a binding.
    fn upload_shard(
        &self,
        pool: &mut Pool,
        logits: &Logits<'_>,
        bytes_per_element: u64,
    ) -> Result<ShardRows> {
        let width = logits.classes();
        let chunks = chunks(
            logits.rows(),
            width,
            Layout::Rows,
            bytes_per_element,
            self.max_binding,
            self.storage_alignment,
            4,
        )
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "shard rows of {} bytes are bound at least four at a time, and that is larger \
                 than the device's storage binding limit ({} bytes)",
                width as u64 * bytes_per_element,
                self.max_binding
            ))
        })?;
        Ok(ShardRows {
            logits: self.upload(pool, Role::UploadLogits, logits.bytes()),
            chunks: chunks.into_iter().filter(|c| c.rows > 0).collect(),
            width,
            elem: logits.dtype().size() as u64,
        })
    }

    /// The dispatches of a row-segment kernel (the partials or the focal pass) over every
    /// chunk of `rows`: each chunk's `Params` block, logits window and grid (`base.splits`
    /// workgroups along y).
    fn segments<'r>(
        &self,
        rows: &'r ShardRows,
        pipeline: &Pipeline,
        base: Params,
    ) -> Vec<Segment<'r>> {
        let round = if pipeline.variant.load == LogitLoad::F32x4 {
            16
        } else {
            4
        };
        let shape = LaunchShape {
            invocations_per_row: base.invocations_per_row,
            splits: base.splits,
            span: base.span,
        };
        rows.chunks
            .iter()
            .map(|&chunk| {
                let (logits, elem_offset) = rows.window(chunk, self.storage_alignment, round);
                Segment {
                    params: self.uniform(&Params {
                        rows: chunk.rows as u32,
                        row0: chunk.row0 as u32,
                        elem_offset,
                        ..base
                    }),
                    logits,
                    groups: shape.grid(chunk.rows, base.splits),
                }
            })
            .collect()
    }

    /// Launch parameters shared by both shard kernels.
    fn shard_params(&self, options: &CrossEntropy, shard: Shard, weighted: bool) -> Params {
        Params {
            classes: shard.width as u32,
            scale: options.logit_scale,
            cap: options.softcap.unwrap_or(0.0),
            smoothing: options.label_smoothing,
            uniform: options.label_smoothing / shard.classes as f32,
            z_loss: options.z_loss,
            focal_gamma: options.focal_gamma,
            flags: if weighted { FLAG_WEIGHTS } else { 0 },
            ..Params::default()
        }
    }

    /// Uploads what the kernels driven by the combined rows bind: the class weights
    /// (`CLASS_WEIGHTS`; the unused-input dummy when unweighted), the combined rows as `RowCoef`s
    /// (`COEFFICIENTS`: the global LSE, the prescaled coefficients of `REDUCTION_PRESCALED`, targets as this
    /// shard's columns or −1 when elsewhere), and the dummy for unused inputs.
    fn upload_rows(
        &self,
        pool: &mut Pool,
        shard: Shard,
        w: Option<&[f32]>,
        combined: &Combined,
    ) -> RowInputs {
        let coefs = combined_coefficients(shard, combined);
        let dummy = pool.get(&self.device, Role::UnusedInput, 16, storage_usage());
        RowInputs {
            weights: w.map_or(dummy.clone(), |w| {
                self.upload(pool, Role::UploadWeights, bytemuck::cast_slice(w))
            }),
            coefs: self.upload(pool, Role::UploadCoefficients, bytemuck::cast_slice(&coefs)),
            dummy,
        }
    }

    /// One shard's per-row partials (inputs already checked): the partials kernel on the
    /// device, the split merge and the target's logit on the host.
    pub(crate) fn shard_partials(
        &self,
        options: &CrossEntropy,
        shard: Shard,
        logits: &Logits<'_>,
        targets: Targets<'_>,
        w: Option<&[f32]>,
    ) -> Result<Vec<RowPartial>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        let rows = logits.rows();
        let width_bytes = shard.width as u64 * 4;
        let dtype = logits.dtype();
        let shape = launch_shape(rows, shard.width, Layout::Rows);
        let records: Vec<Partial> = self.scoped(|| {
            let uploaded = self.upload_shard(pool, logits, dtype.size() as u64)?;
            let weights =
                w.map(|w| self.upload(pool, Role::UploadWeights, bytemuck::cast_slice(w)));
            let dummy = pool.get(&self.device, Role::UnusedInput, 16, storage_usage());
            let no_error = pool.get(&self.device, Role::UnusedOutput, 16, storage_usage());
            let no_target_logits =
                pool.get(&self.device, Role::UnusedTargetLogits, 16, storage_usage());
            let partials = pool.get(
                &self.device,
                Role::Partials,
                (rows as u64 * shape.splits as u64 * PARTIAL_BYTES).max(16),
                storage_usage(),
            );
            let mut base = self.shard_params(options, shard, w.is_some());
            base.flags |= FLAG_ENTROPY
                | if options.label_smoothing > 0.0 {
                    FLAG_WANT_WZ
                } else {
                    0
                };
            base.splits = shape.splits;
            base.span = shape.span;
            base.invocations_per_row = shape.invocations_per_row;
            let x4 = dtype == Dtype::F32 && shard.width.is_multiple_of(4);
            let variant = Variant::new(
                Kernel::SoftmaxPartials,
                if x4 {
                    LogitLoad::F32x4
                } else {
                    LogitLoad::scalar(dtype)
                },
                TargetLoad::I32,
            )
            .with_subgroups(self.variant == super::ShaderVariant::Subgroup);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            let pipeline = self.pipeline(variant);
            for segment in self.segments(&uploaded, &pipeline, base) {
                let launcher = Partials {
                    params: Window::whole(&segment.params),
                    logits: segment.logits,
                    targets: Window::head(&dummy, 16),
                    class_weights: Window::head(weights.as_ref().unwrap_or(&dummy), width_bytes),
                    partials: Window::head(
                        &partials,
                        rows as u64 * shape.splits as u64 * PARTIAL_BYTES,
                    ),
                    target_error: Window::head(&no_error, 16),
                    // Unwritten: no FLAG_TARGET_LOGIT.
                    target_logits: Window::head(&no_target_logits, 16),
                };
                self.dispatch(&mut encoder, &pipeline, &launcher.entries(), segment.groups);
            }
            self.queue.submit([encoder.finish()]);
            let bytes = self.read_back(
                pool,
                &partials,
                rows as u64 * shape.splits as u64 * PARTIAL_BYTES,
            )?;
            Ok(bytemuck::pod_collect_to_vec(&bytes))
        })?;

        let transform = crate::cpu::row::Transform::of(options);
        Ok((0..rows)
            .map(|row| {
                let splits =
                    &records[row * shape.splits as usize..(row + 1) * shape.splits as usize];
                let merged = merge_splits(shard, splits);
                let y = targets.index(row).unwrap_or_default();
                let target = shard.local(y, options.ignore_index).map(|c| {
                    (
                        transform.scalar(logits.get(row, c)),
                        w.map_or(1.0, |w| w[c]),
                    )
                });
                merged.with_target(target)
            })
            .collect())
    }

    /// One shard's focal sums (inputs already checked; focal loss with smoothing): the focal
    /// pass of `softmax_focal.wgsl` over the shard's columns with the global LSE and the
    /// shard's target column, then its per-row `Σ a·f·l` (in the row sums, `s[n] = 1`) and
    /// `Σ a·g` (in the coefficients) read back.
    pub(crate) fn shard_focal(
        &self,
        options: &CrossEntropy,
        shard: Shard,
        logits: &Logits<'_>,
        w: Option<&[f32]>,
        combined: &Combined,
    ) -> Result<Vec<FocalPartial>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        let rows = logits.rows();
        let width_bytes = shard.width as u64 * 4;
        let dtype = logits.dtype();
        let (sums, coefs): (Vec<[f32; 4]>, Vec<RowCoef>) = self.scoped(|| {
            let uploaded = self.upload_shard(pool, logits, dtype.size() as u64)?;
            let inputs = self.upload_rows(pool, shard, w, combined);
            let row_out = pool.get(
                &self.device,
                Role::RowsOut,
                rows as u64 * ROW_BYTES,
                storage_usage(),
            );
            let row_sums = pool.get(
                &self.device,
                Role::RowSums,
                rows as u64 * ROW_SUM_BYTES,
                storage_usage(),
            );
            let base = Params {
                invocations_per_row: launch_shape(rows, shard.width, Layout::Rows)
                    .invocations_per_row,
                splits: 1,
                ..self.shard_params(options, shard, w.is_some())
            };
            let variant = Variant::new(
                Kernel::SoftmaxFocal,
                LogitLoad::scalar(dtype),
                TargetLoad::I32,
            );
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&row_sums, 0, None);
            let pipeline = self.pipeline(variant);
            for segment in self.segments(&uploaded, &pipeline, base) {
                let launcher = Focal {
                    params: Window::whole(&segment.params),
                    logits: segment.logits,
                    targets: Window::head(&inputs.dummy, 16),
                    class_weights: Window::head(&inputs.weights, width_bytes),
                    rows: Window::head(&row_out, rows as u64 * ROW_BYTES),
                    row_sums: Window::head(&row_sums, rows as u64 * ROW_SUM_BYTES),
                    coefficients: Window::head(&inputs.coefs, rows as u64 * COEF_BYTES),
                };
                self.dispatch(&mut encoder, &pipeline, &launcher.entries(), segment.groups);
            }
            self.queue.submit([encoder.finish()]);
            // Both in one staging copy and one map.
            let reads = [
                (&row_sums, rows as u64 * ROW_SUM_BYTES),
                (&inputs.coefs, rows as u64 * COEF_BYTES),
            ];
            let mut read = self.read_back_all(pool, &reads)?.into_iter();
            let (sums, coefs) = (
                read.next().unwrap_or_default(),
                read.next().unwrap_or_default(),
            );
            Ok((
                bytemuck::pod_collect_to_vec(&sums),
                bytemuck::pod_collect_to_vec(&coefs),
            ))
        })?;
        // The kernel writes s[n]·ce = −Σ a·f·l (s[n] = 1 here) and Σ a·g for the rows it
        // computed; the others (ignored, NaN) give nothing.
        Ok(combined
            .rows
            .iter()
            .zip(sums.iter().zip(&coefs))
            .map(|(r, (sum, coef))| match r.fill {
                RowFill::Compute => FocalPartial {
                    loss: sum[0],
                    g_sum: coef.p_coefficient,
                },
                _ => FocalPartial::default(),
            })
            .collect())
    }

    /// One shard's gradient from the combined coefficients (inputs already checked).
    pub(crate) fn shard_backward(
        &self,
        options: &CrossEntropy,
        shard: Shard,
        logits: &Logits<'_>,
        w: Option<&[f32]>,
        combined: &Combined,
        gradient: &mut [f32],
    ) -> Result<()> {
        let rows = logits.rows();
        let width_bytes = shard.width as u64 * 4;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        self.scoped(|| {
            // Chunks sized for the f32 gradient windows bound next to the logits.
            let uploaded = self.upload_shard(pool, logits, 4)?;
            let inputs = self.upload_rows(pool, shard, w, combined);
            let grad = pool.get(
                &self.device,
                Role::Gradient,
                gradient.len() as u64 * 4,
                storage_usage(),
            );
            let variant = Variant::new(
                Kernel::SoftmaxBackward,
                LogitLoad::scalar(logits.dtype()),
                TargetLoad::I32,
            );
            let pipeline = self.pipeline(variant);
            let base = Params {
                reduction: ReductionCode::Prescaled as u32,
                ..self.shard_params(options, shard, w.is_some())
            };
            let mut encoder = self.device.create_command_encoder(&Default::default());
            for &chunk in &uploaded.chunks {
                let (first, count) = uploaded.span(chunk);
                let (logits_window, elem_offset) =
                    uploaded.window(chunk, self.storage_alignment, 4);
                let (grad_window, f32_offset) = window(
                    Window::whole(&grad),
                    first,
                    count,
                    4,
                    self.storage_alignment,
                    4,
                );
                let params = Params {
                    rows: chunk.rows as u32,
                    row0: chunk.row0 as u32,
                    elem_offset,
                    f32_offset,
                    elems: count as u32,
                    ..base
                };
                let uniform = self.uniform(&params);
                let backward = Backward {
                    params: Window::whole(&uniform),
                    logits: logits_window,
                    gradient: Some(grad_window),
                    targets: Window::head(&inputs.dummy, 16),
                    class_weights: Window::head(&inputs.weights, width_bytes),
                    coefficients: Window::head(&inputs.coefs, rows as u64 * COEF_BYTES),
                    scale_source: Window::head(&inputs.dummy, 16),
                };
                let (x, y) = grid(count.div_ceil(4));
                self.dispatch(&mut encoder, &pipeline, &backward.entries(), (x, y, 1));
            }
            self.queue.submit([encoder.finish()]);
            let bytes = self.read_back(pool, &grad, gradient.len() as u64 * 4)?;
            gradient.copy_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
            Ok(())
        })
    }
}

/// A row's splits (the kernels' `Partial`s over a shard's columns) as one `RowPartial`: each
/// split a partial of its columns, merged in column order by the one host merge
/// (`RowPartial::merge`); no target yet.
pub(super) fn merge_splits(shard: Shard, splits: &[Partial]) -> RowPartial {
    let as_partial = |q: &Partial| RowPartial {
        max: q.m,
        sum_exp: q.s,
        sum_ez: q.ez,
        sum_wz: q.wz,
        weight_sum: q.w_all,
        argmax: shard.start as u32 + q.arg,
        nan_index: if q.nan_arg == u32::MAX {
            u32::MAX
        } else {
            shard.start as u32 + q.nan_arg
        },
        ..RowPartial::default()
    };
    splits[1..]
        .iter()
        .fold(as_partial(&splits[0]), |a, q| a.merge(&as_partial(q)))
}

/// The combined (global) rows as the kernels' `RowCoef`s for one shard: the global LSE, the
/// prescaled coefficients of `REDUCTION_PRESCALED`, the target as this shard's column (−1
/// when it is elsewhere).
pub(super) fn combined_coefficients(shard: Shard, combined: &Combined) -> Vec<RowCoef> {
    combined
        .rows
        .iter()
        .map(|r| {
            let local = r.target - shard.start as i64;
            RowCoef {
                max: r.max,
                p_coefficient: r.p_coefficient,
                target_coefficient: r.target_term,
                y: if (0..shard.width as i64).contains(&local) {
                    local as i32
                } else {
                    -1
                },
                fill: r.fill as u32,
                log_sum: r.log_sum,
                scale: r.scale,
                sample: 1.0,
            }
        })
        .collect()
}
