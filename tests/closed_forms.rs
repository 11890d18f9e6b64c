//! Closed forms and PyTorch's edge cases on every backend of the matrix (`common::backends`):
//! uniform logits give `ln C`, log-probabilities give `−ln p`, the mean's gradient rows sum to
//! zero, the gradient written in place is the separate one rounded, empty batches, all rows
//! ignored, one class, and the non-finite rows of SEMANTICS.md section 6 (hand-derived
//! numbers, no reference needed).

mod common;

use common::*;
use xent::{Batch, CrossEntropy, Dtype, InputKind, Logits, Reduction, Request};

#[test]
fn uniform_logits_give_log_c() {
    for classes in [1usize, 2, 3, 7, 10, 100, 1000, 4097, 32000] {
        let logits = vec![0.25f32; 3 * classes];
        let targets = [0i64, (classes - 1) as i64, (classes / 2) as i64];
        for path in backends::backends(32 << 10) {
            let out = CrossEntropy::new()
                .compute(
                    &path.backend,
                    Batch::new(Logits::new(&logits, 3, classes), &targets[..]),
                    Request::new().lse(),
                )
                .unwrap();
            let expected = (classes as f64).ln();
            assert!(
                (out.loss.unwrap() as f64 - expected).abs() <= 1e-5 * expected.max(1.0),
                "C={classes} {}",
                path.name
            );
            for &lse in out.lse.as_ref().unwrap() {
                assert!((lse as f64 - (0.25 + expected)).abs() < 1e-5 * (0.25 + expected));
            }
        }
    }
}

#[test]
fn log_probabilities_give_minus_log_p() {
    // logits = ln p for p = [0.33, 0.42, 0.25], target 0: loss = −ln 0.33 = 1.1087.
    let logits = [0.33f32.ln(), 0.42f32.ln(), 0.25f32.ln()];
    for path in backends::backends(32 << 10) {
        let out = CrossEntropy::new()
            .compute(
                &path.backend,
                Batch::new(Logits::new(&logits, 1, 3), &[0i32][..]),
                Request::new().metrics(),
            )
            .unwrap();
        assert!(
            (out.loss.unwrap() - 1.1087).abs() < 1e-4,
            "{}: {:?}",
            path.name,
            out.loss
        );
        let m = out.metrics.unwrap();
        assert_eq!(m.argmax, vec![1]);
        assert!((m.target_prob[0] - 0.33).abs() < 1e-6);
        // The same numbers through probability inputs.
        let probs = [0.33f32, 0.42, 0.25];
        let out = CrossEntropy::new()
            .input(InputKind::PROBABILITIES)
            .compute(
                &path.backend,
                Batch::new(Logits::new(&probs, 1, 3), &[0i32][..]),
                Request::new(),
            )
            .unwrap();
        assert!((out.loss.unwrap() - 1.1087).abs() < 1e-4, "{}", path.name);
    }
}

#[test]
fn mean_gradient_rows_sum_to_zero() {
    let case = Case::new(
        7,
        64,
        1000,
        Hardness {
            outliers: true,
            ..Hardness::default()
        },
    );
    for path in backends::backends(32 << 10) {
        for (label, options) in [
            ("plain", CrossEntropy::new()),
            ("smoothing", CrossEntropy::new().label_smoothing(0.3)),
        ] {
            let run = run_softmax(&case, &options, None, GradMode::OutOfPlace, |o, b, r| {
                o.compute(&path.backend, b, r)
            });
            let g = run.gradient.unwrap();
            for r in 0..case.rows {
                let s: f64 = g[r * 1000..(r + 1) * 1000].iter().map(|&v| v as f64).sum();
                assert!(
                    s.abs() < 1e-7,
                    "{label} [{}]: row {r} sums to {s}",
                    path.name
                );
            }
        }
    }
}

