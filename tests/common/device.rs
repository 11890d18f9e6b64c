//! The GPU side of the shared test helpers: the one device every GPU test uses (without an
//! adapter: a failure, or a loud message under `XENT_SKIP_GPU=1`), both shader variants, and buffer
//! upload/readback for the device-resident API.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use wgpu::util::DeviceExt;
use xent::gpu::{Gpu, GpuOptions, ShaderVariant};

/// The shared device, or `None` when there is no adapter and `XENT_SKIP_GPU=1` (see
/// [`missing_gpu`](super::gpu_policy::missing_gpu)).
pub fn gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!(
                "GPU tests run on {} (variant {:?})",
                gpu.name(),
                gpu.variant()
            );
            Some(Arc::new(gpu))
        }
        Err(e) => {
            super::gpu_policy::missing_gpu("THE GPU TESTS", &e);
            None
        }
    })
    .clone()
}

/// The default device (fused kernel where rows fit) and the same adapter on the three-pass
/// path, so every softmax test body checks both.
pub fn paths() -> Vec<Arc<Gpu>> {
    static THREE_PASS: OnceLock<Arc<Gpu>> = OnceLock::new();
    let Some(default) = gpu() else { return vec![] };
    let three_pass = THREE_PASS.get_or_init(|| {
        Arc::new(
            Gpu::with_options(GpuOptions {
                three_pass: true,
                ..Default::default()
            })
            .expect("three-pass device"),
        )
    });
    vec![default, three_pass.clone()]
}

/// [`paths`] and, when the adapter has subgroups, the other shader variant (fused).
pub fn variants() -> Vec<Arc<Gpu>> {
    let mut out = paths();
    let Some(default) = out.first().cloned() else {
        return out;
    };
    if default.has_subgroups() {
        let other = if default.variant() == ShaderVariant::Subgroup {
            ShaderVariant::Portable
        } else {
            ShaderVariant::Subgroup
        };
        out.push(Arc::new(
            Gpu::with_options(GpuOptions {
                variant: Some(other),
                ..Default::default()
            })
            .expect("second variant"),
        ));
    }
    out
}

/// Devices whose storage bindings are capped at `bytes` (to force chunked dispatch), on the
/// fused and on the three-pass path.
pub fn small_bindings(bytes: u64) -> Vec<Arc<Gpu>> {
    if gpu().is_none() {
        return vec![];
    }
    [false, true]
        .map(|three_pass| {
            Arc::new(
                Gpu::with_options(GpuOptions {
                    max_binding_size: Some(bytes),
                    three_pass,
                    ..Default::default()
                })
                .expect("device with small bindings"),
            )
        })
        .to_vec()
}

/// Uploads bytes as a storage buffer.
pub fn buffer(gpu: &Gpu, data: &[u8]) -> wgpu::Buffer {
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test"),
            contents: data,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

/// Byte ranges packed into one buffer at 256-aligned offsets (the alignment every adapter
/// accepts), never at 0: a recorded call then binds slices in the middle of a shared buffer.
pub struct Packed {
    /// The buffer's bytes (0xAB before the first range, 0xCD padding after each).
    pub bytes: Vec<u8>,
    /// Each pushed range (at least 4 bytes).
    pub ranges: Vec<std::ops::Range<u64>>,
}

impl Packed {
    pub fn new() -> Packed {
        Packed {
            bytes: vec![0xAB; 256],
            ranges: Vec::new(),
        }
    }
    /// Appends `data` at the next 256-byte boundary and returns its index.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let start = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        self.bytes
            .resize(self.bytes.len().next_multiple_of(256) + 256, 0xCD);
        self.ranges.push(start..start + data.len().max(4) as u64);
        self.ranges.len() - 1
    }
    pub fn upload(&self, gpu: &Gpu) -> wgpu::Buffer {
        buffer(gpu, &self.bytes)
    }
}

/// Reads a buffer back as f32.
pub fn read(gpu: &Gpu, buffer: &wgpu::Buffer) -> Vec<f32> {
    let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    gpu.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let values = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    values
}

