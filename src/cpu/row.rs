//! The fused SIMD row kernels of softmax cross-entropy on logits.
//!
//! Forward, one read of the row (SEMANTICS.md sections 1, 2, 3, 5): the row is walked in
//! chunks of [`CHUNK`] values that stay in L1. Each chunk takes one pass of exps at the row's
//! running max `m`, betting that it raises `m` by at most `RAISE` (`exp(z − m)`, the
//! exp-free sums `Σ w·(z − shift)`, `Σ w·t`, `Σ w·t·(z − shift)` and the chunk's max in the
//! same pass; the row's sums stay centred on its running max, re-centred in f64 as it moves,
//! so that no `logp` is ever taken as `z − lse`, SEMANTICS.md section 1). A chunk
//! that raises it further takes its exps again at its own max, from L1; the first chunk
//! takes its max in a cheap pass first. NaN and +inf show as a non-finite sum and send the
//! chunk to the exact two-pass path, which counts NaNs.
//!
//! Backward, one more pass over the row (from cache): with `p = exp(z − lse)`,
//! `dx[c] = dz/dx[c] · (K·p[c] − A·w[c]·(B·t[c] + E))`, the constants folding smoothing,
//! weights, z-loss and the reduction's scale; the target's `−(1−ε)·w[y]` is added afterwards.
//! When the caller asks, the forward keeps its exps (in the gradient row itself when that is
//! separate) and [`Rescale`] turns them into `p` with one multiply per chunk, taking no exp:
//! DRAM then sees one read of the logits and one write of the gradient, as a copy does.

use rten_simd::ops::{BitOps, FloatOps, MaskOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};
use rten_vecmath::{Exp, Tanh};

use super::exp::ShiftedExp;

/// Values per chunk of the forward pass: 4 KiB of f32, a multiple of every lane count.
pub const CHUNK: usize = 1024;

/// The logit transform of SEMANTICS.md section 1.
#[derive(Debug, Clone, Copy)]
pub struct Transform {
    /// `s`.
    pub scale: f32,
    /// `cap`, when soft-capping.
    pub softcap: Option<f32>,
}

impl Transform {
    #[inline(always)]
    pub(crate) fn apply<I: Isa>(self, isa: I, x: I::F32) -> I::F32 {
        let ops = isa.f32();
        match self.softcap {
            None if self.scale == 1.0 => x,
            None => ops.mul(x, ops.splat(self.scale)),
            Some(cap) => {
                let t = Tanh::apply(isa, ops.mul(x, ops.splat(self.scale / cap)));
                ops.mul(t, ops.splat(cap))
            }
        }
    }
    /// `dz/dx` given `z`.
    #[inline(always)]
    pub(crate) fn slope<I: Isa>(self, isa: I, z: I::F32) -> I::F32 {
        let ops = isa.f32();
        match self.softcap {
            None => ops.splat(self.scale),
            Some(cap) => {
                let r = ops.mul(z, ops.splat(1.0 / cap));
                ops.mul(ops.splat(self.scale), ops.mul_sub_from(r, r, ops.one()))
            }
        }
    }
    /// Scalar `z` (the same formula in f32).
    pub fn scalar(self, x: f32) -> f32 {
        match self.softcap {
            None => x * self.scale,
            Some(cap) => cap * (x * (self.scale / cap)).tanh(),
        }
    }
    /// Scalar `dz/dx` given `z`.
    pub fn scalar_slope(self, z: f32) -> f32 {
        match self.softcap {
            None => self.scale,
            Some(cap) => self.scale * (1.0 - (z / cap) * (z / cap)),
        }
    }
}

