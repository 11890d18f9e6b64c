//! One block of BCE elements, cut into pieces of contiguous elements, each one
//! [`BinaryRun`]: the loss is element-wise, so a piece is read where it lies in either layout
//! (no gather), its per-element losses written straight into the output's column and its
//! gradient into the gradient (or over the logits).
//!
//! What changes along a piece is its coefficients. Rows of at most [`PIECE`] classes go
//! several to a piece, the class weights tiled to the piece's length once a block (and the
//! sample weights spread over their rows' elements a piece at a time); longer rows are cut
//! within the row. In the (N, C, d…) layout a class plane of at least [`PLANE_RUN`] positions
//! is a run of one class (its weights one value, the sample weights a slice); shorter planes
//! take whole samples as rows of `C·d` elements.

use super::binary::{BinaryOptions, BinaryRun, Coef, RunIo};
use super::row::RowIo;
use super::{BlockOut, Call, Columns, Data};
use crate::input::{Dtype, Element, Targets};
use crate::options::{BinaryCrossEntropy, Reduction};
use std::borrow::Cow;
use std::ops::Range;

/// Elements a piece holds, as far as whole rows allow: rows longer than this are cut within
/// the row; a sample of short (N, C, d…) planes is one piece, however long.
const PIECE: usize = 2048;

/// Positions a class plane needs to run a class at a time.
const PLANE_RUN: usize = 64;

/// What a piece's elements are multiplied by: sample weights, class weights, `pos_weight`.
struct Coefs<'a> {
    sample: Coef<'a>,
    weight: Coef<'a>,
    pos_weight: Coef<'a>,
}

