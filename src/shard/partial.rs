//! The online-softmax state of one row over one shard's columns, as it crosses the wire, and
//! its merge (step 2 of the module docs, and the all-reduce form of it).

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
