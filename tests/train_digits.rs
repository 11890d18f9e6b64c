//! A short run of `examples/train_digits.rs` (the trainer in `examples/digits/`): on the CPU
//! and on the GPU it must learn (loss falls, held-out accuracy rises past 0.8), and the GPU
//! run, which never leaves the device, must follow the CPU run's curve step by step.
//!
//! Without a GPU adapter the GPU tests fail unless `XENT_SKIP_GPU=1`, which makes them say
//! loudly that they were not run (`tests/common/gpu_policy.rs`).

#[path = "../examples/digits/mod.rs"]
mod digits;
#[path = "common/gpu_policy.rs"]
mod gpu_policy;

use digits::data::{self, Digits};
use digits::{Config, Event, ModelKind, Optimizer, Report};
use std::sync::OnceLock;

fn digits() -> &'static Digits {
    static DATA: OnceLock<Digits> = OnceLock::new();
    DATA.get_or_init(|| data::load(&data::default_path()).expect("data/digits.csv.gz"))
}

/// The trainer's own device (as the example opens it), or `None` after a loud message.
fn device() -> Option<&'static digits::gpu::Device> {
    static DEVICE: OnceLock<Option<digits::gpu::Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match digits::gpu::open_device() {
            Ok(d) => {
                eprintln!("train_digits GPU tests run on {}", d.name);
                Some(d)
            }
            Err(e) => {
                gpu_policy::missing_gpu("THE train_digits GPU TESTS", &e);
                None
            }
        })
        .as_ref()
}

/// A short run: 4 epochs of 22 steps.
fn short(model: ModelKind, optimizer: Optimizer) -> Config {
    Config {
        model,
        optimizer,
        epochs: 4,
        lr: optimizer.default_lr(),
        ..Config::default()
    }
}

fn cpu(config: &Config) -> (Report, Vec<Vec<f32>>) {
    let out = digits::cpu::train(config, digits(), &mut |_| {}).expect("CPU training");
    assert_eq!(out.0.device, "cpu");
    out
}

fn gpu(device: &digits::gpu::Device, config: &Config) -> (Report, Vec<Vec<f32>>) {
    digits::gpu::train(device, config, digits(), &mut |_| {}).expect("GPU training")
}

/// Loss falls from about ln 10 and held-out accuracy rises past 0.8.
fn assert_learns(label: &str, report: &Report) {
    let first = report.step_losses[0];
    assert!(
        (first - 10f32.ln()).abs() < 0.5,
        "{label}: first loss {first}, expected about ln 10"
    );
    let epochs = &report.epochs;
    for pair in epochs.windows(2) {
        assert!(
            pair[1].train_loss < pair[0].train_loss,
            "{label}: train loss rose: {epochs:?}"
        );
    }
    assert!(
        epochs.last().unwrap().held_out_loss < epochs[0].held_out_loss,
        "{label}: held-out loss did not fall: {epochs:?}"
    );
    let (start, end) = (epochs[0].held_out_accuracy, report.final_accuracy());
    assert!(
        end > start && end > 0.8,
        "{label}: held-out accuracy {start} → {end}"
    );
}

/// Step by step, the GPU's losses and final parameters within rounding of the CPU's.
fn assert_same_curve(label: &str, gpu: &(Report, Vec<Vec<f32>>), cpu: &(Report, Vec<Vec<f32>>)) {
    let (g, c) = (&gpu.0, &cpu.0);
    assert_eq!(g.step_losses.len(), c.step_losses.len(), "{label}: steps");
    let mut worst = (0.0f32, 0);
    for (i, (a, b)) in g.step_losses.iter().zip(&c.step_losses).enumerate() {
        let err = (a - b).abs() / (1e-3 + b.abs());
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 < 1e-3,
        "{label}: step {} loss GPU {} vs CPU {} (relative {})",
        worst.1,
        g.step_losses[worst.1],
        c.step_losses[worst.1],
        worst.0
    );
    for (a, b) in g.epochs.iter().zip(&c.epochs) {
        assert!(
            (a.held_out_loss - b.held_out_loss).abs() < 1e-3 * b.held_out_loss.max(1e-3),
            "{label}: held-out loss GPU {a:?} vs CPU {b:?}"
        );
        // At most one image may flip between right and wrong on a near-tie.
        assert!(
            (a.held_out_accuracy - b.held_out_accuracy).abs() <= 1.5 / 359.0,
            "{label}: held-out accuracy GPU {a:?} vs CPU {b:?}"
        );
    }
    for (l, (a, b)) in gpu.1.iter().zip(&cpu.1).enumerate() {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-3,
            "{label}: layer {l} parameters differ by {worst}"
        );
    }
}

#[test]
fn the_data_set_loads_and_splits() {
    let d = digits();
    assert_eq!(d.train.samples() + d.held_out.samples(), 1797);
    assert_eq!(d.held_out.samples(), 359);
    assert_eq!(d.train.x.len(), d.train.samples() * 64);
    assert!(d.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    for split in [&d.train, &d.held_out] {
        let mut counts = [0; 10];
        split.y.iter().for_each(|&y| counts[y as usize] += 1);
        assert!(counts.iter().all(|&c| c > 20), "classes {counts:?}");
    }
    let bad = "0,".repeat(64) + "10\n";
    assert!(data::parse(&bad).unwrap_err().contains("line 1"));
    assert!(data::parse("1,2,3\n").unwrap_err().contains("fields"));
}

#[test]
fn cpu_training_learns() {
    for model in [ModelKind::Linear, ModelKind::Mlp] {
        let config = short(model, Optimizer::Adam);
        assert_learns(&format!("cpu {model:?}"), &cpu(&config).0);
    }
}

#[test]
fn gpu_training_learns_and_follows_the_cpu() {
    let Some(device) = device() else { return };
    for (model, optimizer) in [
        (ModelKind::Linear, Optimizer::Adam),
        (ModelKind::Mlp, Optimizer::Adam),
        (ModelKind::Mlp, Optimizer::Sgd),
    ] {
        let config = short(model, optimizer);
        let label = format!("{model:?} {optimizer:?}");
        let on_gpu = gpu(device, &config);
        assert_learns(&format!("gpu {label}"), &on_gpu.0);
        assert_same_curve(&label, &on_gpu, &cpu(&config));
    }
}

#[test]
fn gpu_loss_read_back_every_k_steps() {
    let Some(device) = device() else { return };
    // 22 steps per epoch: K = 1, 7 (a partial last read-back) and 100 (only the epoch's end)
    // must give the same losses, in order, reported as they were read back.
    let mut runs = Vec::new();
    for k in [1, 7, 100] {
        let config = Config {
            epochs: 2,
            steps_per_log: k,
            ..short(ModelKind::Mlp, Optimizer::Adam)
        };
        let mut reads = Vec::new();
        let mut epochs = Vec::new();
        let (report, _) = digits::gpu::train(device, &config, digits(), &mut |e| match e {
            Event::Steps { first, losses } => reads.push((first, losses.len())),
            Event::Epoch(e) => epochs.push(e),
        })
        .expect("GPU training");
        assert_eq!(report.device, device.name);
        assert_eq!(epochs, report.epochs, "K = {k}");
        let expected: Vec<(usize, usize)> = (0..2)
            .flat_map(|epoch| {
                (0..22)
                    .step_by(k)
                    .map(move |s| (epoch * 22 + s, k.min(22 - s)))
            })
            .collect();
        assert_eq!(reads, expected, "K = {k}");
        runs.push(report.step_losses);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
}
