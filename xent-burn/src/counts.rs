//! How xent-burn's calls bound their tensors, counted process-wide since start or the last
//! [`reset_binding_counts`]: what was read or written in place and what had to be copied
//! first. For checking that a training step takes the no-copy paths (and for xent-burn's own
//! tests). Only xent's GPU path counts. burn runs the operations on its own runtime thread,
//! so the counts are for the whole process, not for the thread that made the call.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of how calls bound their tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingCounts {
    /// Gradients written over the logits' own buffer (nothing else held it).
    pub in_place_gradients: u64,
    /// Linear-head weights bound as stored `[D, V]` (burn's `Linear` in its default layout).
    pub hidden_major_weights: u64,
    /// Input tensors copied before binding: views that are not contiguous or start at an
    /// offset the device can't bind (a `[D, V]` weight larger than a binding among them).
    pub copied_inputs: u64,
}

static IN_PLACE_GRADIENTS: AtomicU64 = AtomicU64::new(0);
static HIDDEN_MAJOR_WEIGHTS: AtomicU64 = AtomicU64::new(0);
static COPIED_INPUTS: AtomicU64 = AtomicU64::new(0);

/// The counts so far.
pub fn binding_counts() -> BindingCounts {
    BindingCounts {
        in_place_gradients: IN_PLACE_GRADIENTS.load(Ordering::Relaxed),
        hidden_major_weights: HIDDEN_MAJOR_WEIGHTS.load(Ordering::Relaxed),
        copied_inputs: COPIED_INPUTS.load(Ordering::Relaxed),
    }
}

/// Sets the counts to zero.
pub fn reset_binding_counts() {
    for counter in [&IN_PLACE_GRADIENTS, &HIDDEN_MAJOR_WEIGHTS, &COPIED_INPUTS] {
        counter.store(0, Ordering::Relaxed);
    }
}

/// One gradient written in place.
pub(crate) fn in_place_gradient() {
    IN_PLACE_GRADIENTS.fetch_add(1, Ordering::Relaxed);
}

/// One `[D, V]` weight bound as stored.
pub(crate) fn hidden_major_weight() {
    HIDDEN_MAJOR_WEIGHTS.fetch_add(1, Ordering::Relaxed);
}

/// One input copied before binding.
pub(crate) fn copied_input() {
    COPIED_INPUTS.fetch_add(1, Ordering::Relaxed);
}
