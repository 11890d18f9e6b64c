//! A linear head on the GPU (host slices in, `Output` and gradients back).
//!
//! Forward: the computed rows' `h` and the head's `W` are uploaded in their f16 / bf16 dtype
//! when they share one (and D is even), else as f32, `b` as f32; `linear_partials.wgsl` folds
//! each tile of `h·Wᵀ + b` into the partials of each (row, split); the softmax rows pass
//! finishes every row (loss, LSE, metrics, its sums and gradient coefficients). The reduced
//! loss is summed from the rows' sums on the host in f64, in row order, with the plan's
//! denominators. Inputs larger than one storage binding are cut into chunks of rows and pieces
//! of `W` ([`Pieces`]).
//!
//! Backward (when a gradient is asked for), vocabulary chunk by chunk in order ([`Backward`]):
//! `linear_gradient.wgsl` recomputes the chunk's logits and writes `G`,
//! `linear_weight_gradient.wgsl` the chunk's rows of `dW = Gᵀ·h` and its `db`,
//! `linear_hidden_gradient.wgsl` adds `G·W[chunk]` into `dh` (the first chunk writes). Every
//! value has one owner, so two runs give the same bits. The results are read back and written
//! or added into the caller's buffers.
//!
//! Inside each chunk the rows go in groups that fit a binding; `dW` and `db` add over the
//! groups in row order. Refused with [`Error::Unsupported`] so far: focal loss with label
//! smoothing (its second pass over the logits).

use super::abi::{
    Params, ReductionCode, COEF_BYTES, FLAG_ADD, FLAG_BIAS, FLAG_ENTROPY, FLAG_SAMPLE_WEIGHTS,
    FLAG_TARGET_LOGIT, FLAG_UPSTREAM, FLAG_WANT_WZ, FLAG_WEIGHTS, PARTIAL_BYTES, ROW_BYTES,
    ROW_SUM_BYTES,
};
use super::device::GpuRow;
use super::encode::{grid, storage_usage, Window};
use super::launchers::{
    LinearGradient, LinearHiddenGradient, LinearPartials, LinearWeightGradient, Rows,
};
use super::pipelines::{Kernel, LogitLoad, TargetLoad, Variant};
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Dtype, Matrix};
use crate::linear::{LinearBatch, LinearRequest};
use crate::math::reduce::loss;
use crate::options::Reduction;
use crate::output::Output;
use crate::plan::linear::LinearPlan;
use wgpu::util::DeviceExt;

/// Rows of one workgroup's tile (`BM` in the shader).
const TILE_ROWS: usize = 64;
/// Workgroups a forward aims for (row tiles × splits): enough to fill a large GPU.
const WORKGROUPS: usize = 1024;

