//! The comparison's report: a table (printed and in report.md) with each method's paired difference to
//! LoRA and its 95% confidence interval, the learning rates and their tuning, and the loss/accuracy plot.

use super::compare::HeadLrSource;
use super::tune::{LadderSearch, MAX_LADDER_EXTENSIONS};
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
    /// The learning rate each method trained with (for the head, see `head_lr`).
    pub learning_rates: Vec<(String, f32)>,
    /// The classifier's learning rate, the same for every method.
    pub head_lr: f32,
    /// Where `head_lr` came from.
    pub head_lr_source: HeadLrSource,
    /// The search that chose `head_lr` on the linear probe (when it was tuned).
    pub head_tuning: Option<LadderSearch>,
    /// With tuning: each method's search (every rung's validation scores, and where it ended).
    pub tuning: Vec<(String, LadderSearch)>,
    /// The seeds each candidate rate was scored over (empty: nothing was tuned).
    pub tune_seeds: Vec<u64>,
    /// Steps of each tuning run.
    pub tune_steps: u64,
    /// Validation images per tuning seed.
    pub tune_val_images: usize,
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

/// The 0.975 quantile of Student's t distribution with `df` degrees of freedom (the half-width factor of a
/// two-sided 95% interval); NaN for `df` = 0.
///
/// For 1 to 30 degrees of freedom the values are the standard table's (e.g. the NIST/SEMATECH e-Handbook of
/// Statistical Methods, §1.3.6.7.2, "Critical values of the Student's t distribution", column 0.975), to
/// three decimals; a unit test recomputes each by integrating the t density. Above 30 the Cornish–Fisher
/// expansion of Abramowitz & Stegun 26.7.5 around the normal quantile 1.959964 is used (error below 10⁻⁴
/// there).
pub fn t_quantile_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, // 1–10
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, // 11–20
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042, // 21–30
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let z = 1.959_963_984_540_054_f64;
            let n = df as f64;
            let (z2, z3) = (z * z, z * z * z);
            let (z5, z7, z9) = (z3 * z2, z3 * z2 * z2, z3 * z3 * z3);
            z + (z3 + z) / (4.0 * n)
                + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * n * n)
                + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * n * n * n)
                + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z)
                    / (92160.0 * n * n * n * n)
        }
    }
}

/// The mean of paired differences and its two-sided 95% confidence interval from Student's t with n − 1
/// degrees of freedom (mean ± t·s/√n); no interval for fewer than two differences.
pub fn paired_difference(diffs: &[f64]) -> (f64, Option<(f64, f64)>) {
    let (mean, std) = mean_std(diffs);
    if diffs.len() < 2 {
        return (mean, None);
    }
    let half = t_quantile_975(diffs.len() - 1) * std / (diffs.len() as f64).sqrt();
    (mean, Some((mean - half, mean + half)))
}

/// A method's accuracy minus LoRA's, seed by seed, in accuracy points.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedDifference {
    /// The method.
    pub method: String,
    /// The seeds both were run with, in order.
    pub seeds: Vec<u64>,
    /// Method − LoRA per seed, in points.
    pub diffs: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// The 95% confidence interval of the mean (None with one seed).
    pub ci: Option<(f64, f64)>,
}

/// What a paired difference says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// One seed: no interval.
    NoInterval,
    /// The interval contains 0.
    NoSignificantDifference,
    /// The whole interval is above 0.
    Ahead,
    /// The whole interval is below 0.
    Behind,
}

