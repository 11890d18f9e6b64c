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
//! A row with a NaN, a +inf or only −inf logits follows section 6 in its lane (NaN loss and
//! gradient, its LSE and argmax as the row path gives them), so no row leaves the tile.
//! Index targets, logits input and no focal loss: the rest takes the row path
//! ([`Call::takes_short_path`]).
//!
//! Bytes: one read of the logits (and one write of the gradient), as the row path; the
//! transposition runs in L1.

use super::blocks::BlockShape;
use super::log::LnSum;
use super::row::{load, Transform};
use super::{simd, BlockOut, Call, Data};
use crate::cpu::exp::ShiftedExp;
use crate::input::{Element, Layout, Targets};
use crate::options::{InputKind, Reduction};
use crate::plan::Loss;
use rten_simd::ops::{BitOps, FloatOps, MaskOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};

/// Rows of at most this many classes take the short-row path.
pub(super) const SHORT_CLASSES: usize = 64;

/// Lanes of the widest level (AVX-512): the size of the per-lane scratch arrays.
const MAX_LANES: usize = 16;

/// Tiles transposed ahead of their compute (see `ShortRows::eval`).
const GROUP: usize = 4;

impl Call<'_> {
    /// Whether this call's softmax rows take the short-row path: logits (not
    /// probabilities), index targets, no focal loss, and at most [`SHORT_CLASSES`] classes.
    /// The one place the choice is made.
    pub(super) fn takes_short_path(&self) -> bool {
        let Loss::Softmax(options) = self.plan.loss else {
            return false;
        };
        self.plan.classes <= SHORT_CLASSES
            && matches!(options.input, InputKind::Logits)
            && !matches!(self.targets, Targets::Dense(_))
            && !options.is_focal()
    }

    /// One block of short rows (the module docs), starting at row `first_row`.
    pub(super) fn short_block<T: Element>(
        &self,
        first_row: usize,
        mut src: Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
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
            },
        );
        out
    }
}

/// The SIMD body of [`Call::short_block`].
struct ShortRows<'c, 'd, T> {
    call: &'c Call<'c>,
    shape: BlockShape,
    first_row: usize,
    src: &'c mut Data<'d, T>,
    grad: Option<&'c mut [f32]>,
    in_place: bool,
    out: &'c mut BlockOut,
}

/// Per-lane values of one tile, as arrays (lanes past the tile's rows are padding).
#[derive(Default)]
struct Lanes {
    /// `w[y]` (0 when ignored).
    w_y: [f32; MAX_LANES],
}

/// Each lane's target as f32 (exact: `C ≤ SHORT_CLASSES`), −1 where it is `ignore`.
#[inline(always)]
fn lane_targets<Y: Copy + Into<i64>>(targets: &[Y], ignore: i64, y: &mut [f32]) {
    for (y, &t) in y.iter_mut().zip(targets) {
        let t: i64 = t.into();
        *y = if t == ignore { -1.0 } else { t as f32 };
    }
}

/// The gradient's scales `a` (cross-entropy) and `b` (z-loss) of a row, as vectors: the
/// reduction's `plan.row_scales` (`math::reduce::row_scales`) in f32, times the sample weight.
struct Scales<'a> {
    /// Per-row upstream values (`Reduction::None`).
    per_row: Option<&'a [f32]>,
    /// The scalar factors of `a` and `b`.
    a: f32,
    b: f32,
}

