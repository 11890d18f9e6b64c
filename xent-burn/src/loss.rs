//! The loss functions on burn tensors of any rank, with the class dimension where PyTorch
//! puts it: logits `[N, C]` with targets `[N]`, or `[N, C, d1, …]` with targets
//! `[N, d1, …]` (soft targets: the logits' shape).

use burn::tensor::{DType, Int, Tensor};
use xent::{BinaryCrossEntropy, CrossEntropy, Layout};

use crate::ops::{
    self, BinaryCall, BinaryGiven, Call, Given, LinearCall, LinearGiven, Targets, Wanted,
    XentBackend,
};
use crate::Error;
use burn::backend::Dispatch;

/// A loss and the flag of its out-of-range class indices.
#[derive(Debug, Clone)]
pub struct Loss {
    /// `[1]` for sum and mean; `[rows]` for none (rows: `N·d1·…`, in the targets' order).
    pub loss: Tensor<1>,
    /// `[1]` u32 on the logits' device: 0, or `u32::MAX − row` of the lowest row whose class
    /// index is outside `[0, C)` and isn't `ignore_index` (that row counts as ignored). Read it
    /// when convenient ([`Loss::check`] does, and blocks); copying it out every K steps
    /// keeps a trainer from ever waiting on the device.
    pub target_error: Tensor<1, Int>,
    targets: Option<Tensor<1, Int>>,
    classes: usize,
    ignore_index: i64,
}

impl Loss {
    /// Reads the flag (waits for the device): `Err(TargetOutOfRange)` naming the lowest
    /// row whose class index was out of range, and its value.
    pub fn check(&self) -> Result<(), Error> {
        let flag: Vec<u32> = self
            .target_error
            .clone()
            .into_data()
            .convert::<u32>()
            .try_into_vec()
            .map_err(|e| Error::Read(format!("{e:?}")))?;
        let Some(row) = xent::gpu::target_error_row(flag[0]) else {
            return Ok(());
        };
        let value = match &self.targets {
            Some(targets) => targets
                .clone()
                .slice(row..row + 1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| Error::Read(format!("{e:?}")))?[0],
            None => 0,
        };
        Err(xent::Error::TargetOutOfRange {
            row,
            value,
            classes: self.classes,
            ignore_index: self.ignore_index,
        }
        .into())
    }
}

/// Per-class and per-row weights of a softmax loss, as PyTorch's `weight` (`[C]`) and a
/// per-row sample weight (one per row, `N·d1·…` values in the targets' order; not in
/// PyTorch: SEMANTICS.md section 2c). Finite and non-negative; they are not checked on the device.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    /// `[C]`, f32.
    pub class: Option<Tensor<1>>,
    /// One per row (`N·d1·…` values in the targets' order), f32.
    pub sample: Option<Tensor<1>>,
}

/// Softmax cross-entropy of `logits` against class indices `targets`, with xent's options
/// (reduction, `ignore_index`, label smoothing, z-loss, soft-capping, logit scale, focal γ).
///
/// - Shapes: logits `[N, C]` and targets `[N]`, or logits `[N, C, d1, …]` and targets
///   `[N, d1, …]`. Logits f32, f16 or bf16; targets of any integer dtype.
/// - The loss is `[1]` (sum, mean) or `[N·d1·…]` (none), f32. Its gradient flows to the logits
///   under autodiff, in their dtype.
/// - Errors: shapes that don't match, logits of another dtype, a device xent can't run on
///   ([`Error::UnsupportedBackend`], [`Error::Unregistered`]), options out of their domain.
///
/// # Panics
/// Where the device refuses what the checks here can't see: a call past its binding limits
/// (class weights longer than a binding; with the class dimension at 1, rows too long for
/// one), or out of memory. Weights are not checked on the device; on the CPU path a negative
/// or non-finite weight panics (SEMANTICS.md section 7).
///
/// Formulas: SEMANTICS.md sections 1, 2 and 2c (PyTorch's `cross_entropy`, plus z-loss,
/// soft-capping and focal loss).
pub fn cross_entropy<const D: usize, const T: usize>(
    logits: Tensor<D>,
    targets: Tensor<T, Int>,
    options: &CrossEntropy,
) -> Result<Loss, Error> {
    cross_entropy_weighted(logits, targets, options, &Weights::default())
}

