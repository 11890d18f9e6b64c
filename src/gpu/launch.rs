//! Launch shapes and row chunks: the one place that decides how work is cut up.

use super::pipelines::{FUSED_VALUES_PER_INVOCATION, WORKGROUP_SIZE};
use crate::input::Layout;

/// How the softmax partials kernel covers the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    /// Invocations per row segment (a power of two, ≤ the workgroup size).
    pub invocations_per_row: u32,
    /// Column splits per row (combined by the rows pass).
    pub splits: u32,
    /// Classes per split (a multiple of 4).
    pub span: u32,
}

/// Elements each invocation should loop over at least, so short rows don't waste lanes.
const ELEMENTS_PER_INVOCATION: usize = 8;
/// Workgroups that keep a large GPU busy; rows are split when there are fewer.
const FILL_WORKGROUPS: usize = 256;
/// Smallest split worth a workgroup of its own.
const MIN_SPLIT: usize = 16 * WORKGROUP_SIZE as usize;

/// The shape for `rows × classes` in `layout`: a few invocations per row for short rows, a
/// workgroup per row for long ones, and column splits when long rows are too few to fill the
/// device. The (N, C, d…) layout uses one invocation per row so neighbours read neighbouring
/// spatial positions.
pub fn launch_shape(rows: usize, classes: usize, layout: Layout) -> LaunchShape {
    let whole = LaunchShape {
        invocations_per_row: 1,
        splits: 1,
        span: classes.next_multiple_of(4) as u32,
    };
    if layout != Layout::Rows {
        return whole;
    }
    let invocations_per_row = classes
        .div_ceil(ELEMENTS_PER_INVOCATION)
        .next_power_of_two()
        .min(WORKGROUP_SIZE as usize) as u32;
    let mut splits = 1usize;
    if invocations_per_row == WORKGROUP_SIZE && rows < FILL_WORKGROUPS {
        splits = FILL_WORKGROUPS
            .div_ceil(rows.max(1))
            .min(classes / MIN_SPLIT)
            .max(1);
    }
    let span = classes.div_ceil(splits).next_multiple_of(4);
    let splits = classes.div_ceil(span).max(1);
    LaunchShape {
        invocations_per_row,
        splits: splits as u32,
        span: span as u32,
    }
}

/// The shape of the fused kernel for `rows × classes`, or `None` when a row doesn't fit its
/// registers: contiguous rows of at most `FUSED_VALUES_PER_INVOCATION` · WG classes (4096),
/// with as few invocations per row as hold the row, so each has up to 16 logits to amortize
/// finishing the row over (one invocation per row for C ≤ 16).
pub fn fused_shape(classes: usize, layout: Layout) -> Option<LaunchShape> {
    let per_invocation = FUSED_VALUES_PER_INVOCATION as usize;
    if layout != Layout::Rows || classes > per_invocation * WORKGROUP_SIZE as usize {
        return None;
    }
    Some(LaunchShape {
        invocations_per_row: classes.div_ceil(per_invocation).next_power_of_two() as u32,
        splits: 1,
        span: classes.next_multiple_of(4) as u32,
    })
}

impl LaunchShape {
    /// The grid of the partials kernel (and of the focal pass with `splits` = 1) for `rows`:
    /// x (and z past 65 535) covers the row segments, y the splits.
    pub fn grid(&self, rows: usize, splits: u32) -> (u32, u32, u32) {
        let row_groups = (rows as u64)
            .div_ceil((WORKGROUP_SIZE / self.invocations_per_row) as u64)
            .max(1);
        let x = row_groups.min(65_535);
        (x as u32, splits, row_groups.div_ceil(x) as u32)
    }
}

/// Bytes of a binding left for data after a window's alignment slack.
pub fn binding_room(max_binding: u64, alignment: u64) -> u64 {
    max_binding.saturating_sub(alignment + 16)
}

impl LaunchShape {
    /// This shape with its splits narrowed so one split of `bytes_per_element` fits `room`
    /// bytes (a row longer than a binding is bound a piece of whole splits at a time).
    pub fn fitting(self, classes: usize, bytes_per_element: u64, room: u64) -> LaunchShape {
        let most = ((room / bytes_per_element) as usize & !3).max(4);
        if (self.span as usize) <= most {
            return self;
        }
        LaunchShape {
            splits: classes.div_ceil(most) as u32,
            span: most as u32,
            ..self
        }
    }
}

/// Whole splits of one row bound as one window: splits `split0 .. split0 + splits` of `row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The row.
    pub row: usize,
    /// First split.
    pub split0: u32,
    /// Splits.
    pub splits: u32,
}

/// Cuts `rows` rows that are each longer than a binding into pieces of as many whole splits
/// of `shape` as fit `room` bytes.
pub fn row_pieces(
    rows: usize,
    shape: LaunchShape,
    bytes_per_element: u64,
    room: u64,
) -> Vec<Piece> {
    let per_piece =
        ((room / (shape.span as u64 * bytes_per_element)) as u32).clamp(1, shape.splits);
    (0..rows)
        .flat_map(|row| {
            (0..shape.splits)
                .step_by(per_piece as usize)
                .map(move |split0| Piece {
                    row,
                    split0,
                    splits: per_piece.min(shape.splits - split0),
                })
        })
        .collect()
}

/// Cuts `elements` into (first, count) runs of whole 4-element groups that fit `room` bytes
/// (the backward pass over rows longer than a binding).
pub fn flat_pieces(elements: u64, bytes_per_element: u64, room: u64) -> Vec<(u64, u64)> {
    let most = ((room / bytes_per_element) & !3).max(4);
    (0..elements)
        .step_by(most as usize)
        .map(|first| (first, most.min(elements - first)))
        .collect()
}

/// A run of whole rows processed with one set of bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First row.
    pub row0: usize,
    /// Rows.
    pub rows: usize,
}

/// Cuts `rows` into chunks whose logits (and f32 companions) fit a binding of `max_binding`
/// bytes, less the alignment slack of a window. Chunks hold a multiple of 4 rows (so every
/// chunk starts on a 4-element boundary, whole words for f16/bf16) and whole samples of the
/// (N, C, d…) layout. `None` when a single unit is larger than a binding.
pub fn chunks(
    rows: usize,
    classes: usize,
    layout: Layout,
    bytes_per_element: u64,
    max_binding: u64,
    alignment: u64,
) -> Option<Vec<Chunk>> {
    // lcm(spatial, 4): whole samples, and a multiple of 4 rows.
    let unit = match layout {
        Layout::Rows => 4,
        Layout::ClassDim1 { spatial } => spatial / gcd(spatial, 4) * 4,
    };
    let unit_bytes = unit as u64 * classes as u64 * bytes_per_element;
    let room = binding_room(max_binding, alignment);
    if rows == 0 {
        return Some(vec![Chunk { row0: 0, rows: 0 }]);
    }
    if unit_bytes > room {
        return if rows as u64 * classes as u64 * bytes_per_element <= room {
            Some(vec![Chunk { row0: 0, rows }])
        } else {
            None
        };
    }
    let per_chunk = ((room / unit_bytes) as usize * unit).max(unit);
    Some(
        (0..rows)
            .step_by(per_chunk)
            .map(|row0| Chunk {
                row0,
                rows: per_chunk.min(rows - row0),
            })
            .collect(),
    )
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
