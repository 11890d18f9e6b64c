//! The naive, unfused cross-entropy that `xent bench` measures xent against.
//!
//! This is what `nll_loss(log_softmax(x), y)` costs in a framework without fusion: each step is
//! its own pass over memory, and the full `rows × classes` log-probabilities are materialized.
//!
//! Forward, for logits `x` (`rows × classes`, row-major) and class-index targets `y` (`rows`):
//! 1. `m[n] = max_c x[n][c]` (reads the logits),
//! 2. `s[n] = Σ_c exp(x[n][c] − m[n])` (reads the logits again),
//! 3. `logp[n][c] = x[n][c] − m[n] − ln s[n]` (reads them a third time, writes `rows × classes`),
//! 4. `loss = −Σ_n logp[n][y[n]] / V` over the `V` rows whose target is not −100 (a gather).
//!
//! Backward (a fifth pass): `grad[n][c] = (exp(logp[n][c]) − [c = y[n]]) / V`, reading `logp`
//! and writing the gradient.
//!
//! The code is scalar f32 (`exp` and `ln` from libm); each pass runs over rows in parallel on
//! rayon's pool, so the comparison with xent is about passes and fusion, not thread count.
//! There are no options: no weights, smoothing, z-loss or transforms.

use crate::input::Element;
use rayon::prelude::*;

/// The ignored target value (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Reusable buffers (a framework's caching allocator would reuse them too).
#[derive(Debug, Default)]
pub struct Scratch {
    /// `rows × classes` log-probabilities.
    pub log_probs: Vec<f32>,
    /// Per-row maxima.
    max: Vec<f32>,
    /// Per-row sums of exponentials.
    sum: Vec<f32>,
}

/// Mean cross-entropy of `logits` (`rows × classes`) against `targets` (`rows`), unfused.
/// Targets must be in `[0, classes)` or −100 (ignored); all ignored gives NaN.
///
/// ```
/// use xent::cli::naive::{forward, Scratch};
/// let loss = forward(&[0.0f32; 4], 1, 4, &[2], &mut Scratch::default());
/// assert!((loss - 4f32.ln()).abs() < 1e-6);
/// ```
pub fn forward<T: Element>(
    logits: &[T],
    rows: usize,
    classes: usize,
    targets: &[i64],
    scratch: &mut Scratch,
) -> f32 {
    assert_eq!(
        logits.len(),
        rows * classes,
        "logits must be rows × classes"
    );
    assert_eq!(targets.len(), rows, "one target per row");
    scratch.max.resize(rows, 0.0);
    scratch.sum.resize(rows, 0.0);
    scratch.log_probs.resize(rows * classes, 0.0);
    let task = ROWS_PER_TASK * classes;

    // Pass 1: row maxima.
    scratch
        .max
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(logits.par_chunks(task))
        .for_each(|(max, x)| {
            for (m, row) in max.iter_mut().zip(x.chunks(classes)) {
                *m = row.iter().fold(f32::NEG_INFINITY, |a, v| a.max(v.to_f32()));
            }
        });
    // Pass 2: sums of exponentials.
    scratch
        .sum
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(scratch.max.par_chunks(ROWS_PER_TASK))
        .zip(logits.par_chunks(task))
        .for_each(|((sum, max), x)| {
            for ((s, m), row) in sum.iter_mut().zip(max).zip(x.chunks(classes)) {
                *s = row.iter().map(|v| (v.to_f32() - m).exp()).sum();
            }
        });
    // Pass 3: materialize log_softmax.
    let (max, sum) = (&scratch.max, &scratch.sum);
    scratch
        .log_probs
        .par_chunks_mut(task)
        .zip(logits.par_chunks(task))
        .enumerate()
        .for_each(|(t, (out, x))| {
            for (r, (o, row)) in out.chunks_mut(classes).zip(x.chunks(classes)).enumerate() {
                let n = t * ROWS_PER_TASK + r;
                // (x − max) − ln Σ, not x − lse (SEMANTICS.md section 1), as PyTorch's
                // log_softmax does.
                let log_sum = sum[n].ln();
                for (o, v) in o.iter_mut().zip(row) {
                    *o = (v.to_f32() - max[n]) - log_sum;
                }
            }
        });
    // Pass 4: gather and average.
    let log_probs = &scratch.log_probs;
    let (total, valid) = targets
        .par_iter()
        .enumerate()
        .filter(|(_, &y)| y != IGNORE_INDEX)
        .map(|(n, &y)| (-(log_probs[n * classes + y as usize] as f64), 1usize))
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    (total / valid as f64) as f32
}

/// [`forward`], then the gradient of the mean loss into `grad` (`rows × classes`) in a
/// separate pass over the materialized log-probabilities. Returns the loss.
pub fn forward_backward<T: Element>(
    logits: &[T],
    rows: usize,
    classes: usize,
    targets: &[i64],
    scratch: &mut Scratch,
    grad: &mut [f32],
) -> f32 {
    assert_eq!(
        grad.len(),
        rows * classes,
        "gradient must be rows × classes"
    );
    let loss = forward(logits, rows, classes, targets, scratch);
    let valid = targets.iter().filter(|&&y| y != IGNORE_INDEX).count();
    let scale = 1.0 / valid as f32;
    let task = ROWS_PER_TASK * classes;
    grad.par_chunks_mut(task)
        .zip(scratch.log_probs.par_chunks(task))
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .for_each(|((g, lp), y)| {
            for ((g, lp), &y) in g.chunks_mut(classes).zip(lp.chunks(classes)).zip(y) {
                if y == IGNORE_INDEX {
                    g.fill(0.0);
                    continue;
                }
                for (c, (g, &lp)) in g.iter_mut().zip(lp).enumerate() {
                    let onehot = if c as i64 == y { 1.0 } else { 0.0 };
                    *g = (lp.exp() - onehot) * scale;
                }
            }
        });
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form_and_the_reference() {
        // Rows: uniform (loss ln 3), and a peaked one.
        let x = [0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0];
        let y = [1i64, 2];
        let mut grad = [0.0f32; 6];
        let loss = forward_backward(&x, 2, 3, &y, &mut Scratch::default(), &mut grad);
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let expected = (3f64.ln() + (lse - 3.0)) / 2.0;
        assert!((loss as f64 - expected).abs() < 1e-6);
        // Each row of the gradient sums to 0; the target's entry is (p − 1)/2.
        assert!((grad[..3].iter().sum::<f32>()).abs() < 1e-6);
        assert!((grad[1] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn ignored_rows_do_not_count() {
        let x = [0.0f32; 8];
        let loss = forward(&x, 2, 4, &[IGNORE_INDEX, 0], &mut Scratch::default());
        assert!((loss - 4f32.ln()).abs() < 1e-6);
    }
}
