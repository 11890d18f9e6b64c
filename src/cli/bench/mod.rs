//! `xent bench`: xent on the GPU, xent on the CPU and the [`naive`] unfused CPU
//! implementation side by side on generated data, against this machine's measured memory
//! bandwidth ([`probe`]).
//!
//! Every implementation does the same work (mean cross-entropy with class-index targets, and
//! for `forward-backward` also the gradient of the logits), so they are credited with the same
//! *bytes moved*, the least traffic the work needs:
//! - forward: the logits once (`rows × classes × dtype size`) and the targets (`rows × 8`);
//! - forward-backward: that, plus the f32 gradient written once (`rows × classes × 4`).
//!
//! GB/s is bytes moved over the median time. "% bw" divides it by the probe of the same device
//! and buffer size (the probe's fastest run): the read probe for forward (a read-only stream),
//! the copy probe for forward-backward (a read and a write stream). Times are wall-clock around the whole call,
//! which returns only when the result is on the host, after one warm-up run.
//!
//! `--focal-gamma G` adds focal-loss rows (SEMANTICS.md section 2c) credited with the same
//! bytes, so their cost over plain cross-entropy shows: `xent-cpu-focal` / `xent-gpu-focal`
//! (index targets, no smoothing: still one read of the logits, only `p[y]` is focal), and
//! `xent-cpu-focal-ls` / `xent-gpu-focal-ls` (label smoothing 0.1: every class's `(1 − p)^γ`
//! needs the final log-sum-exp, one more pass over each row).

mod report;
mod resident;

pub use report::{plot, table};

use super::device::{self, Device};
use super::files::write_text;
use super::naive::{self, Scratch};
use super::probe::{self, Timing};
use super::CliError;
use crate::input::Element;
use crate::{Backend, Batch, CrossEntropy, Logits, Request};
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// `--device` of `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchDevice {
    /// The CPU implementations only (xent and naive).
    Cpu,
    /// xent on the GPU only; an error when there is none.
    Gpu,
    /// Everything there is; the GPU is skipped, with a note, when there is none.
    #[default]
    All,
}

/// Element type of the generated logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
}

impl BenchDtype {
    fn name(self) -> &'static str {
        match self {
            BenchDtype::F32 => "f32",
            BenchDtype::F16 => "f16",
            BenchDtype::Bf16 => "bf16",
        }
    }
}

/// What is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchMode {
    /// The loss only.
    Forward,
    /// The loss and the gradient of the logits.
    ForwardBackward,
    /// Both.
    #[default]
    All,
}

/// A measured mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    ForwardBackward,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::ForwardBackward => "forward-backward",
        }
    }
}

/// A `ROWSxCLASSES` benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows (batch × sequence positions).
    pub rows: usize,
    /// Classes (vocabulary size).
    pub classes: usize,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (r, c) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{s:?} is not ROWSxCLASSES (e.g. 4096x32000)"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{what} in {s:?} must be a positive integer"))
        };
        let shape = Shape {
            rows: parse(r, "rows")?,
            classes: parse(c, "classes")?,
        };
        shape
            .rows
            .checked_mul(shape.classes)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        Ok(shape)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.classes)
    }
}

/// Classification and language-model vocabularies at full size (`--full`): 10 classes, 1000
/// (ImageNet), 32000 (Llama 2), 50257 (GPT-2), 128256 (Llama 3).
pub const FULL_SHAPES: [Shape; 5] = [
    Shape {
        rows: 65536,
        classes: 10,
    },
    Shape {
        rows: 16384,
        classes: 1000,
    },
    Shape {
        rows: 4096,
        classes: 32000,
    },
    Shape {
        rows: 2048,
        classes: 50257,
    },
    Shape {
        rows: 1024,
        classes: 128256,
    },
];

