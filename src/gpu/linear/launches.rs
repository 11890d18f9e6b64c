//! The dispatches of a linear call, in order: the device-side target check (recorded calls),
//! the forward's per row chunk and piece of `W`, the fixed-order reduction, the backward's per
//! vocabulary chunk and group of rows.

use super::bindings::{Bindings, Region};
use super::cut::{Backward, Pieces};
use super::TILE_ROWS;
use crate::gpu::abi::binding::PARAMS;
use crate::gpu::abi::{
    Params, ReductionCode, FLAG_ADD, FLAG_ADD_BIAS, FLAG_BIAS_ONLY, FLAG_CHECK_TARGETS,
    FLAG_SKIP_IGNORED, FLAG_STORED_LOGITS, FLAG_UPSTREAM, FLAG_WEIGHT_ONLY, FOCAL_SUM_BYTES,
    PARTIAL_BYTES, ROW_SUM_BYTES,
};
use crate::gpu::encode::{grid, Window};
use crate::gpu::launchers::{
    LinearCompact, LinearFocal, LinearFocalRows, LinearGradient, LinearHiddenGradient,
    LinearPartials, LinearWeightGradient, Reduce, Rows, Targets,
};
use crate::gpu::pipelines::{Kernel, WORKGROUP_SIZE};
use crate::gpu::schedule::{reduce_passes, Stage};

/// One dispatch: its kernel, its `Params` block, the windows it binds besides them, its grid.
pub(super) struct Launch<'a> {
    pub(super) kernel: Kernel,
    pub(super) params: Params,
    pub(super) windows: Vec<(u32, Window<'a>)>,
    pub(super) groups: (u32, u32, u32),
}

impl<'a> Launch<'a> {
    /// `windows` are a launcher's entries; its `params` window (a placeholder) is dropped.
    fn new(
        kernel: Kernel,
        params: Params,
        windows: Vec<(u32, Window<'a>)>,
        groups: (u32, u32, u32),
    ) -> Self {
        let windows = windows.into_iter().filter(|(b, _)| *b != PARAMS).collect();
        Launch {
            kernel,
            params,
            windows,
            groups,
        }
    }
}

/// A recorded call's target check: every row's index target, out-of-range ones flagged (they
/// count as ignored in every pass after it). One dispatch over all rows, so the flag names the
/// global row. With `denominators` (a host call's chunked mean, which needs them before its
/// first gradient) it runs without a check too; either way a mean's rows get their terms of
/// the denominators, `s·(0, 0, w[y], 1)`.
pub(super) fn target_check(b: &Bindings, base: Params, denominators: bool) -> Option<Launch<'_>> {
    let n = b.shape.0;
    if n == 0 || (b.target_error.is_none() && !denominators) {
        return None;
    }
    let (error, check_flag) = match &b.target_error {
        Some(error) => (error.head(4), FLAG_CHECK_TARGETS),
        None => (b.scratch.sink.head(16), 0),
    };
    let all = (0, n);
    let check = Targets {
        params: b.stand_in(),
        targets: b.targets(all),
        class_weights: b.per_class(&b.class_weights),
        row_sums: b.row_sums(all),
        target_error: error,
        sample_weights: b.per_row(&b.sample_weights, all),
    };
    let params = Params {
        rows: n as u32,
        flags: base.flags | check_flag,
        ..base
    };
    let (x, y) = grid(n as u64);
    Some(Launch::new(
        Kernel::SoftmaxTargets,
        params,
        check.entries(),
        (x, y, 1),
    ))
}

/// `base` for the `index`-th window of rows (a forward chunk or a backward group, `rows`): where
/// its row order starts (`Params::order_base`: its count at word `2 · first row + index`, then
/// a pair of words per row, so the windows tile the row order).
fn in_window(base: Params, index: usize, rows: (usize, usize)) -> Params {
    Params {
        order_base: (2 * rows.0 + index) as u32,
        ..base
    }
}

