//! `--device auto|cpu|gpu`: which [`Backend`] a command runs on.
//!
//! This is the one module of the CLI that knows whether the crate has a GPU backend. While
//! `xent::gpu` does not exist yet, [`gpu`] reports that, `--device gpu` fails with that message,
//! `auto` falls back to the CPU, and `bench` leaves its GPU columns out with a note.

use super::CliError;
use crate::cpu::SimdLevel;
use crate::Backend;

/// Where the user asked a command to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The SIMD CPU path.
    Cpu,
    /// The GPU (wgpu); an error when there is none.
    Gpu,
}

/// A resolved device: the backend to pass to `compute` and how to name it in output.
#[derive(Debug, Clone)]
pub struct Device {
    /// The backend.
    pub backend: Backend,
    /// `"cpu (avx2, 2 threads)"`, or the GPU adapter's name and wgpu backend.
    pub label: String,
    /// Whether this is a GPU.
    pub is_gpu: bool,
}

/// Why the GPU is not used, while the crate has no GPU backend.
pub const GPU_NOT_BUILT: &str =
    "the GPU backend is not built yet (xent::gpu does not exist in this build); use --device cpu";

impl DeviceChoice {
    /// Resolves the choice: `gpu` fails when no GPU can be used, `auto` falls back to the CPU.
    pub fn resolve(self) -> Result<Device, CliError> {
        match self {
            DeviceChoice::Cpu => Ok(cpu()),
            DeviceChoice::Gpu => gpu().map_err(CliError::runtime),
            DeviceChoice::Auto => Ok(gpu().unwrap_or_else(|_| cpu())),
        }
    }
}

/// The CPU backend at the detected SIMD level, on rayon's global pool.
pub fn cpu() -> Device {
    Device {
        backend: Backend::Cpu,
        label: cpu_label(),
        is_gpu: false,
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

/// The GPU backend on the adapter `Gpu::new` picks, or why there is none.
pub fn gpu() -> Result<Device, String> {
    Err(GPU_NOT_BUILT.to_string())
}

/// The GPU read and copy probes (the same two passes as [`probe`](super::probe), as WGSL
/// kernels on the adapter `gpu` runs on) over `bytes` bytes: `(read, copy)` timings, or why
/// they can't run.
pub fn gpu_probe(
    _device: &Device,
    _bytes: usize,
    _iters: usize,
) -> Result<(super::probe::Timing, super::probe::Timing), String> {
    Err(GPU_NOT_BUILT.to_string())
}
