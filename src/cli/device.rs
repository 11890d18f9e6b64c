//! `--device auto|cpu|gpu`: which [`Backend`] a command runs on.
//!
//! The one module of the CLI that opens a GPU. `gpu` is [`Gpu::new`]'s adapter (high
//! performance, or `WGPU_ADAPTER_NAME` / `WGPU_BACKEND`); `auto` follows [`Backend::auto`]: a
//! hardware GPU when there is one, else the CPU (a software adapter such as llvmpipe loses to
//! the SIMD CPU path, so `auto` does not pick it; `--device gpu` still runs on it).

use super::probe::Timing;
use super::CliError;
use crate::cpu::SimdLevel;
use crate::gpu::Gpu;
use crate::Backend;
use std::sync::Arc;

/// Where the user asked a command to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU.
    #[default]
    Auto,
    /// The SIMD CPU path.
    Cpu,
    /// The GPU (wgpu), software adapters included; an error when there is none.
    Gpu,
}

/// A resolved device: the backend to pass to `compute` and how to name it in output.
#[derive(Debug, Clone)]
pub struct Device {
    /// The backend.
    pub backend: Backend,
    /// `"cpu"`, or the adapter's name and wgpu backend (`--json` records' `device`).
    pub name: String,
    /// `"cpu (avx2, 2 threads)"` or `"gpu: <adapter> (<backend>)"`, for people.
    pub label: String,
}

impl Device {
    /// Whether this is a GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu(_))
    }
}

impl DeviceChoice {
    /// Resolves the choice: `gpu` fails when no GPU can be opened, `auto` falls back to the CPU.
    pub fn resolve(self) -> Result<Device, CliError> {
        match self {
            DeviceChoice::Cpu => Ok(cpu()),
            DeviceChoice::Gpu => gpu().map_err(CliError::runtime),
            DeviceChoice::Auto => Ok(match Backend::auto() {
                Backend::Gpu(g) => gpu_device(g),
                _ => cpu(),
            }),
        }
    }
}

/// The CPU backend at the detected SIMD level, on rayon's global pool.
pub fn cpu() -> Device {
    Device {
        backend: Backend::Cpu,
        name: "cpu".into(),
        label: cpu_label(),
    }
}

/// `"cpu (avx2, 2 threads)"`.
pub fn cpu_label() -> String {
    format!(
        "cpu ({}, {} threads)",
        SimdLevel::detected(),
        rayon::current_num_threads()
    )
}

fn gpu_device(gpu: Arc<Gpu>) -> Device {
    // A software rasterizer (llvmpipe, WARP, SwiftShader) says so beside its figures.
    let software = gpu
        .adapter_info()
        .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu);
    let name = if software {
        format!("{} [software rasterizer on the CPU]", gpu.name())
    } else {
        gpu.name()
    };
    Device {
        label: format!("gpu: {name}"),
        name,
        backend: Backend::Gpu(gpu),
    }
}

/// The GPU backend on the adapter [`Gpu::new`] picks, or why there is none.
pub fn gpu() -> Result<Device, String> {
    // Timestamp queries where the adapter has them: the bench's device times come from them.
    Gpu::with_options(crate::gpu::GpuOptions {
        timestamp_queries: true,
        ..Default::default()
    })
    .map(|g| gpu_device(Arc::new(g)))
    .map_err(|e| e.to_string())
}

/// The GPU read and copy probes ([`Gpu::probe_bandwidth`]: the CPU probes' two passes as WGSL
/// kernels on the same adapter) over `bytes` bytes: `(read, copy)` timings of the fastest run,
/// which is all the GPU probe reports (so median = min), or why they can't run.
pub fn gpu_probe(device: &Device, bytes: usize, iters: usize) -> Result<(Timing, Timing), String> {
    let Backend::Gpu(gpu) = &device.backend else {
        return Err("not a GPU".into());
    };
    let iters = iters.max(super::probe::MIN_PROBE_RUNS);
    let (read, copy) = gpu
        .probe_bandwidth(bytes as u64, iters)
        .map_err(|e| e.to_string())?;
    // (The probe rounds the buffer up to 16 bytes: a difference the times don't show.)
    let time = |t: crate::gpu::ProbeTimes| Timing {
        median: t.median,
        min: t.min,
    };
    Ok((time(read), time(copy)))
}
