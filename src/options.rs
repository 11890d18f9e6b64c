//! Loss options with PyTorch's defaults, and the one place that checks them.

use crate::error::{Error, Result};

/// How per-row losses become the returned loss (PyTorch's `reduction=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The per-row losses (per-element for BCE); no scalar.
    None,
    /// `Σ_n loss[n]`.
    Sum,
    /// The weighted mean of SEMANTICS.md section 2 (soft targets and BCE: divided by N, N·C).
    #[default]
    Mean,
}

/// What the input values are.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum InputKind {
    /// Unnormalized logits (the default): a softmax is applied.
    #[default]
    Logits,
    /// Probabilities already: `logp = ln(clamp(q, eps, 1))` (SEMANTICS.md section 2b).
    Probabilities {
        /// Lower clamp; Keras's default is `1e-7`.
        eps: f32,
    },
}

impl InputKind {
    /// Probabilities with Keras's clamp `eps = 1e-7`.
    pub const PROBABILITIES: InputKind = InputKind::Probabilities { eps: 1e-7 };
}

/// Softmax cross-entropy options (`torch.nn.functional.cross_entropy` and extensions).
///
/// ```
/// use xent::{CrossEntropy, Reduction};
/// let loss = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4).reduction(Reduction::Sum);
/// assert_eq!(loss.ignore_index, -100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropy {
    /// Reduction (default mean).
    pub reduction: Reduction,
    /// Rows whose index target equals this are ignored (default −100).
    pub ignore_index: i64,
    /// Label smoothing `ε` in `[0, 1]` (default 0).
    pub label_smoothing: f32,
    /// z-loss coefficient `λ ≥ 0` (default 0): adds `λ·lse²` per row.
    pub z_loss: f32,
    /// Logit soft-capping `cap > 0` (default off): `z = cap·tanh(s·x / cap)`.
    pub softcap: Option<f32>,
    /// Logit scale `s` (default 1): `z = s·x`.
    pub logit_scale: f32,
    /// Logits (default) or probabilities.
    pub input: InputKind,
    /// Focal-loss focusing parameter `γ ≥ 0` (default 0: plain cross-entropy). Each class's
    /// term is multiplied by `(1 − p[c])^γ` (SEMANTICS.md section 2c); class weights act as `α`.
    /// With probability inputs `p = clamp(q, eps, 1)` (section 2b: no log-sum-exp).
    pub focal_gamma: f32,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl CrossEntropy {
    /// PyTorch's defaults: mean, ignore_index −100, no smoothing, no z-loss, no cap, scale 1.
    pub const fn new() -> Self {
        CrossEntropy {
            reduction: Reduction::Mean,
            ignore_index: -100,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            logit_scale: 1.0,
            input: InputKind::Logits,
            focal_gamma: 0.0,
        }
    }
    /// Sets the reduction.
    pub const fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// Sets the ignored target value.
    pub const fn ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }
    /// Sets label smoothing `ε`.
    pub const fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.label_smoothing = epsilon;
        self
    }
    /// Sets the z-loss coefficient `λ`.
    pub const fn z_loss(mut self, lambda: f32) -> Self {
        self.z_loss = lambda;
        self
    }
    /// Turns on logit soft-capping at `cap`.
    pub const fn softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }
    /// Sets the logit scale `s`.
    pub const fn logit_scale(mut self, scale: f32) -> Self {
        self.logit_scale = scale;
        self
    }
    /// Sets the input kind (logits or probabilities).
    pub const fn input(mut self, input: InputKind) -> Self {
        self.input = input;
        self
    }
    /// Sets the focal-loss focusing parameter `γ` (0 turns focal loss off).
    pub const fn focal_gamma(mut self, gamma: f32) -> Self {
        self.focal_gamma = gamma;
        self
    }
    /// Whether the focal factor is on (`γ > 0`).
    pub fn is_focal(&self) -> bool {
        self.focal_gamma > 0.0
    }

    /// Checks every option against its domain (SEMANTICS.md section 7).
    pub fn validate(&self) -> Result<()> {
        let eps = self.label_smoothing;
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            return Err(bad("label_smoothing", eps, "must be finite and in [0, 1]"));
        }
        if !(self.z_loss.is_finite() && self.z_loss >= 0.0) {
            return Err(bad("z_loss", self.z_loss, "must be finite and >= 0"));
        }
        if let Some(cap) = self.softcap {
            if !(cap.is_finite() && cap > 0.0) {
                return Err(bad("softcap", cap, "must be finite and > 0"));
            }
        }
        if !self.logit_scale.is_finite() {
            return Err(bad("logit_scale", self.logit_scale, "must be finite"));
        }
        if let InputKind::Probabilities { eps } = self.input {
            if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
                return Err(bad("eps", eps, "must be finite and in (0, 1)"));
            }
        }
        check_gamma(self.focal_gamma)
    }
}

