//! Validation, done once per call before any backend runs, and the reduction's row scales.
//!
//! A backend receives a [`Plan`]: every shape, option and target has been checked, and the
//! numbers the reduction needs (`D`, `V`, `W`) are known, so forward and backward can be fused.

pub(crate) mod device;
pub(crate) mod gpu;
pub(crate) mod linear;
pub(crate) mod shard;

use crate::error::{Error, Result};
use crate::input::{Batch, Layout, Logits, Storage, Targets};
use crate::options::{BinaryCrossEntropy, CrossEntropy, InputKind, Reduction};
use crate::output::{Gradient, Request};
use half::{bf16, f16};
use rayon::prelude::*;

/// Which loss the plan is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy with these options.
    Softmax(CrossEntropy),
    /// Binary cross-entropy with logits.
    Binary(BinaryCrossEntropy),
}

impl Loss {
    /// The reduction of either loss.
    pub fn reduction(&self) -> Reduction {
        match self {
            Loss::Softmax(o) => o.reduction,
            Loss::Binary(o) => o.reduction,
        }
    }
}

/// Whether focal loss makes every class focal (label smoothing, or soft targets when
/// `dense_targets`): each class's `(1 − p)^γ` then needs the row's final LSE, so the row is
/// read once more (CPU, GPU) or the shards exchange a second round. The one place this is
/// decided.
pub(crate) fn needs_focal_pass(options: &CrossEntropy, dense_targets: bool) -> bool {
    options.is_focal() && (dense_targets || options.label_smoothing > 0.0)
}

/// A checked call, ready for a backend.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The loss and its options.
    pub loss: Loss,
    /// Rows of the flattened batch.
    pub rows: usize,
    /// Classes.
    pub classes: usize,
    /// Memory layout of logits, dense targets and gradients.
    pub layout: Layout,
    /// The reduction.
    pub reduction: Reduction,
    /// `V`: rows whose target is not `ignore_index` (all rows for dense targets).
    pub valid_rows: usize,
    /// The mean's denominator for the cross-entropy terms: `D = Σ_valid s[n]·w[y[n]]` for
    /// index targets, `Σ_n s[n]` for soft targets (`N` without sample weights), `N·C` for BCE.
    pub denominator: f64,
    /// The mean's denominator for the z-loss term: `Σ_valid s[n]`, which is `V` without
    /// sample weights (so the mean does not change when every `s[n]` is scaled alike).
    pub z_denominator: f64,
    /// `W = Σ_c w[c]`.
    pub class_weight_sum: f64,
    /// The scalar upstream gradient for sum/mean (1 when absent).
    pub upstream_scalar: f32,
}

impl Plan {
    /// Softmax options (panics never: BCE plans return the defaults, unused).
    pub fn softmax(&self) -> CrossEntropy {
        match self.loss {
            Loss::Softmax(o) => o,
            Loss::Binary(_) => CrossEntropy::new(),
        }
    }

    /// Scales of the cross-entropy part and of the z-loss part of one row's gradient: `index`
    /// picks the per-row (per-element for BCE) upstream of `Reduction::None`, and
    /// `sample_weight` is the row's `s[n]` (1 without sample weights).
    #[inline]
    pub fn row_scales(
        &self,
        upstream: Option<&[f32]>,
        index: usize,
        sample_weight: f32,
    ) -> (f32, f32) {
        // Only `Reduction::None` has one upstream value per row (or element).
        let row_upstream = match self.reduction {
            Reduction::None => upstream.map_or(1.0, |u| u[index]) as f64,
            _ => 1.0,
        };
        let (a, b) = crate::math::reduce::row_scales(
            self.reduction,
            (row_upstream, self.upstream_scalar as f64),
            sample_weight as f64,
            (self.denominator, self.z_denominator),
        );
        (a as f32, b as f32)
    }

    /// Combines the per-row cross-entropy and z-loss sums (sample weights applied) into the
    /// reduced loss.
    pub fn reduce(&self, ce_sum: f64, z_sum: f64) -> Option<f64> {
        crate::math::reduce::loss(
            self.reduction,
            (ce_sum, z_sum),
            (self.denominator, self.z_denominator),
        )
    }
}

