//! The `xent` command end to end: small generated `.npy` and `.safetensors` files, the built
//! binary, and its numbers checked against the f64 reference (`xent::reference`). Every
//! malformed-file case must exit with code 2 and one line naming the file.

use half::f16;
use serde_json::Value;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;
use xent::reference::{self, Reference};
use xent::{Batch, BinaryCrossEntropy, CrossEntropy, Logits, Metrics, Reduction};

// ---------------------------------------------------------------------------------------------
// Helpers

/// SplitMix64, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Logits with a spread, a few large ones so probabilities are not all about 1/C.
    fn logits(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (self.uniform() - 0.5) * 6.0;
                if i % 11 == 3 {
                    v * 4.0
                } else {
                    v
                }
            })
            .collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn xent(args: &[&str]) -> Run {
    xent_with(args, &[])
}

/// [`xent`] with extra environment variables.
fn xent_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_xent"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `xent eval <args> --json`, parsed (the run must succeed).
fn eval_json(args: &[&str]) -> Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    xent(&all).json()
}

/// The f64 reference's softmax cross-entropy of `batch` (no upstream gradient).
fn reference_ce(options: &CrossEntropy, batch: &Batch) -> Reference {
    reference::cross_entropy(options, batch, None).unwrap()
}

struct Dir(TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
    fn npy<T: npyz::AutoSerialize + Copy>(
        &self,
        name: &str,
        shape: &[usize],
        data: &[T],
    ) -> String {
        write_npy(&self.path(name), shape, data);
        self.arg(name)
    }
    fn bytes(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.path(name), bytes).unwrap();
        self.arg(name)
    }
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(File::create(path).unwrap()))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let file = npyz::NpyFile::new(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
    let shape = file.shape().iter().map(|&d| d as usize).collect();
    (shape, file.into_vec::<f32>().unwrap())
}

/// A `.npy` file written byte by byte, for headers no writer would produce.
fn raw_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-5 * expected.abs().max(1.0),
        "{what}: got {actual}, reference {expected}"
    );
}

fn close_all(actual: &[f32], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let tol = 1e-6 + 1e-4 * e.abs();
        assert!(
            (a as f64 - e).abs() <= tol,
            "{what}[{i}]: got {a}, reference {e}"
        );
    }
}

/// Accuracy, mean entropy and ECE of the reference's per-row figures.
fn reference_metrics(r: &Reference) -> (usize, f64, f64, f64) {
    let m = Metrics {
        argmax: r.argmax.clone(),
        correct: r.correct.clone(),
        target_prob: r.target_prob.iter().map(|&v| v as f32).collect(),
        entropy: r.entropy.iter().map(|&v| v as f32).collect(),
        confidence: r.confidence.iter().map(|&v| v as f32).collect(),
        valid: r.valid.clone(),
    };
    let valid = m.valid_rows();
    let entropy: f64 = (0..r.valid.len())
        .filter(|&n| r.valid[n])
        .map(|n| r.entropy[n])
        .sum::<f64>()
        / valid as f64;
    (valid, m.accuracy(), entropy, m.ece(15))
}

fn check_metrics(json: &Value, r: &Reference) {
    let (valid, accuracy, entropy, ece) = reference_metrics(r);
    assert_eq!(json["valid_rows"], valid);
    close(num(json, "accuracy"), accuracy, "accuracy");
    close(num(json, "mean_entropy"), entropy, "mean_entropy");
    assert!(
        (num(json, "ece") - ece).abs() < 1e-4,
        "ece {} vs {ece}",
        json["ece"]
    );
}

