//! The shader source table, how a kernel variant's source is put together, its pipeline (with
//! the bind-group layout of its launcher), and the pipeline cache. The workgroup size lives
//! here and only here.

use super::launch::SHORT_ROWS_PER_INVOCATION;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Invocations per workgroup for every kernel (injected into each shader as `WG`).
pub const WORKGROUP_SIZE: u32 = 256;

/// Logits each invocation of the fused kernel keeps in registers (`FUSED_GROUPS` vec4s in
/// `softmax_fused.wgsl`): a row fits the fused kernel when C ≤ this × its invocations per row
/// (so up to 4096 classes with a 256-invocation workgroup per row).
pub const FUSED_VALUES_PER_INVOCATION: u32 = 16;

/// The kernels, one WGSL file each under `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Online-softmax partials per (row, split).
    SoftmaxPartials,
    /// Per-row loss, LSE, metrics, gradient coefficients.
    SoftmaxRows,
    /// Focal loss with smoothing or soft targets: a second read of each row with its LSE.
    SoftmaxFocal,
    /// Gradient from the saved LSE.
    SoftmaxBackward,
    /// Forward and backward in one read, for rows that fit in registers.
    SoftmaxFused,
    /// Before the fused kernel: index targets checked, the mean's denominators per reduction slot.
    SoftmaxTargets,
    /// Binary cross-entropy: the per-class weights gathered into one buffer.
    BceClasses,
    /// Binary cross-entropy, loss and gradient.
    Bce,
    /// Fixed-order reduction to the batch loss.
    Reduce,
    /// Valid and correct rows of per-row records (device-side accuracy).
    CountRows,
    /// A linear head's logits, tile by tile, folded into the partials of each (row, split).
    LinearPartials,
    /// A linear head's `G = dloss/dx` of one vocabulary chunk, its logits recomputed.
    LinearGradient,
    /// A linear head's plain product `h·Wᵀ + b` (the bench's ceiling).
    LinearProduct,
    /// A vocabulary chunk's rows of `dW = Gᵀ·h` and its `db`.
    LinearWeightGradient,
    /// `dh += G·W` of one vocabulary chunk.
    LinearHiddenGradient,
    /// Focal loss with smoothing on a linear head: each (row, split)'s focal sums.
    LinearFocal,
    /// Focal loss with smoothing on a linear head: each row's sums added, its loss finished.
    LinearFocalRows,
    /// A linear head's window of rows in the order its tile kernels take them, the rows that
    /// count first.
    LinearCompact,
    /// Bandwidth probe: read.
    ProbeRead,
    /// Bandwidth probe: copy.
    ProbeCopy,
}

impl Kernel {
    /// The linear head's kernels: the tile product and the loads of h and W.
    pub(crate) fn is_linear(self) -> bool {
        matches!(
            self,
            Kernel::LinearPartials
                | Kernel::LinearGradient
                | Kernel::LinearProduct
                | Kernel::LinearWeightGradient
                | Kernel::LinearHiddenGradient
                | Kernel::LinearFocal
        )
    }

    /// Whether every invocation writes its workgroup-memory slot before a barrier and reads
    /// only slots written before it (the segment and reduction trees). wgpu's zero fill of
    /// workgroup memory is then dead work, so it is turned off for these kernels: on the GL
    /// backend it is a constructor of the whole array, which Mesa's compiler on llvmpipe took
    /// about a minute over for the WG Partials of the softmax kernels (cold shader cache).
    fn fills_workgroup_memory(self) -> bool {
        matches!(
            self,
            Kernel::SoftmaxPartials
                | Kernel::SoftmaxFused
                | Kernel::SoftmaxFocal
                | Kernel::Reduce
                | Kernel::LinearPartials
                | Kernel::LinearGradient
                | Kernel::LinearProduct
                | Kernel::LinearWeightGradient
                | Kernel::LinearHiddenGradient
                | Kernel::LinearFocal
                | Kernel::LinearCompact
        )
    }

