//! The fused SIMD row kernels of softmax cross-entropy on logits.
//!
//! Forward, one read of the row (SEMANTICS.md sections 1, 2, 3, 5): the row is walked in
//! chunks of [`CHUNK`] values that stay in L1. Per chunk, pass A transforms `x → z` into a
//! stack buffer and takes the chunk's max, the NaN count and the exp-free sums (`Σ w·z`,
//! `Σ w·t`, `Σ w·t·z`); pass B adds `exp(z − m)` (and `exp(z − m)·z`, `t·exp(z − m)`) at the
//! running max `m`. When a chunk raises `m`, the running sums are rescaled by `exp(m_old − m)`
//! once (online softmax at chunk granularity: one exp per logit, not two).
//!
//! Backward, one more pass over the row (from cache): with `p = exp(z − lse)`,
//! `dx[c] = dz/dx[c] · (K·p[c] − A·w[c]·(B·t[c] + E))`, the constants folding smoothing,
//! weights, z-loss and the reduction's scale; the target's `−(1−ε)·w[y]` is added afterwards.

use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd, SimdOp, SimdUnaryOp};
use rten_vecmath::{Exp, Tanh};

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
    /// `Σ w·z` (when asked).
    pub sum_wz: f64,
    /// `Σ w·t` (dense targets).
    pub sum_wt: f64,
    /// `Σ w·t·z` (dense targets).
    pub sum_wtz: f64,
    /// `Σ exp(z − m)·z` (entropy, when asked).
    pub sum_ez: f64,
    /// `Σ t·exp(z − m)` (dense targets).
    pub sum_te: f64,
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
    /// Accumulate `Σ exp(z − m)·z` (entropy).
    pub want_entropy: bool,
    /// Room for one chunk of `z` (at least [`CHUNK`] values), reused across rows.
    pub z_buf: &'a mut [f32],
}

impl SimdOp for Forward<'_> {
    type Output = RowStats;

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> RowStats {
        let ops = isa.f32();
        let lanes = ops.len();
        let (zero, one) = (ops.zero(), ops.one());
        let neg_inf = ops.splat(f32::NEG_INFINITY);
        let lowest = ops.splat(f32::MIN);
        let z_buf = &mut self.z_buf[..CHUNK];
        let mut st = RowStats {
            max: f32::NEG_INFINITY,
            ..RowStats::default()
        };

        for (chunk, xc) in self.x.chunks(CHUNK).enumerate() {
            let base = chunk * CHUNK;
            let n = xc.len();
            let wc = self.w.map(|w| &w[base..base + n]);
            let tc = self.t.map(|t| &t[base..base + n]);

            // Pass A: z into the buffer (−inf past the row's end), max, NaNs, exp-free sums.
            let (mut v_max, mut v_nan) = (neg_inf, zero);
            let (mut v_wz, mut v_wt, mut v_wtz) = (zero, zero, zero);
            for off in (0..n).step_by(lanes) {
                let (x, live) = ops.load_pad(&xc[off..]);
                let z = self.transform.apply(isa, x);
                v_nan = ops.add(v_nan, ops.select(zero, one, ops.eq(z, z)));
                let z_live = ops.select(z, neg_inf, live);
                ops.store(z_live, &mut z_buf[off..]);
                v_max = ops.max(v_max, z_live);
                let w = wc.map_or(one, |w| ops.load_pad(&w[off..]).0);
                if self.want_wz {
                    v_wz = ops.mul_add(w, z, v_wz);
                }
                if let Some(t) = tc {
                    let wt = ops.mul(w, ops.load_pad(&t[off..]).0);
                    v_wt = ops.add(v_wt, wt);
                    v_wtz = ops.mul_add(wt, z, v_wtz);
                }
            }
            st.nans += ops.sum(v_nan) as u32;
            st.sum_wz += ops.sum(v_wz) as f64;
            st.sum_wt += ops.sum(v_wt) as f64;
            st.sum_wtz += ops.sum(v_wtz) as f64;
            let chunk_max = v_max
                .to_array()
                .as_ref()
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if chunk_max > st.max {
                let rescale = (st.max as f64 - chunk_max as f64).exp();
                st.sum_exp *= rescale;
                st.sum_ez *= rescale;
                st.sum_te *= rescale;
                st.max = chunk_max;
                let first = z_buf[..n].iter().position(|&z| z == chunk_max).unwrap_or(0);
                st.argmax = (base + first) as u32;
            }
            if !st.max.is_finite() {
                // All −inf so far (contributes 0), or a +inf (the row is NaN anyway).
                continue;
            }

            // Pass B: the exps, from L1.
            let m = ops.splat(st.max);
            let (mut v_sum, mut v_ez, mut v_te) = (zero, zero, zero);
            for off in (0..n).step_by(lanes) {
                let z = ops.load(&z_buf[off..]);
                let e = Exp::apply(isa, ops.sub(z, m));
                v_sum = ops.add(v_sum, e);
                if self.want_entropy {
                    // max() keeps 0·(−inf) out of the sum for masked classes.
                    v_ez = ops.mul_add(e, ops.max(z, lowest), v_ez);
                }
                if let Some(t) = tc {
                    v_te = ops.mul_add(ops.load_pad(&t[off..]).0, e, v_te);
                }
            }
            st.sum_exp += ops.sum(v_sum) as f64;
            st.sum_ez += ops.sum(v_ez) as f64;
            st.sum_te += ops.sum(v_te) as f64;
        }
        st
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
            let (x, _) = ops.load_pad(&self.io.src()[off..]);
            let z = self.transform.apply(isa, x);
            let p = Exp::apply(isa, ops.sub(ops.sub(z, shift), log_sum));
            let per_class = match (self.w, self.t) {
                (None, None) => constant,
                (w, t) => {
                    let w = w.map_or(ops.one(), |w| ops.load_pad(&w[off..]).0);
                    let t = t.map_or(ops.zero(), |t| ops.load_pad(&t[off..]).0);
                    ops.mul(ops.mul(a, w), ops.mul_add(b, t, e))
                }
            };
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
