//! One launcher per kernel: a struct of the windows the kernel binds, by name, whose `LAYOUT`
//! (binding, kind, smallest size) is the kernel's bind-group table. A schedule fills a struct
//! and passes its `entries()` to `Gpu::launch`; `pipelines.rs` builds each variant's layout
//! from the same table (`layout`), and `abi/reflection.rs` checks it against the WGSL.

use super::abi::binding::*;
use super::abi::{Params, COEF_BYTES, FOCAL_SUM_BYTES, PARTIAL_BYTES, ROW_BYTES, ROW_SUM_BYTES};
use super::encode::Window;
use super::pipelines::{Kernel, LogitLoad, Slot, Store, Variant};

/// One entry of a bind-group table: binding number, kind, and the smallest window the
/// kernel may be given (one array element, or the whole uniform block).
pub(crate) type Binding = (u32, Slot, u64);

const PARAMS_BYTES: u64 = std::mem::size_of::<Params>() as u64;

/// Declares a launcher: its struct of windows (`params` first) and its bind-group table. A
/// binding marked `optional` is an `Option`: `None` exactly when the variant does not declare it
/// (the gradient of a variant that writes in place or, loss only, not at all; see [`layout`]).
macro_rules! launcher {
    (
        $(#[$doc:meta])*
        $name:ident {
            $($(#[$field_doc:meta])* $field:ident: $binding:ident, $slot:ident, $min:expr
                $(, $absent:ident)?;)*
        }
    ) => {
        $(#[$doc])*
        pub(crate) struct $name<'a> {
            /// The dispatch's `Params` block.
            pub params: Window<'a>,
            $($(#[$field_doc])* pub $field: window_type!('a $($absent)?),)*
        }

        impl<'a> $name<'a> {
            /// The bind-group table (separate-gradient variant; see [`layout`]).
            pub(crate) const LAYOUT: &'static [Binding] = &[
                (PARAMS, Slot::Uniform, PARAMS_BYTES),
                $(($binding, Slot::$slot, $min),)*
            ];

            /// Every window given, at its binding.
            pub(crate) fn entries(&self) -> Vec<(u32, Window<'a>)> {
                let mut out = vec![(PARAMS, self.params)];
                $(out.extend(Bound::window(&self.$field).map(|w| ($binding, w)));)*
                out
            }
        }
    };
}

/// The type of a launcher's window: `Window`, or `Option<Window>` for one that is absent in
/// place.
macro_rules! window_type {
    ($a:lifetime) => { Window<$a> };
    ($a:lifetime optional) => { Option<Window<$a>> };
}

/// A launcher field: a window, or a window that may be absent.
trait Bound<'a> {
    fn window(&self) -> Option<Window<'a>>;
}

impl<'a> Bound<'a> for Window<'a> {
    fn window(&self) -> Option<Window<'a>> {
        Some(*self)
    }
}

impl<'a> Bound<'a> for Option<Window<'a>> {
    fn window(&self) -> Option<Window<'a>> {
        *self
    }
}

launcher! {
    /// Online-softmax partials of each (row, split) (`softmax_partials.wgsl`).
    Partials {
        /// The chunk's (or row piece's) logits.
        logits: LOGITS, Read, 4;
        /// Index targets (whole) or the chunk's dense targets.
        targets: TARGETS, Read, 4;
        /// Class weights (a stand-in when unweighted).
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// One `Partial` per (row, split).
        partials: PARTIALS, Write, PARTIAL_BYTES;
        /// The out-of-range-target flag.
        target_error: TARGET_ERROR, Write, 4;
        /// Each row's raw target logit.
        target_logits: TARGET_LOGITS, Write, 4;
    }
}

launcher! {
    /// A linear head's logits folded into the partials of each (row, split)
    /// (`linear_partials.wgsl`).
    LinearPartials {
        /// Class weights (a stand-in when unweighted).
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// One `Partial` per (row, split).
        partials: PARTIALS, Write, PARTIAL_BYTES;
        /// Each row's raw target logit.
        target_logits: TARGET_LOGITS, Write, 4;
        /// The chunked strategy's stored logits, chunk-major (the sink otherwise).
        logits: GRADIENT, Write, 4;
        /// The chunk's hidden states, f32 [rows × D].
        hidden: HIDDEN, Read, 4;
        /// The head's weight, f32 [V × D].
        head_weight: HEAD_WEIGHT, Read, 4;
        /// The head's bias, f32 [V] (a stand-in without one).
        head_bias: HEAD_BIAS, Read, 4;
        /// The row order and the rows' targets (`linear_compact.wgsl`).
        row_order: ROW_ORDER, Read, 4;
    }
}

