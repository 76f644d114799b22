//! Reports of a comparison run: the plot image.

mod plot;

pub use plot::{write_comparison_plot, write_grouped_bars, BarSeries, MethodCurve};
