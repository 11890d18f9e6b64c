//! `exp` for the softmax passes, whose arguments are `z − shift` with `shift` a row's max or
//! log-sum-exp: never far above 0, so the overflow handling of a general `exp` is dead
//! weight there.
//!
//! The method of rten-vecmath's `ReducedRangeExp` (not exported by that crate): Cody-Waite
//! reduction `x = k·ln 2 + r`, `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `exp(r)`, then
//! `2^k`. Within 1 ulp of `exp` for `−87 ≤ x ≤ 1` (1.5 on the portable level, which has no
//! fused multiply-add); NaN gives NaN, `+inf` a non-finite value (the forward treats a
//! non-finite sum as "redo this chunk exactly"), `−inf` gives 0.
//!
//! The scaling by `2^k` is where the instruction sets differ. AVX-512 has it as one
//! instruction (`vscalefps`, exact, subnormal results included): arguments are clamped at
//! −104, where the result rounds to 0, then scaled. Elsewhere `2^k` is built in the exponent
//! bits and multiplied in, and arguments below −87.67 (where that `2^k` is not a normal f32)
//! give 0. One instruction for five makes the forward's L1 chunk loop ~13 % faster.

use rten_simd::ops::{BitOps, FloatOps, IntOps, NumOps};
use rten_simd::{Isa, Simd, SimdUnaryOp};

/// `exp(x)` for `x ≤ 88`.
#[derive(Default)]
pub struct ShiftedExp;

impl SimdUnaryOp<f32> for ShiftedExp {
    #[inline(always)]
    fn eval<I: Isa>(&self, isa: I, x: I::F32) -> I::F32 {
        #![allow(clippy::excessive_precision)]
        let ops = isa.f32();
        let int_ops = isa.i32();
        const ROUNDING_MAGIC: f32 = 12582912.0; // 1.5·2^23: adding it rounds to an integer
        const LN2_HI: f32 = -6.93145752e-1;
        const LN2_LO: f32 = -1.42860677e-6;
        const POLY: [f32; 7] = [
            1.37805939e-3,
            8.37312452e-3,
            4.16695364e-2,
            1.66664720e-1,
            4.99999851e-1,
            1.0,
            1.0,
        ];
        // Below this, 2^k is not a normal f32: the result is 0 (it is < 1.2e-38 anyway).
        const LOWER_CUTOFF: f32 = -126.5 * std::f32::consts::LN_2 + 0.01;

        let scalef = avx512::scalef::<I>();
        let x = scalef.map_or(x, |s| s.clamp(x));
        let magic = ops.splat(ROUNDING_MAGIC);
        let j = ops.sub(
            ops.mul_add(x, ops.splat(std::f32::consts::LOG2_E), magic),
            magic,
        );
        let r = ops.mul_add(j, ops.splat(LN2_HI), x);
        let r = ops.mul_add(j, ops.splat(LN2_LO), r);
        let mut poly = ops.splat(POLY[0]);
        for c in &POLY[1..] {
            poly = ops.mul_add(poly, r, ops.splat(*c));
        }
        if let Some(s) = scalef {
            return s.scale(poly, j);
        }
        let k = ops.to_int_trunc(j);
        let two_k: I::F32 = int_ops
            .shift_left::<23>(int_ops.add(k, int_ops.splat(127)))
            .reinterpret_cast();
        let result = ops.mul(poly, two_k);
        ops.select(ops.zero(), result, ops.lt(x, ops.splat(LOWER_CUTOFF)))
    }
}

/// AVX-512's `vscalefps` for [`ShiftedExp`]. rten-simd has no generic op for it, so the
/// ISA is recognised by its 64-byte f32 vectors (only AVX-512 has them, and an `Isa` value
/// exists only on a CPU that supports its instructions).
mod avx512 {
    use rten_simd::Isa;
    use std::marker::PhantomData;

    /// Proof that `I` is the AVX-512 ISA.
    #[derive(Clone, Copy)]
    pub struct Scalef<I>(PhantomData<I>);

    /// `Some` when `I` is AVX-512 (decided at compile time for each ISA).
    #[inline(always)]
    pub fn scalef<I: Isa>() -> Option<Scalef<I>> {
        let avx512 = cfg!(target_arch = "x86_64") && std::mem::size_of::<I::F32>() == 64;
        avx512.then_some(Scalef(PhantomData))
    }

