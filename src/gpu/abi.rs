//! The Rust ↔ WGSL interface, defined once: the structs both sides read and write, the flag
//! bits and reduction codes in `Params`, and the binding numbers.
//!
//! The flags and codes are emitted into every shader ([`wgsl_constants`]), so they cannot
//! drift. The structs and bindings are written on both sides (WGSL has no way to import them);
//! the unit test at the end of this file reflects every shader variant with naga and checks
//! each struct's size and member offsets and each variant's bindings against this file.

/// Launch parameters of every kernel (`Params` in `shaders/include/softmax_common.wgsl`),
/// one uniform block per dispatch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    /// Rows in this chunk.
    pub rows: u32,
    /// `C`.
    pub classes: u32,
    /// `S` of the (N, C, S) layout; 0 for contiguous rows.
    pub spatial: u32,
    /// Global index of the chunk's first row.
    pub row0: u32,
    /// Element index, in the bound logits window, of the chunk's first element.
    pub elem_offset: u32,
    /// The same for the bound f32 (dense target, gradient) window.
    pub f32_offset: u32,
    /// Column splits per row.
    pub splits: u32,
    /// Classes per split.
    pub span: u32,
    /// Invocations that share one row segment (a power of two, at most the workgroup size).
    pub invocations_per_row: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Elements in this chunk (backward, BCE, reduction passes).
    pub elems: u32,
    /// A [`ReductionCode`].
    pub reduction: u32,
    /// Logit scale `s`.
    pub scale: f32,
    /// Softcap (0: off).
    pub cap: f32,
    /// Probability clamp (0: logits).
    pub prob_eps: f32,
    /// `ε`.
    pub smoothing: f32,
    /// `λ`.
    pub z_loss: f32,
    /// `ε / C`, `C` the global class count (vocabulary shards differ).
    pub uniform: f32,
    /// `ignore_index`, low word of the i64.
    pub ignore_lo: u32,
    /// `ignore_index`, high word.
    pub ignore_hi: u32,
    /// Scalar upstream gradient for sum / mean.
    pub upstream: f32,
    /// The mean's denominator when the host knows it (BCE: `N·C`).
    pub denominator: f32,
    /// Focal `γ` (0: off).
    pub focal_gamma: f32,
    /// BCE's focal `α` (with `FLAG_ALPHA`).
    pub focal_alpha: f32,
    /// BCE: global row of the chunk's first element (for sample weights).
    pub first_row: u32,
    /// Contiguous rows: first class of the bound window (a piece of a row longer than a
    /// binding), or of the backward's first element; else 0.
    pub col0: u32,
    /// Partials: the first split of this dispatch.
    pub split0: u32,
    /// A linear head's hidden size `D` (`linear_partials.wgsl`); 0 elsewhere.
    pub hidden: u32,
    /// A linear head's chunked strategy (`FLAG_STORED_LOGITS`): the columns of each chunk of
    /// the stored logits (the backward's chunk width); 0 elsewhere.
    pub block_columns: u32,
    /// A linear head's window of rows: the word of the row order (`linear_compact.wgsl`)
    /// where the window's count of rows that count sits, its rows and their targets after it
    /// (read by every forward; by the other tile kernels under `FLAG_SKIP_IGNORED`); 0
    /// elsewhere.
    pub order_base: u32,
}

/// The online-softmax state of one (row, split) (`Partial` in `softmax_common.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Partial {
    /// Running max of `z`.
    pub m: f32,
    /// `Σ exp(z − m)`.
    pub s: f32,
    /// Lowest index of the max.
    pub arg: u32,
    /// Lowest index of a NaN (`u32::MAX` if none).
    pub nan_arg: u32,
    /// `Σ w·(z − m)`.
    pub wz: f32,
    /// `Σ w·t`.
    pub wt: f32,
    /// `Σ w·t·(z − m)`.
    pub wtz: f32,
    /// `Σ exp(z − m)·(z − m)`.
    pub ez: f32,
    /// `Σ t·exp(z − m)`.
    pub te: f32,
    /// Max `t`.
    pub tmax: f32,
    /// Lowest index of the max `t`.
    pub targ: u32,
    /// `Σ w` over the classes seen.
    pub w_all: f32,
}

