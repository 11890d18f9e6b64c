//! `xent bench --linear`: the linear head `cross_entropy(h·Wᵀ + b, y)` ([`crate::linear`])
//! against its local ceiling, the plain product `h·Wᵀ` from the same GEMM crate, and against
//! the materialized baseline (the `N × V` logits from that product, xent's fused loss and
//! gradient in place over them, then `dh = G·W`, `dW = Gᵀ·h` and `db`); and, where there is
//! a GPU, its forward and forward-backward as host-slice calls (`xent-gpu`: the upload of `h`
//! and `W` and the read-back included) and as recorded calls on device buffers
//! (`xent-gpu-resident`: `record_linear_cross_entropy` timed by a `Stopwatch`, as a trainer
//! runs it; no heap is counted for them).
//!
//! Every implementation of a mode is credited with the same floating-point work: `2·N·V·D`
//! for the product and the forward, `6·N·V·D` for forward-backward (the three products a
//! gradient needs; the fused strategy does a fourth, recomputing the logits, and is not
//! credited for it). "% gemm" is GFLOP/s over the plain product's. "scratch MB" is the most
//! heap the call held at once beyond its inputs and outputs, measured by the `xent` binary's
//! counting allocator (`cli::alloc`), beside the `N × V × 4` bytes of f32 logits.

use super::resident::{self, LinearWork};
use super::{BenchArgs, BenchDtype, CliError};
use crate::cli::alloc::Peak;
use crate::cli::device;
use crate::cli::probe::Timing;
use crate::cpu::linear::gemm::{self, Shape, Threads};
use crate::input::Element;
use crate::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy};
use crate::{Backend, Batch, CrossEntropy, Logits, Matrix, Request};
use half::{bf16, f16};
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::str::FromStr;

/// A linear head's shape, `NxDxV`: rows, hidden size, vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// `N`.
    pub rows: usize,
    /// `D`.
    pub hidden: usize,
    /// `V`.
    pub vocab: usize,
}

impl fmt::Display for HeadShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.rows, self.hidden, self.vocab)
    }
}

impl FromStr for HeadShape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<usize> = s
            .split('x')
            .map(|p| p.parse::<usize>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [rows, hidden, vocab] = parts[..] else {
            return Err(format!("{s:?} is not NxDxV (rows x hidden x vocab)"));
        };
        let shape = HeadShape {
            rows,
            hidden,
            vocab,
        };
        let fits = [(rows, vocab), (rows, hidden), (vocab, hidden)]
            .iter()
            .all(|&(a, b)| a.checked_mul(b).and_then(|n| n.checked_mul(4)).is_some());
        if rows == 0 || hidden == 0 || vocab == 0 || !fits {
            return Err(format!(
                "{s:?}: every size must be at least 1 and fit in memory"
            ));
        }
        Ok(shape)
    }
}

/// The CPU-sized heads: (1024, 512, 32000) and (2048, 1024, 32000).
pub const LINEAR_SHAPES: [HeadShape; 2] = [
    HeadShape {
        rows: 1024,
        hidden: 512,
        vocab: 32000,
    },
    HeadShape {
        rows: 2048,
        hidden: 1024,
        vocab: 32000,
    },
];

/// `--full`: GPT-2's head (8192, 768, 50257) and Llama-3's (4096, 4096, 128256) too.
pub const FULL_LINEAR_SHAPES: [HeadShape; 4] = [
    LINEAR_SHAPES[0],
    LINEAR_SHAPES[1],
    HeadShape {
        rows: 8192,
        hidden: 768,
        vocab: 50257,
    },
    HeadShape {
        rows: 4096,
        hidden: 4096,
        vocab: 128256,
    },
];

