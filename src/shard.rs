//! Vocabulary-parallel softmax cross-entropy (Megatron / flash-attn style).
//!
//! A vocabulary of `classes` columns is split across devices or processes; each shard holds
//! the logits of its columns `[start, start + width)` for every row. The loss is computed in
//! three steps:
//! 1. each shard computes [`RowPartial`]s from its columns ([`CrossEntropy::shard_partials`]):
//!    its running max and rescaled sum (online softmax), its argmax candidate, `Σ w·z` for
//!    smoothing, the target's logit if the target falls in the shard, …;
//! 2. the K shards' partials are exchanged (any all-gather: MPI, NCCL, a channel) and merged in
//!    shard order into the exact global loss, LSE and metrics ([`CrossEntropy::combine`]);
//! 3. each shard writes the gradient of its own columns from the global LSE
//!    ([`CrossEntropy::shard_backward`]).
//!
//! With an all-reduce instead of an all-gather, as Megatron does with NCCL: all-reduce `max`
//! with MAX, rescale each shard's `sum_exp` and `sum_ez` by `exp(max − global max)`, then
//! all-reduce those and `sum_wz`, `weight_sum`, `target_z·has_target`, `target_weight` with SUM;
//! the result is one merged [`RowPartial`] per row, which `combine` takes as a single shard.
//!
//! Index targets, row-major logits (f32, f16, bf16); the options of section 2 of SEMANTICS.md
//! (ignore_index, class weights, smoothing, z-loss, softcap, scale, reductions) and per-row
//! sample weights ([`CrossEntropy::combine_weighted`]). Focal loss (`focal_gamma > 0`) is
//! refused with [`Error::Unsupported`]: with smoothing it needs every class's `(1 − p)^γ` from
//! the global LSE, a second exchange this API does not have.
//!
//! # Example
//!
//! Two shards of a 5-class vocabulary on the CPU (in a real job, two devices or processes, each
//! holding only its columns), checked against the unsharded call:
//!
//! ```
//! use xent::shard::{RowPartial, Shard, ShardInput};
//! use xent::{Backend, Batch, CrossEntropy, Logits, Request, Targets};
//!
//! let (rows, classes) = (2, 5);
//! let logits = [0.1f32, 2.0, -1.0, 0.5, 3.0,
//!               1.0, 1.0, 0.0, -2.0, 0.25];
//! let targets = [4i64, 1];
//! let weights = [1.0f32, 2.0, 1.0, 0.5, 1.0];
//! let ce = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4);
//!
//! let shards = Shard::split(classes, 2); // columns [0, 2) and [2, 5)
//! let columns = |s: Shard| -> Vec<f32> {
//!     logits.chunks(classes).flat_map(|r| &r[s.start..s.start + s.width]).copied().collect()
//! };
//! let pieces: Vec<Vec<f32>> = shards.iter().map(|&s| columns(s)).collect();
//! let input = |k: usize| ShardInput {
//!     logits: Logits::new(&pieces[k], rows, shards[k].width),
//!     targets: Targets::I64(&targets), // global class indices, on every shard
//!     class_weights: Some(&weights[shards[k].start..shards[k].start + shards[k].width]),
//! };
//!
//! // 1. Each shard's partials: one 48-byte `RowPartial` per row, what goes over the wire.
//! let partials = (0..2)
//!     .map(|k| ce.shard_partials(&Backend::Cpu, shards[k], input(k)))
//!     .collect::<Result<Vec<Vec<RowPartial>>, _>>()?;
//! // 2. After an all-gather, every shard merges all of them, in column order.
//! let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
//! let combined = ce.combine(classes, &views, Targets::I64(&targets), None)?;
//! // 3. Each shard writes the gradient of its own columns (here shard 1: columns 2..5).
//! let mut grad1 = vec![0f32; rows * shards[1].width];
//! ce.shard_backward(&Backend::Cpu, shards[1], input(1), &combined, &mut grad1)?;
//!
//! // The same batch in one call.
//! let mut grad = vec![0f32; rows * classes];
//! let whole = ce.compute(
//!     &Backend::Cpu,
//!     Batch::new(Logits::new(&logits, rows, classes), &targets[..]).class_weights(&weights),
//!     Request::new().gradient_into(&mut grad),
//! )?;
//! assert!((combined.output.loss.unwrap() - whole.loss.unwrap()).abs() < 1e-6);
//! for r in 0..rows {
//!     for c in 0..shards[1].width {
//!         assert!((grad1[r * shards[1].width + c] - grad[r * classes + 2 + c]).abs() < 1e-6);
//!     }
//! }
//! # Ok::<(), xent::Error>(())
//! ```
//!
//! `examples/vocab_parallel_mpi.rs` runs the same steps across MPI processes.
//!
//! # What the calls allocate
//! - [`CrossEntropy::shard_partials`] returns a new `Vec<RowPartial>` (`rows` entries). On the
//!   CPU it also allocates scratch (a `width`-sized row and one chunk of f32) per rayon work
//!   split (rayon's `map_init`: a few per thread, not one per row). On the GPU it reuses the
//!   [`Gpu`](crate::gpu::Gpu)'s pooled buffers (logits and weights upload, per-split partials,
//!   staging for the read-back), grown only when a larger shard arrives, and allocates one
//!   small uniform buffer and a bind group per row chunk plus the host copy of the read-back.
//! - [`CrossEntropy::combine`] allocates the merged rows and the output vectors (per-row
//!   losses, LSE, metrics, one [`RowGradient`] per row); it touches no device.
//! - [`CrossEntropy::shard_backward`] writes into the caller's `gradient` slice. On the CPU it
//!   allocates one `width`-sized row per rayon work split (f16/bf16 logits are widened into
//!   it); on the GPU it reuses the pooled upload, coefficient, gradient and staging buffers and
//!   allocates a uniform buffer and bind group per row chunk, the per-row coefficients and the
//!   host copy of the read-back.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::input::{Layout, Logits, Targets};
use crate::options::{CrossEntropy, InputKind, Reduction};
use crate::output::{Metrics, Output};

