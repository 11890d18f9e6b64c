//! xent-burn's losses and their autodiff gradients on burn's wgpu device, against xent's f64
//! reference (the root crate's test cases and tolerance table).

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::{assert_within, tol, Case, Hardness};
use support::{check_loss_and_gradient, device, floats, logits, upstream};
use xent::{CrossEntropy, Dtype, Reduction};
use xent_burn::Weights;

/// Runs `case` with index targets through `xent_burn::cross_entropy_weighted`, the loss
/// times an upstream gradient backward, and checks loss and d logits against the reference.
fn check<const D: usize, const T: usize>(
    what: &str,
    case: &Case,
    options: &CrossEntropy,
    shape: [usize; D],
    target_shape: [usize; T],
) {
    let Some(device) = device() else { return };
    let logits = logits(case, shape, &device);
    let targets = Tensor::<T, Int>::from_data(
        TensorData::new(case.index_targets.clone(), target_shape),
        &device,
    );
    let weights = Weights {
        class: case
            .class_weights
            .as_ref()
            .map(|w| Tensor::from_data(TensorData::new(w.clone(), [w.len()]), &device)),
        sample: case
            .sample_weights
            .as_ref()
            .map(|w| Tensor::from_data(TensorData::new(w.clone(), [w.len()]), &device)),
    };
    let out = xent_burn::cross_entropy_weighted(logits.clone(), targets, options, &weights)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    out.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let upstream = upstream(options.reduction, case.rows);
    let reference = case.reference(options, Some(&upstream));
    check_loss_and_gradient(what, out.loss, &logits, &upstream, &reference, case.dtype);
}

/// The options the loss takes, each reduction.
fn option_grid() -> Vec<(String, CrossEntropy)> {
    let mut grid = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = CrossEntropy::new().reduction(reduction);
        grid.push((format!("{reduction:?}"), base));
        grid.push((
            format!("{reduction:?} smoothing 0.1, z-loss 1e-3"),
            base.label_smoothing(0.1).z_loss(1e-3),
        ));
        grid.push((
            format!("{reduction:?} softcap 5, scale 0.8"),
            base.softcap(5.0).logit_scale(0.8),
        ));
        grid.push((
            format!("{reduction:?} focal 2, smoothing 0.05"),
            base.focal_gamma(2.0).label_smoothing(0.05),
        ));
    }
    grid
}

#[test]
fn index_targets_rank_2_every_option() {
    for (name, options) in option_grid() {
        let case = Case::new(1, 37, 11, Hardness::default()).ignore_every(5, -100);
        check(&name, &case, &options, [37, 11], [37]);
        let weighted = Case::new(2, 37, 11, Hardness::default())
            .ignore_every(4, -100)
            .weighted(3)
            .sample_weighted(4);
        check(
            &format!("{name}, weighted"),
            &weighted,
            &options,
            [37, 11],
            [37],
        );
    }
}

#[test]
fn index_targets_rank_3_class_dim_1() {
    for (name, options) in option_grid() {
        let case = Case::new(5, 4 * 6, 9, Hardness::default())
            .ignore_every(7, -100)
            .weighted(6)
            .class_dim1(6);
        check(
            &format!("{name}, [4, 9, 6]"),
            &case,
            &options,
            [4, 9, 6],
            [4, 6],
        );
    }
}

#[test]
fn half_precision_logits() {
    for dtype in [Dtype::F16, Dtype::Bf16] {
        for (name, options) in option_grid() {
            let case = Case::new(7, 19, 13, Hardness::default())
                .ignore_every(6, -100)
                .dtype(dtype);
            check(
                &format!("{name}, {dtype:?}"),
                &case,
                &options,
                [19, 13],
                [19],
            );
        }
    }
}

