//! The GPU timed on device-resident buffers, as a trainer runs it: logits and targets
//! uploaded once, the loss (and gradient) buffers allocated once, and each run one
//! `record_cross_entropy` into a fresh encoder, timed by a [`Stopwatch`] (timestamp queries
//! around the call where the adapter has them, else submit-and-wait: the kernels plus one
//! submission's latency), with no upload or read-back. The host-slice call's time, upload and
//! read-back included, is the round-trip column beside it. A linear head likewise:
//! `h`, `W`, `b` and the targets uploaded once, each run one `record_linear_cross_entropy`.

use super::super::probe::Timing;
use super::Shape;
use crate::gpu::{
    Clock, DeviceBatch, DeviceGradient, DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch,
    DeviceLinearOutputs, DeviceMatrix, DeviceOutputs, DeviceTargets, Gpu, Stopwatch,
};
use crate::input::Element;
use crate::linear::LinearCrossEntropy;
use crate::CrossEntropy;
use wgpu::util::DeviceExt;

/// Times `options` over `logits` (of `shape`) and `targets` on `gpu`, with the
/// gradient when `backward`; `iters` timed runs after one warm-up. Also says how they were
/// timed.
pub(super) fn time<T: Element>(
    gpu: &Gpu,
    options: &CrossEntropy,
    (logits, targets): (&[T], &[i64]),
    shape: Shape,
    backward: bool,
    iters: usize,
) -> Result<(Timing, Clock), String> {
    let (rows, classes) = (shape.rows, shape.classes);
    let device = gpu.device();
    let logit_bytes = std::mem::size_of_val(logits) as u64;
    let grad_bytes = (rows * classes * 4) as u64;
    let largest = logit_bytes.max(if backward { grad_bytes } else { 0 });
    if largest > device.limits().max_buffer_size {
        return Err(format!(
            "{largest} bytes in one buffer: over the device's max_buffer_size"
        ));
    }
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let upload = |label: &str, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: storage,
        })
    };
    let logits = upload("xent bench logits", bytemuck::cast_slice(logits));
    let targets = upload("xent bench targets", bytemuck::cast_slice(targets));
    let output = |label: &str, size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4),
            usage: storage,
            mapped_at_creation: false,
        })
    };
    let loss = output("xent bench loss", 4);
    let gradient = backward.then(|| output("xent bench gradient", grad_bytes));
    let batch = DeviceBatch {
        layout: shape.layout(),
        ..DeviceBatch::new(
            logits.slice(..),
            T::DTYPE,
            rows,
            classes,
            DeviceTargets::I64(targets.slice(..)),
        )
    };
    let outputs = DeviceOutputs::new(loss.slice(..)).gradient(match &gradient {
        Some(g) => DeviceGradient::Into(g.slice(..)),
        None => DeviceGradient::None,
    });
    let stopwatch = Stopwatch::new(gpu);
    let mut times = Vec::with_capacity(iters + 1);
    for _ in 0..iters.max(1) + 1 {
        let t = stopwatch
            .time(|encoder| gpu.record_cross_entropy(encoder, options, &batch, &outputs))
            .map_err(|e| e.to_string())?;
        times.push(t);
    }
    // The first run is the warm-up.
    Ok((Timing::from_seconds(times.split_off(1)), stopwatch.clock()))
}

/// A linear head's inputs: `h` [N × D], `W` [V × D], `b` [V], targets [N].
pub(super) type Head<'a, T> = (&'a [T], &'a [T], &'a [T], &'a [i64]);

/// What one timed run of a linear head records.
#[derive(Clone, Copy)]
pub(super) enum LinearWork<'l> {
    /// One `record_linear_cross_entropy` of this loss, with `dh`, `dW` and `db` written when
    /// `true`.
    Call(&'l LinearCrossEntropy, bool),
    /// `record_linear_product` alone, into an `N × V` buffer: the ceiling.
    Product,
    /// The product, then `record_cross_entropy` (loss only) on its logits: the materialized
    /// forward.
    ProductLoss,
}

