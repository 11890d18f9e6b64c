//! The forward row kernel: one read of the row in chunks, the running max and the sums that
//! ride along (the module docs of `row` have the whole scheme).

use super::sums::{plain_pass, ChunkSums, LinearSums, PAIRS_PER_PART};
use super::{horizontal_max, linear_term, load, load_live, store, Transform, CHUNK};
use crate::cpu::exp::ShiftedExp;
use crate::math::online::OnlineSoftmax;
use rten_simd::ops::{BitOps, MaskOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};

/// What the forward pass accumulates for one row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowStats {
    /// The online-softmax state. `sum_wz` and `weight_sum` are summed only when `Σ w·z` is
    /// asked (else 0); `sum_ez` only with metrics; the target sums only with dense targets.
    pub sums: OnlineSoftmax,
    /// Lowest index of the maximum (valid when there is no NaN).
    pub argmax: u32,
    /// Number of NaN values of `z`.
    pub nans: u32,
}

/// Forward over one contiguous row of raw logits `x` (and its dense targets `t`, if any).
pub struct Forward<'a> {
    /// Raw logits of the row.
    pub x: &'a [f32],
    /// Dense targets of the row.
    pub t: Option<&'a [f32]>,
    /// Class weights.
    pub w: Option<&'a [f32]>,
    /// The transform.
    pub transform: Transform,
    /// Accumulate `Σ w·z` (smoothing with index targets).
    pub want_wz: bool,
    /// The metrics' sums and positions: `Σ exp(z − m)·(z − m)` (entropy) and the argmax
    /// (found by a scan of the chunk that raises the max, skipped without metrics).
    pub want_metrics: bool,
    /// Room for one chunk of `z` (at least [`CHUNK`] values), reused across rows.
    pub z_buf: &'a mut [f32],
    /// Keep the exps for the backward ([`Rescale`]) instead of taking them again there.
    pub exps: Option<Exps<'a>>,
}

/// The exps a forward keeps for the backward: `values[c] = exp(z[c] − shifts[c / CHUNK])`,
/// each chunk's exps taken at the running max of the row after that chunk.
pub struct Exps<'a> {
    /// One row (the gradient row itself when it is separate from the logits).
    pub values: &'a mut [f32],
    /// One per chunk (at least `row.len().div_ceil(CHUNK)`).
    pub shifts: &'a mut [f32],
}

/// How far a chunk may raise the running max and keep the exps it took at the old one: the
/// new max's `exp(z − shift)` then has an argument below 1, rounded to at most half an ulp of
/// 1, so `p` near 1 stays within about 2 ulps.
const RAISE: f32 = 1.0;

/// One chunk of a row: its logits, and its class weights and dense targets if any.
#[derive(Clone, Copy)]
struct Chunk<'c> {
    x: &'c [f32],
    w: Option<&'c [f32]>,
    t: Option<&'c [f32]>,
}

impl SimdOp for Forward<'_> {
    type Output = RowStats;

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) -> RowStats {
        let z_buf = std::mem::take(&mut self.z_buf);
        let mut exps = self.exps.take();
        let mut st = RowStats::default();
        for (chunk, xc) in self.x.chunks(CHUNK).enumerate() {
            let base = chunk * CHUNK;
            let span = base..base + xc.len();
            let part = Chunk {
                x: xc,
                w: self.w.map(|w| &w[span.clone()]),
                t: self.t.map(|t| &t[span.clone()]),
            };
            // One pass of exps at the running max, speculating that the chunk raises it by
            // at most RAISE (the first chunk takes its own max first, in a cheap pass). A
            // chunk that raises it further takes its exps once more at its own max: the
            // new max's exp at an argument rounded to the ulp of a larger difference would
            // lose the precision that confident rows' gradients need (`1 − p[y]` is the sum
            // of the small terms). A chunk holding a NaN or +inf (its exp sum is then not
            // finite), or only −inf so far, takes the exact two-pass path, which also
            // counts NaNs.
            let shift = if st.sums.max.is_finite() {
                st.sums.max
            } else {
                self.chunk_max(isa, xc)
            };
            let fast = if shift.is_finite() {
                let keep = exps.as_mut().map(|e| &mut e.values[span.clone()]);
                Some(self.speculate(isa, part, shift, keep))
            } else {
                None
            };
            let shift = match fast {
                Some(c) if c.sum_exp.is_finite() && c.max <= shift + RAISE => {
                    if c.max > st.sums.max {
                        st.rescale(c.max);
                        if self.want_metrics {
                            st.argmax = (base + self.position(isa, xc, c.max)) as u32;
                        }
                    }
                    st.add(&c, shift);
                    shift
                }
                Some(c) if c.sum_exp.is_finite() => {
                    let keep = exps.as_mut().map(|e| &mut e.values[span.clone()]);
                    let c = self.speculate(isa, part, c.max, keep);
                    st.rescale(c.max);
                    if self.want_metrics {
                        st.argmax = (base + self.position(isa, xc, c.max)) as u32;
                    }
                    st.add(&c, c.max);
                    c.max
                }
                _ => {
                    st.argmax = self
                        .exact(isa, part, z_buf, &mut st)
                        .map_or(st.argmax, |i| (base + i) as u32);
                    if let Some(exps) = exps.as_mut() {
                        exps.values[span].copy_from_slice(&z_buf[..xc.len()]);
                    }
                    st.sums.max
                }
            };
            if let Some(exps) = exps.as_mut() {
                exps.shifts[chunk] = shift;
            }
        }
        st
    }
}

