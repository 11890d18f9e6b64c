//! The training loop on the GPU, without leaving it.
//!
//! We own the `wgpu::Device`, every buffer and each step's command encoder; xent only records
//! its kernels into that encoder. The head (the last layer) and the loss are one call,
//! [`xent::gpu::Gpu::record_linear_cross_entropy`]: its logits are never written, and it gives
//! the head's dW and db and the gradient of its input. One step is one encoder and one submit:
//!
//! ```text
//! copy   perm[step·B .. step·B + B] → batch_idx          (the epoch's shuffle, uploaded once per epoch)
//! pass   gather_rows            x_train, y_train → xb, yb
//! pass   dense_forward × (layers − 1)  xb → h             (ReLU after each)
//! pass   head_unpack            θ_head → W [10 × D], b    (nn.Linear's layout, which xent takes)
//! xent   record_linear_cross_entropy  h, W, b, yb → loss, dh, dW, db (mean over the batch)
//! copy   loss → loss_log[i]                              (i = steps since the last read-back)
//! pass   head_pack              dW, db → g_head; relu_mask dh (the MLP)
//! pass   dense_backward_weight / dense_backward_input, last hidden layer first → g per layer
//! pass   adam_tick, adam_update × layers (or sgd_update × layers)
//! [copy  loss_log → staging, every `steps_per_log` steps and at the epoch's end]
//! ```
//!
//! Every uniform, bind group and buffer is made once before the first step, so a step writes
//! nothing from the host: Adam's step counter lives on the device (`adam_tick.wgsl`). Nothing
//! is read back inside a step except the loss log every `steps_per_log` steps; after each
//! epoch the held-out split runs through the same forward kernels and xent's head (per-row
//! records, no gradient), and its loss and valid / correct counts are read back.

use super::data::{Digits, Split};
use super::{
    check_config, epoch_order, init_params, Config, Epoch, Error, Event, Optimizer, Report,
    ADAM_EPS, BETA1, BETA2, CLASSES,
};
use wgpu::util::DeviceExt;
use xent::gpu::{
    target_error_row, DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch,
    DeviceLinearOutputs, DeviceMatrix, Gpu, GpuRow,
};
use xent::linear::LinearCrossEntropy;
use xent::{CrossEntropy, Dtype};

/// Invocations per workgroup of every kernel in `examples/shaders/` (prepended to each source
/// as `const WG`, so it is written only here).
pub const WG: u32 = 64;

/// The kernels, one WGSL file each.
const GATHER_ROWS: &str = include_str!("../shaders/gather_rows.wgsl");
const DENSE_FORWARD: &str = include_str!("../shaders/dense_forward.wgsl");
const DENSE_BACKWARD_INPUT: &str = include_str!("../shaders/dense_backward_input.wgsl");
const DENSE_BACKWARD_WEIGHT: &str = include_str!("../shaders/dense_backward_weight.wgsl");
const ADAM_TICK: &str = include_str!("../shaders/adam_tick.wgsl");
const ADAM_UPDATE: &str = include_str!("../shaders/adam_update.wgsl");
const SGD_UPDATE: &str = include_str!("../shaders/sgd_update.wgsl");
const HEAD_UNPACK: &str = include_str!("../shaders/head_unpack.wgsl");
const HEAD_PACK: &str = include_str!("../shaders/head_pack.wgsl");
const RELU_MASK: &str = include_str!("../shaders/relu_mask.wgsl");

/// A device we opened: the trainer's, not xent's.
#[derive(Debug, Clone)]
pub struct Device {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// `"name (backend)"`.
    pub name: String,
}

