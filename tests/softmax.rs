//! Softmax cross-entropy on every backend of the matrix (`common::backends`): the option
//! grid × dtypes × shapes (short rows, rows of 4097 and 128 256 classes), a sweep of shapes
//! from 1 to 50 257 classes, rows around the fused kernel's fit bound, few long rows (split
//! across workgroups on the GPU), the (N, C, d…) layout, soft targets, probability inputs and
//! upstream gradients, in every gradient mode, against the f64 reference; and two runs giving
//! the same bits. Short rows (`C ≤ 512` on the CPU, 200 with a gradient: rows across SIMD lanes) get their own
//! grid, with rows that fill several tiles and a partial one.

mod common;

use common::*;
use xent::gpu::{fused_shape, launch_shape};
use xent::{CrossEntropy, Dtype, InputKind, Layout, Reduction};

#[test]
fn options_dtypes_layouts_against_reference() {
    for (label, options) in option_grid() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            for (rows, classes) in [(7usize, 3usize), (16, 100), (5, 4097), (3, 1)] {
                let case = Case::new(
                    rows as u64 * 31 + classes as u64,
                    rows,
                    classes,
                    Hardness::ALL,
                )
                .weighted(5)
                .ignore_every(4, options.ignore_index)
                .dtype(dtype);
                check_every_backend(
                    &format!("{label} {dtype:?} {rows}×{classes}"),
                    &case,
                    &options,
                    None,
                );
            }
        }
    }
}

#[test]
fn class_dim1_layout_against_reference() {
    for (label, options) in option_grid() {
        for dtype in [Dtype::F32, Dtype::Bf16] {
            let case = Case::new(
                11,
                4 * 9,
                21,
                Hardness {
                    outliers: true,
                    masked: true,
                    non_finite: false,
                },
            )
            .weighted(3)
            .ignore_every(5, options.ignore_index)
            .dtype(dtype)
            .class_dim1(9);
            check_every_backend(
                &format!("{label} (N, C, d) {dtype:?}"),
                &case,
                &options,
                None,
            );
        }
        // Soft targets; in f16 an even number of positions, whose in-place gradient a pair of
        // invocations stores a word at a time on the GPU.
        for dtype in [Dtype::F32, Dtype::F16] {
            let soft = Case::new(12, 2 * 6, 5, Hardness::default())
                .soft(1)
                .dtype(dtype)
                .class_dim1(6);
            check_every_backend(
                &format!("{label} (N, C, d) soft {dtype:?}"),
                &soft,
                &options,
                None,
            );
        }
    }
}

#[test]
fn soft_targets_against_reference() {
    for (label, options) in option_grid() {
        for (rows, classes) in [(9usize, 10usize), (4, 3000)] {
            let case = Case::new(
                3,
                rows,
                classes,
                Hardness {
                    outliers: true,
                    masked: false,
                    non_finite: true,
                },
            )
            .soft(9)
            .weighted(2);
            check_every_backend(
                &format!("soft {label} {rows}×{classes}"),
                &case,
                &options,
                None,
            );
        }
    }
}

#[test]
fn probability_inputs_against_reference() {
    for (label, options) in option_grid() {
        let options = options
            .input(InputKind::Probabilities { eps: 1e-6 })
            .softcap(1.0)
            .logit_scale(1.0);
        let mut options = options;
        options.softcap = None;
        let case = Case::new(
            21,
            12,
            50,
            Hardness {
                outliers: true,
                masked: true,
                non_finite: false,
            },
        )
        .probabilities()
        .weighted(4)
        .ignore_every(3, options.ignore_index);
        check_every_backend(&format!("probabilities {label}"), &case, &options, None);
        let soft = Case::new(22, 6, 9, Hardness::default())
            .probabilities()
            .soft(2);
        check_every_backend(
            &format!("probabilities soft {label}"),
            &soft,
            &options,
            None,
        );
    }
}

#[test]
fn upstream_gradients_against_reference() {
    let case = Case::new(4, 10, 33, Hardness::default())
        .weighted(1)
        .ignore_every(3, -100);
    let per_row: Vec<f32> = (0..10).map(|r| 0.5 + r as f32 * 0.25).collect();
    check_every_backend(
        "none with upstream",
        &case,
        &CrossEntropy::new()
            .reduction(Reduction::None)
            .label_smoothing(0.1),
        Some(&per_row),
    );
    check_every_backend(
        "mean with upstream",
        &case,
        &CrossEntropy::new().z_loss(1e-2),
        Some(&[2.5]),
    );
    // (N, C, d…) in bf16, an even number of positions: on the GPU each invocation also
    // writes its neighbour's gradient, with that row's upstream.
    let spatial = Case::new(5, 3 * 8, 7, Hardness::default())
        .dtype(Dtype::Bf16)
        .class_dim1(8);
    let per_row: Vec<f32> = (0..24).map(|r| 0.5 + r as f32 * 0.25).collect();
    check_every_backend(
        "none with upstream, (N, C, d) bf16",
        &spatial,
        &CrossEntropy::new().reduction(Reduction::None),
        Some(&per_row),
    );
}