    fn source(self) -> &'static str {
        match self {
            Kernel::SoftmaxPartials => include_str!("../../shaders/softmax_partials.wgsl"),
            Kernel::SoftmaxRows => include_str!("../../shaders/softmax_rows.wgsl"),
            Kernel::SoftmaxFocal => include_str!("../../shaders/softmax_focal.wgsl"),
            Kernel::SoftmaxBackward => include_str!("../../shaders/softmax_backward.wgsl"),
            Kernel::SoftmaxFused => include_str!("../../shaders/softmax_fused.wgsl"),
            Kernel::SoftmaxTargets => include_str!("../../shaders/softmax_targets.wgsl"),
            Kernel::BceClasses => include_str!("../../shaders/bce_classes.wgsl"),
            Kernel::Bce => include_str!("../../shaders/bce.wgsl"),
            Kernel::Reduce => include_str!("../../shaders/reduce.wgsl"),
            Kernel::CountRows => include_str!("../../shaders/count_rows.wgsl"),
            Kernel::LinearPartials => include_str!("../../shaders/linear_partials.wgsl"),
            Kernel::LinearGradient => include_str!("../../shaders/linear_gradient.wgsl"),
            Kernel::LinearProduct => include_str!("../../shaders/linear_product.wgsl"),
            Kernel::LinearWeightGradient => {
                include_str!("../../shaders/linear_weight_gradient.wgsl")
            }
            Kernel::LinearHiddenGradient => {
                include_str!("../../shaders/linear_hidden_gradient.wgsl")
            }
            Kernel::LinearFocal => include_str!("../../shaders/linear_focal.wgsl"),
            Kernel::LinearFocalRows => include_str!("../../shaders/linear_focal_rows.wgsl"),
            Kernel::LinearCompact => include_str!("../../shaders/linear_compact.wgsl"),
            Kernel::ProbeRead => include_str!("../../shaders/probe_read.wgsl"),
            Kernel::ProbeCopy => include_str!("../../shaders/probe_copy.wgsl"),
        }
    }
}

/// How a kernel reads the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogitLoad {
    /// f32, one word each.
    F32,
    /// f32 viewed as vec4 (rows 16-byte aligned).
    F32x4,
    /// f16 pairs in u32 words.
    F16,
    /// bf16 pairs in u32 words.
    Bf16,
    /// f16 pairs read four values (two words) at a time: a linear head's operands whose rows
    /// are a multiple of 4 values (`LINEAR_VEC4`).
    F16x4,
    /// bf16 pairs read four values (two words) at a time, as `F16x4`.
    Bf16x4,
}

impl LogitLoad {
    /// Two-byte values (f16 or bf16).
    pub fn is_half(self) -> bool {
        matches!(
            self,
            LogitLoad::F16 | LogitLoad::Bf16 | LogitLoad::F16x4 | LogitLoad::Bf16x4
        )
    }

    /// Four values at a time (`LINEAR_VEC4` in the linear kernels).
    pub fn is_four_wide(self) -> bool {
        matches!(
            self,
            LogitLoad::F32x4 | LogitLoad::F16x4 | LogitLoad::Bf16x4
        )
    }

    /// The load of the same dtype that reads a value at a time.
    pub fn as_scalar(self) -> LogitLoad {
        match self {
            LogitLoad::F32x4 => LogitLoad::F32,
            LogitLoad::F16x4 => LogitLoad::F16,
            LogitLoad::Bf16x4 => LogitLoad::Bf16,
            load => load,
        }
    }

    /// The WGSL that binds and widens values of this load (`logits`, `load_x`, `load4`).
    fn include(self) -> &'static str {
        match self {
            LogitLoad::F32 => include_str!("../../shaders/include/logits_f32.wgsl"),
            LogitLoad::F32x4 => include_str!("../../shaders/include/logits_f32x4.wgsl"),
            LogitLoad::F16 | LogitLoad::F16x4 => {
                include_str!("../../shaders/include/logits_f16.wgsl")
            }
            LogitLoad::Bf16 | LogitLoad::Bf16x4 => {
                include_str!("../../shaders/include/logits_bf16.wgsl")
            }
        }
    }

    /// The scalar load of `dtype`.
    pub fn scalar(dtype: crate::input::Dtype) -> LogitLoad {
        match dtype {
            crate::input::Dtype::F32 => LogitLoad::F32,
            crate::input::Dtype::F16 => LogitLoad::F16,
            crate::input::Dtype::Bf16 => LogitLoad::Bf16,
        }
    }
}

