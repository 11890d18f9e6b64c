//! Linear cross-entropy: the loss of a classifier head `cross_entropy(h·Wᵀ + b, y)` computed
//! from the hidden states, without holding the `N × V` logits.
//!
//! Shapes: hidden states `h` [N × D] (`rows × hidden`), the head's weight `W` [V × D]
//! (`vocab × hidden`, PyTorch's `nn.Linear` layout; or stored [D × V],
//! [`WeightLayout::HiddenMajor`]), an optional bias `b` \[V\]; f32, f16 or bf16,
//! accumulated in f32. The logits `x = h·Wᵀ + b` then follow SEMANTICS.md sections 1, 2 and 2c
//! exactly as [`CrossEntropy::compute`] takes them: the transform (scale, softcap) applies to
//! `x`, and every option of those sections carries over (ignore_index, class weights, label
//! smoothing, z-loss, focal loss, sample weights, reductions with the same upstream rules,
//! metrics, LSE). Soft targets and probability inputs need `N × V` inputs and are refused.
//!
//! Gradients, from `G = dloss/dx` [N × V] (SEMANTICS.md section 2, chain rule of section 1):
//! `dh = G·W` [N × D], `dW = Gᵀ·h` [V × D], `db = Σ_n G[n]` \[V\], each written over or added
//! into a caller's f32 buffer ([`GradientBuffer`]); trainers add `dW` over micro-batches.
//!
//! Two strategies, the same numbers (Apple's Cut Cross-Entropy, arXiv 2411.09009; QuACK's
//! `chunked_linear_cross_entropy`):
//! - [`Strategy::Fused`]: tiles of rows × vocabulary columns; each tile's logits are folded into
//!   the per-row online-softmax state ([`RowPartial`], the
//!   vocabulary-parallel partial) and dropped. The backward goes vocabulary chunk by chunk in
//!   order, recomputing the chunk's logits: `dW[chunk] = Gᵀ·h`, `dh += G·W[chunk]`. Scratch: a
//!   tile per thread, then one `rows × chunk` gradient block. Four GEMM-equivalents with a
//!   gradient, one without.
//! - [`Strategy::Chunked`]: a chunk of rows' full logits at a time, the loss and gradient in
//!   place, `dh = G·W`, `dW += Gᵀ·h`. Three GEMM-equivalents; scratch `chunk rows × V × 4`
//!   bytes.
//!
//! [`Strategy::Auto`] takes `Chunked` for a gradient when at least 256 rows (or all) of logits
//! fit the scratch budget ([`LinearCrossEntropy::scratch_bytes`], 64 MiB by default), else
//! `Fused`; a loss without gradients is always `Fused`. Ignored rows cost no GEMM work (they
//! are left out before any product) unless LSE or metrics are asked for, which every row has.
//! Results do not depend on the thread count, bit for bit.
//!
//! On the CPU the products are the `gemm` crate's; the row math is the SIMD kernels of the
//! softmax path. On the GPU both strategies run in WGSL (`src/gpu/linear/`): `h·Wᵀ + b` in
//! 64 × 64 workgroup tiles folded into the per-row partials, the softmax rows pass, and for
//! gradients `G` chunk by chunk (the logits recomputed by the same tile product, or, chunked,
//! stored by the forward in groups of whole tiles of 64 rows) with `dW`, `db` and `dh` from
//! it. Where 64 rows of logits outgrow a storage binding, `Auto` runs the fused strategy and
//! an explicit `Chunked` is refused ([`Error::Unsupported`](crate::Error::Unsupported)).
//! Trainers whose `h` and `W` live in device buffers record the same dispatches into their
//! own encoder with [`Gpu::record_linear_cross_entropy`](crate::gpu::Gpu::record_linear_cross_entropy).
//!
//! ```
//! use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest};
//! use xent::{Backend, CrossEntropy, Matrix};
//! // Two rows of hidden size 2, a vocabulary of 3.
//! let h = [1.0f32, 0.0, 0.0, 1.0];
//! let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]; // logits: [1, 0, 1] and [0, 1, 1]
//! let y = [0i64, 2];
//! let mut dw = vec![0f32; 6];
//! let out = LinearCrossEntropy::new(CrossEntropy::new()).compute(
//!     &Backend::Cpu,
//!     LinearBatch::new(Matrix::new(&h, 2, 2), Matrix::new(&w, 3, 2), &y[..]),
//!     LinearRequest::new().weight_gradient(GradientBuffer::Write(&mut dw)),
//! )?;
//! // Both rows: -log(e / (2e + 1)).
//! let e = 1f32.exp();
//! assert!((out.loss.unwrap() - (2.0 * e + 1.0).ln() + 1.0).abs() < 1e-6);
//! # Ok::<(), xent::Error>(())
//! ```

