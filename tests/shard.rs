//! Vocab-parallel partials: K shards (uneven widths), every option, CPU and GPU, against the
//! unsharded f64 reference.

mod common;

use common::shards::{columns, run_sharded, uneven};
use common::*;
use xent::cpu::SimdLevel;
use xent::shard::{FocalPartial, RowPartial, Shard, ShardInput};
use xent::{Backend, CrossEntropy, Dtype, Error, Logits, Reduction, Targets};

fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    out.extend(common::device::gpu().map(Backend::Gpu));
    out
}

/// Upstream gradients: one per row for `Reduction::None`, a scalar otherwise.
fn upstream(options: &CrossEntropy, rows: usize) -> Vec<f32> {
    match options.reduction {
        Reduction::None => (0..rows).map(|i| (i % 5) as f32 * 0.3 - 0.2).collect(),
        _ => vec![0.75],
    }
}

/// The three steps (and, for focal loss with smoothing, the focal round) over `shards`,
/// checked against the unsharded f64 reference: loss, per-row losses, LSE and the gradient.
fn check_sharded(
    label: &str,
    backend: &Backend,
    case: &Case,
    options: &CrossEntropy,
    shards: &[Shard],
) {
    let rows = case.rows;
    let upstream = upstream(options, rows);
    let reference = case.reference(options, Some(&upstream));
    let run = run_sharded(label, backend, case, options, shards, Some(&upstream));
    let out = &run.output;
    assert_loss(&format!("{label}: loss"), out.loss, reference.loss);
    assert_losses(
        &format!("{label}: rows"),
        out.row_losses.as_ref().unwrap(),
        &reference.row_losses,
    );
    assert_within(
        &format!("{label}: lse"),
        out.lse.as_ref().unwrap(),
        &reference.lse,
        tol::LOSS,
    );
    assert_within(
        &format!("{label}: gradient"),
        run.gradient.as_ref().unwrap(),
        &reference.gradient,
        tol::GRADIENT,
    );
}

#[test]
fn shards_match_the_unsharded_reference() {
    let base = CrossEntropy::new();
    let options = [
        base,
        base.reduction(Reduction::Sum),
        base.reduction(Reduction::None),
        base.label_smoothing(0.2),
        base.z_loss(1e-3),
        base.softcap(20.0).logit_scale(0.8),
        base.label_smoothing(0.1)
            .z_loss(1e-4)
            .softcap(30.0)
            .logit_scale(1.2)
            .ignore_index(3),
    ];
    for backend in backends() {
        for o in &options {
            for k in [1usize, 2, 3, 8] {
                let case = Case::new(k as u64, 23, 1031, Hardness::ALL)
                    .weighted(3)
                    .ignore_every(5, o.ignore_index);
                check_sharded(
                    &format!("{} K={k} {o:?}", backend.name()),
                    &backend,
                    &case,
                    o,
                    &uneven(1031, k),
                );
                let even = Case::new(
                    40 + k as u64,
                    9,
                    4000,
                    Hardness {
                        outliers: true,
                        masked: true,
                        non_finite: false,
                    },
                );
                check_sharded(
                    &format!("{} K={k} even {o:?}", backend.name()),
                    &backend,
                    &even,
                    o,
                    &Shard::split(4000, k),
                );
            }
        }
    }
}

#[test]
fn sample_weights_ride_in_the_combined_coefficients() {
    let base = CrossEntropy::new();
    for backend in backends() {
        for o in [
            base,
            base.reduction(Reduction::Sum),
            base.reduction(Reduction::None),
            base.label_smoothing(0.1).z_loss(1e-3),
        ] {
            let case = Case::new(7, 23, 1031, Hardness::ALL)
                .weighted(3)
                .sample_weighted(4)
                .ignore_every(5, o.ignore_index);
            check_sharded(
                &format!("{} sample weights {o:?}", backend.name()),
                &backend,
                &case,
                &o,
                &uneven(1031, 3),
            );
        }
    }
    let p = vec![RowPartial::default(); 2];
    let t = [0i64, 1];
    // Bad sample weights are typed errors.
    let e = base
        .combine_weighted(10, &[&p], Targets::I64(&t), Some(&[1.0]), None)
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
    let e = base
        .combine_weighted(10, &[&p], Targets::I64(&t), Some(&[1.0, -2.0]), None)
        .unwrap_err();
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
}

