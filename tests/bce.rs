//! Binary cross-entropy with logits (SEMANTICS.md section 4) on every backend of the matrix
//! (`common::backends`): every reduction, class weights and `pos_weight`, the (N, C, d…)
//! layout, f32/f16/bf16, the gradient into a buffer and in place, a per-element upstream for
//! `Reduction::None`, against the f64 reference. Focal BCE, label smoothing and sample weights
//! are in `tests/focal.rs`.

mod common;

use common::backends::backends;
use common::*;
use xent::{BinaryCrossEntropy, Dtype, Reduction};

#[test]
fn bce_against_reference() {
    for path in backends(4096) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for (weights, spatial, dtype) in [
                (false, None, Dtype::F32),
                (true, None, Dtype::Bf16),
                (true, Some(5), Dtype::F16),
                (true, Some(3), Dtype::F32),
            ] {
                let options = BinaryCrossEntropy::new().reduction(reduction);
                let hard = Hardness {
                    outliers: true,
                    ..Hardness::default()
                };
                let mut case = Case::new(13, 15, 41, hard)
                    .multi_label(4, weights)
                    .dtype(dtype);
                if let Some(s) = spatial {
                    case = case.class_dim1(s);
                }
                let label = format!("bce {reduction:?} weights={weights} {spatial:?} {dtype:?}");
                check_bce(&label, &path, &case, &options);
            }
        }
    }
}

/// Per-element losses (`Reduction::None`) of calls over several CPU blocks of 65 536
/// elements, each block writing its rows into the output's column in place: rows, and the
/// (N, C, d…) layout (a block of whole samples, the last one partial), each element's
/// upstream.
#[test]
fn bce_element_losses_across_blocks() {
    for path in backends(64 << 10) {
        for spatial in [None, Some(50)] {
            let mut case = Case::new(19, 3_500, 41, Hardness::default()).multi_label(6, true);
            if let Some(s) = spatial {
                case = case.class_dim1(s);
            }
            let options = BinaryCrossEntropy::new().reduction(Reduction::None);
            check_bce(&format!("bce blocks {spatial:?}"), &path, &case, &options);
        }
    }
}

/// Every way the CPU cuts a block into runs of elements, against the reference: short rows
/// many to a run (3 and 10 classes, runs ending inside a vector), a row a run (1500 classes),
/// rows longer than a run (2049 and 4500 classes, cut within the row), class planes of the
/// (N, C, d…) layout run a class at a time (70 and 2100 positions) or as rows of whole
/// samples (7 and 50 positions, the latter longer than a run); calls of several blocks (the
/// sample weights' and upstream's offsets past the first); with class, `pos_weight` and
/// sample weights (zeros among them), masked and non-finite logits, plain, focal (`γ` whole,
/// 1, fractional, and 17, past the products) and smoothed; f32, bf16 and f16; the gradient
/// into a buffer, in place, and the loss alone.
#[test]
fn bce_runs_of_every_shape() {
    let base = BinaryCrossEntropy::new();
    let options = [
        base.reduction(Reduction::None),
        base.focal_gamma(2.0).focal_alpha(0.25),
        base.focal_gamma(0.5)
            .label_smoothing(0.1)
            .reduction(Reduction::Sum),
        base.focal_gamma(1.0).reduction(Reduction::None),
        base.focal_gamma(17.0).focal_alpha(0.5),
    ];
    let shapes: [(usize, usize, Option<usize>, Dtype); 12] = [
        (1_400, 3, None, Dtype::F32),
        (700, 10, None, Dtype::Bf16),
        (9, 1500, None, Dtype::Bf16),
        (5, 2049, None, Dtype::F32),
        (3, 4500, None, Dtype::F16),
        (4 * 70, 5, Some(70), Dtype::F32),
        (2 * 2100, 3, Some(2100), Dtype::Bf16),
        (30 * 7, 41, Some(7), Dtype::F16),
        (6 * 50, 41, Some(50), Dtype::F32),
        // Several blocks of 65 536 elements.
        (30_000, 3, None, Dtype::F32),
        (20, 4500, None, Dtype::F32),
        (12 * 2100, 3, Some(2100), Dtype::F16),
    ];
    let hard = Hardness::ALL;
    for path in backends(64 << 10) {
        for (k, &(rows, classes, spatial, dtype)) in shapes.iter().enumerate() {
            let seed = 40 + k as u64;
            let mut case = Case::new(seed, rows, classes, hard)
                .multi_label(seed, k % 2 == 0)
                .sample_weighted(seed)
                .dtype(dtype);
            if let Some(s) = spatial {
                case = case.class_dim1(s);
            }
            for o in &options {
                let label = format!("bce runs {rows}x{classes} {spatial:?} {dtype:?} {o:?}");
                check_bce(&label, &path, &case, o);
            }
        }
    }
}

