//! Vocab-parallel partials: K shards (uneven widths), every option, CPU and GPU, against the
//! unsharded f64 reference.

mod common;

use common::*;
use std::sync::Arc;
use xent::gpu::Gpu;
use xent::shard::{RowPartial, Shard, ShardInput};
use xent::{Backend, CrossEntropy, Dtype, Error, Logits, Reduction, Targets};

fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    match Gpu::new() {
        Ok(gpu) => out.push(Backend::Gpu(Arc::new(gpu))),
        Err(e) if std::env::var("XENT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("XENT_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => eprintln!(
            "\n!!!!!!!! NO GPU ADAPTER ({e}): THE GPU SHARD TESTS WERE NOT RUN !!!!!!!!\n"
        ),
    }
    out
}

/// Uneven shards: widths grow with the index.
fn uneven(classes: usize, k: usize) -> Vec<Shard> {
    let total: usize = (1..=k).sum();
    let mut start = 0;
    (1..=k)
        .map(|i| {
            let width = if i == k {
                classes - start
            } else {
                classes * i / total
            };
            let s = Shard {
                start,
                width,
                classes,
            };
            start += width;
            s
        })
        .collect()
}

/// Columns of `shard` from row-major `rows × classes` values.
fn columns(v: &[f32], rows: usize, classes: usize, shard: Shard) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| {
            v[r * classes + shard.start..r * classes + shard.start + shard.width].to_vec()
        })
        .collect()
}

fn check_sharded(
    label: &str,
    backend: &Backend,
    case: &Case,
    options: &CrossEntropy,
    shards: &[Shard],
) {
    let (rows, classes) = (case.rows, case.classes);
    let reference = case.reference(options, None);
    let targets = Targets::I64(&case.index_targets);
    let pieces: Vec<(Vec<f32>, Option<Vec<f32>>)> = shards
        .iter()
        .map(|&s| {
            (
                columns(&case.logits, rows, classes, s),
                case.class_weights
                    .as_ref()
                    .map(|w| w[s.start..s.start + s.width].to_vec()),
            )
        })
        .collect();
    let partials: Vec<Vec<RowPartial>> = shards
        .iter()
        .zip(&pieces)
        .map(|(&s, (x, w))| {
            options
                .shard_partials(
                    backend,
                    s,
                    ShardInput {
                        logits: Logits::new(x, rows, s.width),
                        targets,
                        class_weights: w.as_deref(),
                    },
                )
                .expect("partials")
        })
        .collect();
    let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
    let combined = options
        .combine_weighted(
            classes,
            &views,
            targets,
            case.sample_weights.as_deref(),
            None,
        )
        .expect("combine");
    let out = &combined.output;
    match (out.loss, reference.loss) {
        (Some(a), Some(r)) => assert_close(&format!("{label}: loss"), &[a], &[r], 1e-5, 1e-5),
        (None, None) => {}
        other => panic!("{label}: {other:?}"),
    }
    assert_losses(
        &format!("{label}: rows"),
        out.row_losses.as_ref().unwrap(),
        &reference.row_losses,
    );
    assert_close(
        &format!("{label}: lse"),
        out.lse.as_ref().unwrap(),
        &reference.lse,
        1e-5,
        1e-5,
    );
    let mut gradient = vec![0f32; rows * classes];
    for (&s, (x, w)) in shards.iter().zip(&pieces) {
        let mut g = vec![0f32; rows * s.width];
        options
            .shard_backward(
                backend,
                s,
                ShardInput {
                    logits: Logits::new(x, rows, s.width),
                    targets,
                    class_weights: w.as_deref(),
                },
                &combined,
                &mut g,
            )
            .expect("backward");
        for r in 0..rows {
            gradient[r * classes + s.start..r * classes + s.start + s.width]
                .copy_from_slice(&g[r * s.width..(r + 1) * s.width]);
        }
    }
    assert_close(
        &format!("{label}: gradient"),
        &gradient,
        &reference.gradient,
        1e-6,
        1e-4,
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
    // Focal loss is not computed by the shards: a clear error, not a wrong number.
    let o = base.focal_gamma(2.0);
    let p = vec![RowPartial::default(); 2];
    let t = [0i64, 1];
    let e = o.combine(10, &[&p], Targets::I64(&t), None).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("focal")),
        "{e}"
    );
    let x = [0f32; 10];
    let e = o
        .shard_partials(
            &Backend::Cpu,
            Shard::split(10, 2)[0],
            ShardInput {
                logits: Logits::new(&x, 2, 5),
                targets: Targets::I64(&t),
                class_weights: None,
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("focal")),
        "{e}"
    );
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
        assert_close(
            "bf16 shards",
            &[combined.output.loss.unwrap()],
            &[reference.loss.unwrap()],
            1e-5,
            1e-5,
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
