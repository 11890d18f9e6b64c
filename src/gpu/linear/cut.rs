//! How a linear call is cut to fit the device's storage bindings.

use super::{TILE_ROWS, WORKGROUPS};
use crate::error::{Error, Result};
use crate::gpu::abi::Params;
use crate::gpu::abi::{COEF_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};

/// How a call is cut to fit the device's storage bindings: chunks of rows (multiples of the
/// tile's 64 rows, so every per-row window starts 256-byte aligned) and pieces of whole
/// splits of `W` (multiples of 64 columns, likewise), with the split width.
pub(super) struct Pieces {
    /// Columns per split (a multiple of 64).
    pub(super) span: usize,
    /// Splits of the vocabulary.
    pub(super) splits: usize,
    /// (first row, rows) of each row chunk.
    pub(super) row_chunks: Vec<(usize, usize)>,
    /// (first split, splits) of each piece of `W`.
    pub(super) split_pieces: Vec<(usize, usize)>,
}

/// One piece of `W`: its first split, its splits, and its columns `(first, count)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    split0: usize,
    splits: usize,
    pub(super) columns: (usize, usize),
}

impl Piece {
    /// The `Params` block and grid of a split pass over this piece for a chunk of `rows` rows.
    pub(super) fn launch(self, base: Params, rows: usize) -> (Params, (u32, u32, u32)) {
        let params = Params {
            rows: rows as u32,
            split0: self.split0 as u32,
            col0: self.columns.0 as u32,
            ..base
        };
        (
            params,
            (rows.div_ceil(TILE_ROWS) as u32, self.splits as u32, 1),
        )
    }
}

impl Pieces {
    /// The pieces of `W` of a vocabulary of `v`, in order.
    pub(super) fn pieces(&self, v: usize) -> impl Iterator<Item = Piece> + '_ {
        self.split_pieces.iter().map(move |&(split0, splits)| {
            let c0 = split0 * self.span;
            Piece {
                split0,
                splits,
                columns: (c0, (splits * self.span).min(v - c0)),
            }
        })
    }

    /// `element`: bytes per value of h and W as bound; `most_rows`: at most this many rows a
    /// chunk (the chunked strategy's groups; a multiple of 64, or all).
    pub(super) fn new(
        (n, d, v): (usize, usize, usize),
        element: u64,
        max_binding: u64,
        most_rows: Option<usize>,
    ) -> Result<Pieces> {
        let too_large = |what: &str| {
            Error::Unsupported(format!(
                "the GPU's linear head needs 64 {what} in one storage binding of {max_binding} \
                 bytes; this hidden size or vocabulary does not fit"
            ))
        };
        let fit = |per: u64| (max_binding / per.max(1)) as usize / TILE_ROWS * TILE_ROWS;
        // Columns of W one binding holds, in whole tiles.
        let piece_columns = fit(d as u64 * element);
        if piece_columns == 0 {
            return Err(too_large("rows of the weight"));
        }
        // About WORKGROUPS workgroups a dispatch: wide splits for many rows, narrow for few
        // (a chunked call's dispatches take one group of rows each).
        let row_tiles = n.min(most_rows.unwrap_or(n)).div_ceil(TILE_ROWS).max(1);
        let wanted = WORKGROUPS
            .div_ceil(row_tiles)
            .clamp(1, v.div_ceil(TILE_ROWS).max(1));
        // Not so many splits that 64 rows of partials outgrow a binding.
        let most_splits = (max_binding / (TILE_ROWS as u64 * PARTIAL_BYTES)) as usize;
        if most_splits == 0 {
            return Err(too_large("rows of partials"));
        }
        let narrowest = v.div_ceil(most_splits).next_multiple_of(TILE_ROWS);
        if narrowest > piece_columns {
            return Err(too_large("rows of the weight and of partials"));
        }
        let span = v
            .div_ceil(wanted)
            .next_multiple_of(TILE_ROWS)
            .clamp(narrowest.max(TILE_ROWS), piece_columns);
        let splits = v.div_ceil(span).max(1);
        let per_piece = (piece_columns / span).max(1);
        let split_pieces = (0..splits)
            .step_by(per_piece)
            .map(|s| (s, per_piece.min(splits - s)))
            .collect();
        // Rows one binding holds of h, of the partials and of the row records.
        let per_row = (d as u64 * element)
            .max(splits as u64 * PARTIAL_BYTES)
            .max(ROW_BYTES);
        // The reduction and the target check bind every row's sums at once.
        if n as u64 * ROW_SUM_BYTES > max_binding {
            return Err(Error::Unsupported(format!(
                "the GPU's linear head reduces {n} rows' sums in one storage binding of \
                 {max_binding} bytes; split the batch"
            )));
        }
        let chunk_rows = fit(per_row).min(most_rows.unwrap_or(usize::MAX));
        if chunk_rows == 0 {
            return Err(too_large("rows of hidden states or partials"));
        }
        let row_chunks = (0..n)
            .step_by(chunk_rows)
            .map(|r| (r, chunk_rows.min(n - r)))
            .collect();
        Ok(Pieces {
            span,
            splits,
            row_chunks,
            split_pieces,
        })
    }
}

