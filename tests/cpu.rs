//! The SIMD CPU path: level detection, closed forms, BCE, thread-count independence,
//! degenerate shapes, non-finite rows, typed errors, property tests, chunk speculation (the
//! softmax option grid on every backend is `tests/softmax.rs`).

mod common;

use common::*;
use proptest::prelude::*;
use xent::cpu::SimdLevel;
use xent::{
    Backend, Batch, BinaryCrossEntropy, CrossEntropy, Dtype, Error, InputKind, Logits, Reduction,
    Request,
};

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
fn uniform_logits_give_log_c() {
    for classes in [1usize, 2, 3, 7, 10, 100, 1000, 4097, 32000] {
        let logits = vec![0.25f32; 3 * classes];
        let targets = [0i64, (classes - 1) as i64, (classes / 2) as i64];
        for level in SimdLevel::supported() {
            let out = CrossEntropy::new()
                .compute(
                    &Backend::CpuWith(level),
                    Batch::new(Logits::new(&logits, 3, classes), &targets[..]),
                    Request::new().lse(),
                )
                .unwrap();
            let expected = (classes as f64).ln();
            assert!(
                (out.loss.unwrap() as f64 - expected).abs() <= 1e-5 * expected.max(1.0),
                "C={classes} {level}"
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
    for level in SimdLevel::supported() {
        let out = CrossEntropy::new()
            .compute(
                &Backend::CpuWith(level),
                Batch::new(Logits::new(&logits, 1, 3), &[0i32][..]),
                Request::new().metrics(),
            )
            .unwrap();
        assert!(
            (out.loss.unwrap() - 1.1087).abs() < 1e-4,
            "{level}: {:?}",
            out.loss
        );
        let m = out.metrics.unwrap();
        assert_eq!(m.argmax, vec![1]);
        assert!((m.target_prob[0] - 0.33).abs() < 1e-6);
    }
    // The same numbers through probability inputs.
    let probs = [0.33f32, 0.42, 0.25];
    let out = CrossEntropy::new()
        .input(InputKind::PROBABILITIES)
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&probs, 1, 3), &[0i32][..]),
            Request::new(),
        )
        .unwrap();
    assert!((out.loss.unwrap() - 1.1087).abs() < 1e-4);
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
    for (label, options) in [
        ("plain", CrossEntropy::new()),
        ("smoothing", CrossEntropy::new().label_smoothing(0.3)),
    ] {
        let run = run_softmax(
            &case,
            &options,
            None,
            GradMode::OutOfPlace,
            cpu(SimdLevel::detected()),
        );
        let g = run.gradient.unwrap();
        for r in 0..case.rows {
            let s: f64 = g[r * 1000..(r + 1) * 1000].iter().map(|&v| v as f64).sum();
            assert!(s.abs() < 1e-7, "{label}: row {r} sums to {s}");
        }
    }
}

#[test]
fn in_place_and_out_of_place_agree() {
    for dtype in [Dtype::F32, Dtype::F16] {
        let case = Case::new(99, 33, 517, Hardness::ALL)
            .weighted(1)
            .dtype(dtype);
        let options = CrossEntropy::new().label_smoothing(0.05).z_loss(1e-3);
        let a = run_softmax(
            &case,
            &options,
            None,
            GradMode::OutOfPlace,
            cpu(SimdLevel::detected()),
        );
        let b = run_softmax(
            &case,
            &options,
            None,
            GradMode::InPlace,
            cpu(SimdLevel::detected()),
        );
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
            &format!("in place vs out of place {dtype:?}"),
            &b.gradient.unwrap(),
            &rounded,
            0.0,
            0.0,
        );
        assert_eq!(format!("{:?}", a.output), format!("{:?}", b.output));
    }
}

#[test]
fn same_bits_across_thread_counts() {
    let case = Case::new(
        5,
        777,
        1531,
        Hardness {
            outliers: true,
            masked: true,
            non_finite: false,
        },
    );
    let options = CrossEntropy::new().label_smoothing(0.1);
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
            runs[0].output.loss.unwrap().to_bits()
        );
        assert_eq!(format!("{:?}", run.output), format!("{:?}", runs[0].output));
        assert_eq!(run.gradient, runs[0].gradient);
    }
}

