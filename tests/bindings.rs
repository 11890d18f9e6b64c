//! Storage bindings smaller than the data, on the GPU: rows cut into chunks that each fit a
//! binding (windows that start anywhere a 4-row unit does), and rows longer than a binding
//! bound a piece of whole splits at a time (partials) and a run of elements at a time
//! (backward); what still cannot be bound is refused with a typed error. Against the f64
//! reference and the CPU path. (Every test by feature also runs on 32 KiB bindings through
//! `common::backends`; these go further: 4 and 64 KiB, every option and dtype.)

mod common;

use common::device::small_bindings;
use common::*;
use std::sync::Arc;
use xent::gpu::Gpu;
use xent::{Backend, Batch, CrossEntropy, Dtype, Error, Reduction, Request};

fn on(gpu: &Arc<Gpu>) -> impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<xent::Output> + '_ {
    move |o, b, r| o.compute(&Backend::Gpu(gpu.clone()), b, r)
}

fn cpu(o: &CrossEntropy, b: Batch, r: Request) -> xent::Result<xent::Output> {
    o.compute(&Backend::Cpu, b, r)
}

/// GPU vs reference, and GPU vs CPU, for every gradient mode.
fn check(label: &str, gpu: &Arc<Gpu>, case: &Case, options: &CrossEntropy, modes: &[GradMode]) {
    let reference = case.reference(options, None);
    for &mode in modes {
        let run = run_softmax(case, options, None, mode, on(gpu));
        let label = format!("{label} [{gpu:?}, {mode:?}]");
        check_softmax(&label, case, options, &run, &reference);
        let cpu_run = run_softmax(case, options, None, mode, cpu);
        let gpu_losses = run.output.row_losses.as_ref().unwrap();
        let cpu_losses: Vec<f64> = cpu_run
            .output
            .row_losses
            .as_ref()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert_close(
            &format!("{label}: GPU vs CPU row losses"),
            gpu_losses,
            &cpu_losses,
            2e-5,
            2e-5,
        );
    }
}

#[test]
fn chunked_dispatch_matches_reference() {
    // 64 KiB bindings force many chunks (and windows that don't start on 256-byte boundaries).
    for small in small_bindings(64 << 10) {
        chunked_dispatch_on(&small);
    }
}

fn chunked_dispatch_on(small: &Arc<Gpu>) {
    for dtype in [Dtype::F32, Dtype::F16] {
        let case = Case::new(10, 203, 301, Hardness::ALL)
            .weighted(2)
            .dtype(dtype);
        check(
            &format!("chunked {dtype:?}"),
            small,
            &case,
            &CrossEntropy::new().label_smoothing(0.05),
            // Loss only: the fused kernel's loss-only variant, chunk by chunk.
            &[GradMode::None, GradMode::OutOfPlace, GradMode::InPlace],
        );
    }
    let spatial = Case::new(11, 40 * 12, 9, Hardness::default()).class_dim1(12);
    check(
        "chunked (N, C, d)",
        small,
        &spatial,
        &CrossEntropy::new(),
        &[GradMode::OutOfPlace],
    );
    // f16 in place, 62 positions a sample (even: pairs of invocations own the words), in
    // chunks past the first (their rows offset, and their windows: 5084 bytes a sample is
    // no multiple of the storage alignment), with each row's upstream.
    let half = Case::new(13, 16 * 62, 41, Hardness::default())
        .ignore_every(5, -100)
        .dtype(Dtype::F16)
        .class_dim1(62);
    let none = CrossEntropy::new().reduction(Reduction::None);
    let per_row: Vec<f32> = (0..half.rows).map(|r| 0.5 + r as f32 * 1e-3).collect();
    let reference = half.reference(&none, Some(&per_row));
    let run = run_softmax(&half, &none, Some(&per_row), GradMode::InPlace, on(small));
    check_softmax(
        &format!("chunked (N, 41, 62) f16 in place, upstream [{small:?}]"),
        &half,
        &none,
        &run,
        &reference,
    );
    let soft = Case::new(12, 150, 130, Hardness::default()).soft(3);
    check(
        "chunked soft",
        small,
        &soft,
        &CrossEntropy::new().label_smoothing(0.1),
        &[GradMode::OutOfPlace],
    );
}

