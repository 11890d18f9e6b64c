//! Focal loss, per-sample weights and BCE label smoothing (SEMANTICS.md sections 2c and 4).
//!
//! First the f64 reference on its own: γ = 0 is plain cross-entropy, worked examples done by
//! hand, and its gradients against central finite differences of its own loss. Then every
//! backend of the matrix (`common::backends`: each CPU level, every GPU path; every gradient
//! mode) against the reference for every option combination, and the GPU's long rows, chunks
//! and device-resident calls. Without an adapter the GPU parts fail unless `XENT_SKIP_GPU=1`,
//! which makes them say loudly that they were not run.

mod common;

use common::device::{
    bad_targets, buffer, check_loss_and_gradient, gpu, read, record_and_submit, small_bindings,
    DeviceCase,
};
use common::*;
use std::sync::Arc;
use xent::gpu::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, Gpu, GpuOptions};
use xent::reference::{self, Reference};
use xent::{
    Backend, Batch, BinaryCrossEntropy, CrossEntropy, Dtype, Error, InputKind, Layout, Logits,
    Reduction, Request,
};

// ---------------------------------------------------------------------------------------------
// The reference on its own.
// ---------------------------------------------------------------------------------------------

/// Logits on a 2^-8 grid, so that `x ± 2^-12` is exact in f32 and finite differences see the
/// step they were given.
fn grid_case(seed: u64, rows: usize, classes: usize) -> Case {
    let mut case = Case::new(seed, rows, classes, Hardness::default());
    for v in &mut case.logits {
        *v = (*v * 0.7 * 256.0).round() / 256.0;
    }
    case
}

fn max_rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1.0)
}

/// Every reduced loss, row loss and gradient of two references agree to `tol` (relative).
fn assert_same(label: &str, a: &Reference, b: &Reference, tol: f64) {
    match (a.loss, b.loss) {
        (Some(x), Some(y)) => assert!(
            max_rel(x, y) <= tol || (x.is_nan() && y.is_nan()),
            "{label}: loss {x} vs {y}"
        ),
        (None, None) => {}
        other => panic!("{label}: {other:?}"),
    }
    for (i, (x, y)) in a.row_losses.iter().zip(&b.row_losses).enumerate() {
        assert!(
            max_rel(*x, *y) <= tol || (x.is_nan() && y.is_nan()) || x == y,
            "{label}: row {i}: {x} vs {y}"
        );
    }
    for (i, (x, y)) in a.gradient.iter().zip(&b.gradient).enumerate() {
        assert!(
            max_rel(*x, *y) <= tol || (x.is_nan() && y.is_nan()),
            "{label}: gradient {i}: {x} vs {y}"
        );
    }
}

#[test]
fn gamma_zero_is_plain_cross_entropy() {
    // γ = 0 is the default, so the same options; and a vanishing γ goes through the focal
    // formulas (every class's (1 − p)^γ, the gradient factor g) and must land on plain
    // cross-entropy to rounding.
    assert_eq!(CrossEntropy::new().focal_gamma(0.0), CrossEntropy::new());
    let index = Case::new(1, 9, 13, Hardness::ALL)
        .weighted(2)
        .sample_weighted(3)
        .ignore_every(4, -100);
    let soft = Case::new(
        2,
        8,
        11,
        Hardness {
            outliers: true,
            masked: false,
            non_finite: true,
        },
    )
    .soft(1)
    .weighted(4)
    .sample_weighted(5);
    let options = [
        CrossEntropy::new(),
        CrossEntropy::new().label_smoothing(0.2),
        CrossEntropy::new()
            .label_smoothing(0.1)
            .z_loss(1e-3)
            .softcap(12.0)
            .logit_scale(0.8)
            .reduction(Reduction::Sum),
        CrossEntropy::new().reduction(Reduction::None),
    ];
    for case in [&index, &soft] {
        for o in &options {
            let plain = case.reference(o, None);
            let tiny = case.reference(&o.focal_gamma(1e-30), None);
            assert_same(&format!("{o:?}"), &plain, &tiny, 1e-12);
        }
    }
}

