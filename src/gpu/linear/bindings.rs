//! Every range a linear call binds, whoever owns its buffer: the caller's slices (a recorded
//! call) or the pool's uploads (a host-slice call), and the pool's scratch for both.

use super::cut::{Backward, Pieces};
use crate::gpu::abi::{COEF_BYTES, FOCAL_SUM_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};
pub(super) use crate::gpu::encode::Region;
use crate::gpu::encode::{storage_usage, Window};
use crate::gpu::pipelines::{TargetLoad, WORKGROUP_SIZE};
use crate::gpu::pool::{Pool, Role};

/// A gradient's destination: written over, or added to.
pub(super) struct Destination {
    pub(super) region: Region,
    pub(super) adds: bool,
}

/// The pool's scratch of one call: the forward's per-row state, the reduction's, the
/// backward's `G` block, and stand-in words bound where an optional input or output is absent
/// (two: a dispatch may not bind one buffer both read-only and writable).
pub(super) struct Scratch {
    pub(super) stand_in: Region,
    pub(super) sink: Region,
    pub(super) partials: Region,
    pub(super) target_logits: Region,
    pub(super) row_sums: Region,
    pub(super) coefficients: Region,
    pub(super) ping: Region,
    pub(super) pong: Region,
    /// The reduced `(ce, z, D, Σs)`: the mean's denominators for the backward.
    pub(super) totals: Region,
    /// Focal loss with smoothing: the focal sums of each (row, split).
    pub(super) focal_partials: Option<Region>,
    /// `G` of one (vocabulary chunk, group of rows); the chunked strategy's stored logits of a
    /// group of rows.
    pub(super) block: Option<Region>,
    /// The row order of each window of rows (`linear_compact.wgsl`): a count, then a row and
    /// its target per row, u32, the windows one after another.
    pub(super) row_order: Region,
}

impl Scratch {
    /// The scratch of a call of `n` rows cut by `pieces` (and `backward`).
    pub(super) fn take(
        device: &wgpu::Device,
        pool: &mut Pool,
        n: usize,
        (pieces, backward): (&Pieces, Option<&Backward>),
        focal: bool,
    ) -> Scratch {
        let mut get =
            |role, bytes: u64| Region::whole(&pool.get(device, role, bytes, storage_usage()));
        let (n, splits) = (n as u64, pieces.splits as u64);
        // Windows of the forward's chunks or of the backward's groups (which overwrite the
        // forward's orders after the forward): room for the larger count.
        let groups = backward.map_or(0, |back| back.groups.len());
        let windows = pieces.row_chunks.len().max(groups) as u64;
        let per_pass = 4 * WORKGROUP_SIZE as u64;
        Scratch {
            // Large enough to stand in for one RowCoef.
            stand_in: get(Role::UnusedInput, COEF_BYTES),
            sink: get(Role::UnusedOutput, 16),
            partials: get(Role::Partials, n * splits * PARTIAL_BYTES),
            target_logits: get(Role::TargetLogits, n * 4),
            row_sums: get(Role::RowSums, n * ROW_SUM_BYTES),
            coefficients: get(Role::Coefficients, n * COEF_BYTES),
            ping: get(Role::ReducePing, n.div_ceil(per_pass) * ROW_SUM_BYTES),
            pong: get(
                Role::ReducePong,
                n.div_ceil(per_pass * per_pass) * ROW_SUM_BYTES,
            ),
            totals: get(Role::Totals, ROW_SUM_BYTES),
            focal_partials: focal.then(|| get(Role::LinearFocalSums, n * splits * FOCAL_SUM_BYTES)),
            block: backward.map(|back| get(Role::LinearBlockGradient, back.block_bytes)),
            row_order: get(Role::LinearRowOrder, (2 * n + windows) * 4),
        }
    }
}

