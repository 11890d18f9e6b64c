//! The per-row driver of softmax cross-entropy: a row's forward through the SIMD kernel (of
//! logits, or of probability inputs in `probability`; with focal loss those take `scalar`'s
//! f64 path) and its finish in f64, its backward, and the focal passes of focal loss.

use super::probability::{ProbBackward, ProbForward};
use super::row::{Backward, Exps, ExpsIo, Forward, Rescale, RowIo, Transform};
use super::scalar::{self, ProbTarget};
use super::{focal, simd, Call, RowOutcome};
use crate::input::Targets;
use crate::math::focal::focal_factors;
use crate::math::row::{first_max, index_ce, index_p_coefficient, log_p, term, Finish};
use crate::options::InputKind;
use crate::plan::needs_focal_pass;

impl Call<'_> {
    /// Forward of one softmax row (logits or probabilities).
    pub(super) fn forward(
        &self,
        row: usize,
        x: &[f32],
        t: Option<&[f32]>,
        z_buf: &mut [f32],
        exps: Option<Exps<'_>>,
    ) -> RowOutcome {
        let opts = self.plan.softmax();
        let classes = self.plan.classes;
        let eps = opts.label_smoothing as f64;
        let c_f = classes as f64;
        let index = self.targets.index(row);
        let valid = index != Some(opts.ignore_index);
        let w = |c: usize| self.w.map_or(1.0, |w| w[c] as f64);
        let w_sum = self.plan.class_weight_sum;

        if let InputKind::Probabilities { eps: floor } = opts.input {
            let target = match (t, index) {
                (Some(t), _) => ProbTarget::Dense(t),
                (None, Some(y)) if valid => ProbTarget::Index(y as usize),
                _ => ProbTarget::Index(0),
            };
            let options = prob_options(&opts, floor, self.want_metrics);
            // Focal loss takes the f64 path (a power per value); everything else the SIMD one.
            let (r, dense_metrics) = if opts.is_focal() {
                (scalar::probability_row(x, target, options, self.w), None)
            } else {
                let out = ProbForward {
                    q: x,
                    target,
                    w: self.w,
                    options,
                }
                .run(self.level);
                (out.row, out.dense_metrics)
            };
            let (target_prob, correct) = match target {
                ProbTarget::Dense(t) => {
                    // The SIMD rows give these with the metrics; only the f64 path reads the
                    // row again for them, and only when they are asked.
                    let scan = || {
                        let p = |q: f32| (q as f64).clamp(floor as f64, 1.0);
                        let tp = t.iter().zip(x).map(|(&t, &q)| t as f64 * p(q)).sum();
                        (tp, first_max(t))
                    };
                    let (target_prob, target_max) = match (dense_metrics, self.want_metrics) {
                        (Some(m), _) => m,
                        (None, true) => scan(),
                        (None, false) => (0.0, u32::MAX),
                    };
                    (target_prob, target_max == r.argmax)
                }
                ProbTarget::Index(y) if valid => {
                    ((x[y] as f64).clamp(floor as f64, 1.0), r.argmax == y as u32)
                }
                _ => (0.0, false),
            };
            let ce = if valid { r.ce } else { 0.0 };
            return RowOutcome {
                loss: ce as f32,
                ce,
                z_loss: 0.0,
                lse: 0.0,
                max: 0.0,
                log_sum: 0.0,
                argmax: r.argmax,
                correct,
                target_prob: target_prob as f32,
                entropy: r.entropy as f32,
                confidence: r.confidence as f32,
                valid,
                p_coefficient: 0.0,
                focal_target: 0.0,
            };
        }

        let transform = Transform::of(&opts);
        let st = simd::dispatch(
            self.level,
            Forward {
                x,
                t,
                w: self.w,
                transform,
                want_wz: valid && eps > 0.0,
                want_metrics: self.want_metrics,
                z_buf,
                exps,
            },
        );
        // Every logp below is `(z − m) − ln Σ exp(z − m)` (SEMANTICS.md section 1), never
        // `z − lse`: `lse` is an output (and z-loss's), and loses `logp` below the last place
        // of a large `m`.
        let finish = Finish::new(st.sums.max, st.sums.sum_exp, st.sums.sum_ez, st.nans > 0);
        let (lse, finite, log_sum) = (finish.lse, finish.finite, finish.log_sum);
        let argmax = if st.nans > 0 {
            x.iter()
                .position(|&v| transform.scalar(v).is_nan())
                .unwrap_or(0) as u32
        } else {
            st.argmax
        };
        let mut r = RowOutcome {
            lse: lse as f32,
            max: finish.max,
            log_sum: finish.split_log_sum,
            argmax,
            entropy: finish.entropy as f32,
            confidence: finish.confidence as f32,
            valid,
            ..RowOutcome::default()
        };
        // A zero coefficient leaves its term out (SEMANTICS.md section 6), so a NaN row is
        // made NaN explicitly.
        let ce = match (t, index) {
            (Some(t), _) => {
                let sum_wt = term(1.0 - eps, st.sums.sum_wt) + eps / c_f * w_sum;
                let sum_wtz = term(1.0 - eps, st.sums.sum_wtz) + term(eps / c_f, st.sums.sum_wz);
                r.target_prob = (st.sums.sum_te / st.sums.sum_exp) as f32;
                r.correct = first_max(t) == argmax;
                r.p_coefficient = sum_wt as f32;
                sum_wt * log_sum - sum_wtz
            }
            (None, Some(y)) if valid => {
                let y = y as usize;
                // A NaN or +inf logit, or a row of −inf only, makes the row NaN (PyTorch).
                let logp_y = if finite {
                    log_p(transform.scalar(x[y]), st.sums.max, log_sum)
                } else {
                    f64::NAN
                };
                r.target_prob = logp_y.exp() as f32;
                r.correct = argmax == y as u32;
                r.p_coefficient = index_p_coefficient(eps, c_f, w(y), w_sum) as f32;
                index_ce((eps, c_f), (w(y), logp_y), (w_sum, log_sum, st.sums.sum_wz))
            }
            _ => return RowOutcome { loss: 0.0, ..r },
        };
        let ce = if !finite {
            f64::NAN
        } else if opts.is_focal() {
            self.focal_forward(row, x, t, (st.sums.max, log_sum), &mut r)
        } else {
            ce
        };
        let lambda = opts.z_loss as f64;
        r.z_loss = if lambda > 0.0 {
            lambda * lse * lse
        } else {
            0.0
        };
        r.ce = ce;
        r.loss = (ce + r.z_loss) as f32;
        if ce.is_nan() {
            r.loss = f32::NAN;
        }
        r
    }

    /// Whether the backward of this call rescales the forward's exps ([`Rescale`]) rather
    /// than taking them again: logits, and not the focal pass over the row.
    pub(super) fn backward_rescales(&self) -> bool {
        let opts = self.plan.softmax();
        opts.input == InputKind::Logits
            && !needs_focal_pass(&opts, matches!(self.targets, Targets::Dense(_)))
    }

    /// Backward of one softmax row into `io`; `fill` short-cuts ignored (0) and NaN rows.
    /// `kept`: the forward's exps (a scratch row, used when `io` is in place) and their
    /// per-chunk shifts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        row: usize,
        mut io: RowIo<'_>,
        t: Option<&[f32]>,
        r: &RowOutcome,
        (a, b): (f32, f32),
        fill: Option<f32>,
        kept: Option<(&[f32], &mut [f32])>,
    ) {
        if let Some(v) = fill {
            match &mut io {
                RowIo::InPlace(d) | RowIo::Separate(_, d) => d.fill(v),
            }
            return;
        }
        let opts = self.plan.softmax();
        let eps = opts.label_smoothing;
        let classes = self.plan.classes;
        let e = eps / classes as f32;
        let index = self.targets.index(row).map(|y| y as usize);

        if let InputKind::Probabilities { eps: floor } = opts.input {
            let target = match t {
                Some(t) => ProbTarget::Dense(t),
                None => ProbTarget::Index(index.unwrap_or(0)),
            };
            let options = prob_options(&opts, floor, false);
            let w = self.w;
            match io {
                _ if !opts.is_focal() => simd::dispatch(
                    self.level,
                    ProbBackward {
                        io,
                        target,
                        w,
                        options,
                        a,
                    },
                ),
                RowIo::InPlace(d) => {
                    let q = d.to_vec();
                    scalar::probability_backward(&q, target, options, w, a, d)
                }
                RowIo::Separate(q, d) => scalar::probability_backward(q, target, options, w, a, d),
            }
            return;
        }

        let transform = Transform::of(&opts);
        let k = a * r.p_coefficient + b * 2.0 * opts.z_loss * r.lse;
        if needs_focal_pass(&opts, t.is_some()) {
            self.focal_backward(io, t, index, r, k, a);
            return;
        }
        // Index targets: the −(1−ε)·w[y] at the target (focal: −w[y]·g[y]), added after the
        // vector pass.
        let target_fix = match (t, index) {
            (None, Some(y)) => {
                let zy = transform.scalar(match &io {
                    RowIo::InPlace(d) => d[y],
                    RowIo::Separate(x, _) => x[y],
                });
                let w_y = self.w.map_or(1.0, |w| w[y]);
                let coefficient = if opts.is_focal() {
                    r.focal_target
                } else {
                    (1.0 - eps) * w_y
                };
                Some((y, a * coefficient * transform.scalar_slope(zy)))
            }
            _ => None,
        };
        let coef_t = if t.is_some() { 1.0 - eps } else { 0.0 };
        if let Some((scratch, shifts)) = kept {
            // F = K·exp(shift − max − ln s), in f64 before rounding.
            let (max, log_sum) = (r.max as f64, r.log_sum as f64);
            for f in shifts.iter_mut() {
                *f = (k as f64 * (*f as f64 - max - log_sum).exp()) as f32;
            }
            let io = match io {
                RowIo::Separate(x, dx) => ExpsIo::InGradient { x, dx },
                RowIo::InPlace(x) => ExpsIo::InScratch { exps: scratch, x },
            };
            simd::dispatch(
                self.level,
                Rescale {
                    io,
                    t,
                    w: self.w,
                    transform,
                    factors: shifts,
                    a,
                    b: coef_t,
                    e,
                    target_fix,
                },
            );
            return;
        }
        simd::dispatch(
            self.level,
            Backward {
                io,
                t,
                w: self.w,
                transform,
                shift: r.max,
                log_sum: r.log_sum,
                k,
                a,
                b: coef_t,
                e,
                target_fix,
            },
        );
    }
}