/// A case's inputs uploaded for the device-resident API (logits in the case's dtype, i64 or
/// dense targets, and whichever weights the case has).
pub struct DeviceCase {
    pub logits: wgpu::Buffer,
    pub targets: wgpu::Buffer,
    pub class_weights: Option<wgpu::Buffer>,
    pub pos_weight: Option<wgpu::Buffer>,
    pub sample_weights: Option<wgpu::Buffer>,
    rows: usize,
    classes: usize,
    layout: xent::Layout,
    dense: bool,
    pub dtype: xent::Dtype,
}

/// The `count` values of `dtype` from byte `start` of a buffer, as f32.
pub fn read_values(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    start: usize,
    dtype: xent::Dtype,
    count: usize,
) -> Vec<f32> {
    let words = read(gpu, buffer);
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    super::Storage::from_bytes(dtype, &bytes[start..], count).to_f32()
}

impl DeviceCase {
    pub fn upload(gpu: &Gpu, case: &super::Case) -> DeviceCase {
        let floats =
            |v: &Option<Vec<f32>>| v.as_ref().map(|v| buffer(gpu, bytemuck::cast_slice(v)));
        let targets = match &case.dense_targets {
            Some(t) => buffer(gpu, bytemuck::cast_slice(t)),
            None => buffer(gpu, bytemuck::cast_slice(&case.index_targets)),
        };
        DeviceCase {
            logits: buffer(gpu, &case.storage().words()),
            dtype: case.dtype,
            targets,
            class_weights: floats(&case.class_weights),
            pos_weight: floats(&case.pos_weight),
            sample_weights: floats(&case.sample_weights),
            rows: case.rows,
            classes: case.classes,
            layout: case
                .spatial
                .map_or(xent::Layout::Rows, |spatial| xent::Layout::ClassDim1 {
                    spatial,
                }),
            dense: case.dense_targets.is_some(),
        }
    }

    pub fn batch(&self) -> xent::gpu::DeviceBatch<'_> {
        use xent::gpu::{DeviceBatch, DeviceTargets};
        DeviceBatch {
            layout: self.layout,
            class_weights: self.class_weights.as_ref().map(|b| b.slice(..)),
            pos_weight: self.pos_weight.as_ref().map(|b| b.slice(..)),
            sample_weights: self.sample_weights.as_ref().map(|b| b.slice(..)),
            ..DeviceBatch::new(
                self.logits.slice(..),
                self.dtype,
                self.rows,
                self.classes,
                if self.dense {
                    DeviceTargets::Dense(self.targets.slice(..))
                } else {
                    DeviceTargets::I64(self.targets.slice(..))
                },
            )
        }
    }
}

/// Records one softmax call into a fresh encoder and submits it.
pub fn record_and_submit(
    gpu: &Gpu,
    options: &xent::CrossEntropy,
    batch: &xent::gpu::DeviceBatch,
    outputs: &xent::gpu::DeviceOutputs,
) {
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_cross_entropy(&mut encoder, options, batch, outputs)
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
}

/// A device-resident call's loss (`loss[0]`) and gradient against the f64 reference.
pub fn check_loss_and_gradient(
    gpu: &Gpu,
    label: &str,
    loss: &wgpu::Buffer,
    gradient: &wgpu::Buffer,
    reference: &xent::reference::Reference,
) {
    let expected = [reference.loss.unwrap()];
    super::assert_within(
        &format!("{label} loss"),
        &read(gpu, loss)[..1],
        &expected,
        super::tol::LOSS,
    );
    super::assert_within(
        &format!("{label} gradient"),
        &read(gpu, gradient),
        &reference.gradient,
        super::tol::GRADIENT,
    );
}

/// `targets` with row 17 past any class count up to 129 and row 31 negative, uploaded: a
/// call flags row 17, the first bad one.
pub fn bad_targets(gpu: &Gpu, targets: &[i64]) -> wgpu::Buffer {
    let mut bad = targets.to_vec();
    bad[17] = 129;
    bad[31] = -5;
    buffer(gpu, bytemuck::cast_slice(&bad))
}