/// The row order of a window of rows (`base` from [`in_window`]) and its rows' targets, for
/// every tile kernel over the window after it: the rows that count first with
/// `FLAG_SKIP_IGNORED`, else row order (the forward reads its targets there all the same).
fn compact(b: &Bindings, base: Params, rows: (usize, usize)) -> Option<Launch<'_>> {
    if rows.1 == 0 {
        return None;
    }
    let order = LinearCompact {
        params: b.stand_in(),
        targets: b.targets(rows),
        row_order: b.row_order(),
    };
    let params = Params {
        rows: rows.1 as u32,
        ..base
    };
    // Compacting scans the window in one workgroup; otherwise a row per invocation.
    let groups = match base.flags & FLAG_SKIP_IGNORED {
        0 => grid(rows.1 as u64),
        _ => (1, 1),
    };
    Some(Launch::new(
        Kernel::LinearCompact,
        params,
        order.entries(),
        (groups.0, groups.1, 1),
    ))
}

/// The forward's launches: per row chunk, its row order (`compact`), `linear_partials` per
/// piece of `W`, then the rows pass (and the focal passes). Every per-row window starts at the
/// chunk's first row (`row0` stays 0).
pub(super) fn forward_launches<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    base: Params,
) -> Vec<Launch<'a>> {
    let chunks = pieces.row_chunks.iter().enumerate();
    chunks
        .flat_map(|(i, &chunk)| chunk_forward(b, pieces, chunk, in_window(base, i, chunk), None))
        .collect()
}

/// The forward of one row chunk (`base` from [`in_window`]); `stored`: the chunked strategy's
/// block for its logits and the columns of each of its chunks.
fn chunk_forward<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    chunk: (usize, usize),
    base: Params,
    stored: Option<(Window<'a>, usize)>,
) -> Vec<Launch<'a>> {
    let splits = pieces.splits as u64;
    let placeholder = b.stand_in();
    let s = &b.scratch;
    let mut launches = Vec::new();
    let rows = chunk.1;
    launches.extend(compact(b, base, chunk));
    launches.extend(partials_launches(b, pieces, chunk, base, stored));
    let finish = Rows {
        params: placeholder,
        targets: b.targets(chunk),
        class_weights: b.per_class(&b.class_weights),
        partials: s.partials.rows(chunk, splits * PARTIAL_BYTES),
        rows: b.records(chunk),
        row_sums: b.row_sums(chunk),
        coefficients: b.coefficients(chunk),
        sample_weights: b.per_row(&b.sample_weights, chunk),
        target_logits: s.target_logits.rows(chunk, 4),
    };
    let params = Params {
        rows: rows as u32,
        ..base
    };
    let (x, y) = grid(rows as u64);
    launches.push(Launch::new(
        Kernel::SoftmaxRows,
        params,
        finish.entries(),
        (x, y, 1),
    ));
    if let Some(focal) = &s.focal_partials {
        launches.extend(focal_launches(b, pieces, chunk, base, stored));
        let finish = LinearFocalRows {
            params: placeholder,
            rows: b.records(chunk),
            row_sums: b.row_sums(chunk),
            coefficients: b.coefficients(chunk),
            focal_partials: focal.rows(chunk, splits * FOCAL_SUM_BYTES),
        };
        launches.push(Launch::new(
            Kernel::LinearFocalRows,
            params,
            finish.entries(),
            (x, y, 1),
        ));
    }
    launches
}

/// The window and `Params` of a kernel that writes or reads the chunked strategy's `stored`
/// logits (the sink and `base` without them).
fn stored_logits<'a>(
    b: &'a Bindings,
    base: Params,
    stored: Option<(Window<'a>, usize)>,
) -> (Window<'a>, Params) {
    match stored {
        Some((block, columns)) => (
            block,
            Params {
                flags: base.flags | FLAG_STORED_LOGITS,
                block_columns: columns as u32,
                ..base
            },
        ),
        None => (b.scratch.sink.head(16), base),
    }
}

