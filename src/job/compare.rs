//! The comparison of fine-tuning methods that `cargo run --release` runs: pretrain (or reuse the cache),
//! tune each method's learning rate on held-out training images, then fine-tune every method for every
//! seed and write the report.

use super::checkpoint::Checkpointing;
use super::method::{finetune, AdapterOptions, Method};
use super::pretrain::{pretrain, pretrain_checkpoint_path};
use super::report::{write_report, ComparisonReport};
use super::run::{RunOptions, RunResult};
use super::{create_dir, describe};
use crate::backend::Device;
use crate::data::{Dataset, Splits};
use crate::error::{Error, Result};
use crate::io::{atomic_write, load_model};
use crate::nn::{ConvNeXt, ConvNeXtConfig};
use std::path::{Path, PathBuf};

/// Everything the comparison needs.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The ConvNeXt architecture.
    pub config: ConvNeXtConfig,
    /// Options of the pretraining run on the source task.
    pub pretrain: RunOptions,
    /// Options of each fine-tuning run on the target task.
    pub finetune: RunOptions,
    /// Rank, α and targets of the adapter methods.
    pub adapter: AdapterOptions,
    /// The methods to compare, in table order.
    pub methods: Vec<Method>,
    /// Fine-tuning seeds (one comparison per seed; the pretrained model is shared).
    pub seeds: Vec<u64>,
    /// Learning rate per method (None: the method's default, or the tuned one with `tune_lr`).
    pub lr_override: Option<f32>,
    /// Choose each method's learning rate from [`Method::lr_grid`] by accuracy on a validation split held
    /// out of the target training set (never the test set), then train on the whole training set.
    pub tune_lr: bool,
    /// Where the pretrained checkpoint is cached.
    pub cache_dir: PathBuf,
    /// Start from these weights (liera's or timm's safetensors) instead of pretraining.
    pub base_weights: Option<PathBuf>,
    /// Retrain even if a cached checkpoint exists.
    pub fresh: bool,
    /// Output folder (report, plot, adapters, config).
    pub out: PathBuf,
}

/// The smallest class count of `train`, or an error if a class is too small to hold out validation images.
fn check_tunable(train: &Dataset) -> Result<usize> {
    let smallest_class = train.class_counts().into_iter().min().unwrap_or(0);
    if smallest_class < 2 {
        return Err(Error::invalid(
            "compare",
            format!(
                "a class has {smallest_class} training image(s): learning rates cannot be tuned on held-out \
                 images; give at least 2 per class or pass --no-tune-lr (with --lr to set one)"
            ),
        ));
    }
    Ok(smallest_class)
}

/// The learning rate of `method` with the best validation accuracy (ties: the smaller rate), with every
/// candidate's accuracy, from runs on a held-out fifth of the target training set.
#[allow(clippy::too_many_arguments)]
pub fn tune_learning_rate(
    config: &ConvNeXtConfig,
    base: &Path,
    target: &Splits,
    method: Method,
    adapter: &AdapterOptions,
    opts: &RunOptions,
    device: &Device,
) -> Result<(f32, Vec<(f32, f64)>)> {
    let smallest_class = check_tunable(&target.train)?;
    let per_class = (smallest_class / 5).max(1);
    let (train, val) = target
        .train
        .hold_out_per_class(per_class, opts.seed ^ 0x5A11D)?;
    let split = Splits { train, test: val };
    let mut scores = Vec::new();
    for lr in method.lr_grid() {
        let run = RunOptions {
            lr,
            progress: false,
            ..opts.clone()
        };
        // A rate at which training diverges (non-finite loss) is a candidate that lost, not a failure of
        // the comparison; every other error is reported.
        let accuracy = match finetune(
            config,
            base,
            &(&split).into(),
            method,
            adapter,
            &run,
            device,
            None,
            &Checkpointing::default(),
        ) {
            Ok(r) => r.eval.accuracy,
            Err(Error::Diverged { .. }) => 0.0,
            Err(e) => return Err(e),
        };
        scores.push((lr, accuracy));
    }
    let best = scores
        .iter()
        .fold(None::<(f32, f64)>, |best, &(lr, acc)| match best {
            Some((_, b)) if b >= acc => best,
            _ => Some((lr, acc)),
        })
        .map(|(lr, _)| lr)
        .expect("every grid has at least one rate");
    Ok((best, scores))
}

