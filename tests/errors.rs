//! Bad input gets a typed error naming the row, value or shape, never a panic: the same
//! error from the CPU and the GPU (one validator, `plan`), before any work runs.

mod common;

use common::*;
use xent::{
    Backend, Batch, BinaryCrossEntropy, CrossEntropy, Error, InputKind, Logits, Reduction, Request,
};

/// The CPU, and the GPU's default device where there is one.
fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    out.extend(device::gpu().map(Backend::Gpu));
    out
}

#[test]
fn errors_name_what_is_wrong() {
    for backend in &backends() {
        let x = [0f32; 6];
        let go = |options: CrossEntropy, batch: Batch| {
            options.compute(backend, batch, Request::new()).unwrap_err()
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
                backend,
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
                backend,
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
                backend,
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
                backend,
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
                    backend,
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
                    backend,
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
}

/// The value checks scan parts of 65 536 values in parallel: the error names the first bad
/// value in memory order, though a later part holds one too; half-precision probabilities
/// are checked in their bits (−0 and 1 pass; the next half past 1, the least negative
/// subnormal, NaN and inf are refused); in the (N, C, d…) layout the value's row and class.
#[test]
fn value_checks_name_the_first_bad_value() {
    let (rows, classes) = (40_000usize, 5usize);
    let ok = |n: usize| -> Vec<f32> { (0..n).map(|i| (i % 7) as f32 / 8.0).collect() };
    let targets = vec![0i64; rows];
    let probabilities = CrossEntropy::new().input(InputKind::PROBABILITIES);
    let go = |options: CrossEntropy, batch: Batch| {
        options
            .compute(&Backend::Cpu, batch, Request::new())
            .unwrap_err()
    };
    let at = |row: usize, class: usize| {
        move |e: Error| match e {
            Error::BadValue {
                row: r, class: c, ..
            } => assert_eq!((r, c), (row, class), "{e}"),
            e => panic!("{e}"),
        }
    };
    // f32 probabilities and soft targets: bad values in the second and third parts.
    let mut probs = ok(rows * classes);
    probs[150_001] = -0.0; // passes
    probs[150_002] = 1.5;
    probs[70_003] = f32::NAN;
    at(14_000, 3)(go(
        probabilities,
        Batch::new(Logits::new(&probs, rows, classes), &targets[..]),
    ));
    let x = vec![0f32; rows * classes];
    let mut soft = ok(rows * classes);
    soft[199_999] = f32::INFINITY;
    soft[131_074] = -1e-30;
    at(26_214, 4)(go(
        CrossEntropy::new(),
        Batch::new(Logits::new(&x, rows, classes), &soft[..]),
    ));

    for bad in [1.0 + 1.0 / 1024.0f32, -1e-7, f32::NAN, f32::INFINITY] {
        let mut f16s: Vec<half::f16> = ok(rows * classes)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        f16s[1] = half::f16::from_f32(-0.0);
        f16s[2] = half::f16::ONE;
        f16s[100_007] = half::f16::from_f32(bad);
        // (N, C, d): 8 samples of 5 classes and 5 000 positions; value i is sample
        // i / 25 000, class (i % 25 000) / 5 000, position i % 5 000.
        let layout = Logits::class_dim1(&f16s, 8, classes, 5_000);
        at(4 * 5_000 + 7, 0)(go(probabilities, Batch::new(layout, &targets[..])));
        let mut bf16s: Vec<half::bf16> = ok(rows * classes)
            .into_iter()
            .map(half::bf16::from_f32)
            .collect();
        bf16s[0] = half::bf16::from_f32(-0.0);
        bf16s[3] = half::bf16::ONE;
        // The next bf16 past 1 (f16's rounds to 1 in bf16).
        bf16s[99_999] = half::bf16::from_bits(if bad > 1.0 {
            0x3F81
        } else {
            half::bf16::from_f32(bad).to_bits()
        });
        at(19_999, 4)(go(
            probabilities,
            Batch::new(Logits::new(&bf16s, rows, classes), &targets[..]),
        ));
    }
}
