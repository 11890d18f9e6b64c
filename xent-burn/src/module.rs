//! A drop-in for burn's `nn::loss::CrossEntropyLoss`: the same configuration names
//! (`pad_tokens`, `weights`, `smoothing`, `logits`), xent's other options beside them, and a
//! `forward` on logits of any rank; and the loss of a burn `Linear` head on hidden states.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use xent::{CrossEntropy, InputKind};

use crate::loss::{cross_entropy_weighted, linear_cross_entropy, Loss, Weights};
use crate::Error;

/// Configuration of [`CrossEntropyLoss`]: burn's `CrossEntropyLossConfig` fields, and
/// [`CrossEntropy`] for xent's (reduction, `ignore_index`, z-loss, soft-capping, logit scale,
/// focal γ). `smoothing` and `logits` set the matching fields of `options`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropyLossConfig {
    /// Target values whose rows are ignored (burn's pad tokens), besides `options.ignore_index`.
    pub pad_tokens: Option<Vec<usize>>,
    /// Per-class weights `[C]` (PyTorch's `weight`: the mean divides by the weights of the
    /// rows that count).
    pub weights: Option<Vec<f32>>,
    /// Label smoothing ε in `[0, 1]`.
    pub smoothing: Option<f32>,
    /// `true` (the default): the input is logits. `false`: probabilities, clamped below at
    /// `sqrt(f32::MIN_POSITIVE)` before the log (burn's clamp for f32 inputs; burn clamps f16
    /// inputs at f16's, 7.8e-3).
    pub logits: bool,
    /// xent's options. Its `label_smoothing` and `input` are replaced by `smoothing` and
    /// `logits`.
    pub options: CrossEntropy,
}

impl Default for CrossEntropyLossConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl CrossEntropyLossConfig {
    /// burn's defaults: no pad tokens, weights or smoothing; logits; PyTorch's mean.
    pub fn new() -> Self {
        Self {
            pad_tokens: None,
            weights: None,
            smoothing: None,
            logits: true,
            options: CrossEntropy::new(),
        }
    }
    /// Sets `pad_tokens`.
    pub fn with_pad_tokens(mut self, pad_tokens: Option<Vec<usize>>) -> Self {
        self.pad_tokens = pad_tokens;
        self
    }
    /// Sets `weights`.
    pub fn with_weights(mut self, weights: Option<Vec<f32>>) -> Self {
        self.weights = weights;
        self
    }
    /// Sets `smoothing`.
    pub fn with_smoothing(mut self, smoothing: Option<f32>) -> Self {
        self.smoothing = smoothing;
        self
    }
    /// Sets `logits`.
    pub fn with_logits(mut self, logits: bool) -> Self {
        self.logits = logits;
        self
    }
    /// Sets xent's options.
    pub fn with_options(mut self, options: CrossEntropy) -> Self {
        self.options = options;
        self
    }

    /// The options the loss runs with.
    fn resolved(&self) -> CrossEntropy {
        let input = if self.logits {
            InputKind::Logits
        } else {
            InputKind::Probabilities {
                eps: f32::MIN_POSITIVE.sqrt(),
            }
        };
        self.options
            .label_smoothing(self.smoothing.unwrap_or(0.0))
            .input(input)
    }

    /// The loss module on `device`, or the option or weight that is out of its domain.
    pub fn try_init(&self, device: &Device) -> Result<CrossEntropyLoss, Error> {
        let options = self.resolved();
        options.validate()?;
        if let Some((index, &value)) = self
            .weights
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(xent::Error::BadWeight {
                what: "class_weights",
                index,
                value,
            }
            .into());
        }
        Ok(CrossEntropyLoss {
            pad_tokens: self.pad_tokens.clone(),
            weights: self
                .weights
                .as_ref()
                .map(|w| Tensor::from_data(TensorData::new(w.clone(), [w.len()]), device)),
            options,
        })
    }

    /// [`try_init`](Self::try_init), panicking with its error (as burn's own `init` does).
    pub fn init(&self, device: &Device) -> CrossEntropyLoss {
        self.try_init(device)
            .unwrap_or_else(|e| panic!("CrossEntropyLossConfig: {e}"))
    }
}

/// Softmax cross-entropy as a burn module, computed by xent (see [`crate::cross_entropy`]).
#[derive(Module, Debug)]
pub struct CrossEntropyLoss {
    /// Target values whose rows are ignored.
    pub pad_tokens: Option<Vec<usize>>,
    /// Per-class weights `[C]`.
    pub weights: Option<Tensor<1>>,
    /// The options, smoothing and input kind included.
    #[module(skip)]
    pub options: CrossEntropy,
}

