//! Short rows: softmax cross-entropy with `C ≤ SHORT_CLASSES` classes, rows across SIMD lanes.
//!
//! The row kernels of `row/` walk one row at a time. That costs each row a fixed setup (a
//! dispatch, the first chunk's max pass, the speculation, the f64 finish): a few hundred
//! cycles, which short rows pay in full. Here one lane holds one row: a tile of `L` rows (`L`
//! the lane count) is transposed into `C` vectors, one per class (the (N, C, d…) layout needs
//! no transposition: its classes are already `S` apart). Then every step of a row is one
//! vector op for `L` rows at once:
//!
//! - pass 1, per class: `z = transform(x)` (kept), the running max `m`, NaNs;
//! - pass 2, per class: `d = z − m`, `e = exp(d)` (kept for the gradient), `S += e`,
//!   `d[y]` picked by a compare with each lane's target, `Σ w·d` (smoothing), `Σ e·d` and the
//!   first index of the max (metrics);
//! - the finish, in f32 for `L` rows: `ln S` ([`LnSum`]), `logp[y] = d[y] − ln S` (the split
//!   form of SEMANTICS.md section 1), the loss of section 2 with smoothing, weights and
//!   z-loss, and the metrics;
//! - the gradient, per class: `dz/dx·(K·e/S − a·(ε/C)·w[c] − [c = y]·a·(1−ε)·w[y])`
//!   (section 3), transposed back.
//!
//! Dense (soft) targets are transposed beside the logits and bring `Σ w·t`, `Σ w·t·d` and
//! `Σ t·e` along in pass 2. A row with a NaN, a +inf or only −inf logits follows section 6 in
//! its lane (NaN loss and gradient, its LSE and argmax as the row path gives them), so no row
//! leaves the tile.
//!
//! Focal loss (section 2c) with index targets and no smoothing needs only the target's
//! factors `f[y]`, `g[y]` from `logp[y]`, in the finish: the loss is `−w[y]·f[y]·logp[y]` and
//! the gradient plain cross-entropy's with `w[y]·g[y]` for `w[y]`. With smoothing or dense
//! targets every class's factors need `ln S`: a third pass over the tile (in L1) sums
//! `Σ a·f·l` and `K = Σ a·g` (`a[c] = w[c]·t'[c]`) and keeps each `a·g` for the gradient
//! `K·p − a·g` (`focal_pass`). A whole `γ` up to 16 takes the factors as vectors, any other
//! lane by lane (a power per value, as the row path does).
//!
//! Probability inputs of at most [`SHORT_PROBABILITY_CLASSES`] classes take tiles too
//! (`probability.rs`: a vector `ln` per class where a sum needs it, no max and no exps),
//! except with focal loss ([`Call::takes_short_path`]).
//!
//! On x86-64 the transposition of row-major rows is a vector shuffle network, eight rows at
//! a time (`transpose.rs`); elsewhere, and for partial tiles, a scalar walk. A plain call
//! (index targets, `z = x`, no smoothing or class weights) compiles its own tile code with
//! only the max, the exps and the target's pick in the class loops; metrics are a constant
//! of the tile code too, so asking for them adds their sums and nothing else.
//!
//! Bytes: one read of the logits (and one write of the gradient), as the row path; the
//! transposition runs in L1.

use super::blocks::BlockShape;
use super::log::LnSum;
use super::row::linear_term;
use super::{simd, BlockOut, Call, Columns, Data};
use crate::cpu::exp::ShiftedExp;
use crate::input::{Element, Targets};
use crate::options::InputKind;
use crate::plan::Loss;
use lanes::{Consts, Lanes, TileFocal, TileMetrics, TileRows, TileTargets};
use rten_simd::ops::{BitOps, FloatOps, MaskOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};
use tiles::{lane_targets, load_group, store_tile, Vector};

mod lanes;
mod probability;
mod tiles;
#[cfg(target_arch = "x86_64")]
mod transpose;

/// Rows of at most this many classes take the short-row path when only the loss is asked.
pub(super) const SHORT_CLASSES: usize = 512;

