//! The loss module against burn's own `CrossEntropyLoss` where burn's is correct (plain,
//! smoothed, class-weighted, pad tokens), and soft targets against xent's f64 reference.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{assert_close, assert_within, tol, Case, Hardness};
use support::{device, floats};
use xent::{CrossEntropy, Reduction};

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Loss and d logits of one module on the case's logits and targets.
fn run(
    forward: impl Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
    case: &Case,
    targets: &[i64],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let logits = Tensor::<2>::from_data(
        TensorData::new(case.logits.clone(), [case.rows, case.classes]),
        device,
    )
    .require_grad();
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(targets.to_vec(), [case.rows]), device);
    let loss = forward(logits.clone(), targets);
    let grads = loss.clone().backward();
    (floats(loss), floats(logits.grad(&grads).unwrap()))
}

#[test]
fn agrees_with_burns_cross_entropy() {
    if let Some(device) = device() {
        agrees_with_burns_cross_entropy_on(&device);
    }
}

/// On burn's Flex backend, xent's CPU path against burn's loss on the same backend.
#[cfg(feature = "flex")]
#[test]
fn agrees_with_burns_cross_entropy_on_flex() {
    agrees_with_burns_cross_entropy_on(&Device::flex().autodiff());
}

fn agrees_with_burns_cross_entropy_on(device: &Device) {
    let case = Case::new(21, 33, 12, Hardness::default());
    let weights: Vec<f32> = (0..12).map(|c| 0.5 + c as f32 * 0.1).collect();
    let mut padded = case.index_targets.clone();
    for r in (0..33).step_by(4) {
        padded[r] = 3; // the pad token below
    }
    type Config = (Option<f32>, Option<Vec<f32>>, Option<Vec<usize>>);
    let configs: [(&str, Config); 5] = [
        ("plain", (None, None, None)),
        ("smoothing 0.2", (Some(0.2), None, None)),
        ("class weights", (None, Some(weights.clone()), None)),
        (
            "smoothing and weights",
            (Some(0.1), Some(weights.clone()), None),
        ),
        ("pad token 3", (None, None, Some(vec![3]))),
    ];
    for (name, (smoothing, weights, pad_tokens)) in configs {
        let targets = if pad_tokens.is_some() {
            &padded
        } else {
            &case.index_targets
        };
        let ours = xent_burn::CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .with_weights(weights.clone())
            .with_pad_tokens(pad_tokens.clone())
            .init(device);
        let theirs = burn::nn::loss::CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .with_weights(weights)
            .with_pad_tokens(pad_tokens)
            .init(device);
        let (loss, gradient) = run(|l, t| ours.forward(l, t), &case, targets, device);
        let (burn_loss, burn_gradient) = run(|l, t| theirs.forward(l, t), &case, targets, device);
        // burn's loss is f32 on the device too: both are compared within the reference's
        // tolerance, doubled.
        assert_close(
            &format!("{name}: loss"),
            &loss,
            &wide(&burn_loss),
            2e-5,
            2e-5,
        );
        assert_close(
            &format!("{name}: d logits"),
            &gradient,
            &wide(&burn_gradient),
            2e-6,
            2e-4,
        );
    }
}

#[test]
fn module_options_and_errors() {
    let Some(device) = device() else { return };
    let case = Case::new(22, 17, 6, Hardness::default()).ignore_every(3, -100);
    let options = CrossEntropy::new()
        .reduction(Reduction::Sum)
        .z_loss(1e-3)
        .focal_gamma(1.5);
    let module = xent_burn::CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.05))
        .with_options(options)
        .init(&device);
    let (loss, gradient) = run(
        |l, t| module.forward(l, t),
        &case,
        &case.index_targets,
        &device,
    );
    let reference = case.reference(&options.label_smoothing(0.05), None);
    assert_within("loss", &loss, &[reference.loss.unwrap()], tol::LOSS);
    assert_within("d logits", &gradient, &reference.gradient, tol::GRADIENT);
    let err = xent_burn::CrossEntropyLossConfig::new()
        .with_weights(Some(vec![1.0, -1.0]))
        .try_init(&device)
        .unwrap_err();
    assert!(
        matches!(
            err,
            xent_burn::Error::Xent(xent::Error::BadWeight { index: 1, .. })
        ),
        "{err}"
    );
    let err = xent_burn::CrossEntropyLossConfig::new()
        .with_smoothing(Some(-0.5))
        .try_init(&device)
        .unwrap_err();
    assert!(
        matches!(err, xent_burn::Error::Xent(xent::Error::BadOption { .. })),
        "{err}"
    );
}

#[test]
fn soft_targets() {
    let Some(device) = device() else { return };
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let case = Case::new(23, 21, 8, Hardness::default())
            .soft(24)
            .sample_weighted(25);
        let options = CrossEntropy::new()
            .reduction(reduction)
            .label_smoothing(0.1);
        let logits = Tensor::<2>::from_data(TensorData::new(case.logits.clone(), [21, 8]), &device)
            .require_grad();
        let targets = Tensor::<2>::from_data(
            TensorData::new(case.dense_targets.clone().unwrap(), [21, 8]),
            &device,
        );
        let weights = xent_burn::Weights {
            class: None,
            sample: case
                .sample_weights
                .as_ref()
                .map(|w| Tensor::from_data(TensorData::new(w.clone(), [21]), &device)),
        };
        let out =
            xent_burn::cross_entropy_soft(logits.clone(), targets, &options, &weights).unwrap();
        let reference = case.reference(&options, None);
        let loss = floats(out.loss.clone());
        match reference.loss {
            Some(l) => assert_within("soft loss", &loss, &[l], tol::LOSS),
            None => assert_within("soft row losses", &loss, &reference.row_losses, tol::LOSS),
        }
        let grads = out.loss.sum().backward();
        assert_within(
            &format!("{reduction:?}: soft d logits"),
            &floats(logits.grad(&grads).unwrap()),
            &reference.gradient,
            tol::GRADIENT,
        );
    }
}
