//! The GPU side of the shared test helpers: the one device every GPU test uses (or a loud
//! message, or a failure under `XENT_REQUIRE_GPU=1`), both shader variants, and buffer
//! upload/readback for the device-resident API.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use wgpu::util::DeviceExt;
use xent::gpu::{Gpu, GpuOptions, ShaderVariant};

/// The shared device, or `None` (after a loud message) when there is no adapter.
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
        Err(e) if std::env::var("XENT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("XENT_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("\n!!!!!!!! NO GPU ADAPTER ({e}): THE GPU TESTS WERE NOT RUN !!!!!!!!\n");
            None
        }
    })
    .clone()
}

/// The default device and, when the adapter has subgroups, the other shader variant.
pub fn variants() -> Vec<Arc<Gpu>> {
    let Some(default) = gpu() else { return vec![] };
    let mut out = vec![default.clone()];
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