/// How a kernel reads targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetLoad {
    /// i32 class indices.
    I32,
    /// i64 class indices.
    I64,
    /// Dense f32 targets in the logits' layout.
    Dense,
}

/// Where a kernel writes the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    /// Into a separate f32 buffer (binding 2).
    Separate,
    /// Over the logits, in their dtype.
    InPlace,
    /// Into a separate buffer (binding 2) in the logits' f16 or bf16, in their geometry
    /// (`elem_offset`): the in-place store's words, written to that buffer.
    SeparateHalf,
    /// Not at all: the fused kernel's loss-only forward (no gradient bound).
    None,
    /// Not at all, and each row's `RowCoef` saved for a later backward: the fused kernel's
    /// loss-only forward under autodiff (the coefficients bound in `scale_source`'s place,
    /// which only a gradient reads).
    Save,
}

/// One compiled kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The kernel.
    pub kernel: Kernel,
    /// Logit dtype and load width.
    pub load: LogitLoad,
    /// Target kind.
    pub targets: TargetLoad,
    /// Gradient destination (backward and BCE).
    pub store: Store,
    /// Use subgroup operations (softmax partials and fused only).
    pub subgroups: bool,
    /// Every storage binding declared `read_write`: for calls whose inputs share a
    /// `wgpu::Buffer` with their outputs (wgpu refuses one buffer bound read-only and
    /// writable in a dispatch; several writable bindings of it are allowed), as a framework
    /// that sub-allocates tensors in shared buffers passes them.
    pub writable: bool,
    /// A linear head's weight (and its gradient) stored `[D, V]`, the whole of it bound
    /// (`WEIGHT_T` in the linear kernels).
    pub weight_transposed: bool,
    /// The fused kernel and its targets pass with one invocation per row owning four rows
    /// (`launch::SHORT_ROWS_PER_INVOCATION`, their `ROWS_PER_INVOCATION`); else one row. A
    /// variant, not a `Params` value: four inlined copies of the fused row where one is used
    /// made llvmpipe's multi-invocation rows 2× slower.
    pub short_tiles: bool,
}

impl Store {
    /// The fused kernel's loss-only forward: no gradient, the kernel checks its targets.
    pub fn loss_only(self) -> bool {
        matches!(self, Store::None | Store::Save)
    }
}

impl Variant {
    /// `kernel` reading `load` logits and `targets`, storing out of place, without subgroups.
    pub fn new(kernel: Kernel, load: LogitLoad, targets: TargetLoad) -> Variant {
        Variant {
            kernel,
            load,
            targets,
            store: Store::Separate,
            subgroups: false,
            writable: false,
            weight_transposed: false,
            short_tiles: false,
        }
    }

    /// The same variant with the gradient stored as `store`.
    pub fn with_store(self, store: Store) -> Variant {
        Variant { store, ..self }
    }

    /// The same variant with subgroup operations on or off.
    pub fn with_subgroups(self, subgroups: bool) -> Variant {
        Variant { subgroups, ..self }
    }

    /// The same (fused or targets) variant with four rows per invocation, or one.
    pub fn with_short_tiles(self, short_tiles: bool) -> Variant {
        Variant {
            short_tiles,
            ..self
        }
    }

    /// The same variant with every storage binding writable, or not.
    pub fn with_writable(self, writable: bool) -> Variant {
        Variant { writable, ..self }
    }

    /// The same variant with the head's weight stored `[D, V]`, or `[V, D]`.
    pub fn with_weight_transposed(self, weight_transposed: bool) -> Variant {
        Variant {
            weight_transposed,
            ..self
        }
    }

    /// A variant of `kernel` with f32 loads, i32 targets, separate store, no subgroups.
    pub fn plain(kernel: Kernel) -> Variant {
        Variant {
            kernel,
            load: LogitLoad::F32,
            targets: TargetLoad::I32,
            store: Store::Separate,
            subgroups: false,
            writable: false,
            weight_transposed: false,
            short_tiles: false,
        }
    }

