//! What `xent bench` shows: the table on stdout and the SVG plot.

use super::{Record, Shape};
use std::fmt::Write as _;

/// How many times faster than the naive implementation a record ran (the naive median over
/// its median, same shape, dtype and mode); `None` for the probes, the naive runs themselves,
/// focal runs (the naive one is plain cross-entropy), and where the naive one was not run.
pub fn speedup_over_naive(r: &Record, records: &[Record]) -> Option<f64> {
    if r.mode == "probe" || r.implementation == NAIVE || r.implementation.contains("focal") {
        return None;
    }
    records
        .iter()
        .find(|n| {
            n.implementation == NAIVE
                && (n.rows, n.classes, n.spatial) == (r.rows, r.classes, r.spatial)
                && (&n.dtype, &n.mode) == (&r.dtype, &r.mode)
        })
        .map(|n| n.median_ms / r.median_ms)
}

/// The naive implementation's name in the records.
const NAIVE: &str = "naive-cpu";

/// The table on stdout: one line per measurement, probes first for each shape.
pub fn table(records: &[Record]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<5} {:<16} {:<17} {:<10} {:>10} {:>10} {:>8} {:>6} {:>8} {:>10}",
        "shape",
        "dtype",
        "mode",
        "impl",
        "device",
        "median ms",
        "min ms",
        "GB/s",
        "% bw",
        "vs naive",
        "trip ms"
    );
    for r in records {
        // "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)" → "llvmpipe"; the header has it all.
        let device: String = r
            .device
            .split(" (")
            .next()
            .unwrap_or_default()
            .chars()
            .take(10)
            .collect();
        let fraction = r
            .bandwidth_fraction
            .map_or("-".into(), |f| format!("{:.0}%", f * 100.0));
        let speedup = speedup_over_naive(r, records).map_or("-".into(), |x| format!("{x:.1}x"));
        let _ = writeln!(
            out,
            "{:<14} {:<5} {:<16} {:<17} {:<10} {:>10.3} {:>10.3} {:>8.2} {:>6} {:>8} {:>10}",
            Shape {
                rows: r.rows,
                classes: r.classes,
                spatial: r.spatial,
            }
            .to_string(),
            r.dtype,
            r.mode,
            r.implementation,
            device,
            r.median_ms,
            r.min_ms,
            r.gbps,
            fraction,
            speedup,
            r.round_trip_ms.map_or("-".into(), |t| format!("{t:.3}"))
        );
    }
    out
}

/// `v` with two significant digits and no trailing zeros: 0.05, 0.1, 2, 30, 1200.
fn significant(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return format!("{v}");
    }
    let decimals = (1 - v.log10().floor() as i32).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The marker of a plot series.
#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Cross,
    Square,
}

impl Marker {
    /// The legend's copy of the marker, at `at` (backend pixels).
    fn legend<DB: plotters::prelude::DrawingBackend>(
        self,
        at: (i32, i32),
        style: plotters::style::ShapeStyle,
    ) -> plotters::element::DynElement<'static, DB, (i32, i32)> {
        use plotters::prelude::*;
        let (x, y) = at;
        match self {
            Marker::Circle => Circle::new(at, 5, style).into_dyn(),
            Marker::Triangle => TriangleMarker::new(at, 6, style).into_dyn(),
            Marker::Cross => Cross::new(at, 5, style.stroke_width(2)).into_dyn(),
            Marker::Square => Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], style).into_dyn(),
        }
    }
}

/// One series of a plot panel: an implementation (or a probe) on the panel's device, GB/s per
/// shape index.
struct Series {
    name: String,
    probe: bool,
    points: Vec<(usize, f64)>,
}