#[test]
fn llama3_vocabulary_rows() {
    // A few rows at C = 128 256, every level.
    let case = Case::new(
        128,
        3,
        128_256,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .weighted(8);
    check_every_backend(
        "C=128256",
        &case,
        &CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4),
        None,
    );
}

#[test]
fn confident_rows_keep_gradient_precision() {
    // Found by the property test: C = 2 with scaled logits puts p[y] within 1e-4 of 1, where
    // exp(z − lse) with an f32 lse of ~20 lost an ulp of lse (2e-6) in the gradient. The
    // backward now uses exp((z − max) − ln s).
    let options = CrossEntropy::new()
        .reduction(Reduction::Sum)
        .logit_scale(1.9721673);
    let case = Case::new(121034385135732010, 66, 2, Hardness::default())
        .ignore_every(7, -100)
        .weighted(121034385135732010);
    check_every_backend("confident rows", &case, &options, None);
}

#[test]
fn entropy_of_large_logits() {
    // Logits near 1000 (ulp 6e-5): an entropy taken as lse − Σ p·z from uncentred sums loses
    // ~1e-3 to f32 rounding; the forward keeps Σ e·(z − m) instead. Found by the property
    // test (scaled outliers). Short rows (fused on the GPU) and long ones (split partials).
    for classes in [300, 3000, 40_000] {
        let mut case = Case::new(3, 6, classes, Hardness::default());
        for v in &mut case.logits {
            *v = 4.0 * *v + 1000.0;
        }
        let label = format!("entropy of large logits, C = {classes}");
        check_every_backend(&label, &case, &CrossEntropy::new(), None);
    }
}

#[test]
fn shapes_from_one_class_to_a_vocabulary() {
    let options = [
        CrossEntropy::new(),
        CrossEntropy::new()
            .label_smoothing(0.1)
            .z_loss(1e-3)
            .reduction(Reduction::Sum),
    ];
    for classes in [1usize, 2, 3, 7, 10, 100, 1000, 4097, 32_000, 50_257] {
        for rows in [0usize, 1, 7, 64] {
            if rows * classes > 400_000 {
                continue;
            }
            let case = Case::new((rows * 7 + classes) as u64, rows, classes, Hardness::ALL)
                .ignore_every(5, -100);
            for (i, o) in options.iter().enumerate() {
                // i32 targets on the second option set.
                let case = if i == 1 {
                    case.clone().i32_targets()
                } else {
                    case.clone()
                };
                check_every_backend_in(
                    &format!("{rows}×{classes} options {i}"),
                    &case,
                    o,
                    None,
                    &[GradMode::OutOfPlace],
                );
            }
        }
    }
}

#[test]
fn rows_around_the_fused_fit_bound() {
    // A row fits the GPU's fused kernel up to 16 logits per invocation: 4096 classes.
    for (classes, invocations) in [(1, 1), (16, 1), (17, 2), (100, 8), (1000, 64), (4096, 256)] {
        assert_eq!(
            fused_shape(classes, Layout::Rows).map(|s| s.invocations_per_row),
            Some(invocations)
        );
    }
    assert_eq!(fused_shape(4097, Layout::Rows), None);
    // The (N, C, d…) layout: one invocation per row whatever C (past 16 classes, streamed).
    for classes in [7, 21, 5000] {
        let shape = fused_shape(classes, Layout::ClassDim1 { spatial: 3 });
        assert_eq!(shape.map(|s| s.invocations_per_row), Some(1));
    }
    let grid = [
        CrossEntropy::new(),
        CrossEntropy::new()
            .label_smoothing(0.1)
            .z_loss(1e-3)
            .softcap(20.0)
            .reduction(Reduction::Sum),
        CrossEntropy::new()
            .logit_scale(0.7)
            .z_loss(1e-4)
            .reduction(Reduction::None),
        // Focal loss without smoothing is fused; with smoothing it needs the focal pass.
        CrossEntropy::new().focal_gamma(2.0).z_loss(1e-4),
        CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
    ];
    for classes in [1usize, 2, 3, 7, 10, 100, 1000, 2047, 4095, 4096, 4097] {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let case = Case::new(classes as u64, 9, classes, Hardness::ALL)
                .weighted(classes as u64)
                .sample_weighted(3)
                .ignore_every(4, -100)
                .dtype(dtype);
            for options in &grid {
                let upstream = (options.reduction == Reduction::None).then(|| {
                    (0..9)
                        .map(|i| (i % 5) as f32 * 0.3 - 0.2)
                        .collect::<Vec<_>>()
                });
                check_every_backend_in(
                    &format!("{classes} classes {dtype:?} {options:?}"),
                    &case,
                    options,
                    upstream.as_deref(),
                    &[GradMode::OutOfPlace, GradMode::InPlace],
                );
            }
        }
    }
}

