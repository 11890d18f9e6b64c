//! The transposition of eight rows into eight lanes and back with AVX2: the x86-64 fast path
//! of `tiles.rs` for row-major logits (f32, f16, bf16, widened as they are read) and f32
//! gradients.
//!
//! A scalar transposition stores one value at a time at a stride of a tile's lanes: one store
//! per logit, and the tile's vector loads then wait on those stores. Here eight rows are read
//! as eight vectors of eight classes and turned into eight vectors of eight rows by the
//! classic unpack / shuffle / 128-bit permute network (24 shuffles per 64 values), so every
//! load and store is a vector. Classes go eight at a time; when `C` is not a multiple of 8
//! the last block starts at `C − 8` and overlaps the one before it (the overlap is written
//! twice with the same values). Rows of fewer than 8 classes are read 8 values at a time,
//! each load running into the next row; the last rows read the 8 values that end where the
//! row ends and move its `C` to the front with a lane permutation (stores go through a mask),
//! so nothing past the tile's last row is read or written. One and two classes (binary heads)
//! take shorter paths: their 8 or 16 values are one or two vectors.

use half::{bf16, f16};
use std::arch::x86_64::*;

/// Proof that the CPU has AVX2 and F16C, made from an ISA value whose vectors are at least
/// 32 bytes: rten-simd 0.27's AVX2 level (its `new` checks AVX2, FMA and F16C) or its AVX-512
/// level (AVX-512 F/VL/BW/DQ and F16C checked; AVX2 implied, as on every CPU with AVX-512).
/// Its other levels have 16-byte vectors.
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    /// `Some` for the AVX2 and AVX-512 ISAs (decided at compile time for each ISA; the value
    /// exists only on a CPU that has its instructions).
    #[inline(always)]
    pub(super) fn of<I: rten_simd::Isa>(_: I) -> Option<Avx2> {
        (std::mem::size_of::<I::F32>() >= 32).then_some(Avx2(()))
    }

    /// Rows `0..8` of `rows` (row-major, `classes` values each; the slice may run on past the
    /// eighth row) into lanes `0..8` of `tile`, widened to f32: class `c` at `c·stride`.
    ///
    /// # Panics
    /// If `rows` holds fewer than 8 rows, `classes` is 0, or `tile` is shorter than
    /// `(classes − 1)·stride + 8`.
    #[inline(always)]
    pub(super) fn load_rows<T: Widen>(
        self,
        rows: &[T],
        classes: usize,
        tile: &mut [f32],
        stride: usize,
    ) {
        assert!(classes > 0 && rows.len() >= 8 * classes);
        assert!(tile.len() >= (classes - 1) * stride + 8);
        // SAFETY: `self` proves AVX2; the bounds are asserted above and each access is
        // argued in `load_rows_avx2`.
        unsafe { load_rows_avx2(rows, classes, tile, stride) }
    }

    /// `src` widened into `dst` eight values at a time: a class's run of lanes in the
    /// (N, C, d…) layout (`half`'s slice conversion is a scalar loop for bf16 there, and half
    /// the short path's time).
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of 8.
    #[inline(always)]
    pub(super) fn widen<T: Widen>(self, src: &[T], dst: &mut [f32]) {
        assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
        // SAFETY: `self` proves AVX2 and F16C; every read and write is inside the slices.
        unsafe { widen_avx2(src, dst) }
    }

    /// The inverse of [`load_rows`](Self::load_rows): lanes `0..8` of `tile` into rows `0..8`
    /// of `rows`, writing exactly those `8·classes` values.
    ///
    /// # Panics
    /// As `load_rows`.
    #[inline(always)]
    pub(super) fn store_rows(self, tile: &[f32], stride: usize, classes: usize, rows: &mut [f32]) {
        assert!(classes > 0 && rows.len() >= 8 * classes);
        assert!(tile.len() >= (classes - 1) * stride + 8);
        // SAFETY: as in `load_rows`.
        unsafe { store_rows_avx2(tile, stride, classes, rows) }
    }
}