/// … and when a gradient is asked too. Both measured on AVX2 (one core, f32, uniform
/// logits): the short path's forward leads the row path's 2.5× at C = 100 and 1.1× at 512,
/// falling behind by C = 1000; with the gradient it leads 1.8× at 100 and 1.1× at 200,
/// falling behind by 256 (its gradient is a second pass over the tile and a transposition
/// back, where the row path streams).
const SHORT_CLASSES_WITH_GRADIENT: usize = 200;

/// … and for probabilities, the loss alone or with a gradient. Measured on AVX2 (2 threads,
/// f32, 10 Mi values): the short path leads 2.4× (forward) and 2.4× (with the gradient) at
/// C = 16, 1.6× and 1.6× at 32, about even at 64 (1.3× with smoothing or metrics) and behind
/// by 128 (0.7×: a plain row reads its target's value alone; the short path, every value).
const SHORT_PROBABILITY_CLASSES: usize = 64;

/// Lanes of the widest level (AVX-512): the size of the per-lane scratch arrays.
const MAX_LANES: usize = 16;

/// At most this many tiles transposed ahead of their compute (see `ShortRows::eval`).
const GROUP: usize = 4;

/// A group's values at most (16 KiB of f32), so that a group, its dense targets and a
/// tile's exps stay in L1 (a group holds one tile at least: past 256 classes of 16 lanes, or
/// 512 of 8, that tile alone is larger).
const GROUP_VALUES: usize = 4096;

impl Call<'_> {
    /// Whether this call's softmax rows take the short-row path: logits of at most
    /// [`SHORT_CLASSES`] classes ([`SHORT_CLASSES_WITH_GRADIENT`] when `wants_grad`),
    /// probabilities of at most [`SHORT_PROBABILITY_CLASSES`] (not with focal loss). The one
    /// place the choice is made.
    pub(super) fn takes_short_path(&self, wants_grad: bool) -> bool {
        let Loss::Softmax(options) = self.plan.loss else {
            return false;
        };
        let most = match options.input {
            // Focal loss on probabilities needs a power per value: the f64 row path.
            InputKind::Probabilities { .. } if options.is_focal() => 0,
            InputKind::Probabilities { .. } => SHORT_PROBABILITY_CLASSES,
            InputKind::Logits if wants_grad => SHORT_CLASSES_WITH_GRADIENT,
            InputKind::Logits => SHORT_CLASSES,
        };
        self.plan.classes <= most
    }

    /// One block of short rows (the module docs), starting at row `first_row`.
    pub(super) fn short_block<T: Element>(
        &self,
        first_row: usize,
        mut src: Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
        columns: Columns<'_>,
    ) -> BlockOut {
        let shape = self.block_shape(src.get(), grad.is_some(), in_place);
        let mut out = BlockOut::default();
        simd::dispatch(
            self.level,
            ShortRows {
                call: self,
                shape,
                first_row,
                src: &mut src,
                grad,
                in_place,
                out: &mut out,
                columns,
            },
        );
        out
    }
}

/// The SIMD body of [`Call::short_block`].
struct ShortRows<'c, 'd, 'o, T> {
    call: &'c Call<'c>,
    shape: BlockShape,
    first_row: usize,
    src: &'c mut Data<'d, T>,
    grad: Option<&'c mut [f32]>,
    in_place: bool,
    out: &'c mut BlockOut,
    columns: Columns<'o>,
}

