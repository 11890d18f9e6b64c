//! The f64 oracle: deliberately naive, written line by line from `SEMANTICS.md`.
//!
//! Every fast path is tested against these functions. They favour being obviously right over
//! being fast: each row is widened to f64, transformed, and every quantity computed from its
//! definition. Users can test against them too.
//!
//! The oracle is independent of the code it checks: it imports nothing from the validator, the
//! host math or the backends, and computes its own denominators and row scales. It checks only
//! what it needs to index safely (options, shapes, target range) and otherwise trusts its
//! input: the library's validator is what refuses a NaN weight.

mod bce;
mod linear;
mod softmax;

pub use bce::binary_cross_entropy;
pub use linear::{linear_cross_entropy, LinearReference};
pub use softmax::{cross_entropy, focal_factors};

use crate::error::{Error, Result};
use crate::input::{Batch, Logits};
use crate::options::Reduction;

/// Everything the reference computes for one call, in f64.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// The reduced loss (`None` for `Reduction::None`).
    pub loss: Option<f64>,
    /// Per-row losses (softmax) or per-element losses in the logits' layout (BCE).
    pub row_losses: Vec<f64>,
    /// Per-row log-sum-exp of the transformed logits (softmax; 0 for probability inputs).
    pub lse: Vec<f64>,
    /// d loss / d logits (with the reduction and upstream applied), in the logits' layout.
    pub gradient: Vec<f64>,
    /// Per-row argmax (softmax).
    pub argmax: Vec<u32>,
    /// Per-row `argmax == target` (false when ignored).
    pub correct: Vec<bool>,
    /// Per-row probability of the target (`Σ t·p` for soft targets).
    pub target_prob: Vec<f64>,
    /// Per-row entropy `lse − Σ p·z`.
    pub entropy: Vec<f64>,
    /// Per-row `max p`.
    pub confidence: Vec<f64>,
    /// Per-row: not ignored.
    pub valid: Vec<bool>,
}

/// The scale of one row's (or element's) gradient under `reduction`: the upstream value
/// (`upstream[index]` for `None`, the scalar for sum/mean, 1 when absent) times `weight`,
/// divided by the mean's `denominator`.
fn gradient_scale(
    reduction: Reduction,
    upstream: Option<&[f32]>,
    index: usize,
    weight: f64,
    denominator: f64,
) -> f64 {
    match reduction {
        Reduction::None => upstream.map_or(1.0, |u| u[index] as f64) * weight,
        Reduction::Sum => upstream.map_or(1.0, |u| u[0] as f64) * weight,
        Reduction::Mean => upstream.map_or(1.0, |u| u[0] as f64) * weight / denominator,
    }
}

/// The shapes the oracle indexes by: logits, a per-row or per-class vector, the upstream.
fn check_len(what: &'static str, actual: usize, expected: usize, logits: &Logits) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(Error::Shape {
        what,
        expected,
        actual,
        shape: logits.shape_string(),
    })
}

/// Checks the lengths of everything `batch` and `upstream` carry (not their values).
fn check_shapes(
    batch: &Batch,
    upstream: Option<&[f32]>,
    none_len: usize,
    reduction: Reduction,
) -> Result<()> {
    let logits = &batch.logits;
    logits.check()?;
    let (rows, classes) = (logits.rows(), logits.classes());
    for (what, weights) in [
        ("class_weights", batch.class_weights),
        ("pos_weight", batch.pos_weight),
    ] {
        if let Some(w) = weights {
            check_len(what, w.len(), classes, logits)?;
        }
    }
    if let Some(s) = batch.sample_weights {
        check_len("sample_weights", s.len(), rows, logits)?;
    }
    if let Some(u) = upstream {
        let expected = if reduction == Reduction::None {
            none_len
        } else {
            1
        };
        check_len("upstream", u.len(), expected, logits)?;
    }
    Ok(())
}

/// `log Σ exp(z)`: −inf for an all −inf row, +inf with any +inf, NaN with any NaN.
pub fn log_sum_exp(z: &[f64]) -> f64 {
    if z.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// `log softmax(z)` as SEMANTICS.md section 1 evaluates it: `(z − m) − log Σ exp(z − m)`, never
/// `z − lse`, which would drop everything below the last place of `m`. NaN throughout with a
/// NaN or +inf, and for a row of −inf only.
pub fn log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if z.iter().any(|v| v.is_nan()) || m == f64::INFINITY {
        return vec![f64::NAN; z.len()];
    }
    let log_s = z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|&v| (v - m) - log_s).collect()
}

/// `coefficient · value`, or 0 when the coefficient is exactly 0 (SEMANTICS.md section 6: a
/// term whose coefficient is 0 is absent, not `0·inf`).
pub fn term(coefficient: f64, value: f64) -> f64 {
    if coefficient == 0.0 {
        0.0
    } else {
        coefficient * value
    }
}

/// Lowest index of the maximum, a NaN counting as maximal (`torch.argmax`).
pub fn first_max(z: &[f64]) -> u32 {
    if let Some(i) = z.iter().position(|v| v.is_nan()) {
        return i as u32;
    }
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best as u32
}

/// `log(1 + exp(v))`, stable for large |v|.
pub fn softplus(v: f64) -> f64 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(−v))`.
pub fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}