#[test]
fn in_place_and_out_of_place_agree() {
    for path in backends::backends(32 << 10) {
        for dtype in [Dtype::F32, Dtype::F16] {
            let case = Case::new(99, 33, 517, Hardness::ALL)
                .weighted(1)
                .dtype(dtype);
            let options = CrossEntropy::new().label_smoothing(0.05).z_loss(1e-3);
            let run = |mode| {
                run_softmax(&case, &options, None, mode, |o, b, r| {
                    o.compute(&path.backend, b, r)
                })
            };
            let (a, b) = (run(GradMode::OutOfPlace), run(GradMode::InPlace));
            let rounded: Vec<f64> = a
                .gradient
                .unwrap()
                .iter()
                .map(|&v| {
                    if dtype == Dtype::F16 {
                        half::f16::from_f32(v).to_f32() as f64
                    } else {
                        v as f64
                    }
                })
                .collect();
            assert_close(
                &format!("in place vs out of place {dtype:?} [{}]", path.name),
                &b.gradient.unwrap(),
                &rounded,
                0.0,
                0.0,
            );
            // The loss and LSE to the bit; the GPU's in-place shader is a variant of its own,
            // whose metrics (entropy, confidence) may round differently.
            let (x, y) = (&a.output, &b.output);
            let bits = |v: &Option<Vec<f32>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(x.loss.map(f32::to_bits), y.loss.map(f32::to_bits));
            assert_eq!(bits(&x.row_losses), bits(&y.row_losses), "{}", path.name);
            assert_eq!(bits(&x.lse), bits(&y.lse), "{}", path.name);
            if !path.name.starts_with("gpu") {
                assert_eq!(format!("{x:?}"), format!("{y:?}"), "{}", path.name);
            }
        }
    }
}

#[test]
fn degenerate_shapes() {
    for path in backends::backends(32 << 10) {
        // N = 0: none is empty, sum is 0, mean is NaN.
        let empty: [f32; 0] = [];
        let no_targets: [i64; 0] = [];
        let call = |reduction| {
            CrossEntropy::new()
                .reduction(reduction)
                .compute(
                    &path.backend,
                    Batch::new(Logits::new(&empty, 0, 5), &no_targets[..]),
                    Request::new(),
                )
                .unwrap()
        };
        assert_eq!(call(Reduction::None).row_losses, Some(vec![]));
        assert_eq!(call(Reduction::Sum).loss, Some(0.0));
        assert!(call(Reduction::Mean).loss.unwrap().is_nan());
        // All rows ignored.
        let logits = [1.0f32, 2.0, 3.0, 4.0];
        let ignored = [-100i64, -100];
        let out = CrossEntropy::new()
            .compute(
                &path.backend,
                Batch::new(Logits::new(&logits, 2, 2), &ignored[..]),
                Request::new(),
            )
            .unwrap();
        assert!(out.loss.unwrap().is_nan());
        // C = 1: loss 0 plus z-loss λ·z².
        let one = [3.0f32];
        let out = CrossEntropy::new()
            .z_loss(0.5)
            .compute(
                &path.backend,
                Batch::new(Logits::new(&one, 1, 1), &[0i64][..]),
                Request::new(),
            )
            .unwrap();
        assert!((out.loss.unwrap() - 4.5).abs() < 1e-6);
    }
}

#[test]
fn non_finite_rows_follow_pytorch() {
    let inf = f32::INFINITY;
    let rows: [([f32; 3], i64, f32); 5] = [
        (
            [f32::NEG_INFINITY, 1.0, 2.0],
            1,
            1.0f32.exp().recip() * 0.0 + (1.0 + 1f32.exp()).ln(),
        ), // masked class: fine
        ([f32::NEG_INFINITY, 1.0, 2.0], 0, inf), // target masked: +inf
        ([f32::NEG_INFINITY; 3], 0, f32::NAN),   // all masked: NaN
        ([inf, 1.0, 2.0], 1, f32::NAN),          // +inf: NaN
        ([f32::NAN, 1.0, 2.0], 1, f32::NAN),     // NaN: NaN
    ];
    for path in backends::backends(32 << 10) {
        for (x, y, expected) in rows {
            let out = CrossEntropy::new()
                .reduction(Reduction::None)
                .compute(
                    &path.backend,
                    Batch::new(Logits::new(&x, 1, 3), &[y][..]),
                    Request::new(),
                )
                .unwrap();
            let got = out.row_losses.unwrap()[0];
            assert!(
                got.to_bits() == expected.to_bits()
                    || (got.is_nan() && expected.is_nan())
                    || (got - expected).abs() < 1e-5,
                "{} {x:?} → {got}, expected {expected}",
                path.name
            );
        }
        // ε > 0 with a masked class: +inf loss, finite gradient −(ε/C)·w on the masked class.
        let x = [f32::NEG_INFINITY, 1.0, 2.0];
        let mut grad = [0f32; 3];
        let out = CrossEntropy::new()
            .label_smoothing(0.3)
            .compute(
                &path.backend,
                Batch::new(Logits::new(&x, 1, 3), &[1i64][..]),
                Request::new().gradient_into(&mut grad),
            )
            .unwrap();
        assert_eq!(out.loss, Some(inf));
        assert!((grad[0] + 0.1).abs() < 1e-7, "{grad:?}");
    }
}