/// [`cross_entropy`] with class and sample weights.
pub fn cross_entropy_weighted<const D: usize, const T: usize>(
    logits: Tensor<D>,
    targets: Tensor<T, Int>,
    options: &CrossEntropy,
    weights: &Weights,
) -> Result<Loss, Error> {
    let dims = logits.dims();
    let target_dims = targets.dims();
    let expected: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|&(axis, _)| axis != 1)
        .map(|(_, &d)| d)
        .collect();
    if D < 2 || target_dims[..] != expected[..] {
        return Err(xent::Error::Shape {
            what: "targets",
            expected: expected.iter().product(),
            actual: target_dims.iter().product(),
            shape: format!("logits {dims:?} need targets {expected:?}, got {target_dims:?}"),
        }
        .into());
    }
    let call = call(&logits, options)?;
    let rows = call.rows;
    let targets = targets.reshape([rows]);
    let targets = match targets.dtype() {
        DType::I32 | DType::I64 => targets,
        _ => targets.cast(DType::I64),
    };
    let given = given(
        Targets::Index(targets.clone().into_dispatch()),
        weights,
        &call,
    )?;
    let (loss, flag) = Dispatch::xent_loss(logits.into_dispatch(), given, call);
    Ok(Loss {
        loss: Tensor::from_dispatch(loss),
        target_error: Tensor::from_dispatch(flag),
        targets: Some(targets),
        classes: call.classes,
        ignore_index: options.ignore_index,
    })
}

/// Softmax cross-entropy against soft targets: a distribution over the classes per row, the
/// logits' shape, f32 (each row non-negative; SEMANTICS.md section 3). The mean divides by
/// the rows `N·d1·…`; `ignore_index` does not apply.
pub fn cross_entropy_soft<const D: usize>(
    logits: Tensor<D>,
    targets: Tensor<D>,
    options: &CrossEntropy,
    weights: &Weights,
) -> Result<Loss, Error> {
    if D < 2 || logits.dims() != targets.dims() {
        return Err(xent::Error::Shape {
            what: "targets",
            expected: logits.dims().iter().product(),
            actual: targets.dims().iter().product(),
            shape: format!(
                "soft targets take the logits' shape {:?}, got {:?}",
                logits.dims(),
                targets.dims()
            ),
        }
        .into());
    }
    let call = call(&logits, options)?;
    let targets = targets.cast(DType::F32);
    let given = given(Targets::Dense(targets.into_dispatch()), weights, &call)?;
    let (loss, flag) = Dispatch::xent_loss(logits.into_dispatch(), given, call);
    Ok(Loss {
        loss: Tensor::from_dispatch(loss),
        target_error: Tensor::from_dispatch(flag),
        targets: None,
        classes: call.classes,
        ignore_index: options.ignore_index,
    })
}

/// Binary cross-entropy's weights, each f32 and non-negative (not checked on the device):
/// PyTorch's `weight` and `pos_weight` per class (the last dimension), and a per-row sample
/// weight scaling every element of its row (not in PyTorch: SEMANTICS.md section 4).
/// Targets and weights are not checked on the device; on the CPU path a value out of its
/// domain panics.
#[derive(Debug, Clone, Default)]
pub struct BinaryWeights {
    /// `[C]`.
    pub class: Option<Tensor<1>>,
    /// `[C]`.
    pub pos_weight: Option<Tensor<1>>,
    /// One per row: every index but the last (`N·…` values in order).
    pub sample: Option<Tensor<1>>,
}

