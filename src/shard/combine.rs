//! Steps 2 and 2c of the vocabulary-parallel loss: the shards' partials merged in shard order
//! into the global loss, LSE, metrics and each row's gradient coefficients, and the focal
//! round's sums added in.

use super::{Combined, FocalPartial, FocalRound, RowFill, RowGradient, RowPartial};
use crate::error::{Error, Result};
use crate::input::Targets;
use crate::math::focal::focal_factors;
use crate::math::reduce::{loss, row_scales};
use crate::math::row::{index_ce, index_p_coefficient, log_p, sample_term, term, Finish};
use crate::options::{CrossEntropy, Reduction};
use crate::output::Metrics;

impl CrossEntropy {
    /// Step 2: merges K shards' partials (`partials[k]` has one entry per row, shards in
    /// column order) into the global loss over `classes` columns. `upstream` as in
    /// [`Request`](crate::Request).
    pub fn combine(
        &self,
        classes: usize,
        partials: &[&[RowPartial]],
        targets: Targets<'_>,
        upstream: Option<&[f32]>,
    ) -> Result<Combined> {
        self.combine_weighted(classes, partials, targets, None, upstream)
    }

    /// [`combine`](Self::combine) with per-row sample weights `s[n]` (length `rows`, finite
    /// and non-negative; SEMANTICS.md section 2c): each row's loss and gradient coefficients
    /// are multiplied by `s[n]`, and the mean divides by `Σ_valid s[n]·w[y[n]]` (the z-loss
    /// term by `Σ_valid s[n]`). The shards' partials and backward passes need nothing more:
    /// the weights ride in the combined row coefficients.
    pub fn combine_weighted(
        &self,
        classes: usize,
        partials: &[&[RowPartial]],
        targets: Targets<'_>,
        sample_weights: Option<&[f32]>,
        upstream: Option<&[f32]>,
    ) -> Result<Combined> {
        crate::plan::shard::combine(self, classes, partials, targets, sample_weights, upstream)?;
        self.combine_rows(classes, partials, targets, sample_weights, upstream, None)
    }

    /// [`combine_weighted`](Self::combine_weighted) on checked inputs, with the mean's
    /// denominators `(Σ_valid s·w[y], Σ_valid s)` given when the rows are a part of the batch
    /// (the linear head's row chunks) instead of summed from them.
    pub(crate) fn combine_rows(
        &self,
        classes: usize,
        partials: &[&[RowPartial]],
        targets: Targets<'_>,
        sample_weights: Option<&[f32]>,
        upstream: Option<&[f32]>,
        denominators: Option<(f64, f64)>,
    ) -> Result<Combined> {
        let rows = targets.len();
        let sample = |row: usize| sample_weights.map_or(1.0, |s| s[row] as f64);
        let eps = self.label_smoothing as f64;
        let lambda = self.z_loss as f64;
        let gamma = self.focal_gamma as f64;
        // Focal loss with smoothing: every class's (1 − p)^γ needs the global LSE, which the
        // shards get from this step; they sum them in a second round (`shard_focal`).
        let round = crate::plan::needs_focal_pass(self, false);
        let mut merged = Vec::with_capacity(rows);
        let (mut valid_weight, mut denominator) = (0f64, 0f64);
        for row in 0..rows {
            let m = partials
                .iter()
                .fold(RowPartial::default(), |acc, p| acc.merge(&p[row]));
            let y = targets.index(row).unwrap_or_default();
            let valid = y != self.ignore_index;
            if valid && m.has_target != 1 {
                return Err(Error::TargetOutOfRange {
                    row,
                    value: y,
                    classes,
                    ignore_index: self.ignore_index,
                });
            }
            if valid {
                valid_weight += sample(row);
                denominator += sample(row) * m.target_weight as f64;
            }
            merged.push((m, y, valid));
        }
        if let Some((weight_sum, count)) = denominators {
            (denominator, valid_weight) = (weight_sum, count);
        }
        // The scalar upstream of sum and mean (its length is checked).
        let u = match (self.reduction, upstream) {
            (Reduction::Sum | Reduction::Mean, Some(u)) => u[0] as f64,
            _ => 1.0,
        };
        let mut out = Combined::default();
        let mut metrics = Metrics::default();
        let (mut lse_out, mut losses) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let (mut ce_sum, mut z_sum) = (0f64, 0f64);
        let (mut samples, mut z_terms) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let classes_f = classes as f64;
        for (row, (m, y, valid)) in merged.into_iter().enumerate() {
            // logp in the split form (SEMANTICS.md section 1); NaN for a NaN or +inf logit or
            // a row of −inf only.
            let nan = m.nan_index != u32::MAX;
            let finish = Finish::new(m.max, m.sum_exp as f64, m.sum_ez as f64, nan);
            let (lse, finite, log_sum) = (finish.lse, finish.finite, finish.log_sum);
            let w_sum = m.weight_sum as f64;
            let logp_y = if finite {
                log_p(m.target_z, m.max, log_sum)
            } else {
                f64::NAN
            };
            let w_y = m.target_weight as f64;
            // The cross-entropy part and its coefficient of p[c] (before the scale a).
            let (mut ce, mut kce) = (0.0, 0.0);
            let mut z_term = 0.0;
            if valid {
                // A zero coefficient leaves its term out (SEMANTICS.md section 6).
                if !finite {
                    ce = f64::NAN;
                } else if round {
                    // `combine_focal` adds the focal sums of the second round.
                    ce = 0.0;
                } else if self.is_focal() {
                    // Without smoothing only p[y] is focal (see `reference::focal_factors`).
                    let (f, g) = focal_factors(logp_y, gamma);
                    ce = -term(w_y, f * logp_y);
                    kce = w_y * g;
                } else {
                    ce = index_ce(
                        (eps, classes_f),
                        (w_y, logp_y),
                        (w_sum, log_sum, m.sum_wz as f64),
                    );
                    kce = index_p_coefficient(eps, classes_f, w_y, w_sum);
                }
                if lambda > 0.0 {
                    z_term = lambda * lse * lse;
                }
            }
            let loss = if ce.is_nan() { f64::NAN } else { ce + z_term };
            let sw = sample(row);
            ce_sum += sample_term(sw, ce);
            z_sum += sample_term(sw, z_term);
            samples.push(sw);
            z_terms.push(z_term);
            losses.push(sample_term(sw, loss) as f32);
            lse_out.push(lse as f32);
            let argmax = if m.nan_index != u32::MAX {
                m.nan_index
            } else {
                m.argmax
            };
            metrics.argmax.push(argmax);
            metrics.correct.push(valid && argmax as i64 == y);
            metrics
                .target_prob
                .push(if valid { logp_y.exp() as f32 } else { 0.0 });
            metrics.entropy.push(finish.entropy as f32);
            metrics.confidence.push(finish.confidence as f32);
            metrics.valid.push(valid);
            // Only `Reduction::None` has one upstream value per row.
            let row_upstream = |row: usize| match self.reduction {
                Reduction::None => upstream.map_or(1.0, |u| u[row] as f64),
                _ => 1.0,
            };
            let (a, b) = row_scales(
                self.reduction,
                (row_upstream(row), u),
                sw,
                (denominator, valid_weight),
            );
            out.rows.push(RowGradient {
                lse: lse as f32,
                max: finish.max,
                log_sum: finish.split_log_sum,
                p_coefficient: (a * kce + b * 2.0 * lambda * lse) as f32,
                scale: a as f32,
                target_term: (a * (1.0 - eps) * w_y) as f32,
                target: if valid { y } else { -1 },
                fill: if !valid {
                    RowFill::Zero
                } else if loss.is_nan() {
                    RowFill::Nan
                } else {
                    RowFill::Compute
                },
            });
        }
        let totals = FocalRound {
            samples,
            z_terms,
            losses,
            ce_sum,
            z_sum,
            denominator,
            z_denominator: valid_weight,
        };
        out.sums = (totals.ce_sum, totals.z_sum);
        if round {
            out.focal = Some(totals);
        } else {
            out.output.loss = self.reduce(&totals);
            out.output.row_losses = Some(totals.losses);
        }
        out.output.lse = Some(lse_out);
        out.output.metrics = Some(metrics);
        Ok(out)
    }

