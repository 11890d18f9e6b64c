//! The online-softmax state of one row over one shard's columns, as it crosses the wire, and
//! its merge (step 2 of the module docs, and the all-reduce form of it).

use crate::math::online::OnlineSoftmax;

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
    /// This partial with the row's target: `Some((z[y], w[y]))` when the target is in the
    /// shard, else the zeros of a shard without it.
    pub(crate) fn with_target(self, target: Option<(f32, f32)>) -> RowPartial {
        let (target_z, target_weight) = target.unwrap_or((0.0, 0.0));
        RowPartial {
            target_z,
            target_weight,
            has_target: target.is_some() as u32,
            ..self
        }
    }

    /// The online-softmax state of this partial, in f64.
    fn state(&self) -> OnlineSoftmax {
        OnlineSoftmax {
            max: self.max,
            sum_exp: self.sum_exp as f64,
            sum_ez: self.sum_ez as f64,
            sum_wz: self.sum_wz as f64,
            weight_sum: self.weight_sum as f64,
            ..OnlineSoftmax::default()
        }
    }

    /// This partial with its sums from `state` (rounded to f32).
    fn with_state(self, state: OnlineSoftmax) -> RowPartial {
        RowPartial {
            max: state.max,
            sum_exp: state.sum_exp as f32,
            sum_ez: state.sum_ez as f32,
            sum_wz: state.sum_wz as f32,
            weight_sum: state.weight_sum as f32,
            ..self
        }
    }

    /// This partial with its sums moved to a max `to` ≥ its own (the all-reduce step between
    /// MAX and SUM, module docs), by the host's one online-softmax move
    /// (`OnlineSoftmax::moved_to`, in f64): the exp-sums scaled by `exp(max − to)`, the
    /// centred sums re-centred.
    pub fn moved_to(&self, to: f32) -> RowPartial {
        self.with_state(self.state().moved_to(to))
    }

    /// Merges the partials of two shards, `self` holding the lower columns, by the host's one
    /// online-softmax merge (in f64, rounded once); the first maximum and the first NaN keep
    /// the lower column on a tie.
    pub fn merge(&self, other: &RowPartial) -> RowPartial {
        RowPartial {
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
            ..self.with_state(self.state().merge(&other.state()))
        }
    }

    /// `log Σ exp(z)` of the merged row (−inf all masked, +inf with a +inf, NaN with a NaN).
    pub fn lse(&self) -> f64 {
        crate::math::row::lse(self.max, self.sum_exp as f64, self.nan_index != u32::MAX)
    }
}
