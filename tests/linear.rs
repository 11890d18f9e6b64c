//! Linear cross-entropy (`xent::linear`) against the f64 reference on the materialized logits:
//! every option, all three dtypes, both strategies, write and add modes, shapes that are no
//! multiple of any tile, small budgets that split rows and columns, ignored rows, bit-identical
//! repeats and thread counts, finite differences, and the errors.
//!
//! Tolerances: the products accumulate in f32, so a logit is off by up to about
//! `k·2⁻²⁴·S[n]` with `S[n] = max_c Σ_d |h[n][d]·W[c][d]|` (the scale); a loss or LSE is
//! allowed the softmax table's `1e-5·max(1, |ref|)` plus `4e-6·S[n]` (a loss moves by at most
//! twice a logit's error, z-loss by `2λ·lse` times it). A gradient element is a sum of
//! products, allowed `1e-4` of its magnitude `Σ |terms|` (the softmax table's relative bound,
//! applied before the cancellation) plus `1e-9`; f16/bf16 inputs compare against the
//! reference on the same rounded inputs.

mod common;

use common::device::Packed;

use common::{assert_each, Rng};
use half::{bf16, f16};
use xent::linear::{
    GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy, WeightLayout,
};
use xent::reference::{linear_cross_entropy, LinearReference};
use xent::{Backend, CrossEntropy, Dtype, Error, Matrix, Output, Reduction};

/// Values in one dtype, kept alive for a batch's views.
#[derive(Clone)]
enum Typed {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Typed {
    fn of(values: &[f32], dtype: Dtype) -> Typed {
        match dtype {
            Dtype::F32 => Typed::F32(values.to_vec()),
            Dtype::F16 => Typed::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            Dtype::Bf16 => Typed::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }
    fn matrix(&self, rows: usize, cols: usize) -> Matrix<'_> {
        match self {
            Typed::F32(d) => Matrix::new(d, rows, cols),
            Typed::F16(d) => Matrix::new(d, rows, cols),
            Typed::Bf16(d) => Matrix::new(d, rows, cols),
        }
    }
}

/// A linear head case: `h` [N × D], `W` [V × D], `b` [V], targets and weights.
#[derive(Clone)]
struct Head {
    rows: usize,
    hidden: usize,
    vocab: usize,
    h: Typed,
    w: Typed,
    b: Option<Typed>,
    targets: Vec<i64>,
    class_weights: Option<Vec<f32>>,
    sample_weights: Option<Vec<f32>>,
}

impl Head {
    /// Random `h` and `W` scaled so logits spread over a few units, a random bias, and every
    /// `ignore_every`-th row ignored (−100; 0 for none).
    fn new(seed: u64, (rows, hidden, vocab): (usize, usize, usize), dtype: Dtype) -> Head {
        let mut rng = Rng(seed);
        let scale = 2.0 / (hidden as f32).sqrt();
        let h: Vec<f32> = (0..rows * hidden).map(|_| rng.normal()).collect();
        let w: Vec<f32> = (0..vocab * hidden).map(|_| rng.normal() * scale).collect();
        let b: Vec<f32> = (0..vocab).map(|_| rng.normal() * 0.5).collect();
        let targets = (0..rows).map(|_| rng.below(vocab) as i64).collect();
        Head {
            rows,
            hidden,
            vocab,
            h: Typed::of(&h, dtype),
            w: Typed::of(&w, dtype),
            b: Some(Typed::of(&b, dtype)),
            targets,
            class_weights: None,
            sample_weights: None,
        }
    }
    fn ignore_every(mut self, every: usize) -> Head {
        for r in (0..self.rows).step_by(every.max(1)) {
            self.targets[r] = -100;
        }
        self
    }
    fn no_bias(mut self) -> Head {
        self.b = None;
        self
    }
    fn weighted(mut self, seed: u64) -> Head {
        let mut rng = Rng(seed);
        self.class_weights = Some(
            (0..self.vocab)
                .map(|_| 0.25 + rng.uniform() * 2.0)
                .collect(),
        );
        let mut s: Vec<f32> = (0..self.rows).map(|_| rng.uniform() * 2.0).collect();
        s[0] = 0.0;
        self.sample_weights = Some(s);
        self
    }
    fn batch(&self) -> LinearBatch<'_> {
        let mut batch = LinearBatch::new(
            self.h.matrix(self.rows, self.hidden),
            self.w.matrix(self.vocab, self.hidden),
            &self.targets[..],
        );
        batch.bias = self.b.as_ref().map(|b| b.matrix(1, self.vocab));
        batch.class_weights = self.class_weights.as_deref();
        batch.sample_weights = self.sample_weights.as_deref();
        batch
    }
    fn reference(&self, options: &CrossEntropy, upstream: Option<&[f32]>) -> LinearReference {
        linear_cross_entropy(options, &self.batch(), upstream).expect("reference")
    }
    /// `S[n] = max_c Σ_d |h[n][d]·W[c][d]| + |b[c]|`.
    fn scales(&self) -> Vec<f64> {
        let (batch, d) = (self.batch(), self.hidden);
        (0..self.rows)
            .map(|r| {
                (0..self.vocab)
                    .map(|c| {
                        let dot: f64 = (0..d)
                            .map(|k| (batch.hidden.get(r, k) * batch.weight.get(c, k)).abs() as f64)
                            .sum();
                        dot + batch
                            .bias
                            .as_ref()
                            .map_or(0.0, |b| b.get(0, c).abs() as f64)
                    })
                    .fold(0.0, f64::max)
            })
            .collect()
    }
}