/// Logits that only the loss holds (computed from a leaf and moved into the call, as a
/// model's output is) take their gradient in their own buffer: the values are the same.
#[test]
fn gradient_over_logits_only_the_loss_holds() {
    let Some(device) = device() else { return };
    for dtype in [Dtype::F32, Dtype::F16] {
        for reduction in [Reduction::Mean, Reduction::None] {
            let what = format!("{reduction:?}, {dtype:?}");
            let case = Case::new(8, 21, 11, Hardness::default())
                .ignore_every(5, -100)
                .dtype(dtype);
            let (leaf, logits) = support::doubled(&case, [21, 11], &device);
            let targets = support::index_targets(&case, [21], &device);
            let options = CrossEntropy::new()
                .reduction(reduction)
                .label_smoothing(0.1);
            let out = xent_burn::cross_entropy(logits, targets, &options).unwrap();
            let upstream = upstream(reduction, case.rows);
            let reference = case.reference(&options, Some(&upstream));
            support::check_loss_and_leaf_gradient(
                &what, out.loss, &leaf, &upstream, &reference, dtype,
            );
        }
    }
}

#[test]
fn target_out_of_range_is_flagged_and_ignored() {
    let Some(device) = device() else { return };
    let case = Case::new(9, 8, 5, Hardness::default());
    let mut targets = case.index_targets.clone();
    targets[3] = 5;
    targets[6] = -7;
    let logits = logits(&case, [8, 5], &device);
    let out = xent_burn::cross_entropy(
        logits,
        Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [8]), &device),
        &CrossEntropy::new(),
    )
    .unwrap();
    match out.check() {
        Err(xent_burn::Error::Xent(xent::Error::TargetOutOfRange {
            row,
            value,
            classes,
            ..
        })) => {
            assert_eq!((row, value, classes), (3, 5, 5));
        }
        other => panic!("expected the flag for row 3, got {other:?}"),
    }
    // Both bad rows count as ignored.
    let mut ignored = case.clone();
    ignored.index_targets = targets;
    ignored.index_targets[3] = -100;
    ignored.index_targets[6] = -100;
    let expected = ignored.reference(&CrossEntropy::new(), None).loss.unwrap();
    assert_within("loss", &floats(out.loss), &[expected], tol::LOSS);
}

/// Tensors that are views into larger ones: rows starting mid-buffer (an offset no device
/// binds: burn's fusion hands over such a slice as a new tensor, and a view that still reached
/// the call would be copied), targets sliced out of a longer vector, and logits that are a
/// transposed (non-contiguous) view. The gradient flows back through the views.
#[test]
fn views_at_offsets_and_strides() {
    let Some(device) = device() else { return };
    let case = Case::new(11, 29, 7, Hardness::default())
        .ignore_every(5, -100)
        .weighted(12);
    let options = CrossEntropy::new().label_smoothing(0.1);
    let reference = case.reference(&options, None);
    let weights = Weights {
        class: case
            .class_weights
            .as_ref()
            .map(|w| Tensor::from_data(TensorData::new(w.clone(), [w.len()]), &device)),
        sample: None,
    };
    // Rows 3..32 of a [40, 7] tensor, and targets 5..34 of 40.
    let mut padded = vec![0.5f32; 40 * 7];
    padded[3 * 7..32 * 7].copy_from_slice(&case.logits);
    let big = Tensor::<2>::from_data(TensorData::new(padded, [40, 7]), &device).require_grad();
    let mut targets = vec![1i64; 40];
    targets[5..34].copy_from_slice(&case.index_targets);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [40]), &device);
    let out = xent_burn::cross_entropy_weighted(
        big.clone().slice(3..32),
        targets.slice(5..34),
        &options,
        &weights,
    )
    .unwrap();
    assert_within(
        "loss of views",
        &floats(out.loss.clone()),
        &[reference.loss.unwrap()],
        tol::LOSS,
    );
    let grads = out.loss.backward();
    let gradient = floats(big.grad(&grads).unwrap());
    assert_within(
        "d logits of the view",
        &gradient[3 * 7..32 * 7],
        &reference.gradient,
        tol::GRADIENT,
    );
    assert!(gradient[..3 * 7]
        .iter()
        .chain(&gradient[32 * 7..])
        .all(|&g| g == 0.0));
    // The logits as the transpose of a [7, 29] tensor.
    let mut transposed = vec![0f32; 29 * 7];
    for r in 0..29 {
        for c in 0..7 {
            transposed[c * 29 + r] = case.logits[r * 7 + c];
        }
    }
    let t = Tensor::<2>::from_data(TensorData::new(transposed, [7, 29]), &device).require_grad();
    let out = xent_burn::cross_entropy_weighted(
        t.clone().transpose(),
        Tensor::<1, Int>::from_data(TensorData::new(case.index_targets.clone(), [29]), &device),
        &options,
        &weights,
    )
    .unwrap();
    assert_within(
        "loss of a transpose",
        &floats(out.loss.clone()),
        &[reference.loss.unwrap()],
        tol::LOSS,
    );
    let grads = out.loss.backward();
    let gradient = floats(t.grad(&grads).unwrap());
    let mut expected = vec![0f64; 29 * 7];
    for r in 0..29 {
        for c in 0..7 {
            expected[c * 29 + r] = reference.gradient[r * 7 + c];
        }
    }
    assert_within(
        "d logits of a transpose",
        &gradient,
        &expected,
        tol::GRADIENT,
    );
}

