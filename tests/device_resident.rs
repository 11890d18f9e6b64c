//! The device-resident API (`record_*` into the caller's encoder): two calls in one encoder
//! with nothing read back between them, bad targets only on the device (flagged, the device
//! still usable, a host call never taking a recorded call's flag), typed errors for buffers
//! too small, device-side accuracy counts, and the [`Stopwatch`] that times recorded work.

mod common;

use common::device::{
    bad_targets, buffer, check_loss_and_gradient, gpu, paths, read, record_and_submit, DeviceCase,
    Packed,
};
use common::*;
use std::sync::Arc;
use xent::gpu::{
    target_error_row, Clock, DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, Gpu,
    GpuOptions, GpuRow, Stopwatch,
};
use xent::{Backend, Batch, CrossEntropy, Error, Logits, Request};

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

/// Bad targets on the device where the fused kernel's invocations own four rows each (69 999
/// short rows): the lowest bad row is flagged whichever of its invocation's rows it is, by the
/// targets pass (gradient) and by the loss-only kernel, and the good rows' loss and gradient
/// are the reference's.
#[test]
fn bad_targets_on_the_device_at_four_rows_per_invocation() {
    let Some(gpu) = gpu() else { return };
    let case = Case::new(16, 69_999, 3, Hardness::default()).ignore_every(5, -100);
    let options = CrossEntropy::new().label_smoothing(0.1);
    let reference = case.reference(&options, None);
    let uploaded = DeviceCase::upload(&gpu, &case);
    let loss = buffer(&gpu, &[0u8; 16]);
    let grad = buffer(&gpu, &vec![0u8; case.logits.len() * 4]);
    let outputs = DeviceOutputs {
        gradient: DeviceGradient::Into(grad.slice(..)),
        ..DeviceOutputs::new(loss.slice(..))
    };
    let loss_only = DeviceOutputs::new(loss.slice(..));
    // Row 5 · 1024 + 3 · 256 + 7: the fourth row of its invocation in tile 5; a later one too.
    let mut bad = case.index_targets.clone();
    let first_bad = 5 * 1024 + 3 * 256 + 7;
    bad[first_bad] = 3;
    bad[60_001] = -7;
    let bad = buffer(&gpu, bytemuck::cast_slice(&bad));
    let bad_batch = DeviceBatch {
        targets: DeviceTargets::I64(bad.slice(..)),
        ..uploaded.batch()
    };
    for out in [&outputs, &loss_only] {
        record_and_submit(&gpu, &options, &bad_batch, out);
        assert_eq!(gpu.take_target_error().unwrap(), Some(first_bad));
        record_and_submit(&gpu, &options, &uploaded.batch(), out);
        assert_eq!(gpu.take_target_error().unwrap(), None);
    }
    check_loss_and_gradient(&gpu, "four rows per invocation", &loss, &grad, &reference);
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
        loss: loss.slice(..),
        rows: None,
        gradient: DeviceGradient::Into(grad.slice(..)),
        upstream: None,
        upstream_scalar: 1.0,
        target_error: None,
        saved: None,
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
        targets: DeviceTargets::I64(bad_targets.slice(..)),
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

    // Loss only (the fused kernel checks targets itself where rows fit it): flagged too, and
    // the loss of the good rows is still the reference's.
    let loss_only = DeviceOutputs::new(loss.slice(..));
    record_and_submit(&gpu, &options, &bad_batch, &loss_only);
    assert_eq!(gpu.take_target_error().unwrap(), Some(17));
    record_and_submit(&gpu, &options, &batch, &loss_only);
    assert_eq!(gpu.take_target_error().unwrap(), None);
    assert_close(
        "loss-only device loss",
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
                targets: DeviceTargets::I64(targets.slice(..)),
                ..batch
            },
            &outputs.target_error(flag.slice(..)),
        )
        .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    let word = bytemuck::cast_slice::<f32, u32>(&read(&gpu, &flag))[0];
    assert_eq!(target_error_row(word), Some(17));
    assert_eq!(gpu.take_target_error().unwrap(), None);
    let short_flag = short_flag(&gpu);
    let e = gpu
        .record_cross_entropy(
            &mut gpu.device().create_command_encoder(&Default::default()),
            &options,
            &batch,
            &outputs.target_error(short_flag.slice(..)),
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
                logits: short.slice(..),
                ..batch
            },
            &outputs,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
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
        rows: Some(records.slice(..)),
        ..DeviceOutputs::new(loss.slice(..))
    };
    gpu.record_cross_entropy(&mut encoder, &options, &uploaded.batch(), &outputs)
        .unwrap();
    gpu.record_row_counts(&mut encoder, records.slice(..), rows, counts.slice(..))
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    let got = bytemuck::cast_slice::<f32, u32>(&read(&gpu, &counts)).to_vec();
    assert_eq!(got, vec![valid as u32, correct as u32]);

    // No rows: zero counts. Too small a counts buffer: a typed error.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_row_counts(&mut encoder, records.slice(..), 0, counts.slice(..))
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(
        bytemuck::cast_slice::<f32, u32>(&read(&gpu, &counts)),
        [0, 0]
    );
    let e = gpu
        .record_row_counts(
            &mut encoder_for(&gpu),
            records.slice(..),
            rows,
            loss.slice(..),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

fn encoder_for(gpu: &Gpu) -> wgpu::CommandEncoder {
    gpu.device().create_command_encoder(&Default::default())
}

#[test]
fn the_stopwatch_times_recorded_work() {
    let Some(plain) = gpu() else { return };
    let timed = Arc::new(
        Gpu::with_options(GpuOptions {
            timestamp_queries: true,
            ..Default::default()
        })
        .expect("a device with timestamp queries where the adapter has them"),
    );
    for gpu in [plain, timed] {
        let has_timestamps = gpu
            .device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY);
        let stopwatch = Stopwatch::new(&gpu);
        assert_eq!(
            stopwatch.clock(),
            if has_timestamps {
                Clock::Timestamps
            } else {
                Clock::SubmitAndWait
            }
        );
        let case = Case::new(3, 64, 1000, Hardness::default());
        let reference = case.reference(&CrossEntropy::new(), None);
        let uploaded = DeviceCase::upload(&gpu, &case);
        let loss = buffer(&gpu, &[0u8; 4]);
        let outputs = DeviceOutputs::new(loss.slice(..));
        let seconds = stopwatch
            .time(|encoder| {
                gpu.record_cross_entropy(encoder, &CrossEntropy::new(), &uploaded.batch(), &outputs)
            })
            .unwrap();
        assert!(seconds > 0.0 && seconds < 60.0, "{seconds} s");
        // The timed work ran.
        assert_close(
            "timed loss",
            &read(&gpu, &loss)[..1],
            &[reference.loss.unwrap()],
            1e-5,
            1e-5,
        );
        // A failing record is its error, not a time.
        let short = buffer(&gpu, &[0u8; 64]);
        let e = stopwatch
            .time(|encoder| {
                gpu.record_cross_entropy(
                    encoder,
                    &CrossEntropy::new(),
                    &DeviceBatch {
                        logits: short.slice(..),
                        ..uploaded.batch()
                    },
                    &outputs,
                )
            })
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
}

/// Every buffer of a recorded call as a slice at an offset (inputs in one buffer and outputs
/// in another, or all in one, as a framework sub-allocates tensors: the writable variants),
/// on the fused and the three-pass path, index and dense targets: the results match the
/// reference and land only in their slices. An output over another slice's bytes, or a
/// misaligned offset, is a typed error.
#[test]
fn slices_at_offsets_inside_shared_buffers() {
    for gpu in paths() {
        for (soft, shared) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut case = Case::new(16, 50, 129, Hardness::default())
                .weighted(3)
                .sample_weighted(4);
            case = if soft {
                case.soft(5)
            } else {
                case.ignore_every(6, -100)
            };
            let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
            let reference = case.reference(&options, None);
            let (n, c) = (case.rows, case.classes);
            // Inputs in packs[0], outputs in the last pack (the same one when shared).
            let mut packs = vec![Packed::new()];
            if !shared {
                packs.push(Packed::new());
            }
            let last = packs.len() - 1;
            let inputs = &mut packs[0];
            let logits = inputs.push(bytemuck::cast_slice(&case.logits));
            let targets = match &case.dense_targets {
                Some(t) => inputs.push(bytemuck::cast_slice(t)),
                None => inputs.push(bytemuck::cast_slice(&case.index_targets)),
            };
            let weights = inputs.push(bytemuck::cast_slice(case.class_weights.as_ref().unwrap()));
            let samples = inputs.push(bytemuck::cast_slice(case.sample_weights.as_ref().unwrap()));
            let outputs = &mut packs[last];
            let loss = outputs.push(&[0u8; 4]);
            let rows = outputs.push(&vec![0u8; n * 32]);
            let grad = outputs.push(&vec![0u8; n * c * 4]);
            let flag = outputs.push(&[0u8; 4]);
            let buffers: Vec<wgpu::Buffer> = packs.iter().map(|p| p.upload(&gpu)).collect();
            let (inputs, outputs) = (&packs[0], &packs[last]);
            let output = &buffers[last];
            let i = |k: usize| buffers[0].slice(inputs.ranges[k].clone());
            let o = |k: usize| output.slice(outputs.ranges[k].clone());
            let batch = DeviceBatch {
                class_weights: Some(i(weights)),
                sample_weights: Some(i(samples)),
                ..DeviceBatch::new(
                    i(logits),
                    xent::Dtype::F32,
                    n,
                    c,
                    if soft {
                        DeviceTargets::Dense(i(targets))
                    } else {
                        DeviceTargets::I64(i(targets))
                    },
                )
            };
            let out = DeviceOutputs {
                rows: Some(o(rows)),
                ..DeviceOutputs::new(o(loss))
                    .gradient(DeviceGradient::Into(o(grad)))
                    .target_error(o(flag))
            };
            record_and_submit(&gpu, &options, &batch, &out);
            let all = read(&gpu, output);
            let at = |k: usize| {
                let r = &outputs.ranges[k];
                all[(r.start / 4) as usize..(r.end / 4) as usize].to_vec()
            };
            let label = format!(
                "slices at offsets, soft {soft}, one buffer {shared}, {:?}",
                gpu.variant()
            );
            assert_within(
                &format!("{label}: loss"),
                &at(loss),
                &[reference.loss.unwrap()],
                tol::LOSS,
            );
            assert_within(
                &format!("{label}: gradient"),
                &at(grad),
                &reference.gradient,
                tol::GRADIENT,
            );
            let records: Vec<GpuRow> = bytemuck::cast_slice(&at(rows)).to_vec();
            let row_losses: Vec<f32> = records.iter().map(|r| r.loss).collect();
            assert_within(
                &format!("{label}: row losses"),
                &row_losses,
                &reference.row_losses,
                tol::LOSS,
            );
            assert_eq!(at(flag), [0.0], "{label}: no target flagged");
            // Nothing outside the output slices was written: inputs and padding keep their
            // bytes.
            let bytes: &[u8] = bytemuck::cast_slice(&all);
            let mut written = vec![false; bytes.len()];
            for &k in &[loss, rows, grad, flag] {
                let r = &outputs.ranges[k];
                written[r.start as usize..r.end as usize].fill(true);
            }
            let stray = (0..bytes.len()).find(|&b| !written[b] && bytes[b] != outputs.bytes[b]);
            assert_eq!(
                stray, None,
                "{label}: a byte outside the output slices changed"
            );
        }
    }

    let gpu = gpu().expect("a GPU");
    let shared = buffer(&gpu, &vec![0u8; 8192]);
    let at = |start: u64, len: u64| shared.slice(start..start + len);
    let batch = DeviceBatch::new(
        at(0, 256),
        xent::Dtype::F32,
        4,
        16,
        DeviceTargets::I64(at(512, 32)),
    );
    let other = buffer(&gpu, &vec![0u8; 4096]);
    let record = |batch: &DeviceBatch, out: &DeviceOutputs| {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        gpu.record_cross_entropy(&mut encoder, &CrossEntropy::new(), batch, out)
    };
    record(&batch, &DeviceOutputs::new(other.slice(0..4))).expect("the good call");
    record(&batch, &DeviceOutputs::new(at(1024, 4))).expect("an output beside the inputs");
    let e = record(&batch, &DeviceOutputs::new(at(512, 4))).unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(_)),
        "an output over the targets: {e}"
    );
    let e = record(
        &batch,
        &DeviceOutputs::new(other.slice(0..4)).gradient(DeviceGradient::Into(other.slice(0..256))),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(_)),
        "overlapping outputs: {e}"
    );
    let misaligned = DeviceBatch::new(
        at(4, 256),
        xent::Dtype::F32,
        4,
        16,
        DeviceTargets::I64(at(512, 32)),
    );
    let e = record(&misaligned, &DeviceOutputs::new(other.slice(0..4))).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Misaligned {
                what: "logits buffer (bytes, padded to 4)",
                offset: 4,
                ..
            }
        ),
        "{e}"
    );
    let in_place = DeviceOutputs::new(other.slice(0..4)).gradient(DeviceGradient::InPlace);
    record(&batch, &in_place).expect("in place over logits beside the targets");
}

