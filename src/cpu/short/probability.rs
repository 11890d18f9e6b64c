//! Short rows of probabilities (SEMANTICS.md section 2b): `logp = ln(clamp(q, eps, 1))`, a
//! tile of rows across lanes as for logits (the module docs of `short`), with no max, no exps
//! and no log-sum-exp.
//!
//! - one pass over the tile's classes: the target's `q[y]` picked by a compare with each
//!   lane's target; where a sum needs every class (smoothing, dense targets, metrics) a
//!   vector `ln p` per class, `Σ w·ln p` or `Σ w·t'·ln p`, `Σ p·ln p` (entropy), `Σ t·p`
//!   and the first maxima of `q` and `t`, each sum with its rounding error kept apart
//!   (a lane sums up to 64 terms in f32; the row path adds its f32 sums into f64 instead);
//! - the finish: `−(1−ε)·w[y]·ln p[y] − (ε/C)·Σ w·ln p` (dense: `−Σ w·t'·ln p`), one `ln` a
//!   lane for the target;
//! - the gradient, per class: `−a·w[c]·t'[c]/q[c]`, 0 where `q < eps` was clamped.
//!
//! A checked probability is finite and `ln p ≥ ln eps`, so no row is NaN or infinite and every
//! term is finite: a zero coefficient's `0·ln p` is the 0 that leaving the term out gives.
//! Focal loss on probabilities takes the row path ([`Call::takes_short_path`]).
//!
//! [`Call::takes_short_path`]: super::super::Call::takes_short_path

use super::lanes::{self, Consts, Lanes, TileMetrics, TileRows, TileTargets};
use super::tiles::{store_tile, Vector};
use super::{ShortRows, MAX_LANES};
use crate::cpu::log::LnClamped;
use crate::cpu::probability::first_max_step;
use crate::input::Element;
use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd};

/// `sum + v` with the rounding error added to `err` (TwoSum: exact whatever the magnitudes).
#[inline(always)]
fn two_sum<I: Isa>(isa: I, (sum, err): (I::F32, I::F32), v: I::F32) -> (I::F32, I::F32) {
    let ops = isa.f32();
    let new = ops.add(sum, v);
    let v_part = ops.sub(new, sum);
    let sum_part = ops.sub(new, v_part);
    let lost = ops.add(ops.sub(sum, sum_part), ops.sub(v, v_part));
    (new, ops.add(err, lost))
}

/// A tile of probabilities: the clamp's `eps`, the transposed values and the tile's gradient
/// scratch, its targets, and its rows `(i0, n)` of the block.
type ProbabilityTile<'t> = (
    f32,
    (&'t [f32], &'t mut [f32]),
    TileTargets<'t>,
    (usize, usize),
);