impl Gpu {
    /// The forward of a checked linear call (module docs).
    pub(crate) fn linear(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        request: &mut LinearRequest<'_>,
    ) -> Result<Output> {
        let options = plan.options;
        if crate::plan::needs_focal_pass(&options, false) {
            return Err(Error::Unsupported(
                "focal loss with label smoothing on the GPU's linear head (a second pass over \
                 the logits) is not written yet; it runs on Backend::Cpu"
                    .into(),
            ));
        }
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        // h and W in their own dtype when they share an f16 or bf16 one and D is even (so
        // every window of whole rows is whole words), else both widened to f32.
        let dtype = batch.hidden.dtype();
        let load = match dtype {
            Dtype::F16 | Dtype::Bf16 if batch.weight.dtype() == dtype && d % 2 == 0 => {
                LogitLoad::scalar(dtype)
            }
            _ => LogitLoad::F32,
        };
        let element = if load == LogitLoad::F32 { 4 } else { 2 };
        let pieces = Pieces::new((n, d, v), element, self.max_binding)?;
        let backward = match plan.gradient {
            true => Some(Backward::new((n, d, v), element, self.max_binding)?),
            false => None,
        };

        // The computed rows' inputs, gathered; b as f32.
        let rows = &plan.computed;
        let (hidden, weight): (Vec<u8>, Vec<u8>) = if load == LogitLoad::F32 {
            let mut buf = Vec::new();
            let mut h = Vec::with_capacity(n * d);
            for &r in rows {
                h.extend_from_slice(batch.hidden.rows_f32(r..r + 1, &mut buf));
            }
            let w = f32_words(&batch.weight, v);
            (
                bytemuck::cast_slice(&h).to_vec(),
                bytemuck::cast_slice(&w).to_vec(),
            )
        } else {
            let (bytes, row) = (batch.hidden.bytes(), d * element as usize);
            let h = rows
                .iter()
                .flat_map(|&r| &bytes[r * row..(r + 1) * row])
                .copied()
                .collect();
            (h, batch.weight.bytes().to_vec())
        };
        let bias = batch.bias.as_ref().map(|b| f32_words(b, 1));
        let targets: Vec<i64> = rows
            .iter()
            .map(|&r| batch.targets.index(r).unwrap_or_default())
            .collect();
        let samples: Option<Vec<f32>> = batch
            .sample_weights
            .map(|s| rows.iter().map(|&r| s[r]).collect());

        let mut flags = FLAG_TARGET_LOGIT;
        for (on, flag) in [
            (batch.class_weights.is_some(), FLAG_WEIGHTS),
            (samples.is_some(), FLAG_SAMPLE_WEIGHTS),
            (options.label_smoothing > 0.0, FLAG_WANT_WZ),
            (request.metrics, FLAG_ENTROPY),
            (bias.is_some(), FLAG_BIAS),
        ] {
            if on {
                flags |= flag;
            }
        }
        let base = Params {
            classes: v as u32,
            splits: pieces.splits as u32,
            span: pieces.span as u32,
            invocations_per_row: 1,
            flags,
            reduction: ReductionCode::from(options.reduction) as u32,
            scale: options.logit_scale,
            cap: options.softcap.unwrap_or(0.0),
            smoothing: options.label_smoothing,
            z_loss: options.z_loss,
            uniform: options.label_smoothing / v as f32,
            ignore_lo: options.ignore_index as u64 as u32,
            ignore_hi: ((options.ignore_index as u64) >> 32) as u32,
            // The scalar upstream of sum and mean (the backward's scales).
            upstream: match (options.reduction, request.upstream) {
                (Reduction::Sum | Reduction::Mean, Some(u)) => u[0],
                _ => 1.0,
            },
            focal_gamma: options.focal_gamma,
            hidden: d as u32,
            ..Params::default()
        };

        self.scoped(|| {
            let device = &self.device;
            let upload = |label: &str, bytes: &[u8]| {
                // A binding needs at least one word.
                let padded;
                let contents = if bytes.len() < 4 {
                    padded = [0u8; 4];
                    &padded[..]
                } else {
                    bytes
                };
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: storage_usage(),
                })
            };
            let scratch = |label: &str, bytes: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes.max(16),
                    usage: storage_usage(),
                    mapped_at_creation: false,
                })
            };
            let stand_in = upload("xent linear stand-in", &[0u8; 16]);
            let hidden_buffer = upload("xent linear h", &hidden);
            let weight_buffer = upload("xent linear W", &weight);
            let bias_buffer = bias
                .as_ref()
                .map(|b| upload("xent linear b", bytemuck::cast_slice(b)));
            let targets_buffer = upload("xent linear targets", bytemuck::cast_slice(&targets));
            let class_weights = batch
                .class_weights
                .map(|w| upload("xent linear class weights", bytemuck::cast_slice(w)));
            let sample_buffer = samples
                .as_ref()
                .map(|s| upload("xent linear sample weights", bytemuck::cast_slice(s)));
            let splits = pieces.splits as u64;
            let partials = scratch("xent linear partials", n as u64 * splits * PARTIAL_BYTES);
            let target_logits = scratch("xent linear target logits", n as u64 * 4);
            let rows_out = scratch("xent linear rows", n as u64 * ROW_BYTES);
            let row_sums = scratch("xent linear row sums", n as u64 * ROW_SUM_BYTES);
            let coefficients = scratch("xent linear coefficients", n as u64 * COEF_BYTES);
            fn or<'b>(b: &'b Option<wgpu::Buffer>, stand_in: &'b wgpu::Buffer) -> Window<'b> {
                Window::whole(b.as_ref().unwrap_or(stand_in))
            }
            // Rows `r0 .. r0 + rows` of a per-row buffer of `bytes` per row.
            let rows_of = |buffer, (r0, rows): (usize, usize), bytes: u64| Window {
                buffer,
                offset: r0 as u64 * bytes,
                size: rows as u64 * bytes,
            };

            // One uniform block per dispatch.
            let mut blocks = Vec::new();
            for &(_, rows) in &pieces.row_chunks {
                for &(split0, _) in &pieces.split_pieces {
                    blocks.push(Params {
                        rows: rows as u32,
                        split0: split0 as u32,
                        col0: (split0 * pieces.span) as u32,
                        ..base
                    });
                }
                blocks.push(Params {
                    rows: rows as u32,
                    ..base
                });
            }
            // The backward's per-row upstream (none) or the mean's totals (ce, z, D, Σs).
            let per_row_upstream =
                options.reduction == Reduction::None && request.upstream.is_some();
            if let Some(back) = &backward {
                let upstream = if per_row_upstream { FLAG_UPSTREAM } else { 0 };
                let add = |later: bool| if later { FLAG_ADD } else { 0 };
                for (chunk, &(c0, width)) in back.chunks.iter().enumerate() {
                    for (group, &(_, rows)) in back.groups.iter().enumerate() {
                        let block = Params {
                            rows: rows as u32,
                            col0: c0 as u32,
                            span: width as u32,
                            flags: base.flags | upstream,
                            ..base
                        };
                        blocks.push(block);
                        // dW and db add over row groups, dh over vocabulary chunks.
                        blocks.push(Params {
                            flags: block.flags | add(group > 0),
                            ..block
                        });
                        blocks.push(Params {
                            flags: block.flags | add(chunk > 0),
                            ..block
                        });
                    }
                }
            }
            let uniforms: Vec<wgpu::Buffer> = blocks
                .iter()
                .map(|b| {
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("xent linear params"),
                        contents: bytemuck::bytes_of(b),
                        usage: wgpu::BufferUsages::UNIFORM,
                    })
                })
                .collect();
            let mut uniforms = uniforms.iter();

            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("xent linear"),
                    timestamp_writes: None,
                });
                let forward_variant = Variant::new(Kernel::LinearPartials, load, TargetLoad::I64);
                let rows_variant =
                    Variant::new(Kernel::SoftmaxRows, LogitLoad::F32, TargetLoad::I64);
                for &chunk in &pieces.row_chunks {
                    let rows = chunk.1;
                    let targets = rows_of(&targets_buffer, chunk, 8);
                    let partials = rows_of(&partials, chunk, splits * PARTIAL_BYTES);
                    let target_logits = rows_of(&target_logits, chunk, 4);
                    for &(split0, split_count) in &pieces.split_pieces {
                        let c0 = split0 * pieces.span;
                        let columns = (split_count * pieces.span).min(v - c0);
                        let forward = LinearPartials {
                            params: Window::whole(uniforms.next().expect("a block per dispatch")),
                            targets,
                            class_weights: or(&class_weights, &stand_in),
                            partials,
                            target_logits,
                            hidden: rows_of(&hidden_buffer, chunk, d as u64 * element),
                            head_weight: rows_of(&weight_buffer, (c0, columns), d as u64 * element),
                            head_bias: or(&bias_buffer, &stand_in),
                        };
                        let groups = (rows.div_ceil(TILE_ROWS) as u32, split_count as u32, 1);
                        let pipeline = self.pipeline(forward_variant);
                        self.launch(&mut pass, &pipeline, &forward.entries(), groups);
                    }
                    let finish = Rows {
                        params: Window::whole(uniforms.next().expect("a block per dispatch")),
                        targets,
                        class_weights: or(&class_weights, &stand_in),
                        partials,
                        rows: rows_of(&rows_out, chunk, ROW_BYTES),
                        row_sums: rows_of(&row_sums, chunk, ROW_SUM_BYTES),
                        coefficients: rows_of(&coefficients, chunk, COEF_BYTES),
                        sample_weights: match &sample_buffer {
                            Some(s) => rows_of(s, chunk, 4),
                            None => Window::whole(&stand_in),
                        },
                        target_logits,
                    };
                    let (x, y) = grid(rows as u64);
                    let pipeline = self.pipeline(rows_variant);
                    self.launch(&mut pass, &pipeline, &finish.entries(), (x, y, 1));
                }
            }
            // The backward's buffers: G of one chunk, dh of the computed rows, dW and db.
            let scale_source = match (options.reduction, request.upstream) {
                (Reduction::None, Some(u)) => {
                    let gathered: Vec<f32> = rows.iter().map(|&r| u[r]).collect();
                    upload("xent linear upstream", bytemuck::cast_slice(&gathered))
                }
                (Reduction::Mean, _) => {
                    let (weight_sum, count) = plan.denominators;
                    let totals = [0.0, 0.0, weight_sum as f32, count as f32];
                    upload("xent linear totals", bytemuck::cast_slice(&totals))
                }
                _ => upload("xent linear stand-in", &[0u8; 16]),
            };
            let grads = backward.as_ref().map(|back| {
                (
                    scratch(
                        "xent linear G",
                        back.group_rows as u64 * back.width as u64 * 4,
                    ),
                    scratch("xent linear dh", n as u64 * d as u64 * 4),
                    scratch("xent linear dW", v as u64 * d as u64 * 4),
                    scratch("xent linear db", v as u64 * 4),
                )
            });
            if let (Some(back), Some((g, dh, dw, db))) = (&backward, &grads) {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("xent linear backward"),
                    timestamp_writes: None,
                });
                let variant = |kernel| Variant::new(kernel, load, TargetLoad::I64);
                let hidden_tiles = (d.div_ceil(TILE_ROWS) as u32).max(1);
                for &(c0, width) in &back.chunks {
                    let head_weight = rows_of(&weight_buffer, (c0, width), d as u64 * element);
                    let column_tiles = width.div_ceil(TILE_ROWS) as u32;
                    for &group in &back.groups {
                        let rows = group.1;
                        let row_tiles = rows.div_ceil(TILE_ROWS) as u32;
                        let g_window = Window::head(g, rows as u64 * width as u64 * 4);
                        let hidden = rows_of(&hidden_buffer, group, d as u64 * element);
                        let recompute = LinearGradient {
                            params: Window::whole(uniforms.next().expect("a block per dispatch")),
                            gradient: g_window,
                            class_weights: or(&class_weights, &stand_in),
                            coefficients: rows_of(&coefficients, group, COEF_BYTES),
                            scale_source: match per_row_upstream {
                                true => rows_of(&scale_source, group, 4),
                                false => Window::whole(&scale_source),
                            },
                            hidden,
                            head_weight,
                            head_bias: or(&bias_buffer, &stand_in),
                        };
                        let pipeline = self.pipeline(variant(Kernel::LinearGradient));
                        let groups = (row_tiles, column_tiles, 1);
                        self.launch(&mut pass, &pipeline, &recompute.entries(), groups);
                        let weight = LinearWeightGradient {
                            params: Window::whole(uniforms.next().expect("a block per dispatch")),
                            gradient: g_window,
                            hidden,
                            weight_gradient: rows_of(dw, (c0, width), d as u64 * 4),
                            bias_gradient: rows_of(db, (c0, width), 4),
                        };
                        let pipeline = self.pipeline(variant(Kernel::LinearWeightGradient));
                        let groups = (column_tiles, hidden_tiles, 1);
                        self.launch(&mut pass, &pipeline, &weight.entries(), groups);
                        let add_hidden = LinearHiddenGradient {
                            params: Window::whole(uniforms.next().expect("a block per dispatch")),
                            gradient: g_window,
                            head_weight,
                            hidden_gradient: rows_of(dh, group, d as u64 * 4),
                        };
                        let pipeline = self.pipeline(variant(Kernel::LinearHiddenGradient));
                        let groups = (row_tiles, hidden_tiles, 1);
                        self.launch(&mut pass, &pipeline, &add_hidden.entries(), groups);
                    }
                }
            }
            self.queue.submit([encoder.finish()]);
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let mut reads = vec![
                (&rows_out, n as u64 * ROW_BYTES),
                (&row_sums, n as u64 * ROW_SUM_BYTES),
            ];
            if let Some((_, dh, dw, db)) = &grads {
                reads.push((dh, n as u64 * d as u64 * 4));
                reads.push((dw, v as u64 * d as u64 * 4));
                reads.push((db, v as u64 * 4));
            }
            let mut read = self.read_back_all(&mut pool, &reads)?.into_iter();
            let records: Vec<GpuRow> =
                bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
            let sums: Vec<[f32; 4]> =
                bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
            if grads.is_some() {
                let mut next = || -> Vec<f32> {
                    bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default())
                };
                let (dh, dw, db) = (next(), next(), next());
                deliver(plan, request, (&dh, &dw, &db));
            }
            Ok(output(plan, request, &records, &sums))
        })
    }
}

