//! What the examples share: burn's wgpu device on the graphics API `WGPU_BACKEND` names,
//! registered with xent.

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::Device;

/// burn's wgpu device (`WGPU_BACKEND=vulkan|gl|metal|dx12`, else wgpu's choice), registered
/// with xent.
pub fn device() -> Result<Device, String> {
    let options = Device::wgpu_options();
    let options = match std::env::var("WGPU_BACKEND").as_deref() {
        Ok("vulkan") => options.graphics_api(WgpuBackend::Vulkan),
        Ok("gl") => options.graphics_api(WgpuBackend::Gl),
        Ok("metal") => options.graphics_api(WgpuBackend::Metal),
        Ok("dx12") => options.graphics_api(WgpuBackend::Dx12),
        _ => options,
    };
    xent_burn::init_with(options).map_err(|e| e.to_string())
}
