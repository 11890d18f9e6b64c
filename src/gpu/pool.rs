//! Buffers reused across calls: scratch, uploads and staging, one per role, grown on demand.

use std::collections::HashMap;

/// What a pooled buffer is for: one buffer per role, reused by every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// A host-slice call's logits.
    UploadLogits,
    /// Its targets.
    UploadTargets,
    /// Its class weights.
    UploadWeights,
    /// Its BCE `pos_weight`.
    UploadPosWeight,
    /// Its sample weights.
    UploadSampleWeights,
    /// Its per-row upstream.
    UploadUpstream,
    /// A shard's combined row coefficients.
    UploadCoefficients,
    /// One `Partial` per (row, split).
    Partials,
    /// One `RowCoef` per row.
    Coefficients,
    /// Per-row sums for the reduction.
    RowSums,
    /// The reduction's intermediate passes.
    ReducePing,
    /// See `ReducePing`.
    ReducePong,
    /// The reduced totals.
    Totals,
    /// Each row's raw target logit.
    TargetLogits,
    /// Per-row records when the caller keeps none.
    RowsOut,
    /// BCE's per-class (weight, pos_weight).
    BceClassParams,
    /// A host-slice call's loss.
    Loss,
    /// A host-slice call's f32 gradient.
    Gradient,
    /// Read-back staging.
    Staging,
    /// The target-error flag of recorded calls (`Gpu::take_target_error`).
    RecordedTargetError,
    /// The flag host-slice calls clear, check and own.
    HostTargetError,
    /// Bound where an optional input is absent.
    UnusedInput,
    /// Bound where an optional output is absent.
    UnusedOutput,
    /// Bound as target logits a shard's partials pass does not write.
    UnusedTargetLogits,
    /// A linear head's hidden states (the computed rows).
    LinearHidden,
    /// Its weight.
    LinearWeight,
    /// Its bias.
    LinearBias,
    /// Its focal sums per (row, split).
    LinearFocalSums,
    /// Its `G` of one (chunk, group of rows).
    LinearBlockGradient,
    /// Its row order (ignored rows compacted).
    LinearRowOrder,
    /// Its `dh`.
    LinearHiddenGradient,
    /// Its `dW`.
    LinearWeightGradient,
    /// Its `db`.
    LinearBiasGradient,
    /// A backward's saved totals and device upstream, side by side.
    UpstreamBlock,
}

impl Role {
    /// The buffer's label in wgpu's messages and captures.
    fn label(self) -> &'static str {
        match self {
            Role::UploadLogits => "xent upload logits",
            Role::UploadTargets => "xent upload targets",
            Role::UploadWeights => "xent upload weights",
            Role::UploadPosWeight => "xent upload pos_weight",
            Role::UploadSampleWeights => "xent upload sample weights",
            Role::UploadUpstream => "xent upload upstream",
            Role::UploadCoefficients => "xent upload coefficients",
            Role::Partials => "xent partials",
            Role::Coefficients => "xent row coefficients",
            Role::RowSums => "xent row sums",
            Role::ReducePing => "xent reduce ping",
            Role::ReducePong => "xent reduce pong",
            Role::Totals => "xent totals",
            Role::TargetLogits => "xent target logits",
            Role::RowsOut => "xent rows out",
            Role::BceClassParams => "xent bce class params",
            Role::Loss => "xent loss",
            Role::Gradient => "xent gradient",
            Role::Staging => "xent staging",
            Role::RecordedTargetError => "xent target error",
            Role::HostTargetError => "xent host-call target error",
            Role::UnusedInput => "xent unused input",
            Role::UnusedOutput => "xent unused output",
            Role::UnusedTargetLogits => "xent unused target logits",
            Role::LinearHidden => "xent linear h",
            Role::LinearWeight => "xent linear W",
            Role::LinearBias => "xent linear b",
            Role::LinearFocalSums => "xent linear focal sums",
            Role::LinearBlockGradient => "xent linear G",
            Role::LinearRowOrder => "xent linear row order",
            Role::LinearHiddenGradient => "xent linear dh",
            Role::LinearWeightGradient => "xent linear dW",
            Role::LinearBiasGradient => "xent linear db",
            Role::UpstreamBlock => "xent upstream block",
        }
    }
}

/// Grow-only buffers keyed by role.
#[derive(Default)]
pub struct Pool {
    buffers: HashMap<Role, wgpu::Buffer>,
}

impl Pool {
    /// Bytes of the buffers held.
    pub(crate) fn bytes(&self) -> u64 {
        self.buffers.values().map(wgpu::Buffer::size).sum()
    }

    /// A buffer for `role` of at least `size` bytes with `usage`; reused when the last one is
    /// large enough (sizes grow to the next power of two so growth is rare).
    pub(crate) fn get(
        &mut self,
        device: &wgpu::Device,
        role: Role,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = size.max(16).next_multiple_of(16);
        if let Some(b) = self.buffers.get(&role) {
            if b.size() >= size && b.usage().contains(usage) {
                return b.clone();
            }
        }
        let size = size
            .checked_next_power_of_two()
            .unwrap_or(size)
            .min(size.max(1 << 30));
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(role.label()),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.buffers.insert(role, buffer.clone());
        buffer
    }
}
