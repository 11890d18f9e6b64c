//! Where a call runs, and the entry points that check it (`plan`) and send it there.

use crate::cpu;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::input::Batch;
use crate::options::{BinaryCrossEntropy, CrossEntropy};
use crate::output::{Output, Request};
use crate::plan;
use std::sync::Arc;

/// The device a loss runs on.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// The SIMD CPU path on rayon's current pool, at the SIMD level chosen once per process
    /// (or forced with `XENT_SIMD`).
    #[default]
    Cpu,
    /// The SIMD CPU path at an explicit level (tests use it to run every level the host has).
    CpuWith(cpu::SimdLevel),
    /// The WGSL kernels on a wgpu device.
    Gpu(Arc<Gpu>),
}

/// Where a [`Backend`] sends a call: the CPU path at a SIMD level, or a GPU.
pub(crate) enum Target<'a> {
    Cpu(cpu::SimdLevel),
    Gpu(&'a Gpu),
}

impl Backend {
    /// The CPU level or GPU this backend runs on (`Cpu` resolves the process's level).
    pub(crate) fn target(&self) -> Target<'_> {
        match self {
            Backend::Cpu => Target::Cpu(cpu::SimdLevel::detected()),
            Backend::CpuWith(level) => Target::Cpu(*level),
            Backend::Gpu(gpu) => Target::Gpu(gpu),
        }
    }

    /// A GPU if wgpu finds a hardware adapter, else the CPU. A software adapter (llvmpipe,
    /// WARP, SwiftShader) loses to the SIMD CPU path, so `auto` doesn't pick it.
    pub fn auto() -> Backend {
        match Gpu::new() {
            Ok(gpu)
                if gpu
                    .adapter_info()
                    .is_some_and(|i| i.device_type != wgpu::DeviceType::Cpu) =>
            {
                Backend::Gpu(Arc::new(gpu))
            }
            _ => Backend::Cpu,
        }
    }

    /// A short name: `cpu (avx512)` or the adapter's name and backend.
    pub fn name(&self) -> String {
        match self.target() {
            Target::Cpu(level) => format!("cpu ({level})"),
            Target::Gpu(gpu) => format!("gpu: {}", gpu.name()),
        }
    }

    fn run(
        &self,
        plan: &crate::plan::Plan,
        batch: Batch<'_>,
        request: Request<'_>,
    ) -> Result<Output> {
        match self.target() {
            Target::Cpu(level) => cpu::run(level, plan, batch, request),
            Target::Gpu(gpu) => gpu.run(plan, batch, request),
        }
    }
}

impl CrossEntropy {
    /// Computes the loss and whatever `request` asks for on `backend`.
    ///
    /// ```
    /// use xent::{Backend, Batch, CrossEntropy, Logits, Request};
    /// let logits = [0.0f32; 4]; // uniform over 4 classes: loss = ln 4
    /// let out = CrossEntropy::new().compute(&Backend::Cpu, Batch::new(Logits::new(&logits, 1, 4), &[3i32][..]), Request::new())?;
    /// assert!((out.loss.unwrap() - 4f32.ln()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn compute(
        &self,
        backend: &Backend,
        batch: Batch<'_>,
        request: Request<'_>,
    ) -> Result<Output> {
        let plan = plan::softmax(self, &batch, &request)?;
        backend.run(&plan, batch, request)
    }
}

impl BinaryCrossEntropy {
    /// Computes binary cross-entropy with logits on `backend`.
    ///
    /// ```
    /// use xent::{Backend, Batch, BinaryCrossEntropy, Logits, Request};
    /// let logits = [0.0f32, 0.0];
    /// let targets = [1.0f32, 0.0];
    /// let out = BinaryCrossEntropy::new().compute(&Backend::Cpu, Batch::new(Logits::new(&logits, 1, 2), &targets[..]), Request::new())?;
    /// assert!((out.loss.unwrap() - 2f32.ln()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn compute(
        &self,
        backend: &Backend,
        batch: Batch<'_>,
        request: Request<'_>,
    ) -> Result<Output> {
        let plan = plan::binary(self, &batch, &request)?;
        backend.run(&plan, batch, request)
    }
}