impl<T: Element> ShortRows<'_, '_, '_, T> {
    /// One tile of probability rows `i0 .. i0 + n` of the block (the module docs), `q` its
    /// transposed values; adds each row's loss to `sums` (per lane). `floor` is the clamp's
    /// `eps`; `GRAD`: the gradient is asked.
    #[inline(always)]
    pub(super) fn probability_tile<I: Isa, const GRAD: bool>(
        &mut self,
        isa: I,
        k: &Consts<'_>,
        (floor, (q, e), targets, (i0, n)): ProbabilityTile<'_>,
        per: &mut Lanes,
        sums: &mut [f64; MAX_LANES],
    ) {
        let ops = isa.f32();
        let lanes = ops.len();
        let call = self.call;
        let (zero, one) = (ops.zero(), ops.one());
        let ln = |p| LnClamped::new(floor).eval(isa, p);
        let floor_v = ops.splat(floor);
        let metrics = call.want_metrics;
        let (tile_y, dense) = (targets.y, targets.dense);
        let r0 = self.first_row + i0;
        let y = ops.load(tile_y);
        let valid = ops.ge(y, zero);
        let (w_y, sample) =
            lanes::row_weights(isa, call, (k.w, dense), (tile_y, valid), (r0, n), per);

        // The pass. Dense: t' = (1 − ε)·t + ε/C.
        let every_class = k.eps > 0.0 || dense.is_some() || metrics;
        let (keep, spread) = (ops.splat(1.0 - k.eps), ops.splat(k.uniform));
        let lowest = ops.splat(f32::NEG_INFINITY);
        let (mut weighted, mut p_ln_p, mut tp) = ((zero, zero), (zero, zero), (zero, zero));
        let (mut q_best, mut q_arg, mut t_best, mut t_arg) = (lowest, zero, lowest, zero);
        // An ignored (or padding) lane keeps q[y] = 1: ln 1 = 0.
        let (mut q_y, mut class) = (one, zero);
        for (c, qc) in q.chunks_exact(lanes).enumerate() {
            let qc = ops.load(qc);
            if dense.is_none() {
                q_y = ops.select(qc, q_y, ops.eq(y, class));
            }
            if every_class {
                let p = ops.max(qc, floor_v);
                let lp = ln(p);
                let w = ops.splat(k.w.map_or(1.0, |w| w[c]));
                match dense {
                    None if k.eps > 0.0 => weighted = two_sum(isa, weighted, ops.mul(w, lp)),
                    None => {}
                    Some(t) => {
                        let tc = ops.load(&t[c * lanes..]);
                        let coefficient = ops.mul(w, ops.mul_add(keep, tc, spread));
                        weighted = two_sum(isa, weighted, ops.mul(coefficient, lp));
                        if metrics {
                            tp = two_sum(isa, tp, ops.mul(tc, p));
                            (t_best, t_arg) = first_max_step(isa, (t_best, t_arg), tc, class);
                        }
                    }
                }
                if metrics {
                    p_ln_p = two_sum(isa, p_ln_p, ops.mul(p, lp));
                    (q_best, q_arg) = first_max_step(isa, (q_best, q_arg), qc, class);
                }
            }
            class = ops.add(class, one);
        }

        // The finish.
        let weighted = ops.add(weighted.0, weighted.1);
        let ce = match dense {
            None => {
                let target = ops.mul(ops.mul(keep, w_y), ln(ops.max(q_y, floor_v)));
                ops.neg(ops.mul_add(spread, weighted, target))
            }
            Some(_) => ops.neg(weighted),
        };
        let ce = ops.select(ops.mul(ce, sample), zero, valid);
        for (sum, &ce) in sums.iter_mut().zip(ce.to_array().as_ref()) {
            *sum += ce as f64;
        }
        // No log-sum-exp: the LSE column keeps the 0 it was allocated with, as the row path
        // gives.
        let metrics = metrics.then(|| TileMetrics {
            argmax: q_arg,
            target_class: if dense.is_some() { t_arg } else { y },
            target_prob: match dense {
                None => ops.select(ops.max(q_y, floor_v), zero, valid),
                Some(_) => ops.add(tp.0, tp.1),
            },
            entropy: ops.neg(ops.add(p_ln_p.0, p_ln_p.1)),
            confidence: ops.max(q_best, floor_v),
        });
        TileRows {
            loss: ce,
            lse: None,
            metrics,
        }
        .write(&mut self.columns, call.want_rows, (i0, n), tile_y);
        if !GRAD {
            return;
        }

        // The gradient: −a·w[c]·t'[c]/q[c], 0 where q was clamped and in ignored rows.
        let (a, _) = lanes::scales(isa, call, (r0, n), per);
        let minus_a = ops.neg(a);
        let at_target = ops.add(keep, spread);
        let mut class = zero;
        for (c, (qc, ec)) in q
            .chunks_exact(lanes)
            .zip(e.chunks_exact_mut(lanes))
            .enumerate()
        {
            let qc = ops.load(qc);
            let t = match dense {
                None => ops.select(at_target, spread, ops.eq(y, class)),
                Some(t) => ops.mul_add(keep, ops.load(&t[c * lanes..]), spread),
            };
            let w = ops.splat(k.w.map_or(1.0, |w| w[c]));
            let d = ops.div(ops.mul(ops.mul(minus_a, w), t), qc);
            let d = ops.select(zero, d, ops.lt(qc, floor_v));
            ops.store(ops.select(d, zero, valid), ec);
            class = ops.add(class, one);
        }
        store_tile(
            e,
            self.shape.layout,
            self.shape.classes,
            (i0, n),
            (lanes, Vector::of(isa)),
            (self.src, self.grad.as_deref_mut(), self.in_place),
        );
    }
}
