//! The host-slice path: upload a call's slices, record it with the same schedule the device
//! API uses, submit, and read back what the request asks for in one round trip.

use super::abi::ROW_BYTES;
use super::device::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, GpuRow};
use super::encode::storage_usage;
use super::pool::{Pool, Role};
use super::schedule::HOST_CALL_ERROR;
use super::Gpu;
use crate::error::{Error, Result};
use crate::input::{Batch, Storage, Targets};
use crate::options::Reduction;
use crate::output::{Gradient, Metrics, Output, Request};
use crate::plan::{Loss, Plan};

/// Largest piece read back at once.
const STAGING_BYTES: u64 = 64 << 20;

impl Gpu {
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
                Role::Staging,
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
    pub(super) fn upload(&self, pool: &mut Pool, role: Role, bytes: &[u8]) -> wgpu::Buffer {
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
            let logits_buffer = self.upload(pool, Role::UploadLogits, logits.bytes());
            let target_bytes: &[u8] = match targets {
                Targets::I32(t) => bytemuck::cast_slice(t),
                Targets::I64(t) => bytemuck::cast_slice(t),
                Targets::Dense(t) => bytemuck::cast_slice(t),
            };
            let targets_buffer = self.upload(pool, Role::UploadTargets, target_bytes);
            let weights_buffer = class_weights
                .map(|w| self.upload(pool, Role::UploadWeights, bytemuck::cast_slice(w)));
            let pos_weight_buffer = pos_weight
                .map(|w| self.upload(pool, Role::UploadPosWeight, bytemuck::cast_slice(w)));
            let sample_weights_buffer = sample_weights
                .map(|w| self.upload(pool, Role::UploadSampleWeights, bytemuck::cast_slice(w)));
            let per_item_upstream = plan.reduction == Reduction::None;
            let upstream_buffer = request
                .upstream
                .filter(|_| per_item_upstream)
                .map(|u| self.upload(pool, Role::UploadUpstream, bytemuck::cast_slice(u)));
            let loss_buffer = pool.get(&self.device, Role::Loss, 16, storage_usage());
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
                pool.get(&self.device, Role::RowsOut, bytes, storage_usage())
            });
            let grad_buffer = matches!(request.gradient, Gradient::Into(_)).then(|| {
                pool.get(
                    &self.device,
                    Role::Gradient,
                    elements as u64 * 4,
                    storage_usage(),
                )
            });
            // The pool's buffers, each from byte 0 (they may be larger than the call's data).
            fn whole(b: &wgpu::Buffer) -> wgpu::BufferSlice<'_> {
                b.slice(..)
            }
            let device_batch = DeviceBatch {
                logits: logits_buffer.slice(..),
                dtype,
                rows,
                classes,
                layout: plan.layout,
                targets: match targets {
                    Targets::I32(_) => DeviceTargets::I32(whole(&targets_buffer)),
                    Targets::I64(_) => DeviceTargets::I64(whole(&targets_buffer)),
                    Targets::Dense(_) => DeviceTargets::Dense(whole(&targets_buffer)),
                },
                class_weights: weights_buffer.as_ref().map(whole),
                pos_weight: pos_weight_buffer.as_ref().map(whole),
                sample_weights: sample_weights_buffer.as_ref().map(whole),
            };
            let outputs = DeviceOutputs {
                loss: loss_buffer.slice(..),
                rows: rows_buffer.as_ref().map(whole),
                gradient: match (&grad_buffer, in_place) {
                    (Some(g), _) => DeviceGradient::Into(g.slice(..)),
                    (None, true) => DeviceGradient::InPlace,
                    (None, false) => DeviceGradient::None,
                },
                upstream: upstream_buffer.as_ref().map(whole),
                upstream_scalar: plan.upstream_scalar,
                target_error: None,
                saved: None,
            };
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("xent call"),
                });
            let error = pool.get(&self.device, HOST_CALL_ERROR, 16, storage_usage());
            encoder.clear_buffer(&error, 0, None);
            super::schedule::record(
                self,
                pool,
                &mut encoder,
                plan.loss,
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
                        output.metrics = Some(metrics(&records));
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
}

/// The metrics of the softmax rows pass's per-row records.
pub(super) fn metrics(records: &[GpuRow]) -> Metrics {
    Metrics {
        argmax: records.iter().map(|r| r.argmax).collect(),
        correct: records.iter().map(|r| r.flags & 2 != 0).collect(),
        target_prob: records.iter().map(|r| r.target_prob).collect(),
        entropy: records.iter().map(|r| r.entropy).collect(),
        confidence: records.iter().map(|r| r.confidence).collect(),
        valid: records.iter().map(|r| r.flags & 1 != 0).collect(),
    }
}
