//! Binary cross-entropy with logits on burn's wgpu device and its autodiff gradient, against
//! xent's f64 reference.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use burn::tensor::Tensor;
use common::{Case, Hardness};
use support::{check_loss_and_gradient, dense_targets, device, logits, upstream, vector};
use xent::{BinaryCrossEntropy, Dtype, Reduction};
use xent_burn::BinaryWeights;

/// Runs `case` (multi-label) as logits of `shape` (the classes last), the loss times an
/// upstream gradient backward, and checks loss and d logits against the reference.
fn check<const D: usize>(what: &str, case: &Case, options: &BinaryCrossEntropy, shape: [usize; D]) {
    let Some(device) = device() else { return };
    let logits = logits(case, shape, &device);
    let weights = BinaryWeights {
        class: case.class_weights.as_deref().map(|w| vector(w, &device)),
        pos_weight: case.pos_weight.as_deref().map(|w| vector(w, &device)),
        sample: case.sample_weights.as_deref().map(|w| vector(w, &device)),
    };
    let loss = xent_burn::binary_cross_entropy_with_logits(
        logits.clone(),
        dense_targets(case, shape, &device),
        options,
        &weights,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let upstream = upstream(options.reduction, case.rows * case.classes);
    let reference = case.reference_bce(options, Some(&upstream));
    check_loss_and_gradient(what, loss, &logits, &upstream, &reference, case.dtype);
}

fn option_grid() -> Vec<(String, BinaryCrossEntropy)> {
    let mut grid = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = BinaryCrossEntropy::new().reduction(reduction);
        grid.push((format!("{reduction:?}"), base));
        grid.push((
            format!("{reduction:?} smoothing 0.1"),
            base.label_smoothing(0.1),
        ));
        grid.push((
            format!("{reduction:?} focal 2, α 0.25"),
            base.focal_gamma(2.0).focal_alpha(0.25),
        ));
    }
    grid
}

#[test]
fn every_option_rank_2_and_3() {
    for (name, options) in option_grid() {
        let case = Case::new(31, 24, 7, Hardness::default()).multi_label(32, false);
        check(&name, &case, &options, [24, 7]);
        let weighted = Case::new(33, 24, 7, Hardness::default())
            .multi_label(34, true)
            .sample_weighted(35);
        check(&format!("{name}, weighted"), &weighted, &options, [24, 7]);
        check(
            &format!("{name}, [4, 6, 7]"),
            &weighted,
            &options,
            [4, 6, 7],
        );
    }
}

#[test]
fn half_precision_logits() {
    for dtype in [Dtype::F16, Dtype::Bf16] {
        for (name, options) in option_grid() {
            let case = Case::new(36, 15, 9, Hardness::default())
                .multi_label(37, true)
                .dtype(dtype);
            check(&format!("{name}, {dtype:?}"), &case, &options, [15, 9]);
        }
    }
}

/// Logits that only the loss holds (computed from a leaf and moved into the call) take their
/// gradient in their own buffer: the values are the same.
#[test]
fn gradient_over_logits_only_the_loss_holds() {
    let Some(device) = device() else { return };
    for dtype in [Dtype::F32, Dtype::Bf16] {
        for reduction in [Reduction::Sum, Reduction::None] {
            let what = format!("{reduction:?}, {dtype:?}");
            let case = Case::new(9, 7, 6, Hardness::default())
                .multi_label(10, true)
                .dtype(dtype);
            let (leaf, logits) = support::doubled(&case, [7, 6], &device);
            let options = BinaryCrossEntropy::new().reduction(reduction);
            let loss = xent_burn::binary_cross_entropy_with_logits(
                logits,
                dense_targets(&case, [7, 6], &device),
                &options,
                &BinaryWeights {
                    class: case.class_weights.as_deref().map(|w| vector(w, &device)),
                    pos_weight: case.pos_weight.as_deref().map(|w| vector(w, &device)),
                    sample: None,
                },
            )
            .unwrap();
            let upstream = upstream(reduction, case.rows * case.classes);
            let reference = case.reference_bce(&options, Some(&upstream));
            support::check_loss_and_leaf_gradient(&what, loss, &leaf, &upstream, &reference, dtype);
        }
    }
}

#[test]
fn shape_errors() {
    let Some(device) = device() else { return };
    let logits = Tensor::<2>::zeros([4, 3], &device);
    let err = xent_burn::binary_cross_entropy_with_logits(
        logits.clone(),
        Tensor::<2>::zeros([4, 2], &device),
        &BinaryCrossEntropy::new(),
        &BinaryWeights::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            xent_burn::Error::Xent(xent::Error::Shape {
                what: "targets",
                ..
            })
        ),
        "{err}"
    );
    let err = xent_burn::binary_cross_entropy_with_logits(
        logits,
        Tensor::<2>::zeros([4, 3], &device),
        &BinaryCrossEntropy::new(),
        &BinaryWeights {
            pos_weight: Some(Tensor::ones([4], &device)),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            xent_burn::Error::Xent(xent::Error::Shape {
                what: "pos_weight",
                ..
            })
        ),
        "{err}"
    );
}
