//! The training loop on the CPU: plain Rust matmuls for the hidden layers, and the head's loss
//! from its input by xent's linear cross-entropy ([`LinearCrossEntropy`]: the logits, dh, dW
//! and db in one call, the logits never handed out). Same initialization and data order as
//! [`super::gpu`] (whose head is xent's recorded linear head on the same packed blocks), so the
//! curves agree to rounding; it is also the readable version of what the WGSL kernels in
//! `examples/shaders/` do.

use super::data::{Digits, Split};
use super::{
    check_config, epoch_order, init_params, Config, Epoch, Error, Event, Optimizer, Report,
    ADAM_EPS, BETA1, BETA2, CLASSES,
};
use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest};
use xent::{Backend, Batch, CrossEntropy, Logits, Matrix, Request};

/// `y = act(x·W + b)` for a packed block θ ((inputs + 1) × outputs); `x` is rows × inputs.
/// Same order as `dense_forward.wgsl`: Σ_k in order, then the bias.
pub fn dense_forward(
    x: &[f32],
    theta: &[f32],
    inputs: usize,
    outputs: usize,
    relu: bool,
) -> Vec<f32> {
    let rows = x.len() / inputs;
    let mut y = vec![0.0f32; rows * outputs];
    for n in 0..rows {
        for j in 0..outputs {
            let mut acc = 0.0f32;
            for k in 0..inputs {
                acc += x[n * inputs + k] * theta[k * outputs + j];
            }
            acc += theta[inputs * outputs + j];
            y[n * outputs + j] = if relu { acc.max(0.0) } else { acc };
        }
    }
    y
}

/// `dx = (dy·Wᵀ) ⊙ [x > 0]` (the mask only when `relu_input`), as `dense_backward_input.wgsl`.
pub fn dense_backward_input(
    dy: &[f32],
    theta: &[f32],
    x: &[f32],
    inputs: usize,
    outputs: usize,
    relu_input: bool,
) -> Vec<f32> {
    let rows = x.len() / inputs;
    let mut dx = vec![0.0f32; rows * inputs];
    for n in 0..rows {
        for k in 0..inputs {
            let mut acc = 0.0f32;
            for j in 0..outputs {
                acc += dy[n * outputs + j] * theta[k * outputs + j];
            }
            // `x > 0` is false for NaN too, so NaN is masked, as in the shader.
            let passed = x[n * inputs + k] > 0.0;
            if relu_input && !passed {
                acc = 0.0;
            }
            dx[n * inputs + k] = acc;
        }
    }
    dx
}

/// The packed gradient: `dW = xᵀ·dy`, `db = Σ_n dy`, as `dense_backward_weight.wgsl`.
pub fn dense_backward_weight(x: &[f32], dy: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    let rows = x.len() / inputs;
    let mut g = vec![0.0f32; (inputs + 1) * outputs];
    for k in 0..=inputs {
        for j in 0..outputs {
            let mut acc = 0.0f32;
            for n in 0..rows {
                let a = if k < inputs { x[n * inputs + k] } else { 1.0 };
                acc += a * dy[n * outputs + j];
            }
            g[k * outputs + j] = acc;
        }
    }
    g
}

/// The forward pass of the first `params.len()` layers of the network of `widths`: every
/// layer's output, input first (`acts[0] = x`; with every layer, last = logits). Every layer
/// but the network's last has a ReLU.
pub fn forward(params: &[Vec<f32>], widths: &[usize], x: &[f32]) -> Vec<Vec<f32>> {
    let layers = widths.len() - 1;
    let mut acts = vec![x.to_vec()];
    for (l, theta) in params.iter().enumerate() {
        let y = dense_forward(&acts[l], theta, widths[l], widths[l + 1], l + 1 < layers);
        acts.push(y);
    }
    acts
}

/// Mean loss and accuracy on a split (xent on the CPU, metrics from the same pass).
pub fn evaluate(params: &[Vec<f32>], widths: &[usize], split: &Split) -> Result<(f32, f64), Error> {
    let acts = forward(params, widths, &split.x);
    let logits = acts.last().expect("at least one layer");
    let out = CrossEntropy::new().compute(
        &Backend::Cpu,
        Batch::new(Logits::new(logits, split.samples(), CLASSES), &split.y[..]),
        Request::new().metrics(),
    )?;
    let metrics = out.metrics.ok_or("xent returned no metrics")?;
    Ok((out.loss.ok_or("xent returned no loss")?, metrics.accuracy()))
}

