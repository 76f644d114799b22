//! The comparison's report: a table (printed and in report.md) and the loss/accuracy plot.

use super::{CompareOptions, RunResult};
use crate::error::Result;
use crate::io::atomic_write;
use crate::report::{write_comparison_plot, MethodCurve};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the comparison measured.
#[derive(Clone, Debug)]
pub struct ComparisonReport {
    /// The device's name.
    pub device: String,
    /// The architecture (version, dims, depths).
    pub model: String,
    /// Source-task (pretraining) training images.
    pub source_images: usize,
    /// Target-task (fine-tuning) training images.
    pub target_images: usize,
    /// Target-task test images.
    pub target_test_images: usize,
    /// The pretraining run, when it ran now (None: the cached checkpoint was reused).
    pub pretrain: Option<RunResult>,
    /// The pretrained checkpoint used.
    pub checkpoint: PathBuf,
    /// The options the comparison ran with.
    pub opts: CompareOptions,
    /// The learning rate each method trained with.
    pub learning_rates: Vec<(String, f32)>,
    /// With `--tune-lr`: each method's validation accuracy per candidate learning rate.
    pub lr_scores: Vec<(String, Vec<(f32, f64)>)>,
    /// (seed, result) for every method and seed.
    pub runs: Vec<(u64, RunResult)>,
}

/// Mean and (sample) standard deviation; the deviation is 0 for one value.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One row of the summary table: a method over all seeds.
#[derive(Clone, Debug)]
pub struct SummaryRow {
    pub method: String,
    pub trainable: usize,
    pub total: usize,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub seconds_mean: f64,
    pub seeds: usize,
}

impl ComparisonReport {
    /// One row per method, in the order the methods ran.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let mut names: Vec<&str> = Vec::new();
        for (_, r) in &self.runs {
            if !names.contains(&r.method.as_str()) {
                names.push(&r.method);
            }
        }
        names
            .into_iter()
            .map(|name| {
                let runs: Vec<&RunResult> = self
                    .runs
                    .iter()
                    .filter(|(_, r)| r.method == name)
                    .map(|(_, r)| r)
                    .collect();
                let accs: Vec<f64> = runs.iter().map(|r| r.eval.accuracy).collect();
                let secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
                let (accuracy_mean, accuracy_std) = mean_std(&accs);
                SummaryRow {
                    method: name.to_string(),
                    trainable: runs[0].trainable,
                    total: runs[0].total,
                    accuracy_mean,
                    accuracy_std,
                    seconds_mean: mean_std(&secs).0,
                    seeds: runs.len(),
                }
            })
            .collect()
    }

    /// The summary as a Markdown table (also what the command prints).
    pub fn table(&self) -> String {
        let rows = self.summary();
        let multi = rows.iter().any(|r| r.seeds > 1);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| method | trainable params | % of model | test accuracy{} | wall time (s) |",
            if multi { " (mean ± std)" } else { "" }
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for r in &rows {
            let acc = if multi {
                format!(
                    "{:.2}% ± {:.2}",
                    100.0 * r.accuracy_mean,
                    100.0 * r.accuracy_std
                )
            } else {
                format!("{:.2}%", 100.0 * r.accuracy_mean)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2}% | {} | {:.1} |",
                r.method,
                r.trainable,
                100.0 * r.trainable as f64 / r.total.max(1) as f64,
                acc,
                r.seconds_mean
            );
        }
        s
    }

    /// An honest one-paragraph reading of the table: which adapter won, by how much, and whether the
    /// difference exceeds the seed-to-seed spread.
    pub fn verdict(&self) -> String {
        let rows = self.summary();
        let find = |m: &str| rows.iter().find(|r| r.method == m);
        match (find("liera"), find("lora")) {
            (Some(lie), Some(lora)) => {
                let diff = 100.0 * (lie.accuracy_mean - lora.accuracy_mean);
                let spread = 100.0 * lie.accuracy_std.max(lora.accuracy_std);
                let seeds = lie.seeds.min(lora.seeds);
                let (word, sign) = if diff > 0.0 {
                    ("beats", "+")
                } else if diff < 0.0 {
                    ("trails", "")
                } else {
                    ("ties", "")
                };
                let significance = if seeds < 2 {
                    "with a single seed, so no spread is known (use --seeds 3 or more)".to_string()
                } else if diff.abs() > 2.0 * spread {
                    format!("more than twice the seed-to-seed spread ({spread:.2} points)")
                } else {
                    format!("within about twice the seed-to-seed spread ({spread:.2} points), so not a clear difference")
                };
                format!(
                    "LieRA (exact) {word} LoRA at equal rank here: {sign}{diff:.2} accuracy points over {seeds} seed(s), {significance}."
                )
            }
            _ => "LieRA and LoRA were not both run.".to_string(),
        }
    }
}

