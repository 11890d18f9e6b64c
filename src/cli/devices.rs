//! `xent devices`: every adapter wgpu finds ([`crate::gpu::adapters`]), what matters to xent on
//! each, which device `--device auto` and `--device gpu` pick, and the CPU's SIMD level.

use super::device::{self, DeviceChoice};
use super::CliError;
use crate::cpu::SimdLevel;

/// What `devices` prints about one adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// wgpu backend (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// `Features::SUBGROUP`, with the subgroup size range.
    pub subgroups: Option<(u32, u32)>,
    /// `Features::SHADER_F16`.
    pub f16: bool,
    /// `Features::TIMESTAMP_QUERY`.
    pub timestamps: bool,
    /// `Limits::max_storage_buffer_binding_size`, bytes.
    pub max_binding: u64,
    /// `Limits::max_buffer_size`, bytes.
    pub max_buffer: u64,
    /// `Limits::max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// `Limits::max_compute_workgroup_storage_size`, bytes.
    pub workgroup_storage: u32,
}

impl AdapterSummary {
    fn of(adapter: &crate::gpu::AdapterSummary) -> Self {
        let (info, features, limits) = (&adapter.info, adapter.features, &adapter.limits);
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: if driver.is_empty() {
                "unknown".into()
            } else {
                driver
            },
            subgroups: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((info.subgroup_min_size, info.subgroup_max_size)),
            f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            workgroup_storage: limits.max_compute_workgroup_storage_size,
        }
    }

    /// The lines `devices` prints, indented under a header.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let subgroups = match self.subgroups {
            Some((lo, hi)) if lo == hi => format!("yes (size {lo})"),
            Some((lo, hi)) => format!("yes (sizes {lo}..{hi})"),
            None => "no".into(),
        };
        format!(
            "{}\n    backend {}, type {}, driver {}\n    subgroups {}, f16 {}, timestamp queries {}\n    \
             max storage binding {}, max buffer {}, {} invocations per workgroup, {} workgroup memory\n",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            subgroups,
            yes(self.f16),
            yes(self.timestamps),
            bytes(self.max_binding),
            bytes(self.max_buffer),
            self.max_invocations,
            bytes(self.workgroup_storage as u64),
        )
    }
}

/// `"2 GiB"`, `"128 MiB"`, `"32 KiB"`, `"100 B"`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Every adapter wgpu finds (honouring `WGPU_BACKEND`).
pub fn adapters() -> Vec<AdapterSummary> {
    crate::gpu::adapters()
        .iter()
        .map(AdapterSummary::of)
        .collect()
}

/// Runs `xent devices`.
pub fn run() -> Result<(), CliError> {
    let supported: Vec<&str> = SimdLevel::supported().iter().map(|l| l.name()).collect();
    outln!(
        "cpu: {} SIMD level {} (supported: {}; XENT_SIMD overrides), {} rayon threads",
        std::env::consts::ARCH,
        SimdLevel::detected(),
        supported.join(", "),
        rayon::current_num_threads()
    )?;
    let adapters = adapters();
    if adapters.is_empty() {
        outln!("gpu adapters: none found by wgpu")?;
    } else {
        outln!("gpu adapters (wgpu):")?;
        for (i, a) in adapters.iter().enumerate() {
            out!("  [{i}] {}", a.describe())?;
        }
    }
    match device::gpu() {
        Ok(d) => outln!(
            "--device gpu picks: {}",
            d.label.strip_prefix("gpu: ").unwrap_or(&d.label)
        )?,
        Err(why) => outln!("--device gpu: unavailable ({why})")?,
    }
    let auto = DeviceChoice::Auto.resolve()?;
    let why = if auto.is_gpu() {
        ""
    } else {
        " (no hardware GPU; a software adapter is slower than the SIMD CPU path)"
    };
    outln!("--device auto picks: {}{why}", auto.label)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(32 * 1024), "32 KiB");
        assert_eq!(bytes(1 << 31), "2 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