/// How a call is cut to fit the device's storage bindings: chunks of rows (multiples of the
/// tile's 64 rows, so every per-row window starts 256-byte aligned) and pieces of whole
/// splits of `W` (multiples of 64 columns, likewise), with the split width.
struct Pieces {
    /// Columns per split (a multiple of 64).
    span: usize,
    /// Splits of the vocabulary.
    splits: usize,
    /// (first row, rows) of each row chunk.
    row_chunks: Vec<(usize, usize)>,
    /// (first split, splits) of each piece of `W`.
    split_pieces: Vec<(usize, usize)>,
}

impl Pieces {
    /// `element`: bytes per value of h and W as bound.
    fn new((n, d, v): (usize, usize, usize), element: u64, max_binding: u64) -> Result<Pieces> {
        let too_large = |what: &str| {
            Error::Unsupported(format!(
                "the GPU's linear head needs 64 {what} in one storage binding of {max_binding} \
                 bytes; this hidden size or vocabulary does not fit"
            ))
        };
        let fit = |per: u64| (max_binding / per.max(1)) as usize / TILE_ROWS * TILE_ROWS;
        // Columns of W one binding holds, in whole tiles.
        let piece_columns = fit(d as u64 * element);
        if piece_columns == 0 {
            return Err(too_large("rows of the weight"));
        }
        // About WORKGROUPS workgroups in all: wide splits for many rows, narrow for few.
        let row_tiles = n.div_ceil(TILE_ROWS).max(1);
        let wanted = WORKGROUPS
            .div_ceil(row_tiles)
            .clamp(1, v.div_ceil(TILE_ROWS).max(1));
        // Not so many splits that 64 rows of partials outgrow a binding.
        let most_splits = (max_binding / (TILE_ROWS as u64 * PARTIAL_BYTES)) as usize;
        if most_splits == 0 {
            return Err(too_large("rows of partials"));
        }
        let narrowest = v.div_ceil(most_splits).next_multiple_of(TILE_ROWS);
        if narrowest > piece_columns {
            return Err(too_large("rows of the weight and of partials"));
        }
        let span = v
            .div_ceil(wanted)
            .next_multiple_of(TILE_ROWS)
            .clamp(narrowest.max(TILE_ROWS), piece_columns);
        let splits = v.div_ceil(span).max(1);
        let per_piece = (piece_columns / span).max(1);
        let split_pieces = (0..splits)
            .step_by(per_piece)
            .map(|s| (s, per_piece.min(splits - s)))
            .collect();
        // Rows one binding holds of h, of the partials and of the row records.
        let per_row = (d as u64 * element)
            .max(splits as u64 * PARTIAL_BYTES)
            .max(ROW_BYTES);
        let chunk_rows = fit(per_row);
        if chunk_rows == 0 {
            return Err(too_large("rows of hidden states or partials"));
        }
        let row_chunks = (0..n)
            .step_by(chunk_rows)
            .map(|r| (r, chunk_rows.min(n - r)))
            .collect();
        Ok(Pieces {
            span,
            splits,
            row_chunks,
            split_pieces,
        })
    }
}