/// What a vocabulary shard's call dispatches over every row chunk and piece of `W`.
#[derive(Debug, Clone, Copy)]
pub(super) enum ShardPass {
    /// `shard_partials`: `linear_partials`, nothing after it.
    Partials,
    /// `shard_focal`: `linear_focal` from the combined rows' coefficients.
    Focal,
}

/// A vocabulary shard's dispatches of `pass`, chunk by chunk (every row in row order: a shard
/// keeps its ignored rows' partials).
pub(super) fn shard_launches<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    base: Params,
    pass: ShardPass,
) -> Vec<Launch<'a>> {
    debug_assert_eq!(base.flags & FLAG_SKIP_IGNORED, 0);
    let chunks = pieces.row_chunks.iter().enumerate();
    chunks
        .flat_map(|(i, &chunk)| {
            let base = in_window(base, i, chunk);
            match pass {
                ShardPass::Partials => {
                    let order = compact(b, base, chunk);
                    let partials = partials_launches(b, pieces, chunk, base, None);
                    order.into_iter().chain(partials).collect()
                }
                ShardPass::Focal => focal_launches(b, pieces, chunk, base, None),
            }
        })
        .collect()
}

/// `linear_partials` over each piece of `W` for the rows of `chunk` (`stored`: as in
/// `chunk_forward`).
fn partials_launches<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    chunk: (usize, usize),
    base: Params,
    stored: Option<(Window<'a>, usize)>,
) -> Vec<Launch<'a>> {
    let s = &b.scratch;
    let splits = pieces.splits as u64;
    let (logits, base) = stored_logits(b, base, stored);
    pieces
        .pieces(b.shape.2)
        .map(|piece| {
            let forward = LinearPartials {
                params: b.stand_in(),
                class_weights: b.per_class(&b.class_weights),
                partials: s.partials.rows(chunk, splits * PARTIAL_BYTES),
                target_logits: s.target_logits.rows(chunk, 4),
                logits,
                hidden: b.hidden(chunk),
                head_weight: b.weight(piece.columns),
                head_bias: b.per_class(&b.bias),
                row_order: b.row_order(),
            };
            let (params, groups) = piece.launch(base, chunk.1);
            Launch::new(Kernel::LinearPartials, params, forward.entries(), groups)
        })
        .collect()
}

/// `linear_focal` over each piece of `W` for the rows of `chunk` (focal loss with smoothing;
/// `stored`: as in `chunk_forward`, the logits read, not recomputed).
fn focal_launches<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    chunk: (usize, usize),
    base: Params,
    stored: Option<(Window<'a>, usize)>,
) -> Vec<Launch<'a>> {
    let Some(focal) = &b.scratch.focal_partials else {
        return Vec::new();
    };
    let splits = pieces.splits as u64;
    let (logits, base) = stored_logits(b, base, stored);
    pieces
        .pieces(b.shape.2)
        .map(|piece| {
            let sums = LinearFocal {
                params: b.stand_in(),
                logits,
                class_weights: b.per_class(&b.class_weights),
                coefficients: b.coefficients(chunk),
                hidden: b.hidden(chunk),
                head_weight: b.weight(piece.columns),
                head_bias: b.per_class(&b.bias),
                focal_partials: focal.rows(chunk, splits * FOCAL_SUM_BYTES),
                row_order: b.row_order(),
            };
            let (params, groups) = piece.launch(base, chunk.1);
            Launch::new(Kernel::LinearFocal, params, sums.entries(), groups)
        })
        .collect()
}