/// Columns `[start, start + width)` of a vocabulary of `classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// First global column of the shard.
    pub start: usize,
    /// Columns in the shard.
    pub width: usize,
    /// Global number of classes `C`.
    pub classes: usize,
}

impl Shard {
    /// Cuts `classes` into `k` near-equal shards.
    pub fn split(classes: usize, k: usize) -> Vec<Shard> {
        let k = k.max(1);
        (0..k)
            .map(|i| {
                let start = classes * i / k;
                Shard {
                    start,
                    width: classes * (i + 1) / k - start,
                    classes,
                }
            })
            .collect()
    }

    fn check(&self) -> Result<()> {
        if self.classes == 0 {
            return Err(Error::NoClasses);
        }
        if self
            .start
            .checked_add(self.width)
            .is_none_or(|end| end > self.classes)
        {
            return Err(Error::Shape {
                what: "shard",
                expected: self.classes,
                actual: self.start.saturating_add(self.width),
                shape: format!("{self:?}"),
            });
        }
        Ok(())
    }
}

/// One row's statistics over one shard's columns: plain 4-byte fields (48 bytes), so a slice
/// of them can be sent as bytes (`bytemuck::cast_slice`) through any collective.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowPartial {
    /// Max of the transformed logits `z` over the shard (−inf for an empty shard).
    pub max: f32,
    /// `Σ exp(z − max)`.
    pub sum_exp: f32,
    /// `Σ exp(z − max)·z` (entropy).
    pub sum_ez: f32,
    /// `Σ w·z` (label smoothing).
    pub sum_wz: f32,
    /// `Σ w` over the shard.
    pub weight_sum: f32,
    /// `z[y]` when the target is in the shard, else 0.
    pub target_z: f32,
    /// `w[y]` when the target is in the shard, else 0.
    pub target_weight: f32,
    /// 1 when the target is in the shard, else 0.
    pub has_target: u32,
    /// Global index of the first maximum.
    pub argmax: u32,
    /// Global index of the first NaN, or `u32::MAX`.
    pub nan_index: u32,
    /// Padding.
    pub _pad: [u32; 2],
}

