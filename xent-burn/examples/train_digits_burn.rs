//! Trains a small MLP on the UCI handwritten digits (the root crate's `data/digits.csv.gz`)
//! on burn's wgpu backend twice, from the same initial weights and batch order: once with
//! burn's `CrossEntropyLoss`, once with xent-burn's. Prints both loss curves side by side
//! (they agree to float tolerance: the run exits non-zero if they don't), the median step time
//! and the device memory of each, and writes an SVG plot of the curves.
//!
//! ```text
//! cargo run --release -p xent-burn --example train_digits_burn
//! cargo run --release -p xent-burn --example train_digits_burn -- --epochs 5 --svg curves.svg
//! ```
//!
//! `WGPU_BACKEND=vulkan|gl|metal|dx12` picks the graphics API. At this size (batches of 64
//! images, 10 classes) the loss is a sliver of each step; the point is that the two losses
//! train the same model the same way.

mod common;
use common::device;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};

const FEATURES: usize = 64;
const CLASSES: usize = 10;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    output: Linear,
    relu: Relu,
}

impl Mlp {
    fn new(hidden: usize, device: &Device) -> Self {
        Mlp {
            hidden: LinearConfig::new(FEATURES, hidden).init(device),
            output: LinearConfig::new(hidden, CLASSES).init(device),
            relu: Relu::new(),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output
            .forward(self.relu.forward(self.hidden.forward(x)))
    }
}

#[derive(Debug, Clone)]
struct Args {
    epochs: usize,
    batch: usize,
    hidden: usize,
    learning_rate: f64,
    seed: u64,
    data: PathBuf,
    svg: PathBuf,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            epochs: 10,
            batch: 64,
            hidden: 128,
            learning_rate: 3e-3,
            seed: 7,
            data: Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"),
            svg: PathBuf::from("train_digits_burn.svg"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
            match flag.as_str() {
                "--epochs" => args.epochs = value()?.parse().map_err(|e| bad(&e))?,
                "--batch" => args.batch = value()?.parse().map_err(|e| bad(&e))?,
                "--hidden" => args.hidden = value()?.parse().map_err(|e| bad(&e))?,
                "--lr" => args.learning_rate = value()?.parse().map_err(|e| bad(&e))?,
                "--seed" => args.seed = value()?.parse().map_err(|e| bad(&e))?,
                "--data" => args.data = value()?.into(),
                "--svg" => args.svg = value()?.into(),
                "--help" | "-h" => {
                    return Err("options: --epochs N --batch N --hidden N --lr X --seed N \
                                --data FILE.csv.gz --svg FILE.svg"
                        .into())
                }
                other => return Err(format!("unknown option {other} (--help lists them)")),
            }
        }
        if args.epochs == 0 || args.batch == 0 || args.hidden == 0 {
            return Err("--epochs, --batch and --hidden must be at least 1".into());
        }
        Ok(args)
    }
}

/// A small xorshift for the split and the batch order (the same for both runs).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Images scaled to [0, 1] and labels, in file order.
struct Digits {
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Digits {
    /// Reads the gzip'd CSV: 64 pixel values 0..16, then the label, per line.
    fn load(path: &Path) -> Result<Digits, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut digits = Digits {
            x: Vec::new(),
            y: Vec::new(),
        };
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || {
                format!(
                    "{}: line {}: not 64 pixels and a label",
                    path.display(),
                    i + 1
                )
            };
            if fields.len() != FEATURES + 1 {
                return Err(bad());
            }
            for f in &fields[..FEATURES] {
                digits.x.push(f.parse::<f32>().map_err(|_| bad())? / 16.0);
            }
            let label: i64 = fields[FEATURES].parse().map_err(|_| bad())?;
            if !(0..CLASSES as i64).contains(&label) {
                return Err(bad());
            }
            digits.y.push(label);
        }
        Ok(digits)
    }

    fn samples(&self) -> usize {
        self.y.len()
    }

    /// The rows `rows` as tensors.
    fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&r| self.x[r * FEATURES..(r + 1) * FEATURES].iter().copied())
            .collect();
        let y: Vec<i64> = rows.iter().map(|&r| self.y[r]).collect();
        (
            Tensor::from_data(TensorData::new(x, [rows.len(), FEATURES]), device),
            Tensor::from_data(TensorData::new(y, [rows.len()]), device),
        )
    }
}

/// One training run's record.
struct Run {
    name: &'static str,
    /// The loss of every step.
    losses: Vec<f32>,
    /// Median wall time of a step (forward, loss, backward, Adam, and a sync), ms.
    step_ms: f64,
    /// Bytes burn's allocator reserved at the end of the run (its pools keep their peak pages;
    /// the allocator is cleaned before each run), plus xent's own scratch.
    reserved_bytes: u64,
    /// Accuracy on the held-out fifth.
    held_out_accuracy: f64,
}

type LossFn<'a> = dyn Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1> + 'a;

