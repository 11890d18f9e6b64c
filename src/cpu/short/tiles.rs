//! The transposition of short rows into lane tiles and back: class `c` of a tile at
//! `c·lanes .. (c+1)·lanes`, lane `j` its row `i0 + j`; row-major rows by a strided copy in L1,
//! the (N, C, d…) layout by contiguous runs inside a sample.

use super::super::Data;
use crate::input::{Element, Layout};
use crate::Dtype;
use bytemuck::cast_slice as cast;
use half::{bf16, f16};

/// The vector transposition of eight f32 rows, where the CPU has one (x86-64 with AVX2).
#[cfg(target_arch = "x86_64")]
pub(super) use super::transpose::Avx2 as Vector;

/// No vector transposition off x86-64 (never constructed).
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
pub(super) enum Vector {}

#[cfg(not(target_arch = "x86_64"))]
impl Vector {
    pub(super) fn of<I: rten_simd::Isa>(_: I) -> Option<Vector> {
        None
    }
    fn load_rows<T>(self, _: &[T], _: usize, _: &mut [f32], _: usize) {
        match self {}
    }
    fn widen<T>(self, _: &[T], _: &mut [f32]) {
        match self {}
    }
    fn store_rows(self, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
        match self {}
    }
}

/// The transposition for a full tile of row-major rows, eight at a time: `Some` when there is
/// one (else the caller's scalar walk).
#[inline(always)]
fn vector_rows(vector: Option<Vector>, layout: Layout, n: usize, lanes: usize) -> Option<Vector> {
    vector.filter(|_| layout == Layout::Rows && n == lanes && lanes.is_multiple_of(8))
}

/// Each lane's target as f32 (exact: `C ≤ SHORT_CLASSES`), −1 where it is `ignore`.
#[inline(always)]
pub(super) fn lane_targets<Y: Copy + Into<i64>>(targets: &[Y], ignore: i64, y: &mut [f32]) {
    for (y, &t) in y.iter_mut().zip(targets) {
        let t: i64 = t.into();
        *y = if t == ignore { -1.0 } else { t as f32 };
    }
}

/// Loads rows `g0 .. g0 + gn` of a block into `group`, tile after tile (see [`load_tile`]).
#[inline(always)]
pub(super) fn load_group<T: Element>(
    block: &[T],
    layout: Layout,
    classes: usize,
    (g0, gn): (usize, usize),
    (lanes, vector): (usize, Option<Vector>),
    group: &mut [f32],
) {
    for (t, tile) in group.chunks_exact_mut(classes * lanes).enumerate() {
        let i0 = g0 + t * lanes;
        if i0 >= g0 + gn {
            break;
        }
        load_tile(
            block,
            layout,
            classes,
            (i0, lanes.min(g0 + gn - i0)),
            (lanes, vector),
            tile,
        );
    }
}

/// Loads rows `i0 .. i0 + n` of a block into `tile` (class `c` at `c·lanes`, lane `j` row
/// `i0 + j`), widened to f32; padding lanes get 0.
#[inline(always)]
fn load_tile<T: Element>(
    block: &[T],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    (lanes, vector): (usize, Option<Vector>),
    tile: &mut [f32],
) {
    if n < lanes {
        tile.fill(0.0);
    }
    match (layout, vector_rows(vector, layout, n, lanes)) {
        (_, Some(vector)) => {
            for lane0 in (0..lanes).step_by(8) {
                let rows = &block[(i0 + lane0) * classes..];
                let tile = &mut tile[lane0..];
                // `T` as itself (a cast to the type it is).
                match T::DTYPE {
                    Dtype::F32 => vector.load_rows::<f32>(cast(rows), classes, tile, lanes),
                    Dtype::F16 => vector.load_rows::<f16>(cast(rows), classes, tile, lanes),
                    Dtype::Bf16 => vector.load_rows::<bf16>(cast(rows), classes, tile, lanes),
                }
            }
        }
        (Layout::Rows, None) => {
            // Class by class, a strided walk of the tile's rows (in L1).
            let rows = &block[i0 * classes..(i0 + n) * classes];
            assert!(n <= lanes && tile.len() >= classes * lanes);
            for (j, row) in rows.chunks_exact(classes).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    // SAFETY: c < classes and j < n ≤ lanes, so c·lanes + j < classes·lanes
                    // ≤ tile.len() (asserted above). Checked indexing here costs more than
                    // the transposition's load and store together.
                    unsafe { *tile.get_unchecked_mut(c * lanes + j) = v.to_f32() };
                }
            }
        }
        (Layout::ClassDim1 { spatial }, None) if i0 / spatial == (i0 + n - 1) / spatial => {
            // One sample: each class's lanes are contiguous.
            let base = layout.offset(i0, 0, classes);
            let vector = vector.filter(|_| n.is_multiple_of(8));
            for (c, lane) in tile.chunks_exact_mut(lanes).enumerate() {
                let run = &block[base + c * spatial..base + c * spatial + n];
                match vector {
                    Some(vector) => widen(vector, run, &mut lane[..n]),
                    None => T::widen(run, &mut lane[..n]),
                }
            }
        }
        (Layout::ClassDim1 { .. }, None) => {
            for (c, lane) in tile.chunks_exact_mut(lanes).enumerate() {
                for (j, v) in lane[..n].iter_mut().enumerate() {
                    *v = block[layout.offset(i0 + j, c, classes)].to_f32();
                }
            }
        }
    }
}

