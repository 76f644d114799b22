//! The comparison of fine-tuning methods that `cargo run --release` runs: pretrain (or reuse the cache),
//! tune the new classifier's learning rate on the linear probe and then each method's learning rate for the
//! rest of its parameters on held-out training images (a widening ladder, each rate scored over several
//! seeds), then fine-tune every method for every seed with the shared head rate and write the report.

use super::checkpoint::Checkpointing;
use super::method::{finetune, AdapterOptions, Method};
use super::pretrain::{pretrain, pretrain_checkpoint_path};
use super::report::{write_report, ComparisonReport};
use super::run::{RunOptions, RunResult};
use super::tune::{validation_score, widening_search, LadderSearch, MAX_LADDER_EXTENSIONS};
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
    /// Options of each fine-tuning run on the target task (its `lr` and `head_lr` are set per method).
    pub finetune: RunOptions,
    /// Rank, α and targets of the adapter methods.
    pub adapter: AdapterOptions,
    /// The methods to compare, in table order.
    pub methods: Vec<Method>,
    /// Fine-tuning seeds (one comparison per seed; the pretrained model is shared).
    pub seeds: Vec<u64>,
    /// One learning rate for every method and the head (None: the method's default, or the tuned one with
    /// `tune_lr`).
    pub lr_override: Option<f32>,
    /// The classifier's learning rate, the same for every method (`head.fc.*`; the linear probe trains at
    /// it). None: chosen by tuning the linear probe with `tune_lr`, else the `lr_override`, else
    /// [`DEFAULT_HEAD_LR`].
    pub head_lr: Option<f32>,
    /// Choose the head's learning rate on the linear probe, then each method's learning rate for the rest
    /// of its parameters, by accuracy on validation splits held out of the target training set (never the
    /// test set) with a ladder that widens until the best rate is interior ([`widening_search`]); then
    /// train on the whole training set.
    pub tune_lr: bool,
    /// Seeds each candidate rate is scored over (its score is the mean): each seed holds out its own
    /// validation split and trains with its own seed. They are `seeds[0]`, `seeds[0] + 1`, ….
    pub tune_seeds: usize,
    /// Steps of each tuning run (None: the final runs' steps); the warm-up is scaled in proportion.
    pub tune_steps: Option<u64>,
    /// Where the pretrained checkpoint is cached.
    pub cache_dir: PathBuf,
    /// Start from these weights (liera's or timm's safetensors) instead of pretraining.
    pub base_weights: Option<PathBuf>,
    /// Retrain even if a cached checkpoint exists.
    pub fresh: bool,
    /// Output folder (report, plot, adapters, config).
    pub out: PathBuf,
}

/// The head's learning rate without tuning (`--no-tune-lr` and no `--head-lr`): the linear probe's default.
pub const DEFAULT_HEAD_LR: f32 = 1e-2;

/// Where the comparison's head learning rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLrSource {
    /// Tuned on the linear probe (head only).
    Tuned,
    /// Given (`--head-lr`).
    Given,
    /// The one learning rate given for everything (`--lr`).
    SharedLr,
    /// [`DEFAULT_HEAD_LR`] (`--no-tune-lr`).
    Default,
}

impl HeadLrSource {
    /// How the report says it.
    pub fn describe(self) -> &'static str {
        match self {
            HeadLrSource::Tuned => "tuned on the linear probe, which trains the head only",
            HeadLrSource::Given => "given (--head-lr)",
            HeadLrSource::SharedLr => "the one learning rate given for everything (--lr)",
            HeadLrSource::Default => "the linear probe's default (--no-tune-lr)",
        }
    }
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

/// The tuning split of one seed: a stratified fifth of each class of the target training set (at least one
/// image) held out for validation, chosen by `seed`; the rest trains.
pub fn tuning_split(train: &Dataset, seed: u64) -> Result<Splits> {
    let per_class = (check_tunable(train)? / 5).max(1);
    let (train, val) = train.hold_out_per_class(per_class, seed ^ 0x5A11D)?;
    Ok(Splits { train, test: val })
}

/// The options of a tuning run: `finetune`'s, with `tune_steps` steps (None: the same) and the warm-up
/// scaled in proportion, no progress bar.
pub fn tuning_run_options(finetune: &RunOptions, tune_steps: Option<u64>) -> RunOptions {
    let steps = tune_steps.unwrap_or(finetune.steps).max(1);
    let warmup = (finetune.warmup as u128 * steps as u128 / finetune.steps.max(1) as u128) as u64;
    RunOptions {
        steps,
        warmup,
        progress: false,
        ..finetune.clone()
    }
}

