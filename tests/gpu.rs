//! The WGSL kernels against the f64 reference and the CPU path, on whatever adapter wgpu finds
//! (Mesa llvmpipe in CI, on Vulkan and on GL). Without an adapter these tests fail unless
//! `XENT_SKIP_GPU=1`, which makes them say loudly that the GPU part was not run.

mod common;

use common::device::{
    bad_targets, buffer, check_loss_and_gradient, gpu, paths, read, record_and_submit,
    small_bindings, variants, DeviceCase,
};
use common::*;
use std::sync::Arc;
use xent::gpu::{
    fused_shape, launch_shape, target_error_row, DeviceBatch, DeviceGradient, DeviceOutputs,
    DeviceTargets, Gpu,
};
use xent::{
    Backend, Batch, CrossEntropy, Dtype, Error, InputKind, Layout, Logits, Reduction, Request,
};

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
fn shapes_against_reference_and_cpu() {
    let options = [
        CrossEntropy::new(),
        CrossEntropy::new()
            .label_smoothing(0.1)
            .z_loss(1e-3)
            .reduction(Reduction::Sum),
    ];
    for gpu in variants() {
        for classes in [
            1usize, 2, 3, 7, 10, 100, 1000, 4097, 32_000, 50_257, 128_256,
        ] {
            for rows in [0usize, 1, 7, 64, 1000] {
                if rows * classes > 1_500_000 {
                    continue;
                }
                let case = Case::new((rows * 7 + classes) as u64, rows, classes, Hardness::ALL)
                    .ignore_every(5, -100);
                for o in &options {
                    check(
                        &format!("{rows}×{classes}"),
                        &gpu,
                        &case,
                        o,
                        &[GradMode::OutOfPlace],
                    );
                }
            }
        }
    }
}

#[test]
fn options_dtypes_and_gradient_modes() {
    let base = CrossEntropy::new();
    let grid = [
        base,
        base.reduction(Reduction::None),
        base.label_smoothing(0.2),
        base.z_loss(1e-3),
        base.softcap(20.0),
        base.logit_scale(0.6),
        base.label_smoothing(0.1)
            .z_loss(1e-4)
            .softcap(30.0)
            .logit_scale(1.2)
            .ignore_index(2)
            .reduction(Reduction::Sum),
    ];
    for gpu in variants() {
        for options in &grid {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                let case = Case::new(3, 37, 333, Hardness::ALL)
                    .weighted(1)
                    .ignore_every(4, options.ignore_index)
                    .dtype(dtype);
                check(
                    &format!("{options:?} {dtype:?}"),
                    &gpu,
                    &case,
                    options,
                    &[GradMode::None, GradMode::OutOfPlace, GradMode::InPlace],
                );
                let i32_case = case.clone().i32_targets();
                check(
                    &format!("{options:?} {dtype:?} i32"),
                    &gpu,
                    &i32_case,
                    options,
                    &[GradMode::OutOfPlace],
                );
            }
        }
    }
}

#[test]
fn soft_targets_probabilities_and_layouts() {
    for gpu in variants() {
        for options in [
            CrossEntropy::new(),
            CrossEntropy::new()
                .label_smoothing(0.3)
                .z_loss(1e-3)
                .reduction(Reduction::Sum),
        ] {
            let soft = Case::new(
                5,
                19,
                77,
                Hardness {
                    outliers: true,
                    masked: false,
                    non_finite: true,
                },
            )
            .soft(2)
            .weighted(3);
            check(
                "soft",
                &gpu,
                &soft,
                &options,
                &[GradMode::OutOfPlace, GradMode::InPlace],
            );
            let spatial = Case::new(
                6,
                3 * 10,
                21,
                Hardness {
                    outliers: true,
                    masked: true,
                    non_finite: false,
                },
            )
            .weighted(1)
            .ignore_every(3, -100)
            .dtype(Dtype::F16)
            .class_dim1(10);
            check(
                "(N, C, d)",
                &gpu,
                &spatial,
                &options,
                &[GradMode::OutOfPlace, GradMode::InPlace],
            );
            let spatial_soft = Case::new(7, 2 * 6, 5, Hardness::default())
                .soft(1)
                .class_dim1(6);
            check(
                "(N, C, d) soft",
                &gpu,
                &spatial_soft,
                &options,
                &[GradMode::OutOfPlace],
            );
            let mut prob_options = options.input(InputKind::Probabilities { eps: 1e-6 });
            prob_options.z_loss = 0.0;
            let probs = Case::new(
                8,
                23,
                40,
                Hardness {
                    outliers: true,
                    masked: true,
                    non_finite: false,
                },
            )
            .probabilities()
            .weighted(2)
            .ignore_every(4, -100);
            check(
                "probabilities",
                &gpu,
                &probs,
                &prob_options,
                &[GradMode::OutOfPlace],
            );
        }
    }
}

