//! SEMANTICS.md sections 1 and 6 on every path: a row's loss does not move when one constant is
//! added to all its logits (every `logp` is `(z − m) − ln S`, never `z − lse`), and a term
//! whose coefficient is exactly 0 is absent, not `0·inf`. Every CPU SIMD level, the GPU's
//! fused and three-pass paths, both shader variants, small bindings (long rows in pieces) and
//! vocab-parallel shards on both, against the f64 reference and hand-derived numbers.

mod common;

use common::backends::Path;
use common::device;
use common::shards::{run_sharded, uneven};
use common::*;
use proptest::prelude::*;
use xent::reference;
use xent::{
    Backend, Batch, BinaryCrossEntropy, CrossEntropy, Dtype, Error, Logits, Reduction, Request,
};

/// Every path a softmax call can take (`common::backends`), with 4 KiB bindings for the
/// small-binding GPU devices (rows over 1024 f32 are bound in pieces).
fn backends() -> Vec<Path> {
    common::backends::backends(4096)
}

/// The vocab-parallel backends: the matrix without its three-pass devices (shards have
/// kernels of their own; the shader variant and the binding size still matter).
fn shard_backends() -> Vec<Path> {
    backends()
        .into_iter()
        .filter(|p| !p.name.contains("three-pass"))
        .collect()
}

fn run_on(
    backend: &Backend,
) -> impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<xent::Output> + '_ {
    move |o, b, r| o.compute(backend, b, r)
}

