//! Shared test helpers: hard test data, owned cases, and NaN/inf-exact tolerance checks that
//! report the worst element. Used by the CPU and GPU test files alike.
#![allow(dead_code)]

pub mod backends;
pub mod device;
pub mod gpu_policy;
pub mod shards;

use half::{bf16, f16};
use xent::reference::{self, Reference};
use xent::{Batch, BinaryCrossEntropy, CrossEntropy, Dtype, Logits, Output, Reduction, Request};

/// SplitMix64: a small, seedable generator so failures reproduce.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), unit variance.
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.732 - 3.464
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// What to sprinkle into the logits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hardness {
    /// A few logits ×20 so probabilities are not all ~1/C.
    pub outliers: bool,
    /// Some −inf (masked) logits, never all of a row.
    pub masked: bool,
    /// One row with a NaN, one with +inf, one all −inf (when rows allow).
    pub non_finite: bool,
}

impl Hardness {
    pub const ALL: Hardness = Hardness {
        outliers: true,
        masked: true,
        non_finite: true,
    };
}

/// An owned test case: logits in a dtype and layout, index or dense targets, weights.
#[derive(Debug, Clone)]
pub struct Case {
    pub rows: usize,
    pub classes: usize,
    /// `Some(spatial)` for the (N, C, spatial) layout.
    pub spatial: Option<usize>,
    pub dtype: Dtype,
    /// Logits as f32, already rounded to `dtype`, in layout order.
    pub logits: Vec<f32>,
    pub index_targets: Vec<i64>,
    pub dense_targets: Option<Vec<f32>>,
    pub class_weights: Option<Vec<f32>>,
    pub pos_weight: Option<Vec<f32>>,
    /// Per-row sample weights.
    pub sample_weights: Option<Vec<f32>>,
    /// Store index targets as i32.
    pub i32_targets: bool,
    /// Ask for the metrics (else the call is made and checked without them: a call that
    /// asks less can take a path that does less).
    pub metrics: bool,
}

impl Case {
    /// Random logits (scale 3) with index targets; `ignore` marks some rows with −100.
    pub fn new(seed: u64, rows: usize, classes: usize, hard: Hardness) -> Case {
        let mut rng = Rng(seed);
        let mut logits: Vec<f32> = (0..rows * classes).map(|_| 3.0 * rng.normal()).collect();
        let index_targets = (0..rows)
            .map(|_| rng.below(classes) as i64)
            .collect::<Vec<_>>();
        if hard.outliers {
            for _ in 0..(rows * classes / 50).max(1).min(rows * classes) {
                let i = rng.below(rows * classes);
                logits[i] *= 20.0;
            }
        }
        if hard.masked && classes > 1 {
            for _ in 0..(rows * classes / 20).max(1).min(rows * classes) {
                let i = rng.below(rows * classes);
                logits[i] = f32::NEG_INFINITY;
            }
            // Keep one finite logit per row.
            for r in 0..rows {
                if logits[r * classes..(r + 1) * classes]
                    .iter()
                    .all(|v| *v == f32::NEG_INFINITY)
                {
                    logits[r * classes] = 0.0;
                }
            }
        }
        if hard.non_finite && rows >= 4 {
            logits[rng.below(classes)] = f32::NAN; // row 0
            logits[classes + rng.below(classes)] = f32::INFINITY; // row 1
            logits[2 * classes..3 * classes].fill(f32::NEG_INFINITY); // row 2
        }
        Case {
            rows,
            classes,
            spatial: None,
            dtype: Dtype::F32,
            logits,
            index_targets,
            dense_targets: None,
            class_weights: None,
            pos_weight: None,
            sample_weights: None,
            i32_targets: false,
            metrics: true,
        }
    }

    /// Calls without asking for the metrics.
    pub fn without_metrics(mut self) -> Case {
        self.metrics = false;
        self
    }

    /// Marks every `every`-th row ignored (target −100, or `ignore_index`).
    pub fn ignore_every(mut self, every: usize, ignore_index: i64) -> Case {
        for r in (0..self.rows).step_by(every.max(1)) {
            self.index_targets[r] = ignore_index;
        }
        self
    }

    /// Random positive class weights.
    pub fn weighted(mut self, seed: u64) -> Case {
        let mut rng = Rng(seed ^ 0xABCD);
        self.class_weights = Some(
            (0..self.classes)
                .map(|_| 0.25 + 2.0 * rng.uniform())
                .collect(),
        );
        self
    }

