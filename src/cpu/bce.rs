//! One block of BCE rows: every element's loss and gradient (`scalar::binary_row`), the
//! per-element losses written into the output's column in the logits' layout.

use super::blocks::{gather, scatter, BlockShape};
use super::{scalar, BlockOut, Call, Columns, Data};
use crate::input::{Element, Layout, Targets};
use crate::options::BinaryCrossEntropy;

impl Call<'_> {
    /// One BCE block: each row's elements (their losses into `columns.elements` where asked
    /// for), and their gradient into the gradient or over the logits.
    pub(super) fn bce_block<T: Element>(
        &self,
        options: BinaryCrossEntropy,
        first_row: usize,
        mut src: Data<'_, T>,
        mut grad: Option<&mut [f32]>,
        in_place: bool,
        columns: Columns<'_>,
    ) -> BlockOut {
        let BlockShape {
            classes,
            layout,
            rows,
            direct,
            wants_grad,
        } = self.block_shape(src.get(), grad.is_some(), in_place);
        let Targets::Dense(targets) = self.targets else {
            unreachable!("plan::binary takes dense targets only")
        };
        let mut x_buf = vec![0f32; classes];
        let mut t_buf = vec![0f32; if layout == Layout::Rows { 0 } else { classes }];
        let mut g_buf = vec![0f32; classes];
        let mut losses = vec![0f32; classes];
        let mut out = BlockOut::default();
        for i in 0..rows {
            let row = first_row + i;
            let span = i * classes..(i + 1) * classes;
            if !direct {
                gather(src.get(), layout, i, &mut x_buf);
            }
            let t = self.dense_row(targets, first_row, i, &mut t_buf);
            let x: &[f32] = if direct {
                bytemuck::cast_slice(&src.get()[span.clone()])
            } else {
                &x_buf
            };
            let sample_weight = self.sample_weights.map_or(1.0, |s| s[row]);
            let g = wants_grad.then_some(&mut g_buf[..]);
            let ce = scalar::binary_row(
                x,
                t,
                self.w,
                self.pos_weight,
                scalar::BinaryOptions {
                    smoothing: options.label_smoothing,
                    gamma: options.focal_gamma,
                    alpha: options.focal_alpha,
                    sample_weight,
                },
                &mut losses,
                g,
                |c| {
                    self.plan
                        .row_scales(self.upstream, layout.offset(row, c, classes), 1.0)
                        .0
                },
            );
            out.ce += ce;
            if !columns.elements.is_empty() {
                scatter(&losses, layout, i, columns.elements);
            }
            if wants_grad {
                x_buf.copy_from_slice(&g_buf);
                self.write_back(&mut src, grad.as_deref_mut(), in_place, i, &x_buf);
            }
        }
        out
    }
}