    /// The complete WGSL source of this variant: constants, the includes it needs, the kernel.
    pub fn source(&self) -> String {
        let mut src = super::abi::wgsl_constants(WORKGROUP_SIZE);
        let k = self.kernel;
        let stores = matches!(
            k,
            Kernel::SoftmaxBackward | Kernel::SoftmaxFused | Kernel::Bce
        );
        let softmax_like = stores
            || matches!(
                k,
                Kernel::SoftmaxPartials | Kernel::SoftmaxRows | Kernel::SoftmaxFocal
            );
        if k == Kernel::SoftmaxFused {
            src += &format!(
                "const FUSED_GROUPS: u32 = {}u;\n",
                FUSED_VALUES_PER_INVOCATION / 4
            );
            // Gradients stored as f16 / bf16 pairs in u32 words: (N, C, d…) positions pair up,
            // and contiguous rows of odd C.
            let half_words =
                self.load.is_half() && matches!(self.store, Store::InPlace | Store::SeparateHalf);
            src += &format!("const STORES_HALF_WORDS: bool = {half_words};\n");
        }
        if matches!(k, Kernel::SoftmaxFused | Kernel::SoftmaxTargets) {
            let rows = if self.short_tiles {
                SHORT_ROWS_PER_INVOCATION
            } else {
                1
            };
            src += &format!("const ROWS_PER_INVOCATION: u32 = {rows}u;\n");
        }
        if softmax_like {
            let access = if self.store == Store::InPlace && stores {
                "read_write"
            } else {
                "read"
            };
            let logits = self.load.include();
            // The rows pass reads its target logits from the partials pass, not the logits.
            if k != Kernel::SoftmaxRows {
                src += &logits.replace("ACCESS", access);
            }
            src += self.target_include();
        }
        if matches!(k, Kernel::SoftmaxTargets | Kernel::LinearCompact) {
            // Targets only: no logits bound.
            src += self.target_include();
        }
        if k.is_linear() {
            src += &self.linear_loads();
            // Operands read four values at a time (D a multiple of 4): f32 as 16-byte vec4s,
            // f16 / bf16 as two words.
            src += &format!(
                "const LINEAR_VEC4: bool = {};\nconst WEIGHT_T: bool = {};\n",
                self.load.is_four_wide(),
                self.weight_transposed
            );
            src += include_str!("../../shaders/include/linear_tile.wgsl");
        }
        if matches!(
            k,
            Kernel::LinearPartials
                | Kernel::LinearGradient
                | Kernel::LinearProduct
                | Kernel::LinearFocal
        ) {
            src += include_str!("../../shaders/include/linear_logits.wgsl");
        }
        // Every linear kernel but the plain product takes its rows in the compacted order.
        if k.is_linear() && k != Kernel::LinearProduct {
            src += include_str!("../../shaders/include/linear_order.wgsl");
        }
        if matches!(k, Kernel::SoftmaxFocal | Kernel::LinearFocalRows) {
            src += include_str!("../../shaders/include/focal_finish.wgsl");
        }
        if softmax_like
            || matches!(
                k,
                Kernel::Reduce
                    | Kernel::BceClasses
                    | Kernel::SoftmaxTargets
                    | Kernel::CountRows
                    | Kernel::LinearFocalRows
                    | Kernel::LinearCompact
            )
            || k.is_linear()
        {
            src += include_str!("../../shaders/include/softmax_common.wgsl");
            src += include_str!("../../shaders/include/rows_common.wgsl");
        }
        if matches!(
            k,
            Kernel::SoftmaxPartials | Kernel::SoftmaxFused | Kernel::LinearPartials
        ) {
            src += include_str!("../../shaders/include/softmax_forward.wgsl");
        }
        if matches!(k, Kernel::SoftmaxPartials | Kernel::SoftmaxTargets)
            || (k == Kernel::SoftmaxFused && self.store.loss_only())
        {
            src += include_str!("../../shaders/include/target_check.wgsl");
        }
        if matches!(k, Kernel::SoftmaxRows | Kernel::SoftmaxFused) {
            src += include_str!("../../shaders/include/softmax_row.wgsl");
        }
        if matches!(
            k,
            Kernel::SoftmaxBackward | Kernel::SoftmaxFused | Kernel::LinearGradient
        ) {
            src += include_str!("../../shaders/include/softmax_grad.wgsl");
        }
        if stores {
            let separate_half;
            src += match (self.store, self.load) {
                (Store::Separate, _) => include_str!("../../shaders/include/store_separate.wgsl"),
                (Store::None | Store::Save, _) => {
                    include_str!("../../shaders/include/store_none.wgsl")
                }
                (Store::InPlace, LogitLoad::F32 | LogitLoad::F32x4) => {
                    include_str!("../../shaders/include/store_in_place_f32.wgsl")
                }
                (Store::InPlace, LogitLoad::F16 | LogitLoad::F16x4) => {
                    include_str!("../../shaders/include/store_in_place_f16.wgsl")
                }
                (Store::InPlace, LogitLoad::Bf16 | LogitLoad::Bf16x4) => {
                    include_str!("../../shaders/include/store_in_place_bf16.wgsl")
                }
                (Store::SeparateHalf, load) => {
                    separate_half = self.separate_half_store(load);
                    &separate_half
                }
            };
        }
        let mut body = k.source().to_string();
        if k == Kernel::SoftmaxFused {
            // The loss-only variant returns the row's sums from `fused_row` after its finish (a
            // return at the top level of the function: uniform).
            let loss_only = "if (live && lane == 0u && has(FLAG_CHECK_TARGETS)) { flag_bad_target(global_row); }\n        return sums;";
            body = body.replace(
                "LOSS_ONLY",
                if self.store.loss_only() {
                    loss_only
                } else {
                    ""
                },
            );
            // The saving variant writes the row's coefficients where `scale_source` was bound
            // (eight storage buffers at most); the gradient code after the return still names
            // `scale_source`, so it becomes a private stand-in there.
            let scale_source =
                "@group(0) @binding(10) var<storage, read> scale_source: array<f32>;";
            let (declaration, save) = match self.store {
                Store::Save => (
                    "var<private> scale_source: array<f32, 5>;\n\
                     @group(0) @binding(8) var<storage, read_write> coefficients: array<RowCoef>;",
                    "coefficients[global_row] = r.coef;",
                ),
                _ => (scale_source, ""),
            };
            assert!(body.contains(scale_source) && body.contains("SAVE_COEF"));
            body = body
                .replace(scale_source, declaration)
                .replace("SAVE_COEF", save);
        }
        if matches!(k, Kernel::SoftmaxPartials | Kernel::SoftmaxFused) {
            if self.subgroups {
                src += include_str!("../../shaders/include/segment_subgroup.wgsl");
                body = body
                    .replace(
                        "SUBGROUP_BUILTINS",
                        "@builtin(subgroup_size) subgroup_size: u32,",
                    )
                    .replace(
                        "REDUCE_SEGMENT",
                        "st = reduce_segment(st, local, lane, subgroup_size);",
                    )
                    .replace("SUBGROUP_SIZE", "subgroup_size");
            } else {
                src += include_str!("../../shaders/include/segment_tree.wgsl");
                body = body
                    .replace("SUBGROUP_BUILTINS", "")
                    .replace("REDUCE_SEGMENT", "st = reduce_segment(st, local, lane);")
                    .replace("SUBGROUP_SIZE", "0u");
            }
        }
        let source = src + &body;
        match self.writable {
            // `read` is a prefix of `read_write`: the storage declarations are spelled
            // exactly `var<storage, read>` (the shaders' and the includes').
            true => source.replace("var<storage, read>", "var<storage, read_write>"),
            false => source,
        }
    }

