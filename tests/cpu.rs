//! What only the SIMD CPU path has: its levels, the same bits across thread counts, the
//! chunk speculation's fallbacks, and property tests against the f64 reference (the features
//! on every backend, CPU levels included, are in the other test files).

mod common;

use common::*;
use proptest::prelude::*;
use xent::cpu::SimdLevel;
use xent::{Backend, Batch, CrossEntropy, Dtype, InputKind, Reduction, Request};

fn cpu(level: SimdLevel) -> impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<xent::Output> {
    move |o, b, r| o.compute(&Backend::CpuWith(level), b, r)
}

#[test]
fn levels_detected() {
    let levels = SimdLevel::supported();
    eprintln!(
        "SIMD levels on this host: {levels:?}; in force: {}",
        SimdLevel::detected()
    );
    assert!(levels.contains(&SimdLevel::Portable));
}

#[test]
fn same_bits_across_thread_counts() {
    let hard = Hardness {
        outliers: true,
        masked: true,
        non_finite: false,
    };
    // Long rows (the row kernels), and short ones over many blocks (rows across lanes).
    for (rows, classes) in [(777, 1531), (100_003, 3)] {
        let case = Case::new(5, rows, classes, hard)
            .weighted(2)
            .sample_weighted(3)
            .ignore_every(7, -100);
        let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
        let runs: Vec<_> = [1usize, 2, 8]
            .into_iter()
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    run_softmax(
                        &case,
                        &options,
                        None,
                        GradMode::OutOfPlace,
                        cpu(SimdLevel::detected()),
                    )
                })
            })
            .collect();
        for run in &runs[1..] {
            assert_eq!(
                run.output.loss.unwrap().to_bits(),
                runs[0].output.loss.unwrap().to_bits(),
                "{rows}×{classes}"
            );
            assert_eq!(format!("{:?}", run.output), format!("{:?}", runs[0].output));
            assert_eq!(run.gradient, runs[0].gradient);
        }
    }
}

/// Per-row losses, LSE and metrics of calls of several parallel blocks, each block writing
/// its rows of the output's columns: short rows (across lanes, and a last partial tile),
/// rows of the row path, probabilities on both, soft targets, f16 in place, the (N, C, d…)
/// layout, without the metrics (their columns empty), against the reference.
#[test]
fn per_row_outputs_across_blocks() {
    let options = CrossEntropy::new()
        .reduction(Reduction::None)
        .label_smoothing(0.1);
    let probabilities = options.input(InputKind::Probabilities { eps: 1e-7 });
    let cases = [
        (
            "short",
            Case::new(41, 20_003, 7, Hardness::default()),
            options,
        ),
        (
            "row path",
            Case::new(42, 101, 1500, Hardness::default()),
            options,
        ),
        (
            "probabilities",
            Case::new(43, 9_001, 21, Hardness::default()).probabilities(),
            probabilities,
        ),
        (
            "(N, C, d)",
            Case::new(44, 5 * 4099, 5, Hardness::default()).class_dim1(4099),
            options,
        ),
        (
            "soft short",
            Case::new(45, 20_003, 7, Hardness::default()).soft(3),
            options,
        ),
        (
            "probabilities, row path",
            Case::new(46, 1_000, 100, Hardness::default()).probabilities(),
            probabilities,
        ),
        (
            "soft probabilities",
            Case::new(47, 9_001, 21, Hardness::default())
                .probabilities()
                .soft(4),
            probabilities,
        ),
        (
            "f16 without metrics",
            Case::new(48, 20_003, 7, Hardness::default())
                .dtype(Dtype::F16)
                .without_metrics(),
            options,
        ),
    ];
    for (label, case, options) in cases {
        let case = case.ignore_every(7, -100);
        let reference = case.reference(&options, None);
        for mode in [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace] {
            let run = run_softmax(&case, &options, None, mode, cpu(SimdLevel::detected()));
            check_softmax(
                &format!("{label} {mode:?}"),
                &case,
                &options,
                &run,
                &reference,
            );
        }
    }
}

