//! The SIMD body of binary cross-entropy with logits (SEMANTICS.md section 4): element-wise,
//! one vector op per run of elements, whatever the options.
//!
//! With `y' = y·(1−ε) + ε/2`, `e = exp(−|x|)`, `u = 1 + e`:
//! ```text
//! log1p(e)     = ln u + (e − (u − 1))/u        u − 1 is exact: the residual is what u lost of e
//! softplus(±x) = max(±x, 0) + log1p(e)
//! σ(x)         = (x < 0 ? e : 1)/u,   σ(−x) = (x < 0 ? 1 : e)/u
//! ce           = pos_weight·y'·softplus(−x) + (1−y')·softplus(x)
//! dce          = (1−y')·σ(x) − pos_weight·y'·σ(−x)      (= (pos_weight·y' + 1 − y')·σ(x) − pos_weight·y')
//! m            = y'·σ(−x) + (1−y')·σ(x)        (1 − p_t, sigmoid focal loss)
//! loss         = k·ce·m^γ,   k = s·w·α_t,   α_t = α·y' + (1−α)·(1−y')   (1 without α)
//! dx           = scale·k·(dce·m^γ + ce·γ·m^(γ−1)·(1−2y')·σ(x)·σ(−x))
//! ```
//! One `exp`, one `ln` and one division an element. A whole focal `γ` adds products; any other
//! `γ` takes `m^γ = exp(γ·ln m)` (within about `γ·|ln m|` ulps, 1.6e-6 relative at `m = 1e-30`,
//! `γ = 0.5`) and a second division. A zero coefficient leaves its term out (`y' = 1` meeting
//! `softplus(+inf)`), the focal derivative is 0 where `m = 0`, and a NaN logit gives a NaN
//! loss and gradient (SEMANTICS.md section 6). `±inf` logits give `e = 0`: `softplus` is
//! `inf` or 0 and `σ` is 1 or 0, exactly. Losses and gradients are within 4·2⁻²⁴ relative of
//! their f64 values (the `exp` within 1 ulp, 1.5 on the portable level; the `ln` within 1, 2
//! there); the losses are summed in f32 lanes flushed into f64 every `row::FLUSH` values (a sum
//! of losses near `f32::MAX` can overflow there where f64 would not).

use super::exp::ShiftedExp;
use super::log::{LnProbability, LnSum};
use super::row::{lane_sum, linear_term, load_or, store, RowIo, FLUSH};
use super::simd::{dispatch, SimdLevel};
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, SimdOp, SimdUnaryOp};
use rten_vecmath::Exp;

/// BCE options that act per element: Keras's label smoothing and torchvision's focal factor.
#[derive(Debug, Clone, Copy)]
pub struct BinaryOptions {
    /// `ε`: targets become `y·(1−ε) + ε/2`.
    pub smoothing: f32,
    /// Focal `γ ≥ 0` (0: off).
    pub gamma: f32,
    /// Focal `α`, when on.
    pub alpha: Option<f32>,
}

/// A per-element coefficient of a run: one value for every element, or one each.
#[derive(Debug, Clone, Copy)]
pub enum Coef<'a> {
    All(f32),
    Each(&'a [f32]),
}

impl Coef<'_> {
    /// The vector of elements `i..`, lanes past the run 0.
    #[inline(always)]
    fn at<I: Isa>(self, isa: I, i: usize) -> I::F32 {
        match self {
            Coef::All(v) => isa.f32().splat(v),
            Coef::Each(s) => load_or(isa, &s[i..], 0.0),
        }
    }
}

/// The logits of a run and, with a gradient, where it goes.
pub enum RunIo<'a> {
    Forward(&'a [f32]),
    Backward(RowIo<'a>),
}

/// One run of contiguous elements: their losses (and their sum), and their gradient.
pub struct BinaryRun<'a> {
    pub io: RunIo<'a>,
    /// Targets `y`, one per logit.
    pub t: &'a [f32],
    /// The sample weights `s`.
    pub sample_weight: Coef<'a>,
    /// The class weights `w`.
    pub weight: Coef<'a>,
    pub pos_weight: Coef<'a>,
    /// The gradient's upstream scale (the reduction's).
    pub scale: Coef<'a>,
    /// Per-element losses, when asked for.
    pub losses: Option<&'a mut [f32]>,
    pub options: BinaryOptions,
}

