//! `ln` for a softmax row's `S = Σ exp(z − m)`, which holds `exp(0) = 1` and at most a few
//! thousand terms: `1 ≤ S < 2^64`, so no zero, negative, subnormal or infinite argument needs
//! handling (a caller masks the lanes of rows that are not finite); and for a clamped
//! probability `p ∈ [eps, 1]`, whose `eps` may be subnormal ([`LnProbability`]).
//!
//! Cephes' `logf` method: `S = 2^e·f` with `f ∈ [√½, √2)`, `t = f − 1`,
//! `ln f = t − t²/2 + t³·P(t)` (degree-8 `P`), `ln S = ln f + e·ln 2` with `ln 2` split in two
//! so that `e·ln 2` adds no rounding. Within 1 ulp of `ln` on the normal floats (2 on the
//! portable level, which has no fused multiply-add).

use rten_simd::ops::{BitOps, IntOps, NumOps, ToFloat};
use rten_simd::{Isa, Simd, SimdUnaryOp};

/// `ln(x)` for a normal positive `x` (a row's sum: `1 ≤ x < 2^64`).
#[derive(Default)]
pub struct LnSum;

/// `ln(x)` for `0 < x ≤ 1`, subnormal `x` included: those are scaled by `2^24` first (exact),
/// and `24·ln 2` taken off after, one more rounding (within 2 ulps there).
#[derive(Default)]
pub struct LnProbability;

/// `ln p` of probabilities clamped to `[floor, 1]`: [`LnSum`] where `floor` is a normal float,
/// [`LnProbability`] (which takes subnormals) below.
#[derive(Clone, Copy)]
pub struct LnClamped {
    normal: bool,
}

impl LnClamped {
    pub fn new(floor: f32) -> Self {
        LnClamped {
            normal: floor >= f32::MIN_POSITIVE,
        }
    }

    #[inline(always)]
    pub fn eval<I: Isa>(self, isa: I, p: I::F32) -> I::F32 {
        match self.normal {
            true => LnSum.eval(isa, p),
            false => LnProbability.eval(isa, p),
        }
    }
}

impl SimdUnaryOp<f32> for LnProbability {
    #[inline(always)]
    fn eval<I: Isa>(&self, isa: I, x: I::F32) -> I::F32 {
        let ops = isa.f32();
        let tiny = ops.lt(x, ops.splat(f32::MIN_POSITIVE));
        let scaled = ops.select(ops.mul(x, ops.splat(16_777_216.0)), x, tiny);
        let y = LnSum.eval(isa, scaled);
        ops.select(
            ops.sub(y, ops.splat(24.0 * std::f32::consts::LN_2)),
            y,
            tiny,
        )
    }
}

impl SimdUnaryOp<f32> for LnSum {
    #[inline(always)]
    fn eval<I: Isa>(&self, isa: I, x: I::F32) -> I::F32 {
        #![allow(clippy::excessive_precision)]
        let ops = isa.f32();
        let int_ops = isa.i32();
        const P: [f32; 9] = [
            7.0376836292e-2,
            -1.1514610310e-1,
            1.1676998740e-1,
            -1.2420140846e-1,
            1.4249322787e-1,
            -1.6668057665e-1,
            2.0000714765e-1,
            -2.4999993993e-1,
            3.3333331174e-1,
        ];
        const LN2_HI: f32 = 0.693359375;
        const LN2_LO: f32 = -2.12194440e-4;

        // x = 2^e·f with f ∈ [1, 2), from the bits (x is normal and positive).
        let bits: I::I32 = x.reinterpret_cast();
        let e = int_ops.sub(int_ops.shift_right::<23>(bits), int_ops.splat(127));
        let mantissa = int_ops.or(
            int_ops.and(bits, int_ops.splat(0x007f_ffff)),
            int_ops.splat(0x3f80_0000),
        );
        let f: I::F32 = mantissa.reinterpret_cast();
        // f ∈ [√½, √2): halve f above √2 and count it in e.
        let high = ops.gt(f, ops.splat(std::f32::consts::SQRT_2));
        let f = ops.select(ops.mul(f, ops.splat(0.5)), f, high);
        let e = ops.add(
            isa.i32().to_float(e),
            ops.select(ops.one(), ops.zero(), high),
        );
        let t = ops.sub(f, ops.one());
        let t2 = ops.mul(t, t);
        let mut poly = ops.splat(P[0]);
        for c in &P[1..] {
            poly = ops.mul_add(poly, t, ops.splat(*c));
        }
        let y = ops.mul(ops.mul(t, t2), poly);
        let y = ops.mul_add(e, ops.splat(LN2_LO), y);
        let y = ops.mul_add(t2, ops.splat(-0.5), y);
        let r = ops.add(t, y);
        ops.mul_add(e, ops.splat(LN2_HI), r)
    }
}

