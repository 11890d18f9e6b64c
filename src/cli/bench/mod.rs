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

mod linear;
mod report;
mod resident;
mod runs;
mod shapes;

use runs::Bench;
pub use shapes::{Shape, DEFAULT_SHAPES, FULL_SHAPES, SHORT_SHAPES};

pub use linear::{product, HeadShape, LinearRecord, FULL_LINEAR_SHAPES, LINEAR_SHAPES};
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
cache the probe did not hit the same way; vs naive: how many times faster than naive-cpu on
the same shape, dtype and mode (its median over this one's).";

/// Arguments of `xent bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = COLUMNS)]
pub struct BenchArgs {
    /// Which implementations to run.
    #[arg(long, value_enum, default_value_t)]
    pub device: BenchDevice,
    /// A ROWSxCLASSES shape, or NxCxD1x… for PyTorch's (N, C, d…) layout (e.g. 16x21x512x512,
    /// segmentation); repeat for several [default: 819200x10, 81920x100, 8192x1000,
    /// 256x32000, 160x50257, 64x128256: about 8 M logits each, past most CPU caches].
    #[arg(long = "shape", value_name = "NxC")]
    pub shapes: Vec<Shape>,
    /// Use the full-size shapes 65536x10, 16384x1000, 4096x32000, 2048x50257, 1024x128256
    /// (needs a few GB of memory and minutes).
    #[arg(long, conflicts_with_all = ["shapes", "short"])]
    pub full: bool,
    /// Use the short-row shapes 1048576x2, 1048576x10, 262144x100, 65536x1000 and
    /// 16x21x512x512 (classification and segmentation heads, each past the caches).
    #[arg(long, conflicts_with = "shapes")]
    pub short: bool,
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
    /// impl, device, rows, classes, spatial, dtype, mode, median_ms, min_ms, gbps, bytes,
    /// bandwidth_fraction, loss, iters, round_trip_ms, clock).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Where to draw GB/s per shape per implementation, with the bandwidth probes, as an SVG:
    /// one panel per device, mode and dtype, log scale.
    #[arg(long, value_name = "FILE.svg", default_value = "xent-bench.svg")]
    pub plot: String,
    /// Don't draw the plot.
    #[arg(long)]
    pub no_plot: bool,
    /// Time the linear head instead (`xent::linear`): the plain GEMM, the fused forward,
    /// forward-backward of both strategies and the materialized baseline, in GFLOP/s and as a
    /// fraction of the GEMM, with the peak scratch each held; on the CPU, the GPU
    /// (`--device gpu`: its rows alone) or both (`all`).
    #[arg(long, conflicts_with_all = ["shapes", "short", "focal_gamma", "mode"])]
    pub linear: bool,
    /// A linear head's NxDxV (rows x hidden x vocab) for --linear; repeat for several
    /// [default: 1024x512x32000, 2048x1024x32000; --full adds 8192x768x50257 and
    /// 4096x4096x128256].
    #[arg(long = "head", value_name = "NxDxV", requires = "linear")]
    pub heads: Vec<HeadShape>,
    /// The linear strategies' scratch budget in MB (`LinearCrossEntropy::scratch_bytes`)
    /// [default: 64 MiB].
    #[arg(long, value_name = "MB", requires = "linear")]
    pub scratch_mb: Option<f64>,
    /// For --linear: this fraction of the rows ignored (target -100), scattered through the
    /// batch as a masked-LM batch's are (about 0.85 there); xent leaves them out of its
    /// products, the plain product and the materialized baseline take every row, and every
    /// implementation is credited with every row's FLOPs [default: 0].
    #[arg(long, value_name = "FRACTION", requires = "linear", value_parser = fraction)]
    pub ignored: Option<f64>,
}

/// A fraction in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(f) => Err(format!("{f} is not a fraction in [0, 1]")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
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
    /// Positions per sample of the (N, C, d…) layout (`rows` = N·spatial); 0 for row-major.
    pub spatial: usize,
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
    /// GPU: how the device-resident times were taken, `timestamps` (timestamp queries around
    /// the call) or `submit-and-wait` (adapters without them).
    pub clock: Option<String>,
}

/// Runs `xent bench`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    if args.iters == 0 {
        return Err(CliError::usage("--iters must be at least 1"));
    }
    if args.linear {
        return linear::run(args);
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
    } else if args.short {
        SHORT_SHAPES.to_vec()
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
    out!("{header}{}", table(&records))?;
    for note in &notes {
        outln!("note: {note}")?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records).expect("records serialize");
        write_text(path, &(text + "\n"))?;
    }
    if !args.no_plot {
        let path = &args.plot;
        plot(path, &records, &shapes).map_err(|e| CliError::output(path, e))?;
        outln!("plot: {path}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shapes::generate;
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!("64x100".parse::<Shape>(), Ok(Shape::rows(64, 100)));
        let spatial = "16x21x512x512".parse::<Shape>().unwrap();
        assert_eq!(
            (spatial.rows, spatial.classes, spatial.spatial),
            (16 * 512 * 512, 21, 512 * 512)
        );
        assert_eq!(spatial.to_string(), "16x21x262144");
        assert_eq!(
            spatial.layout(),
            crate::Layout::ClassDim1 { spatial: 262144 }
        );
        assert!("64".parse::<Shape>().is_err());
        assert!("0x5".parse::<Shape>().is_err());
        assert!("99999999999x99999999999".parse::<Shape>().is_err());
    }

    #[test]
    fn generated_data_is_deterministic_and_in_range() {
        let shape = Shape::rows(10, 7);
        let (a, ta) = generate(shape, 1);
        let (b, tb) = generate(shape, 1);
        assert_eq!((a.clone(), ta.clone()), (b, tb));
        assert!(ta.iter().all(|&t| (0..7).contains(&t)));
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