fn assert_file_error(run: &Run, file: &str, contains: &str) {
    assert_eq!(run.code, 2, "stdout: {} stderr: {}", run.stdout, run.stderr);
    let line = run.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    assert!(line.starts_with("xent: "), "{line}");
    assert!(line.contains(file), "names {file}: {line}");
    assert!(
        line.to_lowercase().contains(&contains.to_lowercase()),
        "says {contains:?}: {line}"
    );
    assert!(!line.contains("panicked"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// eval: numbers against the reference

#[test]
fn eval_index_targets_i64_mean() {
    let dir = Dir::new();
    let (n, c) = (37, 11);
    let mut rng = Rng(1);
    let x = rng.logits(n * c);
    let mut y: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    y[5] = -100;
    y[20] = -100;
    let logits = dir.npy("logits.npy", &[n, c], &x);
    let targets = dir.npy("targets.npy", &[n], &y);
    let json = eval_json(&[
        "--logits",
        &logits,
        "--targets",
        &targets,
        "--device",
        "cpu",
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&x, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    assert_eq!(json["rows"], n);
    assert_eq!(json["classes"], c);
    assert_eq!(json["valid_rows"], n - 2);
    check_metrics(&json, &r);
    assert!(json["device"].as_str().unwrap().starts_with("cpu"));
    assert!(num(&json, "seconds") >= 0.0);
}

#[test]
fn eval_index_targets_i32_with_options_and_gradient() {
    let dir = Dir::new();
    let (n, c) = (19, 7);
    let mut rng = Rng(2);
    let x = rng.logits(n * c);
    let y: Vec<i32> = (0..n)
        .map(|i| if i == 4 { 3 } else { rng.below(c) as i32 })
        .collect();
    let w: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 * 0.25).collect();
    let logits = dir.npy("logits.npy", &[n, c], &x);
    let targets = dir.npy("targets.npy", &[n], &y);
    let weights = dir.npy("w.npy", &[c], &w);
    let grad = dir.arg("grad.npy");
    let json = eval_json(&[
        "--logits",
        &logits,
        "--targets",
        &targets,
        "--weights",
        &weights,
        "--label-smoothing",
        "0.1",
        "--z-loss",
        "0.001",
        "--softcap",
        "5",
        "--logit-scale",
        "1.5",
        "--ignore-index",
        "3",
        "--grad-out",
        &grad,
    ]);
    let options = CrossEntropy::new()
        .label_smoothing(0.1)
        .z_loss(0.001)
        .softcap(5.0)
        .logit_scale(1.5)
        .ignore_index(3);
    let r = reference_ce(
        &options,
        &Batch::new(Logits::new(&x, n, c), &y[..]).class_weights(&w),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    check_metrics(&json, &r);
    let (shape, g) = read_npy_f32(Path::new(&grad));
    assert_eq!(shape, [n, c]);
    close_all(&g, &r.gradient, "gradient");
}

#[test]
fn eval_sum_reduction() {
    let dir = Dir::new();
    let (n, c) = (9, 4);
    let x = Rng(3).logits(n * c);
    let y: Vec<i64> = (0..n as i64).map(|i| i % c as i64).collect();
    let json = eval_json(&[
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--targets",
        &dir.npy("t.npy", &[n], &y),
        "--reduction",
        "sum",
    ]);
    let r = reference_ce(
        &CrossEntropy::new().reduction(Reduction::Sum),
        &Batch::new(Logits::new(&x, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
}

#[test]
fn eval_single_row_of_shape_c() {
    let dir = Dir::new();
    let x = Rng(4).logits(13);
    let logits = dir.npy("row.npy", &[13], &x);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&x, 1, 13), &[6i64][..]),
    );
    // A 0-d target, as PyTorch takes for a 1-d input, and a (1,) one.
    for (name, shape) in [("t0.npy", &[][..]), ("t1.npy", &[1][..])] {
        let targets = dir.npy(name, shape, &[6i64]);
        let json = eval_json(&["--logits", &logits, "--targets", &targets]);
        close(num(&json, "loss"), r.loss.unwrap(), "loss");
        assert_eq!(json["rows"], 1);
        assert_eq!(json["classes"], 13);
    }
}

#[test]
fn eval_spatial_class_dim_1_reduction_none() {
    let dir = Dir::new();
    let (b, c, h, w) = (3, 5, 2, 4);
    let mut rng = Rng(5);
    let x = rng.logits(b * c * h * w);
    let y: Vec<i64> = (0..b * h * w).map(|_| rng.below(c) as i64).collect();
    let losses = dir.arg("losses.npy");
    let grad = dir.arg("grad.npy");
    let json = eval_json(&[
        "--logits",
        &dir.npy("l.npy", &[b, c, h, w], &x),
        "--targets",
        &dir.npy("t.npy", &[b, h, w], &y),
        "--reduction",
        "none",
        "--losses-out",
        &losses,
        "--grad-out",
        &grad,
    ]);
    assert!(json["loss"].is_null());
    assert_eq!(json["rows"], b * h * w);
    let options = CrossEntropy::new().reduction(Reduction::None);
    let r = reference_ce(
        &options,
        &Batch::new(Logits::class_dim1(&x, b, c, h * w), &y[..]),
    );
    let (shape, l) = read_npy_f32(Path::new(&losses));
    assert_eq!(shape, [b, h, w]);
    close_all(&l, &r.row_losses, "row losses");
    let (shape, g) = read_npy_f32(Path::new(&grad));
    assert_eq!(shape, [b, c, h, w]);
    close_all(&g, &r.gradient, "gradient");
    check_metrics(&json, &r);
}

#[test]
fn eval_soft_targets_with_gradient() {
    let dir = Dir::new();
    let (n, c) = (8, 6);
    let mut rng = Rng(6);
    let x = rng.logits(n * c);
    let mut t: Vec<f32> = (0..n * c).map(|_| rng.uniform()).collect();
    for row in t.chunks_mut(c) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    let grad = dir.arg("g.npy");
    let json = eval_json(&[
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--soft-targets",
        &dir.npy("t.npy", &[n, c], &t),
        "--grad-out",
        &grad,
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&x, n, c), &t[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    close_all(&read_npy_f32(Path::new(&grad)).1, &r.gradient, "gradient");
}

#[test]
fn eval_bce_with_pos_weight() {
    let dir = Dir::new();
    let (n, c) = (6, 5);
    let mut rng = Rng(7);
    let x = rng.logits(n * c);
    let y: Vec<f32> = (0..n * c).map(|i| [0.0, 1.0, 0.3][i % 3]).collect();
    let pw: Vec<f32> = (0..c).map(|k| 1.0 + k as f32).collect();
    let w: Vec<f32> = (0..c).map(|k| 0.5 + 0.1 * k as f32).collect();
    let losses = dir.arg("losses.npy");
    let grad = dir.arg("grad.npy");
    let json = eval_json(&[
        "--loss",
        "bce",
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--targets",
        &dir.npy("t.npy", &[n, c], &y),
        "--pos-weight",
        &dir.npy("pw.npy", &[c], &pw),
        "--weights",
        &dir.npy("w.npy", &[c], &w),
        "--losses-out",
        &losses,
        "--grad-out",
        &grad,
    ]);
    let r = reference::binary_cross_entropy(
        &BinaryCrossEntropy::new(),
        &Batch::new(Logits::new(&x, n, c), &y[..])
            .class_weights(&w)
            .pos_weight(&pw),
        None,
    )
    .unwrap();
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    assert!(json["accuracy"].is_null());
    let (shape, l) = read_npy_f32(Path::new(&losses));
    assert_eq!(shape, [n, c]);
    close_all(&l, &r.row_losses, "element losses");
    close_all(&read_npy_f32(Path::new(&grad)).1, &r.gradient, "gradient");
}

#[test]
fn eval_f16_and_f64_logits() {
    let dir = Dir::new();
    let (n, c) = (10, 9);
    let mut rng = Rng(8);
    let x = rng.logits(n * c);
    let y: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let targets = dir.npy("t.npy", &[n], &y);

    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let json = eval_json(&[
        "--logits",
        &dir.npy("h.npy", &[n, c], &h),
        "--targets",
        &targets,
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&h, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "f16 loss");

    // f64 is converted to f32: the reference runs on the f32-rounded values.
    let d: Vec<f64> = x.iter().map(|&v| v as f64 + 1e-9).collect();
    let rounded: Vec<f32> = d.iter().map(|&v| v as f32).collect();
    let json = eval_json(&[
        "--logits",
        &dir.npy("d.npy", &[n, c], &d),
        "--targets",
        &targets,
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&rounded, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "f64 loss");
}

#[test]
fn eval_safetensors_tensors() {
    let dir = Dir::new();
    let (n, c) = (12, 10);
    let mut rng = Rng(9);
    let x = rng.logits(n * c);
    let y: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let path = dir.path("batch.safetensors");
    let xb: &[u8] = bytemuck::cast_slice(&x);
    let yb: &[u8] = bytemuck::cast_slice(&y);
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    safetensors::serialize_to_file(
        [
            (
                "logits",
                TensorView::new(Dtype::F32, vec![n, c], xb).unwrap(),
            ),
            ("labels", TensorView::new(Dtype::I64, vec![n], yb).unwrap()),
        ],
        None,
        &path,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let json = eval_json(&[
        "--logits",
        &format!("{file}:logits"),
        "--targets",
        &format!("{file}:labels"),
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&x, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    check_metrics(&json, &r);

    // bfloat16 logits (NumPy has no bfloat16; safetensors does).
    let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let bpath = dir.path("bf16.safetensors");
    safetensors::serialize_to_file(
        [(
            "logits",
            TensorView::new(Dtype::BF16, vec![n, c], bytemuck::cast_slice(&b)).unwrap(),
        )],
        None,
        &bpath,
    )
    .unwrap();
    let json = eval_json(&[
        "--logits",
        bpath.to_str().unwrap(),
        "--targets",
        &format!("{file}:labels"),
    ]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&b, n, c), &y[..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "bf16 loss");

    // A tensor that isn't there.
    let run = xent(&[
        "eval",
        "--logits",
        &format!("{file}:logitz"),
        "--targets",
        &format!("{file}:labels"),
    ]);
    assert_file_error(&run, "batch.safetensors:logitz", "no tensor named");
    // No name, but two tensors.
    let run = xent(&[
        "eval",
        "--logits",
        file,
        "--targets",
        &format!("{file}:labels"),
    ]);
    assert_file_error(&run, "batch.safetensors", "name one");
}

#[test]
fn eval_big_endian_npy() {
    let dir = Dir::new();
    let x = [1.0f32, 2.0, 3.0, 0.5, -0.5, 0.25];
    let data: Vec<u8> = x.iter().flat_map(|v| v.to_be_bytes()).collect();
    let logits = dir.bytes(
        "be.npy",
        &raw_npy(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        ),
    );
    let y: Vec<u8> = [2i64, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let targets = dir.bytes(
        "be_t.npy",
        &raw_npy(
            "{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }",
            &y,
        ),
    );
    let json = eval_json(&["--logits", &logits, "--targets", &targets]);
    let r = reference_ce(
        &CrossEntropy::new(),
        &Batch::new(Logits::new(&x, 2, 3), &[2i64, 0][..]),
    );
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
}

#[test]
fn eval_probability_inputs() {
    let dir = Dir::new();
    let (n, c) = (5, 4);
    let mut rng = Rng(12);
    let mut q: Vec<f32> = (0..n * c).map(|_| rng.uniform()).collect();
    for row in q.chunks_mut(c) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    q[3] = 0.0; // clamped to eps
    let y: Vec<i64> = vec![0, 1, 2, 3, 0];
    let (logits, targets) = (dir.npy("q.npy", &[n, c], &q), dir.npy("t.npy", &[n], &y));
    // Plain, and focal loss on the same probabilities (SEMANTICS.md sections 2b, 2c).
    for gamma in ["0", "2"] {
        let grad = dir.arg("g.npy");
        let json = eval_json(&[
            "--logits",
            &logits,
            "--targets",
            &targets,
            "--input",
            "probabilities",
            "--eps",
            "1e-6",
            "--focal-gamma",
            gamma,
            "--grad-out",
            &grad,
        ]);
        let options = CrossEntropy::new()
            .input(xent::InputKind::Probabilities { eps: 1e-6 })
            .focal_gamma(gamma.parse().unwrap());
        let r =
            reference::cross_entropy(&options, &Batch::new(Logits::new(&q, n, c), &y[..]), None)
                .unwrap();
        close(num(&json, "loss"), r.loss.unwrap(), "loss");
        close_all(&read_npy_f32(Path::new(&grad)).1, &r.gradient, "gradient");
    }
}

#[test]
fn eval_prints_a_human_summary() {
    let dir = Dir::new();
    let x = [0.0f32; 8];
    let run = xent(&[
        "eval",
        "--logits",
        &dir.npy("l.npy", &[2, 4], &x),
        "--targets",
        &dir.npy("t.npy", &[2], &[1i64, 2]),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for key in [
        "loss",
        "rows",
        "valid rows",
        "accuracy",
        "mean entropy",
        "ECE",
        "device",
        "time",
    ] {
        assert!(run.stdout.contains(key), "{key} missing: {}", run.stdout);
    }
    // Uniform logits: ln 4.
    assert!(
        run.stdout.contains(&format!("{}", 4f32.ln())),
        "{}",
        run.stdout
    );
}

#[test]
fn eval_reports_nan_as_a_string() {
    let dir = Dir::new();
    // Every row ignored: mean is NaN, as PyTorch gives.
    let json = eval_json(&[
        "--logits",
        &dir.npy("l.npy", &[2, 3], &[0.0f32; 6]),
        "--targets",
        &dir.npy("t.npy", &[2], &[-100i64, -100]),
    ]);
    assert_eq!(json["loss"], "NaN");
    assert_eq!(json["valid_rows"], 0);
    assert_eq!(json["accuracy"], "NaN");
    assert_eq!(json["ece"], "NaN");
}

#[test]
fn eval_names_the_first_non_finite_row() {
    let dir = Dir::new();
    let mut x = Rng(5).logits(5 * 3);
    x[2 * 3 + 1] = f32::NAN; // row 2
    x[4 * 3] = f32::INFINITY; // row 4
    let logits = dir.npy("l.npy", &[5, 3], &x);
    let targets = dir.npy("t.npy", &[5], &[0i64, 1, 2, 1, 0]);
    let json = eval_json(&["--logits", &logits, "--targets", &targets]);
    assert_eq!(json["non_finite"], 2, "{json}");
    assert_eq!(json["first_non_finite"], 2, "{json}");
    // Every average over the valid rows agrees that a NaN row makes it NaN.
    for key in ["loss", "mean_entropy", "ece"] {
        assert_eq!(json[key], "NaN", "{key}: {json}");
    }
    let run = xent(&["eval", "--logits", &logits, "--targets", &targets]);
    assert!(
        run.stdout
            .contains("2 rows with a NaN or infinite loss (first: row 2)"),
        "{}",
        run.stdout
    );
    let clean = dir.npy("c.npy", &[5, 3], &Rng(5).logits(15));
    let json = eval_json(&["--logits", &clean, "--targets", &targets]);
    assert_eq!(json["non_finite"], 0, "{json}");
    assert!(json["first_non_finite"].is_null(), "{json}");
}

#[test]
fn eval_on_the_gpu_agrees_or_says_why_not() {
    let dir = Dir::new();
    let (n, c) = (16, 33);
    let mut rng = Rng(10);
    let x = rng.logits(n * c);
    let y: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let run = xent(&[
        "eval",
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--targets",
        &dir.npy("t.npy", &[n], &y),
        "--device",
        "gpu",
        "--json",
    ]);
    if run.code == 0 {
        let r = reference_ce(
            &CrossEntropy::new(),
            &Batch::new(Logits::new(&x, n, c), &y[..]),
        );
        close(num(&run.json(), "loss"), r.loss.unwrap(), "gpu loss");
    } else {
        // Drivers may print their own lines while wgpu looks for adapters (Mesa's EGL says
        // "XDG_RUNTIME_DIR is invalid"); ours is exactly one.
        assert_eq!(run.code, 1, "{}", run.stderr);
        let ours: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("xent: "))
            .collect();
        assert_eq!(ours.len(), 1, "{}", run.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// eval: malformed and mismatched files

/// A valid (4, 3) problem; returns (logits, targets) arguments.
fn good_pair(dir: &Dir) -> (String, String) {
    let x = Rng(11).logits(12);
    (
        dir.npy("logits.npy", &[4, 3], &x),
        dir.npy("targets.npy", &[4], &[0i64, 1, 2, 1]),
    )
}

#[test]
fn malformed_wrong_dtype() {
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    // Integer logits.
    let int_logits = dir.npy("int_logits.npy", &[4, 3], &[1i32; 12]);
    assert_file_error(
        &xent(&["eval", "--logits", &int_logits, "--targets", &targets]),
        "int_logits.npy",
        "dtype int32",
    );
    // Float targets where class indices are expected.
    let float_targets = dir.npy("float_targets.npy", &[4], &[0.0f32; 4]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &float_targets]),
        "float_targets.npy",
        "dtype float32",
    );
    // A dtype the CLI doesn't read at all.
    let bytes = dir.npy("u8.npy", &[4, 3], &[1u8; 12]);
    assert_file_error(
        &xent(&["eval", "--logits", &bytes, "--targets", &targets]),
        "u8.npy",
        "uint8",
    );
    // uint8 labels: the message says what class-index targets take.
    let labels = dir.npy("labels.npy", &[4], &[0u8, 1, 2, 1]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &labels]),
        "labels.npy",
        "int32 or int64 for class-index targets",
    );
    // A pickled object array.
    let object = dir.bytes(
        "object.npy",
        &raw_npy(
            "{'descr': '|O', 'fortran_order': False, 'shape': (4,), }",
            &[0x80, 0x04, 0x4e, 0x2e],
        ),
    );
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &object]),
        "object.npy",
        "object array",
    );
    // A directory.
    assert_file_error(
        &xent(&["eval", "--logits", &dir.arg(""), "--targets", &targets]),
        &dir.arg(""),
        "is a directory",
    );
}

#[test]
fn malformed_wrong_shape() {
    let dir = Dir::new();
    let (logits, _) = good_pair(&dir);
    let targets = dir.npy("t5.npy", &[5], &[0i64; 5]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &targets]),
        "t5.npy",
        "shape (5,)",
    );
    let weights = dir.npy("w.npy", &[4], &[1.0f32; 4]);
    let (_, good_targets) = good_pair(&dir);
    assert_file_error(
        &xent(&[
            "eval",
            "--logits",
            &logits,
            "--targets",
            &good_targets,
            "--weights",
            &weights,
        ]),
        "w.npy",
        "3 classes",
    );
    let soft = dir.npy("soft.npy", &[4, 4], &[0.25f32; 16]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--soft-targets", &soft]),
        "soft.npy",
        "shape (4, 4)",
    );
}

#[test]
fn malformed_truncated_file() {
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    let mut bytes = std::fs::read(&logits).unwrap();
    bytes.truncate(bytes.len() - 5);
    let cut = dir.bytes("cut.npy", &bytes);
    assert_file_error(
        &xent(&["eval", "--logits", &cut, "--targets", &targets]),
        "cut.npy",
        "truncated",
    );
    // Cut inside the header.
    let cut = dir.bytes("cut_header.npy", &bytes[..40]);
    assert_file_error(
        &xent(&["eval", "--logits", &cut, "--targets", &targets]),
        "cut_header.npy",
        "header",
    );
    // Not a .npy file at all, and an empty one.
    let text = dir.bytes("text.npy", b"hello, this is not numpy\n");
    assert_file_error(
        &xent(&["eval", "--logits", &text, "--targets", &targets]),
        "text.npy",
        "not a .npy file",
    );
    let empty = dir.bytes("empty.npy", b"");
    assert_file_error(
        &xent(&["eval", "--logits", &empty, "--targets", &targets]),
        "empty.npy",
        "empty",
    );
    let missing = dir.arg("missing.npy");
    assert_file_error(
        &xent(&["eval", "--logits", &missing, "--targets", &targets]),
        "missing.npy",
        "cannot open",
    );
}

#[test]
fn malformed_header_claims_more_than_the_file_holds() {
    let dir = Dir::new();
    let (_, targets) = good_pair(&dir);
    // 2^40 × 3 float32 claimed, 48 bytes present: must fail without trying to allocate 12 TB.
    let huge = dir.bytes(
        "huge.npy",
        &raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 3), }",
            &[0u8; 48],
        ),
    );
    assert_file_error(
        &xent(&["eval", "--logits", &huge, "--targets", &targets]),
        "huge.npy",
        "file holds only 48",
    );
    // A shape whose element count overflows 64 bits.
    let overflow = dir.bytes(
        "overflow.npy",
        &raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
            &[0u8; 48],
        ),
    );
    assert_file_error(
        &xent(&["eval", "--logits", &overflow, "--targets", &targets]),
        "overflow.npy",
        "overflows",
    );
    // A version-2 header whose length field claims 4 GB of header text.
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend(b"{'descr': '<f4'");
    let liar = dir.bytes("liar.npy", &bytes);
    assert_file_error(
        &xent(&["eval", "--logits", &liar, "--targets", &targets]),
        "liar.npy",
        "header",
    );
    // Extra bytes after the data the header describes.
    let mut good = raw_npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }",
        &[0u8; 48],
    );
    good.extend([0u8; 8]);
    let long = dir.bytes("long.npy", &good);
    assert_file_error(
        &xent(&["eval", "--logits", &long, "--targets", &targets]),
        "long.npy",
        "after the data",
    );
    // A safetensors header whose offsets run past the end of the file.
    let x = [0f32; 12];
    let mut st = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![4, 3],
                bytemuck::cast_slice(&x),
            )
            .unwrap(),
        )],
        None,
    )
    .unwrap();
    st.truncate(st.len() - 8);
    let st_path = dir.path("cut.safetensors");
    std::fs::write(&st_path, &st).unwrap();
    assert_file_error(
        &xent(&[
            "eval",
            "--logits",
            st_path.to_str().unwrap(),
            "--targets",
            &targets,
        ]),
        "cut.safetensors",
        "bad .safetensors",
    );
}

