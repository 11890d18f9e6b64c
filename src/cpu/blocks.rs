//! One block of softmax rows: each row gathered if it must be (f16/bf16, the (N, C, d…)
//! layout), its forward, and its backward into the gradient or over the logits.

use super::row::{self, Exps, RowIo};
use super::{BlockOut, Call, Columns, Data};
use crate::input::{Dtype, Element, Layout, Targets};
use crate::math::row::sample_term;

impl Call<'_> {
    /// One softmax block: forward (and backward) of each of its rows.
    pub(super) fn softmax_block<T: Element>(
        &self,
        first_row: usize,
        mut src: Data<'_, T>,
        mut grad: Option<&mut [f32]>,
        in_place: bool,
        mut columns: Columns<'_>,
    ) -> BlockOut {
        let BlockShape {
            classes,
            layout,
            rows,
            direct,
            wants_grad,
        } = self.block_shape(src.get(), grad.is_some(), in_place);
        // Row scratch, allocated only for the rows that need a gathered copy.
        let gathers_targets = matches!(self.targets, Targets::Dense(_)) && layout != Layout::Rows;
        let gathers_logits = !direct;
        let mut x_buf = vec![0f32; if gathers_logits { classes } else { 0 }];
        let mut t_buf = vec![0f32; if gathers_targets { classes } else { 0 }];
        let mut z_buf = vec![0f32; row::CHUNK];
        // The forward keeps its exps for the backward, in the gradient row when that is
        // separate from the logits, else in `e_buf`.
        let keep_exps = wants_grad && self.backward_rescales();
        let separate_grad = direct && !in_place && grad.is_some();
        let mut e_buf = vec![
            0f32;
            if keep_exps && !separate_grad {
                classes
            } else {
                0
            }
        ];
        let mut shifts = vec![0f32; classes.div_ceil(row::CHUNK)];
        let mut out = BlockOut::default();
        for i in 0..rows {
            let row = first_row + i;
            let span = i * classes..(i + 1) * classes;
            if !direct {
                gather(src.get(), layout, i, &mut x_buf);
            }
            let t: Option<&[f32]> = match self.targets {
                Targets::Dense(t) => Some(self.dense_row(t, first_row, i, &mut t_buf)),
                _ => None,
            };
            let x: &[f32] = if direct {
                bytemuck::cast_slice(&src.get()[span.clone()])
            } else {
                &x_buf
            };

            let sample_weight = self.sample_weights.map_or(1.0, |s| s[row]);

            let exps = keep_exps.then(|| Exps {
                values: match grad.as_deref_mut() {
                    Some(g) if separate_grad => &mut g[span.clone()],
                    _ => &mut e_buf[..],
                },
                shifts: &mut shifts[..],
            });
            let mut result = self.forward(row, x, t, &mut z_buf, exps);
            // NaN rows are decided before the sample weight (0·inf must not turn a row NaN).
            let nan_row = result.loss.is_nan();
            if sample_weight != 1.0 {
                result.ce = sample_term(sample_weight as f64, result.ce);
                result.z_loss = sample_term(sample_weight as f64, result.z_loss);
                result.loss = if nan_row {
                    f32::NAN
                } else {
                    (result.ce + result.z_loss) as f32
                };
            }
            out.ce += result.ce;
            out.z_loss += result.z_loss;
            columns.put(i, &result);
            if !wants_grad {
                continue;
            }
            let (a, b) = self.plan.row_scales(self.upstream, row, sample_weight);
            let fill = if !result.valid {
                Some(0.0)
            } else if nan_row {
                Some(f32::NAN)
            } else {
                None
            };
            match (direct, &mut src, grad.as_deref_mut()) {
                (true, Data::Exclusive(d), _) if in_place => {
                    let dx: &mut [f32] = bytemuck::cast_slice_mut(&mut d[span]);
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    self.backward(row, RowIo::InPlace(dx), t, &result, (a, b), fill, kept);
                }
                (true, data, Some(g)) => {
                    let x: &[f32] = bytemuck::cast_slice(&data.get()[span.clone()]);
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    self.backward(
                        row,
                        RowIo::Separate(x, &mut g[span]),
                        t,
                        &result,
                        (a, b),
                        fill,
                        kept,
                    );
                }
                _ => {
                    let kept = keep_exps.then_some((&e_buf[..], &mut shifts[..]));
                    let io = RowIo::InPlace(&mut x_buf);
                    self.backward(row, io, t, &result, (a, b), fill, kept);
                    self.write_back(&mut src, grad.as_deref_mut(), in_place, i, &x_buf);
                }
            }
        }
        out
    }

    /// Writes a row's gradient from `dx` into the gradient block or over the logits.
    pub(super) fn write_back<T: Element>(
        &self,
        src: &mut Data<'_, T>,
        grad: Option<&mut [f32]>,
        in_place: bool,
        i: usize,
        dx: &[f32],
    ) {
        let layout = self.plan.layout;
        match (grad, src) {
            (Some(g), _) => scatter(dx, layout, i, g),
            (None, Data::Exclusive(d)) if in_place => match layout {
                Layout::Rows => T::narrow(dx, &mut d[i * dx.len()..(i + 1) * dx.len()]),
                _ => {
                    let classes = dx.len();
                    for (c, &v) in dx.iter().enumerate() {
                        d[layout.offset(i, c, classes)] = T::from_f32(v);
                    }
                }
            },
            _ => {}
        }
    }
}

