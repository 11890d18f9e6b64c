//! The digits data set (`data/digits.csv.gz`, see `data/README.md`): reading and splitting.

use super::{Error, Rng, CLASSES, FEATURES, HELD_OUT, SPLIT_SEED};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Images and labels, row-major.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// `samples × 64` pixels scaled to [0, 1] (the raw 0..16 divided by 16).
    pub x: Vec<f32>,
    /// `samples` labels 0..9.
    pub y: Vec<i32>,
}

impl Split {
    /// Images in the split.
    pub fn samples(&self) -> usize {
        self.y.len()
    }
}

/// The training and held-out splits.
#[derive(Debug, Clone)]
pub struct Digits {
    /// 80% of the images.
    pub train: Split,
    /// The other 20%, never trained on.
    pub held_out: Split,
}

/// `data/digits.csv.gz` in this crate.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz")
}

/// Reads the gzip'd CSV (64 pixel values 0..16, then the label, per line) and splits it:
/// a fixed shuffle ([`SPLIT_SEED`]), the last [`HELD_OUT`] of it held out.
pub fn load(path: &Path) -> Result<Digits, Error> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let all = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut order: Vec<usize> = (0..all.samples()).collect();
    Rng::new(SPLIT_SEED).shuffle(&mut order);
    let held_out = (all.samples() as f64 * HELD_OUT).round() as usize;
    let (train, held) = order.split_at(all.samples() - held_out);
    let pick = |rows: &[usize]| Split {
        x: rows
            .iter()
            .flat_map(|&r| all.x[r * FEATURES..][..FEATURES].iter().copied())
            .collect(),
        y: rows.iter().map(|&r| all.y[r]).collect(),
    };
    Ok(Digits {
        train: pick(train),
        held_out: pick(held),
    })
}

/// Parses the CSV text; errors name the line.
pub fn parse(text: &str) -> Result<Split, String> {
    let mut out = Split::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != FEATURES + 1 {
            return Err(format!(
                "line {}: {} fields, expected {}",
                i + 1,
                fields.len(),
                FEATURES + 1
            ));
        }
        for f in &fields[..FEATURES] {
            let v: f32 = f
                .trim()
                .parse()
                .map_err(|e| format!("line {}: pixel {f:?}: {e}", i + 1))?;
            if !(0.0..=16.0).contains(&v) {
                return Err(format!("line {}: pixel {v} outside 0..=16", i + 1));
            }
            out.x.push(v / 16.0);
        }
        let label: i32 = fields[FEATURES]
            .trim()
            .parse()
            .map_err(|e| format!("line {}: label: {e}", i + 1))?;
        if !(0..CLASSES as i32).contains(&label) {
            return Err(format!("line {}: label {label} outside 0..10", i + 1));
        }
        out.y.push(label);
    }
    if out.samples() == 0 {
        return Err("no images".into());
    }
    Ok(out)
}