#[test]
fn malformed_target_out_of_range() {
    let dir = Dir::new();
    let (logits, _) = good_pair(&dir);
    let targets = dir.npy("bad_targets.npy", &[4], &[0i64, 1, 3, 1]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &targets]),
        "bad_targets.npy",
        "target 3 at row 2 is out of range for 3 classes",
    );
    let targets = dir.npy("neg_targets.npy", &[4], &[0i32, -1, 2, 1]);
    assert_file_error(
        &xent(&["eval", "--logits", &logits, "--targets", &targets]),
        "neg_targets.npy",
        "out of range",
    );
    // BCE targets outside [0, 1].
    let bce = dir.npy("bce.npy", &[4, 3], &[2.0f32; 12]);
    assert_file_error(
        &xent(&[
            "eval",
            "--loss",
            "bce",
            "--logits",
            &logits,
            "--targets",
            &bce,
        ]),
        "bce.npy",
        "must be in [0, 1]",
    );
}

/// `xent eval` on a good logits/targets pair plus `extra` arguments: a usage error (exit 2)
/// whose one line contains `says`.
fn assert_usage_error(extra: &[&str], says: &str) {
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    let mut args = vec!["eval", "--logits", &logits, "--targets", &targets];
    args.extend_from_slice(extra);
    let run = xent(&args);
    assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
    assert!(run.stderr.contains(says), "{extra:?}: {}", run.stderr);
}

