//! Criterion benchmarks: xent's fused CPU path against a plain SIMD read / copy of the same
//! logits (the memory-bandwidth bound) and against the naive unfused implementation; and the
//! GPU kernels against both on the same shapes. Focal loss (γ = 2, without and with label
//! smoothing 0.1) runs next to plain cross-entropy on the same logits, so its cost shows:
//! without smoothing only `p[y]` is focal (still one read of the logits), with smoothing every
//! class's `(1 − p)^γ` takes one more pass over each row (from cache on the CPU, a third
//! kernel on the GPU).
//!
//! The `short` groups time issue #15's short-row shapes (1048576 × 2 and × 10, 262144 × 100,
//! 65536 × 1000 and 16 × 21 × 512 × 512 in the (N, C, d…) layout) on the CPU beside the read
//! and copy of the same logits (`XENT_BENCH_SHORT=0` skips them).
//!
//! The `linear` group times the linear head (`xent::linear`, issue #13) at 1024 × 512 × 32000:
//! the plain GEMM beside the fused forward and both strategies' forward+backward
//! (`XENT_BENCH_LINEAR=0` skips it; `xent bench --linear` has the full table with scratch).
//!
//! Run: `cargo bench --bench loss` (`XENT_BENCH_ROWS=…` scales the CPU shape down). After the
//! groups run it prints forward / read and forward+backward / copy, the ratios issue #2 targets
//! (≤ 1.25 and ≤ 1.4 at 4096 × 32 000 f32), twice: as fastest / fastest over criterion's
//! samples, and as the median of 15 rounds that time baseline and loss back to back (robust
//! to the memory speed of a shared machine drifting between benchmarks); also the forward's
//! chunk loop from L1 (its compute floor) and focal / plain cross-entropy. GPU rows are
//! timed on the wall clock (submit, wait for the device, stop); where the adapter has
//! `Features::TIMESTAMP_QUERY`, the device time of the same work (`xent::gpu::Stopwatch`:
//! timestamps written before and after it) is printed next to the wall time. Plain cross-entropy also runs on the three
//! passes (`GpuOptions::three_pass`) beside the default device, so the fused kernel's saving
//! shows on shapes whose rows fit it.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;
use xent::cli::{naive, probe};
use xent::gpu::{
    Clock, DeviceBatch, DeviceGradient, DeviceOutputs, DeviceTargets, Gpu, GpuOptions, Stopwatch,
};
use xent::{Backend, Batch, CrossEntropy, Dtype, Layout, Logits, Request};

/// Fastest time per iteration seen for each benchmark, for the ratios printed at the end.
fn fastest() -> &'static Mutex<HashMap<String, Duration>> {
    static BEST: OnceLock<Mutex<HashMap<String, Duration>>> = OnceLock::new();
    BEST.get_or_init(Default::default)
}

/// Times `f` the criterion way, remembering the fastest per-iteration time under `name`.
fn timed(name: &str, iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let total = start.elapsed();
    let per = total / iters.max(1) as u32;
    let mut best = fastest().lock().unwrap();
    let entry = best.entry(name.to_string()).or_insert(per);
    *entry = (*entry).min(per);
    total
}

/// Fastest device time (timestamp queries) per GPU benchmark.
fn device_fastest() -> &'static Mutex<HashMap<String, Duration>> {
    static BEST: OnceLock<Mutex<HashMap<String, Duration>>> = OnceLock::new();
    BEST.get_or_init(Default::default)
}

struct Data {
    rows: usize,
    classes: usize,
    logits: Vec<f32>,
    targets: Vec<i64>,
}