impl Call<'_> {
    /// One BCE block: each piece's losses (into `columns.elements` where asked for) and
    /// gradient; returns their sum.
    pub(super) fn bce_block<T: Element>(
        &self,
        options: BinaryCrossEntropy,
        first_row: usize,
        mut src: Data<'_, T>,
        mut grad: Option<&mut [f32]>,
        in_place: bool,
        columns: Columns<'_>,
    ) -> BlockOut {
        let Targets::Dense(targets) = self.targets else {
            unreachable!("plan::binary takes dense targets only")
        };
        let classes = self.plan.classes;
        let spatial = self.plan.layout.rows_per_block();
        let len = src.get().len();
        let base = first_row * classes;
        let targets = &targets[base..base + len];
        let upstream = match self.plan.reduction {
            Reduction::None => self.upstream.map(|u| &u[base..base + len]),
            _ => None,
        };
        // With no per-element upstream, the reduction's one scale.
        let scale = self.plan.row_scales(None, 0, 1.0).0;
        let options = BinaryOptions {
            smoothing: options.label_smoothing,
            gamma: options.focal_gamma,
            alpha: options.focal_alpha,
        };
        let f32_input = T::DTYPE == Dtype::F32;
        let mut x_buf = vec![0f32; if f32_input { 0 } else { PIECE }];
        let elements = columns.elements;
        let mut piece = |range: Range<usize>, coefs: Coefs<'_>| -> f64 {
            let n = range.len();
            if x_buf.len() < n && !f32_input {
                x_buf.resize(n, 0.0);
            }
            let mut run = |io| {
                BinaryRun {
                    io,
                    t: &targets[range.clone()],
                    sample_weight: coefs.sample,
                    weight: coefs.weight,
                    pos_weight: coefs.pos_weight,
                    scale: upstream.map_or(Coef::All(scale), |u| Coef::Each(&u[range.clone()])),
                    losses: (!elements.is_empty()).then(|| &mut elements[range.clone()]),
                    options,
                }
                .run(self.level)
            };
            if in_place && grad.is_none() {
                let Data::Exclusive(d) = &mut src else {
                    unreachable!("in-place gradients come with writable logits")
                };
                if f32_input {
                    let x: &mut [f32] = bytemuck::cast_slice_mut(&mut d[range.clone()]);
                    return run(RunIo::Backward(RowIo::InPlace(x)));
                }
                let x = &mut x_buf[..n];
                T::widen(&d[range.clone()], x);
                let sum = run(RunIo::Backward(RowIo::InPlace(x)));
                T::narrow(x, &mut d[range.clone()]);
                return sum;
            }
            let x: &[f32] = if f32_input {
                bytemuck::cast_slice(&src.get()[range.clone()])
            } else {
                T::widen(&src.get()[range.clone()], &mut x_buf[..n]);
                &x_buf[..n]
            };
            match grad.as_deref_mut() {
                Some(g) => {
                    let g = &mut g[range.clone()];
                    run(RunIo::Backward(RowIo::Separate(x, g)))
                }
                None => run(RunIo::Forward(x)),
            }
        };

        let w = |c: usize| self.w.map_or(1.0, |w| w[c]);
        let pw = |c: usize| self.pos_weight.map_or(1.0, |w| w[c]);
        // Rows of `period` elements (a row, or a sample of the (N, C, d…) layout).
        let period = classes * spatial;
        let mut sum = 0f64;
        if spatial >= PLANE_RUN {
            // A class plane at a time, its weights one value.
            for n in 0..len / period {
                let positions = first_row + n * spatial;
                for c in 0..classes {
                    let at = n * period + c * spatial;
                    for j0 in (0..spatial).step_by(PIECE) {
                        let j1 = spatial.min(j0 + PIECE);
                        let sample = self
                            .sample_weights
                            .map(|s| &s[positions + j0..positions + j1]);
                        let coefs = Coefs {
                            sample: per_element(sample),
                            weight: Coef::All(w(c)),
                            pos_weight: Coef::All(pw(c)),
                        };
                        sum += piece(at + j0..at + j1, coefs);
                    }
                }
            }
        } else if spatial == 1 && period > PIECE {
            // Long rows: pieces within a row, its sample weight one value.
            for i in 0..len / period {
                for c0 in (0..period).step_by(PIECE) {
                    let c1 = period.min(c0 + PIECE);
                    let coefs = Coefs {
                        sample: Coef::All(self.sample_weights.map_or(1.0, |s| s[first_row + i])),
                        weight: per_element(self.w.map(|w| &w[c0..c1])),
                        pos_weight: per_element(self.pos_weight.map(|w| &w[c0..c1])),
                    };
                    sum += piece(i * period + c0..i * period + c1, coefs);
                }
            }
        } else {
            // Whole rows to a piece: the coefficients of `per_piece` rows, tiled.
            let per_piece = (PIECE / period).max(1);
            let tiled = |v| tiled(v, (spatial, period), per_piece);
            let (weight, pos_weight) = (tiled(self.w), tiled(self.pos_weight));
            let spread = self.sample_weights.map_or(0, |_| per_piece * period);
            let mut samples = vec![0f32; spread];
            let rows = len / period;
            for i0 in (0..rows).step_by(per_piece) {
                let i1 = rows.min(i0 + per_piece);
                let n = (i1 - i0) * period;
                if let Some(s) = self.sample_weights {
                    // Row i's sample weights over its elements (each class over its positions).
                    for (i, out) in (i0..i1).zip(samples.chunks_exact_mut(period)) {
                        let row = &s[first_row + i * spatial..first_row + (i + 1) * spatial];
                        match row {
                            [one] => out.fill(*one),
                            _ => out
                                .chunks_exact_mut(spatial)
                                .for_each(|class| class.copy_from_slice(row)),
                        }
                    }
                }
                let coefs = Coefs {
                    sample: per_element(self.sample_weights.map(|_| &samples[..n])),
                    weight: per_element(weight.as_deref().map(|v| &v[..n])),
                    pos_weight: per_element(pos_weight.as_deref().map(|v| &v[..n])),
                };
                sum += piece(i0 * period..i0 * period + n, coefs);
            }
        }
        BlockOut {
            ce: sum,
            z_loss: 0.0,
        }
    }
}

/// One coefficient per element: a slice of them, or 1 for all.
fn per_element(v: Option<&[f32]>) -> Coef<'_> {
    v.map_or(Coef::All(1.0), Coef::Each)
}

/// Per-class values `v` spread over `rows` rows of `period = C·d` elements (each class's
/// value over its `d` positions), or `v` itself where that is already so.
fn tiled(
    v: Option<&[f32]>,
    (spatial, period): (usize, usize),
    rows: usize,
) -> Option<Cow<'_, [f32]>> {
    let v = v?;
    Some(match (spatial, rows) {
        (1, 1) => Cow::Borrowed(v),
        _ => (0..rows * period)
            .map(|e| v[(e % period) / spatial])
            .collect(),
    })
}