use crate::backend::{Backend, Target};
use crate::error::Result;
use crate::input::{Element, Matrix, Targets};
use crate::options::CrossEntropy;
use crate::output::Output;
use crate::shard::{Combined, FocalPartial, RowPartial, Shard};

/// How the logits are held (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// `Chunked` when a gradient is asked for and enough rows of logits fit the scratch
    /// budget, `Fused` otherwise.
    #[default]
    Auto,
    /// Row × vocabulary tiles folded into per-row partials; the backward recomputes the
    /// logits chunk by chunk.
    Fused,
    /// A chunk of rows' logits at a time, loss and gradient in place.
    Chunked,
}

/// How a head's weight is stored in memory (row-major either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `W` [V × D], a row per class: PyTorch's `nn.Linear` (`[out_features, in_features]`).
    #[default]
    VocabMajor,
    /// `W` [D × V], a row per hidden unit: burn's `nn::Linear` in its default layout
    /// (`[d_input, d_output]`), flax's `Dense` kernel. Its gradient `dW` comes in the same
    /// layout.
    HiddenMajor,
}

impl WeightLayout {
    /// `(vocabulary, hidden size)` of a weight stored `rows × cols` in this layout.
    pub(crate) fn shape(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            WeightLayout::VocabMajor => (rows, cols),
            WeightLayout::HiddenMajor => (cols, rows),
        }
    }
}

/// Linear cross-entropy: softmax cross-entropy options plus how to hold the logits.
///
/// ```
/// use xent::linear::{LinearCrossEntropy, Strategy};
/// use xent::CrossEntropy;
/// let loss = LinearCrossEntropy::new(CrossEntropy::new().z_loss(1e-4))
///     .strategy(Strategy::Fused)
///     .scratch_bytes(16 << 20);
/// assert_eq!(loss.strategy, Strategy::Fused);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearCrossEntropy {
    /// The loss on the logits `h·Wᵀ + b` (logit inputs and index targets only).
    pub loss: CrossEntropy,
    /// How the logits are held (default `Auto`).
    pub strategy: Strategy,
    /// Budget in bytes for the logits a call holds at once (default 64 MiB). `Chunked` holds
    /// `rows × V × 4` bytes for as many rows as fit (at least one; on the GPU whole tiles of
    /// 64 rows, at least one tile, or all rows), `Fused` a gradient block of `rows × chunk × 4`
    /// bytes (a chunk at least 64 columns, rows split to fit).
    pub scratch_bytes: usize,
}

impl LinearCrossEntropy {
    /// `loss` with the `Auto` strategy and a 64 MiB scratch budget.
    pub const fn new(loss: CrossEntropy) -> Self {
        LinearCrossEntropy {
            loss,
            strategy: Strategy::Auto,
            scratch_bytes: 64 << 20,
        }
    }
    /// Sets the strategy.
    pub const fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// Sets the scratch budget in bytes.
    pub const fn scratch_bytes(mut self, bytes: usize) -> Self {
        self.scratch_bytes = bytes;
        self
    }

    /// Computes the loss of `batch` and whatever `request` asks for on `backend`.
    ///
    /// Errors: shapes that disagree (`h` [N × D], `W` [V × D] (or [D × V] in its layout), `b` \[V\], targets \[N\], class
    /// weights \[V\], sample weights \[N\], upstream \[N\] or \[1\], gradients [N × D], [V × D], \[V\]),
    /// `V = 0`, a target out of range on a valid row, soft targets or probability inputs
    /// ([`Error::Unsupported`](crate::Error::Unsupported)), bad options or weights (as [`CrossEntropy::compute`]), and on
    /// the GPU what it does not run yet (module docs), or a device error.
    pub fn compute(
        &self,
        backend: &Backend,
        batch: LinearBatch<'_>,
        mut request: LinearRequest<'_>,
    ) -> Result<Output> {
        let plan = crate::plan::linear::check(self, &batch, &request)?;
        match backend.target() {
            Target::Cpu(level) => crate::cpu::linear::run(level, &plan, &batch, &mut request),
            Target::Gpu(gpu) => gpu.linear(&plan, &batch, &mut request),
        }
    }
}

