//! xent's CPU path, on any burn backend: for tensors on a CubeCL runtime other than a
//! registered wgpu device, and on Flex. The inputs are read back, the loss (or gradient) is
//! computed by xent's SIMD CPU kernels, and the result is uploaded. Correct everywhere, fast
//! only where the data is on the host already (Flex): it exists so that one API works on
//! every burn runtime.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend as BurnBackend, FloatDType, TensorMetadata};
use burn::tensor::{read_sync, DType, TensorData};
use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest};
use xent::{Backend, Batch, Layout, Logits, Matrix, Reduction, Request, Targets};

use crate::inputs::{Inputs, LinearInputs, LinearOutputs};
use crate::ops::{BinaryCall, Call, LinearCall};

/// Panics with a call's error. The loss functions check shapes and options; values (weights,
/// soft and BCE targets, probabilities) are checked here only, where the CPU path's own
/// validation refuses them (the kernels don't check them: SEMANTICS.md section 7).
fn refused(e: xent::Error) -> ! {
    panic!("xent-burn: {e}")
}

/// Replaces each class index outside `[0, classes)` that isn't `ignore_index` with
/// `ignore_index`, as the device's target check does: the flag (`u32::MAX − row` of the
/// lowest such row, 0 for none).
fn flag_targets(targets: &mut [i64], classes: usize, ignore_index: i64) -> u32 {
    let mut flag = 0;
    for (row, t) in targets.iter_mut().enumerate().rev() {
        if *t != ignore_index && !(0..classes as i64).contains(t) {
            flag = u32::MAX - row as u32;
            *t = ignore_index;
        }
    }
    flag
}

/// The loss values of an output: the reduced loss, or the per-row (per-element) losses.
fn loss_values(output: xent::Output) -> Vec<f32> {
    match output.loss {
        Some(loss) => vec![loss],
        None => output
            .row_losses
            .expect("Reduction::None returns row losses"),
    }
}

/// Rows, classes, layout.
type Shaped = (usize, usize, Layout);

/// The inputs on the host, as xent's CPU path takes them.
struct Host {
    logits: Vec<f32>,
    index: Option<Vec<i64>>,
    dense: Option<Vec<f32>>,
    class_weights: Option<Vec<f32>>,
    pos_weight: Option<Vec<f32>>,
    sample_weights: Option<Vec<f32>>,
}

fn data(result: Result<TensorData, burn::backend::ExecutionError>) -> TensorData {
    result.unwrap_or_else(|e| panic!("xent-burn: reading a tensor back failed: {e:?}"))
}

fn floats<B: BurnBackend>(tensor: FloatTensor<B>) -> Vec<f32> {
    data(read_sync(B::float_into_data(tensor)))
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 data")
}

fn ints<B: BurnBackend>(tensor: IntTensor<B>) -> Vec<i64> {
    data(read_sync(B::int_into_data(tensor)))
        .convert::<i64>()
        .try_into_vec()
        .expect("i64 data")
}

/// `values` as an f32 tensor of `shape` on `device`.
fn upload<B: BurnBackend>(values: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape.to_vec()), device)
}

/// The target-error flag as a `[1]` u32 tensor on `device`.
fn upload_flag<B: BurnBackend>(flag: u32, device: &B::Device) -> IntTensor<B> {
    B::int_from_data(TensorData::new(vec![flag], [1]), device)
}

impl Host {
    fn read<B: BurnBackend>(inputs: Inputs<B>) -> Self {
        Host {
            logits: floats::<B>(inputs.logits),
            index: inputs.index.map(ints::<B>),
            dense: inputs.dense.map(floats::<B>),
            class_weights: inputs.class_weights.map(floats::<B>),
            pos_weight: inputs.pos_weight.map(floats::<B>),
            sample_weights: inputs.sample_weights.map(floats::<B>),
        }
    }