/// The losses timed side by side: (name suffix, options). The plain one has no suffix.
fn variants() -> [(&'static str, CrossEntropy); 3] {
    let focal = CrossEntropy::new().focal_gamma(2.0);
    [
        ("", CrossEntropy::new()),
        (" focal", focal),
        (" focal-ls", focal.label_smoothing(0.1)),
    ]
}

fn data(rows: usize, classes: usize) -> Data {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let logits = (0..rows * classes).map(|_| 6.0 * next() - 3.0).collect();
    let targets = (0..rows).map(|i| ((i * 7919) % classes) as i64).collect();
    Data {
        rows,
        classes,
        logits,
        targets,
    }
}

fn cpu(c: &mut Criterion) {
    let rows: usize = std::env::var("XENT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let d = data(rows, 32_000);
    let bytes = (d.logits.len() * 4) as u64;
    let mut group = c.benchmark_group(format!("cpu {}x{} f32", d.rows, d.classes));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(bytes));
    let mut grad = vec![0f32; d.logits.len()];

    group.bench_function("read (SIMD sum)", |b| {
        b.iter_custom(|n| timed("read", n, || _ = black_box(probe::read_pass(&d.logits))))
    });
    group.bench_function("forward chunk loop from L1", |b| {
        b.iter_custom(|n| {
            timed("chunk loop", n, || {
                _ = black_box(probe::chunk_loop_pass(d.logits.len()))
            })
        })
    });
    group.bench_function("copy", |b| {
        b.iter_custom(|n| timed("copy", n, || probe::copy_pass(&d.logits, &mut grad)))
    });
    for (suffix, loss) in variants() {
        group.bench_function(format!("xent forward{suffix}"), |b| {
            b.iter_custom(|n| {
                timed(&format!("forward{suffix}"), n, || {
                    let batch =
                        Batch::new(Logits::new(&d.logits, d.rows, d.classes), &d.targets[..]);
                    black_box(loss.compute(&Backend::Cpu, batch, Request::new()).unwrap());
                })
            })
        });
        group.bench_function(format!("xent forward+backward{suffix}"), |b| {
            b.iter_custom(|n| {
                timed(&format!("forward+backward{suffix}"), n, || {
                    let batch =
                        Batch::new(Logits::new(&d.logits, d.rows, d.classes), &d.targets[..]);
                    black_box(
                        loss.compute(
                            &Backend::Cpu,
                            batch,
                            Request::new().gradient_into(&mut grad),
                        )
                        .unwrap(),
                    );
                })
            })
        });
    }
    paired_ratios(&d, &mut grad);
    let mut scratch = naive::Scratch::default();
    group.bench_function("naive forward", |b| {
        b.iter_custom(|n| {
            timed("naive forward", n, || {
                _ = black_box(naive::forward(
                    &d.logits,
                    d.rows,
                    d.classes,
                    &d.targets,
                    &mut scratch,
                ))
            })
        })
    });
    group.bench_function("naive forward+backward", |b| {
        b.iter_custom(|n| {
            timed("naive forward+backward", n, || {
                _ = black_box(naive::forward_backward(
                    &d.logits,
                    d.rows,
                    d.classes,
                    &d.targets,
                    &mut scratch,
                    &mut grad,
                ))
            })
        })
    });
    group.finish();
}

/// Short rows on the CPU (issue #15's shapes): xent's forward and forward+backward beside the
/// read and copy of the same logits, row-major and in the (N, C, d…) layout.
/// `XENT_BENCH_SHORT=0` skips the group (the segmentation shape alone is 1 GB of f32 logits
/// and gradient).
fn short(c: &mut Criterion) {
    if std::env::var("XENT_BENCH_SHORT").is_ok_and(|v| v == "0") {
        return;
    }
    // The shapes of `xent bench --short`, one list.
    for shape in xent::cli::bench::SHORT_SHAPES {
        let (rows, classes, spatial) = (shape.rows, shape.classes, shape.spatial);
        let d = data(rows, classes);
        let logits = || match spatial {
            0 => Logits::new(&d.logits, rows, classes),
            s => Logits::class_dim1(&d.logits, rows / s, classes, s),
        };
        let name = format!("short {shape} f32");
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Bytes((d.logits.len() * 4) as u64));
        let mut grad = vec![0f32; d.logits.len()];
        group.bench_function("read (SIMD sum)", |b| {
            b.iter(|| black_box(probe::read_pass(&d.logits)))
        });
        group.bench_function("copy", |b| {
            b.iter(|| probe::copy_pass(&d.logits, &mut grad))
        });
        let loss = CrossEntropy::new();
        group.bench_function("xent forward", |b| {
            b.iter(|| {
                let batch = Batch::new(logits(), &d.targets[..]);
                black_box(loss.compute(&Backend::Cpu, batch, Request::new()).unwrap())
            })
        });
        group.bench_function("xent forward+backward", |b| {
            b.iter(|| {
                let batch = Batch::new(logits(), &d.targets[..]);
                let request = Request::new().gradient_into(&mut grad);
                black_box(loss.compute(&Backend::Cpu, batch, request).unwrap())
            })
        });
        group.finish();
    }
}