impl Call<'_> {
    /// Focal loss (SEMANTICS.md section 2c) of one valid row whose log-sum-exp is known: the
    /// cross-entropy part, and the row's gradient coefficients in `r`.
    ///
    /// Index targets without smoothing need only `p[y]`: `ce = −w[y]·f[y]·logp[y]` and the
    /// gradient is plain cross-entropy's with `w[y]` replaced by `w[y]·g[y]`
    /// ([`focal_factors`] has the derivation). With smoothing or soft targets every
    /// class's `(1 − p[c])^γ` needs the final `lse`: one more pass over the row, which is still
    /// in cache (SIMD for a whole `γ`, scalar for a fractional one: [`focal::FocalRow`]),
    /// `ce = −Σ_c a[c]·f[c]·logp[c]` and `G = Σ_c a[c]·g[c]` (`a[c] = w[c]·t'[c]`), and the
    /// backward pass ([`Call::focal_backward`]) writes `dz[c] = G·p[c] − a[c]·g[c]`.
    fn focal_forward(
        &self,
        row: usize,
        x: &[f32],
        t: Option<&[f32]>,
        (max, log_sum): (f32, f64),
        r: &mut RowOutcome,
    ) -> f64 {
        let opts = self.plan.softmax();
        let gamma = opts.focal_gamma as f64;
        let eps = opts.label_smoothing as f64;
        let transform = Transform::of(&opts);
        let w = |c: usize| self.w.map_or(1.0, |w| w[c] as f64);
        let index = self.targets.index(row).map(|y| y as usize);
        if let (None, Some(y), true) = (t, index, eps == 0.0) {
            // The same split form as the backward's `(z − max) − log_sum`.
            let l = log_p(transform.scalar(x[y]), max, log_sum);
            let (f, g) = focal_factors(l, gamma);
            r.p_coefficient = (w(y) * g) as f32;
            r.focal_target = r.p_coefficient;
            return -term(w(y), f * l);
        }
        let target = index
            .filter(|_| t.is_none())
            .map(|y| (y, (1.0 - eps) * w(y)));
        let (loss, g_sum) = self
            .focal_row(t, (max, log_sum))
            .sums(self.level, x, target);
        r.p_coefficient = g_sum as f32;
        -loss
    }

    /// The focal passes of a row with dense targets `t` (or index targets) and log-sum-exp
    /// `max + log_sum`.
    fn focal_row<'a>(
        &'a self,
        t: Option<&'a [f32]>,
        (max, log_sum): (f32, f64),
    ) -> focal::FocalRow<'a> {
        let opts = self.plan.softmax();
        let eps = opts.label_smoothing;
        focal::FocalRow {
            t,
            w: self.w,
            transform: Transform::of(&opts),
            max,
            log_sum,
            b: if t.is_some() { 1.0 - eps } else { 0.0 },
            e: eps / self.plan.classes as f32,
            gamma: opts.focal_gamma,
        }
    }

    /// The backward pass of focal loss with smoothing or soft targets (over the row in cache;
    /// SIMD for a whole `γ`): `dz[c] = k·p[c] − a·a[c]·g[c]`, `k` the row's coefficient of `p`
    /// (scales and z-loss included), `a` the scale of the cross-entropy part.
    fn focal_backward(
        &self,
        io: RowIo<'_>,
        t: Option<&[f32]>,
        index: Option<usize>,
        r: &RowOutcome,
        k: f32,
        a: f32,
    ) {
        let eps = self.plan.softmax().label_smoothing;
        let target = index
            .filter(|_| t.is_none())
            .map(|y| (y, a * (1.0 - eps) * self.w.map_or(1.0, |w| w[y])));
        // max and log_sum as the plain backward takes them (see `row::Backward::log_sum`).
        self.focal_row(t, (r.max, r.log_sum as f64))
            .backward(self.level, io, k, a, target);
    }
}

/// A probability-input row's options (SEMANTICS.md section 2b) for clamp `floor`.
fn prob_options(options: &crate::CrossEntropy, floor: f32, metrics: bool) -> scalar::ProbOptions {
    scalar::ProbOptions {
        floor,
        smoothing: options.label_smoothing,
        gamma: options.focal_gamma,
        metrics,
    }
}