/// Checks a softmax cross-entropy call (SEMANTICS.md section 7).
pub fn softmax(options: &CrossEntropy, batch: &Batch, request: &Request) -> Result<Plan> {
    options.validate()?;
    let logits = &batch.logits;
    logits.check()?;
    let (rows, classes) = (logits.rows(), logits.classes());
    let class_weight_sum = check_weights("class_weights", batch.class_weights, classes)?;
    check_sample_weights(batch.sample_weights, rows, logits)?;
    let all_rows: f64 = match batch.sample_weights {
        None => rows as f64,
        Some(w) => w.iter().map(|&v| v as f64).sum(),
    };
    let mut plan = Plan {
        loss: Loss::Softmax(*options),
        rows,
        classes,
        layout: logits.layout(),
        reduction: options.reduction,
        valid_rows: rows,
        denominator: all_rows,
        z_denominator: all_rows,
        class_weight_sum,
        upstream_scalar: 1.0,
    };
    match batch.targets {
        Targets::Dense(t) => {
            check_len("targets", t.len(), rows * classes, logits)?;
            check_dense(
                t,
                logits,
                "soft target",
                |v| v >= 0.0,
                "must be finite and >= 0",
            )?;
        }
        targets => {
            check_len("targets", targets.len(), rows, logits)?;
            let ignore = options.ignore_index;
            let totals = match targets {
                Targets::I32(t) => IndexTotals::of(t, classes, ignore, batch)?,
                Targets::I64(t) => IndexTotals::of(t, classes, ignore, batch)?,
                Targets::Dense(_) => unreachable!("matched above"),
            };
            plan.valid_rows = totals.valid;
            plan.denominator = totals.weight;
            plan.z_denominator = totals.count;
        }
    }
    if let InputKind::Probabilities { .. } = options.input {
        check_probabilities(logits)?;
    }
    check_request(&mut plan, request, logits, rows)?;
    Ok(plan)
}

/// What index targets give the mean: valid rows, `D = Σ s·w[y]` and `Z = Σ s` over them.
struct IndexTotals {
    valid: usize,
    weight: f64,
    count: f64,
}

impl IndexTotals {
    /// Rows per part of the parallel scan: fixed, so the sums' order (part by part, rows in
    /// order within a part) and bits do not depend on the thread count.
    const PART: usize = 1 << 16;

    /// Checks every target against `classes` (the first bad row, in row order, is the error)
    /// and sums the mean's denominators.
    fn of<Y: Copy + Into<i64> + Sync>(
        targets: &[Y],
        classes: usize,
        ignore_index: i64,
        batch: &Batch,
    ) -> Result<IndexTotals> {
        let (w, s) = (batch.class_weights, batch.sample_weights);
        let parts: Vec<Result<IndexTotals>> = targets
            .par_chunks(Self::PART)
            .enumerate()
            .map(|(part, chunk)| {
                let first = part * Self::PART;
                let mut totals = IndexTotals {
                    valid: 0,
                    weight: 0.0,
                    count: 0.0,
                };
                let bad = |i: usize, y: i64| Error::TargetOutOfRange {
                    row: first + i,
                    value: y,
                    classes,
                    ignore_index,
                };
                if w.is_none() && s.is_none() {
                    // Unweighted: D = Z = the valid rows, counted.
                    for (i, &y) in chunk.iter().enumerate() {
                        let y: i64 = y.into();
                        let valid = y != ignore_index;
                        if valid && (y < 0 || y as u64 >= classes as u64) {
                            return Err(bad(i, y));
                        }
                        totals.valid += valid as usize;
                    }
                    totals.weight = totals.valid as f64;
                    totals.count = totals.valid as f64;
                    return Ok(totals);
                }
                for (i, &y) in chunk.iter().enumerate() {
                    let y: i64 = y.into();
                    if y == ignore_index {
                        continue;
                    }
                    if y < 0 || y as u64 >= classes as u64 {
                        return Err(bad(i, y));
                    }
                    let s = s.map_or(1.0, |s| s[first + i] as f64);
                    totals.valid += 1;
                    totals.weight += s * w.map_or(1.0, |w| w[y as usize] as f64);
                    totals.count += s;
                }
                Ok(totals)
            })
            .collect();
        let mut totals = IndexTotals {
            valid: 0,
            weight: 0.0,
            count: 0.0,
        };
        for part in parts {
            let part = part?;
            totals.valid += part.valid;
            totals.weight += part.weight;
            totals.count += part.count;
        }
        Ok(totals)
    }
}

/// Checks a binary cross-entropy call.
pub fn binary(options: &BinaryCrossEntropy, batch: &Batch, request: &Request) -> Result<Plan> {
    options.validate()?;
    let logits = &batch.logits;
    logits.check()?;
    let (rows, classes) = (logits.rows(), logits.classes());
    check_weights("class_weights", batch.class_weights, classes)?;
    check_weights("pos_weight", batch.pos_weight, classes)?;
    check_sample_weights(batch.sample_weights, rows, logits)?;
    let Targets::Dense(t) = batch.targets else {
        return Err(Error::Unsupported(
            "binary cross-entropy needs dense f32 targets (rows × classes)".into(),
        ));
    };
    check_len("targets", t.len(), rows * classes, logits)?;
    check_dense(
        t,
        logits,
        "BCE target",
        |v| (0.0..=1.0).contains(&v),
        "must be in [0, 1]",
    )?;
    let mut plan = Plan {
        loss: Loss::Binary(*options),
        rows,
        classes,
        layout: logits.layout(),
        reduction: options.reduction,
        valid_rows: rows,
        denominator: rows as f64 * classes as f64,
        z_denominator: rows as f64,
        class_weight_sum: classes as f64,
        upstream_scalar: 1.0,
    };
    check_request(&mut plan, request, logits, rows * classes)?;
    Ok(plan)
}