#[test]
fn bad_arguments_exit_2() {
    assert_usage_error(&["--label-smoothing", "2"], "--label-smoothing 2");
    let dir = Dir::new();
    let (logits, _) = good_pair(&dir);
    let run = xent(&["eval", "--logits", &logits]);
    assert_eq!(run.code, 2);
}

/// A Fortran-order `.npy` of the C-order `values` of `shape`, as `np.asfortranarray` saves it.
fn fortran_npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    // Column-major: the first index fastest.
    let mut data = Vec::with_capacity(values.len() * 4);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..values.len() {
        let at: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        data.extend(values[at].to_le_bytes());
        for d in 0..shape.len() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    raw_npy(
        &format!(
            "{{'descr': '<f4', 'fortran_order': True, 'shape': ({},), }}",
            dims.join(", ")
        ),
        &data,
    )
}

#[test]
fn fortran_order_files_read_as_their_values() {
    // The same logits (and soft targets) in C and Fortran order give the same loss, rows and
    // gradient: (N, C) and (N, C, d).
    let dir = Dir::new();
    for shape in [vec![5usize, 3], vec![2, 3, 4]] {
        let n: usize = shape.iter().product();
        let x = Rng(3).logits(n);
        let t: Vec<f32> = Rng(4).logits(n).iter().map(|v| v.abs()).collect();
        let c_logits = dir.npy("c.npy", &shape, &x);
        let f_logits = dir.bytes("f.npy", &fortran_npy(&shape, &x));
        let c_soft = dir.npy("ct.npy", &shape, &t);
        let f_soft = dir.bytes("ft.npy", &fortran_npy(&shape, &t));
        let run = |logits: &str, soft: &str, tag: &str| {
            let (rows, grad) = (
                dir.arg(&format!("rows{tag}.npy")),
                dir.arg(&format!("g{tag}.npy")),
            );
            let json = eval_json(&[
                "--logits",
                logits,
                "--soft-targets",
                soft,
                "--reduction",
                "none",
                "--losses-out",
                &rows,
                "--grad-out",
                &grad,
            ]);
            (
                json,
                read_npy_f32(Path::new(&rows)),
                read_npy_f32(Path::new(&grad)),
            )
        };
        let (_, c_rows, c_grad) = run(&c_logits, &c_soft, "c");
        let (_, f_rows, f_grad) = run(&f_logits, &f_soft, "f");
        assert_eq!(c_rows, f_rows, "{shape:?}");
        assert_eq!(c_grad, f_grad, "{shape:?}");
        // Mixed orders too.
        let (_, m_rows, _) = run(&f_logits, &c_soft, "m");
        assert_eq!(c_rows, m_rows, "{shape:?}");
    }
}