impl PairedDifference {
    /// From per-seed differences (points).
    pub fn new(method: &str, seeds: Vec<u64>, diffs: Vec<f64>) -> PairedDifference {
        let (mean, ci) = paired_difference(&diffs);
        PairedDifference {
            method: method.to_string(),
            seeds,
            diffs,
            mean,
            ci,
        }
    }
    /// The rule: no interval with one seed; "no significant difference" when the interval contains 0.
    pub fn reading(&self) -> Reading {
        match self.ci {
            None => Reading::NoInterval,
            Some((lo, _)) if lo > 0.0 => Reading::Ahead,
            Some((_, hi)) if hi < 0.0 => Reading::Behind,
            Some(_) => Reading::NoSignificantDifference,
        }
    }
    /// `+0.37 [−0.52, +1.26]`, or `+0.45 (1 seed)`.
    pub fn cell(&self) -> String {
        match self.ci {
            Some((lo, hi)) => format!("{:+.2} [{lo:+.2}, {hi:+.2}]", self.mean),
            None => format!("{:+.2} (1 seed, no CI)", self.mean),
        }
    }
    /// One sentence that follows the rule.
    pub fn sentence(&self) -> String {
        let n = self.diffs.len();
        let m = &self.method;
        match (self.reading(), self.ci) {
            (Reading::NoInterval, _) | (_, None) => format!(
                "{m} − lora: {:+.2} points on one seed; no interval can be given (use --seeds 3 or more).",
                self.mean
            ),
            (Reading::NoSignificantDifference, Some((lo, hi))) => format!(
                "{m} − lora: {:+.2} points (95% CI {lo:+.2} to {hi:+.2}, {n} paired seeds): no significant \
                 difference.",
                self.mean
            ),
            (Reading::Ahead, Some((lo, hi))) => format!(
                "{m} is ahead of lora by {:.2} points (95% CI {lo:+.2} to {hi:+.2}, {n} paired seeds).",
                self.mean
            ),
            (Reading::Behind, Some((lo, hi))) => format!(
                "{m} is behind lora by {:.2} points (95% CI {lo:+.2} to {hi:+.2}, {n} paired seeds).",
                -self.mean
            ),
        }
    }
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
    /// The method names in the order they ran.
    fn method_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (_, r) in &self.runs {
            if !names.contains(&r.method.as_str()) {
                names.push(&r.method);
            }
        }
        names
    }

    /// One row per method, in the order the methods ran.
    pub fn summary(&self) -> Vec<SummaryRow> {
        self.method_names()
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

    /// Every method other than LoRA against LoRA, paired by seed over the seeds both ran (None: LoRA was
    /// not run).
    pub fn paired_vs_lora(&self) -> Option<Vec<PairedDifference>> {
        let accuracy = |method: &str, seed: u64| {
            self.runs
                .iter()
                .find(|(s, r)| *s == seed && r.method == method)
                .map(|(_, r)| r.eval.accuracy)
        };
        let lora_seeds: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, r)| r.method == "lora")
            .map(|(s, _)| *s)
            .collect();
        if lora_seeds.is_empty() {
            return None;
        }
        Some(
            self.method_names()
                .into_iter()
                .filter(|m| *m != "lora")
                .filter_map(|m| {
                    let (seeds, diffs): (Vec<u64>, Vec<f64>) = lora_seeds
                        .iter()
                        .filter_map(|&s| {
                            Some((s, 100.0 * (accuracy(m, s)? - accuracy("lora", s)?)))
                        })
                        .unzip();
                    (!seeds.is_empty()).then(|| PairedDifference::new(m, seeds, diffs))
                })
                .collect(),
        )
    }

    /// The summary as a Markdown table, with each method's paired difference to LoRA (mean and 95%
    /// confidence interval, in points); also what the command prints.
    pub fn table(&self) -> String {
        let rows = self.summary();
        let paired = self.paired_vs_lora();
        let multi = rows.iter().any(|r| r.seeds > 1);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| method | trainable params | % of model | test accuracy{} | Δ vs LoRA (mean, 95% CI) | wall time (s) |",
            if multi { " (mean ± std)" } else { "" }
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
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
            let delta = match &paired {
                _ if r.method == "lora" => "(reference)".to_string(),
                None => "–".to_string(),
                Some(p) => p
                    .iter()
                    .find(|d| d.method == r.method)
                    .map_or("–".to_string(), PairedDifference::cell),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2}% | {} | {} | {:.1} |",
                r.method,
                r.trainable,
                100.0 * r.trainable as f64 / r.total.max(1) as f64,
                acc,
                delta,
                r.seconds_mean
            );
        }
        s
    }

    /// The searches that ended with the best rate at a limit of the ladder: (what, why).
    pub fn limited_searches(&self) -> Vec<(String, String)> {
        self.head_tuning
            .iter()
            .map(|s| ("head (linear probe)".to_string(), s))
            .chain(self.tuning.iter().map(|(m, s)| (m.clone(), s)))
            .filter(|(_, s)| s.end.at_limit())
            .map(|(m, s)| (m, format!("{} ({})", s.best, s.end_text())))
            .collect()
    }

    /// The reading of the table: one sentence per method against LoRA, by the paired 95% interval (no
    /// significant difference when it contains 0), and a line for every learning rate that may be
    /// under-tuned.
    pub fn verdict(&self) -> String {
        let mut lines: Vec<String> = match self.paired_vs_lora() {
            None => vec!["LoRA was not run, so there are no paired differences against it.".into()],
            Some(p) => p.iter().map(PairedDifference::sentence).collect(),
        };
        for (m, why) in self.limited_searches() {
            lines.push(format!("{m}: the learning rate chosen was {why}."));
        }
        lines.join("\n")
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
    let _ = writeln!(
        md,
        "Learning rates: the new classifier (`head.fc`) trains at {} in every method ({}); each method's \
         own rate below applies to the rest of its trainable parameters (for the linear probe, the head is \
         all there is).\n",
        report.head_lr,
        report.head_lr_source.describe()
    );
    let _ = writeln!(md, "| method | learning rate | head learning rate |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (m, lr) in &report.learning_rates {
        let _ = writeln!(md, "| {m} | {lr} | {} |", report.head_lr);
    }
    let _ = writeln!(md);
    if !report.tune_seeds.is_empty() {
        let images = report.tune_val_images * report.tune_seeds.len();
        // The binomial standard error of an accuracy near 80% over that many images.
        let se = 100.0 * (0.8f64 * 0.2 / images.max(1) as f64).sqrt();
        let _ = writeln!(
            md,
            "Tuning (the test set is never used): first the head's rate on the linear probe, then each \
             method's with the head at that rate. Each candidate rate is scored by the mean validation \
             accuracy over {} seeds {:?}; each seed holds out its own stratified fifth of the training \
             images ({} validation images) and trains on the rest with its own seed, for {} steps (the \
             final runs: {}, warm-up scaled alike{}). Each ladder starts at three rungs and widens by its end \
             step's ratio, up to {} rungs per side, while the best rate is at its top or bottom (a diverged \
             run scores 0). Over {} validation images an accuracy near 80% has a standard error of about \
             {se:.1} points, so rungs closer than about {:.0} points are not told apart reliably.\n",
            report.tune_seeds.len(),
            report.tune_seeds,
            report.tune_val_images,
            report.tune_steps,
            o.finetune.steps,
            if report.tune_steps < o.finetune.steps {
                "; the best rate of a shorter run can differ from the longer run's, `--tune-steps` sets \
                 their length"
            } else {
                ""
            },
            MAX_LADDER_EXTENSIONS,
            images,
            2.0 * se
        );
        let _ = writeln!(
            md,
            "| tuned | validation accuracy per learning rate: mean (per seed); † added by widening | chosen | search ended |"
        );
        let _ = writeln!(md, "|---|---|---:|---|");
        let searches = report
            .head_tuning
            .iter()
            .map(|s| ("head (linear probe)", s))
            .chain(report.tuning.iter().map(|(m, s)| (m.as_str(), s)));
        for (m, search) in searches {
            let cells: Vec<String> = search
                .rungs
                .iter()
                .map(|r| {
                    let per_seed: Vec<String> = r
                        .scores
                        .iter()
                        .map(|s| s.map_or("diverged".into(), |a| format!("{:.1}", 100.0 * a)))
                        .collect();
                    let text = format!(
                        "{}{}: {:.1}% ({})",
                        r.lr,
                        if r.added { "†" } else { "" },
                        100.0 * r.mean(),
                        per_seed.join(", ")
                    );
                    if r.lr == search.best {
                        format!("**{text}**")
                    } else {
                        text
                    }
                })
                .collect();
            let _ = writeln!(
                md,
                "| {m} | {} | {} | {} |",
                cells.join("; "),
                search.best,
                search.end_text()
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "{}", report.table());
    let _ = writeln!(
        md,
        "Δ vs LoRA: the method's test accuracy minus LoRA's on the same seed, in points; the mean over the \
         seeds and its 95% confidence interval from Student's t with n − 1 degrees of freedom. The interval \
         covers the seed-to-seed variation of training (initialisation, batch order, augmentation) on this \
         test set at the chosen learning rates; it does not cover the choice of the learning rates.\n"
    );
    if let Some(paired) = report.paired_vs_lora() {
        let _ = writeln!(
            md,
            "| method | Δ vs LoRA per seed (points) | mean Δ | 95% CI | reading |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---|");
        for p in &paired {
            let per_seed: Vec<String> = p
                .seeds
                .iter()
                .zip(&p.diffs)
                .map(|(s, d)| format!("seed {s}: {d:+.2}"))
                .collect();
            let (ci, reading) = match (p.ci, p.reading()) {
                (Some((lo, hi)), r) => (
                    format!("[{lo:+.2}, {hi:+.2}]"),
                    match r {
                        Reading::Ahead => "ahead",
                        Reading::Behind => "behind",
                        _ => "no significant difference",
                    },
                ),
                (None, _) => ("–".to_string(), "one seed: no interval"),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:+.2} | {ci} | {reading} |",
                p.method,
                per_seed.join(", "),
                p.mean
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "{}\n", report.verdict().replace('\n', "\n\n"));
    let _ = writeln!(md, "![loss and accuracy](plot.svg)\n");
    let _ = writeln!(md, "## Every run\n");
    let _ = writeln!(
        md,
        "| seed | method | lr | head lr | final train loss | test loss | test accuracy | img/s |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for (seed, r) in &report.runs {
        let lr = report
            .learning_rates
            .iter()
            .find(|(m, _)| *m == r.method)
            .map_or(f32::NAN, |(_, lr)| *lr);
        let _ = writeln!(
            md,
            "| {seed} | {} | {lr} | {} | {:.4} | {:.4} | {:.2}% | {:.0} |",
            r.method,
            report.head_lr,
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