/// The three gradients of one call.
#[derive(Debug, Clone, PartialEq)]
struct Grads {
    dh: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl Grads {
    fn filled(head: &Head, value: f32) -> Grads {
        Grads {
            dh: vec![value; head.rows * head.hidden],
            dw: vec![value; head.vocab * head.hidden],
            db: vec![value; head.vocab],
        }
    }
}

/// Runs one call with LSE, metrics, row losses and all three gradients (written, or added to
/// buffers holding `prefill`).
fn run(
    head: &Head,
    loss: &LinearCrossEntropy,
    upstream: Option<&[f32]>,
    add: Option<f32>,
    every_output: bool,
) -> (Output, Grads) {
    try_run(&Backend::Cpu, head, loss, (upstream, add, every_output)).expect("linear cross-entropy")
}

/// [`run`] on `backend`, its error returned.
fn try_run(
    backend: &Backend,
    head: &Head,
    loss: &LinearCrossEntropy,
    asked: (Option<&[f32]>, Option<f32>, bool),
) -> xent::Result<(Output, Grads)> {
    run_batch(backend, head, head.batch(), loss, asked)
}

/// [`try_run`] on `batch`, a view of `head` (`dW` as long as `W`, in `batch`'s layout).
fn run_batch(
    backend: &Backend,
    head: &Head,
    batch: LinearBatch<'_>,
    loss: &LinearCrossEntropy,
    (upstream, add, every_output): (Option<&[f32]>, Option<f32>, bool),
) -> xent::Result<(Output, Grads)> {
    let mut g = Grads::filled(head, add.unwrap_or(f32::NAN));
    let buffer = |data| match add {
        Some(_) => GradientBuffer::Add(data),
        None => GradientBuffer::Write(data),
    };
    let mut request = LinearRequest::new()
        .row_losses()
        .hidden_gradient(buffer(&mut g.dh))
        .weight_gradient(buffer(&mut g.dw))
        .bias_gradient(buffer(&mut g.db));
    if every_output {
        request = request.lse().metrics();
    }
    if let Some(u) = upstream {
        request = request.upstream(u);
    }
    let out = loss.compute(backend, batch, request)?;
    Ok((out, g))
}

/// Checks a run against the reference (`prefill` added to the gradients in add mode).
fn check(label: &str, head: &Head, r: &LinearReference, out: &Output, g: &Grads, prefill: f32) {
    check_forward(label, head, r, out);
    check_gradients(label, head, r, g, prefill);
}

/// The loss, per-row losses and (when returned) LSE and validity against the reference.
fn check_forward(label: &str, head: &Head, r: &LinearReference, out: &Output) {
    let s = head.scales();
    let reference = &r.logits_reference;
    let loss_tol = |row: usize, value: f64| 1e-5 * value.abs().max(1.0) + 4e-6 * s[row];
    let worst = s.iter().copied().fold(0.0, f64::max);
    match (out.loss, reference.loss) {
        (Some(a), Some(e)) => {
            // The sum's error is at most the sum of the rows' logit errors; the mean's is that
            // over its denominators (≥ 1 in these cases), so the sum's bound covers both
            // (loose by about N for the mean: the per-row checks below are the tight ones).
            let rows_error = 4e-6 * worst * reference.row_losses.len() as f64;
            assert_each(&format!("{label}: loss"), &[a], &[e], |_| {
                1e-5 * e.abs().max(1.0) + rows_error
            })
        }
        (None, None) => {}
        other => panic!("{label}: loss {other:?}"),
    }
    let rows = out.row_losses.as_ref().expect("row losses");
    assert_each(
        &format!("{label}: row losses"),
        rows,
        &reference.row_losses,
        |i| loss_tol(i, reference.row_losses[i]),
    );
    if let Some(lse) = &out.lse {
        assert_each(&format!("{label}: lse"), lse, &reference.lse, |i| {
            loss_tol(i, reference.lse[i])
        });
        let m = out.metrics.as_ref().expect("metrics");
        assert_eq!(m.valid, reference.valid, "{label}: valid");
    }
}

/// `dh`, `dW`, `db` against the reference, each element within `1e-4` of its magnitude.
fn check_gradients(label: &str, head: &Head, r: &LinearReference, g: &Grads, prefill: f32) {
    let (n, d, v) = (head.rows, head.hidden, head.vocab);
    // Magnitudes of the gradients' sums, from the reference's G.
    let grad = &r.logits_reference.gradient;
    let batch = head.batch();
    let (hm, wm) = (&batch.hidden, &batch.weight);
    // In add mode a recorded call adds into the caller's buffer once per vocabulary chunk
    // (dh) or group of rows (dW, db), each a rounding at the prefill's magnitude: up to 8 here.
    let tol = |magnitude: f64| 1e-4 * magnitude + 1e-9 + prefill.abs() as f64 * 6e-8 * 8.0;
    let mut dh_mag = vec![0f64; n * d];
    let mut dw_mag = vec![0f64; v * d];
    let mut db_mag = vec![0f64; v];
    for row in 0..n {
        for c in 0..v {
            let gv = grad[row * v + c].abs();
            if gv.is_nan() {
                continue;
            }
            db_mag[c] += gv;
            for k in 0..d {
                dh_mag[row * d + k] += gv * wm.get(c, k).abs() as f64;
                dw_mag[c * d + k] += gv * hm.get(row, k).abs() as f64;
            }
        }
    }
    let shifted = |e: &[f64]| e.iter().map(|&x| x + prefill as f64).collect::<Vec<f64>>();
    assert_each(
        &format!("{label}: dh"),
        &g.dh,
        &shifted(&r.hidden_gradient),
        |i| tol(dh_mag[i]),
    );
    assert_each(
        &format!("{label}: dW"),
        &g.dw,
        &shifted(&r.weight_gradient),
        |i| tol(dw_mag[i]),
    );
    assert_each(
        &format!("{label}: db"),
        &g.db,
        &shifted(&r.bias_gradient),
        |i| tol(db_mag[i]),
    );
}

/// The options of SEMANTICS.md sections 1, 2 and 2c, one at a time and together.
fn option_grid() -> Vec<(&'static str, CrossEntropy)> {
    let base = CrossEntropy::new();
    vec![
        ("plain mean", base),
        ("sum", base.reduction(Reduction::Sum)),
        ("none", base.reduction(Reduction::None)),
        ("smoothing", base.label_smoothing(0.1)),
        ("z-loss", base.z_loss(1e-3)),
        ("softcap and scale", base.softcap(3.0).logit_scale(1.5)),
        ("focal", base.focal_gamma(2.0)),
        (
            "focal and smoothing",
            base.focal_gamma(1.5).label_smoothing(0.2),
        ),
        (
            "everything",
            base.label_smoothing(0.05)
                .z_loss(1e-4)
                .softcap(5.0)
                .logit_scale(0.8)
                .reduction(Reduction::Sum),
        ),
    ]
}

/// A few of [`option_grid`]: the plain mean, per-row upstream, focal loss with smoothing,
/// everything at once.
fn some_options() -> impl Iterator<Item = (&'static str, CrossEntropy)> {
    let some = ["plain mean", "none", "focal and smoothing", "everything"];
    option_grid()
        .into_iter()
        .filter(move |(name, _)| some.contains(name))
}

const STRATEGIES: [Strategy; 2] = [Strategy::Fused, Strategy::Chunked];
/// The fused strategy, the default budget (`Want::strategy`).
const FUSED: (Strategy, usize) = (Strategy::Fused, 0);

#[test]
fn every_option_both_strategies_against_the_reference() {
    // V = 1100 spans three forward tiles (the last partial), D = 19 no multiple of a vector.
    let head = Head::new(1, (37, 19, 1100), Dtype::F32)
        .ignore_every(5)
        .weighted(2);
    for (name, options) in option_grid() {
        let upstream: Vec<f32> = match options.reduction {
            Reduction::None => (0..head.rows).map(|r| 0.5 + r as f32 * 0.1).collect(),
            _ => vec![0.75],
        };
        let reference = head.reference(&options, Some(&upstream));
        for strategy in STRATEGIES {
            let loss = LinearCrossEntropy::new(options).strategy(strategy);
            for every in [false, true] {
                let (out, g) = run(&head, &loss, Some(&upstream), None, every);
                let label = format!("{name}, {strategy:?}, lse and metrics {every}");
                check(&label, &head, &reference, &out, &g, 0.0);
            }
        }
    }
}

#[test]
fn every_dtype_without_bias_or_weights() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let head = Head::new(3, (21, 33, 700), dtype).no_bias().ignore_every(4);
        let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4);
        let reference = head.reference(&options, None);
        for strategy in STRATEGIES {
            let loss = LinearCrossEntropy::new(options).strategy(strategy);
            let (out, g) = run(&head, &loss, None, None, true);
            check(
                &format!("{dtype:?} {strategy:?}"),
                &head,
                &reference,
                &out,
                &g,
                0.0,
            );
        }
    }
}

#[test]
fn small_budgets_split_rows_and_columns() {
    // 8700 columns: more than one forward segment (16 tiles of 512), several backward chunks.
    let head = Head::new(5, (23, 7, 8700), Dtype::F32).ignore_every(3);
    let options = CrossEntropy::new().label_smoothing(0.1).focal_gamma(1.0);
    let reference = head.reference(&options, None);
    for strategy in STRATEGIES {
        for budget in [1usize, 64 * 4 * 5, 1 << 20] {
            let loss = LinearCrossEntropy::new(options)
                .strategy(strategy)
                .scratch_bytes(budget);
            let (out, g) = run(&head, &loss, None, None, false);
            let label = format!("{strategy:?}, budget {budget}");
            check(&label, &head, &reference, &out, &g, 0.0);
        }
    }
}

/// A weight stored [D × V] (`WeightLayout::HiddenMajor`) in host slices: `dW` comes back
/// [D × V] too. Every dtype, both CPU strategies (a budget of 75 KiB: several groups of rows
/// in the chunked one, several backward chunks of classes in the fused one), written and
/// added gradients, and the GPU's host call (small bindings too:
/// `W` in pieces); against the reference on the [V × D] head.
#[test]
fn hidden_major_weight_in_host_slices() {
    let mut backends = vec![("cpu".to_string(), Backend::Cpu)];
    if let Some(gpu) = common::device::gpu() {
        backends.push(("gpu".into(), Backend::Gpu(gpu)));
        let small = xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
            max_binding_size: Some(32 << 10),
            ..Default::default()
        })
        .expect("a device with small bindings");
        backends.push((
            "gpu, 32 KiB bindings".into(),
            Backend::Gpu(std::sync::Arc::new(small)),
        ));
    }
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let head = Head::new(61, (37, 20, 1100), dtype)
            .ignore_every(5)
            .weighted(6);
        let (d, v) = (head.hidden, head.vocab);
        let w_t = head.w.transposed(v, d);
        for (name, options) in some_options() {
            let upstream = recorded_upstream(&head, &options);
            let reference = head.reference(&options, Some(&upstream));
            for (backend_name, backend) in &backends {
                let cpu = matches!(backend, Backend::Cpu);
                let strategies: &[Strategy] = if cpu { &STRATEGIES } else { &[Strategy::Auto] };
                for &strategy in strategies {
                    for add in [None, Some(0.5f32)] {
                        let label = format!(
                            "[D × V] {dtype:?} {name}, {backend_name} {strategy:?}, add {add:?}"
                        );
                        let loss = LinearCrossEntropy::new(options)
                            .strategy(strategy)
                            .scratch_bytes(64 * 300 * 4);
                        let batch = LinearBatch {
                            weight: w_t.matrix(d, v),
                            ..head.batch()
                        }
                        .weight_layout(WeightLayout::HiddenMajor);
                        let asked = (Some(&upstream[..]), add, true);
                        let (out, mut g) = run_batch(backend, &head, batch, &loss, asked)
                            .unwrap_or_else(|e| panic!("{label}: {e}"));
                        g.dw = (0..v * d).map(|i| g.dw[(i % d) * v + i / d]).collect();
                        check(&label, &head, &reference, &out, &g, add.unwrap_or(0.0));
                    }
                }
            }
        }
    }
    // Its shape is read through the layout: a [V × D] matrix passed as [D × V] is an error.
    let head = Head::new(62, (4, 6, 10), Dtype::F32);
    let batch = head.batch().weight_layout(WeightLayout::HiddenMajor);
    let err = LinearCrossEntropy::new(CrossEntropy::new())
        .compute(&Backend::Cpu, batch, LinearRequest::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                what: "weight (hidden size)",
                expected: 6,
                actual: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn add_mode_accumulates_into_the_buffers() {
    let head = Head::new(7, (16, 11, 300), Dtype::F32).ignore_every(3);
    let options = CrossEntropy::new().reduction(Reduction::Sum);
    let reference = head.reference(&options, None);
    for strategy in [Strategy::Auto, Strategy::Fused, Strategy::Chunked] {
        for every in [false, true] {
            let loss = LinearCrossEntropy::new(options).strategy(strategy);
            let (out, g) = run(&head, &loss, None, Some(0.5), every);
            let label = format!("{strategy:?} add, every row {every}");
            check(&label, &head, &reference, &out, &g, 0.5);
        }
    }
}

#[test]
fn all_rows_ignored_and_empty_batches() {
    let head = Head::new(9, (6, 5, 40), Dtype::F32).ignore_every(1);
    for strategy in STRATEGIES {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let options = CrossEntropy::new().reduction(reduction);
            let loss = LinearCrossEntropy::new(options).strategy(strategy);
            let (out, g) = run(&head, &loss, None, None, false);
            match reduction {
                Reduction::Mean => assert!(out.loss.unwrap().is_nan()),
                Reduction::Sum => assert_eq!(out.loss, Some(0.0)),
                Reduction::None => assert_eq!(out.loss, None),
            }
            assert_eq!(out.row_losses.unwrap(), vec![0.0; 6]);
            assert_eq!(g, Grads::filled(&head, 0.0), "{strategy:?}: zero gradients");
        }
    }
    let empty = Head::new(9, (0, 5, 40), Dtype::F32);
    let (out, g) = run(
        &empty,
        &LinearCrossEntropy::new(CrossEntropy::new()),
        None,
        None,
        true,
    );
    assert!(out.loss.unwrap().is_nan());
    assert_eq!(g, Grads::filled(&empty, 0.0));
}