impl<T: Element> SimdOp for ShortRows<'_, '_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let lanes = isa.f32().len();
        let vector = Vector::of(isa);
        let (classes, rows) = (self.shape.classes, self.shape.rows);
        let ignore = self.call.plan.softmax().ignore_index;
        let k = Consts::new(self.call, classes);
        let floor = match self.call.plan.softmax().input {
            InputKind::Probabilities { eps } => Some(eps),
            InputKind::Logits => None,
        };
        // Per class `c`, lanes `c·L .. (c+1)·L` of a tile: its exps, then its gradient.
        let mut e = vec![
            0f32;
            if self.shape.wants_grad {
                classes * lanes
            } else {
                0
            }
        ];
        // Focal loss over every class: each class's `a·g`, for the gradient.
        let focal_grads = matches!(k.focal, Some(f) if f.per_class) && self.shape.wants_grad;
        let mut ag = vec![0f32; if focal_grads { classes * lanes } else { 0 }];
        let mut per = Lanes::default();
        let mut sums = ([0f64; MAX_LANES], [0f64; MAX_LANES]);
        // Tiles are transposed a group at a time, ahead of their compute: a vector load of
        // lanes just written one at a time waits for the stores (no store forwarding); by
        // the time a group's tiles load theirs, those stores are done.
        let layout = self.shape.layout;
        let tiles = (GROUP_VALUES / (classes * lanes)).clamp(1, GROUP);
        let mut group = vec![0f32; tiles * classes * lanes];
        let dense = matches!(self.call.targets, Targets::Dense(_));
        let mut group_t = vec![0f32; if dense { tiles * classes * lanes } else { 0 }];
        let mut group_y = [0f32; GROUP * MAX_LANES];
        for g0 in (0..rows).step_by(tiles * lanes) {
            let gn = (tiles * lanes).min(rows - g0);
            load_group(
                self.src.get(),
                layout,
                classes,
                (g0, gn),
                (lanes, vector),
                &mut group,
            );
            let r0 = self.first_row + g0;
            match self.call.targets {
                Targets::I32(t) => lane_targets(&t[r0..r0 + gn], ignore, &mut group_y),
                Targets::I64(t) => lane_targets(&t[r0..r0 + gn], ignore, &mut group_y),
                Targets::Dense(t) => {
                    // Dense targets follow the logits' layout, from the block's first row
                    // (a block holds whole samples); every row is valid, its `y` C: no class.
                    let block = &t[self.first_row * classes..];
                    load_group(
                        block,
                        layout,
                        classes,
                        (g0, gn),
                        (lanes, vector),
                        &mut group_t,
                    );
                    group_y[..gn].fill(classes as f32);
                }
            }
            group_y[gn..gn.next_multiple_of(lanes)].fill(-1.0);
            let mut tiles_t = group_t.chunks_exact(classes * lanes);
            for (tile, z) in group.chunks_exact_mut(classes * lanes).enumerate() {
                let i0 = g0 + tile * lanes;
                if i0 >= g0 + gn {
                    break;
                }
                let n = lanes.min(g0 + gn - i0);
                let targets = TileTargets {
                    y: &group_y[tile * lanes..(tile + 1) * lanes],
                    dense: tiles_t.next(),
                };
                if let Some(floor) = floor {
                    let tile = (floor, (&*z, &mut e[..]), targets, (i0, n));
                    let (per, sums) = (&mut per, &mut sums.0);
                    match self.shape.wants_grad {
                        false => self.probability_tile::<I, false>(isa, &k, tile, per, sums),
                        true => self.probability_tile::<I, true>(isa, &k, tile, per, sums),
                    }
                    continue;
                }
                let (z, e, n) = ((z, &mut e[..], &mut ag[..]), targets, (i0, n));
                let (per, sums) = (&mut per, &mut sums);
                macro_rules! tile {
                    ($plain:literal, $grad:literal, $metrics:literal) => {
                        self.tile::<I, $plain, $grad, $metrics>(isa, &k, z, e, n, per, sums)
                    };
                }
                match (k.plain, self.shape.wants_grad, self.call.want_metrics) {
                    (true, false, false) => tile!(true, false, false),
                    (true, false, true) => tile!(true, false, true),
                    (true, true, false) => tile!(true, true, false),
                    (true, true, true) => tile!(true, true, true),
                    (false, false, false) => tile!(false, false, false),
                    (false, false, true) => tile!(false, false, true),
                    (false, true, false) => tile!(false, true, false),
                    (false, true, true) => tile!(false, true, true),
                }
            }
        }
        self.out.ce += sums.0.iter().sum::<f64>();
        self.out.z_loss += sums.1.iter().sum::<f64>();
    }
}

