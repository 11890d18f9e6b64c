//! SIMD row kernels of softmax focal loss with smoothing or soft targets (SEMANTICS.md
//! section 2c), for a whole focusing parameter `γ` (1, 2, 3, …: the powers are products).
//!
//! Once a row's log-sum-exp is known (the fused forward of [`row`](super::row)), every class's
//! focal factor can be computed from `l = (z − m) − ln Σ exp(z − m)` alone (the split form of
//! SEMANTICS.md section 1; `z − lse` would lose `l` below the last place of a large `m`):
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
//! in scalar code. [`FocalRow`] picks these kernels for a whole `γ` and a scalar loop for a
//! fractional one; the unsharded rows (`cpu/mod.rs`) and the vocab-parallel shards
//! (`cpu/shard.rs`, over a shard's columns with the global log-sum-exp) both go through it.
//! The short-row tiles (`short/`) take [`factors`] for their lanes.

use super::row::{load, load_live, RowIo, Transform, CHUNK};
use super::simd::{dispatch, SimdLevel};
use crate::math::focal::{focal_factors, Focal};
use crate::math::row::{log_p, term};
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};
use rten_vecmath::Exp;

/// `(p, f, g)` of one vector of `l` (see the module docs); `gamma ≥ 1` whole.
#[inline(always)]
pub(super) fn factors<I: Isa>(isa: I, l: I::F32, gamma: u32) -> (I::F32, I::F32, I::F32) {
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

/// `l = (z − m) − log_sum`: `z − m` is exact where `p` matters (Sterbenz), whatever `m`.
#[inline(always)]
fn log_prob<I: Isa>(isa: I, z: I::F32, max: I::F32, log_sum: I::F32) -> I::F32 {
    let ops = isa.f32();
    ops.sub(ops.sub(z, max), log_sum)
}

/// The forward's focal sums over one contiguous row of raw logits.
struct FocalSums<'a> {
    /// Raw logits of the row.
    x: &'a [f32],
    /// Targets, weights, transform, LSE and the target-weight coefficients `B` (`b`), `E` (`e`).
    row: FocalRow<'a>,
    /// `γ`, whole and at least 1.
    gamma: u32,
}

impl SimdOp for FocalSums<'_> {
    /// `(Σ a·f·l, Σ a·g)`.
    type Output = (f64, f64);

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> (f64, f64) {
        let ops = isa.f32();
        let lanes = ops.len();
        let zero = ops.zero();
        let row = self.row;
        let (hi, lo) = (ops.splat(row.max), ops.splat(row.log_sum as f32));
        let (b, e) = (ops.splat(row.b), ops.splat(row.e));
        let (mut loss, mut g_sum) = (0f64, 0f64);
        for (chunk, xc) in self.x.chunks(CHUNK).enumerate() {
            let base = chunk * CHUNK;
            let wc = row.w.map(|w| &w[base..base + xc.len()]);
            let tc = row.t.map(|t| &t[base..base + xc.len()]);
            let (mut v_loss, mut v_g) = (zero, zero);
            for off in (0..xc.len()).step_by(lanes) {
                let (x, live) = load_live(isa, &xc[off..]);
                let z = row.transform.apply(isa, x);
                let l = log_prob(isa, z, hi, lo);
                let (_, f, g) = factors(isa, l, self.gamma);
                let target = match tc {
                    Some(t) => ops.mul_add(b, load(isa, &t[off..]), e),
                    None => e,
                };
                let a = match wc {
                    Some(w) => ops.mul(load(isa, &w[off..]), target),
                    None => target,
                };
                // A zero a[c] leaves the class out (a masked class has l = −inf).
                let term = ops.mul(ops.mul(a, f), l);
                let term = ops.select(zero, term, ops.eq(a, zero));
                let ag = ops.mul(a, g);
                let (term, ag) = match live {
                    Some(live) => (ops.select(term, zero, live), ops.select(ag, zero, live)),
                    None => (term, ag),
                };
                v_loss = ops.add(v_loss, term);
                v_g = ops.add(v_g, ag);
            }
            loss += ops.sum(v_loss) as f64;
            g_sum += ops.sum(v_g) as f64;
        }
        (loss, g_sum)
    }
}

/// The focal backward over one row: `dx[c] = dz/dx[c]·(K·p[c] − A·w[c]·(B·t[c] + E)·g[c])`.
struct FocalBackward<'a> {
    /// Input row and output row.
    io: RowIo<'a>,
    /// Targets, weights, transform, LSE and the per-class coefficients `B` (`b`), `E` (`e`).
    row: FocalRow<'a>,
    /// Coefficient of `p[c]`.
    k: f32,
    /// Scale of the per-class term.
    a: f32,
    /// `γ`, whole and at least 1.
    gamma: u32,
    /// Index targets: `(y, v)` subtracts `v` from `dx[y]` after the vector pass.
    target_fix: Option<(usize, f32)>,
}