/// A vector sum of exps taken in parts of `2·PAIRS_PER_PART` vectors, as `plain_pass` sums
/// (its docs say why: a confident row's small terms kept).
struct PartSum<V> {
    sum: V,
    part: V,
    count: usize,
}

impl<V: Copy> PartSum<V> {
    #[inline(always)]
    fn new<I: Isa<F32 = V>>(isa: I) -> Self {
        let zero = isa.f32().zero();
        PartSum {
            sum: zero,
            part: zero,
            count: 0,
        }
    }

    #[inline(always)]
    fn add<I: Isa<F32 = V>>(&mut self, isa: I, e: V) {
        let ops = isa.f32();
        self.part = ops.add(self.part, e);
        self.count += 1;
        if self.count == 2 * PAIRS_PER_PART {
            (self.sum, self.part, self.count) = (ops.add(self.sum, self.part), ops.zero(), 0);
        }
    }

    /// Every lane's sum, added up (f32, as the chunk's other sums).
    #[inline(always)]
    fn total<I: Isa<F32 = V>>(&self, isa: I) -> f64 {
        let ops = isa.f32();
        ops.sum(ops.add(self.sum, self.part)) as f64
    }
}

/// The max of `z(x)` over a chunk (NaN lanes dropped, as [`horizontal_max`]).
#[inline(always)]
fn max_of<I: Isa>(isa: I, xc: &[f32], z: impl Fn(I::F32) -> I::F32) -> f32 {
    let ops = isa.f32();
    let neg_inf = ops.splat(f32::NEG_INFINITY);
    let mut v_max = neg_inf;
    let vectors = xc.chunks_exact(ops.len());
    let tail = vectors.remainder();
    for v in vectors {
        v_max = ops.max(v_max, z(ops.load(v)));
    }
    if !tail.is_empty() {
        let (x, live) = ops.load_pad(tail);
        v_max = ops.max(v_max, ops.select(z(x), neg_inf, live));
    }
    horizontal_max(v_max)
}

impl RowStats {
    /// Moves the running sums to a new, higher max.
    fn rescale(&mut self, max: f32) {
        self.sums = self.sums.moved_to(max);
    }

    /// Adds the sums of a chunk whose exps were taken, and linear sums centred, at `shift`
    /// (≤ the running max).
    fn add(&mut self, c: &ChunkSums, shift: f32) {
        self.sums.absorb(&c.centred_at(shift));
    }
}

