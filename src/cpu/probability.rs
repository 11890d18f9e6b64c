//! Probability inputs (SEMANTICS.md section 2b): `logp = ln(clamp(q, eps, 1))`, no
//! log-sum-exp. One SIMD op per row, for every option but focal loss (which takes the f64 path
//! of `scalar`: its `(1 − p)^γ` needs a power per value).
//!
//! Forward: with index targets and neither smoothing nor metrics the row is not read at all
//! (the loss is the target's `−w[y]·ln p[y]`); otherwise one read of the row, a vector `ln` a
//! value, the sums in f32 lanes added into f64 every `row::FLUSH` values. Backward: one read of
//! `q` and one write of `dq` (the same buffer in place), the target's class fixed after.

use super::log::LnClamped;
use super::row::{lane_sum, load_or, store, RowIo, FLUSH};
use super::scalar::{ProbOptions, ProbRow, ProbTarget};
use super::simd::{self, SimdLevel};
use crate::math::row::{first_max, term};
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp};

/// Forward of one probability row `q`: the cross-entropy part and the metrics asked for.
pub struct ProbForward<'a> {
    pub q: &'a [f32],
    pub target: ProbTarget<'a>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    pub options: ProbOptions,
}

/// What [`ProbForward`] gives: the row, and with dense targets and metrics the target
/// probability `Σ t·p` and the targets' first max.
pub struct ProbForwardOut {
    pub row: ProbRow,
    pub dense_metrics: Option<(f64, u32)>,
}

/// What the pass over a row gives: its sums in f64 and the first max of `q` and of `t`.
#[derive(Default)]
struct Pass {
    /// `Σ w·ln p` (index targets) or `Σ w·t'·ln p` (dense).
    weighted: f64,
    /// `Σ p·ln p`.
    p_ln_p: f64,
    /// Dense targets: `Σ t·p`.
    target_prob: f64,
    q_argmax: u32,
    t_argmax: u32,
}

impl ProbForward<'_> {
    /// The row on `level`. With index targets and neither smoothing nor metrics nothing but
    /// the target's `ln p` is needed: no pass, no dispatch.
    pub fn run(self, level: SimdLevel) -> ProbForwardOut {
        let index = matches!(self.target, ProbTarget::Index(_));
        let o = self.options;
        if index && o.smoothing == 0.0 && !o.metrics {
            return self.finish(Pass::default());
        }
        let pass = simd::dispatch(level, RowPass(&self));
        self.finish(pass)
    }

    /// The row from its pass (SEMANTICS.md section 2b).
    fn finish(&self, pass: Pass) -> ProbForwardOut {
        let q = self.q;
        let ProbOptions {
            floor,
            smoothing: eps,
            metrics,
            ..
        } = self.options;
        let (eps, classes) = (eps as f64, q.len() as f64);
        let p = |q: f32| (q as f64).clamp(floor as f64, 1.0);
        let ce = match self.target {
            // A zero coefficient leaves its term out (SEMANTICS.md section 6).
            ProbTarget::Index(y) => {
                let w_y = self.w.map_or(1.0, |w| w[y] as f64);
                -term(1.0 - eps, term(w_y, p(q[y]).ln())) - term(eps / classes, pass.weighted)
            }
            ProbTarget::Dense(_) => -pass.weighted,
        };
        // The pass carries classes in f32 lanes, exact below 2^24: past that, a scalar scan.
        let exact = q.len() <= 1 << 24;
        let argmax = if exact || !metrics {
            pass.q_argmax
        } else {
            first_max(q)
        };
        let row = ProbRow {
            ce,
            argmax,
            entropy: -pass.p_ln_p,
            confidence: if metrics { p(q[argmax as usize]) } else { 0.0 },
        };
        let dense_metrics = match self.target {
            ProbTarget::Dense(t) if metrics => {
                let t_argmax = if exact { pass.t_argmax } else { first_max(t) };
                Some((pass.target_prob, t_argmax))
            }
            _ => None,
        };
        ProbForwardOut { row, dense_metrics }
    }
}

/// The SIMD pass over a row of [`ProbForward`].
struct RowPass<'r, 'a>(&'r ProbForward<'a>);

