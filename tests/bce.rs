//! Binary cross-entropy with logits (SEMANTICS.md section 4) on every backend of the matrix
//! (`common::backends`): every reduction, class weights and `pos_weight`, the (N, C, d…)
//! layout, f32/f16/bf16, the gradient into a buffer and in place, a per-element upstream for
//! `Reduction::None`, against the f64 reference. Focal BCE, label smoothing and sample weights
//! are in `tests/focal.rs`.

mod common;

use common::backends::backends;
use common::*;
use xent::{BinaryCrossEntropy, Dtype, Reduction, Request};

#[test]
fn bce_against_reference() {
    let (rows, classes) = (15, 41);
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
                let mut case = Case::new(13, rows, classes, hard)
                    .multi_label(4, weights)
                    .dtype(dtype);
                if let Some(s) = spatial {
                    case = case.class_dim1(s);
                }
                let upstream: Option<Vec<f32>> = (reduction == Reduction::None)
                    .then(|| (0..rows * classes).map(|i| (i % 7) as f32 * 0.25).collect());
                let reference = case.reference_bce(&options, upstream.as_deref());
                let label = format!(
                    "bce {reduction:?} weights={weights} {spatial:?} {dtype:?} [{}]",
                    path.name
                );
                for in_place in [false, true] {
                    let mut storage = case.storage();
                    let t32 = case.targets_i32();
                    let mut grad = vec![0f32; rows * classes];
                    let mut request = Request::new().row_losses();
                    request = if in_place {
                        request.gradient_in_place()
                    } else {
                        request.gradient_into(&mut grad)
                    };
                    request.upstream = upstream.as_deref();
                    let batch = case.batch(&mut storage, &t32, in_place);
                    let out = match options.compute(&path.backend, batch, request) {
                        Ok(out) => out,
                        // A small-binding device refuses what it cannot bind, with a typed error.
                        Err(xent::Error::Unsupported(_)) if path.small_bindings => continue,
                        Err(e) => panic!("{label}: {e}"),
                    };
                    if in_place {
                        grad = storage.to_f32();
                    }
                    match (out.loss, reference.loss) {
                        (Some(a), Some(r)) => assert_within(&label, &[a], &[r], tol::LOSS),
                        (None, None) => {}
                        other => panic!("{label}: {other:?}"),
                    }
                    assert_losses(
                        &label,
                        out.row_losses.as_ref().unwrap(),
                        &reference.row_losses,
                    );
                    let gradient = if in_place {
                        tol::gradient(dtype)
                    } else {
                        tol::GRADIENT
                    };
                    assert_within(
                        &format!("{label} gradient in_place={in_place}"),
                        &grad,
                        &reference.gradient,
                        gradient,
                    );
                }
            }
        }
    }
}