    /// A linear head's loads in this variant's dtype: `load_h` from the hidden states
    /// (binding 20) and `load_w` from the head's weight (binding 21), made from the logits
    /// include of the same dtype.
    fn linear_loads(&self) -> String {
        let body: String = self
            .load
            .include()
            .lines()
            .filter(|l| !l.starts_with("const VEC4") && !l.starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        // Each kernel declares only the operands it binds.
        let operands: &[(&str, u32, &str)] = match self.kernel {
            Kernel::LinearWeightGradient => &[("hidden", 20, "load_h")],
            Kernel::LinearHiddenGradient => &[("head_weight", 21, "load_w")],
            _ => &[("hidden", 20, "load_h"), ("head_weight", 21, "load_w")],
        };
        operands
            .iter()
            .map(|(name, binding, load)| {
                body.replace("ACCESS", "read")
                    .replace("@binding(1)", &format!("@binding({binding})"))
                    .replace("logits", name)
                    .replace("load_x", load)
                    .replace("load4", &format!("{load}4"))
            })
            .collect()
    }

    /// `Store::SeparateHalf`: the in-place store of `load`'s dtype, its words written to the
    /// gradient's own buffer (binding 2) instead of the logits'.
    fn separate_half_store(&self, load: LogitLoad) -> String {
        let in_place = match load {
            LogitLoad::F16 | LogitLoad::F16x4 => {
                include_str!("../../shaders/include/store_in_place_f16.wgsl")
            }
            LogitLoad::Bf16 | LogitLoad::Bf16x4 => {
                include_str!("../../shaders/include/store_in_place_bf16.wgsl")
            }
            _ => panic!("a separate half-precision store needs f16 or bf16 logits"),
        };
        let declaration = "// The gradient's own buffer, f16 / bf16 pairs in u32 words \
                           (Store::SeparateHalf).\n\
                           @group(0) @binding(2) var<storage, read_write> grad: array<u32>;\n";
        let store = in_place.replace("logits[", "grad[");
        assert!(
            !store.contains("logits["),
            "the store writes only the gradient"
        );
        declaration.to_string() + &store
    }

    /// How this variant reads its targets (binding 3).
    fn target_include(&self) -> &'static str {
        match self.targets {
            TargetLoad::I32 => include_str!("../../shaders/include/targets_i32.wgsl"),
            TargetLoad::I64 => include_str!("../../shaders/include/targets_i64.wgsl"),
            TargetLoad::Dense => include_str!("../../shaders/include/targets_dense.wgsl"),
        }
    }