/// Vocabulary-parallel linear heads: a shard of `W`'s rows gives the same per-row partials as
/// a shard of the logits ([`crate::shard`]), so `CrossEntropy::combine` and its focal round
/// carry over. On each shard `k` (columns `[start, start + width)` of `V`): `batch.weight` is
/// `W[start..start + width]` [width × D], `batch.bias` and `batch.class_weights` its slices,
/// the targets global, no sample weights (they go to `combine_weighted`). With
/// [`WeightLayout::HiddenMajor`] a shard's weight is its columns of `W` [D × V] as a contiguous
/// `[D × width]` matrix (copied out of the whole), and its `dW` comes back `[D × width]`. On the GPU the
/// shard runs the whole head's kernels over its rows of `W` (`src/gpu/linear/shard.rs`).
///
/// ```
/// use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest};
/// use xent::shard::{RowPartial, Shard};
/// use xent::{Backend, CrossEntropy, Matrix, Targets};
/// let (n, d, v) = (2, 2, 5);
/// let h = [1.0f32, -1.0, 0.5, 2.0];
/// let w: Vec<f32> = (0..v * d).map(|i| i as f32 * 0.1).collect();
/// let y = [4i64, 0];
/// let head = LinearCrossEntropy::new(CrossEntropy::new());
/// let shards = Shard::split(v, 2);
/// let batch = |s: Shard| {
///     let rows = Matrix::new(&w[s.start * d..(s.start + s.width) * d], s.width, d);
///     LinearBatch::new(Matrix::new(&h, n, d), rows, &y[..])
/// };
/// // 1. Each shard's partials; 2. after an all-gather, combined in shard order.
/// let partials = shards
///     .iter()
///     .map(|&s| head.shard_partials(&Backend::Cpu, s, batch(s)))
///     .collect::<Result<Vec<Vec<RowPartial>>, _>>()?;
/// let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
/// let combined = head.loss.combine(v, &views, Targets::I64(&y), None)?;
/// // 3. Each shard's dW rows and db, and its part of dh (summed over shards by an all-reduce).
/// let mut dh = vec![0f32; n * d];
/// for &s in &shards {
///     let mut dw = vec![0f32; s.width * d];
///     let request = LinearRequest::new()
///         .hidden_gradient(GradientBuffer::Add(&mut dh))
///         .weight_gradient(GradientBuffer::Write(&mut dw));
///     head.shard_backward(&Backend::Cpu, s, batch(s), &combined, request)?;
/// }
/// let whole = head.compute(
///     &Backend::Cpu,
///     LinearBatch::new(Matrix::new(&h, n, d), Matrix::new(&w, v, d), &y[..]),
///     LinearRequest::new(),
/// )?;
/// assert!((combined.output.loss.unwrap() - whole.loss.unwrap()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
impl LinearCrossEntropy {
    /// Step 1 on one shard of the head: every row's [`RowPartial`] over the shard's columns.
    pub fn shard_partials(
        &self,
        backend: &Backend,
        shard: Shard,
        batch: LinearBatch<'_>,
    ) -> Result<Vec<RowPartial>> {
        let plan = crate::plan::linear::check_shard(self, shard, &batch, &LinearRequest::new())?;
        match backend.target() {
            Target::Cpu(level) => Ok(crate::cpu::linear::shard_partials(level, &plan, &batch)),
            Target::Gpu(gpu) => gpu.linear_shard_partials(&plan, &batch),
        }
    }

