//! xent-burn's cross-entropy against burn's own (`burn::nn::loss::CrossEntropyLoss`:
//! `log_softmax` then a gather) on the same burn wgpu device: issue #15's short-row shapes and
//! a vocabulary-sized one, the loss alone and the loss with its gradient (autodiff). Prints
//! the median wall time of each (to the loss read back, or to `device.sync()` after the
//! backward) and burn / xent.
//!
//! ```text
//! cargo run --release -p xent-burn --example bench_vs_burn
//! cargo run --release -p xent-burn --example bench_vs_burn -- --runs 9 --shapes 65536x1000,16x21x512x512
//! ```
//!
//! Shapes are `NxC` (rows of C classes) or `NxCxHxW` (PyTorch's (N, C, d1, d2) layout: xent
//! binds it as it is; burn's loss takes it permuted to `[N·H·W, C]`, a copy counted in its
//! time). `WGPU_BACKEND=vulkan|gl|metal|dx12` picks the graphics API. Both sides run the same
//! logits on the same device and queue; the first run of each is a warm-up (pipelines).

mod common;
use common::device;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use xent::CrossEntropy;

/// Issue #15's shapes (each ≥ 8 MiB of f32 logits) and a vocabulary-sized one, those above
/// 128 MiB scaled down to it: burn allocates a tensor in one buffer, and lavapipe's limit is
/// 128 MiB (issue #15's 65536x1000, 16x21x512x512 and 4096x32000 fit on most GPUs).
const SHAPES: &str = "1048576x2,1048576x10,262144x100,32768x1000,8x21x256x256,1024x32000";

/// Median milliseconds of `runs` calls of `f`, after one warm-up call.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// Logits (a fixed pseudo-random spread over ±4) and class indices.
fn data(elements: usize, rows: usize, classes: usize) -> (Vec<f32>, Vec<i64>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let logits = (0..elements)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
        .collect();
    let targets = (0..rows)
        .map(|_| (next() % classes as u64) as i64)
        .collect();
    (logits, targets)
}

/// One shape's four timings: burn forward, xent forward, burn forward + backward, xent
/// forward + backward (ms).
fn measure(shape: &[usize], runs: usize, device: &Device) -> [f64; 4] {
    let classes = shape[1];
    let elements: usize = shape.iter().product();
    let rows = elements / classes;
    let (values, indices) = data(elements, rows, classes);
    let burn_loss = burn::nn::loss::CrossEntropyLossConfig::new().init(device);
    let options = CrossEntropy::new();
    let sample_dims: Vec<usize> = shape
        .iter()
        .enumerate()
        .filter(|&(a, _)| a != 1)
        .map(|(_, &d)| d)
        .collect();
    let mut out = [0.0; 4];
    for (k, tracked) in [false, true].into_iter().enumerate() {
        let device = if tracked {
            device.clone().autodiff()
        } else {
            device.clone()
        };
        match *shape {
            [n, c] => {
                let logits =
                    Tensor::<2>::from_data(TensorData::new(values.clone(), [n, c]), &device);
                let logits = if tracked {
                    logits.require_grad()
                } else {
                    logits
                };
                let targets =
                    Tensor::<1, Int>::from_data(TensorData::new(indices.clone(), [n]), &device);
                let run = |xent: bool| {
                    let loss = if xent {
                        xent_burn::cross_entropy(logits.clone(), targets.clone(), &options)
                            .expect("xent-burn's loss")
                            .loss
                    } else {
                        burn_loss.forward(logits.clone(), targets.clone())
                    };
                    finish(loss, tracked, &device);
                };
                out[2 * k] = median_ms(runs, || run(false));
                out[2 * k + 1] = median_ms(runs, || run(true));
            }
            [n, c, h, w] => {
                let logits =
                    Tensor::<4>::from_data(TensorData::new(values.clone(), [n, c, h, w]), &device);
                let logits = if tracked {
                    logits.require_grad()
                } else {
                    logits
                };
                let targets = Tensor::<3, Int>::from_data(
                    TensorData::new(
                        indices.clone(),
                        [sample_dims[0], sample_dims[1], sample_dims[2]],
                    ),
                    &device,
                );
                let run = |xent: bool| {
                    let loss = if xent {
                        xent_burn::cross_entropy(logits.clone(), targets.clone(), &options)
                            .expect("xent-burn's loss")
                            .loss
                    } else {
                        // burn's loss takes rows: the class dimension moved last, then flattened.
                        let rows = logits.clone().permute([0, 2, 3, 1]).reshape([n * h * w, c]);
                        burn_loss.forward(rows, targets.clone().reshape([n * h * w]))
                    };
                    finish(loss, tracked, &device);
                };
                out[2 * k] = median_ms(runs, || run(false));
                out[2 * k + 1] = median_ms(runs, || run(true));
            }
            _ => panic!("shapes are NxC or NxCxHxW"),
        }
    }
    out
}

/// Waits for a loss: its value read back, and with autodiff its backward run and synced.
fn finish(loss: Tensor<1>, tracked: bool, device: &Device) {
    if tracked {
        let grads = loss.backward();
        device.sync().expect("the backward runs");
        drop(grads);
    } else {
        // burn reads lazily: the bytes are fetched when they are used.
        let value = loss
            .into_data()
            .try_to_vec::<f32>()
            .expect("the loss reads back");
        std::hint::black_box(value);
    }
}

fn main() -> ExitCode {
    let mut runs = 5;
    let mut shapes = SHAPES.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--runs", Some(v)) if v.parse::<usize>().is_ok_and(|r| r > 0) => {
                runs = v.parse().unwrap()
            }
            ("--shapes", Some(v)) => shapes = v,
            _ => {
                eprintln!("bench_vs_burn: usage: [--runs N] [--shapes NxC,NxCxHxW,...]");
                return ExitCode::FAILURE;
            }
        }
    }
    let device = match device() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench_vs_burn: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("median of {runs} runs, f32, ms; burn: burn::nn::loss::CrossEntropyLoss, xent: xent_burn::cross_entropy");
    println!(
        "{:>18} {:>10} {:>10} {:>10}   {:>14} {:>14} {:>10}",
        "shape", "burn fwd", "xent fwd", "burn/xent", "burn fwd+bwd", "xent fwd+bwd", "burn/xent"
    );
    for text in shapes.split(',') {
        let shape: Vec<usize> = match text.split('x').map(str::parse).collect() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench_vs_burn: shape {text}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !matches!(shape.len(), 2 | 4) {
            eprintln!("bench_vs_burn: shape {text}: NxC or NxCxHxW");
            return ExitCode::FAILURE;
        }
        let [bf, xf, bb, xb] = measure(&shape, runs, &device);
        println!(
            "{text:>18} {bf:>10.2} {xf:>10.2} {:>10.2}   {bb:>14.2} {xb:>14.2} {:>10.2}",
            bf / xf,
            bb / xb
        );
    }
    ExitCode::SUCCESS
}
