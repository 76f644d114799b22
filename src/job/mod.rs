//! The jobs behind the `liera` command: pretraining a ConvNeXt on a source task, fine-tuning it on a target
//! task with one method (full, linear probe, LoRA, LieRA, LieRA first-order), and the comparison of all
//! methods that `cargo run --release` runs by default.
//!
//! Everything here is library code so that tests can run a shortened comparison; the command in
//! `src/main.rs` only parses flags and prints.

pub mod bench;
pub mod checkpoint;
mod report;

pub use checkpoint::{Checkpointing, CHECKPOINT_FILE};
pub use report::{write_report, ComparisonReport};

use crate::autodiff::Grads;
use crate::backend::Device;
use crate::data::batch::{Batcher, RandomTranslate, Sequential};
use crate::data::{Dataset, Splits};
use crate::error::{Error, Result};
use crate::io::{atomic_write, load_model, save_model};
use crate::nn::{ConvNeXt, ConvNeXtConfig, Module};
use crate::optim::{AdamW, Optimizer};
use crate::peft::{self, AdapterKind, PeftConfig, TrainableReport};
use crate::tensor::Tensor;
use crate::train::{evaluate, train, Evaluation, StepLog, TrainOptions};
use checkpoint::{
    read_checkpoint, write_checkpoint, CheckpointMeta, RunSettings, CHECKPOINT_VERSION,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The side length images are padded to: the ConvNeXt stem divides by 4 and three downsamplings by 2 each,
/// so 32 → 8 → 4 → 2 → 1 (28 would leave odd sizes).
pub const IMAGE_SIZE: usize = 32;

/// How to fine-tune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Every parameter trains.
    Full,
    /// Only the new classifier (head.fc) trains.
    LinearProbe,
    /// Adapters on the target layers (plus the new classifier).
    Adapter(AdapterKind),
}

impl Method {
    /// The five methods of the comparison, in table order.
    pub const ALL: [Method; 5] = [
        Method::Full,
        Method::LinearProbe,
        Method::Adapter(AdapterKind::Lora),
        Method::Adapter(AdapterKind::Liera),
        Method::Adapter(AdapterKind::LieraFirstOrder),
    ];
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::LinearProbe => "linear",
            Method::Adapter(k) => k.name(),
        }
    }
    /// Parses a method name (`full`, `linear`, `lora`, `liera`, `liera_first_order`).
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "full" => Ok(Method::Full),
            "linear" | "linear_probe" => Ok(Method::LinearProbe),
            other => AdapterKind::parse(other).map(Method::Adapter).map_err(|_| {
                Error::invalid(
                    "method",
                    format!(
                        "unknown method `{other}` (known: full, linear, lora, liera, liera_first_order)"
                    ),
                )
            }),
        }
    }
    /// Candidate peak learning rates for the tuning: a ladder of factors 2 to 3. LieRA changes each weight
    /// in proportion to |W| (W ⊙ exp(ΔW)), so its useful step sizes sit higher than LoRA's, which is why a
    /// shared learning rate would not be a fair comparison.
    pub fn lr_grid(self) -> Vec<f32> {
        match self {
            Method::Full => vec![1e-3, 3e-3, 1e-2],
            Method::LinearProbe => vec![1e-2, 3e-2, 1e-1],
            Method::Adapter(_) => vec![5e-3, 1e-2, 2e-2, 5e-2, 1e-1],
        }
    }
    /// The default peak learning rate: adapters and a lone head take larger steps than full fine-tuning,
    /// as in the PEFT literature.
    pub fn default_lr(self) -> f32 {
        match self {
            Method::Full => 1e-3,
            Method::LinearProbe => 1e-2,
            Method::Adapter(_) => 5e-3,
        }
    }
}