#[test]
fn repeats_and_thread_counts_give_the_same_bits() {
    let head = Head::new(11, (300, 24, 2100), Dtype::F32).ignore_every(7);
    let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-4);
    for strategy in STRATEGIES {
        let loss = LinearCrossEntropy::new(options)
            .strategy(strategy)
            .scratch_bytes(300 * 4 * 256);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| run(&head, &loss, None, None, true))
        };
        let first = on(2);
        for threads in [1, 2, 3] {
            let (out, g) = on(threads);
            assert_eq!(out.loss.map(f32::to_bits), first.0.loss.map(f32::to_bits));
            assert_eq!(out, first.0, "{strategy:?} on {threads} threads: outputs");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&g.dh), bits(&first.1.dh), "{strategy:?} {threads}: dh");
            assert_eq!(bits(&g.dw), bits(&first.1.dw), "{strategy:?} {threads}: dW");
            assert_eq!(bits(&g.db), bits(&first.1.db), "{strategy:?} {threads}: db");
        }
    }
}

/// Central differences of the library's own f32 loss (sum reduction, f64-summed) against its
/// gradients, on a tiny head: an independent check of the chain rule through the product.
#[test]
fn finite_differences_of_dh_dw_db() {
    let (n, d, v) = (3, 4, 5);
    let mut rng = Rng(13);
    let h: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let w: Vec<f32> = (0..v * d).map(|_| rng.normal() * 0.5).collect();
    let b: Vec<f32> = (0..v).map(|_| rng.normal() * 0.5).collect();
    let y = [1i64, 4, 0];
    let options = CrossEntropy::new()
        .reduction(Reduction::Sum)
        .label_smoothing(0.1)
        .z_loss(1e-2)
        .softcap(4.0);
    for strategy in STRATEGIES {
        let loss = LinearCrossEntropy::new(options).strategy(strategy);
        let value = |h: &[f32], w: &[f32], b: &[f32]| -> f64 {
            let batch =
                LinearBatch::new(Matrix::new(h, n, d), Matrix::new(w, v, d), &y[..]).bias(b);
            let out = loss
                .compute(&Backend::Cpu, batch, LinearRequest::new())
                .unwrap();
            out.loss.unwrap() as f64
        };
        let (mut dh, mut dw, mut db) = (vec![0f32; n * d], vec![0f32; v * d], vec![0f32; v]);
        let batch = LinearBatch::new(Matrix::new(&h, n, d), Matrix::new(&w, v, d), &y[..]).bias(&b);
        let request = LinearRequest::new()
            .hidden_gradient(GradientBuffer::Write(&mut dh))
            .weight_gradient(GradientBuffer::Write(&mut dw))
            .bias_gradient(GradientBuffer::Write(&mut db));
        loss.compute(&Backend::Cpu, batch, request).unwrap();
        let step = 1e-2f32;
        let check = |what: &str, i: usize, analytic: f32, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * step as f64);
            assert!(
                (numeric - analytic as f64).abs() <= 2e-3 * (1.0 + numeric.abs()),
                "{strategy:?}: {what}[{i}] = {analytic}, central difference {numeric}"
            );
        };
        for i in 0..n * d {
            let (mut p, mut m) = (h.clone(), h.clone());
            p[i] += step;
            m[i] -= step;
            check("dh", i, dh[i], value(&p, &w, &b), value(&m, &w, &b));
        }
        for i in 0..v * d {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += step;
            m[i] -= step;
            check("dW", i, dw[i], value(&h, &p, &b), value(&h, &m, &b));
        }
        for i in 0..v {
            let (mut p, mut m) = (b.clone(), b.clone());
            p[i] += step;
            m[i] -= step;
            check("db", i, db[i], value(&h, &w, &p), value(&h, &w, &m));
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let head = Head::new(15, (4, 3, 6), Dtype::F32);
    let loss = LinearCrossEntropy::new(CrossEntropy::new());
    let compute = |batch: LinearBatch<'_>, request: LinearRequest<'_>| {
        loss.compute(&Backend::Cpu, batch, request).unwrap_err()
    };
    let h = [0f32; 12];
    let w = [0f32; 18];
    // W's hidden size differs from h's.
    let err = compute(
        LinearBatch::new(
            Matrix::new(&h, 4, 3),
            Matrix::new(&w[..12], 6, 2),
            &head.targets[..],
        ),
        LinearRequest::new(),
    );
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // A bias of the wrong length.
    let err = compute(head.batch().bias(&[0f32; 5]), LinearRequest::new());
    assert!(matches!(err, Error::Shape { what: "bias", .. }), "{err}");
    // A target out of range names its row.
    let y = [0i64, 1, 6, 2];
    let err = compute(
        LinearBatch::new(Matrix::new(&h, 4, 3), Matrix::new(&w, 6, 3), &y[..]),
        LinearRequest::new(),
    );
    assert!(
        matches!(
            err,
            Error::TargetOutOfRange {
                row: 2,
                value: 6,
                ..
            }
        ),
        "{err}"
    );
    // Soft targets and probability inputs need N × V inputs.
    let soft = [0f32; 24];
    let err = compute(
        LinearBatch::new(Matrix::new(&h, 4, 3), Matrix::new(&w, 6, 3), &soft[..]),
        LinearRequest::new(),
    );
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    let probabilities =
        LinearCrossEntropy::new(CrossEntropy::new().input(xent::InputKind::PROBABILITIES));
    let err = probabilities
        .compute(&Backend::Cpu, head.batch(), LinearRequest::new())
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    // Gradient buffers and weights of the wrong size or value.
    let mut dw = vec![0f32; 17];
    let err = compute(
        head.batch(),
        LinearRequest::new().weight_gradient(GradientBuffer::Add(&mut dw)),
    );
    assert!(
        matches!(
            err,
            Error::Shape {
                what: "weight gradient",
                ..
            }
        ),
        "{err}"
    );
    let err = compute(
        head.batch().sample_weights(&[1.0, f32::NAN, 1.0, 1.0]),
        LinearRequest::new(),
    );
    assert!(matches!(err, Error::BadWeight { index: 1, .. }), "{err}");
    let err = compute(head.batch(), LinearRequest::new().upstream(&[1.0, 2.0]));
    assert!(
        matches!(
            err,
            Error::Shape {
                what: "upstream",
                ..
            }
        ),
        "{err}"
    );
    let err = compute(
        LinearBatch::new(
            Matrix::new(&h, 4, 3),
            Matrix::new(&w[..0], 0, 3),
            &head.targets[..],
        ),
        LinearRequest::new(),
    );
    assert!(matches!(err, Error::NoClasses), "{err}");
    // h shorter than its shape.
    let err = compute(
        LinearBatch::new(
            Matrix::new(&h[..11], 4, 3),
            Matrix::new(&w, 6, 3),
            &head.targets[..],
        ),
        LinearRequest::new(),
    );
    assert!(matches!(err, Error::Shape { what: "hidden", .. }), "{err}");
}