/// The 8 × 8 transposition: `out[c]` lane `j` is `r[j]` lane `c`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// Element types read eight at a time into eight f32 lanes.
pub(super) trait Widen: Copy {
    /// The 8 values from `p`, widened (exactly).
    ///
    /// # Safety
    /// AVX2 and F16C present; `p .. p + 8` readable.
    unsafe fn widen8(p: *const Self) -> __m256;
}

impl Widen for f32 {
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn widen8(p: *const f32) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Widen for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn widen8(p: *const bf16) -> __m256 {
        // SAFETY: the caller's. bf16 is the upper half of an f32's bits.
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

impl Widen for f16 {
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn widen8(p: *const f16) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// # Safety
/// AVX2 and F16C present, `src.len() == dst.len()`, a multiple of 8.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_avx2<T: Widen>(src: &[T], dst: &mut [f32]) {
    for i in (0..src.len()).step_by(8) {
        // SAFETY: i + 8 ≤ len for both slices.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), T::widen8(src.as_ptr().add(i))) };
    }
}

/// Lanes `0..n` set (`n ≤ 8`), as a mask for `maskstore`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn first_lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Whether row `j`'s 8 values from `j·C` lie inside the 8 rows (else it is read or written
/// through a mask): all rows but the last few when C < 8.
fn fits(j: usize, classes: usize) -> bool {
    j * classes + 8 <= 8 * classes
}

/// The starts of the 8-class blocks of a row of `classes ≥ 8`: 0, 8, …, and `classes − 8`
/// last when `classes` is not a multiple of 8.
fn class_blocks(classes: usize) -> impl Iterator<Item = usize> {
    (0..classes.div_ceil(8)).map(move |b| (8 * b).min(classes - 8))
}

/// # Safety
/// AVX2 and F16C present, `rows.len() ≥ 8·classes`, `classes ≥ 1`,
/// `tile.len() ≥ (classes−1)·stride + 8`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load_rows_avx2<T: Widen>(rows: &[T], classes: usize, tile: &mut [f32], stride: usize) {
    let (src, dst) = (rows.as_ptr(), tile.as_mut_ptr());
    // SAFETY (every access below): reads stay inside rows `0..8`: `j·C + q + 8 ≤ 8·C` for
    // C ≥ 8; for C < 8 a row reads 8 values from its start where they `fit`, else the 8
    // ending at its end, `(j+1)·C − 8 ≥ 0` (C ≥ 3 and j ≥ 6 there); C = 1 and 2 read exactly
    // their 8 and 16 values. Writes go to `c·stride .. c·stride + 8` with `c < C`.
    unsafe {
        if classes == 1 {
            _mm256_storeu_ps(dst, T::widen8(src));
        } else if classes == 2 {
            // [x0 y0 x1 y1 | x2 y2 x3 y3] and [x4 y4 x5 y5 | x6 y6 x7 y7].
            let (a, b) = (T::widen8(src), T::widen8(src.add(8)));
            let order =
                |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
            _mm256_storeu_ps(dst, order(_mm256_shuffle_ps::<0x88>(a, b)));
            _mm256_storeu_ps(dst.add(stride), order(_mm256_shuffle_ps::<0xDD>(a, b)));
        } else if classes < 8 {
            // Lane i ← lane 8 − C + i: a row read from its end, moved to the front.
            let front = _mm256_add_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(8 - classes as i32),
            );
            let row = |j: usize| {
                if fits(j, classes) {
                    T::widen8(src.add(j * classes))
                } else {
                    let end = T::widen8(src.add((j + 1) * classes - 8));
                    _mm256_permutevar8x32_ps(end, front)
                }
            };
            let out = transpose8(std::array::from_fn(row));
            for (c, v) in out.into_iter().take(classes).enumerate() {
                _mm256_storeu_ps(dst.add(c * stride), v);
            }
        } else {
            for q in class_blocks(classes) {
                let out = transpose8(std::array::from_fn(|j| T::widen8(src.add(j * classes + q))));
                for (c, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((q + c) * stride), v);
                }
            }
        }
    }
}

