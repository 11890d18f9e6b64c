//! Recording the kernels for one call, and the host-slice path (upload, record, read back).

use super::abi::binding::*;
use super::abi::{
    Params, ReductionCode, COEF_BYTES, FLAG_ALPHA, FLAG_CHECK_TARGETS, FLAG_DENSE, FLAG_ENTROPY,
    FLAG_FOCAL_ALL, FLAG_GRADIENT, FLAG_KEEP_LOSSES, FLAG_POS_WEIGHT, FLAG_SAMPLE_WEIGHTS,
    FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS, PARTIAL_BYTES, ROW_BYTES,
};
use super::device::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, GpuRow};
use super::kernels::{Kernel, LogitLoad, Store, TargetLoad, Variant, WORKGROUP_SIZE};
use super::launch::{
    binding_room, chunks, flat_pieces, fused_shape, launch_shape, row_pieces, Chunk,
};
use super::pool::Pool;
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Batch, Dtype, Layout, Storage, Targets};
use crate::options::{BinaryCrossEntropy, CrossEntropy, InputKind, Reduction};
use crate::output::{Gradient, Metrics, Output, Request};
use crate::plan::{Loss, Plan};
use wgpu::util::DeviceExt;

/// A bound range of a buffer.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> Window<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Window {
            buffer,
            offset: 0,
            size: buffer.size(),
        }
    }
    /// The first `bytes` of the buffer (rounded up to 4, at least 4, at most the buffer): a
    /// pooled or caller's buffer may be larger than the binding limit while its data is not.
    pub fn head(buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Window {
            buffer,
            offset: 0,
            size: bytes.next_multiple_of(4).max(4).min(buffer.size()),
        }
    }
}

/// The out-of-range-target flag of recorded calls (read by `take_target_error`), and the one
/// host-slice calls clear, check and own, so a host call never loses a recorded call's flag.
const RECORDED_CALL_ERROR: &str = "xent target error";
const HOST_CALL_ERROR: &str = "xent host-call target error";

/// Largest piece read back at once.
const STAGING_BYTES: u64 = 64 << 20;

/// The loss a recorded call computes.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// Softmax cross-entropy.
    Softmax(CrossEntropy),
    /// Binary cross-entropy.
    Binary(BinaryCrossEntropy),
}

/// Which of the row chunks a window covers, and the element offset inside it.
pub(super) fn window<'a>(
    buffer: &'a wgpu::Buffer,
    first: u64,
    count: u64,
    element: u64,
    alignment: u64,
    round: u64,
) -> (Window<'a>, u32) {
    let start = first * element;
    let aligned = start - start % alignment;
    let end = ((start + count * element).next_multiple_of(round))
        .min(buffer.size())
        .max(aligned + 4);
    (
        Window {
            buffer,
            offset: aligned,
            size: end - aligned,
        },
        ((start - aligned) / element) as u32,
    )
}

/// Workgroups for `invocations` as a 2D grid (x ≤ 65 535).
pub(super) fn grid(invocations: u64) -> (u32, u32) {
    let groups = invocations.div_ceil(WORKGROUP_SIZE as u64).max(1);
    let x = groups.min(65_535);
    (x as u32, groups.div_ceil(x) as u32)
}

pub(super) fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

