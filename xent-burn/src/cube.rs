//! [`XentBackend`] on burn's CubeCL backend.
//!
//! On a wgpu device registered with xent ([`crate::init`], [`crate::register`]) the tensors'
//! own buffers are bound where they are (burn sub-allocates them at aligned offsets of shared
//! buffers): burn's pending work is submitted first (`client.flush()`), then xent records into
//! an encoder of its own on the same device and submits it to the same queue, so burn's later
//! work is ordered after it. Nothing is read back. Any other CubeCL runtime (CUDA, ROCm, the
//! CPU runtime) or a device registered with `register_cpu_path` takes xent's CPU path
//! (`host.rs`): the inputs are read back, and the outputs uploaded. (The loss functions refuse
//! an unregistered wgpu device.)

use burn::backend::ops::FloatTensorOps;
// wgpu as burn re-exports it (lib.rs checks it is the one xent takes).
use burn::backend::wgpu::{AutoCompiler, CubeBackend, CubeTensor, WgpuResource};
use burn::tensor::wgpu::wgpu;
use burn::tensor::{DType, Shape, Slice};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::wgpu::WgpuServer;
use xent::gpu::{
    DeviceBatch, DeviceGradient, DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch,
    DeviceLinearOutputs, DeviceMatrix, DeviceOutputs, DeviceSaved, DeviceTargets, DeviceUpstream,
    Gpu, GpuRow,
};
use xent::linear::WeightLayout;
use xent::{Dtype, Layout, Reduction};

use crate::counts;
use crate::host;
use crate::inputs::{Inputs, LinearInputs, LinearOutputs};
use crate::ops::{BinaryCall, BinaryGiven, Call, Given, LinearCall, LinearGiven, XentBackend};

/// f32 words of one per-row record ([`GpuRow`]) of a call with `Reduction::None`.
const RECORD_WORDS: usize = std::mem::size_of::<GpuRow>() / 4;

/// The storage behind burn's wgpu tensors.
type Server = WgpuServer<AutoCompiler>;

/// The inputs of a call on `gpu`: contiguous, at offsets the device can bind.
fn bindable(gpu: &Gpu, inputs: Inputs<CubeBackend>) -> Inputs<CubeBackend> {
    let aligned = |tensor| aligned(gpu, tensor);
    inputs.map(aligned, aligned)
}

impl XentBackend for CubeBackend {
    fn xent_loss(logits: CubeTensor, given: Given<Self>, call: Call) -> (CubeTensor, CubeTensor) {
        let inputs = Inputs::new(logits, given);
        match crate::device::gpu_of(&inputs.logits.device) {
            Some(gpu) => {
                let (loss, flag, _) = forward(&gpu, &bindable(&gpu, inputs), call, false);
                (loss, flag)
            }
            None => host::loss(inputs, call),
        }
    }

    fn xent_loss_saved(
        logits: CubeTensor,
        given: Given<Self>,
        call: Call,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        let inputs = Inputs::new(logits, given);
        match crate::device::gpu_of(&inputs.logits.device) {
            Some(gpu) => {
                let (loss, flag, saved) = forward(&gpu, &bindable(&gpu, inputs), call, true);
                let (rows, totals) = saved.expect("a saving forward returns its state");
                (loss, flag, rows, totals)
            }
            None => host::loss_saved(inputs, call),
        }
    }

    fn xent_gradient(
        logits: CubeTensor,
        given: Given<Self>,
        saved_rows: CubeTensor,
        saved_totals: CubeTensor,
        upstream: CubeTensor,
        call: Call,
    ) -> CubeTensor {
        let inputs = Inputs::new(logits, given);
        match crate::device::gpu_of(&inputs.logits.device) {
            Some(gpu) => backward(
                &gpu,
                bindable(&gpu, inputs),
                &saved_rows,
                &saved_totals,
                &aligned(&gpu, upstream),
                call,
            ),
            None => host::gradient(inputs, upstream, call),
        }
    }