/// Vocabulary-parallel heads: K shards of `W`'s rows, partials combined (with the focal round
/// when the options need it), each shard's backward; the combined loss, rows and LSE, `dh`
/// summed over shards and `dW`, `db` concatenated, against the reference on the whole head.
/// Each shard also stored [D × width] (`WeightLayout::HiddenMajor`, its `dW` likewise).
#[test]
fn vocab_parallel_shards_of_the_weight() {
    use xent::shard::{FocalPartial, RowPartial, Shard};
    use xent::Targets;
    let head = Head::new(17, (19, 13, 700), Dtype::F32)
        .ignore_every(4)
        .weighted(3);
    let (n, d, v) = (head.rows, head.hidden, head.vocab);
    let Typed::F32(w) = &head.w else {
        unreachable!()
    };
    let Some(Typed::F32(b)) = &head.b else {
        unreachable!()
    };
    let cw = head.class_weights.as_deref().unwrap();
    let sw = head.sample_weights.as_deref().unwrap();
    let h = match &head.h {
        Typed::F32(h) => h,
        _ => unreachable!(),
    };
    // Every shard call on the CPU and, where there is one, the GPU.
    let mut backends = vec![Backend::Cpu];
    backends.extend(common::device::gpu().map(Backend::Gpu));
    for ((name, options), backend) in option_grid()
        .into_iter()
        .flat_map(|o| backends.iter().map(move |b| (o, b)))
    {
        let upstream: Vec<f32> = match options.reduction {
            Reduction::None => (0..n).map(|r| 1.0 + r as f32 * 0.05).collect(),
            _ => vec![1.25],
        };
        let reference = head.reference(&options, Some(&upstream));
        let loss = LinearCrossEntropy::new(options);
        for (k, hidden_major) in [1usize, 2, 3, 8]
            .into_iter()
            .flat_map(|k| [(k, false), (k, true)])
            .filter(|&(k, major)| !major || k == 1 || k == 3)
        {
            let label = format!("{name}, {k} shards on {backend:?}, [D × width] {hidden_major}");
            let shards = Shard::split(v, k);
            let columns: Vec<Vec<f32>> = shards
                .iter()
                .map(|s| {
                    let (c0, width) = (s.start, s.width);
                    (0..d * width)
                        .map(|i| w[(c0 + i % width) * d + i / width])
                        .collect()
                })
                .collect();
            let batch = |s: Shard| {
                let range = s.start..s.start + s.width;
                let i = shards.iter().position(|x| *x == s).unwrap();
                let (weight, layout) = match hidden_major {
                    true => (
                        Matrix::new(&columns[i], d, s.width),
                        WeightLayout::HiddenMajor,
                    ),
                    false => (
                        Matrix::new(&w[s.start * d..(s.start + s.width) * d], s.width, d),
                        WeightLayout::VocabMajor,
                    ),
                };
                LinearBatch::new(Matrix::new(h, n, d), weight, &head.targets[..])
                    .weight_layout(layout)
                    .bias(&b[range.clone()])
                    .class_weights(&cw[range])
            };
            let partials = shards
                .iter()
                .map(|&s| loss.shard_partials(backend, s, batch(s)))
                .collect::<Result<Vec<Vec<RowPartial>>, _>>()
                .unwrap();
            let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
            let targets = Targets::I64(&head.targets);
            let mut combined = options
                .combine_weighted(v, &views, targets, Some(sw), Some(&upstream))
                .unwrap();
            if combined.needs_focal_round() {
                let sums = shards
                    .iter()
                    .map(|&s| loss.shard_focal(backend, s, batch(s), &combined))
                    .collect::<Result<Vec<Vec<FocalPartial>>, _>>()
                    .unwrap();
                let views: Vec<&[FocalPartial]> = sums.iter().map(|p| &p[..]).collect();
                options.combine_focal(&mut combined, &views).unwrap();
            }
            let mut g = Grads::filled(&head, 0.0);
            for &s in &shards {
                let mut dw = vec![0f32; s.width * d];
                let request = LinearRequest::new()
                    .hidden_gradient(GradientBuffer::Add(&mut g.dh))
                    .weight_gradient(GradientBuffer::Write(&mut dw))
                    .bias_gradient(GradientBuffer::Write(&mut g.db[s.start..s.start + s.width]));
                loss.shard_backward(backend, s, batch(s), &combined, request)
                    .unwrap();
                // The shard's rows of dW, from [D × width] where it came so.
                let rows = &mut g.dw[s.start * d..(s.start + s.width) * d];
                for (i, r) in rows.iter_mut().enumerate() {
                    *r = match hidden_major {
                        true => dw[(i % d) * s.width + i / d],
                        false => dw[i],
                    };
                }
            }
            check(&label, &head, &reference, &combined.output, &g, 0.0);
        }
    }
    // A shard call refuses what belongs to `combine`, shapes that disagree with the shard, and
    // a backward while the focal round is pending.
    let s = Shard::split(v, 2)[1];
    let rows = || Matrix::new(&w[s.start * d..], s.width, d);
    let batch = || LinearBatch::new(Matrix::new(h, n, d), rows(), &head.targets[..]);
    let err = loss_of(CrossEntropy::new())
        .shard_partials(&Backend::Cpu, s, batch().sample_weights(sw))
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    let wide = Shard {
        width: s.width + 1,
        ..s
    };
    let err = loss_of(CrossEntropy::new())
        .shard_partials(&Backend::Cpu, wide, batch())
        .unwrap_err();
    assert!(matches!(err, Error::Shape { what: "shard", .. }), "{err}");
    let narrow = Shard {
        width: s.width - 1,
        ..s
    };
    let err = loss_of(CrossEntropy::new())
        .shard_partials(&Backend::Cpu, narrow, batch())
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let focal = CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1);
    let partials = loss_of(focal)
        .shard_partials(&Backend::Cpu, s, batch())
        .unwrap();
    let other = loss_of(focal)
        .shard_partials(&Backend::Cpu, Shard::split(v, 2)[0], {
            let s0 = Shard::split(v, 2)[0];
            LinearBatch::new(
                Matrix::new(h, n, d),
                Matrix::new(&w[..s0.width * d], s0.width, d),
                &head.targets[..],
            )
        })
        .unwrap();
    let combined = focal
        .combine(v, &[&other, &partials], Targets::I64(&head.targets), None)
        .unwrap();
    assert!(combined.needs_focal_round());
    let mut dw = vec![0f32; s.width * d];
    let request = LinearRequest::new().weight_gradient(GradientBuffer::Write(&mut dw));
    let err = loss_of(focal)
        .shard_backward(&Backend::Cpu, s, batch(), &combined, request)
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

fn loss_of(options: CrossEntropy) -> LinearCrossEntropy {
    LinearCrossEntropy::new(options)
}

/// `options` as a linear head with `strategy` and a budget of `rows` rows of `head`'s logits
/// (0: the default budget).
fn head_loss(
    head: &Head,
    options: &CrossEntropy,
    (strategy, rows): (Strategy, usize),
) -> LinearCrossEntropy {
    let loss = LinearCrossEntropy::new(*options).strategy(strategy);
    match rows {
        0 => loss,
        rows => loss.scratch_bytes(rows * head.vocab * 4),
    }
}

