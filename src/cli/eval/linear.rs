//! `xent eval --hidden h --weight W [--bias b]`: a language-model head scored from its hidden
//! states, `cross_entropy(h·Wᵀ + b, y)`, by [`crate::linear`] on the chosen device: the
//! `N × V` logits are never held. Shapes: `h` (N, D), or (d1, …, D) with one row per leading
//! index; `W` (V, D), or (D, V) with `--weight-layout hidden-major`; `b` (V,); index targets
//! of h's leading shape; `--weights` (V,); `--sample-weights` of the targets' shape.

use super::report::Report;
use super::shapes::{check_index_targets, per_class, sample_weights, Geometry};
use super::{EvalArgs, Evaluation, InputArg, Loss, LossKind, WeightLayoutArg};
use crate::cli::files::{read_tensor, write_npy_f32, Data, Tensor};
use crate::cli::CliError;
use crate::linear::{LinearBatch, LinearCrossEntropy, LinearRequest, WeightLayout};
use crate::{Error, Matrix, Targets};
use std::time::Instant;

/// Runs `xent eval --hidden`.
pub(super) fn run(args: &EvalArgs) -> Result<(), CliError> {
    let refused = [
        (args.loss == LossKind::Bce, "--loss bce"),
        (args.soft_targets.is_some(), "--soft-targets"),
        (args.input != InputArg::Logits, "--input probabilities"),
        (
            args.grad_out.is_some(),
            "--grad-out (d loss / d logits: --hidden never forms the logits)",
        ),
    ];
    if let Some((_, flag)) = refused.iter().find(|(set, _)| *set) {
        return Err(CliError::usage(format!(
            "{flag} does not apply to --hidden"
        )));
    }
    let load_start = Instant::now();
    let (h_arg, w_arg) = (
        args.hidden.as_deref().unwrap_or_default(),
        args.weight.as_deref().unwrap_or_default(),
    );
    let hidden = float(read_tensor(h_arg)?, "hidden states")?;
    let weight = float(read_tensor(w_arg)?, "a weight")?;
    let Some((&dim, leading)) = hidden.shape.split_last() else {
        return Err(hidden.error("hidden states have shape (), a scalar; expected (N, D)"));
    };
    let (layout, dim_axis, expected) = match args.weight_layout {
        WeightLayoutArg::VocabMajor => (WeightLayout::VocabMajor, 1, format!("(V, {dim})")),
        WeightLayoutArg::HiddenMajor => (
            WeightLayout::HiddenMajor,
            0,
            format!("({dim}, V) (--weight-layout hidden-major)"),
        ),
    };
    if weight.shape.len() != 2 || weight.shape[dim_axis] != dim {
        return Err(weight.error(format!(
            "the weight has shape {} but hidden states {} need {expected}",
            weight.shape_string(),
            hidden.shape_string()
        )));
    }
    let vocab = weight.shape[1 - dim_axis];
    let bias = args
        .bias
        .as_deref()
        .map(|b| float(read_tensor(b)?, "a bias"))
        .transpose()?;
    if let Some(b) = &bias {
        if b.shape != [vocab] {
            return Err(b.error(format!(
                "the bias has shape {} but the weight has {vocab} rows; expected ({vocab},)",
                b.shape_string()
            )));
        }
    }
    let g = Geometry {
        rows: leading.iter().product(),
        classes: vocab,
        spatial: None,
        loss_shape: leading.to_vec(),
    };
    let target_arg = args.targets.as_deref().unwrap_or_default();
    let targets = read_tensor(target_arg)?;
    check_index_targets(&targets, &hidden, &g)?;
    let weight_file = args.weights.as_deref().map(read_tensor).transpose()?;
    let class_weights = match &weight_file {
        Some(w) => Some(per_class(w, &g, "weights")?),
        None => None,
    };
    let sample_file = args
        .sample_weights
        .as_deref()
        .map(read_tensor)
        .transpose()?;
    let samples = match &sample_file {
        Some(s) => Some(sample_weights(s, &hidden, &g, LossKind::Ce)?),
        None => None,
    };
    let load_seconds = load_start.elapsed().as_secs_f64();

    let target_view = match &targets.data {
        Data::I32(b) => Targets::I32(b.as_slice()),
        Data::I64(b) => Targets::I64(b.as_slice()),
        _ => unreachable!("check_index_targets"),
    };
    let (w_rows, w_cols) = (weight.shape[0], weight.shape[1]);
    let mut batch = LinearBatch::new(
        matrix(&hidden, g.rows, dim),
        matrix(&weight, w_rows, w_cols),
        target_view,
    )
    .weight_layout(layout);
    batch.bias = bias.as_ref().map(|b| matrix(b, 1, vocab));
    batch.class_weights = class_weights.as_deref();
    batch.sample_weights = samples.as_deref();
    let Loss::Softmax(options) = Loss::from_args(args) else {
        unreachable!("--loss bce is refused above")
    };
    let name = |e: Error| -> CliError {
        let file = match &e {
            Error::TargetOutOfRange { .. } => Some(target_arg),
            Error::BadWeight {
                what: "class_weights",
                ..
            } => args.weights.as_deref(),
            Error::BadWeight { .. } => {
                return CliError::usage(format!(
                    "--sample-weights {}: {e}",
                    args.sample_weights.as_deref().unwrap_or_default()
                ))
            }
            _ => None,
        };
        match (file, &e) {
            (Some(f), _) => CliError::file(f, &e),
            (None, Error::BadOption { .. } | Error::Unsupported(_)) => CliError::usage(&e),
            (None, _) => CliError::runtime(&e),
        }
    };
    let device = args.device.resolve()?;
    let request = LinearRequest::new().row_losses().metrics();
    let start = Instant::now();
    let output = LinearCrossEntropy::new(options)
        .compute(&device.backend, batch, request)
        .map_err(name)?;
    let eval = Evaluation {
        output,
        gradient: None,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(path) = &args.losses_out {
        let losses = eval.output.row_losses.as_deref().unwrap_or_default();
        write_npy_f32(path, &g.loss_shape, losses)?;
    }
    let report = Report::new(args, &g, &eval, &device.label, load_seconds);
    if args.json {
        outln!("{}", report.json())?;
    } else {
        out!("{}", report.text())?;
    }
    Ok(())
}

/// `t` when it holds floats (f32, f16, bf16; f64 converted), else an error naming `what`.
fn float(t: Tensor, what: &str) -> Result<Tensor, CliError> {
    if matches!(t.data, Data::I32(_) | Data::I64(_)) {
        return Err(t.error(format!(
            "dtype {} is not allowed for {what}: expected float32, float16, float64 or bfloat16",
            t.file_dtype
        )));
    }
    Ok(t)
}

/// `t` (float, checked by [`float`]) as a `rows × cols` matrix.
fn matrix(t: &Tensor, rows: usize, cols: usize) -> Matrix<'_> {
    match &t.data {
        Data::F32(b) => Matrix::new(b.as_slice(), rows, cols),
        Data::F16(b) => Matrix::new(b.as_slice(), rows, cols),
        Data::Bf16(b) => Matrix::new(b.as_slice(), rows, cols),
        Data::I32(_) | Data::I64(_) => unreachable!("checked by `float`"),
    }
}