#[test]
fn worked_examples_softmax() {
    // 1. Two classes, z = (0, ln 3): p = (1/4, 3/4), target 1, γ = 2.
    //    loss = −(1 − 3/4)²·ln(3/4) = 0.0625·0.287682… = 0.0179801295
    //    g[1] = (1/4)² − 2·(3/4)·ln(3/4)·(1/4) = 0.0625 + 0.107880… = 0.1703807772
    //    dz = g[1]·(p − onehot) = (0.0425951943, −0.0425951943)
    let z = [0.0f32, 3f32.ln()];
    let r = reference::cross_entropy(
        &CrossEntropy::new().focal_gamma(2.0),
        &Batch::new(Logits::new(&z, 1, 2), &[1i64][..]),
        None,
    )
    .unwrap();
    assert_close(
        "example 1 loss",
        &[r.loss.unwrap() as f32],
        &[0.0179801295],
        0.0,
        1e-6,
    );
    assert_close(
        "example 1 gradient",
        &r.gradient.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[0.0425951943, -0.0425951943],
        0.0,
        1e-6,
    );

    // 2. Three classes, z = ln(1, 1, 2): p = (1/4, 1/4, 1/2), target 2, ε = 0.3 (ε/C = 0.1),
    //    γ = 1: t' = (0.1, 0.1, 0.8), f = 1 − p = (3/4, 3/4, 1/2).
    //    loss = −(2·0.1·(3/4)·ln(1/4) + 0.8·(1/2)·ln(1/2)) = 0.2079442 + 0.2772589 = 0.4852030264
    //    g = f − p·ln p = (1.0965736, 1.0965736, 0.8465736), G = Σ t'·g = 0.8965736
    //    dz = p·G − t'·g = (0.1144860385, 0.1144860385, −0.2289720771), summing to 0.
    let z = [0.0f32, 0.0, 2f32.ln()];
    let r = reference::cross_entropy(
        &CrossEntropy::new().focal_gamma(1.0).label_smoothing(0.3),
        &Batch::new(Logits::new(&z, 1, 3), &[2i64][..]),
        None,
    )
    .unwrap();
    assert_close(
        "example 2 loss",
        &[r.loss.unwrap() as f32],
        &[0.4852030264],
        0.0,
        1e-6,
    );
    assert_close(
        "example 2 gradient",
        &r.gradient.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[0.1144860385, 0.1144860385, -0.2289720771],
        0.0,
        1e-6,
    );
    // The same row as a soft target t = onehot(2) smoothed by 0.3 gives the same numbers.
    let t = [0.0f32, 0.0, 1.0];
    let soft = reference::cross_entropy(
        &CrossEntropy::new().focal_gamma(1.0).label_smoothing(0.3),
        &Batch::new(Logits::new(&z, 1, 3), &t[..]),
        None,
    )
    .unwrap();
    assert_same("example 2 as soft targets", &r, &soft, 1e-12);

    // 3. Sample weights and the mean: rows with targets (0, 1, ignored), class weights (1, 3),
    //    sample weights (2, 0.5, 7), uniform logits (loss ln 2 per valid row):
    //    D = 2·1 + 0.5·3 = 3.5 (the ignored row counts for nothing), Σ s·loss = (2 + 1.5)·ln 2,
    //    mean = ln 2.  Sum = 3.5·ln 2.  z-loss λ = 0.1, lse = ln 2: adds λ·(2 + 0.5)·ln²2 / 2.5.
    let x = [0.0f32; 6];
    let y = [0i64, 1, -100];
    let w = [1.0f32, 3.0];
    let s = [2.0f32, 0.5, 7.0];
    let batch = || {
        Batch::new(Logits::new(&x, 3, 2), &y[..])
            .class_weights(&w)
            .sample_weights(&s)
    };
    let ln2 = 2f64.ln();
    let mean = reference::cross_entropy(&CrossEntropy::new(), &batch(), None).unwrap();
    assert!((mean.loss.unwrap() - ln2).abs() < 1e-12);
    let sum = reference::cross_entropy(
        &CrossEntropy::new().reduction(Reduction::Sum),
        &batch(),
        None,
    )
    .unwrap();
    assert!((sum.loss.unwrap() - 3.5 * ln2).abs() < 1e-12);
    let z = reference::cross_entropy(&CrossEntropy::new().z_loss(0.1), &batch(), None).unwrap();
    let lambda = 0.1f32 as f64;
    assert!((z.loss.unwrap() - (ln2 + lambda * ln2 * ln2)).abs() < 1e-12);
    let none = reference::cross_entropy(
        &CrossEntropy::new().reduction(Reduction::None),
        &batch(),
        None,
    )
    .unwrap();
    for (a, b) in none.row_losses.iter().zip([2.0 * ln2, 1.5 * ln2, 0.0]) {
        assert!((a - b).abs() < 1e-12, "{:?}", none.row_losses);
    }
}

#[test]
fn worked_examples_bce() {
    // torchvision's sigmoid_focal_loss(x, y, α = 0.25, γ = 2), element by element:
    //   x = 0, y = 1: p = 1/2, ce = ln 2, p_t = 1/2, α_t = 0.25: 0.25·ln 2·(1/2)² = 0.0433216988
    //   x = 2, y = 0: p = σ(2) = 0.880797, ce = softplus(2) = 2.126928, p_t = 0.119203,
    //                 α_t = 0.75: 0.75·2.126928·0.880797² = 1.2375586346
    let x = [0.0f32, 2.0];
    let y = [1.0f32, 0.0];
    let options = BinaryCrossEntropy::new()
        .focal_gamma(2.0)
        .focal_alpha(0.25)
        .reduction(Reduction::None);
    let r =
        reference::binary_cross_entropy(&options, &Batch::new(Logits::new(&x, 1, 2), &y[..]), None)
            .unwrap();
    assert_close(
        "torchvision focal",
        &r.row_losses.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[0.0433216988, 1.2375586346],
        0.0,
        1e-6,
    );
    // Keras's label smoothing: x = 1, y = 1, ε = 0.2 → y' = 0.9:
    //   0.9·softplus(−1) + 0.1·softplus(1) = 0.9·0.313262 + 0.1·1.313262 = 0.4132616875
    let r = reference::binary_cross_entropy(
        &BinaryCrossEntropy::new().label_smoothing(0.2),
        &Batch::new(Logits::new(&[1.0f32], 1, 1), &[1.0f32][..]),
        None,
    )
    .unwrap();
    assert_close(
        "smoothing",
        &[r.loss.unwrap() as f32],
        &[0.4132616875],
        0.0,
        1e-6,
    );
    // Sample weights multiply every element of their row; the mean still divides by N·C:
    //   rows (0, 0) and (0, 0) with targets 1: ln 2 each; s = (3, 1): (6 + 2)·ln 2 / 4 = 2·ln 2.
    let r = reference::binary_cross_entropy(
        &BinaryCrossEntropy::new(),
        &Batch::new(Logits::new(&[0.0f32; 4], 2, 2), &[1.0f32; 4][..]).sample_weights(&[3.0, 1.0]),
        None,
    )
    .unwrap();
    assert!((r.loss.unwrap() - 2.0 * 2f64.ln()).abs() < 1e-12);
    // γ = 0 and no α is plain BCE, bit for bit.
    let case = Case::new(3, 6, 7, Hardness::default()).multi_label(1, true);
    let plain = case.reference_bce(&BinaryCrossEntropy::new(), None);
    let zero = case.reference_bce(&BinaryCrossEntropy::new().focal_gamma(0.0), None);
    assert_eq!(plain.row_losses, zero.row_losses);
    assert_eq!(plain.gradient, zero.gradient);
}

