//! The shapes `xent bench` times (`ROWSxCLASSES`, or PyTorch's `(N, C, d…)` layout as
//! `NxCxD1x…`; the default and full sets) and the deterministic data it generates for them.

use crate::input::Layout;

/// A benchmark shape: `rows × classes` row-major, or `(N, C, d…)` with `spatial = d1·d2·…`
/// positions per sample (`rows = N·spatial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows (batch × sequence or spatial positions).
    pub rows: usize,
    /// Classes (vocabulary size).
    pub classes: usize,
    /// Positions per sample of the `(N, C, d…)` layout; 0 for row-major `(rows, classes)`.
    pub spatial: usize,
}

impl Shape {
    /// A row-major `rows × classes` shape.
    pub const fn rows(rows: usize, classes: usize) -> Shape {
        Shape {
            rows,
            classes,
            spatial: 0,
        }
    }

    /// The logits' layout.
    pub fn layout(&self) -> Layout {
        match self.spatial {
            0 => Layout::Rows,
            spatial => Layout::ClassDim1 { spatial },
        }
    }
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(['x', 'X']).collect();
        if parts.len() < 2 {
            return Err(format!(
                "{s:?} is not ROWSxCLASSES (e.g. 4096x32000) or NxCxD1x… (e.g. 16x21x512x512)"
            ));
        }
        let dims = parts
            .iter()
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("every size in {s:?} must be a positive integer"))
            })
            .collect::<Result<Vec<usize>, String>>()?;
        let too_large = || format!("{s:?} is too large");
        let shape = match dims[..] {
            [rows, classes] => Shape::rows(rows, classes),
            [batch, classes, ref spatial @ ..] => {
                let spatial = spatial
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(too_large)?;
                Shape {
                    rows: batch.checked_mul(spatial).ok_or_else(too_large)?,
                    classes,
                    spatial,
                }
            }
            _ => unreachable!("two sizes at least"),
        };
        shape
            .rows
            .checked_mul(shape.classes)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(too_large)?;
        Ok(shape)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spatial {
            0 => write!(f, "{}x{}", self.rows, self.classes),
            spatial => write!(f, "{}x{}x{spatial}", self.rows / spatial, self.classes),
        }
    }
}

/// Classification and language-model vocabularies at full size (`--full`): 10 classes, 1000
/// (ImageNet), 32000 (Llama 2), 50257 (GPT-2), 128256 (Llama 3).
pub const FULL_SHAPES: [Shape; 5] = [
    Shape::rows(65536, 10),
    Shape::rows(16384, 1000),
    Shape::rows(4096, 32000),
    Shape::rows(2048, 50257),
    Shape::rows(1024, 128256),
];

/// The default shapes: the classification and vocabulary sizes of [`FULL_SHAPES`] (and 100)
/// with rows cut so each is about 8 M logits, 32 MB in f32: past the last-level cache of most
/// CPUs, so the probes and the losses measure DRAM, not cache, and the run stays within a
/// laptop's memory and a few minutes.
pub const DEFAULT_SHAPES: [Shape; 6] = [
    Shape::rows(819_200, 10),
    Shape::rows(81_920, 100),
    Shape::rows(8192, 1000),
    Shape::rows(256, 32000),
    Shape::rows(160, 50257),
    Shape::rows(64, 128256),
];

/// Deterministic logits and targets: SplitMix64 → roughly normal logits (σ ≈ 2) with one
/// logit in 1000 scaled ×20, so probabilities are not all about 1/C.
/// SplitMix64 from `seed`: the benches' generated data, the same on every machine.
pub(super) fn splitmix(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub(super) fn generate(shape: Shape, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut next = splitmix(seed);
    let n = shape.rows * shape.classes;
    let logits = (0..n)
        .map(|_| {
            let u = next();
            // Four 16-bit uniforms summed: mean 2, variance 1/3 → scale to σ ≈ 2.
            let s: f32 = (0..4)
                .map(|k| ((u >> (16 * k)) & 0xFFFF) as f32 / 65536.0)
                .sum();
            let v = (s - 2.0) * 3.46;
            if u.is_multiple_of(1000) {
                v * 20.0
            } else {
                v
            }
        })
        .collect();
    let targets = (0..shape.rows)
        .map(|_| (next() % shape.classes as u64) as i64)
        .collect();
    (logits, targets)
}

/// Short rows (`--short`): binary and CIFAR-10 heads, CIFAR-100, ImageNet, and a segmentation
/// map (21 classes of PASCAL VOC over 512 × 512 pixels, the (N, C, d…) layout); each at least
/// 8 MiB of f32 logits, so DRAM, not cache.
pub const SHORT_SHAPES: [Shape; 5] = [
    Shape::rows(1_048_576, 2),
    Shape::rows(1_048_576, 10),
    Shape::rows(262_144, 100),
    Shape::rows(65_536, 1000),
    Shape {
        rows: 16 * 512 * 512,
        classes: 21,
        spatial: 512 * 512,
    },
];