/// What a block's row loop needs of its shape.
pub(super) struct BlockShape {
    pub classes: usize,
    pub layout: Layout,
    /// Rows in the block.
    pub rows: usize,
    /// Rows are read where they are (f32, row-major), not gathered.
    pub direct: bool,
    /// A gradient is written (into a buffer or over the logits).
    pub wants_grad: bool,
}

impl Call<'_> {
    /// The shape of a block of logits `src`, with a gradient buffer or not, in place or not.
    pub(super) fn block_shape<T: Element>(
        &self,
        src: &[T],
        grad: bool,
        in_place: bool,
    ) -> BlockShape {
        let (classes, layout) = (self.plan.classes, self.plan.layout);
        BlockShape {
            classes,
            layout,
            rows: src.len() / classes,
            direct: T::DTYPE == Dtype::F32 && layout == Layout::Rows,
            wants_grad: in_place || grad,
        }
    }

    /// Row `i` of the block starting at `first_row` of the dense targets `t`: a slice of them
    /// for contiguous rows, else gathered into `buf`.
    pub(super) fn dense_row<'t>(
        &self,
        t: &'t [f32],
        first_row: usize,
        i: usize,
        buf: &'t mut [f32],
    ) -> &'t [f32] {
        let (classes, layout) = (self.plan.classes, self.plan.layout);
        if layout == Layout::Rows {
            let row = first_row + i;
            &t[row * classes..(row + 1) * classes]
        } else {
            gather(&t[first_row * classes..], layout, i, buf);
            buf
        }
    }
}

/// Row `i` of a block in `layout`, widened into a contiguous f32 row.
pub(super) fn gather<T: Element>(block: &[T], layout: Layout, i: usize, row: &mut [f32]) {
    let classes = row.len();
    match layout {
        Layout::Rows => T::widen(&block[i * classes..(i + 1) * classes], row),
        Layout::ClassDim1 { .. } => {
            for (c, v) in row.iter_mut().enumerate() {
                *v = block[layout.offset(i, c, classes)].to_f32();
            }
        }
    }
}

/// A contiguous f32 row into row `i` of a block in `layout`.
pub(super) fn scatter(row: &[f32], layout: Layout, i: usize, block: &mut [f32]) {
    let classes = row.len();
    match layout {
        Layout::Rows => block[i * classes..(i + 1) * classes].copy_from_slice(row),
        Layout::ClassDim1 { .. } => {
            for (c, &v) in row.iter().enumerate() {
                block[layout.offset(i, c, classes)] = v;
            }
        }
    }
}