/// The scalar the reference's gradient differentiates: the loss, or Σ u·loss for `none`.
fn objective(r: &Reference, upstream: Option<&[f32]>) -> f64 {
    match r.loss {
        Some(l) => l * upstream.map_or(1.0, |u| u[0] as f64),
        None => r
            .row_losses
            .iter()
            .enumerate()
            .map(|(i, &l)| l * upstream.map_or(1.0, |u| u[i] as f64))
            .sum(),
    }
}

/// Central differences with the exact step 2^-12 against the reference's gradient.
fn finite_differences(
    label: &str,
    case: &Case,
    upstream: Option<&[f32]>,
    reference: impl Fn(&Case) -> Reference,
) {
    let h = 1.0f32 / 4096.0;
    let analytic = reference(case);
    let mut worst = (0usize, 0f64, 0f64, 0f64);
    for i in 0..case.logits.len() {
        let at = |v: f32| {
            let mut c = case.clone();
            c.logits[i] = v;
            objective(&reference(&c), upstream)
        };
        let x = case.logits[i];
        assert_eq!((x + h) - h, x, "step not exact");
        let fd = (at(x + h) - at(x - h)) / (2.0 * h as f64);
        let g = analytic.gradient[i];
        let excess = (fd - g).abs() / (1e-7 + 1e-5 * g.abs());
        if excess > worst.1 {
            worst = (i, excess, fd, g);
        }
    }
    let (i, excess, fd, g) = worst;
    assert!(
        excess <= 1.0,
        "{label}: element {i}: finite differences {fd}, reference gradient {g} ({excess}× the tolerance)"
    );
}

#[test]
fn reference_gradient_matches_finite_differences() {
    let base = CrossEntropy::new();
    let mut grid = vec![];
    for gamma in [0.5f32, 1.0, 2.0, 3.5] {
        let f = base.focal_gamma(gamma);
        grid.extend([
            f,
            f.label_smoothing(0.2),
            f.label_smoothing(0.1)
                .z_loss(1e-2)
                .softcap(4.0)
                .logit_scale(1.3),
            f.label_smoothing(0.3).reduction(Reduction::Sum),
            f.z_loss(1e-2).reduction(Reduction::None).ignore_index(2),
        ]);
    }
    grid.push(base.label_smoothing(0.2).z_loss(1e-2));
    softmax_grid_finite_differences(&grid, grid_case, (10, 40));
}

/// Finite differences of the reference for every option set of `grid`, on an index-target
/// case (5 × 6, weighted, sample-weighted, some rows ignored) and a soft-target case (4 × 5),
/// each with an upstream gradient; `seeds` picks their random logits.
fn softmax_grid_finite_differences(
    grid: &[CrossEntropy],
    make: fn(u64, usize, usize) -> Case,
    seeds: (u64, u64),
) {
    for (k, options) in grid.iter().enumerate() {
        let index = make(seeds.0 + k as u64, 5, 6)
            .weighted(k as u64)
            .sample_weighted(k as u64)
            .ignore_every(3, options.ignore_index);
        let soft = make(seeds.1 + k as u64, 4, 5)
            .soft(k as u64)
            .weighted(k as u64 + 1)
            .sample_weighted(k as u64 + 2);
        let upstream: Vec<f32> = match options.reduction {
            Reduction::None => (0..5).map(|i| 0.5 + 0.25 * i as f32).collect(),
            _ => vec![0.75],
        };
        for (what, case) in [("index", &index), ("soft", &soft)] {
            let up = &upstream[..upstream.len().min(case.rows)];
            finite_differences(&format!("{what} {options:?}"), case, Some(up), |c| {
                c.reference(options, Some(up))
            });
        }
    }
}

#[test]
fn bce_reference_gradient_matches_finite_differences() {
    let base = BinaryCrossEntropy::new();
    let grid = [
        base.label_smoothing(0.1),
        base.focal_gamma(2.0).focal_alpha(0.25),
        base.focal_gamma(0.5),
        base.focal_alpha(0.7),
        base.focal_gamma(1.5)
            .focal_alpha(0.4)
            .label_smoothing(0.2)
            .reduction(Reduction::Sum),
        base.focal_gamma(3.0).reduction(Reduction::None),
    ];
    for (k, options) in grid.iter().enumerate() {
        let case = grid_case(70 + k as u64, 4, 5)
            .multi_label(k as u64, true)
            .sample_weighted(k as u64);
        let upstream: Vec<f32> = match options.reduction {
            Reduction::None => (0..20).map(|i| 0.5 + 0.1 * i as f32).collect(),
            _ => vec![1.5],
        };
        finite_differences(&format!("{options:?}"), &case, Some(&upstream), |c| {
            c.reference_bce(options, Some(&upstream))
        });
    }
}