launcher! {
    /// A linear head's window of rows in the order its tile kernels take them, the rows that
    /// count first (`linear_compact.wgsl`).
    LinearCompact {
        /// Index targets of the window.
        targets: TARGETS, Read, 4;
        /// The row order: the window's count, then its rows and their targets.
        row_order: ROW_ORDER, Write, 4;
    }
}

launcher! {
    /// A vocabulary chunk's `G` of a linear head, its logits recomputed
    /// (`linear_gradient.wgsl`).
    LinearGradient {
        /// `G` of the chunk, f32 [rows × chunk columns].
        gradient: GRADIENT, Write, 4;
        /// Class weights (a stand-in when unweighted).
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// Row coefficients from the rows pass.
        coefficients: COEFFICIENTS, Read, COEF_BYTES;
        /// Per-row upstream values, the mean's totals, or a device upstream's block.
        scale_source: SCALE_SOURCE, Read, 4;
        /// The hidden states.
        hidden: HIDDEN, Read, 4;
        /// The chunk's rows of the head's weight.
        head_weight: HEAD_WEIGHT, Read, 4;
        /// The head's bias (a stand-in without one).
        head_bias: HEAD_BIAS, Read, 4;
        /// The row order (`FLAG_SKIP_IGNORED`; else unread).
        row_order: ROW_ORDER, Read, 4;
    }
}

launcher! {
    /// A linear head's plain product `h·Wᵀ + b` (`linear_product.wgsl`).
    LinearProduct {
        /// The logits, f32 [rows × span].
        logits: GRADIENT, Write, 4;
        /// The hidden states.
        hidden: HIDDEN, Read, 4;
        /// The columns' rows of the head's weight.
        head_weight: HEAD_WEIGHT, Read, 4;
        /// The head's bias (a stand-in without one).
        head_bias: HEAD_BIAS, Read, 4;
    }
}

launcher! {
    /// A vocabulary chunk's rows of `dW` and its `db` (`linear_weight_gradient.wgsl`).
    LinearWeightGradient {
        /// `G` of the chunk.
        gradient: GRADIENT, Read, 4;
        /// The hidden states.
        hidden: HIDDEN, Read, 4;
        /// The chunk's rows of `dW`.
        weight_gradient: WEIGHT_GRADIENT, Write, 4;
        /// The chunk's `db`.
        bias_gradient: BIAS_GRADIENT, Write, 4;
        /// The row order (`FLAG_SKIP_IGNORED`; else unread).
        row_order: ROW_ORDER, Read, 4;
    }
}

launcher! {
    /// `dh += G·W` of a vocabulary chunk (`linear_hidden_gradient.wgsl`).
    LinearHiddenGradient {
        /// `G` of the chunk.
        gradient: GRADIENT, Read, 4;
        /// The chunk's rows of the head's weight.
        head_weight: HEAD_WEIGHT, Read, 4;
        /// `dh` of the computed rows.
        hidden_gradient: HIDDEN_GRADIENT, Write, 4;
        /// The row order (`FLAG_SKIP_IGNORED`; else unread).
        row_order: ROW_ORDER, Read, 4;
    }
}

launcher! {
    /// Focal loss with smoothing on a linear head: each (row, split)'s focal sums from the
    /// recomputed logits (`linear_focal.wgsl`).
    LinearFocal {
        /// The chunked strategy's stored logits (the sink otherwise).
        logits: GRADIENT, Read, 4;
        /// Class weights (a stand-in when unweighted).
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// Row coefficients from the rows pass.
        coefficients: COEFFICIENTS, Read, COEF_BYTES;
        /// The chunk's hidden states.
        hidden: HIDDEN, Read, 4;
        /// The piece's rows of the head's weight.
        head_weight: HEAD_WEIGHT, Read, 4;
        /// The head's bias (a stand-in without one).
        head_bias: HEAD_BIAS, Read, 4;
        /// One `vec2<f32>` per (row, split).
        focal_partials: FOCAL_PARTIALS, Write, FOCAL_SUM_BYTES;
        /// The row order (`FLAG_SKIP_IGNORED`; else unread).
        row_order: ROW_ORDER, Read, 4;
    }
}

launcher! {
    /// Focal loss with smoothing on a linear head: each row's focal sums added and its loss
    /// and coefficient finished (`linear_focal_rows.wgsl`).
    LinearFocalRows {
        /// Per-row records (the loss is rewritten).
        rows: ROWS, Write, ROW_BYTES;
        /// Per-row sums (the cross-entropy sum is rewritten).
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// Row coefficients (`p_coefficient` and `fill` are rewritten).
        coefficients: COEFFICIENTS, Write, COEF_BYTES;
        /// The focal pass's sums.
        focal_partials: FOCAL_PARTIALS, Read, FOCAL_SUM_BYTES;
    }
}