impl Gpu {
    /// Checks a device batch's buffers against its shape.
    fn check_device(&self, batch: &DeviceBatch, out: &DeviceOutputs, job: &Job) -> Result<()> {
        let (rows, classes) = (batch.rows, batch.classes);
        if classes == 0 {
            return Err(Error::NoClasses);
        }
        let elements = rows.checked_mul(classes).ok_or_else(|| Error::Overflow {
            shape: format!("rows {rows} × classes {classes}"),
        })? as u64;
        let shape = || format!("rows {rows} × classes {classes}");
        let need = |what: &'static str, buffer: &wgpu::Buffer, bytes: u64| -> Result<()> {
            if buffer.size() < bytes {
                Err(Error::Shape {
                    what,
                    expected: bytes as usize,
                    actual: buffer.size() as usize,
                    shape: shape(),
                })
            } else {
                Ok(())
            }
        };
        need(
            "logits buffer (bytes, padded to 4)",
            batch.logits,
            (elements * batch.dtype.size() as u64).next_multiple_of(4),
        )?;
        match batch.targets {
            DeviceTargets::I32(t) => need("targets buffer (bytes)", t, rows as u64 * 4)?,
            DeviceTargets::I64(t) => need("targets buffer (bytes)", t, rows as u64 * 8)?,
            DeviceTargets::Dense(t) => need("targets buffer (bytes)", t, elements * 4)?,
        }
        if let Some(w) = batch.class_weights {
            need("class_weights buffer (bytes)", w, classes as u64 * 4)?;
        }
        if let Some(w) = batch.pos_weight {
            need("pos_weight buffer (bytes)", w, classes as u64 * 4)?;
        }
        if let Some(w) = batch.sample_weights {
            need("sample_weights buffer (bytes)", w, rows as u64 * 4)?;
        }
        if let DeviceGradient::Into(g) = out.gradient {
            need("gradient buffer (bytes)", g, elements * 4)?;
        }
        need("loss buffer (bytes)", out.loss, 4)?;
        if let Some(flag) = out.target_error {
            need("target error buffer (bytes)", flag, 4)?;
        }
        let (per_row, row_what) = match job {
            Job::Softmax(_) => (rows as u64 * ROW_BYTES, "rows buffer (bytes)"),
            Job::Binary(_) => (elements * 4, "element losses buffer (bytes)"),
        };
        if let Some(r) = out.rows {
            need(row_what, r, per_row)?;
        }
        if let Some(u) = out.upstream {
            let n = if matches!(job, Job::Binary(_)) {
                elements
            } else {
                rows as u64
            };
            need("upstream buffer (bytes)", u, n * 4)?;
        }
        let reduction = match job {
            Job::Softmax(o) => {
                o.validate()?;
                o.reduction
            }
            Job::Binary(o) => {
                o.validate()?;
                o.reduction
            }
        };
        if matches!(job, Job::Binary(_)) != matches!(batch.targets, DeviceTargets::Dense(_))
            && matches!(job, Job::Binary(_))
        {
            return Err(Error::Unsupported(
                "binary cross-entropy needs dense f32 targets".into(),
            ));
        }
        if out.upstream.is_some() && reduction != Reduction::None {
            return Err(Error::Unsupported(
                "a per-row upstream buffer goes with Reduction::None; use upstream_scalar".into(),
            ));
        }
        if let Layout::ClassDim1 { spatial } = batch.layout {
            if spatial == 0 || rows % spatial != 0 {
                return Err(Error::Shape {
                    what: "rows (a multiple of spatial)",
                    expected: spatial,
                    actual: rows,
                    shape: shape(),
                });
            }
        }
        Ok(())
    }

    /// Records one call into `encoder`, using the pool's scratch buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        pool: &mut Pool,
        encoder: &mut wgpu::CommandEncoder,
        job: Job,
        batch: &DeviceBatch,
        out: &DeviceOutputs,
        want_entropy: bool,
        error_role: &'static str,
    ) -> Result<()> {
        self.check_device(batch, out, &job)?;
        let (rows, classes, layout) = (batch.rows, batch.classes, batch.layout);
        let device = &self.device;
        let elem = batch.dtype.size() as u64;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        let f32_windows = dense
            || matches!(out.gradient, DeviceGradient::Into(_))
            || matches!(job, Job::Binary(_));
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
        if long_rows && (layout != Layout::Rows || matches!(job, Job::Binary(_))) {
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
            Job::Softmax(_) => (rows as u64, true),
            Job::Binary(_) => ((rows as u64 * classes as u64).div_ceil(4), false),
        };
        let per_row_limit = |what: &'static str, bytes: u64| -> Result<()> {
            if bytes > self.max_binding {
                Err(Error::Unsupported(format!(
                    "{what} for {rows} rows needs {bytes} bytes, over the binding limit {}",
                    self.max_binding
                )))
            } else {
                Ok(())
            }
        };
        per_row_limit(
            "per-row partials",
            rows as u64 * shape.splits as u64 * PARTIAL_BYTES,
        )?;
        per_row_limit("per-row sums", reduce_items * 16)?;
        per_row_limit("sample weights", rows as u64 * 4)?;
        let partials = pool.get(
            device,
            "xent partials",
            rows as u64 * shape.splits as u64 * PARTIAL_BYTES,
            storage_usage(),
        );
        let coefs = pool.get(
            device,
            "xent row coefficients",
            rows as u64 * COEF_BYTES,
            storage_usage(),
        );
        let row_sums = pool.get(device, "xent row sums", reduce_items * 16, storage_usage());
        let ping = pool.get(
            device,
            "xent reduce ping",
            reduce_items.div_ceil(4 * WORKGROUP_SIZE as u64) * 16,
            storage_usage(),
        );
        let pong = pool.get(
            device,
            "xent reduce pong",
            reduce_items.div_ceil(16 * WORKGROUP_SIZE as u64) * 16,
            storage_usage(),
        );
        let totals = pool.get(device, "xent totals", 16, storage_usage());
        let target_logits = pool.get(
            device,
            "xent target logits",
            rows as u64 * 4,
            storage_usage(),
        );
        let error = match out.target_error {
            Some(flag) => flag.clone(),
            None => pool.get(device, error_role, 16, storage_usage()),
        };
        let dummy_read = pool.get(device, "xent unused input", 16, storage_usage());
        let dummy_write = pool.get(device, "xent unused output", 16, storage_usage());
        let class_params = (!is_softmax).then(|| {
            pool.get(
                device,
                "xent bce class params",
                classes as u64 * 8,
                storage_usage(),
            )
        });
        let row_out = match out.rows {
            Some(r) if is_softmax => r.clone(),
            _ => pool.get(
                device,
                "xent rows out",
                rows as u64 * ROW_BYTES,
                storage_usage(),
            ),
        };

        // Parameters: one block per chunk, then one per reduction pass, at the uniform stride.
        let mut base = Params {
            classes: classes as u32,
            spatial,
            splits: shape.splits,
            span: shape.span,
            invocations_per_row: shape.invocations_per_row,
            upstream: out.upstream_scalar,
            ..Params::default()
        };
        let mut flags = 0;
        if batch.class_weights.is_some() {
            flags |= FLAG_WEIGHTS;
        }
        if dense {
            flags |= FLAG_DENSE;
        }
        if out.upstream.is_some() {
            flags |= FLAG_UPSTREAM;
        }
        if batch.sample_weights.is_some() {
            flags |= FLAG_SAMPLE_WEIGHTS;
        }
        let reduction = match job {
            Job::Softmax(o) => {
                base.scale = o.logit_scale;
                base.cap = o.softcap.unwrap_or(0.0);
                base.prob_eps = match o.input {
                    InputKind::Logits => 0.0,
                    InputKind::Probabilities { eps } => eps,
                };
                base.smoothing = o.label_smoothing;
                base.uniform = o.label_smoothing / classes as f32;
                base.z_loss = o.z_loss;
                base.ignore_lo = o.ignore_index as u64 as u32;
                base.ignore_hi = ((o.ignore_index as u64) >> 32) as u32;
                if o.label_smoothing > 0.0 {
                    flags |= FLAG_WANT_WZ;
                }
                if want_entropy {
                    flags |= FLAG_ENTROPY;
                }
                if !dense {
                    flags |= FLAG_CHECK_TARGETS | FLAG_TARGET_LOGIT;
                }
                base.focal_gamma = o.focal_gamma;
                if o.is_focal() && (dense || o.label_smoothing > 0.0) {
                    flags |= FLAG_FOCAL_ALL;
                }
                o.reduction
            }
            Job::Binary(o) => {
                if batch.pos_weight.is_some() {
                    flags |= FLAG_POS_WEIGHT;
                }
                if out.rows.is_some() {
                    flags |= FLAG_KEEP_LOSSES;
                }
                if !matches!(out.gradient, DeviceGradient::None) {
                    flags |= FLAG_GRADIENT;
                }
                if let Some(alpha) = o.focal_alpha {
                    flags |= FLAG_ALPHA;
                    base.focal_alpha = alpha;
                }
                base.smoothing = o.label_smoothing;
                base.focal_gamma = o.focal_gamma;
                base.denominator = (rows as f64 * classes as f64) as f32;
                o.reduction
            }
        };
        base.flags = flags;
        base.reduction = ReductionCode::from(reduction) as u32;
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
                    &[
                        (PARAMS, params_window(i)),
                        (REDUCE_IN, Window::whole(source)),
                        (REDUCE_OUT, Window::whole(target)),
                        (LOSS, Window::whole(out.loss)),
                    ],
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
                &[
                    (PARAMS, params_window(i)),
                    (LOGITS, logits),
                    (TARGETS, targets),
                    (CLASS_WEIGHTS, weights),
                    (PARTIALS, Window::whole(&partials)),
                    (TARGET_ERROR, Window::whole(&error)),
                    (TARGET_LOGITS, Window::whole(&target_logits)),
                ],
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
                &[
                    (PARAMS, params_window(targets_params)),
                    (TARGETS, index_targets),
                    (CLASS_WEIGHTS, weights),
                    (ROW_SUMS, Window::whole(&row_sums)),
                    (TARGET_ERROR, Window::whole(&error)),
                    (SAMPLE_WEIGHTS, sample_weights),
                ],
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
                let mut windows = vec![
                    (PARAMS, params_window(i)),
                    (LOGITS, logits_scalar),
                    (TARGETS, targets_window),
                    (CLASS_WEIGHTS, weights),
                    (ROWS, Window::whole(&row_out)),
                    (ROW_SUMS, Window::whole(&row_sums)),
                    (SCALE_SOURCE, scale_source),
                    (SAMPLE_WEIGHTS, sample_weights),
                ];
                if let DeviceGradient::Into(g) = out.gradient {
                    windows.push((
                        GRADIENT,
                        window(g, first, count, 4, self.storage_alignment, 4).0,
                    ));
                }
                self.launch(
                    &mut pass,
                    &pipeline,
                    &windows,
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
                    &[
                        (PARAMS, params_window(i)),
                        (TARGETS, index_targets),
                        (CLASS_WEIGHTS, weights),
                        (PARTIALS, Window::whole(&partials)),
                        (ROWS, Window::whole(&row_out)),
                        (ROW_SUMS, Window::whole(&row_sums)),
                        (COEFFICIENTS, Window::whole(&coefs)),
                        (SAMPLE_WEIGHTS, sample_weights),
                        (TARGET_LOGITS, Window::whole(&target_logits)),
                    ],
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
                        &[
                            (PARAMS, params_window(i)),
                            (LOGITS, logits_scalar),
                            (TARGETS, targets_window),
                            (CLASS_WEIGHTS, weights),
                            (ROWS, Window::whole(&row_out)),
                            (ROW_SUMS, Window::whole(&row_sums)),
                            (COEFFICIENTS, Window::whole(&coefs)),
                        ],
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
                        &[
                            (PARAMS, params_window(i)),
                            (CLASS_WEIGHTS, weights),
                            (
                                POS_WEIGHT,
                                Window::head(
                                    batch.pos_weight.unwrap_or(&dummy_read),
                                    classes as u64 * 4,
                                ),
                            ),
                            (CLASS_PARAMS, Window::whole(class_params)),
                        ],
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
                    &[
                        (PARAMS, params_window(i)),
                        (LOGITS, logits_window),
                        (GRADIENT, grad_window),
                        (TARGETS, f32_targets),
                        (ROW_SUMS, Window::whole(&row_sums)),
                        (UPSTREAM, upstream),
                        (ELEMENT_LOSSES, losses),
                        (SAMPLE_WEIGHTS, sample_weights),
                        (CLASS_PARAMS, Window::whole(class_params)),
                    ],
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
                    &[
                        (PARAMS, params_window(i)),
                        (LOGITS, logits_window),
                        (GRADIENT, grad_window),
                        (TARGETS, if dense { f32_targets } else { index_targets }),
                        (CLASS_WEIGHTS, weights),
                        (COEFFICIENTS, Window::whole(&coefs)),
                        (SCALE_SOURCE, scale_source),
                    ],
                    (x, y, 1),
                );
            }
        }
        drop(pass);
        Ok(())
    }

    /// Reads back the first `len` bytes of `buffer`.
    pub(super) fn read_back(
        &self,
        pool: &mut Pool,
        buffer: &wgpu::Buffer,
        len: u64,
    ) -> Result<Vec<u8>> {
        Ok(self
            .read_back_all(pool, &[(buffer, len)])?
            .pop()
            .unwrap_or_default())
    }

    /// Reads back the first bytes of several buffers, packed into as few staging copies (one
    /// submit and one map each) as [`STAGING_BYTES`] allows: a host-slice call's flag, loss,
    /// rows and gradient come back in one round trip unless they are large.
    pub(super) fn read_back_all(
        &self,
        pool: &mut Pool,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<u8>> = reads
            .iter()
            .map(|&(_, len)| Vec::with_capacity(len as usize))
            .collect();
        // Pieces (read, source offset, bytes), each at most STAGING_BYTES.
        let mut pieces = Vec::new();
        for (i, &(_, len)) in reads.iter().enumerate() {
            let mut offset = 0;
            while offset < len {
                let piece = (len - offset).min(STAGING_BYTES);
                pieces.push((i, offset, piece));
                offset += piece;
            }
        }
        let mut pieces = pieces.into_iter().peekable();
        while pieces.peek().is_some() {
            // Fill one staging buffer with as many pieces as fit, 4-byte aligned.
            let mut batch = Vec::new();
            let mut used = 0;
            while let Some(&(i, offset, piece)) = pieces.peek() {
                let copy = piece.next_multiple_of(4);
                if !batch.is_empty() && used + copy > STAGING_BYTES {
                    break;
                }
                batch.push((i, offset, piece, used));
                used += copy;
                pieces.next();
            }
            let staging = pool.get(
                &self.device,
                "xent staging",
                used,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            let mut encoder = self.device.create_command_encoder(&Default::default());
            for &(i, offset, piece, at) in &batch {
                let copy = piece.next_multiple_of(4);
                encoder.copy_buffer_to_buffer(reads[i].0, offset, &staging, at, copy);
            }
            self.queue.submit([encoder.finish()]);
            let slice = staging.slice(0..used);
            let (sender, receiver) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = sender.send(r);
            });
            self.wait()?;
            receiver
                .recv()
                .map_err(|e| Error::Device(e.to_string()))?
                .map_err(|e| Error::Device(format!("mapping the staging buffer: {e}")))?;
            {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| Error::Device(e.to_string()))?;
                for &(i, _, piece, at) in &batch {
                    out[i].extend_from_slice(&view[at as usize..(at + piece) as usize]);
                }
            }
            staging.unmap();
        }
        Ok(out)
    }

    /// Uploads `bytes` (padded to 4) into the pool buffer `role`.
    pub(super) fn upload(&self, pool: &mut Pool, role: &'static str, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = pool.get(&self.device, role, bytes.len() as u64 + 16, storage_usage());
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buffer, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&buffer, whole as u64, &tail);
        }
        buffer
    }

    /// The host-slice path: upload, record, run, read back what `request` asks for.
    pub(crate) fn run(
        &self,
        plan: &Plan,
        batch: Batch<'_>,
        request: Request<'_>,
    ) -> Result<Output> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        let (rows, classes) = (plan.rows, plan.classes);
        let elements = rows * classes;
        let Batch {
            logits,
            targets,
            class_weights,
            pos_weight,
            sample_weights,
        } = batch;
        let dtype = logits.dtype();
        let in_place = matches!(request.gradient, Gradient::InPlace);
        self.scoped(|| {
            let logit_bytes: &[u8] = match &logits.storage {
                Storage::F32(d) => bytemuck::cast_slice(d),
                Storage::F16(d) => bytemuck::cast_slice(d),
                Storage::Bf16(d) => bytemuck::cast_slice(d),
                Storage::F32Mut(d) => bytemuck::cast_slice(d),
                Storage::F16Mut(d) => bytemuck::cast_slice(d),
                Storage::Bf16Mut(d) => bytemuck::cast_slice(d),
            };
            let logits_buffer = self.upload(pool, "xent upload logits", logit_bytes);
            let target_bytes: &[u8] = match targets {
                Targets::I32(t) => bytemuck::cast_slice(t),
                Targets::I64(t) => bytemuck::cast_slice(t),
                Targets::Dense(t) => bytemuck::cast_slice(t),
            };
            let targets_buffer = self.upload(pool, "xent upload targets", target_bytes);
            let weights_buffer = class_weights
                .map(|w| self.upload(pool, "xent upload weights", bytemuck::cast_slice(w)));
            let pos_weight_buffer = pos_weight
                .map(|w| self.upload(pool, "xent upload pos_weight", bytemuck::cast_slice(w)));
            let sample_weights_buffer = sample_weights
                .map(|w| self.upload(pool, "xent upload sample weights", bytemuck::cast_slice(w)));
            let per_item_upstream = plan.reduction == Reduction::None;
            let upstream_buffer = request
                .upstream
                .filter(|_| per_item_upstream)
                .map(|u| self.upload(pool, "xent upload upstream", bytemuck::cast_slice(u)));
            let loss_buffer = pool.get(&self.device, "xent loss", 16, storage_usage());
            let is_softmax = matches!(plan.loss, Loss::Softmax(_));
            let want_rows = request.row_losses
                || request.lse
                || request.metrics
                || plan.reduction == Reduction::None;
            let rows_buffer = want_rows.then(|| {
                let bytes = if is_softmax {
                    rows as u64 * ROW_BYTES
                } else {
                    elements as u64 * 4
                };
                pool.get(&self.device, "xent rows out", bytes, storage_usage())
            });
            let grad_buffer = matches!(request.gradient, Gradient::Into(_)).then(|| {
                pool.get(
                    &self.device,
                    "xent gradient",
                    elements as u64 * 4,
                    storage_usage(),
                )
            });
            let device_batch = DeviceBatch {
                logits: &logits_buffer,
                dtype,
                rows,
                classes,
                layout: plan.layout,
                targets: match targets {
                    Targets::I32(_) => DeviceTargets::I32(&targets_buffer),
                    Targets::I64(_) => DeviceTargets::I64(&targets_buffer),
                    Targets::Dense(_) => DeviceTargets::Dense(&targets_buffer),
                },
                class_weights: weights_buffer.as_ref(),
                pos_weight: pos_weight_buffer.as_ref(),
                sample_weights: sample_weights_buffer.as_ref(),
            };
            let outputs = DeviceOutputs {
                loss: &loss_buffer,
                rows: rows_buffer.as_ref(),
                gradient: match (&grad_buffer, in_place) {
                    (Some(g), _) => DeviceGradient::Into(g),
                    (None, true) => DeviceGradient::InPlace,
                    (None, false) => DeviceGradient::None,
                },
                upstream: upstream_buffer.as_ref(),
                upstream_scalar: plan.upstream_scalar,
                target_error: None,
            };
            let job = match plan.loss {
                Loss::Softmax(o) => Job::Softmax(o),
                Loss::Binary(o) => Job::Binary(o),
            };
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("xent call"),
                });
            let error = pool.get(&self.device, HOST_CALL_ERROR, 16, storage_usage());
            encoder.clear_buffer(&error, 0, None);
            self.record(
                pool,
                &mut encoder,
                job,
                &device_batch,
                &outputs,
                request.metrics,
                HOST_CALL_ERROR,
            )?;
            self.queue.submit([encoder.finish()]);

            // One round trip: the error flag, the loss, the rows and the gradient.
            let mut reads = vec![(&error, 4), (&loss_buffer, 4)];
            if let Some(buffer) = &rows_buffer {
                let per_row = if is_softmax {
                    rows as u64 * ROW_BYTES
                } else {
                    elements as u64 * 4
                };
                reads.push((buffer, per_row));
            }
            match request.gradient {
                Gradient::Into(_) => reads.push((
                    grad_buffer.as_ref().expect("allocated above"),
                    elements as u64 * 4,
                )),
                Gradient::InPlace => reads.push((&logits_buffer, (elements * dtype.size()) as u64)),
                Gradient::None => {}
            }
            let mut read = self.read_back_all(pool, &reads)?.into_iter();
            let mut next = || read.next().unwrap_or_default();
            let word = |bytes: Vec<u8>| {
                bytes
                    .get(..4)
                    .map_or([0; 4], |b| b.try_into().unwrap_or_default())
            };
            let flag = u32::from_le_bytes(word(next()));
            if flag != 0 {
                let row = (u32::MAX - flag) as usize;
                let options = plan.softmax();
                return Err(Error::TargetOutOfRange {
                    row,
                    value: targets.index(row).unwrap_or(-1),
                    classes,
                    ignore_index: options.ignore_index,
                });
            }
            let mut output = Output::default();
            let loss = f32::from_le_bytes(word(next()));
            if plan.reduction != Reduction::None {
                output.loss = Some(loss);
            }
            if rows_buffer.is_some() {
                let bytes = next();
                if is_softmax {
                    let records: Vec<GpuRow> = bytemuck::pod_collect_to_vec(&bytes);
                    if request.row_losses || plan.reduction == Reduction::None {
                        output.row_losses = Some(records.iter().map(|r| r.loss).collect());
                    }
                    if request.lse {
                        output.lse = Some(records.iter().map(|r| r.lse).collect());
                    }
                    if request.metrics {
                        output.metrics = Some(Metrics {
                            argmax: records.iter().map(|r| r.argmax).collect(),
                            correct: records.iter().map(|r| r.flags & 2 != 0).collect(),
                            target_prob: records.iter().map(|r| r.target_prob).collect(),
                            entropy: records.iter().map(|r| r.entropy).collect(),
                            confidence: records.iter().map(|r| r.confidence).collect(),
                            valid: records.iter().map(|r| r.flags & 1 != 0).collect(),
                        });
                    }
                } else {
                    output.row_losses = Some(bytemuck::pod_collect_to_vec(&bytes));
                }
            }
            match request.gradient {
                Gradient::Into(g) => {
                    g.copy_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(&next()));
                }
                Gradient::InPlace => {
                    let bytes = next();
                    let mut logits = logits;
                    match &mut logits.storage {
                        Storage::F32Mut(d) => {
                            bytemuck::cast_slice_mut::<f32, u8>(d).copy_from_slice(&bytes)
                        }
                        Storage::F16Mut(d) => {
                            bytemuck::cast_slice_mut::<half::f16, u8>(d).copy_from_slice(&bytes)
                        }
                        Storage::Bf16Mut(d) => {
                            bytemuck::cast_slice_mut::<half::bf16, u8>(d).copy_from_slice(&bytes)
                        }
                        _ => {
                            return Err(Error::Unsupported(
                                "in-place gradient on read-only logits".into(),
                            ))
                        }
                    }
                }
                Gradient::None => {}
            }
            Ok(output)
        })
    }

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
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        self.scoped(|| {
            self.record(
                &mut pool,
                encoder,
                Job::Softmax(*options),
                batch,
                outputs,
                outputs.rows.is_some(),
                RECORDED_CALL_ERROR,
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
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        self.scoped(|| {
            self.record(
                &mut pool,
                encoder,
                Job::Binary(*options),
                batch,
                outputs,
                false,
                RECORDED_CALL_ERROR,
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
        records: &wgpu::Buffer,
        rows: usize,
        counts: &wgpu::Buffer,
    ) -> Result<()> {
        let need = |what: &'static str, buffer: &wgpu::Buffer, bytes: u64| {
            if buffer.size() < bytes {
                Err(Error::Shape {
                    what,
                    expected: bytes as usize,
                    actual: buffer.size() as usize,
                    shape: format!("rows {rows}"),
                })
            } else {
                Ok(())
            }
        };
        need(
            "row records buffer (bytes)",
            records,
            rows as u64 * ROW_BYTES,
        )?;
        need("counts buffer (bytes)", counts, 8)?;
        let rows_u32 = u32::try_from(rows).map_err(|_| Error::Overflow {
            shape: format!("rows {rows}"),
        })?;
        self.scoped(|| {
            encoder.clear_buffer(counts, 0, Some(8));
            if rows == 0 {
                return Ok(());
            }
            let pipeline = self.pipeline(Variant::plain(Kernel::CountRows));
            let params = Params {
                elems: rows_u32,
                ..Params::default()
            };
            self.dispatch(
                encoder,
                &pipeline,
                &params,
                &[
                    (REDUCE_IN, Window::head(records, rows as u64 * ROW_BYTES)),
                    (REDUCE_OUT, Window::head(counts, 8)),
                ],
                {
                    let (x, y) = grid(rows as u64);
                    (x, y, 1)
                },
            );
            Ok(())
        })
    }

    /// The lowest row whose target was out of range in any recorded call since the last
    /// check (reads 4 bytes back, then clears the flag).
    pub fn take_target_error(&self) -> Result<Option<usize>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
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