#[cfg(test)]
mod tests {
    use super::LnSum;
    use crate::cpu::simd::{self, SimdLevel};
    use rten_simd::{Isa, SimdOp, SimdUnaryOp};

    /// `op` of each value, on `level`.
    struct LnAll<'a, Op>(&'a [f32], Op);

    impl<Op: SimdUnaryOp<f32>> SimdOp for LnAll<'_, Op> {
        type Output = Vec<f32>;
        fn eval<I: Isa>(self, isa: I) -> Vec<f32> {
            use rten_simd::ops::BitOps;
            use rten_simd::Simd;
            let ops = isa.f32();
            let mut out = Vec::new();
            for v in self.0.chunks(ops.len()) {
                let (x, _) = ops.load_pad(v);
                let y = self.1.eval(isa, x);
                out.extend_from_slice(&y.to_array().as_ref()[..v.len()]);
            }
            out
        }
    }

    /// Distance in units in the last place of `expected` (rounded to f32).
    fn ulps(got: f32, expected: f64) -> f64 {
        let e = expected as f32;
        let ulp = (f32::from_bits(e.to_bits() + 1) - e) as f64;
        (got as f64 - expected).abs() / ulp
    }

    #[test]
    fn within_two_ulps_from_one_to_two_to_the_64() {
        let mut xs = vec![1.0f32, f32::from_bits(1.0f32.to_bits() + 1), 1.5, 2.0, 1e4];
        let mut x = 1.0f32;
        while x < 1.8e19 {
            xs.push(x);
            x *= 1.000_173;
        }
        for level in SimdLevel::supported() {
            let got = simd::dispatch(level, LnAll(&xs, LnSum));
            let allowed = if level == SimdLevel::Portable {
                2.0
            } else {
                1.0
            };
            for (&x, &y) in xs.iter().zip(&got) {
                let expected = (x as f64).ln();
                if expected == 0.0 {
                    assert_eq!(y, 0.0, "{level}: ln 1");
                    continue;
                }
                assert!(
                    ulps(y, expected) <= allowed,
                    "{level}: ln {x} = {y}, expected {expected} ({} ulps)",
                    ulps(y, expected)
                );
            }
        }
    }

    /// Probabilities: every octave from the least subnormal to 1, with its neighbours of 1,
    /// within 1 ulp (2 portable) of the f64 `ln`; subnormals within 2 (the `24·ln 2` taken
    /// off rounds once more).
    #[test]
    fn probabilities_down_to_the_least_subnormal() {
        let mut xs = vec![1.0f32, f32::from_bits(1.0f32.to_bits() - 1), 0.5, 1e-7];
        xs.extend([
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x0040_0001),
        ]);
        let mut x = 1.0f32;
        while x > 0.0 {
            xs.push(x);
            // Among the subnormals the product rounds back to x: step a bit down then.
            let next = x * 0.999_7;
            x = if next < x {
                next
            } else {
                f32::from_bits(x.to_bits() - 1)
            };
        }
        for level in SimdLevel::supported() {
            let got = simd::dispatch(level, LnAll(&xs, super::LnProbability));
            for (&x, &y) in xs.iter().zip(&got) {
                let expected = (x as f64).ln();
                if expected == 0.0 {
                    assert_eq!(y, 0.0, "{level}: ln 1");
                    continue;
                }
                let allowed = match (level == SimdLevel::Portable, x < f32::MIN_POSITIVE) {
                    (false, false) => 1.0,
                    _ => 2.0,
                };
                assert!(
                    ulps(y, expected) <= allowed,
                    "{level}: ln {x:e} = {y}, expected {expected} ({} ulps)",
                    ulps(y, expected)
                );
            }
        }
    }
}