#[test]
fn degenerate_shapes() {
    // N = 0: none is empty, sum is 0, mean is NaN.
    let empty: [f32; 0] = [];
    let no_targets: [i64; 0] = [];
    let call = |reduction| {
        CrossEntropy::new()
            .reduction(reduction)
            .compute(
                &Backend::Cpu,
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
            &Backend::Cpu,
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
            &Backend::Cpu,
            Batch::new(Logits::new(&one, 1, 1), &[0i64][..]),
            Request::new(),
        )
        .unwrap();
    assert!((out.loss.unwrap() - 4.5).abs() < 1e-6);
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
    for level in SimdLevel::supported() {
        for (x, y, expected) in rows {
            let out = CrossEntropy::new()
                .reduction(Reduction::None)
                .compute(
                    &Backend::CpuWith(level),
                    Batch::new(Logits::new(&x, 1, 3), &[y][..]),
                    Request::new(),
                )
                .unwrap();
            let got = out.row_losses.unwrap()[0];
            assert!(
                got.to_bits() == expected.to_bits()
                    || (got.is_nan() && expected.is_nan())
                    || (got - expected).abs() < 1e-5,
                "{x:?} → {got}, expected {expected}"
            );
        }
        // ε > 0 with a masked class: +inf loss, finite gradient −(ε/C)·w on the masked class.
        let x = [f32::NEG_INFINITY, 1.0, 2.0];
        let mut grad = [0f32; 3];
        let out = CrossEntropy::new()
            .label_smoothing(0.3)
            .compute(
                &Backend::CpuWith(level),
                Batch::new(Logits::new(&x, 1, 3), &[1i64][..]),
                Request::new().gradient_into(&mut grad),
            )
            .unwrap();
        assert_eq!(out.loss, Some(inf));
        assert!((grad[0] + 0.1).abs() < 1e-7, "{grad:?}");
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let x = [0f32; 6];
    let go = |options: CrossEntropy, batch: Batch| {
        options
            .compute(&Backend::Cpu, batch, Request::new())
            .unwrap_err()
    };
    let e = go(
        CrossEntropy::new(),
        Batch::new(Logits::new(&x, 2, 4), &[0i64, 1][..]),
    );
    assert!(
        matches!(
            e,
            Error::Shape {
                what: "logits",
                expected: 8,
                actual: 6,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 2, 3), &[0i64][..])
        ),
        Error::Shape {
            what: "targets",
            ..
        }
    ));
    assert!(matches!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 6, 0), &[0i64; 6][..])
        ),
        Error::NoClasses
    ));
    let e = go(
        CrossEntropy::new(),
        Batch::new(Logits::new(&x, 2, 3), &[0i64, 3][..]),
    );
    assert_eq!(
        e,
        Error::TargetOutOfRange {
            row: 1,
            value: 3,
            classes: 3,
            ignore_index: -100
        }
    );
    assert!(e.to_string().contains("row 1"), "{e}");
    assert!(matches!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 2, 3), &[-1i32, 0][..])
        ),
        Error::TargetOutOfRange {
            row: 0,
            value: -1,
            ..
        }
    ));
    // ignore_index inside [0, C) is allowed and ignores that class's rows.
    assert!(CrossEntropy::new()
        .ignore_index(2)
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &[2i64, 0][..]),
            Request::new()
        )
        .is_ok());
    for bad in [
        CrossEntropy::new().label_smoothing(1.5),
        CrossEntropy::new().label_smoothing(f32::NAN),
        CrossEntropy::new().z_loss(-1.0),
        CrossEntropy::new().softcap(0.0),
        CrossEntropy::new().softcap(f32::INFINITY),
        CrossEntropy::new().logit_scale(f32::NAN),
    ] {
        assert!(
            matches!(
                go(bad, Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..])),
                Error::BadOption { .. }
            ),
            "{bad:?}"
        );
    }
    let w = [1.0f32, -1.0, 1.0];
    assert_eq!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..]).class_weights(&w)
        ),
        Error::BadWeight {
            what: "class_weights",
            index: 1,
            value: -1.0
        }
    );
    assert!(matches!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..]).class_weights(&w[..2])
        ),
        Error::Shape {
            what: "class_weights",
            ..
        }
    ));
    let soft = [0.5f32, 0.5, 0.0, 0.1, f32::NAN, 0.2];
    assert!(matches!(
        go(
            CrossEntropy::new(),
            Batch::new(Logits::new(&x, 2, 3), &soft[..])
        ),
        Error::BadValue {
            row: 1,
            class: 1,
            ..
        }
    ));
    let probs = [0.5f32, 0.5, 0.0, 0.1, 1.2, 0.2];
    assert!(matches!(
        go(
            CrossEntropy::new().input(InputKind::PROBABILITIES),
            Batch::new(Logits::new(&probs, 2, 3), &[0i64, 0][..])
        ),
        Error::BadValue {
            row: 1,
            class: 1,
            ..
        }
    ));
    // Gradient buffer and upstream lengths; in place on read-only logits.
    let mut g = [0f32; 5];
    let e = CrossEntropy::new()
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..]),
            Request::new().gradient_into(&mut g),
        )
        .unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            what: "gradient",
            expected: 6,
            actual: 5,
            ..
        }
    ));
    let e = CrossEntropy::new()
        .reduction(Reduction::None)
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..]),
            Request::new().upstream(&[1.0]),
        )
        .unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            what: "upstream",
            expected: 2,
            ..
        }
    ));
    let e = CrossEntropy::new()
        .compute(
            &Backend::Cpu,
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 0][..]),
            Request::new().gradient_in_place(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)));
    // Sizes whose byte count overflows.
    let e = go(
        CrossEntropy::new(),
        Batch::new(Logits::new(&x, usize::MAX / 2, 3), &[0i64; 6][..]),
    );
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    // BCE: targets outside [0, 1], index targets.
    let bad_t = [0.0f32, 1.0, 2.0, 0.0, 0.0, 0.0];
    assert!(matches!(
        BinaryCrossEntropy::new()
            .compute(
                &Backend::Cpu,
                Batch::new(Logits::new(&x, 2, 3), &bad_t[..]),
                Request::new()
            )
            .unwrap_err(),
        Error::BadValue {
            row: 0,
            class: 2,
            ..
        }
    ));
    let pw = [1.0f32, f32::INFINITY, 1.0];
    assert!(matches!(
        BinaryCrossEntropy::new()
            .compute(
                &Backend::Cpu,
                Batch::new(Logits::new(&x, 2, 3), &soft[..3].repeat(2)[..]).pos_weight(&pw),
                Request::new()
            )
            .unwrap_err(),
        Error::BadWeight {
            what: "pos_weight",
            index: 1,
            ..
        }
    ));
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