/// Writes report.md and plot.svg into `out`.
pub fn write_report(report: &ComparisonReport, out: &Path) -> Result<()> {
    let o = &report.opts;
    let mut md = String::new();
    let _ = writeln!(md, "# liera comparison\n");
    let _ = writeln!(
        md,
        "Pretrained {} on {} source images, then fine-tuned on {} target images and evaluated on {} \
         held-out target images. Device: {}.\n",
        report.model,
        report.source_images,
        report.target_images,
        report.target_test_images,
        report.device
    );
    match &report.pretrain {
        Some(p) => {
            let _ = writeln!(
                md,
                "Pretraining: {} steps, source test accuracy {:.2}%, {:.1}s ({:.0} img/s). Checkpoint: `{}`.\n",
                o.pretrain.steps,
                100.0 * p.eval.accuracy,
                p.seconds,
                p.images_per_second,
                report.checkpoint.display()
            );
        }
        None if o.base_weights.is_some() => {
            let _ = writeln!(
                md,
                "Pretrained weights: `{}` (given, not trained here).\n",
                report.checkpoint.display()
            );
        }
        None => {
            let _ = writeln!(
                md,
                "Pretraining: reused the cached checkpoint `{}`.\n",
                report.checkpoint.display()
            );
        }
    }
    let _ = writeln!(
        md,
        "Fine-tuning: {} steps of batch {}, AdamW (weight decay {}), cosine schedule with {} warm-up steps, \
         gradient clipping at norm 5. Adapters: rank {}, α = {}, targets `{}`, plus a new classifier \
         trained in full. Seeds: {:?}.\n",
        o.finetune.steps,
        o.finetune.batch_size,
        o.finetune.weight_decay,
        o.finetune.warmup,
        o.adapter.rank,
        o.adapter.alpha,
        o.adapter.targets,
        o.seeds
    );
    if !report.lr_scores.is_empty() {
        let _ = writeln!(
            md,
            "Learning rates were chosen per method by accuracy on a validation split (a fifth of the target \
             training images, stratified; the test set is never used), then each method was trained on the \
             whole training set:\n"
        );
        let _ = writeln!(
            md,
            "| method | validation accuracy per learning rate | chosen |"
        );
        let _ = writeln!(md, "|---|---|---:|");
        for (m, scores) in &report.lr_scores {
            let chosen = report
                .learning_rates
                .iter()
                .find(|(n, _)| n == m)
                .map_or(f32::NAN, |(_, lr)| *lr);
            let cells: Vec<String> = scores
                .iter()
                .map(|(lr, a)| format!("{lr}: {:.1}%", 100.0 * a))
                .collect();
            let _ = writeln!(md, "| {m} | {} | {chosen} |", cells.join(", "));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "{}", report.table());
    let _ = writeln!(md, "{}\n", report.verdict());
    let _ = writeln!(md, "![loss and accuracy](plot.svg)\n");
    let _ = writeln!(md, "## Every run\n");
    let _ = writeln!(
        md,
        "| seed | method | lr | final train loss | test loss | test accuracy | img/s |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|");
    for (seed, r) in &report.runs {
        let lr = report
            .learning_rates
            .iter()
            .find(|(m, _)| *m == r.method)
            .map_or(f32::NAN, |(_, lr)| *lr);
        let _ = writeln!(
            md,
            "| {seed} | {} | {lr} | {:.4} | {:.4} | {:.2}% | {:.0} |",
            r.method,
            r.logs.last().map_or(f32::NAN, |l| l.loss),
            r.eval.loss,
            100.0 * r.eval.accuracy,
            r.images_per_second
        );
    }
    atomic_write(&out.join("report.md"), md.as_bytes())?;
    // The plot shows the first seed's curves and the mean accuracy over seeds.
    let first_seed = report.runs.first().map(|(s, _)| *s);
    let summary = report.summary();
    let curves: Vec<MethodCurve> = report
        .runs
        .iter()
        .filter(|(s, _)| Some(*s) == first_seed)
        .map(|(_, r)| MethodCurve {
            name: r.method.clone(),
            losses: r.logs.iter().map(|l| (l.step as usize, l.loss)).collect(),
            accuracy: summary
                .iter()
                .find(|row| row.method == r.method)
                .map_or(r.eval.accuracy, |row| row.accuracy_mean),
        })
        .collect();
    write_comparison_plot(
        &out.join("plot.svg"),
        &format!("Fine-tuning {} on the target task", report.model),
        &curves,
    )
}