/// Options of a training run (pretraining or fine-tuning).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (after warmup).
    pub lr: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Linear warmup steps before the cosine decay.
    pub warmup: u64,
    /// Seed of batching, augmentation and initialisation.
    pub seed: u64,
    /// Random translation of training images by up to this many pixels (0: none).
    pub augment_shift: usize,
    /// Read the loss back every this many steps.
    pub log_every: u64,
    /// Show progress bars (on stderr).
    pub progress: bool,
}

impl RunOptions {
    fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("train", "steps must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("train", "batch size must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "train",
                format!("learning rate must be positive, got {}", self.lr),
            ));
        }
        Ok(())
    }
}

/// The outcome of one training run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The method's name as printed in the table.
    pub method: String,
    /// Trainable scalars.
    pub trainable: usize,
    /// All scalars of the model (base plus adapters).
    pub total: usize,
    /// Test-set evaluation after training.
    pub eval: Evaluation,
    /// Wall time of training plus evaluation, in seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// The logged steps (loss, learning rate, time).
    pub logs: Vec<StepLog>,
}

/// A progress bar over `steps`, hidden when `show` is false or stderr is not a terminal.
fn progress_bar(steps: u64, label: &str, show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>22} [{bar:28}] {pos}/{len} steps  {msg}  ({elapsed}, eta {eta})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Trains `model` (whatever its trainable parameters are) on `data` and evaluates it on `test`.
pub fn train_and_evaluate(
    model: &ConvNeXt,
    label: &str,
    data: &Dataset,
    test: &Dataset,
    opts: &RunOptions,
    device: &Device,
) -> Result<(Vec<StepLog>, Evaluation, f64, f64)> {
    train_and_evaluate_with(
        model,
        label,
        data,
        test,
        opts,
        device,
        &Checkpointing::default(),
    )
}

/// An optimizer behind a `RefCell`, so the logging callback can read its state for a checkpoint between
/// the steps that `train` takes through it.
struct SharedOptimizer<'a, O: Optimizer>(&'a RefCell<O>);

impl<O: Optimizer> Optimizer for SharedOptimizer<'_, O> {
    fn step(&mut self, params: &[(String, Tensor)], grads: &Grads, lr: f32) -> Result<()> {
        self.0.borrow_mut().step(params, grads, lr)
    }
    fn steps(&self) -> u64 {
        self.0.borrow().steps()
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.0.borrow().state()
    }
    fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> Result<()> {
        self.0.borrow_mut().load_state(steps, state)
    }
}

