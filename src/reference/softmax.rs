//! Softmax cross-entropy in f64 (SEMANTICS.md sections 1, 2, 2b, 2c, 3, 5, 6).

use super::{
    check_len, check_shapes, first_max, gradient_scale, log_softmax, log_sum_exp, term, Reference,
};
use crate::error::{Error, Result};
use crate::input::{Batch, Targets};
use crate::options::{CrossEntropy, InputKind, Reduction};

/// Softmax cross-entropy (SEMANTICS.md sections 1, 2, 2b, 2c, 3, 5, 6).
/// `upstream`: per-row values for `Reduction::None`, or one scalar for sum/mean.
pub fn cross_entropy(
    options: &CrossEntropy,
    batch: &Batch,
    upstream: Option<&[f32]>,
) -> Result<Reference> {
    options.validate()?;
    let logits = &batch.logits;
    let (rows, classes) = (logits.rows(), logits.classes());
    check_shapes(batch, upstream, rows, options.reduction)?;
    let layout = logits.layout();
    let sample_weight = |n: usize| batch.sample_weights.map_or(1.0, |s| s[n] as f64);
    // The mean's denominators (section 3): D = Σ s[n]·w[y[n]] over the rows not ignored (Σ s[n]
    // over every row for soft targets), and Σ s[n] over the same rows for the z-loss.
    let (mut denominator, mut z_denominator) = (0.0f64, 0.0f64);
    match batch.targets {
        Targets::Dense(t) => {
            check_len("targets", t.len(), rows * classes, logits)?;
            for n in 0..rows {
                denominator += sample_weight(n);
                z_denominator += sample_weight(n);
            }
        }
        targets => {
            check_len("targets", targets.len(), rows, logits)?;
            for n in 0..rows {
                let y = targets.index(n).unwrap_or_default();
                if y == options.ignore_index {
                    continue;
                }
                if y < 0 || y as u64 >= classes as u64 {
                    return Err(Error::TargetOutOfRange {
                        row: n,
                        value: y,
                        classes,
                        ignore_index: options.ignore_index,
                    });
                }
                denominator +=
                    sample_weight(n) * batch.class_weights.map_or(1.0, |w| w[y as usize] as f64);
                z_denominator += sample_weight(n);
            }
        }
    }
    let eps = options.label_smoothing as f64;
    let lambda = options.z_loss as f64;
    let c_f = classes as f64;
    let w = |c: usize| batch.class_weights.map_or(1.0, |w| w[c] as f64);
    let w_sum: f64 = (0..classes).map(w).sum();
    let mut out = Reference {
        gradient: vec![0.0; rows * classes],
        ..Default::default()
    };
    let (mut ce_sum, mut z_sum) = (0.0f64, 0.0f64);

    for n in 0..rows {
        let x: Vec<f64> = (0..classes).map(|c| logits.get(n, c) as f64).collect();
        let target = batch.targets.index(n);
        let valid = target != Some(options.ignore_index);
        // Soft targets t'[c] (with smoothing), or None for index targets.
        let soft: Option<Vec<f64>> = match batch.targets {
            Targets::Dense(t) => {
                let t = |c: usize| t[layout.offset(n, c, classes)] as f64;
                Some(
                    (0..classes)
                        .map(|c| (1.0 - eps) * t(c) + eps / c_f)
                        .collect(),
                )
            }
            _ => None,
        };

        // Section 1 / 2b: transformed logits z, dz/dx, log-probabilities.
        let (z, dzdx, lse, logp, clamped) = match options.input {
            InputKind::Logits => {
                let s = options.logit_scale as f64;
                let (z, dzdx): (Vec<f64>, Vec<f64>) = match options.softcap {
                    None => x.iter().map(|&v| (s * v, s)).unzip(),
                    Some(cap) => {
                        let cap = cap as f64;
                        x.iter()
                            .map(|&v| {
                                let z = cap * (s * v / cap).tanh();
                                (z, s * (1.0 - (z / cap) * (z / cap)))
                            })
                            .unzip()
                    }
                };
                let lse = log_sum_exp(&z);
                let logp = log_softmax(&z);
                (z, dzdx, lse, logp, vec![false; classes])
            }
            InputKind::Probabilities { eps: floor } => {
                let floor = floor as f64;
                let logp: Vec<f64> = x.iter().map(|&q| q.clamp(floor, 1.0).ln()).collect();
                let clamped = x.iter().map(|&q| q < floor).collect();
                (logp.clone(), vec![1.0; classes], 0.0, logp, clamped)
            }
        };
        let is_prob = matches!(options.input, InputKind::Probabilities { .. });
        let p: Vec<f64> = logp.iter().map(|&v| v.exp()).collect();

        // A NaN or +inf logit, or a row of −inf only, makes the row NaN (section 6), whatever
        // the coefficients of its terms.
        let broken = !is_prob && !lse.is_finite();

        // Section 5: metrics from z. The entropy `lse − Σ p·z` is `−Σ p·logp`, which keeps
        // the split form of section 1.
        let argmax = first_max(&z);
        let entropy = if broken {
            f64::NAN
        } else {
            -(0..classes)
                .filter(|&c| p[c] > 0.0)
                .map(|c| p[c] * logp[c])
                .sum::<f64>()
        };
        let (target_prob, correct) = match (&soft, target) {
            (Some(_), _) => {
                let Targets::Dense(t) = batch.targets else {
                    unreachable!()
                };
                let t = |c: usize| t[layout.offset(n, c, classes)] as f64;
                let tp = (0..classes).map(|c| t(c) * p[c]).sum();
                (
                    tp,
                    first_max(&(0..classes).map(t).collect::<Vec<_>>()) == argmax,
                )
            }
            (None, Some(y)) if valid => (p[y as usize], argmax == y as u32),
            _ => (0.0, false),
        };
        out.argmax.push(argmax);
        out.correct.push(correct);
        out.target_prob.push(target_prob);
        out.entropy.push(entropy);
        out.confidence.push(logp[argmax as usize].exp());
        out.valid.push(valid);
        out.lse.push(lse);

        if !valid {
            out.row_losses.push(0.0);
            continue;
        }

        // Sections 2 / 3: the loss, split into the cross-entropy part and the z-loss part.
        let gamma = options.focal_gamma as f64;
        // Section 2c: the focal factor f[c] = (1 − p[c])^γ and its gradient factor g[c].
        let focal: Option<Vec<(f64, f64)>> =
            (gamma > 0.0).then(|| logp.iter().map(|&l| focal_factors(l, gamma)).collect());
        let f = |c: usize| focal.as_ref().map_or(1.0, |v| v[c].0);
        // Every term is `coefficient · value`, and a zero coefficient leaves its term out
        // (section 6: a masked class of target 0 or weight 0 is not 0·inf).
        let ce = match (&soft, target) {
            _ if broken => f64::NAN,
            (Some(t), _) => -(0..classes)
                .map(|c| term(w(c) * t[c], f(c) * logp[c]))
                .sum::<f64>(),
            (None, Some(y)) => {
                let y = y as usize;
                let nll = -term(w(y), f(y) * logp[y]);
                let smooth = -(0..classes)
                    .map(|c| term(w(c), f(c) * logp[c]))
                    .sum::<f64>();
                term(1.0 - eps, nll) + term(eps / c_f, smooth)
            }
            (None, None) => unreachable!("index targets always have an index"),
        };
        let zl = if lambda > 0.0 && !is_prob {
            lambda * lse * lse
        } else {
            0.0
        };
        let sw = sample_weight(n);
        let loss = ce + zl;
        // s[n] is a coefficient: s = 0 leaves the row out, also when its loss is infinite
        // (section 6); a NaN row stays NaN.
        let weighted = |v: f64| {
            if sw == 0.0 && !v.is_nan() {
                0.0
            } else {
                sw * v
            }
        };
        out.row_losses.push(weighted(loss));
        ce_sum += weighted(ce);
        z_sum += weighted(zl);

        // The gradient, before the reduction's scale, with respect to z (or q). The scales
        // carry the sample weight s[n].
        let a = gradient_scale(options.reduction, upstream, n, sw, denominator);
        let b = gradient_scale(options.reduction, upstream, n, sw, z_denominator);
        // Focal (section 2c): with a[c] = w[c]·t'[c] the per-class target weight, the loss is
        // −Σ_c a[c]·f[c]·logp[c], and (see `focal_factors`)
        //   dloss/dz[j] = p[j]·Σ_c a[c]·g[c] − a[j]·g[j].
        // Probability inputs (section 2b) have p[c] = q[c] itself, no softmax: class c's term
        // depends on q[c] alone, and d/dq[c] of −a·f(p)·ln p is −a·(f'(p)·ln p + f(p)/p)
        // = −a·g[c]/q[c] (g = f + p·ln p·f'(p), f'(p) = −γ·(1 − p)^(γ−1)), 0 where clamped.
        let target_weight = |c: usize| match (&soft, target) {
            (Some(t), _) => w(c) * t[c],
            (None, Some(y)) => {
                let hit = if c == y as usize {
                    (1.0 - eps) * w(c)
                } else {
                    0.0
                };
                hit + eps / c_f * w(c)
            }
            (None, None) => unreachable!(),
        };
        let g_sum: f64 = match &focal {
            Some(v) => (0..classes).map(|c| target_weight(c) * v[c].1).sum(),
            None => 0.0,
        };
        for c in 0..classes {
            let d_ce = match (&soft, target) {
                _ if focal.is_some() => {
                    let g = focal.as_ref().map_or(1.0, |v| v[c].1);
                    if is_prob {
                        -target_weight(c) * g / x[c]
                    } else {
                        p[c] * g_sum - target_weight(c) * g
                    }
                }
                (Some(t), _) if is_prob => -w(c) * t[c] / x[c],
                (Some(t), _) => p[c] * (0..classes).map(|k| w(k) * t[k]).sum::<f64>() - w(c) * t[c],
                (None, Some(y)) if is_prob => {
                    let hit = if c == y as usize {
                        (1.0 - eps) * w(c) / x[c]
                    } else {
                        0.0
                    };
                    -hit - eps / c_f * w(c) / x[c]
                }
                (None, Some(y)) => {
                    let hit = if c == y as usize { 1.0 } else { 0.0 };
                    (1.0 - eps) * w(y as usize) * (p[c] - hit) + eps / c_f * (w_sum * p[c] - w(c))
                }
                (None, None) => unreachable!(),
            };
            let d_z = if lambda > 0.0 && !is_prob {
                2.0 * lambda * lse * p[c]
            } else {
                0.0
            };
            let g = if clamped[c] {
                0.0
            } else {
                (a * d_ce + b * d_z) * dzdx[c]
            };
            out.gradient[layout.offset(n, c, classes)] = if loss.is_nan() { f64::NAN } else { g };
        }
    }
    out.loss = match options.reduction {
        Reduction::None => None,
        Reduction::Sum => Some(ce_sum + z_sum),
        Reduction::Mean => Some(
            ce_sum / denominator
                + if z_sum != 0.0 {
                    z_sum / z_denominator
                } else {
                    0.0
                },
        ),
    };
    Ok(out)
}