/// A softmax call on `path`, or `None` where a small-binding GPU device refuses it with the
/// typed error it gives today (class weights larger than a binding, focal loss with smoothing
/// or soft targets on a row longer than one): any other error fails the test.
fn run(path: &Path, case: &Case, options: &CrossEntropy) -> Option<Run> {
    let name = &path.name;
    match try_run_softmax(
        case,
        options,
        None,
        GradMode::OutOfPlace,
        run_on(&path.backend),
    ) {
        Ok(run) => Some(run),
        Err(Error::Unsupported(why)) if path.small_bindings => {
            assert!(why.contains("binding"), "{name}: {why}");
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// A one-row case with the given logits and class-index target (f32, no options).
fn one_row(logits: &[f32], target: i64) -> Case {
    let mut case = Case::new(0, 1, logits.len(), Hardness::default());
    case.logits = logits.to_vec();
    case.index_targets = vec![target];
    case
}

#[test]
fn equal_logits_far_from_zero_give_log_2() {
    // Issue 11's table: the loss of [c, c] with target 0 is ln 2 at any c (the old
    // `z − lse` gave 0 from c = 1e8 on the GPU, 3e38 on the CPU and the f64 reference).
    let options = CrossEntropy::new().reduction(Reduction::None);
    for c in [1e8f32, 3e38, -3e38, 2f32.powi(100), f32::MAX, -f32::MAX] {
        let case = one_row(&[c, c], 0);
        let reference = case.reference(&options, None);
        assert_close(
            &format!("reference at {c}"),
            &[std::f32::consts::LN_2],
            &reference.row_losses,
            1e-7,
            0.0,
        );
        for Path { name, backend, .. } in backends() {
            for mode in [GradMode::OutOfPlace, GradMode::InPlace] {
                let run = run_softmax(&case, &options, None, mode, run_on(&backend));
                let label = format!("[{c}, {c}] on {name} ({mode:?})");
                // Hand-derived: loss ln 2, p = (½, ½), gradient (−½, ½), entropy ln 2.
                let out = &run.output;
                assert_close(
                    &label,
                    out.row_losses.as_ref().unwrap(),
                    &[std::f64::consts::LN_2],
                    1e-7,
                    0.0,
                );
                assert_close(
                    &label,
                    run.gradient.as_ref().unwrap(),
                    &[-0.5, 0.5],
                    1e-7,
                    0.0,
                );
                let m = out.metrics.as_ref().unwrap();
                assert_close(&label, &m.entropy, &[std::f64::consts::LN_2], 1e-6, 0.0);
                assert_close(&label, &m.target_prob, &[0.5], 1e-7, 0.0);
                assert_close(&label, &m.confidence, &[0.5], 1e-7, 0.0);
            }
        }
        for Path { name, backend, .. } in shard_backends() {
            let case = one_row(&[c, c, c], 1);
            let run = run_sharded(&name, &backend, &case, &options, &uneven(3, 2), None);
            let label = format!("[{c}; 3] in 2 shards on {name}");
            let ln3 = 3f64.ln();
            assert_close(
                &label,
                run.output.row_losses.as_ref().unwrap(),
                &[ln3],
                1e-6,
                0.0,
            );
            let third = 1.0 / 3.0;
            assert_close(
                &label,
                run.gradient.as_ref().unwrap(),
                &[third, third - 1.0, third],
                1e-7,
                0.0,
            );
        }
    }
}

#[test]
fn zero_coefficients_meet_infinities() {
    let inf = f32::INFINITY;
    // Soft targets [0.5, 0, 0.5] on logits [0, −inf, 1]: the masked class has target 0.
    // loss = ½·ln(1 + e) + ½·(ln(1 + e) − 1), gradient p·Σt − t = (1/(1+e) − ½, 0, ½ − 1/(1+e)).
    let mut soft = one_row(&[0.0, -inf, 1.0], 0);
    soft.dense_targets = Some(vec![0.5, 0.0, 0.5]);
    let h = 1.0 / (1.0 + std::f64::consts::E) - 0.5;
    // Class weight 0 on a masked class, with smoothing ε = 0.1f32 (C = 4, target 0, mean over
    // D = 1): the figures are the formula of SEMANTICS.md section 2 over classes 0, 2 and 3
    // only, in f64 with ε = 0.10000000149011612.
    let mut weighted = one_row(&[2.0, -inf, 0.5, 1.0], 0);
    weighted.class_weights = Some(vec![1.0, 0.0, 1.0, 1.0]);
    let weighted_gradient = [
        -0.31218157288509085,
        0.0,
        0.11173827316216213,
        0.20044329972292865,
    ];
    let cases = [
        (
            "soft targets",
            &soft,
            CrossEntropy::new(),
            0.8132616875182228,
            vec![h, 0.0, -h],
        ),
        (
            "weight 0 with smoothing",
            &weighted,
            CrossEntropy::new().label_smoothing(0.1),
            0.515259565263578,
            weighted_gradient.to_vec(),
        ),
    ];
    for (what, case, options, loss, gradient) in &cases {
        let reference = case.reference(options, None);
        assert!(
            (reference.row_losses[0] - loss).abs() < 1e-12,
            "{what}: reference {:?}",
            reference.row_losses
        );
        let r32: Vec<f32> = reference.gradient.iter().map(|&v| v as f32).collect();
        assert_close(what, &r32, gradient, 1e-12, 1e-7);
        for Path { name, backend, .. } in backends() {
            for mode in [GradMode::OutOfPlace, GradMode::InPlace] {
                let run = run_softmax(case, options, None, mode, run_on(&backend));
                let label = format!("{what} on {name} ({mode:?})");
                assert_close(&label, &[run.output.loss.unwrap()], &[*loss], 1e-6, 1e-6);
                assert_close(&label, run.gradient.as_ref().unwrap(), gradient, 1e-7, 1e-6);
            }
        }
    }
    for Path { name, backend, .. } in shard_backends() {
        let options = CrossEntropy::new().label_smoothing(0.1);
        let run = run_sharded(&name, &backend, &weighted, &options, &uneven(4, 2), None);
        let label = format!("weight 0 with smoothing in 2 shards on {name}");
        assert_close(
            &label,
            &[run.output.loss.unwrap()],
            &[0.515259565263578],
            1e-6,
            1e-6,
        );
        assert_close(
            &label,
            run.gradient.as_ref().unwrap(),
            &weighted_gradient,
            1e-7,
            1e-6,
        );
    }

    // BCE at x = ±inf with the target that zeroes the infinite term: losses 0, gradient 0.
    let x = [inf, -inf];
    let y = [1.0f32, 0.0];
    let mut bce_backends = vec![("cpu".to_string(), Backend::Cpu)];
    bce_backends.extend(device::gpu().map(|g| ("gpu".to_string(), Backend::Gpu(g))));
    for gamma in [0.0, 2.0] {
        let options = BinaryCrossEntropy::new()
            .reduction(Reduction::None)
            .focal_gamma(gamma);
        for (name, backend) in &bce_backends {
            let mut grad = [f32::NAN; 2];
            let out = options
                .compute(
                    backend,
                    Batch::new(Logits::new(&x, 1, 2), &y[..]),
                    Request::new().gradient_into(&mut grad),
                )
                .expect("BCE");
            let label = format!("BCE at ±inf, γ = {gamma}, on {name}");
            assert_eq!(out.row_losses.as_deref(), Some(&[0.0, 0.0][..]), "{label}");
            assert_eq!(grad, [0.0, 0.0], "{label}");
        }
    }
}

#[test]
fn focal_below_one_on_confident_rows_far_from_zero() {
    // The digits report of issue 11: confident rows (p[y] ≈ 1 − 1e-6) whose logits sit far
    // from 0, focal γ < 1. The forward's focal factor and the backward's must both come from
    // the split logp, or the target's gradient is off by ~1e-5 where it should be ~1e-11.
    let mut case = Case::new(236, 40, 10, Hardness::default()).ignore_every(9, -100);
    for r in 0..case.rows {
        let y = case.index_targets[r].max(0) as usize;
        let offset = [37.5f32, -812.25, 5000.0, 0.0][r % 4];
        for c in 0..case.classes {
            let v = &mut case.logits[r * case.classes + c];
            *v = 0.3 * *v + offset + if c == y { 16.0 } else { 0.0 };
        }
    }
    for gamma in [0.3f32, 0.5, 2.0] {
        for options in [
            CrossEntropy::new().focal_gamma(gamma),
            CrossEntropy::new()
                .focal_gamma(gamma)
                .reduction(Reduction::Sum)
                .label_smoothing(0.05),
        ] {
            let reference = case.reference(&options, None);
            for Path { name, backend, .. } in backends() {
                let run = run_softmax(
                    &case,
                    &options,
                    None,
                    GradMode::OutOfPlace,
                    run_on(&backend),
                );
                check_softmax(
                    &format!("focal γ = {gamma} on {name}"),
                    &case,
                    &options,
                    &run,
                    &reference,
                );
            }
        }
    }
}

/// The mantissa bits of a dtype (with the implicit one) and its largest finite exponent.
fn precision(dtype: Dtype) -> (i32, i32) {
    match dtype {
        Dtype::F32 => (24, 127),
        Dtype::F16 => (11, 15),
        Dtype::Bf16 => (8, 127),
    }
}

/// A row of `x` and an offset `c` with `x + c` and `x` exact in `dtype`: with `U` the unit
/// `2^(e − p + 2)`, `c = k·U` for `k` in `[2^(p−2) + 2^(p−3), 2^(p−1) − 2^(p−3)]` (so
/// `|c| ≈ 2^e`) and `x = j·U` for `|j| < 2^(p−3)`: `|j + k| < 2^(p−1)`, an integer of p − 1
/// bits times a power of two.
#[derive(Debug, Clone)]
struct Offset {
    c: f32,
    unit: f32,
}

fn offset(dtype: Dtype, exponent: i32, k_frac: f64, negative: bool) -> Offset {
    let (p, max_e) = precision(dtype);
    let e = exponent.min(max_e);
    let unit = 2f64.powi(e - p + 2);
    let (lo, hi) = (
        2f64.powi(p - 2) + 2f64.powi(p - 3),
        2f64.powi(p - 1) - 2f64.powi(p - 3),
    );
    let k = (lo + (hi - lo) * k_frac).floor();
    let c = k * unit * if negative { -1.0 } else { 1.0 };
    Offset {
        c: c as f32,
        unit: unit as f32,
    }
}

/// Options without softcap and z-loss (they are not shift-invariant), from a bit mask.
fn shift_invariant_options(bits: u32, gamma: f32) -> CrossEntropy {
    let mut o = CrossEntropy::new();
    o = match bits % 3 {
        0 => o,
        1 => o.reduction(Reduction::Sum),
        _ => o.reduction(Reduction::None),
    };
    if bits & 4 != 0 {
        o = o.label_smoothing(0.15);
    }
    if bits & 8 != 0 {
        // A power of two keeps s·(x + c) exact.
        o = o.logit_scale(0.5);
    }
    if bits & 16 != 0 {
        o = o.focal_gamma(gamma);
    }
    if bits & 32 != 0 {
        o = o.ignore_index(1);
    }
    o
}

proptest! {
    // 48 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    /// Adding one constant `c` (up to the dtype's largest binade, either sign) to every logit
    /// of a row, where `x + c` is exact, leaves every row's loss and gradient as they were, on
    /// every backend, and equal to the f64 reference.
    #[test]
    fn a_common_offset_changes_nothing(
        seed in any::<u64>(),
        dtype_index in 0usize..3,
        rows in 1usize..5,
        classes in prop_oneof![1usize..40, 1000usize..1400],
        exponent in 0i32..128,
        k_frac in 0.0f64..1.0,
        negative in any::<bool>(),
        spread_bits in 0i32..20,
        option_bits in 0u32..64,
        extras in 0u32..16,
        gamma in prop_oneof![Just(0.5f32), Just(2.0f32)],
    ) {
        let dtype = [Dtype::F32, Dtype::F16, Dtype::Bf16][dtype_index];
        let (p, _) = precision(dtype);
        let off = offset(dtype, exponent, k_frac, negative);
        let options = shift_invariant_options(option_bits, gamma);
        // x = j·U, |j| < 2^(p−3), spread over a random number of bits. The spread of x itself
        // stays below 2^100, so that sums over a row of C spread-sized f32 terms stay finite:
        // the offset is what this test moves to the end of the range.
        let mut rng = Rng(seed);
        // (Where one unit is already past 2^100, every x is 0: all logits equal c.)
        let j_max = (2f64.powi(p - 3) - 1.0).min((2f64.powi(100) / off.unit as f64).floor());
        let spread = 2f64.powi(spread_bits.min(p - 3)).min(j_max).max(1.0);
        let mut case = Case::new(seed, rows, classes, Hardness::default()).dtype(dtype);
        for v in &mut case.logits {
            let j = (rng.normal() as f64 * spread).round().clamp(-j_max, j_max);
            *v = (j * off.unit as f64) as f32;
        }
        if extras & 1 != 0 && classes > 1 {
            // A masked class per row (never the only class).
            for r in 0..rows {
                case.logits[r * classes + rng.below(classes)] = f32::NEG_INFINITY;
            }
        }
        if extras & 2 != 0 {
            case = case.weighted(seed);
        }
        if extras & 4 != 0 {
            case = case.sample_weighted(seed);
        }
        let soft = extras & 8 != 0;
        if soft {
            case = case.soft(seed);
        }
        let mut shifted = case.clone();
        for v in &mut shifted.logits {
            *v += off.c;
        }
        let label = format!("{dtype:?} c = {:e} (U = {:e}), {options:?}", off.c, off.unit);

        // The oracle is invariant itself.
        let reference = case.reference(&options, None);
        let reference_shifted = shifted.reference(&options, None);
        assert_close(&format!("{label}: reference rows"),
            &reference_shifted.row_losses.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &reference.row_losses, 1e-6, 1e-6);

        for path in backends() {
            let name = &path.name;
            let Some(run) = run(&path, &shifted, &options) else { continue };
            check_softmax(&format!("{label} on {name}"), &shifted, &options, &run, &reference_shifted);
            let plain = run_softmax(&case, &options, None, GradMode::OutOfPlace, run_on(&path.backend));
            assert_losses(&format!("{label} on {name}: x vs x + c"),
                run.output.row_losses.as_ref().unwrap(),
                &plain.output.row_losses.as_ref().unwrap().iter().map(|&v| v as f64).collect::<Vec<_>>());
        }
        if !soft && dtype == Dtype::F32 {
            let upstream: Vec<f32> = match options.reduction {
                Reduction::None => vec![1.0; rows],
                _ => vec![1.0],
            };
            for Path { name, backend, small_bindings } in shard_backends() {
                for k in [2usize, 3] {
                    // `uneven` gives shard i about i/Σ of the classes (none empty here). A GPU
                    // shard binds at least 4 rows at a time, so 4 KiB bindings refuse (typed)
                    // shard rows over ~240 f32.
                    if classes < k * (k + 1) || (small_bindings && classes > 200) {
                        continue;
                    }
                    let label = format!("{label}, {k} shards on {name}");
                    let run = run_sharded(&label, &backend, &shifted, &options, &uneven(classes, k), Some(&upstream));
                    let reference = shifted.reference(&options, Some(&upstream));
                    assert_losses(&label, run.output.row_losses.as_ref().unwrap(), &reference.row_losses);
                    assert_close(&label, run.gradient.as_ref().unwrap(), &reference.gradient, 1e-6, 1e-4);
                }
            }
        }
    }

    /// Masked (−inf) classes whose coefficient is 0 — soft target 0, class weight 0 with label
    /// smoothing, BCE's `y` or `1 − y` — leave every loss and gradient finite on every backend,
    /// equal to the reference; with soft targets and no smoothing the masked classes can be
    /// dropped from the row altogether, which gives the same loss.
    #[test]
    fn zero_coefficients_keep_masked_rows_finite(
        seed in any::<u64>(),
        rows in 1usize..5,
        classes in prop_oneof![2usize..40, 1000usize..1400],
        smoothing in prop_oneof![Just(0.0f32), Just(0.1f32)],
        option_bits in 0u32..64,
    ) {
        let mut rng = Rng(seed);
        let base = Case::new(seed, rows, classes, Hardness::default());
        let gamma = if option_bits & 16 != 0 { 0.5 } else { 0.0 };
        let reduction = [Reduction::Mean, Reduction::Sum, Reduction::None][(option_bits % 3) as usize];
        let mask: Vec<bool> = (0..rows * classes).map(|_| rng.below(4) == 0).collect();

        // Soft targets: 0 on the masked classes (and the row keeps one unmasked class).
        let mut soft = base.clone().soft(seed);
        let t = soft.dense_targets.as_mut().unwrap();
        for r in 0..rows {
            let row_mask = |c: usize| mask[r * classes + c] && c != r % classes;
            for c in 0..classes {
                if row_mask(c) {
                    soft.logits[r * classes + c] = f32::NEG_INFINITY;
                    t[r * classes + c] = 0.0;
                }
            }
        }
        // Class weights: 0 on the masked classes; targets never masked.
        let mut weighted = base.clone().weighted(seed);
        let w = weighted.class_weights.as_mut().unwrap();
        let masked_classes: Vec<usize> = (0..classes).filter(|&c| mask[c] && c % 7 != 0).collect();
        for &c in &masked_classes {
            w[c] = 0.0;
        }
        for r in 0..rows {
            for &c in &masked_classes {
                weighted.logits[r * classes + c] = f32::NEG_INFINITY;
            }
            let y = weighted.index_targets[r] as usize;
            if masked_classes.contains(&y) {
                weighted.index_targets[r] = (y / 7 * 7) as i64;
            }
        }

        let soft_options = CrossEntropy::new().reduction(reduction).focal_gamma(gamma);
        let weighted_options = soft_options.label_smoothing(smoothing.max(0.05));
        for (what, case, options) in [
            ("soft targets", &soft, soft_options),
            ("class weights", &weighted, weighted_options),
        ] {
            let reference = case.reference(&options, None);
            prop_assert!(reference.row_losses.iter().all(|v| v.is_finite()), "{what}: reference");
            prop_assert!(reference.gradient.iter().all(|v| v.is_finite()), "{what}: reference");
            for path in backends() {
                let name = &path.name;
                let Some(run) = run(&path, case, &options) else { continue };
                check_softmax(&format!("{what} on {name}"), case, &options, &run, &reference);
            }
        }
        // The same soft-target rows without their masked columns (no smoothing: ε/C would
        // change with C): the reference's loss is the same.
        let options = CrossEntropy::new().reduction(Reduction::None).focal_gamma(gamma);
        for r in 0..rows {
            let (x, t) = one_row_soft(&soft, r);
            let (kept_x, kept_t): (Vec<f32>, Vec<f32>) =
                x.iter().zip(&t).filter(|(v, _)| v.is_finite()).unzip();
            let dropped = reference::cross_entropy(&options, &Batch::new(Logits::new(&kept_x, 1, kept_x.len()), &kept_t[..]), None).unwrap();
            let full = reference::cross_entropy(&options, &Batch::new(Logits::new(&x, 1, classes), &t[..]), None).unwrap();
            prop_assert!((dropped.row_losses[0] - full.row_losses[0]).abs() <= 1e-12 * full.row_losses[0].abs().max(1.0),
                "row {r}: {} without the masked columns, {} with", dropped.row_losses[0], full.row_losses[0]);
        }

        // BCE: y = 1 on +inf logits and y = 0 on −inf ones.
        let mut bce = base.multi_label(seed, option_bits & 32 != 0);
        let y = bce.dense_targets.as_mut().unwrap();
        for (i, &m) in mask.iter().enumerate() {
            if m {
                let positive = rng.below(2) == 0;
                bce.logits[i] = if positive { f32::INFINITY } else { f32::NEG_INFINITY };
                y[i] = if positive { 1.0 } else { 0.0 };
            }
        }
        let bce_options = BinaryCrossEntropy::new().reduction(reduction).focal_gamma(gamma * 4.0);
        let reference = bce.reference_bce(&bce_options, None);
        prop_assert!(reference.row_losses.iter().all(|v| v.is_finite()), "BCE reference");
        let mut bce_backends = vec![Backend::Cpu];
        bce_backends.extend(device::gpu().map(Backend::Gpu));
        for backend in &bce_backends {
            let mut storage = bce.storage();
            let mut grad = vec![f32::NAN; rows * classes];
            let out = bce_options
                .compute(backend, bce.batch(&mut storage, &[], false),
                    Request::new().row_losses().gradient_into(&mut grad))
                .expect("BCE");
            let label = format!("BCE on {}", backend.name());
            assert_losses(&label, out.row_losses.as_ref().unwrap(), &reference.row_losses);
            assert_close(&label, &grad, &reference.gradient, 1e-6, 1e-4);
        }
    }
}

/// Row `r` of a soft-target case: its logits and targets.
fn one_row_soft(case: &Case, r: usize) -> (Vec<f32>, Vec<f32>) {
    let span = r * case.classes..(r + 1) * case.classes;
    (
        case.logits[span.clone()].to_vec(),
        case.dense_targets.as_ref().unwrap()[span].to_vec(),
    )
}

#[test]
fn masked_classes_far_below_the_max() {
    // A first chunk of classes with target (or weight) 0 whose logits sit far below the rest,
    // down to f32::MIN (`finfo.min` masking): the linear sums must stay centred on the running
    // max, not on the first chunk's.
    for fill in [-1e4f32, f32::MIN] {
        let classes = 2048;
        let mut case = Case::new(5, 3, classes, Hardness::default());
        for r in 0..case.rows {
            case.logits[r * classes..r * classes + 1024].fill(fill);
            case.index_targets[r] = 1024 + r as i64;
        }
        let mut soft = case.clone().soft(5);
        for r in 0..soft.rows {
            let t = &mut soft.dense_targets.as_mut().unwrap()[r * classes..(r + 1) * classes];
            t[..1024].fill(0.0);
            let s: f32 = t.iter().sum();
            t.iter_mut().for_each(|v| *v /= s);
        }
        let mut weighted = case.clone().weighted(5);
        weighted.class_weights.as_mut().unwrap()[..1024].fill(0.0);
        for (what, case, options) in [
            ("soft targets", &soft, CrossEntropy::new()),
            (
                "class weights",
                &weighted,
                CrossEntropy::new().label_smoothing(0.1),
            ),
        ] {
            let reference = case.reference(&options, None);
            assert!(reference.row_losses.iter().all(|v| v.is_finite()));
            for path in backends() {
                let name = &path.name;
                let Some(run) = run(&path, case, &options) else {
                    continue;
                };
                check_softmax(
                    &format!("{what} below {fill} on {name}"),
                    case,
                    &options,
                    &run,
                    &reference,
                );
            }
        }
    }
}

#[test]
fn a_zero_coefficient_never_hides_a_nan_logit() {
    // BCE with weight 0 (and pos_weight 0 with y = 1) on a NaN logit: the loss is NaN.
    let x = [f32::NAN, f32::NAN];
    let y = [0.0f32, 1.0];
    let weight = [0.0f32, 1.0];
    let pos_weight = [1.0f32, 0.0];
    let mut backends = vec![Backend::Cpu];
    backends.extend(device::gpu().map(Backend::Gpu));
    for backend in &backends {
        for gamma in [0.0, 2.0] {
            let options = BinaryCrossEntropy::new()
                .reduction(Reduction::None)
                .focal_gamma(gamma);
            let mut batch = Batch::new(Logits::new(&x, 1, 2), &y[..]);
            batch.class_weights = Some(&weight);
            batch.pos_weight = Some(&pos_weight);
            let out = options
                .compute(backend, batch, Request::new())
                .expect("BCE");
            let losses = out.row_losses.unwrap();
            assert!(
                losses.iter().all(|v| v.is_nan()),
                "{} γ = {gamma}: {losses:?}",
                backend.name()
            );
        }
    }
}
