//! A vocabulary shard of a linear head on the GPU (`LinearCrossEntropy::shard_partials`,
//! `shard_focal`, `shard_backward`): the host-slice call's upload and dispatches over the
//! shard's rows of `W`, stopped where the shard's part ends. Its targets are uploaded as its
//! own columns (−1 elsewhere); the focal round and the backward read the combined (global)
//! rows as the kernels' coefficients, written over the pool's before the dispatches.

use super::bindings::Bindings;
use super::launches::{backward_launches, shard_launches, ShardPass};
use super::{buffers, HostCall};
use crate::error::Result;
use crate::gpu::abi::{Params, Partial, ReductionCode, FOCAL_SUM_BYTES, PARTIAL_BYTES};
use crate::gpu::shard::{combined_coefficients, merge_splits};
use crate::gpu::Gpu;
use crate::linear::{LinearBatch, LinearRequest};
use crate::plan::linear::LinearPlan;
use crate::shard::{Combined, FocalPartial, RowFill, RowPartial};

impl Gpu {
    /// One shard's per-row partials: `linear_partials` over its columns, the splits merged
    /// and the target's logit (saved by the kernel) transformed on the host.
    pub(crate) fn linear_shard_partials(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
    ) -> Result<Vec<RowPartial>> {
        let request = LinearRequest::new();
        let call = HostCall::new(self, plan, batch, &request, true)?;
        let (n, splits) = (plan.rows, call.pieces.splits);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        let (records, target_logits): (Vec<Partial>, Vec<f32>) = self.scoped(|| {
            let b = buffers::upload(self, pool, plan, batch, &request, (call.load, cut(&call)));
            let launches = shard_launches(&b, &call.pieces, call.base, ShardPass::Partials);
            self.submit_linear(&launches, &b, &call);
            let reads = [
                (
                    b.scratch.partials.buffer(),
                    (n * splits) as u64 * PARTIAL_BYTES,
                ),
                (b.scratch.target_logits.buffer(), n as u64 * 4),
            ];
            let mut read = self.read_back_all(pool, &reads)?.into_iter();
            let mut next = || read.next().unwrap_or_default();
            Ok((
                bytemuck::pod_collect_to_vec(&next()),
                bytemuck::pod_collect_to_vec(&next()),
            ))
        })?;
        let transform = crate::cpu::row::Transform::of(&plan.options);
        let ignore = plan.options.ignore_index;
        Ok((0..n)
            .map(|row| {
                let merged = merge_splits(plan.shard, &records[row * splits..(row + 1) * splits]);
                let y = batch.targets.index(row).unwrap_or_default();
                let target = plan.shard.local(y, ignore).map(|c| {
                    let w = batch.class_weights.map_or(1.0, |w| w[c]);
                    (transform.scalar(target_logits[row]), w)
                });
                merged.with_target(target)
            })
            .collect())
    }

    /// One shard's focal sums (focal loss with smoothing): `linear_focal` over its columns
    /// from the combined rows, each row's splits added in order.
    pub(crate) fn linear_shard_focal(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        combined: &Combined,
    ) -> Result<Vec<FocalPartial>> {
        let request = LinearRequest::new();
        let call = HostCall::new(self, plan, batch, &request, false)?;
        let (n, splits) = (plan.rows, call.pieces.splits);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        let sums: Vec<[f32; 2]> = self.scoped(|| {
            let b = buffers::upload(self, pool, plan, batch, &request, (call.load, cut(&call)));
            self.write_combined(&b, plan, combined);
            let launches = shard_launches(&b, &call.pieces, call.base, ShardPass::Focal);
            self.submit_linear(&launches, &b, &call);
            let focal = b.scratch.focal_partials.as_ref().map(|f| f.buffer());
            let bytes = (n * splits) as u64 * FOCAL_SUM_BYTES;
            Ok(match focal {
                Some(buffer) => bytemuck::pod_collect_to_vec(&self.read_back(pool, buffer, bytes)?),
                None => Vec::new(),
            })
        })?;
        // Σ a·f·l and Σ a·g per (row, split); the row's loss is −Σ a·f·l.
        Ok(combined
            .rows
            .iter()
            .enumerate()
            .map(
                |(row, r)| match (r.fill, sums.get(row * splits..(row + 1) * splits)) {
                    (RowFill::Compute, Some(splits)) => {
                        let (l, g) = splits
                            .iter()
                            .fold((0f64, 0f64), |(l, g), s| (l + s[0] as f64, g + s[1] as f64));
                        FocalPartial {
                            loss: -l as f32,
                            g_sum: g as f32,
                        }
                    }
                    _ => FocalPartial::default(),
                },
            )
            .collect())
    }

    /// One shard's gradients from the combined rows: its rows of `dW` and `db`, its part of
    /// `dh`, vocabulary chunk by chunk as the whole head's backward.
    pub(crate) fn linear_shard_backward(
        &self,
        plan: &LinearPlan,
        batch: &LinearBatch<'_>,
        combined: &Combined,
        request: &mut LinearRequest<'_>,
    ) -> Result<()> {
        let call = HostCall::new(self, plan, batch, request, false)?;
        // The combined coefficients carry every scale (`REDUCTION_PRESCALED`).
        let base = Params {
            reduction: ReductionCode::Prescaled as u32,
            ..call.base
        };
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &mut *pool;
        self.scoped(|| {
            let b = buffers::upload(self, pool, plan, batch, request, (call.load, cut(&call)));
            self.write_combined(&b, plan, combined);
            let launches = match &call.backward {
                Some(back) => backward_launches(&b, back, base),
                None => Vec::new(),
            };
            self.submit_linear(&launches, &b, &call);
            buffers::read_back(self, pool, &b, plan, request, false)?;
            Ok(())
        })
    }

    /// The combined rows as the shard's coefficients, over the pool's.
    fn write_combined(&self, b: &Bindings, plan: &LinearPlan, combined: &Combined) {
        let coefficients = combined_coefficients(plan.shard, combined);
        if !coefficients.is_empty() {
            let buffer = b.scratch.coefficients.buffer();
            self.queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(&coefficients));
        }
    }

    /// Records `launches` into an encoder of their own and submits it.
    fn submit_linear(
        &self,
        launches: &[super::launches::Launch<'_>],
        b: &Bindings,
        call: &HostCall,
    ) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.record_linear(&mut encoder, launches, b, call.load);
        self.queue.submit([encoder.finish()]);
    }
}

/// The call's cut, as `buffers::upload` takes it.
fn cut(call: &HostCall) -> (&super::cut::Pieces, Option<&super::cut::Backward>) {
    (&call.pieces, call.backward.as_ref())
}