    fn xent_binary_loss(
        logits: CubeTensor,
        given: BinaryGiven<Self>,
        call: BinaryCall,
    ) -> CubeTensor {
        let inputs = Inputs::binary(logits, given);
        match crate::device::gpu_of(&inputs.logits.device) {
            Some(gpu) => binary_loss(&gpu, &bindable(&gpu, inputs), call),
            None => host::binary_loss(inputs, call),
        }
    }

    fn xent_binary_gradient(
        logits: CubeTensor,
        given: BinaryGiven<Self>,
        upstream: CubeTensor,
        call: BinaryCall,
    ) -> CubeTensor {
        let inputs = Inputs::binary(logits, given);
        match crate::device::gpu_of(&inputs.logits.device) {
            Some(gpu) => {
                binary_gradient(&gpu, bindable(&gpu, inputs), &aligned(&gpu, upstream), call)
            }
            None => host::binary_gradient(inputs, upstream, call),
        }
    }

    fn xent_linear(
        hidden: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        given: LinearGiven<Self>,
        upstream: CubeTensor,
        call: LinearCall,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        match crate::device::gpu_of(&hidden.device) {
            Some(gpu) => {
                let (weight, layout) = weight_layout(&gpu, weight, &call);
                let inputs = LinearInputs::new(hidden, weight, bias, call.has_bias, given);
                linear(
                    &gpu,
                    &inputs.map(|t| aligned(&gpu, t), |t| aligned(&gpu, t)),
                    &aligned(&gpu, upstream),
                    (call, layout),
                )
            }
            None => {
                let inputs = LinearInputs::new(hidden, weight, bias, call.has_bias, given);
                host::linear(inputs, upstream, call)
            }
        }
    }
}

/// How a linear call binds its `[V, D]` weight: as it is, or, where it is the transpose of a
/// contiguous `[D, V]` tensor (burn's `Linear` in its default layout, seen through
/// `transpose()`), as that tensor with [`WeightLayout::HiddenMajor`]: read in place, no copy.
/// xent binds such a weight whole, so one that outgrows a storage binding is made contiguous
/// `[V, D]` instead (a copy, cut into pieces by xent).
fn weight_layout(gpu: &Gpu, weight: CubeTensor, call: &LinearCall) -> (CubeTensor, WeightLayout) {
    // The f32 gradient, where asked, is bound whole too.
    let element = match call.gradients.weight {
        true => weight.dtype.size().max(4),
        false => weight.dtype.size(),
    };
    let bytes = (call.vocab * call.hidden * element) as u64;
    if weight.is_contiguous() || bytes > gpu.max_binding_size() {
        return (weight, WeightLayout::VocabMajor);
    }
    let stored = CubeBackend::float_swap_dims(weight.clone(), 0, 1);
    match stored.is_contiguous() {
        true => {
            counts::hidden_major_weight();
            (stored, WeightLayout::HiddenMajor)
        }
        false => (weight, WeightLayout::VocabMajor),
    }
}

/// A new contiguous f32 tensor of `shape` on `near`'s device.
pub(crate) fn empty_f32(near: &CubeTensor, shape: &[usize]) -> CubeTensor {
    empty(near, shape, DType::F32)
}

/// A new contiguous tensor of `shape` and `dtype` on `near`'s device, its contents undefined.
fn empty(near: &CubeTensor, shape: &[usize], dtype: DType) -> CubeTensor {
    empty_device_contiguous_dtype(
        near.client.clone(),
        near.device.clone(),
        Shape::from(shape.to_vec()),
        dtype,
    )
}

/// A target-error flag: one u32, zeroed by [`Bound::clear`] in xent's own encoder (a tensor
/// created from host bytes would be a write burn submits before xent's commands, costing a
/// queue submission per call).
fn flag(near: &CubeTensor) -> CubeTensor {
    empty(near, &[1], DType::U32)
}

/// Storage-buffer offsets must be multiples of the device's alignment: cubecl's allocations
/// are, but a view (a slice of rows, say) may start anywhere; such a view is copied.
fn aligned(gpu: &Gpu, tensor: CubeTensor) -> CubeTensor {
    if !tensor.is_contiguous() {
        counts::copied_input();
    }
    let tensor = into_contiguous(tensor);
    let storage = gpu.device().limits().min_storage_buffer_offset_alignment as u64;
    let alignment = tensor.client.properties().memory.alignment.max(storage);
    if tensor
        .handle
        .offset_start
        .unwrap_or(0)
        .is_multiple_of(alignment)
    {
        tensor
    } else {
        counts::copied_input();
        tensor.copy()
    }
}