fn train(
    name: &'static str,
    loss: &LossFn,
    model: Mlp,
    data: &Digits,
    (train, held_out): (&[usize], &[usize]),
    args: &Args,
    device: &Device,
) -> Run {
    device.memory_cleanup();
    let mut model = model;
    let mut optimizer = AdamConfig::new().init();
    let mut rng = Rng(args.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut order = train.to_vec();
    let (mut losses, mut step_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.epochs {
        rng.shuffle(&mut order);
        for rows in order.chunks(args.batch) {
            let start = Instant::now();
            let (x, y) = data.batch(rows, device);
            let value = loss(model.forward(x), y);
            let grads = GradientsParams::from_grads(value.backward(), &model);
            model = optimizer.step(args.learning_rate, model, grads);
            losses.push(value.into_scalar::<f32>());
            device.sync().expect("the step runs");
            step_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    step_ms.sort_by(f64::total_cmp);
    let reserved = device.memory_pool_usage().map_or(0, |u| u.bytes_reserved);
    let (x, y) = data.batch(held_out, &device.clone().without_autodiff());
    let predicted = model
        .valid()
        .forward(x)
        .argmax(1)
        .reshape([held_out.len()])
        .equal(y)
        .int()
        .sum()
        .into_scalar::<i64>();
    Run {
        name,
        losses,
        step_ms: step_ms[step_ms.len() / 2],
        reserved_bytes: reserved + xent_burn::scratch_bytes(device),
        held_out_accuracy: predicted as f64 / held_out.len() as f64,
    }
}

/// The two curves, per step, in one SVG.
fn plot(path: &Path, runs: &[&Run]) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let steps = runs[0].losses.len();
    let top = runs
        .iter()
        .flat_map(|r| r.losses.iter().copied())
        .fold(0f32, f32::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("digits MLP: training loss per step", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0..steps, 0f32..top * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (run, (color, width)) in runs.iter().zip(colors.into_iter().zip([4u32, 1])) {
        chart
            .draw_series(LineSeries::new(
                run.losses.iter().enumerate().map(|(i, &v)| (i, v)),
                color.stroke_width(width),
            ))
            .map_err(|e| err(&e))?
            .label(run.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("train_digits_burn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (data, device) = match (Digits::load(&args.data), device()) {
        (Ok(d), Ok(device)) => (d, device.autodiff()),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("train_digits_burn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut order: Vec<usize> = (0..data.samples()).collect();
    Rng(args.seed).shuffle(&mut order);
    let (train_rows, held_out) = order.split_at(data.samples() * 4 / 5);
    device.seed(args.seed);
    let model = Mlp::new(args.hidden, &device);
    println!(
        "{} training and {} held-out images; MLP 64 → {} → 10, Adam (lr {}), batches of {}, {} epochs",
        train_rows.len(),
        held_out.len(),
        args.hidden,
        args.learning_rate,
        args.batch,
        args.epochs
    );

    let burn_loss = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
    let xent_loss = xent_burn::CrossEntropyLossConfig::new().init(&device);
    let split = (train_rows, held_out);
    let burn = train(
        "burn CrossEntropyLoss",
        &|logits, targets| burn_loss.forward(logits, targets),
        model.clone(),
        &data,
        split,
        &args,
        &device,
    );
    let xent = train(
        "xent-burn CrossEntropyLoss",
        &|logits, targets| xent_loss.forward(logits, targets),
        model,
        &data,
        split,
        &args,
        &device,
    );

    let steps_per_epoch = burn.losses.len() / args.epochs;
    println!("\nepoch   mean loss (burn)   mean loss (xent)   max |difference| in the epoch");
    let mut worst = 0f32;
    for epoch in 0..args.epochs {
        let range = epoch * steps_per_epoch..(epoch + 1) * steps_per_epoch;
        let mean = |r: &Run| r.losses[range.clone()].iter().sum::<f32>() / steps_per_epoch as f32;
        let diff = burn.losses[range.clone()]
            .iter()
            .zip(&xent.losses[range.clone()])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        println!(
            "{:5}   {:16.6}   {:16.6}   {:.2e}",
            epoch + 1,
            mean(&burn),
            mean(&xent),
            diff
        );
    }
    println!(
        "\n{:28} {:>14} {:>22} {:>18}",
        "", "median step", "device memory", "held-out accuracy"
    );
    for run in [&burn, &xent] {
        println!(
            "{:28} {:>11.3} ms {:>16.1} KiB {:>18.3}",
            run.name,
            run.step_ms,
            run.reserved_bytes as f64 / 1024.0,
            run.held_out_accuracy
        );
    }
    if let Err(e) = plot(&args.svg, &[&burn, &xent]) {
        eprintln!("train_digits_burn: {e}");
        return ExitCode::FAILURE;
    }
    println!("\nloss curves: {}", args.svg.display());
    // Both losses are f32 sums of the same terms in different orders; Adam carries their
    // rounding into the weights, so the curves drift apart by a few ulps per step at most.
    let tolerance = 1e-4;
    if worst > tolerance {
        eprintln!("the curves differ by {worst:.2e} at worst (tolerance {tolerance:.0e})");
        return ExitCode::FAILURE;
    }
    println!("curves agree: max |difference| {worst:.2e} (tolerance {tolerance:.0e})");
    ExitCode::SUCCESS
}
