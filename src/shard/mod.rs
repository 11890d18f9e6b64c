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

mod combine;
mod partial;

pub use partial::RowPartial;

use crate::backend::{Backend, Target};
use crate::error::Result;
use crate::input::{Logits, Targets};
use crate::options::CrossEntropy;
use crate::output::Output;

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
    /// The column of target `y` inside this shard, or `None` when the row is ignored or its
    /// target is another shard's.
    pub(crate) fn local(&self, y: i64, ignore_index: i64) -> Option<usize> {
        let local = y - self.start as i64;
        (y != ignore_index && (0..self.width as i64).contains(&local)).then_some(local as usize)
    }

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
    /// `Σ s·ce` and `Σ s·z-loss` over the rows, in row order (what the reduced loss is made
    /// of; a linear head's row chunks add them up).
    pub(crate) sums: (f64, f64),
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
        crate::plan::shard::shard(self, shard, &input)?;
        let ShardInput {
            logits,
            targets,
            class_weights,
        } = input;
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
        crate::plan::shard::focal_round(self, shard, &input, combined)?;
        let (logits, class_weights) = (&input.logits, input.class_weights);
        match backend.target() {
            Target::Cpu(level) => Ok(crate::cpu::shard_focal(
                level,
                self,
                shard,
                logits,
                class_weights,
                combined,
            )),
            Target::Gpu(gpu) => gpu.shard_focal(self, shard, logits, class_weights, combined),
        }
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
        crate::plan::shard::backward(self, shard, &input, combined, gradient.len())?;
        let (logits, class_weights) = (&input.logits, input.class_weights);
        match backend.target() {
            Target::Cpu(level) => crate::cpu::shard_backward(
                level,
                self,
                shard,
                logits,
                class_weights,
                combined,
                gradient,
            ),
            Target::Gpu(gpu) => {
                gpu.shard_backward(self, shard, logits, class_weights, combined, gradient)?
            }
        }
        Ok(())
    }
}