    fn batch<'a>(&'a self, index: &'a [i64], (rows, classes, layout): Shaped) -> Batch<'a> {
        let logits = match layout {
            Layout::Rows => Logits::new(&self.logits, rows, classes),
            Layout::ClassDim1 { spatial } => {
                Logits::class_dim1(&self.logits, rows / spatial, classes, spatial)
            }
        };
        let targets = match &self.dense {
            Some(dense) => Targets::Dense(dense),
            None => Targets::I64(index),
        };
        let mut batch = Batch::new(logits, targets);
        if let Some(w) = &self.class_weights {
            batch = batch.class_weights(w);
        }
        if let Some(w) = &self.pos_weight {
            batch = batch.pos_weight(w);
        }
        if let Some(s) = &self.sample_weights {
            batch = batch.sample_weights(s);
        }
        batch
    }

    /// Runs `compute` on the batch, class indices out of range counted as ignored.
    fn run<T>(&self, call: Call, compute: impl FnOnce(Batch<'_>) -> xent::Result<T>) -> (T, u32) {
        let mut index = self.index.clone().unwrap_or_default();
        let flag = flag_targets(&mut index, call.classes, call.options.ignore_index);
        let shape = (call.rows, call.classes, call.layout);
        let output = compute(self.batch(&index, shape)).unwrap_or_else(|e| refused(e));
        (output, flag)
    }
}

/// The loss and the target-error flag.
pub(crate) fn loss<B: BurnBackend>(
    inputs: Inputs<B>,
    call: Call,
) -> (FloatTensor<B>, IntTensor<B>) {
    let device = inputs.logits.device();
    let host = Host::read(inputs);
    let (output, flag) = host.run(call, |batch| {
        call.options.compute(&Backend::Cpu, batch, Request::new())
    });
    let loss = loss_values(output);
    let len = loss.len();
    (
        upload::<B>(loss, &[len], &device),
        upload_flag::<B>(flag, &device),
    )
}

/// [`loss`] with the saved state's tensors, in the device's shapes and left unwritten: the
/// CPU path keeps no state (its backward runs the loss again).
#[allow(clippy::type_complexity)]
pub(crate) fn loss_saved<B: BurnBackend>(
    inputs: Inputs<B>,
    call: Call,
) -> (FloatTensor<B>, IntTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let device = inputs.logits.device();
    let (loss, flag) = loss(inputs, call);
    let empty = |shape: &[usize]| B::float_empty(shape.into(), &device, FloatDType::F32);
    (loss, flag, empty(&call.saved_rows_shape()), empty(&[4]))
}

/// d loss / d logits for `upstream`, in the logits' dtype.
pub(crate) fn gradient<B: BurnBackend>(
    inputs: Inputs<B>,
    upstream: FloatTensor<B>,
    call: Call,
) -> FloatTensor<B> {
    let device = inputs.logits.device();
    let (shape, dtype) = (inputs.logits.shape(), inputs.logits.dtype());
    let host = Host::read(inputs);
    let upstream = floats::<B>(upstream);
    let mut gradient = vec![0f32; host.logits.len()];
    host.run(call, |batch| {
        let request = Request::new()
            .gradient_into(&mut gradient)
            .upstream(&upstream);
        call.options.compute(&Backend::Cpu, batch, request)
    });
    upload_gradient::<B>(gradient, shape.as_slice(), dtype, &device)
}

/// Binary cross-entropy's loss on the host.
pub(crate) fn binary_loss<B: BurnBackend>(inputs: Inputs<B>, call: BinaryCall) -> FloatTensor<B> {
    let device = inputs.logits.device();
    let host = Host::read(inputs);
    let output = call
        .options
        .compute(&Backend::Cpu, host.batch(&[], binary(call)), Request::new())
        .unwrap_or_else(|e| refused(e));
    let loss = loss_values(output);
    let len = loss.len();
    upload::<B>(loss, &[len], &device)
}

/// Binary cross-entropy's d loss / d logits for `upstream` on the host, in the logits' dtype.
pub(crate) fn binary_gradient<B: BurnBackend>(
    inputs: Inputs<B>,
    upstream: FloatTensor<B>,
    call: BinaryCall,
) -> FloatTensor<B> {
    let device = inputs.logits.device();
    let (shape, dtype) = (inputs.logits.shape(), inputs.logits.dtype());
    let host = Host::read(inputs);
    let upstream = floats::<B>(upstream);
    let mut gradient = vec![0f32; host.logits.len()];
    let request = Request::new()
        .gradient_into(&mut gradient)
        .upstream(&upstream);
    call.options
        .compute(&Backend::Cpu, host.batch(&[], binary(call)), request)
        .unwrap_or_else(|e| refused(e));
    upload_gradient::<B>(gradient, shape.as_slice(), dtype, &device)
}

fn binary(call: BinaryCall) -> Shaped {
    (call.rows, call.classes, Layout::Rows)
}

/// `gradient` (f32, on the host) as a tensor of `dtype`.
fn upload_gradient<B: BurnBackend>(
    gradient: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    device: &B::Device,
) -> FloatTensor<B> {
    let gradient = upload::<B>(gradient, shape, device);
    if dtype == DType::F32 {
        gradient
    } else {
        B::float_cast(gradient, dtype.into())
    }
}

/// A linear head on the host: xent's CPU linear call (the `gemm` crate's products).
pub(crate) fn linear<B: BurnBackend>(
    inputs: LinearInputs<B>,
    upstream: FloatTensor<B>,
    call: LinearCall,
) -> LinearOutputs<B> {
    let device = inputs.hidden.device();
    let (n, d, v) = (call.rows, call.hidden, call.vocab);
    let hidden = floats::<B>(inputs.hidden);
    let weight = floats::<B>(inputs.weight);
    let bias = inputs.bias.map(floats::<B>);
    let class_weights = inputs.class_weights.map(floats::<B>);
    let sample_weights = inputs.sample_weights.map(floats::<B>);
    let upstream = floats::<B>(upstream);
    let mut targets = ints::<B>(inputs.targets);
    let wanted = call.gradients;
    let size = |wanted: bool, len: usize| if wanted { len } else { 0 };
    let mut dh = vec![0f32; size(wanted.hidden, n * d)];
    let mut dw = vec![0f32; size(wanted.weight, v * d)];
    let mut db = vec![0f32; size(wanted.bias, v)];
    let per_row = call.options.reduction == Reduction::None;
    let flag = flag_targets(&mut targets, v, call.options.ignore_index);
    let mut batch = LinearBatch::new(
        Matrix::new(&hidden, n, d),
        Matrix::new(&weight, v, d),
        &targets[..],
    );
    batch.bias = bias.as_deref().map(Matrix::vector);
    batch.class_weights = class_weights.as_deref();
    batch.sample_weights = sample_weights.as_deref();
    let mut request = LinearRequest::new();
    if per_row && wanted.any() {
        request = request.upstream(&upstream);
    }
    if wanted.hidden {
        request = request.hidden_gradient(GradientBuffer::Write(&mut dh));
    }
    if wanted.weight {
        request = request.weight_gradient(GradientBuffer::Write(&mut dw));
    }
    if wanted.bias {
        request = request.bias_gradient(GradientBuffer::Write(&mut db));
    }
    let output = LinearCrossEntropy::new(call.options)
        .compute(&Backend::Cpu, batch, request)
        .unwrap_or_else(|e| refused(e));
    let loss = loss_values(output);
    let len = loss.len();
    // A gradient not asked for is a one-element placeholder, as on the device.
    let gradient = |wanted: bool, values: Vec<f32>, shape: &[usize]| {
        if wanted {
            upload::<B>(values, shape, &device)
        } else {
            upload::<B>(vec![0.0], &[1], &device)
        }
    };
    (
        upload::<B>(loss, &[len], &device),
        upload_flag::<B>(flag, &device),
        gradient(wanted.hidden, dh, &[n, d]),
        gradient(wanted.weight, dw, &[v, d]),
        gradient(wanted.bias, db, &[v]),
    )
}