    /// Random per-row sample weights in [0, 2), with some exact zeros.
    pub fn sample_weighted(mut self, seed: u64) -> Case {
        let mut rng = Rng(seed ^ 0x5A3B);
        self.sample_weights = Some(
            (0..self.rows)
                .map(|_| {
                    if rng.below(7) == 0 {
                        0.0
                    } else {
                        2.0 * rng.uniform()
                    }
                })
                .collect(),
        );
        self
    }

    /// Soft targets: random non-negative rows summing to 1 (softmax CE).
    pub fn soft(mut self, seed: u64) -> Case {
        let mut rng = Rng(seed ^ 0x50F7);
        let mut t = vec![0f32; self.rows * self.classes];
        for r in 0..self.rows {
            let row = &mut t[r * self.classes..(r + 1) * self.classes];
            row.iter_mut().for_each(|v| *v = rng.uniform().powi(3));
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s.max(1e-30));
        }
        self.dense_targets = Some(t);
        self
    }

    /// Multi-label targets in [0, 1] (BCE) and positive weights.
    pub fn multi_label(mut self, seed: u64, with_weights: bool) -> Case {
        let mut rng = Rng(seed ^ 0xB0CE);
        let t = (0..self.rows * self.classes)
            .map(|_| match rng.below(4) {
                0 => rng.uniform(),
                1 | 2 => 0.0,
                _ => 1.0,
            })
            .collect();
        self.dense_targets = Some(t);
        if with_weights {
            self.class_weights = Some((0..self.classes).map(|_| 0.5 + rng.uniform()).collect());
            self.pos_weight = Some(
                (0..self.classes)
                    .map(|_| 0.5 + 3.0 * rng.uniform())
                    .collect(),
            );
        }
        self
    }

    /// Probabilities instead of logits: a softmax of the logits (finite rows only), with some
    /// exact zeros so the clamp is hit.
    pub fn probabilities(mut self) -> Case {
        for r in 0..self.rows {
            let row = &mut self.logits[r * self.classes..(r + 1) * self.classes];
            let m = row
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(f32::MIN, f32::max);
            row.iter_mut().for_each(|v| {
                *v = if v.is_finite() {
                    ((*v - m) / 4.0).exp()
                } else {
                    0.0
                }
            });
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        self
    }

    /// Rounds the logits to `dtype` (the reference then sees the same rounded values).
    pub fn dtype(mut self, dtype: Dtype) -> Case {
        self.dtype = dtype;
        for v in &mut self.logits {
            *v = match dtype {
                Dtype::F32 => *v,
                Dtype::F16 => f16::from_f32(*v).to_f32(),
                Dtype::Bf16 => bf16::from_f32(*v).to_f32(),
            };
        }
        self
    }

    /// Reinterprets the rows as (rows/spatial, C, spatial): permutes logits and dense targets.
    pub fn class_dim1(mut self, spatial: usize) -> Case {
        assert!(spatial > 0 && self.rows.is_multiple_of(spatial));
        let permute = |v: &[f32]| {
            let mut out = vec![0f32; v.len()];
            let layout = xent::Layout::ClassDim1 { spatial };
            for r in 0..self.rows {
                for c in 0..self.classes {
                    out[layout.offset(r, c, self.classes)] = v[r * self.classes + c];
                }
            }
            out
        };
        self.logits = permute(&self.logits);
        if let Some(t) = &self.dense_targets {
            self.dense_targets = Some(permute(t));
        }
        self.spatial = Some(spatial);
        self
    }

    pub fn i32_targets(mut self) -> Case {
        self.i32_targets = true;
        self
    }

    /// Logits in their dtype.
    pub fn storage(&self) -> Storage {
        match self.dtype {
            Dtype::F32 => Storage::F32(self.logits.clone()),
            Dtype::F16 => Storage::F16(self.logits.iter().map(|&v| f16::from_f32(v)).collect()),
            Dtype::Bf16 => Storage::Bf16(self.logits.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }

    /// A batch over `storage` (which must come from [`Case::storage`]).
    pub fn batch<'a>(
        &'a self,
        storage: &'a mut Storage,
        targets_i32: &'a [i32],
        writable: bool,
    ) -> Batch<'a> {
        let (rows, classes) = (self.rows, self.classes);
        let logits = match (storage, self.spatial, writable) {
            (Storage::F32(d), None, false) => Logits::new(&d[..], rows, classes),
            (Storage::F32(d), None, true) => Logits::new_mut(&mut d[..], rows, classes),
            (Storage::F16(d), None, false) => Logits::new(&d[..], rows, classes),
            (Storage::F16(d), None, true) => Logits::new_mut(&mut d[..], rows, classes),
            (Storage::Bf16(d), None, false) => Logits::new(&d[..], rows, classes),
            (Storage::Bf16(d), None, true) => Logits::new_mut(&mut d[..], rows, classes),
            (Storage::F32(d), Some(s), false) => Logits::class_dim1(&d[..], rows / s, classes, s),
            (Storage::F32(d), Some(s), true) => {
                Logits::class_dim1_mut(&mut d[..], rows / s, classes, s)
            }
            (Storage::F16(d), Some(s), false) => Logits::class_dim1(&d[..], rows / s, classes, s),
            (Storage::F16(d), Some(s), true) => {
                Logits::class_dim1_mut(&mut d[..], rows / s, classes, s)
            }
            (Storage::Bf16(d), Some(s), false) => Logits::class_dim1(&d[..], rows / s, classes, s),
            (Storage::Bf16(d), Some(s), true) => {
                Logits::class_dim1_mut(&mut d[..], rows / s, classes, s)
            }
        };
        let mut batch = match (&self.dense_targets, self.i32_targets) {
            (Some(t), _) => Batch::new(logits, &t[..]),
            (None, true) => Batch::new(logits, targets_i32),
            (None, false) => Batch::new(logits, &self.index_targets[..]),
        };
        batch.class_weights = self.class_weights.as_deref();
        batch.pos_weight = self.pos_weight.as_deref();
        batch.sample_weights = self.sample_weights.as_deref();
        batch
    }

    /// The transformed logit z of (row, class), in f64.
    pub fn transformed(&self, options: &CrossEntropy, row: usize, class: usize) -> f64 {
        let layout = self
            .spatial
            .map_or(xent::Layout::Rows, |spatial| xent::Layout::ClassDim1 {
                spatial,
            });
        let x = self.logits[layout.offset(row, class, self.classes)] as f64;
        let s = options.logit_scale as f64;
        match (options.input, options.softcap) {
            (xent::InputKind::Probabilities { .. }, _) => x,
            (_, None) => s * x,
            (_, Some(cap)) => cap as f64 * (s * x / cap as f64).tanh(),
        }
    }

    pub fn targets_i32(&self) -> Vec<i32> {
        self.index_targets.iter().map(|&v| v as i32).collect()
    }

    /// The f64 reference for softmax cross-entropy.
    pub fn reference(&self, options: &CrossEntropy, upstream: Option<&[f32]>) -> Reference {
        let mut storage = self.storage();
        let t32 = self.targets_i32();
        reference::cross_entropy(options, &self.batch(&mut storage, &t32, false), upstream)
            .expect("reference")
    }

    /// The f64 reference for BCE.
    pub fn reference_bce(
        &self,
        options: &BinaryCrossEntropy,
        upstream: Option<&[f32]>,
    ) -> Reference {
        let mut storage = self.storage();
        let t32 = self.targets_i32();
        reference::binary_cross_entropy(options, &self.batch(&mut storage, &t32, false), upstream)
            .expect("reference")
    }
}

