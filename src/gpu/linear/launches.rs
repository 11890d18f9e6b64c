//! The dispatches of a linear call, in order: the forward's per row chunk and piece of `W`,
//! the backward's per vocabulary chunk and group of rows.

use super::buffers::Buffers;
use super::cut::{Backward, Pieces};
use super::TILE_ROWS;
use crate::gpu::abi::binding::PARAMS;
use crate::gpu::abi::{
    Params, ReductionCode, COEF_BYTES, FLAG_ADD, FLAG_UPSTREAM, FOCAL_SUM_BYTES, PARTIAL_BYTES,
    ROW_BYTES, ROW_SUM_BYTES,
};
use crate::gpu::encode::{grid, Window};
use crate::gpu::launchers::{
    LinearFocal, LinearFocalRows, LinearGradient, LinearHiddenGradient, LinearPartials,
    LinearWeightGradient, Rows,
};
use crate::gpu::pipelines::Kernel;

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

/// The forward's launches: per row chunk, `linear_partials` per piece of `W`, then the rows
/// pass. Every per-row window starts at the chunk's first row (`row0` stays 0).
pub(super) fn forward_launches<'a>(
    b: &'a Buffers,
    pieces: &Pieces,
    base: Params,
) -> Vec<Launch<'a>> {
    let (_, _, v) = b.shape;
    let splits = pieces.splits as u64;
    let placeholder = b.stand_in();
    let mut launches = Vec::new();
    for &chunk in &pieces.row_chunks {
        let rows = chunk.1;
        let targets = Buffers::rows_of(&b.targets, chunk, 8);
        let partials = Buffers::rows_of(&b.partials, chunk, splits * PARTIAL_BYTES);
        let target_logits = Buffers::rows_of(&b.target_logits, chunk, 4);
        for piece in pieces.pieces(v) {
            let forward = LinearPartials {
                params: placeholder,
                targets,
                class_weights: b.or_stand_in(&b.class_weights),
                partials,
                target_logits,
                hidden: b.hidden(chunk),
                head_weight: b.weight(piece.columns),
                head_bias: b.or_stand_in(&b.bias),
            };
            let (params, groups) = piece.launch(base, rows);
            launches.push(Launch::new(
                Kernel::LinearPartials,
                params,
                forward.entries(),
                groups,
            ));
        }
        let finish = Rows {
            params: placeholder,
            targets,
            class_weights: b.or_stand_in(&b.class_weights),
            partials,
            rows: Buffers::rows_of(&b.rows, chunk, ROW_BYTES),
            row_sums: Buffers::rows_of(&b.row_sums, chunk, ROW_SUM_BYTES),
            coefficients: Buffers::rows_of(&b.coefficients, chunk, COEF_BYTES),
            sample_weights: match &b.sample_weights {
                Some(s) => Buffers::rows_of(s, chunk, 4),
                None => placeholder,
            },
            target_logits,
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
        if let Some(focal) = &b.focal_partials {
            let focal_partials = Buffers::rows_of(focal, chunk, splits * FOCAL_SUM_BYTES);
            for piece in pieces.pieces(v) {
                let sums = LinearFocal {
                    params: placeholder,
                    class_weights: b.or_stand_in(&b.class_weights),
                    coefficients: Buffers::rows_of(&b.coefficients, chunk, COEF_BYTES),
                    hidden: b.hidden(chunk),
                    head_weight: b.weight(piece.columns),
                    head_bias: b.or_stand_in(&b.bias),
                    focal_partials,
                };
                let (params, groups) = piece.launch(base, rows);
                launches.push(Launch::new(
                    Kernel::LinearFocal,
                    params,
                    sums.entries(),
                    groups,
                ));
            }
            let finish = LinearFocalRows {
                params: placeholder,
                rows: Buffers::rows_of(&b.rows, chunk, ROW_BYTES),
                row_sums: Buffers::rows_of(&b.row_sums, chunk, ROW_SUM_BYTES),
                coefficients: Buffers::rows_of(&b.coefficients, chunk, COEF_BYTES),
                focal_partials,
            };
            let params = Params {
                rows: rows as u32,
                ..base
            };
            launches.push(Launch::new(
                Kernel::LinearFocalRows,
                params,
                finish.entries(),
                (x, y, 1),
            ));
        }
    }
    launches
}

/// The backward's launches: per vocabulary chunk in order, per group of rows in order, `G`,
/// then the chunk's `dW` and `db` (added over groups), then `dh` (added over chunks).
pub(super) fn backward_launches<'a>(
    b: &'a Buffers,
    back: &Backward,
    base: Params,
) -> Vec<Launch<'a>> {
    let Some([g, dh, dw, db]) = &b.gradients else {
        return Vec::new();
    };
    let (_, d, _) = b.shape;
    let placeholder = b.stand_in();
    let per_row_upstream =
        base.reduction == ReductionCode::None as u32 && base.flags & FLAG_UPSTREAM != 0;
    let add = |later: bool| if later { FLAG_ADD } else { 0 };
    let hidden_tiles = (d.div_ceil(TILE_ROWS) as u32).max(1);
    let mut launches = Vec::new();
    for (chunk, &(c0, width)) in back.chunks.iter().enumerate() {
        let column_tiles = width.div_ceil(TILE_ROWS) as u32;
        for (index, &group) in back.groups.iter().enumerate() {
            let rows = group.1;
            let row_tiles = rows.div_ceil(TILE_ROWS) as u32;
            let g_window = Window::head(g, rows as u64 * width as u64 * 4);
            let params = Params {
                rows: rows as u32,
                col0: c0 as u32,
                span: width as u32,
                ..base
            };
            let recompute = LinearGradient {
                params: placeholder,
                gradient: g_window,
                class_weights: b.or_stand_in(&b.class_weights),
                coefficients: Buffers::rows_of(&b.coefficients, group, COEF_BYTES),
                scale_source: b.scale_source(group, per_row_upstream),
                hidden: b.hidden(group),
                head_weight: b.weight((c0, width)),
                head_bias: b.or_stand_in(&b.bias),
            };
            let groups = (row_tiles, column_tiles, 1);
            launches.push(Launch::new(
                Kernel::LinearGradient,
                params,
                recompute.entries(),
                groups,
            ));
            let weight = LinearWeightGradient {
                params: placeholder,
                gradient: g_window,
                hidden: b.hidden(group),
                weight_gradient: Buffers::rows_of(dw, (c0, width), d as u64 * 4),
                bias_gradient: Buffers::rows_of(db, (c0, width), 4),
            };
            let params_dw = Params {
                flags: params.flags | add(index > 0),
                ..params
            };
            let groups = (column_tiles, hidden_tiles, 1);
            launches.push(Launch::new(
                Kernel::LinearWeightGradient,
                params_dw,
                weight.entries(),
                groups,
            ));
            let hidden = LinearHiddenGradient {
                params: placeholder,
                gradient: g_window,
                head_weight: b.weight((c0, width)),
                hidden_gradient: Buffers::rows_of(dh, group, d as u64 * 4),
            };
            let params_dh = Params {
                flags: params.flags | add(chunk > 0),
                ..params
            };
            let groups = (row_tiles, hidden_tiles, 1);
            launches.push(Launch::new(
                Kernel::LinearHiddenGradient,
                params_dh,
                hidden.entries(),
                groups,
            ));
        }
    }
    launches
}