impl Default for RowPartial {
    fn default() -> Self {
        RowPartial {
            max: f32::NEG_INFINITY,
            sum_exp: 0.0,
            sum_ez: 0.0,
            sum_wz: 0.0,
            weight_sum: 0.0,
            target_z: 0.0,
            target_weight: 0.0,
            has_target: 0,
            argmax: 0,
            nan_index: u32::MAX,
            _pad: [0; 2],
        }
    }
}

impl RowPartial {
    /// Merges the partials of two shards, `self` holding the lower columns.
    pub fn merge(&self, other: &RowPartial) -> RowPartial {
        let max = self.max.max(other.max);
        let scale = |m: f32| {
            if m == max {
                1.0
            } else {
                ((m as f64) - (max as f64)).exp() as f32
            }
        };
        let (a, b) = (scale(self.max), scale(other.max));
        RowPartial {
            max,
            sum_exp: self.sum_exp * a + other.sum_exp * b,
            sum_ez: self.sum_ez * a + other.sum_ez * b,
            sum_wz: self.sum_wz + other.sum_wz,
            weight_sum: self.weight_sum + other.weight_sum,
            target_z: self.target_z + other.target_z,
            target_weight: self.target_weight + other.target_weight,
            has_target: self.has_target + other.has_target,
            argmax: if other.max > self.max {
                other.argmax
            } else {
                self.argmax
            },
            nan_index: self.nan_index.min(other.nan_index),
            _pad: [0; 2],
        }
    }

    /// `log Σ exp(z)` of the merged row (−inf all masked, +inf with a +inf, NaN with a NaN).
    pub fn lse(&self) -> f64 {
        if self.nan_index != u32::MAX {
            f64::NAN
        } else if self.max.is_infinite() {
            self.max as f64
        } else {
            self.max as f64 + (self.sum_exp as f64).ln()
        }
    }
}

/// One shard's inputs: its logits (`rows × shard.width`, row-major), the global class-index
/// targets (`rows`), and its slice of the class weights (`shard.width`), if weighted.
#[derive(Debug)]
pub struct ShardInput<'a> {
    /// The shard's columns of the logits.
    pub logits: Logits<'a>,
    /// Global targets.
    pub targets: Targets<'a>,
    /// The shard's class weights.
    pub class_weights: Option<&'a [f32]>,
}

/// What the backward pass needs of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowGradient {
    /// Global log-sum-exp.
    pub lse: f32,
    /// `lse` split as `max + log_sum` (the global max and `ln Σ exp(z − max)`), which the
    /// backward uses so `z − lse` stays exact where `p` is near 1.
    pub max: f32,
    /// See `max`.
    pub log_sum: f32,
    /// Coefficient of `p[c]` (cross-entropy and z-loss parts, scales applied).
    pub p_coefficient: f32,
    /// Scale `a` of the per-class terms.
    pub scale: f32,
    /// `a·(1−ε)·w[y]`, subtracted at the target.
    pub target_term: f32,
    /// The target, or −1 for an ignored row.
    pub target: i64,
    /// 0: compute; 1: zero (ignored); 2: NaN (NaN loss).
    pub fill: u8,
}

/// The merged result: the global [`Output`] and what each shard's backward needs.
#[derive(Debug, Clone, Default)]
pub struct Combined {
    /// Loss, per-row losses, LSE and metrics, as an unsharded call returns them.
    pub output: Output,
    /// Per-row gradient coefficients.
    pub rows: Vec<RowGradient>,
}

