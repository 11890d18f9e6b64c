//! What a tile's lanes take from the call: the options and scales every tile shares
//! ([`Consts`]), a tile's targets, and the per-lane scratch.

use super::super::row::{load, Transform};
use super::super::Call;
use super::MAX_LANES;
use crate::options::Reduction;
use rten_simd::ops::{BitOps, NumOps};
use rten_simd::Isa;

/// Per-lane values of one tile, as arrays (lanes past the tile's rows are padding).
#[derive(Default)]
pub(super) struct Lanes {
    /// `w[y]` (0 when ignored).
    pub w_y: [f32; MAX_LANES],
}

/// The gradient's scales `a` (cross-entropy) and `b` (z-loss) of a row, as vectors: the
/// reduction's `plan.row_scales` (`math::reduce::row_scales`) in f32, times the sample weight.
pub(super) struct Scales<'a> {
    /// Per-row upstream values (`Reduction::None`).
    per_row: Option<&'a [f32]>,
    /// The scalar factors of `a` and `b`.
    a: f32,
    b: f32,
}

impl<'a> Scales<'a> {
    pub(super) fn new(call: &Call<'a>) -> Scales<'a> {
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
    pub(super) fn of<I: Isa>(
        &self,
        isa: I,
        r0: usize,
        n: usize,
        sample: I::F32,
    ) -> (I::F32, I::F32) {
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

/// A tile's targets: each lane's index target as f32 (−1 ignored or padding; C, no class, for
/// dense targets), and the transposed dense targets (the layout of the logits' tile).
#[derive(Clone, Copy)]
pub(super) struct TileTargets<'t> {
    pub y: &'t [f32],
    pub dense: Option<&'t [f32]>,
}

/// What every tile of a call shares.
pub(super) struct Consts<'a> {
    pub transform: Transform,
    pub eps: f32,
    /// `ε / C`.
    pub uniform: f32,
    pub lambda: f32,
    /// `W = Σ w`.
    pub weight_sum: f32,
    pub w: Option<&'a [f32]>,
    pub scales: Scales<'a>,
}

impl<'a> Consts<'a> {
    pub(super) fn new(call: &Call<'a>, classes: usize) -> Consts<'a> {
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
