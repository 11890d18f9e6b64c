//! What `xent eval` prints: the loss, the metrics and the calibration, as text or JSON.

use super::super::json_number;
use super::shapes::Geometry;
use super::{EvalArgs, Evaluation, LossKind, ReductionArg};

/// The figures `eval` prints.
pub(super) struct Report {
    loss: Option<f64>,
    reduction: ReductionArg,
    loss_kind: LossKind,
    rows: usize,
    classes: usize,
    valid_rows: usize,
    accuracy: Option<f64>,
    mean_entropy: Option<f64>,
    ece: Option<f64>,
    ece_bins: usize,
    /// Rows (BCE: elements) whose loss is NaN or infinite, and the first of them, in the order
    /// of the per-row losses.
    non_finite: (usize, Option<usize>),
    device: String,
    seconds: f64,
    load_seconds: f64,
}

impl Report {
    pub(super) fn new(
        args: &EvalArgs,
        g: &Geometry,
        eval: &Evaluation,
        device: &str,
        load: f64,
    ) -> Self {
        let metrics = eval.output.metrics.as_ref();
        Report {
            loss: eval.output.loss.map(|l| l as f64),
            reduction: args.reduction,
            loss_kind: args.loss,
            rows: g.rows,
            classes: g.classes,
            valid_rows: metrics.map_or(g.rows, |m| m.valid_rows()),
            accuracy: metrics.map(|m| m.accuracy()),
            mean_entropy: metrics.map(|m| m.mean_entropy()),
            // No valid rows: NaN like the other averages (not the empty sum, −0).
            ece: metrics.map(|m| {
                if m.valid_rows() == 0 {
                    f64::NAN
                } else {
                    m.ece(args.ece_bins as usize) + 0.0
                }
            }),
            ece_bins: args.ece_bins as usize,
            non_finite: {
                let losses = eval.output.row_losses.as_deref().unwrap_or_default();
                let bad = |v: &f32| !v.is_finite();
                (
                    losses.iter().filter(|v| bad(v)).count(),
                    losses.iter().position(bad),
                )
            },
            device: device.to_string(),
            seconds: eval.seconds,
            load_seconds: load,
        }
    }

    /// What a per-row loss is a loss of.
    fn unit(&self) -> &'static str {
        match self.loss_kind {
            LossKind::Ce => "rows",
            LossKind::Bce => "elements",
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let opt = |v: Option<f64>| v.map_or(serde_json::Value::Null, json_number);
        serde_json::json!({
            "loss": opt(self.loss),
            "loss_kind": match self.loss_kind { LossKind::Ce => "ce", LossKind::Bce => "bce" },
            "reduction": format!("{:?}", self.reduction).to_lowercase(),
            "rows": self.rows,
            "classes": self.classes,
            "valid_rows": self.valid_rows,
            "accuracy": opt(self.accuracy),
            "mean_entropy": opt(self.mean_entropy),
            "ece": opt(self.ece),
            "ece_bins": self.ece_bins,
            "non_finite": self.non_finite.0,
            "first_non_finite": self.non_finite.1,
            "device": self.device,
            "seconds": self.seconds,
            "load_seconds": self.load_seconds,
        })
    }

    pub(super) fn text(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
        let loss = match self.loss {
            Some(l) => format!("{}", l as f32),
            None => "none (reduction none; per-row losses go to --losses-out)".into(),
        };
        let ece = format!("ECE ({} bins)", self.ece_bins);
        let lines = [
            ("loss", loss),
            ("rows", self.rows.to_string()),
            ("classes", self.classes.to_string()),
            ("valid rows", self.valid_rows.to_string()),
            ("accuracy", num(self.accuracy)),
            ("mean entropy", num(self.mean_entropy)),
            (ece.as_str(), num(self.ece)),
            (
                "non-finite",
                match self.non_finite {
                    (0, _) => "none".to_string(),
                    (n, first) => format!(
                        "{n} {} with a NaN or infinite loss (first: {} {})",
                        self.unit(),
                        self.unit().trim_end_matches('s'),
                        first.unwrap_or_default()
                    ),
                },
            ),
            ("device", self.device.clone()),
            (
                "time",
                format!(
                    "{:.3} ms (loading {:.3} ms)",
                    self.seconds * 1e3,
                    self.load_seconds * 1e3
                ),
            ),
        ];
        lines
            .iter()
            .map(|(k, v)| format!("{k:<14} {v}\n"))
            .collect()
    }
}