    /// The reduced loss from the row totals (SEMANTICS.md sections 2, 2c).
    fn reduce(&self, t: &FocalRound) -> Option<f32> {
        loss(
            self.reduction,
            (t.ce_sum, t.z_sum),
            (t.denominator, t.z_denominator),
        )
        .map(|v| v as f32)
    }

    /// Focal loss with label smoothing, the end of round 2: adds the shards' [`FocalPartial`]s
    /// (`partials[k]` one per row, summed in the order given; after an all-reduce, one summed
    /// slice) into the loss, the per-row losses and the gradient coefficients of `combined`.
    pub fn combine_focal(
        &self,
        combined: &mut Combined,
        partials: &[&[FocalPartial]],
    ) -> Result<()> {
        let rows = combined.rows.len();
        if let Some(p) = partials.iter().find(|p| p.len() != rows) {
            return Err(Error::Shape {
                what: "focal partials",
                expected: rows,
                actual: p.len(),
                shape: format!("rows {rows}"),
            });
        }
        let Some(mut totals) = combined.focal.take() else {
            return Err(Error::Unsupported(
                "no focal round is pending (Combined::needs_focal_round), or it was combined \
                 already"
                    .into(),
            ));
        };
        for (row, r) in combined.rows.iter_mut().enumerate() {
            if r.fill != RowFill::Compute {
                continue;
            }
            let (ce, g_sum) = partials.iter().fold((0f64, 0f64), |(ce, g), p| {
                (ce + p[row].loss as f64, g + p[row].g_sum as f64)
            });
            let sw = totals.samples[row];
            let loss = if ce.is_nan() {
                f64::NAN
            } else {
                ce + totals.z_terms[row]
            };
            totals.ce_sum += sample_term(sw, ce);
            totals.losses[row] = sample_term(sw, loss) as f32;
            r.p_coefficient = (r.p_coefficient as f64 + r.scale as f64 * g_sum) as f32;
            if loss.is_nan() {
                r.fill = RowFill::Nan;
            }
        }
        combined.sums = (totals.ce_sum, totals.z_sum);
        combined.output.loss = self.reduce(&totals);
        combined.output.row_losses = Some(totals.losses);
        Ok(())
    }
}
