//! Row kernels without a SIMD body: probability inputs with focal loss (SEMANTICS.md sections
//! 2b and 2c, a power per value; without focal loss they take `probability`'s SIMD rows) and
//! binary cross-entropy (section 4). Both are element-wise, read each value once, and
//! accumulate in f64.

use crate::math::focal::focal_factors;
use crate::math::row::{first_max, term};

/// BCE options that act per element: Keras's label smoothing, torchvision's focal factor and
/// the row's sample weight.
#[derive(Debug, Clone, Copy)]
pub struct BinaryOptions {
    /// `ε`: targets become `y·(1−ε) + ε/2`.
    pub smoothing: f32,
    /// Focal `γ` (0: off).
    pub gamma: f32,
    /// Focal `α`, when on.
    pub alpha: Option<f32>,
    /// The row's `s[n]`.
    pub sample_weight: f32,
}

/// BCE for one row: per-element losses into `losses`, returns their f64 sum.
/// When `grad` is given, `scale(c)` is the element's upstream scale (the reduction's).
///
/// With `y' = y·(1−ε) + ε/2`, `p = σ(x)`, `m = 1 − p_t = y'·σ(−x) + (1−y')·σ(x)`:
/// ```text
/// ce   = pos_weight·y'·softplus(−x) + (1−y')·softplus(x)
/// loss = s·weight·α_t·ce·m^γ
/// dx   = s·weight·α_t·( dce·m^γ + ce·γ·m^(γ−1)·(1−2y')·σ(x)·σ(−x) )
/// ```
/// with `dce = (pos_weight·y' + 1 − y')·σ(x) − pos_weight·y'`, `α_t = α·y' + (1−α)·(1−y')`
/// (1 without `α`), and the second term 0 where `m = 0`.
#[allow(clippy::too_many_arguments)]
pub fn binary_row(
    x: &[f32],
    t: &[f32],
    weight: Option<&[f32]>,
    pos_weight: Option<&[f32]>,
    options: BinaryOptions,
    losses: &mut [f32],
    mut grad: Option<&mut [f32]>,
    scale: impl Fn(usize) -> f32,
) -> f64 {
    let BinaryOptions {
        smoothing,
        gamma,
        alpha,
        sample_weight,
    } = options;
    let plain = gamma == 0.0 && alpha.is_none() && smoothing == 0.0;
    let mut sum = 0.0f64;
    for c in 0..x.len() {
        let x = x[c];
        let wc = sample_weight * weight.map_or(1.0, |w| w[c]);
        let pw = pos_weight.map_or(1.0, |w| w[c]);
        if plain {
            let y = t[c];
            // A zero coefficient never hides a NaN logit (SEMANTICS.md section 6).
            let loss = if x.is_nan() {
                f32::NAN
            } else {
                term(wc, term(pw * y, softplus(-x)) + term(1.0 - y, softplus(x)))
            };
            losses[c] = loss;
            sum += loss as f64;
            if let Some(g) = grad.as_deref_mut() {
                g[c] = scale(c) * wc * ((pw * y + 1.0 - y) * sigmoid(x) - pw * y);
            }
            continue;
        }
        let y = t[c] * (1.0 - smoothing) + smoothing / 2.0;
        let ce = term(pw * y, softplus(-x)) + term(1.0 - y, softplus(x));
        let d_ce = (pw * y + 1.0 - y) * sigmoid(x) - pw * y;
        let (focal, d_focal) = if gamma > 0.0 {
            let (p, q) = (sigmoid(x), sigmoid(-x));
            let m = y * q + (1.0 - y) * p;
            let d = if m == 0.0 {
                0.0
            } else {
                gamma * m.powf(gamma - 1.0) * (1.0 - 2.0 * y) * p * q
            };
            (m.powf(gamma), d)
        } else {
            (1.0, 0.0)
        };
        let k = wc * alpha.map_or(1.0, |a| a * y + (1.0 - a) * (1.0 - y));
        let loss = if x.is_nan() {
            f32::NAN
        } else {
            term(k, ce * focal)
        };
        losses[c] = loss;
        sum += loss as f64;
        if let Some(g) = grad.as_deref_mut() {
            let d = if gamma > 0.0 {
                d_ce * focal + term(d_focal, ce)
            } else {
                d_ce
            };
            g[c] = scale(c) * k * d;
        }
    }
    sum
}

fn softplus(v: f32) -> f32 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// What a probability-input row gives.
#[derive(Debug, Clone, Copy)]
pub struct ProbRow {
    /// The cross-entropy part of the loss.
    pub ce: f64,
    /// Argmax of q.
    pub argmax: u32,
    /// `−Σ p·ln p`.
    pub entropy: f64,
    /// `clamp(max q)`.
    pub confidence: f64,
}