/// Owned logits storage in a dtype.
#[derive(Debug, Clone)]
pub enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Storage {
    /// The first `count` values of `dtype` in little-endian `bytes`.
    pub fn from_bytes(dtype: Dtype, bytes: &[u8], count: usize) -> Storage {
        let size = dtype.size();
        let values = bytes[..count * size].chunks_exact(size);
        match dtype {
            Dtype::F32 => Storage::F32(
                values
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F16 => Storage::F16(values.map(|b| f16::from_le_bytes([b[0], b[1]])).collect()),
            Dtype::Bf16 => {
                Storage::Bf16(values.map(|b| bf16::from_le_bytes([b[0], b[1]])).collect())
            }
        }
    }

    /// The values' bytes, padded to whole 4-byte words (as a storage buffer takes them).
    pub fn words(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = match self {
            Storage::F32(d) => bytemuck::cast_slice(d).to_vec(),
            Storage::F16(d) => bytemuck::cast_slice(d).to_vec(),
            Storage::Bf16(d) => bytemuck::cast_slice(d).to_vec(),
        };
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Storage::F32(d) => d.clone(),
            Storage::F16(d) => d.iter().map(|v| v.to_f32()).collect(),
            Storage::Bf16(d) => d.iter().map(|v| v.to_f32()).collect(),
        }
    }
}