/// The default shapes: the classification and vocabulary sizes of [`FULL_SHAPES`] (and 100)
/// with rows cut so each is about 8 M logits, 32 MB in f32: past the last-level cache of most
/// CPUs, so the probes and the losses measure DRAM, not cache, and the run stays within a
/// laptop's memory and a few minutes.
pub const DEFAULT_SHAPES: [Shape; 6] = [
    Shape {
        rows: 819_200,
        classes: 10,
    },
    Shape {
        rows: 81_920,
        classes: 100,
    },
    Shape {
        rows: 8192,
        classes: 1000,
    },
    Shape {
        rows: 256,
        classes: 32000,
    },
    Shape {
        rows: 160,
        classes: 50257,
    },
    Shape {
        rows: 64,
        classes: 128256,
    },
];

/// What `xent bench --help` says of its table (the README says the same).
const COLUMNS: &str =
    "Columns: shape (rows x classes) and dtype of the generated logits; mode: forward (the
mean loss), forward-backward (loss and gradient) or probe; impl: xent-gpu, xent-cpu,
naive-cpu (an unfused log_softmax, gather and mean, as a framework without fusion runs it),
or the bandwidth probes read-bandwidth (sum every value of a buffer the logits' size) and
copy-bandwidth (copy it); median ms and min ms of the timed runs (wall clock: for the CPU
the whole call; for the GPU device-resident runs, logits already on the device, one
record_cross_entropy submitted and waited for); trip ms: the GPU's host-slice call, upload
and read-back included; GB/s: the bytes the work must move at least (the
logits once and the targets; forward-backward adds the f32 gradient written once) over the
median time, and for a probe its bytes over its fastest run; % bw: that GB/s over the probe of
the same device and buffer size, the read probe for forward and the copy probe for
forward-backward. 100 % means as fast as streaming those bytes; above 100 % the data sat in a
cache the probe did not hit the same way.";

/// Arguments of `xent bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = COLUMNS)]
pub struct BenchArgs {
    /// Which implementations to run.
    #[arg(long, value_enum, default_value_t)]
    pub device: BenchDevice,
    /// A ROWSxCLASSES shape; repeat for several [default: 819200x10, 81920x100, 8192x1000,
    /// 256x32000, 160x50257, 64x128256: about 8 M logits each, past most CPU caches].
    #[arg(long = "shape", value_name = "NxC")]
    pub shapes: Vec<Shape>,
    /// Use the full-size shapes 65536x10, 16384x1000, 4096x32000, 2048x50257, 1024x128256
    /// (needs a few GB of memory and minutes).
    #[arg(long, conflicts_with = "shapes")]
    pub full: bool,
    /// Element type of the logits; repeat for several [default: f32].
    #[arg(long = "dtype", value_enum)]
    pub dtypes: Vec<BenchDtype>,
    /// What to time.
    #[arg(long, value_enum, default_value_t)]
    pub mode: BenchMode,
    /// Timed runs per measurement (after one warm-up run).
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub iters: usize,
    /// Also time focal loss with this γ > 0 (without and with label smoothing 0.1), next to
    /// plain cross-entropy [default: off].
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    pub focal_gamma: Option<f32>,
    /// Write the measurements and probes to this file as one JSON array of records (fields:
    /// impl, device, rows, classes, dtype, mode, median_ms, min_ms, gbps, bytes,
    /// bandwidth_fraction, loss, iters, round_trip_ms).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Where to draw GB/s per shape per implementation, with the bandwidth probes, as an SVG:
    /// one panel per device, mode and dtype, log scale.
    #[arg(long, value_name = "FILE.svg", default_value = "xent-bench.svg")]
    pub plot: String,
    /// Don't draw the plot.
    #[arg(long)]
    pub no_plot: bool,
}

/// One measurement (or one bandwidth probe), as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// `xent-gpu`, `xent-cpu`, `naive-cpu`, `read-bandwidth` or `copy-bandwidth`; with
    /// `--focal-gamma` also `xent-{cpu,gpu}-focal` and `xent-{cpu,gpu}-focal-ls`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// `cpu`, or the GPU adapter's name.
    pub device: String,
    /// Rows of the shape.
    pub rows: usize,
    /// Classes of the shape.
    pub classes: usize,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// `forward`, `forward-backward`, or `probe` for the bandwidth probes.
    pub mode: String,
    /// Median time of one run, in milliseconds.
    pub median_ms: f64,
    /// Fastest run, in milliseconds.
    pub min_ms: f64,
    /// Bytes moved per second at the median time, in GB/s (10⁹ bytes); for the probes, at
    /// the fastest run (the rate the machine reached).
    pub gbps: f64,
    /// Bytes credited to one run (see the module docs; the probes: buffer read, or read + write).
    pub bytes: u64,
    /// `gbps` over the matching probe of the same device (none for the probes themselves).
    pub bandwidth_fraction: Option<f64>,
    /// The loss the run computed (none for the probes).
    pub loss: Option<f32>,
    /// Timed runs.
    pub iters: usize,
    /// GPU: the median host-slice call (upload, kernels, read-back), in milliseconds; the
    /// record's own times are then device-resident (buffers on the device, submit and wait).
    pub round_trip_ms: Option<f64>,
}

