//! The evaluation's PNG: for each task, its ROC curve and its reliability
//! diagram, one line per model (all view types together).

use std::path::Path;

use plotters::prelude::*;

use mmoe::{Error, ErrorKind, Result};

/// One model's curves for one task.
pub struct Curves {
    pub roc: Vec<(f64, f64)>,
    pub calibration: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Argument,
        format!("{}: cannot draw the plot: {e}", path.display()),
    )
}

/// Draws `curves[model][task]` for `tasks`, models named by `models`.
pub fn draw(
    path: &Path,
    tasks: &[String],
    models: &[String],
    curves: &[Vec<Curves>],
) -> Result<()> {
    let height = 360 * tasks.len().max(1) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let rows = root.split_evenly((tasks.len().max(1), 2));
    for (t, task) in tasks.iter().enumerate() {
        for (panel, area) in rows[2 * t..2 * t + 2].iter().enumerate() {
            let (title, x_label, y_label) = if panel == 0 {
                (
                    format!("{task}: ROC"),
                    "false positive rate",
                    "true positive rate",
                )
            } else {
                (
                    format!("{task}: calibration"),
                    "mean predicted",
                    "observed rate",
                )
            };
            // Reliability diagrams of rare events live near zero: zoom there.
            let top = if panel == 0 {
                1.0
            } else {
                curves
                    .iter()
                    .flat_map(|m| m[t].calibration.iter().flat_map(|&(p, y)| [p, y]))
                    .fold(0.01f64, f64::max)
                    * 1.05
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(0.0..top, 0.0..top)
                .map_err(|e| plot_error(path, e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| plot_error(path, e))?;
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (top, top)], &BLACK.mix(0.3)))
                .map_err(|e| plot_error(path, e))?;
            for (m, name) in models.iter().enumerate() {
                let color = COLORS[m % COLORS.len()];
                let points = if panel == 0 {
                    &curves[m][t].roc
                } else {
                    &curves[m][t].calibration
                };
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| plot_error(path, e))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(if panel == 0 {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperLeft
                })
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
    }
    root.present().map_err(|e| plot_error(path, e))
}
