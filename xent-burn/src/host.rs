//! xent's CPU path for tensors on a CubeCL runtime other than a registered wgpu device: the
//! inputs are read back, the loss (or gradient) is computed by xent's SIMD CPU kernels, and
//! the result is uploaded. Correct everywhere, fast nowhere: it exists so that one API works
//! on every burn runtime.

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::wgpu::{CubeBackend, CubeTensor};
use burn::tensor::{read_sync, DType, TensorData};
use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest};
use xent::{Backend, Batch, Layout, Logits, Matrix, Reduction, Request, Targets};

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

/// `values` as an f32 vector on `near`'s device.
fn vector(near: &CubeTensor, values: &[f32]) -> CubeTensor {
    filled(
        near,
        bytemuck::cast_slice(values),
        &[values.len()],
        DType::F32,
    )
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

use crate::cube::{filled, Inputs, LinearInputs, LinearOutputs};
use crate::ops::{BinaryCall, Call, LinearCall};

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

fn floats(tensor: CubeTensor) -> Vec<f32> {
    data(read_sync(CubeBackend::float_into_data(tensor)))
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 data")
}

fn data(result: Result<TensorData, burn::backend::ExecutionError>) -> TensorData {
    result.unwrap_or_else(|e| panic!("xent-burn: reading a tensor back failed: {e:?}"))
}

fn ints(tensor: CubeTensor) -> Vec<i64> {
    data(read_sync(CubeBackend::int_into_data(tensor)))
        .convert::<i64>()
        .try_into_vec()
        .expect("i64 data")
}

impl Host {
    fn read(inputs: Inputs) -> Self {
        Host {
            logits: floats(inputs.logits),
            index: inputs.index.map(ints),
            dense: inputs.dense.map(floats),
            class_weights: inputs.class_weights.map(floats),
            pos_weight: inputs.pos_weight.map(floats),
            sample_weights: inputs.sample_weights.map(floats),
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
pub(crate) fn loss(inputs: Inputs, call: Call) -> (CubeTensor, CubeTensor) {
    let near = inputs.logits.clone();
    let host = Host::read(inputs);
    let (output, flag) = host.run(call, |batch| {
        call.options.compute(&Backend::Cpu, batch, Request::new())
    });
    (
        vector(&near, &loss_values(output)),
        filled(&near, &flag.to_le_bytes(), &[1], DType::U32),
    )
}

/// d loss / d logits for `upstream`, in the logits' dtype.
pub(crate) fn gradient(inputs: Inputs, upstream: CubeTensor, call: Call) -> CubeTensor {
    let near = inputs.logits.clone();
    let (shape, dtype) = (inputs.logits.meta.shape().clone(), inputs.logits.dtype);
    let host = Host::read(inputs);
    let upstream = floats(upstream);
    let mut gradient = vec![0f32; host.logits.len()];
    host.run(call, |batch| {
        let request = Request::new()
            .gradient_into(&mut gradient)
            .upstream(&upstream);
        call.options.compute(&Backend::Cpu, batch, request)
    });
    upload_gradient(&near, &gradient, shape.as_slice(), dtype)
}

/// Binary cross-entropy's loss on the host.
pub(crate) fn binary_loss(inputs: Inputs, call: BinaryCall) -> CubeTensor {
    let near = inputs.logits.clone();
    let host = Host::read(inputs);
    let output = call
        .options
        .compute(&Backend::Cpu, host.batch(&[], binary(call)), Request::new())
        .unwrap_or_else(|e| refused(e));
    vector(&near, &loss_values(output))
}

/// Binary cross-entropy's d loss / d logits for `upstream` on the host, in the logits' dtype.
pub(crate) fn binary_gradient(
    inputs: Inputs,
    upstream: CubeTensor,
    call: BinaryCall,
) -> CubeTensor {
    let near = inputs.logits.clone();
    let (shape, dtype) = (inputs.logits.meta.shape().clone(), inputs.logits.dtype);
    let host = Host::read(inputs);
    let upstream = floats(upstream);
    let mut gradient = vec![0f32; host.logits.len()];
    let request = Request::new()
        .gradient_into(&mut gradient)
        .upstream(&upstream);
    call.options
        .compute(&Backend::Cpu, host.batch(&[], binary(call)), request)
        .unwrap_or_else(|e| refused(e));
    upload_gradient(&near, &gradient, shape.as_slice(), dtype)
}

fn binary(call: BinaryCall) -> Shaped {
    (call.rows, call.classes, Layout::Rows)
}

/// `gradient` (f32, on the host) as a tensor of `dtype`.
fn upload_gradient(
    near: &CubeTensor,
    gradient: &[f32],
    shape: &[usize],
    dtype: DType,
) -> CubeTensor {
    let gradient = filled(near, bytemuck::cast_slice(gradient), shape, DType::F32);
    if dtype == DType::F32 {
        gradient
    } else {
        CubeBackend::float_cast(gradient, dtype.into())
    }
}

/// A linear head on the host: xent's CPU linear call (the `gemm` crate's products).
pub(crate) fn linear(
    inputs: LinearInputs,
    upstream: CubeTensor,
    call: LinearCall,
) -> LinearOutputs {
    let near = inputs.hidden.clone();
    let (n, d, v) = (call.rows, call.hidden, call.vocab);
    let hidden = floats(inputs.hidden);
    let weight = floats(inputs.weight);
    let bias = inputs.bias.map(floats);
    let class_weights = inputs.class_weights.map(floats);
    let sample_weights = inputs.sample_weights.map(floats);
    let upstream = floats(upstream);
    let mut targets = ints(inputs.targets);
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
    // A gradient not asked for is a one-element placeholder, as on the device.
    let upload = |wanted: bool, values: &[f32], shape: &[usize]| {
        if wanted {
            filled(&near, bytemuck::cast_slice(values), shape, DType::F32)
        } else {
            filled(&near, &[0; 4], &[1], DType::F32)
        }
    };
    (
        filled(
            &near,
            bytemuck::cast_slice(&loss),
            &[loss.len()],
            DType::F32,
        ),
        filled(&near, &flag.to_le_bytes(), &[1], DType::U32),
        upload(wanted.hidden, &dh, &[n, d]),
        upload(wanted.weight, &dw, &[v, d]),
        upload(wanted.bias, &db, &[v]),
    )
}