/// f16/bf16 gradients of rows of odd C on the fused kernel: rows 2i and 2i + 1 share a
/// word, which row 2i's invocations write (`fused_owns_half_words`). One invocation per row,
/// four rows each (past 65 536 rows); segments of several invocations (25 to 1025 classes);
/// an odd number of rows (the last row's word alone); index targets with smoothing, class
/// and sample weights and `mean` (scales from the pre-pass), soft targets, `none` with each
/// row's upstream; in place, against the reference.
#[test]
fn odd_classes_half_gradients_fused() {
    use xent::gpu::fused_owns_half_words;
    // The four-row tiles in f16 only (each run covers 600 000 values, slow on llvmpipe's GL).
    // Invocations a row: 1, 1, 2, 4, 32 and 128 (two row segments a workgroup).
    let shapes = [
        (9usize, 65_536 + 1_027),
        (3, 1_027),
        (25, 203),
        (33, 301),
        (301, 45),
        (1025, 21),
    ];
    for (classes, rows) in shapes {
        let shape = fused_shape(classes, Layout::Rows).unwrap();
        assert!(
            fused_owns_half_words(shape, classes, Layout::Rows),
            "{classes}"
        );
        let dtypes = if rows > 65_536 {
            &[Dtype::F16][..]
        } else {
            &[Dtype::F16, Dtype::Bf16]
        };
        for &dtype in dtypes {
            let case = Case::new(classes as u64, rows, classes, Hardness::ALL)
                .weighted(classes as u64)
                .sample_weighted(5)
                .ignore_every(7, -100)
                .dtype(dtype);
            let label = format!("{rows} x {classes} {dtype:?}");
            let smoothing = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
            check_every_backend_in(&label, &case, &smoothing, None, &[GradMode::InPlace]);
            let none = CrossEntropy::new().reduction(Reduction::None);
            let upstream: Vec<f32> = (0..rows).map(|r| 0.5 + (r % 11) as f32 * 0.25).collect();
            check_every_backend_in(&label, &case, &none, Some(&upstream), &[GradMode::InPlace]);
            let soft = Case::new(7, rows, classes, Hardness::default())
                .soft(3)
                .dtype(dtype);
            let sum = CrossEntropy::new().reduction(Reduction::Sum);
            check_every_backend_in(
                &format!("soft {label}"),
                &soft,
                &sum,
                None,
                &[GradMode::InPlace],
            );
        }
    }
}

#[test]
fn few_long_rows() {
    // On the GPU, 8 rows of 256 000 classes are split across workgroups.
    assert!(launch_shape(8, 256_000, Layout::Rows).splits > 1);
    let case = Case::new(
        9,
        8,
        256_000,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .weighted(4);
    check_every_backend_in(
        "8×256000",
        &case,
        &CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4),
        None,
        &[GradMode::OutOfPlace],
    );
}

#[test]
fn two_runs_give_the_same_bits() {
    let case = Case::new(
        14,
        300,
        2000,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    )
    .weighted(1);
    let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4);
    for path in backends::backends(32 << 10) {
        let run = || {
            run_softmax(&case, &options, None, GradMode::OutOfPlace, |o, b, r| {
                o.compute(&path.backend, b, r)
            })
        };
        let (a, b) = (run(), run());
        assert_eq!(
            format!("{:?}", a.output),
            format!("{:?}", b.output),
            "{}",
            path.name
        );
        let bits = |g: &[f32]| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            a.gradient.as_deref().map(bits),
            b.gradient.as_deref().map(bits),
            "{}",
            path.name
        );
    }
}