    #[cfg(target_arch = "x86_64")]
    impl<I: Isa> Scalef<I> {
        /// `max(−104, x)`, keeping NaN (`vmaxps` returns its second operand when either
        /// is NaN). `exp(−104)` rounds to 0 after [`scale`](Self::scale), as `−inf` must.
        #[inline(always)]
        pub fn clamp(self, x: I::F32) -> I::F32 {
            use std::arch::x86_64::{__m512, _mm512_max_ps, _mm512_set1_ps};
            // SAFETY: `I::F32` is a 64-byte f32 vector, i.e. `__m512`, and the CPU has
            // AVX-512 (an `Avx512Isa` exists).
            unsafe {
                let x: __m512 = std::mem::transmute_copy(&x);
                std::mem::transmute_copy(&_mm512_max_ps(_mm512_set1_ps(-104.0), x))
            }
        }

        /// `poly · 2^j` for integral `j`, exactly (subnormal and zero results included).
        #[inline(always)]
        pub fn scale(self, poly: I::F32, j: I::F32) -> I::F32 {
            use std::arch::x86_64::{__m512, _mm512_scalef_ps};
            // SAFETY: as in `clamp`.
            unsafe {
                let poly: __m512 = std::mem::transmute_copy(&poly);
                let j: __m512 = std::mem::transmute_copy(&j);
                std::mem::transmute_copy(&_mm512_scalef_ps(poly, j))
            }
        }
    }

    // Never constructed off x86-64 (`scalef` gives `None`).
    #[cfg(not(target_arch = "x86_64"))]
    impl<I: Isa> Scalef<I> {
        pub fn clamp(self, x: I::F32) -> I::F32 {
            x
        }
        pub fn scale(self, poly: I::F32, _j: I::F32) -> I::F32 {
            poly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ShiftedExp;
    use crate::cpu::simd::{dispatch, SimdLevel};
    use rten_simd::ops::BitOps;
    use rten_simd::{Isa, SimdOp, SimdUnaryOp};

    /// `ShiftedExp` over a slice whose length is a multiple of 16.
    struct Map<'a>(&'a [f32], &'a mut [f32]);

    impl SimdOp for Map<'_> {
        type Output = ();
        #[inline(always)]
        fn eval<I: Isa>(self, isa: I) {
            let ops = isa.f32();
            let lanes = ops.len();
            for (x, y) in self
                .0
                .chunks_exact(lanes)
                .zip(self.1.chunks_exact_mut(lanes))
            {
                ops.store(ShiftedExp.eval(isa, ops.load(x)), y);
            }
        }
    }

    fn exp_at(level: SimdLevel, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        dispatch(level, Map(x, &mut y));
        y
    }

    #[test]
    fn within_an_ulp_at_every_level() {
        let n = 1 << 20;
        let x: Vec<f32> = (0..n).map(|i| -87.0 + 88.0 * i as f32 / n as f32).collect();
        for level in SimdLevel::supported() {
            // The portable level has no fused multiply-add: two roundings per step.
            let bound = if level == SimdLevel::Portable {
                1.5
            } else {
                1.0
            };
            for (&x, &y) in x.iter().zip(&exp_at(level, &x)) {
                let exact = (x as f64).exp();
                let ulp = {
                    let e = exact as f32;
                    (f32::from_bits(e.to_bits() + 1) - e) as f64
                };
                let err = (y as f64 - exact).abs() / ulp;
                assert!(
                    err <= bound,
                    "{level}: exp({x}) = {y}, {err:.2} ulp from {exact}"
                );
            }
        }
    }

    #[test]
    fn special_arguments() {
        let mut x = vec![0.0f32; 16];
        x[..6].copy_from_slice(&[
            f32::NEG_INFINITY,
            -1e30,
            -200.0,
            f32::NAN,
            f32::from_bits(0xffc0_01ff), // a NaN with payload bits
            f32::INFINITY,
        ]);
        for level in SimdLevel::supported() {
            let y = exp_at(level, &x);
            assert_eq!(&y[..3], &[0.0, 0.0, 0.0], "{level}");
            assert!(y[3].is_nan() && y[4].is_nan(), "{level}: {y:?}");
            assert!(!y[5].is_finite(), "{level}: exp(+inf) = {}", y[5]);
            assert_eq!(y[6], 1.0, "{level}");
        }
    }
}