impl BinaryRun<'_> {
    /// The run at `level`; returns the sum of its losses.
    pub fn run(self, level: SimdLevel) -> f64 {
        dispatch(level, self)
    }
}

/// How the kernel takes `m^γ`: not at all (`γ = 0`), by products, or by `exp(γ·ln m)`.
#[derive(Clone, Copy)]
enum Power {
    Off,
    Whole(u32),
    Fraction,
}

/// Vectors a step computes side by side: each stage of the math (`exp`, the division, `ln`)
/// over all of them before the next, so the core overlaps their long dependency chains.
const STEP: usize = 4;

impl SimdOp for BinaryRun<'_> {
    type Output = f64;

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) -> f64 {
        let lanes = isa.f32().len();
        let n = self.t.len();
        let power = match self.options.gamma {
            0.0 => Power::Off,
            g if g.fract() == 0.0 && g <= 16.0 => Power::Whole(g as u32),
            _ => Power::Fraction,
        };
        let mut total = 0f64;
        for start in (0..n).step_by(FLUSH) {
            let end = n.min(start + FLUSH);
            let mut sum = isa.f32().zero();
            let mut off = start;
            while off + STEP * lanes <= end {
                sum = self.step::<I, STEP>(isa, (off, power), sum);
                off += STEP * lanes;
            }
            while off < end {
                sum = self.step::<I, 1>(isa, (off, power), sum);
                off += lanes;
            }
            total += lane_sum(sum);
        }
        total
    }
}