/// Draws GB/s per shape: one panel per (device, mode, dtype) measured, each holding that
/// device's implementations and its two bandwidth probes. Shapes are categories, so each
/// series is a set of markers (no lines between shapes), on a logarithmic axis (the
/// implementations span orders of magnitude); every series has its own colour and marker, and
/// the legend shows them as drawn (probes as hollow squares and diamonds).
pub fn plot(path: &str, records: &[Record], shapes: &[Shape]) -> Result<(), String> {
    use plotters::prelude::*;

    // "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan) [software …]" → "gpu: llvmpipe (software)".
    let device_of = |r: &Record| {
        if r.device == "cpu" {
            return "cpu".to_string();
        }
        let short = r.device.split(" (").next().unwrap_or_default();
        let software = if r.device.contains("[software") {
            " (software)"
        } else {
            ""
        };
        format!("gpu: {short}{software}")
    };
    let mut panels: Vec<(String, String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.mode != "probe") {
        let key = (device_of(r), r.mode.clone(), r.dtype.clone());
        if !panels.contains(&key) {
            panels.push(key);
        }
    }
    if panels.is_empty() {
        return Err("nothing was measured".into());
    }
    let index = |r: &Record| {
        shapes
            .iter()
            .position(|s| s.rows == r.rows && s.classes == r.classes && s.spatial == r.spatial)
    };
    let root = SVGBackend::new(path, (1000, 400 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels.len(), 1));
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    for (area, (device, mode, dtype)) in areas.iter().zip(&panels) {
        let mut series: Vec<Series> = Vec::new();
        for r in records.iter().filter(|r| {
            &device_of(r) == device && &r.dtype == dtype && (&r.mode == mode || r.mode == "probe")
        }) {
            let (Some(i), true) = (index(r), r.gbps > 0.0 && r.gbps.is_finite()) else {
                continue;
            };
            match series.iter_mut().find(|l| l.name == r.implementation) {
                Some(line) => line.points.push((i, r.gbps)),
                None => series.push(Series {
                    name: r.implementation.clone(),
                    probe: r.mode == "probe",
                    points: vec![(i, r.gbps)],
                }),
            }
        }
        let values = || series.iter().flat_map(|l| l.points.iter().map(|&(_, g)| g));
        let top = values().fold(1e-3f64, f64::max) * 2.0;
        let bottom = values().fold(f64::INFINITY, f64::min).min(top / 4.0) / 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{device}: {mode}, {dtype} (GB/s moved, log scale; higher is better)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // One more category's width on the right holds the legend clear of the points.
            .build_cartesian_2d(-0.5..shapes.len() as f64 + 0.7, (bottom..top).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("rows x classes")
            .y_desc("GB/s")
            // Shape i sits at x = i: asking for two more labels than shapes gives ticks one apart
            // on the integers (the one past the last shape, over the legend, stays blank).
            .x_labels(shapes.len() + 2)
            .y_labels(8)
            .y_label_formatter(&|v| significant(*v))
            .light_line_style(WHITE.mix(0.0))
            .x_label_formatter(&|x| {
                let i = x.round();
                match shapes.get(i as usize) {
                    Some(s) if (x - i).abs() < 1e-6 && i >= 0.0 => s.to_string(),
                    _ => String::new(),
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let mut measured = 0;
        for (k, line) in series.iter().enumerate() {
            let color = palette[k % palette.len()];
            // Measurements: filled circles, triangles, crosses in turn; probes: hollow squares.
            let (shape, style) = if line.probe {
                (Marker::Square, ShapeStyle::from(&color).stroke_width(2))
            } else {
                measured += 1;
                let shape = [Marker::Circle, Marker::Triangle, Marker::Cross][(measured - 1) % 3];
                (shape, ShapeStyle::from(&color).filled())
            };
            let points: Vec<(f64, f64)> = line.points.iter().map(|&(i, g)| (i as f64, g)).collect();
            let drawn = match shape {
                Marker::Circle => {
                    chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, style)))
                }
                Marker::Triangle => {
                    chart.draw_series(points.iter().map(|&p| TriangleMarker::new(p, 6, style)))
                }
                Marker::Cross => chart.draw_series(
                    points
                        .iter()
                        .map(|&p| Cross::new(p, 5, style.stroke_width(2))),
                ),
                Marker::Square => chart.draw_series(
                    points
                        .iter()
                        .map(|&p| EmptyElement::at(p) + Rectangle::new([(-5, -5), (5, 5)], style)),
                ),
            }
            .map_err(|e| e.to_string())?;
            drawn
                .label(line.name.as_str())
                .legend(move |(x, y)| shape.legend((x + 8, y), style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(implementation: &str, dtype: &str, mode: &str, median_ms: f64) -> Record {
        Record {
            implementation: implementation.into(),
            device: "cpu".into(),
            rows: 8,
            classes: 10,
            spatial: 0,
            dtype: dtype.into(),
            mode: mode.into(),
            median_ms,
            min_ms: median_ms,
            gbps: 1.0,
            bytes: 320,
            bandwidth_fraction: None,
            loss: None,
            iters: 1,
            round_trip_ms: None,
            clock: None,
        }
    }

    #[test]
    fn speedup_over_the_naive_run_of_the_same_shape_dtype_and_mode() {
        let records = [
            record("read-bandwidth", "f32", "probe", 0.5),
            record("xent-cpu", "f32", "forward", 2.0),
            record("naive-cpu", "f32", "forward", 9.0),
            record("xent-cpu", "f32", "forward-backward", 4.0),
            record("naive-cpu", "f32", "forward-backward", 10.0),
            record("xent-cpu", "bf16", "forward", 3.0),
            record("xent-cpu-focal", "f32", "forward", 30.0),
        ];
        let speedup = |i: usize| speedup_over_naive(&records[i], &records);
        assert_eq!(speedup(0), None);
        assert_eq!(speedup(1), Some(4.5));
        assert_eq!(speedup(2), None);
        assert_eq!(speedup(3), Some(2.5));
        // No naive bf16 run; focal is another loss.
        assert_eq!(speedup(5), None);
        assert_eq!(speedup(6), None);
        let text = table(&records);
        assert!(text.lines().next().unwrap().contains("vs naive"));
        assert!(text.lines().nth(2).unwrap().contains("4.5x"));
    }
}