/// Tunes `method`'s learning rate: [`widening_search`] over [`Method::lr_grid`], each rate scored by the
/// mean validation accuracy over `tune_seeds` (one [`tuning_split`] and one training seed each). `opts` are
/// the tuning runs' options (steps, and the `head_lr` the method will train with); a diverged run scores 0.
#[allow(clippy::too_many_arguments)]
pub fn tune_learning_rate(
    config: &ConvNeXtConfig,
    base: &Path,
    target: &Splits,
    method: Method,
    adapter: &AdapterOptions,
    opts: &RunOptions,
    tune_seeds: &[u64],
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<LadderSearch> {
    if tune_seeds.is_empty() {
        return Err(Error::invalid("compare", "need at least one tuning seed"));
    }
    let splits = tune_seeds
        .iter()
        .map(|&s| tuning_split(&target.train, s))
        .collect::<Result<Vec<_>>>()?;
    widening_search(&method.lr_grid(), MAX_LADDER_EXTENSIONS, &mut |lr| {
        let mut scores = Vec::with_capacity(splits.len());
        for (split, &seed) in splits.iter().zip(tune_seeds) {
            let run = RunOptions {
                lr,
                seed,
                ..opts.clone()
            };
            scores.push(validation_score(finetune(
                config,
                base,
                &split.into(),
                method,
                adapter,
                &run,
                device,
                None,
                &Checkpointing::default(),
            ))?);
        }
        log(&format!(
            "  {:<18} lr {lr:<8} validation {}",
            method.name(),
            scores
                .iter()
                .map(|s| s.map_or("diverged".into(), |a| format!("{:.1}%", 100.0 * a)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Ok(scores)
    })
}

/// The log line of a finished search.
fn search_line(what: &str, search: &LadderSearch) -> String {
    format!(
        "{what:<18} learning rate {} chosen ({}; mean validation accuracy: {})",
        search.best,
        search.end_text(),
        search.scores_text()
    )
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
        if opts.tune_seeds == 0 {
            return Err(Error::invalid(
                "compare",
                "tuning needs at least one tuning seed (--tune-seeds)",
            ));
        }
    }
    if let Some(h) = opts.head_lr {
        if !(h.is_finite() && h > 0.0) {
            return Err(Error::invalid(
                "compare",
                format!("the head's learning rate must be positive, got {h}"),
            ));
        }
    }
    if opts.tune_steps == Some(0) {
        return Err(Error::invalid(
            "compare",
            "tuning runs need at least 1 step",
        ));
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
    // The head's learning rate first (the same for every method), then each method's own: given, tuned on
    // validation data (the mean over the tuning seeds), or the defaults.
    let tuning = opts.tune_lr && opts.lr_override.is_none();
    let tune_seeds: Vec<u64> = (0..opts.tune_seeds as u64)
        .map(|i| opts.seeds[0].wrapping_add(i))
        .collect();
    let tune_opts = tuning_run_options(&opts.finetune, opts.tune_steps);
    if tuning {
        log(&format!(
            "tuning learning rates: each candidate scored by the mean validation accuracy over {} seed(s) \
             ({:?}, each with its own held-out fifth of the training images), runs of {} steps",
            tune_seeds.len(),
            tune_seeds,
            tune_opts.steps
        ));
    }
    let mut head_tuning = None;
    let (head_lr, head_lr_source) = match (opts.head_lr, opts.lr_override) {
        (Some(h), _) => (h, HeadLrSource::Given),
        (None, Some(lr)) => (lr, HeadLrSource::SharedLr),
        (None, None) if tuning => {
            let search = tune_learning_rate(
                &opts.config,
                &checkpoint,
                target,
                Method::LinearProbe,
                &opts.adapter,
                &RunOptions {
                    head_lr: None,
                    ..tune_opts.clone()
                },
                &tune_seeds,
                device,
                log,
            )?;
            log(&search_line("head (linear probe)", &search));
            let lr = search.best;
            head_tuning = Some(search);
            (lr, HeadLrSource::Tuned)
        }
        (None, None) => (DEFAULT_HEAD_LR, HeadLrSource::Default),
    };
    let mut lrs: Vec<(Method, f32)> = Vec::new();
    let mut searches: Vec<(String, LadderSearch)> = Vec::new();
    for &method in &opts.methods {
        let lr = match (opts.lr_override, method) {
            // The linear probe trains the head only: its rate is the head's.
            (_, Method::LinearProbe) => head_lr,
            (Some(lr), _) => lr,
            (None, _) if tuning => {
                let search = tune_learning_rate(
                    &opts.config,
                    &checkpoint,
                    target,
                    method,
                    &opts.adapter,
                    &RunOptions {
                        head_lr: Some(head_lr),
                        ..tune_opts.clone()
                    },
                    &tune_seeds,
                    device,
                    log,
                )?;
                log(&search_line(method.name(), &search));
                let lr = search.best;
                searches.push((method.name().to_string(), search));
                lr
            }
            (None, _) => method.default_lr(),
        };
        lrs.push((method, lr));
    }
    let mut runs: Vec<(u64, RunResult)> = Vec::new();
    for &seed in &opts.seeds {
        for &(method, lr) in &lrs {
            let run_opts = RunOptions {
                seed,
                lr,
                head_lr: Some(head_lr),
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
        head_lr,
        head_lr_source,
        head_tuning,
        tuning: searches,
        tune_seeds: if tuning {
            tune_seeds.clone()
        } else {
            Vec::new()
        },
        tune_steps: tune_opts.steps,
        tune_val_images: match tune_seeds.first() {
            Some(&seed) if tuning => tuning_split(&target.train, seed)?.test.len(),
            _ => 0,
        },
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
        "tune_seeds": report.tune_seeds,
        "tune_steps": opts.tune_lr.then_some(report.tune_steps),
        "head_lr": head_lr,
        "head_lr_source": head_lr_source.describe(),
        "learning_rates": report.learning_rates,
        "tuning": report
            .head_tuning
            .iter()
            .map(|s| ("head (linear probe)", s))
            .chain(report.tuning.iter().map(|(m, s)| (m.as_str(), s)))
            .map(|(m, s)| serde_json::json!({
                "what": m,
                "chosen": s.best,
                "end": s.end_text(),
                "rungs": s.rungs.iter().map(|r| serde_json::json!({
                    "lr": r.lr,
                    "mean": r.mean(),
                    "per_seed": r.scores,
                    "added_by_widening": r.added,
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>(),
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
