//! A host-slice call's buffers: its inputs gathered and uploaded into the pool, its outputs
//! read back and delivered into the caller's slices.

use super::bindings::{Bindings, Destination, Region, Scratch};
use super::cut::{Backward, Pieces};
use crate::error::Result;
use crate::gpu::abi::{ROW_BYTES, ROW_SUM_BYTES};
use crate::gpu::device::GpuRow;
use crate::gpu::encode::storage_usage;
use crate::gpu::pipelines::{LogitLoad, TargetLoad};
use crate::gpu::pool::{Pool, Role};
use crate::gpu::Gpu;
use crate::input::Matrix;
use crate::linear::{LinearBatch, LinearRequest, WeightLayout};
use crate::math::reduce::loss;
use crate::options::Reduction;
use crate::output::Output;
use crate::plan::linear::LinearPlan;

/// The ignore index of a host call's uploaded targets.
pub(super) const IGNORED: i64 = -1;

/// The computed rows' inputs gathered and uploaded (h and W in the load's dtype, the rest f32
/// or i64), the pool's buffers for the outputs and gradients asked for, and the scratch. The
/// targets were checked on the host, so the call does not check them again.
pub(super) fn upload(
    gpu: &Gpu,
    pool: &mut Pool,
    plan: &LinearPlan,
    batch: &LinearBatch<'_>,
    request: &LinearRequest<'_>,
    (load, (pieces, backward)): (LogitLoad, (&Pieces, Option<&Backward>)),
) -> Bindings {
    let (n, d, v) = (plan.computed.len(), plan.hidden, plan.vocab);
    let rows = &plan.computed;
    let widened = matches!(load, LogitLoad::F32 | LogitLoad::F32x4);
    let element = if widened { 4 } else { 2 };
    let (hidden, weight): (Vec<u8>, Vec<u8>) = if widened {
        let mut buf = Vec::new();
        let mut h = Vec::with_capacity(n * d);
        for &r in rows {
            h.extend_from_slice(batch.hidden.rows_f32(r..r + 1, &mut buf));
        }
        let w = match batch.weight_layout {
            WeightLayout::VocabMajor => f32_words(&batch.weight, v),
            WeightLayout::HiddenMajor => batch.weight.columns_f32(0..v, &mut buf).to_vec(),
        };
        (
            bytemuck::cast_slice(&h).to_vec(),
            bytemuck::cast_slice(&w).to_vec(),
        )
    } else {
        let (bytes, row) = (batch.hidden.bytes(), d * element);
        let h = rows
            .iter()
            .flat_map(|&r| &bytes[r * row..(r + 1) * row])
            .copied()
            .collect();
        let w = batch.weight.bytes();
        let w = match batch.weight_layout {
            WeightLayout::VocabMajor => w.to_vec(),
            WeightLayout::HiddenMajor => transposed(w, (d, v), element),
        };
        (h, w)
    };
    // Targets as the call's own columns (a shard's), −1 for an ignored row or a target in
    // another shard: the host call's kernels take −1 as the ignore index (`IGNORED`).
    let ignore = plan.options.ignore_index;
    let targets: Vec<i64> = rows
        .iter()
        .map(|&r| {
            let y = batch.targets.index(r).unwrap_or_default();
            plan.shard.local(y, ignore).map_or(IGNORED, |c| c as i64)
        })
        .collect();
    let gather = |values: &[f32]| -> Vec<f32> { rows.iter().map(|&r| values[r]).collect() };
    let upstream = match (plan.options.reduction, request.upstream) {
        (Reduction::None, Some(u)) => Some(gather(u)),
        _ => None,
    };
    let bias = batch.bias.as_ref().map(|b| f32_words(b, 1));
    let sample_weights = batch.sample_weights.map(gather);
    // The call's buffers are the pool's, reused across calls: every value a kernel reads is
    // written earlier in the same call (uploads, or a pass before it).
    let mut upload = |role, bytes: &[u8]| Region::whole(&gpu.upload(pool, role, bytes));
    let floats = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let hidden = upload(Role::LinearHidden, &hidden);
    let weight = upload(Role::LinearWeight, &weight);
    let bias = bias.map(|b| upload(Role::LinearBias, &floats(&b)));
    let targets = upload(Role::UploadTargets, bytemuck::cast_slice(&targets));
    let class_weights = batch
        .class_weights
        .map(|w| upload(Role::UploadWeights, &floats(w)));
    let sample_weights = sample_weights.map(|s| upload(Role::UploadSampleWeights, &floats(&s)));
    let upstream = upstream.map(|u| upload(Role::UploadUpstream, &floats(&u)));
    let mut output = |role, bytes: u64, asked: bool| {
        asked.then(|| Destination {
            region: Region::whole(&pool.get(&gpu.device, role, bytes, storage_usage())),
            adds: false,
        })
    };
    let (n64, d64, v64) = (n as u64, d as u64, v as u64);
    let hidden_gradient = output(
        Role::LinearHiddenGradient,
        n64 * d64 * 4,
        request.hidden_gradient.is_some(),
    );
    let weight_gradient = output(
        Role::LinearWeightGradient,
        v64 * d64 * 4,
        request.weight_gradient.is_some(),
    );
    let bias_gradient = output(
        Role::LinearBiasGradient,
        v64 * 4,
        request.bias_gradient.is_some(),
    );
    let mut pooled =
        |role, bytes| Region::whole(&pool.get(&gpu.device, role, bytes, storage_usage()));
    let loss = pooled(Role::Loss, 16);
    let records = pooled(Role::RowsOut, n64 * ROW_BYTES);
    let focal = crate::plan::needs_focal_pass(&plan.options, false);
    Bindings {
        hidden,
        weight,
        weight_transposed: false,
        bias,
        targets,
        target_load: TargetLoad::I64,
        class_weights,
        sample_weights,
        upstream,
        target_error: None,
        loss,
        records,
        hidden_gradient,
        weight_gradient,
        bias_gradient,
        scratch: Scratch::take(&gpu.device, pool, n, (pieces, backward), focal),
        writable: false,
        element: element as u64,
        shape: (n, d, v),
    }
}