/// Gradient mode to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    None,
    OutOfPlace,
    InPlace,
}

/// Everything one backend call returned, with the gradient as f32.
pub struct Run {
    pub output: Output,
    pub gradient: Option<Vec<f32>>,
}

/// Runs a softmax case through `run` (a backend call) with the given gradient mode.
pub fn run_softmax(
    case: &Case,
    options: &CrossEntropy,
    upstream: Option<&[f32]>,
    mode: GradMode,
    run: impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<Output>,
) -> Run {
    try_run_softmax(case, options, upstream, mode, run).expect("softmax call")
}

/// [`run_softmax`], returning the call's error.
pub fn try_run_softmax(
    case: &Case,
    options: &CrossEntropy,
    upstream: Option<&[f32]>,
    mode: GradMode,
    run: impl Fn(&CrossEntropy, Batch, Request) -> xent::Result<Output>,
) -> xent::Result<Run> {
    let mut storage = case.storage();
    let t32 = case.targets_i32();
    let mut grad = vec![0f32; case.rows * case.classes];
    let mut request = Request::new().row_losses().lse();
    if case.metrics {
        request = request.metrics();
    }
    request.upstream = upstream;
    let output = match mode {
        GradMode::None => run(options, case.batch(&mut storage, &t32, false), request)?,
        GradMode::OutOfPlace => run(
            options,
            case.batch(&mut storage, &t32, false),
            request.gradient_into(&mut grad),
        )?,
        GradMode::InPlace => {
            let out = run(
                options,
                case.batch(&mut storage, &t32, true),
                request.gradient_in_place(),
            )?;
            grad = storage.to_f32();
            out
        }
    };
    Ok(Run {
        output,
        gradient: (mode != GradMode::None).then_some(grad),
    })
}

/// The tolerance table: `|a − r| ≤ abs + rel·|r|` of an f32 result against the f64 reference,
/// per quantity. The kernels accumulate in f32 (CPU chunks in f64): a loss or LSE keeps about
/// 5 digits, a gradient element 4 relative to its size (1e-6 absolute for the tiny ones);
/// f16/bf16 gradients written in place are rounded to their dtype on top (`gradient`).
pub mod tol {
    /// One row of the table.
    #[derive(Debug, Clone, Copy)]
    pub struct Tol {
        pub abs: f64,
        pub rel: f64,
    }
    /// Reduced and per-row losses, LSE.
    pub const LOSS: Tol = Tol {
        abs: 1e-5,
        rel: 1e-5,
    };
    /// Probabilities (target probability, confidence).
    pub const PROBABILITY: Tol = Tol {
        abs: 1e-5,
        rel: 1e-4,
    };
    /// Entropy.
    pub const ENTROPY: Tol = Tol {
        abs: 1e-4,
        rel: 1e-4,
    };
    /// f32 gradient elements.
    pub const GRADIENT: Tol = Tol {
        abs: 1e-6,
        rel: 1e-4,
    };

    /// Gradient elements stored in `dtype` (in place: rounded to it).
    pub fn gradient(dtype: xent::Dtype) -> Tol {
        let rounding = match dtype {
            xent::Dtype::F32 => 0.0,
            xent::Dtype::F16 => 1e-3,
            xent::Dtype::Bf16 => 8e-3,
        };
        Tol {
            rel: GRADIENT.rel + rounding,
            ..GRADIENT
        }
    }
}

/// [`assert_close`] with a row of the tolerance table.
pub fn assert_within(what: &str, actual: &[f32], expected: &[f64], tol: tol::Tol) {
    assert_close(what, actual, expected, tol.abs, tol.rel);
}