/// The GPU's forward and backward (loss, per-row losses, LSE, metrics, dh, dW, db; written and
/// added) against the reference for every option, in every dtype, in pieces and chunks.
#[test]
fn gpu_against_the_reference() {
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let backend = Backend::Gpu(gpu);
    // 1100 columns: two splits of 1024 (the second partial), 17 tiles of 64; 70 rows: two row
    // tiles, the second partial; D = 19: the last slab of 8 partial.
    // bf16 at D = 19 is widened to f32 on the host; bf16 at D = 20 is read as such (f16 below).
    for (dtype, hidden) in [(Dtype::F32, 19), (Dtype::Bf16, 19), (Dtype::Bf16, 20)] {
        let head = Head::new(19, (70, hidden, 1100), dtype)
            .ignore_every(5)
            .weighted(4);
        for (name, options) in option_grid() {
            let upstream = recorded_upstream(&head, &options);
            let reference = head.reference(&options, Some(&upstream));
            // The chunked strategy in groups of 64 rows (the ignored rows left out), then the
            // fused one on every row.
            for (every, add, strategy) in [
                (false, None, (Strategy::Chunked, 64)),
                (true, Some(0.25), FUSED),
            ] {
                let loss = head_loss(&head, &options, strategy);
                let out = try_run(&backend, &head, &loss, (Some(&upstream), add, every));
                let label = format!(
                    "gpu {dtype:?} D {hidden} {name}, lse and metrics {every}, {:?}",
                    strategy.0
                );
                match out {
                    Err(e) => panic!("{label}: {e}"),
                    Ok((out, g)) => {
                        check(&label, &head, &reference, &out, &g, add.unwrap_or(0.0));
                        if let Some(m) = &out.metrics {
                            let agree = m
                                .argmax
                                .iter()
                                .zip(&reference.logits_reference.argmax)
                                .filter(|(a, b)| a == b)
                                .count();
                            assert!(agree + 1 >= head.rows, "{label}: argmax {agree}");
                        }
                    }
                }
            }
        }
    }
    // Bindings of 32 KiB: splits of 128 columns (64 rows of 9 splits' partials fit), W in
    // pieces of 3 splits, rows in chunks of 64: 300 rows × 1100 classes in 5 × 3 dispatches.
    let small = std::sync::Arc::new(
        xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
            max_binding_size: Some(32 << 10),
            ..Default::default()
        })
        .expect("a device with small bindings"),
    );
    for (dtype, hidden) in [(Dtype::F32, 19), (Dtype::F16, 20)] {
        let head = Head::new(21, (300, hidden, 1100), dtype)
            .ignore_every(7)
            .weighted(5);
        let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
        let reference = head.reference(&options, None);
        let request = LinearRequest::new().row_losses().lse().metrics();
        let out = LinearCrossEntropy::new(options)
            .compute(&Backend::Gpu(small.clone()), head.batch(), request)
            .expect("the GPU's linear forward in pieces");
        check_forward(
            &format!("gpu {dtype:?}, 32 KiB bindings"),
            &head,
            &reference,
            &out,
        );
    }
    // A hidden size whose 64 rows exceed a binding is refused, not read out of bounds.
    let wide = Head::new(22, (4, 200, 10), Dtype::F32);
    let err = LinearCrossEntropy::new(CrossEntropy::new())
        .compute(
            &Backend::Gpu(small.clone()),
            wide.batch(),
            LinearRequest::new(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");

    // The backward in vocabulary chunks: 64 KiB bindings hold G of 192 columns of 70 rows, so
    // 1100 classes take 6 chunks (dh added chunk after chunk); f16 h and W read as such, four
    // values at a time (D = 20), bf16 a value at a time (D = 22: not a multiple of 4).
    let chunked = std::sync::Arc::new(
        xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
            max_binding_size: Some(64 << 10),
            ..Default::default()
        })
        .expect("a device with small bindings"),
    );
    for (dtype, hidden) in [(Dtype::F32, 20), (Dtype::F16, 20), (Dtype::Bf16, 22)] {
        let head = Head::new(23, (70, hidden, 1100), dtype)
            .ignore_every(6)
            .weighted(6);
        let options = CrossEntropy::new()
            .label_smoothing(0.05)
            .z_loss(1e-3)
            .softcap(8.0);
        let reference = head.reference(&options, None);
        let loss = LinearCrossEntropy::new(options);
        let backend = Backend::Gpu(chunked.clone());
        let (out, g) = try_run(&backend, &head, &loss, (None, None, false))
            .expect("the GPU's backward in chunks");
        check(
            &format!("gpu {dtype:?} D {hidden}, backward in 6 chunks"),
            &head,
            &reference,
            &out,
            &g,
            0.0,
        );
        // Bits are the same run to run.
        let (again, g_again) = try_run(&backend, &head, &loss, (None, None, false)).unwrap();
        assert_eq!(out, again);
        assert_eq!(g, g_again);
    }
    // The chunked strategy past 4096 columns: groups of 64 rows (budget) and, in each, the
    // stored logits' vocabulary chunks of 4096 and 904 columns; the same bits run to run, and
    // an explicit `Chunked` that 64 rows of logits cannot fit is refused (`Auto` falls back).
    let head = Head::new(26, (150, 20, 5000), Dtype::F32)
        .ignore_every(4)
        .weighted(9);
    for options in [
        CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3),
        CrossEntropy::new()
            .reduction(Reduction::Sum)
            .focal_gamma(2.0)
            .label_smoothing(0.05),
    ] {
        let reference = head.reference(&options, None);
        let loss = head_loss(&head, &options, (Strategy::Chunked, 64));
        let (out, g) = try_run(&backend, &head, &loss, (None, Some(0.5), false))
            .expect("the GPU's chunked strategy");
        check(
            "gpu, chunked in 2 vocabulary chunks",
            &head,
            &reference,
            &out,
            &g,
            0.5,
        );
        let (again, g_again) = try_run(&backend, &head, &loss, (None, Some(0.5), false)).unwrap();
        assert_eq!(out, again);
        assert_eq!(g, g_again);
    }
    let options = CrossEntropy::new();
    let narrow = Backend::Gpu(std::sync::Arc::new(
        xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
            max_binding_size: Some(256 << 10),
            ..Default::default()
        })
        .expect("a device with small bindings"),
    ));
    for (strategy, fits) in [(Strategy::Chunked, false), (Strategy::Auto, true)] {
        let loss = head_loss(&head, &options, (strategy, 0));
        let result = try_run(&narrow, &head, &loss, (None, None, false));
        match (result, fits) {
            (Err(Error::Unsupported(m)), false) => assert!(m.contains("Fused"), "{m}"),
            (Ok((out, g)), true) => {
                let reference = head.reference(&options, None);
                check(
                    "gpu, Auto on 256 KiB bindings",
                    &head,
                    &reference,
                    &out,
                    &g,
                    0.0,
                );
            }
            (other, _) => panic!("{strategy:?}: {:?}", other.map(|o| o.0.loss)),
        }
    }

    // Every row ignored after calls that filled the pooled buffers: zero gradients, not the
    // previous call's bytes.
    let ignored = Head::new(25, (6, 5, 40), Dtype::F32).ignore_every(1);
    let (out, g) = try_run(
        &backend,
        &ignored,
        &LinearCrossEntropy::new(CrossEntropy::new().reduction(Reduction::Sum)),
        (None, None, false),
    )
    .expect("an all-ignored batch");
    assert_eq!(out.loss, Some(0.0));
    assert_eq!(g, Grads::filled(&ignored, 0.0), "gpu: zero gradients");

    // More rows than a binding holds: 32 KiB bindings take 300 rows in 3 groups of 128 inside
    // each of 18 chunks of 64 columns; dW and db add over the groups.
    let head = Head::new(24, (300, 19, 1100), Dtype::F32)
        .ignore_every(5)
        .weighted(7);
    let options = CrossEntropy::new().reduction(Reduction::Sum).z_loss(1e-3);
    let reference = head.reference(&options, None);
    let (out, g) = try_run(
        &Backend::Gpu(small.clone()),
        &head,
        &LinearCrossEntropy::new(options),
        (None, Some(-0.5), false),
    )
    .expect("the GPU's backward in row groups");
    check(
        "gpu, backward in row groups",
        &head,
        &reference,
        &out,
        &g,
        -0.5,
    );
}

impl Typed {
    /// The values of a `rows × cols` matrix stored as its transpose, `cols × rows`.
    fn transposed(&self, rows: usize, cols: usize) -> Typed {
        fn flip<T: Copy>(d: &[T], rows: usize, cols: usize) -> Vec<T> {
            (0..cols * rows)
                .map(|i| d[(i % rows) * cols + i / rows])
                .collect()
        }
        match self {
            Typed::F32(d) => Typed::F32(flip(d, rows, cols)),
            Typed::F16(d) => Typed::F16(flip(d, rows, cols)),
            Typed::Bf16(d) => Typed::Bf16(flip(d, rows, cols)),
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            Typed::F32(d) => bytemuck::cast_slice(d),
            Typed::F16(d) => bytemuck::cast_slice(d),
            Typed::Bf16(d) => bytemuck::cast_slice(d),
        }
    }
}

/// What a recorded call is asked for.
#[derive(Clone, Copy, Default)]
struct Want<'u> {
    i32_targets: bool,
    /// Add to gradients holding this, or write (`None`).
    prefill: Option<f32>,
    /// Which of dh, dW, db.
    gradients: [bool; 3],
    upstream: Option<&'u [f32]>,
    /// Inputs and outputs in one buffer.
    shared: bool,
    /// `W` and `dW` stored [D × V] (`WeightLayout::HiddenMajor`).
    hidden_major: bool,
    /// The strategy, and a scratch budget of this many rows of logits (`Auto`, 64 MiB: 0).
    strategy: (Strategy, usize),
    /// No per-row records (tiles of ignored rows then skip their products).
    no_rows: bool,
}

/// What a recorded call wrote (gradients not asked for are empty).
struct Recorded {
    loss: f32,
    records: Vec<xent::gpu::GpuRow>,
    grads: Grads,
    flag: Option<usize>,
}

