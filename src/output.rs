//! What a call is asked for ([`Request`]) and what it returns ([`Output`]).

/// Where the gradient with respect to the logits goes.
#[derive(Debug, Default)]
pub enum Gradient<'g> {
    /// No gradient.
    #[default]
    None,
    /// Into a caller's f32 buffer with the logits' shape and layout.
    Into(&'g mut [f32]),
    /// Over the logits themselves (they must be built with `Logits::new_mut`), in their dtype.
    InPlace,
}

/// What to compute beyond the loss. Built with chained calls:
///
/// ```
/// use xent::Request;
/// let mut grad = vec![0.0f32; 6];
/// let request = Request::new().lse().metrics().gradient_into(&mut grad);
/// assert!(request.lse && request.metrics);
/// ```
#[derive(Debug, Default)]
pub struct Request<'g> {
    /// Return per-row losses (always returned for `Reduction::None`).
    pub row_losses: bool,
    /// Return per-row log-sum-exp of the transformed logits.
    pub lse: bool,
    /// Return per-row argmax, correctness, target probability, entropy and confidence.
    pub metrics: bool,
    /// Gradient destination.
    pub gradient: Gradient<'g>,
    /// Upstream gradient `g`: one value per row (per element for BCE) with `Reduction::None`,
    /// or a single scalar with sum/mean. All ones when absent.
    pub upstream: Option<&'g [f32]>,
}

impl<'g> Request<'g> {
    /// Loss only.
    pub fn new() -> Self {
        Self::default()
    }
    /// Also return per-row losses.
    pub fn row_losses(mut self) -> Self {
        self.row_losses = true;
        self
    }
    /// Also return per-row log-sum-exp.
    pub fn lse(mut self) -> Self {
        self.lse = true;
        self
    }
    /// Also return the metrics of SEMANTICS.md section 5.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }
    /// Write the gradient into `grad` (f32, the logits' shape and layout).
    pub fn gradient_into(mut self, grad: &'g mut [f32]) -> Self {
        self.gradient = Gradient::Into(grad);
        self
    }
    /// Overwrite the logits with the gradient.
    pub fn gradient_in_place(mut self) -> Self {
        self.gradient = Gradient::InPlace;
        self
    }
    /// Sets the upstream gradient.
    pub fn upstream(mut self, upstream: &'g [f32]) -> Self {
        self.upstream = Some(upstream);
        self
    }
    /// Whether any gradient is asked for.
    pub fn wants_gradient(&self) -> bool {
        !matches!(self.gradient, Gradient::None)
    }
}

/// Per-row metrics (SEMANTICS.md section 5); for soft targets `correct` compares with the
/// target's argmax and `target_prob` is `Σ_c t[c]·p[c]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Lowest index among the row's maximal transformed logits (a NaN counts as maximal).
    pub argmax: Vec<u32>,
    /// `argmax == target` (false for ignored rows).
    pub correct: Vec<bool>,
    /// Probability given to the target class.
    pub target_prob: Vec<f32>,
    /// `lse − Σ_c p[c]·z[c]`.
    pub entropy: Vec<f32>,
    /// `max_c p[c]`, the confidence the calibration error bins by.
    pub confidence: Vec<f32>,
    /// Whether the row counts (not ignored).
    pub valid: Vec<bool>,
}

impl Metrics {
    /// Number of rows that are not ignored.
    pub fn valid_rows(&self) -> usize {
        self.valid.iter().filter(|v| **v).count()
    }
    /// Fraction of valid rows whose argmax is the target (NaN when none is valid).
    pub fn accuracy(&self) -> f64 {
        let correct = self
            .correct
            .iter()
            .zip(&self.valid)
            .filter(|(c, v)| **c && **v)
            .count();
        correct as f64 / self.valid_rows() as f64
    }
    /// Mean entropy over valid rows (NaN when none is valid).
    pub fn mean_entropy(&self) -> f64 {
        let total: f64 = self
            .entropy
            .iter()
            .zip(&self.valid)
            .filter(|(_, v)| **v)
            .map(|(e, _)| *e as f64)
            .sum();
        total / self.valid_rows() as f64
    }
    /// Expected calibration error over valid rows with `bins` equal-width confidence bins:
    /// `Σ_b |B_b|/V · |accuracy(B_b) − mean confidence(B_b)|`. NaN when a valid row is NaN (a
    /// NaN or +inf logit, or only −inf ones: its confidence is NaN), as its loss and the mean
    /// entropy are.
    pub fn ece(&self, bins: usize) -> f64 {
        let bins = bins.max(1);
        let mut count = vec![0usize; bins];
        let mut correct = vec![0usize; bins];
        let mut confidence = vec![0f64; bins];
        for row in (0..self.valid.len()).filter(|&r| self.valid[r]) {
            let conf = self.confidence[row] as f64;
            if conf.is_nan() {
                return f64::NAN;
            }
            // Bins are (lo, hi]; confidence 0 goes to the first.
            let bin = ((conf * bins as f64).ceil() as usize).clamp(1, bins) - 1;
            count[bin] += 1;
            correct[bin] += self.correct[row] as usize;
            confidence[bin] += conf;
        }
        let total: usize = count.iter().sum();
        (0..bins)
            .filter(|&b| count[b] > 0)
            .map(|b| {
                let n = count[b] as f64;
                (n / total as f64) * (correct[b] as f64 / n - confidence[b] / n).abs()
            })
            .sum()
    }
}

/// The result of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// The reduced loss; `None` with `Reduction::None`.
    pub loss: Option<f32>,
    /// Per-row losses (per element, in the logits' layout, for BCE), when asked or with `Reduction::None`.
    pub row_losses: Option<Vec<f32>>,
    /// Per-row log-sum-exp, when asked (softmax losses only).
    pub lse: Option<Vec<f32>>,
    /// Per-row metrics, when asked (softmax losses only).
    pub metrics: Option<Metrics>,
}