/// The backward's cut: vocabulary chunks (as wide as a binding holds of `G`, of `W`'s and
/// `dW`'s rows, at most 4096 columns, in multiples of 64) and, inside each, groups of rows (as
/// many as a binding holds of `h`, `dh` and 64 columns of `G`, in multiples of 64).
pub(super) struct Backward {
    /// The chunked strategy: each group's logits stored by the forward (`FLAG_STORED_LOGITS`),
    /// chunk-major in a `group_rows × V` block, its groups the forward's row chunks.
    pub(super) stored: bool,
    /// Columns of the widest chunk.
    pub(super) width: usize,
    /// Bytes of the block of `G` (or of the stored logits) the pool holds.
    pub(super) block_bytes: u64,
    /// (first column, columns) of each chunk, in vocabulary order.
    pub(super) chunks: Vec<(usize, usize)>,
    /// (first row, rows) of each group, in row order.
    pub(super) groups: Vec<(usize, usize)>,
}

impl Backward {
    /// `stored`: the chunked strategy's rows per group (from [`chunked_rows`]).
    pub(super) fn new(
        (n, d, v): (usize, usize, usize),
        element: u64,
        max_binding: u64,
        stored: Option<usize>,
    ) -> Result<Backward> {
        let refuse = |what: &str| {
            Error::Unsupported(format!(
                "the GPU's linear backward needs {what} in one storage binding of \
                 {max_binding} bytes; use Backend::Cpu for this call"
            ))
        };
        let fit = |per: u64| (max_binding / per.max(1)) as usize / TILE_ROWS * TILE_ROWS;
        let per_row = (d as u64 * 4).max(d as u64 * element).max(COEF_BYTES);
        let group_rows = stored.unwrap_or_else(|| {
            fit(per_row)
                .min(fit(TILE_ROWS as u64 * 4))
                .min(n.next_multiple_of(TILE_ROWS).max(TILE_ROWS))
        });
        if group_rows == 0 {
            return Err(refuse("64 rows of the hidden states and of G"));
        }
        let per_column = (group_rows as u64 * 4)
            .max(d as u64 * element)
            .max(d as u64 * 4);
        let width = fit(per_column).min(4096);
        if width == 0 {
            return Err(refuse("64 columns of G and of W"));
        }
        Ok(Backward {
            stored: stored.is_some(),
            width,
            block_bytes: group_rows as u64 * if stored.is_some() { v } else { width } as u64 * 4,
            chunks: (0..v)
                .step_by(width)
                .map(|c| (c, width.min(v - c)))
                .collect(),
            groups: (0..n)
                .step_by(group_rows)
                .map(|r| (r, group_rows.min(n - r)))
                .collect(),
        })
    }
}

/// The chunked strategy's rows per group on this device: `budget_rows` (the plan's rows of
/// logits within the scratch budget) down to whole tiles of 64 (at least one) unless they
/// cover all `n`, and no more than one binding holds of the group's logits, `h`, `dh`, the
/// partials and the row records. Where 64 rows of them outgrow a binding: `None` when `Auto`
/// chose the strategy (the fused one runs), else refused.
pub(super) fn chunked_rows(
    (n, d, v): (usize, usize, usize),
    element: u64,
    max_binding: u64,
    (budget_rows, auto): (usize, bool),
) -> Result<Option<usize>> {
    let wanted = match budget_rows >= n {
        true => n,
        false => ((budget_rows / TILE_ROWS).max(1) * TILE_ROWS).min(n),
    };
    // 64 columns of G per row too, for the backward's chunks.
    let per_row = (v.max(TILE_ROWS) as u64 * 4)
        .max(d as u64 * element.max(4))
        .max(COEF_BYTES)
        .max(ROW_BYTES);
    let fits = (max_binding / per_row) as usize / TILE_ROWS * TILE_ROWS;
    if fits == 0 && wanted > (max_binding / per_row) as usize {
        if auto {
            return Ok(None);
        }
        return Err(Error::Unsupported(format!(
            "the GPU's chunked linear head holds 64 rows of {v} f32 logits (and of h, dh) in one \
             storage binding of {max_binding} bytes; use Strategy::Fused for this vocabulary"
        )));
    }
    Ok(Some(match wanted <= fits || fits == 0 {
        true => wanted,
        false => fits,
    }))
}