/// One measurement, as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearRecord {
    /// `gemm` (the plain product), `xent-cpu-fused`, `xent-cpu-chunked`, `materialized`,
    /// `xent-gpu` (host-slice calls) or `xent-gpu-resident` (recorded calls on device buffers,
    /// no upload or read-back).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// `cpu (level, threads)`, or the GPU's label.
    pub device: String,
    /// `N`, `D`, `V`.
    pub rows: usize,
    /// See `rows`.
    pub hidden: usize,
    /// See `rows`.
    pub vocab: usize,
    /// Element type of `h` and `W`.
    pub dtype: String,
    /// `product`, `forward` or `forward-backward`.
    pub mode: String,
    /// Median and fastest run, in milliseconds.
    pub median_ms: f64,
    /// See `median_ms`.
    pub min_ms: f64,
    /// Credited work over the median time, in GFLOP/s (module docs).
    pub gflops: f64,
    /// `gflops` over the plain product's.
    pub gemm_fraction: f64,
    /// The most heap bytes held at once beyond inputs and outputs (`None` outside the `xent`
    /// binary, which counts them).
    pub scratch_bytes: Option<usize>,
    /// `N × V × 4`: what f32 logits would take.
    pub logits_bytes: usize,
    /// The loss the run computed (none for the product).
    pub loss: Option<f32>,
    /// Timed runs.
    pub iters: usize,
    /// The fraction of rows ignored (`--ignored`).
    pub ignored: f64,
}

/// Runs `xent bench --linear`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let shapes: Vec<HeadShape> = if !args.heads.is_empty() {
        args.heads.clone()
    } else if args.full {
        FULL_LINEAR_SHAPES.to_vec()
    } else {
        LINEAR_SHAPES.to_vec()
    };
    let mut notes = Vec::new();
    if let Some(f) = args.ignored.filter(|&f| f > 0.0) {
        notes.push(format!(
            "{:.0} % of the rows ignored, scattered: xent leaves them out of its products, gemm \
             and the materialized baseline do not; GFLOP/s credit every row",
            f * 100.0
        ));
    }
    let gpu = match args.device {
        super::BenchDevice::Cpu => None,
        super::BenchDevice::Gpu => Some(device::gpu().map_err(CliError::runtime)?),
        super::BenchDevice::All => device::gpu()
            .map_err(|e| notes.push(format!("xent-gpu skipped: {e}")))
            .ok(),
    };
    if gpu.is_some() {
        notes.push(
            "xent-gpu: timed as host-slice calls (h and W uploaded, the rows and \
             gradients read back)"
                .to_string(),
        );
    }
    let dtypes = if args.dtypes.is_empty() {
        vec![BenchDtype::F32]
    } else {
        args.dtypes.clone()
    };
    let mut records = Vec::new();
    for &shape in &shapes {
        for &dtype in &dtypes {
            let run = Run {
                shape,
                dtype,
                iters: args.iters,
                scratch_bytes: args.scratch_mb.map(|mb| (mb * 1e6) as usize),
                gpu: gpu.as_ref(),
                cpu: args.device != super::BenchDevice::Gpu,
                ignored: args.ignored.unwrap_or(0.0),
            };
            match dtype {
                BenchDtype::F32 => run.measure::<f32>(&mut records, &mut notes),
                BenchDtype::F16 => run.measure::<f16>(&mut records, &mut notes),
                BenchDtype::Bf16 => run.measure::<bf16>(&mut records, &mut notes),
            }
        }
    }
    // The devices that ran, as the softmax bench's header names them.
    let mut devices = Vec::new();
    if args.device != super::BenchDevice::Gpu {
        devices.push(device::cpu_label());
    }
    if let Some(g) = &gpu {
        devices.push(g.label.clone());
    }
    outln!(
        "xent bench --linear: {}; median of {} run{} after one warm-up",
        devices.join(", "),
        args.iters,
        if args.iters == 1 { "" } else { "s" }
    )?;
    out!("{}", table(&records))?;
    for note in &notes {
        outln!("note: {note}")?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records).expect("records serialize");
        super::write_text(path, &(text + "\n"))?;
    }
    Ok(())
}

/// The plain product `x = h·Wᵀ` ([N × V] from `h` [N × D] and `W` [V × D], f32) on rayon's
/// pool: the ceiling the linear head is measured against (also by the criterion bench).
pub fn product(x: &mut [f32], h: &[f32], w: &[f32], shape: HeadShape) {
    let HeadShape {
        rows,
        hidden,
        vocab,
    } = shape;
    assert!(x.len() == rows * vocab && h.len() == rows * hidden && w.len() == vocab * hidden);
    gemm::logits(
        Threads::Pool,
        (x, Shape::dense(rows, vocab)),
        h,
        w,
        None,
        hidden,
    )
}

/// Generated inputs: `h` roughly normal, `W` scaled by `1/√D` (logits of a few units), a
/// bias, targets uniform over the vocabulary, `ignored` of them (a fraction, at pseudo-random
/// rows) -100.
struct Inputs<T> {
    h: Vec<T>,
    w: Vec<T>,
    b: Vec<T>,
    y: Vec<i64>,
}