/// Short rows in numbers that make the fused kernel's invocations own four rows each, their
/// sums added into one reduction slot (`launch::fused_rows_per_invocation`): one binding, and
/// 4 MiB bindings that cut 16-class f32 rows (and f32 gradients) into two chunks of whole tiles
/// (the per-row records, 32 bytes a row, must fit one; more rows are refused); index targets with ignored rows, class
/// and sample weights, loss only and the mean's gradient (whose targets pass fills the same
/// slots in the same order), f32, f16 and bf16, odd and whole-vec4 rows.
#[test]
fn short_rows_several_per_invocation() {
    let one_binding = common::device::gpu().into_iter().map(|g| (g, [3, 16, 2]));
    let chunked = small_bindings(4 << 20)
        .into_iter()
        .take(1)
        .map(|g| (g, [16; 3]));
    for (gpu, classes) in one_binding.chain(chunked) {
        for (classes, dtype) in classes
            .into_iter()
            .zip([Dtype::F32, Dtype::F16, Dtype::Bf16])
        {
            // 69 999 rows: 68 whole tiles of 1024 and a last one of 367 rows.
            let case = Case::new(31, 69_999, classes, Hardness::default())
                .weighted(4)
                .sample_weighted(5)
                .ignore_every(7, -100)
                .dtype(dtype);
            let mean = CrossEntropy::new().label_smoothing(0.05).z_loss(1e-3);
            for options in [mean, mean.reduction(Reduction::Sum)] {
                check(
                    &format!("short rows, 4 per invocation, C = {classes} {dtype:?}"),
                    &gpu,
                    &case,
                    &options,
                    &[GradMode::None, GradMode::OutOfPlace, GradMode::InPlace],
                );
            }
            // Dense targets: the mean's targets pass without index targets.
            let soft = Case::new(32, 69_999, classes, Hardness::default())
                .soft(6)
                .sample_weighted(7)
                .dtype(dtype);
            check(
                &format!("short soft rows, 4 per invocation, C = {classes} {dtype:?}"),
                &gpu,
                &soft,
                &mean,
                &[GradMode::None, GradMode::OutOfPlace],
            );
        }
        // The (N, C, d…) layout: samples of 32 768 positions (32 tiles; on 4 MiB bindings a
        // chunk each), 21 classes (16 in registers, 5 streamed) and 3, f32 and bf16 (whose
        // in-place gradient is stored a word, two positions, at a time by the pair of
        // invocations that owns it).
        let all = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace];
        for (classes, dtype, modes) in [(21, Dtype::F32, &all[..]), (3, Dtype::Bf16, &all[..])] {
            let case = Case::new(34, 3 * 32_768, classes, Hardness::ALL)
                .weighted(4)
                .ignore_every(7, -100)
                .dtype(dtype)
                .class_dim1(32_768);
            let mean = CrossEntropy::new().label_smoothing(0.05).z_loss(1e-3);
            for options in [mean, mean.reduction(Reduction::None)] {
                check(
                    &format!("(3, {classes}, 32768), 4 rows per invocation, {dtype:?}"),
                    &gpu,
                    &case,
                    &options,
                    modes,
                );
            }
        }
    }
    // More rows than a binding holds of per-row records (32 bytes a row; the three-pass
    // path's partials, 48): refused, not bound.
    for gpu in small_bindings(4 << 20) {
        let case = Case::new(35, 140_000, 2, Hardness::default());
        let e = run_softmax_result(&gpu, &case, &CrossEntropy::new());
        assert!(
            matches!(&e, Err(Error::Unsupported(m)) if m.contains("per-row records")
                || m.contains("per-row partials")),
            "{e:?}"
        );
    }
}

#[test]
fn rows_longer_than_a_binding_are_bound_in_pieces() {
    // 4 KiB bindings: each row below is bound a piece of whole splits at a time (partials) and
    // a run of elements at a time (backward).
    for gpu in small_bindings(4 << 10) {
        let grid = [
            CrossEntropy::new(),
            CrossEntropy::new()
                .label_smoothing(0.1)
                .z_loss(1e-3)
                .softcap(20.0)
                .reduction(Reduction::Sum),
            CrossEntropy::new().focal_gamma(2.0),
        ];
        for (rows, classes) in [(1usize, 1000usize), (3, 5003), (2, 20_000)] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                let case = Case::new(classes as u64, rows, classes, Hardness::ALL)
                    .sample_weighted(3)
                    .ignore_every(5, -100)
                    .dtype(dtype);
                for options in &grid {
                    check(
                        &format!("long {rows}×{classes} {dtype:?} {options:?}"),
                        &gpu,
                        &case,
                        options,
                        &[GradMode::None, GradMode::OutOfPlace, GradMode::InPlace],
                    );
                }
            }
        }
        let soft = Case::new(17, 3, 3001, Hardness::default()).soft(3);
        check(
            "long soft",
            &gpu,
            &soft,
            &CrossEntropy::new().label_smoothing(0.1),
            &[GradMode::OutOfPlace],
        );
        // Still refused: focal loss with smoothing (its pass reads whole rows), the (N, C, d…)
        // layout, and class weights larger than a binding.
        let case = Case::new(18, 3, 5000, Hardness::default());
        let e = run_softmax_result(&gpu, &case.clone().weighted(1), &CrossEntropy::new());
        assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
        let e = run_softmax_result(
            &gpu,
            &case,
            &CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
        );
        assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
        let spatial = Case::new(19, 2, 3000, Hardness::default()).class_dim1(2);
        let e = run_softmax_result(&gpu, &spatial, &CrossEntropy::new());
        assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    }
}

fn run_softmax_result(
    gpu: &Arc<Gpu>,
    case: &Case,
    options: &CrossEntropy,
) -> xent::Result<xent::Output> {
    let mut storage = case.storage();
    let t32 = case.targets_i32();
    let mut grad = vec![0f32; case.rows * case.classes];
    options.compute(
        &Backend::Gpu(gpu.clone()),
        case.batch(&mut storage, &t32, false),
        Request::new().gradient_into(&mut grad),
    )
}