#[test]
fn short_rows_against_reference() {
    // 77 rows: groups of up to 4 tiles of 4, 8 or 16 lanes, and a partial tile, on every
    // level.
    // 300 takes the short path for the loss alone (GradMode::None) only.
    for classes in [1usize, 2, 5, 10, 33, 64, 100, 300] {
        for (label, options) in option_grid() {
            for dtype in [Dtype::F32, Dtype::Bf16] {
                let case = Case::new(classes as u64 * 13, 77, classes, Hardness::ALL)
                    .weighted(classes as u64)
                    .sample_weighted(7)
                    .ignore_every(6, options.ignore_index)
                    .dtype(dtype);
                check_every_backend(
                    &format!("short {classes} {label} {dtype:?}"),
                    &case,
                    &options,
                    None,
                );
            }
        }
    }
    // Soft targets.
    for classes in [1usize, 2, 5, 10, 64] {
        for (label, options) in option_grid() {
            let case = Case::new(classes as u64 * 17, 77, classes, Hardness::ALL)
                .soft(classes as u64)
                .weighted(3)
                .sample_weighted(5);
            check_every_backend(
                &format!("short soft {classes} {label}"),
                &case,
                &options,
                None,
            );
        }
    }
    // The (N, C, d…) layout: tiles inside one sample, and tiles across two; soft targets too.
    for (label, options) in option_grid() {
        let soft = Case::new(21, 3 * 13, 6, Hardness::ALL)
            .soft(2)
            .class_dim1(13);
        check_every_backend(
            &format!("short soft (N, 6, 13) {label}"),
            &soft,
            &options,
            None,
        );
        // 32 positions a sample: whole tiles inside one sample, widened by vectors on x86-64.
        let layouts = [
            (13usize, Dtype::F16),
            (32, Dtype::F32),
            (32, Dtype::F16),
            (32, Dtype::Bf16),
        ];
        for (spatial, dtype) in layouts {
            let case = Case::new(spatial as u64, 5 * spatial, 21, Hardness::ALL)
                .weighted(4)
                .ignore_every(5, options.ignore_index)
                .dtype(dtype)
                .class_dim1(spatial);
            check_every_backend(
                &format!("short (N, 21, {spatial}) {dtype:?} {label}"),
                &case,
                &options,
                None,
            );
        }
    }
    // Plain calls (no metrics, class weights, smoothing or transform) take their own tile
    // code: every way C meets the 8-row transposition (2, under 8, multiples of 8, past them).
    let plain = CrossEntropy::new();
    let plain_grid = [
        ("plain", plain),
        ("sum", plain.reduction(Reduction::Sum)),
        ("none", plain.reduction(Reduction::None)),
        ("z-loss", plain.z_loss(1e-3)),
        ("ignore 1", plain.ignore_index(1)),
    ];
    for classes in [1usize, 2, 3, 5, 7, 8, 10, 16, 17, 33, 64, 199, 512] {
        for (label, options) in plain_grid {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                let case = Case::new(classes as u64 * 19, 77, classes, Hardness::ALL)
                    .sample_weighted(3)
                    .ignore_every(5, options.ignore_index)
                    .dtype(dtype)
                    .without_metrics();
                check_every_backend(
                    &format!("short plain {classes} {label} {dtype:?}"),
                    &case,
                    &options,
                    None,
                );
            }
        }
    }
    // Longer plain rows without metrics: the row path's chunk loop, its odd vectors and
    // partial last vector (1000 = 62.5 vectors of 16, 4097 = a chunk of 1024 and more).
    for classes in [1000usize, 4097] {
        for dtype in [Dtype::F32, Dtype::Bf16] {
            let case = Case::new(classes as u64, 9, classes, Hardness::ALL)
                .sample_weighted(3)
                .ignore_every(5, -100)
                .dtype(dtype)
                .without_metrics();
            check_every_backend(&format!("plain {classes} {dtype:?}"), &case, &plain, None);
        }
    }
    // Confident rows whose max comes first and whose other classes each fall under half an
    // ulp of 1: a plain f32 sum of the exps drops them all (at C = 512 the loss's 3e-5, and
    // the target's whole gradient); the sum must keep them. With and without metrics (the two
    // tile codes), the loss alone and with a gradient; 512 with a gradient and 1000 take the
    // row path, whose per-lane sums must keep them too.
    let modes = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace];
    for classes in [64usize, 200, 512, 1000] {
        let mut case = Case::new(5, 16, classes, Hardness::default());
        for (r, row) in case.logits.chunks_mut(classes).enumerate() {
            row.fill(-16.7);
            row[0] = 0.0;
            case.index_targets[r] = if r % 2 == 0 { 0 } else { 1 };
        }
        for metrics in [true, false] {
            let case = if metrics {
                case.clone()
            } else {
                case.clone().without_metrics()
            };
            let options = CrossEntropy::new().reduction(Reduction::Sum);
            let label = format!("confident {classes} metrics {metrics}");
            check_every_backend_in(&label, &case, &options, None, &modes);
        }
    }
    // Per-row upstream values with no reduction.
    let case = Case::new(3, 45, 7, Hardness::ALL).sample_weighted(1);
    let per_row: Vec<f32> = (0..45).map(|r| 0.25 + (r % 9) as f32 * 0.5).collect();
    check_every_backend(
        "short none with upstream",
        &case,
        &CrossEntropy::new().reduction(Reduction::None).z_loss(1e-2),
        Some(&per_row),
    );
}