/// Runs the comparison: pretrain (or reuse the cache), then every method for every seed. Writes the report
/// into `opts.out` and returns it.
pub fn compare(
    source: &Splits,
    target: &Splits,
    opts: &CompareOptions,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<ComparisonReport> {
    if opts.seeds.is_empty() || opts.methods.is_empty() {
        return Err(Error::invalid(
            "compare",
            "need at least one seed and one method",
        ));
    }
    if opts.tune_lr && opts.lr_override.is_none() {
        check_tunable(&target.train)?; // before minutes of pretraining, not after
    }
    create_dir(&opts.out)?;
    let checkpoint = match &opts.base_weights {
        Some(w) => w.clone(),
        None => pretrain_checkpoint_path(&opts.cache_dir, &opts.config, &opts.pretrain, source),
    };
    let pretrain_result = if opts.base_weights.is_some() {
        // Check the file against the architecture now, before any fine-tuning starts.
        let mut probe = ConvNeXt::new(opts.config.clone(), device)?;
        for note in load_model(&mut probe, &checkpoint)? {
            log(&format!("note: {note}"));
        }
        log(&format!(
            "pretrained weights: {} (no pretraining)",
            checkpoint.display()
        ));
        None
    } else if checkpoint.exists() && !opts.fresh {
        log(&format!(
            "pretrained checkpoint: reusing {} (--fresh retrains)",
            checkpoint.display()
        ));
        None
    } else {
        log(&format!(
            "pretraining {} on the source task ({} images, {} steps of {})",
            describe(&opts.config),
            source.train.len(),
            opts.pretrain.steps,
            opts.pretrain.batch_size
        ));
        // A training checkpoint beside the cached weights: a run killed mid-pretraining picks up where it
        // stopped (the name carries the same configuration hash, so it always fits).
        let training = checkpoint.with_extension("checkpoint.safetensors");
        let resume = (!opts.fresh && training.is_file()).then(|| training.clone());
        if let Some(r) = &resume {
            log(&format!("resuming pretraining from {}", r.display()));
        }
        let r = pretrain(
            opts.config.clone(),
            source,
            &opts.pretrain,
            device,
            &checkpoint,
            &Checkpointing {
                path: Some(training.clone()),
                every: 50,
                resume,
            },
        )?;
        // The finished weights are cached; the training state is no longer needed.
        let _ = std::fs::remove_file(&training);
        log(&format!(
            "pretrained: source test accuracy {:.2}% in {:.1}s ({:.0} img/s); saved {}",
            100.0 * r.eval.accuracy,
            r.seconds,
            r.images_per_second,
            checkpoint.display()
        ));
        Some(r)
    };
    // Learning rates: given, tuned on validation data (on the first seed, then kept), or the defaults.
    let mut lrs: Vec<(Method, f32)> = Vec::new();
    let mut lr_scores: Vec<(String, Vec<(f32, f64)>)> = Vec::new();
    for &method in &opts.methods {
        let lr = match (opts.lr_override, opts.tune_lr) {
            (Some(lr), _) => lr,
            (None, true) => {
                let tune_opts = RunOptions {
                    seed: opts.seeds[0],
                    ..opts.finetune.clone()
                };
                let (lr, scores) = tune_learning_rate(
                    &opts.config,
                    &checkpoint,
                    target,
                    method,
                    &opts.adapter,
                    &tune_opts,
                    device,
                )?;
                log(&format!(
                    "{:<18} learning rate {lr} chosen on validation data ({})",
                    method.name(),
                    scores
                        .iter()
                        .map(|(l, a)| format!("{l}: {:.1}%", 100.0 * a))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                lr_scores.push((method.name().to_string(), scores));
                lr
            }
            (None, false) => method.default_lr(),
        };
        lrs.push((method, lr));
    }
    let mut runs: Vec<(u64, RunResult)> = Vec::new();
    for &seed in &opts.seeds {
        for &(method, lr) in &lrs {
            let run_opts = RunOptions {
                seed,
                lr,
                ..opts.finetune.clone()
            };
            let save_dir = opts
                .out
                .join("adapters")
                .join(format!("{}-seed{seed}", method.name()));
            let save = matches!(method, Method::Adapter(..)).then_some(save_dir.as_path());
            let r = finetune(
                &opts.config,
                &checkpoint,
                &target.into(),
                method,
                &opts.adapter,
                &run_opts,
                device,
                save,
                &Checkpointing::default(),
            )?;
            log(&format!(
                "seed {seed} {:<18} trainable {:>8}  test accuracy {:6.2}%  {:6.1}s",
                method.name(),
                r.trainable,
                100.0 * r.eval.accuracy,
                r.seconds
            ));
            runs.push((seed, r));
        }
    }
    let report = ComparisonReport {
        device: device.name(),
        model: describe(&opts.config),
        source_images: source.train.len(),
        target_images: target.train.len(),
        target_test_images: target.test.len(),
        pretrain: pretrain_result,
        checkpoint: checkpoint.clone(),
        opts: opts.clone(),
        learning_rates: lrs
            .iter()
            .map(|(m, lr)| (m.name().to_string(), *lr))
            .collect(),
        lr_scores,
        runs,
    };
    write_report(&report, &opts.out)?;
    let config_json = serde_json::json!({
        "model": format!("{:?}", opts.config),
        "pretrain": format!("{:?}", opts.pretrain),
        "finetune": format!("{:?}", opts.finetune),
        "adapter": {"rank": opts.adapter.rank, "alpha": opts.adapter.alpha, "targets": opts.adapter.targets},
        "methods": opts.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "seeds": opts.seeds,
        "lr_override": opts.lr_override,
        "tune_lr": opts.tune_lr,
        "learning_rates": report.learning_rates,
        "checkpoint": checkpoint.display().to_string(),
        "device": device.name(),
    });
    atomic_write(
        &opts.out.join("config.json"),
        serde_json::to_string_pretty(&config_json)
            .expect("a JSON value serialises")
            .as_bytes(),
    )?;
    Ok(report)
}
