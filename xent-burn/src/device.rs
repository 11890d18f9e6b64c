//! Which burn wgpu devices xent runs on, and the xent [`Gpu`] for each.
//!
//! burn has no way back from a `Device` to its `wgpu::Device` and `Queue`, so xent learns them
//! when the device is created: [`init`] creates burn's wgpu device and registers it;
//! [`register`] takes a device a trainer created itself with
//! `Device::wgpu_options().init_with_setup()` (or registered from its own handles with
//! `.setup(..)`), with the `WgpuSetup` that came with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::backend::wgpu::WgpuDevice;
use burn::backend::DispatchDevice;
use burn::tensor::wgpu::{WgpuOptions, WgpuSetup};
use burn::tensor::Device;
use xent::gpu::Gpu;

use crate::Error;

/// Where xent runs a registered device's calls.
#[derive(Clone)]
enum Runner {
    /// Its WGSL kernels on the device's own queue.
    Gpu(Arc<Gpu>),
    /// Its SIMD CPU path (the inputs read back).
    Cpu,
}

fn registry() -> &'static Mutex<HashMap<WgpuDevice, Runner>> {
    static REGISTRY: OnceLock<Mutex<HashMap<WgpuDevice, Runner>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn insert(device: &Device, runner: Runner) -> Result<(), Error> {
    let Some(key) = wgpu_device(device) else {
        return Err(Error::NotWgpu(format!("{device:?}")));
    };
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, runner);
    Ok(())
}

fn runner(device: &WgpuDevice) -> Option<Runner> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(device)
        .cloned()
}

/// burn's default wgpu device, created and registered with xent: xent's kernels then run on
/// it, in burn's own queue. Add `.autodiff()` for training. Fails where burn has already
/// initialized that device (create it here first) or wgpu finds no adapter.
pub fn init() -> Result<Device, Error> {
    init_with(Device::wgpu_options())
}

/// As [`init`], with burn's options (adapter kind, graphics API, memory configuration).
pub fn init_with(options: WgpuOptions) -> Result<Device, Error> {
    let (device, setup) = options
        .init_with_setup()
        .map_err(|e| Error::Init(format!("{e:?}")))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Registers a burn wgpu device with the handles it was created from, so that xent's kernels
/// run on it. Registering again replaces the earlier registration.
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<(), Error> {
    let gpu = Gpu::from_device(setup.device.clone(), setup.queue.clone())?;
    insert(device, Runner::Gpu(Arc::new(gpu)))
}

/// Registers a burn wgpu device whose losses run on xent's SIMD CPU path instead of its
/// kernels: each call reads its inputs back and uploads its results. For software adapters
/// (llvmpipe, WARP, SwiftShader), where the CPU path is the faster, and for comparing the
/// two. Registering again replaces the earlier registration.
pub fn register_cpu_path(device: &Device) -> Result<(), Error> {
    insert(device, Runner::Cpu)
}

/// Whether xent's GPU kernels run on `device` (a wgpu device registered with [`register`]
/// or [`init`]; not one registered with [`register_cpu_path`]).
pub fn runs_kernels(device: &Device) -> bool {
    wgpu_device(device).is_some_and(|key| gpu(&key).is_some())
}

/// Whether xent runs on `device`: a registered wgpu device (its GPU kernels, or its CPU path),
/// another CubeCL runtime, or Flex with the `flex` feature (its CPU path).
pub(crate) fn check(device: &Device) -> Result<(), Error> {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Cube(cubecl::Device::Wgpu(key)) if runner(key).is_none() => {
            Err(Error::Unregistered(format!("{device:?}")))
        }
        DispatchDevice::Cube(_) => Ok(()),
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => Ok(()),
        #[allow(unreachable_patterns)]
        _ => Err(Error::UnsupportedBackend(format!("{device:?}"))),
    }
}

/// Bytes of scratch xent holds on `device` (0 where it runs no kernels): burn's memory
/// reports don't include it.
pub fn scratch_bytes(device: &Device) -> u64 {
    wgpu_device(device)
        .and_then(|key| gpu(&key))
        .map_or(0, |gpu| gpu.scratch_bytes())
}

/// The wgpu device behind a burn device, with or without autodiff.
pub(crate) fn wgpu_device(device: &Device) -> Option<WgpuDevice> {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Cube(cubecl::Device::Wgpu(device)) => Some(device.clone()),
        _ => None,
    }
}

/// The xent GPU registered for a CubeCL tensor's device.
pub(crate) fn gpu_of(device: &cubecl::Device) -> Option<Arc<Gpu>> {
    match device {
        cubecl::Device::Wgpu(device) => gpu(device),
        _ => None,
    }
}

fn gpu(device: &WgpuDevice) -> Option<Arc<Gpu>> {
    match runner(device)? {
        Runner::Gpu(gpu) => Some(gpu),
        Runner::Cpu => None,
    }
}