impl CrossEntropy {
    /// Step 1: this shard's per-row partials.
    pub fn shard_partials(
        &self,
        backend: &Backend,
        shard: Shard,
        input: ShardInput<'_>,
    ) -> Result<Vec<RowPartial>> {
        let ShardInput {
            logits,
            targets,
            class_weights,
        } = input;
        self.check_shard(shard, &logits, targets, class_weights)?;
        match backend {
            Backend::Cpu => Ok(crate::cpu::shard_partials(
                crate::cpu::SimdLevel::detected(),
                self,
                shard,
                &logits,
                targets,
                class_weights,
            )),
            Backend::CpuWith(level) => Ok(crate::cpu::shard_partials(
                *level,
                self,
                shard,
                &logits,
                targets,
                class_weights,
            )),
            Backend::Gpu(gpu) => gpu.shard_partials(self, shard, &logits, targets, class_weights),
        }
    }

    /// Step 2: merges K shards' partials (`partials[k]` has one entry per row, shards in
    /// column order) into the global loss over `classes` columns. `upstream` as in
    /// [`Request`](crate::Request).
    pub fn combine(
        &self,
        classes: usize,
        partials: &[&[RowPartial]],
        targets: Targets<'_>,
        upstream: Option<&[f32]>,
    ) -> Result<Combined> {
        self.combine_weighted(classes, partials, targets, None, upstream)
    }

