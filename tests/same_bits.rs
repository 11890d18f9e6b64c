//! Same bits across a refactor: runs a fixed grid of inputs (every option, dtype, layout,
//! target kind and gradient mode; softmax, BCE, shards and the device-resident API) through
//! every backend this machine has, and writes one digest of every output's bits per line.
//!
//! Not a pass/fail test (the bits depend on the CPU's SIMD level and on the adapter): record
//! before a change that must not move any result, record after, and diff the two files.
//!
//! ```text
//! XENT_SAME_BITS=/tmp/before.txt cargo test --release --test same_bits -- --ignored
//! ```
mod common;

use common::device::{gpu, read, small_bindings, variants, DeviceCase};
use common::shards::{run_sharded, uneven};
use common::{try_run_softmax, Case, GradMode, Hardness, Run};
use std::fmt::Write as _;
use std::sync::Arc;
use xent::cpu::SimdLevel;
use xent::gpu::{DeviceGradient, DeviceOutputs, Gpu};
use xent::{Backend, BinaryCrossEntropy, CrossEntropy, Dtype, InputKind, Reduction, Request};

/// FNV-1a over the bits of everything a call returned.
struct Digest(u64);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn floats(&mut self, values: &[f32]) {
        self.bytes(&(values.len() as u64).to_le_bytes());
        for v in values {
            self.bytes(&v.to_bits().to_le_bytes());
        }
    }
    fn run(mut self, run: &Run) -> String {
        let o = &run.output;
        self.floats(o.loss.as_slice());
        self.floats(o.row_losses.as_deref().unwrap_or(&[]));
        self.floats(o.lse.as_deref().unwrap_or(&[]));
        if let Some(m) = &o.metrics {
            let argmax: Vec<f32> = m.argmax.iter().map(|&a| f32::from_bits(a)).collect();
            let flags: Vec<f32> = m
                .correct
                .iter()
                .zip(&m.valid)
                .map(|(&c, &v)| (c as u8 * 2 + v as u8) as f32)
                .collect();
            self.floats(&argmax);
            self.floats(&flags);
            self.floats(&m.target_prob);
            self.floats(&m.entropy);
            self.floats(&m.confidence);
        }
        self.floats(run.gradient.as_deref().unwrap_or(&[]));
        format!("{:016x}", self.0)
    }
}

fn backends() -> Vec<(String, Backend)> {
    let mut out: Vec<(String, Backend)> = SimdLevel::supported()
        .into_iter()
        .map(|level| (format!("cpu-{level}"), Backend::CpuWith(level)))
        .collect();
    let gpus: Vec<(&str, Arc<Gpu>)> = variants()
        .into_iter()
        .zip(["gpu-default", "gpu-three-pass", "gpu-other-variant"])
        .map(|(g, n)| (n, g))
        .chain(
            small_bindings(32 << 10)
                .into_iter()
                .zip(["gpu-small-fused", "gpu-small-three-pass"])
                .map(|(g, n)| (n, g)),
        )
        .collect();
    out.extend(
        gpus.into_iter()
            .map(|(n, g)| (n.to_string(), Backend::Gpu(g))),
    );
    out
}