/// The linear head (`xent::linear`) at `xent bench --linear`'s first CPU shape: the plain
/// product (its ceiling), the fused forward, and forward-backward (dh, dW, db) of both
/// strategies, as elements of the `N × V` logits per second.
fn linear(c: &mut Criterion) {
    use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy};
    use xent::Matrix;
    if std::env::var("XENT_BENCH_LINEAR").is_ok_and(|v| v == "0") {
        return;
    }
    let shape = xent::cli::bench::LINEAR_SHAPES[0];
    let (n, d, v) = (shape.rows, shape.hidden, shape.vocab);
    let h = data(n, d).logits;
    let w: Vec<f32> = data(v, d).logits.iter().map(|x| x * 0.1).collect();
    let y = data(n, v).targets;
    let mut group = c.benchmark_group(format!("linear {shape} f32"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements((n * v) as u64));
    let mut x = vec![0f32; n * v];
    group.bench_function("gemm h·Wᵀ", |b| {
        b.iter(|| xent::cli::bench::product(&mut x, &h, &w, shape))
    });
    drop(x);
    let batch = || LinearBatch::new(Matrix::new(&h, n, d), Matrix::new(&w, v, d), &y[..]);
    let fused = LinearCrossEntropy::new(CrossEntropy::new()).strategy(Strategy::Fused);
    group.bench_function("fused forward", |b| {
        b.iter(|| black_box(fused.compute(&Backend::Cpu, batch(), LinearRequest::new())))
    });
    let (mut dh, mut dw, mut db) = (vec![0f32; n * d], vec![0f32; v * d], vec![0f32; v]);
    for strategy in [Strategy::Fused, Strategy::Chunked] {
        let loss = LinearCrossEntropy::new(CrossEntropy::new()).strategy(strategy);
        group.bench_function(format!("{strategy:?} forward+backward"), |b| {
            b.iter(|| {
                let request = LinearRequest::new()
                    .hidden_gradient(GradientBuffer::Write(&mut dh))
                    .weight_gradient(GradientBuffer::Write(&mut dw))
                    .bias_gradient(GradientBuffer::Write(&mut db));
                black_box(loss.compute(&Backend::Cpu, batch(), request))
            })
        });
    }
    group.finish();
}

/// Median per-round ratios of plain cross-entropy to its baseline, measured back to back.
fn paired() -> &'static Mutex<Vec<(&'static str, f64)>> {
    static PAIRED: OnceLock<Mutex<Vec<(&'static str, f64)>>> = OnceLock::new();
    PAIRED.get_or_init(Default::default)
}

/// forward / read and forward+backward / copy with each round timing the baseline and the
/// loss back to back: the memory speed of a shared machine drifts (±30 % here) between
/// criterion's benchmarks, which then lands on one side of a ratio of fastest times.
fn paired_ratios(d: &Data, grad: &mut [f32]) {
    let once = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let loss = CrossEntropy::new();
    let batch = || Batch::new(Logits::new(&d.logits, d.rows, d.classes), &d.targets[..]);
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let read = once(&mut || _ = black_box(probe::read_pass(&d.logits)));
        let fwd = once(&mut || {
            black_box(
                loss.compute(&Backend::Cpu, batch(), Request::new())
                    .unwrap(),
            );
        });
        let copy = once(&mut || probe::copy_pass(&d.logits, grad));
        let fwd_bwd = once(&mut || {
            let request = Request::new().gradient_into(grad);
            black_box(loss.compute(&Backend::Cpu, batch(), request).unwrap());
        });
        forward.push(fwd / read);
        backward.push(fwd_bwd / copy);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    *paired().lock().unwrap() = vec![
        ("forward / read", median(forward)),
        ("forward+backward / copy", median(backward)),
    ];
}

/// The GPU group's shapes (rows, classes): small enough for llvmpipe.
const GPU_SHAPES: [(usize, usize); 2] = [(16_384, 1000), (512, 32_000)];

/// `parts` on the device, each as a buffer and its byte range: a buffer each, or (`shared`)
/// one buffer holding them all at 256-byte-aligned offsets.
fn device_buffers(
    device: &wgpu::Device,
    parts: [&[u8]; 4],
    shared: bool,
) -> [(wgpu::Buffer, std::ops::Range<u64>); 4] {
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let upload = |contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage,
        })
    };
    if !shared {
        return parts.map(|part| (upload(part), 0..part.len() as u64));
    }
    let mut packed = Vec::new();
    let ranges = parts.map(|part| {
        packed.resize(packed.len().next_multiple_of(256), 0);
        let start = packed.len() as u64;
        packed.extend_from_slice(part);
        start..packed.len() as u64
    });
    let buffer = upload(&packed);
    ranges.map(|range| (buffer.clone(), range))
}