/// An in-place gradient whose logits share their buffer with the call's other outputs (its
/// flag and per-row records) while the targets sit elsewhere: the passes that only read the
/// logits must not bind them read-only beside a writable slice (the writable variants), on
/// both paths and with focal loss with smoothing (the three-pass focal pass).
#[test]
fn in_place_beside_other_outputs() {
    for gpu in paths() {
        for options in [
            CrossEntropy::new().label_smoothing(0.1),
            CrossEntropy::new().label_smoothing(0.1).focal_gamma(2.0),
        ] {
            let case = Case::new(18, 40, 97, Hardness::default()).ignore_every(5, -100);
            let reference = case.reference(&options, None);
            let mut pack = Packed::new();
            let logits = pack.push(bytemuck::cast_slice(&case.logits));
            let flag = pack.push(&[0u8; 4]);
            let rows = pack.push(&vec![0u8; case.rows * 32]);
            let loss = pack.push(&[0u8; 4]);
            let shared = pack.upload(&gpu);
            let targets = buffer(&gpu, bytemuck::cast_slice(&case.index_targets));
            let at = |k: usize| shared.slice(pack.ranges[k].clone());
            let batch = DeviceBatch::new(
                at(logits),
                xent::Dtype::F32,
                case.rows,
                case.classes,
                DeviceTargets::I64(targets.slice(..)),
            );
            let out = DeviceOutputs {
                rows: Some(at(rows)),
                ..DeviceOutputs::new(at(loss))
                    .gradient(DeviceGradient::InPlace)
                    .target_error(at(flag))
            };
            record_and_submit(&gpu, &options, &batch, &out);
            let all = read(&gpu, &shared);
            let part = |k: usize| {
                let r = &pack.ranges[k];
                all[(r.start / 4) as usize..(r.end / 4) as usize].to_vec()
            };
            let label = format!("in place beside outputs, {options:?}");
            assert_within(&label, &part(logits), &reference.gradient, tol::GRADIENT);
            assert_within(&label, &part(loss), &[reference.loss.unwrap()], tol::LOSS);
            assert_eq!(part(flag), [0.0], "{label}: no target flagged");
        }
    }
}