fn check_request(
    plan: &mut Plan,
    request: &Request,
    logits: &Logits,
    none_len: usize,
) -> Result<()> {
    let elements = plan.rows * plan.classes;
    match &request.gradient {
        Gradient::None => {}
        Gradient::Into(g) => check_len("gradient", g.len(), elements, logits)?,
        Gradient::InPlace if !logits.is_writable() => {
            return Err(Error::Unsupported(
                "an in-place gradient needs logits built with Logits::new_mut or class_dim1_mut"
                    .into(),
            ))
        }
        Gradient::InPlace => {}
    }
    if let Some(u) = request.upstream {
        if plan.reduction == Reduction::None {
            check_len("upstream", u.len(), none_len, logits)?;
        } else {
            check_len("upstream", u.len(), 1, logits)?;
            plan.upstream_scalar = u[0];
        }
    }
    Ok(())
}

fn check_len(what: &'static str, actual: usize, expected: usize, logits: &Logits) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected,
            actual,
            shape: logits.shape_string(),
        })
    }
}

/// Checks a per-class weight vector and returns its sum (C when absent).
fn check_weights(what: &'static str, weights: Option<&[f32]>, classes: usize) -> Result<f64> {
    let Some(w) = weights else {
        return Ok(classes as f64);
    };
    if w.len() != classes {
        return Err(Error::Shape {
            what,
            expected: classes,
            actual: w.len(),
            shape: format!("classes {classes}"),
        });
    }
    if let Some((index, value)) = bad_weight(w) {
        return Err(Error::BadWeight { what, index, value });
    }
    Ok(w.iter().map(|&v| v as f64).sum())
}

/// The first weight that is not finite and non-negative: (index, value).
pub(crate) fn bad_weight(w: &[f32]) -> Option<(usize, f32)> {
    w.iter()
        .position(|v| !(v.is_finite() && *v >= 0.0))
        .map(|i| (i, w[i]))
}

/// Checks per-row sample weights: one per row, finite and non-negative.
fn check_sample_weights(weights: Option<&[f32]>, rows: usize, logits: &Logits) -> Result<()> {
    let Some(w) = weights else { return Ok(()) };
    check_len("sample_weights", w.len(), rows, logits)?;
    match bad_weight(w) {
        None => Ok(()),
        Some((index, value)) => Err(Error::BadWeight {
            what: "sample_weights",
            index,
            value,
        }),
    }
}

/// Checks dense targets in the logits' layout; names the first bad (row, class).
fn check_dense(
    t: &[f32],
    logits: &Logits,
    what: &'static str,
    ok: impl Fn(f32) -> bool + Sync,
    why: &'static str,
) -> Result<()> {
    match first_bad(t, |v| v.is_finite() & ok(v)) {
        None => Ok(()),
        Some(i) => {
            let (row, class) = locate(i, logits);
            Err(Error::BadValue {
                what,
                row,
                class,
                value: t[i],
                why,
            })
        }
    }
}

/// The first index (in memory order) whose value fails `ok`. Parts of a fixed size are tested
/// in parallel, each whole with no branch a value (which vectorizes), and only the first part
/// that fails is searched.
fn first_bad<T: Copy + Send + Sync>(values: &[T], ok: impl Fn(T) -> bool + Sync) -> Option<usize> {
    const PART: usize = 1 << 16;
    let part = values
        .par_chunks(PART)
        .position_first(|part| !part.iter().fold(true, |all, &v| all & ok(v)))?;
    let start = part * PART;
    values[start..]
        .iter()
        .position(|&v| !ok(v))
        .map(|i| start + i)
}

fn check_probabilities(logits: &Logits) -> Result<()> {
    let f32_ok = |v: f32| (0.0..=1.0).contains(&v);
    // A half in [0, 1] is +0 up to 1.0 in its bits, or −0: an integer compare, no widening.
    let f16_ok = |v: f16| (v.to_bits() <= f16::ONE.to_bits()) | (v.to_bits() == 0x8000);
    let bf16_ok = |v: bf16| (v.to_bits() <= bf16::ONE.to_bits()) | (v.to_bits() == 0x8000);
    let found = match &logits.storage {
        Storage::F32(d) => first_bad(d, f32_ok),
        Storage::F32Mut(d) => first_bad(d, f32_ok),
        Storage::F16(d) => first_bad(d, f16_ok),
        Storage::F16Mut(d) => first_bad(d, f16_ok),
        Storage::Bf16(d) => first_bad(d, bf16_ok),
        Storage::Bf16Mut(d) => first_bad(d, bf16_ok),
    };
    match found {
        None => Ok(()),
        Some(i) => {
            let (row, class) = locate(i, logits);
            let value = logits.get(row, class);
            Err(Error::BadValue {
                what: "probability input",
                row,
                class,
                value,
                why: "must be in [0, 1]",
            })
        }
    }
}

/// (row, class) of storage offset `i`.
fn locate(i: usize, logits: &Logits) -> (usize, usize) {
    let classes = logits.classes();
    match logits.layout() {
        Layout::Rows => (i / classes, i % classes),
        Layout::ClassDim1 { spatial } => {
            let (n, rest) = (i / (classes * spatial), i % (classes * spatial));
            (n * spatial + rest % spatial, rest / spatial)
        }
    }
}
