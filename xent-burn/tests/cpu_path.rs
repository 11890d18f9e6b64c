//! xent's CPU path under burn, checked against the f64 reference like the kernels: on a wgpu
//! device registered with `register_cpu_path` (the path every CubeCL runtime other than a
//! registered wgpu device takes), and, with the `flex` feature, on burn's Flex backend.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{assert_within, tol, Case, Hardness};
use support::{dense_targets, floats, index_targets, logits, vector};
use xent::{BinaryCrossEntropy, CrossEntropy, Dtype, Reduction};

/// burn's wgpu device with xent's CPU path, in this test binary's own process.
fn cpu_path() -> Option<Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match support::options().init() {
            Ok(device) => {
                xent_burn::register_cpu_path(&device).unwrap();
                assert!(!xent_burn::runs_kernels(&device));
                Some(device.autodiff())
            }
            Err(e) => {
                common::gpu_policy::missing_gpu("the xent-burn CPU-path tests", &e);
                None
            }
        })
        .clone()
}

/// `$name` runs `$body` on the wgpu device's CPU path and, with the `flex` feature, on burn's
/// Flex backend (which needs no adapter).
macro_rules! on_the_host {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu_path() {
                if let Some(device) = super::cpu_path() {
                    super::$body(&device);
                }
            }

            #[cfg(feature = "flex")]
            #[test]
            fn flex() {
                super::$body(&burn::tensor::Device::flex().autodiff());
            }
        }
    };
}

on_the_host!(softmax_every_reduction, softmax_every_reduction_on);
on_the_host!(target_errors_and_binary, target_errors_and_binary_on);
on_the_host!(linear_head, linear_head_on);

fn softmax_every_reduction_on(device: &Device) {
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        for dtype in [Dtype::F32, Dtype::F16] {
            let case = Case::new(41, 3 * 5, 6, Hardness::default())
                .ignore_every(4, -100)
                .weighted(42)
                .dtype(dtype)
                .class_dim1(5);
            let options = CrossEntropy::new()
                .reduction(reduction)
                .label_smoothing(0.1)
                .focal_gamma(1.0);
            let logits = logits(&case, [3, 6, 5], device);
            let weights = xent_burn::Weights {
                class: case.class_weights.as_deref().map(|w| vector(w, device)),
                sample: None,
            };
            let out = xent_burn::cross_entropy_weighted(
                logits.clone(),
                index_targets(&case, [3, 5], device),
                &options,
                &weights,
            )
            .unwrap();
            out.check().unwrap();
            let reference = case.reference(&options, None);
            let loss = floats(out.loss.clone());
            match reference.loss {
                Some(l) => assert_within("loss", &loss, &[l], tol::LOSS),
                None => assert_within("row losses", &loss, &reference.row_losses, tol::LOSS),
            }
            let grads = out.loss.sum().backward();
            assert_within(
                &format!("{reduction:?} {dtype:?}: d logits"),
                &floats(logits.grad(&grads).unwrap()),
                &reference.gradient,
                tol::gradient(dtype),
            );
        }
    }
}

fn target_errors_and_binary_on(device: &Device) {
    let case = Case::new(43, 6, 4, Hardness::default());
    let mut targets = case.index_targets.clone();
    targets[4] = 9;
    let out = xent_burn::cross_entropy(
        logits(&case, [6, 4], device),
        Tensor::<1, Int>::from_data(TensorData::new(targets, [6]), device),
        &CrossEntropy::new(),
    )
    .unwrap();
    assert!(matches!(
        out.check(),
        Err(xent_burn::Error::Xent(xent::Error::TargetOutOfRange {
            row: 4,
            value: 9,
            ..
        }))
    ));
    let case = Case::new(44, 8, 5, Hardness::default()).multi_label(45, true);
    let options = BinaryCrossEntropy::new().label_smoothing(0.05);
    let logits = logits(&case, [8, 5], device);
    let loss = xent_burn::binary_cross_entropy_with_logits(
        logits.clone(),
        dense_targets(&case, [8, 5], device),
        &options,
        &xent_burn::BinaryWeights {
            class: case.class_weights.as_deref().map(|w| vector(w, device)),
            pos_weight: case.pos_weight.as_deref().map(|w| vector(w, device)),
            sample: None,
        },
    )
    .unwrap();
    let reference = case.reference_bce(&options, None);
    assert_within(
        "BCE loss",
        &floats(loss.clone()),
        &[reference.loss.unwrap()],
        tol::LOSS,
    );
    let grads = loss.backward();
    assert_within(
        "BCE d logits",
        &floats(logits.grad(&grads).unwrap()),
        &reference.gradient,
        tol::GRADIENT,
    );
}

fn linear_head_on(device: &Device) {
    let (n, d, v) = (10, 6, 13);
    let mut rng = common::Rng(46);
    let h: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let w: Vec<f32> = (0..v * d).map(|_| 0.3 * rng.normal()).collect();
    let mut targets: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    targets[3] = -100;
    for reduction in [Reduction::Mean, Reduction::None] {
        let options = CrossEntropy::new()
            .reduction(reduction)
            .label_smoothing(0.1);
        let hidden =
            Tensor::<2>::from_data(TensorData::new(h.clone(), [n, d]), device).require_grad();
        let weight =
            Tensor::<2>::from_data(TensorData::new(w.clone(), [v, d]), device).require_grad();
        let out = xent_burn::linear_cross_entropy(
            hidden.clone(),
            weight.clone(),
            None,
            Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [n]), device),
            &options,
            &xent_burn::Weights::default(),
        )
        .unwrap();
        let batch = xent::linear::LinearBatch::new(
            xent::Matrix::new(&h, n, d),
            xent::Matrix::new(&w, v, d),
            &targets[..],
        );
        let reference = xent::reference::linear_cross_entropy(&options, &batch, None).unwrap();
        let loss = floats(out.loss.clone());
        match reference.logits_reference.loss {
            Some(l) => assert_within("linear loss", &loss, &[l], tol::LOSS),
            None => assert_within(
                "linear row losses",
                &loss,
                &reference.logits_reference.row_losses,
                tol::LOSS,
            ),
        }
        let grads = out.loss.sum().backward();
        assert_within(
            &format!("{reduction:?}: dh"),
            &floats(hidden.grad(&grads).unwrap()),
            &reference.hidden_gradient,
            tol::GRADIENT,
        );
        assert_within(
            &format!("{reduction:?}: dW"),
            &floats(weight.grad(&grads).unwrap()),
            &reference.weight_gradient,
            tol::GRADIENT,
        );
    }
}
