//! `exp` for the softmax passes, whose arguments are `z − shift` with `shift` a row's max or
//! log-sum-exp: never far above 0, so the overflow handling of a general `exp` is dead
//! weight there.
//!
//! The method of rten-vecmath's `ReducedRangeExp` (not exported by that crate): Cody-Waite
//! reduction `x = k·ln 2 + r`, `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `exp(r)`, and
//! `2^k` built in the exponent bits. Within 1 ulp of `f32::exp` for `x ≤ 88`; `−inf` and
//! arguments below `−87.67` give 0, NaN gives NaN, `+inf` gives NaN (the forward treats a
//! non-finite sum as "redo this chunk exactly").

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

        let magic = ops.splat(ROUNDING_MAGIC);
        let j = ops.sub(
            ops.mul_add(x, ops.splat(std::f32::consts::LOG2_E), magic),
            magic,
        );
        let r = ops.mul_add(j, ops.splat(LN2_HI), x);
        let r = ops.mul_add(j, ops.splat(LN2_LO), r);
        let k = ops.to_int_trunc(j);
        let mut poly = ops.splat(POLY[0]);
        for c in &POLY[1..] {
            poly = ops.mul_add(poly, r, ops.splat(*c));
        }
        let two_k: I::F32 = int_ops
            .shift_left::<23>(int_ops.add(k, int_ops.splat(127)))
            .reinterpret_cast();
        let result = ops.mul(poly, two_k);
        ops.select(ops.zero(), result, ops.lt(x, ops.splat(LOWER_CUTOFF)))
    }
}
