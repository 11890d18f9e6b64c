//! xent's fused cross-entropy as burn operations: the loss and its gradient run xent's WGSL
//! kernels on burn's own wgpu device and queue, on the tensors' own buffers, with nothing read
//! back (a view the device can't bind as it is, non-contiguous or at an unaligned offset, is
//! copied first). Under autodiff the backward reads the logits once and writes the gradient
//! once, in the logits' dtype (softmax: from the per-row state the forward saved; BCE:
//! recomputed). Where nothing else
//! holds the logits' buffer (burn's rule for its own in-place kernels: a model's output that
//! the caller dropped after the loss), the gradient is written over it, with no allocation;
//! otherwise into a new tensor of the logits' dtype (no copy of the logits).
//! [`binding_counts`] tells how calls bound their tensors (in place, as stored, or copied).
//!
//! ```no_run
//! use burn::tensor::{Int, Tensor};
//! use xent::CrossEntropy;
//!
//! // burn's wgpu device, registered with xent; `.autodiff()` for training.
//! let device = xent_burn::init()?.autodiff();
//! let logits = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], &device)
//!     .require_grad();
//! let targets = Tensor::<1, Int>::from_ints([2, 0], &device);
//! let loss = xent_burn::cross_entropy(logits.clone(), targets, &CrossEntropy::new())?;
//! let grads = loss.loss.backward();
//! let dlogits = logits.grad(&grads);
//! loss.check()?; // reads the target-error flag back: once in a while, not every step
//! # Ok::<(), xent_burn::Error>(())
//! ```
//!
//! - Losses: softmax cross-entropy with class indices ([`cross_entropy`],
//!   [`cross_entropy_weighted`]) or soft targets ([`cross_entropy_soft`]) on logits of any
//!   rank, the class dimension at 1; [`binary_cross_entropy_with_logits`], the classes last;
//!   a linear head's loss without its logits ([`linear_cross_entropy`]). Modules in burn's
//!   style: [`CrossEntropyLoss`] (burn's configuration names) and [`LinearCrossEntropyLoss`]
//!   (on a burn `nn::Linear`).
//! - Devices: [`init`] creates burn's wgpu device and registers it with xent; [`register`]
//!   takes one a trainer created with `Device::wgpu_options().init_with_setup()`. On any other
//!   CubeCL runtime (CUDA, ROCm, burn's CPU runtime), or a device registered with
//!   [`register_cpu_path`], the same calls run xent's CPU path: the inputs are read back and
//!   the results uploaded. So do tensors on burn's Flex backend (its pure-Rust CPU backend),
//!   with this crate's `flex` feature. NdArray and LibTorch (deprecated in burn 0.22) are
//!   refused ([`Error::UnsupportedBackend`]).
//! - Ordering: each call submits burn's pending work (`flush`), then records xent's kernels
//!   into an encoder of its own and submits it on the same queue; burn's later work is ordered
//!   after it. A caller that records into the shared device itself must flush burn first too.
//!   The in-place gradient trusts burn's ownership count (`can_mut`): work another thread
//!   queued on its own stream and has not submitted is not seen, so a thread that reads the
//!   logits and drops its handle should sync before another thread's backward runs.
//! - The wgpu types are burn's re-export, checked at compile time to be the ones xent takes.

#![warn(missing_docs)]

mod autodiff;
mod counts;
mod cube;
mod device;
mod flex;
mod host;
mod inputs;
mod loss;
mod module;
pub mod ops;

pub use counts::{binding_counts, reset_binding_counts, BindingCounts};
pub use device::{init, init_with, register, register_cpu_path, runs_kernels, scratch_bytes};
pub use loss::{
    binary_cross_entropy_with_logits, cross_entropy, cross_entropy_soft, cross_entropy_weighted,
    linear_cross_entropy, BinaryWeights, Loss, Weights,
};
pub use module::{CrossEntropyLoss, CrossEntropyLossConfig, LinearCrossEntropyLoss};
pub use ops::{Call, XentBackend};
pub use xent::{BinaryCrossEntropy, CrossEntropy, Reduction};

/// burn's wgpu must be xent's: a burn built on another wgpu major fails here, at compile
/// time, rather than with a type error at the first shared buffer.
const _: fn(burn::tensor::wgpu::wgpu::Buffer) -> xent::wgpu::Buffer = |buffer| buffer;

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// xent refused the call (shapes, options, a target out of range from [`Loss::check`]).
    #[error(transparent)]
    Xent(#[from] xent::Error),
    /// burn could not create the wgpu device.
    #[error("burn's wgpu device: {0}")]
    Init(String),
    /// [`register`] was given a device that is not a wgpu device.
    #[error("{0} is not a wgpu device")]
    NotWgpu(String),
    /// The tensors are on a burn backend xent-burn does not run on (it runs on burn's CubeCL
    /// backend: wgpu, CUDA, ROCm, CPU; and on Flex with the `flex` feature).
    #[error(
        "xent-burn does not run on {0}: it runs on burn's CubeCL runtimes (wgpu, CUDA, ROCm, CPU), and on Flex with its `flex` feature"
    )]
    UnsupportedBackend(String),
    /// The tensors are on a wgpu device xent does not know the handles of.
    #[error("the wgpu device {0} is not registered with xent: create it with xent_burn::init, or pass its WgpuSetup to xent_burn::register")]
    Unregistered(String),
    /// Reading a tensor back failed.
    #[error("reading a tensor back: {0}")]
    Read(String),
}
