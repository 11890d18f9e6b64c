//! `xent eval`: the loss and metrics of a logits file against a targets file.
//!
//! Shapes (PyTorch's conventions):
//! - softmax cross-entropy (`--loss ce`): logits `(N, C)` with index targets `(N,)`; logits
//!   `(C,)` as one row with a target of shape `()` or `(1,)`; logits `(N, C, d1, …)` with the
//!   class dimension at 1 and targets `(N, d1, …)`, read in place. Soft targets have the
//!   logits' shape. Per-row losses have the index targets' shape.
//! - binary cross-entropy with logits (`--loss bce`): targets have the logits' shape; the last
//!   dimension is the class dimension that `--weights` and `--pos-weight` (length C) broadcast
//!   over, as PyTorch broadcasts them. Per-element losses have the logits' shape.
//! - `--sample-weights`: one float per row, in the shape of the rows: `(N,)` for `(N, C)`
//!   logits, `(N, d1, …)` (the index targets' shape) for `(N, C, d1, …)`, `()` or `(1,)` for
//!   one row of shape `(C,)`; for BCE the logits' shape without its last dimension.
//!
//! `float64` logits are converted to `float32` (the loss is computed in f32 or wider either
//! way); `float16` and `bfloat16` are read in place.

mod linear;
mod report;
mod shapes;

use super::device::DeviceChoice;
use super::files::{read_tensor, write_npy_f32, Data};
use super::CliError;
use crate::{
    Batch, BinaryCrossEntropy, CrossEntropy, Error, InputKind, Output, Reduction, Request, Targets,
};
use clap::ArgGroup;
use report::Report;
use shapes::{
    check_index_targets, geometry, logits_view, per_class, same_shape, sample_weights, Geometry,
};
use std::time::Instant;

/// Which loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LossKind {
    /// Softmax cross-entropy (`torch.nn.functional.cross_entropy`).
    #[default]
    Ce,
    /// Binary cross-entropy with logits (`binary_cross_entropy_with_logits`).
    Bce,
}

/// `--reduction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReductionArg {
    /// Weighted mean (PyTorch's default).
    #[default]
    Mean,
    /// Sum.
    Sum,
    /// No reduction: per-row (per-element for BCE) losses, written to --losses-out.
    None,
}

impl From<ReductionArg> for Reduction {
    fn from(r: ReductionArg) -> Self {
        match r {
            ReductionArg::Mean => Reduction::Mean,
            ReductionArg::Sum => Reduction::Sum,
            ReductionArg::None => Reduction::None,
        }
    }
}

/// `--input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InputArg {
    /// Unnormalized logits.
    #[default]
    Logits,
    /// Probabilities (a softmax already applied): `log(clamp(q, eps, 1))`.
    Probabilities,
}

/// `--weight-layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WeightLayoutArg {
    /// W is (V, D): PyTorch's nn.Linear.
    #[default]
    VocabMajor,
    /// W is (D, V): burn's Linear, flax's Dense kernel.
    HiddenMajor,
}