/// Softmax cases: (label, case, options, upstream).
fn softmax_grid() -> Vec<(String, Case, CrossEntropy, bool)> {
    let shapes = [(37, 10), (9, 1000), (3, 6000)];
    let mut out = vec![];
    for (s, &(rows, classes)) in shapes.iter().enumerate() {
        let seed = 100 + s as u64;
        let base = || Case::new(seed, rows, classes, Hardness::ALL).ignore_every(5, -100);
        let finite = || Case::new(seed, rows, classes, Hardness::default()).ignore_every(5, -100);
        let plain = CrossEntropy::new();
        let all = CrossEntropy::new()
            .label_smoothing(0.1)
            .z_loss(1e-3)
            .softcap(20.0)
            .logit_scale(0.7);
        let mut add = |name: &str, case: Case, options: CrossEntropy, upstream: bool| {
            out.push((format!("{rows}x{classes} {name}"), case, options, upstream))
        };
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let r = format!("{reduction:?}");
            add(
                &format!("plain {r}"),
                base(),
                plain.reduction(reduction),
                false,
            );
            add(
                &format!("all {r}"),
                base().weighted(7).sample_weighted(8),
                all.reduction(reduction),
                false,
            );
            add(
                &format!("focal {r}"),
                base().weighted(9),
                CrossEntropy::new().focal_gamma(2.0).reduction(reduction),
                false,
            );
            add(
                &format!("focal smoothed {r}"),
                base().sample_weighted(10),
                CrossEntropy::new()
                    .focal_gamma(1.5)
                    .label_smoothing(0.2)
                    .reduction(reduction),
                false,
            );
            add(
                &format!("soft {r}"),
                base().soft(11).weighted(12),
                all.reduction(reduction),
                false,
            );
            add(
                &format!("probabilities {r}"),
                finite().probabilities(),
                CrossEntropy::new()
                    .input(InputKind::PROBABILITIES)
                    .reduction(reduction),
                false,
            );
        }
        add(
            "upstream none",
            base(),
            plain.reduction(Reduction::None),
            true,
        );
        let weighted = base().weighted(16).sample_weighted(15);
        add(
            "upstream sum",
            weighted.clone(),
            all.reduction(Reduction::Sum),
            true,
        );
        add(
            "upstream mean",
            weighted,
            all.reduction(Reduction::Mean),
            true,
        );
        let ignore_3 = Case::new(seed, rows, classes, Hardness::ALL).ignore_every(3, 3);
        add("ignore 3", ignore_3, plain.ignore_index(3), false);
        add(
            "smoothing",
            base().weighted(13),
            plain.label_smoothing(0.05),
            false,
        );
        add("f16", base().dtype(Dtype::F16), all, false);
        add("bf16", base().dtype(Dtype::Bf16), all, false);
        add("i32", base().i32_targets(), plain, false);
        add(
            "focal f16",
            base().dtype(Dtype::Bf16),
            plain.focal_gamma(2.0),
            false,
        );
    }
    let spatial = || Case::new(300, 4 * 33, 21, Hardness::ALL).class_dim1(33);
    out.push((
        "class_dim1 plain".into(),
        spatial(),
        CrossEntropy::new(),
        false,
    ));
    out.push((
        "class_dim1 all".into(),
        spatial().weighted(14).dtype(Dtype::Bf16),
        CrossEntropy::new().label_smoothing(0.1).focal_gamma(2.0),
        false,
    ));
    out
}

fn bce_grid() -> Vec<(String, Case, BinaryCrossEntropy)> {
    let mut out = vec![];
    for (rows, classes) in [(33, 7), (5, 3000)] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let case = || Case::new(400, rows, classes, Hardness::ALL).multi_label(401, true);
            out.push((
                format!("{rows}x{classes} bce {reduction:?}"),
                case(),
                BinaryCrossEntropy::new().reduction(reduction),
            ));
            out.push((
                format!("{rows}x{classes} bce all {reduction:?}"),
                case().sample_weighted(402),
                BinaryCrossEntropy::new()
                    .label_smoothing(0.1)
                    .focal_gamma(2.0)
                    .focal_alpha(0.25)
                    .reduction(reduction),
            ));
        }
    }
    out
}

