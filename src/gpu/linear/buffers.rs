//! Every buffer of a linear call, uploaded and read back in one place.

use super::cut::{Backward, Pieces};
use super::{deliver, f32_words, output};
use crate::error::Result;
use crate::gpu::abi::{COEF_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};
use crate::gpu::device::GpuRow;
use crate::gpu::encode::{storage_usage, Window};
use crate::gpu::pipelines::LogitLoad;
use crate::gpu::Gpu;
use crate::linear::{LinearBatch, LinearRequest};
use crate::options::Reduction;
use crate::output::Output;
use crate::plan::linear::LinearPlan;
use wgpu::util::DeviceExt;

/// Every buffer of a call: the uploads, the forward's scratch and outputs, the backward's.
pub(super) struct Buffers {
    /// A word of zeros bound where an optional input is absent (and as the launchers'
    /// placeholder `params`).
    pub(super) stand_in: wgpu::Buffer,
    pub(super) hidden: wgpu::Buffer,
    pub(super) weight: wgpu::Buffer,
    pub(super) bias: Option<wgpu::Buffer>,
    pub(super) targets: wgpu::Buffer,
    pub(super) class_weights: Option<wgpu::Buffer>,
    pub(super) sample_weights: Option<wgpu::Buffer>,
    /// The backward's per-row upstream (`none`) or the mean's totals `(0, 0, D, Σs)`.
    pub(super) scale_source: wgpu::Buffer,
    pub(super) partials: wgpu::Buffer,
    pub(super) target_logits: wgpu::Buffer,
    pub(super) rows: wgpu::Buffer,
    pub(super) row_sums: wgpu::Buffer,
    pub(super) coefficients: wgpu::Buffer,
    /// Focal loss with smoothing: the focal sums of each (row, split).
    pub(super) focal_partials: Option<wgpu::Buffer>,
    /// `G` of one (chunk, group), `dh` of the computed rows, `dW`, `db`.
    pub(super) gradients: Option<[wgpu::Buffer; 4]>,
    /// Bytes per value of h and W as bound; rows, hidden size, vocabulary.
    pub(super) element: u64,
    pub(super) shape: (usize, usize, usize),
}

