//! A small classifier trained on the UCI handwritten digits, on the GPU without leaving it
//! ([`gpu`]) or on the CPU ([`cpu`]), with the same initialization, the same data order and
//! the same arithmetic order, so the two loss curves agree to rounding.
//!
//! Shared by `examples/train_digits.rs` (the command) and `tests/train_digits.rs`.
//!
//! The model is a stack of dense layers, ReLU between them, softmax cross-entropy (xent, mean
//! over the batch) on top: `linear` is 64 → 10 (softmax regression), `mlp` is 64 → hidden → 10.
//! Each layer's parameters are one packed block θ of (inputs + 1) × outputs f32, row-major:
//! rows 0..inputs are the weight W (so `y = x·W + b`), the last row is the bias b.

pub mod cpu;
pub mod data;
pub mod gpu;

use std::time::Duration;

/// Pixels per image (8 × 8).
pub const FEATURES: usize = 64;
/// Digits 0..9.
pub const CLASSES: usize = 10;
/// Seed of the fixed shuffle that picks the held-out split (independent of `--seed`, so every
/// run is scored on the same images).
pub const SPLIT_SEED: u64 = 0x5eed_d161;
/// Fraction of the images held out for scoring.
pub const HELD_OUT: f64 = 0.2;

/// Which model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Softmax regression: one dense layer 64 → 10.
    Linear,
    /// Two dense layers 64 → hidden → 10 with a ReLU between.
    Mlp,
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    /// Plain SGD: θ ← θ − lr·g.
    Sgd,
    /// Adam (β1 = 0.9, β2 = 0.999, ε = 1e-8), as `torch.optim.Adam` without weight decay.
    Adam,
}

impl Optimizer {
    /// The learning rate a run uses unless told otherwise: 0.01 for Adam, 0.3 for SGD (both
    /// reach > 0.94 held-out accuracy with either model in 20 epochs).
    pub fn default_lr(self) -> f32 {
        match self {
            Optimizer::Sgd => 0.3,
            Optimizer::Adam => 1e-2,
        }
    }
}

/// Adam's β1.
pub const BETA1: f32 = 0.9;
/// Adam's β2.
pub const BETA2: f32 = 0.999;
/// Adam's ε.
pub const ADAM_EPS: f32 = 1e-8;

/// Everything that decides a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Model.
    pub model: ModelKind,
    /// Hidden width of the MLP.
    pub hidden: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Minibatch rows. Every step has exactly this many (the last partial batch of an epoch is
    /// dropped; the next epoch's shuffle brings those images back).
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// Update rule.
    pub optimizer: Optimizer,
    /// Seed of the initialization and of the per-epoch shuffles.
    pub seed: u64,
    /// Read the training loss back every this many steps (the GPU path's only read-back
    /// inside an epoch).
    pub steps_per_log: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelKind::Mlp,
            hidden: 64,
            epochs: 20,
            batch: 64,
            lr: Optimizer::Adam.default_lr(),
            optimizer: Optimizer::Adam,
            seed: 1,
            steps_per_log: 10,
        }
    }
}

impl Config {
    /// Layer widths, input first: `[64, 10]` or `[64, hidden, 10]`.
    pub fn widths(&self) -> Vec<usize> {
        match self.model {
            ModelKind::Linear => vec![FEATURES, CLASSES],
            ModelKind::Mlp => vec![FEATURES, self.hidden, CLASSES],
        }
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean of this epoch's per-step training losses.
    pub train_loss: f32,
    /// Mean loss on the held-out split after the epoch.
    pub held_out_loss: f32,
    /// Fraction of held-out images classified right after the epoch.
    pub held_out_accuracy: f64,
}

/// What a trainer reports while it runs.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Training losses of steps `first..first + losses.len()` (0-based, counted over the run),
    /// as they were read back.
    Steps {
        /// First step.
        first: usize,
        /// One loss per step.
        losses: &'a [f32],
    },
    /// An epoch ended and was scored.
    Epoch(Epoch),
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran (`cpu` or the adapter's name).
    pub device: String,
    /// Every step's training loss, in order.
    pub step_losses: Vec<f32>,
    /// One entry per epoch.
    pub epochs: Vec<Epoch>,
    /// Wall time of the training loop (setup and data loading excluded).
    pub elapsed: Duration,
}

impl Report {
    /// Held-out accuracy after the last epoch.
    pub fn final_accuracy(&self) -> f64 {
        self.epochs.last().map_or(0.0, |e| e.held_out_accuracy)
    }
}

/// The error type of the trainers: xent's, wgpu's and I/O errors as text.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// SplitMix64: a tiny seeded generator, so the CPU and GPU runs draw the same numbers.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The initial parameter blocks, one per layer: every entry of θ (weights and bias) uniform in
/// `±1/sqrt(inputs)`, PyTorch's `nn.Linear` default.
pub fn init_params(config: &Config) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(config.seed);
    config
        .widths()
        .windows(2)
        .map(|w| {
            let bound = 1.0 / (w[0] as f32).sqrt();
            (0..(w[0] + 1) * w[1])
                .map(|_| (2.0 * rng.unit() - 1.0) * bound)
                .collect()
        })
        .collect()
}

/// The order of the training images in `epoch` (0-based): a fresh shuffle per epoch from the
/// run's seed, the same on both paths.
pub fn epoch_order(config: &Config, epoch: usize, samples: usize) -> Vec<u32> {
    let mut rng = Rng::new(
        config
            .seed
            .wrapping_mul(0x2545_f491_4f6c_dd1d)
            .wrapping_add(epoch as u64 + 1),
    );
    let mut order: Vec<u32> = (0..samples as u32).collect();
    rng.shuffle(&mut order);
    order
}

/// Checks a configuration before any device work.
pub fn check_config(config: &Config, train_samples: usize) -> Result<(), Error> {
    if config.batch == 0 || config.batch > train_samples {
        return Err(format!(
            "batch {} must be in 1..={train_samples} (the training split)",
            config.batch
        )
        .into());
    }
    if config.model == ModelKind::Mlp && config.hidden == 0 {
        return Err("hidden width must be at least 1".into());
    }
    if config.steps_per_log == 0 {
        return Err("steps per log must be at least 1".into());
    }
    if !(config.lr.is_finite() && config.lr > 0.0) {
        return Err(format!("learning rate {} must be finite and > 0", config.lr).into());
    }
    Ok(())
}