/// Arguments of `xent eval`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["targets", "soft_targets"])))]
#[command(group(ArgGroup::new("input_file").required(true).args(["logits", "hidden"])))]
pub struct EvalArgs {
    /// Logits: (N, C), (C,) for one row, or (N, C, d1, …); float32, float16, float64 (converted
    /// to float32) or bfloat16. A `.npy` file, or `FILE.safetensors:TENSOR`.
    #[arg(long, value_name = "FILE")]
    pub logits: Option<String>,
    /// Instead of --logits: a linear head's hidden states h, (N, D) or (d1, …, D) (one row per
    /// leading index), scored as cross_entropy(h·Wᵀ + b, y) without ever holding the N × V
    /// logits (`xent::linear`). Needs --weight; targets have h's leading shape.
    #[arg(long, value_name = "FILE", requires = "weight")]
    pub hidden: Option<String>,
    /// The head's weight W, (V, D) (PyTorch's nn.Linear layout; (D, V) with
    /// --weight-layout hidden-major), for --hidden.
    #[arg(long, value_name = "FILE", requires = "hidden")]
    pub weight: Option<String>,
    /// How --weight is stored: (V, D) or (D, V), read where it is either way.
    #[arg(long, value_enum, default_value_t, requires = "weight")]
    pub weight_layout: WeightLayoutArg,
    /// The head's bias b, (V,), for --hidden.
    #[arg(long, value_name = "FILE", requires = "hidden")]
    pub bias: Option<String>,
    /// Targets: class indices (int32/int64) of shape (N,), () or (N, d1, …) for `ce`; float
    /// targets in [0, 1] with the logits' shape for `bce`.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<String>,
    /// Probability targets (float32, float16, bfloat16 or float64) with the logits' shape.
    #[arg(long, value_name = "FILE")]
    pub soft_targets: Option<String>,
    /// The loss.
    #[arg(long, value_enum, default_value_t)]
    pub loss: LossKind,
    /// How per-row losses are reduced.
    #[arg(long, value_enum, default_value_t)]
    pub reduction: ReductionArg,
    /// Index target value whose rows are ignored [default: -100].
    #[arg(long, value_name = "I", allow_negative_numbers = true)]
    pub ignore_index: Option<i64>,
    /// Per-class weights (float32, float16, bfloat16 or float64) of shape (C,).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<String>,
    /// BCE's per-class positive weights (float32, float16, bfloat16 or float64) of shape (C,).
    #[arg(long, value_name = "FILE")]
    pub pos_weight: Option<String>,
    /// Label smoothing ε in [0, 1] (BCE: targets become y·(1−ε) + ε/2, as Keras).
    #[arg(
        long,
        value_name = "E",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub label_smoothing: f32,
    /// Focal loss focusing parameter γ ≥ 0 (0: plain cross-entropy). Softmax: each class's
    /// term times (1 − p)^γ, class weights acting as α; BCE: torchvision's sigmoid focal loss.
    #[arg(
        long,
        value_name = "G",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub focal_gamma: f32,
    /// BCE's focal balance α in [0, 1] (torchvision's default is 0.25; off when not given).
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub focal_alpha: Option<f32>,
    /// Per-row sample weights (float32, float16, bfloat16 or float64), one per row (N for (N, C) logits): each row's loss is
    /// multiplied by its weight; the mean divides by Σ s·w_y (soft targets: Σ s; BCE: N·C).
    #[arg(long, value_name = "FILE")]
    pub sample_weights: Option<String>,
    /// z-loss coefficient λ ≥ 0 (adds λ·lse² per row).
    #[arg(
        long,
        value_name = "L",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub z_loss: f32,
    /// Logit soft-capping S > 0: z = S·tanh(K·x / S), with K the --logit-scale (Gemma 2).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub softcap: Option<f32>,
    /// Logit scale K: z = K·x (before --softcap, when given: z = S·tanh(K·x / S)).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub logit_scale: f32,
    /// What the logits file holds.
    #[arg(long, value_enum, default_value_t)]
    pub input: InputArg,
    /// Lower clamp of probability inputs: log p = log(clamp(q, eps, 1)). The default 1e-7 is
    /// Keras's; scikit-learn's log_loss clips at the dtype's machine epsilon (2.2e-16 for
    /// float64, 1.19e-7 for float32), so rows with `q[y] < 1e-7` differ from it.
    #[arg(
        long,
        value_name = "E",
        default_value_t = 1e-7,
        allow_negative_numbers = true
    )]
    pub eps: f32,
    /// Where to run.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Write per-row (per-element for BCE) losses here, as float32 `.npy`.
    #[arg(long, value_name = "FILE")]
    pub losses_out: Option<String>,
    /// Write d loss / d logits for the chosen reduction here, as float32 `.npy` with the
    /// logits' shape (with `--reduction none`: the gradient of the per-row losses' sum).
    #[arg(long, value_name = "FILE")]
    pub grad_out: Option<String>,
    /// Print one JSON object instead of text. NaN and ±inf are the strings "NaN", "inf" and
    /// "-inf" (JSON has no literals for them); `non_finite` counts the rows (BCE: elements)
    /// whose loss is NaN or infinite and `first_non_finite` is the first (null when none).
    #[arg(long)]
    pub json: bool,
    /// Confidence bins of the expected calibration error.
    #[arg(
        long,
        value_name = "B",
        default_value_t = 15,
        allow_negative_numbers = true
    )]
    pub ece_bins: i64,
}