/// The wgpu buffer range behind a tensor. The tensor itself (held by the caller until the
/// call's commands are submitted) keeps cubecl from handing its memory to another tensor
/// before then; later reuse is ordered after xent's commands on the one queue.
struct Bound {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Bound {
    fn new(tensor: &CubeTensor) -> Self {
        let resource = tensor
            .client
            .get_resource::<Server>(tensor.handle.clone())
            .expect("a tensor on a registered wgpu device is backed by a wgpu buffer");
        let WgpuResource {
            buffer,
            offset,
            size,
            ..
        } = resource.resource();
        // xent binds whole 4-byte words: an f16 tensor of odd length ends mid-word, inside
        // the allocation's padding.
        let size = size.next_multiple_of(4).min(buffer.size() - offset);
        Bound {
            buffer: buffer.clone(),
            offset: *offset,
            size,
        }
    }
    /// Zeroes the range (whole words: burn's buffers have `COPY_DST`).
    fn clear(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.buffer, self.offset, Some(self.size));
    }

    fn slice(&self) -> wgpu::BufferSlice<'_> {
        self.buffer.slice(self.offset..self.offset + self.size)
    }
}

fn dtype(tensor: &CubeTensor) -> Dtype {
    match tensor.dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::Bf16,
        other => {
            panic!("xent-burn: logits of dtype {other:?} (the loss functions cast them to f32)")
        }
    }
}

/// A call's logits as xent sees them.
#[derive(Debug, Clone, Copy)]
struct Shaped {
    rows: usize,
    classes: usize,
    layout: Layout,
}

impl From<Call> for Shaped {
    fn from(call: Call) -> Self {
        Shaped {
            rows: call.rows,
            classes: call.classes,
            layout: call.layout,
        }
    }
}

impl From<BinaryCall> for Shaped {
    fn from(call: BinaryCall) -> Self {
        Shaped {
            rows: call.rows,
            classes: call.classes,
            layout: Layout::Rows,
        }
    }
}

/// The bound inputs of one call.
struct BoundInputs {
    logits: Bound,
    index: Option<(Bound, DType)>,
    dense: Option<Bound>,
    class_weights: Option<Bound>,
    pos_weight: Option<Bound>,
    sample_weights: Option<Bound>,
}

impl BoundInputs {
    fn new(inputs: &Inputs<CubeBackend>) -> Self {
        Self {
            logits: Bound::new(&inputs.logits),
            index: inputs.index.as_ref().map(|t| (Bound::new(t), t.dtype)),
            dense: inputs.dense.as_ref().map(Bound::new),
            class_weights: inputs.class_weights.as_ref().map(Bound::new),
            pos_weight: inputs.pos_weight.as_ref().map(Bound::new),
            sample_weights: inputs.sample_weights.as_ref().map(Bound::new),
        }
    }

    /// The batch over `logits` (the inputs' own, or the buffer a gradient is written over).
    fn batch<'a>(&'a self, logits: &'a Bound, dtype: Dtype, shape: Shaped) -> DeviceBatch<'a> {
        let targets = match (&self.index, &self.dense) {
            (Some((b, dtype)), _) => index_targets(b, *dtype).into(),
            (None, Some(b)) => DeviceTargets::Dense(b.slice()),
            (None, None) => panic!("xent-burn: a call without targets"),
        };
        let mut batch = DeviceBatch::new(logits.slice(), dtype, shape.rows, shape.classes, targets);
        batch.layout = shape.layout;
        batch.class_weights = self.class_weights.as_ref().map(Bound::slice);
        batch.pos_weight = self.pos_weight.as_ref().map(Bound::slice);
        batch.sample_weights = self.sample_weights.as_ref().map(Bound::slice);
        batch
    }
}