impl<'a> Scales<'a> {
    fn new(call: &Call<'a>) -> Scales<'a> {
        let plan = call.plan;
        let u = plan.upstream_scalar as f64;
        match plan.reduction {
            Reduction::None => Scales {
                per_row: call.upstream,
                a: 1.0,
                b: 1.0,
            },
            Reduction::Sum => Scales {
                per_row: None,
                a: u as f32,
                b: u as f32,
            },
            Reduction::Mean => Scales {
                per_row: None,
                a: (u / plan.denominator) as f32,
                b: (u / plan.z_denominator) as f32,
            },
        }
    }

    /// `(a, b)` of rows `r0 .. r0 + n`, whose sample weights are `sample`.
    #[inline(always)]
    fn of<I: Isa>(&self, isa: I, r0: usize, n: usize, sample: I::F32) -> (I::F32, I::F32) {
        let ops = isa.f32();
        let sample = match self.per_row {
            Some(u) => ops.mul(sample, load(isa, &u[r0..r0 + n])),
            None => sample,
        };
        (
            ops.mul(sample, ops.splat(self.a)),
            ops.mul(sample, ops.splat(self.b)),
        )
    }
}

impl<T: Element> SimdOp for ShortRows<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) {
        let lanes = isa.f32().len();
        let (classes, rows) = (self.shape.classes, self.shape.rows);
        let ignore = self.call.plan.softmax().ignore_index;
        let k = Consts::new(self.call, classes);
        // Per class `c`, lanes `c·L .. (c+1)·L` of a tile: its exps, then its gradient.
        let mut e = vec![
            0f32;
            if self.shape.wants_grad {
                classes * lanes
            } else {
                0
            }
        ];
        let mut per = Lanes::default();
        let mut sums = ([0f64; MAX_LANES], [0f64; MAX_LANES]);
        // Tiles are transposed GROUP at a time, ahead of their compute: a vector load of
        // lanes just written one at a time waits for the stores (no store forwarding); by
        // the time a group's tiles load theirs, those stores are done.
        let mut group = vec![0f32; GROUP * classes * lanes];
        let mut group_y = [0f32; GROUP * MAX_LANES];
        for g0 in (0..rows).step_by(GROUP * lanes) {
            let gn = (GROUP * lanes).min(rows - g0);
            load_group(
                self.src.get(),
                self.shape.layout,
                classes,
                (g0, gn),
                lanes,
                &mut group,
            );
            let r0 = self.first_row + g0;
            match self.call.targets {
                Targets::I32(t) => lane_targets(&t[r0..r0 + gn], ignore, &mut group_y),
                Targets::I64(t) => lane_targets(&t[r0..r0 + gn], ignore, &mut group_y),
                Targets::Dense(_) => unreachable!("the short path takes index targets"),
            }
            group_y[gn..gn.next_multiple_of(lanes)].fill(-1.0);
            for (tile, z) in group.chunks_exact_mut(classes * lanes).enumerate() {
                let i0 = g0 + tile * lanes;
                if i0 >= g0 + gn {
                    break;
                }
                let n = lanes.min(g0 + gn - i0);
                let tile_y = &group_y[tile * lanes..(tile + 1) * lanes];
                self.tile(isa, &k, (z, &mut e), tile_y, (i0, n), &mut per, &mut sums);
            }
        }
        self.out.ce += sums.0.iter().sum::<f64>();
        self.out.z_loss += sums.1.iter().sum::<f64>();
    }
}

/// What every tile of a call shares.
struct Consts<'a> {
    transform: Transform,
    eps: f32,
    /// `ε / C`.
    uniform: f32,
    lambda: f32,
    /// `W = Σ w`.
    weight_sum: f32,
    w: Option<&'a [f32]>,
    scales: Scales<'a>,
}

