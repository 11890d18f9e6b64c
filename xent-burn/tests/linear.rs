//! The linear head (`linear_cross_entropy`, `LinearCrossEntropyLoss`) on burn's wgpu device:
//! the loss and `dh`, `dW`, `db` through burn's autodiff, against xent's f64 reference and
//! against burn's own `Linear` + `CrossEntropyLoss`.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use burn::module::Param;
use burn::nn::{Linear, LinearLayout};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::{assert_close, assert_each, Rng};
use support::{device, floats, vector};
use xent::linear::LinearBatch;
use xent::reference::LinearReference;
use xent::{CrossEntropy, Matrix, Reduction};
use xent_burn::Weights;

/// A head's inputs on the host: `h` [N × D], `W` [V × D], `b` [V], targets, class weights.
struct Head {
    rows: usize,
    hidden: usize,
    vocab: usize,
    h: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    targets: Vec<i64>,
    class_weights: Option<Vec<f32>>,
}

impl Head {
    fn new(seed: u64, rows: usize, hidden: usize, vocab: usize) -> Head {
        let mut rng = Rng(seed);
        let mut targets: Vec<i64> = (0..rows).map(|_| rng.below(vocab) as i64).collect();
        for r in (0..rows).step_by(5) {
            targets[r] = -100;
        }
        Head {
            rows,
            hidden,
            vocab,
            h: (0..rows * hidden).map(|_| rng.normal()).collect(),
            w: (0..vocab * hidden).map(|_| 0.3 * rng.normal()).collect(),
            b: (0..vocab).map(|_| 0.1 * rng.normal()).collect(),
            targets,
            class_weights: None,
        }
    }

    fn weighted(mut self, seed: u64) -> Head {
        let mut rng = Rng(seed);
        self.class_weights = Some((0..self.vocab).map(|_| 0.5 + rng.uniform()).collect());
        self
    }

    /// Rounds `h` and `W` to f16 (the reference then sees the values the device does).
    fn f16(mut self) -> Head {
        for v in self.h.iter_mut().chain(self.w.iter_mut()) {
            *v = half::f16::from_f32(*v).to_f32();
        }
        self
    }

    fn reference(&self, options: &CrossEntropy, upstream: &[f32]) -> LinearReference {
        let mut batch = LinearBatch::new(
            Matrix::new(&self.h, self.rows, self.hidden),
            Matrix::new(&self.w, self.vocab, self.hidden),
            &self.targets[..],
        )
        .bias(&self.b);
        batch.class_weights = self.class_weights.as_deref();
        xent::reference::linear_cross_entropy(options, &batch, Some(upstream)).expect("reference")
    }

    /// Per-element tolerances of `dh`, `dW`, `db`: 1e-4 of the sum of the magnitudes that
    /// make each (from the reference's d logits).
    fn tolerances(&self, reference: &LinearReference, rounding: f64) -> [Vec<f64>; 3] {
        let (n, d, v) = (self.rows, self.hidden, self.vocab);
        let g = &reference.logits_reference.gradient;
        let (mut dh, mut dw, mut db) = (vec![0f64; n * d], vec![0f64; v * d], vec![0f64; v]);
        for r in 0..n {
            for c in 0..v {
                let gv = g[r * v + c].abs();
                db[c] += gv;
                for k in 0..d {
                    dh[r * d + k] += gv * self.w[c * d + k].abs() as f64;
                    dw[c * d + k] += gv * self.h[r * d + k].abs() as f64;
                }
            }
        }
        let scale = |m: Vec<f64>| {
            m.into_iter()
                .map(|x| (1e-4 + rounding) * x + 1e-7)
                .collect()
        };
        [scale(dh), scale(dw), scale(db)]
    }
}

fn matrix(values: &[f32], shape: [usize; 2], dtype: DType, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(values.to_vec(), shape), device).cast(dtype)
}

