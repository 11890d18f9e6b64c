//! Binary cross-entropy with logits in f64 (SEMANTICS.md section 4).

use super::{check_shapes, gradient_scale, sigmoid, softplus, term, Reference};
use crate::error::{Error, Result};
use crate::input::{Batch, Targets};
use crate::options::{BinaryCrossEntropy, Reduction};

/// Binary cross-entropy with logits (SEMANTICS.md section 4, with its extensions: label
/// smoothing, sample weights, sigmoid focal loss).
/// `upstream`: per-element values (logits' layout) for `Reduction::None`, or one scalar.
pub fn binary_cross_entropy(
    options: &BinaryCrossEntropy,
    batch: &Batch,
    upstream: Option<&[f32]>,
) -> Result<Reference> {
    options.validate()?;
    let logits = &batch.logits;
    let (rows, classes) = (logits.rows(), logits.classes());
    check_shapes(batch, upstream, rows * classes, options.reduction)?;
    let Targets::Dense(targets) = batch.targets else {
        return Err(Error::Unsupported(
            "binary cross-entropy needs dense f32 targets (rows × classes)".into(),
        ));
    };
    super::check_len("targets", targets.len(), rows * classes, logits)?;
    let layout = logits.layout();
    // The mean is over every element.
    let elements = rows as f64 * classes as f64;
    let weight = |c: usize| batch.class_weights.map_or(1.0, |w| w[c] as f64);
    let pos_weight = |c: usize| batch.pos_weight.map_or(1.0, |w| w[c] as f64);
    let eps = options.label_smoothing as f64;
    let gamma = options.focal_gamma as f64;
    let alpha = options.focal_alpha.map(|a| a as f64);
    let mut out = Reference {
        gradient: vec![0.0; rows * classes],
        row_losses: vec![0.0; rows * classes],
        ..Default::default()
    };
    let mut sum = 0.0;
    for n in 0..rows {
        let sw = batch.sample_weights.map_or(1.0, |s| s[n] as f64);
        for c in 0..classes {
            let i = layout.offset(n, c, classes);
            let x = batch.logits.get(n, c) as f64;
            // Keras's label smoothing: y' = y·(1−ε) + ε/2 replaces y everywhere below.
            let y = targets[i] as f64 * (1.0 - eps) + eps / 2.0;
            let (wc, pw) = (weight(c), pos_weight(c));
            // A zero coefficient leaves its term out: y = 1 at x = +inf is a loss of 0.
            let ce = term(pw * y, softplus(-x)) + term(1.0 - y, softplus(x));
            let d_ce = (pw * y + 1.0 - y) * sigmoid(x) - pw * y;
            // Sigmoid focal loss (torchvision): ce·(1 − p_t)^γ·α_t with p = σ(x),
            // 1 − p_t = y·(1 − p) + (1 − y)·p = y·σ(−x) + (1 − y)·σ(x), and
            // d(1 − p_t)/dx = (1 − 2y)·σ(x)·σ(−x), so
            //   d/dx [ce·m^γ] = d_ce·m^γ + ce·γ·m^(γ−1)·(1 − 2y)·σ(x)·σ(−x)   (m = 1 − p_t),
            // the second term taken as 0 at m = 0 (its limit for every γ > 0).
            let (focal, d_focal) = if gamma > 0.0 {
                let m = y * sigmoid(-x) + (1.0 - y) * sigmoid(x);
                let dm = (1.0 - 2.0 * y) * sigmoid(x) * sigmoid(-x);
                let d = if m == 0.0 {
                    0.0
                } else {
                    gamma * m.powf(gamma - 1.0) * dm
                };
                (m.powf(gamma), d)
            } else {
                (1.0, 0.0)
            };
            let alpha_t = alpha.map_or(1.0, |a| a * y + (1.0 - a) * (1.0 - y));
            let k = sw * wc * alpha_t;
            // A zero coefficient never hides a NaN logit (SEMANTICS.md section 6).
            let loss = if x.is_nan() {
                f64::NAN
            } else {
                term(k, ce * focal)
            };
            let grad = if x.is_nan() {
                f64::NAN
            } else if gamma > 0.0 {
                term(k, d_ce * focal + term(d_focal, ce))
            } else {
                k * d_ce
            };
            out.row_losses[i] = loss;
            out.gradient[i] = grad * gradient_scale(options.reduction, upstream, i, 1.0, elements);
            sum += loss;
        }
    }
    out.loss = match options.reduction {
        Reduction::None => None,
        Reduction::Sum => Some(sum),
        Reduction::Mean => Some(sum / elements),
    };
    Ok(out)
}
