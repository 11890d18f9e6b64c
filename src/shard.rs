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
//!    ([`CrossEntropy::shard_backward`]); focal loss with label smoothing has one more
//!    exchange before this step (below).
//!
//! With an all-reduce instead of an all-gather, as Megatron does with NCCL: all-reduce `max`
//! with MAX (giving `M`); on each shard move its partial to `M` ([`RowPartial::moved_to`]:
//! exp-sums rescaled by `exp(max − M)`, centred sums re-centred on `M`); then all-reduce
//! `sum_exp`, `sum_ez`, `sum_wz`, `weight_sum`, `target_z·has_target`, `target_weight` with SUM;
//! the result is one merged [`RowPartial`] per row (with `max = M`), which `combine` takes as a
//! single shard ([`RowPartial::merge`] is the same arithmetic).
//!
//! The sums are centred on the shard's max and the target's `log p` is taken as
//! `(z[y] − max) − ln Σ exp(z − max)`, never `z[y] − lse` (SEMANTICS.md section 1), so a
//! large common offset of the logits costs no precision.
//!
//! Index targets, row-major logits (f32, f16, bf16); the options of section 2 of SEMANTICS.md
//! (ignore_index, class weights, smoothing, z-loss, softcap, scale, reductions), per-row
//! sample weights ([`CrossEntropy::combine_weighted`]) and focal loss (section 2c).
//!
//! # Focal loss
//!
//! Without label smoothing only the target's `p[y]` is focal, and `combine` has it from the
//! global LSE and the target's logit: the three steps above are all. With smoothing every
//! class's `(1 − p[c])^γ` needs the global LSE, which the shards only have after step 2, so
//! [`Combined::needs_focal_round`] is true and a second exchange comes before step 3:
//! - 2b. each shard sums, per row over its columns, `−Σ a[c]·(1 − p[c])^γ·log p[c]` and
//!   `Σ a[c]·g[c]` (`a[c] = w[c]·t'[c]`, `g` the focal gradient factor): one 8-byte
//!   [`FocalPartial`] per row ([`CrossEntropy::shard_focal`]);
//! - 2c. the sums are added across shards (all-reduce SUM of `rows × 2` f32, or all-gather)
//!   and [`CrossEntropy::combine_focal`] finishes the loss and the gradient coefficients
//!   (`dloss/dz[j] = p[j]·Σ_c a[c]·g[c] − a[j]·g[j]`, see `reference::focal_factors`).
//!
//! The round depends only on the options (focal `γ > 0` and `ε > 0`), so every rank takes the
//! same branch. `shard_backward` refuses to run while the round is pending.
//!
//! ```
//! use xent::shard::{FocalPartial, RowPartial, Shard, ShardInput};
//! use xent::{Backend, Batch, CrossEntropy, Logits, Request, Targets};
//!
//! let (rows, classes) = (2, 5);
//! let logits = [0.1f32, 2.0, -1.0, 0.5, 3.0,
//!               1.0, 1.0, 0.0, -2.0, 0.25];
//! let targets = [4i64, 1];
//! let ce = CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1);
//! let shards = Shard::split(classes, 2);
//! let pieces: Vec<Vec<f32>> = shards.iter().map(|s| {
//!     logits.chunks(classes).flat_map(|r| &r[s.start..s.start + s.width]).copied().collect()
//! }).collect();
//! let input = |k: usize| ShardInput {
//!     logits: Logits::new(&pieces[k], rows, shards[k].width),
//!     targets: Targets::I64(&targets),
//!     class_weights: None,
//! };
//! let partials = (0..2)
//!     .map(|k| ce.shard_partials(&Backend::Cpu, shards[k], input(k)))
//!     .collect::<Result<Vec<Vec<RowPartial>>, _>>()?;
//! let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
//! let mut combined = ce.combine(classes, &views, Targets::I64(&targets), None)?;
//! if combined.needs_focal_round() {
//!     // 2b on every shard, then (after an all-gather or all-reduce) 2c.
//!     let sums = (0..2)
//!         .map(|k| ce.shard_focal(&Backend::Cpu, shards[k], input(k), &combined))
//!         .collect::<Result<Vec<Vec<FocalPartial>>, _>>()?;
//!     let views: Vec<&[FocalPartial]> = sums.iter().map(|s| &s[..]).collect();
//!     ce.combine_focal(&mut combined, &views)?;
//! }
//! let whole = ce.compute(
//!     &Backend::Cpu,
//!     Batch::new(Logits::new(&logits, rows, classes), &targets[..]),
//!     Request::new(),
//! )?;
//! assert!((combined.output.loss.unwrap() - whole.loss.unwrap()).abs() < 1e-6);
//! # Ok::<(), xent::Error>(())
//! ```
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
//! - [`CrossEntropy::shard_focal`] returns a new `Vec<FocalPartial>` (`rows` entries); on the
//!   CPU it allocates one `width`-sized row per rayon work split, on the GPU it reuses the
//!   pooled upload, coefficient, row and staging buffers and allocates a uniform buffer and
//!   bind group per row chunk plus the host copies of the read-backs.
//!   [`CrossEntropy::combine_focal`] allocates nothing.
//! - [`CrossEntropy::shard_backward`] writes into the caller's `gradient` slice. On the CPU it
//!   allocates one `width`-sized row per rayon work split (f16/bf16 logits are widened into
//!   it); on the GPU it reuses the pooled upload, coefficient, gradient and staging buffers and
//!   allocates a uniform buffer and bind group per row chunk, the per-row coefficients and the
//!   host copy of the read-back.

