//! The decisions of one GPU call, taken once from the loss, the batch's shape and the
//! adapter's limits: how the rows are cut to fit a storage binding, the launch shape, fused or
//! three-pass, rows longer than a binding in pieces, focal loss's second pass, what the
//! reduction reduces. The GPU schedule (`gpu/schedule/`) records launches from a
//! [`GpuCall`] and decides nothing; what cannot run on the adapter is refused here.

use super::Loss;
use crate::error::{Error, Result};
use crate::gpu::launch::{
    binding_room, chunks, flat_pieces, fused_owns_half_words, fused_rows_per_invocation,
    fused_shape, launch_shape, row_pieces, sum_slots, Chunk, LaunchShape, Piece, SHORT_TILE_ROWS,
};
use crate::gpu::pipelines::Store;
use crate::gpu::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets};
use crate::input::Layout;
use crate::options::Reduction;

/// What of the adapter (and the `Gpu`'s options) the decisions depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adapter {
    /// Largest storage binding, bytes.
    pub max_binding: u64,
    /// Storage buffer offset alignment, bytes.
    pub storage_alignment: u64,
    /// The fused single-read softmax kernel may be used.
    pub fused: bool,
}

/// One call's decisions.
#[derive(Debug, Clone)]
pub(crate) struct GpuCall {
    pub rows: usize,
    pub classes: usize,
    pub layout: Layout,
    /// Softmax cross-entropy (else BCE).
    pub softmax: bool,
    /// Bytes of one logit.
    pub elem: u64,
    /// Dense targets (soft targets, or BCE's).
    pub dense: bool,
    /// Where the gradient goes (`Store::None`: loss only, through the fused kernel).
    pub store: Store,
    /// The three-pass launch shape (splits per row, invocations per row).
    pub shape: LaunchShape,
    /// The fused kernel's shape, when the call takes it.
    pub fused: Option<LaunchShape>,
    /// Rows each invocation of the fused kernel and its targets pass owns, their sums in one
    /// reduction slot (`launch::fused_rows_per_invocation`); 1 elsewhere.
    pub rows_per_invocation: u32,
    /// Runs of whole rows that fit a binding.
    pub chunks: Vec<Chunk>,
    /// Rows longer than a binding (even 4 of them).
    pub long_rows: bool,
    /// Long rows: the partials pass's pieces (whole splits of a row) and the backward's runs
    /// of elements.
    pub pieces: Vec<Piece>,
    pub runs: Vec<(u64, u64)>,
    /// Focal loss with smoothing or soft targets: the focal pass runs after rows.
    pub focal_all: bool,
    pub reduction: Reduction,
    /// Inputs of the reduction's first pass: rows (softmax; slots of several rows, see
    /// `rows_per_invocation`) or groups of 4 elements (BCE).
    pub reduce_items: u64,
    /// The fused kernel waits for a targets pass: with a gradient, index targets checked (loss
    /// only, the fused kernel checks them itself), and with the mean `D` and `Σ s` reduced
    /// first (the gradient is scaled by them).
    pub targets_first: bool,
    /// The targets pass's sums are reduced before the fused kernel (see `targets_first`).
    pub reduce_first: bool,
    /// The three-pass backward runs after the reduction.
    pub backward: bool,
    /// An output shares a buffer with an input: every kernel's writable variant.
    pub writable: bool,
}