/// What the backward needs of one row (`RowCoef` in `shaders/include/rows_common.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RowCoef {
    /// The row's max `m` (its LSE when that is not finite).
    pub max: f32,
    /// Coefficient of `p` in the cross-entropy part.
    pub p_coefficient: f32,
    /// `(1 − ε)·w[y]`.
    pub target_coefficient: f32,
    /// The target class, or −1.
    pub y: i32,
    /// A [`RowFill`] code.
    pub fill: u32,
    /// `ln Σ exp(z − m)` (0 when the LSE is not finite).
    pub log_sum: f32,
    /// `a`, with [`ReductionCode::Prescaled`].
    pub scale: f32,
    /// The row's sample weight.
    pub sample: f32,
}

/// Rows (and columns) of a linear head's output tile, one workgroup's (`linear_tile.wgsl`);
/// the host cuts rows, splits and pieces of `W` in multiples of it.
pub(crate) const LINEAR_TILE: u32 = 64;
/// Bytes of one (row, split)'s focal sums (`vec2<f32>` in `linear_focal.wgsl`).
pub(crate) const FOCAL_SUM_BYTES: u64 = 8;
/// Bytes of one [`Partial`].
pub(crate) const PARTIAL_BYTES: u64 = std::mem::size_of::<Partial>() as u64;
/// Bytes of one [`RowCoef`].
pub(crate) const COEF_BYTES: u64 = std::mem::size_of::<RowCoef>() as u64;
/// Bytes of one row's sums for the reduction (one `vec4<f32>`; BCE: one per 4 elements).
pub(crate) const ROW_SUM_BYTES: u64 = 16;
/// Bytes of one [`GpuRow`](super::GpuRow) (`RowOut` in `rows_common.wgsl`).
pub(crate) const ROW_BYTES: u64 = std::mem::size_of::<super::GpuRow>() as u64;

