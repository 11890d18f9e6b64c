//! SIMD level: detected once per process, forceable per call or with `XENT_SIMD`.
//!
//! One generic kernel body (`SimdOp::eval<I: Isa>`) is compiled once per instruction set by
//! the `#[target_feature]` trampolines below; the level picks which copy runs.

use rten_simd::{Isa, SimdOp};
use std::sync::OnceLock;

/// An instruction-set level of the CPU path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// 128-bit arrays in portable Rust (the compiler picks SSE2/NEON/…): runs everywhere.
    Portable,
    /// x86-64 AVX2 + FMA, 8 lanes.
    Avx2,
    /// x86-64 AVX-512 (F, VL, BW, DQ), 16 lanes.
    Avx512,
    /// AArch64 NEON, 4 lanes.
    Neon,
}

impl SimdLevel {
    /// Every level, widest first.
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Avx512,
        SimdLevel::Avx2,
        SimdLevel::Neon,
        SimdLevel::Portable,
    ];

    /// Whether this CPU can run the level.
    pub fn is_supported(self) -> bool {
        match self {
            SimdLevel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => rten_simd::isa::Avx2Isa::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => rten_simd::isa::Avx512Isa::new().is_some(),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => rten_simd::isa::ArmNeonIsa::new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels this CPU supports, widest first.
    pub fn supported() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| l.is_supported()).collect()
    }

    /// The level in force: `XENT_SIMD` (portable, avx2, avx512, neon) if set and supported,
    /// else the widest the CPU has. Read once per process.
    pub fn detected() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let forced = std::env::var("XENT_SIMD")
                .ok()
                .and_then(|v| v.parse::<SimdLevel>().ok());
            match forced {
                Some(level) if level.is_supported() => level,
                _ => Self::supported()[0],
            }
        })
    }

    /// Lowercase name, as `XENT_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown SIMD level {s:?} (portable, avx2, avx512, neon)"))
    }
}

/// Runs `op` at `level`, falling back to the portable body if the CPU lacks the level.
#[inline]
pub fn dispatch<Op: SimdOp>(level: SimdLevel, op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,f16c")]
        unsafe fn avx512<Op: SimdOp>(isa: impl Isa, op: Op) -> Op::Output {
            op.eval(isa)
        }
        #[target_feature(enable = "avx2,avx,fma,f16c")]
        unsafe fn avx2<Op: SimdOp>(isa: impl Isa, op: Op) -> Op::Output {
            op.eval(isa)
        }
        match level {
            // SAFETY: the ISA token exists only if the CPU has these features.
            SimdLevel::Avx512 => {
                if let Some(isa) = rten_simd::isa::Avx512Isa::new() {
                    return unsafe { avx512(isa, op) };
                }
            }
            SimdLevel::Avx2 => {
                if let Some(isa) = rten_simd::isa::Avx2Isa::new() {
                    return unsafe { avx2(isa, op) };
                }
            }
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if level == SimdLevel::Neon {
        if let Some(isa) = rten_simd::isa::ArmNeonIsa::new() {
            return op.eval(isa);
        }
    }
    op.eval(rten_simd::isa::GenericIsa::new())
}
