//! Binary cross-entropy with logits (SEMANTICS.md section 4) on every backend of the matrix
//! (`common::backends`): every reduction, class weights and `pos_weight`, the (N, C, d…)
//! layout, f32/f16/bf16, the gradient into a buffer and in place, a per-element upstream for
//! `Reduction::None`, against the f64 reference. Focal BCE, label smoothing and sample weights
//! are in `tests/focal.rs`.

mod common;

use common::backends::backends;
use common::*;
use xent::{BinaryCrossEntropy, Dtype, Reduction};

#[test]
fn bce_against_reference() {
    for path in backends(4096) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for (weights, spatial, dtype) in [
                (false, None, Dtype::F32),
                (true, None, Dtype::Bf16),
                (true, Some(5), Dtype::F16),
                (true, Some(3), Dtype::F32),
            ] {
                let options = BinaryCrossEntropy::new().reduction(reduction);
                let hard = Hardness {
                    outliers: true,
                    ..Hardness::default()
                };
                let mut case = Case::new(13, 15, 41, hard)
                    .multi_label(4, weights)
                    .dtype(dtype);
                if let Some(s) = spatial {
                    case = case.class_dim1(s);
                }
                let label = format!("bce {reduction:?} weights={weights} {spatial:?} {dtype:?}");
                check_bce(&label, &path, &case, &options);
            }
        }
    }
}

/// Per-element losses (`Reduction::None`) of calls over several CPU blocks of 65 536
/// elements, each block writing its rows into the output's column in place: rows, and the
/// (N, C, d…) layout (a block of whole samples, the last one partial), each element's
/// upstream.
#[test]
fn bce_element_losses_across_blocks() {
    for path in backends(64 << 10) {
        for spatial in [None, Some(50)] {
            let mut case = Case::new(19, 3_500, 41, Hardness::default()).multi_label(6, true);
            if let Some(s) = spatial {
                case = case.class_dim1(s);
            }
            let options = BinaryCrossEntropy::new().reduction(Reduction::None);
            check_bce(&format!("bce blocks {spatial:?}"), &path, &case, &options);
        }
    }
}
