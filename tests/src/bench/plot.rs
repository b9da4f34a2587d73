//! The datapath plot: ns/packet against entry count, one line per program,
//! as SVG (plotters' SVG backend: no fonts or system libraries needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// Draw `series` (label, points (entries, ns)) on a log-x chart into `path`.
pub fn ns_per_packet(path: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0f64, f64::max);
    if xmax <= 0.0 {
        return Err(anyhow!("nothing to plot"));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "edge-filter: ns/packet in the kernel vs entries",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0f64..ymax * 1.15)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("IPv4 /32 entries (log scale)")
        .y_desc("ns/packet (median, incl. harness)")
        .x_label_formatter(&|x| {
            if *x >= 1e6 {
                format!("{:.0}M", x / 1e6)
            } else if *x >= 1e3 {
                format!("{:.0}K", x / 1e3)
            } else {
                format!("{x:.0}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLACK, BLUE, RED, GREEN, MAGENTA];
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
