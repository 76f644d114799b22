//! The trainable-parameter report: one row per adapted layer (rank, r·(rows + cols) trainable scalars, and
//! for LieRA the number of zero entries of W, which W ⊙ exp(ΔW) can never move) and one row per fully trained
//! parameter, with totals.

use super::adapter::{adapter_method_name, matrix_view, Adapter};
use crate::error::Result;
use crate::nn::Module;
use crate::shape::Shape;
use std::fmt;

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Module path (adapted layer) or parameter path (fully trained parameter).
    pub path: String,
    /// `lora`, `liera`, `liera_first_order`, or `full` for a fully trained parameter.
    pub method: String,
    /// Shape of the kernel or parameter.
    pub shape: Shape,
    /// Rank (0 for `full`).
    pub rank: usize,
    /// Trainable scalars of this row.
    pub trainable: usize,
    /// LieRA kinds only: entries of W equal to 0.
    pub zero_entries: Option<usize>,
}

/// Trainable parameters per layer and in total.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainableReport {
    /// One row per adapted layer and fully trained parameter.
    pub rows: Vec<LayerReport>,
    /// Σ trainable over rows.
    pub trainable: usize,
    /// Base parameters plus adapter factors.
    pub total: usize,
}

/// Builds the report (reads back adapted LieRA kernels to count zeros).
pub fn trainable_report(model: &dyn Module) -> Result<TrainableReport> {
    let mut rows = Vec::new();
    let mut adapter_params = 0;
    let mut err = Ok(());
    model.visit_adaptable("", &mut |path, layer| {
        let Some(a) = Adapter::of(layer) else { return };
        adapter_params += a.num_parameters();
        let w = layer.weight().tensor();
        let zero_entries = match a.kind().is_lie() {
            false => None,
            true => match Adapter::zero_entries(w) {
                Ok(z) => Some(z),
                Err(e) => {
                    err = Err(e);
                    None
                }
            },
        };
        let trainable = a.num_trainable();
        rows.push(LayerReport {
            path: path.to_string(),
            method: adapter_method_name(a.kind(), a.delta_kind()).to_string(),
            shape: w.shape().clone(),
            rank: a.rank(),
            trainable,
            zero_entries,
        });
    });
    err?;
    model.visit("", &mut |path, p| {
        if p.is_trainable() {
            rows.push(LayerReport {
                path: path.to_string(),
                method: "full".into(),
                shape: p.shape().clone(),
                rank: 0,
                trainable: p.numel(),
                zero_entries: None,
            });
        }
    });
    let trainable = rows.iter().map(|r| r.trainable).sum();
    Ok(TrainableReport {
        rows,
        trainable,
        total: model.num_parameters() + adapter_params,
    })
}

impl fmt::Display for TrainableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.path.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:<17}  {:<16}  {:>4}  {:>10}  {:>6}",
            "layer", "method", "matrix / shape", "rank", "trainable", "zeros"
        )?;
        for r in &self.rows {
            let (rows, cols) = matrix_view(&r.shape);
            let shape = if r.rank > 0 {
                format!("{rows}×{cols}")
            } else {
                r.shape.to_string()
            };
            let zeros = r.zero_entries.map_or("-".to_string(), |z| z.to_string());
            writeln!(
                f,
                "{:<width$}  {:<17}  {:<16}  {:>4}  {:>10}  {:>6}",
                r.path, r.method, shape, r.rank, r.trainable, zeros
            )?;
        }
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        write!(
            f,
            "trainable {} of {} parameters ({pct:.3}%)",
            self.trainable, self.total
        )
    }
}
