//! A linear head's forward on the GPU (host slices in, `Output` back): the computed rows' `h`,
//! the head's `W` and `b` uploaded as f32, `linear_partials.wgsl` folding each tile of
//! `h·Wᵀ + b` into the partials of each (row, split), the softmax rows pass finishing every row
//! (loss, LSE, metrics, its sums), and the rows read back; the reduced loss is summed from the
//! rows' sums on the host in f64, in row order, with the plan's denominators.
//!
//! What this first GPU step does not do yet, each refused with [`Error::Unsupported`]:
//! gradients (`dh`, `dW`, `db`), focal loss with label smoothing (its second pass over the
//! logits), and inputs or partials larger than one storage binding.

use super::abi::{
    Params, ReductionCode, FLAG_BIAS, FLAG_ENTROPY, FLAG_SAMPLE_WEIGHTS, FLAG_TARGET_LOGIT,
    FLAG_WANT_WZ, FLAG_WEIGHTS, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES,
};
use super::device::GpuRow;
use super::encode::{grid, storage_usage, Window};
use super::launchers::{LinearPartials, Rows};
use super::pipelines::{Kernel, LogitLoad, TargetLoad, Variant};
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::Matrix;
use crate::linear::{LinearBatch, LinearRequest};
use crate::math::reduce::loss;
use crate::options::Reduction;
use crate::output::{Metrics, Output};
use crate::plan::linear::LinearPlan;
use wgpu::util::DeviceExt;

/// Rows of one workgroup's tile (`BM` in the shader).
const TILE_ROWS: usize = 64;
/// Columns of one split: a multiple of the shader's tile width `BN = 64`.
const SPLIT_COLUMNS: usize = 1024;

impl Gpu {
    /// The forward of a checked linear call (module docs).
    pub(crate) fn linear(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        request: &LinearRequest<'_>,
    ) -> Result<Output> {
        let options = plan.options;
        if plan.gradient {
            return Err(Error::Unsupported(
                "the GPU's linear head computes the forward only so far (loss, per-row losses, \
                 LSE, metrics); its gradients run on Backend::Cpu (issue 13)"
                    .into(),
            ));
        }
        if crate::plan::needs_focal_pass(&options, false) {
            return Err(Error::Unsupported(
                "focal loss with label smoothing on the GPU's linear head (a second pass over \
                 the logits) is not written yet; it runs on Backend::Cpu"
                    .into(),
            ));
        }
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        let splits = v.div_ceil(SPLIT_COLUMNS);
        let sizes = [
            ("hidden states", n as u64 * d as u64 * 4),
            ("weight", v as u64 * d as u64 * 4),
            ("partials", n as u64 * splits as u64 * PARTIAL_BYTES),
        ];
        if let Some((what, bytes)) = sizes.iter().find(|(_, b)| *b > self.max_binding) {
            return Err(Error::Unsupported(format!(
                "the GPU's linear head binds its {what} whole so far: {bytes} bytes exceed this \
                 device's storage binding of {} bytes (issue 13: chunking is the next step)",
                self.max_binding
            )));
        }

        // The computed rows' inputs, gathered; h, W and b as f32.
        let rows = &plan.computed;
        let mut buf = Vec::new();
        let mut hidden = Vec::with_capacity(n * d);
        for &r in rows {
            hidden.extend_from_slice(batch.hidden.rows_f32(r..r + 1, &mut buf));
        }
        let weight = f32_words(&batch.weight, v);
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
        let params = Params {
            rows: n as u32,
            classes: v as u32,
            splits: splits as u32,
            span: SPLIT_COLUMNS as u32,
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
            upstream: 1.0,
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
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("xent linear params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let stand_in = upload("xent linear stand-in", &[0u8; 16]);
            let hidden_buffer = upload("xent linear h", bytemuck::cast_slice(&hidden));
            let weight_buffer = upload("xent linear W", bytemuck::cast_slice(&weight));
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
            let partials = scratch("xent linear partials", (n * splits) as u64 * PARTIAL_BYTES);
            let target_logits = scratch("xent linear target logits", n as u64 * 4);
            let rows_out = scratch("xent linear rows", n as u64 * ROW_BYTES);
            let row_sums = scratch("xent linear row sums", n as u64 * ROW_SUM_BYTES);
            let coefficients = scratch("xent linear coefficients", n as u64 * 32);

            fn or<'b>(b: &'b Option<wgpu::Buffer>, stand_in: &'b wgpu::Buffer) -> Window<'b> {
                Window::whole(b.as_ref().unwrap_or(stand_in))
            }
            let or_stand_in = |b| or(b, &stand_in);
            let mut encoder = device.create_command_encoder(&Default::default());
            if n > 0 {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("xent linear"),
                    timestamp_writes: None,
                });
                let forward = LinearPartials {
                    params: Window::whole(&uniform),
                    targets: Window::whole(&targets_buffer),
                    class_weights: or_stand_in(&class_weights),
                    partials: Window::whole(&partials),
                    target_logits: Window::whole(&target_logits),
                    hidden: Window::whole(&hidden_buffer),
                    head_weight: Window::whole(&weight_buffer),
                    head_bias: or_stand_in(&bias_buffer),
                };
                let variant = Variant::new(Kernel::LinearPartials, LogitLoad::F32, TargetLoad::I64);
                let groups = (n.div_ceil(TILE_ROWS) as u32, splits as u32, 1);
                self.launch(
                    &mut pass,
                    &self.pipeline(variant),
                    &forward.entries(),
                    groups,
                );
                let finish = Rows {
                    params: Window::whole(&uniform),
                    targets: Window::whole(&targets_buffer),
                    class_weights: or_stand_in(&class_weights),
                    partials: Window::whole(&partials),
                    rows: Window::whole(&rows_out),
                    row_sums: Window::whole(&row_sums),
                    coefficients: Window::whole(&coefficients),
                    sample_weights: or_stand_in(&sample_buffer),
                    target_logits: Window::whole(&target_logits),
                };
                let variant = Variant::new(Kernel::SoftmaxRows, LogitLoad::F32, TargetLoad::I64);
                let (x, y) = grid(n as u64);
                self.launch(
                    &mut pass,
                    &self.pipeline(variant),
                    &finish.entries(),
                    (x, y, 1),
                );
            }
            self.queue.submit([encoder.finish()]);
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let reads = [
                (&rows_out, n as u64 * ROW_BYTES),
                (&row_sums, n as u64 * ROW_SUM_BYTES),
            ];
            let mut read = self.read_back_all(&mut pool, &reads)?.into_iter();
            let records: Vec<GpuRow> =
                bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
            let sums: Vec<[f32; 4]> =
                bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
            Ok(output(plan, request, &records, &sums))
        })
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
        metrics: request.metrics.then(|| Metrics {
            argmax: records.iter().map(|r| r.argmax).collect(),
            correct: records.iter().map(|r| r.flags & 2 != 0).collect(),
            target_prob: records.iter().map(|r| r.target_prob).collect(),
            entropy: records.iter().map(|r| r.entropy).collect(),
            confidence: records.iter().map(|r| r.confidence).collect(),
            valid: records.iter().map(|r| r.flags & 1 != 0).collect(),
        }),
    }
}
