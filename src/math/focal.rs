//! The focal factor `f = (1 − p)^γ` and its gradient factor `g` of one class (SEMANTICS.md
//! section 2c), in f64 for a row's target and in f32 for the per-class passes.

/// The focal factors in f32, for the per-class passes: [`focal_factors`] with one power per
/// class (`(1 − p)^(γ−1) = f / (1 − p)`), and none for a whole `γ` (`powi`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Focal {
    gamma: f32,
    whole: Option<i32>,
}

impl Focal {
    /// Factors for focusing parameter `gamma > 0`.
    pub(crate) fn new(gamma: f32) -> Focal {
        let whole = (gamma.fract() == 0.0 && gamma <= 16.0).then_some(gamma as i32);
        Focal { gamma, whole }
    }

    /// `(f, g)` of a class with log-probability `l` (see [`focal_factors`]).
    #[inline]
    pub(crate) fn factors(self, l: f32) -> (f32, f32) {
        let q = -l.exp_m1();
        if q <= 0.0 {
            // p = 1: f = 0 and p·l·(1 − p)^(γ−1) → 0.
            return (0.0, 0.0);
        }
        let f = match self.whole {
            Some(k) => q.powi(k),
            None => q.powf(self.gamma),
        };
        let p = l.exp();
        let h = if p == 0.0 { 0.0 } else { p * l * (f / q) };
        (f, f - self.gamma * h)
    }
}

/// The focal factor `f = (1 − p)^γ` of one class and its gradient factor
/// `g = f − γ·p·logp·(1 − p)^(γ−1)`, from `l = logp` (SEMANTICS.md section 2c).
///
/// Where they come from: one class's term of the loss is `−a·f·logp`, and with
/// `∂logp_c/∂z_j = [c = j] − p_j`, `∂p_c/∂z_j = p_c·([c = j] − p_j)`, its gradient is
/// `−a·g·([c = j] − p_j)`; summing over classes, `dz_j = p_j·Σ_c a_c·g_c − a_j·g_j`
/// (`reference::focal_factors` has the whole derivation). `1 − p = −expm1(logp)`, exact near
/// `p = 1`; `p·logp·(1 − p)^(γ−1)` is taken as its limit 0 at `p = 0` and `p = 1`.
#[inline]
pub(crate) fn focal_factors(l: f64, gamma: f64) -> (f64, f64) {
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
