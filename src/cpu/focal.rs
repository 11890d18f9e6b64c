//! SIMD row kernels of softmax focal loss with smoothing or soft targets (SEMANTICS.md
//! section 2c), for a whole focusing parameter `γ` (1, 2, 3, …: the powers are products).
//!
//! Once a row's log-sum-exp is known (the fused forward of [`row`](super::row)), every class's
//! focal factor can be computed from `l = z − lse` alone:
//! ```text
//! p = exp(l),  q = 1 − p,  f = q^γ,  g = f − γ·p·l·q^(γ−1)
//! ```
//! (`reference::focal_factors` derives `g`). `q` comes from the Taylor series of `−expm1(l)`
//! above `l = −1/4` (no cancellation near `p = 1`) and from `1 − p` below, as the WGSL kernels
//! do. `p·l` is taken as 0 where `p = 0` (a masked class: `f = g = 1`).
//!
//! [`FocalSums`] is the forward's second pass over the row (from cache): `Σ a·f·l` and
//! `Σ a·g` with `a[c] = w[c]·(B·t[c] + E)`; [`FocalBackward`] writes
//! `dz[c] = K·p[c] − A·a[c]·g[c]`. Index targets add their target's `(1−ε)·w[y]` term outside,
//! in scalar code. A fractional `γ` takes the scalar path in `cpu/mod.rs`.

use super::row::{RowIo, Transform, CHUNK};
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};
use rten_vecmath::Exp;

/// `(p, f, g)` of one vector of `l` (see the module docs); `gamma ≥ 1` whole.
#[inline(always)]
fn factors<I: Isa>(isa: I, l: I::F32, gamma: u32) -> (I::F32, I::F32, I::F32) {
    let ops = isa.f32();
    let one = ops.one();
    let p = Exp::apply(isa, l);
    let series = ops.poly_eval(
        l,
        &[
            ops.splat(-1.0),
            ops.splat(-1.0 / 2.0),
            ops.splat(-1.0 / 6.0),
            ops.splat(-1.0 / 24.0),
            ops.splat(-1.0 / 120.0),
            ops.splat(-1.0 / 720.0),
            ops.splat(-1.0 / 5040.0),
        ],
    );
    let q = ops.select(series, ops.sub(one, p), ops.gt(l, ops.splat(-0.25)));
    // q^(γ−1), then f = q^γ.
    let mut q_pow = one;
    for _ in 1..gamma {
        q_pow = ops.mul(q_pow, q);
    }
    let f = ops.mul(q_pow, q);
    let h = ops.mul(ops.mul(p, l), q_pow);
    let h = ops.select(ops.zero(), h, ops.eq(p, ops.zero()));
    let g = ops.mul_sub_from(ops.splat(gamma as f32), h, f);
    (p, f, g)
}

/// `l = z − lse` with `lse = hi + lo` split into two f32 (so `l` is not rounded to the
/// precision of a large `lse`).
#[inline(always)]
fn log_prob<I: Isa>(isa: I, z: I::F32, hi: I::F32, lo: I::F32) -> I::F32 {
    let ops = isa.f32();
    ops.sub(ops.sub(z, hi), lo)
}

fn split(lse: f64) -> (f32, f32) {
    let hi = lse as f32;
    let lo = if hi.is_finite() {
        (lse - hi as f64) as f32
    } else {
        0.0
    };
    (hi, lo)
}

/// The forward's focal sums over one contiguous row of raw logits.
pub struct FocalSums<'a> {
    /// Raw logits of the row.
    pub x: &'a [f32],
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// The row's log-sum-exp.
    pub lse: f64,
    /// `B`, the coefficient of `t[c]` in `a[c]`.
    pub b: f32,
    /// `E`, the constant of `a[c]`.
    pub e: f32,
    /// `γ`, whole and at least 1.
    pub gamma: u32,
}