/// Focal options around every option of section 2, with and without smoothing (the focal
/// round is needed only with), whole and fractional γ.
fn focal_options() -> Vec<CrossEntropy> {
    let f = CrossEntropy::new().focal_gamma(2.0);
    vec![
        f,
        f.label_smoothing(0.1),
        f.focal_gamma(0.5)
            .label_smoothing(0.2)
            .z_loss(1e-3)
            .reduction(Reduction::Sum),
        f.focal_gamma(1.0)
            .label_smoothing(0.1)
            .z_loss(1e-4)
            .softcap(30.0)
            .logit_scale(1.2)
            .ignore_index(3)
            .reduction(Reduction::None),
        f.focal_gamma(3.0).z_loss(1e-3).reduction(Reduction::None),
        f.focal_gamma(1.5).ignore_index(3).reduction(Reduction::Sum),
    ]
}

#[test]
fn focal_shards_match_the_unsharded_reference() {
    // The detected SIMD level, the portable one (whole γ: SIMD kernels; fractional: scalar)
    // and the GPU.
    let mut all = backends();
    all.insert(1, Backend::CpuWith(SimdLevel::Portable));
    for backend in &all {
        for o in &focal_options() {
            for k in [1usize, 2, 3, 8] {
                let case = Case::new(100 + k as u64, 23, 1031, Hardness::ALL)
                    .weighted(3)
                    .sample_weighted(4)
                    .ignore_every(5, o.ignore_index);
                check_sharded(
                    &format!("{} K={k} {o:?}", backend.name()),
                    backend,
                    &case,
                    o,
                    &uneven(1031, k),
                );
            }
            // Long rows (several SIMD chunks per shard), some targets near certainty.
            let mut long = Case::new(
                7,
                6,
                5000,
                Hardness {
                    outliers: true,
                    masked: true,
                    non_finite: false,
                },
            )
            .weighted(5)
            .sample_weighted(6);
            for (r, &y) in long.index_targets.clone().iter().enumerate().step_by(2) {
                long.logits[r * 5000 + y as usize] = 40.0;
            }
            check_sharded(
                &format!("{} long {o:?}", backend.name()),
                backend,
                &long,
                o,
                &Shard::split(5000, 3),
            );
        }
    }
}

#[test]
fn focal_round_misuse_is_a_typed_error() {
    let (rows, classes) = (2, 6);
    let x = [
        0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0, 0.0, 0.0, 1.0, -2.0, 4.0, 0.25,
    ];
    let t = [4i64, 1];
    let shards = Shard::split(classes, 2);
    let pieces: Vec<Vec<f32>> = shards
        .iter()
        .map(|&s| columns(&x, rows, classes, s))
        .collect();
    let input = |k: usize| ShardInput {
        logits: Logits::new(&pieces[k], rows, shards[k].width),
        targets: Targets::I64(&t),
        class_weights: None,
    };
    let combine = |o: &CrossEntropy| {
        let partials: Vec<Vec<RowPartial>> = (0..2)
            .map(|k| {
                o.shard_partials(&Backend::Cpu, shards[k], input(k))
                    .unwrap()
            })
            .collect();
        let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
        o.combine(classes, &views, Targets::I64(&t), None).unwrap()
    };
    let unsupported = |e: Error| assert!(matches!(e, Error::Unsupported(_)), "{e}");

    // Focal loss with smoothing: the backward pass refuses to run before the focal round.
    let o = CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1);
    let mut combined = combine(&o);
    assert!(combined.needs_focal_round());
    let mut g = vec![0f32; rows * shards[0].width];
    unsupported(
        o.shard_backward(&Backend::Cpu, shards[0], input(0), &combined, &mut g)
            .unwrap_err(),
    );
    // Focal partials of the wrong length name what they are.
    let short = vec![FocalPartial::default(); 1];
    let e = o.combine_focal(&mut combined, &[&short]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                what: "focal partials",
                ..
            }
        ),
        "{e}"
    );
    let focal: Vec<Vec<FocalPartial>> = (0..2)
        .map(|k| {
            o.shard_focal(&Backend::Cpu, shards[k], input(k), &combined)
                .unwrap()
        })
        .collect();
    let views: Vec<&[FocalPartial]> = focal.iter().map(|f| &f[..]).collect();
    o.combine_focal(&mut combined, &views).unwrap();
    assert!(!combined.needs_focal_round());
    // Twice is an error, and so is a focal round nobody needs.
    unsupported(o.combine_focal(&mut combined, &views).unwrap_err());
    unsupported(
        o.shard_focal(&Backend::Cpu, shards[0], input(0), &combined)
            .unwrap_err(),
    );
    o.shard_backward(&Backend::Cpu, shards[0], input(0), &combined, &mut g)
        .unwrap();
    // Without smoothing there is no round: the target's shard knows p[y] from the global LSE.
    let plain_focal = combine(&CrossEntropy::new().focal_gamma(2.0));
    assert!(!plain_focal.needs_focal_round());
    assert!(plain_focal.output.loss.is_some());
}