/// Short probability rows (rows across lanes) in every dtype and layout, every level: f16
/// and bf16 widened on the way in, the (N, C, d…) layout's class planes, sample weights and
/// per-row upstream values, ignored rows, class weights, smoothing, soft targets, with and
/// without metrics.
#[test]
fn short_probability_tiles_against_reference() {
    let base = CrossEntropy::new().input(InputKind::Probabilities { eps: 1e-4 });
    let grid = [
        ("plain", base),
        (
            "smoothing",
            base.label_smoothing(0.2).reduction(Reduction::Sum),
        ),
        ("none", base.reduction(Reduction::None).ignore_index(2)),
    ];
    let all_modes = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace];
    for classes in [2usize, 9, 33] {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let rows_major = Case::new(classes as u64, 3 * 13, classes, Hardness::default())
                .probabilities()
                .sample_weighted(4);
            let cases = [
                ("rows", rows_major.clone()),
                ("(N, C, 13)", rows_major.clone().class_dim1(13)),
                ("soft", rows_major.clone().soft(5)),
                ("soft (N, C, 13)", rows_major.clone().soft(5).class_dim1(13)),
                (
                    "weighted metrics-free",
                    rows_major.weighted(6).without_metrics(),
                ),
            ];
            for (what, case) in cases {
                for (label, options) in grid {
                    let case = case
                        .clone()
                        .ignore_every(5, options.ignore_index)
                        .dtype(dtype);
                    let upstream: Option<Vec<f32>> = (options.reduction == Reduction::None)
                        .then(|| (0..case.rows).map(|r| 0.5 + (r % 3) as f32).collect());
                    let reference = case.reference(&options, upstream.as_deref());
                    for level in SimdLevel::supported() {
                        for mode in all_modes {
                            let run =
                                run_softmax(&case, &options, upstream.as_deref(), mode, cpu(level));
                            check_softmax(
                                &format!(
                                    "{what} {label} C={classes} {dtype:?} [{level}, {mode:?}]"
                                ),
                                &case,
                                &options,
                                &run,
                                &reference,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Probability inputs on the SIMD rows, every level: rows of two f32 sums' flushes and a
/// tail shorter than a vector (601 classes), and short rows across lanes (64, 17 and 5
/// classes; 37 rows: whole tiles and a partial one), values below, at and
/// above the clamp `eps`, exact 0s and 1s (a one-hot row); index and soft targets, class
/// weights, smoothing, per-row losses, with and without the metrics (without them and
/// smoothing, index rows are not read past the target). A subnormal `eps` (the `ln` that
/// takes subnormals) is checked forward only: its gradients `−a·w/q` pass f32's range.
#[test]
fn probability_rows_against_reference() {
    let all_modes = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace];
    for (floor, modes) in [(1e-40f32, &all_modes[..1]), (1e-30, &all_modes[..])] {
        let base = CrossEntropy::new().input(InputKind::Probabilities { eps: floor });
        let grid = [
            ("plain", base),
            ("smoothing", base.label_smoothing(0.3)),
            ("none", base.reduction(Reduction::None).ignore_index(1)),
            (
                "sum smoothing 1",
                base.reduction(Reduction::Sum).label_smoothing(1.0),
            ),
        ];
        for classes in [601usize, 64, 17, 5] {
            let rows = 37;
            let mut case = Case::new(31, rows, classes, Hardness::default()).probabilities();
            for r in 0..rows {
                let row = &mut case.logits[r * classes..(r + 1) * classes];
                row[(r * 37) % classes] = 0.0;
                row[(r + 1) % classes] = floor / 100.0; // clamped: no gradient
                row[(r + 2) % classes] = floor * 10.0;
                row[(r + 3) % classes] = floor;
            }
            // One row one-hot: q = 1 at the target (ln 1 = 0), exact 0s elsewhere.
            case.logits[..classes].fill(0.0);
            case.logits[3] = 1.0;
            case.index_targets[0] = 3;
            // A clamped value is a row's target.
            case.index_targets[2] = 3;
            // A tied max: the first class is the argmax, also where both share a lane.
            let (first, second) = if classes > 18 { (2, 18) } else { (1, 4) };
            let row = &mut case.logits[classes..2 * classes];
            row.fill(1e-4);
            (row[first], row[second]) = (0.3, 0.3);
            // Its targets tied too: `correct` compares the first maxima.
            let mut soft = case.clone().soft(6).weighted(7);
            let t = &mut soft.dense_targets.as_mut().unwrap()[classes..2 * classes];
            t.fill(0.0);
            (t[first], t[second]) = (0.5, 0.5);
            let cases = [
                ("index", case.clone()),
                (
                    "index weighted",
                    case.clone().weighted(5).ignore_every(3, 1),
                ),
                ("index no metrics", case.clone().without_metrics()),
                ("soft weighted", soft),
                ("soft no metrics", case.clone().soft(8).without_metrics()),
            ];
            for (what, case) in &cases {
                for (label, options) in grid {
                    let reference = case.reference(&options, None);
                    for level in SimdLevel::supported() {
                        for &mode in modes {
                            let run = run_softmax(case, &options, None, mode, cpu(level));
                            check_softmax(
                                &format!(
                                    "{what} {label} eps {floor:e} C={classes} [{level}, {mode:?}]"
                                ),
                                case,
                                &options,
                                &run,
                                &reference,
                            );
                            // The checker lets equal values swap; torch.argmax takes the first.
                            if let Some(m) = &run.output.metrics {
                                assert_eq!(m.argmax[1], first as u32, "{what} {label} [{level}]");
                            }
                        }
                    }
                }
            }
        }
    }
}

fn options_strategy() -> impl Strategy<Value = CrossEntropy> {
    (
        prop_oneof![
            Just(Reduction::Mean),
            Just(Reduction::Sum),
            Just(Reduction::None)
        ],
        prop_oneof![Just(0.0f32), 0.0f32..=1.0],
        prop_oneof![Just(0.0f32), 0.0f32..0.01],
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(1.0f32), 0.1f32..2.0],
        prop_oneof![Just(-100i64), 0i64..3],
    )
        .prop_map(|(reduction, eps, lambda, cap, scale, ignore)| {
            let mut o = CrossEntropy::new()
                .reduction(reduction)
                .label_smoothing(eps)
                .z_loss(lambda)
                .logit_scale(scale)
                .ignore_index(ignore);
            o.softcap = cap;
            o
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_cases_match_reference(
        seed in any::<u64>(),
        rows in 0usize..300,
        classes in prop_oneof![1usize..20, 20usize..2000, 2000usize..70_000],
        options in options_strategy(),
        dtype in prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)],
        hard in (any::<bool>(), any::<bool>(), any::<bool>()),
        weighted in any::<bool>(),
        soft in any::<bool>(),
        i32_targets in any::<bool>(),
    ) {
        // Keep each case under ~300 k logits so the f64 reference stays quick.
        let rows = rows.min(300_000 / classes);
        let hard = Hardness { outliers: hard.0, masked: hard.1, non_finite: hard.2 };
        let mut case = Case::new(seed, rows, classes, hard).dtype(dtype).ignore_every(7, options.ignore_index);
        if weighted { case = case.weighted(seed); }
        if soft { case = case.soft(seed); }
        if i32_targets { case = case.i32_targets(); }
        let reference = case.reference(&options, None);
        let level = SimdLevel::supported()[(seed % SimdLevel::supported().len() as u64) as usize];
        let mode = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace][(seed / 7 % 3) as usize];
        let run = run_softmax(&case, &options, None, mode, cpu(level));
        check_softmax(&format!("seed {seed} {rows}×{classes} {level} {mode:?}"), &case, &options, &run, &reference);
    }
}

#[test]
fn chunk_speculation_fallbacks() {
    // The forward takes each 1024-value chunk's exps at the running max, betting the chunk
    // doesn't raise it; these rows break the bet every way: a max rising in every chunk, a
    // jump past f32's exp range, a NaN or +inf in a late chunk, leading −inf chunks, and a
    // confident row whose max sits in a late chunk.
    let classes = 5000;
    let mut case = Case::new(7, 8, classes, Hardness::default());
    let row = |r: usize| r * classes..(r + 1) * classes;
    for (c, v) in case.logits[row(0)].iter_mut().enumerate() {
        *v = c as f32 * 0.01;
    }
    case.logits[row(1)][3500] = 200.0;
    case.logits[row(2)][2100] = f32::NAN;
    case.logits[row(3)][4500] = f32::INFINITY;
    case.logits[row(4)][..2048].fill(f32::NEG_INFINITY);
    case.logits[row(5)][3333] = 30.0;
    case.index_targets[5] = 3333;
    case.logits[row(6)][4999] = 100.0;
    case.index_targets[6] = 4999;
    for (label, options) in option_grid() {
        check_every_backend(&format!("speculation {label}"), &case, &options, None);
    }
}