impl BoundInputs {
    /// The batch a backward reads and where its gradient goes, from
    /// [`gradient_destination`]: in place over the logits, or into a new tensor in their dtype.
    fn destination<'a>(
        &'a self,
        gradient: &'a Bound,
        in_place: bool,
        dtype: Dtype,
        call: impl Into<Shaped>,
    ) -> (DeviceBatch<'a>, DeviceGradient<'a>) {
        match in_place {
            true => (
                self.batch(gradient, dtype, call.into()),
                DeviceGradient::InPlace,
            ),
            false => (
                self.batch(&self.logits, dtype, call.into()),
                DeviceGradient::IntoLogitsDtype(gradient.slice()),
            ),
        }
    }
}

/// Class indices as xent binds them: i32 or i64 (the loss functions cast other dtypes).
fn index_targets(bound: &Bound, dtype: DType) -> DeviceIndexTargets<'_> {
    match dtype {
        DType::I64 => DeviceIndexTargets::I64(bound.slice()),
        DType::I32 => DeviceIndexTargets::I32(bound.slice()),
        other => {
            panic!("xent-burn: class indices of dtype {other:?} (the loss functions cast them)")
        }
    }
}

/// burn's upstream gradient as xent takes it: per row (element) for none, its device scalar
/// for sum and mean.
fn device_upstream(upstream: &Bound, reduction: Reduction) -> DeviceUpstream<'_> {
    match reduction {
        Reduction::None => DeviceUpstream::Rows(upstream.slice()),
        _ => DeviceUpstream::Device(upstream.slice()),
    }
}

/// Records and submits one call: `record` gets an encoder on the xent device after burn's
/// pending work is submitted.
fn submit(
    gpu: &Gpu,
    client: &cubecl::client::Client,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> xent::Result<()>,
) {
    // `get_resource` ran and submitted the pending work of each bound tensor's stream and of
    // this thread's (cubecl 0.11's scheduler submits every stream it executes; a tensor made
    // on another thread included). `flush` keeps the order explicit rather than resting on
    // that.
    client
        .flush()
        .expect("burn's pending work is submitted before xent records");
    let mut encoder = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("xent-burn"),
        });
    if let Err(e) = record(&mut encoder) {
        panic!("xent-burn: {e}");
    }
    gpu.queue().submit([encoder.finish()]);
}

type Saved = Option<(CubeTensor, CubeTensor)>;

/// The loss (and the saved state) on the device.
fn forward(
    gpu: &Gpu,
    inputs: &Inputs<CubeBackend>,
    call: Call,
    save: bool,
) -> (CubeTensor, CubeTensor, Saved) {
    let per_row = call.options.reduction == Reduction::None;
    let loss = empty_f32(&inputs.logits, &[1]);
    let records = per_row.then(|| empty_f32(&inputs.logits, &[call.rows, RECORD_WORDS]));
    let flag = flag(&inputs.logits);
    let saved = save.then(|| {
        (
            empty_f32(&inputs.logits, &call.saved_rows_shape()),
            empty_f32(&inputs.logits, &[4]),
        )
    });
    {
        let bound = BoundInputs::new(inputs);
        let loss_b = Bound::new(&loss);
        let flag_b = Bound::new(&flag);
        let records_b = records.as_ref().map(Bound::new);
        let saved_b = saved.as_ref().map(|(r, t)| (Bound::new(r), Bound::new(t)));
        submit(gpu, &inputs.logits.client, |encoder| {
            let batch = bound.batch(&bound.logits, dtype(&inputs.logits), call.into());
            flag_b.clear(encoder);
            let mut outputs = DeviceOutputs::new(loss_b.slice()).target_error(flag_b.slice());
            outputs.rows = records_b.as_ref().map(Bound::slice);
            if let Some((rows, totals)) = &saved_b {
                outputs = outputs.save(DeviceSaved {
                    rows: rows.slice(),
                    totals: totals.slice(),
                });
            }
            gpu.record_cross_entropy(encoder, &call.options, &batch, &outputs)
        });
    }
    let loss = match records {
        Some(records) => row_losses(records, call.rows),
        None => loss,
    };
    (loss, flag, saved)
}

