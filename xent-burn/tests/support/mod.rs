//! What the xent-burn tests share: burn's wgpu device registered with xent, and moving
//! test cases (the root crate's `tests/common`) in and out of tensors.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::OnceLock;

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use xent::Dtype;

use super::common::{assert_within, gpu_policy, tol, Case};
use xent::reference::Reference;
use xent::Reduction;

/// burn's wgpu device (the graphics API `WGPU_BACKEND` names), registered with xent, with
/// autodiff; `None` (after the GPU policy's message) when there is no adapter.
pub fn device() -> Option<Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match xent_burn::init_with(options()) {
            Ok(device) => {
                assert!(xent_burn::runs_kernels(&device));
                Some(device.autodiff())
            }
            Err(e) => {
                gpu_policy::missing_gpu("the xent-burn tests", &e);
                None
            }
        })
        .clone()
}

/// burn's wgpu options for the graphics API `WGPU_BACKEND` names.
pub fn options() -> burn::tensor::wgpu::WgpuOptions {
    let options = Device::wgpu_options();
    match std::env::var("WGPU_BACKEND").as_deref() {
        Ok("gl") => options.graphics_api(WgpuBackend::Gl),
        Ok("vulkan") => options.graphics_api(WgpuBackend::Vulkan),
        _ => options,
    }
}

/// A tensor's values as f32.
pub fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// An f32 vector as a tensor.
pub fn vector(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The case's logits as a tracked tensor of `shape` in its dtype.
pub fn logits<const D: usize>(case: &Case, shape: [usize; D], device: &Device) -> Tensor<D> {
    let data = match case.dtype {
        Dtype::F32 => TensorData::new(case.logits.clone(), shape),
        Dtype::F16 => TensorData::new(
            case.logits
                .iter()
                .map(|&v| half::f16::from_f32(v))
                .collect(),
            shape,
        ),
        Dtype::Bf16 => TensorData::new(
            case.logits
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect(),
            shape,
        ),
    };
    Tensor::from_data(data, device).require_grad()
}

/// The case's class indices as a tensor of `shape`.
pub fn index_targets<const T: usize>(
    case: &Case,
    shape: [usize; T],
    device: &Device,
) -> Tensor<T, Int> {
    Tensor::from_data(TensorData::new(case.index_targets.clone(), shape), device)
}

/// The case's dense targets as a tensor of `shape`.
pub fn dense_targets<const D: usize>(case: &Case, shape: [usize; D], device: &Device) -> Tensor<D> {
    let targets = case.dense_targets.clone().expect("dense targets");
    Tensor::from_data(TensorData::new(targets, shape), device)
}

/// An upstream gradient for a loss of `len` values under `reduction`: 0.7 for sum and mean;
/// for none, values that differ from one row (element) to the next.
pub fn upstream(reduction: Reduction, len: usize) -> Vec<f32> {
    match reduction {
        Reduction::None => (0..len).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect(),
        _ => vec![0.7],
    }
}

/// Checks a call's `loss` against `reference` (computed for `upstream`), then the gradient of
/// `Σ loss · upstream` with respect to `logits`: its values, in the logits' dtype.
pub fn check_loss_and_gradient<const D: usize>(
    what: &str,
    loss: Tensor<1>,
    logits: &Tensor<D>,
    upstream: &[f32],
    reference: &Reference,
    dtype: Dtype,
) {
    check_through(what, loss, logits, 1.0, upstream, reference, dtype);
}

/// Logits that only the loss will hold once moved into the call, as a model's output:
/// `2·leaf` for a tracked leaf holding half the case's logits (exact in every dtype). Returns
/// the leaf and the logits; check with [`check_loss_and_leaf_gradient`].
pub fn doubled<const D: usize>(
    case: &Case,
    shape: [usize; D],
    device: &Device,
) -> (Tensor<D>, Tensor<D>) {
    let mut halved = case.clone();
    halved.logits.iter_mut().for_each(|v| *v /= 2.0);
    let leaf = logits(&halved, shape, device);
    (leaf.clone(), leaf * 2.0)
}

/// [`check_loss_and_gradient`] for logits made by [`doubled`]: d loss / d logits is half the
/// leaf's gradient.
pub fn check_loss_and_leaf_gradient<const D: usize>(
    what: &str,
    loss: Tensor<1>,
    leaf: &Tensor<D>,
    upstream: &[f32],
    reference: &Reference,
    dtype: Dtype,
) {
    check_through(what, loss, leaf, 0.5, upstream, reference, dtype);
}

/// The loss, then `factor` times the gradient with respect to `tensor` as d loss / d logits.
fn check_through<const D: usize>(
    what: &str,
    loss: Tensor<1>,
    tensor: &Tensor<D>,
    factor: f32,
    upstream: &[f32],
    reference: &Reference,
    dtype: Dtype,
) {
    let values = floats(loss.clone());
    match reference.loss {
        Some(expected) => assert_within(&format!("{what}: loss"), &values, &[expected], tol::LOSS),
        None => assert_within(
            &format!("{what}: per-row losses"),
            &values,
            &reference.row_losses,
            tol::LOSS,
        ),
    }
    let device = tensor.device();
    let before = floats(tensor.clone());
    let grads = (loss * vector(upstream, &device)).sum().backward();
    // A tensor the caller still holds is never the gradient's buffer.
    assert_eq!(
        floats(tensor.clone()),
        before,
        "{what}: the held tensor is unchanged"
    );
    let gradient = tensor.grad(&grads).expect("the gradient");
    assert_eq!(gradient.dtype(), tensor.dtype(), "{what}: gradient dtype");
    let gradient: Vec<f32> = floats(gradient).iter().map(|g| g * factor).collect();
    assert_within(
        &format!("{what}: d logits"),
        &gradient,
        &reference.gradient,
        tol::gradient(dtype),
    );
}
