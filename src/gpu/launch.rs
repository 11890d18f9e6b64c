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
/// finishing the row over (one invocation per row for C ≤ 16). The (N, C, d…) layout takes
/// one invocation per row whatever C, as its three-pass shape does (neighbours on
/// neighbouring positions); past 16 classes the kernel streams the rest of the row.
pub fn fused_shape(classes: usize, layout: Layout) -> Option<LaunchShape> {
    let per_invocation = FUSED_VALUES_PER_INVOCATION as usize;
    if layout != Layout::Rows {
        return Some(launch_shape(0, classes, layout));
    }
    if classes > per_invocation * WORKGROUP_SIZE as usize {
        return None;
    }
    Some(LaunchShape {
        invocations_per_row: classes.div_ceil(per_invocation).next_power_of_two() as u32,
        splits: 1,
        span: classes.next_multiple_of(4) as u32,
    })
}

/// Whether the fused kernel of `shape` owns every word of an f16/bf16 gradient (in place, or
/// a separate buffer of the logits' dtype), two values a 4-byte word: contiguous rows of even
/// C own their words; of odd C, rows 2i and 2i + 1 share one, written by row 2i's segment,
/// which needs both rows in one workgroup (a row segment smaller than the workgroup). In the
/// (N, C, d…) layout positions 2i and 2i + 1 share each class's word, so a sample needs an
/// even number of positions. `softmax_fused.wgsl` has the stores.
pub fn fused_owns_half_words(shape: LaunchShape, classes: usize, layout: Layout) -> bool {
    match layout {
        Layout::Rows => classes.is_multiple_of(2) || shape.invocations_per_row < WORKGROUP_SIZE,
        Layout::ClassDim1 { spatial } => spatial.is_multiple_of(2),
    }
}

/// Rows each invocation of the fused kernel (and its targets pass) owns when one invocation
/// holds a row (C ≤ 16): their sums go into one reduction slot, so the row sums written and
/// read back per row fall from 32 bytes (16 written, 16 reduced) to 8, against a 2-class
/// f32 row's 8 bytes of logits; 4 rather than more keeps a large GPU's invocations busy
/// (1 048 576 rows fill 1024 workgroups).
pub const SHORT_ROWS_PER_INVOCATION: u32 = 4;
// `softmax_fused.wgsl`'s short-tile variant calls its row four times.
const _: () = assert!(SHORT_ROWS_PER_INVOCATION == 4);
/// Rows of a workgroup's tile when invocations own several: the unit chunks are cut in.
pub const SHORT_TILE_ROWS: usize = (WORKGROUP_SIZE * SHORT_ROWS_PER_INVOCATION) as usize;
/// Tiles of rows (a workgroup's, `WG·k` rows) a call needs before invocations own several
/// rows: fewer rows launch too few workgroups to give up any.
const MIN_SHORT_TILES: usize = 64;

/// Rows per invocation of the fused kernel of `shape` for `rows` rows: several with one
/// invocation per row and enough rows, else 1.
pub fn fused_rows_per_invocation(shape: LaunchShape, rows: usize) -> u32 {
    if shape.invocations_per_row == 1 && rows >= MIN_SHORT_TILES * SHORT_TILE_ROWS {
        SHORT_ROWS_PER_INVOCATION
    } else {
        1
    }
}

/// The reduction slots of `rows` rows whose invocations (`WG / invocations_per_row` row
/// segments per workgroup) own `rows_per_invocation` rows each: a workgroup's tile of
/// `segments·k` rows fills `segments` slots, the last tile one per segment that has a row.
/// `rows` itself with one row per invocation.
pub fn sum_slots(rows: usize, invocations_per_row: u32, rows_per_invocation: u32) -> u64 {
    let segments = (WORKGROUP_SIZE / invocations_per_row) as u64;
    let tile = segments * rows_per_invocation as u64;
    let rows = rows as u64;
    rows / tile * segments + (rows % tile).min(segments)
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
/// (N, C, d…) layout, in multiples of `row_multiple` (a power of two ≥ 4: the fused kernel's
/// tiles where invocations own several rows). `None` when a single unit is larger than a
/// binding.
pub fn chunks(
    rows: usize,
    classes: usize,
    layout: Layout,
    bytes_per_element: u64,
    max_binding: u64,
    alignment: u64,
    row_multiple: usize,
) -> Option<Vec<Chunk>> {
    // lcm(spatial, row_multiple): whole samples, and whole tiles of rows.
    let multiple = row_multiple.max(4);
    let unit = match layout {
        Layout::Rows => multiple,
        Layout::ClassDim1 { spatial } => spatial / gcd(spatial, multiple) * multiple,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `sum_slots` against the slots that hold a row, counted from the fused kernel's row
    /// mapping: row (tile·k + i)·segments + segment in slot tile·segments + segment.
    #[test]
    fn sum_slots_counts_the_slots_that_hold_a_row() {
        for (invocations_per_row, k) in [(1, 1), (1, 4), (8, 1), (256, 1)] {
            let segments = (WORKGROUP_SIZE / invocations_per_row) as usize;
            for rows in [0, 1, 255, 256, 257, 1023, 1024, 1025, 3000, 69_999] {
                let mut held = std::collections::BTreeSet::new();
                for row in 0..rows {
                    let (tile, segment) = (row / (segments * k), row % segments);
                    held.insert(tile * segments + segment);
                }
                let slots = sum_slots(rows, invocations_per_row, k as u32);
                assert_eq!(
                    slots,
                    held.len() as u64,
                    "{rows} rows, {invocations_per_row}, {k}"
                );
                // The slots are 0 .. slots, each written once.
                assert_eq!(held.last().map_or(0, |&s| s as u64 + 1), slots);
            }
        }
    }

    /// Half-precision words: odd C fuses while a workgroup holds several rows (C ≤ 2048),
    /// odd positions never.
    #[test]
    fn half_words_of_odd_rows_need_a_pair_in_a_workgroup() {
        let rows = |classes| {
            fused_owns_half_words(
                fused_shape(classes, Layout::Rows).unwrap(),
                classes,
                Layout::Rows,
            )
        };
        for classes in [1, 2, 3, 9, 17, 1001, 2047, 2048, 3000, 4096] {
            assert!(rows(classes), "{classes}");
        }
        assert!(!rows(2049) && !rows(4095));
        let planes = |spatial| {
            let layout = Layout::ClassDim1 { spatial };
            fused_owns_half_words(fused_shape(21, layout).unwrap(), 21, layout)
        };
        assert!(planes(512 * 512) && !planes(49));
    }

    /// Several rows per invocation only with one invocation per row and enough rows, and the
    /// chunks of such a call are whole tiles.
    #[test]
    fn several_rows_per_invocation_need_whole_tiles() {
        let short = fused_shape(10, Layout::Rows).unwrap();
        let long = fused_shape(100, Layout::Rows).unwrap();
        let many = MIN_SHORT_TILES * SHORT_TILE_ROWS;
        assert_eq!(fused_rows_per_invocation(short, many), 4);
        assert_eq!(fused_rows_per_invocation(short, many - 1), 1);
        assert_eq!(fused_rows_per_invocation(long, many), 1);
        let cut = chunks(100_000, 10, Layout::Rows, 4, 1 << 20, 256, SHORT_TILE_ROWS).unwrap();
        assert!(cut.len() > 1 && cut.iter().all(|c| c.row0 % 1024 == 0));
    }
}