/// Opens an adapter the way wgpu's own tools do: `WGPU_BACKEND` limits the backends (all of
/// them when unset, GL included), `WGPU_ADAPTER_NAME` picks one by name, else the default
/// adapter. The device gets the adapter's real limits (xent's kernels want 256-invocation
/// workgroups and 8 storage buffers per stage, more than `Limits::downlevel_defaults()`) and
/// subgroups when the adapter has them (xent then uses its subgroup kernels).
pub fn open_device() -> Result<Device, Error> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        desc.backends = wgpu::Backends::all();
    }
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, None,
    ))
    .map_err(|e| format!("no GPU adapter ({e}); set WGPU_BACKEND to choose one"))?;
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("train_digits"),
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| format!("{} refused a device: {e}", info.name))?;
    Ok(Device {
        device,
        queue,
        name: format!("{} ({:?})", info.name, info.backend),
    })
}

/// The uniform block every kernel here declares as `Params` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    inputs: u32,
    outputs: u32,
    flags: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
}

/// How a kernel binds a buffer.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Uniform,
    Read,
    Write,
}

/// A compiled kernel with its explicit bind-group layout.
struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Compiles `source` (with `const WG` prepended); binding `i` of group 0 is `slots[i]`.
    fn new(device: &wgpu::Device, name: &'static str, source: &str, slots: &[Slot]) -> Kernel {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match slot {
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                        Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Slot::Write => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(match slot {
                        Slot::Uniform => std::mem::size_of::<Params>() as u64,
                        _ => 4,
                    }),
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(format!("const WG: u32 = {WG}u;\n{source}").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Kernel {
            name,
            pipeline,
            layout,
        }
    }
}

/// Every kernel of the trainer.
struct Kernels {
    gather: Kernel,
    forward: Kernel,
    backward_input: Kernel,
    backward_weight: Kernel,
    adam_tick: Kernel,
    adam_update: Kernel,
    sgd_update: Kernel,
    head_unpack: Kernel,
    head_pack: Kernel,
    relu_mask: Kernel,
}

impl Kernels {
    fn new(device: &wgpu::Device) -> Kernels {
        use Slot::*;
        Kernels {
            gather: Kernel::new(
                device,
                "gather_rows",
                GATHER_ROWS,
                &[Uniform, Read, Read, Read, Write, Write],
            ),
            forward: Kernel::new(
                device,
                "dense_forward",
                DENSE_FORWARD,
                &[Uniform, Read, Read, Write],
            ),
            backward_input: Kernel::new(
                device,
                "dense_backward_input",
                DENSE_BACKWARD_INPUT,
                &[Uniform, Read, Read, Read, Write],
            ),
            backward_weight: Kernel::new(
                device,
                "dense_backward_weight",
                DENSE_BACKWARD_WEIGHT,
                &[Uniform, Read, Read, Write],
            ),
            adam_tick: Kernel::new(device, "adam_tick", ADAM_TICK, &[Uniform, Write]),
            adam_update: Kernel::new(
                device,
                "adam_update",
                ADAM_UPDATE,
                &[Uniform, Read, Write, Write, Write, Read],
            ),
            sgd_update: Kernel::new(device, "sgd_update", SGD_UPDATE, &[Uniform, Read, Write]),
            head_unpack: Kernel::new(
                device,
                "head_unpack",
                HEAD_UNPACK,
                &[Uniform, Read, Write, Write],
            ),
            head_pack: Kernel::new(
                device,
                "head_pack",
                HEAD_PACK,
                &[Uniform, Read, Read, Write],
            ),
            relu_mask: Kernel::new(device, "relu_mask", RELU_MASK, &[Uniform, Read, Write]),
        }
    }
}

/// One recorded dispatch, built once and replayed every step.
struct Dispatch {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    /// A 1D grid; checked against the device's limit once, in `Trainer::new`.
    workgroups: u64,
}

impl Dispatch {
    /// Binds `params` (as a fresh uniform buffer) at 0 and `buffers` at 1, 2, … for `kernel`,
    /// one invocation per each of `invocations`.
    fn new(
        device: &wgpu::Device,
        kernel: &Kernel,
        params: Params,
        buffers: &[&wgpu::Buffer],
        invocations: usize,
    ) -> Dispatch {
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("train_digits params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("train_digits"),
            layout: &kernel.layout,
            entries: &entries,
        });
        Dispatch {
            name: kernel.name,
            pipeline: kernel.pipeline.clone(),
            group,
            workgroups: (invocations as u64).div_ceil(WG as u64).max(1),
        }
    }
}

