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

use rten_simd::ops::{BitOps, FloatOps, NumOps};
use rten_simd::{Isa, Simd, SimdUnaryOp};
use rten_vecmath::Tanh;

mod backward;
mod forward;
mod sums;

pub use backward::{Backward, ExpsIo, Rescale, RowIo};
pub use forward::{Exps, Forward};
#[cfg(feature = "cli")]
pub use sums::ChunkLoop;

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
    /// The transform of `options` (`logit_scale`, `softcap`).
    pub(crate) fn of(options: &crate::options::CrossEntropy) -> Transform {
        Transform {
            scale: options.logit_scale,
            softcap: options.softcap,
        }
    }

    /// Whether `z = x` (scale 1, no cap).
    pub(crate) fn is_identity(self) -> bool {
        self.scale == 1.0 && self.softcap.is_none()
    }

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

/// `coefficient · d`, or 0 where the coefficient is 0: a masked class (`d = −inf`) of weight or
/// target 0 is absent from the linear sums, not `0·inf` (SEMANTICS.md section 6).
#[inline(always)]
pub(super) fn linear_term<I: Isa>(isa: I, coefficient: I::F32, d: I::F32) -> I::F32 {
    let ops = isa.f32();
    let zero = ops.zero();
    ops.select(zero, ops.mul(coefficient, d), ops.eq(coefficient, zero))
}

/// The backward's per-class term `A·w[c]·(B·t[c] + E)` at `off` (`constant` = `A·E` when
/// there are neither weights nor dense targets), shared by [`Backward`] and [`Rescale`].
#[inline(always)]
pub(super) fn class_term<I: Isa>(
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
pub(super) fn store<I: Isa>(isa: I, v: I::F32, dst: &mut [f32]) {
    let ops = isa.f32();
    if dst.len() >= ops.len() {
        ops.store(v, dst);
    } else {
        let n = dst.len();
        dst.copy_from_slice(&v.to_array().as_ref()[..n]);
    }
}

/// Values summed in f32 lanes before they are added into f64: `FLUSH / lanes` same-signed
/// terms a lane (64 on the four-wide portable level), so each f32 sum stays within a relative
/// `64·2⁻²⁴ ≈ 4e-6` of its value (the terms share a sign), and the whole sum as close.
pub(super) const FLUSH: usize = 256;

/// The lanes' sum, in f64.
#[inline(always)]
pub(super) fn lane_sum<S: Simd<Elem = f32>>(v: S) -> f64 {
    v.to_array().as_ref().iter().map(|&v| v as f64).sum()
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

/// The vector at the start of `xs`, lanes past its end `fill`: a copy through the stack, which
/// a row's short tail takes faster than a masked load.
#[inline(always)]
pub(crate) fn load_or<I: Isa>(isa: I, xs: &[f32], fill: f32) -> I::F32 {
    let ops = isa.f32();
    if xs.len() >= ops.len() {
        ops.load(xs)
    } else {
        let mut padded = [fill; 16];
        padded[..xs.len()].copy_from_slice(xs);
        ops.load(&padded[..ops.len()])
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
pub(super) fn horizontal_max<S: Simd<Elem = f32>>(v: S) -> f32 {
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
