//! The measurements of one shape: the bandwidth probes, then every implementation in every
//! mode, each recorded with its GB/s against the matching probe.

use super::shapes::generate;
use super::*;

/// Everything a run shares.
/// What the timed runs of one shape, dtype and mode share.
pub(super) struct Runs<'d, T> {
    pub(super) label: &'d str,
    pub(super) mode: Mode,
    pub(super) logits: &'d [T],
    pub(super) targets: &'d [i64],
    pub(super) shape: Shape,
    pub(super) dtype: BenchDtype,
    /// Bytes one run moves (logits, targets, and the gradient when there is one).
    pub(super) bytes: u64,
}

pub(super) struct Bench<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) cpu: bool,
    pub(super) gpu: Option<&'a Device>,
    pub(super) gpu_name: String,
    pub(super) modes: Vec<Mode>,
    pub(super) bar: &'a ProgressBar,
    pub(super) records: Vec<Record>,
    pub(super) notes: Vec<String>,
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
            spatial: shape.spatial,
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
            clock: None,
        });
    }

    pub(super) fn step(&self, what: String) {
        self.bar.set_message(what);
    }

    pub(super) fn shape<T: Element>(
        &mut self,
        shape: Shape,
        dtype: BenchDtype,
    ) -> Result<(), CliError> {
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
                    if let Backend::Gpu(g) = &gpu.backend {
                        let clock = crate::gpu::Stopwatch::new(g).clock().name();
                        for record in self.records.iter_mut().rev().take(2) {
                            record.clock = Some(clock.into());
                        }
                    }
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
                if shape.spatial > 0 {
                    // The naive baseline reads row-major rows only.
                    self.note(format!(
                        "{label}: naive-cpu skipped (the (N, C, d…) layout)"
                    ));
                    self.bar.inc(1);
                } else {
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
            let (t, round_trip, clock) = match backend {
                Backend::Gpu(gpu) => {
                    let data = (runs.logits, runs.targets);
                    let shape = runs.shape;
                    let backward = runs.mode == Mode::ForwardBackward;
                    match resident::time(gpu, &options, data, shape, backward, self.args.iters) {
                        Ok((t, clock)) => (t, Some(host.median * 1e3), Some(clock.name())),
                        Err(e) => {
                            self.note(format!(
                                "{} {name}: device-resident timing skipped ({e}); the figures are the host-slice call's",
                                runs.label
                            ));
                            (host, None, None)
                        }
                    }
                }
                _ => (host, None, None),
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
                record.clock = clock.map(String::from);
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

    pub(super) fn note(&mut self, note: String) {
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
        let logits = match shape.spatial {
            0 => Logits::new(logits, shape.rows, shape.classes),
            s => Logits::class_dim1(logits, shape.rows / s, shape.classes, s),
        };
        let batch = Batch::new(logits, targets);
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