#[test]
fn half_precision_shards() {
    for backend in backends() {
        let case = Case::new(
            77,
            16,
            700,
            Hardness {
                outliers: true,
                ..Hardness::default()
            },
        )
        .dtype(Dtype::Bf16);
        let shards = uneven(700, 3);
        let options = CrossEntropy::new().label_smoothing(0.1);
        let reference = case.reference(&options, None);
        let targets = Targets::I64(&case.index_targets);
        let partials: Vec<Vec<RowPartial>> = shards
            .iter()
            .map(|&s| {
                let x: Vec<half::bf16> = columns(&case.logits, 16, 700, s)
                    .iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect();
                options
                    .shard_partials(
                        &backend,
                        s,
                        ShardInput {
                            logits: Logits::new(&x, 16, s.width),
                            targets,
                            class_weights: None,
                        },
                    )
                    .unwrap()
            })
            .collect();
        let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
        let combined = options.combine(700, &views, targets, None).unwrap();
        assert_within(
            "bf16 shards",
            &[combined.output.loss.unwrap()],
            &[reference.loss.unwrap()],
            tol::LOSS,
        );
    }
}

#[test]
fn shard_errors() {
    let x = [0f32; 6];
    let o = CrossEntropy::new();
    let t = [0i64, 9];
    let e = o
        .shard_partials(
            &Backend::Cpu,
            Shard {
                start: 8,
                width: 3,
                classes: 10,
            },
            ShardInput {
                logits: Logits::new(&x, 2, 3),
                targets: Targets::I64(&t),
                class_weights: None,
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { what: "shard", .. }), "{e}");
    let e = o
        .shard_partials(
            &Backend::Cpu,
            Shard {
                start: 0,
                width: 3,
                classes: 10,
            },
            ShardInput {
                logits: Logits::new(&x, 2, 3),
                targets: Targets::I64(&[0, 10]),
                class_weights: None,
            },
        )
        .unwrap_err();
    assert!(matches!(
        e,
        Error::TargetOutOfRange {
            row: 1,
            value: 10,
            ..
        }
    ));
    // Partials that don't cover a row's target: combine says which row.
    let p = o
        .shard_partials(
            &Backend::Cpu,
            Shard {
                start: 0,
                width: 3,
                classes: 10,
            },
            ShardInput {
                logits: Logits::new(&x, 2, 3),
                targets: Targets::I64(&t),
                class_weights: None,
            },
        )
        .unwrap();
    let e = o.combine(10, &[&p], Targets::I64(&t), None).unwrap_err();
    assert!(matches!(
        e,
        Error::TargetOutOfRange {
            row: 1,
            value: 9,
            ..
        }
    ));
}

/// The shard path on every CPU SIMD level (the portable one included), both GPU shader
/// variants and both GPU paths, and GPUs whose storage bindings are capped at 32 KiB, so that
/// shards are cut into chunks and a shard's row is longer than a binding.
#[test]
fn shards_on_every_backend_and_small_bindings() {
    // Shards have kernels of their own: the three-pass devices add nothing.
    let all: Vec<_> = common::backends::backends(32 << 10)
        .into_iter()
        .filter(|p| !p.name.contains("three-pass"))
        .collect();
    let base = CrossEntropy::new();
    let options = [
        base.label_smoothing(0.1).z_loss(1e-3),
        base.focal_gamma(2.0),
        base.focal_gamma(1.5).label_smoothing(0.2),
    ];
    for path in &all {
        let backend = &path.backend;
        for o in &options {
            // Largest first: pooled scratch then outgrows what later calls bind.
            for (rows, classes) in [(64, 1500), (300, 100), (37, 10)] {
                let case = Case::new(rows as u64, rows, classes, Hardness::ALL)
                    .weighted(5)
                    .ignore_every(7, -100);
                check_sharded(
                    &format!("{} {rows}x{classes} {o:?}", path.name),
                    backend,
                    &case,
                    o,
                    &uneven(classes, 3),
                );
            }
        }
    }
}