/// Uploads `head` (inputs at offsets inside one buffer, outputs inside another), records
/// one call on `gpu`, submits it and reads everything back.
fn record_head(
    gpu: &xent::gpu::Gpu,
    head: &Head,
    options: &CrossEntropy,
    want: Want<'_>,
) -> xent::Result<Recorded> {
    use xent::gpu::{
        target_error_row, DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch,
        DeviceLinearOutputs, DeviceMatrix,
    };
    let (n, d, v) = (head.rows, head.hidden, head.vocab);
    let dtype = match head.h {
        Typed::F32(_) => Dtype::F32,
        Typed::F16(_) => Dtype::F16,
        Typed::Bf16(_) => Dtype::Bf16,
    };
    let mut inputs = Packed::new();
    let h = inputs.push(head.h.bytes());
    let w_t = want.hidden_major.then(|| head.w.transposed(v, d));
    let w = inputs.push(w_t.as_ref().unwrap_or(&head.w).bytes());
    let bias: Option<Vec<f32>> = head
        .batch()
        .bias
        .map(|b| (0..v).map(|c| b.get(0, c)).collect());
    let b = bias.map(|b| inputs.push(bytemuck::cast_slice(&b)));
    let targets_i32: Vec<i32> = head.targets.iter().map(|&t| t as i32).collect();
    let y = match want.i32_targets {
        true => inputs.push(bytemuck::cast_slice(&targets_i32)),
        false => inputs.push(bytemuck::cast_slice(&head.targets)),
    };
    let cw = head
        .class_weights
        .as_ref()
        .map(|c| inputs.push(bytemuck::cast_slice(c)));
    let sw = head
        .sample_weights
        .as_ref()
        .map(|s| inputs.push(bytemuck::cast_slice(s)));
    let up = want.upstream.map(|u| inputs.push(bytemuck::cast_slice(u)));
    // Outputs in an arena of their own, or after the inputs in the same one (`shared`: the
    // writable variants).
    let mut arenas = vec![inputs];
    if !want.shared {
        arenas.push(Packed::new());
    }
    let last = arenas.len() - 1;
    let outputs = &mut arenas[last];
    let fill = want.prefill.unwrap_or(f32::NAN);
    let loss = outputs.push(&[0u8; 4]);
    let rows = outputs.push(&vec![0u8; n * 32]);
    let [dh, dw, db] = [(0, n * d), (1, v * d), (2, v)].map(|(i, len)| {
        want.gradients[i].then(|| outputs.push(bytemuck::cast_slice(&vec![fill; len])))
    });
    let buffers: Vec<wgpu::Buffer> = arenas.iter().map(|a| a.upload(gpu)).collect();
    let (inputs, outputs) = (&arenas[0], &arenas[last]);
    let (input, output) = (&buffers[0], &buffers[last]);
    let flag = common::device::buffer(gpu, &[0u8; 4]);
    let input_at = |i: usize| input.slice(inputs.ranges[i].clone());
    let output_at = |i: usize| output.slice(outputs.ranges[i].clone());
    let mut batch = DeviceLinearBatch::new(
        DeviceMatrix::new(input_at(h), dtype, n, d),
        match want.hidden_major {
            true => DeviceMatrix::new(input_at(w), dtype, d, v),
            false => DeviceMatrix::new(input_at(w), dtype, v, d),
        },
        match want.i32_targets {
            true => DeviceIndexTargets::I32(input_at(y)),
            false => DeviceIndexTargets::I64(input_at(y)),
        },
    );
    batch.bias = b.map(input_at);
    batch.class_weights = cw.map(input_at);
    batch.sample_weights = sw.map(input_at);
    if want.hidden_major {
        batch.weight_layout = WeightLayout::HiddenMajor;
    }
    let gradient = |i: Option<usize>| {
        i.map(|i| match want.prefill {
            Some(_) => DeviceGradientSlice::Add(output_at(i)),
            None => DeviceGradientSlice::Write(output_at(i)),
        })
    };
    let mut out = DeviceLinearOutputs::new(output_at(loss));
    out.rows = (!want.no_rows).then(|| output_at(rows));
    out.hidden_gradient = gradient(dh);
    out.weight_gradient = gradient(dw);
    out.bias_gradient = gradient(db);
    out.target_error = Some(flag.slice(..));
    match (options.reduction, want.upstream) {
        (Reduction::None, Some(_)) => out.upstream = up.map(input_at),
        (_, Some(u)) => out.upstream_scalar = u[0],
        _ => {}
    }
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let head_loss = head_loss(head, options, want.strategy);
    gpu.record_linear_cross_entropy(&mut encoder, &head_loss, &batch, &out)?;
    gpu.queue().submit([encoder.finish()]);
    let all = common::device::read(gpu, output);
    let at = |i: Option<usize>| -> Vec<f32> {
        i.map_or(Vec::new(), |i| {
            let r = &outputs.ranges[i];
            all[(r.start / 4) as usize..(r.end / 4) as usize].to_vec()
        })
    };
    let flag = common::device::read(gpu, &flag)[0].to_bits();
    Ok(Recorded {
        loss: at(Some(loss))[0],
        records: match want.no_rows {
            true => Vec::new(),
            false => bytemuck::pod_collect_to_vec(bytemuck::cast_slice::<f32, u8>(&at(Some(rows)))),
        },
        grads: Grads {
            dh: at(dh),
            // Back to [V × D], as the reference gives it.
            dw: match (want.hidden_major, at(dw)) {
                (true, dw) if !dw.is_empty() => match Typed::F32(dw).transposed(d, v) {
                    Typed::F32(dw) => dw,
                    _ => unreachable!(),
                },
                (_, dw) => dw,
            },
            db: at(db),
        },
        flag: target_error_row(flag),
    })
}

/// The forward of a recorded call (loss, per-row losses, LSE, validity) against the reference.
fn check_recorded(
    label: &str,
    head: &Head,
    reference: &LinearReference,
    options: &CrossEntropy,
    r: &Recorded,
) {
    let result = Output {
        loss: (options.reduction != Reduction::None).then_some(r.loss),
        row_losses: Some(r.records.iter().map(|r| r.loss).collect()),
        lse: None,
        metrics: None,
    };
    check_forward(label, head, reference, &result);
    let lse: Vec<f32> = r.records.iter().map(|r| r.lse).collect();
    let s = head.scales();
    let logits = &reference.logits_reference;
    assert_each(&format!("{label}: lse"), &lse, &logits.lse, |i| {
        1e-5 * logits.lse[i].abs().max(1.0) + 4e-6 * s[i]
    });
    let valid: Vec<bool> = r.records.iter().map(xent::gpu::GpuRow::valid).collect();
    assert_eq!(valid, logits.valid, "{label}: valid");
    assert_eq!(r.flag, None, "{label}: no target flagged");
}

/// The upstream the recorded tests pass: per row for `none`, a scalar otherwise.
fn recorded_upstream(head: &Head, options: &CrossEntropy) -> Vec<f32> {
    match options.reduction {
        Reduction::None => (0..head.rows).map(|r| 0.5 + r as f32 * 0.1).collect(),
        _ => vec![0.75],
    }
}

/// A recorded call's forward and its gradients (added to `prefill`, or written) against the
/// reference.
fn check_recorded_call(
    label: &str,
    head: &Head,
    reference: &LinearReference,
    options: &CrossEntropy,
    recorded: &Recorded,
    prefill: Option<f32>,
) {
    check_recorded(label, head, reference, options, recorded);
    let prefill = prefill.unwrap_or(0.0);
    check_gradients(label, head, reference, &recorded.grads, prefill);
}

/// The recorded call (`Gpu::record_linear_cross_entropy`) on device buffers: inputs at
/// offsets inside one buffer, outputs at offsets inside another, i32 and i64 targets, written
/// and added gradients, every option, all three dtypes; against the reference.
#[test]
fn gpu_recorded_on_device_buffers() {
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let cases = [
        (Dtype::F32, 19, false),
        (Dtype::F16, 20, true),
        (Dtype::Bf16, 20, false),
    ];
    for (dtype, hidden, i32_targets) in cases {
        let head = Head::new(31, (70, hidden, 1100), dtype)
            .ignore_every(5)
            .weighted(7);
        let grid = match dtype {
            Dtype::F32 => option_grid(),
            _ => option_grid().into_iter().step_by(4).collect(),
        };
        for (name, options) in grid {
            let upstream = recorded_upstream(&head, &options);
            let reference = head.reference(&options, Some(&upstream));
            // Written by the fused strategy, added by the chunked one in groups of 64 rows.
            for (prefill, strategy) in [(None, FUSED), (Some(0.25f32), (Strategy::Chunked, 64))] {
                let label = format!(
                    "recorded {dtype:?} D {hidden} {name}, add {prefill:?}, {:?}",
                    strategy.0
                );
                let want = Want {
                    i32_targets,
                    prefill,
                    gradients: [true; 3],
                    upstream: Some(&upstream),
                    // Adding into slices beside the inputs, in one buffer.
                    shared: prefill.is_some(),
                    hidden_major: false,
                    strategy,
                    no_rows: false,
                };
                let recorded = record_head(&gpu, &head, &options, want)
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                check_recorded_call(&label, &head, &reference, &options, &recorded, prefill);
            }
        }
    }
}

/// A head weight stored [D × V] (burn's `Linear`, flax's `Dense`), read in place and its
/// gradient written in that layout: f32 with V a multiple of 4 (16-byte loads along the
/// vocabulary) and not (V or D not a multiple of 4), f16 and bf16, written and added
/// gradients, small bindings (row chunks, backward vocabulary chunks and row groups over the
/// whole-bound weight); against the
/// reference, and the same bits as the [V × D] call (the same products in the same order).
#[test]
fn gpu_recorded_hidden_major_weight() {
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let small = xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
        max_binding_size: Some(128 << 10),
        ..Default::default()
    })
    .expect("a device with small bindings");
    let cases = [
        (Dtype::F32, (70, 20, 1100), &*gpu),
        (Dtype::F32, (70, 20, 1101), &*gpu),
        (Dtype::F32, (70, 19, 1101), &*gpu),
        (Dtype::F16, (70, 20, 1100), &*gpu),
        (Dtype::Bf16, (70, 20, 1101), &*gpu),
        (Dtype::F32, (600, 20, 1100), &small),
    ];
    for (dtype, shape, gpu) in cases {
        let head = Head::new(51, shape, dtype).ignore_every(5).weighted(3);
        for (name, options) in some_options() {
            let upstream = recorded_upstream(&head, &options);
            let reference = head.reference(&options, Some(&upstream));
            for prefill in [None, Some(0.25f32)] {
                let label = format!("[D × V] {dtype:?} {shape:?} {name}, add {prefill:?}");
                let want = Want {
                    prefill,
                    gradients: [true; 3],
                    upstream: Some(&upstream),
                    shared: prefill.is_some(),
                    hidden_major: true,
                    ..Want::default()
                };
                let recorded = record_head(gpu, &head, &options, want)
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                check_recorded_call(&label, &head, &reference, &options, &recorded, prefill);
                let want = Want {
                    hidden_major: false,
                    ..want
                };
                let rows_major = record_head(gpu, &head, &options, want).unwrap();
                assert_eq!(
                    recorded.loss.to_bits(),
                    rows_major.loss.to_bits(),
                    "{label}"
                );
                for (a, b) in [
                    (&recorded.grads.dh, &rows_major.grads.dh),
                    (&recorded.grads.dw, &rows_major.grads.dw),
                    (&recorded.grads.db, &rows_major.grads.db),
                ] {
                    let bits = |g: &[f32]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(a), bits(b), "{label}: the same bits as [V × D]");
                }
            }
        }
    }

    // A [D × V] weight larger than one binding is refused (a [V × D] one is cut into pieces).
    let tiny = xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
        max_binding_size: Some(16 << 10),
        ..Default::default()
    })
    .expect("a device with tiny bindings");
    let head = Head::new(52, (8, 16, 512), Dtype::F32);
    let want = Want {
        hidden_major: true,
        ..Want::default()
    };
    match record_head(&tiny, &head, &CrossEntropy::new(), want) {
        Err(Error::Unsupported(message)) => assert!(message.contains("[16 × 512]"), "{message}"),
        other => panic!("expected Unsupported, got {:?}", other.map(|r| r.loss)),
    }
    let want = Want {
        hidden_major: false,
        ..want
    };
    record_head(&tiny, &head, &CrossEntropy::new(), want).expect("[V × D] in pieces");
    // An f16 weight that fits a binding whose f32 gradient does not.
    let head = Head::new(53, (8, 16, 400), Dtype::F16);
    let want = Want {
        hidden_major: true,
        gradients: [false, true, false],
        ..Want::default()
    };
    match record_head(&tiny, &head, &CrossEntropy::new(), want) {
        Err(Error::Unsupported(message)) => assert!(message.contains("gradient"), "{message}"),
        other => panic!("expected Unsupported, got {:?}", other.map(|r| r.loss)),
    }
    let loss_only = Want {
        gradients: [false; 3],
        ..want
    };
    record_head(&tiny, &head, &CrossEntropy::new(), loss_only).expect("the f16 weight alone");
}