impl<'a> Consts<'a> {
    fn new(call: &Call<'a>, classes: usize) -> Consts<'a> {
        let options = call.plan.softmax();
        Consts {
            transform: Transform::of(&options),
            eps: options.label_smoothing,
            uniform: options.label_smoothing / classes as f32,
            lambda: options.z_loss,
            weight_sum: call.plan.class_weight_sum as f32,
            w: call.w,
            scales: Scales::new(call),
        }
    }
}

impl<T: Element> ShortRows<'_, '_, T> {
    /// One tile: rows `i0 .. i0 + n` of the block (the module docs), `z` its transposed
    /// logits, `tile_y` its lanes' targets; adds each row's loss terms to `sums` (per lane).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn tile<I: Isa>(
        &mut self,
        isa: I,
        k: &Consts<'_>,
        (z, e): (&mut [f32], &mut [f32]),
        tile_y: &[f32],
        (i0, n): (usize, usize),
        per: &mut Lanes,
        sums: &mut ([f64; MAX_LANES], [f64; MAX_LANES]),
    ) {
        let ops = isa.f32();
        let lanes = ops.len();
        let (classes, layout, wants_grad) =
            (self.shape.classes, self.shape.layout, self.shape.wants_grad);
        let call = self.call;
        let Consts {
            transform,
            eps,
            uniform,
            lambda,
            weight_sum,
            ..
        } = *k;
        let want_metrics = call.want_metrics;
        let (zero, one) = (ops.zero(), ops.one());
        let (neg_inf, pos_inf, nan) = (
            ops.splat(f32::NEG_INFINITY),
            ops.splat(f32::INFINITY),
            ops.splat(f32::NAN),
        );
        let lowest = ops.splat(f32::MIN);
        let none = ops.splat(classes as f32);

        // Pass 1: z and the max.
        let mut m = neg_inf;
        for c in 0..classes {
            let zc = transform.apply(isa, ops.load(&z[c * lanes..]));
            ops.store(zc, &mut z[c * lanes..]);
            m = ops.max(m, zc);
        }

        // Per-lane targets, weights and scales.
        let r0 = self.first_row + i0;
        let y = ops.load(tile_y);
        let valid = ops.ge(y, zero);
        let w_y = match k.w {
            None => ops.select(one, zero, valid),
            Some(w) => {
                for (w_y, &y) in per.w_y.iter_mut().zip(tile_y) {
                    *w_y = if y >= 0.0 { w[y as usize] } else { 0.0 };
                }
                ops.load(&per.w_y)
            }
        };
        let sample = call
            .sample_weights
            .map_or(one, |s| load(isa, &s[r0..r0 + n]));

        // Pass 2: exps at the max, their sum, d[y], Σ w·d, Σ e·d, the first max.
        let (mut s, mut d_y, mut wz, mut ez, mut arg) = (zero, zero, zero, zero, none);
        for c in 0..classes {
            let zc = ops.load(&z[c * lanes..]);
            let d = ops.sub(zc, m);
            let ec = ShiftedExp.eval(isa, d);
            s = ops.add(s, ec);
            if wants_grad {
                ops.store(ec, &mut e[c * lanes..]);
            }
            let class = ops.splat(c as f32);
            d_y = ops.select(d, d_y, ops.eq(y, class));
            if eps > 0.0 {
                let w = ops.splat(k.w.map_or(1.0, |w| w[c]));
                // A class of weight 0 is absent, also when masked (d = −inf).
                wz = ops.add(wz, ops.select(zero, ops.mul(w, d), ops.eq(w, zero)));
            }
            if want_metrics {
                ez = ops.mul_add(ec, ops.max(d, lowest), ez);
                arg = ops.min(arg, ops.select(class, none, ops.eq(zc, m)));
            }
        }

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
        // −(1−ε)·w[y]·logp[y] + (ε/C)·(W·ln S − Σ w·d), zero coefficients leaving
        // their terms out.
        let mut ce = if eps < 1.0 {
            let target = ops.select(zero, ops.mul(w_y, logp_y), ops.eq(w_y, zero));
            ops.mul(ops.splat(eps - 1.0), target)
        } else {
            zero
        };
        if uniform > 0.0 {
            let smooth = ops.sub(ops.mul(ops.splat(weight_sum), log_sum), wz);
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
        let (ce, z_loss) = (ops.mul(ce, sample), ops.mul(z_loss, sample));
        let loss = ops.select(ops.add(ce, z_loss), nan, not_nan_row);
        let (ce, z_loss, loss) = (
            ops.select(ce, zero, valid),
            ops.select(z_loss, zero, valid),
            ops.select(loss, zero, valid),
        );

        // Per-lane f64 sums (independent chains; fixed by the block, not the threads).
        let (ce, z_loss) = (ce.to_array(), z_loss.to_array());
        for j in 0..n {
            sums.0[j] += ce.as_ref()[j] as f64;
            sums.1[j] += z_loss.as_ref()[j] as f64;
        }
        if call.want_rows {
            self.out
                .losses
                .extend_from_slice(&loss.to_array().as_ref()[..n]);
        }
        if call.want_lse {
            self.out
                .lse
                .extend_from_slice(&lse.to_array().as_ref()[..n]);
        }
        if want_metrics {
            let argmax = ops.select(nan_arg, arg, has_nan).to_array();
            let target_prob = ops.select(ShiftedExp.eval(isa, logp_y), nan, finite);
            let target_prob = ops.select(target_prob, zero, valid);
            let entropy = ops.select(ops.sub(log_sum, ops.div(ez, s)), nan, finite);
            let confidence = ops.select(ops.div(one, s), nan, finite);
            let (target_prob, entropy, confidence) = (
                target_prob.to_array(),
                entropy.to_array(),
                confidence.to_array(),
            );
            let m = &mut self.out.metrics;
            for (j, &y) in tile_y[..n].iter().enumerate() {
                let argmax = argmax.as_ref()[j];
                m.argmax.push(argmax as u32);
                m.correct.push(y >= 0.0 && argmax == y);
                m.target_prob.push(target_prob.as_ref()[j]);
                m.entropy.push(entropy.as_ref()[j]);
                m.confidence.push(confidence.as_ref()[j]);
                m.valid.push(y >= 0.0);
            }
        }
        if !wants_grad {
            return;
        }

        // The gradient: K·p − a·(ε/C)·w[c], less a·(1−ε)·w[y] at the target, times dz/dx;
        // 0 for ignored rows and NaN for rows that are not finite (section 6).
        let (a, b) = k.scales.of(isa, r0, n, sample);
        let p_coefficient = ops.mul_add(ops.splat(1.0 - eps), w_y, ops.splat(uniform * weight_sum));
        let k_p = ops.mul_add(
            a,
            p_coefficient,
            ops.mul(ops.mul(b, ops.splat(2.0 * lambda)), lse),
        );
        let k_over_s = ops.div(k_p, s);
        let target = ops.mul(a, ops.mul(ops.splat(1.0 - eps), w_y));
        let a_uniform = ops.mul(a, ops.splat(uniform));
        let fill = ops.select(nan, zero, valid);
        let keep = isa.m32().and(valid, finite);
        for c in 0..classes {
            let zc = ops.load(&z[c * lanes..]);
            let ec = ops.load(&e[c * lanes..]);
            let w = ops.splat(k.w.map_or(1.0, |w| w[c]));
            let mut dz = ops.mul_sub_from(a_uniform, w, ops.mul(k_over_s, ec));
            let at_target = ops.eq(y, ops.splat(c as f32));
            dz = ops.select(ops.sub(dz, target), dz, at_target);
            let dx = ops.mul(dz, transform.slope(isa, zc));
            ops.store(ops.select(dx, fill, keep), &mut e[c * lanes..]);
        }
        store_tile(
            e,
            layout,
            classes,
            (i0, n),
            lanes,
            (self.src, self.grad.as_deref_mut(), self.in_place),
        );
    }
}

/// Loads rows `g0 .. g0 + gn` of a block into `group`, tile after tile (see [`load_tile`]).
#[inline(always)]
fn load_group<T: Element>(
    block: &[T],
    layout: Layout,
    classes: usize,
    (g0, gn): (usize, usize),
    lanes: usize,
    group: &mut [f32],
) {
    for (t, tile) in group.chunks_exact_mut(classes * lanes).enumerate() {
        let i0 = g0 + t * lanes;
        if i0 >= g0 + gn {
            break;
        }
        load_tile(
            block,
            layout,
            classes,
            (i0, lanes.min(g0 + gn - i0)),
            lanes,
            tile,
        );
    }
}

/// Loads rows `i0 .. i0 + n` of a block into `tile` (class `c` at `c·lanes`, lane `j` row
/// `i0 + j`), widened to f32; padding lanes get 0.
#[inline(always)]
fn load_tile<T: Element>(
    block: &[T],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    lanes: usize,
    tile: &mut [f32],
) {
    if n < lanes {
        tile.fill(0.0);
    }
    match layout {
        Layout::Rows => {
            // Class by class, a strided walk of the tile's rows (in L1).
            let rows = &block[i0 * classes..(i0 + n) * classes];
            assert!(n <= lanes && tile.len() >= classes * lanes);
            for (j, row) in rows.chunks_exact(classes).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    // SAFETY: c < classes and j < n ≤ lanes, so c·lanes + j < classes·lanes
                    // ≤ tile.len() (asserted above). Checked indexing here costs more than
                    // the transposition's load and store together.
                    unsafe { *tile.get_unchecked_mut(c * lanes + j) = v.to_f32() };
                }
            }
        }
        Layout::ClassDim1 { spatial } if i0 / spatial == (i0 + n - 1) / spatial => {
            // One sample: each class's lanes are contiguous.
            let base = layout.offset(i0, 0, classes);
            for (c, lane) in tile.chunks_exact_mut(lanes).enumerate() {
                let run = &block[base + c * spatial..base + c * spatial + n];
                T::widen(run, &mut lane[..n]);
            }
        }
        Layout::ClassDim1 { .. } => {
            for (c, lane) in tile.chunks_exact_mut(lanes).enumerate() {
                for (j, v) in lane[..n].iter_mut().enumerate() {
                    *v = block[layout.offset(i0 + j, c, classes)].to_f32();
                }
            }
        }
    }
}