/// Binary cross-entropy with logits options (`binary_cross_entropy_with_logits`), with Keras's
/// label smoothing and torchvision's sigmoid focal loss (SEMANTICS.md section 4).
///
/// Per-class `weight` and `pos_weight` and per-row sample weights are data, passed in the
/// [`Batch`](crate::Batch).
///
/// ```
/// use xent::{BinaryCrossEntropy, Reduction};
/// let loss = BinaryCrossEntropy::new().reduction(Reduction::Sum).focal_gamma(2.0).focal_alpha(0.25);
/// assert_eq!(loss.reduction, Reduction::Sum);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BinaryCrossEntropy {
    /// Reduction (default mean, over all N·C elements).
    pub reduction: Reduction,
    /// Label smoothing `ε` in `[0, 1]` (default 0): targets become `y·(1−ε) + ε/2` (Keras).
    pub label_smoothing: f32,
    /// Sigmoid focal loss focusing parameter `γ ≥ 0` (default 0: plain BCE): each element is
    /// multiplied by `(1 − p_t)^γ` (torchvision's `sigmoid_focal_loss`).
    pub focal_gamma: f32,
    /// Focal balance `α` in `[0, 1]` (default off): each element is multiplied by
    /// `α·y + (1−α)·(1−y)`. torchvision's default is 0.25.
    pub focal_alpha: Option<f32>,
}

impl BinaryCrossEntropy {
    /// PyTorch's defaults: mean reduction, no smoothing, no focal factor.
    pub const fn new() -> Self {
        BinaryCrossEntropy {
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
            focal_gamma: 0.0,
            focal_alpha: None,
        }
    }
    /// Sets the reduction.
    pub const fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// Sets label smoothing `ε`: targets become `y·(1−ε) + ε/2`.
    pub const fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.label_smoothing = epsilon;
        self
    }
    /// Sets the focal focusing parameter `γ`.
    pub const fn focal_gamma(mut self, gamma: f32) -> Self {
        self.focal_gamma = gamma;
        self
    }
    /// Turns on the focal balance `α`.
    pub const fn focal_alpha(mut self, alpha: f32) -> Self {
        self.focal_alpha = Some(alpha);
        self
    }

    /// Checks every option against its domain.
    pub fn validate(&self) -> Result<()> {
        let eps = self.label_smoothing;
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            return Err(bad("label_smoothing", eps, "must be finite and in [0, 1]"));
        }
        check_gamma(self.focal_gamma)?;
        if let Some(alpha) = self.focal_alpha {
            if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
                return Err(bad("focal_alpha", alpha, "must be finite and in [0, 1]"));
            }
        }
        Ok(())
    }
}

fn check_gamma(gamma: f32) -> Result<()> {
    if gamma.is_finite() && gamma >= 0.0 {
        Ok(())
    } else {
        Err(bad("focal_gamma", gamma, "must be finite and >= 0"))
    }
}

fn bad(option: &'static str, value: f32, why: &'static str) -> Error {
    Error::BadOption { option, value, why }
}