/// Like [`train_and_evaluate`], writing checkpoints and resuming as `ckpt` says. `label` is the run's kind
/// (`pretrain`, or the method name for fine-tuning), recorded in the checkpoint and checked on resume.
pub fn train_and_evaluate_with(
    model: &ConvNeXt,
    label: &str,
    data: &Dataset,
    test: &Dataset,
    opts: &RunOptions,
    device: &Device,
    ckpt: &Checkpointing,
) -> Result<(Vec<StepLog>, Evaluation, f64, f64)> {
    opts.check()?;
    let kind = if label == "pretrain" {
        label.to_string()
    } else {
        format!("finetune:{label}")
    };
    let params = model.trainable_parameters();
    let optimizer = RefCell::new(AdamW::new(0.9, 0.999, 1e-8, opts.weight_decay)?);
    let batch = opts.batch_size.min(data.len());
    let mut batcher = Batcher::new(data, batch, opts.seed)?;
    if opts.augment_shift > 0 {
        batcher = batcher.with_augment(RandomTranslate::for_dataset(data, opts.augment_shift));
    }
    // Resume: parameters, optimizer moments and step count, the data stream and the drop-path masks all
    // continue where the checkpoint left them; the schedule is a function of the step.
    // What every checkpoint of this run records; `step`, the counters and the loss are filled in when one
    // is written.
    let run_meta = CheckpointMeta {
        version: CHECKPOINT_VERSION,
        kind: kind.clone(),
        step: 0,
        total_steps: opts.steps,
        seed: opts.seed,
        batch_size: batch,
        data_position: 0,
        optimizer_steps: 0,
        drop_path_position: 0,
        loss: 0.0,
        settings: RunSettings {
            lr: opts.lr,
            warmup: opts.warmup,
            weight_decay: opts.weight_decay,
            augment_shift: opts.augment_shift,
        },
        data: data_fingerprint(data),
    };
    let mut start = 0;
    let mut last_good: Option<(PathBuf, u64)> = None;
    if let Some(from) = &ckpt.resume {
        let c = read_checkpoint(from)?;
        let changed = c.check_fits(&run_meta)?;
        if !changed.is_empty() {
            eprintln!(
                "resuming {} at step {} with changed settings ({}): the result will differ from an \
                 uninterrupted run",
                c.path.display(),
                c.meta.step,
                changed.join(", ")
            );
        }
        c.restore_params(&model.named_parameters())?;
        let state = c.optimizer_state(&params, device)?;
        optimizer
            .borrow_mut()
            .load_state(c.meta.optimizer_steps, state)?;
        batcher.seek(c.meta.data_position);
        model.seek_drop_path(c.meta.drop_path_position);
        start = c.meta.step;
        last_good = Some((c.path.clone(), c.meta.step));
    }
    let batcher = RefCell::new(batcher);
    let train_opts = TrainOptions {
        steps: opts.steps,
        lr: opts.lr,
        min_lr: opts.lr * 0.01,
        warmup: opts.warmup,
        clip_norm: Some(5.0),
        log_every: opts.log_every.max(1),
    };
    let bar = progress_bar(opts.steps, label, opts.progress);
    bar.set_position(start);
    let began = Instant::now();
    let mut last_written = start;
    let logs = train(
        model,
        &params,
        &mut SharedOptimizer(&optimizer),
        device,
        &train_opts,
        start,
        &mut || batcher.borrow_mut().next_batch(),
        &mut |log| {
            bar.set_position(log.step);
            bar.set_message(format!(
                "loss {:.4}  {:.0} img/s",
                log.loss,
                (log.step - start) as f64 * batch as f64 / log.elapsed.max(1e-9)
            ));
            // Only here, right after a finite loss was read back, is a checkpoint written.
            let Some(path) = &ckpt.path else {
                return Ok(());
            };
            let due =
                log.step == opts.steps || (ckpt.every > 0 && log.step - last_written >= ckpt.every);
            if due {
                let meta = CheckpointMeta {
                    step: log.step,
                    data_position: batcher.borrow().position(),
                    optimizer_steps: optimizer.borrow().steps(),
                    drop_path_position: log.step,
                    loss: log.loss,
                    ..run_meta.clone()
                };
                write_checkpoint(
                    path,
                    &meta,
                    &model.named_parameters(),
                    &optimizer.borrow().state(),
                )?;
                last_written = log.step;
                last_good = Some((path.clone(), log.step));
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    // Say where the run can be resumed from (with a lower learning rate, say).
    let logs = logs.map_err(|e| {
        let Some((path, good)) = &last_good else {
            return e;
        };
        let hint = format!(
            "; the last good checkpoint ({}, step {good}) is intact: --resume it",
            path.display()
        );
        match e {
            Error::Diverged { step, value, .. } => Error::Diverged {
                step,
                value,
                note: hint,
            },
            Error::Invalid { op, msg } => Error::Invalid {
                op,
                msg: format!("{msg}{hint}"),
            },
            e => e,
        }
    })?;
    let train_seconds = began.elapsed().as_secs_f64();
    let eval = evaluate(model, device, Sequential::new(test, 250)?)?;
    let seconds = began.elapsed().as_secs_f64();
    let images_per_second = (opts.steps - start) as f64 * batch as f64 / train_seconds.max(1e-9);
    Ok((logs, eval, seconds, images_per_second))
}

/// Pretraining: a fresh model of `config` trained on the source task; the weights are saved atomically to
/// `checkpoint`.
pub fn pretrain(
    config: ConvNeXtConfig,
    data: &Splits,
    opts: &RunOptions,
    device: &Device,
    checkpoint: &Path,
) -> Result<RunResult> {
    pretrain_with(
        config,
        data,
        opts,
        device,
        checkpoint,
        &Checkpointing::default(),
    )
}

/// [`pretrain`] with training checkpoints (and resume) as `ckpt` says; the final weights still go to
/// `checkpoint`.
pub fn pretrain_with(
    config: ConvNeXtConfig,
    data: &Splits,
    opts: &RunOptions,
    device: &Device,
    checkpoint: &Path,
    ckpt: &Checkpointing,
) -> Result<RunResult> {
    let model = ConvNeXt::new(config.with_seed(opts.seed), device)?;
    let (logs, eval, seconds, ips) = train_and_evaluate_with(
        &model,
        "pretrain",
        &data.train,
        &data.test,
        opts,
        device,
        ckpt,
    )?;
    if let Some(dir) = checkpoint.parent() {
        create_dir(dir)?;
    }
    save_model(&model, checkpoint)?;
    Ok(RunResult {
        method: "pretrain".into(),
        trainable: model.num_parameters(),
        total: model.num_parameters(),
        eval,
        seconds,
        images_per_second: ips,
        logs,
    })
}

/// What the adapter methods adapt and with which rank.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Rank r of ΔW = (α/r)·B·A.
    pub rank: usize,
    /// α (the scale is α/r).
    pub alpha: f32,
    /// Comma-separated module-path patterns.
    pub targets: String,
}

impl Default for AdapterOptions {
    /// Rank 8, α = 8 (scale 1), on every depthwise and pointwise layer of the blocks.
    fn default() -> Self {
        AdapterOptions {
            rank: 8,
            alpha: 8.0,
            targets: "conv_dw,mlp.fc1,mlp.fc2".into(),
        }
    }
}

/// Builds the model to fine-tune: `config`'s architecture with `base` weights loaded (any class count), a
/// fresh classifier for `classes`, and what trains set by `method`. Returns the model, the trainable report
/// and the adapter config (adapter methods only).
pub fn prepare_finetune(
    config: &ConvNeXtConfig,
    base: &Path,
    classes: usize,
    method: Method,
    adapter: &AdapterOptions,
    seed: u64,
    device: &Device,
) -> Result<(ConvNeXt, TrainableReport, Option<PeftConfig>)> {
    let mut model = ConvNeXt::new(config.clone(), device)?;
    load_model(&mut model, base)?;
    model.replace_head(classes, seed ^ 0x4EAD)?;
    let peft_cfg = match method {
        Method::Full => {
            model.set_trainable(true);
            None
        }
        Method::LinearProbe => {
            model.set_trainable(false);
            model.visit_mut("", &mut |path, p| {
                if path.starts_with("head.fc.") {
                    p.set_trainable(true)
                }
            });
            None
        }
        Method::Adapter(kind) => {
            let cfg = PeftConfig::new(kind, adapter.rank, adapter.alpha, &adapter.targets)
                .with_modules_to_save("head.fc")
                .with_seed(seed);
            peft::apply(&mut model, &cfg)?;
            Some(cfg)
        }
    };
    let report = peft::trainable_report(&model)?;
    Ok((model, report, peft_cfg))
}

/// Fine-tunes with one method and evaluates; saves the adapter (adapter methods) under `save_dir`.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    config: &ConvNeXtConfig,
    base: &Path,
    data: &Splits,
    method: Method,
    adapter: &AdapterOptions,
    opts: &RunOptions,
    device: &Device,
    save_dir: Option<&Path>,
) -> Result<RunResult> {
    finetune_with(
        config,
        base,
        data,
        method,
        adapter,
        opts,
        device,
        save_dir,
        &Checkpointing::default(),
    )
}

/// [`finetune`] with training checkpoints (and resume) as `ckpt` says.
#[allow(clippy::too_many_arguments)]
pub fn finetune_with(
    config: &ConvNeXtConfig,
    base: &Path,
    data: &Splits,
    method: Method,
    adapter: &AdapterOptions,
    opts: &RunOptions,
    device: &Device,
    save_dir: Option<&Path>,
    ckpt: &Checkpointing,
) -> Result<RunResult> {
    let (model, report, peft_cfg) = prepare_finetune(
        config,
        base,
        data.train.classes,
        method,
        adapter,
        opts.seed,
        device,
    )?;
    let (logs, eval, seconds, ips) = train_and_evaluate_with(
        &model,
        method.name(),
        &data.train,
        &data.test,
        opts,
        device,
        ckpt,
    )?;
    if let Some(dir) = save_dir {
        match &peft_cfg {
            Some(cfg) => peft::save_adapter(&model, cfg, dir)?,
            None => {
                create_dir(dir)?;
                save_model(&model, &dir.join("model.safetensors"))?
            }
        }
    }
    Ok(RunResult {
        method: method.name().into(),
        trainable: report.trainable,
        total: report.total,
        eval,
        seconds,
        images_per_second: ips,
        logs,
    })
}

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

/// A 64-bit FNV-1a hash: short, stable across runs and platforms (unlike `std`'s hasher), enough to name
/// a cache entry.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn mix(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A fingerprint of a dataset's images and labels (so another data set of the same size never reuses a
/// checkpoint).
fn data_fingerprint(d: &Dataset) -> String {
    let mut h = Fnv::new();
    d.images.iter().for_each(|v| h.mix(v.to_bits() as u64));
    d.labels.iter().for_each(|&l| h.mix(l as u64));
    h.hex()
}

/// The cached checkpoint path of a pretraining run: it changes whenever the architecture, the options or
/// the data change, so a stale checkpoint is never reused.
pub fn pretrain_checkpoint_path(
    cache_dir: &Path,
    config: &ConvNeXtConfig,
    opts: &RunOptions,
    data: &Splits,
) -> PathBuf {
    let key = format!(
        "{config:?}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        opts.steps,
        opts.batch_size,
        opts.lr,
        opts.weight_decay,
        opts.warmup,
        opts.seed,
        opts.augment_shift,
        data.train.len(),
        data_fingerprint(&data.train)
    );
    let mut h = Fnv::new();
    key.bytes().for_each(|b| h.mix(b as u64));
    cache_dir.join(format!("pretrain-{}.safetensors", h.hex()))
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
        let accuracy = match finetune(config, base, &split, method, adapter, &run, device, None) {
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
        let r = pretrain_with(
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
            let save = matches!(method, Method::Adapter(_)).then_some(save_dir.as_path());
            let r = finetune(
                &opts.config,
                &checkpoint,
                target,
                method,
                &opts.adapter,
                &run_opts,
                device,
                save,
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

/// Creates `dir` and its parents, with an error naming it.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })
}

/// "ConvNeXt v1 dims [16, 32, 64, 128] depths [1, 1, 2, 1]".
pub fn describe(c: &ConvNeXtConfig) -> String {
    format!(
        "ConvNeXt {} dims {:?} depths {:?}",
        if c.use_grn { "v2" } else { "v1" },
        c.dims,
        c.depths
    )
}

/// The device for `--device auto|cpu|gpu`: `auto` is [`Device::best`] (a hardware GPU if any, else the
/// CPU; environment overrides), `cpu` the CPU, `gpu` any adapter or an error. Says on stderr which.
pub fn select_device(choice: &str) -> Result<Device> {
    let device = match choice {
        "auto" => return Device::best(),
        "cpu" => Device::cpu(),
        "gpu" => Device::gpu()?,
        other => {
            return Err(Error::invalid(
                "device",
                format!("--device must be auto, cpu or gpu, got `{other}`"),
            ))
        }
    };
    eprintln!("device: {}", device.name());
    Ok(device)
}
