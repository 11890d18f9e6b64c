//! The shapes `xent bench` times (`ROWSxCLASSES`, the default and full sets) and the
//! deterministic data it generates for them.

/// A `ROWSxCLASSES` benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows (batch × sequence positions).
    pub rows: usize,
    /// Classes (vocabulary size).
    pub classes: usize,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (r, c) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{s:?} is not ROWSxCLASSES (e.g. 4096x32000)"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{what} in {s:?} must be a positive integer"))
        };
        let shape = Shape {
            rows: parse(r, "rows")?,
            classes: parse(c, "classes")?,
        };
        shape
            .rows
            .checked_mul(shape.classes)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        Ok(shape)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.classes)
    }
}

/// Classification and language-model vocabularies at full size (`--full`): 10 classes, 1000
/// (ImageNet), 32000 (Llama 2), 50257 (GPT-2), 128256 (Llama 3).
pub const FULL_SHAPES: [Shape; 5] = [
    Shape {
        rows: 65536,
        classes: 10,
    },
    Shape {
        rows: 16384,
        classes: 1000,
    },
    Shape {
        rows: 4096,
        classes: 32000,
    },
    Shape {
        rows: 2048,
        classes: 50257,
    },
    Shape {
        rows: 1024,
        classes: 128256,
    },
];

/// The default shapes: the classification and vocabulary sizes of [`FULL_SHAPES`] (and 100)
/// with rows cut so each is about 8 M logits, 32 MB in f32: past the last-level cache of most
/// CPUs, so the probes and the losses measure DRAM, not cache, and the run stays within a
/// laptop's memory and a few minutes.
pub const DEFAULT_SHAPES: [Shape; 6] = [
    Shape {
        rows: 819_200,
        classes: 10,
    },
    Shape {
        rows: 81_920,
        classes: 100,
    },
    Shape {
        rows: 8192,
        classes: 1000,
    },
    Shape {
        rows: 256,
        classes: 32000,
    },
    Shape {
        rows: 160,
        classes: 50257,
    },
    Shape {
        rows: 64,
        classes: 128256,
    },
];

/// Deterministic logits and targets: SplitMix64 → roughly normal logits (σ ≈ 2) with one
/// logit in 1000 scaled ×20, so probabilities are not all about 1/C.
pub(super) fn generate(shape: Shape, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = shape.rows * shape.classes;
    let logits = (0..n)
        .map(|_| {
            let u = next();
            // Four 16-bit uniforms summed: mean 2, variance 1/3 → scale to σ ≈ 2.
            let s: f32 = (0..4)
                .map(|k| ((u >> (16 * k)) & 0xFFFF) as f32 / 65536.0)
                .sum();
            let v = (s - 2.0) * 3.46;
            if u % 1000 == 0 {
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
