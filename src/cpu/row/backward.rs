//! The backward row kernels: the gradient from the row's LSE ([`Backward`]), or from the
//! exps the forward kept ([`Rescale`]), one pass over the row each.

use super::{class_term, load, store, Transform, CHUNK};
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, SimdOp, SimdUnaryOp};
use rten_vecmath::Exp;

/// The destination of a row's gradient: over the input row itself, or a separate row.
pub enum RowIo<'a> {
    /// Read `x` from and write `dx` to the same buffer.
    InPlace(&'a mut [f32]),
    /// Read `x` from the first, write `dx` to the second.
    Separate(&'a [f32], &'a mut [f32]),
}

impl RowIo<'_> {
    pub(crate) fn src(&self) -> &[f32] {
        match self {
            RowIo::InPlace(b) => b,
            RowIo::Separate(s, _) => s,
        }
    }
    pub(crate) fn dst(&mut self) -> &mut [f32] {
        match self {
            RowIo::InPlace(b) => b,
            RowIo::Separate(_, d) => d,
        }
    }
}

/// Backward over one row: `dx[c] = dz/dx[c]·(K·exp(z[c] − lse) − A·w[c]·(B·t[c] + E))`.
pub struct Backward<'a> {
    /// Input row and output row.
    pub io: RowIo<'a>,
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// The row's shift `m` (its max; or its LSE, with `log_sum` 0).
    pub shift: f32,
    /// `ln Σ exp(z − m)`, so `p = exp((z − m) − log_sum)`: subtracting the max first keeps
    /// `z − lse` exact to f32 rounding where `p` is near 1, instead of losing an ulp of `lse`.
    pub log_sum: f32,
    /// Coefficient of `p[c]`.
    pub k: f32,
    /// Scale of the per-class term.
    pub a: f32,
    /// Coefficient of `t[c]` in the per-class term.
    pub b: f32,
    /// Constant of the per-class term.
    pub e: f32,
    /// Index targets: `(y, v)` subtracts `v` from `dx[y]` after the vector pass.
    pub target_fix: Option<(usize, f32)>,
}

impl SimdOp for Backward<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let ops = isa.f32();
        let lanes = ops.len();
        let n = self.io.src().len();
        let (shift, log_sum, k) = (
            ops.splat(self.shift),
            ops.splat(self.log_sum),
            ops.splat(self.k),
        );
        let (a, b, e) = (ops.splat(self.a), ops.splat(self.b), ops.splat(self.e));
        let constant = ops.mul(a, e);
        for off in (0..n).step_by(lanes) {
            let x = load(isa, &self.io.src()[off..]);
            let z = self.transform.apply(isa, x);
            let p = Exp::apply(isa, ops.sub(ops.sub(z, shift), log_sum));
            let per_class = class_term(isa, self.w, self.t, off, (a, b, e), constant);
            let dz = ops.mul_sub_from(per_class, ops.one(), ops.mul(k, p));
            let dx = ops.mul(dz, self.transform.slope(isa, z));
            store(isa, dx, &mut self.io.dst()[off..]);
        }
        if let Some((y, v)) = self.target_fix {
            self.io.dst()[y] -= v;
        }
    }
}

/// Where [`Rescale`] finds the kept exps, and where it writes the gradient.
pub enum ExpsIo<'a> {
    /// Out of place: the exps are in the gradient row.
    InGradient {
        /// The logits (for the softcap slope).
        x: &'a [f32],
        /// Exps in, gradient out.
        dx: &'a mut [f32],
    },
    /// In place: the exps are in a scratch row; the gradient overwrites the logits.
    InScratch {
        /// The exps.
        exps: &'a [f32],
        /// Logits in, gradient out.
        x: &'a mut [f32],
    },
}

/// Backward from the exps the forward kept ([`Exps`]), taking no exp: with
/// `p[c] = values[c]·exp(shift − lse)` for the chunk's shift,
/// `dx[c] = dz/dx[c]·(F·values[c] − A·w[c]·(B·t[c] + E))`, `F = K·exp(shift − lse)` per chunk.
/// The row's max has `values = 1` and `F = K·exp(−ln s)` from f64, so `p[y]` near 1 keeps its
/// precision.
pub struct Rescale<'a> {
    /// Exps in, gradient out.
    pub io: ExpsIo<'a>,
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// `F` per chunk of [`CHUNK`] values.
    pub factors: &'a [f32],
    /// Scale of the per-class term.
    pub a: f32,
    /// Coefficient of `t[c]` in the per-class term.
    pub b: f32,
    /// Constant of the per-class term.
    pub e: f32,
    /// Index targets: `(y, v)` subtracts `v` from `dx[y]` after the vector pass.
    pub target_fix: Option<(usize, f32)>,
}

impl SimdOp for Rescale<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let ops = isa.f32();
        let lanes = ops.len();
        let (a, b, e) = (ops.splat(self.a), ops.splat(self.b), ops.splat(self.e));
        let constant = ops.mul(a, e);
        let scale = ops.splat(self.transform.scale);
        let softcap = self.transform.softcap.is_some();
        let (n, target_fix) = (self.io.len(), self.target_fix);
        let plain = !softcap && self.w.is_none() && self.t.is_none();
        for (chunk, &factor) in self.factors.iter().enumerate() {
            let factor = ops.splat(factor);
            let span = chunk * CHUNK..n.min((chunk + 1) * CHUNK);
            if let (true, ExpsIo::InGradient { dx, .. }) = (plain, &mut self.io) {
                // The common case, in place over the exps: (F·e − A·E)·s.
                let offset = ops.mul(constant, scale);
                let factor = ops.mul(factor, scale);
                for off in span.clone().step_by(lanes) {
                    let v = load(isa, &dx[off..]);
                    let dv = ops.mul_sub_from(offset, ops.one(), ops.mul(factor, v));
                    store(isa, dv, &mut dx[off..span.end]);
                }
                continue;
            }
            for off in span.step_by(lanes) {
                let (values, x) = match &self.io {
                    ExpsIo::InGradient { x, dx } => (&dx[off..], &x[off..]),
                    ExpsIo::InScratch { exps, x } => (&exps[off..], &x[off..]),
                };
                let p_k = ops.mul(factor, load(isa, values));
                let slope = if softcap {
                    let z = self.transform.apply(isa, load(isa, x));
                    self.transform.slope(isa, z)
                } else {
                    scale
                };
                let per_class = class_term(isa, self.w, self.t, off, (a, b, e), constant);
                let dx = ops.mul(ops.mul_sub_from(per_class, ops.one(), p_k), slope);
                store(isa, dx, self.io.dst(off));
            }
        }
        if let Some((y, v)) = target_fix {
            self.io.dst(y)[0] -= v;
        }
    }
}

impl ExpsIo<'_> {
    fn len(&self) -> usize {
        match self {
            ExpsIo::InGradient { dx, .. } => dx.len(),
            ExpsIo::InScratch { x, .. } => x.len(),
        }
    }
    fn dst(&mut self, off: usize) -> &mut [f32] {
        match self {
            ExpsIo::InGradient { dx, .. } => &mut dx[off..],
            ExpsIo::InScratch { x, .. } => &mut x[off..],
        }
    }
}