/// `src` widened into `dst` by the vector widening (lengths a multiple of 8).
#[inline(always)]
fn widen<T: Element>(vector: Vector, src: &[T], dst: &mut [f32]) {
    // `T` as itself (a cast to the type it is).
    match T::DTYPE {
        Dtype::F32 => vector.widen::<f32>(cast(src), dst),
        Dtype::F16 => vector.widen::<f16>(cast(src), dst),
        Dtype::Bf16 => vector.widen::<bf16>(cast(src), dst),
    }
}

/// Writes a tile of gradient rows (the layout of [`load_tile`]) into the gradient block, or
/// over the logits in place.
#[inline(always)]
pub(super) fn store_tile<T: Element>(
    tile: &[f32],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    (lanes, vector): (usize, Option<Vector>),
    (src, grad, in_place): (&mut Data<'_, T>, Option<&mut [f32]>, bool),
) {
    match (grad, src, vector_rows(vector, layout, n, lanes)) {
        (Some(g), _, Some(vector)) => store_rows(tile, classes, (i0, lanes), vector, g),
        (Some(g), _, None) => scatter_tile(tile, layout, classes, (i0, n), lanes, g, |v| v),
        (None, Data::Exclusive(d), vector) if in_place => match vector {
            // Half types are rounded one value at a time (as `T::from_f32` rounds).
            Some(vector) if T::DTYPE == Dtype::F32 => store_rows(
                tile,
                classes,
                (i0, lanes),
                vector,
                bytemuck::cast_slice_mut(d),
            ),
            _ => scatter_tile(tile, layout, classes, (i0, n), lanes, d, T::from_f32),
        },
        _ => {}
    }
}

/// A full tile into rows `i0 .. i0 + lanes` of a row-major f32 block, eight rows at a time.
#[inline(always)]
fn store_rows(
    tile: &[f32],
    classes: usize,
    (i0, lanes): (usize, usize),
    vector: Vector,
    block: &mut [f32],
) {
    for lane0 in (0..lanes).step_by(8) {
        let rows = &mut block[(i0 + lane0) * classes..];
        vector.store_rows(&tile[lane0..], lanes, classes, rows);
    }
}

/// Row `i0 + j`, class `c` of `block` from lane `j` of class `c` of `tile`.
#[inline(always)]
fn scatter_tile<U>(
    tile: &[f32],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    lanes: usize,
    block: &mut [U],
    from_f32: impl Fn(f32) -> U,
) {
    match layout {
        Layout::Rows => {
            let rows = &mut block[i0 * classes..(i0 + n) * classes];
            assert!(n <= lanes && tile.len() >= classes * lanes);
            for (j, row) in rows.chunks_exact_mut(classes).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    // SAFETY: as in `load_tile`: c·lanes + j < classes·lanes ≤ tile.len().
                    *v = from_f32(unsafe { *tile.get_unchecked(c * lanes + j) });
                }
            }
        }
        Layout::ClassDim1 { spatial } if i0 / spatial == (i0 + n - 1) / spatial => {
            // One sample: each class's lanes are one contiguous run.
            let base = layout.offset(i0, 0, classes);
            for (c, lane) in tile.chunks_exact(lanes).enumerate() {
                let run = &mut block[base + c * spatial..base + c * spatial + n];
                for (v, &x) in run.iter_mut().zip(lane) {
                    *v = from_f32(x);
                }
            }
        }
        Layout::ClassDim1 { .. } => {
            for (c, lane) in tile.chunks_exact(lanes).enumerate() {
                for (j, &v) in lane[..n].iter().enumerate() {
                    block[layout.offset(i0 + j, c, classes)] = from_f32(v);
                }
            }
        }
    }
}
