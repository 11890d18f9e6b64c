//! A softmax row's finish from its online-softmax state: the max `m`, `S = Σ exp(z − m)` and
//! the centred sums that ride along (SEMANTICS.md sections 1, 2, 5, 6). Every `log p` is
//! `(z − m) − ln S`, never `z − lse`.

use std::ops::Mul;

/// `coefficient · value`, or 0 when the coefficient is exactly 0: a term whose coefficient is
/// 0 is absent, not `0·inf` = NaN (SEMANTICS.md section 6).
#[inline(always)]
pub(crate) fn term<T: Copy + PartialEq + Default + Mul<Output = T>>(coefficient: T, value: T) -> T {
    if coefficient == T::default() {
        T::default()
    } else {
        coefficient * value
    }
}

/// A row's value (loss, cross-entropy or z-loss part) times its sample weight `s`: 0 when
/// `s = 0`, also for an infinite value (a zero coefficient never meets an infinity, SEMANTICS.md
/// section 6), but a NaN row stays NaN.
#[inline]
pub(crate) fn sample_term(s: f64, value: f64) -> f64 {
    if s == 0.0 && !value.is_nan() {
        0.0
    } else {
        s * value
    }
}

/// `log Σ exp(z)` from the row's max, `S` and whether a `z` is NaN: NaN with a NaN, `m` when
/// `m` is infinite (−inf: every class masked; +inf), else `m + ln S`.
#[inline]
pub(crate) fn lse(max: f32, sum_exp: f64, nan: bool) -> f64 {
    if nan {
        f64::NAN
    } else if max.is_infinite() {
        max as f64
    } else {
        max as f64 + sum_exp.ln()
    }
}

/// What every softmax row's finish takes from its online-softmax state: the LSE, its split
/// `max + log_sum` for the backward, and the entropy and confidence metrics (NaN for a row
/// whose LSE is not finite: a NaN or +inf logit, or a row of −inf only).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finish {
    /// `log Σ exp(z)`.
    pub lse: f64,
    /// Whether `lse` is finite.
    pub finite: bool,
    /// `ln S`.
    pub log_sum: f64,
    /// The backward's split of `lse`: the row's max (its LSE when that is not finite) and
    /// `ln S` (0 then), in f32 as the kernels take them.
    pub max: f32,
    /// See `max`.
    pub split_log_sum: f32,
    /// `−Σ p·log p`.
    pub entropy: f64,
    /// `max p`.
    pub confidence: f64,
}

impl Finish {
    /// The finish of a row with max `max`, `S = sum_exp`, the centred `Σ e·(z − m)` and
    /// whether a `z` is NaN.
    pub(crate) fn new(max: f32, sum_exp: f64, sum_ez: f64, nan: bool) -> Finish {
        let lse = lse(max, sum_exp, nan);
        let finite = lse.is_finite();
        let log_sum = sum_exp.ln();
        Finish {
            lse,
            finite,
            log_sum,
            max: if finite { max } else { lse as f32 },
            split_log_sum: if finite { log_sum as f32 } else { 0.0 },
            entropy: if finite {
                entropy(log_sum, sum_ez, sum_exp)
            } else {
                f64::NAN
            },
            confidence: if finite {
                confidence(log_sum)
            } else {
                f64::NAN
            },
        }
    }
}

/// `log p = (z − max) − log_sum`, in f64: the split form every `logp` is taken from
/// (SEMANTICS.md section 1), with `lse = max + log_sum` never formed; `z − lse` would drop
/// `logp` below the last place of a large `max`.
#[inline]
pub(crate) fn log_p(z: f32, max: f32, log_sum: f64) -> f64 {
    (z as f64 - max as f64) - log_sum
}

/// The entropy `−Σ p·log p = ln S − Σ e·(z − m) / S` of a row with a finite LSE, from the
/// centred `Σ e·(z − m)` (SEMANTICS.md section 5).
#[inline]
pub(crate) fn entropy(log_sum: f64, sum_ez: f64, sum_exp: f64) -> f64 {
    log_sum - sum_ez / sum_exp
}

/// `max p = 1 / S` of a row with a finite LSE.
#[inline]
pub(crate) fn confidence(log_sum: f64) -> f64 {
    (-log_sum).exp()
}

/// The cross-entropy part of a valid index-target row (SEMANTICS.md section 2) in the split
/// form: `−(1−ε)·w[y]·logp[y] + (ε/C)·(W·log_sum − Σ w·(z − m))`, from `w[y]`, `logp[y]`,
/// `W = Σ w`, `log_sum` and the centred `Σ w·(z − m)` (unread when `ε = 0`); zero coefficients
/// leave their terms out.
pub(crate) fn index_ce(
    (eps, classes): (f64, f64),
    (w_y, logp_y): (f64, f64),
    (w_sum, log_sum, sum_wz): (f64, f64, f64),
) -> f64 {
    let smooth = if eps > 0.0 {
        w_sum * log_sum - sum_wz
    } else {
        0.0
    };
    -term(1.0 - eps, term(w_y, logp_y)) + term(eps / classes, smooth)
}

/// The coefficient of `p[c]` in the gradient of an index-target row's cross-entropy part
/// (SEMANTICS.md section 3): `(1−ε)·w[y] + (ε/C)·W`.
#[inline]
pub(crate) fn index_p_coefficient(eps: f64, classes: f64, w_y: f64, w_sum: f64) -> f64 {
    (1.0 - eps) * w_y + eps / classes * w_sum
}

/// Lowest index of the maximum, a NaN counting as maximal (`torch.argmax`).
pub(crate) fn first_max(v: &[f32]) -> u32 {
    if let Some(i) = v.iter().position(|v| v.is_nan()) {
        return i as u32;
    }
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
