//! Row kernels without a SIMD body: probability inputs (SEMANTICS.md section 2b, which needs a
//! logarithm per value) and binary cross-entropy (section 4). Both are element-wise, read each
//! value once, and accumulate in f64.

use crate::reference::first_max;

/// BCE for one row: per-element losses into `losses`, returns their f64 sum.
/// `x` is read from `io_src`; when `grad` is given, `scale(c)` is the element's upstream scale.
#[allow(clippy::too_many_arguments)]
pub fn binary_row(
    x: &[f32],
    t: &[f32],
    weight: Option<&[f32]>,
    pos_weight: Option<&[f32]>,
    losses: &mut [f32],
    mut grad: Option<&mut [f32]>,
    scale: impl Fn(usize) -> f32,
) -> f64 {
    let mut sum = 0.0f64;
    for c in 0..x.len() {
        let (x, y) = (x[c], t[c]);
        let wc = weight.map_or(1.0, |w| w[c]);
        let pw = pos_weight.map_or(1.0, |w| w[c]);
        let loss = wc * (pw * y * softplus(-x) + (1.0 - y) * softplus(x));
        losses[c] = loss;
        sum += loss as f64;
        if let Some(g) = grad.as_deref_mut() {
            g[c] = scale(c) * wc * ((pw * y + 1.0 - y) * sigmoid(x) - pw * y);
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

/// Loss of one probability-input row. `target`: the index (with the smoothing ε) or dense
/// targets; `w`: class weights.
pub fn probability_row(
    q: &[f32],
    floor: f32,
    target: ProbTarget,
    eps: f32,
    w: Option<&[f32]>,
) -> ProbRow {
    let classes = q.len() as f64;
    let (eps, floor) = (eps as f64, floor as f64);
    let w = |c: usize| w.map_or(1.0, |w| w[c] as f64);
    let logp = |c: usize| (q[c] as f64).clamp(floor, 1.0).ln();
    let ce = match target {
        ProbTarget::Index(y) => {
            let mut ce = -(1.0 - eps) * w(y) * logp(y);
            if eps > 0.0 {
                ce -= eps / classes * (0..q.len()).map(|c| w(c) * logp(c)).sum::<f64>();
            }
            ce
        }
        ProbTarget::Dense(t) => -(0..q.len())
            .map(|c| w(c) * ((1.0 - eps) * t[c] as f64 + eps / classes) * logp(c))
            .sum::<f64>(),
    };
    let argmax = first_max(&q.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let entropy = -(0..q.len())
        .map(|c| (q[c] as f64).clamp(floor, 1.0))
        .zip(0..q.len())
        .map(|(p, c)| p * logp(c))
        .sum::<f64>();
    ProbRow {
        ce,
        argmax,
        entropy,
        confidence: (q[argmax as usize] as f64).clamp(floor, 1.0),
    }
}

/// Gradient of one probability-input row with respect to q, times `a`, into `dq`.
pub fn probability_backward(
    q: &[f32],
    floor: f32,
    target: ProbTarget,
    eps: f32,
    w: Option<&[f32]>,
    a: f32,
    dq: &mut [f32],
) {
    let classes = q.len() as f32;
    let w = |c: usize| w.map_or(1.0, |w| w[c]);
    for c in 0..q.len() {
        let d = match target {
            ProbTarget::Index(y) => {
                let hit = if c == y { (1.0 - eps) * w(c) } else { 0.0 };
                -(hit + eps / classes * w(c)) / q[c]
            }
            ProbTarget::Dense(t) => -w(c) * ((1.0 - eps) * t[c] + eps / classes) / q[c],
        };
        dq[c] = if q[c] < floor { 0.0 } else { a * d };
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