#[test]
fn few_long_rows_are_split() {
    assert!(launch_shape(8, 256_000, Layout::Rows).splits > 1);
    for gpu in variants() {
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
        check(
            "8×256000 split",
            &gpu,
            &case,
            &CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4),
            &[GradMode::OutOfPlace],
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
            &[GradMode::OutOfPlace, GradMode::InPlace],
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
    let soft = Case::new(12, 150, 130, Hardness::default()).soft(3);
    check(
        "chunked soft",
        small,
        &soft,
        &CrossEntropy::new().label_smoothing(0.1),
        &[GradMode::OutOfPlace],
    );
}

#[test]
fn two_runs_give_the_same_bits() {
    for gpu in variants() {
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
        let a = run_softmax(&case, &options, None, GradMode::OutOfPlace, on(&gpu));
        let b = run_softmax(&case, &options, None, GradMode::OutOfPlace, on(&gpu));
        assert_eq!(
            a.output.loss.unwrap().to_bits(),
            b.output.loss.unwrap().to_bits()
        );
        assert_eq!(format!("{:?}", a.output), format!("{:?}", b.output));
        assert_eq!(a.gradient, b.gradient);
    }
}

#[test]
fn host_checks_come_first_and_the_device_stays_usable() {
    let Some(gpu) = gpu() else { return };
    let backend = Backend::Gpu(gpu.clone());
    let x = [0.5f32; 6];
    let e = CrossEntropy::new()
        .compute(
            &backend,
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 7][..]),
            Request::new(),
        )
        .unwrap_err();
    assert_eq!(
        e,
        Error::TargetOutOfRange {
            row: 1,
            value: 7,
            classes: 3,
            ignore_index: -100
        }
    );
    let out = CrossEntropy::new()
        .compute(
            &backend,
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 2][..]),
            Request::new(),
        )
        .unwrap();
    assert!((out.loss.unwrap() - 3f32.ln()).abs() < 1e-6);
}

/// A flag buffer too small for its u32.
fn short_flag(gpu: &Gpu) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 0,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

#[test]
fn device_resident_calls_and_bad_targets_on_the_device() {
    for gpu in paths() {
        device_resident_calls_on(gpu);
    }
}

