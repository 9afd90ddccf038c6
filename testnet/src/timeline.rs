//! The chaos run's SVG timeline: committed height per node over time, with every fault window
//! shaded in its kind's colour, so a reader sees at a glance where the cluster stalled and how
//! fast it came back.

use std::path::Path;

use plotters::prelude::*;

use crate::error::Error;

/// One node's height samples `(seconds since start, committed height)`.
#[derive(Clone, Debug)]
pub struct Series {
    /// Node name (legend).
    pub name: String,
    /// Samples in time order.
    pub points: Vec<(f64, u64)>,
    /// Whether it is the byzantine node (drawn dashed-looking, thinner).
    pub byzantine: bool,
}

/// A shaded window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Fault kind (colour and label).
    pub kind: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Short label drawn at the window's top.
    pub label: String,
}

fn kind_colour(kind: &str) -> RGBColor {
    match kind {
        "kill" => RGBColor(230, 60, 60),
        "pause" => RGBColor(240, 160, 40),
        "partition" => RGBColor(70, 110, 230),
        "loss" => RGBColor(150, 80, 200),
        "restart-all" => RGBColor(200, 40, 140),
        "equivocation" => RGBColor(120, 120, 120),
        "register" => RGBColor(40, 170, 170),
        "transfer" => RGBColor(190, 170, 40),
        _ => RGBColor(100, 180, 100),
    }
}

const NODE_COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws the timeline to `path` (SVG).
pub fn draw(path: &Path, title: &str, series: &[Series], windows: &[Window]) -> Result<(), Error> {
    let err = |e: String| Error::Process(format!("drawing {}: {e}", path.display()));
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(windows.iter().map(|w| w.end))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.08;
    let root = SVGBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the cluster was up")
        .y_desc("committed height")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for w in windows {
        let c = kind_colour(&w.kind);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(w.start, 0.0), (w.end.max(w.start + 0.05), y_max)],
                c.mix(0.18).filled(),
            )))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Text::new(
                w.label.clone(),
                (w.start, y_max * 0.985),
                ("sans-serif", 11).into_font().color(&c),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = NODE_COLOURS[i % NODE_COLOURS.len()];
        let width = if s.byzantine { 1 } else { 2 };
        let label = if s.byzantine {
            format!("{} (byzantine)", s.name)
        } else {
            s.name.clone()
        };
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|&(t, h)| (t, h as f64)),
                c.stroke_width(width),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_windows_and_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.svg");
        let series = vec![
            Series {
                name: "node0".into(),
                points: (0..50).map(|t| (t as f64, t as u64 * 10)).collect(),
                byzantine: false,
            },
            Series {
                name: "node1".into(),
                points: (0..50).map(|t| (t as f64, t as u64 * 9)).collect(),
                byzantine: true,
            },
        ];
        let windows = vec![Window {
            kind: "partition".into(),
            start: 10.0,
            end: 22.0,
            label: "split {0,1}|{2,3}".into(),
        }];
        draw(&path, "test", &series, &windows).expect("draw");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("node0") && svg.contains("node1 (byzantine)"));
        assert!(svg.contains("split {0,1}|{2,3}"));
        assert!(svg.contains("<polyline"), "the height lines are drawn");
        assert!(svg.contains("<rect"), "the fault window is shaded");
    }
}