/// The fixed-order reduction of the rows' sums to the totals (the mean's denominators for the
/// backward) and the loss.
pub(super) fn reduce_launches(b: &Bindings, base: Params) -> Vec<Launch<'_>> {
    let s = &b.scratch;
    let items = b.shape.0 as u64;
    let stage = |stage: Stage, count: u64| -> Window<'_> {
        let region: &Region = match stage {
            Stage::RowSums => &s.row_sums,
            Stage::Ping => &s.ping,
            Stage::Pong => &s.pong,
            Stage::Totals => &s.totals,
        };
        region.head(count.max(1) * ROW_SUM_BYTES)
    };
    reduce_passes(items)
        .into_iter()
        .map(|(count, source, target)| {
            let outputs = count.div_ceil(4 * WORKGROUP_SIZE as u64).max(1);
            let reduce = Reduce {
                params: b.stand_in(),
                input: stage(source, count),
                output: stage(target, outputs),
                loss: b.loss.head(4),
            };
            let params = Params {
                elems: count as u32,
                ..base
            };
            Launch::new(
                Kernel::Reduce,
                params,
                reduce.entries(),
                (outputs as u32, 1, 1),
            )
        })
        .collect()
}

/// The backward's launches: each group's row order (`compact`; the forward's chunks are done
/// with theirs), then per vocabulary chunk in order, per group of rows in order, `G`, then
/// the chunk's `dW` and `db` (added over groups), then `dh` (added over chunks); a gradient
/// not asked for is not computed. A destination that adds takes every launch's sum.
pub(super) fn backward_launches<'a>(
    b: &'a Bindings,
    back: &Backward,
    base: Params,
) -> Vec<Launch<'a>> {
    let Some(g) = &b.scratch.block else {
        return Vec::new();
    };
    // Without rows, dW and db are still written (zeros) by one empty group.
    let groups: &[(usize, usize)] = match b.shape.0 {
        0 => &[(0, 0)],
        _ => &back.groups,
    };
    let mut launches: Vec<Launch<'a>> = Vec::new();
    if base.flags & FLAG_SKIP_IGNORED != 0 {
        let orders = groups.iter().enumerate();
        launches
            .extend(orders.filter_map(|(j, &group)| compact(b, in_window(base, j, group), group)));
    }
    for chunk in back.chunks.iter().enumerate() {
        for group in groups.iter().enumerate() {
            let window = match group.1 .1 {
                0 => b.stand_in(),
                rows => g.head(rows as u64 * chunk.1 .1 as u64 * 4),
            };
            let base = in_window(base, group.0, *group.1);
            launches.extend(block_launches(b, base, chunk, group, window, false));
        }
    }
    launches
}

/// The chunked strategy's launches, group of rows by group: its forward storing the group's
/// logits, then its backward vocabulary chunk by chunk from them (`G` in place, `dW` and `db`
/// added over groups, `dh` added over chunks). A mean's denominators come first (the target
/// check's terms reduced), since the first gradient comes before the last row's loss; the
/// call's reduction follows.
pub(super) fn chunked_launches<'a>(
    b: &'a Bindings,
    pieces: &Pieces,
    back: &Backward,
    base: Params,
) -> Vec<Launch<'a>> {
    let Some(block) = &b.scratch.block else {
        return Vec::new();
    };
    let v = b.shape.2;
    let mut launches = Vec::new();
    let mean = base.reduction == ReductionCode::Mean as u32;
    launches.extend(target_check(b, base, mean));
    if mean {
        launches.extend(reduce_launches(b, base));
    }
    for group in back.groups.iter().enumerate() {
        let rows = group.1 .1;
        let logits = block.head(rows as u64 * v as u64 * 4);
        let stored = Some((logits, back.width));
        let base = in_window(base, group.0, *group.1);
        launches.extend(chunk_forward(b, pieces, *group.1, base, stored));
        for chunk in back.chunks.iter().enumerate() {
            let (c0, width) = *chunk.1;
            let window = block.rows((c0 * rows, width * rows), 4);
            launches.extend(block_launches(b, base, chunk, group, window, true));
        }
    }
    launches.extend(reduce_launches(b, base));
    launches
}

