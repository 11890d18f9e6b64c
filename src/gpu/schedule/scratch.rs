//! The scratch buffers of one call, taken from the device's pool (reused across calls, grown
//! as needed): partials, row coefficients, the reduction's ping-pong buffers and totals, and
//! the stand-ins bound where a kernel's optional input or output is absent.

use super::super::abi::{COEF_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};
use super::super::device::DeviceOutputs;
use super::super::encode::{storage_usage, Region};
use super::super::launch::LaunchShape;
use super::super::pipelines::WORKGROUP_SIZE;
use super::super::pool::{Pool, Role};
use crate::error::{Error, Result};

/// The scratch of one call.
pub(super) struct Scratch {
    /// One `Partial` per (row, split) on the three-pass path (else a stand-in).
    pub partials: wgpu::Buffer,
    /// One `RowCoef` per row: the caller's saved rows, or the pool's on the three-pass path
    /// (else a stand-in).
    pub coefs: Region,
    /// Per-row (BCE: per-vec4) sums, the reduction's input.
    pub row_sums: wgpu::Buffer,
    /// The reduction's intermediate passes.
    pub ping: wgpu::Buffer,
    /// See `ping`.
    pub pong: wgpu::Buffer,
    /// The reduced totals (ce, z, D, Σs): the pool's, or the caller's saved totals. A
    /// backward with a device upstream reads (ce, z, D, Σs, upstream) from a pooled block.
    pub totals: Region,
    /// Each row's raw target logit (partials → rows; else a stand-in).
    pub target_logits: wgpu::Buffer,
    /// The out-of-range-target flag: the caller's, or the pool's under `error_role`.
    pub error: Region,
    /// Bound where an optional input is absent.
    pub dummy_read: wgpu::Buffer,
    /// Bound where an optional output is absent.
    pub dummy_write: wgpu::Buffer,
    /// BCE: per-class (weight, pos_weight).
    pub class_params: Option<wgpu::Buffer>,
    /// Softmax per-row records: the caller's, or scratch.
    pub row_out: Region,
}

impl Scratch {
    /// Takes the scratch of a call of `rows × classes` whose reduction has `reduce_items`
    /// inputs; `three_pass`: the shape of its partials and rows passes, when they run (the
    /// fused kernel and a backward alone bind no partials, target logits or, unless saved,
    /// coefficients). Fails when a per-row buffer exceeds `max_binding`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take(
        pool: &mut Pool,
        device: &wgpu::Device,
        (rows, classes): (usize, usize),
        three_pass: Option<LaunchShape>,
        (reduce_items, is_softmax): (u64, bool),
        out: &DeviceOutputs,
        error_role: Role,
        max_binding: u64,
    ) -> Result<Scratch> {
        let per_row_limit = |what: &'static str, bytes: u64| -> Result<()> {
            if bytes > max_binding {
                Err(Error::Unsupported(format!(
                    "{what} for {rows} rows needs {bytes} bytes, over the binding limit {}",
                    max_binding
                )))
            } else {
                Ok(())
            }
        };
        // Rows the three-pass path's per-row scratch holds (the pool's stand-in is 16 bytes).
        let three_pass_rows = three_pass.map_or(0, |_| rows as u64);
        let splits = three_pass.map_or(1, |shape| shape.splits as u64);
        let partial_bytes = three_pass_rows * splits * PARTIAL_BYTES;
        per_row_limit("per-row partials", partial_bytes)?;
        per_row_limit("per-row sums", reduce_items * ROW_SUM_BYTES)?;
        // Bound whole by every softmax call (the fused kernel's saved coefficients too).
        if is_softmax {
            per_row_limit("per-row records", rows as u64 * ROW_BYTES)?;
        }
        per_row_limit("sample weights", rows as u64 * 4)?;
        let partials = pool.get(device, Role::Partials, partial_bytes, storage_usage());
        let coefs = match out.saved {
            Some(saved) => Region::slice(saved.rows),
            None => Region::whole(&pool.get(
                device,
                Role::Coefficients,
                three_pass_rows * COEF_BYTES,
                storage_usage(),
            )),
        };
        let row_sums = pool.get(
            device,
            Role::RowSums,
            reduce_items * ROW_SUM_BYTES,
            storage_usage(),
        );
        let ping = pool.get(
            device,
            Role::ReducePing,
            reduce_items.div_ceil(4 * WORKGROUP_SIZE as u64) * ROW_SUM_BYTES,
            storage_usage(),
        );
        let pong = pool.get(
            device,
            Role::ReducePong,
            reduce_items.div_ceil(16 * WORKGROUP_SIZE as u64) * ROW_SUM_BYTES,
            storage_usage(),
        );
        let totals = match out.saved {
            Some(saved) => Region::slice(saved.totals),
            None => Region::whole(&pool.get(device, Role::Totals, 16, storage_usage())),
        };
        let target_logits = pool.get(
            device,
            Role::TargetLogits,
            three_pass_rows * 4,
            storage_usage(),
        );
        let error = match out.target_error {
            Some(flag) => Region::slice(flag),
            None => Region::whole(&pool.get(device, error_role, 16, storage_usage())),
        };
        let dummy_read = pool.get(device, Role::UnusedInput, 16, storage_usage());
        let dummy_write = pool.get(device, Role::UnusedOutput, 16, storage_usage());
        let class_params = (!is_softmax).then(|| {
            pool.get(
                device,
                Role::BceClassParams,
                classes as u64 * 8,
                storage_usage(),
            )
        });
        let row_out = match out.rows {
            Some(r) if is_softmax => Region::slice(r),
            _ => Region::whole(&pool.get(
                device,
                Role::RowsOut,
                rows as u64 * ROW_BYTES,
                storage_usage(),
            )),
        };

        Ok(Scratch {
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
        })
    }
}
