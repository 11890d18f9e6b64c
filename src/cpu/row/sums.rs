//! One chunk's sums: the plain pass of the common case (exps at one shift, their sum and the
//! max) and the linear sums that weights and dense targets bring along.

use super::{horizontal_max, load_live, store, CHUNK};
use crate::cpu::exp::ShiftedExp;
use crate::math::online::OnlineSoftmax;
use rten_simd::ops::{BitOps, NumOps};
#[cfg(feature = "cli")]
use rten_simd::SimdOp;
use rten_simd::{Isa, Simd, SimdUnaryOp};

/// The vector sums weights and dense targets bring along the exps: `Σ w·(z − shift)` and `Σ w`
/// (smoothing), `Σ w·t`, `Σ w·t·(z − shift)` and `Σ t·exp(z − shift)` (dense targets).
pub(super) struct LinearSums<V> {
    pub(super) wz: V,
    pub(super) w: V,
    pub(super) wt: V,
    pub(super) wtz: V,
    pub(super) te: V,
}

impl<V: Copy> LinearSums<V> {
    pub(super) fn new(zero: V) -> Self {
        LinearSums {
            wz: zero,
            w: zero,
            wt: zero,
            wtz: zero,
            te: zero,
        }
    }
}

impl<V: Simd<Elem = f32>> LinearSums<V> {
    /// The horizontal totals, as a chunk's sums (the exp sums and max left at 0).
    #[inline(always)]
    pub(super) fn totals<I: Isa<F32 = V>>(self, isa: I) -> ChunkSums {
        let ops = isa.f32();
        ChunkSums {
            sum_te: ops.sum(self.te) as f64,
            sum_wz: ops.sum(self.wz) as f64,
            sum_wt: ops.sum(self.wt) as f64,
            sum_wtz: ops.sum(self.wtz) as f64,
            weight_sum: ops.sum(self.w) as f64,
            ..ChunkSums::default()
        }
    }
}

/// One chunk's sums, with every exp taken at one shift.
#[derive(Default)]
pub(super) struct ChunkSums {
    pub(super) max: f32,
    pub(super) sum_exp: f64,
    pub(super) sum_ez: f64,
    pub(super) sum_te: f64,
    pub(super) sum_wz: f64,
    pub(super) sum_wt: f64,
    pub(super) sum_wtz: f64,
    pub(super) weight_sum: f64,
}

impl ChunkSums {
    /// The chunk's sums as an online-softmax state centred at `shift`, the max its exps and
    /// linear sums were taken at.
    pub(super) fn centred_at(&self, shift: f32) -> OnlineSoftmax {
        OnlineSoftmax {
            max: shift,
            sum_exp: self.sum_exp,
            sum_ez: self.sum_ez,
            sum_te: self.sum_te,
            sum_wz: self.sum_wz,
            weight_sum: self.weight_sum,
            sum_wt: self.sum_wt,
            sum_wtz: self.sum_wtz,
        }
    }
}

/// The forward's inner loop (the plain case: exps at a fixed shift, their sum and the max)
/// over one chunk, `reps` times. With the chunk in L1 this is the forward's compute floor,
/// what it would take if DRAM were free: the criterion bench (`benches/loss.rs`) sets it
/// beside the read of the same number of values.
#[cfg(feature = "cli")]
pub struct ChunkLoop<'a> {
    /// The values (any length).
    pub chunk: &'a [f32],
    /// Passes over `chunk`.
    pub reps: usize,
}

#[cfg(feature = "cli")]
impl SimdOp for ChunkLoop<'_> {
    type Output = f32;

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> f32 {
        let mut sum = 0.0;
        for _ in 0..self.reps {
            let shift = std::hint::black_box(1.0);
            sum += plain_pass(isa, self.chunk, shift, None, None, false).sum_exp;
        }
        sum as f32
    }
}

/// Pairs of vectors whose exps are summed apart before they join a lane's sum (`plain_pass`;
/// the general passes of `forward.rs` take twice as many single vectors).
pub(super) const PAIRS_PER_PART: usize = 8;