launcher! {
    /// Each row's loss, LSE, metrics and gradient coefficients from its partials
    /// (`softmax_rows.wgsl`).
    Rows {
        /// Index targets, whole.
        targets: TARGETS, Read, 4;
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// The partials pass's output.
        partials: PARTIALS, Read, PARTIAL_BYTES;
        /// One `GpuRow` per row.
        rows: ROWS, Write, ROW_BYTES;
        /// Per-row sums for the reduction.
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// One `RowCoef` per row.
        coefficients: COEFFICIENTS, Write, COEF_BYTES;
        /// Per-row sample weights.
        sample_weights: SAMPLE_WEIGHTS, Read, 4;
        /// The partials pass's target logits.
        target_logits: TARGET_LOGITS, Read, 4;
    }
}

launcher! {
    /// Focal loss with smoothing or soft targets: every class's factor from the row's LSE
    /// (`softmax_focal.wgsl`).
    Focal {
        /// The chunk's logits.
        logits: LOGITS, Read, 4;
        /// Targets.
        targets: TARGETS, Read, 4;
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// Per-row records (the loss is rewritten).
        rows: ROWS, Write, ROW_BYTES;
        /// Per-row sums (the loss is rewritten).
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// Row coefficients (the focal sums are added).
        coefficients: COEFFICIENTS, Write, COEF_BYTES;
    }
}

launcher! {
    /// The gradient from the saved row coefficients (`softmax_backward.wgsl`).
    Backward {
        /// The span's logits (read-write in place).
        logits: LOGITS, Read, 4;
        /// The span's f32 gradient (`None` in place).
        gradient: GRADIENT, Write, 4, optional;
        /// Targets.
        targets: TARGETS, Read, 4;
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// Row coefficients.
        coefficients: COEFFICIENTS, Read, COEF_BYTES;
        /// Per-row upstream values, the mean's totals, or a device upstream's block.
        scale_source: SCALE_SOURCE, Read, 4;
    }
}

launcher! {
    /// Forward and backward in one read, for rows that fit in registers
    /// (`softmax_fused.wgsl`).
    Fused {
        /// The chunk's logits (read-write in place).
        logits: LOGITS, Read, 4;
        /// The chunk's f32 gradient (`None` in place: eight storage buffers at most).
        gradient: GRADIENT, Write, 4, optional;
        /// Targets.
        targets: TARGETS, Read, 4;
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// One `GpuRow` per row.
        rows: ROWS, Write, ROW_BYTES;
        /// Sums per reduction slot (a slot per row, or per 4 rows with one invocation per row).
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// Per-row upstream values, the mean's totals, or a device upstream's block (`None`
        /// when saving).
        scale_source: SCALE_SOURCE, Read, 4, optional;
        /// Per-row sample weights.
        sample_weights: SAMPLE_WEIGHTS, Read, 4;
        /// The out-of-range-target flag (loss only: no targets pass checks them first).
        target_error: TARGET_ERROR, Write, 4, optional;
        /// One `RowCoef` per row, saved for a later backward (`Store::Save` only).
        coefficients: COEFFICIENTS, Write, COEF_BYTES, optional;
    }
}

launcher! {
    /// Before the fused kernel: index targets checked, the mean's denominators per reduction slot
    /// (`softmax_targets.wgsl`).
    Targets {
        /// Index targets, whole.
        targets: TARGETS, Read, 4;
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// Sums per reduction slot (the denominators; a slot per row, or per 4 rows).
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// The out-of-range-target flag.
        target_error: TARGET_ERROR, Write, 4;
        /// Per-row sample weights.
        sample_weights: SAMPLE_WEIGHTS, Read, 4;
    }
}

launcher! {
    /// BCE: the per-class (weight, pos_weight) pairs gathered once (`bce_classes.wgsl`).
    BceClasses {
        /// Class weights.
        class_weights: CLASS_WEIGHTS, Read, 4;
        /// `pos_weight`.
        pos_weight: POS_WEIGHT, Read, 4;
        /// The pairs.
        class_params: CLASS_PARAMS, Write, 8;
    }
}

launcher! {
    /// BCE loss and gradient of each element (`bce.wgsl`).
    Bce {
        /// The chunk's logits (read-write in place).
        logits: LOGITS, Read, 4;
        /// The chunk's f32 gradient (`None` in place).
        gradient: GRADIENT, Write, 4, optional;
        /// The chunk's targets.
        targets: TARGETS, Read, 4;
        /// Per-vec4 sums for the reduction.
        row_sums: ROW_SUMS, Write, ROW_SUM_BYTES;
        /// The chunk's per-element upstream values.
        upstream: UPSTREAM, Read, 4;
        /// The chunk's per-element losses.
        losses: ELEMENT_LOSSES, Write, 4;
        /// Per-row sample weights.
        sample_weights: SAMPLE_WEIGHTS, Read, 4;
        /// Per-class (weight, pos_weight).
        class_params: CLASS_PARAMS, Read, 8;
    }
}