/// `|a − r| ≤ tol[i]`, NaN and infinities exact; panics naming the worst element.
pub fn assert_each(what: &str, actual: &[f32], expected: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &r)) in actual.iter().zip(expected).enumerate() {
        let a = a as f64;
        let excess = if r.is_nan() || a.is_nan() {
            if r.is_nan() && a.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if r.is_infinite() || a.is_infinite() {
            if a == r {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (a - r).abs() / tol(i)
        };
        if excess > 1.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, excess)) = worst {
        panic!(
            "{what}: element {i} is {} but the reference says {} ({excess:.2}× the tolerance {:e})",
            actual[i],
            expected[i],
            tol(i)
        );
    }
}

/// `|a − r| ≤ abs + rel·|r|`, with NaN = NaN and ±inf = same inf. Panics naming the worst.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], abs: f64, rel: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &r)) in actual.iter().zip(expected).enumerate() {
        let a = a as f64;
        let ok = if r.is_nan() || a.is_nan() {
            r.is_nan() && a.is_nan()
        } else if r.is_infinite() || a.is_infinite() {
            a == r
        } else {
            (a - r).abs() <= abs + rel * r.abs()
        };
        if !ok {
            let excess = if a.is_finite() && r.is_finite() {
                (a - r).abs() / (abs + rel * r.abs())
            } else {
                f64::INFINITY
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, excess)) = worst {
        panic!(
            "{what}: element {i} is {} but the reference says {} ({}× the tolerance {abs} + {rel}·|ref|)",
            actual[i], expected[i], excess
        );
    }
}

/// Per-row loss tolerance of SEMANTICS.md section 8: `1e-5·max(1, |ref|)`.
pub fn assert_losses(what: &str, actual: &[f32], expected: &[f64]) {
    assert_within(what, actual, expected, tol::LOSS);
}

/// A reduced loss against the reference's (both absent for `Reduction::None`).
pub fn assert_loss(what: &str, actual: Option<f32>, expected: Option<f64>) {
    match (actual, expected) {
        (Some(a), Some(r)) => assert_within(what, &[a], &[r], tol::LOSS),
        (None, None) => {}
        other => panic!("{what}: {other:?}"),
    }
}

/// Compares a softmax run with the reference: reduced loss, rows, LSE, metrics, gradient.
pub fn check_softmax(
    label: &str,
    case: &Case,
    options: &CrossEntropy,
    run: &Run,
    reference: &Reference,
) {
    let out = &run.output;
    match (out.loss, reference.loss) {
        (Some(a), Some(r)) => assert_within(&format!("{label}: loss"), &[a], &[r], tol::LOSS),
        (None, None) => {}
        (a, r) => panic!("{label}: loss {a:?} vs reference {r:?}"),
    }
    assert_losses(
        &format!("{label}: row losses"),
        out.row_losses.as_ref().unwrap(),
        &reference.row_losses,
    );
    assert_within(
        &format!("{label}: lse"),
        out.lse.as_ref().unwrap(),
        &reference.lse,
        tol::LOSS,
    );
    if let Some(g) = &run.gradient {
        assert_within(
            &format!("{label}: gradient"),
            g,
            &reference.gradient,
            tol::gradient(case.dtype),
        );
    }
    let Some(m) = out.metrics.as_ref() else {
        assert!(!case.metrics, "{label}: metrics asked, none returned");
        return;
    };
    for r in 0..case.rows {
        let finite = reference.row_losses[r].is_finite() && reference.lse[r].is_finite();
        assert_eq!(m.valid[r], reference.valid[r], "{label}: valid[{r}]");
        if !finite {
            continue;
        }
        // Argmax may differ only between transformed logits equal within f32 rounding
        // (soft-capping saturates many outliers to exactly `cap` in f32).
        if m.argmax[r] != reference.argmax[r] {
            let z = |c: u32| case.transformed(options, r, c as usize);
            let (a, b) = (z(m.argmax[r]), z(reference.argmax[r]));
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{label}: argmax[{r}] {} (z = {a}) vs {} (z = {b})",
                m.argmax[r],
                reference.argmax[r]
            );
        } else {
            assert_eq!(m.correct[r], reference.correct[r], "{label}: correct[{r}]");
        }
        assert_within(
            &format!("{label}: target_prob[{r}]"),
            &[m.target_prob[r]],
            &[reference.target_prob[r]],
            tol::PROBABILITY,
        );
        assert_within(
            &format!("{label}: entropy[{r}]"),
            &[m.entropy[r]],
            &[reference.entropy[r]],
            tol::ENTROPY,
        );
        assert_within(
            &format!("{label}: confidence[{r}]"),
            &[m.confidence[r]],
            &[reference.confidence[r]],
            tol::PROBABILITY,
        );
    }
}