/// `Params::flags` bits, and the WGSL constant each becomes.
pub(crate) const FLAGS: [(&str, u32); 21] = [
    ("FLAG_WEIGHTS", FLAG_WEIGHTS),
    ("FLAG_DENSE", FLAG_DENSE),
    ("FLAG_WANT_WZ", FLAG_WANT_WZ),
    ("FLAG_ENTROPY", FLAG_ENTROPY),
    ("FLAG_UPSTREAM", FLAG_UPSTREAM),
    ("FLAG_POS_WEIGHT", FLAG_POS_WEIGHT),
    ("FLAG_KEEP_LOSSES", FLAG_KEEP_LOSSES),
    ("FLAG_GRADIENT", FLAG_GRADIENT),
    ("FLAG_SAMPLE_WEIGHTS", FLAG_SAMPLE_WEIGHTS),
    ("FLAG_CHECK_TARGETS", FLAG_CHECK_TARGETS),
    ("FLAG_FOCAL_ALL", FLAG_FOCAL_ALL),
    ("FLAG_ALPHA", FLAG_ALPHA),
    ("FLAG_TARGET_LOGIT", FLAG_TARGET_LOGIT),
    ("FLAG_BIAS", FLAG_BIAS),
    ("FLAG_ADD", FLAG_ADD),
    ("FLAG_BIAS_ONLY", FLAG_BIAS_ONLY),
    ("FLAG_ADD_BIAS", FLAG_ADD_BIAS),
    ("FLAG_WEIGHT_ONLY", FLAG_WEIGHT_ONLY),
    ("FLAG_DEVICE_UPSTREAM", FLAG_DEVICE_UPSTREAM),
    ("FLAG_STORED_LOGITS", FLAG_STORED_LOGITS),
    ("FLAG_SKIP_IGNORED", FLAG_SKIP_IGNORED),
];
/// Class weights bound.
pub(crate) const FLAG_WEIGHTS: u32 = 1;
/// Dense targets.
pub(crate) const FLAG_DENSE: u32 = 2;
/// Accumulate `Σ w·z` (smoothing, index targets).
pub(crate) const FLAG_WANT_WZ: u32 = 4;
/// Accumulate `Σ e·z` (entropy).
pub(crate) const FLAG_ENTROPY: u32 = 8;
/// A per-row (softmax) or per-element (BCE) upstream buffer is bound.
pub(crate) const FLAG_UPSTREAM: u32 = 16;
/// BCE `pos_weight` bound.
pub(crate) const FLAG_POS_WEIGHT: u32 = 32;
/// The caller reads the per-element losses (BCE) or the rows' records (softmax's fused
/// kernel; the rows pass always writes them, for the linear head's host call): without it
/// they are not stored.
pub(crate) const FLAG_KEEP_LOSSES: u32 = 64;
/// BCE: write the gradient.
pub(crate) const FLAG_GRADIENT: u32 = 128;
/// Per-row sample weights bound.
pub(crate) const FLAG_SAMPLE_WEIGHTS: u32 = 256;
/// Partials: flag index targets outside `[0, C)`.
pub(crate) const FLAG_CHECK_TARGETS: u32 = 512;
/// Softmax focal loss needs the focal pass (`ε > 0` or soft targets).
pub(crate) const FLAG_FOCAL_ALL: u32 = 1024;
/// BCE focal `α` on.
pub(crate) const FLAG_ALPHA: u32 = 2048;
/// Partials: save the raw logit of each row's target.
pub(crate) const FLAG_TARGET_LOGIT: u32 = 4096;
/// A linear head's bias is bound (`linear_partials.wgsl`).
pub(crate) const FLAG_BIAS: u32 = 8192;
/// A linear head's `dW` or `dh` is added to, not written (`linear_weight_gradient.wgsl`,
/// `linear_hidden_gradient.wgsl`).
pub(crate) const FLAG_ADD: u32 = 16384;
/// A linear head's `db` without its `dW` (`linear_weight_gradient.wgsl` binds the sink for it).
pub(crate) const FLAG_BIAS_ONLY: u32 = 32768;
/// A linear head's `db` is added to, not written (`linear_weight_gradient.wgsl`).
pub(crate) const FLAG_ADD_BIAS: u32 = 65536;
/// A linear head's `dW` without its `db` (`linear_weight_gradient.wgsl` binds the sink for it).
pub(crate) const FLAG_WEIGHT_ONLY: u32 = 131072;
/// The scalar upstream of sum and mean is on the device: `scale_source[4]`, after the totals.
pub(crate) const FLAG_DEVICE_UPSTREAM: u32 = 262144;
/// A linear head's chunked strategy: `linear_partials.wgsl` also stores each logit `x` of its
/// rows, chunk-major (`block_columns`), and `linear_gradient.wgsl` reads them back in place of
/// the tile product.
pub(crate) const FLAG_STORED_LOGITS: u32 = 524288;
/// A linear head's recorded call without per-row records: its tile kernels take each window's
/// rows that count first (`linear_compact.wgsl`, `linear_order.wgsl`), and a tile past them
/// takes no product.
pub(crate) const FLAG_SKIP_IGNORED: u32 = 1048576;

/// `Params::reduction`: how the kernels scale a row's gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ReductionCode {
    /// Per row: the row's upstream value (1 without one).
    None = 0,
    /// The scalar upstream.
    Sum = 1,
    /// The scalar upstream over the mean's denominators, reduced on the device.
    Mean = 2,
    /// Already in the row coefficients (vocabulary shards: `RowCoef::scale`).
    Prescaled = 3,
}

