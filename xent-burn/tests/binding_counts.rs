//! The no-copy paths, counted (`xent_burn::binding_counts`): a gradient goes over logits only
//! the loss holds (softmax and BCE) and never over a tensor the caller holds, burn's `Linear`
//! in its default `[D, V]` layout is bound as stored, and a view xent can't bind as it is
//! gets copied. The counts are process-wide, so this binary holds one test: nothing else runs
//! beside it. The values themselves are checked against the reference in the other tests.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::tensor::{Int, Tensor, TensorData};
use common::{Case, Hardness};
use support::{dense_targets, device, doubled, floats, index_targets, logits};
use xent::{BinaryCrossEntropy, CrossEntropy};
use xent_burn::{binding_counts, reset_binding_counts, BinaryWeights, BindingCounts};

/// The counts `f` added.
fn counted(f: impl FnOnce()) -> BindingCounts {
    reset_binding_counts();
    f();
    binding_counts()
}

#[test]
fn no_copy_paths_are_taken() {
    let Some(device) = device() else { return };
    let case = Case::new(3, 21, 11, Hardness::default()).ignore_every(5, -100);
    let targets = || index_targets(&case, [21], &device);

    // Softmax: the logits only the loss holds (a model's output moved into the call) take
    // the gradient; a tensor the caller holds does not.
    let counts = counted(|| {
        let (leaf, moved) = doubled(&case, [21, 11], &device);
        let out = xent_burn::cross_entropy(moved, targets(), &CrossEntropy::new()).unwrap();
        let grads = out.loss.backward();
        floats(leaf.grad(&grads).unwrap());
    });
    assert_eq!(
        counts.in_place_gradients, 1,
        "softmax, moved logits: {counts:?}"
    );
    assert_eq!(counts.copied_inputs, 0, "softmax, moved logits: {counts:?}");
    let counts = counted(|| {
        let held = logits(&case, [21, 11], &device);
        let out = xent_burn::cross_entropy(held.clone(), targets(), &CrossEntropy::new());
        let grads = out.unwrap().loss.backward();
        floats(held.grad(&grads).unwrap());
    });
    assert_eq!(
        counts.in_place_gradients, 0,
        "softmax, held logits: {counts:?}"
    );

    // BCE: the same.
    let binary = Case::new(4, 7, 6, Hardness::default()).multi_label(5, false);
    let counts = counted(|| {
        let (leaf, moved) = doubled(&binary, [7, 6], &device);
        let loss = xent_burn::binary_cross_entropy_with_logits(
            moved,
            dense_targets(&binary, [7, 6], &device),
            &BinaryCrossEntropy::new(),
            &BinaryWeights::default(),
        )
        .unwrap();
        floats(leaf.grad(&loss.backward()).unwrap());
    });
    assert_eq!(
        counts.in_place_gradients, 1,
        "BCE, moved logits: {counts:?}"
    );

    // burn's `Linear` in its default layout: the [D, V] weight bound as stored, nothing
    // copied; in the `Col` layout ([V, D] stored) the same without the hidden-major kernels.
    for (layout, hidden_major) in [(LinearLayout::Row, 1), (LinearLayout::Col, 0)] {
        let counts = counted(|| {
            let linear: Linear = LinearConfig::new(16, 40).with_layout(layout).init(&device);
            let linear = Linear {
                weight: Param::from_tensor(linear.weight.val().require_grad()),
                ..linear
            };
            let h = Tensor::<2>::ones([12, 16], &device).require_grad();
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64; 12], [12]), &device);
            let loss = xent_burn::LinearCrossEntropyLoss::new(CrossEntropy::new());
            let grads = loss.forward(h.clone(), &linear, y).backward();
            floats(linear.weight.val().grad(&grads).unwrap());
        });
        assert_eq!(
            counts.hidden_major_weights, hidden_major,
            "{layout:?}: {counts:?}"
        );
        assert_eq!(counts.copied_inputs, 0, "{layout:?}: {counts:?}");
    }

    // A view xent can't bind as it is (the transpose of an [11, 21] tensor: not contiguous) is
    // copied. (A slice of rows at an unaligned offset comes out of burn's fusion as a new
    // tensor already.)
    let counts = counted(|| {
        let stored = Tensor::<2>::ones([11, 21], &device);
        let out = xent_burn::cross_entropy(stored.transpose(), targets(), &CrossEntropy::new());
        floats(out.unwrap().loss);
    });
    assert!(counts.copied_inputs >= 1, "a transposed view: {counts:?}");
}