impl GpuCall {
    /// Checks the call's buffers against its shape ([`super::device::check`]) and takes its
    /// decisions, or refuses what the adapter's bindings cannot hold.
    pub(crate) fn new(
        job: Loss,
        batch: &DeviceBatch,
        out: &DeviceOutputs,
        adapter: Adapter,
    ) -> Result<GpuCall> {
        let writable = super::device::check(batch, out, &job, adapter.storage_alignment)?;
        let (rows, classes, layout) = (batch.rows, batch.classes, batch.layout);
        let softmax = matches!(job, Loss::Softmax(_));
        let elem = batch.dtype.size() as u64;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        let gradient = !matches!(out.gradient, DeviceGradient::None);
        // Dense targets, a separate gradient and BCE's element outputs are f32 windows in the
        // logits' layout: the chunks must fit those too.
        let f32_gradient = match out.gradient {
            DeviceGradient::Into(_) => true,
            DeviceGradient::IntoLogitsDtype(_) => elem == 4,
            _ => false,
        };
        let f32_windows = dense || f32_gradient || !softmax;
        let bytes_per_element = if f32_windows { 4 } else { elem };
        let Adapter {
            max_binding,
            storage_alignment,
            ..
        } = adapter;
        let cut = |row_multiple| {
            chunks(
                rows,
                classes,
                layout,
                bytes_per_element,
                max_binding,
                storage_alignment,
                row_multiple,
            )
        };
        let mut chunked = cut(4);
        // Rows too long for a binding (even 4 of them): softmax over contiguous rows binds each
        // row a piece of whole splits at a time, and the backward a run of elements at a time.
        let long_rows = chunked.is_none();
        if long_rows && (layout != Layout::Rows || !softmax) {
            return Err(Error::Unsupported(format!(
                "rows of {} bytes are bound at least four at a time (whole samples of the (N, C, d…) layout), \
                 and that is larger than the device's storage binding limit ({max_binding} bytes)",
                classes as u64 * bytes_per_element,
            )));
        }
        if batch.class_weights.is_some() && classes as u64 * 4 > max_binding {
            return Err(Error::Unsupported(format!(
                "class weights for {classes} classes are larger than the device's storage binding limit ({max_binding} bytes)"
            )));
        }
        let focal_all = match job {
            Loss::Softmax(o) => super::needs_focal_pass(&o, dense),
            Loss::Binary(_) => false,
        };
        if long_rows && focal_all {
            return Err(Error::Unsupported(format!(
                "focal loss with smoothing or soft targets on rows longer than the storage binding limit ({max_binding} bytes)"
            )));
        }
        let room = binding_room(max_binding, storage_alignment);
        let mut shape = launch_shape(rows, classes, layout);
        if long_rows {
            shape = shape.fitting(classes, bytes_per_element, room);
        }
        // Half-precision words written in place or into a separate buffer: where two rows share
        // a word, the fused kernel needs both in one workgroup (`fused_owns_half_words`).
        let half_words = elem == 2
            && matches!(
                out.gradient,
                DeviceGradient::InPlace | DeviceGradient::IntoLogitsDtype(_)
            );
        // One read per logit when the row fits the fused kernel (its header lists the
        // exclusions), with the fused kernel's own invocations per row; loss only, too.
        let fused = fused_shape(classes, layout).filter(|&f| {
            softmax
                && adapter.fused
                // A saving forward fuses loss only (the backward is a later call).
                && (out.saved.is_none() || !gradient)
                && !long_rows
                && !focal_all
                && (!half_words || fused_owns_half_words(f, classes, layout))
        });
        // Invocations that own several rows share a reduction slot between chunks unless the
        // chunks are whole tiles of them; where a binding holds no tile, one row each.
        let mut rows_per_invocation = fused.map_or(1, |f| fused_rows_per_invocation(f, rows));
        if rows_per_invocation > 1 {
            match cut(SHORT_TILE_ROWS) {
                Some(c) if c.iter().all(|c| c.row0 % SHORT_TILE_ROWS == 0) => chunked = Some(c),
                _ => rows_per_invocation = 1,
            }
        }
        let store = match out.gradient {
            DeviceGradient::InPlace => Store::InPlace,
            DeviceGradient::IntoLogitsDtype(_) if elem == 2 => Store::SeparateHalf,
            DeviceGradient::None if fused.is_some() && out.saved.is_some() => Store::Save,
            DeviceGradient::None if fused.is_some() => Store::None,
            _ => Store::Separate,
        };
        let (pieces, runs) = if long_rows {
            (
                row_pieces(rows, shape, bytes_per_element, room),
                flat_pieces(rows as u64 * classes as u64, bytes_per_element, room),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let reduction = job.reduction();
        let reduce_first = fused.is_some() && gradient && reduction == Reduction::Mean;
        Ok(GpuCall {
            rows,
            classes,
            layout,
            softmax,
            elem,
            dense,
            store,
            shape,
            fused,
            rows_per_invocation,
            chunks: chunked.unwrap_or_else(|| vec![Chunk { row0: 0, rows }]),
            long_rows,
            pieces,
            runs,
            focal_all,
            reduction,
            reduce_items: if softmax {
                let invocations_per_row = fused.map_or(1, |f| f.invocations_per_row);
                sum_slots(rows, invocations_per_row, rows_per_invocation)
            } else {
                (rows as u64 * classes as u64).div_ceil(4)
            },
            // Loss only, the fused kernel checks index targets itself.
            targets_first: fused.is_some() && (reduce_first || (!dense && !store.loss_only())),
            reduce_first,
            backward: softmax && fused.is_none() && gradient,
            writable,
        })
    }
}