impl SimdOp for RowPass<'_, '_> {
    type Output = Pass;

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> Pass {
        let ops = isa.f32();
        let lanes = ops.len();
        let ProbForward { q, target, w, .. } = *self.0;
        let ProbOptions {
            floor,
            smoothing: eps,
            metrics,
            ..
        } = self.0.options;
        let dense = match target {
            ProbTarget::Dense(t) => Some(t),
            ProbTarget::Index(_) => None,
        };
        let ln = |p| LnClamped::new(floor).eval(isa, p);

        let mut pass = Pass::default();
        // The first max of q and, with dense targets, of t: per lane the best value and the
        // class that has it (a later class replaces it only when strictly greater; classes
        // are f32, exact below 2^24; `finish` scans past that).
        let lowest = ops.splat(f32::NEG_INFINITY);
        let (mut q_best, mut q_arg) = (lowest, ops.zero());
        let (mut t_best, mut t_arg) = (lowest, ops.zero());
        let lane_index = ops.load(&LANE_INDEX[..lanes]);
        let (floor_v, one) = (ops.splat(floor), ops.one());
        let classes_v = ops.splat(q.len() as f32);
        // Dense: t' = (1 − ε)·t + ε/C.
        let (keep, spread) = (ops.splat(1.0 - eps), ops.splat(eps / q.len() as f32));
        for (part, qs) in q.chunks(FLUSH).enumerate() {
            let (mut weighted, mut p_ln_p, mut tp) = (ops.zero(), ops.zero(), ops.zero());
            for off in (0..qs.len()).step_by(lanes) {
                let c0 = part * FLUSH + off;
                // Lanes past the row are q = 1: ln p = 0 leaves every sum as it is.
                let qv = load_or(isa, &qs[off..], 1.0);
                let p = ops.max(qv, floor_v);
                let lp = ln(p);
                let wv = w.map_or(one, |w| load_or(isa, &w[c0..], 0.0));
                let class = ops.add(lane_index, ops.splat(c0 as f32));
                let live = ops.lt(class, classes_v);
                match dense {
                    None => weighted = ops.mul_add(wv, lp, weighted),
                    Some(t) => {
                        let tv = load_or(isa, &t[c0..], 0.0);
                        let coefficient = ops.mul(wv, ops.mul_add(keep, tv, spread));
                        weighted = ops.mul_add(coefficient, lp, weighted);
                        if metrics {
                            tp = ops.mul_add(tv, p, tp);
                            let tv = ops.select(tv, lowest, live);
                            (t_best, t_arg) = first_max_step(isa, (t_best, t_arg), tv, class);
                        }
                    }
                }
                if metrics {
                    p_ln_p = ops.mul_add(p, lp, p_ln_p);
                    let qv = ops.select(qv, lowest, live);
                    (q_best, q_arg) = first_max_step(isa, (q_best, q_arg), qv, class);
                }
            }
            pass.weighted += lane_sum(weighted);
            pass.p_ln_p += lane_sum(p_ln_p);
            pass.target_prob += lane_sum(tp);
        }
        if metrics {
            pass.q_argmax = first_of_best(q_best, q_arg);
            pass.t_argmax = first_of_best(t_best, t_arg);
        }
        pass
    }
}

/// Lane indices, as many as the widest ISA has lanes.
const LANE_INDEX: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

/// Each lane's best value and its class after `v` of `class`: a later class replaces the
/// best only when strictly greater, so each lane keeps its first max.
#[inline(always)]
pub(super) fn first_max_step<I: Isa>(
    isa: I,
    (best, arg): (I::F32, I::F32),
    v: I::F32,
    class: I::F32,
) -> (I::F32, I::F32) {
    let ops = isa.f32();
    (ops.max(best, v), ops.select(class, arg, ops.gt(v, best)))
}

/// The lowest class among the lanes that hold the largest value (`torch.argmax`).
#[inline(always)]
fn first_of_best<S: Simd<Elem = f32>>(best: S, class: S) -> u32 {
    let (best, class) = (best.to_array(), class.to_array());
    let (best, class) = (best.as_ref(), class.as_ref());
    let top = best.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    best.iter()
        .zip(class)
        .filter(|(&b, _)| b == top)
        .map(|(_, &c)| c as u32)
        .min()
        .unwrap_or(0)
}

/// Gradient of one probability row with respect to `q`, times `a`, into `dq`:
/// `−a·w[c]·t'[c]/q[c]`, 0 where `q < eps` was clamped (SEMANTICS.md section 2b).
pub struct ProbBackward<'a> {
    pub io: RowIo<'a>,
    pub target: ProbTarget<'a>,
    pub w: Option<&'a [f32]>,
    pub options: ProbOptions,
    /// The row's upstream scale.
    pub a: f32,
}

impl SimdOp for ProbBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let ops = isa.f32();
        let lanes = ops.len();
        let eps = self.options.smoothing;
        let classes = self.io.src().len();
        let spread = eps / classes as f32;
        let (floor, zero, one) = (ops.splat(self.options.floor), ops.zero(), ops.one());
        let minus_a = ops.splat(-self.a);
        // Index targets: every class takes ε/C here, the target's (1 − ε) + ε/C after, from
        // its q read before an in-place pass overwrites it.
        let (keep, spread_v) = (ops.splat(1.0 - eps), ops.splat(spread));
        let q_y = match self.target {
            ProbTarget::Index(y) => self.io.src()[y],
            ProbTarget::Dense(_) => 0.0,
        };
        for off in (0..classes).step_by(lanes) {
            let q = load_or(isa, &self.io.src()[off..], 1.0);
            let t = match self.target {
                ProbTarget::Index(_) => spread_v,
                ProbTarget::Dense(t) => ops.mul_add(keep, load_or(isa, &t[off..], 0.0), spread_v),
            };
            let w = self.w.map_or(one, |w| load_or(isa, &w[off..], 0.0));
            let d = ops.div(ops.mul(ops.mul(minus_a, w), t), q);
            let d = ops.select(zero, d, ops.lt(q, floor));
            store(isa, d, &mut self.io.dst()[off..]);
        }
        if let ProbTarget::Index(y) = self.target {
            let w = self.w.map_or(1.0, |w| w[y]);
            self.io.dst()[y] = if q_y < self.options.floor {
                0.0
            } else {
                -self.a * w * ((1.0 - eps) + spread) / q_y
            };
        }
    }
}