    /// The bind-group table of this variant: (binding, kind, smallest window in bytes), from
    /// its launcher (`launchers.rs`).
    pub fn bindings(&self) -> Vec<super::launchers::Binding> {
        super::launchers::layout(self)
    }

    fn label(&self) -> String {
        format!("xent {self:?}")
    }
}

/// What a binding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Uniform buffer.
    Uniform,
    /// Read-only storage buffer.
    Read,
    /// Read-write storage buffer.
    Write,
}

/// A compiled pipeline and its bind-group layout.
pub struct Pipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its only bind-group layout (group 0).
    pub layout: wgpu::BindGroupLayout,
    /// The variant it was built from.
    pub variant: Variant,
}

/// Pipelines built once per device and variant.
#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<Variant, Arc<Pipeline>>>,
}

impl PipelineCache {
    /// The pipeline for `variant`, built on first use.
    pub fn get(&self, device: &wgpu::Device, variant: Variant) -> Arc<Pipeline> {
        let mut map = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(variant)
            .or_insert_with(|| Arc::new(build(device, variant)))
            .clone()
    }
}

fn build(device: &wgpu::Device, variant: Variant) -> Pipeline {
    let label = variant.label();
    let entries: Vec<wgpu::BindGroupLayoutEntry> = variant
        .bindings()
        .into_iter()
        .map(|(binding, slot, min)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match slot {
                    Slot::Uniform => wgpu::BufferBindingType::Uniform,
                    Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Slot::Write => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: std::num::NonZeroU64::new(min),
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(variant.source().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            zero_initialize_workgroup_memory: !variant.kernel.fills_workgroup_memory(),
            ..Default::default()
        },
        cache: None,
    });
    Pipeline {
        pipeline,
        layout,
        variant,
    }
}