/// Deterministic logits and targets: SplitMix64 → roughly normal logits (σ ≈ 2) with one
/// logit in 1000 scaled ×20, so probabilities are not all about 1/C.
fn generate(shape: Shape, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = shape.rows * shape.classes;
    let logits = (0..n)
        .map(|_| {
            let u = next();
            // Four 16-bit uniforms summed: mean 2, variance 1/3 → scale to σ ≈ 2.
            let s: f32 = (0..4)
                .map(|k| ((u >> (16 * k)) & 0xFFFF) as f32 / 65536.0)
                .sum();
            let v = (s - 2.0) * 3.46;
            if u % 1000 == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect();
    let targets = (0..shape.rows)
        .map(|_| (next() % shape.classes as u64) as i64)
        .collect();
    (logits, targets)
}

/// Everything a run shares.
/// What the timed runs of one shape, dtype and mode share.
struct Runs<'d, T> {
    label: &'d str,
    mode: Mode,
    logits: &'d [T],
    targets: &'d [i64],
    shape: Shape,
    dtype: BenchDtype,
    /// Bytes one run moves (logits, targets, and the gradient when there is one).
    bytes: u64,
}

struct Bench<'a> {
    args: &'a BenchArgs,
    cpu: bool,
    gpu: Option<&'a Device>,
    gpu_name: String,
    modes: Vec<Mode>,
    bar: &'a ProgressBar,
    records: Vec<Record>,
    notes: Vec<String>,
}