/// Per-element losses and gradients of `y = 0` and `y = 1` over logits from −100 to 100, on
/// every CPU level: losses `softplus(±x)` (0 to 100, and from 1e-44 up) and gradients `σ(x)`
/// and `−σ(−x)` within a relative 4·2⁻²⁴ of the f64 values (a subnormal within 2 of its own
/// size, or flushed to 0): the stable `log1p(exp(−|x|))` keeps its precision where a loss is
/// tiny, and `σ(x) − 1` is taken as `−σ(−x)`, not by cancellation.
#[test]
fn bce_within_ulps() {
    let logits: Vec<f32> = (0..=40_000)
        .map(|i| -100.0 + i as f32 * 0.005)
        .chain([-1e-30, 1e-30, -87.5, 87.5, -88.7, 88.7])
        .collect();
    let rows = logits.len();
    let check = |what: &str, x: f32, got: f32, exact: f64| -> f64 {
        if exact.abs() < f32::MIN_POSITIVE as f64 {
            let slack = 2.0 * exact.abs() + 1.5e-45;
            assert!(
                (got as f64 - exact).abs() <= slack,
                "{what} at {x}: {got} vs {exact}"
            );
            return 0.0;
        }
        let units = (got as f64 - exact).abs() / (exact.abs() * f32::EPSILON as f64 / 2.0);
        assert!(
            units <= 4.0,
            "{what} at {x}: {got} vs {exact} ({units:.2} · 2^-24)"
        );
        units
    };
    for y in [0.0f32, 1.0] {
        let targets = vec![y; rows];
        for path in backends(64 << 10) {
            if !path.name.starts_with("cpu") {
                continue;
            }
            let mut grad = vec![0f32; rows];
            let batch = xent::Batch::new(xent::Logits::new(&logits, rows, 1), &targets[..]);
            let request = xent::Request::new().gradient_into(&mut grad);
            let out = BinaryCrossEntropy::new()
                .reduction(Reduction::None)
                .compute(&path.backend, batch, request)
                .unwrap();
            let losses = out.row_losses.unwrap();
            let (mut loss_worst, mut grad_worst) = (0f64, 0f64);
            for ((&x, &loss), &g) in logits.iter().zip(&losses).zip(&grad) {
                let x64 = x as f64;
                let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
                let (v, dx) = match y {
                    0.0 => (x64, sigmoid(x64)),
                    _ => (-x64, -sigmoid(-x64)),
                };
                let softplus = v.max(0.0) + (-v.abs()).exp().ln_1p();
                let label = format!("{} y={y}", path.name);
                loss_worst = loss_worst.max(check(&format!("{label} loss"), x, loss, softplus));
                grad_worst = grad_worst.max(check(&format!("{label} gradient"), x, g, dx));
            }
            println!(
                "{} y={y}: losses within {loss_worst:.2}, gradients {grad_worst:.2} · 2^-24",
                path.name
            );
        }
    }
}

/// NaN logits meeting zero coefficients (a class weight, a `pos_weight`, a sample weight):
/// each NaN logit's loss and gradient are NaN (SEMANTICS.md section 6), plain, focal (whole
/// and fractional `γ`) and smoothed; the other elements as the reference has them.
#[test]
fn bce_nan_logits_meet_zero_coefficients() {
    let (rows, classes) = (6, 5);
    let mut case = Case::new(7, rows, classes, Hardness::default())
        .multi_label(7, true)
        .sample_weighted(7);
    for r in 0..rows {
        case.logits[r * classes + r % classes] = f32::NAN;
    }
    case.class_weights.as_mut().unwrap()[1] = 0.0;
    case.pos_weight.as_mut().unwrap()[2] = 0.0;
    case.sample_weights.as_mut().unwrap()[3] = 0.0;
    let base = BinaryCrossEntropy::new();
    for path in backends(64 << 10) {
        for options in [
            base.reduction(Reduction::None),
            base.focal_gamma(2.0)
                .focal_alpha(0.25)
                .reduction(Reduction::Sum),
            base.focal_gamma(0.5).label_smoothing(0.1),
        ] {
            check_bce(&format!("bce NaN {options:?}"), &path, &case, &options);
        }
    }
}

/// Fractional focal `γ` on logits far from 0 (`m = 1 − p_t` down to subnormal, where AVX-512's
/// `exp` leaves it): `m^γ` and its derivative stay finite, as the reference has them, on
/// every backend.
#[test]
fn bce_fractional_focal_far_logits() {
    let mut case = Case::new(3, 2, 6, Hardness::default()).multi_label(3, false);
    case.logits = vec![
        -95.0, -100.0, -103.0, 95.0, 100.0, 103.0, -80.0, 80.0, -1.0, 1.0, 0.0, 50.0,
    ];
    case.dense_targets = Some(vec![
        0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0,
    ]);
    let base = BinaryCrossEntropy::new().reduction(Reduction::None);
    for path in backends(64 << 10) {
        for gamma in [0.1, 0.5, 2.5] {
            let options = base.focal_gamma(gamma);
            check_bce(&format!("bce far focal {gamma}"), &path, &case, &options);
        }
    }
}