use crate::backend::{Backend, Target};
use crate::error::{Error, Result};
use crate::input::{Layout, Logits, Targets};
use crate::math::focal::focal_factors;
use crate::math::reduce::{loss, row_scales};
use crate::math::row::{confidence, entropy, index_ce, index_p_coefficient, log_p, term};
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
    /// `Σ exp(z − max)·(z − max)` (entropy), centred on `max`.
    pub sum_ez: f32,
    /// `Σ w·(z − max)` (label smoothing), centred on `max`; a class of weight 0 is left out
    /// (a masked `−inf` logit of weight 0 is absent, not `0·inf`).
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
    /// This partial with its sums moved to a max `to` ≥ its own (the all-reduce step between
    /// MAX and SUM, module docs): the exp-sums scaled by `exp(max − to)`, the centred sums
    /// re-centred (`+ (max − to)·Σ e`, `+ (max − to)·weight_sum`; a partial of −inf only holds 0
    /// or −inf there, already right), and `max = to`. `Σ e·(z − max)` is 0 where its scale is,
    /// also where `max − to` overflows f32 (a shard at f32::MIN beside one near 0).
    pub fn moved_to(&self, to: f32) -> RowPartial {
        if self.max == to {
            return *self;
        }
        let scale = ((self.max as f64) - (to as f64)).exp() as f32;
        let recentre = |sum: f32, weight: f32| {
            if self.max.is_finite() && to.is_finite() {
                (sum as f64 + (self.max as f64 - to as f64) * weight as f64) as f32
            } else {
                sum
            }
        };
        RowPartial {
            max: to,
            sum_exp: self.sum_exp * scale,
            sum_ez: if scale == 0.0 {
                0.0
            } else {
                recentre(self.sum_ez, self.sum_exp) * scale
            },
            sum_wz: recentre(self.sum_wz, self.weight_sum),
            ..*self
        }
    }

    /// Merges the partials of two shards, `self` holding the lower columns: both moved to the
    /// larger max ([`moved_to`](Self::moved_to)), then summed.
    pub fn merge(&self, other: &RowPartial) -> RowPartial {
        let max = self.max.max(other.max);
        let (a, b) = (self.moved_to(max), other.moved_to(max));
        RowPartial {
            max,
            sum_exp: a.sum_exp + b.sum_exp,
            sum_ez: a.sum_ez + b.sum_ez,
            sum_wz: a.sum_wz + b.sum_wz,
            weight_sum: a.weight_sum + b.weight_sum,
            target_z: a.target_z + b.target_z,
            target_weight: a.target_weight + b.target_weight,
            has_target: a.has_target + b.has_target,
            argmax: if other.max > self.max {
                other.argmax
            } else {
                self.argmax
            },
            nan_index: a.nan_index.min(b.nan_index),
            _pad: [0; 2],
        }
    }

    /// `log Σ exp(z)` of the merged row (−inf all masked, +inf with a +inf, NaN with a NaN).
    pub fn lse(&self) -> f64 {
        crate::math::row::lse(self.max, self.sum_exp as f64, self.nan_index != u32::MAX)
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
    /// Coefficient of `p[c]` (cross-entropy and z-loss parts, scales applied). Focal loss:
    /// the cross-entropy part is `a·Σ_c a[c]·g[c]`, which with label smoothing
    /// [`CrossEntropy::combine_focal`] adds after the second round.
    pub p_coefficient: f32,
    /// Scale `a` of the per-class terms.
    pub scale: f32,
    /// `a·(1−ε)·w[y]`, subtracted at the target (focal loss: times the target's `g[y]`, as
    /// every per-class term is multiplied by its `g[c]`).
    pub target_term: f32,
    /// The target, or −1 for an ignored row.
    pub target: i64,
    /// What the backward writes for the row.
    pub fill: RowFill,
}