/// The common forward case (no dense targets, smoothing or softcap; class weights don't enter
/// the sums then) over a chunk of any length: pairs of vectors, two accumulators each, then
/// what is left a vector at a time (the last one partial, its padding lanes −inf: exps of 0).
/// `scale` is `None` for 1; `keep` receives the exps; `entropy` adds `Σ e·(z − shift)`.
#[inline(always)]
pub(super) fn plain_pass<I: Isa>(
    isa: I,
    xc: &[f32],
    shift: f32,
    scale: Option<f32>,
    mut keep: Option<&mut [f32]>,
    entropy: bool,
) -> ChunkSums {
    let ops = isa.f32();
    let lanes = ops.len();
    let (neg_inf, lowest) = (ops.splat(f32::NEG_INFINITY), ops.splat(f32::MIN));
    let shift_v = ops.splat(shift);
    let scaled = |z: I::F32| scale.map_or(z, |s| ops.mul(z, ops.splat(s)));
    let (mut max0, mut max1) = (neg_inf, neg_inf);
    // The exps go into `part`, added to `sum` every PAIRS_PER_PART pairs: a confident row's
    // sum reaches 1 at its max, where a later exp under half an ulp of 1 would vanish if added
    // alone (a lane's share of the small terms: the loss's, and all of `1 − p[y]`); a part of
    // them loses at most half an ulp. (Fast2Sum, exact, costs the pass 17 %; the short path,
    // one sum over all of a row's classes, takes it.)
    let (mut sum0, mut sum1) = (ops.zero(), ops.zero());
    let (mut ez0, mut ez1) = (ops.zero(), ops.zero());
    let tail = xc.chunks_exact(2 * lanes).remainder();
    let done = xc.len() - tail.len();
    let mut i = 0;
    for part in xc[..done].chunks(2 * lanes * PAIRS_PER_PART) {
        let (mut part0, mut part1) = (ops.zero(), ops.zero());
        for pair in part.chunks_exact(2 * lanes) {
            // The same lines one chunk ahead: the exps keep the core too busy for the
            // hardware prefetcher alone to keep DRAM streaming (7–10 % on 4096 × 32 000
            // here). A hint: past the row's end it touches nothing.
            let ahead = pair.as_ptr().wrapping_add(CHUNK);
            ops.prefetch(ahead);
            ops.prefetch(ahead.wrapping_add(pair.len() / 2));
            let z0 = scaled(ops.load(pair));
            let z1 = scaled(ops.load(&pair[lanes..]));
            max0 = ops.max(max0, z0);
            max1 = ops.max(max1, z1);
            let (d0, d1) = (ops.sub(z0, shift_v), ops.sub(z1, shift_v));
            let e0 = ShiftedExp::apply(isa, d0);
            let e1 = ShiftedExp::apply(isa, d1);
            part0 = ops.add(part0, e0);
            part1 = ops.add(part1, e1);
            if entropy {
                // max() keeps 0·(−inf) out of the sum for masked classes.
                ez0 = ops.mul_add(e0, ops.max(d0, lowest), ez0);
                ez1 = ops.mul_add(e1, ops.max(d1, lowest), ez1);
            }
            if let Some(keep) = keep.as_deref_mut() {
                let out = &mut keep[i * 2 * lanes..(i + 1) * 2 * lanes];
                ops.store(e0, out);
                ops.store(e1, &mut out[lanes..]);
            }
            i += 1;
        }
        (sum0, sum1) = (ops.add(sum0, part0), ops.add(sum1, part1));
    }
    let mut part0 = ops.zero();
    for (i, part) in tail.chunks(lanes).enumerate() {
        let (x, live) = load_live(isa, part);
        let z = scaled(x);
        let z = live.map_or(z, |live| ops.select(z, neg_inf, live));
        max0 = ops.max(max0, z);
        let d = ops.sub(z, shift_v);
        let e = ShiftedExp::apply(isa, d);
        part0 = ops.add(part0, e);
        if entropy {
            ez0 = ops.mul_add(e, ops.max(d, lowest), ez0);
        }
        if let Some(keep) = keep.as_deref_mut() {
            store(isa, e, &mut keep[done + i * lanes..]);
        }
    }
    ChunkSums {
        max: horizontal_max(ops.max(max0, max1)),
        sum_exp: ops.sum(ops.add(ops.add(sum0, part0), sum1)) as f64,
        sum_ez: ops.sum(ops.add(ez0, ez1)) as f64,
        ..ChunkSums::default()
    }
}
