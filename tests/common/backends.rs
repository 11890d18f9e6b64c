//! The one backend matrix every test by feature runs: each CPU SIMD level (the portable one
//! included) and, on the GPU, {fused, three-pass} × {subgroup, portable shader variant}
//! (the subgroup one where the adapter has subgroups) × {the adapter's bindings, small
//! bindings} (rows longer than a small binding are bound in pieces).
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};
use xent::cpu::SimdLevel;
use xent::gpu::{Gpu, GpuOptions, ShaderVariant};
use xent::Backend;

/// One path a call can take.
pub struct Path {
    /// For failure messages: `cpu avx2`, `gpu Subgroup three-pass 4096-byte bindings`, …
    pub name: String,
    pub backend: Backend,
    /// A GPU device with small storage bindings, which refuses some long-row options with a
    /// typed error.
    pub small_bindings: bool,
}

/// A GPU device with these options, opened once per test process.
fn device(three_pass: bool, variant: ShaderVariant, max_binding_size: Option<u64>) -> Arc<Gpu> {
    type Key = (bool, ShaderVariant, Option<u64>);
    type Devices = Mutex<Vec<(Key, Arc<Gpu>)>>;
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap();
    let key = (three_pass, variant, max_binding_size);
    if let Some((_, gpu)) = devices.iter().find(|(k, _)| *k == key) {
        return gpu.clone();
    }
    let gpu = Arc::new(
        Gpu::with_options(GpuOptions {
            three_pass,
            variant: Some(variant),
            max_binding_size,
            ..Default::default()
        })
        .expect("a device on the test adapter"),
    );
    devices.push((key, gpu.clone()));
    gpu
}

/// Every CPU level, and every GPU path with bindings of the adapter's size or of
/// `small_binding` bytes. `XENT_TEST_BACKENDS=gpu` keeps the GPU paths only (CI's reruns of the
/// GPU tests on each wgpu backend), `=cpu` the CPU levels only.
pub fn backends(small_binding: u64) -> Vec<Path> {
    let only = std::env::var("XENT_TEST_BACKENDS").unwrap_or_default();
    let mut out: Vec<Path> = SimdLevel::supported()
        .into_iter()
        .filter(|_| only != "gpu")
        .map(|level| Path {
            name: format!("cpu {level}"),
            backend: Backend::CpuWith(level),
            small_bindings: false,
        })
        .collect();
    if only == "cpu" {
        return out;
    }
    let Some(default) = super::device::gpu() else {
        return out;
    };
    let mut variants = vec![ShaderVariant::Portable];
    if default.has_subgroups() {
        variants.push(ShaderVariant::Subgroup);
    }
    for variant in variants {
        for three_pass in [false, true] {
            for binding in [None, Some(small_binding)] {
                let path = if three_pass { "three-pass" } else { "fused" };
                let bindings = binding.map_or("".into(), |b| format!(" {b}-byte bindings"));
                out.push(Path {
                    name: format!("gpu {variant:?} {path}{bindings}"),
                    backend: Backend::Gpu(device(three_pass, variant, binding)),
                    small_bindings: binding.is_some(),
                });
            }
        }
    }
    out
}
