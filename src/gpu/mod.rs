//! The GPU backend: WGSL kernels on wgpu.
//!
//! [`Gpu`] owns (or borrows from a trainer) a device and queue, the pipeline cache and a pool
//! of scratch buffers reused across calls. Host-slice calls go through
//! [`Backend::Gpu`](crate::Backend::Gpu); trainers that keep logits on the device record the
//! same kernels into their own encoder with [`Gpu::record_cross_entropy`] and
//! [`Gpu::record_binary_cross_entropy`] (for autodiff, their backwards
//! [`Gpu::record_cross_entropy_backward`] and [`Gpu::record_binary_cross_entropy_backward`]),
//! and a linear head from its hidden states and weight
//! with [`Gpu::record_linear_cross_entropy`], all on `wgpu::BufferSlice`s.
//!
//! A softmax call is three passes (one kernel each, `shaders/`): partials (one read of the logits),
//! rows (loss, LSE, metrics per row), a fixed-order reduction, and for a gradient a backward
//! pass (one more read, one write). Rows that fit in registers (up to 4096 classes, and the
//! (N, C, d…) layout's rows whatever C, the classes past 16 streamed; [`fused_shape`]) take
//! one fused kernel instead, with or without a gradient: one read and one write per logit,
//! after a tiny per-row pass over the targets that gives the mean its denominator. Focal loss with smoothing or soft targets adds a focal pass
//! after rows (one more read: every class's `(1 − p)^γ` needs the row's final LSE); without
//! smoothing the rows pass needs only `p[y]`. BCE is one element pass (after a tiny per-class
//! gather). Inputs larger than a storage binding are processed in
//! row chunks, each bound as its own window; a softmax row longer than a binding is bound a
//! piece of whole column splits at a time (class weights, if any, must still fit a binding;
//! focal loss with smoothing or soft targets and the (N, C, d…) layout are refused).

mod abi;
pub mod device;
mod encode;
mod host;
pub(crate) mod launch;
mod launchers;
mod linear;
pub(crate) mod pipelines;
mod pool;
mod schedule;
#[cfg(test)]
mod shader_tests;
mod shard;
mod stopwatch;

pub use device::{
    target_error_row, DeviceBatch, DeviceGradient, DeviceOutputs, DeviceSaved, DeviceTargets,
    DeviceUpstream, GpuRow, SAVED_ROW_BYTES,
};
pub use launch::{fused_owns_half_words, fused_shape, launch_shape, LaunchShape};
pub use linear::{
    DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch, DeviceLinearOutputs, DeviceMatrix,
};
pub use stopwatch::{Clock, Stopwatch};

use crate::error::{Error, Result};
use pipelines::{Kernel, PipelineCache, Variant};
use pool::Pool;
use std::sync::Mutex;

/// Which segment reduction the softmax partials use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShaderVariant {
    /// Workgroup-memory trees only: runs on every adapter.
    Portable,
    /// Subgroup shuffles, then trees (needs `Features::SUBGROUP`).
    Subgroup,
}

/// How to set up a [`Gpu`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Force a shader variant (default: subgroups when the adapter has them).
    pub variant: Option<ShaderVariant>,
    /// Cap the storage-binding and buffer sizes below the adapter's (tests use it to force
    /// chunked dispatch).
    pub max_binding_size: Option<u64>,
    /// Never use the fused single-read softmax kernel: every call with a gradient takes the
    /// three passes (partials, rows, backward). Tests use it to check both paths.
    pub three_pass: bool,
    /// Also request `Features::TIMESTAMP_QUERY` (and timestamps inside encoders) where the
    /// adapter has them, so a caller can time device work (the benchmarks do).
    pub timestamp_queries: bool,
}

/// Seconds of the timed runs of a bandwidth probe ([`Gpu::probe_bandwidth`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeTimes {
    /// The median run.
    pub median: f64,
    /// The fastest run.
    pub min: f64,
}

/// A wgpu device ready to run xent's kernels.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: Option<wgpu::AdapterInfo>,
    variant: ShaderVariant,
    /// Use the fused kernel for rows that fit it.
    fused: bool,
    /// Largest window we bind (bytes).
    max_binding: u64,
    /// Largest buffer we create (bytes).
    max_buffer: u64,
    storage_alignment: u64,
    uniform_alignment: u64,
    pipelines: PipelineCache,
    /// Scratch and uploads of host-slice calls, held by one call from upload to read-back.
    pool: Mutex<Pool>,
    /// Scratch of recorded calls: apart from the host calls' so that a host call on another
    /// thread, whose work and read-back are separate submissions, never meets a recorded
    /// call's work submitted in between. A recorded call writes every scratch value it reads
    /// earlier in its own commands, so recorded calls may share it in any submission order.
    recorded: Mutex<Pool>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.name())
            .field("variant", &self.variant)
            .field("fused", &self.fused)
            .finish()
    }
}