impl CrossEntropyLoss {
    /// The loss of logits `[N, C]` (or `[N, C, d1, …]`) against class indices `[N]` (or
    /// `[N, d1, …]`): `[1]` for sum and mean, one per row for none.
    ///
    /// # Panics
    /// As burn's modules do, on shapes that don't match or a device xent can't run on;
    /// [`try_forward`](Self::try_forward) returns those as errors. A class index out of range is
    /// not an error here: its row counts as ignored and `try_forward`'s [`Loss::check`]
    /// reports it.
    pub fn forward<const D: usize, const T: usize>(
        &self,
        logits: Tensor<D>,
        targets: Tensor<T, Int>,
    ) -> Tensor<1> {
        match self.try_forward(logits, targets) {
            Ok(loss) => loss.loss,
            Err(e) => panic!("CrossEntropyLoss: {e}"),
        }
    }

    /// [`forward`](Self::forward), returning errors, with the target-error flag.
    pub fn try_forward<const D: usize, const T: usize>(
        &self,
        logits: Tensor<D>,
        targets: Tensor<T, Int>,
    ) -> Result<Loss, Error> {
        let targets = without_pad_tokens(targets, &self.pad_tokens, self.options.ignore_index);
        let weights = Weights {
            class: self.weights.clone(),
            sample: None,
        };
        cross_entropy_weighted(logits, targets, &self.options, &weights)
    }
}

/// The loss of a burn [`Linear`] head on hidden states without the logits
/// ([`crate::linear_cross_entropy`]): the head's weight and bias are bound where they are, the
/// logits computed tile by tile and never written.
///
/// burn's `Linear` shows its weight as `[d_input, d_output]` = `[D, V]`; both of its layouts
/// are read where they are, no copy. The default (`LinearLayout::Row`) stores `[D, V]`, which
/// xent reads with its `WeightLayout::HiddenMajor` kernels and whose gradient it writes in
/// that layout; `LinearLayout::Col` stores `[V, D]`, PyTorch's layout. On a wgpu device a
/// `[D, V]` weight (and its f32 gradient) must fit one storage binding (the device's
/// `max_storage_buffer_binding_size`); a larger one is copied to `[V, D]` per call.
#[derive(Module, Debug)]
pub struct LinearCrossEntropyLoss {
    /// Target values whose rows are ignored, besides `options.ignore_index`.
    pub pad_tokens: Option<Vec<usize>>,
    /// Per-class weights `[V]`.
    pub weights: Option<Tensor<1>>,
    /// The options.
    #[module(skip)]
    pub options: CrossEntropy,
}

impl LinearCrossEntropyLoss {
    /// The loss with `options` (no pad tokens, no class weights).
    pub fn new(options: CrossEntropy) -> Self {
        Self {
            pad_tokens: None,
            weights: None,
            options,
        }
    }

    /// The same loss with pad tokens.
    pub fn with_pad_tokens(mut self, pad_tokens: Option<Vec<usize>>) -> Self {
        self.pad_tokens = pad_tokens;
        self
    }

    /// The same loss with class weights `[V]`.
    pub fn with_weights(mut self, weights: Option<Tensor<1>>) -> Self {
        self.weights = weights;
        self
    }

    /// The loss of `head` on `hidden` (`[…, D]`) against `targets` (its shape without `D`):
    /// `[1]` for sum and mean, one per row for none.
    ///
    /// # Panics
    /// As burn's modules do, on shapes that don't match or a device xent can't run on;
    /// [`try_forward`](Self::try_forward) returns those as errors.
    pub fn forward<const D: usize, const T: usize>(
        &self,
        hidden: Tensor<D>,
        head: &Linear,
        targets: Tensor<T, Int>,
    ) -> Tensor<1> {
        match self.try_forward(hidden, head, targets) {
            Ok(loss) => loss.loss,
            Err(e) => panic!("LinearCrossEntropyLoss: {e}"),
        }
    }

    /// [`forward`](Self::forward), returning errors, with the target-error flag.
    pub fn try_forward<const D: usize, const T: usize>(
        &self,
        hidden: Tensor<D>,
        head: &Linear,
        targets: Tensor<T, Int>,
    ) -> Result<Loss, Error> {
        let targets = without_pad_tokens(targets, &self.pad_tokens, self.options.ignore_index);
        let weights = Weights {
            class: self.weights.clone(),
            sample: None,
        };
        linear_cross_entropy(
            hidden,
            head.weight.val().transpose(),
            head.bias.as_ref().map(|b| b.val()),
            targets,
            &self.options,
            &weights,
        )
    }
}

/// `targets` with every pad token replaced by `ignore_index`.
fn without_pad_tokens<const T: usize>(
    targets: Tensor<T, Int>,
    pad_tokens: &Option<Vec<usize>>,
    ignore_index: i64,
) -> Tensor<T, Int> {
    let mut targets = targets;
    for &pad in pad_tokens.iter().flatten() {
        let pad = i64::try_from(pad).unwrap_or(i64::MAX);
        targets = targets
            .clone()
            .mask_fill(targets.equal_elem(pad), ignore_index);
    }
    targets
}