fn device_resident_calls_on(gpu: Arc<Gpu>) {
    let case = Case::new(15, 50, 129, Hardness::default())
        .weighted(2)
        .ignore_every(6, -100);
    let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
    let reference = case.reference(&options, None);
    let uploaded = DeviceCase::upload(&gpu, &case);
    let loss = buffer(&gpu, &[0u8; 16]);
    let grad = buffer(&gpu, &vec![0u8; 50 * 129 * 4]);
    let batch = uploaded.batch();
    let outputs = DeviceOutputs {
        loss: &loss,
        rows: None,
        gradient: DeviceGradient::Into(&grad),
        upstream: None,
        upstream_scalar: 1.0,
        target_error: None,
    };
    // Two steps recorded into one encoder (scratch reused), nothing read back in between.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_cross_entropy(&mut encoder, &options, &batch, &outputs)
        .unwrap();
    gpu.record_cross_entropy(&mut encoder, &options, &batch, &outputs)
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    check_loss_and_gradient(&gpu, "device", &loss, &grad, &reference);
    assert_eq!(gpu.take_target_error().unwrap(), None);

    // A bad target, only on the device: flagged, nothing read out of bounds, device fine.
    let bad_targets = bad_targets(&gpu, &case.index_targets);
    let bad_batch = DeviceBatch {
        targets: DeviceTargets::I64(&bad_targets),
        ..batch
    };
    record_and_submit(&gpu, &options, &bad_batch, &outputs);
    // A host-slice call in between neither clears nor reports the recorded call's flag.
    let x = [0.5f32; 6];
    CrossEntropy::new()
        .compute(
            &Backend::Gpu(gpu.clone()),
            Batch::new(Logits::new(&x, 2, 3), &[0i64, 2][..]),
            Request::new(),
        )
        .unwrap();
    assert_eq!(gpu.take_target_error().unwrap(), Some(17));
    record_and_submit(&gpu, &options, &batch, &outputs);
    assert_eq!(gpu.take_target_error().unwrap(), None);
    assert_close(
        "device loss after a bad call",
        &read(&gpu, &loss)[..1],
        &[reference.loss.unwrap()],
        1e-5,
        1e-5,
    );

    // The caller's own flag: set by the bad call alone, read beside the loss with no wait
    // on the Gpu's flag, which stays clear.
    let flag = buffer(&gpu, &[0u8; 4]);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for targets in [&bad_targets, &uploaded.targets] {
        gpu.record_cross_entropy(
            &mut encoder,
            &options,
            &DeviceBatch {
                targets: DeviceTargets::I64(targets),
                ..batch
            },
            &outputs.target_error(&flag),
        )
        .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    let word = bytemuck::cast_slice::<f32, u32>(&read(&gpu, &flag))[0];
    assert_eq!(target_error_row(word), Some(17));
    assert_eq!(gpu.take_target_error().unwrap(), None);
    let e = gpu
        .record_cross_entropy(
            &mut gpu.device().create_command_encoder(&Default::default()),
            &options,
            &batch,
            &outputs.target_error(&short_flag(&gpu)),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");

    // Shape errors are typed, not panics.
    let short = buffer(&gpu, &[0u8; 64]);
    let e = gpu
        .record_cross_entropy(
            &mut gpu.device().create_command_encoder(&Default::default()),
            &options,
            &DeviceBatch {
                logits: &short,
                ..batch
            },
            &outputs,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn fused_and_three_pass_around_the_fit_bound() {
    // A row fits the fused kernel up to 16 logits per invocation: 4096 classes.
    for (classes, tpr) in [(1, 1), (16, 1), (17, 2), (100, 8), (1000, 64), (4096, 256)] {
        assert_eq!(
            fused_shape(classes, Layout::Rows).map(|s| s.invocations_per_row),
            Some(tpr)
        );
    }
    assert_eq!(fused_shape(4097, Layout::Rows), None);
    assert_eq!(fused_shape(7, Layout::ClassDim1 { spatial: 3 }), None);
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
    for gpu in paths() {
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
                    let reference = case.reference(options, upstream.as_deref());
                    for mode in [GradMode::OutOfPlace, GradMode::InPlace] {
                        let run = run_softmax(&case, options, upstream.as_deref(), mode, on(&gpu));
                        check_softmax(
                            &format!("{classes} classes {dtype:?} {options:?} [{gpu:?}, {mode:?}]"),
                            &case,
                            options,
                            &run,
                            &reference,
                        );
                    }
                }
            }
        }
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

#[test]
fn device_side_accuracy_counts() {
    let Some(gpu) = gpu() else { return };
    let (rows, classes) = (3000, 10);
    let case = Case::new(44, rows, classes, Hardness::default()).ignore_every(7, -100);
    let options = CrossEntropy::new();
    let reference = case.reference(&options, None);
    let valid = reference.valid.iter().filter(|&&v| v).count();
    let correct = reference.correct.iter().filter(|&&c| c).count();
    assert!(correct > 0 && valid < rows);

    let uploaded = DeviceCase::upload(&gpu, &case);
    let loss = buffer(&gpu, &[0u8; 4]);
    let records = buffer(&gpu, &vec![0u8; rows * 32]);
    let counts = buffer(&gpu, &[0xffu8; 8]);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let outputs = DeviceOutputs {
        rows: Some(&records),
        ..DeviceOutputs::new(&loss)
    };
    gpu.record_cross_entropy(&mut encoder, &options, &uploaded.batch(), &outputs)
        .unwrap();
    gpu.record_row_counts(&mut encoder, &records, rows, &counts)
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    let got = bytemuck::cast_slice::<f32, u32>(&read(&gpu, &counts)).to_vec();
    assert_eq!(got, vec![valid as u32, correct as u32]);

    // No rows: zero counts. Too small a counts buffer: a typed error.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_row_counts(&mut encoder, &records, 0, &counts)
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(
        bytemuck::cast_slice::<f32, u32>(&read(&gpu, &counts)),
        [0, 0]
    );
    let e = gpu
        .record_row_counts(&mut encoder_for(&gpu), &records, rows, &loss)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

fn encoder_for(gpu: &Gpu) -> wgpu::CommandEncoder {
    gpu.device().create_command_encoder(&Default::default())
}