impl ReductionCode {
    /// Every code, with its WGSL constant.
    pub(crate) const ALL: [(&'static str, ReductionCode); 4] = [
        ("REDUCTION_NONE", ReductionCode::None),
        ("REDUCTION_SUM", ReductionCode::Sum),
        ("REDUCTION_MEAN", ReductionCode::Mean),
        ("REDUCTION_PRESCALED", ReductionCode::Prescaled),
    ];
}

impl From<crate::options::Reduction> for ReductionCode {
    fn from(reduction: crate::options::Reduction) -> ReductionCode {
        match reduction {
            crate::options::Reduction::None => ReductionCode::None,
            crate::options::Reduction::Sum => ReductionCode::Sum,
            crate::options::Reduction::Mean => ReductionCode::Mean,
        }
    }
}

pub(crate) use crate::shard::RowFill;

impl RowFill {
    /// Every code, with its WGSL constant.
    pub(crate) const ALL: [(&'static str, RowFill); 3] = [
        ("FILL_COMPUTE", RowFill::Compute),
        ("FILL_ZERO", RowFill::Zero),
        ("FILL_NAN", RowFill::Nan),
    ];
}

/// The WGSL constants every shader starts with: the workgroup size, the flags, the reduction
/// codes and the fill codes, from the Rust values above.
pub(crate) fn wgsl_constants(workgroup_size: u32) -> String {
    let mut src = format!("const WG: u32 = {workgroup_size}u;\n");
    src += &format!("const LINEAR_TILE: u32 = {LINEAR_TILE}u;\n");
    for (name, value) in FLAGS {
        src += &format!("const {name}: u32 = {value}u;\n");
    }
    for (name, code) in ReductionCode::ALL {
        src += &format!("const {name}: u32 = {}u;\n", code as u32);
    }
    for (name, code) in RowFill::ALL {
        src += &format!("const {name}: u32 = {}u;\n", code as u32);
    }
    src
}

/// The binding numbers of group 0, one per role, the same in every kernel that has the role.
pub(crate) mod binding {
    /// `Params` (uniform).
    pub const PARAMS: u32 = 0;
    /// The logits (read; read-write when the gradient is written in place).
    pub const LOGITS: u32 = 1;
    /// The f32 gradient.
    pub const GRADIENT: u32 = 2;
    /// Index or dense targets.
    pub const TARGETS: u32 = 3;
    /// Class weights.
    pub const CLASS_WEIGHTS: u32 = 4;
    /// One `Partial` per (row, split).
    pub const PARTIALS: u32 = 5;
    /// One `RowOut` (`GpuRow`) per row.
    pub const ROWS: u32 = 6;
    /// Per-row (BCE: per-vec4) sums for the reduction.
    pub const ROW_SUMS: u32 = 7;
    /// One `RowCoef` per row.
    pub const COEFFICIENTS: u32 = 8;
    /// The out-of-range-target flag (atomic u32).
    pub const TARGET_ERROR: u32 = 9;
    /// What the gradient's scale reads: per-row upstream values or the mean's totals.
    pub const SCALE_SOURCE: u32 = 10;
    /// BCE: per-element upstream values.
    pub const UPSTREAM: u32 = 11;
    /// BCE: `pos_weight`.
    pub const POS_WEIGHT: u32 = 12;
    /// BCE: per-element losses.
    pub const ELEMENT_LOSSES: u32 = 13;
    /// Reduction pass input.
    pub const REDUCE_IN: u32 = 14;
    /// Reduction pass output.
    pub const REDUCE_OUT: u32 = 15;
    /// The reduced loss.
    pub const LOSS: u32 = 16;
    /// Per-row sample weights.
    pub const SAMPLE_WEIGHTS: u32 = 17;
    /// BCE: per-class (weight, pos_weight) pairs.
    pub const CLASS_PARAMS: u32 = 18;
    /// Each row's raw target logit, saved by the partials pass.
    pub const TARGET_LOGITS: u32 = 19;
    /// A linear head's hidden states `h` [rows × D], f32.
    pub const HIDDEN: u32 = 20;
    /// A linear head's weight `W` [V × D], f32.
    pub const HEAD_WEIGHT: u32 = 21;
    /// A linear head's bias `b` [V], f32 (a stand-in without one).
    pub const HEAD_BIAS: u32 = 22;
    /// A vocabulary chunk's rows of `dW`, f32.
    pub const WEIGHT_GRADIENT: u32 = 23;
    /// A vocabulary chunk's `db`, f32.
    pub const BIAS_GRADIENT: u32 = 24;
    /// `dh` of the computed rows, f32.
    pub const HIDDEN_GRADIENT: u32 = 25;
    /// A linear head's focal sums per (row, split), `vec2<f32>`.
    pub const FOCAL_PARTIALS: u32 = 26;
    /// A linear head's row order (`linear_compact.wgsl`), u32: per window, its count of rows
    /// that count, then its rows.
    pub const ROW_ORDER: u32 = 27;
}

#[cfg(test)]
mod reflection;