/// The head's mean loss on its input `h` (rows × `inputs`) by [`LinearCrossEntropy`], which
/// takes `W` as nn.Linear's [classes × inputs]: the packed block θ ((inputs + 1) × classes) is
/// transposed in and its gradient packed back into `grad`. Returns the loss and `dh` (empty
/// when the head's input is the data, which needs none).
fn head_loss(
    theta: &[f32],
    h: &[f32],
    y: &[i32],
    inputs: usize,
    grad: &mut Vec<f32>,
) -> Result<(f32, Vec<f32>), Error> {
    let rows = y.len();
    let w: Vec<f32> = (0..CLASSES * inputs)
        .map(|i| theta[(i % inputs) * CLASSES + i / inputs])
        .collect();
    let bias = &theta[inputs * CLASSES..];
    let (mut dh, mut dw, mut db) = (
        vec![0f32; rows * inputs],
        vec![0f32; CLASSES * inputs],
        vec![0f32; CLASSES],
    );
    let batch = LinearBatch::new(
        Matrix::new(h, rows, inputs),
        Matrix::new(&w, CLASSES, inputs),
        y,
    )
    .bias(bias);
    let request = LinearRequest::new()
        .hidden_gradient(GradientBuffer::Write(&mut dh))
        .weight_gradient(GradientBuffer::Write(&mut dw))
        .bias_gradient(GradientBuffer::Write(&mut db));
    let loss = LinearCrossEntropy::new(CrossEntropy::new())
        .compute(&Backend::Cpu, batch, request)?
        .loss
        .ok_or("xent returned no loss")?;
    *grad = (0..(inputs + 1) * CLASSES)
        .map(|i| {
            let (k, j) = (i / CLASSES, i % CLASSES);
            if k < inputs {
                dw[j * inputs + k]
            } else {
                db[j]
            }
        })
        .collect();
    Ok((loss, dh))
}

/// Trains on the CPU. `on_event` sees the losses as the GPU path would read them back (every
/// `steps_per_log` steps and at each epoch's end) and each epoch's scores. Also returns the
/// final parameter blocks.
pub fn train(
    config: &Config,
    digits: &Digits,
    on_event: &mut dyn FnMut(Event),
) -> Result<(Report, Vec<Vec<f32>>), Error> {
    let train = &digits.train;
    check_config(config, train.samples())?;
    let widths = config.widths();
    let features = widths[0];
    let batch = config.batch;
    let mut params = init_params(config);
    let mut m: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v = m.clone();
    let mut t = 0.0f32;
    let steps_per_epoch = train.samples() / batch;
    let mut report = Report {
        device: "cpu".into(),
        step_losses: Vec::new(),
        epochs: Vec::new(),
        elapsed: Default::default(),
    };
    let start = std::time::Instant::now();
    let mut pending: Vec<f32> = Vec::new();
    let mut xb = vec![0.0f32; batch * features];
    let mut yb = vec![0i32; batch];
    for epoch in 0..config.epochs {
        let order = epoch_order(config, epoch, train.samples());
        for step in 0..steps_per_epoch {
            // Minibatch (gather_rows.wgsl).
            for (n, &src) in order[step * batch..][..batch].iter().enumerate() {
                let src = src as usize;
                xb[n * features..][..features]
                    .copy_from_slice(&train.x[src * features..][..features]);
                yb[n] = train.y[src];
            }
            // Every layer but the head, then the head's loss from its input (`xent::linear`:
            // the logits stay inside xent), with dh, dW and db.
            let head = params.len() - 1;
            let acts = forward(&params[..head], &widths, &xb);
            let h = acts.last().expect("the input at least");
            let mut grads = vec![Vec::new(); params.len()];
            let (loss, dh) = head_loss(&params[head], h, &yb, widths[head], &mut grads[head])?;
            // Backward through the hidden layers, last first.
            if head > 0 {
                let mut dy: Vec<f32> = dh
                    .iter()
                    .zip(h)
                    .map(|(&d, &a)| if a > 0.0 { d } else { 0.0 })
                    .collect();
                for l in (0..head).rev() {
                    grads[l] = dense_backward_weight(&acts[l], &dy, widths[l], widths[l + 1]);
                    if l > 0 {
                        dy = dense_backward_input(
                            &dy,
                            &params[l],
                            &acts[l],
                            widths[l],
                            widths[l + 1],
                            true,
                        );
                    }
                }
            }
            // Update (adam_tick.wgsl, adam_update.wgsl / sgd_update.wgsl).
            match config.optimizer {
                Optimizer::Sgd => {
                    for (theta, g) in params.iter_mut().zip(&grads) {
                        for (p, g) in theta.iter_mut().zip(g) {
                            *p -= config.lr * g;
                        }
                    }
                }
                Optimizer::Adam => {
                    t += 1.0;
                    let c1 = 1.0 / (1.0 - BETA1.powf(t));
                    let c2 = 1.0 / (1.0 - BETA2.powf(t));
                    for l in 0..params.len() {
                        for i in 0..params[l].len() {
                            let gi = grads[l][i];
                            let mi = BETA1 * m[l][i] + (1.0 - BETA1) * gi;
                            let vi = BETA2 * v[l][i] + (1.0 - BETA2) * gi * gi;
                            m[l][i] = mi;
                            v[l][i] = vi;
                            params[l][i] -= config.lr * (mi * c1) / ((vi * c2).sqrt() + ADAM_EPS);
                        }
                    }
                }
            }
            pending.push(loss);
            if pending.len() == config.steps_per_log || step + 1 == steps_per_epoch {
                on_event(Event::Steps {
                    first: report.step_losses.len(),
                    losses: &pending,
                });
                report.step_losses.append(&mut pending);
            }
        }
        let (held_out_loss, held_out_accuracy) = evaluate(&params, &widths, &digits.held_out)?;
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
    }
    report.elapsed = start.elapsed();
    Ok((report, params))
}