#[test]
fn a_zero_sample_weight_leaves_an_infinite_row_out() {
    // Row 0's target is masked (loss +inf) and its sample weight 0: a zero coefficient never
    // meets an infinity (SEMANTICS.md section 6), so it adds 0. Row 1: uniform logits, ln 3.
    // Row 2 holds a NaN logit: NaN whatever its weight.
    let inf = f32::INFINITY;
    let logits = [-inf, 1.0, 2.0, 0.5, 0.5, 0.5, f32::NAN, 1.0, 2.0];
    let ln3 = 3f32.ln();
    for path in backends::backends(32 << 10) {
        for classes_dim1 in [false, true] {
            // The (N, C, d…) layout with d = 1 is the same rows.
            let batch = |rows: usize, weights: &'static [f32]| {
                let logits = match classes_dim1 {
                    false => Logits::new(&logits[..rows * 3], rows, 3),
                    true => Logits::class_dim1(&logits[..rows * 3], rows, 3, 1),
                };
                Batch::new(logits, &[0i64, 1, 1][..rows]).sample_weights(&weights[..rows])
            };
            let name = format!("{} class_dim1={classes_dim1}", path.name);
            for (reduction, expected) in [(Reduction::Sum, ln3), (Reduction::Mean, ln3)] {
                let mut grad = [7f32; 6];
                let out = CrossEntropy::new()
                    .reduction(reduction)
                    .compute(
                        &path.backend,
                        batch(2, &[0.0, 1.0, 1.0]),
                        Request::new().gradient_into(&mut grad),
                    )
                    .unwrap();
                let loss = out.loss.unwrap();
                assert!(
                    (loss - expected).abs() < 1e-6,
                    "{name} {reduction:?}: {loss}"
                );
                assert_eq!(grad[..3], [0.0; 3], "{name}: the weightless row's gradient");
                assert!(grad[3..].iter().all(|g| g.is_finite()), "{name}: {grad:?}");
            }
            let out = CrossEntropy::new()
                .reduction(Reduction::None)
                .compute(&path.backend, batch(3, &[0.0, 1.0, 0.0]), Request::new())
                .unwrap();
            let rows = out.row_losses.unwrap();
            assert_eq!(rows[0], 0.0, "{name}: {rows:?}");
            assert!((rows[1] - ln3).abs() < 1e-6, "{name}: {rows:?}");
            assert!(rows[2].is_nan(), "{name}: {rows:?}");
        }
    }
}

#[test]
fn a_zero_sample_weight_leaves_an_infinite_long_row_out() {
    // As above with 100 classes (the CPU row kernels rather than the short-row lanes).
    let mut logits = vec![0.25f32; 200];
    logits[0] = f32::NEG_INFINITY;
    for path in backends::backends(32 << 10) {
        for reduction in [Reduction::Sum, Reduction::Mean] {
            let out = CrossEntropy::new()
                .reduction(reduction)
                .label_smoothing(0.1)
                .compute(
                    &path.backend,
                    Batch::new(Logits::new(&logits, 2, 100), &[0i64, 3][..])
                        .sample_weights(&[0.0, 2.0]),
                    Request::new(),
                )
                .unwrap();
            // Row 1: uniform logits, every log p = −ln 100; sum 2·ln 100, mean ln 100.
            let expected = match reduction {
                Reduction::Sum => 2.0 * 100f32.ln(),
                _ => 100f32.ln(),
            };
            let loss = out.loss.unwrap();
            assert!(
                (loss - expected).abs() < 1e-5,
                "{} {reduction:?}: {loss}",
                path.name
            );
        }
    }
}
