//! The comparison plot: fine-tuning loss curves of every method beside their test accuracies, written as an
//! SVG image (pure Rust, no system fonts needed; any browser shows it).

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One method's results for the plot.
#[derive(Clone, Debug)]
pub struct MethodCurve {
    /// The method's name (legend and bar label).
    pub name: String,
    /// (step, training loss) pairs.
    pub losses: Vec<(usize, f32)>,
    /// Test accuracy in [0, 1].
    pub accuracy: f64,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.display().to_string(),
        msg: format!("cannot draw the plot: {e}"),
    }
}

/// Writes the two-panel comparison plot (loss curves left, accuracy bars right) to `path` (SVG).
pub fn write_comparison_plot(path: &Path, title: &str, methods: &[MethodCurve]) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(650);

    let max_step = methods
        .iter()
        .flat_map(|m| m.losses.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_loss = methods
        .iter()
        .flat_map(|m| m.losses.iter().map(|p| p.1))
        .filter(|l| l.is_finite())
        .fold(0.0f32, f32::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("fine-tuning loss", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0..max_step, 0f32..(max_loss * 1.05).max(1e-3))
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, m) in methods.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                m.losses.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(m.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;

    let n = methods.len().max(1);
    let mut bars = ChartBuilder::on(&right)
        .caption("test accuracy (%)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
        .map_err(|e| plot_err(path, e))?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, m) in methods.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let acc = 100.0 * m.accuracy;
        let x0 = i as f64 + 0.15;
        bars.draw_series(std::iter::once(Rectangle::new(
            [(x0, 0.0), (x0 + 0.7, acc)],
            color.filled(),
        )))
        .map_err(|e| plot_err(path, e))?;
        bars.draw_series(std::iter::once(Text::new(
            format!("{acc:.1}"),
            (x0 + 0.12, acc + 2.5),
            ("sans-serif", 13),
        )))
        .map_err(|e| plot_err(path, e))?;
        bars.draw_series(std::iter::once(Text::new(
            m.name.clone(),
            (x0, -4.0),
            ("sans-serif", 11),
        )))
        .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// One series of a grouped bar chart: a name (legend) and one value per group (`None`: not measured).
#[derive(Clone, Debug)]
pub struct BarSeries {
    /// The legend entry.
    pub name: String,
    /// A value per group, in percent.
    pub values: Vec<Option<f64>>,
}

/// Writes a grouped bar chart (one group per label, one bar per series, values in percent) to `path` (SVG):
/// the VTAB-1k table as a picture.
pub fn write_grouped_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[BarSeries],
) -> Result<()> {
    let width = (120 + 28 * groups.len() * series.len().max(1)).clamp(700, 2400) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| plot_err(path, e))?;
    let g = groups.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(60)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..g as f64, 0f64..105f64)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("top-1 accuracy (%)")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let s = series.len().max(1) as f64;
    let bar = 0.8 / s;
    for (i, one) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let rects: Vec<_> = one
            .values
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| v.map(|v| (gi, v)))
            .map(|(gi, v)| {
                let x0 = gi as f64 + 0.1 + i as f64 * bar;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.95, v)], color.filled())
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| plot_err(path, e))?
            .label(one.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (gi, label) in groups.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (gi as f64 + 0.1, -5.0),
                ("sans-serif", 11),
            )))
            .map_err(|e| plot_err(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