/// `linear_cross_entropy` on `head` (hidden states as `[2, N/2, D]`), the loss times an
/// upstream backward, against the reference. `hidden_major`: the weight is the transpose of
/// a `[D, V]` parameter (burn's `Linear`), bound in place as xent's `[D × V]` weight.
fn check(what: &str, head: &Head, options: &CrossEntropy, dtype: DType, hidden_major: bool) {
    let Some(device) = device() else { return };
    let (n, d, v) = (head.rows, head.hidden, head.vocab);
    let what = &format!("{what}, [D, V] parameter: {hidden_major}");
    let h = Tensor::<3>::from_data(TensorData::new(head.h.clone(), [2, n / 2, d]), &device)
        .cast(dtype)
        .require_grad();
    let w = match hidden_major {
        true => {
            let stored: Vec<f32> = (0..d * v).map(|i| head.w[(i % v) * d + i / v]).collect();
            matrix(&stored, [d, v], dtype, &device)
        }
        false => matrix(&head.w, [v, d], dtype, &device),
    }
    .require_grad();
    let weight = match hidden_major {
        true => w.clone().transpose(),
        false => w.clone(),
    };
    let b = vector(&head.b, &device).require_grad();
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(head.targets.clone(), [2, n / 2]), &device);
    let weights = Weights {
        class: head.class_weights.as_deref().map(|c| vector(c, &device)),
        sample: None,
    };
    let out = xent_burn::linear_cross_entropy(
        h.clone(),
        weight,
        Some(b.clone()),
        targets,
        options,
        &weights,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    out.check().unwrap();
    let upstream: Vec<f32> = match options.reduction {
        Reduction::None => (0..n).map(|r| 0.5 + (r % 3) as f32 * 0.25).collect(),
        _ => vec![0.7],
    };
    let reference = head.reference(options, &upstream);
    let loss = floats(out.loss.clone());
    let logits = &reference.logits_reference;
    // The logits are f32 products of D terms: a few ulps of |h|·|W| on top of the loss's own.
    match logits.loss {
        Some(l) => assert_close(&format!("{what}: loss"), &loss, &[l], 1e-4, 1e-4),
        None => assert_close(
            &format!("{what}: row losses"),
            &loss,
            &logits.row_losses,
            1e-4,
            1e-4,
        ),
    }
    let grads = (out.loss * vector(&upstream, &device)).sum().backward();
    let rounding = if dtype == DType::F32 { 0.0 } else { 2e-3 };
    let [dh_tol, dw_tol, db_tol] = head.tolerances(&reference, rounding);
    let dh = h.grad(&grads).expect("dh");
    let dw = match hidden_major {
        true => w.grad(&grads).expect("dW").transpose(),
        false => w.grad(&grads).expect("dW"),
    };
    assert_eq!(
        (dh.dtype(), dw.dtype()),
        (dtype, dtype),
        "{what}: gradient dtypes"
    );
    assert_each(
        &format!("{what}: dh"),
        &floats(dh),
        &reference.hidden_gradient,
        |i| dh_tol[i],
    );
    assert_each(
        &format!("{what}: dW"),
        &floats(dw),
        &reference.weight_gradient,
        |i| dw_tol[i],
    );
    assert_each(
        &format!("{what}: db"),
        &floats(b.grad(&grads).expect("db")),
        &reference.bias_gradient,
        |i| db_tol[i],
    );
}

#[test]
fn every_reduction_and_option() {
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = CrossEntropy::new().reduction(reduction);
        for (name, options) in [
            ("plain", base),
            (
                "smoothing 0.1, z-loss 1e-3",
                base.label_smoothing(0.1).z_loss(1e-3),
            ),
            ("focal 2, softcap 8", base.focal_gamma(2.0).softcap(8.0)),
        ] {
            let head = Head::new(1, 24, 16, 37).weighted(2);
            for hidden_major in [false, true] {
                let what = format!("{reduction:?} {name}");
                check(&what, &head, &options, DType::F32, hidden_major);
            }
        }
    }
}

#[test]
fn half_precision_head() {
    let Some(device) = device() else { return };
    // burn casts the f32 gradients to the parameters' f16 with a kernel of its own, which
    // needs the adapter's shader-f16 (llvmpipe's GL has none).
    if !device.supports_dtype(DType::F16) {
        eprintln!("half_precision_head: this adapter has no f16 for burn's kernels; not run");
        return;
    }
    for reduction in [Reduction::Mean, Reduction::None] {
        let head = Head::new(3, 20, 16, 29).f16();
        let options = CrossEntropy::new()
            .reduction(reduction)
            .label_smoothing(0.05);
        for hidden_major in [false, true] {
            let what = format!("{reduction:?} f16");
            check(&what, &head, &options, DType::F16, hidden_major);
        }
    }
}

/// A frozen weight gets no gradient (and the call computes none); `dh` and `db` still match.
#[test]
fn frozen_weight() {
    let Some(device) = device() else { return };
    let head = Head::new(4, 12, 8, 21);
    let options = CrossEntropy::new();
    let h = matrix(&head.h, [12, 8], DType::F32, &device).require_grad();
    let w = matrix(&head.w, [21, 8], DType::F32, &device);
    let b = vector(&head.b, &device).require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(head.targets.clone(), [12]), &device);
    let out = xent_burn::linear_cross_entropy(
        h.clone(),
        w.clone(),
        Some(b.clone()),
        targets,
        &options,
        &Weights::default(),
    )
    .unwrap();
    let grads = out.loss.backward();
    let reference = head.reference(&options, &[1.0]);
    let [dh_tol, _, db_tol] = head.tolerances(&reference, 0.0);
    assert!(w.grad(&grads).is_none());
    assert_each(
        "dh",
        &floats(h.grad(&grads).unwrap()),
        &reference.hidden_gradient,
        |i| dh_tol[i],
    );
    assert_each(
        "db",
        &floats(b.grad(&grads).unwrap()),
        &reference.bias_gradient,
        |i| db_tol[i],
    );
}