/// # Safety
/// As [`load_rows_avx2`], with `rows` written.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn store_rows_avx2(tile: &[f32], stride: usize, classes: usize, rows: &mut [f32]) {
    let (src, dst) = (tile.as_ptr(), rows.as_mut_ptr());
    // SAFETY (every access below): reads of `c·stride .. c·stride + 8` with `c < C`; writes
    // inside rows `0..8` as the reads of `load_rows_avx2`. For C < 8 a row's full store runs
    // into the next row, which the next store then overwrites; the rows where 8 values do not
    // `fit` are stored through a mask.
    unsafe {
        if classes == 1 {
            _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
        } else if classes == 2 {
            let (x, y) = (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(stride)));
            // [x0 y0 x1 y1 | x4 y4 x5 y5] and [x2 y2 x3 y3 | x6 y6 x7 y7].
            let (lo, hi) = (_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
            _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(lo, hi));
            _mm256_storeu_ps(dst.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
        } else if classes < 8 {
            let out = transpose8(std::array::from_fn(|c| {
                if c < classes {
                    _mm256_loadu_ps(src.add(c * stride))
                } else {
                    _mm256_setzero_ps()
                }
            }));
            for (j, v) in out.into_iter().enumerate() {
                if fits(j, classes) {
                    _mm256_storeu_ps(dst.add(j * classes), v);
                } else {
                    _mm256_maskstore_ps(dst.add(j * classes), first_lanes(classes), v);
                }
            }
        } else {
            for q in class_blocks(classes) {
                let out = transpose8(std::array::from_fn(|c| {
                    _mm256_loadu_ps(src.add((q + c) * stride))
                }));
                for (j, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add(j * classes + q), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every C of the short path, both tile widths, against the scalar definition; the rows
    /// are the slice's last (nothing after them to read into or write over).
    #[test]
    fn transposes_like_the_definition() {
        let Some(isa) = rten_simd::isa::Avx2Isa::new() else {
            eprintln!("NOTE: no AVX2 + F16C on this CPU: the AVX2 transposition was not tested");
            return;
        };
        let avx2 = Avx2::of(isa).unwrap();
        for classes in 1..=super::super::SHORT_CLASSES {
            for (stride, lane0) in [(8, 0), (16, 0), (16, 8)] {
                let rows: Vec<f32> = (0..8 * classes).map(|v| v as f32 + 0.5).collect();
                let mut tile = vec![f32::NAN; classes * stride];
                avx2.load_rows(&rows, classes, &mut tile[lane0..], stride);
                for j in 0..8 {
                    for c in 0..classes {
                        assert_eq!(tile[c * stride + lane0 + j], rows[j * classes + c]);
                    }
                }
                // Half types, widened on the way (values exact in both: integers below 256).
                let value = |v: usize| ((v * 37) % 251) as f32 - 120.0;
                let halves: Vec<f16> = (0..8 * classes).map(|v| f16::from_f32(value(v))).collect();
                let brains: Vec<bf16> =
                    (0..8 * classes).map(|v| bf16::from_f32(value(v))).collect();
                let mut tile_h = vec![f32::NAN; classes * stride];
                let mut tile_b = vec![f32::NAN; classes * stride];
                avx2.load_rows(&halves, classes, &mut tile_h[lane0..], stride);
                avx2.load_rows(&brains, classes, &mut tile_b[lane0..], stride);
                for j in 0..8 {
                    for c in 0..classes {
                        let want = value(j * classes + c);
                        assert_eq!(tile_h[c * stride + lane0 + j], want, "f16 C = {classes}");
                        assert_eq!(tile_b[c * stride + lane0 + j], want, "bf16 C = {classes}");
                    }
                }
                // Back, into a buffer with guards either side of the rows.
                let mut out = vec![-1.0f32; 8 * classes + 16];
                avx2.store_rows(
                    &tile[lane0..],
                    stride,
                    classes,
                    &mut out[8..8 + 8 * classes],
                );
                assert_eq!(&out[8..8 + 8 * classes], &rows[..], "C = {classes}");
                assert!(out[..8]
                    .iter()
                    .chain(&out[8 + 8 * classes..])
                    .all(|&v| v == -1.0));
            }
        }
    }
}