/// The backward's cut: vocabulary chunks (as wide as a binding holds of `G`, of `W`'s and
/// `dW`'s rows, at most 4096 columns, in multiples of 64) and, inside each, groups of rows (as
/// many as a binding holds of `h`, `dh` and 64 columns of `G`, in multiples of 64).
struct Backward {
    /// Columns of the widest chunk.
    width: usize,
    /// Rows of the largest group.
    group_rows: usize,
    /// (first column, columns) of each chunk, in vocabulary order.
    chunks: Vec<(usize, usize)>,
    /// (first row, rows) of each group, in row order.
    groups: Vec<(usize, usize)>,
}

impl Backward {
    fn new((n, d, v): (usize, usize, usize), element: u64, max_binding: u64) -> Result<Backward> {
        let refuse = |what: &str| {
            Error::Unsupported(format!(
                "the GPU's linear backward needs {what} in one storage binding of \
                 {max_binding} bytes; use Backend::Cpu for this call"
            ))
        };
        let fit = |per: u64| (max_binding / per.max(1)) as usize / TILE_ROWS * TILE_ROWS;
        let per_row = (d as u64 * 4).max(d as u64 * element).max(COEF_BYTES);
        let group_rows = fit(per_row)
            .min(fit(TILE_ROWS as u64 * 4))
            .min(n.next_multiple_of(TILE_ROWS));
        if group_rows == 0 {
            return Err(refuse("64 rows of the hidden states and of G"));
        }
        let per_column = (group_rows as u64 * 4)
            .max(d as u64 * element)
            .max(d as u64 * 4);
        let width = fit(per_column).min(4096);
        if width == 0 {
            return Err(refuse("64 columns of G and of W"));
        }
        Ok(Backward {
            width,
            group_rows,
            chunks: (0..v)
                .step_by(width)
                .map(|c| (c, width.min(v - c)))
                .collect(),
            groups: (0..n)
                .step_by(group_rows)
                .map(|r| (r, group_rows.min(n - r)))
                .collect(),
        })
    }
}

