//! One call's input tensors, on any backend: what the CubeCL kernels bind (`cube.rs`, after
//! making each bindable) and what the CPU path reads back (`host.rs`).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::Backend;

use crate::ops::{BinaryGiven, Given, LinearGiven, Targets};

/// A softmax or binary call's tensors.
#[derive(Clone)]
pub(crate) struct Inputs<B: Backend> {
    pub logits: FloatTensor<B>,
    pub index: Option<IntTensor<B>>,
    pub dense: Option<FloatTensor<B>>,
    pub class_weights: Option<FloatTensor<B>>,
    pub pos_weight: Option<FloatTensor<B>>,
    pub sample_weights: Option<FloatTensor<B>>,
}

impl<B: Backend> Inputs<B> {
    pub fn new(logits: FloatTensor<B>, given: Given<B>) -> Self {
        let (index, dense) = match given.targets {
            Targets::Index(t) => (Some(t), None),
            Targets::Dense(t) => (None, Some(t)),
        };
        Self {
            logits,
            index,
            dense,
            class_weights: given.class_weights.tensor(),
            pos_weight: None,
            sample_weights: given.sample_weights.tensor(),
        }
    }

    pub fn binary(logits: FloatTensor<B>, given: BinaryGiven<B>) -> Self {
        Self {
            logits,
            index: None,
            dense: Some(given.targets),
            class_weights: given.class_weights.tensor(),
            pos_weight: given.pos_weight.tensor(),
            sample_weights: given.sample_weights.tensor(),
        }
    }

    /// Each tensor through `float` or `int`.
    pub fn map(
        self,
        float: impl Fn(FloatTensor<B>) -> FloatTensor<B>,
        int: impl Fn(IntTensor<B>) -> IntTensor<B>,
    ) -> Self {
        Self {
            logits: float(self.logits),
            index: self.index.map(int),
            dense: self.dense.map(&float),
            class_weights: self.class_weights.map(&float),
            pos_weight: self.pos_weight.map(&float),
            sample_weights: self.sample_weights.map(&float),
        }
    }
}

/// A linear head's tensors.
#[derive(Clone)]
pub(crate) struct LinearInputs<B: Backend> {
    pub hidden: FloatTensor<B>,
    pub weight: FloatTensor<B>,
    pub bias: Option<FloatTensor<B>>,
    pub targets: IntTensor<B>,
    pub class_weights: Option<FloatTensor<B>>,
    pub sample_weights: Option<FloatTensor<B>>,
}

impl<B: Backend> LinearInputs<B> {
    /// `bias` is read where `has_bias`.
    pub fn new(
        hidden: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        has_bias: bool,
        given: LinearGiven<B>,
    ) -> Self {
        Self {
            hidden,
            weight,
            bias: has_bias.then_some(bias),
            targets: given.targets,
            class_weights: given.class_weights.tensor(),
            sample_weights: given.sample_weights.tensor(),
        }
    }

    /// Each tensor through `float` or `int`.
    pub fn map(
        self,
        float: impl Fn(FloatTensor<B>) -> FloatTensor<B>,
        int: impl Fn(IntTensor<B>) -> IntTensor<B>,
    ) -> Self {
        Self {
            hidden: float(self.hidden),
            weight: float(self.weight),
            bias: self.bias.map(&float),
            targets: int(self.targets),
            class_weights: self.class_weights.map(&float),
            sample_weights: self.sample_weights.map(&float),
        }
    }
}

/// The outputs of a linear call: loss, flag, `dh`, `dW`, `db`.
pub(crate) type LinearOutputs<B> = (
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);