/// The focal factor of one class and its gradient factor, from `l = logp[c]` (SEMANTICS.md
/// section 2c): returns `(f, g)` with
/// ```text
/// f = (1 − p)^γ,    g = f − γ·p·logp·(1 − p)^(γ−1).
/// ```
/// Derivation. One class's term is `ℓ_c = −a_c·f_c·L_c` with `L_c = logp[c]`, `a_c` the
/// per-class target weight (`w[c]·t'[c]`) and `f_c = (1 − p_c)^γ`. With
/// `∂L_c/∂z_j = [c = j] − p_j` and `∂p_c/∂z_j = p_c·([c = j] − p_j)`:
/// ```text
/// ∂ℓ_c/∂z_j = −a_c·( f_c'·p_c·L_c + f_c )·([c = j] − p_j),   f_c' = −γ·(1 − p_c)^(γ−1)
///           = −a_c·g_c·([c = j] − p_j)
/// dloss/dz_j = Σ_c ∂ℓ_c/∂z_j = p_j·Σ_c a_c·g_c − a_j·g_j.
/// ```
/// At `γ = 0`, `g = 1` and this is section 3's `p_j·Σ a − a_j`. Index targets without
/// smoothing have `a_c = w[y]·[c = y]`, so `dloss/dz_j = w[y]·g_y·(p_j − [j = y])`: plain
/// cross-entropy's gradient with `w[y]` replaced by `w[y]·g_y`, which needs only `p[y]`.
///
/// `1 − p` is computed as `−expm1(logp)` (exact for p near 1), and `p·logp·(1 − p)^(γ−1)`,
/// whose limits at `p = 0` and `p = 1` are 0 for every `γ > 0`, is taken as 0 there (a masked
/// class, `logp = −inf`, has `f = g = 1`).
pub fn focal_factors(l: f64, gamma: f64) -> (f64, f64) {
    let p = l.exp();
    let q = -l.exp_m1();
    let f = q.powf(gamma);
    let h = if p == 0.0 || q == 0.0 {
        0.0
    } else {
        p * l * q.powf(gamma - 1.0)
    };
    (f, f - gamma * h)
}