/// Records `dispatches` in order into one compute pass of `encoder`.
fn record(encoder: &mut wgpu::CommandEncoder, label: &str, dispatches: &[Dispatch]) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for d in dispatches {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.group, &[]);
        pass.dispatch_workgroups(d.workgroups as u32, 1, 1);
    }
}

/// A storage buffer of `bytes`, zeroed.
fn storage(
    device: &wgpu::Device,
    label: &str,
    bytes: usize,
    extra: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (bytes as u64).max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `data`.
fn storage_init<T: bytemuck::Pod>(device: &wgpu::Device, label: &str, data: &[T]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(data),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

/// Maps the first `len` bytes of a `MAP_READ` buffer (after the work that filled it was
/// submitted), copies them out and unmaps.
fn read_back(device: &wgpu::Device, staging: &wgpu::Buffer, len: u64) -> Result<Vec<u8>, Error> {
    let slice = staging.slice(..len);
    let (sender, receiver) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = sender.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely())?;
    receiver.recv()??;
    let bytes = slice.get_mapped_range()?.to_vec();
    staging.unmap();
    Ok(bytes)
}

/// Runs `f` inside validation and out-of-memory error scopes, so a device error comes back as
/// an `Err` instead of wgpu's default panic.
fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = f();
    let validation = pollster::block_on(validation.pop());
    let oom = pollster::block_on(oom.pop());
    match (validation, oom) {
        (Some(e), _) | (None, Some(e)) => Err(format!("device error: {e}").into()),
        (None, None) => result,
    }
}

/// Everything on the device for one run.
struct Trainer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    xent: Gpu,
    layers: usize,
    batch: usize,
    held_out_rows: usize,
    /// The epoch's shuffle of the training split (u32 indices).
    perm: wgpu::Buffer,
    /// This step's slice of `perm`.
    batch_idx: wgpu::Buffer,
    /// The minibatch's labels (i32).
    batch_labels: wgpu::Buffer,
    /// Training activations, input first: `acts[0]` is the minibatch, the last the head's
    /// input `h` (no logits: the head is xent's).
    acts: Vec<wgpu::Buffer>,
    /// d loss / d output of each hidden layer; xent writes the last (dh), `relu_mask` masks it.
    deltas: Vec<wgpu::Buffer>,
    /// Held-out activations, input first, up to the head's input.
    held_acts: Vec<wgpu::Buffer>,
    /// The head in nn.Linear's layout (W [10 × D], b [10]), unpacked from its block each step,
    /// and its gradients before they are packed.
    head: [wgpu::Buffer; 4],
    /// The head's input width D.
    head_inputs: usize,
    /// θ_head → W, b.
    unpack: Dispatch,
    held_labels: wgpu::Buffer,
    /// Parameter blocks, one per layer.
    params: Vec<wgpu::Buffer>,
    /// The training batch loss (f32 at 0).
    loss: wgpu::Buffer,
    /// Losses of the steps since the last read-back.
    loss_log: wgpu::Buffer,
    loss_staging: wgpu::Buffer,
    /// xent's out-of-range-label flag for every call, read with the held-out results.
    label_error: wgpu::Buffer,
    /// Held-out loss, per-row records and their valid / correct counts.
    held_loss: wgpu::Buffer,
    held_rows: wgpu::Buffer,
    held_counts: wgpu::Buffer,
    eval_staging: wgpu::Buffer,
    /// minibatch → the head's input.
    forward: Vec<Dispatch>,
    /// The head's dW, db, dh → gradients → updated parameters.
    backward: Vec<Dispatch>,
    /// held-out images → the head's input.
    held_forward: Vec<Dispatch>,
}