#[test]
fn shape_errors() {
    let Some(device) = device() else { return };
    let logits = Tensor::<2>::zeros([4, 3], &device);
    let err = xent_burn::cross_entropy(
        logits.clone(),
        Tensor::<1, Int>::zeros([5], &device),
        &CrossEntropy::new(),
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
    let err = xent_burn::cross_entropy(
        logits.clone(),
        Tensor::<1, Int>::zeros([4], &device),
        &CrossEntropy::new().label_smoothing(1.5),
    )
    .unwrap_err();
    assert!(
        matches!(err, xent_burn::Error::Xent(xent::Error::BadOption { .. })),
        "{err}"
    );
    let err = xent_burn::cross_entropy_weighted(
        logits,
        Tensor::<1, Int>::zeros([4], &device),
        &CrossEntropy::new(),
        &Weights {
            class: Some(Tensor::ones([2], &device)),
            sample: None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            xent_burn::Error::Xent(xent::Error::Shape {
                what: "class_weights",
                ..
            })
        ),
        "{err}"
    );
    let _ = DType::F32;
}

/// burn records lazily (and fuses): logits that burn ops computed just before the call must be
/// written before xent reads them, and burn's work after the call must see xent's results.
/// Each call has burn's pending work submitted before its own, on burn's queue (cubecl's
/// `get_resource` submits the streams it executes, and xent-burn flushes besides; this test
/// passes with either alone).
#[test]
fn ordered_with_burns_pending_work() {
    let Some(device) = device() else { return };
    let case = Case::new(13, 16, 9, Hardness::default()).ignore_every(5, -100);
    let options = CrossEntropy::new().label_smoothing(0.1);
    let reference = case.reference(&options, None);
    // a = logits / 2 + 1, so logits = (a − 1) · 2 is pending burn work when xent runs.
    let half: Vec<f32> = case.logits.iter().map(|v| v / 2.0 + 1.0).collect();
    let a = Tensor::<2>::from_data(TensorData::new(half, [16, 9]), &device).require_grad();
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(case.index_targets.clone(), [16]), &device);
    let logits = (a.clone() - 1.0) * 2.0;
    let first = xent_burn::cross_entropy(logits.clone(), targets.clone(), &options).unwrap();
    // More burn work between two calls: the same logits, scaled down and back up.
    let again = (logits * 0.25) * 4.0;
    let second = xent_burn::cross_entropy(again, targets, &options).unwrap();
    let total = first.loss * 3.0 + second.loss;
    let expected = 4.0 * reference.loss.unwrap();
    assert_within(
        "3·loss + loss",
        &floats(total.clone()),
        &[expected],
        tol::LOSS,
    );
    let grads = total.backward();
    // d total / d a = 4 · d loss / d logits · 2.
    let expected: Vec<f64> = reference.gradient.iter().map(|g| 8.0 * g).collect();
    assert_within(
        "d a",
        &floats(a.grad(&grads).unwrap()),
        &expected,
        tol::GRADIENT,
    );
}