impl Forward<'_> {
    /// One pass over a chunk taking every exp at a fixed `shift`.
    #[inline(always)]
    fn speculate<I: Isa>(
        &self,
        isa: I,
        part: Chunk<'_>,
        shift: f32,
        mut keep: Option<&mut [f32]>,
    ) -> ChunkSums {
        let ops = isa.f32();
        let (xc, tc) = (part.x, part.t);
        let lanes = ops.len();
        let zero = ops.zero();
        let (neg_inf, lowest, shift_v) = (
            ops.splat(f32::NEG_INFINITY),
            ops.splat(f32::MIN),
            ops.splat(shift),
        );
        // Class weights only enter the forward's sums through Σ w·z and Σ w·t.
        let plain = tc.is_none() && !self.want_wz && self.transform.softcap.is_none();
        if plain {
            // Constant arguments give each combination its own tight loop.
            let s = self.transform.scale;
            let entropy = self.want_metrics;
            return match (keep, s == 1.0, entropy) {
                (None, true, false) => plain_pass(isa, xc, shift, None, None, false),
                (None, true, true) => plain_pass(isa, xc, shift, None, None, true),
                (None, false, false) => plain_pass(isa, xc, shift, Some(s), None, false),
                (None, false, true) => plain_pass(isa, xc, shift, Some(s), None, true),
                (Some(k), true, false) => plain_pass(isa, xc, shift, None, Some(k), false),
                (Some(k), true, true) => plain_pass(isa, xc, shift, None, Some(k), true),
                (Some(k), false, false) => plain_pass(isa, xc, shift, Some(s), Some(k), false),
                (Some(k), false, true) => plain_pass(isa, xc, shift, Some(s), Some(k), true),
            };
        }
        let (mut v_max, mut v_sum, mut v_ez) = (neg_inf, PartSum::new(isa), zero);
        let mut linear = LinearSums::new(zero);
        for off in (0..xc.len()).step_by(lanes) {
            // `z_live` (−inf in padding lanes) feeds the max and the exps; the exp-free sums
            // take `z − shift` with the padding lanes' weight 0. Only the row's last vector
            // is partial.
            let (z_live, live) = if off + lanes <= xc.len() {
                (self.transform.apply(isa, ops.load(&xc[off..])), None)
            } else {
                let (x, live) = ops.load_pad(&xc[off..]);
                let z = self.transform.apply(isa, x);
                (ops.select(z, neg_inf, live), Some(live))
            };
            v_max = ops.max(v_max, z_live);
            let d = ops.sub(z_live, shift_v);
            let e = ShiftedExp::apply(isa, d);
            v_sum.add(isa, e);
            if let Some(keep) = keep.as_deref_mut() {
                store(isa, e, &mut keep[off..]);
            }
            if self.want_metrics {
                // max() keeps 0·(−inf) out of the sum for masked classes.
                v_ez = ops.mul_add(e, ops.max(d, lowest), v_ez);
            }
            self.add_linear(isa, &mut linear, part, off, live, (d, e));
        }
        ChunkSums {
            max: horizontal_max(v_max),
            sum_exp: v_sum.total(isa),
            sum_ez: ops.sum(v_ez) as f64,
            ..linear.totals(isa)
        }
    }

    /// Adds the vector at `off` (`d = z − shift`, `e = exp(d)`, `live` its lanes inside the
    /// row when it is the row's partial last vector) to the sums that weights and dense
    /// targets bring, if this row has any.
    #[inline(always)]
    fn add_linear<I: Isa>(
        &self,
        isa: I,
        sums: &mut LinearSums<I::F32>,
        part: Chunk<'_>,
        off: usize,
        live: Option<<I::F32 as Simd>::Mask>,
        (d, e): (I::F32, I::F32),
    ) {
        if !(self.want_wz || part.t.is_some()) {
            return;
        }
        let ops = isa.f32();
        let zero = ops.zero();
        // Padding lanes get weight 0, so their terms are absent.
        let w = part.w.map_or(ops.one(), |w| load(isa, &w[off..]));
        let w = live.map_or(w, |live| ops.select(w, zero, live));
        if self.want_wz {
            sums.wz = ops.add(sums.wz, linear_term(isa, w, d));
            sums.w = ops.add(sums.w, w);
        }
        if let Some(t) = part.t {
            let t = load(isa, &t[off..]);
            let wt = ops.mul(w, t);
            sums.wt = ops.add(sums.wt, wt);
            sums.wtz = ops.add(sums.wtz, linear_term(isa, wt, d));
            sums.te = ops.mul_add(t, e, sums.te);
        }
    }

    /// The max of the chunk's `z` (NaN dropped).
    #[inline(always)]
    fn chunk_max<I: Isa>(&self, isa: I, xc: &[f32]) -> f32 {
        // Two loops, so that the common `z = x` carries no test of the transform.
        if self.transform.is_identity() {
            max_of(isa, xc, |x| x)
        } else {
            max_of(isa, xc, |x| self.transform.apply(isa, x))
        }
    }

    /// The first position in the chunk whose `z` equals `max` (found by the same vector
    /// transform, so equal to the bit).
    #[inline(always)]
    fn position<I: Isa>(&self, isa: I, xc: &[f32], max: f32) -> usize {
        let ops = isa.f32();
        let (lanes, target) = (ops.len(), ops.splat(max));
        for off in (0..xc.len()).step_by(lanes) {
            let x = load(isa, &xc[off..]);
            let z = self.transform.apply(isa, x);
            if isa.m32().any(ops.eq(z, target)) {
                let lane = z.to_array().as_ref().iter().position(|&v| v == max);
                if let Some(lane) = lane.filter(|&l| off + l < xc.len()) {
                    return off + lane;
                }
            }
        }
        0
    }

    /// The exact two-pass chunk, giving the argmax's position if it raised the max:
    /// pass A transforms `x → z` into the buffer (−inf past the row's end) and takes the max
    /// and the NaN count; pass B adds `exp(z − m)` and the exp-free sums (centred on `m`) from
    /// L1 at the new running max `m`.
    #[inline(always)]
    fn exact<I: Isa>(
        &self,
        isa: I,
        part: Chunk<'_>,
        z_buf: &mut [f32],
        st: &mut RowStats,
    ) -> Option<usize> {
        let ops = isa.f32();
        let xc = part.x;
        let lanes = ops.len();
        let (zero, one) = (ops.zero(), ops.one());
        let neg_inf = ops.splat(f32::NEG_INFINITY);
        let lowest = ops.splat(f32::MIN);
        let n = xc.len();
        let z_buf = &mut z_buf[..CHUNK];

        let (mut v_max, mut v_nan) = (neg_inf, zero);
        for off in (0..n).step_by(lanes) {
            let (x, live) = load_live(isa, &xc[off..]);
            let z = self.transform.apply(isa, x);
            v_nan = ops.add(v_nan, ops.select(zero, one, ops.eq(z, z)));
            let z_live = live.map_or(z, |live| ops.select(z, neg_inf, live));
            ops.store(z_live, &mut z_buf[off..]);
            v_max = ops.max(v_max, z_live);
        }
        st.nans += ops.sum(v_nan) as u32;
        let chunk_max = horizontal_max(v_max);
        let mut argmax = None;
        if chunk_max > st.sums.max {
            st.rescale(chunk_max);
            if self.want_metrics {
                argmax = Some(self.position(isa, xc, chunk_max));
            }
        }
        if st.sums.max == f32::INFINITY {
            // The row is NaN; its exps are never used.
            z_buf[..n].fill(0.0);
            return argmax;
        }
        // All −inf so far: the exps at 0 are 0, and each linear term (`d = −inf`) is 0 or −inf
        // (SEMANTICS.md section 6), already right.
        let m = ops.splat(if st.sums.max.is_finite() {
            st.sums.max
        } else {
            0.0
        });
        let (mut v_sum, mut v_ez) = (PartSum::new(isa), zero);
        let mut linear = LinearSums::new(zero);
        for off in (0..n).step_by(lanes) {
            let d = ops.sub(ops.load(&z_buf[off..]), m);
            let e = ShiftedExp::apply(isa, d);
            v_sum.add(isa, e);
            ops.store(e, &mut z_buf[off..]);
            if self.want_metrics {
                v_ez = ops.mul_add(e, ops.max(d, lowest), v_ez);
            }
            // Masked classes are −inf in the buffer too: the row's end needs its own mask.
            let live = (off + lanes > n).then(|| ops.load_pad(&xc[off..]).1);
            self.add_linear(isa, &mut linear, part, off, live, (d, e));
        }
        let chunk = ChunkSums {
            max: st.sums.max,
            sum_exp: v_sum.total(isa),
            sum_ez: ops.sum(v_ez) as f64,
            ..linear.totals(isa)
        };
        st.add(&chunk, st.sums.max);
        argmax
    }
}