/// The input files that go into one call, for naming them in errors.
struct Sources<'a> {
    logits: &'a str,
    targets: &'a str,
    weights: Option<&'a str>,
    pos_weight: Option<&'a str>,
    sample_weights: Option<&'a str>,
}

/// Turns a library error into a one-line CLI error naming the file at fault.
fn name_file(e: Error, s: &Sources) -> CliError {
    let file = match &e {
        Error::TargetOutOfRange { .. } => Some(s.targets),
        Error::BadValue { what, .. } if what.contains("target") => Some(s.targets),
        Error::BadValue { .. } | Error::NoClasses | Error::Overflow { .. } => Some(s.logits),
        Error::BadWeight { what, .. } | Error::Shape { what, .. } => match *what {
            "class_weights" => s.weights,
            "pos_weight" => s.pos_weight,
            "targets" => Some(s.targets),
            "logits" => Some(s.logits),
            _ => None,
        },
        _ => None,
    };
    let sample_weights = matches!(
        &e,
        Error::BadWeight {
            what: "sample_weights",
            ..
        } | Error::Shape {
            what: "sample_weights",
            ..
        }
    );
    match (file, &e) {
        (None, _) if sample_weights => CliError::usage(format!(
            "--sample-weights {}: {e}",
            s.sample_weights.unwrap_or_default()
        )),
        (Some(f), _) => CliError::file(f, &e),
        (
            None,
            Error::BadOption {
                option, value, why, ..
            },
        ) => CliError::usage(format!(
            "--{} {value} is invalid: {why}",
            option.replace('_', "-")
        )),
        (None, Error::Unsupported(_)) => CliError::usage(&e),
        (None, _) => CliError::runtime(&e),
    }
}

/// What one evaluation produced.
struct Evaluation {
    output: Output,
    gradient: Option<Vec<f32>>,
    seconds: f64,
}

