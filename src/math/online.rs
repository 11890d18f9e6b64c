//! The online-softmax state of a row, or of a piece of one, and its merge: the host's one copy
//! (Milakov & Gimelshein 2018), used by the CPU row kernel between chunks and by the
//! vocabulary-parallel merge between shards. Every sum that holds `z − max` is centred on the
//! state's own max (SEMANTICS.md section 1), so moving to a higher max re-centres it as well as
//! rescaling the exponential sums.

/// The sums of one row over the classes seen so far, centred on `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OnlineSoftmax {
    /// Max of the transformed logits `z` seen (−inf when none, or all masked).
    pub max: f32,
    /// `Σ exp(z − max)`.
    pub sum_exp: f64,
    /// `Σ exp(z − max)·(z − max)` (entropy).
    pub sum_ez: f64,
    /// `Σ t·exp(z − max)` (dense targets).
    pub sum_te: f64,
    /// `Σ w·(z − max)` (label smoothing), a class of weight 0 left out (section 6).
    pub sum_wz: f64,
    /// `Σ w`: what re-centres `sum_wz`.
    pub weight_sum: f64,
    /// `Σ w·t` (dense targets): what re-centres `sum_wtz`.
    pub sum_wt: f64,
    /// `Σ w·t·(z − max)` (dense targets), zero terms left out like `sum_wz`.
    pub sum_wtz: f64,
}

impl Default for OnlineSoftmax {
    fn default() -> Self {
        OnlineSoftmax {
            max: f32::NEG_INFINITY,
            sum_exp: 0.0,
            sum_ez: 0.0,
            sum_te: 0.0,
            sum_wz: 0.0,
            weight_sum: 0.0,
            sum_wt: 0.0,
            sum_wtz: 0.0,
        }
    }
}

impl OnlineSoftmax {
    /// This state moved to a max `to` ≥ its own: the exponential sums scaled by
    /// `exp(max − to)`; the centred sums re-centred (`+ (max − to)·Σ weight`), except while
    /// `max` is −inf, when they hold 0 or −inf, already right. `Σ e·(z − max)` is 0 where its
    /// scale is (it would be `∞·0` when `to` is +inf).
    pub fn moved_to(&self, to: f32) -> OnlineSoftmax {
        if self.max == to {
            return *self;
        }
        let offset = self.max as f64 - to as f64;
        let scale = offset.exp();
        let recentre = |sum: f64, weight: f64| {
            if self.max.is_finite() {
                sum + offset * weight
            } else {
                sum
            }
        };
        OnlineSoftmax {
            max: to,
            sum_exp: self.sum_exp * scale,
            sum_ez: if scale == 0.0 {
                0.0
            } else if self.sum_exp != 0.0 {
                recentre(self.sum_ez, self.sum_exp) * scale
            } else {
                self.sum_ez * scale
            },
            sum_te: self.sum_te * scale,
            sum_wz: recentre(self.sum_wz, self.weight_sum),
            weight_sum: self.weight_sum,
            sum_wt: self.sum_wt,
            sum_wtz: recentre(self.sum_wtz, self.sum_wt),
        }
    }

    /// Adds a state whose max is at most this one's (moved to this max first).
    pub fn absorb(&mut self, other: &OnlineSoftmax) {
        debug_assert!(other.max <= self.max || other.max.is_nan() || self.max.is_nan());
        let o = other.moved_to(self.max);
        self.sum_exp += o.sum_exp;
        self.sum_ez += o.sum_ez;
        self.sum_te += o.sum_te;
        self.sum_wz += o.sum_wz;
        self.weight_sum += o.weight_sum;
        self.sum_wt += o.sum_wt;
        self.sum_wtz += o.sum_wtz;
    }

    /// The state of two pieces of a row together: both at the larger max, summed.
    pub fn merge(&self, other: &OnlineSoftmax) -> OnlineSoftmax {
        let (high, low) = if other.max > self.max {
            (other, self)
        } else {
            (self, other)
        };
        let mut merged = *high;
        merged.absorb(low);
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::OnlineSoftmax;

    /// The state of `z` (unit weights), summed directly at its own max.
    fn direct(z: &[f32]) -> OnlineSoftmax {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = OnlineSoftmax {
            max,
            ..OnlineSoftmax::default()
        };
        for &v in z {
            let d = v as f64 - max as f64;
            s.sum_exp += d.exp();
            s.sum_ez += d.exp() * d;
            s.sum_wz += d;
            s.weight_sum += 1.0;
        }
        s
    }

    #[test]
    fn merging_pieces_gives_the_whole_row() {
        let z = [0.5f32, -3.0, 7.25, 2.0, -40.0, 7.0, 1.5];
        let whole = direct(&z);
        for cut in 0..=z.len() {
            for merged in [
                direct(&z[..cut]).merge(&direct(&z[cut..])),
                direct(&z[cut..]).merge(&direct(&z[..cut])),
            ] {
                assert_eq!(merged.max, whole.max);
                for (a, b) in [
                    (merged.sum_exp, whole.sum_exp),
                    (merged.sum_ez, whole.sum_ez),
                    (merged.sum_wz, whole.sum_wz),
                    (merged.weight_sum, whole.weight_sum),
                ] {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                        "cut {cut}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_or_masked_piece_changes_nothing() {
        let row = direct(&[1.0, 2.0, 3.0]);
        assert_eq!(row.merge(&OnlineSoftmax::default()), row);
        assert_eq!(OnlineSoftmax::default().merge(&row), row);
        // Masked classes of non-zero weight: Σ w·(z − max) is −inf, and stays so.
        let masked = OnlineSoftmax {
            sum_wz: f64::NEG_INFINITY,
            weight_sum: 2.0,
            ..OnlineSoftmax::default()
        };
        let merged = row.merge(&masked);
        assert_eq!(merged.sum_exp, row.sum_exp);
        assert_eq!(merged.sum_wz, f64::NEG_INFINITY);
    }

    #[test]
    fn a_positive_infinity_gives_no_nan_entropy_sum() {
        let row = direct(&[1.0, 2.0]);
        let inf = OnlineSoftmax {
            max: f32::INFINITY,
            sum_exp: f64::NAN,
            ..OnlineSoftmax::default()
        };
        assert_eq!(row.moved_to(f32::INFINITY).sum_ez, 0.0);
        assert_eq!(row.merge(&inf).max, f32::INFINITY);
    }
}