#[test]
#[ignore = "a recorder, not a check: see the file's docs"]
fn record() {
    let path = std::env::var("XENT_SAME_BITS").expect("XENT_SAME_BITS=<output file>");
    let mut lines = String::new();
    let backends = backends();
    for (label, case, options, upstream) in softmax_grid() {
        let up: Vec<f32> = match options.reduction {
            Reduction::None => (0..case.rows)
                .map(|r| 0.5 + (r % 4) as f32 * 0.25)
                .collect(),
            _ => vec![0.75],
        };
        let upstream = upstream.then_some(&up[..]);
        for (name, backend) in &backends {
            for mode in [GradMode::None, GradMode::OutOfPlace, GradMode::InPlace] {
                let digest = match try_run_softmax(&case, &options, upstream, mode, |o, b, r| {
                    o.compute(backend, b, r)
                }) {
                    Ok(run) => Digest::new().run(&run),
                    Err(e) => format!("error {e}"),
                };
                writeln!(lines, "{name} | {label} | {mode:?} | {digest}").unwrap();
            }
        }
    }
    for (label, case, options) in bce_grid() {
        for (name, backend) in &backends {
            for grad in [false, true] {
                let mut storage = case.storage();
                let t32 = case.targets_i32();
                let mut g = vec![0f32; case.rows * case.classes];
                let mut request = Request::new().row_losses().lse().metrics();
                if grad {
                    request = request.gradient_into(&mut g);
                }
                let digest = match options.compute(
                    backend,
                    case.batch(&mut storage, &t32, false),
                    request,
                ) {
                    Ok(output) => Digest::new().run(&Run {
                        output,
                        gradient: grad.then_some(g),
                    }),
                    Err(e) => format!("error {e}"),
                };
                writeln!(lines, "{name} | {label} | grad {grad} | {digest}").unwrap();
            }
        }
    }
    // Vocabulary shards (index targets, row-major).
    for (label, case, options, upstream) in softmax_grid() {
        if case.dense_targets.is_some()
            || case.spatial.is_some()
            || matches!(options.input, InputKind::Probabilities { .. })
        {
            continue;
        }
        let up: Vec<f32> = match options.reduction {
            Reduction::None => (0..case.rows)
                .map(|r| 0.5 + (r % 4) as f32 * 0.25)
                .collect(),
            _ => vec![0.75],
        };
        let upstream = upstream.then_some(&up[..]);
        let shards = uneven(case.classes, 3);
        for (name, backend) in &backends {
            // A panic is recorded too: the GPU shard path once failed on small bindings.
            let digest = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_sharded(&label, backend, &case, &options, &shards, upstream)
            }))
            .map_or_else(
                |e| {
                    let why = e
                        .downcast_ref::<String>()
                        .map_or("?", |s| s.as_str())
                        .replace('\n', " ");
                    format!("panic {why}")
                },
                |run| Digest::new().run(&run),
            );
            writeln!(lines, "{name} | shards {label} | {digest}").unwrap();
        }
    }
    // The device-resident API: loss, per-row losses, LSE and gradient in caller buffers.
    if let Some(gpu) = gpu() {
        for (label, case, options, _) in softmax_grid() {
            if case.dtype != Dtype::F32 {
                continue;
            }
            let on = DeviceCase::upload(&gpu, &case);
            let n = case.rows as u64 * 4;
            let make = |bytes: u64| {
                gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let (loss, rows) = (make(4), make(n * 8));
            let gradient = make(n * case.classes as u64);
            let outputs = DeviceOutputs {
                rows: Some(rows.slice(..)),
                ..DeviceOutputs::new(loss.slice(..))
            }
            .gradient(DeviceGradient::Into(gradient.slice(..)));
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            let digest =
                match gpu.record_cross_entropy(&mut encoder, &options, &on.batch(), &outputs) {
                    Ok(()) => {
                        gpu.queue().submit([encoder.finish()]);
                        let mut d = Digest::new();
                        for b in [&loss, &rows, &gradient] {
                            d.floats(&read(&gpu, b));
                        }
                        format!("{:016x}", d.0)
                    }
                    Err(e) => format!("error {e}"),
                };
            writeln!(lines, "device | {label} | {digest}").unwrap();
        }
    }
    std::fs::write(&path, lines).expect("write digests");
}
