//! Every buffer of a linear call, uploaded and read back in one place.

use super::cut::{Backward, Pieces};
use super::{deliver, f32_words, output};
use crate::error::Result;
use crate::gpu::abi::{COEF_BYTES, FOCAL_SUM_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};
use crate::gpu::device::GpuRow;
use crate::gpu::encode::{storage_usage, Window};
use crate::gpu::pipelines::LogitLoad;
use crate::gpu::pool::{Pool, Role};
use crate::gpu::Gpu;
use crate::linear::{LinearBatch, LinearRequest};
use crate::options::Reduction;
use crate::output::Output;
use crate::plan::linear::LinearPlan;

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
        pool: &mut Pool,
    ) -> Buffers {
        let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
        let rows = &plan.computed;
        // The call's buffers are the pool's, reused across calls: every value a kernel reads
        // is written earlier in the same call (uploads, or a pass before it).
        let mut upload = |role, bytes: &[u8]| gpu.upload(pool, role, bytes);
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
            (Reduction::None, Some(u)) => gather(u),
            (Reduction::Mean, _) => {
                let (weight_sum, count) = plan.denominators;
                vec![0.0, 0.0, weight_sum as f32, count as f32]
            }
            _ => vec![0.0; 4],
        };
        let bias = batch.bias.as_ref().map(|b| f32_words(b, 1));
        let sample_weights = batch.sample_weights.map(gather);
        let hidden = upload(Role::LinearHidden, &hidden);
        let weight = upload(Role::LinearWeight, &weight);
        let bias = bias.map(|b| upload(Role::LinearBias, bytemuck::cast_slice(&b)));
        let targets = upload(Role::UploadTargets, bytemuck::cast_slice(&targets));
        let class_weights = batch
            .class_weights
            .map(|w| upload(Role::UploadWeights, bytemuck::cast_slice(w)));
        let sample_weights =
            sample_weights.map(|s| upload(Role::UploadSampleWeights, bytemuck::cast_slice(&s)));
        let scale_source = upload(Role::UploadUpstream, bytemuck::cast_slice(&scale_source));
        let mut scratch = |role, bytes: u64| pool.get(&gpu.device, role, bytes, storage_usage());
        let splits = pieces.splits as u64;
        Buffers {
            stand_in: scratch(Role::UnusedInput, 16),
            hidden,
            weight,
            bias,
            targets,
            class_weights,
            sample_weights,
            scale_source,
            partials: scratch(Role::Partials, n as u64 * splits * PARTIAL_BYTES),
            target_logits: scratch(Role::TargetLogits, n as u64 * 4),
            rows: scratch(Role::RowsOut, n as u64 * ROW_BYTES),
            row_sums: scratch(Role::RowSums, n as u64 * ROW_SUM_BYTES),
            coefficients: scratch(Role::Coefficients, n as u64 * COEF_BYTES),
            focal_partials: crate::plan::needs_focal_pass(&plan.options, false)
                .then(|| scratch(Role::LinearFocalSums, n as u64 * splits * FOCAL_SUM_BYTES)),
            gradients: backward.as_ref().map(|back| {
                let block = back.group_rows as u64 * back.width as u64 * 4;
                [
                    scratch(Role::LinearBlockGradient, block),
                    scratch(Role::LinearHiddenGradient, n as u64 * d as u64 * 4),
                    scratch(Role::LinearWeightGradient, v as u64 * d as u64 * 4),
                    scratch(Role::LinearBiasGradient, v as u64 * 4),
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

    /// The first `values` f32 of a per-class input, or the stand-in when it is absent.
    pub(super) fn or_stand_in<'b>(&'b self, buffer: &'b Option<wgpu::Buffer>) -> Window<'b> {
        match buffer {
            Some(b) => Window::head(b, self.shape.2 as u64 * 4),
            None => self.stand_in(),
        }
    }

    /// The stand-in word (also the launchers' placeholder `params`).
    pub(super) fn stand_in(&self) -> Window<'_> {
        Window::head(&self.stand_in, 16)
    }

    /// The backward's scale source: the computed rows' upstream (`none`) or the mean's totals.
    pub(super) fn scale_source(&self, rows: (usize, usize), per_row: bool) -> Window<'_> {
        match per_row {
            true => Self::rows_of(&self.scale_source, rows, 4),
            false => Window::head(&self.scale_source, 16),
        }
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
        pool: &mut Pool,
        plan: &LinearPlan,
        request: &mut LinearRequest<'_>,
    ) -> Result<Output> {
        let (n, d, v) = self.shape;
        let mut reads = vec![
            (&self.rows, n as u64 * ROW_BYTES),
            (&self.row_sums, n as u64 * ROW_SUM_BYTES),
        ];
        if let Some([_, dh, dw, db]) = &self.gradients {
            reads.push((dh, n as u64 * d as u64 * 4));
            reads.push((dw, v as u64 * d as u64 * 4));
            reads.push((db, v as u64 * 4));
        }
        let mut read = gpu.read_back_all(pool, &reads)?.into_iter();
        let records: Vec<GpuRow> = bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
        let sums: Vec<[f32; 4]> = bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default());
        if self.gradients.is_some() {
            let mut next =
                || -> Vec<f32> { bytemuck::pod_collect_to_vec(&read.next().unwrap_or_default()) };
            let (dh, mut dw, mut db) = (next(), next(), next());
            // Without computed rows no kernel wrote dW and db: the pool's bytes are stale.
            if n == 0 {
                dw.fill(0.0);
                db.fill(0.0);
            }
            deliver(plan, request, (&dh, &dw, &db));
        }
        Ok(output(plan, request, &records, &sums))
    }
}
