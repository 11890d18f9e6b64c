//! Linear cross-entropy in f64: the logits `x = h·Wᵀ + b` formed naively, the softmax
//! reference on them, and the gradients through the product (module docs of `crate::linear`).

use super::{cross_entropy, Reference};
use crate::error::{Error, Result};
use crate::input::{Batch, Logits};
use crate::linear::LinearBatch;
use crate::options::CrossEntropy;

/// What the reference gives for a linear head, in f64.
#[derive(Debug, Clone, Default)]
pub struct LinearReference {
    /// The softmax reference on the logits; its `gradient` is `G = dloss/dx` [N × V].
    pub logits_reference: Reference,
    /// The logits `x = h·Wᵀ + b` [N × V], summed in f64.
    pub logits: Vec<f64>,
    /// `dh = G·W` [N × D].
    pub hidden_gradient: Vec<f64>,
    /// `dW = Gᵀ·h` [V × D].
    pub weight_gradient: Vec<f64>,
    /// `db = Σ_n G[n]` \[V\].
    pub bias_gradient: Vec<f64>,
}

/// Linear cross-entropy of `batch` (index targets, logit inputs). The logits are formed in
/// f64 and rounded to f32 for the softmax reference, whose own tolerance table then applies
/// (a rounding of `2⁻²⁴·|x|`, far inside a product's own error). `upstream` as in
/// [`cross_entropy`].
pub fn linear_cross_entropy(
    options: &CrossEntropy,
    batch: &LinearBatch,
    upstream: Option<&[f32]>,
) -> Result<LinearReference> {
    let (h, w) = (&batch.hidden, &batch.weight);
    let (n, d, v) = (h.rows(), h.cols(), w.rows());
    if w.cols() != d || h.len() != n * d || w.len() != v * d {
        return Err(Error::Shape {
            what: "weight",
            expected: v * d,
            actual: w.len(),
            shape: format!("hidden [{n} × {d}], weight [{v} × {}]", w.cols()),
        });
    }
    let bias = |c: usize| batch.bias.as_ref().map_or(0.0, |b| b.get(0, c) as f64);
    let mut logits = vec![0f64; n * v];
    for r in 0..n {
        for c in 0..v {
            let dot: f64 = (0..d)
                .map(|k| h.get(r, k) as f64 * w.get(c, k) as f64)
                .sum();
            logits[r * v + c] = dot + bias(c);
        }
    }
    let rounded: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
    let mut inner = Batch::new(Logits::new(&rounded, n, v), batch.targets);
    inner.class_weights = batch.class_weights;
    inner.sample_weights = batch.sample_weights;
    let reference = cross_entropy(options, &inner, upstream)?;
    let g = &reference.gradient;
    let mut hidden_gradient = vec![0f64; n * d];
    let mut weight_gradient = vec![0f64; v * d];
    let mut bias_gradient = vec![0f64; v];
    for r in 0..n {
        for c in 0..v {
            let grc = g[r * v + c];
            bias_gradient[c] += grc;
            for k in 0..d {
                hidden_gradient[r * d + k] += grc * w.get(c, k) as f64;
                weight_gradient[c * d + k] += grc * h.get(r, k) as f64;
            }
        }
    }
    Ok(LinearReference {
        logits_reference: reference,
        logits,
        hidden_gradient,
        weight_gradient,
        bias_gradient,
    })
}