/// What the forward pass accumulates for one row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowStats {
    /// Running max `m` of `z`.
    pub max: f32,
    /// `Σ exp(z − m)`.
    pub sum_exp: f64,
    /// Lowest index of the maximum (valid when there is no NaN).
    pub argmax: u32,
    /// Number of NaN values of `z`.
    pub nans: u32,
    /// `Σ w·(z − m)` (when asked): centred on `m` (SEMANTICS.md section 1), a zero `w` leaving
    /// its term out (section 6).
    pub sum_wz: f64,
    /// `Σ w·t` (dense targets).
    pub sum_wt: f64,
    /// `Σ w·t·(z − m)` (dense targets), centred and with zero terms left out like `sum_wz`.
    pub sum_wtz: f64,
    /// `Σ exp(z − m)·(z − m)` (entropy, when asked): centred on `m`, so that the entropy
    /// `log Σ exp(z − m) − sum_ez / sum_exp` keeps its precision when `|z|` is large.
    pub sum_ez: f64,
    /// `Σ t·exp(z − m)` (dense targets).
    pub sum_te: f64,
    /// `Σ w` over the classes seen (when `Σ w·z` is asked; else 0): what re-centres
    /// `sum_wz` when the max moves.
    weight_sum: f64,
}

impl RowStats {
    /// `log Σ exp(z)`: −inf for an all −inf row, +inf with a +inf, NaN with a NaN.
    pub fn lse(&self) -> f64 {
        if self.nans > 0 {
            f64::NAN
        } else if self.max.is_infinite() {
            self.max as f64
        } else {
            self.max as f64 + self.sum_exp.ln()
        }
    }

    /// `ln Σ exp(z − m)`: with `m`, the split form of `lse` that every `logp` is taken from,
    /// `logp = (z − m) − log_sum` (SEMANTICS.md section 1).
    pub fn log_sum(&self) -> f64 {
        self.sum_exp.ln()
    }
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

/// One chunk's sums, with every exp taken at one shift.
#[derive(Default)]
struct ChunkSums {
    max: f32,
    sum_exp: f64,
    sum_ez: f64,
    sum_te: f64,
    sum_wz: f64,
    sum_wt: f64,
    sum_wtz: f64,
    weight_sum: f64,
}

impl SimdOp for Forward<'_> {
    type Output = RowStats;

    #[inline(always)]
    fn eval<I: Isa>(mut self, isa: I) -> RowStats {
        let z_buf = std::mem::take(&mut self.z_buf);
        let mut exps = self.exps.take();
        let mut st = RowStats {
            max: f32::NEG_INFINITY,
            ..RowStats::default()
        };
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
            let shift = if st.max.is_finite() {
                st.max
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
                    if c.max > st.max {
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
                    st.max
                }
            };
            if let Some(exps) = exps.as_mut() {
                exps.shifts[chunk] = shift;
            }
        }
        st
    }
}

impl RowStats {
    /// Moves the running sums to a new, higher max.
    fn rescale(&mut self, max: f32) {
        let rescale = (self.max as f64 - max as f64).exp();
        if self.sum_exp != 0.0 {
            // Re-centre `Σ e·(z − m)` on the new max.
            self.sum_ez += (self.max as f64 - max as f64) * self.sum_exp;
        }
        if self.max.is_finite() {
            // Re-centre the linear sums `Σ k·(z − m)` (`+ (m − max)·Σ k`). While the max is
            // −inf they hold 0 or −inf, already right.
            let offset = self.max as f64 - max as f64;
            self.sum_wz += offset * self.weight_sum;
            self.sum_wtz += offset * self.sum_wt;
        }
        self.sum_exp *= rescale;
        self.sum_ez *= rescale;
        self.sum_te *= rescale;
        self.max = max;
    }