launcher! {
    /// One pass of the fixed-order reduction (`reduce.wgsl`).
    Reduce {
        /// The previous pass's sums.
        input: REDUCE_IN, Read, ROW_SUM_BYTES;
        /// This pass's sums.
        output: REDUCE_OUT, Write, ROW_SUM_BYTES;
        /// The reduced loss (written by the last pass).
        loss: LOSS, Write, 4;
    }
}

launcher! {
    /// Valid and correct rows of per-row records (`count_rows.wgsl`).
    CountRows {
        /// The records (`GpuRow`s), as words.
        records: REDUCE_IN, Read, 4;
        /// The two counts.
        counts: REDUCE_OUT, Write, 4;
    }
}

/// The bandwidth probes: a source and a destination, no parameters.
pub(crate) struct Probe<'a> {
    /// Read.
    pub src: Window<'a>,
    /// Written (copy) or a sink (read).
    pub dst: Window<'a>,
}

impl<'a> Probe<'a> {
    /// The bind-group table.
    pub(crate) const LAYOUT: &'static [Binding] = &[(0, Slot::Read, 16), (1, Slot::Write, 16)];

    /// Every window at its binding.
    pub(crate) fn entries(&self) -> Vec<(u32, Window<'a>)> {
        vec![(0, self.src), (1, self.dst)]
    }
}

/// The bind-group table of `variant`: its launcher's, with the logits read-write and the f32
/// gradient gone when the gradient is written in place, the gradient gone too when there is
/// none (the fused kernel's loss-only variant, which binds the target flag instead), and vec4
/// logits 16 bytes at least.
pub(crate) fn layout(variant: &Variant) -> Vec<Binding> {
    let table = match variant.kernel {
        Kernel::SoftmaxPartials => Partials::LAYOUT,
        Kernel::SoftmaxRows => Rows::LAYOUT,
        Kernel::SoftmaxFocal => Focal::LAYOUT,
        Kernel::SoftmaxBackward => Backward::LAYOUT,
        Kernel::SoftmaxFused => Fused::LAYOUT,
        Kernel::SoftmaxTargets => Targets::LAYOUT,
        Kernel::BceClasses => BceClasses::LAYOUT,
        Kernel::Bce => Bce::LAYOUT,
        Kernel::Reduce => Reduce::LAYOUT,
        Kernel::CountRows => CountRows::LAYOUT,
        Kernel::LinearPartials => LinearPartials::LAYOUT,
        Kernel::LinearGradient => LinearGradient::LAYOUT,
        Kernel::LinearProduct => LinearProduct::LAYOUT,
        Kernel::LinearWeightGradient => LinearWeightGradient::LAYOUT,
        Kernel::LinearHiddenGradient => LinearHiddenGradient::LAYOUT,
        Kernel::LinearFocal => LinearFocal::LAYOUT,
        Kernel::LinearFocalRows => LinearFocalRows::LAYOUT,
        Kernel::LinearCompact => LinearCompact::LAYOUT,
        Kernel::ProbeRead | Kernel::ProbeCopy => Probe::LAYOUT,
    };
    let stores = matches!(
        variant.kernel,
        Kernel::SoftmaxBackward | Kernel::SoftmaxFused | Kernel::Bce
    );
    let in_place = stores && variant.store == Store::InPlace;
    let no_gradient = stores && (variant.store == Store::InPlace || variant.store.loss_only());
    let fused = variant.kernel == Kernel::SoftmaxFused;
    // The fused kernel checks targets itself only loss only (eight storage buffers at most).
    let own_check = !fused || variant.store.loss_only();
    // Saving, it writes the coefficients in place of the gradient's scales.
    let saves = fused && variant.store == Store::Save;
    table
        .iter()
        .filter(|&&(binding, _, _)| !(no_gradient && binding == GRADIENT))
        .filter(|&&(binding, _, _)| own_check || binding != TARGET_ERROR)
        .filter(|&&(binding, _, _)| {
            !fused || binding != if saves { SCALE_SOURCE } else { COEFFICIENTS }
        })
        .map(|&(binding, slot, min)| match binding {
            LOGITS if in_place => (binding, Slot::Write, min),
            LOGITS | HIDDEN | HEAD_WEIGHT if variant.load == LogitLoad::F32x4 => {
                (binding, slot, 16)
            }
            _ => (binding, slot, min),
        })
        .map(|(binding, slot, min)| match slot {
            Slot::Read if variant.writable => (binding, Slot::Write, min),
            _ => (binding, slot, min),
        })
        .collect()
}