fn inputs<T: Element>(shape: HeadShape, ignored: f64) -> Inputs<T> {
    let mut next = super::shapes::splitmix(0x5EED);
    let mut normal = move || {
        let u = next();
        let s: f32 = (0..4)
            .map(|k| ((u >> (16 * k)) & 0xFFFF) as f32 / 65536.0)
            .sum();
        ((s - 2.0) * 1.73, u)
    };
    let scale = 2.0 / (shape.hidden as f32).sqrt();
    let mut values = |n: usize, scale: f32| -> Vec<T> {
        (0..n).map(|_| T::from_f32(normal().0 * scale)).collect()
    };
    let h = values(shape.rows * shape.hidden, 1.0);
    let w = values(shape.vocab * shape.hidden, scale);
    let b = values(shape.vocab, 0.5);
    let y = (0..shape.rows)
        .map(|_| {
            let u = normal().1;
            // The top 11 bits draw the ignored rows.
            match ((u >> 53) as f64) < ignored * 2048.0 {
                true => -100,
                false => (u % shape.vocab as u64) as i64,
            }
        })
        .collect();
    Inputs { h, w, b, y }
}

/// Times `f` (`iters` runs after a warm-up) and measures the heap it held at most.
fn timed<R>(iters: usize, mut f: impl FnMut() -> R) -> (Timing, Option<usize>, R) {
    let peak = Peak::start();
    let mut last = None;
    let timing = Timing::measure(iters, || last = Some(f()));
    (timing, peak.measure(), last.expect("at least one run"))
}

/// One shape and dtype's measurements.
struct Run<'g> {
    shape: HeadShape,
    dtype: BenchDtype,
    iters: usize,
    /// The strategies' budget (`None`: the default).
    scratch_bytes: Option<usize>,
    /// The GPU, when there is one and it is asked for.
    gpu: Option<&'g device::Device>,
    /// Whether the CPU's rows are asked for (`--device cpu` or `all`): at LLM sizes they take
    /// minutes that a GPU run has no use for.
    cpu: bool,
    /// The fraction of rows ignored.
    ignored: f64,
}