/// Runs `xent eval`.
pub fn run(args: &EvalArgs) -> Result<(), CliError> {
    check_options(args)?;
    let Some(logits_arg) = &args.logits else {
        return linear::run(args);
    };
    let load_start = Instant::now();
    let logits = read_tensor(logits_arg)?;
    if matches!(logits.data, Data::I32(_) | Data::I64(_)) {
        return Err(logits.error(format!(
            "dtype {} is not allowed for logits: expected float32, float16, float64 or bfloat16",
            logits.file_dtype
        )));
    }
    let g = geometry(&logits, args.loss)?;
    let (target_arg, soft) = match (&args.targets, &args.soft_targets) {
        (Some(t), _) => (t.as_str(), false),
        (None, Some(t)) => (t.as_str(), true),
        (None, None) => unreachable!("clap requires one"),
    };
    let targets = read_tensor(target_arg)?;
    let dense = soft || args.loss == LossKind::Bce;
    let dense_targets = if dense {
        let what = if soft { "soft targets" } else { "BCE targets" };
        same_shape(&targets, &logits, what)?;
        Some(targets.to_f32(what)?)
    } else {
        check_index_targets(&targets, &logits, &g)?;
        None
    };
    let weight_file = args.weights.as_deref().map(read_tensor).transpose()?;
    let weights = match &weight_file {
        Some(w) => Some(per_class(w, &g, "weights")?),
        None => None,
    };
    let pos_weight_file = args.pos_weight.as_deref().map(read_tensor).transpose()?;
    let pos_weight = match &pos_weight_file {
        Some(w) => Some(per_class(w, &g, "pos-weight")?),
        None => None,
    };
    let sample_weight_file = args
        .sample_weights
        .as_deref()
        .map(read_tensor)
        .transpose()?;
    let sample_weight_values = match &sample_weight_file {
        Some(s) => Some(sample_weights(s, &logits, &g, args.loss)?),
        None => None,
    };
    let load_seconds = load_start.elapsed().as_secs_f64();

    let target_view = match (&dense_targets, &targets.data) {
        (Some(d), _) => Targets::Dense(d),
        (None, Data::I32(b)) => Targets::I32(b.as_slice()),
        (None, Data::I64(b)) => Targets::I64(b.as_slice()),
        (None, _) => unreachable!("checked above"),
    };
    let mut batch = Batch::new(logits_view(&logits, &g), target_view);
    if let Some(w) = &weights {
        batch = batch.class_weights(w);
    }
    if let Some(w) = &pos_weight {
        batch = batch.pos_weight(w);
    }
    if let Some(s) = &sample_weight_values {
        batch = batch.sample_weights(s);
    }
    let sources = Sources {
        logits: logits_arg,
        targets: target_arg,
        weights: args.weights.as_deref(),
        pos_weight: args.pos_weight.as_deref(),
        sample_weights: args.sample_weights.as_deref(),
    };
    // Every check of the data (target ranges, values, weights) runs before a device is opened,
    // so a bad file is reported at once, and alone.
    let loss = Loss::from_args(args);
    loss.check(&batch).map_err(|e| name_file(e, &sources))?;
    let device = args.device.resolve()?;
    let eval =
        evaluate(args, &loss, &device.backend, batch, &g).map_err(|e| name_file(e, &sources))?;

    if let Some(path) = &args.losses_out {
        let losses = eval.output.row_losses.as_deref().unwrap_or_default();
        write_npy_f32(path, &g.loss_shape, losses)?;
    }
    if let (Some(path), Some(grad)) = (&args.grad_out, &eval.gradient) {
        write_npy_f32(path, &logits.shape, grad)?;
    }
    let report = Report::new(args, &g, &eval, &device.label, load_seconds);
    if args.json {
        outln!("{}", report.json())?;
    } else {
        out!("{}", report.text())?;
    }
    Ok(())
}

fn check_options(args: &EvalArgs) -> Result<(), CliError> {
    if args.loss == LossKind::Bce {
        let unused = [
            (args.z_loss != 0.0, "--z-loss"),
            (args.softcap.is_some(), "--softcap"),
            (args.logit_scale != 1.0, "--logit-scale"),
            (args.input != InputArg::Logits, "--input"),
            (args.ignore_index.is_some(), "--ignore-index"),
        ];
        if let Some((_, flag)) = unused.iter().find(|(set, _)| *set) {
            return Err(CliError::usage(format!(
                "{flag} does not apply to --loss bce"
            )));
        }
    } else if args.pos_weight.is_some() {
        return Err(CliError::usage("--pos-weight applies to --loss bce only"));
    } else if args.focal_alpha.is_some() {
        return Err(CliError::usage(
            "--focal-alpha applies to --loss bce only (softmax focal loss takes --weights as α)",
        ));
    }
    if args.soft_targets.is_some() && args.ignore_index.is_some() {
        return Err(CliError::usage(
            "--ignore-index does not apply to --soft-targets",
        ));
    }
    if args.reduction == ReductionArg::None && args.losses_out.is_none() {
        // Its only result is the per-row losses; the gradient of `none` is that of `sum`.
        return Err(CliError::usage(
            "--reduction none gives one loss per row: name their file with --losses-out \
             (for the gradient alone, --reduction sum gives the same one)",
        ));
    }
    if args.ece_bins < 1 {
        return Err(CliError::usage(format!(
            "--ece-bins {} is invalid: must be at least 1",
            args.ece_bins
        )));
    }
    Ok(())
}