/// Where a gradient goes, and whether that is over the logits themselves: so where nothing
/// else holds their buffer (burn's rule for in-place kernels; a training step's logits,
/// dropped after the loss), with no allocation and no copy. Otherwise into a new tensor in
/// the logits' dtype (xent writes f16 / bf16 there directly), still no copy.
fn gradient_destination(logits: &CubeTensor) -> (CubeTensor, bool) {
    if logits.can_mut() {
        counts::in_place_gradient();
        return (logits.clone(), true);
    }
    (empty(logits, logits.meta.shape(), logits.dtype), false)
}

/// The gradient on the device from the saved state, where [`gradient_destination`] puts it.
fn backward(
    gpu: &Gpu,
    inputs: Inputs<CubeBackend>,
    saved_rows: &CubeTensor,
    saved_totals: &CubeTensor,
    upstream: &CubeTensor,
    call: Call,
) -> CubeTensor {
    let dtype = dtype(&inputs.logits);
    let (gradient, in_place) = gradient_destination(&inputs.logits);
    {
        let bound = BoundInputs::new(&inputs);
        let gradient_b = Bound::new(&gradient);
        let rows_b = Bound::new(saved_rows);
        let totals_b = Bound::new(saved_totals);
        let upstream_b = Bound::new(upstream);
        submit(gpu, &inputs.logits.client, |encoder| {
            let saved = DeviceSaved {
                rows: rows_b.slice(),
                totals: totals_b.slice(),
            };
            let upstream = device_upstream(&upstream_b, call.options.reduction);
            let (batch, destination) = bound.destination(&gradient_b, in_place, dtype, call);
            gpu.record_cross_entropy_backward(
                encoder,
                &call.options,
                &batch,
                saved,
                destination,
                upstream,
            )
        });
    }
    gradient
}

/// Binary cross-entropy's loss on the device (per element for none).
fn binary_loss(gpu: &Gpu, inputs: &Inputs<CubeBackend>, call: BinaryCall) -> CubeTensor {
    let dtype = dtype(&inputs.logits);
    let loss = empty_f32(&inputs.logits, &[1]);
    let elements = (call.options.reduction == Reduction::None)
        .then(|| empty_f32(&inputs.logits, &[call.rows * call.classes]));
    {
        let bound = BoundInputs::new(inputs);
        let loss_b = Bound::new(&loss);
        let elements_b = elements.as_ref().map(Bound::new);
        submit(gpu, &inputs.logits.client, |encoder| {
            let mut outputs = DeviceOutputs::new(loss_b.slice());
            outputs.rows = elements_b.as_ref().map(Bound::slice);
            let batch = bound.batch(&bound.logits, dtype, call.into());
            gpu.record_binary_cross_entropy(encoder, &call.options, &batch, &outputs)
        });
    }
    elements.unwrap_or(loss)
}

/// Binary cross-entropy's gradient on the device, recomputed from the logits, for burn's
/// upstream (per element for none, its device scalar for sum and mean), where
/// [`gradient_destination`] puts it.
fn binary_gradient(
    gpu: &Gpu,
    inputs: Inputs<CubeBackend>,
    upstream: &CubeTensor,
    call: BinaryCall,
) -> CubeTensor {
    let dtype = dtype(&inputs.logits);
    let (gradient, in_place) = gradient_destination(&inputs.logits);
    {
        let bound = BoundInputs::new(&inputs);
        let gradient_b = Bound::new(&gradient);
        let upstream_b = Bound::new(upstream);
        submit(gpu, &inputs.logits.client, |encoder| {
            let (batch, destination) = bound.destination(&gradient_b, in_place, dtype, call);
            gpu.record_binary_cross_entropy_backward(
                encoder,
                &call.options,
                &batch,
                destination,
                device_upstream(&upstream_b, call.options.reduction),
            )
        });
    }
    gradient
}