impl SimdOp for FocalSums<'_> {
    /// `(Σ a·f·l, Σ a·g)`.
    type Output = (f64, f64);

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> (f64, f64) {
        let ops = isa.f32();
        let lanes = ops.len();
        let zero = ops.zero();
        let (hi, lo) = split(self.lse);
        let (hi, lo) = (ops.splat(hi), ops.splat(lo));
        let (b, e) = (ops.splat(self.b), ops.splat(self.e));
        let (mut loss, mut g_sum) = (0f64, 0f64);
        for (chunk, xc) in self.x.chunks(CHUNK).enumerate() {
            let base = chunk * CHUNK;
            let wc = self.w.map(|w| &w[base..base + xc.len()]);
            let tc = self.t.map(|t| &t[base..base + xc.len()]);
            let (mut v_loss, mut v_g) = (zero, zero);
            for off in (0..xc.len()).step_by(lanes) {
                let (x, live) = ops.load_pad(&xc[off..]);
                let z = self.transform.apply(isa, x);
                let l = log_prob(isa, z, hi, lo);
                let (_, f, g) = factors(isa, l, self.gamma);
                let target = match tc {
                    Some(t) => ops.mul_add(b, ops.load_pad(&t[off..]).0, e),
                    None => e,
                };
                let a = match wc {
                    Some(w) => ops.mul(ops.load_pad(&w[off..]).0, target),
                    None => target,
                };
                let term = ops.mul(ops.mul(a, f), l);
                v_loss = ops.add(v_loss, ops.select(term, zero, live));
                v_g = ops.add(v_g, ops.select(ops.mul(a, g), zero, live));
            }
            loss += ops.sum(v_loss) as f64;
            g_sum += ops.sum(v_g) as f64;
        }
        (loss, g_sum)
    }
}

/// The focal backward over one row: `dx[c] = dz/dx[c]·(K·p[c] − A·w[c]·(B·t[c] + E)·g[c])`.
pub struct FocalBackward<'a> {
    /// Input row and output row.
    pub io: RowIo<'a>,
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// The row's log-sum-exp.
    pub lse: f64,
    /// Coefficient of `p[c]`.
    pub k: f32,
    /// Scale of the per-class term.
    pub a: f32,
    /// Coefficient of `t[c]` in the per-class term.
    pub b: f32,
    /// Constant of the per-class term.
    pub e: f32,
    /// `γ`, whole and at least 1.
    pub gamma: u32,
    /// Index targets: `(y, v)` subtracts `v` from `dx[y]` after the vector pass.
    pub target_fix: Option<(usize, f32)>,
}

impl SimdOp for FocalBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let ops = isa.f32();
        let lanes = ops.len();
        let n = self.io.src().len();
        let (hi, lo) = split(self.lse);
        let (hi, lo) = (ops.splat(hi), ops.splat(lo));
        let (k, a) = (ops.splat(self.k), ops.splat(self.a));
        let (b, e) = (ops.splat(self.b), ops.splat(self.e));
        for off in (0..n).step_by(lanes) {
            let (x, _) = ops.load_pad(&self.io.src()[off..]);
            let z = self.transform.apply(isa, x);
            let l = log_prob(isa, z, hi, lo);
            let (p, _, g) = factors(isa, l, self.gamma);
            let target = match self.t {
                Some(t) => ops.mul_add(b, ops.load_pad(&t[off..]).0, e),
                None => e,
            };
            let weighted = match self.w {
                Some(w) => ops.mul(ops.load_pad(&w[off..]).0, target),
                None => target,
            };
            let per_class = ops.mul(ops.mul(a, weighted), g);
            let dz = ops.mul_sub_from(per_class, ops.one(), ops.mul(k, p));
            let dx = ops.mul(dz, self.transform.slope(isa, z));
            let dst = &mut self.io.dst()[off..];
            if dst.len() >= lanes {
                ops.store(dx, dst);
            } else {
                let tail = dst.len();
                dst.copy_from_slice(&dx.to_array().as_ref()[..tail]);
            }
        }
        if let Some((y, v)) = self.target_fix {
            self.io.dst()[y] -= v;
        }
    }
}
