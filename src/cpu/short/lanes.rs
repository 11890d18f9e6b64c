//! What a tile's lanes take from the call: the options every tile shares ([`Consts`]),
//! the gradient's scales per lane ([`scales`]), a tile's targets, and the per-lane scratch.

use super::super::focal::{factors, whole_gamma};
use super::super::row::{load, Transform};
use super::super::{Call, Columns};
use super::MAX_LANES;
use crate::input::Targets;
use crate::math::focal::Focal;
use crate::plan::needs_focal_pass;
use rten_simd::ops::{BitOps, NumOps};
use rten_simd::{Isa, Simd};

/// Per-lane values of one tile, as arrays (lanes past the tile's rows are padding).
#[derive(Default)]
pub(super) struct Lanes {
    /// `w[y]` (0 when ignored).
    pub w_y: [f32; MAX_LANES],
    /// Focal factors `f`, `g` lane by lane (a `γ` that is not whole, or past 16).
    pub f: [f32; MAX_LANES],
    pub g: [f32; MAX_LANES],
    /// The gradient's scales ([`scales`]).
    pub a: [f32; MAX_LANES],
    pub b: [f32; MAX_LANES],
}

/// The gradient's scales `(a, b)` (cross-entropy, z-loss) of rows `r0 .. r0 + n` as vectors:
/// the plan's `row_scales` in f64 for each lane, as the row path takes them (padding lanes 0).
#[inline(always)]
pub(super) fn scales<I: Isa>(
    isa: I,
    call: &Call<'_>,
    (r0, n): (usize, usize),
    per: &mut Lanes,
) -> (I::F32, I::F32) {
    let ops = isa.f32();
    for j in 0..ops.len() {
        (per.a[j], per.b[j]) = if j < n {
            let sample = call.sample_weights.map_or(1.0, |s| s[r0 + j]);
            call.plan.row_scales(call.upstream, r0 + j, sample)
        } else {
            (0.0, 0.0)
        };
    }
    (ops.load(&per.a), ops.load(&per.b))
}

/// Each lane's `w[y]` (index targets with class weights; else 1, and 0 where ignored) and its
/// sample weight (1 without them), for rows `r0 .. r0 + n` whose targets are `tile_y`.
#[inline(always)]
pub(super) fn row_weights<I: Isa>(
    isa: I,
    call: &Call<'_>,
    (class_weights, dense): (Option<&[f32]>, Option<&[f32]>),
    (tile_y, valid): (&[f32], I::M32),
    (r0, n): (usize, usize),
    per: &mut Lanes,
) -> (I::F32, I::F32) {
    let ops = isa.f32();
    let one = ops.one();
    // Dense targets have no `y`: unread.
    let w_y = match (class_weights, dense) {
        (Some(w), None) => {
            for (w_y, &y) in per.w_y.iter_mut().zip(tile_y) {
                *w_y = if y >= 0.0 { w[y as usize] } else { 0.0 };
            }
            ops.load(&per.w_y)
        }
        _ => ops.select(one, ops.zero(), valid),
    };
    let sample = call
        .sample_weights
        .map_or(one, |s| load(isa, &s[r0..r0 + n]));
    (w_y, sample)
}

/// A tile's per-row outputs, one lane a row; `None` where the call does not ask for them.
pub(super) struct TileRows<V> {
    pub loss: V,
    pub lse: Option<V>,
    pub metrics: Option<TileMetrics<V>>,
}

/// A tile's metrics: `correct` where `argmax` is `target_class` (index targets: `y`; dense:
/// the targets' first max).
pub(super) struct TileMetrics<V> {
    pub argmax: V,
    pub target_class: V,
    pub target_prob: V,
    pub entropy: V,
    pub confidence: V,
}

impl<V: Simd<Elem = f32>> TileRows<V> {
    /// Writes lanes `0 .. n` into rows `i0 ..` of the block's `columns` (per-row losses where
    /// `want_rows`); `tile_y` (the lanes' targets, −1 ignored) gives `valid`.
    #[inline(always)]
    pub(super) fn write(
        self,
        columns: &mut Columns<'_>,
        want_rows: bool,
        (i0, n): (usize, usize),
        tile_y: &[f32],
    ) {
        let rows = i0..i0 + n;
        let put = |column: &mut [f32], v: V| {
            column[rows.clone()].copy_from_slice(&v.to_array().as_ref()[..n])
        };
        if want_rows {
            put(columns.losses, self.loss);
        }
        if let Some(lse) = self.lse {
            put(columns.lse, lse);
        }
        let Some(m) = self.metrics else {
            return;
        };
        put(columns.target_prob, m.target_prob);
        put(columns.entropy, m.entropy);
        put(columns.confidence, m.confidence);
        let (argmax, y) = (m.argmax.to_array(), m.target_class.to_array());
        let (argmax, y) = (argmax.as_ref(), y.as_ref());
        for (j, &valid) in tile_y[..n].iter().enumerate() {
            let valid = valid >= 0.0;
            columns.argmax[i0 + j] = argmax[j] as u32;
            columns.correct[i0 + j] = valid && argmax[j] == y[j];
            columns.valid[i0 + j] = valid;
        }
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
    /// Focal loss (SEMANTICS.md section 2c).
    pub focal: Option<TileFocal>,
    /// Index targets, `z = x`, no smoothing and no class weights (focal loss at most on the
    /// target, which only the finish sees): the case most calls are, whose class loops are
    /// only the max, the exps and the target's pick (and the metrics' sums where asked).
    pub plain: bool,
}

/// Focal loss in a tile: its factors, and whether every class needs them (smoothing or
/// dense targets) or the target's alone.
#[derive(Clone, Copy)]
pub(super) struct TileFocal {
    pub focal: Focal,
    /// `γ` when the vector factors take it (whole, 1 to 16), decided once per call.
    pub whole: Option<u32>,
    pub per_class: bool,
}

/// `(f, g)` of each lane's `l = logp` (SEMANTICS.md section 2c): as vectors for a whole `γ`
/// from 1 to 16 (`cpu/focal.rs`), lane by lane otherwise (a power per value, as the row path
/// takes them).
#[inline(always)]
pub(super) fn focal_factors<I: Isa>(
    isa: I,
    focal: TileFocal,
    l: I::F32,
    per: &mut Lanes,
) -> (I::F32, I::F32) {
    let ops = isa.f32();
    if let Some(gamma) = focal.whole {
        let (_, f, g) = factors(isa, l, gamma);
        return (f, g);
    }
    for (j, &l) in l.to_array().as_ref().iter().enumerate() {
        (per.f[j], per.g[j]) = focal.focal.factors(l);
    }
    (ops.load(&per.f), ops.load(&per.g))
}

impl<'a> Consts<'a> {
    pub(super) fn new(call: &Call<'a>, classes: usize) -> Consts<'a> {
        let options = call.plan.softmax();
        let transform = Transform::of(&options);
        Consts {
            plain: transform.scale == 1.0
                && transform.softcap.is_none()
                && options.label_smoothing == 0.0
                && call.w.is_none()
                && !matches!(call.targets, Targets::Dense(_)),
            transform,
            eps: options.label_smoothing,
            uniform: options.label_smoothing / classes as f32,
            lambda: options.z_loss,
            weight_sum: call.plan.class_weight_sum as f32,
            w: call.w,
            focal: options.is_focal().then(|| TileFocal {
                focal: Focal::new(options.focal_gamma),
                whole: whole_gamma(options.focal_gamma),
                per_class: needs_focal_pass(&options, matches!(call.targets, Targets::Dense(_))),
            }),
        }
    }
}