#[test]
fn worked_examples_probability_inputs() {
    // Focal loss on probability inputs (SEMANTICS.md sections 2b, 2c): p = clamp(q, eps, 1) is
    // used as it is (no softmax), loss = −Σ_c w[c]·t'[c]·(1 − p[c])^γ·ln p[c], and since class
    // c's term depends on q[c] alone, dloss/dq[c] = −w[c]·t'[c]·g[c]/q[c] with
    // g = (1 − p)^γ − γ·p·ln p·(1 − p)^(γ−1), 0 where q was clamped.
    //
    // 1. q = (1/4, 1/4, 1/2), target 2, ε = 0.3 (ε/C = 0.1), γ = 1: t' = (0.1, 0.1, 0.8),
    //    the probabilities of worked_examples_softmax's example 2, so the same loss:
    //    loss = −(2·0.1·(3/4)·ln(1/4) + 0.8·(1/2)·ln(1/2)) = 0.4852030264
    //    g = (1 − p) − p·ln p = (1.0965735903, 1.0965735903, 0.8465735903)
    //    dq = −t'·g/q = (−0.1·1.0965735903·4, (same), −0.8·0.8465735903·2)
    //       = (−0.4386294361, −0.4386294361, −1.3545177444)
    //    (not summing to 0: there is no softmax to take the mass back).
    let options = CrossEntropy::new()
        .input(InputKind::PROBABILITIES)
        .focal_gamma(1.0)
        .label_smoothing(0.3);
    let q = [0.25f32, 0.25, 0.5];
    let r = reference::cross_entropy(
        &options,
        &Batch::new(Logits::new(&q, 1, 3), &[2i64][..]),
        None,
    )
    .unwrap();
    assert_close(
        "probabilities 1 loss",
        &[r.loss.unwrap() as f32],
        &[0.4852030264],
        0.0,
        1e-6,
    );
    let expected = [-0.4386294361, -0.4386294361, -1.3545177444];
    let as_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
    assert_close(
        "probabilities 1 gradient",
        &as_f32(&r.gradient),
        &expected,
        0.0,
        1e-6,
    );
    // 2. q = (0, 1), target 1, ε = 0.2 (t' = (0.1, 0.9)), γ = 2, eps = 1e-7 (f32: e =
    //    1.0000000117e-7): class 0 is clamped to e, class 1 is certain, so
    //    loss = −0.1·(1 − e)²·ln e − 0.9·0²·ln 1 = 1.6118092416, and the gradient is 0 for both:
    //    class 0 because it was clamped, class 1 because g = 0 at p = 1.
    let options = options.focal_gamma(2.0).label_smoothing(0.2);
    let q = [0.0f32, 1.0];
    let r = reference::cross_entropy(
        &options,
        &Batch::new(Logits::new(&q, 1, 2), &[1i64][..]),
        None,
    )
    .unwrap();
    assert_close(
        "probabilities 2 loss",
        &[r.loss.unwrap() as f32],
        &[1.6118092416],
        0.0,
        1e-6,
    );
    assert_eq!(r.gradient, [0.0, 0.0]);
    // Both backends give these numbers too.
    let mut backends = vec![Backend::Cpu];
    backends.extend(gpu().map(Backend::Gpu));
    for backend in &backends {
        for (options, q, y, loss, gradient) in [
            (
                options.focal_gamma(1.0).label_smoothing(0.3),
                &[0.25f32, 0.25, 0.5][..],
                2i64,
                0.4852030264,
                &expected[..],
            ),
            (
                options,
                &[0.0f32, 1.0][..],
                1,
                1.6118092416,
                &[0.0, 0.0][..],
            ),
        ] {
            let label = format!("{} {options:?}", backend.name());
            let mut g = vec![0f32; q.len()];
            let out = options
                .compute(
                    backend,
                    Batch::new(Logits::new(q, 1, q.len()), &[y][..]),
                    Request::new().gradient_into(&mut g),
                )
                .unwrap();
            assert_close(&label, &[out.loss.unwrap()], &[loss], 0.0, 1e-6);
            assert_close(&label, &g, gradient, 0.0, 1e-5);
        }
    }
}

/// Probability inputs on a 2^-8 grid in [0.1, 0.9] (so `q ± 2^-12` is exact and stays inside
/// [0, 1]), and two values of 2^-12, which an `eps` of 1e-3 clamps on both sides of the step.
fn probability_grid_case(seed: u64, rows: usize, classes: usize) -> Case {
    let mut case = Case::new(seed, rows, classes, Hardness::default());
    let mut rng = Rng(seed ^ 0x9A0B);
    for v in &mut case.logits {
        *v = ((0.1 + 0.8 * rng.uniform()) * 256.0).round() / 256.0;
    }
    let n = case.logits.len();
    case.logits[1] = 1.0 / 4096.0;
    case.logits[n - 2] = 1.0 / 4096.0;
    case
}

#[test]
fn probability_focal_reference_matches_finite_differences() {
    let base = CrossEntropy::new().input(InputKind::Probabilities { eps: 1e-3 });
    let mut grid = vec![];
    for gamma in [0.5f32, 2.0, 3.5] {
        let f = base.focal_gamma(gamma);
        grid.extend([
            f,
            f.label_smoothing(0.2),
            f.label_smoothing(0.3).reduction(Reduction::Sum),
            f.reduction(Reduction::None).ignore_index(2),
        ]);
    }
    softmax_grid_finite_differences(&grid, probability_grid_case, (80, 90));
}