#[test]
fn no_display_noise_without_xdg_runtime_dir() {
    // Mesa's Wayland/EGL code prints "XDG_RUNTIME_DIR is invalid" when wgpu opens Vulkan or GL
    // without it, even when `auto` then picks the CPU: the command keeps it quiet.
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_xent"))
        .args(["eval", "--logits", &logits, "--targets", &targets])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WGPU_BACKEND")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}

#[test]
fn negative_numbers_get_the_domain_error_as_typed() {
    for (flag, value, extra) in [
        ("--label-smoothing", "-0.1", &[][..]),
        ("--z-loss", "-1", &[]),
        ("--softcap", "-1", &[]),
        ("--focal-gamma", "-1", &[]),
        ("--ece-bins", "-1", &[]),
        ("--eps", "-0.1", &["--input", "probabilities"]),
    ] {
        let mut args = vec![flag, value];
        args.extend_from_slice(extra);
        assert_usage_error(&args, &format!("{flag} {value} is invalid"));
    }
}

#[test]
fn reduction_none_needs_a_file_for_its_losses() {
    assert_usage_error(&["--reduction", "none"], "--losses-out");
}

#[test]
fn unknown_environment_values_are_warned_about() {
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    let args = [
        "eval",
        "--logits",
        &logits,
        "--targets",
        &targets,
        "--device",
        "cpu",
    ];
    let run = xent_with(&args, &[("XENT_SIMD", "bogus")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("warning: XENT_SIMD=bogus is not a SIMD level")
            && run.stderr.contains("portable"),
        "{}",
        run.stderr
    );
    let run = xent_with(&args, &[("WGPU_BACKEND", "bogus")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("warning: WGPU_BACKEND=bogus names no backend")
            && run.stderr.contains("vulkan"),
        "{}",
        run.stderr
    );
    let run = xent_with(&args, &[("XENT_SIMD", "portable")]);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// eval --hidden: a linear head from hidden states

#[test]
fn eval_hidden_states_of_a_linear_head() {
    use xent::linear::LinearBatch;
    use xent::Matrix;
    let dir = Dir::new();
    let (b, t, d, v) = (3, 5, 12, 40);
    let n = b * t;
    let mut rng = Rng(21);
    let h: Vec<f32> = rng.logits(n * d).iter().map(|x| x * 0.3).collect();
    let w: Vec<f32> = rng.logits(v * d).iter().map(|x| x * 0.2).collect();
    let bias: Vec<f32> = rng.logits(v).iter().map(|x| x * 0.1).collect();
    let mut y: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    y[4] = -100;
    let weights: Vec<f32> = (0..v).map(|c| 0.5 + (c % 3) as f32 * 0.5).collect();
    // h as (B, T, D) in f16: one row per (b, t); W as f32, b as f32.
    let h16: Vec<f16> = h.iter().map(|&x| f16::from_f32(x)).collect();
    let hidden = dir.npy("h.npy", &[b, t, d], &h16);
    let weight = dir.npy("w.npy", &[v, d], &w);
    let bias_file = dir.npy("b.npy", &[v], &bias);
    let targets = dir.npy("y.npy", &[b, t], &y);
    let class_weights = dir.npy("cw.npy", &[v], &weights);
    let losses = dir.arg("losses.npy");
    let head_args = [
        "--hidden",
        &hidden,
        "--weight",
        &weight,
        "--bias",
        &bias_file,
        "--targets",
        &targets,
        "--weights",
        &class_weights,
        "--label-smoothing",
        "0.1",
        "--z-loss",
        "1e-3",
    ];
    let json = eval_json(&[&head_args[..], &["--losses-out", &losses]].concat());
    let options = CrossEntropy::new().label_smoothing(0.1).z_loss(1e-3);
    let batch = LinearBatch::new(Matrix::new(&h16, n, d), Matrix::new(&w, v, d), &y[..])
        .bias(&bias)
        .class_weights(&weights);
    let r = reference::linear_cross_entropy(&options, &batch, None).unwrap();
    let r = r.logits_reference;
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    assert_eq!(json["rows"], n);
    assert_eq!(json["classes"], v);
    check_metrics(&json, &r);
    let (shape, rows) = read_npy_f32(&dir.path("losses.npy"));
    assert_eq!(shape, [b, t]);
    close_all(&rows, &r.row_losses, "per-row losses");
    // The GPU's linear forward, where there is an adapter.
    let on_gpu = xent(&[&["eval"], &head_args[..], &["--device", "gpu", "--json"]].concat());
    if on_gpu.code == 0 {
        let json = on_gpu.json();
        close(num(&json, "loss"), r.loss.unwrap(), "gpu loss");
        check_metrics(&json, &r);
    } else {
        assert!(on_gpu.stderr.contains("GPU"), "{}", on_gpu.stderr);
    }
    // The same head stored (D, V), as burn's Linear and flax's Dense keep it.
    let w_t: Vec<f32> = (0..d * v).map(|i| w[(i % v) * d + i / v]).collect();
    let weight_t = dir.npy("w_t.npy", &[d, v], &w_t);
    let mut t_args = head_args.to_vec();
    t_args[3] = &weight_t;
    let layout = ["--weight-layout", "hidden-major"];
    let json = eval_json(&[&t_args[..], &layout[..]].concat());
    close(num(&json, "loss"), r.loss.unwrap(), "(D, V) loss");
    assert_eq!(json["classes"], v);
    check_metrics(&json, &r);
    // ... and read as (V, D) it is the wrong shape, named.
    let run = xent(&[&["eval"], &head_args[..4], &["--targets", &targets]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xent(&[&["eval"], &t_args[..4], &["--targets", &targets]].concat());
    assert_file_error(&run, "w_t.npy", "need (V, 12)");
    let run = xent(
        &[
            &["eval"],
            &head_args[..4],
            &["--targets", &targets],
            &layout[..],
        ]
        .concat(),
    );
    assert_file_error(&run, "w.npy", "need (12, V)");

    // What --hidden cannot do is a usage error; a bad file names itself.
    let refused = xent(&[
        "eval",
        "--hidden",
        &hidden,
        "--weight",
        &weight,
        "--targets",
        &targets,
        "--loss",
        "bce",
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--loss bce"), "{}", refused.stderr);
    let short = dir.npy("w_short.npy", &[v, d - 1], &w[..v * (d - 1)]);
    let run = xent(&[
        "eval",
        "--hidden",
        &hidden,
        "--weight",
        &short,
        "--targets",
        &targets,
    ]);
    assert_file_error(&run, "w_short.npy", "need (V, 12)");
    y[7] = v as i64;
    let bad = dir.npy("y_bad.npy", &[b, t], &y);
    let run = xent(&[
        "eval",
        "--hidden",
        &hidden,
        "--weight",
        &weight,
        "--targets",
        &bad,
    ]);
    assert_file_error(&run, "y_bad.npy", "out of range");
    let missing = xent(&["eval", "--hidden", &hidden, "--targets", &targets]);
    assert_eq!(
        missing.code, 2,
        "--hidden without --weight: {}",
        missing.stderr
    );
}

/// `xent bench --linear` on a tiny head on the CPU, with `extra` arguments: its stdout and
/// JSON records, after checking that every implementation computed the same finite loss.
fn bench_linear_records(extra: &[&str]) -> (String, Vec<Value>) {
    let (run, records) = bench_linear_run("cpu", extra);
    assert_eq!(run.code, 0, "{}", run.stderr);
    same_finite_losses(&records, 5);
    (run.stdout, records)
}

/// Every record's loss (the runs that report one: `count` of them) the same finite number.
fn same_finite_losses(records: &[Value], count: usize) {
    let losses: Vec<f64> = records.iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert_eq!(losses.len(), count, "{records:?}");
    for l in &losses {
        assert!(
            l.is_finite() && (l - losses[0]).abs() <= 1e-4 * losses[0].abs(),
            "{losses:?}"
        );
    }
}

/// `xent bench --linear --device DEVICE` on a tiny head: the run and its JSON records (none
/// where it failed).
fn bench_linear_run(device: &str, extra: &[&str]) -> (Run, Vec<Value>) {
    let dir = Dir::new();
    let json = dir.arg("linear.json");
    let mut args = vec![
        "bench",
        "--linear",
        "--head",
        "64x16x300",
        "--iters",
        "1",
        "--device",
        device,
        "--no-plot",
    ];
    args.extend(extra);
    args.extend(["--json", &json]);
    let run = xent(&args);
    let records = match run.code {
        0 => serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap(),
        _ => Vec::new(),
    };
    (run, records)
}

#[test]
fn bench_linear_head_table_and_json() {
    let (stdout, records) = bench_linear_records(&[]);
    let kinds: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["impl"].as_str().unwrap().into(),
                r["mode"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (implementation, mode) in [
        ("gemm", "product"),
        ("xent-cpu-fused", "forward"),
        ("xent-cpu-fused", "forward-backward"),
        ("xent-cpu-chunked", "forward-backward"),
        ("materialized", "forward"),
        ("materialized", "forward-backward"),
    ] {
        assert!(
            kinds.contains(&(implementation.into(), mode.into())),
            "{implementation} {mode} in {kinds:?}"
        );
    }
    // The counting allocator of the binary measured something.
    for r in &records {
        assert!(r["scratch_bytes"].as_u64().is_some(), "{r}");
        assert_eq!(r["logits_bytes"], 64 * 300 * 4);
        assert_eq!(r["ignored"], 0.0);
    }
    assert!(stdout.contains("% gemm"), "{stdout}");
}

/// `--device gpu`: the GPU's rows only (the CPU's take minutes at LLM sizes), each against
/// the GPU's own product.
#[test]
fn bench_linear_head_on_the_gpu_leaves_the_cpu_out() {
    let (run, records) = bench_linear_run("gpu", &[]);
    if run.code != 0 {
        // No adapter: one line of ours says so (the GPU tests fail loudly elsewhere).
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("xent: "), "{}", run.stderr);
        return;
    }
    // The header names the GPU alone.
    let header = run.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("xent bench --linear: gpu: ") && !header.contains("cpu ("),
        "{header}"
    );
    // The host-slice calls' losses: fused forward and forward + backward, chunked.
    same_finite_losses(&records, 3);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["impl"].as_str().unwrap())
        .collect();
    for implementation in [
        "gpu-product",
        "xent-gpu",
        "xent-gpu-resident",
        "gpu-materialized",
    ] {
        assert!(
            kinds.contains(&implementation),
            "{implementation} in {kinds:?}"
        );
    }
    for r in &records {
        let name = r["impl"].as_str().unwrap();
        assert!(
            name.starts_with("xent-gpu") || name.starts_with("gpu-"),
            "{r}"
        );
        assert!(!r["device"].as_str().unwrap().starts_with("cpu"), "{r}");
    }
    let product = records.iter().find(|r| r["impl"] == "gpu-product").unwrap();
    assert_eq!(product["gemm_fraction"], 1.0, "{product}");
}

#[test]
fn bench_linear_head_with_ignored_rows() {
    // Every implementation's mean over the rows that count: the same loss.
    let (stdout, records) = bench_linear_records(&["--ignored", "0.5"]);
    assert!(stdout.contains("50 % of the rows ignored"), "{stdout}");
    assert!(records.iter().all(|r| r["ignored"] == 0.5), "{records:?}");
    let refused = xent(&["bench", "--linear", "--ignored", "1.5", "--device", "cpu"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not a fraction"),
        "{}",
        refused.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// bench and devices

#[test]
fn bench_tiny_shape_writes_json_and_svg() {
    let dir = Dir::new();
    let json = dir.arg("out.json");
    let svg = dir.arg("out.svg");
    let run = xent(&[
        "bench", "--shape", "64x100", "--iters", "2", "--device", "cpu", "--json", &json, "--plot",
        &svg,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("xent-cpu") && run.stdout.contains("naive-cpu"));
    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let find = |imp: &str, mode: &str| {
        records
            .iter()
            .find(|r| r["impl"] == imp && r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {imp} {mode} record in {records:?}"))
    };
    for mode in ["forward", "forward-backward"] {
        for imp in ["xent-cpu", "naive-cpu"] {
            let r = find(imp, mode);
            assert_eq!(r["device"], "cpu");
            assert_eq!(r["rows"], 64);
            assert_eq!(r["classes"], 100);
            assert_eq!(r["dtype"], "f32");
            for key in ["median_ms", "min_ms", "gbps"] {
                assert!(num(r, key) > 0.0, "{key} in {r}");
            }
            assert!(num(r, "min_ms") <= num(r, "median_ms"));
        }
        // Both implementations computed the same mean loss.
        let (a, b) = (
            num(find("xent-cpu", mode), "loss"),
            num(find("naive-cpu", mode), "loss"),
        );
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
    for probe in ["read-bandwidth", "copy-bandwidth"] {
        let r = find(probe, "probe");
        assert_eq!(r["device"], "cpu");
        assert!(num(r, "gbps") > 0.0);
    }
    assert!(records.iter().all(|r| r["impl"] != "xent-gpu"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    // One panel per device, mode and dtype, on a log scale, probes in the legend.
    for text in [
        "<svg",
        "xent-cpu",
        "naive-cpu",
        "read-bandwidth",
        "copy-bandwidth",
        "cpu: forward, f32",
        "cpu: forward-backward, f32",
        "log scale",
    ] {
        assert!(svg.contains(text), "{text}: {}", &svg[..200.min(svg.len())]);
    }
}

#[test]
fn bench_draws_its_plot_by_default() {
    let dir = Dir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_xent"))
        .args([
            "bench", "--shape", "16x10", "--iters", "1", "--device", "cpu",
        ])
        .current_dir(dir.path(""))
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("plot: xent-bench.svg"), "{stdout}");
    assert!(dir.path("xent-bench.svg").exists());
}

#[test]
fn bench_on_the_gpu_records_the_adapter_or_says_why_not() {
    let dir = Dir::new();
    let json = dir.arg("gpu.json");
    let run = xent(&[
        "bench",
        "--shape",
        "32x300",
        "--iters",
        "1",
        "--device",
        "gpu",
        "--mode",
        "forward",
        "--json",
        &json,
        "--no-plot",
    ]);
    if run.code != 0 {
        assert_eq!(run.code, 1, "{}", run.stderr);
        let ours: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("xent: "))
            .collect();
        assert_eq!(ours.len(), 1, "{}", run.stderr);
        return;
    }
    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let gpu = records
        .iter()
        .find(|r| r["impl"] == "xent-gpu")
        .expect("an xent-gpu record");
    let adapter = gpu["device"].as_str().unwrap();
    assert_ne!(adapter, "cpu");
    for probe in ["read-bandwidth", "copy-bandwidth"] {
        let r = records
            .iter()
            .find(|r| r["impl"] == probe)
            .unwrap_or_else(|| panic!("no {probe} in {records:?}"));
        assert_eq!(r["device"], adapter);
        assert!(num(r, "gbps") > 0.0);
    }
    assert!(num(gpu, "gbps") > 0.0);
    // Timed device-resident, with the host-slice call's round trip beside it.
    assert!(num(gpu, "round_trip_ms") > 0.0, "{gpu}");
    assert!(run.stdout.contains("trip ms"), "{}", run.stdout);
    // Timed by timestamp queries where the adapter has them, and the probes the same way.
    let clock = gpu["clock"].as_str().expect("a clock");
    assert!(["timestamps", "submit-and-wait"].contains(&clock), "{gpu}");
    for r in records.iter().filter(|r| r["mode"] == "probe") {
        assert_eq!(r["clock"], clock, "{r}");
    }
    assert!(records.iter().all(|r| r["device"] != "cpu"), "{records:?}");
}

#[test]
fn bench_times_the_class_dim1_layout() {
    let dir = Dir::new();
    let json = dir.arg("out.json");
    let run = xent(&[
        "bench",
        "--shape",
        "2x3x4x5",
        "--iters",
        "2",
        "--device",
        "cpu",
        "--json",
        &json,
        "--no-plot",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("2x3x20"), "{}", run.stdout);
    assert!(run.stdout.contains("naive-cpu skipped"), "{}", run.stdout);
    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let xent_cpu: Vec<&Value> = records.iter().filter(|r| r["impl"] == "xent-cpu").collect();
    assert_eq!(xent_cpu.len(), 2, "{records:?}");
    for r in xent_cpu {
        assert_eq!(
            (&r["rows"], &r["classes"], &r["spatial"]),
            (&40.into(), &3.into(), &20.into())
        );
        assert!(num(r, "loss") > 0.0, "{r}");
    }
    assert!(records.iter().all(|r| r["impl"] != "naive-cpu"));
}

#[test]
fn bench_rejects_bad_shapes() {
    let run = xent(&["bench", "--shape", "64by100"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("ROWSxCLASSES"), "{}", run.stderr);
}

#[test]
fn devices_lists_the_simd_level() {
    let run = xent(&["devices"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let level = xent::cpu::SimdLevel::detected().name();
    assert!(
        run.stdout.contains(&format!("SIMD level {level}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--device auto picks"), "{}", run.stdout);
    assert!(run.stdout.contains("--device gpu"), "{}", run.stdout);
    assert!(!run.stdout.contains("gpu: gpu"), "{}", run.stdout);
}

/// Standard output closed before the command writes (`xent devices | head -0`): the output is
/// dropped quietly, exit code 0, no panic (Rust ignores SIGPIPE: a plain `println!` panics).
#[test]
fn closed_standard_output_is_not_an_error() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_xent"))
        .arg("devices")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Focal loss, sample weights, BCE smoothing

#[test]
fn eval_focal_loss_with_sample_weights() {
    let dir = Dir::new();
    let (n, c) = (23, 9);
    let mut rng = Rng(21);
    let x = rng.logits(n * c);
    let y: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let w: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 * 0.2).collect();
    let s: Vec<f32> = (0..n).map(|i| (i % 4) as f32 * 0.5).collect();
    let grad = dir.arg("grad.npy");
    let losses = dir.arg("losses.npy");
    let json = eval_json(&[
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--targets",
        &dir.npy("t.npy", &[n], &y),
        "--weights",
        &dir.npy("w.npy", &[c], &w),
        "--sample-weights",
        &dir.npy("s.npy", &[n], &s),
        "--focal-gamma",
        "2",
        "--label-smoothing",
        "0.1",
        "--grad-out",
        &grad,
        "--losses-out",
        &losses,
    ]);
    let r = reference::cross_entropy(
        &CrossEntropy::new().focal_gamma(2.0).label_smoothing(0.1),
        &Batch::new(Logits::new(&x, n, c), &y[..])
            .class_weights(&w)
            .sample_weights(&s),
        None,
    )
    .unwrap();
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    close_all(
        &read_npy_f32(Path::new(&losses)).1,
        &r.row_losses,
        "row losses",
    );
    close_all(&read_npy_f32(Path::new(&grad)).1, &r.gradient, "gradient");
}

#[test]
fn eval_bce_focal_smoothing_and_sample_weights() {
    let dir = Dir::new();
    let (n, c) = (6, 5);
    let mut rng = Rng(22);
    let x = rng.logits(n * c);
    let y: Vec<f32> = (0..n * c).map(|i| [0.0, 1.0, 0.3][i % 3]).collect();
    let s: Vec<f32> = (0..n).map(|i| 0.25 + i as f32).collect();
    let grad = dir.arg("grad.npy");
    let json = eval_json(&[
        "--loss",
        "bce",
        "--logits",
        &dir.npy("l.npy", &[n, c], &x),
        "--targets",
        &dir.npy("t.npy", &[n, c], &y),
        "--sample-weights",
        &dir.npy("s.npy", &[n], &s),
        "--focal-gamma",
        "2",
        "--focal-alpha",
        "0.25",
        "--label-smoothing",
        "0.1",
        "--reduction",
        "sum",
        "--grad-out",
        &grad,
    ]);
    let r = reference::binary_cross_entropy(
        &BinaryCrossEntropy::new()
            .focal_gamma(2.0)
            .focal_alpha(0.25)
            .label_smoothing(0.1)
            .reduction(Reduction::Sum),
        &Batch::new(Logits::new(&x, n, c), &y[..]).sample_weights(&s),
        None,
    )
    .unwrap();
    close(num(&json, "loss"), r.loss.unwrap(), "loss");
    close_all(&read_npy_f32(Path::new(&grad)).1, &r.gradient, "gradient");
}

/// Exit code 2, one line, naming `option`.
fn assert_option_error(run: &Run, option: &str) {
    assert_eq!(run.code, 2, "stdout: {} stderr: {}", run.stdout, run.stderr);
    let line = run.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    assert!(
        line.starts_with("xent: ") && line.contains(option),
        "{line}"
    );
    assert!(!line.contains("panicked"), "{line}");
}

#[test]
fn focal_and_sample_weight_errors_name_the_option() {
    let dir = Dir::new();
    let (logits, targets) = good_pair(&dir);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--logits", &logits, "--targets", &targets];
        args.extend_from_slice(extra);
        xent(&args)
    };
    assert_option_error(&eval(&["--focal-gamma", "-1"]), "--focal-gamma");
    assert_option_error(&eval(&["--focal-gamma", "nan"]), "--focal-gamma");
    assert_option_error(&eval(&["--focal-alpha", "0.25"]), "--focal-alpha");
    let negative = dir.npy("neg.npy", &[4], &[1.0f32, -1.0, 1.0, 1.0]);
    let run = eval(&["--sample-weights", &negative]);
    assert_option_error(&run, "--sample-weights");
    assert!(run.stderr.contains("[1]"), "{}", run.stderr);
    let nan = dir.npy("nan.npy", &[4], &[1.0f32, 1.0, f32::NAN, 1.0]);
    assert_option_error(&eval(&["--sample-weights", &nan]), "--sample-weights");
    let short = dir.npy("short.npy", &[3], &[1.0f32; 3]);
    let run = eval(&["--sample-weights", &short]);
    assert_option_error(&run, "--sample-weights");
    assert!(run.stderr.contains("(4,)"), "{}", run.stderr);
    let ints = dir.npy("ints.npy", &[4], &[1i64; 4]);
    assert_option_error(&eval(&["--sample-weights", &ints]), "--sample-weights");

    let bce_targets = dir.npy("bt.npy", &[4, 3], &[0.5f32; 12]);
    let bce = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--loss",
            "bce",
            "--logits",
            &logits,
            "--targets",
            &bce_targets,
        ];
        args.extend_from_slice(extra);
        xent(&args)
    };
    assert_option_error(&bce(&["--focal-alpha", "1.5"]), "--focal-alpha");
    assert_option_error(&bce(&["--focal-gamma", "-0.5"]), "--focal-gamma");
    assert_option_error(&bce(&["--label-smoothing", "1.5"]), "--label-smoothing");
    assert_option_error(&bce(&["--sample-weights", &short]), "--sample-weights");
    assert_eq!(
        bce(&["--focal-alpha", "0.25", "--focal-gamma", "2"]).code,
        0
    );
}

#[test]
fn bench_times_focal_loss_next_to_plain_cross_entropy() {
    let dir = Dir::new();
    let json = dir.arg("out.json");
    let run = xent(&[
        "bench",
        "--no-plot",
        "--shape",
        "32x300",
        "--iters",
        "1",
        "--device",
        "cpu",
        "--mode",
        "forward",
        "--focal-gamma",
        "2",
        "--json",
        &json,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for imp in ["xent-cpu", "xent-cpu-focal", "xent-cpu-focal-ls"] {
        let r = records
            .iter()
            .find(|r| r["impl"] == imp)
            .unwrap_or_else(|| panic!("no {imp} in {records:?}"));
        assert!(num(r, "median_ms") > 0.0 && num(r, "loss") > 0.0, "{r}");
    }
    assert!(run.stdout.contains("xent-cpu-focal-ls"), "{}", run.stdout);
    let run = xent(&["bench", "--shape", "8x10", "--focal-gamma", "0"]);
    assert_option_error(&run, "--focal-gamma");
}