    /// [`combine`](Self::combine) with per-row sample weights `s[n]` (length `rows`, finite
    /// and non-negative; SEMANTICS.md section 2c): each row's loss and gradient coefficients
    /// are multiplied by `s[n]`, and the mean divides by `Σ_valid s[n]·w[y[n]]` (the z-loss
    /// term by `Σ_valid s[n]`). The shards' partials and backward passes need nothing more:
    /// the weights ride in the combined row coefficients.
    pub fn combine_weighted(
        &self,
        classes: usize,
        partials: &[&[RowPartial]],
        targets: Targets<'_>,
        sample_weights: Option<&[f32]>,
        upstream: Option<&[f32]>,
    ) -> Result<Combined> {
        self.validate()?;
        self.check_supported()?;
        if classes == 0 {
            return Err(Error::NoClasses);
        }
        let rows = targets.len();
        if let Some(s) = sample_weights {
            if s.len() != rows {
                return Err(Error::Shape {
                    what: "sample_weights",
                    expected: rows,
                    actual: s.len(),
                    shape: format!("rows {rows}"),
                });
            }
            if let Some(index) = s.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Error::BadWeight {
                    what: "sample_weights",
                    index,
                    value: s[index],
                });
            }
        }
        let sample = |row: usize| sample_weights.map_or(1.0, |s| s[row] as f64);
        if matches!(targets, Targets::Dense(_)) {
            return Err(Error::Unsupported(
                "vocab-parallel partials take class-index targets".into(),
            ));
        }
        for p in partials {
            if p.len() != rows {
                return Err(Error::Shape {
                    what: "shard partials",
                    expected: rows,
                    actual: p.len(),
                    shape: format!("rows {rows}"),
                });
            }
        }
        let eps = self.label_smoothing as f64;
        let lambda = self.z_loss as f64;
        let mut merged = Vec::with_capacity(rows);
        let (mut valid_weight, mut denominator) = (0f64, 0f64);
        for row in 0..rows {
            let m = partials
                .iter()
                .fold(RowPartial::default(), |acc, p| acc.merge(&p[row]));
            let y = targets.index(row).unwrap_or_default();
            let valid = y != self.ignore_index;
            if valid && m.has_target != 1 {
                return Err(Error::TargetOutOfRange {
                    row,
                    value: y,
                    classes,
                    ignore_index: self.ignore_index,
                });
            }
            if valid {
                valid_weight += sample(row);
                denominator += sample(row) * m.target_weight as f64;
            }
            merged.push((m, y, valid));
        }
        let u = match (self.reduction, upstream) {
            (Reduction::None, Some(u)) if u.len() != rows => {
                return Err(Error::Shape {
                    what: "upstream",
                    expected: rows,
                    actual: u.len(),
                    shape: format!("rows {rows}"),
                })
            }
            (Reduction::Sum | Reduction::Mean, Some(u)) if u.len() != 1 => {
                return Err(Error::Shape {
                    what: "upstream",
                    expected: 1,
                    actual: u.len(),
                    shape: "scalar".into(),
                })
            }
            (Reduction::Sum | Reduction::Mean, Some(u)) => u[0] as f64,
            _ => 1.0,
        };
        let mut out = Combined::default();
        let mut metrics = Metrics::default();
        let (mut lse_out, mut losses) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let (mut ce_sum, mut z_sum) = (0f64, 0f64);
        let classes_f = classes as f64;
        for (row, (m, y, valid)) in merged.into_iter().enumerate() {
            let lse = m.lse();
            let w_sum = m.weight_sum as f64;
            let logp_y = if lse == f64::INFINITY {
                f64::NAN
            } else {
                m.target_z as f64 - lse
            };
            let mut ce = 0.0;
            let mut z_term = 0.0;
            if valid {
                ce = -(1.0 - eps) * m.target_weight as f64 * logp_y;
                if eps > 0.0 {
                    ce += eps / classes_f * (w_sum * lse - m.sum_wz as f64);
                }
                if lambda > 0.0 {
                    z_term = lambda * lse * lse;
                }
            }
            let loss = if ce.is_nan() { f64::NAN } else { ce + z_term };
            let sw = sample(row);
            ce_sum += sw * ce;
            z_sum += sw * z_term;
            losses.push((sw * loss) as f32);
            lse_out.push(lse as f32);
            let argmax = if m.nan_index != u32::MAX {
                m.nan_index
            } else {
                m.argmax
            };
            metrics.argmax.push(argmax);
            metrics.correct.push(valid && argmax as i64 == y);
            metrics
                .target_prob
                .push(if valid { logp_y.exp() as f32 } else { 0.0 });
            metrics
                .entropy
                .push((lse - m.sum_ez as f64 / m.sum_exp as f64) as f32);
            metrics.confidence.push((m.max as f64 - lse).exp() as f32);
            metrics.valid.push(valid);
            let (a, b) = match self.reduction {
                Reduction::None => {
                    let g = upstream.map_or(1.0, |u| u[row] as f64) * sw;
                    (g, g)
                }
                Reduction::Sum => (u * sw, u * sw),
                Reduction::Mean => (u * sw / denominator, u * sw / valid_weight),
            };
            let kce = (1.0 - eps) * m.target_weight as f64 + eps / classes_f * w_sum;
            out.rows.push(RowGradient {
                lse: lse as f32,
                max: if lse.is_finite() { m.max } else { lse as f32 },
                log_sum: if lse.is_finite() {
                    (m.sum_exp as f64).ln() as f32
                } else {
                    0.0
                },
                p_coefficient: (a * kce + b * 2.0 * lambda * lse) as f32,
                scale: a as f32,
                target_term: (a * (1.0 - eps) * m.target_weight as f64) as f32,
                target: if valid { y } else { -1 },
                fill: if !valid {
                    1
                } else if loss.is_nan() {
                    2
                } else {
                    0
                },
            });
        }
        out.output.loss = match self.reduction {
            Reduction::None => None,
            Reduction::Sum => Some((ce_sum + z_sum) as f32),
            Reduction::Mean => Some(
                (ce_sum / denominator
                    + if z_sum != 0.0 {
                        z_sum / valid_weight
                    } else {
                        0.0
                    }) as f32,
            ),
        };
        out.output.row_losses = Some(losses);
        out.output.lse = Some(lse_out);
        out.output.metrics = Some(metrics);
        Ok(out)
    }

    /// Step 3: the gradient of this shard's columns (`rows × shard.width`, f32) from the
    /// combined result.
    pub fn shard_backward(
        &self,
        backend: &Backend,
        shard: Shard,
        input: ShardInput<'_>,
        combined: &Combined,
        gradient: &mut [f32],
    ) -> Result<()> {
        let ShardInput {
            logits,
            targets,
            class_weights,
        } = input;
        self.check_shard(shard, &logits, targets, class_weights)?;
        if combined.rows.len() != logits.rows() {
            return Err(Error::Shape {
                what: "combined rows",
                expected: logits.rows(),
                actual: combined.rows.len(),
                shape: logits.shape_string(),
            });
        }
        if gradient.len() != logits.rows() * shard.width {
            return Err(Error::Shape {
                what: "gradient",
                expected: logits.rows() * shard.width,
                actual: gradient.len(),
                shape: logits.shape_string(),
            });
        }
        match backend {
            Backend::Cpu => crate::cpu::shard_backward(
                crate::cpu::SimdLevel::detected(),
                self,
                shard,
                &logits,
                class_weights,
                combined,
                gradient,
            ),
            Backend::CpuWith(level) => crate::cpu::shard_backward(
                *level,
                self,
                shard,
                &logits,
                class_weights,
                combined,
                gradient,
            ),
            Backend::Gpu(gpu) => {
                gpu.shard_backward(self, shard, &logits, class_weights, combined, gradient)?
            }
        }
        Ok(())
    }

    fn check_supported(&self) -> Result<()> {
        if !matches!(self.input, InputKind::Logits) {
            return Err(Error::Unsupported(
                "vocab-parallel partials take logits, not probabilities".into(),
            ));
        }
        if self.is_focal() {
            return Err(Error::Unsupported(
                "vocab-parallel partials do not compute focal loss (focal_gamma > 0): with \
                 smoothing every class's (1 − p)^γ needs the global log-sum-exp, which the \
                 shards don't have during step 1"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_shard(
        &self,
        shard: Shard,
        logits: &Logits<'_>,
        targets: Targets<'_>,
        class_weights: Option<&[f32]>,
    ) -> Result<()> {
        self.validate()?;
        self.check_supported()?;
        shard.check()?;
        if logits.layout() != Layout::Rows {
            return Err(Error::Unsupported(
                "vocab-parallel partials take row-major logits".into(),
            ));
        }
        if logits.classes() != shard.width {
            return Err(Error::Shape {
                what: "shard logits (classes)",
                expected: shard.width,
                actual: logits.classes(),
                shape: logits.shape_string(),
            });
        }
        logits.check()?;
        if matches!(targets, Targets::Dense(_)) {
            return Err(Error::Unsupported(
                "vocab-parallel partials take class-index targets".into(),
            ));
        }
        if targets.len() != logits.rows() {
            return Err(Error::Shape {
                what: "targets",
                expected: logits.rows(),
                actual: targets.len(),
                shape: logits.shape_string(),
            });
        }
        for row in 0..targets.len() {
            let y = targets.index(row).unwrap_or_default();
            if y != self.ignore_index && (y < 0 || y as u64 >= shard.classes as u64) {
                return Err(Error::TargetOutOfRange {
                    row,
                    value: y,
                    classes: shard.classes,
                    ignore_index: self.ignore_index,
                });
            }
        }
        if let Some(w) = class_weights {
            if w.len() != shard.width {
                return Err(Error::Shape {
                    what: "class_weights",
                    expected: shard.width,
                    actual: w.len(),
                    shape: format!("{shard:?}"),
                });
            }
            if let Some((index, &value)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
            {
                return Err(Error::BadWeight {
                    what: "class_weights",
                    index: shard.start + index,
                    value,
                });
            }
        }
        Ok(())
    }
}