    /// The focal round (focal loss with label smoothing, `combined.needs_focal_round()`) on
    /// one shard: its [`FocalPartial`]s, for `CrossEntropy::combine_focal`.
    pub fn shard_focal(
        &self,
        backend: &Backend,
        shard: Shard,
        batch: LinearBatch<'_>,
        combined: &Combined,
    ) -> Result<Vec<FocalPartial>> {
        let plan = crate::plan::linear::check_shard(self, shard, &batch, &LinearRequest::new())?;
        crate::plan::linear::check_combined(&plan, combined, true)?;
        match backend.target() {
            Target::Cpu(level) => Ok(crate::cpu::linear::shard_focal(
                level, &plan, &batch, combined,
            )),
            Target::Gpu(gpu) => gpu.linear_shard_focal(&plan, &batch, combined),
        }
    }

    /// Step 3 on one shard: the gradients `request` asks for from the combined rows: the
    /// shard's rows of `dW` [width × D] and `db` \[width\], and its part of `dh` [N × D] (the
    /// sum over shards is `dh`: add them, or all-reduce). The request takes no upstream or
    /// per-row outputs (`combine` has them).
    pub fn shard_backward(
        &self,
        backend: &Backend,
        shard: Shard,
        batch: LinearBatch<'_>,
        combined: &Combined,
        mut request: LinearRequest<'_>,
    ) -> Result<()> {
        let plan = crate::plan::linear::check_shard(self, shard, &batch, &request)?;
        crate::plan::linear::check_combined(&plan, combined, false)?;
        match backend.target() {
            Target::Cpu(level) => {
                crate::cpu::linear::shard_backward(level, &plan, &batch, combined, &mut request);
                Ok(())
            }
            Target::Gpu(gpu) => gpu.linear_shard_backward(&plan, &batch, combined, &mut request),
        }
    }
}

/// Everything a linear cross-entropy call reads.
///
/// ```
/// use xent::linear::{LinearBatch, WeightLayout};
/// use xent::Matrix;
/// let (h, w, b) = ([0.5f32; 8], [0.25f32; 6], [0.0f32; 3]);
/// let y = [0i32, 1, 2, -100];
/// let batch = LinearBatch::new(Matrix::new(&h, 4, 2), Matrix::new(&w, 3, 2), &y[..])
///     .bias(&b);
/// assert_eq!(batch.weight_shape(), (3, 2));
/// // The same head stored [D × V] (burn's `Linear`, flax's `Dense`).
/// let batch = LinearBatch::new(Matrix::new(&h, 4, 2), Matrix::new(&w, 2, 3), &y[..])
///     .weight_layout(WeightLayout::HiddenMajor);
/// assert_eq!(batch.weight_shape(), (3, 2));
/// ```
#[derive(Debug)]
pub struct LinearBatch<'a> {
    /// Hidden states `h` [N × D].
    pub hidden: Matrix<'a>,
    /// The head's weight: `W` [V × D] (`nn.Linear` layout), or [D × V] with
    /// [`WeightLayout::HiddenMajor`].
    pub weight: Matrix<'a>,
    /// How `weight`, and the weight gradient `dW`, are stored (default
    /// [`WeightLayout::VocabMajor`]). [D × V] is read where it is on the CPU, a block of
    /// columns at a time; a host call on the GPU transposes it on the way up (and `dW` on the
    /// way back).
    pub weight_layout: WeightLayout,
    /// The head's bias `b` \[V\] (a 1 × V matrix).
    pub bias: Option<Matrix<'a>>,
    /// Class-index targets, one per row.
    pub targets: Targets<'a>,
    /// Per-class weights `w[c]` (length V).
    pub class_weights: Option<&'a [f32]>,
    /// Per-row sample weights `s[n]` (length N; SEMANTICS.md section 2c).
    pub sample_weights: Option<&'a [f32]>,
}

impl<'a> LinearBatch<'a> {
    /// Hidden states, weight and targets; no bias or weights.
    pub fn new(hidden: Matrix<'a>, weight: Matrix<'a>, targets: impl Into<Targets<'a>>) -> Self {
        LinearBatch {
            hidden,
            weight,
            weight_layout: WeightLayout::VocabMajor,
            bias: None,
            targets: targets.into(),
            class_weights: None,
            sample_weights: None,
        }
    }
    /// Sets how the weight (and `dW`) is stored.
    pub fn weight_layout(mut self, layout: WeightLayout) -> Self {
        self.weight_layout = layout;
        self
    }
    /// The weight's (vocabulary, hidden size), read through its layout.
    pub fn weight_shape(&self) -> (usize, usize) {
        self.weight_layout
            .shape(self.weight.rows(), self.weight.cols())
    }
    /// Sets the bias (length V, any element type).
    pub fn bias<T: Element>(mut self, bias: &'a [T]) -> Self {
        self.bias = Some(Matrix::vector(bias));
        self
    }
    /// Sets per-class weights (length V).
    pub fn class_weights(mut self, weights: &'a [f32]) -> Self {
        self.class_weights = Some(weights);
        self
    }
    /// Sets per-row sample weights (length N, finite and non-negative).
    pub fn sample_weights(mut self, weights: &'a [f32]) -> Self {
        self.sample_weights = Some(weights);
        self
    }
}