/// The gradients read back (`dh` of the computed rows, `dW`, `db`) into the caller's buffers,
/// written or added as each asks; `dh` of rows not computed is left (add) or zero (write).
fn deliver(
    plan: &LinearPlan,
    request: &mut LinearRequest<'_>,
    (dh, dw, db): (&[f32], &[f32], &[f32]),
) {
    let d = plan.hidden;
    if let Some(out) = request.hidden_gradient.as_mut() {
        let adds = out.adds();
        let out = out.data();
        if !adds {
            out.fill(0.0);
        }
        for (i, &r) in plan.computed.iter().enumerate() {
            for (o, &g) in out[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&dh[i * d..(i + 1) * d])
            {
                *o = if adds { *o + g } else { g };
            }
        }
    }
    for (buffer, values) in [
        (request.weight_gradient.as_mut(), dw),
        (request.bias_gradient.as_mut(), db),
    ] {
        if let Some(out) = buffer {
            let adds = out.adds();
            for (o, &g) in out.data().iter_mut().zip(values) {
                *o = if adds { *o + g } else { g };
            }
        }
    }
}

/// All of `m` (`rows` rows) as f32 words: borrowed-and-copied for f32, widened otherwise.
fn f32_words(m: &Matrix<'_>, rows: usize) -> Vec<f32> {
    m.rows_f32(0..rows, &mut Vec::new()).to_vec()
}

/// The call's output from the computed rows' records and sums.
fn output(
    plan: &LinearPlan,
    request: &LinearRequest<'_>,
    records: &[GpuRow],
    sums: &[[f32; 4]],
) -> Output {
    let reduction = plan.options.reduction;
    let (ce, z) = sums.iter().fold((0f64, 0f64), |(ce, z), s| {
        (ce + s[0] as f64, z + s[1] as f64)
    });
    let row_losses = (request.row_losses || reduction == Reduction::None).then(|| {
        let mut all = vec![0f32; plan.rows];
        for (&row, r) in plan.computed.iter().zip(records) {
            all[row] = r.loss;
        }
        all
    });
    Output {
        loss: loss(reduction, (ce, z), plan.denominators).map(|v| v as f32),
        row_losses,
        lse: request.lse.then(|| records.iter().map(|r| r.lse).collect()),
        metrics: request.metrics.then(|| super::host::metrics(records)),
    }
}