/// One adapter wgpu can see, as `xent devices` lists it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Name, backend, device type, driver.
    pub info: wgpu::AdapterInfo,
    /// Adapter features.
    pub features: wgpu::Features,
    /// Adapter limits.
    pub limits: wgpu::Limits,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        desc.backends = wgpu::Backends::all();
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu finds (honouring `WGPU_BACKEND`).
pub fn adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| AdapterSummary {
            info: a.get_info(),
            features: a.features(),
            limits: a.limits(),
        })
        .collect()
}

impl Gpu {
    /// Picks an adapter (`WGPU_ADAPTER_NAME` if set, else high performance; `WGPU_BACKEND`
    /// limits the backends) and opens a device with the adapter's real limits.
    pub fn new() -> Result<Gpu> {
        Self::with_options(GpuOptions::default())
    }

    /// As [`Gpu::new`], with options.
    pub fn with_options(options: GpuOptions) -> Result<Gpu> {
        let instance = instance();
        let adapter = pollster::block_on(pick_adapter(&instance))?;
        let mut wanted = wgpu::Features::SUBGROUP;
        if options.timestamp_queries {
            wanted |=
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        let features = adapter.features() & wanted;
        let mut limits = adapter.limits();
        if let Some(cap) = options.max_binding_size {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("xent"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::NoGpu(format!("{} refused a device: {e}", adapter.get_info().name)))?;
        let mut gpu = Self::from_device(device, queue)?;
        gpu.info = Some(adapter.get_info());
        gpu.fused = !options.three_pass;
        if let Some(cap) = options.max_binding_size {
            gpu.max_binding = gpu.max_binding.min(cap);
            gpu.max_buffer = gpu.max_buffer.max(cap);
        }
        if let Some(variant) = options.variant {
            if variant == ShaderVariant::Subgroup && !gpu.has_subgroups() {
                return Err(Error::NoGpu(format!(
                    "{} has no subgroup operations",
                    gpu.name()
                )));
            }
            gpu.variant = variant;
        }
        Ok(gpu)
    }

    /// Uses a trainer's own device and queue (their limits and features as they are).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Gpu> {
        let limits = device.limits();
        if limits.max_compute_invocations_per_workgroup < pipelines::WORKGROUP_SIZE
            || limits.max_compute_workgroup_size_x < pipelines::WORKGROUP_SIZE
            || limits.max_storage_buffers_per_shader_stage < 8
        {
            return Err(Error::NoGpu(format!(
                "the device can't run {}-invocation compute workgroups with 8 storage buffers (limits: {limits:?})",
                pipelines::WORKGROUP_SIZE
            )));
        }
        let variant = if device.features().contains(wgpu::Features::SUBGROUP) {
            ShaderVariant::Subgroup
        } else {
            ShaderVariant::Portable
        };
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            & !255;
        Ok(Gpu {
            info: None,
            variant,
            fused: true,
            max_binding,
            max_buffer: limits.max_buffer_size,
            storage_alignment: limits.min_storage_buffer_offset_alignment as u64,
            uniform_alignment: limits.min_uniform_buffer_offset_alignment as u64,
            pipelines: PipelineCache::default(),
            pool: Mutex::new(Pool::default()),
            recorded: Mutex::new(Pool::default()),
            device,
            queue,
        })
    }

    /// The adapter's name, backend, type and driver (`None` for a caller's device).
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.info.as_ref()
    }
    /// `"name (backend)"`, or a note that the device is the caller's.
    pub fn name(&self) -> String {
        match &self.info {
            Some(i) => format!("{} ({:?})", i.name, i.backend),
            None => "caller's device".into(),
        }
    }
    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }
    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
    /// Bytes of the scratch, upload and staging buffers this `Gpu` holds for reuse (both of its
    /// pools: host-slice calls' and recorded calls'). They grow to the largest call's needs and
    /// are kept; a framework's memory report does not see them.
    pub fn scratch_bytes(&self) -> u64 {
        let bytes = |pool: &Mutex<Pool>| pool.lock().unwrap_or_else(|e| e.into_inner()).bytes();
        bytes(&self.pool) + bytes(&self.recorded)
    }
    /// The shader variant in use.
    pub fn variant(&self) -> ShaderVariant {
        self.variant
    }
    /// Whether the device has subgroup operations.
    pub fn has_subgroups(&self) -> bool {
        self.device.features().contains(wgpu::Features::SUBGROUP)
    }
    /// Largest storage window bound per dispatch (bytes).
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding
    }

    /// What of this adapter the plan's decisions depend on.
    fn adapter_limits(&self) -> crate::plan::gpu::Adapter {
        crate::plan::gpu::Adapter {
            max_binding: self.max_binding,
            storage_alignment: self.storage_alignment,
            fused: self.fused,
        }
    }

    fn pipeline(&self, variant: Variant) -> std::sync::Arc<pipelines::Pipeline> {
        self.pipelines.get(&self.device, variant)
    }

    /// Runs `f` inside validation and out-of-memory error scopes; device errors become
    /// [`Error::Device`] instead of a panic.
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        match (validation, oom) {
            (Some(e), _) | (None, Some(e)) => Err(Error::Device(e.to_string())),
            (None, None) => result,
        }
    }

    /// Times the read and copy probe kernels over a buffer of `bytes` (rounded up to 16), each
    /// `iters` times after one warm-up run: `(read, copy)`, by a [`Stopwatch`] (timestamps
    /// where the device has them, else submit-and-wait).
    pub fn probe_bandwidth(&self, bytes: u64, iters: usize) -> Result<(ProbeTimes, ProbeTimes)> {
        let bytes = (bytes.max(16) + 15) & !15;
        self.scoped(|| {
            let usage = wgpu::BufferUsages::STORAGE;
            let src = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("xent probe src"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            });
            let dst = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("xent probe dst"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            });
            let time = |kernel: Kernel| -> Result<ProbeTimes> {
                let pipeline = self.pipeline(Variant::plain(kernel));
                let windows = launchers::Probe {
                    src: encode::Window::whole(&src),
                    dst: encode::Window::whole(&dst),
                }
                .entries();
                let groups = ((bytes / 16).div_ceil(pipelines::WORKGROUP_SIZE as u64 * 8))
                    .clamp(1, 4096) as u32;
                let stopwatch = Stopwatch::new(self);
                let mut times = Vec::with_capacity(iters.max(1) + 1);
                for _ in 0..iters.max(1) + 1 {
                    times.push(stopwatch.time(|encoder| {
                        self.launch(
                            &mut encoder.begin_compute_pass(&Default::default()),
                            &pipeline,
                            &windows,
                            (groups, 1, 1),
                        );
                        Ok(())
                    })?);
                }
                // The first run is the warm-up.
                let mut times = times.split_off(1);
                times.sort_by(f64::total_cmp);
                Ok(ProbeTimes {
                    median: times[times.len() / 2],
                    min: times[0],
                })
            };
            Ok((time(Kernel::ProbeRead)?, time(Kernel::ProbeCopy)?))
        })
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(e.to_string()))
    }

    /// A uniform buffer holding one `Params` block, for a dispatch recorded on its own.
    fn uniform(&self, params: &abi::Params) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("xent params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Every `Params` block of a call in one uniform buffer, at the adapter's uniform stride:
    /// the buffer and the stride (block `i` is bound at `i × stride`).
    fn uniform_blocks(&self, blocks: &[abi::Params]) -> (wgpu::Buffer, u64) {
        use wgpu::util::DeviceExt;
        let size = std::mem::size_of::<abi::Params>();
        let stride = (size as u64).next_multiple_of(self.uniform_alignment);
        let mut bytes = vec![0u8; stride as usize * blocks.len().max(1)];
        for (i, p) in blocks.iter().enumerate() {
            bytes[i * stride as usize..][..size].copy_from_slice(bytemuck::bytes_of(p));
        }
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("xent params"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        (buffer, stride)
    }

    /// Records one dispatch of `pipeline` over `windows` (a launcher's entries) in a compute
    /// pass of its own, `workgroups` as (x, y, z).
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &pipelines::Pipeline,
        windows: &[(u32, encode::Window)],
        workgroups: (u32, u32, u32),
    ) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        self.launch(&mut pass, pipeline, windows, workgroups);
    }

    /// Binds `windows` (`PARAMS` included) and dispatches `pipeline` in `pass`.
    fn launch(
        &self,
        pass: &mut wgpu::ComputePass,
        pipeline: &pipelines::Pipeline,
        windows: &[(u32, encode::Window)],
        workgroups: (u32, u32, u32),
    ) {
        let group = self.bind(pipeline, windows);
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
    }

    fn bind(
        &self,
        pipeline: &pipelines::Pipeline,
        windows: &[(u32, encode::Window)],
    ) -> wgpu::BindGroup {
        // The windows are exactly the variant's bindings (a launcher leaves out the gradient
        // of an in-place variant).
        debug_assert!(
            {
                let declared = pipeline.variant.bindings();
                declared.len() == windows.len()
                    && declared
                        .iter()
                        .all(|(b, _, _)| windows.iter().any(|(w, _)| w == b))
            },
            "{:?}: the windows are not the variant's bindings",
            pipeline.variant
        );
        // A size of 0 would bind to the buffer's end (wgpu's `None`), not nothing.
        debug_assert!(windows.iter().all(|(_, w)| w.size > 0), "an empty window");
        let entries: Vec<wgpu::BindGroupEntry> = windows
            .iter()
            .map(|(binding, w)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: w.buffer,
                    offset: w.offset,
                    size: std::num::NonZeroU64::new(w.size),
                }),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent"),
            layout: &pipeline.layout,
            entries: &entries,
        })
    }
}

async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let wanted = name.to_lowercase();
        return instance
            .enumerate_adapters(backends)
            .await
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| Error::NoGpu(format!("no adapter matches WGPU_ADAPTER_NAME={name:?}")));
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::NoGpu(format!(
                "no adapter found ({e}); set WGPU_BACKEND to choose one"
            ))
        })
}