/// BCE's recorded backward (`record_binary_cross_entropy_backward`): the gradient recomputed
/// from logits and targets, with a host scalar, a device scalar or per-element upstream, into a
/// slice or in place; every reduction, weights, pos_weight, sample weights, smoothing and
/// sigmoid focal loss; against the reference. Bad upstreams are typed errors.
#[test]
fn binary_backward() {
    use xent::gpu::DeviceUpstream;
    use xent::{BinaryCrossEntropy, Reduction};
    for gpu in paths() {
        let case = Case::new(23, 29, 13, Hardness::default())
            .multi_label(24, true)
            .sample_weighted(25);
        let (n, c) = (case.rows, case.classes);
        let grid = [
            (BinaryCrossEntropy::new(), false),
            (BinaryCrossEntropy::new(), true),
            (BinaryCrossEntropy::new().reduction(Reduction::Sum), true),
            (
                BinaryCrossEntropy::new()
                    .reduction(Reduction::None)
                    .label_smoothing(0.1),
                false,
            ),
            (
                BinaryCrossEntropy::new()
                    .focal_gamma(2.0)
                    .focal_alpha(0.25)
                    .label_smoothing(0.05),
                true,
            ),
        ];
        for (options, device_upstream) in grid {
            let upstream: Vec<f32> = match options.reduction {
                Reduction::None => (0..n * c).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect(),
                _ => vec![0.75],
            };
            let reference = case.reference_bce(&options, Some(&upstream));
            let uploaded = DeviceCase::upload(&gpu, &case);
            let up = buffer(&gpu, bytemuck::cast_slice(&upstream));
            let grad = buffer(&gpu, &vec![0u8; n * c * 4]);
            let upstream_arg = match (options.reduction, device_upstream) {
                (Reduction::None, _) => DeviceUpstream::Rows(up.slice(..)),
                (_, true) => DeviceUpstream::Device(up.slice(..)),
                (_, false) => DeviceUpstream::Scalar(upstream[0]),
            };
            let label = format!("{options:?}, upstream {upstream_arg:?}");
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            gpu.record_binary_cross_entropy_backward(
                &mut encoder,
                &options,
                &uploaded.batch(),
                DeviceGradient::Into(grad.slice(..)),
                upstream_arg,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            // In place over the logits.
            let in_place = DeviceCase::upload(&gpu, &case);
            gpu.record_binary_cross_entropy_backward(
                &mut encoder,
                &options,
                &in_place.batch(),
                DeviceGradient::InPlace,
                upstream_arg,
            )
            .unwrap_or_else(|e| panic!("{label}, in place: {e}"));
            gpu.queue().submit([encoder.finish()]);
            for (what, values) in [("into", &grad), ("in place", &in_place.logits)] {
                assert_within(
                    &format!("{label}: gradient {what}"),
                    &read(&gpu, values),
                    &reference.gradient,
                    tol::GRADIENT,
                );
            }
            // The wrong kind of upstream for the reduction, and no gradient, are refused.
            let wrong = match options.reduction {
                Reduction::None => DeviceUpstream::Scalar(1.0),
                _ => DeviceUpstream::Rows(up.slice(..)),
            };
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            for (gradient, upstream) in [
                (DeviceGradient::Into(grad.slice(..)), wrong),
                (DeviceGradient::None, upstream_arg),
            ] {
                let err = gpu
                    .record_binary_cross_entropy_backward(
                        &mut encoder,
                        &options,
                        &uploaded.batch(),
                        gradient,
                        upstream,
                    )
                    .unwrap_err();
                assert!(matches!(err, Error::Unsupported(_)), "{label}: {err}");
            }
        }
    }
}

/// The autodiff split: a forward that records the loss and saves its per-row state, then a
/// backward recorded from that state alone (`record_cross_entropy_backward`), with a host
/// scalar, a device scalar or per-row upstream, into a slice or in place; every reduction,
/// focal loss with smoothing, on both paths; against the reference. Bad upstreams are typed
/// errors.
#[test]
fn backward_from_saved_state() {
    use xent::gpu::{DeviceSaved, DeviceUpstream};
    use xent::Reduction;
    for gpu in paths() {
        let case = Case::new(19, 37, 211, Hardness::default())
            .weighted(6)
            .sample_weighted(7)
            .ignore_every(5, -100);
        let (n, c) = (case.rows, case.classes);
        let grid = [
            (CrossEntropy::new(), false),
            (CrossEntropy::new(), true),
            (
                CrossEntropy::new()
                    .reduction(Reduction::Sum)
                    .label_smoothing(0.1),
                true,
            ),
            (CrossEntropy::new().reduction(Reduction::Sum), false),
            (
                CrossEntropy::new().reduction(Reduction::None).z_loss(1e-3),
                false,
            ),
            (
                CrossEntropy::new()
                    .focal_gamma(2.0)
                    .label_smoothing(0.05)
                    .softcap(6.0),
                true,
            ),
        ];
        for (options, device_upstream) in grid {
            let upstream: Vec<f32> = match options.reduction {
                Reduction::None => (0..n).map(|r| 0.5 + r as f32 * 0.05).collect(),
                _ => vec![0.75],
            };
            let reference = case.reference(&options, Some(&upstream));
            let uploaded = DeviceCase::upload(&gpu, &case);
            let batch = uploaded.batch();
            let rows = buffer(&gpu, &vec![0u8; n * 32]);
            let totals = buffer(&gpu, &[0u8; 16]);
            let loss = buffer(&gpu, &[0u8; 4]);
            let up = buffer(&gpu, bytemuck::cast_slice(&upstream));
            let grad = buffer(&gpu, &vec![0u8; n * c * 4]);
            let saved = DeviceSaved {
                rows: rows.slice(..),
                totals: totals.slice(..),
            };
            let upstream_arg = match (options.reduction, device_upstream) {
                (Reduction::None, _) => DeviceUpstream::Rows(up.slice(..)),
                (_, true) => DeviceUpstream::Device(up.slice(..)),
                (_, false) => DeviceUpstream::Scalar(upstream[0]),
            };
            let label = format!("{options:?}, upstream {upstream_arg:?}");
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            let gradient = DeviceGradient::Into(grad.slice(..));
            record_saved_pair(
                &gpu,
                &mut encoder,
                &options,
                &batch,
                (loss.slice(..), saved),
                (gradient, upstream_arg),
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            gpu.queue().submit([encoder.finish()]);
            if let Some(expected) = reference.loss {
                assert_within(
                    &format!("{label}: loss"),
                    &read(&gpu, &loss)[..1],
                    &[expected],
                    tol::LOSS,
                );
            }
            assert_within(
                &format!("{label}: gradient"),
                &read(&gpu, &grad),
                &reference.gradient,
                tol::GRADIENT,
            );
            // In place over the logits, from the same saved state.
            let in_place = DeviceCase::upload(&gpu, &case);
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            gpu.record_cross_entropy_backward(
                &mut encoder,
                &options,
                &in_place.batch(),
                saved,
                DeviceGradient::InPlace,
                upstream_arg,
            )
            .unwrap();
            gpu.queue().submit([encoder.finish()]);
            assert_within(
                &format!("{label}: in place"),
                &read(&gpu, &in_place.logits),
                &reference.gradient,
                tol::GRADIENT,
            );
            // The wrong kind of upstream for the reduction is refused.
            let wrong = match options.reduction {
                Reduction::None => DeviceUpstream::Scalar(1.0),
                _ => DeviceUpstream::Rows(up.slice(..)),
            };
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            let err = gpu
                .record_cross_entropy_backward(
                    &mut encoder,
                    &options,
                    &batch,
                    saved,
                    DeviceGradient::Into(grad.slice(..)),
                    wrong,
                )
                .unwrap_err();
            assert!(matches!(err, Error::Unsupported(_)), "{label}: {err}");
        }
    }
    // The saved rows and totals, the device upstream and the gradient as slices of one shared
    // buffer, as a framework sub-allocates them (the writable variants and offset copies).
    for gpu in paths() {
        let case = Case::new(21, 23, 150, Hardness::default())
            .weighted(8)
            .ignore_every(4, -100);
        let (n, c) = (case.rows, case.classes);
        let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
        let reference = case.reference(&options, Some(&[0.5]));
        let uploaded = DeviceCase::upload(&gpu, &case);
        let mut pack = Packed::new();
        let (rows, totals, up, grad, loss) = (
            pack.push(&vec![0u8; n * 32]),
            pack.push(&[0u8; 16]),
            pack.push(bytemuck::cast_slice(&[0.5f32])),
            pack.push(&vec![0u8; n * c * 4]),
            pack.push(&[0u8; 4]),
        );
        let shared = pack.upload(&gpu);
        let at = |k: usize| shared.slice(pack.ranges[k].clone());
        let saved = DeviceSaved {
            rows: at(rows),
            totals: at(totals),
        };
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        record_saved_pair(
            &gpu,
            &mut encoder,
            &options,
            &uploaded.batch(),
            (at(loss), saved),
            (
                DeviceGradient::Into(at(grad)),
                DeviceUpstream::Device(at(up)),
            ),
        )
        .unwrap();
        gpu.queue().submit([encoder.finish()]);
        let all = read(&gpu, &shared);
        let part = |k: usize| {
            let r = &pack.ranges[k];
            all[(r.start / 4) as usize..(r.end / 4) as usize].to_vec()
        };
        assert_within(
            "shared buffer: loss",
            &part(loss),
            &[reference.loss.unwrap()],
            tol::LOSS,
        );
        assert_within(
            "shared buffer: gradient",
            &part(grad),
            &reference.gradient,
            tol::GRADIENT,
        );
    }

    // Saving with an in-place gradient (the backward would read the gradient as logits), and
    // a device upstream its copy can't read, are refused.
    let gpu = gpu().expect("a GPU");
    let case = Case::new(20, 4, 9, Hardness::default());
    let uploaded = DeviceCase::upload(&gpu, &case);
    let (rows, totals, loss) = (
        buffer(&gpu, &[0u8; 4 * 32]),
        buffer(&gpu, &[0u8; 16]),
        buffer(&gpu, &[0u8; 4]),
    );
    let saved = DeviceSaved {
        rows: rows.slice(..),
        totals: totals.slice(..),
    };
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let in_place = DeviceOutputs::new(loss.slice(..))
        .gradient(DeviceGradient::InPlace)
        .save(saved);
    let err = gpu
        .record_cross_entropy(
            &mut encoder,
            &CrossEntropy::new(),
            &uploaded.batch(),
            &in_place,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    let storage_only = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let grad = buffer(&gpu, &[0u8; 4 * 9 * 4]);
    let err = gpu
        .record_cross_entropy_backward(
            &mut encoder,
            &CrossEntropy::new(),
            &uploaded.batch(),
            saved,
            DeviceGradient::Into(grad.slice(..)),
            DeviceUpstream::Device(storage_only.slice(..)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

/// A half-precision gradient into a buffer of its own (`DeviceGradient::IntoLogitsDtype`), as
/// a trainer whose f16 / bf16 logits are still held elsewhere takes it: an even class count
/// and an odd one (the fused kernel both: rows 2i and 2i + 1 share a word there); the
/// (N, C, d…) layout with an even number of positions (the fused kernel, a pair of
/// positions a word) and an odd one (three passes); the backward from saved state, and BCE's
/// backward; against the reference (within the dtype's rounding), the same bits as the
/// in-place gradient, the logits untouched.
#[test]
fn half_gradient_into_its_own_buffer() {
    use common::device::read_values;
    use xent::gpu::{DeviceSaved, DeviceUpstream};
    use xent::{BinaryCrossEntropy, Dtype};
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for gpu in paths() {
        for dtype in [Dtype::F16, Dtype::Bf16] {
            let tol = tol::gradient(dtype);
            let half_buffer =
                |count: usize| buffer(&gpu, &vec![0u8; (count * 2).next_multiple_of(4)]);
            for (classes, spatial) in [(64, None), (37, None), (21, Some(10)), (21, Some(9))] {
                let rows = spatial.map_or(45, |s| 4 * s);
                let mut case = Case::new(31, rows, classes, Hardness::default())
                    .weighted(2)
                    .ignore_every(6, -100)
                    .dtype(dtype);
                if let Some(s) = spatial {
                    case = case.class_dim1(s);
                }
                let count = case.rows * classes;
                let options = CrossEntropy::new().label_smoothing(0.1);
                let reference = case.reference(&options, None);
                let label = format!("{gpu:?} {dtype:?} C {classes} spatial {spatial:?}");
                let uploaded = DeviceCase::upload(&gpu, &case);
                let in_place = DeviceCase::upload(&gpu, &case);
                let (grad, loss) = (half_buffer(count), buffer(&gpu, &[0u8; 4]));
                let mut encoder = gpu.device().create_command_encoder(&Default::default());
                let out = DeviceOutputs::new(loss.slice(..))
                    .gradient(DeviceGradient::IntoLogitsDtype(grad.slice(..)));
                gpu.record_cross_entropy(&mut encoder, &options, &uploaded.batch(), &out)
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                let out = DeviceOutputs::new(loss.slice(..)).gradient(DeviceGradient::InPlace);
                gpu.record_cross_entropy(&mut encoder, &options, &in_place.batch(), &out)
                    .unwrap();
                gpu.queue().submit([encoder.finish()]);
                let got = read_values(&gpu, &grad, 0, dtype, count);
                assert_within(&label, &got, &reference.gradient, tol);
                let over = read_values(&gpu, &in_place.logits, 0, dtype, count);
                assert_eq!(
                    bits(&got),
                    bits(&over),
                    "{label}: the in-place gradient's bits"
                );
                let logits = read_values(&gpu, &uploaded.logits, 0, dtype, count);
                assert_eq!(
                    bits(&logits),
                    bits(&case.logits),
                    "{label}: logits untouched"
                );

                // The backward from a saving forward's state.
                let (rows, totals) = (
                    buffer(&gpu, &vec![0u8; case.rows * 32]),
                    buffer(&gpu, &[0u8; 16]),
                );
                let saved = DeviceSaved {
                    rows: rows.slice(..),
                    totals: totals.slice(..),
                };
                let grad = half_buffer(count);
                let mut encoder = gpu.device().create_command_encoder(&Default::default());
                record_saved_pair(
                    &gpu,
                    &mut encoder,
                    &options,
                    &uploaded.batch(),
                    (loss.slice(..), saved),
                    (
                        DeviceGradient::IntoLogitsDtype(grad.slice(..)),
                        DeviceUpstream::Scalar(1.0),
                    ),
                )
                .unwrap_or_else(|e| panic!("{label}, saved: {e}"));
                gpu.queue().submit([encoder.finish()]);
                let got = read_values(&gpu, &grad, 0, dtype, count);
                assert_within(&format!("{label}, saved"), &got, &reference.gradient, tol);
            }

            // BCE's backward, an odd element count (the last word half past the end).
            let case = Case::new(33, 29, 13, Hardness::default())
                .multi_label(34, true)
                .dtype(dtype);
            let count = case.rows * case.classes;
            let options = BinaryCrossEntropy::new().label_smoothing(0.05);
            let reference = case.reference_bce(&options, None);
            let uploaded = DeviceCase::upload(&gpu, &case);
            let grad = half_buffer(count);
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            gpu.record_binary_cross_entropy_backward(
                &mut encoder,
                &options,
                &uploaded.batch(),
                DeviceGradient::IntoLogitsDtype(grad.slice(..)),
                DeviceUpstream::Scalar(1.0),
            )
            .unwrap();
            gpu.queue().submit([encoder.finish()]);
            let got = read_values(&gpu, &grad, 0, dtype, count);
            assert_within(&format!("{dtype:?} BCE"), &got, &reference.gradient, tol);
        }
    }

    // Small bindings (the rows in chunks, each gradient window in the logits' geometry), the
    // gradient a slice at an offset inside a shared buffer, and f32 logits (the f32 store).
    for gpu in common::device::small_bindings(4 << 10) {
        for dtype in [Dtype::F16, Dtype::Bf16, Dtype::F32] {
            let case = Case::new(35, 61, 30, Hardness::default())
                .ignore_every(7, -100)
                .dtype(dtype);
            let count = case.rows * case.classes;
            let options = CrossEntropy::new().z_loss(1e-3);
            let reference = case.reference(&options, None);
            let uploaded = DeviceCase::upload(&gpu, &case);
            let mut pack = Packed::new();
            let (loss, grad) = (
                pack.push(&[0u8; 4]),
                pack.push(&vec![0u8; (count * dtype.size()).next_multiple_of(4)]),
            );
            let shared = pack.upload(&gpu);
            let at = |k: usize| shared.slice(pack.ranges[k].clone());
            let out =
                DeviceOutputs::new(at(loss)).gradient(DeviceGradient::IntoLogitsDtype(at(grad)));
            let label = format!("{gpu:?} {dtype:?}, 4 KiB bindings");
            record_and_submit(&gpu, &options, &uploaded.batch(), &out);
            let start = pack.ranges[grad].start as usize;
            let got = read_values(&gpu, &shared, start, dtype, count);
            assert_within(&label, &got, &reference.gradient, tol::gradient(dtype));
        }
    }
}

/// Records a forward that saves its state (its loss into `loss`), then the backward from that
/// state.
fn record_saved_pair(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    options: &CrossEntropy,
    batch: &DeviceBatch,
    (loss, saved): (wgpu::BufferSlice, xent::gpu::DeviceSaved),
    (gradient, upstream): (DeviceGradient, xent::gpu::DeviceUpstream),
) -> xent::Result<()> {
    let forward = DeviceOutputs::new(loss).save(saved);
    gpu.record_cross_entropy(encoder, options, batch, &forward)?;
    gpu.record_cross_entropy_backward(encoder, options, batch, saved, gradient, upstream)
}