/// Binary cross-entropy with logits (PyTorch's `binary_cross_entropy_with_logits`, with
/// xent's label smoothing and sigmoid focal loss): every element an independent two-class
/// problem. The classes are the last dimension (where PyTorch broadcasts `weight` and
/// `pos_weight`); every other index is a row.
///
/// - Shapes: logits and targets alike, any rank ≥ 1; targets in `[0, 1]`, any float dtype.
///   Logits f32, f16 or bf16.
/// - The loss is `[1]` (sum; mean over every element) or one per element in the logits' order
///   (none), f32. Under autodiff its gradient flows to the logits, in their dtype: the
///   backward recomputes it from the logits and targets in one pass, with burn's upstream read
///   on the device.
/// - Errors: shapes that don't match, logits of another dtype, a device xent can't run on,
///   options out of their domain.
///
/// Formulas: SEMANTICS.md section 4.
pub fn binary_cross_entropy_with_logits<const D: usize>(
    logits: Tensor<D>,
    targets: Tensor<D>,
    options: &BinaryCrossEntropy,
    weights: &BinaryWeights,
) -> Result<Tensor<1>, Error> {
    let dims = logits.dims();
    if targets.dims() != dims {
        return Err(xent::Error::Shape {
            what: "targets",
            expected: dims.iter().product(),
            actual: targets.dims().iter().product(),
            shape: format!(
                "targets take the logits' shape {dims:?}, got {:?}",
                targets.dims()
            ),
        }
        .into());
    }
    options.validate()?;
    check_device_and_dtype(&logits)?;
    let classes = dims[D - 1];
    if classes == 0 {
        return Err(xent::Error::NoClasses.into());
    }
    let call = BinaryCall {
        options: *options,
        rows: dims[..D - 1].iter().product(),
        classes,
    };
    let shape = format!("{} rows × {} classes", call.rows, call.classes);
    let given = BinaryGiven {
        targets: targets.cast(DType::F32).into_dispatch(),
        class_weights: weighting(&weights.class, "class_weights", classes, &shape)?,
        pos_weight: weighting(&weights.pos_weight, "pos_weight", classes, &shape)?,
        sample_weights: weighting(&weights.sample, "sample_weights", call.rows, &shape)?,
    };
    Ok(Tensor::from_dispatch(Dispatch::xent_binary_loss(
        logits.into_dispatch(),
        given,
        call,
    )))
}

/// The loss of a linear head without its logits: `cross_entropy(h·Wᵀ + b, y)` with xent's
/// options, the logits computed tile by tile on the device and never written (the formulas of
/// SEMANTICS.md sections 1, 2 and 2c on `h·Wᵀ + b`). Logits only (not probabilities).
///
/// - Shapes: `hidden` `[…, D]` (every index but the last a row), `weight` `[V, D]` (PyTorch's
///   `nn.Linear` layout). A `weight` that is the transpose of a contiguous `[D, V]` tensor
///   (`linear.weight.val().transpose()` of burn's `Linear`: [`LinearCrossEntropyLoss`] passes
///   that) is read in place on a wgpu device, and its gradient written in the `[D, V]`
///   layout; any other view is made contiguous first. `bias` `[V]`, `targets` the hidden
///   states' shape without `D`. `hidden` is cast to the weight's dtype (f32, f16 or bf16; D
///   even for the half types), the bias to f32.
/// - Under autodiff, with sum and mean the call writes `dh`, `dW` and `db` with the loss (for
///   the inputs that need them) and the backward scales them by burn's upstream; with none
///   the backward runs the call again with the per-row upstream. Gradients come back in each
///   input's dtype.
///
/// [`LinearCrossEntropyLoss`]: crate::LinearCrossEntropyLoss
pub fn linear_cross_entropy<const D: usize, const T: usize>(
    hidden: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: Tensor<T, Int>,
    options: &CrossEntropy,
    weights: &Weights,
) -> Result<Loss, Error> {
    let dims = hidden.dims();
    let [vocab, d] = weight.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let shape = |what: &'static str, expected: usize, actual: usize| -> Error {
        xent::Error::Shape {
            what,
            expected,
            actual,
            shape: format!("hidden {dims:?}, weight [{vocab}, {d}]"),
        }
        .into()
    };
    if dims[D - 1] != d {
        return Err(shape("hidden", rows * d, hidden.dims().iter().product()));
    }
    if targets.dims()[..] != dims[..D - 1] {
        return Err(shape("targets", rows, targets.dims().iter().product()));
    }
    if let Some(b) = &bias {
        if b.dims()[0] != vocab {
            return Err(shape("bias", vocab, b.dims()[0]));
        }
    }
    if vocab == 0 {
        return Err(xent::Error::NoClasses.into());
    }
    options.validate()?;
    if options.input != xent::InputKind::Logits {
        return Err(xent::Error::Unsupported(
            "a linear head's outputs are logits (probability inputs are not)".into(),
        )
        .into());
    }
    check_device_and_dtype(&weight)?;
    if weight.dtype() != DType::F32 && d % 2 == 1 {
        return Err(xent::Error::Unsupported(format!(
            "a {:?} head with an odd hidden size {d} (half precision needs it even)",
            weight.dtype()
        ))
        .into());
    }
    let device = weight.device();
    let hidden = hidden.cast(weight.dtype()).reshape([rows, d]);
    let targets = targets.reshape([rows]);
    let targets = match targets.dtype() {
        DType::I32 | DType::I64 => targets,
        _ => targets.cast(DType::I64),
    };
    let call = LinearCall {
        options: *options,
        rows,
        hidden: d,
        vocab,
        has_bias: bias.is_some(),
        gradients: Wanted::default(),
    };
    let shape = format!("{rows} rows × {vocab} classes");
    let given = LinearGiven {
        targets: targets.clone().into_dispatch(),
        class_weights: weighting(&weights.class, "class_weights", vocab, &shape)?,
        sample_weights: weighting(&weights.sample, "sample_weights", rows, &shape)?,
    };
    // Not read without a bias (nor differentiated: a constant).
    let bias = match bias {
        Some(b) => b.cast(DType::F32),
        None => Tensor::zeros([vocab], &device.clone().without_autodiff()),
    };
    let upstream = Tensor::<1>::ones([1], &device.without_autodiff());
    let (loss, flag, _, _, _) = Dispatch::xent_linear(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        given,
        upstream.into_dispatch(),
        call,
    );
    Ok(Loss {
        loss: Tensor::from_dispatch(loss),
        target_error: Tensor::from_dispatch(flag),
        targets: Some(targets),
        classes: vocab,
        ignore_index: options.ignore_index,
    })
}