/// The gradient stores of the element kernels (backward, BCE) over `load`'s logits: out of
/// place in f32, in place, and for f16 / bf16 out of place in their dtype.
#[cfg(test)]
fn stores_of(load: LogitLoad) -> Vec<Store> {
    let mut stores = vec![Store::Separate, Store::InPlace];
    if load.is_half() {
        stores.push(Store::SeparateHalf);
    }
    stores
}

/// Every variant the crate can build (for validation tests).
#[cfg(test)]
pub fn all_variants() -> Vec<Variant> {
    let mut out = Vec::new();
    let loads = [
        LogitLoad::F32,
        LogitLoad::F32x4,
        LogitLoad::F16,
        LogitLoad::Bf16,
    ];
    let targets = [TargetLoad::I32, TargetLoad::I64, TargetLoad::Dense];
    for load in loads {
        for t in targets {
            for subgroups in [false, true] {
                out.push(Variant::new(Kernel::SoftmaxPartials, load, t).with_subgroups(subgroups));
            }
            out.push(Variant::new(Kernel::SoftmaxRows, load, t));
            if load != LogitLoad::F32x4 {
                out.push(Variant::new(Kernel::SoftmaxFocal, load, t));
            }
            for subgroups in [false, true] {
                for store in [
                    Store::Separate,
                    Store::InPlace,
                    Store::None,
                    Store::SeparateHalf,
                    Store::Save,
                ] {
                    // In place over f32 stores scalars: the vec4 view is read-only.
                    if (load != LogitLoad::F32x4 || store != Store::InPlace)
                        && (load.is_half() || store != Store::SeparateHalf)
                    {
                        let fused = Variant::new(Kernel::SoftmaxFused, load, t)
                            .with_store(store)
                            .with_subgroups(subgroups);
                        out.push(fused);
                        if matches!(store, Store::Separate | Store::None) {
                            out.push(fused.with_short_tiles(true));
                        }
                    }
                }
            }
            if load == LogitLoad::F32 {
                let targets = Variant::new(Kernel::SoftmaxTargets, load, t);
                out.push(targets);
                out.push(targets.with_short_tiles(true));
                if t != TargetLoad::Dense {
                    out.push(Variant::new(Kernel::LinearCompact, load, t));
                    let linear = [
                        LogitLoad::F32,
                        LogitLoad::F32x4,
                        LogitLoad::F16,
                        LogitLoad::Bf16,
                        LogitLoad::F16x4,
                        LogitLoad::Bf16x4,
                    ];
                    for load in linear {
                        // No tile kernel reads targets (the forward's come with the row
                        // order): one variant per load.
                        if t == TargetLoad::I64 {
                            for kernel in [
                                Kernel::LinearPartials,
                                Kernel::LinearGradient,
                                Kernel::LinearProduct,
                                Kernel::LinearWeightGradient,
                                Kernel::LinearHiddenGradient,
                                Kernel::LinearFocal,
                            ] {
                                out.push(Variant::new(kernel, load, t));
                                out.push(
                                    Variant::new(kernel, load, t).with_weight_transposed(true),
                                );
                            }
                        }
                    }
                }
            }
            if load == LogitLoad::F32x4 {
                // Out of place only: the vec4 view is read-only.
                out.push(Variant::new(Kernel::SoftmaxBackward, load, t));
            } else {
                for store in stores_of(load) {
                    out.push(Variant::new(Kernel::SoftmaxBackward, load, t).with_store(store));
                }
            }
        }
        if load != LogitLoad::F32x4 {
            for store in stores_of(load) {
                out.push(Variant::new(Kernel::Bce, load, TargetLoad::Dense).with_store(store));
            }
        }
    }
    out.extend(
        [
            Kernel::BceClasses,
            Kernel::Reduce,
            Kernel::CountRows,
            Kernel::ProbeRead,
            Kernel::ProbeCopy,
        ]
        .map(Variant::plain),
    );
    out.push(Variant::new(
        Kernel::LinearFocalRows,
        LogitLoad::F32,
        TargetLoad::I64,
    ));
    // Each with every storage binding writable, as calls on shared buffers take them.
    let writable: Vec<Variant> = out.iter().map(|v| v.with_writable(true)).collect();
    out.extend(writable);
    out
}
