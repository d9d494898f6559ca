//! The SVG plots, drawn with the `plotters` crate (SVG backend only).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::{percentile, Figure, Metric};

/// Colours of the series, in order.
const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Horizontal bars of throughput (median, M msg/s), each with its min–max as an error bar and
/// its median written beside it; the first row on top.
pub fn throughput_bars(path: &Path, title: &str, rows: &[&Figure]) -> Result<(), String> {
    let n = rows.len().max(1);
    let rate = |r: &Figure| r.metric(Metric::Rate).cloned();
    let max = rows
        .iter()
        .filter_map(|r| rate(r))
        .map(|s| s.max / 1e6)
        .fold(0.1, f64::max);
    let height = 90 + 28 * n as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    // Row i is drawn in segment n-1-i so that the first row is on top.
    let slot = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(360)
        .build_cartesian_2d(0.0..max * 1.2, (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(s) if *s < n => rows
                .get(n - 1 - *s)
                .map(|r| r.label.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("M msg/s (bar: median; whisker: min–max over the runs)")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, r) in rows.iter().enumerate() {
        let Some(s) = rate(r) else { continue };
        let y = slot(i);
        let (med, lo, hi) = (s.median / 1e6, s.min / 1e6, s.max / 1e6);
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (med, SegmentValue::Exact(y + 1)),
            ],
            color(i).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(err)?;
        chart
            .draw_series(std::iter::once(ErrorBar::new_horizontal(
                SegmentValue::CenterOf(y),
                lo,
                med,
                hi,
                BLACK.stroke_width(1),
                8,
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{med:.2}"),
                (hi + max * 0.01, SegmentValue::<usize>::CenterOf(y)),
                TextStyle::from(("sans-serif", 12).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Latency (log scale) against percentile, 0 to 99.9, one line per case (the run with the
/// median p50).
pub fn latency_lines(path: &Path, rows: &[&Figure]) -> Result<(), String> {
    let lo = rows
        .iter()
        .filter_map(|r| r.samples.first())
        .copied()
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let hi = rows
        .iter()
        .map(|r| percentile(&r.samples, 99.9))
        .max()
        .unwrap_or(2)
        .max(2) as f64;
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
    );
    let root = SVGBackend::new(path, (960, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round-trip latency distribution (percentile 0–99.9, log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..100.0, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("round trip")
        .y_label_formatter(&|ns: &f64| match *ns {
            v if v < 1e3 => format!("{v:.0} ns"),
            v if v < 1e6 => format!("{:.0} us", v / 1e3),
            v => format!("{:.0} ms", v / 1e6),
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    const STEPS: usize = 400;
    for (i, r) in rows.iter().enumerate() {
        if r.samples.is_empty() {
            continue;
        }
        let points = (0..=STEPS).map(|k| {
            let p = 99.9 * k as f64 / STEPS as f64;
            (p, (percentile(&r.samples, p) as f64).max(lo))
        });
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(err)?
            .label(r.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