/// One (vocabulary chunk, group of rows) of the backward: `G` into `g_window` (recomputed, or
/// from the logits stored there), the chunk's `dW` and `db` (added after the first group), the
/// group's `dh` (added after the first chunk).
fn block_launches<'a>(
    b: &'a Bindings,
    base: Params,
    (chunk, &(c0, width)): (usize, &(usize, usize)),
    (index, &group): (usize, &(usize, usize)),
    g_window: Window<'a>,
    stored: bool,
) -> Vec<Launch<'a>> {
    let d = b.shape.1;
    let placeholder = b.stand_in();
    let scale_source = |group: (usize, usize)| match base.reduction {
        r if r == ReductionCode::Mean as u32 => b.scratch.totals.head(ROW_SUM_BYTES),
        r if r == ReductionCode::None as u32 && base.flags & FLAG_UPSTREAM != 0 => {
            b.per_row(&b.upstream, group)
        }
        _ => placeholder,
    };
    let sink = b.scratch.sink.head(16);
    let hidden_tiles = (d.div_ceil(TILE_ROWS) as u32).max(1);
    let column_tiles = width.div_ceil(TILE_ROWS) as u32;
    let rows = group.1;
    let row_tiles = rows.div_ceil(TILE_ROWS) as u32;
    let hidden = match rows {
        0 => placeholder,
        _ => b.hidden(group),
    };
    let params = Params {
        rows: rows as u32,
        col0: c0 as u32,
        span: width as u32,
        ..base
    };
    let mut launches = Vec::new();
    if rows > 0 {
        let recompute = LinearGradient {
            params: placeholder,
            gradient: g_window,
            class_weights: b.per_class(&b.class_weights),
            coefficients: b.coefficients(group),
            scale_source: scale_source(group),
            hidden,
            head_weight: b.weight((c0, width)),
            head_bias: b.per_class(&b.bias),
            row_order: b.row_order(),
        };
        let params_g = Params {
            flags: params.flags | if stored { FLAG_STORED_LOGITS } else { 0 },
            ..params
        };
        launches.push(Launch::new(
            Kernel::LinearGradient,
            params_g,
            recompute.entries(),
            (row_tiles, column_tiles, 1),
        ));
    }
    if b.weight_gradient.is_some() || b.bias_gradient.is_some() {
        let dw = b.weight_gradient.as_ref();
        let db = b.bias_gradient.as_ref();
        let weight = LinearWeightGradient {
            params: placeholder,
            gradient: g_window,
            hidden,
            weight_gradient: b.weight_gradient((c0, width)).unwrap_or(sink),
            bias_gradient: db.map_or(sink, |db| db.region.rows((c0, width), 4)),
            row_order: b.row_order(),
        };
        let later = index > 0;
        let mut flags = params.flags;
        for (on, flag) in [
            (dw.is_none(), FLAG_BIAS_ONLY),
            (db.is_none(), FLAG_WEIGHT_ONLY),
            (dw.is_some_and(|g| g.adds) || later, FLAG_ADD),
            (db.is_some_and(|g| g.adds) || later, FLAG_ADD_BIAS),
        ] {
            if on {
                flags |= flag;
            }
        }
        let params_dw = Params { flags, ..params };
        let y = if dw.is_none() { 1 } else { hidden_tiles };
        launches.push(Launch::new(
            Kernel::LinearWeightGradient,
            params_dw,
            weight.entries(),
            (column_tiles, y, 1),
        ));
    }
    if let (Some(dh), true) = (&b.hidden_gradient, rows > 0) {
        let hidden = LinearHiddenGradient {
            params: placeholder,
            gradient: g_window,
            head_weight: b.weight((c0, width)),
            hidden_gradient: dh.region.rows(group, d as u64 * 4),
            row_order: b.row_order(),
        };
        let params_dh = Params {
            flags: params.flags | if dh.adds || chunk > 0 { FLAG_ADD } else { 0 },
            ..params
        };
        launches.push(Launch::new(
            Kernel::LinearHiddenGradient,
            params_dh,
            hidden.entries(),
            (row_tiles, hidden_tiles, 1),
        ));
    }
    launches
}
