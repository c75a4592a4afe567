//! `--plot PATH`: the latency distribution of every write workload, one line each, as SVG.
//!
//! SVG only: plotters draws text into bitmaps only with a font library or a bundled font, which
//! the default build should not pay for; an SVG names its fonts and the viewer draws them.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::BenchResult;
use super::report::Report;

/// Draws the latency histograms of `report` to `path`.
pub fn latency(path: &Path, report: &Report) -> BenchResult<()> {
    let size = (1200, 700);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw(&SVGBackend::new(path, size).into_drawing_area(), report),
        _ => Err(format!("--plot {}: name an .svg file", path.display()).into()),
    }
}

/// Share of a workload's calls in each power-of-two latency bucket, in percent.
fn series(hist: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    let total = hist.len().max(1) as f64;
    hist.iter_log(1, 2.0)
        .map(|v| {
            (
                v.value_iterated_to().max(1) as f64,
                v.count_since_last_iteration() as f64 * 100.0 / total,
            )
        })
        .collect()
}

fn draw<B: DrawingBackend>(area: &DrawingArea<B, Shift>, report: &Report) -> BenchResult<()>
where
    B::ErrorType: 'static,
{
    let lines: Vec<(&str, Vec<(f64, f64)>)> = report
        .rows
        .iter()
        .filter_map(|r| r.histogram.as_ref().map(|h| (r.workload.as_str(), series(h))))
        .map(|(name, points)| (name, points.into_iter().filter(|p| p.0 >= 1.0).collect()))
        .collect();
    let max_x = lines.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(2.0, f64::max);
    // Start the axis one bucket below the fastest call.
    let min_x = lines
        .iter()
        .flat_map(|(_, s)| s.iter().filter(|p| p.1 > 0.0).map(|p| p.0))
        .fold(max_x, f64::min)
        / 2.0;
    let max_y = lines.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max);
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(area)
        .caption("raftwal: latency of durable appends", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min_x.max(1.0)..max_x * 1.5).log_scale(), 0.0..max_y * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("latency, µs (power-of-two buckets)")
        .y_desc("% of calls")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    area.present().map_err(|e| e.to_string())?;
    Ok(())
}
