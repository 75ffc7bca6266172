//! SVG plots of `https load` results (plotters' SVG backend: no font or system library; text
//! is laid out with plotters' built-in estimate and drawn by the SVG viewer's sans-serif font).
//!
//! Per run: throughput and p99 over time, and latency by percentile. `https compare` overlays
//! several runs in the same two plots.

use std::error::Error;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::results::RunResult;

const SIZE: (u32, u32) = (900, 520);
/// Axis labels and legends.
const LABELS: (&str, u32) = ("sans-serif", 14);
/// The percentile axis ends at 99.999 % (x = 5 on the −log10(1 − q) scale).
const TAIL_NINES_MAX: f64 = 5.0;

type Drawn = Result<(), Box<dyn Error>>;

/// A file name from a label: letters and digits, the rest as `-`.
pub fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if s.is_empty() {
        "run".to_owned()
    } else {
        s
    }
}

/// Writes the two plots of one run into `dir`; returns their paths.
pub fn run(dir: &Path, r: &RunResult) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = slug(&r.label);
    let throughput = dir.join(format!("{base}-throughput.svg"));
    let latency = dir.join(format!("{base}-latency.svg"));
    let runs = std::slice::from_ref(r);
    draw_throughput(
        &throughput,
        &format!("{}: throughput and p99 per second", r.label),
        runs,
    )
    .map_err(|e| anyhow!("plot {}: {e}", throughput.display()))?;
    draw_latency(
        &latency,
        &format!("{}: latency by percentile", r.label),
        runs,
    )
    .map_err(|e| anyhow!("plot {}: {e}", latency.display()))?;
    Ok(vec![throughput, latency])
}

/// Writes the overlaid plots of several runs into `dir`; returns their paths.
pub fn compare(dir: &Path, runs: &[RunResult]) -> Result<Vec<PathBuf>> {
    compare_named(dir, "compare", runs)
}

/// The same, as `{name}-throughput.svg` and `{name}-latency.svg`, titled with `name`.
pub fn compare_named(dir: &Path, name: &str, runs: &[RunResult]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let throughput = dir.join(format!("{name}-throughput.svg"));
    let latency = dir.join(format!("{name}-latency.svg"));
    draw_throughput(
        &throughput,
        &format!("{name}: throughput and p99 per second"),
        runs,
    )
    .map_err(|e| anyhow!("plot {}: {e}", throughput.display()))?;
    draw_latency(&latency, &format!("{name}: latency by percentile"), runs)
        .map_err(|e| anyhow!("plot {}: {e}", latency.display()))?;
    Ok(vec![throughput, latency])
}

fn color(i: usize) -> RGBColor {
    // Distinct on white, in a fixed order (the first run is the baseline of a comparison).
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

/// Two panels: ok replies per second over time (top), p99 per second in ms (bottom).
fn draw_throughput(path: &Path, title: &str, runs: &[RunResult]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let seconds = runs
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.second + 1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let rate_max = runs
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.ok))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let p99_max = runs
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.p99_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1e3
        * 1.1;

    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..rate_max)?;
    chart
        .configure_mesh()
        .label_style(LABELS)
        .axis_desc_style(LABELS)
        .x_desc("seconds")
        .y_desc("ok replies/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        // Each second's count is drawn at the second's middle.
        let points = r
            .series
            .iter()
            .map(|s| (s.second as f64 + 0.5, s.ok as f64));
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if !runs.is_empty() {
        chart
            .configure_series_labels()
            .label_font(LABELS)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }

    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..p99_max)?;
    chart
        .configure_mesh()
        .label_style(LABELS)
        .axis_desc_style(LABELS)
        .x_desc("seconds")
        .y_desc("p99 ms")
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let points = r
            .series
            .iter()
            .filter(|s| s.ok + s.errors > 0)
            .map(|s| (s.second as f64 + 0.5, s.p99_us as f64 / 1e3));
        chart.draw_series(LineSeries::new(points, color(i).stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}

/// Latency (ms, log scale) against the percentile (−log10(1 − q): 90 %, 99 %, 99.9 % evenly spaced).
fn draw_latency(path: &Path, title: &str, runs: &[RunResult]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x = |q: f64| {
        if q >= 1.0 {
            TAIL_NINES_MAX
        } else {
            (-(1.0 - q).log10()).min(TAIL_NINES_MAX)
        }
    };
    let values = || {
        runs.iter()
            .flat_map(|r| r.latency_curve.iter().map(|(_, us)| *us as f64 / 1e3))
    };
    let low = values().fold(f64::INFINITY, f64::min).clamp(0.001, 1e6) * 0.8;
    let high = values().fold(0.0, f64::max).max(low * 10.0) * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..TAIL_NINES_MAX, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .label_style(LABELS)
        .axis_desc_style(LABELS)
        .x_desc("percentile")
        .y_desc("latency ms")
        .y_labels(12)
        .y_label_formatter(&|v| format!("{v}"))
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{}%", (p * 1000.0).round() / 1000.0)
        })
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        // The maximum (q = 1) sits at the right edge with the last tail quantile: leave it out.
        let points: Vec<(f64, f64)> = r
            .latency_curve
            .iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|(q, us)| (x(*q), (*us as f64 / 1e3).max(low)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(format!(
                "{} (max {:.2} ms)",
                r.label,
                r.latency_us.max as f64 / 1e3
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(LABELS)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::sample;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("pantera (AF_XDP) ×64"), "pantera-af-xdp-64");
        assert_eq!(slug("///"), "run");
    }

    #[test]
    fn writes_svg_plots_of_a_run_and_of_a_comparison() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let a = sample("nginx", 1000.0, 200);
        let b = sample("pantera", 1500.0, 300);
        let files = run(dir.path(), &a).expect("plots of a run");
        assert_eq!(files.len(), 2);
        for f in &files {
            let svg = std::fs::read_to_string(f).expect("written");
            assert!(
                svg.starts_with("<svg") || svg.starts_with("<?xml"),
                "{}",
                &svg[..svg.len().min(80)]
            );
            assert!(svg.contains("nginx"), "the legend names the run");
        }
        let files = compare(dir.path(), &[a, b]).expect("plots of a comparison");
        let svg = std::fs::read_to_string(&files[1]).expect("written");
        assert!(
            svg.contains("nginx") && svg.contains("pantera"),
            "both runs in the legend"
        );
        assert!(svg.contains("99%"), "the percentile axis is labelled");
    }
}