/// What the backward writes for one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum RowFill {
    /// The gradient from the row's coefficients.
    #[default]
    Compute = 0,
    /// Zeros: an ignored row.
    Zero = 1,
    /// NaN: a row whose loss is NaN.
    Nan = 2,
}

/// The merged result: the global [`Output`] and what each shard's backward needs.
#[derive(Debug, Clone, Default)]
pub struct Combined {
    /// Loss, per-row losses, LSE and metrics, as an unsharded call returns them. While a
    /// focal round is pending ([`Combined::needs_focal_round`]) the loss and per-row losses
    /// are `None`; LSE and metrics are final.
    pub output: Output,
    /// Per-row gradient coefficients.
    pub rows: Vec<RowGradient>,
    /// What [`CrossEntropy::combine_focal`] needs to finish the loss (focal loss with label
    /// smoothing), until it has run.
    focal: Option<FocalRound>,
}

impl Combined {
    /// Whether the loss needs the second exchange (focal loss with label smoothing):
    /// [`CrossEntropy::shard_focal`] on every shard, then [`CrossEntropy::combine_focal`],
    /// before [`CrossEntropy::shard_backward`]. The same on every rank for the same options.
    pub fn needs_focal_round(&self) -> bool {
        self.focal.is_some()
    }
}

/// The parts of the loss [`CrossEntropy::combine`] knows before the focal round.
#[derive(Debug, Clone, Default)]
struct FocalRound {
    /// Per row: the sample weight `s[n]` and the z-loss term `λ·lse²` (0 when ignored).
    samples: Vec<f64>,
    z_terms: Vec<f64>,
    /// Per-row losses of the rows already decided (ignored: 0, non-finite LSE: NaN).
    losses: Vec<f32>,
    /// `Σ s·ce` of the decided rows (0, or NaN), and `Σ s·λ·lse²`.
    ce_sum: f64,
    z_sum: f64,
    /// The mean's denominators: `Σ_valid s·w[y]` and `Σ_valid s`.
    denominator: f64,
    z_denominator: f64,
}