/// The plain product (`Gpu::record_linear_product`, the bench's ceiling) against the
/// reference's f64 logits: f32 read as scalars (D = 19) and as vec4s, bf16 and f16, with and
/// without a bias, `W` in both layouts; a slice too small or misaligned is refused.
#[test]
fn gpu_plain_product_against_the_reference() {
    use xent::gpu::{DeviceIndexTargets, DeviceLinearBatch, DeviceMatrix};
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let cases = [
        (Dtype::F32, 19, true, false),
        (Dtype::F32, 20, false, false),
        (Dtype::Bf16, 20, true, false),
        (Dtype::F16, 20, true, true),
        (Dtype::F32, 19, true, true),
    ];
    for (dtype, hidden, bias, hidden_major) in cases {
        let mut head = Head::new(61, (70, hidden, 1100), dtype);
        if !bias {
            head = head.no_bias();
        }
        let (n, d, v) = (head.rows, head.hidden, head.vocab);
        let reference = head.reference(&CrossEntropy::new(), None);
        let scales = head.scales();
        let w = match hidden_major {
            true => head.w.transposed(v, d),
            false => head.w.clone(),
        };
        let (h_buffer, w_buffer) = (
            common::device::buffer(&gpu, head.h.bytes()),
            common::device::buffer(&gpu, w.bytes()),
        );
        let b: Option<Vec<f32>> = head
            .batch()
            .bias
            .map(|b| (0..v).map(|c| b.get(0, c)).collect());
        let b_buffer = b.map(|b| common::device::buffer(&gpu, bytemuck::cast_slice(&b)));
        let logits = common::device::buffer(&gpu, &vec![0u8; n * v * 4]);
        let (rows, cols) = if hidden_major { (d, v) } else { (v, d) };
        let mut batch = DeviceLinearBatch::new(
            DeviceMatrix::new(h_buffer.slice(..), dtype, n, d),
            DeviceMatrix::new(w_buffer.slice(..), dtype, rows, cols),
            DeviceIndexTargets::I64(h_buffer.slice(..)),
        );
        batch.bias = b_buffer.as_ref().map(|b| b.slice(..));
        if hidden_major {
            batch.weight_layout = WeightLayout::HiddenMajor;
        }
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        gpu.record_linear_product(&mut encoder, &batch, logits.slice(..))
            .expect("the plain product");
        gpu.queue().submit([encoder.finish()]);
        let x = common::device::read(&gpu, &logits);
        let label = format!("product {dtype:?} D {d}, bias {bias}, [D × V] {hidden_major}");
        assert_each(&label, &x, &reference.logits, |i| {
            4e-6 * scales[i / v] + 1e-7
        });

        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        let short = logits.slice(..(n * v * 4 - 4) as u64);
        let err = gpu
            .record_linear_product(&mut encoder, &batch, short)
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{label}: {err}");
        let misaligned = logits.slice(4..);
        let err = gpu
            .record_linear_product(&mut encoder, &batch, misaligned)
            .unwrap_err();
        assert!(err.to_string().contains("alignment"), "{label}: {err}");
    }

    // The logits beside h in one buffer (the writable variant), and over it (refused).
    let head = Head::new(62, (70, 20, 300), Dtype::F32).no_bias();
    let (n, d, v) = (head.rows, head.hidden, head.vocab);
    let reference = head.reference(&CrossEntropy::new(), None);
    let scales = head.scales();
    let at = (n * d * 4).next_multiple_of(256);
    let mut bytes = head.h.bytes().to_vec();
    bytes.resize(at + n * v * 4, 0);
    let shared = common::device::buffer(&gpu, &bytes);
    let w_buffer = common::device::buffer(&gpu, head.w.bytes());
    let batch = DeviceLinearBatch::new(
        DeviceMatrix::new(shared.slice(..(n * d * 4) as u64), Dtype::F32, n, d),
        DeviceMatrix::new(w_buffer.slice(..), Dtype::F32, v, d),
        DeviceIndexTargets::I64(w_buffer.slice(..)),
    );
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_linear_product(&mut encoder, &batch, shared.slice(at as u64..))
        .expect("logits beside h");
    gpu.queue().submit([encoder.finish()]);
    let x = common::device::read(&gpu, &shared)[at / 4..].to_vec();
    assert_each("product beside h", &x, &reference.logits, |i| {
        4e-6 * scales[i / v] + 1e-7
    });
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let err = gpu
        .record_linear_product(&mut encoder, &batch, shared.slice(..))
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
}

/// A recorded call without per-row records compacts its rows on the device, the rows that
/// count first, and takes no product for ignored ones (here every fifth row, and spans: rows
/// 0 .. 64 and 128 .. 150 of the first 150, one of them out of range and flagged): against
/// the reference, and the same bits as the call that asks for the records (every product
/// taken), in both strategies, written and added, the weight in both layouts; on 512 KiB
/// bindings too (600 rows: two forward chunks, each window compacted).
#[test]
fn gpu_recorded_compacts_ignored_rows() {
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let small = xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
        max_binding_size: Some(512 << 10),
        ..Default::default()
    })
    .expect("a device with small bindings");
    for (gpu, rows) in [(&*gpu, 150), (&small, 600)] {
        compacts_ignored_rows(gpu, rows);
    }
}

fn compacts_ignored_rows(gpu: &xent::gpu::Gpu, rows: usize) {
    let mut head = Head::new(71, (rows, 20, 1100), Dtype::F32)
        .ignore_every(5)
        .weighted(10);
    for r in (0..64).chain(128..150) {
        head.targets[r] = -100;
    }
    head.targets[140] = 1100 + 7;
    // The reference sees the flagged row as ignored, as the call treats it.
    let mut reference_head = head.clone();
    reference_head.targets[140] = -100;
    for (name, options) in some_options() {
        let upstream = recorded_upstream(&head, &options);
        let reference = reference_head.reference(&options, Some(&upstream));
        for (prefill, strategy, hidden_major) in [
            (None, FUSED, false),
            (Some(0.25f32), (Strategy::Chunked, 64), false),
            (None, (Strategy::Chunked, 0), true),
        ] {
            let label = format!(
                "compacted {rows} rows, {name}, add {prefill:?}, {:?}, [D × V] {hidden_major}",
                strategy.0
            );
            let want = Want {
                prefill,
                gradients: [true; 3],
                upstream: Some(&upstream),
                strategy,
                hidden_major,
                no_rows: true,
                ..Want::default()
            };
            let skipped =
                record_head(gpu, &head, &options, want).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                skipped.flag,
                Some(140),
                "{label}: the out-of-range row flagged"
            );
            if let Some(expected) = reference.logits_reference.loss {
                let tol = 1e-5 * expected.abs().max(1.0);
                assert!(
                    (skipped.loss as f64 - expected).abs() <= tol,
                    "{label}: loss {} vs {expected}",
                    skipped.loss
                );
            }
            check_gradients(
                &label,
                &head,
                &reference,
                &skipped.grads,
                prefill.unwrap_or(0.0),
            );
            let every = Want {
                no_rows: false,
                ..want
            };
            let computed = record_head(gpu, &head, &options, every).unwrap();
            let bits = |g: &[f32]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                skipped.loss.to_bits(),
                computed.loss.to_bits(),
                "{label}: loss"
            );
            for (a, b) in [
                (&skipped.grads.dh, &computed.grads.dh),
                (&skipped.grads.dw, &computed.grads.dw),
                (&skipped.grads.db, &computed.grads.db),
            ] {
                assert_eq!(bits(a), bits(b), "{label}: the same bits as every product");
            }
        }
    }
}