impl SimdOp for FocalBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let ops = isa.f32();
        let lanes = ops.len();
        let n = self.io.src().len();
        let row = self.row;
        let (hi, lo) = (ops.splat(row.max), ops.splat(row.log_sum as f32));
        let (k, a) = (ops.splat(self.k), ops.splat(self.a));
        let (b, e) = (ops.splat(row.b), ops.splat(row.e));
        for off in (0..n).step_by(lanes) {
            let x = load(isa, &self.io.src()[off..]);
            let z = row.transform.apply(isa, x);
            let l = log_prob(isa, z, hi, lo);
            let (p, _, g) = factors(isa, l, self.gamma);
            let target = match row.t {
                Some(t) => ops.mul_add(b, load(isa, &t[off..]), e),
                None => e,
            };
            let weighted = match row.w {
                Some(w) => ops.mul(load(isa, &w[off..]), target),
                None => target,
            };
            let per_class = ops.mul(ops.mul(a, weighted), g);
            let dz = ops.mul_sub_from(per_class, ops.one(), ops.mul(k, p));
            let dx = ops.mul(dz, row.transform.slope(isa, z));
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

/// `γ` when it is whole (1 to 16), for the SIMD focal kernels.
pub fn whole_gamma(gamma: f32) -> Option<u32> {
    (gamma.fract() == 0.0 && (1.0..=16.0).contains(&gamma)).then_some(gamma as u32)
}

/// One row's focal passes once its log-sum-exp is known. The per-class target weight is
/// `a[c] = w[c]·(b·t[c] + e)`: soft targets have `b = 1 − ε`, index targets `b = 0` and their
/// target's own `(1−ε)·w[y]` passed as `target` to [`FocalRow::sums`] and
/// [`FocalRow::backward`]; `e = ε/C` (a shard's `C` is the global one).
#[derive(Debug, Clone, Copy)]
pub struct FocalRow<'a> {
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// The row's max `m` and `ln Σ exp(z − m)`, over every class (also when the row is a
    /// shard's columns): `lse = max + log_sum`, kept split (SEMANTICS.md section 1).
    pub max: f32,
    /// See `max`.
    pub log_sum: f64,
    /// Coefficient of `t[c]` in `a[c]`.
    pub b: f32,
    /// Constant of `a[c]`.
    pub e: f32,
    /// `γ > 0`.
    pub gamma: f32,
}

impl FocalRow<'_> {
    /// `l = (z − m) − log_sum` of a raw value, in f64 (NaN when the max is not finite: the
    /// row's log-softmax is NaN, as in PyTorch).
    fn log_p(&self, x: f32) -> f64 {
        if self.max.is_finite() {
            log_p(self.transform.scalar(x), self.max, self.log_sum)
        } else {
            f64::NAN
        }
    }

    /// `a[c]` without an index target's own term.
    fn weight(&self, c: usize) -> f32 {
        let target = self.t.map_or(0.0, |t| self.b * t[c]);
        self.w.map_or(1.0, |w| w[c]) * (target + self.e)
    }

    /// `(Σ_c a[c]·f[c]·l[c], Σ_c a[c]·g[c])` over the raw row `x` (the loss is minus the first);
    /// `target = (y, v)` adds class `y`'s own weight `v = (1−ε)·w[y]` (index targets), in f64.
    pub fn sums(&self, level: SimdLevel, x: &[f32], target: Option<(usize, f64)>) -> (f64, f64) {
        let (mut loss, mut g_sum) = match whole_gamma(self.gamma) {
            Some(gamma) => dispatch(
                level,
                FocalSums {
                    x,
                    row: *self,
                    gamma,
                },
            ),
            // A fractional γ: logp in f64 (a difference of two large numbers), the factors in
            // f32, the sums in f64.
            None => {
                let focal = Focal::new(self.gamma);
                x.iter()
                    .enumerate()
                    .fold((0f64, 0f64), |(loss, g_sum), (c, &v)| {
                        let l = self.log_p(v);
                        let (f, g) = focal.factors(l as f32);
                        let a = self.weight(c) as f64;
                        (loss + term(a, f as f64 * l), g_sum + a * g as f64)
                    })
            }
        };
        if let Some((y, v)) = target {
            let l = self.log_p(x[y]);
            let (f, g) = focal_factors(l, self.gamma as f64);
            loss += term(v, f * l);
            g_sum += v * g;
        }
        (loss, g_sum)
    }

    /// The backward pass into `io`: `dx[c] = dz/dx[c]·(k·p[c] − a·a[c]·g[c])`, and at
    /// `target = (y, v)` also `− v·g[y]·dz/dx[y]` (`v = a·(1−ε)·w[y]`): `k` is the row's
    /// coefficient of `p` (scales, `Σ a·g` and z-loss included), `a` the scale of the
    /// cross-entropy part.
    pub fn backward(
        &self,
        level: SimdLevel,
        mut io: RowIo<'_>,
        k: f32,
        a: f32,
        target: Option<(usize, f32)>,
    ) {
        let focal = Focal::new(self.gamma);
        // The target's term, from its logit before an in-place pass overwrites it.
        let target_fix = target.map(|(y, v)| {
            let z = self.transform.scalar(io.src()[y]);
            let (_, g) = focal.factors(self.log_p(io.src()[y]) as f32);
            (y, v * g * self.transform.scalar_slope(z))
        });
        if let Some(gamma) = whole_gamma(self.gamma) {
            let op = FocalBackward {
                io,
                row: *self,
                k,
                a,
                gamma,
                target_fix,
            };
            return dispatch(level, op);
        }
        for c in 0..io.src().len() {
            let z = self.transform.scalar(io.src()[c]);
            let l = self.log_p(io.src()[c]) as f32;
            let (_, g) = focal.factors(l);
            let dz = k * l.exp() - a * self.weight(c) * g;
            io.dst()[c] = dz * self.transform.scalar_slope(z);
        }
        if let Some((y, v)) = target_fix {
            io.dst()[y] -= v;
        }
    }
}