/// One row's focal-loss sums over one shard's columns (the second exchange of focal loss with
/// label smoothing): two f32 (8 bytes), which add up across shards. With `a[c] = w[c]·t'[c]`
/// (`t'` the smoothed one-hot target), `f = (1 − p)^γ`, `g = f − γ·p·log p·(1 − p)^(γ−1)` and
/// `p` from the global log-sum-exp:
/// - `loss = −Σ_c a[c]·f[c]·log p[c]`, this shard's part of the row's focal loss;
/// - `g_sum = Σ_c a[c]·g[c]`, this shard's part of the gradient's row sum: with
///   `G = Σ_shards g_sum`, `dloss/dz[j] = p[j]·G − a[j]·g[j]` (with `ℓ(p) = −(1 − p)^γ·log p`,
///   `G = −Σ_c a[c]·ℓ'(p[c])·p[c]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FocalPartial {
    /// `−Σ_c a[c]·f[c]·log p[c]` over the shard's columns.
    pub loss: f32,
    /// `Σ_c a[c]·g[c]` over the shard's columns.
    pub g_sum: f32,
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
        match backend.target() {
            Target::Cpu(level) => Ok(crate::cpu::shard_partials(
                level,
                self,
                shard,
                &logits,
                targets,
                class_weights,
            )),
            Target::Gpu(gpu) => gpu.shard_partials(self, shard, &logits, targets, class_weights),
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
        let gamma = self.focal_gamma as f64;
        // Focal loss with smoothing: every class's (1 − p)^γ needs the global LSE, which the
        // shards get from this step; they sum them in a second round (`shard_focal`).
        let round = self.is_focal() && eps > 0.0;
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
        let (mut samples, mut z_terms) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let classes_f = classes as f64;
        for (row, (m, y, valid)) in merged.into_iter().enumerate() {
            let lse = m.lse();
            // logp in the split form (SEMANTICS.md section 1); NaN for a NaN or +inf logit or
            // a row of −inf only.
            let finite = lse.is_finite();
            let log_sum = (m.sum_exp as f64).ln();
            let w_sum = m.weight_sum as f64;
            let logp_y = if finite {
                log_p(m.target_z, m.max, log_sum)
            } else {
                f64::NAN
            };
            let w_y = m.target_weight as f64;
            // The cross-entropy part and its coefficient of p[c] (before the scale a).
            let (mut ce, mut kce) = (0.0, 0.0);
            let mut z_term = 0.0;
            if valid {
                // A zero coefficient leaves its term out (SEMANTICS.md section 6).
                if !finite {
                    ce = f64::NAN;
                } else if round {
                    // `combine_focal` adds the focal sums of the second round.
                    ce = 0.0;
                } else if self.is_focal() {
                    // Without smoothing only p[y] is focal (see `reference::focal_factors`).
                    let (f, g) = focal_factors(logp_y, gamma);
                    ce = -term(w_y, f * logp_y);
                    kce = w_y * g;
                } else {
                    ce = index_ce(
                        (eps, classes_f),
                        (w_y, logp_y),
                        (w_sum, log_sum, m.sum_wz as f64),
                    );
                    kce = index_p_coefficient(eps, classes_f, w_y, w_sum);
                }
                if lambda > 0.0 {
                    z_term = lambda * lse * lse;
                }
            }
            let loss = if ce.is_nan() { f64::NAN } else { ce + z_term };
            let sw = sample(row);
            ce_sum += sw * ce;
            z_sum += sw * z_term;
            samples.push(sw);
            z_terms.push(z_term);
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
            let (entropy, confidence) = if finite {
                (
                    entropy(log_sum, m.sum_ez as f64, m.sum_exp as f64),
                    confidence(log_sum),
                )
            } else {
                (f64::NAN, f64::NAN)
            };
            metrics.entropy.push(entropy as f32);
            metrics.confidence.push(confidence as f32);
            metrics.valid.push(valid);
            // Only `Reduction::None` has one upstream value per row.
            let row_upstream = |row: usize| match self.reduction {
                Reduction::None => upstream.map_or(1.0, |u| u[row] as f64),
                _ => 1.0,
            };
            let (a, b) = row_scales(
                self.reduction,
                (row_upstream(row), u),
                sw,
                (denominator, valid_weight),
            );
            out.rows.push(RowGradient {
                lse: lse as f32,
                max: if lse.is_finite() { m.max } else { lse as f32 },
                log_sum: if finite { log_sum as f32 } else { 0.0 },
                p_coefficient: (a * kce + b * 2.0 * lambda * lse) as f32,
                scale: a as f32,
                target_term: (a * (1.0 - eps) * w_y) as f32,
                target: if valid { y } else { -1 },
                fill: if !valid {
                    RowFill::Zero
                } else if loss.is_nan() {
                    RowFill::Nan
                } else {
                    RowFill::Compute
                },
            });
        }
        let totals = FocalRound {
            samples,
            z_terms,
            losses,
            ce_sum,
            z_sum,
            denominator,
            z_denominator: valid_weight,
        };
        if round {
            out.focal = Some(totals);
        } else {
            out.output.loss = self.reduce(&totals);
            out.output.row_losses = Some(totals.losses);
        }
        out.output.lse = Some(lse_out);
        out.output.metrics = Some(metrics);
        Ok(out)
    }

    /// The reduced loss from the row totals (SEMANTICS.md sections 2, 2c).
    fn reduce(&self, t: &FocalRound) -> Option<f32> {
        loss(
            self.reduction,
            (t.ce_sum, t.z_sum),
            (t.denominator, t.z_denominator),
        )
        .map(|v| v as f32)
    }

    /// Focal loss with label smoothing, round 2 on one shard: the row sums of its columns
    /// ([`FocalPartial`]) from the global LSE in `combined`. Exchange them (an all-reduce SUM
    /// of `rows × 2` f32, or an all-gather) and pass them to
    /// [`combine_focal`](Self::combine_focal). Rows that are ignored or already NaN give 0.
    /// Needs `combined.needs_focal_round()`; same options as `combine`.
    pub fn shard_focal(
        &self,
        backend: &Backend,
        shard: Shard,
        input: ShardInput<'_>,
        combined: &Combined,
    ) -> Result<Vec<FocalPartial>> {
        let ShardInput {
            logits,
            targets,
            class_weights,
        } = input;
        self.check_shard(shard, &logits, targets, class_weights)?;
        check_combined(combined, &logits)?;
        if !combined.needs_focal_round() {
            return Err(Error::Unsupported(
                "no focal round is pending: only focal loss with label smoothing needs one \
                 (Combined::needs_focal_round)"
                    .into(),
            ));
        }
        match backend.target() {
            Target::Cpu(level) => Ok(crate::cpu::shard_focal(
                level,
                self,
                shard,
                &logits,
                class_weights,
                combined,
            )),
            Target::Gpu(gpu) => gpu.shard_focal(self, shard, &logits, class_weights, combined),
        }
    }

    /// Focal loss with label smoothing, the end of round 2: adds the shards' [`FocalPartial`]s
    /// (`partials[k]` one per row, summed in the order given; after an all-reduce, one summed
    /// slice) into the loss, the per-row losses and the gradient coefficients of `combined`.
    pub fn combine_focal(
        &self,
        combined: &mut Combined,
        partials: &[&[FocalPartial]],
    ) -> Result<()> {
        let rows = combined.rows.len();
        if let Some(p) = partials.iter().find(|p| p.len() != rows) {
            return Err(Error::Shape {
                what: "focal partials",
                expected: rows,
                actual: p.len(),
                shape: format!("rows {rows}"),
            });
        }
        let Some(mut totals) = combined.focal.take() else {
            return Err(Error::Unsupported(
                "no focal round is pending (Combined::needs_focal_round), or it was combined \
                 already"
                    .into(),
            ));
        };
        for (row, r) in combined.rows.iter_mut().enumerate() {
            if r.fill != RowFill::Compute {
                continue;
            }
            let (ce, g_sum) = partials.iter().fold((0f64, 0f64), |(ce, g), p| {
                (ce + p[row].loss as f64, g + p[row].g_sum as f64)
            });
            let sw = totals.samples[row];
            let loss = if ce.is_nan() {
                f64::NAN
            } else {
                ce + totals.z_terms[row]
            };
            totals.ce_sum += sw * ce;
            totals.losses[row] = (sw * loss) as f32;
            r.p_coefficient = (r.p_coefficient as f64 + r.scale as f64 * g_sum) as f32;
            if loss.is_nan() {
                r.fill = RowFill::Nan;
            }
        }
        combined.output.loss = self.reduce(&totals);
        combined.output.row_losses = Some(totals.losses);
        Ok(())
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
        check_combined(combined, &logits)?;
        if combined.needs_focal_round() {
            return Err(Error::Unsupported(
                "focal loss with label smoothing needs its second round before the backward \
                 pass: shard_focal on every shard, then combine_focal"
                    .into(),
            ));
        }
        if gradient.len() != logits.rows() * shard.width {
            return Err(Error::Shape {
                what: "gradient",
                expected: logits.rows() * shard.width,
                actual: gradient.len(),
                shape: logits.shape_string(),
            });
        }
        match backend.target() {
            Target::Cpu(level) => crate::cpu::shard_backward(
                level,
                self,
                shard,
                &logits,
                class_weights,
                combined,
                gradient,
            ),
            Target::Gpu(gpu) => {
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

/// `combined` has one row per logits row.
fn check_combined(combined: &Combined, logits: &Logits<'_>) -> Result<()> {
    if combined.rows.len() == logits.rows() {
        Ok(())
    } else {
        Err(Error::Shape {
            what: "combined rows",
            expected: logits.rows(),
            actual: combined.rows.len(),
            shape: logits.shape_string(),
        })
    }
}