impl Bench<'_> {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        implementation: &str,
        device: &str,
        shape: Shape,
        dtype: BenchDtype,
        mode: &str,
        timing: Timing,
        bytes: u64,
        reference_gbps: Option<f64>,
        loss: Option<f32>,
    ) {
        let gbps = if mode == "probe" {
            timing.peak_gbps(bytes)
        } else {
            timing.gbps(bytes)
        };
        self.records.push(Record {
            implementation: implementation.into(),
            device: device.into(),
            rows: shape.rows,
            classes: shape.classes,
            dtype: dtype.name().into(),
            mode: mode.into(),
            median_ms: timing.median * 1e3,
            min_ms: timing.min * 1e3,
            gbps,
            bytes,
            bandwidth_fraction: reference_gbps.map(|r| gbps / r),
            loss,
            iters: self.args.iters,
            round_trip_ms: None,
        });
    }

    fn step(&self, what: String) {
        self.bar.set_message(what);
    }

    fn shape<T: Element>(&mut self, shape: Shape, dtype: BenchDtype) -> Result<(), CliError> {
        let (rows, classes) = (shape.rows, shape.classes);
        let iters = self.args.iters;
        let label = format!("{shape} {}", dtype.name());
        self.step(format!("{label}: generating data"));
        let (wide, targets) = generate(shape, 0x5EED ^ (rows * 31 + classes) as u64);
        let mut logits = vec![T::from_f32(0.0); wide.len()];
        T::narrow(&wide, &mut logits);
        drop(wide);
        let logit_bytes = (rows * classes * std::mem::size_of::<T>()) as u64;
        let grad_bytes = (rows * classes * 4) as u64;
        let target_bytes = (rows * 8) as u64;

        // Probes, same buffer size as the logits.
        let (mut cpu_read, mut cpu_copy) = (None, None);
        if self.cpu {
            self.step(format!("{label}: cpu bandwidth"));
            let p = probe::cpu(logit_bytes as usize, iters);
            self.bar.inc(2);
            self.record(
                "read-bandwidth",
                "cpu",
                shape,
                dtype,
                "probe",
                p.read,
                p.bytes,
                None,
                None,
            );
            self.record(
                "copy-bandwidth",
                "cpu",
                shape,
                dtype,
                "probe",
                p.copy,
                2 * p.bytes,
                None,
                None,
            );
            cpu_read = Some(p.read_gbps());
            cpu_copy = Some(p.copy_gbps());
        }
        let (mut gpu_read, mut gpu_copy) = (None, None);
        if let Some(gpu) = self.gpu {
            self.step(format!("{label}: gpu bandwidth"));
            let probed = device::gpu_probe(gpu, logit_bytes as usize, iters);
            self.bar.inc(2);
            match probed {
                Ok((read, copy)) => {
                    let name = self.gpu_name.clone();
                    self.record(
                        "read-bandwidth",
                        &name,
                        shape,
                        dtype,
                        "probe",
                        read,
                        logit_bytes,
                        None,
                        None,
                    );
                    self.record(
                        "copy-bandwidth",
                        &name,
                        shape,
                        dtype,
                        "probe",
                        copy,
                        2 * logit_bytes,
                        None,
                        None,
                    );
                    gpu_read = Some(read.peak_gbps(logit_bytes));
                    gpu_copy = Some(copy.peak_gbps(2 * logit_bytes));
                }
                Err(e) => {
                    self.note(format!("gpu bandwidth probe skipped: {e}"));
                }
            }
        }

        let mut grad = vec![0.0f32; rows * classes];
        let mut scratch = Scratch::default();
        for mode in self.modes.clone() {
            let backward = mode == Mode::ForwardBackward;
            let runs = Runs {
                label: &label,
                mode,
                logits: &logits,
                targets: &targets,
                shape,
                dtype,
                bytes: logit_bytes + target_bytes + if backward { grad_bytes } else { 0 },
            };
            // (focal variant suffix, implementation, loss) of every run.
            let mut losses: Vec<(&str, String, f32)> = Vec::new();
            if self.cpu {
                let cpu_ref = if backward { cpu_copy } else { cpu_read };
                let grad_out = backward.then_some(&mut grad[..]);
                losses.extend(self.time_variants(
                    &runs,
                    &Backend::Cpu,
                    "xent-cpu",
                    "cpu",
                    cpu_ref,
                    grad_out,
                )?);
                self.step(format!("{label} {}: naive-cpu", mode.name()));
                let mut loss = 0.0;
                let t = Timing::measure(iters, || {
                    loss = if backward {
                        naive::forward_backward(
                            &logits,
                            rows,
                            classes,
                            &targets,
                            &mut scratch,
                            &mut grad,
                        )
                    } else {
                        naive::forward(&logits, rows, classes, &targets, &mut scratch)
                    };
                });
                self.bar.inc(1);
                losses.push(("", "naive-cpu".into(), loss));
                self.record(
                    "naive-cpu",
                    "cpu",
                    shape,
                    dtype,
                    mode.name(),
                    t,
                    runs.bytes,
                    cpu_ref,
                    Some(loss),
                );
            }
            if let Some(gpu) = self.gpu {
                let name = self.gpu_name.clone();
                let gpu_ref = if backward { gpu_copy } else { gpu_read };
                let grad_out = backward.then_some(&mut grad[..]);
                losses.extend(self.time_variants(
                    &runs,
                    &gpu.backend,
                    "xent-gpu",
                    &name,
                    gpu_ref,
                    grad_out,
                )?);
            }
            // Every implementation of the same loss (plain or a focal variant) computed the
            // same number as the first that ran it; say so if not.
            for (i, (suffix, name, loss)) in losses.iter().enumerate() {
                let Some((_, first_name, first)) = losses[..i].iter().find(|(s, ..)| s == suffix)
                else {
                    continue;
                };
                let diff = (loss - first).abs() / first.abs().max(1.0);
                if diff.is_nan() || diff > 1e-3 {
                    self.note(format!(
                        "{label} {}: {name} loss {loss} differs from {first_name} {first}",
                        mode.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Times xent on `backend`: plain cross-entropy, then each focal variant, each recorded as
    /// `{implementation}{suffix}` against `reference` GB/s. Gives (suffix, name, loss) per run.
    fn time_variants<T: Element>(
        &mut self,
        runs: &Runs<'_, T>,
        backend: &Backend,
        implementation: &str,
        device: &str,
        reference: Option<f64>,
        mut grad: Option<&mut [f32]>,
    ) -> Result<Vec<(&'static str, String, f32)>, CliError> {
        let variants: Vec<_> = std::iter::once(("", CrossEntropy::new()))
            .chain(self.focal_variants())
            .collect();
        let mut out = Vec::new();
        for (suffix, options) in variants {
            let name = format!("{implementation}{suffix}");
            self.step(format!("{} {}: {name}", runs.label, runs.mode.name()));
            let (host, loss) = time_xent(
                backend,
                &options,
                runs.logits,
                runs.targets,
                runs.shape,
                grad.as_deref_mut(),
                self.args.iters,
            )?;
            // The GPU's bandwidth column comes from device-resident runs; the host-slice
            // call (upload and read-back included) is its round trip.
            let (t, round_trip) = match backend {
                Backend::Gpu(gpu) => {
                    let shape = (runs.shape.rows, runs.shape.classes);
                    let data = (runs.logits, runs.targets);
                    let backward = runs.mode == Mode::ForwardBackward;
                    match resident::time(gpu, &options, data, shape, backward, self.args.iters) {
                        Ok(t) => (t, Some(host.median * 1e3)),
                        Err(e) => {
                            self.note(format!(
                                "{} {name}: device-resident timing skipped ({e}); the figures are the host-slice call's",
                                runs.label
                            ));
                            (host, None)
                        }
                    }
                }
                _ => (host, None),
            };
            self.bar.inc(1);
            let mode = runs.mode.name();
            self.record(
                &name,
                device,
                runs.shape,
                runs.dtype,
                mode,
                t,
                runs.bytes,
                reference,
                Some(loss),
            );
            if let Some(record) = self.records.last_mut() {
                record.round_trip_ms = round_trip;
            }
            out.push((suffix, name, loss));
        }
        Ok(out)
    }

    /// The focal-loss variants `--focal-gamma` asks for: (implementation suffix, options).
    fn focal_variants(&self) -> Vec<(&'static str, CrossEntropy)> {
        match self.args.focal_gamma {
            Some(gamma) => {
                let focal = CrossEntropy::new().focal_gamma(gamma);
                vec![("-focal", focal), ("-focal-ls", focal.label_smoothing(0.1))]
            }
            None => Vec::new(),
        }
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// Times xent's mean cross-entropy with `loss`'s options (with the gradient into `grad` when
/// given) on `backend`.
fn time_xent<T: Element>(
    backend: &Backend,
    loss: &CrossEntropy,
    logits: &[T],
    targets: &[i64],
    shape: Shape,
    mut grad: Option<&mut [f32]>,
    iters: usize,
) -> Result<(Timing, f32), CliError> {
    let mut result: Result<f32, crate::Error> = Ok(0.0);
    let t = Timing::measure(iters, || {
        if result.is_err() {
            return;
        }
        let batch = Batch::new(Logits::new(logits, shape.rows, shape.classes), targets);
        let request = match grad.as_deref_mut() {
            Some(g) => Request::new().gradient_into(g),
            None => Request::new(),
        };
        result = loss
            .compute(backend, batch, request)
            .map(|o| o.loss.unwrap_or(f32::NAN));
    });
    let loss = result.map_err(|e| CliError::runtime(format!("{shape}: {e}")))?;
    Ok((t, loss))
}

/// Runs `xent bench`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    if args.iters == 0 {
        return Err(CliError::usage("--iters must be at least 1"));
    }
    if let Some(gamma) = args.focal_gamma {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(CliError::usage(format!(
                "--focal-gamma {gamma} is invalid: must be finite and > 0"
            )));
        }
    }
    let cpu = matches!(args.device, BenchDevice::Cpu | BenchDevice::All);
    let mut notes = Vec::new();
    let gpu = match args.device {
        BenchDevice::Cpu => None,
        BenchDevice::Gpu => Some(device::gpu().map_err(CliError::runtime)?),
        BenchDevice::All => match device::gpu() {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("xent-gpu skipped: {e}"));
                None
            }
        },
    };
    let shapes: Vec<Shape> = if !args.shapes.is_empty() {
        args.shapes.clone()
    } else if args.full {
        FULL_SHAPES.to_vec()
    } else {
        DEFAULT_SHAPES.to_vec()
    };
    let dtypes = if args.dtypes.is_empty() {
        vec![BenchDtype::F32]
    } else {
        args.dtypes.clone()
    };
    let modes = match args.mode {
        BenchMode::Forward => vec![Mode::Forward],
        BenchMode::ForwardBackward => vec![Mode::ForwardBackward],
        BenchMode::All => vec![Mode::Forward, Mode::ForwardBackward],
    };
    let focal = if args.focal_gamma.is_some() { 2 } else { 0 };
    let per_mode = (2 + focal) * cpu as u64 + (1 + focal) * gpu.is_some() as u64;
    let per_shape = 2 * cpu as u64 + 2 * gpu.is_some() as u64 + per_mode * modes.len() as u64;
    let bar = ProgressBar::with_draw_target(
        Some(per_shape * (shapes.len() * dtypes.len()) as u64),
        ProgressDrawTarget::stderr(),
    )
    .with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    // Keep the spinner and clock moving through long single measurements.
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut bench = Bench {
        args,
        cpu,
        gpu: gpu.as_ref(),
        gpu_name: gpu.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
        modes,
        bar: &bar,
        records: Vec::new(),
        notes,
    };
    for &shape in &shapes {
        for &dtype in &dtypes {
            match dtype {
                BenchDtype::F32 => bench.shape::<f32>(shape, dtype)?,
                BenchDtype::F16 => bench.shape::<f16>(shape, dtype)?,
                BenchDtype::Bf16 => bench.shape::<bf16>(shape, dtype)?,
            }
        }
    }
    bar.finish_and_clear();
    let Bench { records, notes, .. } = bench;

    let mut devices: Vec<String> = Vec::new();
    if cpu {
        devices.push(device::cpu_label());
    }
    if let Some(g) = &gpu {
        devices.push(g.label.clone());
    }
    let header = format!(
        "xent bench: {}; median of {} run{} after one warm-up\n",
        devices.join(", "),
        args.iters,
        if args.iters == 1 { "" } else { "s" }
    );
    print!("{header}{}", table(&records));
    for note in &notes {
        println!("note: {note}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records).expect("records serialize");
        write_text(path, &(text + "\n"))?;
    }
    if !args.no_plot {
        let path = &args.plot;
        plot(path, &records, &shapes).map_err(|e| CliError::output(path, e))?;
        println!("plot: {path}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!(
            "64x100".parse::<Shape>(),
            Ok(Shape {
                rows: 64,
                classes: 100
            })
        );
        assert!("64".parse::<Shape>().is_err());
        assert!("0x5".parse::<Shape>().is_err());
        assert!("99999999999x99999999999".parse::<Shape>().is_err());
    }

    #[test]
    fn generated_data_is_deterministic_and_in_range() {
        let shape = Shape {
            rows: 10,
            classes: 7,
        };
        let (a, ta) = generate(shape, 1);
        let (b, tb) = generate(shape, 1);
        assert_eq!((a.clone(), ta.clone()), (b, tb));
        assert!(ta.iter().all(|&t| (0..7).contains(&t)));
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