/// The loss a command line asks for, options checked by [`Loss::check`].
enum Loss {
    Softmax(CrossEntropy),
    Binary(BinaryCrossEntropy),
}

impl Loss {
    fn from_args(args: &EvalArgs) -> Loss {
        match args.loss {
            LossKind::Ce => {
                let mut options = CrossEntropy::new()
                    .reduction(args.reduction.into())
                    .ignore_index(args.ignore_index.unwrap_or(-100))
                    .label_smoothing(args.label_smoothing)
                    .z_loss(args.z_loss)
                    .logit_scale(args.logit_scale)
                    .focal_gamma(args.focal_gamma);
                if let Some(cap) = args.softcap {
                    options = options.softcap(cap);
                }
                if args.input == InputArg::Probabilities {
                    options = options.input(InputKind::Probabilities { eps: args.eps });
                }
                Loss::Softmax(options)
            }
            LossKind::Bce => {
                let mut options = BinaryCrossEntropy::new()
                    .reduction(args.reduction.into())
                    .label_smoothing(args.label_smoothing)
                    .focal_gamma(args.focal_gamma);
                options.focal_alpha = args.focal_alpha;
                Loss::Binary(options)
            }
        }
    }

    /// The library's own checks of options and data ([`plan`](crate::plan)), on the host.
    fn check(&self, batch: &Batch<'_>) -> Result<(), Error> {
        let request = Request::new();
        match self {
            Loss::Softmax(o) => crate::plan::softmax(o, batch, &request).map(drop),
            Loss::Binary(o) => crate::plan::binary(o, batch, &request).map(drop),
        }
    }
}

fn evaluate(
    args: &EvalArgs,
    loss: &Loss,
    backend: &crate::Backend,
    batch: Batch<'_>,
    g: &Geometry,
) -> Result<Evaluation, Error> {
    let mut gradient = args
        .grad_out
        .as_ref()
        .map(|_| vec![0.0f32; g.rows * g.classes]);
    // Per-row losses always: the report names the first non-finite row.
    let mut request = Request::new().row_losses();
    if let Some(grad) = gradient.as_deref_mut() {
        request = request.gradient_into(grad);
    }
    let start = Instant::now();
    let output = match loss {
        Loss::Softmax(options) => options.compute(backend, batch, request.metrics())?,
        Loss::Binary(options) => options.compute(backend, batch, request)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    Ok(Evaluation {
        output,
        gradient,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::super::files::{Data, Tensor};
    use super::*;

    fn tensor(shape: &[usize]) -> Tensor {
        Tensor {
            source: "x.npy".into(),
            shape: shape.to_vec(),
            file_dtype: "float32".into(),
            data: Data::F32(super::super::files::Buf::Owned(vec![
                0.0;
                shape.iter().product()
            ])),
        }
    }

    #[test]
    fn shapes_follow_pytorch() {
        let g = geometry(&tensor(&[7]), LossKind::Ce).unwrap();
        assert_eq!((g.rows, g.classes, g.spatial), (1, 7, None));
        assert!(g.loss_shape.is_empty());
        let g = geometry(&tensor(&[2, 5, 3, 4]), LossKind::Ce).unwrap();
        assert_eq!((g.rows, g.classes, g.spatial), (24, 5, Some(12)));
        assert_eq!(g.loss_shape, [2, 3, 4]);
        let g = geometry(&tensor(&[2, 3, 4]), LossKind::Bce).unwrap();
        assert_eq!((g.rows, g.classes), (6, 4));
        assert!(geometry(&tensor(&[]), LossKind::Ce).is_err());
        assert!(geometry(&tensor(&[3, 0]), LossKind::Ce).is_err());
    }
}
