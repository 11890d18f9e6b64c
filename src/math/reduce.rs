//! The reduction (SEMANTICS.md sections 2, 3): a row's gradient scales and the batch loss from
//! the row sums, in f64.

use crate::options::Reduction;

/// The scales `(a, b)` of a row's cross-entropy and z-loss gradient terms: for `None` the
/// row's own upstream value, for sum and mean the scalar upstream, times the row's sample
/// weight `s`; the mean divides by its denominators `D` (cross-entropy) and `Z` (z-loss).
#[inline]
pub(crate) fn row_scales(
    reduction: Reduction,
    (row_upstream, scalar_upstream): (f64, f64),
    s: f64,
    (denominator, z_denominator): (f64, f64),
) -> (f64, f64) {
    match reduction {
        Reduction::None => (row_upstream * s, row_upstream * s),
        Reduction::Sum => (scalar_upstream * s, scalar_upstream * s),
        Reduction::Mean => {
            let u = scalar_upstream * s;
            (u / denominator, u / z_denominator)
        }
    }
}

/// The batch loss from the sums over rows of `s·ce` and `s·z-loss` (`None` for
/// `Reduction::None`); the mean adds the z-loss part only when there is one.
#[inline]
pub(crate) fn loss(
    reduction: Reduction,
    (ce_sum, z_sum): (f64, f64),
    (denominator, z_denominator): (f64, f64),
) -> Option<f64> {
    match reduction {
        Reduction::None => None,
        Reduction::Sum => Some(ce_sum + z_sum),
        Reduction::Mean if z_sum == 0.0 => Some(ce_sum / denominator),
        Reduction::Mean => Some(ce_sum / denominator + z_sum / z_denominator),
    }
}