impl Trainer {
    fn new(dev: &Device, config: &Config, digits: &Digits) -> Result<Trainer, Error> {
        let device = &dev.device;
        let xent = Gpu::from_device(dev.device.clone(), dev.queue.clone())?;
        let kernels = Kernels::new(device);
        let widths = config.widths();
        let layers = widths.len() - 1;
        let batch = config.batch;
        let (train, held): (&Split, &Split) = (&digits.train, &digits.held_out);
        let held_out_rows = held.samples();
        let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let none = wgpu::BufferUsages::empty();

        let x_train = storage_init(device, "x_train", &train.x);
        let y_train = storage_init(device, "y_train", &train.y);
        let perm = storage(device, "perm", train.samples() * 4, copy);
        let batch_idx = storage(device, "batch_idx", batch * 4, copy);
        let batch_labels = storage(device, "batch_labels", batch * 4, none);
        // Activations up to the head's input (widths[layers − 1]); the logits are never held.
        let acts: Vec<wgpu::Buffer> = widths[..layers]
            .iter()
            .map(|w| storage(device, "activations", batch * w * 4, none))
            .collect();
        let deltas: Vec<wgpu::Buffer> = widths[1..layers]
            .iter()
            .map(|w| storage(device, "deltas", batch * w * 4, none))
            .collect();
        let mut held_acts = vec![storage_init(device, "x_held_out", &held.x)];
        held_acts.extend(
            widths[1..layers]
                .iter()
                .map(|w| storage(device, "held-out activations", held_out_rows * w * 4, none)),
        );
        let head_inputs = widths[layers - 1];
        let head = [
            (head_inputs * CLASSES, "head W"),
            (CLASSES, "head b"),
            (head_inputs * CLASSES, "head dW"),
            (CLASSES, "head db"),
        ]
        .map(|(len, label)| storage(device, label, len * 4, none));
        let held_labels = storage_init(device, "y_held_out", &held.y);
        let init = init_params(config);
        let params: Vec<wgpu::Buffer> = init
            .iter()
            .map(|p| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("parameters"),
                    contents: bytemuck::cast_slice(p),
                    usage: wgpu::BufferUsages::STORAGE | copy,
                })
            })
            .collect();
        let grads: Vec<wgpu::Buffer> = init
            .iter()
            .map(|p| storage(device, "gradient", p.len() * 4, none))
            .collect();
        // Adam's moments start at zero (fresh buffers are zeroed), as does its step counter.
        let moments: Vec<(wgpu::Buffer, wgpu::Buffer)> = init
            .iter()
            .map(|p| {
                (
                    storage(device, "adam m", p.len() * 4, none),
                    storage(device, "adam v", p.len() * 4, none),
                )
            })
            .collect();
        let adam_state = storage(device, "adam state", 16, none);
        let loss = storage(device, "loss", 4, wgpu::BufferUsages::COPY_SRC);
        let log_bytes = config.steps_per_log as u64 * 4;
        let loss_log = storage(device, "loss log", log_bytes as usize, copy);
        let loss_staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loss staging"),
            size: log_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let held_loss = storage(device, "held-out loss", 4, wgpu::BufferUsages::COPY_SRC);
        let label_error = storage(
            device,
            "label error flag",
            4,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let rows_bytes = held_out_rows * std::mem::size_of::<GpuRow>();
        let held_rows = storage(
            device,
            "held-out rows",
            rows_bytes,
            wgpu::BufferUsages::COPY_SRC,
        );
        let held_counts = storage(
            device,
            "held-out counts",
            8,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let eval_staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("eval staging"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let dense = |rows: usize, l: usize, flags: u32| Params {
            rows: rows as u32,
            inputs: widths[l] as u32,
            outputs: widths[l + 1] as u32,
            flags,
            ..Params::default()
        };
        let relu = |l: usize| u32::from(l + 1 < layers);

        let mut forward = vec![Dispatch::new(
            device,
            &kernels.gather,
            Params {
                rows: batch as u32,
                inputs: widths[0] as u32,
                ..Params::default()
            },
            &[&x_train, &y_train, &batch_idx, &acts[0], &batch_labels],
            batch * widths[0],
        )];
        let mut held_forward = Vec::new();
        for l in 0..layers - 1 {
            forward.push(Dispatch::new(
                device,
                &kernels.forward,
                dense(batch, l, relu(l)),
                &[&acts[l], &params[l], &acts[l + 1]],
                batch * widths[l + 1],
            ));
            held_forward.push(Dispatch::new(
                device,
                &kernels.forward,
                dense(held_out_rows, l, relu(l)),
                &[&held_acts[l], &params[l], &held_acts[l + 1]],
                held_out_rows * widths[l + 1],
            ));
        }

        let head_shape = Params {
            inputs: head_inputs as u32,
            outputs: CLASSES as u32,
            ..Params::default()
        };
        let head_values = (head_inputs + 1) * CLASSES;
        let unpack = Dispatch::new(
            device,
            &kernels.head_unpack,
            head_shape,
            &[&params[layers - 1], &head[0], &head[1]],
            head_values,
        );
        let mut backward = vec![Dispatch::new(
            device,
            &kernels.head_pack,
            head_shape,
            &[&head[2], &head[3], &grads[layers - 1]],
            head_values,
        )];
        if layers > 1 {
            // The head's input came out of a ReLU: dh masked into that layer's delta.
            let count = batch * head_inputs;
            backward.push(Dispatch::new(
                device,
                &kernels.relu_mask,
                Params {
                    outputs: count as u32,
                    ..Params::default()
                },
                &[&acts[layers - 1], &deltas[layers - 2]],
                count,
            ));
        }
        for l in (0..layers - 1).rev() {
            backward.push(Dispatch::new(
                device,
                &kernels.backward_weight,
                dense(batch, l, 0),
                &[&acts[l], &deltas[l], &grads[l]],
                (widths[l] + 1) * widths[l + 1],
            ));
            if l > 0 {
                // The input of layer l came out of layer l − 1's ReLU: mask by it.
                backward.push(Dispatch::new(
                    device,
                    &kernels.backward_input,
                    dense(batch, l, 1),
                    &[&deltas[l], &params[l], &acts[l], &deltas[l - 1]],
                    batch * widths[l],
                ));
            }
        }
        let update = |count: usize| Params {
            outputs: count as u32,
            lr: config.lr,
            beta1: BETA1,
            beta2: BETA2,
            eps: ADAM_EPS,
            ..Params::default()
        };
        match config.optimizer {
            Optimizer::Sgd => {
                for (p, g) in params.iter().zip(&grads) {
                    let count = p.size() as usize / 4;
                    backward.push(Dispatch::new(
                        device,
                        &kernels.sgd_update,
                        update(count),
                        &[g, p],
                        count,
                    ));
                }
            }
            Optimizer::Adam => {
                backward.push(Dispatch::new(
                    device,
                    &kernels.adam_tick,
                    update(0),
                    &[&adam_state],
                    1,
                ));
                for ((p, g), (m, v)) in params.iter().zip(&grads).zip(&moments) {
                    let count = p.size() as usize / 4;
                    backward.push(Dispatch::new(
                        device,
                        &kernels.adam_update,
                        update(count),
                        &[g, p, m, v, &adam_state],
                        count,
                    ));
                }
            }
        }

        let limit = device.limits().max_compute_workgroups_per_dimension as u64;
        if let Some(d) = forward
            .iter()
            .chain(&backward)
            .chain(&held_forward)
            .chain([&unpack])
            .find(|d| d.workgroups > limit)
        {
            return Err(format!(
                "{} would need {} workgroups, over the device's {limit} per dimension \
                 (use a smaller --batch or --hidden)",
                d.name, d.workgroups
            )
            .into());
        }

        Ok(Trainer {
            device: dev.device.clone(),
            queue: dev.queue.clone(),
            xent,
            layers,
            batch,
            held_out_rows,
            perm,
            batch_idx,
            batch_labels,
            acts,
            deltas,
            held_acts,
            head,
            head_inputs,
            unpack,
            held_labels,
            params,
            loss,
            loss_log,
            loss_staging,
            label_error,
            held_loss,
            held_rows,
            held_counts,
            eval_staging,
            forward,
            backward,
            held_forward,
        })
    }

    /// Records one training step into a fresh encoder and submits it; with `read` also copies
    /// the loss log (its first `logged + 1` entries) out and returns them.
    fn step(&self, step: usize, logged: usize, read: bool) -> Result<Option<Vec<f32>>, Error> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train_digits step"),
            });
        let idx_bytes = self.batch as u64 * 4;
        encoder.copy_buffer_to_buffer(
            &self.perm,
            step as u64 * idx_bytes,
            &self.batch_idx,
            0,
            idx_bytes,
        );
        record(&mut encoder, "forward", &self.forward);
        record(
            &mut encoder,
            "head unpack",
            std::slice::from_ref(&self.unpack),
        );
        let [_, _, dw, db] = &self.head;
        let mut outputs = DeviceLinearOutputs::new(self.loss.slice(..));
        outputs.hidden_gradient = (self.layers > 1)
            .then(|| DeviceGradientSlice::Write(self.deltas[self.layers - 2].slice(..)));
        outputs.weight_gradient = Some(DeviceGradientSlice::Write(dw.slice(..)));
        outputs.bias_gradient = Some(DeviceGradientSlice::Write(db.slice(..)));
        outputs.target_error = Some(self.label_error.slice(..));
        self.xent.record_linear_cross_entropy(
            &mut encoder,
            &LinearCrossEntropy::new(CrossEntropy::new()),
            &self.head_batch(&self.acts[self.layers - 1], &self.batch_labels, self.batch),
            &outputs,
        )?;
        encoder.copy_buffer_to_buffer(&self.loss, 0, &self.loss_log, logged as u64 * 4, 4);
        record(&mut encoder, "backward and update", &self.backward);
        let bytes = (logged as u64 + 1) * 4;
        if read {
            encoder.copy_buffer_to_buffer(&self.loss_log, 0, &self.loss_staging, 0, bytes);
        }
        self.queue.submit([encoder.finish()]);
        if !read {
            return Ok(None);
        }
        let bytes = read_back(&self.device, &self.loss_staging, bytes)?;
        Ok(Some(bytemuck::pod_collect_to_vec(&bytes)))
    }

    /// Held-out loss and accuracy: the forward kernels, then xent with per-row records
    /// (`GpuRow`) and no gradient, counted on the device; one read-back of 16 bytes (loss,
    /// label-error flag, valid and correct rows).
    fn evaluate(&self) -> Result<(f32, f64), Error> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train_digits eval"),
            });
        record(&mut encoder, "held-out forward", &self.held_forward);
        record(
            &mut encoder,
            "head unpack",
            std::slice::from_ref(&self.unpack),
        );
        let mut outputs = DeviceLinearOutputs::new(self.held_loss.slice(..));
        outputs.rows = Some(self.held_rows.slice(..));
        outputs.target_error = Some(self.label_error.slice(..));
        self.xent.record_linear_cross_entropy(
            &mut encoder,
            &LinearCrossEntropy::new(CrossEntropy::new()),
            &self.head_batch(
                &self.held_acts[self.layers - 1],
                &self.held_labels,
                self.held_out_rows,
            ),
            &outputs,
        )?;
        encoder.copy_buffer_to_buffer(&self.held_loss, 0, &self.eval_staging, 0, 4);
        encoder.copy_buffer_to_buffer(&self.label_error, 0, &self.eval_staging, 4, 4);
        encoder.clear_buffer(&self.label_error, 0, None);
        self.xent.record_row_counts(
            &mut encoder,
            self.held_rows.slice(..),
            self.held_out_rows,
            self.held_counts.slice(..),
        )?;
        encoder.copy_buffer_to_buffer(&self.held_counts, 0, &self.eval_staging, 8, 8);
        self.queue.submit([encoder.finish()]);
        let bytes = read_back(&self.device, &self.eval_staging, self.eval_staging.size())?;
        if let Some(row) = target_error_row(u32::from_le_bytes(bytes[4..8].try_into()?)) {
            return Err(format!("a label out of range on the device, row {row}").into());
        }
        let loss = f32::from_le_bytes(bytes[..4].try_into()?);
        let counts: [u32; 2] = bytemuck::pod_read_unaligned(&bytes[8..16]);
        Ok((loss, counts[1] as f64 / counts[0] as f64))
    }

    /// The head's inputs for xent: `h` (`rows` × D), the unpacked W and b, i32 labels.
    fn head_batch<'a>(
        &'a self,
        h: &'a wgpu::Buffer,
        labels: &'a wgpu::Buffer,
        rows: usize,
    ) -> DeviceLinearBatch<'a> {
        let d = self.head_inputs;
        let mut batch = DeviceLinearBatch::new(
            DeviceMatrix::new(h.slice(..), Dtype::F32, rows, d),
            DeviceMatrix::new(self.head[0].slice(..), Dtype::F32, CLASSES, d),
            DeviceIndexTargets::I32(labels.slice(..)),
        );
        batch.bias = Some(self.head[1].slice(..));
        batch
    }

    /// The parameter blocks, read back (tests compare them with the CPU's).
    fn read_params(&self) -> Result<Vec<Vec<f32>>, Error> {
        self.params
            .iter()
            .map(|p| {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("parameter staging"),
                    size: p.size(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut encoder = self.device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(p, 0, &staging, 0, p.size());
                self.queue.submit([encoder.finish()]);
                Ok(bytemuck::pod_collect_to_vec(&read_back(
                    &self.device,
                    &staging,
                    p.size(),
                )?))
            })
            .collect()
    }
}