impl Buffers {
    /// The computed rows' inputs gathered and uploaded (h and W in the load's dtype, the rest
    /// f32 or i64), and the scratch and output buffers of the forward and the backward.
    pub(super) fn upload(
        gpu: &Gpu,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        request: &LinearRequest<'_>,
        (load, pieces, backward): (LogitLoad, &Pieces, &Option<Backward>),
    ) -> Buffers {
        let device = &gpu.device;
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        let rows = &plan.computed;
        let upload = |label: &str, bytes: &[u8]| {
            // A binding needs at least one word.
            let contents = if bytes.len() < 4 {
                &[0u8; 4][..]
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
        let element = if load == LogitLoad::F32 { 4 } else { 2 };
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
        let targets: Vec<i64> = rows
            .iter()
            .map(|&r| batch.targets.index(r).unwrap_or_default())
            .collect();
        let gather = |values: &[f32]| -> Vec<f32> { rows.iter().map(|&r| values[r]).collect() };
        let scale_source = match (plan.options.reduction, request.upstream) {
            (Reduction::None, Some(u)) => {
                upload("xent linear upstream", bytemuck::cast_slice(&gather(u)))
            }
            (Reduction::Mean, _) => {
                let (weight_sum, count) = plan.denominators;
                let totals = [0.0, 0.0, weight_sum as f32, count as f32];
                upload("xent linear totals", bytemuck::cast_slice(&totals))
            }
            _ => upload("xent linear stand-in", &[0u8; 16]),
        };
        let splits = pieces.splits as u64;
        Buffers {
            stand_in: upload("xent linear stand-in", &[0u8; 16]),
            hidden: upload("xent linear h", &hidden),
            weight: upload("xent linear W", &weight),
            bias: batch
                .bias
                .as_ref()
                .map(|b| upload("xent linear b", bytemuck::cast_slice(&f32_words(b, 1)))),
            targets: upload("xent linear targets", bytemuck::cast_slice(&targets)),
            class_weights: batch
                .class_weights
                .map(|w| upload("xent linear class weights", bytemuck::cast_slice(w))),
            sample_weights: batch.sample_weights.map(|s| {
                upload(
                    "xent linear sample weights",
                    bytemuck::cast_slice(&gather(s)),
                )
            }),
            scale_source,
            partials: scratch("xent linear partials", n as u64 * splits * PARTIAL_BYTES),
            target_logits: scratch("xent linear target logits", n as u64 * 4),
            rows: scratch("xent linear rows", n as u64 * ROW_BYTES),
            row_sums: scratch("xent linear row sums", n as u64 * ROW_SUM_BYTES),
            coefficients: scratch("xent linear coefficients", n as u64 * COEF_BYTES),
            focal_partials: crate::plan::needs_focal_pass(&plan.options, false)
                .then(|| scratch("xent linear focal sums", n as u64 * splits * 8)),
            gradients: backward.as_ref().map(|back| {
                [
                    scratch(
                        "xent linear G",
                        back.group_rows as u64 * back.width as u64 * 4,
                    ),
                    scratch("xent linear dh", n as u64 * d as u64 * 4),
                    scratch("xent linear dW", v as u64 * d as u64 * 4),
                    scratch("xent linear db", v as u64 * 4),
                ]
            }),
            element,
            shape: (n, d, v),
        }
    }

    /// Rows `r0 .. r0 + rows` of a buffer of `bytes` per row.
    pub(super) fn rows_of<'b>(
        buffer: &'b wgpu::Buffer,
        (r0, rows): (usize, usize),
        bytes: u64,
    ) -> Window<'b> {
        Window {
            buffer,
            offset: r0 as u64 * bytes,
            size: rows as u64 * bytes,
        }
    }

    /// `buffer`, or the stand-in when it is absent.
    pub(super) fn or_stand_in<'b>(&'b self, buffer: &'b Option<wgpu::Buffer>) -> Window<'b> {
        Window::whole(buffer.as_ref().unwrap_or(&self.stand_in))
    }

    /// Rows `rows` of h, and rows `columns` of W, as bound.
    pub(super) fn hidden(&self, rows: (usize, usize)) -> Window<'_> {
        Self::rows_of(&self.hidden, rows, self.shape.1 as u64 * self.element)
    }
    pub(super) fn weight(&self, columns: (usize, usize)) -> Window<'_> {
        Self::rows_of(&self.weight, columns, self.shape.1 as u64 * self.element)
    }

    /// The rows, their sums and the gradients read back in one round trip; the gradients
    /// delivered into the caller's buffers, the rest into the output.
    pub(super) fn read_back(
        &self,
        gpu: &Gpu,
        plan: &LinearPlan,
        request: &mut LinearRequest<'_>,
    ) -> Result<Output> {
        let (n, d, v) = self.shape;
        let mut pool = gpu.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut reads = vec![
            (&self.rows, n as u64 * ROW_BYTES),
            (&self.row_sums, n as u64 * ROW_SUM_BYTES),
        ];
        if let Some([_, dh, dw, db]) = &self.gradients {
            reads.push((dh, n as u64 * d as u64 * 4));
            reads.push((dw, v as u64 * d as u64 * 4));
            reads.push((db, v as u64 * 4));
        }
        let mut read = gpu.read_back_all(&mut pool, &reads)?.into_iter();
        let records: Vec<GpuRow> = bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
        let sums: Vec<[f32; 4]> = bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
        if self.gradients.is_some() {
            let mut next =
                || -> Vec<f32> { bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default()) };
            let (dh, dw, db) = (next(), next(), next());
            deliver(plan, request, (&dh, &dw, &db));
        }
        Ok(output(plan, request, &records, &sums))
    }
}