/// The call's shape and layout, after checking the options, the dtype and the device.
fn call<const D: usize>(logits: &Tensor<D>, options: &CrossEntropy) -> Result<Call, Error> {
    options.validate()?;
    check_device_and_dtype(logits)?;
    let dims = logits.dims();
    let classes = dims[1];
    if classes == 0 {
        return Err(xent::Error::NoClasses.into());
    }
    let spatial: usize = dims[2..].iter().product();
    // With no positions there are no rows: any layout reads nothing.
    let layout = if D == 2 || spatial == 0 {
        Layout::Rows
    } else {
        Layout::ClassDim1 { spatial }
    };
    Ok(Call {
        options: *options,
        rows: dims[0] * spatial,
        classes,
        layout,
    })
}

/// Whether xent runs on the logits' device and takes their dtype.
fn check_device_and_dtype<const D: usize>(logits: &Tensor<D>) -> Result<(), Error> {
    crate::device::check(&logits.device())?;
    match logits.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(xent::Error::Unsupported(format!(
            "logits of dtype {other:?} (f32, f16 and bf16 are)"
        ))
        .into()),
    }
}

/// An optional weight vector of `len` values, as the operations take it.
fn weighting(
    weights: &Option<Tensor<1>>,
    what: &'static str,
    len: usize,
    shape: &str,
) -> Result<ops::Weighting<Dispatch>, Error> {
    match weights {
        None => Ok(ops::Weighting::Uniform),
        Some(w) if w.dims()[0] != len => Err(xent::Error::Shape {
            what,
            expected: len,
            actual: w.dims()[0],
            shape: shape.to_string(),
        }
        .into()),
        Some(w) => Ok(ops::Weighting::By(
            w.clone().cast(DType::F32).into_dispatch(),
        )),
    }
}

/// The targets and the checked weights as the operations take them.
fn given(
    targets: Targets<Dispatch>,
    weights: &Weights,
    call: &Call,
) -> Result<Given<Dispatch>, Error> {
    let shape = format!("{} rows × {} classes", call.rows, call.classes);
    Ok(Given {
        targets,
        class_weights: weighting(&weights.class, "class_weights", call.classes, &shape)?,
        sample_weights: weighting(&weights.sample, "sample_weights", call.rows, &shape)?,
    })
}
