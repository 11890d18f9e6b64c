//! Trains a digit classifier on the UCI handwritten digits (`data/digits.csv.gz`), entirely on
//! the GPU with xent's device-resident API, or on the CPU with the same numbers.
//!
//! ```text
//! cargo run --release --example train_digits                       # MLP, Adam, on the GPU
//! cargo run --release --example train_digits -- --model linear     # softmax regression
//! cargo run --release --example train_digits -- --device cpu       # the same run on the CPU
//! ```
//!
//! On the GPU the example owns the device, the buffers and each step's command encoder; its
//! own kernels (`examples/shaders/`) do the hidden layers, ReLU and the optimizer, xent records
//! the head and its loss (`record_linear_cross_entropy`: the loss, dh, dW and db, the logits
//! never written) into the same encoder, and the only read-back inside an epoch is the loss
//! every `--steps-per-log` steps (see `examples/digits/gpu.rs`). It prints
//! the loss and held-out accuracy per epoch and ends with `held-out accuracy: 0.xxx`.

#[path = "digits/mod.rs"]
mod digits;

use clap::{Parser, ValueEnum};
use digits::{Config, Event, ModelKind, Optimizer};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// The example's WGSL kernels and xent's, on wgpu's adapter (honours WGPU_BACKEND).
    Gpu,
    /// Plain Rust matmuls and xent's SIMD CPU path.
    Cpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelArg {
    /// Softmax regression, 64 → 10.
    Linear,
    /// 64 → hidden → 10 with a ReLU.
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OptimizerArg {
    /// Adam (β1 0.9, β2 0.999, ε 1e-8).
    Adam,
    /// Plain SGD.
    Sgd,
}

/// Train a digit classifier with xent's loss on the GPU (or the CPU).
#[derive(Debug, Parser)]
#[command(name = "train_digits")]
struct Args {
    /// Where to train.
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// Which model.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelArg,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = Config::default().hidden)]
    hidden: usize,
    /// Passes over the training split.
    #[arg(long, default_value_t = Config::default().epochs)]
    epochs: usize,
    /// Minibatch rows.
    #[arg(long, default_value_t = Config::default().batch)]
    batch: usize,
    /// Update rule.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// Learning rate (default 0.01 for Adam, 0.3 for SGD).
    #[arg(long)]
    lr: Option<f32>,
    /// Seed of the initialization and the shuffles.
    #[arg(long, default_value_t = Config::default().seed)]
    seed: u64,
    /// Read the training loss back every this many steps.
    #[arg(long, default_value_t = Config::default().steps_per_log)]
    steps_per_log: usize,
    /// Also print each loss read-back (mean of the steps it covers).
    #[arg(long)]
    log_steps: bool,
    /// The data file (gzip'd CSV: 64 pixels and a label per line).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_digits: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), digits::Error> {
    let optimizer = match args.optimizer {
        OptimizerArg::Adam => Optimizer::Adam,
        OptimizerArg::Sgd => Optimizer::Sgd,
    };
    let config = Config {
        model: match args.model {
            ModelArg::Linear => ModelKind::Linear,
            ModelArg::Mlp => ModelKind::Mlp,
        },
        hidden: args.hidden,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr.unwrap_or(optimizer.default_lr()),
        optimizer,
        seed: args.seed,
        steps_per_log: args.steps_per_log,
    };
    let path = args.data.unwrap_or_else(digits::data::default_path);
    let data = digits::data::load(&path)?;
    digits::check_config(&config, data.train.samples())?;
    let widths: Vec<String> = config.widths().iter().map(|w| w.to_string()).collect();
    println!(
        "data: {} training images, {} held out ({})",
        data.train.samples(),
        data.held_out.samples(),
        path.display()
    );

    let log_steps = args.log_steps;
    let mut on_event = |event: Event| match event {
        Event::Steps { first, losses } if log_steps => {
            let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
            println!(
                "  steps {:>5}..{:<5} loss {mean:.4}",
                first + 1,
                first + losses.len()
            );
        }
        Event::Steps { .. } => {}
        Event::Epoch(e) => println!(
            "epoch {:>3}  train loss {:.4}  held-out loss {:.4}  held-out accuracy {:.3}",
            e.epoch, e.train_loss, e.held_out_loss, e.held_out_accuracy
        ),
    };
    let (report, _) = match args.device {
        DeviceArg::Gpu => {
            let device = digits::gpu::open_device()?;
            announce(&config, &widths, &device.name);
            digits::gpu::train(&device, &config, &data, &mut on_event)?
        }
        DeviceArg::Cpu => {
            announce(&config, &widths, "cpu");
            digits::cpu::train(&config, &data, &mut on_event)?
        }
    };
    let steps = report.step_losses.len();
    println!(
        "trained on {} in {:.2} s ({steps} steps, {:.2} ms per step incl. per-epoch scoring)",
        report.device,
        report.elapsed.as_secs_f64(),
        report.elapsed.as_secs_f64() * 1e3 / steps.max(1) as f64
    );
    println!("held-out accuracy: {:.3}", report.final_accuracy());
    Ok(())
}

fn announce(config: &Config, widths: &[String], device: &str) {
    println!(
        "model {:?} {}, {:?} lr {}, batch {}, {} epochs, seed {}, on {device}",
        config.model,
        widths.join(" → "),
        config.optimizer,
        config.lr,
        config.batch,
        config.epochs,
        config.seed
    );
}