/// A linear head on the device: one recorded call (the forward, the reduction and the asked
/// gradients, the logits never written).
fn linear(
    gpu: &Gpu,
    inputs: &LinearInputs<CubeBackend>,
    upstream: &CubeTensor,
    (call, layout): (LinearCall, WeightLayout),
) -> LinearOutputs<CubeBackend> {
    let (n, d, v) = (call.rows, call.hidden, call.vocab);
    let hidden_major = layout == WeightLayout::HiddenMajor;
    let per_row = call.options.reduction == Reduction::None;
    let wanted = call.gradients;
    let loss = empty_f32(&inputs.hidden, &[1]);
    let records = per_row.then(|| empty_f32(&inputs.hidden, &[n, RECORD_WORDS]));
    let flag = flag(&inputs.hidden);
    // A gradient not asked for gets a one-element placeholder.
    let gradient = |wanted: bool, shape: &[usize]| {
        empty_f32(&inputs.hidden, if wanted { shape } else { &[1] })
    };
    let dh = gradient(wanted.hidden, &[n, d]);
    // dW in W's layout: [D, V] for a hidden-major weight, returned as its [V, D] transpose.
    let dw_shape = if hidden_major { [d, v] } else { [v, d] };
    let dw = gradient(wanted.weight, &dw_shape);
    let db = gradient(wanted.bias, &[v]);
    let dtype = dtype(&inputs.weight);
    {
        let hidden = Bound::new(&inputs.hidden);
        let weight = Bound::new(&inputs.weight);
        let bias = inputs.bias.as_ref().map(Bound::new);
        let targets = Bound::new(&inputs.targets);
        let class_weights = inputs.class_weights.as_ref().map(Bound::new);
        let sample_weights = inputs.sample_weights.as_ref().map(Bound::new);
        let upstream_b = Bound::new(upstream);
        let loss_b = Bound::new(&loss);
        let records_b = records.as_ref().map(Bound::new);
        let flag_b = Bound::new(&flag);
        let (dh_b, dw_b, db_b) = (Bound::new(&dh), Bound::new(&dw), Bound::new(&db));
        submit(gpu, &inputs.hidden.client, |encoder| {
            let targets = index_targets(&targets, inputs.targets.dtype);
            let mut batch = DeviceLinearBatch::new(
                DeviceMatrix::new(hidden.slice(), dtype, n, d),
                match hidden_major {
                    true => DeviceMatrix::new(weight.slice(), dtype, d, v),
                    false => DeviceMatrix::new(weight.slice(), dtype, v, d),
                },
                targets,
            );
            batch.weight_layout = layout;
            batch.bias = bias.as_ref().map(Bound::slice);
            batch.class_weights = class_weights.as_ref().map(Bound::slice);
            batch.sample_weights = sample_weights.as_ref().map(Bound::slice);
            let mut outputs = DeviceLinearOutputs::new(loss_b.slice());
            outputs.rows = records_b.as_ref().map(Bound::slice);
            flag_b.clear(encoder);
            outputs.target_error = Some(flag_b.slice());
            fn write(wanted: bool, b: &Bound) -> Option<DeviceGradientSlice<'_>> {
                wanted.then(|| DeviceGradientSlice::Write(b.slice()))
            }
            outputs.hidden_gradient = write(wanted.hidden, &dh_b);
            outputs.weight_gradient = write(wanted.weight, &dw_b);
            outputs.bias_gradient = write(wanted.bias, &db_b);
            if per_row && wanted.any() {
                outputs.upstream = Some(upstream_b.slice());
            }
            let loss = xent::linear::LinearCrossEntropy::new(call.options);
            gpu.record_linear_cross_entropy(encoder, &loss, &batch, &outputs)
        });
    }
    let loss = match records {
        Some(records) => row_losses(records, n),
        None => loss,
    };
    let dw = match hidden_major && wanted.weight {
        true => CubeBackend::float_swap_dims(dw, 0, 1),
        false => dw,
    };
    (loss, flag, dh, dw, db)
}

/// The losses of `rows` [`GpuRow`] records (each record's first word).
fn row_losses(records: CubeTensor, rows: usize) -> CubeTensor {
    let column = CubeBackend::float_slice(
        records,
        &[Slice::new(0, None, 1), Slice::new(0, Some(1), 1)],
    );
    CubeBackend::float_reshape(into_contiguous(column), Shape::new([rows]))
}