/// The rows' records and sums (when `rows`) and the gradients asked for, read back in one
/// round trip; the gradients delivered into the caller's buffers.
pub(super) fn read_back(
    gpu: &Gpu,
    pool: &mut Pool,
    b: &Bindings,
    plan: &LinearPlan,
    request: &mut LinearRequest<'_>,
    rows: bool,
) -> Result<(Vec<GpuRow>, Vec<[f32; 4]>)> {
    let (n, d, v) = b.shape;
    let (n, d, v) = (n as u64, d as u64, v as u64);
    let per_row = if rows { n } else { 0 };
    // Every output of a host call is a whole pooled buffer: its bytes start at 0.
    let mut reads = vec![
        (b.records.buffer(), per_row * ROW_BYTES),
        (b.scratch.row_sums.buffer(), per_row * ROW_SUM_BYTES),
    ];
    for (gradient, bytes) in [
        (&b.hidden_gradient, n * d * 4),
        (&b.weight_gradient, v * d * 4),
        (&b.bias_gradient, v * 4),
    ] {
        if let Some(g) = gradient {
            reads.push((g.region.buffer(), bytes));
        }
    }
    let mut read = gpu.read_back_all(pool, &reads)?.into_iter();
    let mut next = || read.next().unwrap_or_default();
    let records: Vec<GpuRow> = bytemuck::pod_collect_to_vec(&next());
    let sums: Vec<[f32; 4]> = bytemuck::pod_collect_to_vec(&next());
    let mut floats = |asked: bool| -> Vec<f32> {
        match asked {
            true => bytemuck::pod_collect_to_vec(&next()),
            false => Vec::new(),
        }
    };
    let dh = floats(b.hidden_gradient.is_some());
    let dw = floats(b.weight_gradient.is_some());
    let db = floats(b.bias_gradient.is_some());
    let dw = match plan.weight_layout {
        WeightLayout::VocabMajor => dw,
        WeightLayout::HiddenMajor => {
            let dw = transposed(bytemuck::cast_slice(&dw), (v as usize, d as usize), 4);
            bytemuck::pod_collect_to_vec(&dw)
        }
    };
    deliver(plan, request, (&dh, &dw, &db));
    Ok((records, sums))
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

/// The transposition of a row-major `rows × cols` matrix of `size`-byte values.
fn transposed(bytes: &[u8], (rows, cols): (usize, usize), size: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    for (r, row) in bytes.chunks_exact(cols * size).take(rows).enumerate() {
        for (c, value) in row.chunks_exact(size).enumerate() {
            let at = (c * rows + r) * size;
            out[at..at + size].copy_from_slice(value);
        }
    }
    out
}

/// All of `m` (`rows` rows) as f32 words: borrowed-and-copied for f32, widened otherwise.
fn f32_words(m: &Matrix<'_>, rows: usize) -> Vec<f32> {
    m.rows_f32(0..rows, &mut Vec::new()).to_vec()
}

/// The call's output from the computed rows' records and sums.
pub(super) fn output(
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
        metrics: request.metrics.then(|| crate::gpu::host::metrics(records)),
    }
}