/// How a probability-input row is scored (SEMANTICS.md sections 2b and 2c).
#[derive(Debug, Clone, Copy)]
pub struct ProbOptions {
    /// The lower clamp `eps`: `p = clamp(q, eps, 1)`.
    pub floor: f32,
    /// Label smoothing `ε`.
    pub smoothing: f32,
    /// Focal `γ` (0: off).
    pub gamma: f32,
    /// Argmax, entropy and confidence are asked for.
    pub metrics: bool,
}

impl ProbOptions {
    /// `ln p = ln(clamp(q, eps, 1))`, in f64.
    fn ln_p(self, q: f32) -> f64 {
        (q as f64).clamp(self.floor as f64, 1.0).ln()
    }

    /// The focal factors `(f, g)` of one input value ((1, 1) without focal loss).
    fn focal(self, q: f32) -> (f64, f64) {
        if self.gamma > 0.0 {
            focal_factors(self.ln_p(q), self.gamma as f64)
        } else {
            (1.0, 1.0)
        }
    }
}

/// Loss of one probability-input row. `target`: the index or dense targets; `w`: class
/// weights. With `a[c] = w[c]·t'[c]`, `ce = −Σ_c a[c]·f[c]·ln p[c]` (`f = (1 − p)^γ`, 1 without
/// focal loss).
pub fn probability_row(
    q: &[f32],
    target: ProbTarget,
    options: ProbOptions,
    w: Option<&[f32]>,
) -> ProbRow {
    let classes = q.len() as f64;
    let (eps, floor) = (options.smoothing as f64, options.floor as f64);
    let w = |c: usize| w.map_or(1.0, |w| w[c] as f64);
    // f·ln p of class c.
    let f_ln_p = |c: usize| options.focal(q[c]).0 * options.ln_p(q[c]);
    let ce = match target {
        ProbTarget::Index(y) => {
            // Without smoothing its coefficient is 0, which leaves the sum out: one `ln` a row.
            let smooth = match eps > 0.0 {
                true => (0..q.len()).map(|c| term(w(c), f_ln_p(c))).sum::<f64>(),
                false => 0.0,
            };
            -term(1.0 - eps, term(w(y), f_ln_p(y))) - term(eps / classes, smooth)
        }
        ProbTarget::Dense(t) => -(0..q.len())
            .map(|c| {
                term(
                    w(c) * ((1.0 - eps) * t[c] as f64 + eps / classes),
                    f_ln_p(c),
                )
            })
            .sum::<f64>(),
    };
    if !options.metrics {
        return ProbRow {
            ce,
            argmax: 0,
            entropy: 0.0,
            confidence: 0.0,
        };
    }
    let argmax = first_max(q);
    let entropy = -(0..q.len())
        .map(|c| {
            let p = (q[c] as f64).clamp(floor, 1.0);
            p * p.ln()
        })
        .sum::<f64>();
    ProbRow {
        ce,
        argmax,
        entropy,
        confidence: (q[argmax as usize] as f64).clamp(floor, 1.0),
    }
}

/// Gradient of one probability-input row with respect to q, times `a`, into `dq`:
/// `−a[c]·g[c]/q[c]` with `a[c] = w[c]·t'[c]` and `g` the focal gradient factor (1 without
/// focal loss; `reference::cross_entropy` derives it), 0 where `q` was clamped.
pub fn probability_backward(
    q: &[f32],
    target: ProbTarget,
    options: ProbOptions,
    w: Option<&[f32]>,
    a: f32,
    dq: &mut [f32],
) {
    let classes = q.len() as f32;
    let eps = options.smoothing;
    let w = |c: usize| w.map_or(1.0, |w| w[c]);
    for c in 0..q.len() {
        let t = match target {
            ProbTarget::Index(y) => {
                let hit = if c == y { 1.0 - eps } else { 0.0 };
                hit + eps / classes
            }
            ProbTarget::Dense(t) => (1.0 - eps) * t[c] + eps / classes,
        };
        let g = options.focal(q[c]).1 as f32;
        dq[c] = if q[c] < options.floor {
            0.0
        } else {
            -a * w(c) * t * g / q[c]
        };
    }
}

/// The target of a probability-input row.
#[derive(Debug, Clone, Copy)]
pub enum ProbTarget<'a> {
    /// A class index.
    Index(usize),
    /// Dense targets.
    Dense(&'a [f32]),
}