/// A caller's f32 buffer for one gradient.
#[derive(Debug)]
pub enum GradientBuffer<'g> {
    /// Overwritten with the gradient.
    Write(&'g mut [f32]),
    /// The gradient is added to what it holds (accumulation over micro-batches).
    Add(&'g mut [f32]),
}

impl GradientBuffer<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            GradientBuffer::Write(g) | GradientBuffer::Add(g) => g.len(),
        }
    }
    pub(crate) fn adds(&self) -> bool {
        matches!(self, GradientBuffer::Add(_))
    }
    pub(crate) fn data(&mut self) -> &mut [f32] {
        match self {
            GradientBuffer::Write(g) | GradientBuffer::Add(g) => g,
        }
    }
}

/// What a linear cross-entropy call computes beyond the loss.
///
/// ```
/// use xent::linear::{GradientBuffer, LinearRequest};
/// let (mut dh, mut dw) = (vec![0f32; 8], vec![0f32; 12]);
/// let request = LinearRequest::new()
///     .lse()
///     .hidden_gradient(GradientBuffer::Write(&mut dh))
///     .weight_gradient(GradientBuffer::Add(&mut dw));
/// assert!(request.wants_gradient());
/// ```
#[derive(Debug, Default)]
pub struct LinearRequest<'g> {
    /// Return per-row losses (always returned for `Reduction::None`).
    pub row_losses: bool,
    /// Return per-row log-sum-exp of the transformed logits (every row is then computed,
    /// ignored ones too).
    pub lse: bool,
    /// Return per-row metrics (every row is then computed).
    pub metrics: bool,
    /// Upstream gradient, as in [`Request`](crate::Request): per row for `Reduction::None`,
    /// one scalar for sum and mean.
    pub upstream: Option<&'g [f32]>,
    /// `dh` [N × D].
    pub hidden_gradient: Option<GradientBuffer<'g>>,
    /// `dW` [V × D].
    pub weight_gradient: Option<GradientBuffer<'g>>,
    /// `db` \[V\] (the gradient of a bias, also when the batch has none).
    pub bias_gradient: Option<GradientBuffer<'g>>,
}

impl<'g> LinearRequest<'g> {
    /// Loss only.
    pub fn new() -> Self {
        Self::default()
    }
    /// Also return per-row losses.
    pub fn row_losses(mut self) -> Self {
        self.row_losses = true;
        self
    }
    /// Also return per-row log-sum-exp.
    pub fn lse(mut self) -> Self {
        self.lse = true;
        self
    }
    /// Also return the metrics of SEMANTICS.md section 5.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }
    /// Sets the upstream gradient.
    pub fn upstream(mut self, upstream: &'g [f32]) -> Self {
        self.upstream = Some(upstream);
        self
    }
    /// Asks for `dh`.
    pub fn hidden_gradient(mut self, buffer: GradientBuffer<'g>) -> Self {
        self.hidden_gradient = Some(buffer);
        self
    }
    /// Asks for `dW`.
    pub fn weight_gradient(mut self, buffer: GradientBuffer<'g>) -> Self {
        self.weight_gradient = Some(buffer);
        self
    }
    /// Asks for `db`.
    pub fn bias_gradient(mut self, buffer: GradientBuffer<'g>) -> Self {
        self.bias_gradient = Some(buffer);
        self
    }
    /// Whether any gradient is asked for.
    pub fn wants_gradient(&self) -> bool {
        self.hidden_gradient.is_some()
            || self.weight_gradient.is_some()
            || self.bias_gradient.is_some()
    }
}