/// Writes a tile of gradient rows (the layout of [`load_tile`]) into the gradient block, or
/// over the logits in place.
#[inline(always)]
fn store_tile<T: Element>(
    tile: &[f32],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    lanes: usize,
    (src, grad, in_place): (&mut Data<'_, T>, Option<&mut [f32]>, bool),
) {
    match (grad, src) {
        (Some(g), _) => scatter_tile(tile, layout, classes, (i0, n), lanes, g, |v| v),
        (None, Data::Exclusive(d)) if in_place => {
            scatter_tile(tile, layout, classes, (i0, n), lanes, d, T::from_f32)
        }
        _ => {}
    }
}

/// Row `i0 + j`, class `c` of `block` from lane `j` of class `c` of `tile`.
#[inline(always)]
fn scatter_tile<U>(
    tile: &[f32],
    layout: Layout,
    classes: usize,
    (i0, n): (usize, usize),
    lanes: usize,
    block: &mut [U],
    from_f32: impl Fn(f32) -> U,
) {
    match layout {
        Layout::Rows => {
            let rows = &mut block[i0 * classes..(i0 + n) * classes];
            assert!(n <= lanes && tile.len() >= classes * lanes);
            for (j, row) in rows.chunks_exact_mut(classes).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    // SAFETY: as in `load_tile`: c·lanes + j < classes·lanes ≤ tile.len().
                    *v = from_f32(unsafe { *tile.get_unchecked(c * lanes + j) });
                }
            }
        }
        Layout::ClassDim1 { spatial } if i0 / spatial == (i0 + n - 1) / spatial => {
            // One sample: each class's lanes are one contiguous run.
            let base = layout.offset(i0, 0, classes);
            for (c, lane) in tile.chunks_exact(lanes).enumerate() {
                let run = &mut block[base + c * spatial..base + c * spatial + n];
                for (v, &x) in run.iter_mut().zip(lane) {
                    *v = from_f32(x);
                }
            }
        }
        Layout::ClassDim1 { .. } => {
            for (c, lane) in tile.chunks_exact(lanes).enumerate() {
                for (j, &v) in lane[..n].iter().enumerate() {
                    block[layout.offset(i0 + j, c, classes)] = from_f32(v);
                }
            }
        }
    }
}