/// A burn `Linear` head (either weight layout: `LinearConfig::with_layout(Col)` stores `[V × D]`
/// and shows its transpose) with `LinearCrossEntropyLoss` against the same
/// head's logits through burn's own `CrossEntropyLoss`: the loss and every parameter's
/// gradient.
#[test]
fn agrees_with_burns_linear_and_loss() {
    let Some(device) = device() else { return };
    let (n, d, v) = (18, 12, 23);
    let head = Head::new(5, n, d, v);
    for layout in [LinearLayout::Row, LinearLayout::Col] {
        // Our weights: W [V × D] is burn's [D × V] transposed.
        let mut transposed = vec![0f32; d * v];
        for c in 0..v {
            for k in 0..d {
                transposed[k * v + c] = head.w[c * d + k];
            }
        }
        let weight = matrix(&transposed, [d, v], DType::F32, &device);
        let weight = match layout {
            LinearLayout::Row => weight,
            // Stored [V × D], seen as its transpose.
            LinearLayout::Col => matrix(&head.w, [v, d], DType::F32, &device).transpose(),
        };
        let linear = Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(vector(&head.b, &device))),
        };
        let h = matrix(&head.h, [n, d], DType::F32, &device).require_grad();
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(head.targets.clone(), [n]), &device);
        let ours = xent_burn::LinearCrossEntropyLoss::new(CrossEntropy::new().ignore_index(-100));
        let loss = ours.forward(h.clone(), &linear, targets.clone());
        let grads = loss.clone().backward();
        let (dh, dw, db) = (
            floats(h.grad(&grads).unwrap()),
            floats(linear.weight.grad(&grads).unwrap()),
            floats(linear.bias.as_ref().unwrap().grad(&grads).unwrap()),
        );
        // burn's loss has no ignore index: its pad token stands in for −100, whose rows get
        // a valid class here and are masked by burn.
        let pad = v - 1;
        let burn_targets: Vec<i64> = head
            .targets
            .iter()
            .map(|&t| if t < 0 { pad as i64 } else { t })
            .collect();
        assert!(
            !head.targets.contains(&(pad as i64)),
            "the test's pad class must be unused"
        );
        let theirs = burn::nn::loss::CrossEntropyLossConfig::new()
            .with_pad_tokens(Some(vec![pad]))
            .init(&device);
        let burn_loss = theirs.forward(
            linear.forward(h.clone()),
            Tensor::<1, Int>::from_data(TensorData::new(burn_targets, [n]), &device),
        );
        let grads = burn_loss.clone().backward();
        let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let what = format!("{layout:?}");
        assert_close(
            &format!("{what}: loss"),
            &floats(loss),
            &wide(floats(burn_loss)),
            2e-5,
            2e-5,
        );
        assert_close(
            &format!("{what}: dh"),
            &dh,
            &wide(floats(h.grad(&grads).unwrap())),
            1e-6,
            1e-4,
        );
        assert_close(
            &format!("{what}: dW"),
            &dw,
            &wide(floats(linear.weight.grad(&grads).unwrap())),
            1e-6,
            1e-4,
        );
        assert_close(
            &format!("{what}: db"),
            &db,
            &wide(floats(linear.bias.as_ref().unwrap().grad(&grads).unwrap())),
            1e-6,
            1e-4,
        );
    }
}

/// A head without a bias: the call reads none, and `dh`, `dW` match a zero bias's.
#[test]
fn without_bias() {
    let Some(device) = device() else { return };
    let mut head = Head::new(6, 14, 10, 19);
    head.b = vec![0.0; 19];
    for reduction in [Reduction::Mean, Reduction::None] {
        let options = CrossEntropy::new().reduction(reduction).z_loss(1e-3);
        let h = matrix(&head.h, [14, 10], DType::F32, &device).require_grad();
        let w = matrix(&head.w, [19, 10], DType::F32, &device).require_grad();
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(head.targets.clone(), [14]), &device);
        let out = xent_burn::linear_cross_entropy(
            h.clone(),
            w.clone(),
            None,
            targets,
            &options,
            &Weights::default(),
        )
        .unwrap();
        let upstream = match reduction {
            Reduction::None => vec![1.0; 14],
            _ => vec![1.0],
        };
        let reference = head.reference(&options, &upstream);
        let [dh_tol, dw_tol, _] = head.tolerances(&reference, 0.0);
        let grads = out.loss.sum().backward();
        let what = format!("{reduction:?}");
        assert_each(
            &format!("{what}: dh"),
            &floats(h.grad(&grads).unwrap()),
            &reference.hidden_gradient,
            |i| dh_tol[i],
        );
        assert_each(
            &format!("{what}: dW"),
            &floats(w.grad(&grads).unwrap()),
            &reference.weight_gradient,
            |i| dw_tol[i],
        );
    }
}