/// Trains on `device`; `on_event` sees the losses as they are read back (every
/// `steps_per_log` steps and at each epoch's end) and each epoch's scores. Also returns the
/// final parameter blocks.
pub fn train(
    device: &Device,
    config: &Config,
    digits: &Digits,
    on_event: &mut dyn FnMut(Event),
) -> Result<(Report, Vec<Vec<f32>>), Error> {
    check_config(config, digits.train.samples())?;
    let trainer = scoped(&device.device, || Trainer::new(device, config, digits))?;
    let steps_per_epoch = digits.train.samples() / config.batch;
    let mut report = Report {
        device: device.name.clone(),
        step_losses: Vec::new(),
        epochs: Vec::new(),
        elapsed: Default::default(),
    };
    let start = std::time::Instant::now();
    for epoch in 0..config.epochs {
        scoped(&device.device, || {
            let order = epoch_order(config, epoch, digits.train.samples());
            // The epoch's only upload: 4 bytes per training image.
            trainer
                .queue
                .write_buffer(&trainer.perm, 0, bytemuck::cast_slice(&order));
            let mut logged = 0;
            for step in 0..steps_per_epoch {
                let read = logged + 1 == config.steps_per_log || step + 1 == steps_per_epoch;
                if let Some(losses) = trainer.step(step, logged, read)? {
                    on_event(Event::Steps {
                        first: report.step_losses.len(),
                        losses: &losses,
                    });
                    report.step_losses.extend(losses);
                    logged = 0;
                } else {
                    logged += 1;
                }
            }
            let (held_out_loss, held_out_accuracy) = trainer.evaluate()?;
            let epoch_losses = &report.step_losses[report.step_losses.len() - steps_per_epoch..];
            let e = Epoch {
                epoch: epoch + 1,
                train_loss: (epoch_losses.iter().map(|&l| l as f64).sum::<f64>()
                    / steps_per_epoch as f64) as f32,
                held_out_loss,
                held_out_accuracy,
            };
            on_event(Event::Epoch(e));
            report.epochs.push(e);
            Ok(())
        })?;
    }
    report.elapsed = start.elapsed();
    let params = scoped(&device.device, || trainer.read_params())?;
    Ok((report, params))
}
