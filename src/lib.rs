//! # xent: fused cross-entropy losses on GPUs (WGSL via wgpu) and SIMD CPUs
//!
//! Softmax cross-entropy (class-index or soft targets, ignore_index, class weights, label
//! smoothing, z-loss, logit soft-capping and scale, probability inputs) and binary
//! cross-entropy with logits, with PyTorch's numbers (`SEMANTICS.md`), computed in one fused
//! pass over the logits. The same call runs on the CPU (SIMD, every core) or the GPU.
//!
//! ```
//! use xent::{Backend, Batch, CrossEntropy, Logits, Request};
//! // Two rows, three classes; targets are class indices.
//! let logits = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
//! let targets = [2i64, 0];
//! let mut grad = vec![0.0f32; 6];
//! let out = CrossEntropy::new()
//!     .label_smoothing(0.1)
//!     .compute(&Backend::Cpu, Batch::new(Logits::new(&logits, 2, 3), &targets[..]),
//!              Request::new().gradient_into(&mut grad))?;
//! // Row 0: 0.9·0.40761 + (0.1/3)·4.22282 = 0.50761; row 1 (uniform): ln 3 = 1.09861.
//! assert!((out.loss.unwrap() - 0.80311).abs() < 1e-4);
//! # Ok::<(), xent::Error>(())
//! ```
//!
//! Layout of the crate: [`options`] and [`error`] (what a call means and how it fails),
//! [`input`] (views of the data), [`reference`](mod@reference) (the f64 oracle), [`cpu`] and [`gpu`] (the
//! two backends), [`output`], [`shard`] (vocabulary-parallel partials) and, with the default feature `cli`,
//! `cli` (the `xent` command).

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod input;
pub mod linear;
mod math;
pub mod options;
pub mod output;
pub(crate) mod plan;
pub mod reference;
pub mod shard;

/// The wgpu crate xent is built against: name its types through this re-export (`xent::wgpu`)
/// so that a trainer's buffers and devices are exactly the ones xent takes.
pub use wgpu;

/// The README's Rust snippets, compiled (and the first one run) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use backend::Backend;
pub use error::{Error, Result};
pub use input::{Batch, Dtype, Element, Layout, Logits, Matrix, Targets};
pub use options::{BinaryCrossEntropy, CrossEntropy, InputKind, Reduction};
pub use output::{Gradient, Metrics, Output, Request};
