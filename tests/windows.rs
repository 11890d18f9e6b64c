//! No kernel reads or writes past the data it was given: every device input sits in a buffer
//! whose slack past the data is NaN (logits, weights, upstream) or out-of-range garbage
//! (targets), every output buffer's slack holds a sentinel, on every GPU path of the backend
//! matrix (fused, three-pass, both shader variants, small bindings: chunks and long rows in
//! pieces). A stray read shows as a NaN or a flagged target in the result, a stray write as a
//! changed sentinel.

mod common;

use common::backends::backends;
use common::device::read;
use common::{assert_losses, assert_within, tol, Case, Hardness};
use wgpu::util::DeviceExt;
use xent::gpu::{DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, Gpu, GpuRow};
use xent::{Backend, BinaryCrossEntropy, CrossEntropy, Reduction};

/// Values of slack past every buffer's data.
const SLACK: usize = 64;
/// f32 words of one `GpuRow` record.
const ROW_FLOATS: usize = std::mem::size_of::<GpuRow>() / 4;
/// What an output's slack holds before the call, and must hold after.
const SENTINEL: f32 = 12345.0;

/// `data`, then `SLACK` copies of `fill`, as a storage buffer.
fn padded<T: bytemuck::Pod>(gpu: &Gpu, data: &[T], fill: T) -> wgpu::Buffer {
    let mut all = data.to_vec();
    all.extend(std::iter::repeat_n(fill, SLACK));
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("padded"),
            contents: bytemuck::cast_slice(&all),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

/// An output of `len` f32 followed by sentinel slack.
fn output(gpu: &Gpu, len: usize) -> wgpu::Buffer {
    padded(gpu, &vec![SENTINEL; len], SENTINEL)
}

/// The first `len` values of `buffer`; panics if its slack changed.
fn data_of(gpu: &Gpu, label: &str, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    let all = read(gpu, buffer);
    let slack = &all[len..];
    assert!(
        slack.iter().all(|&v| v.to_bits() == SENTINEL.to_bits()),
        "{label}: a write past the data: {:?}",
        &slack[..slack.len().min(8)]
    );
    all[..len].to_vec()
}

#[test]
fn softmax_reads_and_writes_only_its_windows() {
    let shapes = [
        (37, 10, None),
        (9, 1000, None),
        (3, 6000, None),
        (4 * 33, 21, Some(33)),
    ];
    for path in backends(4096) {
        let Backend::Gpu(gpu) = &path.backend else {
            continue;
        };
        for &(rows, classes, spatial) in &shapes {
            for (name, options, dense) in [
                ("plain mean", CrossEntropy::new(), false),
                (
                    "smoothed sum",
                    CrossEntropy::new()
                        .label_smoothing(0.1)
                        .z_loss(1e-3)
                        .reduction(Reduction::Sum),
                    false,
                ),
                (
                    "soft none",
                    CrossEntropy::new().reduction(Reduction::None),
                    true,
                ),
            ] {
                let mut case = Case::new(7, rows, classes, Hardness::default())
                    .ignore_every(5, -100)
                    .sample_weighted(3);
                if spatial.is_none() {
                    case = case.weighted(2);
                }
                if let Some(s) = spatial {
                    case = case.class_dim1(s);
                }
                if dense {
                    case = case.soft(4);
                }
                let label = format!("{} {rows}x{classes} {name}", path.name);
                let upstream: Vec<f32> = (0..rows).map(|r| 0.5 + (r % 3) as f32 * 0.25).collect();
                let none = options.reduction == Reduction::None;
                let reference = case.reference(&options, none.then_some(&upstream[..]));

                let logits = padded(gpu, &case.logits, f32::NAN);
                let targets = match &case.dense_targets {
                    Some(t) => padded(gpu, t, f32::NAN),
                    None => padded(gpu, &case.index_targets, i64::MAX),
                };
                let weights = case
                    .class_weights
                    .as_ref()
                    .map(|w| padded(gpu, w, f32::NAN));
                let samples = case
                    .sample_weights
                    .as_ref()
                    .map(|w| padded(gpu, w, f32::NAN));
                let up = padded(gpu, &upstream, f32::NAN);
                let (loss, records, gradient) = (
                    output(gpu, 1),
                    output(gpu, rows * ROW_FLOATS),
                    output(gpu, rows * classes),
                );
                let batch = DeviceBatch {
                    layout: spatial.map_or(xent::Layout::Rows, |spatial| xent::Layout::ClassDim1 {
                        spatial,
                    }),
                    class_weights: weights.as_ref().map(|b| b.slice(..)),
                    sample_weights: samples.as_ref().map(|b| b.slice(..)),
                    ..DeviceBatch::new(
                        logits.slice(..),
                        xent::Dtype::F32,
                        rows,
                        classes,
                        if dense {
                            DeviceTargets::Dense(targets.slice(..))
                        } else {
                            DeviceTargets::I64(targets.slice(..))
                        },
                    )
                };
                let outputs = DeviceOutputs {
                    rows: Some(records.slice(..)),
                    upstream: none.then_some(up.slice(..)),
                    ..DeviceOutputs::new(loss.slice(..))
                }
                .gradient(DeviceGradient::Into(gradient.slice(..)));
                let mut encoder = gpu.device().create_command_encoder(&Default::default());
                match gpu.record_cross_entropy(&mut encoder, &options, &batch, &outputs) {
                    Ok(()) => {}
                    // A small-binding device refuses what it cannot bind, with a typed error.
                    Err(xent::Error::Unsupported(_)) if path.small_bindings => continue,
                    Err(e) => panic!("{label}: {e}"),
                }
                gpu.queue().submit([encoder.finish()]);
                assert_eq!(gpu.take_target_error().unwrap(), None, "{label}");
                let rows_out: Vec<GpuRow> = bytemuck::pod_collect_to_vec(&data_of(
                    gpu,
                    &label,
                    &records,
                    rows * ROW_FLOATS,
                ));
                let losses: Vec<f32> = rows_out.iter().map(|r| r.loss).collect();
                assert_losses(&format!("{label}: rows"), &losses, &reference.row_losses);
                if let Some(r) = reference.loss {
                    let got = data_of(gpu, &label, &loss, 1);
                    assert_within(&format!("{label}: loss"), &got, &[r], tol::LOSS);
                }
                let g = data_of(gpu, &label, &gradient, rows * classes);
                assert_within(
                    &format!("{label}: gradient"),
                    &g,
                    &reference.gradient,
                    tol::GRADIENT,
                );
            }
        }
    }
}

#[test]
fn bce_reads_and_writes_only_its_windows() {
    for path in backends(4096) {
        let Backend::Gpu(gpu) = &path.backend else {
            continue;
        };
        for &(rows, classes) in &[(33, 7), (40, 300)] {
            let case = Case::new(11, rows, classes, Hardness::default())
                .multi_label(12, true)
                .sample_weighted(13);
            let options = BinaryCrossEntropy::new()
                .focal_gamma(2.0)
                .reduction(Reduction::Mean);
            let label = format!("{} bce {rows}x{classes}", path.name);
            let reference = case.reference_bce(&options, None);
            let dense = case.dense_targets.as_ref().unwrap();
            let logits = padded(gpu, &case.logits, f32::NAN);
            let targets = padded(gpu, dense, f32::NAN);
            let weights = case
                .class_weights
                .as_ref()
                .map(|w| padded(gpu, w, f32::NAN));
            let pos = case.pos_weight.as_ref().map(|w| padded(gpu, w, f32::NAN));
            let samples = case
                .sample_weights
                .as_ref()
                .map(|w| padded(gpu, w, f32::NAN));
            let (loss, losses, gradient) = (
                output(gpu, 1),
                output(gpu, rows * classes),
                output(gpu, rows * classes),
            );
            let batch = DeviceBatch {
                class_weights: weights.as_ref().map(|b| b.slice(..)),
                pos_weight: pos.as_ref().map(|b| b.slice(..)),
                sample_weights: samples.as_ref().map(|b| b.slice(..)),
                ..DeviceBatch::new(
                    logits.slice(..),
                    xent::Dtype::F32,
                    rows,
                    classes,
                    DeviceTargets::Dense(targets.slice(..)),
                )
            };
            let outputs = DeviceOutputs {
                rows: Some(losses.slice(..)),
                ..DeviceOutputs::new(loss.slice(..))
            }
            .gradient(DeviceGradient::Into(gradient.slice(..)));
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            match gpu.record_binary_cross_entropy(&mut encoder, &options, &batch, &outputs) {
                Ok(()) => {}
                Err(xent::Error::Unsupported(_)) if path.small_bindings => continue,
                Err(e) => panic!("{label}: {e}"),
            }
            gpu.queue().submit([encoder.finish()]);
            let got = data_of(gpu, &label, &loss, 1);
            assert_within(
                &format!("{label}: loss"),
                &got,
                &[reference.loss.unwrap()],
                tol::LOSS,
            );
            let l = data_of(gpu, &label, &losses, rows * classes);
            assert_losses(&format!("{label}: losses"), &l, &reference.row_losses);
            let g = data_of(gpu, &label, &gradient, rows * classes);
            assert_within(
                &format!("{label}: gradient"),
                &g,
                &reference.gradient,
                tol::GRADIENT,
            );
        }
    }
}