/// `sum + e` with its rounding error added to `err` (Fast2Sum); S adds `err` at the end. A
/// confident row's S reaches 1 at its max, and every later exp under half an ulp of 1 would
/// vanish (all of `1 − p[y]`); the row path sums in parts of a few vectors instead, but here
/// one lane's sum runs over every class. Exact while `sum ≥ e`, as once the max's 1 is in;
/// before that off by an ulp of the sum at most.
#[inline(always)]
fn add_exp<I: Isa>(isa: I, (sum, err): (I::F32, I::F32), e: I::F32) -> (I::F32, I::F32) {
    let ops = isa.f32();
    let new = ops.add(sum, e);
    (new, ops.add(err, ops.sub(e, ops.sub(new, sum))))
}

impl<T: Element> ShortRows<'_, '_, '_, T> {
    /// One tile: rows `i0 .. i0 + n` of the block (the module docs), `z` its transposed
    /// logits, `tile_y` its lanes' targets; adds each row's loss terms to `sums` (per lane).
    ///
    /// `PLAIN` ([`Consts::plain`]), `GRAD` (the gradient is asked) and `METRICS` are
    /// constants so that each combination's class loops carry only their own work: a runtime
    /// flag's branch and the values it keeps alive cost the short loops more than the work
    /// they guard (with metrics outside `PLAIN`, the max spilled to the stack in pass 1).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn tile<I: Isa, const PLAIN: bool, const GRAD: bool, const METRICS: bool>(
        &mut self,
        isa: I,
        k: &Consts<'_>,
        (z, e, ag): (&mut [f32], &mut [f32], &mut [f32]),
        targets: TileTargets<'_>,
        (i0, n): (usize, usize),
        per: &mut Lanes,
        sums: &mut ([f64; MAX_LANES], [f64; MAX_LANES]),
    ) {
        let ops = isa.f32();
        let lanes = ops.len();
        let (classes, layout) = (self.shape.classes, self.shape.layout);
        let call = self.call;
        let Consts {
            transform,
            eps,
            uniform,
            lambda,
            weight_sum,
            ..
        } = *k;
        // What a plain call has not, as constants.
        let (eps, uniform) = if PLAIN { (0.0, 0.0) } else { (eps, uniform) };
        let class_weights = if PLAIN { None } else { k.w };
        let want_metrics = METRICS;
        let (zero, one) = (ops.zero(), ops.one());
        let (neg_inf, pos_inf, nan) = (
            ops.splat(f32::NEG_INFINITY),
            ops.splat(f32::INFINITY),
            ops.splat(f32::NAN),
        );
        let lowest = ops.splat(f32::MIN);
        let none = ops.splat(classes as f32);

        // Pass 1: z and the max (plain: z is x).
        let mut m = neg_inf;
        for zc in z.chunks_exact_mut(lanes) {
            let x = ops.load(zc);
            let zv = if PLAIN { x } else { transform.apply(isa, x) };
            if !PLAIN {
                ops.store(zv, zc);
            }
            m = ops.max(m, zv);
        }

        // Per-lane targets, weights and scales.
        let (tile_y, dense) = (targets.y, if PLAIN { None } else { targets.dense });
        let r0 = self.first_row + i0;
        let y = ops.load(tile_y);
        let valid = ops.ge(y, zero);
        let (w_y, sample) = lanes::row_weights(
            isa,
            call,
            (class_weights, dense),
            (tile_y, valid),
            (r0, n),
            per,
        );

        // Pass 2: exps at the max, their sum, d[y], Σ w·d, Σ e·d, the first max; with dense
        // targets Σ w·t, Σ w·t·d, Σ t·e and the targets' first max.
        let (mut s, mut d_y, mut wz, mut ez, mut arg) = (zero, zero, zero, zero, none);
        let (mut wt, mut wtz, mut te, mut t_max, mut t_arg) = (zero, zero, zero, neg_inf, none);
        let (mut class, mut s_err) = (zero, zero);
        // Two classes (a plain call): one of `d₀`, `d₁` is the max's 0 in a finite row, so
        // `d₀ + d₁` is the other, the one exp a row needs; S = 1 + that exp, whose Fast2Sum is
        // exact (1 ≥ e). A NaN or infinite row makes the sum NaN, as the loop would.
        let pair = PLAIN && !METRICS && classes == 2;
        if pair {
            let (d0, d1) = (
                ops.sub(ops.load(&z[..lanes]), m),
                ops.sub(ops.load(&z[lanes..]), m),
            );
            let e_other = ShiftedExp.eval(isa, ops.add(d0, d1));
            (s, s_err) = add_exp(isa, (one, zero), e_other);
            if GRAD {
                ops.store(ops.select(one, e_other, ops.eq(d0, zero)), e);
                ops.store(ops.select(one, e_other, ops.eq(d1, zero)), &mut e[lanes..]);
            }
            let zero_or_d1 = ops.select(d1, zero, ops.eq(y, one));
            d_y = ops.select(d0, zero_or_d1, ops.eq(y, zero));
        }
        let looped = if pair { 0 } else { classes };
        for (c, zc) in z[..looped * lanes].chunks_exact(lanes).enumerate() {
            let zc = ops.load(zc);
            let d = ops.sub(zc, m);
            let ec = ShiftedExp.eval(isa, d);
            // With its rounding errors apart: at C = 512, 511 terms of 6e-8 after the max's 1
            // would otherwise vanish (3e-5 of the loss, and all of 1 − p[y]).
            (s, s_err) = add_exp(isa, (s, s_err), ec);
            if GRAD {
                ops.store(ec, &mut e[c * lanes..]);
            }
            let w = ops.splat(class_weights.map_or(1.0, |w| w[c]));
            // `linear_term`: a zero coefficient leaves its term out, also where d = −inf.
            match dense {
                None => d_y = ops.select(d, d_y, ops.eq(y, class)),
                Some(t) => {
                    let tc = ops.load(&t[c * lanes..]);
                    let wtc = ops.mul(w, tc);
                    wt = ops.add(wt, wtc);
                    wtz = ops.add(wtz, linear_term(isa, wtc, d));
                    te = ops.mul_add(tc, ec, te);
                    if want_metrics {
                        t_arg = ops.select(class, t_arg, ops.gt(tc, t_max));
                        t_max = ops.max(t_max, tc);
                    }
                }
            }
            if eps > 0.0 {
                wz = ops.add(wz, linear_term(isa, w, d));
            }
            if want_metrics {
                ez = ops.mul_add(ec, ops.max(d, lowest), ez);
                arg = ops.min(arg, ops.select(class, none, ops.eq(zc, m)));
            }
            class = ops.add(class, one);
        }
        let s = ops.add(s, s_err);

        // The finish (SEMANTICS.md sections 2, 5, 6). A row is finite when its max is and its
        // S is not NaN (a NaN logit makes S NaN; a NaN lane's `m` is whatever the max op made
        // of it). The rare tile with a row that is not finite looks for its NaNs' first class.
        let finite = isa.m32().and(ops.lt(ops.abs(m), pos_inf), ops.eq(s, s));
        let mut nan_arg = none;
        if !isa.m32().all(finite) {
            for c in 0..classes {
                let zc = ops.load(&z[c * lanes..]);
                let class = ops.splat(c as f32);
                nan_arg = ops.min(nan_arg, ops.select(none, class, ops.eq(zc, zc)));
            }
        }
        let has_nan = ops.lt(nan_arg, none);
        let log_sum = LnSum.eval(isa, s);
        let lse = ops.select(ops.add(m, log_sum), ops.select(nan, m, has_nan), finite);
        let logp_y = ops.sub(d_y, log_sum);
        // The coefficient of p[c] in the gradient, and the cross-entropy part, zero
        // coefficients leaving their terms out (sections 2, 3):
        // index targets: −(1−ε)·w[y]·logp[y] + (ε/C)·(W·ln S − Σ w·d), p: (1−ε)·w[y] + (ε/C)·W;
        // dense: Σ w·t'·ln S − Σ w·t'·d with t' = (1−ε)·t + ε/C, p: Σ w·t'.
        // Focal loss (the module docs): on every class (never in a plain call), or on the
        // target, whose gradient coefficient `(1−ε)·w[y]` becomes `w[y]·g[y]`.
        let keep = ops.splat(1.0 - eps);
        let kept = |v| if eps < 1.0 { ops.mul(keep, v) } else { zero };
        let focal_classes = k.focal.filter(|f| !PLAIN && f.per_class);
        let mut w_target = ops.mul(keep, w_y);
        let (mut ce, p_coefficient) = match (dense, k.focal, focal_classes) {
            (_, _, Some(f)) => {
                let m_lse = (m, log_sum);
                let y = (y, dense);
                let (fl, k_sum) = focal_pass::<I, GRAD>(isa, k, f, z, m_lse, y, ag, per);
                (ops.neg(fl), k_sum)
            }
            (None, Some(f), None) => {
                // (A plain call has no smoothing: its focal loss is on the target alone.)
                debug_assert!(!f.per_class);
                let (f_y, g_y) = lanes::focal_factors(isa, f, logp_y, per);
                w_target = ops.mul(w_y, g_y);
                let target = linear_term(isa, w_y, ops.mul(f_y, logp_y));
                (ops.neg(target), w_target)
            }
            (None, None, None) => {
                let target = linear_term(isa, w_y, logp_y);
                let p = ops.mul_add(keep, w_y, ops.splat(uniform * weight_sum));
                (ops.neg(kept(target)), p)
            }
            // (Dense targets with focal loss have it on every class, above.)
            (Some(_), _, None) => {
                let wt = ops.add(kept(wt), ops.splat(uniform * weight_sum));
                (ops.sub(ops.mul(wt, log_sum), kept(wtz)), wt)
            }
        };
        // (Dense: `ce` holds Σ w·t'·ln S − (1−ε)·Σ w·t·d; the ε/C part of Σ w·t'·d is below.)
        if uniform > 0.0 && focal_classes.is_none() {
            let smooth = match dense {
                None => ops.sub(ops.mul(ops.splat(weight_sum), log_sum), wz),
                Some(_) => ops.neg(wz),
            };
            ce = ops.mul_add(ops.splat(uniform), smooth, ce);
        }
        let ce = ops.select(ce, nan, finite);
        let z_loss = if lambda > 0.0 {
            ops.mul(ops.splat(lambda), ops.mul(lse, lse))
        } else {
            zero
        };
        // NaN rows are decided before the sample weight (as the row path does).
        let not_nan_row = ops.eq(ce, ce);
        // s[n] is a coefficient: s = 0 leaves the row out, also an infinite one (section 6);
        // a NaN row stays NaN.
        let unweighted = ops.eq(sample, zero);
        let weighted = |v| {
            let out = ops.select(zero, ops.mul(v, sample), unweighted);
            ops.select(out, v, ops.eq(v, v))
        };
        let (ce, z_loss) = (weighted(ce), weighted(z_loss));
        let loss = ops.select(ops.add(ce, z_loss), nan, not_nan_row);
        let (ce, z_loss, loss) = (
            ops.select(ce, zero, valid),
            ops.select(z_loss, zero, valid),
            ops.select(loss, zero, valid),
        );

        // Per-lane f64 sums (independent chains; fixed by the block, not the threads). Every
        // lane is added (padding lanes hold 0): a loop bounded by `n` becomes masked stores.
        let (ce, z_loss) = (ce.to_array(), z_loss.to_array());
        for j in 0..lanes {
            sums.0[j] += ce.as_ref()[j] as f64;
        }
        if lambda > 0.0 {
            for j in 0..lanes {
                sums.1[j] += z_loss.as_ref()[j] as f64;
            }
        }
        let metrics = want_metrics.then(|| {
            let target_prob = match dense {
                None => ShiftedExp.eval(isa, logp_y),
                Some(_) => ops.div(te, s),
            };
            let target_prob = ops.select(target_prob, nan, finite);
            let target_prob = ops.select(target_prob, zero, valid);
            let entropy = ops.select(ops.sub(log_sum, ops.div(ez, s)), nan, finite);
            TileMetrics {
                argmax: ops.select(nan_arg, arg, has_nan),
                target_class: if dense.is_some() { t_arg } else { y },
                target_prob,
                entropy,
                confidence: ops.select(ops.div(one, s), nan, finite),
            }
        });
        let lse_asked = call.want_lse.then_some(lse);
        TileRows {
            loss,
            lse: lse_asked,
            metrics,
        }
        .write(&mut self.columns, call.want_rows, (i0, n), tile_y);
        if !GRAD {
            return;
        }

        // The gradient: K·p − a·(ε/C)·w[c], less a·(1−ε)·w[y] at the target (dense: less
        // a·(1−ε)·w[c]·t[c]), times dz/dx; 0 for ignored rows and NaN for rows that are not
        // finite (section 6).
        let (a, b) = lanes::scales(isa, call, (r0, n), per);
        let k_p = ops.mul_add(
            a,
            p_coefficient,
            ops.mul(ops.mul(b, ops.splat(2.0 * lambda)), lse),
        );
        let k_over_s = ops.div(k_p, s);
        let target = ops.mul(a, w_target);
        let a_uniform = ops.mul(a, ops.splat(uniform));
        let a_keep = ops.mul(a, keep);
        let fill = ops.select(nan, zero, valid);
        let keep = isa.m32().and(valid, finite);
        let mut class = zero;
        for (c, (zc, ec)) in z
            .chunks_exact(lanes)
            .zip(e.chunks_exact_mut(lanes))
            .enumerate()
        {
            let w = ops.splat(class_weights.map_or(1.0, |w| w[c]));
            let p_term = ops.mul(k_over_s, ops.load(ec));
            let dz = if focal_classes.is_some() {
                ops.mul_sub_from(a, ops.load(&ag[c * lanes..]), p_term)
            } else {
                // Also in a plain call, where ε = 0: an infinite upstream `a` makes the term
                // NaN, as on every other path.
                let dz = ops.mul_sub_from(a_uniform, w, p_term);
                match dense {
                    None => ops.select(ops.sub(dz, target), dz, ops.eq(y, class)),
                    Some(t) => {
                        let tc = ops.load(&t[c * lanes..]);
                        ops.mul_sub_from(ops.mul(a_keep, w), tc, dz)
                    }
                }
            };
            let dx = if PLAIN {
                dz
            } else {
                ops.mul(dz, transform.slope(isa, ops.load(zc)))
            };
            ops.store(ops.select(dx, fill, keep), ec);
            class = ops.add(class, one);
        }
        store_tile(
            e,
            layout,
            classes,
            (i0, n),
            (lanes, Vector::of(isa)),
            (self.src, self.grad.as_deref_mut(), self.in_place),
        );
    }
}