/// Runs `case` on every backend of the matrix (`common::backends`: each CPU level, every GPU
/// path, 32 KiB bindings for the small-binding devices) in every gradient mode, and checks
/// each against the reference.
pub fn check_every_backend(
    label: &str,
    case: &Case,
    options: &CrossEntropy,
    upstream: Option<&[f32]>,
) {
    let modes = [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace];
    check_every_backend_in(label, case, options, upstream, &modes);
}

/// [`check_every_backend`] in the given gradient modes only.
pub fn check_every_backend_in(
    label: &str,
    case: &Case,
    options: &CrossEntropy,
    upstream: Option<&[f32]>,
    modes: &[GradMode],
) {
    let reference = case.reference(options, upstream);
    for path in backends::backends(32 << 10) {
        for &mode in modes {
            let run = match try_run_softmax(case, options, upstream, mode, |o, b, r| {
                o.compute(&path.backend, b, r)
            }) {
                Ok(run) => run,
                // A small-binding device refuses what it cannot bind, with a typed error.
                Err(xent::Error::Unsupported(_)) if path.small_bindings => continue,
                Err(e) => panic!("{label} [{}, {mode:?}]: {e}", path.name),
            };
            check_softmax(
                &format!("{label} [{}, {mode:?}]", path.name),
                case,
                options,
                &run,
                &reference,
            );
        }
    }
}

pub fn option_grid() -> Vec<(&'static str, CrossEntropy)> {
    let base = CrossEntropy::new();
    vec![
        ("plain", base),
        ("sum", base.reduction(Reduction::Sum)),
        ("none", base.reduction(Reduction::None)),
        ("smoothing", base.label_smoothing(0.1)),
        ("z-loss", base.z_loss(1e-3)),
        ("softcap", base.softcap(15.0)),
        ("scale", base.logit_scale(0.7)),
        (
            "everything",
            base.label_smoothing(0.2)
                .z_loss(1e-4)
                .softcap(30.0)
                .logit_scale(1.3)
                .ignore_index(3),
        ),
        (
            "everything-sum",
            base.label_smoothing(1.0)
                .z_loss(2e-2)
                .logit_scale(0.5)
                .reduction(Reduction::Sum),
        ),
    ]
}

/// BCE on `path` in every gradient mode (the loss alone, the gradient into a buffer, in place;
/// a per-element upstream for `Reduction::None`), against the f64 reference; a small-binding
/// GPU device may refuse a case with a typed error.
pub fn check_bce(label: &str, path: &backends::Path, case: &Case, options: &BinaryCrossEntropy) {
    let elements = case.rows * case.classes;
    let upstream: Option<Vec<f32>> = (options.reduction == Reduction::None)
        .then(|| (0..elements).map(|i| (i % 7) as f32 * 0.25).collect());
    let reference = case.reference_bce(options, upstream.as_deref());
    for mode in [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace] {
        let in_place = mode == GradMode::InPlace;
        let label = format!("{label} [{}] {mode:?}", path.name);
        let mut storage = case.storage();
        let t32 = case.targets_i32();
        let mut grad = vec![0f32; elements];
        let mut request = Request::new().row_losses();
        request = match mode {
            GradMode::None => request,
            GradMode::OutOfPlace => request.gradient_into(&mut grad),
            GradMode::InPlace => request.gradient_in_place(),
        };
        request.upstream = upstream.as_deref();
        let batch = case.batch(&mut storage, &t32, in_place);
        let out = match options.compute(&path.backend, batch, request) {
            Ok(out) => out,
            Err(xent::Error::Unsupported(_)) if path.small_bindings => continue,
            Err(e) => panic!("{label}: {e}"),
        };
        if in_place {
            grad = storage.to_f32();
        }
        assert_loss(&label, out.loss, reference.loss);
        assert_losses(
            &format!("{label}: losses"),
            out.row_losses.as_ref().unwrap(),
            &reference.row_losses,
        );
        if mode == GradMode::None {
            continue;
        }
        let gradient = if in_place {
            tol::gradient(case.dtype)
        } else {
            tol::GRADIENT
        };
        assert_within(
            &format!("{label}: gradient"),
            &grad,
            &reference.gradient,
            gradient,
        );
    }
}