impl Run<'_> {
    fn measure<T: Element>(&self, records: &mut Vec<LinearRecord>, notes: &mut Vec<String>) {
        let Run {
            shape,
            dtype,
            iters,
            ..
        } = *self;
        let HeadShape {
            rows: n,
            hidden: d,
            vocab: v,
        } = shape;
        let data = inputs::<T>(shape, self.ignored);
        let flops = 2.0 * n as f64 * v as f64 * d as f64;
        let first = records.len();
        let mut push = |implementation: &str, mode: &str, work: f64, t: Timing, scratch, loss| {
            let device = match self.gpu {
                Some(gpu) if is_gpu(implementation) => gpu.label.clone(),
                _ => device::cpu_label(),
            };
            records.push(LinearRecord {
                implementation: implementation.into(),
                device,
                rows: n,
                hidden: d,
                vocab: v,
                dtype: dtype.name().into(),
                mode: mode.into(),
                median_ms: t.median * 1e3,
                min_ms: t.min * 1e3,
                gflops: work / t.median / 1e9,
                gemm_fraction: 0.0,
                scratch_bytes: scratch,
                logits_bytes: n * v * 4,
                loss,
                iters,
                ignored: self.ignored,
            });
        };

        // f32 copies for the CPU's product and the baseline's GEMMs (a framework's matmul takes
        // its own dtype; widening here keeps the baseline to one GEMM crate).
        let widen = |x: &[T]| match self.cpu {
            true => x.iter().map(|e| e.to_f32()).collect::<Vec<f32>>(),
            false => Vec::new(),
        };
        let (h32, w32, b32) = (widen(&data.h), widen(&data.w), widen(&data.b));
        if self.cpu {
            // The plain product into a buffer allocated once (its scratch is the GEMM crate's
            // own).
            let mut logits = vec![0f32; n * v];
            let (t, scratch, ()) = timed(iters, || {
                gemm::logits(
                    Threads::Pool,
                    (&mut logits, Shape::dense(n, v)),
                    &h32,
                    &w32,
                    None,
                    d,
                )
            });
            push("gemm", "product", flops, t, scratch, None);
        }

        let batch = || {
            LinearBatch::new(
                Matrix::new(&data.h, n, d),
                Matrix::new(&data.w, v, d),
                &data.y[..],
            )
            .bias(&data.b)
        };
        let ce = CrossEntropy::new();
        let head = |strategy| {
            let loss = LinearCrossEntropy::new(ce).strategy(strategy);
            self.scratch_bytes.map_or(loss, |b| loss.scratch_bytes(b))
        };
        let fused = head(Strategy::Fused);
        if self.cpu {
            let (t, scratch, out) = timed(iters, || {
                fused
                    .compute(&Backend::Cpu, batch(), LinearRequest::new())
                    .expect("a valid call")
            });
            push("xent-cpu-fused", "forward", flops, t, scratch, out.loss);
        }

        if let Some(gpu) = self.gpu {
            let (t, scratch, out) = timed(iters, || {
                fused
                    .compute(&gpu.backend, batch(), LinearRequest::new())
                    .expect("a valid call")
            });
            push("xent-gpu", "forward", flops, t, scratch, out.loss);
            let (mut dh, mut dw, mut db) = (vec![0f32; n * d], vec![0f32; v * d], vec![0f32; v]);
            let (t, scratch, out) = timed(iters, || {
                let request = LinearRequest::new()
                    .hidden_gradient(GradientBuffer::Write(&mut dh))
                    .weight_gradient(GradientBuffer::Write(&mut dw))
                    .bias_gradient(GradientBuffer::Write(&mut db));
                fused
                    .compute(&gpu.backend, batch(), request)
                    .expect("a valid call")
            });
            push(
                "xent-gpu",
                "forward-backward",
                3.0 * flops,
                t,
                scratch,
                out.loss,
            );
            let chunked = head(Strategy::Chunked);
            let (t, scratch, out) = timed(iters, || {
                let request = LinearRequest::new()
                    .hidden_gradient(GradientBuffer::Write(&mut dh))
                    .weight_gradient(GradientBuffer::Write(&mut dw))
                    .bias_gradient(GradientBuffer::Write(&mut db));
                chunked.compute(&gpu.backend, batch(), request)
            });
            match out {
                Ok(out) => {
                    let work = 3.0 * flops;
                    push(
                        "xent-gpu-chunked",
                        "forward-backward",
                        work,
                        t,
                        scratch,
                        out.loss,
                    );
                }
                Err(e) => notes.push(format!(
                    "xent-gpu-chunked {n}×{d}×{v} forward-backward: skipped ({e})"
                )),
            }
            // Device-resident: the inputs uploaded once, each run one recorded call; the
            // plain product (the GPU's ceiling) and the materialized baseline beside them.
            if let Backend::Gpu(device) = &gpu.backend {
                // Every row's logits held at once: the chunked strategy in one group.
                let all = head(Strategy::Chunked).scratch_bytes(n * v * 4);
                let head = (&data.h[..], &data.w[..], &data.b[..], &data.y[..]);
                // One group: every row's logits, h and dh in one binding.
                let element = std::mem::size_of::<T>() as u64;
                let fits = device.chunked_holds_every_row((n, d, v), element, n);
                let mut runs = vec![
                    ("gpu-product", "product", flops, LinearWork::Product),
                    (
                        "xent-gpu-resident",
                        "forward",
                        flops,
                        LinearWork::Call(&fused, false),
                    ),
                    (
                        "xent-gpu-resident",
                        "forward-backward",
                        3.0 * flops,
                        LinearWork::Call(&fused, true),
                    ),
                    (
                        "xent-gpu-resident-chunked",
                        "forward-backward",
                        3.0 * flops,
                        LinearWork::Call(&chunked, true),
                    ),
                    (
                        "gpu-materialized",
                        "forward",
                        flops,
                        LinearWork::ProductLoss,
                    ),
                ];
                if fits {
                    runs.push((
                        "gpu-materialized",
                        "forward-backward",
                        3.0 * flops,
                        LinearWork::Call(&all, true),
                    ));
                } else {
                    notes.push(format!(
                        "gpu-materialized {n}×{d}×{v} forward-backward: skipped (the logits \
                         outgrow one storage binding)"
                    ));
                }
                for (name, mode, work, what) in runs {
                    match resident::time_linear(device, what, head, (n, d, v), iters) {
                        Ok((t, clock)) => {
                            push(name, mode, work, t, None, None);
                            let note = format!("xent-gpu-resident: timed by {}", clock.name());
                            if !notes.contains(&note) {
                                notes.push(note);
                            }
                        }
                        Err(e) => notes.push(format!("{name} {n}×{d}×{v} {mode}: skipped ({e})")),
                    }
                }
            }
        }

        if self.cpu {
            let (mut dh, mut dw, mut db) = (vec![0f32; n * d], vec![0f32; v * d], vec![0f32; v]);
            for (name, strategy) in [
                ("xent-cpu-fused", Strategy::Fused),
                ("xent-cpu-chunked", Strategy::Chunked),
            ] {
                let loss = head(strategy);
                let (t, scratch, out) = timed(iters, || {
                    let request = LinearRequest::new()
                        .hidden_gradient(GradientBuffer::Write(&mut dh))
                        .weight_gradient(GradientBuffer::Write(&mut dw))
                        .bias_gradient(GradientBuffer::Write(&mut db));
                    loss.compute(&Backend::Cpu, batch(), request)
                        .expect("a valid call")
                });
                push(name, "forward-backward", 3.0 * flops, t, scratch, out.loss);
            }

            // The materialized baseline: logits allocated inside the call, as a framework does.
            for backward in [false, true] {
                let (t, scratch, loss) = timed(iters, || {
                    let mut x = vec![0f32; n * v];
                    let out = Shape::dense(n, v);
                    gemm::logits(Threads::Pool, (&mut x, out), &h32, &w32, Some(&b32), d);
                    let request = if backward {
                        Request::new().gradient_in_place()
                    } else {
                        Request::new()
                    };
                    let loss = ce
                        .compute(
                            &Backend::Cpu,
                            Batch::new(Logits::new_mut(&mut x, n, v), &data.y[..]),
                            request,
                        )
                        .expect("a valid call")
                        .loss;
                    if backward {
                        let g = (&x[..], out);
                        gemm::hidden_gradient(
                            Threads::Pool,
                            gemm::Mode::Write,
                            &mut dh,
                            g,
                            &w32,
                            d,
                        );
                        gemm::weight_gradient(
                            Threads::Pool,
                            gemm::Mode::Write,
                            &mut dw,
                            g,
                            &h32,
                            d,
                        );
                        db.fill(0.0);
                        for row in x.chunks(v) {
                            for (s, g) in db.iter_mut().zip(row) {
                                *s += g;
                            }
                        }
                    }
                    loss
                });
                let (mode, work) = match backward {
                    false => ("forward", flops),
                    true => ("forward-backward", 3.0 * flops),
                };
                push("materialized", mode, work, t, scratch, loss);
            }
        }
        // Each device's rows against its own product.
        let product = |gpu: bool| {
            records[first..]
                .iter()
                .find(|r| r.mode == "product" && is_gpu(&r.implementation) == gpu)
                .map_or(f64::NAN, |r| r.gflops)
        };
        let (cpu, gpu) = (product(false), product(true));
        for r in &mut records[first..] {
            let own = if is_gpu(&r.implementation) { gpu } else { cpu };
            r.gemm_fraction = r.gflops / own;
        }
    }
}

/// Whether a record's implementation runs on the GPU.
fn is_gpu(implementation: &str) -> bool {
    implementation.starts_with("xent-gpu") || implementation.starts_with("gpu-")
}

/// The table on stdout.
pub fn table(records: &[LinearRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:<5} {:<16} {:<25} {:>10} {:>10} {:>8} {:>7} {:>11} {:>10}",
        "shape",
        "dtype",
        "mode",
        "impl",
        "median ms",
        "min ms",
        "GFLOP/s",
        "% gemm",
        "scratch MB",
        "logits MB"
    );
    for r in records {
        let shape = HeadShape {
            rows: r.rows,
            hidden: r.hidden,
            vocab: r.vocab,
        };
        let _ = writeln!(
            out,
            "{:<18} {:<5} {:<16} {:<25} {:>10.1} {:>10.1} {:>8.1} {:>6.0}% {:>11} {:>10.1}",
            shape.to_string(),
            r.dtype,
            r.mode,
            r.implementation,
            r.median_ms,
            r.min_ms,
            r.gflops,
            r.gemm_fraction * 100.0,
            r.scratch_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
            r.logits_bytes as f64 / 1e6
        );
    }
    out
}