/// Every range a call binds.
pub(super) struct Bindings {
    /// `h` [N × D] and `W` [V × D] (or [D × V]) as the kernels load them (`element` bytes a
    /// value).
    pub(super) hidden: Region,
    pub(super) weight: Region,
    /// `W` and `dW` are stored [D × V]: every kernel binds the whole of them.
    pub(super) weight_transposed: bool,
    /// f32 [V].
    pub(super) bias: Option<Region>,
    /// i32 or i64 [N].
    pub(super) targets: Region,
    pub(super) target_load: TargetLoad,
    /// f32 [V] and [N].
    pub(super) class_weights: Option<Region>,
    pub(super) sample_weights: Option<Region>,
    /// `Reduction::None`: the per-row upstream, f32 [N].
    pub(super) upstream: Option<Region>,
    /// Where out-of-range targets are flagged: `Some` makes the call check them on the device
    /// first (a host call checked them already).
    pub(super) target_error: Option<Region>,
    /// The reduced loss, one f32.
    pub(super) loss: Region,
    /// One `GpuRow` per row.
    pub(super) records: Region,
    /// `dh` [N × D], `dW` [V × D], `db` [V], f32.
    pub(super) hidden_gradient: Option<Destination>,
    pub(super) weight_gradient: Option<Destination>,
    pub(super) bias_gradient: Option<Destination>,
    pub(super) scratch: Scratch,
    /// An output shares a buffer with an input: every kernel's writable variant.
    pub(super) writable: bool,
    /// Bytes per value of `h` and `W` as bound; rows, hidden size, vocabulary.
    pub(super) element: u64,
    pub(super) shape: (usize, usize, usize),
}

impl Bindings {
    /// The first V f32 of a per-class input, or the stand-in when it is absent.
    pub(super) fn per_class<'b>(&'b self, region: &'b Option<Region>) -> Window<'b> {
        match region {
            Some(r) => r.head(self.shape.2 as u64 * 4),
            None => self.stand_in(),
        }
    }

    /// Rows `rows` of a per-row f32 input, or the stand-in when it is absent.
    pub(super) fn per_row<'b>(
        &'b self,
        region: &'b Option<Region>,
        rows: (usize, usize),
    ) -> Window<'b> {
        match region {
            Some(r) if rows.1 > 0 => r.rows(rows, 4),
            _ => self.stand_in(),
        }
    }

    /// The stand-in word (also the launchers' placeholder `params`).
    pub(super) fn stand_in(&self) -> Window<'_> {
        self.scratch.stand_in.head(16)
    }

    /// Rows `rows` of the targets.
    pub(super) fn targets(&self, rows: (usize, usize)) -> Window<'_> {
        let bytes = match self.target_load {
            TargetLoad::I32 => 4,
            _ => 8,
        };
        self.targets.rows(rows, bytes)
    }

    /// Rows `rows` of `h`, and rows `columns` of `W`, as bound.
    pub(super) fn hidden(&self, rows: (usize, usize)) -> Window<'_> {
        self.hidden.rows(rows, self.shape.1 as u64 * self.element)
    }
    pub(super) fn weight(&self, columns: (usize, usize)) -> Window<'_> {
        let (_, d, v) = self.shape;
        match self.weight_transposed {
            true => self.weight.head((d * v) as u64 * self.element),
            false => self.weight.rows(columns, d as u64 * self.element),
        }
    }

    /// Rows `columns` of `dW` (all of it when stored [D × V]).
    pub(super) fn weight_gradient(&self, columns: (usize, usize)) -> Option<Window<'_>> {
        let (_, d, v) = self.shape;
        let dw = self.weight_gradient.as_ref()?;
        Some(match self.weight_transposed {
            true => dw.region.head((d * v) as u64 * 4),
            false => dw.region.rows(columns, d as u64 * 4),
        })
    }

    /// Rows `rows` of the per-row records, sums and coefficients.
    pub(super) fn records(&self, rows: (usize, usize)) -> Window<'_> {
        self.records.rows(rows, ROW_BYTES)
    }
    pub(super) fn row_sums(&self, rows: (usize, usize)) -> Window<'_> {
        self.scratch.row_sums.rows(rows, ROW_SUM_BYTES)
    }
    pub(super) fn coefficients(&self, rows: (usize, usize)) -> Window<'_> {
        self.scratch.coefficients.rows(rows, COEF_BYTES)
    }

    /// The row order, whole: kernels find their window's by `Params::order_base`.
    pub(super) fn row_order(&self) -> Window<'_> {
        self.scratch.row_order.all()
    }
}