/// GPU vs CPU vs naive on shapes llvmpipe finishes quickly; GPU work is timed from submit to
/// the device going idle, with the logits already resident (as in training).
fn gpu(c: &mut Criterion) {
    let open = |three_pass| {
        Gpu::with_options(GpuOptions {
            timestamp_queries: true,
            three_pass,
            ..Default::default()
        })
    };
    let (fused, three_pass) = match (open(false), open(true)) {
        (Ok(a), Ok(b)) => (Arc::new(a), Arc::new(b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("!!! no GPU adapter ({e}): GPU benchmarks skipped !!!");
            return;
        }
    };
    // The default device (fused kernel where rows fit), and the three passes for plain
    // cross-entropy beside it.
    // Every input and output in one buffer, as a framework's sub-allocated tensors are: the
    // calls take the variants whose storage bindings are all read_write (issue #14: they must
    // not cost speed).
    let paths = [
        ("gpu", fused.clone(), variants().len(), false),
        ("gpu three-pass", three_pass, 1, false),
        ("gpu shared buffer", fused, 1, true),
    ];
    for (rows, classes) in GPU_SHAPES {
        let d = data(rows, classes);
        let mut group = c.benchmark_group(format!("{rows}x{classes} f32 forward+backward"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Bytes((d.logits.len() * 4 * 3) as u64));
        for (path, gpu, losses, shared) in &paths {
            let device = gpu.device();
            let zeros = vec![0u8; d.logits.len() * 4];
            let parts: [&[u8]; 4] = [
                bytemuck::cast_slice(&d.logits),
                bytemuck::cast_slice(&d.targets),
                &zeros[..16],
                &zeros,
            ];
            let [logits, targets, loss_buffer, grad_buffer] =
                device_buffers(device, parts, *shared);
            let batch = DeviceBatch {
                logits: logits.0.slice(logits.1.clone()),
                dtype: Dtype::F32,
                rows,
                classes,
                layout: Layout::Rows,
                targets: DeviceTargets::I64(targets.0.slice(targets.1.clone())),
                class_weights: None,
                pos_weight: None,
                sample_weights: None,
            };
            let outputs = DeviceOutputs {
                loss: loss_buffer.0.slice(loss_buffer.1.clone()),
                rows: None,
                gradient: DeviceGradient::Into(grad_buffer.0.slice(grad_buffer.1.clone())),
                upstream: None,
                upstream_scalar: 1.0,
                target_error: None,
                saved: None,
            };
            // Device times where the adapter has timestamp queries (xent's stopwatch).
            let stopwatch = Stopwatch::new(gpu);
            for (suffix, loss) in variants().into_iter().take(*losses) {
                let name = format!("{path}{suffix} {rows}x{classes}");
                if stopwatch.clock() == Clock::Timestamps {
                    let fastest = (0..10)
                        .map(|_| {
                            stopwatch
                                .time(|encoder| {
                                    gpu.record_cross_entropy(encoder, &loss, &batch, &outputs)
                                })
                                .unwrap()
                        })
                        .fold(f64::INFINITY, f64::min);
                    device_fastest()
                        .lock()
                        .unwrap()
                        .insert(name.clone(), Duration::from_secs_f64(fastest));
                }
                let id =
                    BenchmarkId::new(format!("xent-{path}{suffix}").replace(' ', "-"), gpu.name());
                group.bench_function(id, |b| {
                    b.iter_custom(|n| {
                        timed(&name, n, || {
                            let mut encoder = device.create_command_encoder(&Default::default());
                            gpu.record_cross_entropy(&mut encoder, &loss, &batch, &outputs)
                                .unwrap();
                            gpu.queue().submit([encoder.finish()]);
                            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                        })
                    })
                });
            }
        }
        let mut grad = vec![0f32; d.logits.len()];
        group.bench_function("xent-cpu", |b| {
            b.iter_custom(|n| {
                timed(&format!("cpu {rows}x{classes}"), n, || {
                    let batch = Batch::new(Logits::new(&d.logits, rows, classes), &d.targets[..]);
                    black_box(
                        CrossEntropy::new()
                            .compute(
                                &Backend::Cpu,
                                batch,
                                Request::new().gradient_into(&mut grad),
                            )
                            .unwrap(),
                    );
                })
            })
        });
        let mut scratch = naive::Scratch::default();
        group.bench_function("naive-cpu", |b| {
            b.iter_custom(|n| {
                timed(&format!("naive {rows}x{classes}"), n, || {
                    _ = black_box(naive::forward_backward(
                        &d.logits,
                        rows,
                        classes,
                        &d.targets,
                        &mut scratch,
                        &mut grad,
                    ))
                })
            })
        });
        group.finish();
    }
}

fn ratios(_: &mut Criterion) {
    let best = fastest().lock().unwrap();
    let ratio = |a: &str, b: &str| match (best.get(a), best.get(b)) {
        (Some(a), Some(b)) => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "n/a".into(),
    };
    println!(
        "\nforward / read:            {} (target ≤ 1.25)",
        ratio("forward", "read")
    );
    // The forward takes an exp per logit; where the cores' exp throughput is below the
    // memory's read rate (few cores per memory channel), its floor is the chunk loop.
    println!(
        "read / chunk loop (L1):    {} (> 1: memory-bound floor, < 1: exp-bound floor)",
        ratio("read", "chunk loop")
    );
    println!(
        "forward / chunk loop (L1): {}",
        ratio("forward", "chunk loop")
    );
    println!(
        "forward+backward / copy:   {} (target ≤ 1.40)",
        ratio("forward+backward", "copy")
    );
    for (name, ratio) in paired().lock().unwrap().iter() {
        println!("{name}, paired median of 15: {ratio:.2}");
    }
    println!(
        "naive forward / xent:      {}",
        ratio("naive forward", "forward")
    );
    println!(
        "naive fwd+bwd / xent:      {}",
        ratio("naive forward+backward", "forward+backward")
    );
    // GPU wall time (submit to idle) and, with timestamp queries, the device's own time.
    let device = device_fastest().lock().unwrap();
    // The paths timed with plain cross-entropy only.
    let plain_only = [("gpu three-pass", ""), ("gpu shared buffer", "")];
    let paths = variants()
        .map(|(suffix, _)| ("gpu", suffix))
        .into_iter()
        .chain(plain_only);
    for (path, suffix) in paths {
        for (rows, classes) in GPU_SHAPES {
            let name = format!("{path}{suffix} {rows}x{classes}");
            let ms = |d: Option<&Duration>| {
                d.map_or("n/a".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
            };
            println!(
                "{name}: wall {}, device {}",
                ms(best.get(&name)),
                match device.get(&name) {
                    Some(d) => ms(Some(d)),
                    None => "n/a (no TIMESTAMP_QUERY)".into(),
                }
            );
        }
    }
    // What the fused kernel saves (rows up to 4096 classes; 1.00 where rows don't fit it).
    for (rows, classes) in GPU_SHAPES {
        let shape = format!("{rows}x{classes}");
        println!(
            "gpu three-pass / gpu {shape}: {}",
            ratio(&format!("gpu three-pass {shape}"), &format!("gpu {shape}"))
        );
    }
    // What the read_write variants cost a framework's shared buffers (1.00: nothing).
    for (rows, classes) in GPU_SHAPES {
        let shape = format!("{rows}x{classes}");
        println!(
            "gpu shared buffer / gpu {shape}: {}",
            ratio(
                &format!("gpu shared buffer {shape}"),
                &format!("gpu {shape}")
            )
        );
    }
    // What focal loss costs over plain cross-entropy (1.00: nothing).
    for (suffix, _) in &variants()[1..] {
        for pass in ["forward", "forward+backward"] {
            let name = format!("{pass}{suffix}");
            println!("cpu {name} / {pass}: {}", ratio(&name, pass));
        }
        for (rows, classes) in GPU_SHAPES {
            let shape = format!("{rows}x{classes}");
            println!(
                "gpu{suffix} / gpu {shape}: {}",
                ratio(&format!("gpu{suffix} {shape}"), &format!("gpu {shape}"))
            );
        }
    }
}

criterion_group!(benches, cpu, short, linear, gpu, ratios);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