/// Times `work` on a linear head of `(n, d, v)` on device buffers uploaded once; as [`time`]
/// does for logits. f16 and bf16 `h` and `W` are read as such (D even).
pub(super) fn time_linear<T: Element>(
    gpu: &Gpu,
    work: LinearWork<'_>,
    (h, w, b, y): Head<'_, T>,
    (n, d, v): (usize, usize, usize),
    iters: usize,
) -> Result<(Timing, Clock), String> {
    let backward = matches!(work, LinearWork::Call(_, true));
    let device = gpu.device();
    let storage = wgpu::BufferUsages::STORAGE;
    let upload = |label: &str, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: storage,
        })
    };
    let bias: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    let logits_bytes = match work {
        LinearWork::Call(..) => 0,
        _ => n * v * 4,
    };
    let too_large = [
        std::mem::size_of_val(h),
        std::mem::size_of_val(w),
        v * d * 4,
        logits_bytes,
    ]
    .into_iter()
    .any(|bytes| bytes as u64 > device.limits().max_buffer_size);
    if too_large {
        return Err("h, W, dW or the logits over the device's max_buffer_size".into());
    }
    let h = upload("xent bench h", bytemuck::cast_slice(h));
    let w = upload("xent bench W", bytemuck::cast_slice(w));
    let b = upload("xent bench b", bytemuck::cast_slice(&bias));
    let y = upload("xent bench targets", bytemuck::cast_slice(y));
    let output = |label: &str, size: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (size as u64).max(4).next_multiple_of(4),
            usage: storage,
            mapped_at_creation: false,
        })
    };
    let loss = output("xent bench loss", 4);
    let grads = backward.then(|| {
        [
            output("xent bench dh", n * d * 4),
            output("xent bench dW", v * d * 4),
            output("xent bench db", v * 4),
        ]
    });
    let mut batch = DeviceLinearBatch::new(
        DeviceMatrix::new(h.slice(..), T::DTYPE, n, d),
        DeviceMatrix::new(w.slice(..), T::DTYPE, v, d),
        DeviceIndexTargets::I64(y.slice(..)),
    );
    batch.bias = Some(b.slice(..));
    let mut outputs = DeviceLinearOutputs::new(loss.slice(..));
    if let Some([dh, dw, db]) = &grads {
        outputs.hidden_gradient = Some(DeviceGradientSlice::Write(dh.slice(..)));
        outputs.weight_gradient = Some(DeviceGradientSlice::Write(dw.slice(..)));
        outputs.bias_gradient = Some(DeviceGradientSlice::Write(db.slice(..)));
    }
    let logits = output("xent bench logits", logits_bytes);
    let logits_batch = DeviceBatch::new(
        logits.slice(..),
        crate::Dtype::F32,
        n,
        v,
        DeviceTargets::I64(y.slice(..)),
    );
    let loss_only = DeviceOutputs::new(loss.slice(..));
    let record = |encoder: &mut wgpu::CommandEncoder| match work {
        LinearWork::Call(head_loss, _) => {
            gpu.record_linear_cross_entropy(encoder, head_loss, &batch, &outputs)
        }
        LinearWork::Product => gpu.record_linear_product(encoder, &batch, logits.slice(..)),
        LinearWork::ProductLoss => {
            gpu.record_linear_product(encoder, &batch, logits.slice(..))?;
            let options = CrossEntropy::new();
            gpu.record_cross_entropy(encoder, &options, &logits_batch, &loss_only)
        }
    };
    let stopwatch = Stopwatch::new(gpu);
    let mut times = Vec::with_capacity(iters + 1);
    for _ in 0..iters.max(1) + 1 {
        let t = stopwatch.time(record).map_err(|e| e.to_string())?;
        times.push(t);
    }
    Ok((Timing::from_seconds(times.split_off(1)), stopwatch.clock()))
}