/// Recorded calls at the edges: one gradient at a time (db alone skips dW's product), no
/// rows, small bindings (row chunks, pieces of W, vocabulary chunks), an out-of-range target
/// flagged on the device (its row counted as ignored, the device usable after), and the typed
/// errors of bad slices.
#[test]
fn gpu_recorded_edges_and_errors() {
    use xent::gpu::{
        DeviceGradientSlice, DeviceIndexTargets, DeviceLinearBatch, DeviceLinearOutputs,
        DeviceMatrix,
    };
    let Some(gpu) = common::device::gpu() else {
        return;
    };
    let head = Head::new(41, (70, 20, 300), Dtype::F32)
        .ignore_every(4)
        .weighted(8);
    let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
    let reference = head.reference(&options, None);
    for (i, name) in ["dh", "dW", "db"].iter().enumerate() {
        let mut gradients = [false; 3];
        gradients[i] = true;
        let want = Want {
            gradients,
            ..Want::default()
        };
        let r = record_head(&gpu, &head, &options, want).unwrap();
        let label = format!("recorded, {name} alone");
        check_recorded(&label, &head, &reference, &options, &r);
        // The others zero on both sides: the one check covers the asked gradient.
        let mut full = Grads::filled(&head, 0.0);
        match i {
            0 => full.dh = r.grads.dh,
            1 => full.dw = r.grads.dw,
            _ => full.db = r.grads.db,
        }
        check_gradients(&label, &head, &reference_masked(&reference, i), &full, 0.0);
    }

    // No rows: dW and db are written as zeros, the loss is the empty mean's NaN; without
    // records too (compacting, with no row order written).
    let empty = Head::new(42, (0, 8, 50), Dtype::F32);
    for no_rows in [false, true] {
        let want = Want {
            gradients: [true; 3],
            no_rows,
            ..Want::default()
        };
        let r = record_head(&gpu, &empty, &CrossEntropy::new(), want).unwrap();
        assert!(r.loss.is_nan(), "the mean of no rows");
        assert_eq!(r.grads.dw, vec![0.0; 50 * 8]);
        assert_eq!(r.grads.db, vec![0.0; 50]);
    }

    // 64 KiB bindings: the forward in row chunks and pieces of W, the backward in chunks.
    let small = xent::gpu::Gpu::with_options(xent::gpu::GpuOptions {
        max_binding_size: Some(64 << 10),
        ..Default::default()
    })
    .expect("a device with small bindings");
    let wide = Head::new(43, (300, 20, 1100), Dtype::F32)
        .ignore_every(7)
        .weighted(9);
    let reference = wide.reference(&options, None);
    let want = Want {
        gradients: [true; 3],
        prefill: Some(-1.0),
        ..Want::default()
    };
    let r = record_head(&small, &wide, &options, want).unwrap();
    check_recorded("recorded, 64 KiB bindings", &wide, &reference, &options, &r);
    check_gradients(
        "recorded, 64 KiB bindings",
        &wide,
        &reference,
        &r.grads,
        -1.0,
    );

    // Out-of-range targets on rows 3 and 9: row 3 is flagged, both count as ignored.
    let mut bad = Head::new(44, (20, 8, 50), Dtype::F32);
    bad.targets[3] = 50;
    bad.targets[9] = -7;
    let want = Want {
        gradients: [true; 3],
        ..Want::default()
    };
    let r = record_head(&gpu, &bad, &options, want).unwrap();
    assert_eq!(r.flag, Some(3));
    let mut ignored = Head::new(44, (20, 8, 50), Dtype::F32);
    ignored.targets[3] = -100;
    ignored.targets[9] = -100;
    let reference = ignored.reference(&options, None);
    let mut r = r;
    r.flag = None;
    check_recorded(
        "recorded, bad targets as ignored",
        &ignored,
        &reference,
        &options,
        &r,
    );
    check_gradients(
        "recorded, bad targets as ignored",
        &ignored,
        &reference,
        &r.grads,
        0.0,
    );

    // Typed errors, before anything is recorded.
    let buffer = common::device::buffer(&gpu, &vec![0u8; 8192]);
    let at = |start: u64, len: u64| buffer.slice(start..start + len);
    let (n, d, v) = (4, 8, 16);
    let good = DeviceLinearBatch::new(
        DeviceMatrix::new(at(0, 128), Dtype::F32, n, d),
        DeviceMatrix::new(at(256, 512), Dtype::F32, v, d),
        DeviceIndexTargets::I64(at(1024, 32)),
    );
    let out_buffer = common::device::buffer(&gpu, &vec![0u8; 1024]);
    let outputs = DeviceLinearOutputs::new(out_buffer.slice(0..4));
    let try_record =
        |batch: &DeviceLinearBatch, outputs: &DeviceLinearOutputs, options: &CrossEntropy| {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            let loss = LinearCrossEntropy::new(*options);
            gpu.record_linear_cross_entropy(&mut encoder, &loss, batch, outputs)
        };
    let plain = CrossEntropy::new();
    try_record(&good, &outputs, &plain).expect("the good call");
    let misaligned = DeviceLinearBatch {
        hidden: DeviceMatrix::new(at(4, 128), Dtype::F32, n, d),
        ..good
    };
    let err = try_record(&misaligned, &outputs, &plain).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Misaligned {
                what: "hidden buffer (bytes)",
                offset: 4,
                ..
            }
        ),
        "{err}"
    );
    let short = DeviceLinearBatch {
        weight: DeviceMatrix::new(at(256, 500), Dtype::F32, v, d),
        ..good
    };
    let err = try_record(&short, &outputs, &plain).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                what: "weight buffer (bytes)",
                expected: 512,
                actual: 500,
                ..
            }
        ),
        "{err}"
    );
    let mixed = DeviceLinearBatch {
        weight: DeviceMatrix::new(at(256, 256), Dtype::F16, v, d),
        ..good
    };
    assert!(matches!(
        try_record(&mixed, &outputs, &plain),
        Err(Error::Unsupported(_))
    ));
    let odd = DeviceLinearBatch {
        hidden: DeviceMatrix::new(at(0, 128), Dtype::Bf16, n, 7),
        weight: DeviceMatrix::new(at(256, 512), Dtype::Bf16, v, 7),
        ..good
    };
    assert!(matches!(
        try_record(&odd, &outputs, &plain),
        Err(Error::Unsupported(_))
    ));
    let mismatched = DeviceLinearBatch {
        weight: DeviceMatrix::new(at(256, 512), Dtype::F32, v, d + 1),
        ..good
    };
    assert!(matches!(
        try_record(&mismatched, &outputs, &plain),
        Err(Error::Shape {
            what: "weight (hidden size)",
            ..
        })
    ));
    let with_upstream = DeviceLinearOutputs {
        upstream: Some(at(2048, 16)),
        ..outputs
    };
    assert!(matches!(
        try_record(&good, &with_upstream, &plain),
        Err(Error::Unsupported(_))
    ));
    let short_loss = DeviceLinearOutputs::new(out_buffer.slice(0..2));
    assert!(matches!(
        try_record(&good, &short_loss, &plain),
        Err(Error::Shape {
            what: "loss buffer (bytes)",
            ..
        })
    ));
    // An output beside the inputs in their buffer is fine; over an input's bytes, or over
    // another output's, it is refused.
    let beside = DeviceLinearOutputs {
        hidden_gradient: Some(DeviceGradientSlice::Write(at(2048, 128))),
        ..outputs
    };
    try_record(&good, &beside, &plain).expect("dh beside the inputs");
    let over = DeviceLinearOutputs {
        hidden_gradient: Some(DeviceGradientSlice::Write(at(256, 128))),
        ..outputs
    };
    assert!(matches!(
        try_record(&good, &over, &plain),
        Err(Error::Unsupported(_))
    ));
    let overlapping = DeviceLinearOutputs {
        weight_gradient: Some(DeviceGradientSlice::Write(out_buffer.slice(256..768))),
        bias_gradient: Some(DeviceGradientSlice::Write(out_buffer.slice(512..576))),
        ..outputs
    };
    assert!(matches!(
        try_record(&good, &overlapping, &plain),
        Err(Error::Unsupported(_))
    ));
    let apart = DeviceLinearOutputs {
        bias_gradient: Some(DeviceGradientSlice::Write(out_buffer.slice(768..832))),
        ..overlapping
    };
    try_record(&good, &apart, &plain).expect("dW and db side by side in one buffer");
    let probabilities = CrossEntropy::new().input(xent::InputKind::PROBABILITIES);
    assert!(matches!(
        try_record(&good, &outputs, &probabilities),
        Err(Error::Unsupported(_))
    ));
    // The device is still usable.
    try_record(&good, &outputs, &plain).expect("the good call after the errors");
}

/// The reference with only gradient `i` (0: dh, 1: dW, 2: db) kept, the others zero.
fn reference_masked(r: &LinearReference, i: usize) -> LinearReference {
    let zero = |v: &[f64]| vec![0.0; v.len()];
    LinearReference {
        logits_reference: r.logits_reference.clone(),
        logits: r.logits.clone(),
        hidden_gradient: if i == 0 {
            r.hidden_gradient.clone()
        } else {
            zero(&r.hidden_gradient)
        },
        weight_gradient: if i == 1 {
            r.weight_gradient.clone()
        } else {
            zero(&r.weight_gradient)
        },
        bias_gradient: if i == 2 {
            r.bias_gradient.clone()
        } else {
            zero(&r.bias_gradient)
        },
    }
}