#[test]
fn bad_values_are_errors_naming_the_option() {
    let x = [0.0f32; 6];
    let y = [0i64, 1];
    let run = |o: CrossEntropy, s: Option<&[f32]>| {
        let mut batch = Batch::new(Logits::new(&x, 2, 3), &y[..]);
        batch.sample_weights = s;
        o.compute(&Backend::Cpu, batch, Request::new())
    };
    for gamma in [-0.5f32, f32::NAN, f32::INFINITY] {
        let e = run(CrossEntropy::new().focal_gamma(gamma), None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BadOption {
                    option: "focal_gamma",
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = run(CrossEntropy::new(), Some(&[1.0, -1.0])).unwrap_err();
    assert_eq!(
        e,
        Error::BadWeight {
            what: "sample_weights",
            index: 1,
            value: -1.0
        }
    );
    let e = run(CrossEntropy::new(), Some(&[1.0, f32::NAN])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadWeight {
                what: "sample_weights",
                index: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = run(CrossEntropy::new(), Some(&[1.0, 1.0, 1.0])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                what: "sample_weights",
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{e}"
    );

    let t = [0.5f32; 6];
    let bce = |o: BinaryCrossEntropy| {
        o.compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &t[..]),
            Request::new(),
        )
    };
    for (o, name) in [
        (BinaryCrossEntropy::new().focal_gamma(-1.0), "focal_gamma"),
        (BinaryCrossEntropy::new().focal_alpha(1.5), "focal_alpha"),
        (BinaryCrossEntropy::new().focal_alpha(-0.1), "focal_alpha"),
        (
            BinaryCrossEntropy::new().label_smoothing(2.0),
            "label_smoothing",
        ),
    ] {
        let e = bce(o).unwrap_err();
        assert!(
            matches!(e, Error::BadOption { option, .. } if option == name),
            "{e}"
        );
    }
    let e = BinaryCrossEntropy::new()
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &t[..]).sample_weights(&[1.0]),
            Request::new(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                what: "sample_weights",
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Option grids shared by the CPU and GPU tests.
// ---------------------------------------------------------------------------------------------

/// Focal options with every option of section 2 around them.
fn focal_grid() -> Vec<CrossEntropy> {
    let mut out = vec![];
    // γ = 0.5 takes the CPU's scalar path, whole γ its SIMD kernels.
    for gamma in [0.5f32, 1.0, 2.0, 3.0] {
        let f = CrossEntropy::new().focal_gamma(gamma);
        out.extend([
            f,
            f.label_smoothing(0.1),
            f.z_loss(1e-3)
                .softcap(15.0)
                .logit_scale(0.7)
                .ignore_index(3)
                .reduction(Reduction::Sum),
            f.label_smoothing(0.2).reduction(Reduction::None),
            f.label_smoothing(1.0)
                .z_loss(2e-2)
                .reduction(Reduction::Sum),
        ]);
    }
    // A fractional γ past 1 and a whole one past the SIMD kernels' 16: the factors lane by
    // lane (short rows) or in scalar code (rows).
    let f = CrossEntropy::new().focal_gamma(1.5);
    out.extend([
        f,
        f.label_smoothing(0.1),
        CrossEntropy::new().focal_gamma(17.0),
    ]);
    out
}

/// Plain options, for sample weights without focal loss.
fn sample_weight_grid() -> Vec<CrossEntropy> {
    let base = CrossEntropy::new();
    vec![
        base,
        base.reduction(Reduction::Sum),
        base.reduction(Reduction::None),
        base.label_smoothing(0.1).z_loss(1e-3),
        base.softcap(20.0).logit_scale(1.2).ignore_index(2),
    ]
}

fn bce_grid() -> Vec<BinaryCrossEntropy> {
    let base = BinaryCrossEntropy::new();
    let mut out = vec![];
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let b = base.reduction(reduction);
        out.extend([
            b.label_smoothing(0.1),
            b.focal_gamma(2.0).focal_alpha(0.25),
            b.focal_gamma(0.5),
            b.focal_alpha(0.6).label_smoothing(0.05),
        ]);
    }
    out
}

/// Upstream values for `Reduction::None` (one per row), else none.
fn row_upstream(options: &CrossEntropy, rows: usize) -> Option<Vec<f32>> {
    (options.reduction == Reduction::None).then(|| {
        (0..rows)
            .map(|i| (i % 5) as f32 * 0.3 - 0.2)
            .collect::<Vec<_>>()
    })
}

/// The softmax cases of one option set: index targets in three dtypes (hard data, class and
/// sample weights, ignored rows), and in rows too long for the CPU's short-row path, the
/// (N, C, d) layout, soft targets.
fn softmax_cases(options: &CrossEntropy, seed: u64) -> Vec<(String, Case)> {
    let mut out = vec![];
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        out.push((
            format!("index {dtype:?}"),
            Case::new(seed, 37, 133, Hardness::ALL)
                .weighted(seed)
                .sample_weighted(seed)
                .ignore_every(4, options.ignore_index)
                .dtype(dtype),
        ));
    }
    // Past the CPU's short-row path (`SHORT_CLASSES`): its row kernels, index targets (bf16)
    // and soft.
    out.push((
        "index bf16, 600 classes".into(),
        Case::new(seed + 4, 11, 600, Hardness::ALL)
            .weighted(seed)
            .sample_weighted(seed)
            .ignore_every(4, options.ignore_index)
            .dtype(Dtype::Bf16),
    ));
    out.push((
        "soft, 600 classes".into(),
        Case::new(
            seed + 5,
            7,
            600,
            Hardness {
                outliers: true,
                masked: false,
                non_finite: true,
            },
        )
        .soft(seed + 5)
        .weighted(seed + 5)
        .sample_weighted(seed + 5),
    ));
    out.push((
        "(N, C, d) f16".into(),
        Case::new(
            seed + 1,
            3 * 10,
            21,
            Hardness {
                outliers: true,
                masked: true,
                non_finite: false,
            },
        )
        .weighted(seed)
        .sample_weighted(seed + 1)
        .ignore_every(3, options.ignore_index)
        .dtype(Dtype::F16)
        .class_dim1(10),
    ));
    out.push((
        "soft".into(),
        Case::new(
            seed + 2,
            19,
            77,
            Hardness {
                outliers: true,
                masked: false,
                non_finite: true,
            },
        )
        .soft(seed)
        .weighted(seed + 2)
        .sample_weighted(seed + 2),
    ));
    out.push((
        "(N, C, d) soft".into(),
        Case::new(seed + 3, 2 * 6, 5, Hardness::default())
            .soft(seed + 1)
            .sample_weighted(seed + 3)
            .class_dim1(6),
    ));
    out
}

/// Focal loss on probability inputs with the options that apply to them (section 2b: no
/// z-loss, softcap or scale).
fn probability_focal_grid() -> Vec<CrossEntropy> {
    let base = CrossEntropy::new().input(InputKind::Probabilities { eps: 1e-6 });
    let mut out = vec![];
    for gamma in [0.5f32, 2.0] {
        let f = base.focal_gamma(gamma);
        out.extend([
            f,
            f.label_smoothing(0.1),
            f.label_smoothing(0.2).reduction(Reduction::None),
            f.ignore_index(3).reduction(Reduction::Sum),
        ]);
    }
    // And without focal loss (the CPU's path with one `ln` a row and no per-class gradient).
    out.extend([base, base.label_smoothing(0.1)]);
    out
}

/// Probability inputs (softmax outputs with exact zeros, which the clamp catches): index
/// targets with class and sample weights and ignored rows, and soft targets.
fn probability_cases(options: &CrossEntropy, seed: u64) -> Vec<(String, Case)> {
    let hard = Hardness {
        outliers: true,
        masked: true,
        non_finite: false,
    };
    vec![
        (
            "probabilities index".into(),
            Case::new(seed, 23, 40, hard)
                .probabilities()
                .weighted(seed)
                .sample_weighted(seed)
                .ignore_every(4, options.ignore_index),
        ),
        (
            "probabilities index, no metrics".into(),
            Case::new(seed + 2, 19, 40, hard)
                .probabilities()
                .weighted(seed + 2)
                .ignore_every(3, options.ignore_index)
                .without_metrics(),
        ),
        (
            "probabilities soft".into(),
            Case::new(seed + 1, 17, 33, hard)
                .probabilities()
                .soft(seed)
                .weighted(seed + 1)
                .sample_weighted(seed + 1),
        ),
    ]
}

fn bce_cases(seed: u64) -> Vec<(String, Case)> {
    let hard = Hardness {
        outliers: true,
        ..Hardness::default()
    };
    vec![
        (
            "f32".into(),
            Case::new(seed, 15, 41, hard)
                .multi_label(seed, false)
                .sample_weighted(seed),
        ),
        (
            "bf16 weighted".into(),
            Case::new(seed + 1, 15, 41, hard)
                .multi_label(seed, true)
                .sample_weighted(seed + 1)
                .dtype(Dtype::Bf16),
        ),
        (
            "(N, C, d) f16".into(),
            Case::new(seed + 2, 15, 41, hard)
                .multi_label(seed, true)
                .sample_weighted(seed + 2)
                .dtype(Dtype::F16)
                .class_dim1(5),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// CPU.
// ---------------------------------------------------------------------------------------------

/// Every backend of the matrix and gradient mode against the reference (the upstream of
/// `Reduction::None` rows as `row_upstream` gives it).
fn check(label: &str, case: &Case, options: &CrossEntropy) {
    let upstream = row_upstream(options, case.rows);
    check_every_backend(label, case, options, upstream.as_deref());
}

#[test]
fn focal_against_reference() {
    for (k, options) in focal_grid().iter().enumerate() {
        for (what, case) in softmax_cases(options, 100 + k as u64) {
            check(&format!("{what} {options:?}"), &case, options);
        }
    }
}

#[test]
fn probability_focal_against_reference() {
    for (k, options) in probability_focal_grid().iter().enumerate() {
        for (what, case) in probability_cases(options, 400 + k as u64) {
            check(&format!("{what} {options:?}"), &case, options);
        }
    }
}

#[test]
fn sample_weights_against_reference() {
    for (k, options) in sample_weight_grid().iter().enumerate() {
        for (what, case) in softmax_cases(options, 200 + k as u64) {
            check(&format!("{what} {options:?}"), &case, options);
        }
    }
    // Probability inputs take sample weights too.
    let mut options = CrossEntropy::new().input(InputKind::Probabilities { eps: 1e-6 });
    options.label_smoothing = 0.1;
    let probs = Case::new(
        8,
        23,
        40,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .probabilities()
    .weighted(2)
    .sample_weighted(3)
    .ignore_every(4, -100);
    check("probabilities", &probs, &options);
}

#[test]
fn long_rows() {
    // Rows longer than one SIMD chunk, where the focal pass re-reads the row from cache.
    let case = Case::new(
        21,
        5,
        5000,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .weighted(1)
    .sample_weighted(2);
    for options in [
        CrossEntropy::new().focal_gamma(2.0),
        CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
    ] {
        check("5×5000", &case, &options);
    }
}

#[test]
fn bce_against_reference() {
    for (k, options) in bce_grid().iter().enumerate() {
        for (what, case) in bce_cases(300 + k as u64) {
            for path in every_backend() {
                check_bce(&format!("bce {what} {options:?}"), &path, &case, options);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Both backends: sample weights with z-loss and with BCE's per-element upstream.
// ---------------------------------------------------------------------------------------------

/// The backend matrix without its small-binding devices (which refuse some long-row options
/// with a typed error; `tests/exactness.rs` and `tests/windows.rs` cover them).
fn every_backend() -> Vec<common::backends::Path> {
    common::backends::backends(32 << 10)
        .into_iter()
        .filter(|p| !p.small_bindings)
        .collect()
}

#[test]
fn z_loss_mean_with_sample_weights_divides_by_their_valid_sum() {
    // The mean divides the cross-entropy terms by D = Σ_valid s·w[y] and the z-loss term by
    // Σ_valid s (Batch::sample_weights). Two classes, class weights (1, 3), sample weights
    // (2, 0.5, 7), targets (0, 1, ignored), λ = 0.1 (f32: 0.10000000149):
    //   row 0: z = (0, 0),    p = (1/2, 1/2), lse = ln 2, ce = ln 2
    //   row 1: z = (ln 3, 0), p = (3/4, 1/4), lse = ln 4, ce = −3·ln(1/4) = 3·ln 4
    //   D = 2·1 + 0.5·3 = 3.5, Σ s·ce = 2·ln 2 + 1.5·ln 4 = 5·ln 2: 5·ln 2/3.5 = 0.9902102579
    //   Σ_valid s = 2.5, Σ s·λ·lse² = λ·(2·ln²2 + 0.5·ln²4) = 4λ·ln²2: /2.5 = 0.0768724834
    //   mean = 1.0670827413 (dividing the z-loss by V = 2 would give 1.0863008622, by D
    //   1.0451191746, so the choice shows).
    //   dz = (s/D)·w[y]·(p − onehot) + (s/2.5)·2λ·lse·p:
    //   row 0: (2/3.5)·(−1/2, 1/2) + 0.8·0.2·ln 2·(1/2, 1/2) = (−0.2302625104, 0.3411660610)
    //   row 1: (0.5/3.5)·3·(3/4, −3/4) + 0.2·0.2·ln 4·(3/4, 1/4) = (0.3630174029, −0.3075656276)
    let x = [0.0f32, 0.0, 3f32.ln(), 0.0, 0.0, 0.0];
    let y = [0i64, 1, -100];
    let w = [1.0f32, 3.0];
    let s = [2.0f32, 0.5, 7.0];
    let options = CrossEntropy::new().z_loss(0.1);
    let batch = || {
        Batch::new(Logits::new(&x, 3, 2), &y[..])
            .class_weights(&w)
            .sample_weights(&s)
    };
    let loss = 1.0670827413;
    let gradient = [
        -0.2302625104,
        0.3411660610,
        0.3630174029,
        -0.3075656276,
        0.0,
        0.0,
    ];
    // (ln 3 is rounded to f32 in the logits: the reference is within 1e-8 of these.)
    let r = reference::cross_entropy(&options, &batch(), None).unwrap();
    assert!((r.loss.unwrap() - loss).abs() < 1e-7, "{:?}", r.loss);
    for (a, b) in r.gradient.iter().zip(gradient) {
        assert!((a - b).abs() < 1e-7, "{:?}", r.gradient);
    }
    for common::backends::Path { backend, .. } in every_backend() {
        let label = backend.name();
        let mut g = [0f32; 6];
        let out = options
            .compute(&backend, batch(), Request::new().gradient_into(&mut g))
            .unwrap();
        assert_close(&label, &[out.loss.unwrap()], &[loss], 0.0, 1e-6);
        assert_close(&label, &g, &gradient, 1e-7, 1e-5);
    }
    // Random cases, mean and sum, with smoothing and focal loss, against the reference.
    for (k, o) in [
        CrossEntropy::new().z_loss(1e-2),
        CrossEntropy::new().z_loss(1e-2).label_smoothing(0.1),
        CrossEntropy::new().z_loss(1e-2).focal_gamma(2.0),
        CrossEntropy::new()
            .z_loss(1e-2)
            .reduction(Reduction::Sum)
            .ignore_index(1),
    ]
    .iter()
    .enumerate()
    {
        let case = Case::new(500 + k as u64, 29, 57, Hardness::ALL)
            .weighted(k as u64)
            .sample_weighted(k as u64)
            .ignore_every(3, o.ignore_index);
        check(&format!("z-loss, sample weights {o:?}"), &case, o);
        if let Some(gpu) = gpu() {
            check_gpu(&format!("z-loss, sample weights {o:?}"), &gpu, &case, o);
        }
    }
}

#[test]
fn bce_none_upstream_with_sample_weights() {
    // Reduction::None with an upstream gradient per element and sample weights per row: each
    // element's gradient is u·s[n]·dloss/dx. By hand, x = 0 and y = 1 everywhere (loss ln 2,
    // dloss/dx = σ(0) − 1 = −1/2), two rows × two classes, s = (3, 1),
    // u = (1, 2, 0.5, −1): losses s·ln 2 = (3 ln 2, 3 ln 2, ln 2, ln 2) and
    // gradient −u·s/2 = (−1.5, −3, −0.25, 0.5).
    let x = [0.0f32; 4];
    let t = [1.0f32; 4];
    let sw = [3.0f32, 1.0];
    let u = [1.0f32, 2.0, 0.5, -1.0];
    let ln2 = 2f64.ln();
    let options = BinaryCrossEntropy::new().reduction(Reduction::None);
    for common::backends::Path { backend, .. } in every_backend() {
        let label = backend.name();
        let mut g = [0f32; 4];
        let mut request = Request::new().gradient_into(&mut g);
        request.upstream = Some(&u);
        let out = options
            .compute(
                &backend,
                Batch::new(Logits::new(&x, 2, 2), &t[..]).sample_weights(&sw),
                request,
            )
            .unwrap();
        assert_close(
            &label,
            out.row_losses.as_ref().unwrap(),
            &[3.0 * ln2, 3.0 * ln2, ln2, ln2],
            0.0,
            1e-6,
        );
        assert_close(&label, &g, &[-1.5, -3.0, -0.25, 0.5], 0.0, 1e-6);
    }
    // Against the reference: plain BCE (the CPU's fast path), weight and pos_weight, the
    // (N, C, d) layout, smoothing and focal factors, both gradient modes.
    let base = BinaryCrossEntropy::new().reduction(Reduction::None);
    for (k, options) in [
        base,
        base.label_smoothing(0.1),
        base.focal_gamma(2.0).focal_alpha(0.25),
    ]
    .iter()
    .enumerate()
    {
        for (what, case) in bce_cases(600 + k as u64) {
            assert!(case.sample_weights.is_some());
            for path in every_backend() {
                check_bce(
                    &format!("bce none {what} {options:?}"),
                    &path,
                    &case,
                    options,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU.
// ---------------------------------------------------------------------------------------------

fn on(gpu: &Arc<Gpu>) -> impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<xent::Output> + '_ {
    move |o, b, r| o.compute(&Backend::Gpu(gpu.clone()), b, r)
}

/// GPU against the reference in every gradient mode.
fn check_gpu(label: &str, gpu: &Arc<Gpu>, case: &Case, options: &CrossEntropy) {
    let upstream = row_upstream(options, case.rows);
    let reference = case.reference(options, upstream.as_deref());
    for mode in [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace] {
        let run = run_softmax(case, options, upstream.as_deref(), mode, on(gpu));
        check_softmax(
            &format!("{label} [{gpu:?}, {mode:?}]"),
            case,
            options,
            &run,
            &reference,
        );
    }
}

#[test]
fn gpu_long_rows_split_and_chunked() {
    let Some(gpu) = gpu() else { return };
    // Few long rows: the partials pass splits them, the focal pass takes each row whole.
    assert!(xent::gpu::launch_shape(4, 70_000, Layout::Rows).splits > 1);
    let long = Case::new(
        21,
        4,
        70_000,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .weighted(1)
    .sample_weighted(2);
    for options in [
        CrossEntropy::new().focal_gamma(2.0),
        CrossEntropy::new().focal_gamma(0.5).label_smoothing(0.1),
    ] {
        check_gpu("4×70000", &gpu, &long, &options);
    }
    // 64 KiB bindings force many chunks: every pass's row offsets, fused and three-pass.
    for small in small_bindings(64 << 10) {
        chunked_focal_on(&small);
    }
    // (BCE is not chunked here: its per-element sums take as many bytes as f32 logits, so a
    // BCE call that needs chunks is refused before it runs.)
}

fn chunked_focal_on(small: &Arc<Gpu>) {
    let case = Case::new(10, 203, 301, Hardness::ALL)
        .weighted(2)
        .sample_weighted(3)
        .dtype(Dtype::F16);
    for options in [
        CrossEntropy::new().focal_gamma(2.0),
        CrossEntropy::new().focal_gamma(1.5).label_smoothing(0.05),
        CrossEntropy::new().z_loss(1e-3),
    ] {
        check_gpu("chunked", small, &case, &options);
    }
    let soft = Case::new(12, 150, 130, Hardness::default())
        .soft(3)
        .sample_weighted(4);
    check_gpu(
        "chunked soft",
        small,
        &soft,
        &CrossEntropy::new().focal_gamma(2.0),
    );
    let spatial = Case::new(11, 40 * 12, 9, Hardness::default())
        .sample_weighted(5)
        .class_dim1(12);
    check_gpu(
        "chunked (N, C, d)",
        small,
        &spatial,
        &CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
    );
}

#[test]
fn gpu_device_resident_calls_take_the_new_options() {
    if gpu().is_none() {
        return;
    }
    for three_pass in [false, true] {
        // A device of its own: host-slice calls of other tests clear the shared target-error flag.
        let gpu = Gpu::with_options(GpuOptions {
            three_pass,
            ..Default::default()
        })
        .unwrap();
        device_resident_focal_on(gpu);
    }
}

fn device_resident_focal_on(gpu: Gpu) {
    let case = Case::new(15, 50, 129, Hardness::default())
        .weighted(2)
        .sample_weighted(3)
        .ignore_every(6, -100);
    let uploaded = DeviceCase::upload(&gpu, &case);
    let loss = buffer(&gpu, &[0u8; 16]);
    let grad = buffer(&gpu, &vec![0u8; 50 * 129 * 4]);
    let batch = uploaded.batch();
    let outputs = DeviceOutputs {
        loss: loss.slice(..),
        rows: None,
        gradient: DeviceGradient::Into(grad.slice(..)),
        upstream: None,
        upstream_scalar: 1.0,
        target_error: None,
        saved: None,
    };
    for options in [
        CrossEntropy::new().focal_gamma(2.0),
        CrossEntropy::new()
            .focal_gamma(1.0)
            .label_smoothing(0.1)
            .z_loss(1e-3),
        CrossEntropy::new().label_smoothing(0.1),
    ] {
        let reference = case.reference(&options, None);
        record_and_submit(&gpu, &options, &batch, &outputs);
        let label = format!("device {options:?}");
        check_loss_and_gradient(&gpu, &label, &loss, &grad, &reference);
    }
    assert_eq!(gpu.take_target_error().unwrap(), None);
    // A bad target is still flagged (by the partials pass now), with focal loss on.
    let bad_targets = bad_targets(&gpu, &case.index_targets);
    record_and_submit(
        &gpu,
        &CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
        &DeviceBatch {
            targets: DeviceTargets::I64(bad_targets.slice(..)),
            ..batch
        },
        &outputs,
    );
    assert_eq!(gpu.take_target_error().unwrap(), Some(17));
    // A sample-weight buffer shorter than the rows is a typed error.
    let short = buffer(&gpu, &[0u8; 64]);
    let e = gpu
        .record_cross_entropy(
            &mut gpu.device().create_command_encoder(&Default::default()),
            &CrossEntropy::new(),
            &DeviceBatch {
                sample_weights: Some(short.slice(..)),
                ..batch
            },
            &outputs,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");

    // BCE on the device: smoothing, focal γ and α, sample weights.
    let bce_case = Case::new(16, 20, 33, Hardness::default())
        .multi_label(3, true)
        .sample_weighted(4);
    let options = BinaryCrossEntropy::new()
        .label_smoothing(0.1)
        .focal_gamma(2.0)
        .focal_alpha(0.25);
    let reference = bce_case.reference_bce(&options, None);
    let bce_device = DeviceCase::upload(&gpu, &bce_case);
    let g = buffer(&gpu, &vec![0u8; 20 * 33 * 4]);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_binary_cross_entropy(
        &mut encoder,
        &options,
        &bce_device.batch(),
        &DeviceOutputs {
            gradient: DeviceGradient::Into(g.slice(..)),
            ..outputs
        },
    )
    .unwrap();
    gpu.queue().submit([encoder.finish()]);
    assert_close(
        "device bce loss",
        &read(&gpu, &loss)[..1],
        &[reference.loss.unwrap()],
        1e-5,
        1e-5,
    );
    assert_close(
        "device bce gradient",
        &read(&gpu, &g),
        &reference.gradient,
        1e-6,
        1e-4,
    );
}
