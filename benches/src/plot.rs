//! SVG plots of a sweep (plotters): latency against throughput per committee size, throughput
//! against committee size, and the failover timeline around a leader SIGKILL.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::error::BenchError;
use crate::run::RunReport;

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

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
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "End-to-end latency vs throughput (p50 solid, p99 dashed)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("end-to-end throughput (tx/s)")
        .y_desc("end-to-end latency (ms)")
        .draw()
        .map_err(|x| e(x.to_string()))?;
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
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Best end-to-end throughput by committee size",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("validators")
        .y_desc("end-to-end throughput (tx/s)")
        .draw()
        .map_err(|x| e(x.to_string()))?;
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
    let mut c1 = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, h_min..h_max)
        .map_err(|x| e(x.to_string()))?;
    c1.configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("committed height")
        .draw()
        .map_err(|x| e(x.to_string()))?;
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
    let mut c2 = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|x| e(x.to_string()))?;
    c2.configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("committed tx per second")
        .draw()
        .map_err(|x| e(x.to_string()))?;
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