/// Focal loss over every class of a tile (smoothing or dense targets; the module docs), once
/// each lane's `m` and `ln S` are known: `(Σ a·f·l, K = Σ a·g)` with `a[c] = w[c]·t'[c]`,
/// and with `GRAD` each class's `a·g` in `ag` (the layout of the tile) for the gradient.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn focal_pass<I: Isa, const GRAD: bool>(
    isa: I,
    k: &Consts<'_>,
    focal: TileFocal,
    z: &[f32],
    (m, log_sum): (I::F32, I::F32),
    (y, dense): (I::F32, Option<&[f32]>),
    ag: &mut [f32],
    per: &mut Lanes,
) -> (I::F32, I::F32) {
    let ops = isa.f32();
    let lanes = ops.len();
    let (zero, one) = (ops.zero(), ops.one());
    let (keep, uniform) = (ops.splat(1.0 - k.eps), ops.splat(k.uniform));
    let target = ops.add(keep, uniform);
    let (mut fl, mut k_sum, mut class) = (zero, zero, zero);
    for (c, zc) in z.chunks_exact(lanes).enumerate() {
        // `(z − m) − ln S`: the split form of section 1.
        let l = ops.sub(ops.sub(ops.load(zc), m), log_sum);
        let (f, g) = lanes::focal_factors(isa, focal, l, per);
        let t = match dense {
            Some(t) => ops.mul_add(keep, ops.load(&t[c * lanes..]), uniform),
            None => ops.select(target, uniform, ops.eq(y, class)),
        };
        let a = ops.mul(ops.splat(k.w.map_or(1.0, |w| w[c])), t);
        // A zero a[c] leaves the class out (a masked class has l = −inf).
        fl = ops.add(fl, linear_term(isa, a, ops.mul(f, l)));
        let a_g = ops.mul(a, g);
        k_sum = ops.add(k_sum, a_g);
        if GRAD {
            ops.store(a_g, &mut ag[c * lanes..]);
        }
        class = ops.add(class, one);
    }
    (fl, k_sum)
}
