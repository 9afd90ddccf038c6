//! SVG plots of a sweep (plotters): latency against throughput per committee size, throughput
//! against committee size, and the failover timeline around a leader SIGKILL.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::error::BenchError;
use crate::run::RunReport;

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart on `area` with the plots' margins, the given ranges and axis labels, mesh drawn.
fn axes<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: Option<(&str, u32)>,
    ranges: (std::ops::Range<f64>, std::ops::Range<f64>),
    labels: (&str, &str),
    x_label_area: u32,
    e: &impl Fn(String) -> BenchError,
) -> Result<Chart<'a, 'b>, BenchError> {
    let mut builder = ChartBuilder::on(area);
    if let Some((text, size)) = caption {
        builder.caption(text, ("sans-serif", size));
    }
    let mut chart = builder
        .margin(15)
        .x_label_area_size(x_label_area)
        .y_label_area_size(70)
        .build_cartesian_2d(ranges.0, ranges.1)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    Ok(chart)
}

fn err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |msg| BenchError::Plot {
        path: path.display().to_string(),
        msg,
    }
}

/// End-to-end latency (p50, with p99 dashed) against end-to-end throughput, one line per
/// committee size.
pub fn latency_vs_throughput(runs: &[RunReport], path: &Path) -> Result<(), BenchError> {
    let e = err(path);
    let mut by_n: BTreeMap<usize, Vec<&RunReport>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.dead == 0 && r.failover.is_none()) {
        by_n.entry(r.nodes).or_default().push(r);
    }
    let max_x = runs.iter().map(|r| r.end_to_end_tps).fold(1.0, f64::max) * 1.1;
    let max_y = runs
        .iter()
        .map(|r| r.e2e_latency_ms_p99)
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = axes(
        &root,
        Some((
            "End-to-end latency vs throughput (p50 solid, p99 dashed)",
            22,
        )),
        (0f64..max_x, 0f64..max_y),
        ("end-to-end throughput (tx/s)", "end-to-end latency (ms)"),
        45,
        &e,
    )?;
    for (k, (n, rs)) in by_n.iter_mut().enumerate() {
        rs.sort_by(|a, b| a.input_rate.total_cmp(&b.input_rate));
        let c = COLORS[k % COLORS.len()];
        let p50: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.end_to_end_tps, r.e2e_latency_ms_p50))
            .collect();
        let p99: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.end_to_end_tps, r.e2e_latency_ms_p99))
            .collect();
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(format!("n = {n}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(p50.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(x.to_string()))?;
        chart
            .draw_series(DashedLineSeries::new(p99, 6, 4, c.stroke_width(1)))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// The best end-to-end throughput of each committee size.
pub fn throughput_vs_committee(runs: &[RunReport], path: &Path) -> Result<(), BenchError> {
    let e = err(path);
    let mut best: BTreeMap<usize, f64> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.dead == 0 && r.failover.is_none()) {
        let b = best.entry(r.nodes).or_default();
        *b = b.max(r.end_to_end_tps);
    }
    let max_x = best.keys().copied().max().unwrap_or(4) as f64 + 2.0;
    let max_y = best.values().copied().fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = axes(
        &root,
        Some(("Best end-to-end throughput by committee size", 22)),
        (0f64..max_x, 0f64..max_y),
        ("validators", "end-to-end throughput (tx/s)"),
        45,
        &e,
    )?;
    let pts: Vec<(f64, f64)> = best.iter().map(|(&n, &t)| (n as f64, t)).collect();
    chart
        .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(pts.iter().map(|&(x, y)| {
            Text::new(
                format!("{y:.0}"),
                (x + 0.15, y + max_y * 0.02),
                ("sans-serif", 14),
            )
        }))
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Committed height and TPS per second around the leader kill of `run`.
pub fn failover_timeline(run: &RunReport, path: &Path) -> Result<(), BenchError> {
    let e = err(path);
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (top, bottom) = root.split_vertically(350);
    let t_max = run.timeline.last().map(|p| p.t_s + 1.0).unwrap_or(1.0);
    let kill = run.failover.as_ref().map(|f| f.kill_at_s);
    let title = match &run.failover {
        Some(f) => format!(
            "n = {}: SIGKILL of leader {} at {:.1} s (longest commit gap {:.0} ms)",
            run.nodes, f.node, f.kill_at_s, f.max_commit_gap_ms
        ),
        None => format!("n = {}: timeline", run.nodes),
    };
    let h_min = run.timeline.first().map(|p| p.height).unwrap_or(0) as f64;
    let h_max = run.timeline.iter().map(|p| p.height).max().unwrap_or(1) as f64 + 1.0;
    let mut c1 = axes(
        &top,
        Some((&title, 20)),
        (0f64..t_max, h_min..h_max),
        ("seconds since the load started", "committed height"),
        35,
        &e,
    )?;
    c1.draw_series(LineSeries::new(
        run.timeline.iter().map(|p| (p.t_s + 1.0, p.height as f64)),
        BLUE.stroke_width(2),
    ))
    .map_err(|x| e(x.to_string()))?;
    if let Some(k) = kill {
        c1.draw_series(LineSeries::new(
            vec![(k, h_min), (k, h_max)],
            RED.stroke_width(2),
        ))
        .map_err(|x| e(x.to_string()))?;
    }
    let y_max = run.timeline.iter().map(|p| p.tps).fold(1.0, f64::max) * 1.15;
    let mut c2 = axes(
        &bottom,
        None,
        (0f64..t_max, 0f64..y_max),
        ("seconds since the load started", "committed tx per second"),
        35,
        &e,
    )?;
    c2.draw_series(
        run.timeline
            .iter()
            .map(|p| Rectangle::new([(p.t_s, 0.0), (p.t_s + 0.9, p.tps)], GREEN.filled())),
    )
    .map_err(|x| e(x.to_string()))?;
    if let Some(k) = kill {
        c2.draw_series(LineSeries::new(
            vec![(k, 0.0), (k, y_max)],
            RED.stroke_width(2),
        ))
        .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}
