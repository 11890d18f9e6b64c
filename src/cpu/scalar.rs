//! The row kernel without a SIMD body: probability inputs with focal loss (SEMANTICS.md
//! sections 2b and 2c, a power per value; without focal loss they take `probability`'s SIMD
//! rows). Element-wise: each value read once, the sums in f64.

use crate::math::focal::focal_factors;
use crate::math::row::{first_max, term};

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