    /// Adds the sums of a chunk whose exps were taken, and linear sums centred, at `shift`
    /// (≤ the running max).
    fn add(&mut self, c: &ChunkSums, shift: f32) {
        // (At the max itself the offset is 0, also while that max is −inf.)
        let offset = if shift == self.max {
            0.0
        } else {
            shift as f64 - self.max as f64
        };
        let scale = if offset == 0.0 { 1.0 } else { offset.exp() };
        self.sum_exp += c.sum_exp * scale;
        self.sum_ez += (c.sum_ez + offset * c.sum_exp) * scale;
        self.sum_te += c.sum_te * scale;
        self.sum_wz += c.sum_wz + offset * c.weight_sum;
        self.sum_wt += c.sum_wt;
        self.sum_wtz += c.sum_wtz + offset * c.sum_wt;
        self.weight_sum += c.weight_sum;
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
        if plain && xc.len().is_multiple_of(2 * lanes) {
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
        let (mut v_max, mut v_sum, mut v_ez) = (neg_inf, zero, zero);
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
            v_sum = ops.add(v_sum, e);
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
            sum_exp: ops.sum(v_sum) as f64,
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
        let ops = isa.f32();
        let neg_inf = ops.splat(f32::NEG_INFINITY);
        let mut v_max = neg_inf;
        let vectors = xc.chunks_exact(ops.len());
        let tail = vectors.remainder();
        for v in vectors {
            v_max = ops.max(v_max, self.transform.apply(isa, ops.load(v)));
        }
        if !tail.is_empty() {
            let (x, live) = ops.load_pad(tail);
            let z = self.transform.apply(isa, x);
            v_max = ops.max(v_max, ops.select(z, neg_inf, live));
        }
        horizontal_max(v_max)
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
        if chunk_max > st.max {
            st.rescale(chunk_max);
            if self.want_metrics {
                argmax = Some(self.position(isa, xc, chunk_max));
            }
        }
        if st.max == f32::INFINITY {
            // The row is NaN; its exps are never used.
            z_buf[..n].fill(0.0);
            return argmax;
        }
        // All −inf so far: the exps at 0 are 0, and each linear term (`d = −inf`) is 0 or −inf
        // (SEMANTICS.md section 6), already right.
        let m = ops.splat(if st.max.is_finite() { st.max } else { 0.0 });
        let (mut v_sum, mut v_ez) = (zero, zero);
        let mut linear = LinearSums::new(zero);
        for off in (0..n).step_by(lanes) {
            let d = ops.sub(ops.load(&z_buf[off..]), m);
            let e = ShiftedExp::apply(isa, d);
            v_sum = ops.add(v_sum, e);
            ops.store(e, &mut z_buf[off..]);
            if self.want_metrics {
                v_ez = ops.mul_add(e, ops.max(d, lowest), v_ez);
            }
            // Masked classes are −inf in the buffer too: the row's end needs its own mask.
            let live = (off + lanes > n).then(|| ops.load_pad(&xc[off..]).1);
            self.add_linear(isa, &mut linear, part, off, live, (d, e));
        }
        let chunk = ChunkSums {
            max: st.max,
            sum_exp: ops.sum(v_sum) as f64,
            sum_ez: ops.sum(v_ez) as f64,
            ..linear.totals(isa)
        };
        st.add(&chunk, st.max);
        argmax
    }
}

/// The vector sums weights and dense targets bring along the exps: `Σ w·(z − shift)` and `Σ w`
/// (smoothing), `Σ w·t`, `Σ w·t·(z − shift)` and `Σ t·exp(z − shift)` (dense targets).
struct LinearSums<V> {
    wz: V,
    w: V,
    wt: V,
    wtz: V,
    te: V,
}

impl<V: Copy> LinearSums<V> {
    fn new(zero: V) -> Self {
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
    fn totals<I: Isa<F32 = V>>(self, isa: I) -> ChunkSums {
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

/// `coefficient · d`, or 0 where the coefficient is 0: a masked class (`d = −inf`) of weight or
/// target 0 is absent from the linear sums, not `0·inf` (SEMANTICS.md section 6).
#[inline(always)]
fn linear_term<I: Isa>(isa: I, coefficient: I::F32, d: I::F32) -> I::F32 {
    let ops = isa.f32();
    let zero = ops.zero();
    ops.select(zero, ops.mul(coefficient, d), ops.eq(coefficient, zero))
}

/// The backward's per-class term `A·w[c]·(B·t[c] + E)` at `off` (`constant` = `A·E` when
/// there are neither weights nor dense targets), shared by [`Backward`] and [`Rescale`].
#[inline(always)]
fn class_term<I: Isa>(
    isa: I,
    w: Option<&[f32]>,
    t: Option<&[f32]>,
    off: usize,
    (a, b, e): (I::F32, I::F32, I::F32),
    constant: I::F32,
) -> I::F32 {
    let ops = isa.f32();
    match (w, t) {
        (None, None) => constant,
        (w, t) => {
            let w = w.map_or(ops.one(), |w| load(isa, &w[off..]));
            let t = t.map_or(ops.zero(), |t| load(isa, &t[off..]));
            ops.mul(ops.mul(a, w), ops.mul_add(b, t, e))
        }
    }
}

/// Stores a vector, or the part of it that fits at the end of a row.
#[inline(always)]
fn store<I: Isa>(isa: I, v: I::F32, dst: &mut [f32]) {
    let ops = isa.f32();
    if dst.len() >= ops.len() {
        ops.store(v, dst);
    } else {
        let n = dst.len();
        dst.copy_from_slice(&v.to_array().as_ref()[..n]);
    }
}

/// The vector at the start of `xs` (zeros past its end). rten-simd's `load_pad` builds its
/// lane mask a bit at a time, so whole vectors take the plain load.
#[inline(always)]
pub(crate) fn load<I: Isa>(isa: I, xs: &[f32]) -> I::F32 {
    let ops = isa.f32();
    if xs.len() >= ops.len() {
        ops.load(xs)
    } else {
        ops.load_pad(xs).0
    }
}

/// As [`load`], with the mask of the lanes `xs` fills: `None` when it fills them all.
#[inline(always)]
pub(crate) fn load_live<I: Isa>(isa: I, xs: &[f32]) -> (I::F32, Option<<I::F32 as Simd>::Mask>) {
    let ops = isa.f32();
    if xs.len() >= ops.len() {
        (ops.load(xs), None)
    } else {
        let (v, live) = ops.load_pad(xs);
        (v, Some(live))
    }
}

/// The largest lane (NaN lanes are dropped; callers detect NaN otherwise).
#[inline(always)]
fn horizontal_max<S: Simd<Elem = f32>>(v: S) -> f32 {
    // A tree of halvings over at most 16 lanes (−inf fills the rest): log-depth, not a
    // serial chain.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let v = v.to_array();
    lanes[..v.as_ref().len()].copy_from_slice(v.as_ref());
    let mut width = lanes.len() / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] = lanes[i].max(lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// The forward's inner loop (the plain case: exps at a fixed shift, their sum and the max)
/// over one chunk, `reps` times. With the chunk in L1 this is the forward's compute floor,
/// what it would take if DRAM were free: the criterion bench (`benches/loss.rs`) sets it
/// beside the read of the same number of values.
#[cfg(feature = "cli")]
pub struct ChunkLoop<'a> {
    /// A multiple of 32 values (two vectors at every level).
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

/// The common forward case (no dense targets, smoothing or softcap; class weights don't enter
/// the sums then) over a chunk whose length is a multiple of two vectors: pairs of vectors,
/// two accumulators each. `scale` is `None` for 1; `keep` receives the exps; `entropy` adds
/// `Σ e·(z − shift)`.
#[inline(always)]
fn plain_pass<I: Isa>(
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
    let (mut max0, mut max1, mut sum0, mut sum1) = (neg_inf, neg_inf, ops.zero(), ops.zero());
    let (mut ez0, mut ez1) = (ops.zero(), ops.zero());
    for (i, pair) in xc.chunks_exact(2 * lanes).enumerate() {
        // The same lines one chunk ahead: the exps keep the core too busy for the hardware
        // prefetcher alone to keep DRAM streaming (7–10 % on 4096 × 32 000 here). A hint:
        // past the row's end it touches nothing.
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
        sum0 = ops.add(sum0, e0);
        sum1 = ops.add(sum1, e1);
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
    }
    ChunkSums {
        max: horizontal_max(ops.max(max0, max1)),
        sum_exp: ops.sum(ops.add(sum0, sum1)) as f64,
        sum_ez: ops.sum(ops.add(ez0, ez1)) as f64,
        ..ChunkSums::default()
    }
}

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