impl BinaryRun<'_> {
    /// `U` vectors of elements from `off` (the last may run past the run: its lanes there
    /// are left out): their losses and gradient stored, the losses added to `sum`.
    #[inline(always)]
    fn step<I: Isa, const U: usize>(
        &mut self,
        isa: I,
        (off, power): (usize, Power),
        sum: I::F32,
    ) -> I::F32 {
        let ops = isa.f32();
        let lanes = ops.len();
        let BinaryOptions {
            smoothing: eps,
            gamma,
            alpha,
        } = self.options;
        let (zero, one) = (ops.zero(), ops.one());
        let nan = ops.splat(f32::NAN);
        // `a·b`, or 0 where `a = 0` (SEMANTICS.md section 6).
        let term = |a, b| linear_term(isa, a, b);
        let at = |v: usize| off + v * lanes;
        // One vector for each `v < U`, in a plain loop: a closure this size, passed to
        // `array::from_fn`, was not inlined (nor given the ISA's target features); small ones
        // like `term` are.
        macro_rules! each {
            (|$v:ident| $body:expr) => {{
                let mut out = [zero; U];
                for $v in 0..U {
                    out[$v] = $body;
                }
                out
            }};
        }

        let x = each!(|v| match &self.io {
            RunIo::Forward(x) => load_or(isa, &x[at(v)..], 0.0),
            RunIo::Backward(io) => load_or(isa, &io.src()[at(v)..], 0.0),
        });
        let y = each!(|v| {
            let y = load_or(isa, &self.t[at(v)..], 0.0);
            match eps {
                0.0 => y,
                _ => ops.mul_add(y, ops.splat(1.0 - eps), ops.splat(eps / 2.0)),
            }
        });
        let pwy = each!(|v| ops.mul(self.pos_weight.at(isa, at(v)), y[v]));
        let omy = each!(|v| ops.sub(one, y[v]));

        let e = each!(|v| ShiftedExp.eval(isa, ops.neg(ops.abs(x[v]))));
        let u = each!(|v| ops.add(one, e[v]));
        let r = each!(|v| ops.div(one, u[v]));
        let ln_u = each!(|v| LnSum.eval(isa, u[v]));
        let log1p = each!(|v| ops.mul_add(ops.sub(e[v], ops.sub(u[v], one)), r[v], ln_u[v]));
        // σ(x) and σ(−x).
        let p = each!(|v| ops.mul(ops.select(e[v], one, ops.lt(x[v], zero)), r[v]));
        let q = each!(|v| ops.mul(ops.select(one, e[v], ops.lt(x[v], zero)), r[v]));
        let ce = each!(|v| {
            let softplus_pos = ops.add(ops.max(x[v], zero), log1p[v]);
            let softplus_neg = ops.add(ops.max(ops.neg(x[v]), zero), log1p[v]);
            ops.add(term(pwy[v], softplus_neg), term(omy[v], softplus_pos))
        });
        // (pos_weight·y' + 1 − y')·σ(x) − pos_weight·y', with σ(x) − 1 = −σ(−x): no cancellation.
        let dce = each!(|v| ops.mul_sub_from(pwy[v], q[v], ops.mul(omy[v], p[v])));
        let k = each!(|v| {
            let k = ops.mul(
                self.sample_weight.at(isa, at(v)),
                self.weight.at(isa, at(v)),
            );
            match alpha {
                Some(a) => {
                    let alpha_t =
                        ops.mul_add(ops.splat(a), y[v], ops.mul(ops.splat(1.0 - a), omy[v]));
                    ops.mul(k, alpha_t)
                }
                None => k,
            }
        });
        // The loss before `k`, and its derivative.
        let (value, d) = match power {
            Power::Off => (ce, dce),
            Power::Whole(_) | Power::Fraction => {
                let m = each!(|v| ops.mul_add(y[v], q[v], ops.mul(omy[v], p[v])));
                // m^γ, and m^(γ−1)·σ(x)·σ(−x) (its derivative's factor beside γ·(1 − 2y')):
                // a whole γ by products; any other from exp(γ·ln m) and σ(x)·σ(−x)/m ≤ 1,
                // never m^(γ−1) alone, which overflows for γ < 1 and a subnormal m.
                let (focal, slope) = match power {
                    Power::Whole(g) => {
                        let below = each!(|v| {
                            let mut pow = one;
                            for _ in 1..g {
                                pow = ops.mul(pow, m[v]);
                            }
                            pow
                        });
                        (
                            each!(|v| ops.mul(below[v], m[v])),
                            each!(|v| ops.mul(below[v], ops.mul(p[v], q[v]))),
                        )
                    }
                    _ => {
                        let focal = each!(|v| {
                            let l =
                                LnProbability.eval(isa, ops.select(one, m[v], ops.eq(m[v], zero)));
                            Exp::apply(isa, ops.mul(ops.splat(gamma), l))
                        });
                        let slope =
                            each!(|v| ops.mul(focal[v], ops.div(ops.mul(p[v], q[v]), m[v])));
                        (focal, slope)
                    }
                };
                // Where m = 0, m^γ = 0 and the derivative's term is taken as 0.
                let focal = each!(|v| ops.select(zero, focal[v], ops.eq(m[v], zero)));
                let d = each!(|v| {
                    let sign = ops.mul_sub_from(ops.splat(2.0), y[v], one);
                    let d_focal = ops.mul(ops.mul(ops.splat(gamma), sign), slope[v]);
                    let d_focal = ops.select(zero, d_focal, ops.eq(m[v], zero));
                    ops.mul_add(dce[v], focal[v], term(d_focal, ce[v]))
                });
                // An infinite `ce` has m > 0 (|x| = inf leaves m = y' or 1 − y'): its product
                // is inf, also where m^γ underflowed to 0 in f32.
                let infinite = ops.splat(f32::INFINITY);
                let value = each!(|v| {
                    let product = ops.mul(ce[v], focal[v]);
                    ops.select(infinite, product, ops.eq(ce[v], infinite))
                });
                (value, d)
            }
        };
        let mut sum = sum;
        for v in 0..U {
            let is_number = ops.eq(x[v], x[v]);
            let mut loss = ops.select(term(k[v], value[v]), nan, is_number);
            let end = self.t.len();
            if at(v) + lanes > end {
                loss = ops.select(loss, zero, ops.first_n_mask(end - at(v)));
            }
            sum = ops.add(sum, loss);
            if let Some(losses) = self.losses.as_deref_mut() {
                store(isa, loss, &mut losses[at(v)..]);
            }
            if let RunIo::Backward(io) = &mut self.io {
                let g = ops.mul(ops.mul(self.scale.at(isa, at(v)), k[v]), d[v]);
                store(isa, ops.select(g, nan, is_number), &mut io.dst()[at(v)..]);
            }
        }
        sum
    }
}
