//! The subcommands on the digit and clothing data (the embedded MNIST and Fashion-MNIST subsets, or full
//! IDX files): compare (the main job), pretrain, finetune and eval (which hand image folders to
//! [`super::images`]), and merge.

use super::args::{out_dir, seed_range, AdapterArgs, Common, ImageArgs, ModelArgs, TrainArgs};
use super::images::{run_eval_images, run_finetune_images};
use clap::Args;
use liera::data::embedded::{embedded_fashion_mnist, embedded_mnist, load_dir};
use liera::data::Splits;
use liera::job::{self, CompareOptions, Method, RunOptions, IMAGE_SIZE};
use liera::nn::{ConvNeXt, Module};
use liera::train::evaluate;
use liera::{Device, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera compare                                   # what `cargo run --release` runs\n  liera compare --seeds 3                         # mean ± std and paired 95% intervals against LoRA\n  liera compare --head-lr 0.03 --tune-seeds 3     # a fixed head rate; each rate scored over 3 seeds\n  liera compare --methods lora,liera --rank 4 --target conv_dw\n  liera compare --data-dir ~/datasets             # full IDX files in ~/datasets/{mnist,fashion-mnist}\n  liera compare --weights convnext_atto.safetensors --preset atto --in-chans 3"
)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) adapter: AdapterArgs,
    /// Fine-tuning steps per method.
    #[arg(long, default_value_t = 300)]
    pub(crate) steps: u64,
    /// Pretraining steps.
    #[arg(long, default_value_t = 400)]
    pub(crate) pretrain_steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// One learning rate for every method and the head (overrides the tuning).
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// The new classifier's learning rate, the same for every method (default: tuned on the linear probe;
    /// with --lr, that rate; with --no-tune-lr, 1e-2).
    #[arg(long)]
    pub(crate) head_lr: Option<f32>,
    /// Use fixed per-method learning rates (1e-3 full, 5e-3 adapters; the head and the linear probe 1e-2)
    /// instead of choosing them on validation splits.
    #[arg(long)]
    pub(crate) no_tune_lr: bool,
    /// Score each candidate learning rate by the mean validation accuracy over this many seeds (each with
    /// its own held-out split and training seed).
    #[arg(long, default_value_t = 2)]
    pub(crate) tune_seeds: usize,
    /// Steps of each tuning run (default: half of --steps; the warm-up is scaled alike).
    #[arg(long)]
    pub(crate) tune_steps: Option<u64>,
    /// Repeat the fine-tuning comparison over this many seeds (seed, seed+1, ...) and report mean ± std.
    #[arg(long, default_value_t = 1)]
    pub(crate) seeds: u64,
    /// Comma-separated methods to run.
    #[arg(long, default_value = "full,linear,lora,liera,liera_first_order")]
    pub(crate) methods: String,
    /// A folder with mnist/ and fashion-mnist/ subfolders of full IDX files (gzip or not) instead of the
    /// embedded subsets.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Training images per class taken from the target task's training split.
    #[arg(long, default_value_t = 100)]
    pub(crate) per_class: usize,
    /// Retrain the source model even if a cached checkpoint exists.
    #[arg(long)]
    pub(crate) fresh: bool,
    /// Fine-tune these pretrained weights (liera's or a timm ConvNeXt safetensors file matching --preset and
    /// --in-chans) instead of pretraining on the source task.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Where the pretrained checkpoint is cached.
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Output folder (default: a new folder under runs/).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera pretrain --out runs/base                  # weights: runs/base/model.safetensors\n  liera pretrain --preset convnextv2_atto --steps 1000 --data-dir ~/datasets/mnist\n  liera pretrain --resume runs/base               # continue a killed run"
)]
pub(crate) struct PretrainArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) train: TrainArgs,
    /// A folder with the four IDX files of the source task (default: the embedded MNIST subset).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Output folder; the weights go to <out>/model.safetensors.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera finetune --weights runs/base/model.safetensors --method liera --rank 8 --lr 0.05\n  liera finetune --weights runs/base/model.safetensors --method lora --target 'stages.3.*' --alpha 16\n  liera finetune --weights runs/base/model.safetensors --method full --steps 500 --out runs/full"
)]
pub(crate) struct FinetuneArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) train: TrainArgs,
    #[command(flatten)]
    pub(crate) adapter: AdapterArgs,
    /// Pretrained weights: a safetensors file (liera's or timm's) or a timm model folder (config.json +
    /// model.safetensors).
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// full, linear, lora, liera (exact) or liera_first_order; with LoHa or LoKr generating ΔW, loha, lokr,
    /// liera_loha, liera_lokr, … (or pick the generator with --delta).
    #[arg(long, default_value = "liera")]
    pub(crate) method: String,
    /// A folder with the four IDX files of the target task (default: the embedded Fashion-MNIST subset).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// A task folder of images: ImageFolder (class folders, with train/ and val/ or test/ when present) or
    /// a VTAB-1k task (train800val200.txt, test.txt); IDX files work too. The weights may be a timm model
    /// folder; preprocessing follows its config.
    #[arg(long, conflicts_with = "data_dir")]
    pub(crate) data: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    /// Training images per class (IDX data).
    #[arg(long, default_value_t = 100)]
    pub(crate) per_class: usize,
    /// Output folder for the adapter (or the model, for full and linear).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera eval --weights runs/base/model.safetensors --mnist\n  liera eval --weights runs/base/model.safetensors --adapter runs/lie\n  liera eval --weights runs/merged.safetensors --data-dir ~/datasets/fashion-mnist"
)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Weights to evaluate.
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// An adapter folder (adapter_config.json + adapter_model.safetensors) to apply first.
    #[arg(long)]
    pub(crate) adapter: Option<PathBuf>,
    /// A folder with the test IDX files (default: the embedded Fashion-MNIST test set).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// A task folder of images (ImageFolder: val/ or test/; VTAB-1k: test.txt) to score instead.
    #[arg(long, conflicts_with_all = ["data_dir", "mnist"])]
    pub(crate) data: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    /// Score a freshly initialised head when the data's class count differs from the classifier's
    /// (otherwise that is an error).
    #[arg(long)]
    pub(crate) allow_new_head: bool,
    /// Evaluate on the embedded MNIST test set instead.
    #[arg(long)]
    pub(crate) mnist: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera merge --weights runs/base/model.safetensors --adapter runs/lie --out runs/merged.safetensors"
)]
pub(crate) struct MergeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Base weights.
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// The adapter folder to merge.
    #[arg(long)]
    pub(crate) adapter: PathBuf,
    /// The merged model's path.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

fn source_data(dir: Option<&Path>) -> Result<Splits> {
    match dir {
        Some(d) => load_dir(d)?.pad_to(IMAGE_SIZE),
        None => embedded_mnist()?.pad_to(IMAGE_SIZE),
    }
}

fn target_data(dir: Option<&Path>, per_class: usize, seed: u64) -> Result<Splits> {
    let splits = match dir {
        Some(d) => load_dir(d)?,
        None => embedded_fashion_mnist()?,
    };
    let train = if splits.train.class_counts().iter().all(|&c| c == per_class) {
        splits.train
    } else {
        splits.train.take_per_class(per_class, seed)?
    };
    Splits {
        train,
        test: splits.test,
    }
    .pad_to(IMAGE_SIZE)
}

fn default_pretrain_options(common: &Common, steps: u64, batch_size: usize) -> RunOptions {
    RunOptions {
        steps,
        batch_size,
        lr: 2e-3,
        head_lr: None,
        weight_decay: 0.05,
        warmup: 20.min(steps / 10),
        seed: common.seed,
        augment_shift: 2,
        log_every: 5,
        progress: !common.quiet,
        grad_checkpointing: false,
    }
}

pub(crate) fn default_finetune_options(
    common: &Common,
    steps: u64,
    batch_size: usize,
) -> RunOptions {
    RunOptions {
        steps,
        batch_size,
        lr: 1e-3,
        head_lr: None,
        weight_decay: 0.01,
        warmup: 15.min(steps / 10),
        seed: common.seed,
        augment_shift: 2,
        log_every: 5,
        progress: !common.quiet,
        grad_checkpointing: false,
    }
}

fn cache_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("liera"))
            .unwrap_or_else(|| PathBuf::from("runs").join("cache"))
    })
}

pub(crate) fn run_compare(a: CompareArgs, common: &Common, device: &Device) -> Result<()> {
    let methods = a.adapter.methods(&a.methods)?;
    let seeds = seed_range(common.seed, a.seeds)?;
    let source = source_data(a.data_dir.as_ref().map(|d| d.join("mnist")).as_deref())?
        .with_channels(a.model.idx_channels())?;
    let target = target_data(
        a.data_dir
            .as_ref()
            .map(|d| d.join("fashion-mnist"))
            .as_deref(),
        a.per_class,
        common.seed,
    )?
    .with_channels(a.model.idx_channels())?;
    let out = out_dir(a.out, "compare");
    let opts = CompareOptions {
        config: a.model.config(source.train.classes)?,
        pretrain: default_pretrain_options(common, a.pretrain_steps, a.batch_size),
        finetune: default_finetune_options(common, a.steps, a.batch_size),
        adapter: a.adapter.options(),
        methods,
        seeds,
        lr_override: a.lr,
        head_lr: a.head_lr,
        tune_lr: !a.no_tune_lr,
        tune_seeds: a.tune_seeds,
        tune_steps: Some(a.tune_steps.unwrap_or((a.steps / 2).max(1))),
        base_weights: a.weights.clone(),
        cache_dir: cache_dir(a.cache_dir),
        fresh: a.fresh,
        out: out.clone(),
    };
    let report = job::compare(&source, &target, &opts, device, &mut |line| {
        eprintln!("{line}")
    })?;
    println!("\n{}", report.table());
    println!("{}", report.verdict());
    println!(
        "\nreport: {}  plot: {}  adapters: {}",
        out.join("report.md").display(),
        out.join("plot.svg").display(),
        out.join("adapters").display()
    );
    Ok(())
}

pub(crate) fn run_pretrain(a: PretrainArgs, common: &Common, device: &Device) -> Result<()> {
    let data = source_data(a.data_dir.as_deref())?.with_channels(a.model.idx_channels())?;
    let mut opts = default_pretrain_options(
        common,
        a.train.steps.unwrap_or(400),
        a.train.batch_size.unwrap_or(64),
    );
    opts.lr = a.train.lr.unwrap_or(opts.lr);
    opts.weight_decay = a.train.weight_decay.unwrap_or(opts.weight_decay);
    opts.grad_checkpointing = a.train.grad_checkpointing;
    let out = a.train.out_dir(a.out, "pretrain");
    let path = out.join("model.safetensors");
    let r = job::pretrain(
        a.model.config(data.train.classes)?,
        &data,
        &opts,
        device,
        &path,
        &a.train.checkpointing(&out),
    )?;
    println!(
        "pretrained: test accuracy {:.2}% ({} images), {:.1}s, {:.0} img/s; weights: {}",
        100.0 * r.eval.accuracy,
        r.eval.examples,
        r.seconds,
        r.images_per_second,
        path.display()
    );
    Ok(())
}

pub(crate) fn run_finetune(mut a: FinetuneArgs, common: &Common, device: &Device) -> Result<()> {
    if let Some(dir) = a.data.clone() {
        if liera::data::detect(&dir)? != liera::data::Layout::Idx {
            return run_finetune_images(a, &dir, common, device);
        }
        a.data_dir = Some(dir);
    }
    let method = a.adapter.method(Method::parse(&a.method)?, true)?;
    let data = target_data(a.data_dir.as_deref(), a.per_class, common.seed)?
        .with_channels(a.model.idx_channels())?;
    let mut opts = default_finetune_options(
        common,
        a.train.steps.unwrap_or(300),
        a.train.batch_size.unwrap_or(64),
    );
    opts.lr = a.train.lr.unwrap_or(method.default_lr());
    opts.weight_decay = a.train.weight_decay.unwrap_or(opts.weight_decay);
    opts.grad_checkpointing = a.train.grad_checkpointing;
    let out = a
        .train
        .out_dir(a.out, &format!("finetune-{}", method.name()));
    let config = a.model.config(data.train.classes)?;
    let r = job::finetune(
        &config,
        &a.weights,
        &(&data).into(),
        method,
        &a.adapter.options(),
        &opts,
        device,
        Some(&out),
        &a.train.checkpointing(&out),
    )?;
    println!(
        "{}: trainable {} of {} parameters, test accuracy {:.2}% ({} images), {:.1}s; saved to {}",
        r.method,
        r.trainable,
        r.total,
        100.0 * r.eval.accuracy,
        r.eval.examples,
        r.seconds,
        out.display()
    );
    Ok(())
}

fn build_model(
    model: &ModelArgs,
    weights: &Path,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<(ConvNeXt, bool)> {
    let mut net = ConvNeXt::new(model.config(10)?, device)?;
    let notes = liera::io::load_model(&mut net, weights)?;
    // The file's classifier has another class count: the model kept a fresh head.
    let new_head = notes.iter().any(|n| n.starts_with("head.fc.weight"));
    for note in notes {
        eprintln!("note: {note}");
    }
    let mut head_restored = false;
    if let Some(dir) = adapter {
        head_restored = liera::job::data::adapter_head_classes(dir)?.is_some();
        let cfg = liera::peft::load_adapter(&mut net, dir)?;
        eprintln!("adapter: {}", cfg.describe());
    }
    Ok((net, new_head && !head_restored))
}

pub(crate) fn run_eval(mut a: EvalArgs, common: &Common, device: &Device) -> Result<()> {
    if let Some(dir) = a.data.clone() {
        if liera::data::detect(&dir)? != liera::data::Layout::Idx {
            return run_eval_images(&a, &dir, common, device);
        }
        a.data_dir = Some(dir);
    }
    let (net, new_head) = build_model(&a.model, &a.weights, a.adapter.as_deref(), device)?;
    if new_head && !a.allow_new_head {
        return Err(Error::invalid(
            "eval",
            format!(
                "the classifier of {} does not have the data's 10 classes; pass --allow-new-head to score a \
                 freshly initialised head (chance accuracy)",
                a.weights.display()
            ),
        ));
    }
    let test = if a.mnist {
        source_data(None)?.test
    } else {
        match a.data_dir.as_deref() {
            Some(d) => load_dir(d)?.pad_to(IMAGE_SIZE)?.test,
            None => embedded_fashion_mnist()?.pad_to(IMAGE_SIZE)?.test,
        }
    }
    .with_channels(a.model.idx_channels())?;
    let e = evaluate(
        &net,
        device,
        liera::data::batch::Sequential::new(&test, 250)?,
    )?;
    println!(
        "test accuracy {:.2}%  mean cross-entropy {:.4}  ({} images)",
        100.0 * e.accuracy,
        e.loss,
        e.examples
    );
    Ok(())
}

pub(crate) fn run_merge(a: MergeArgs, device: &Device) -> Result<()> {
    let (mut net, _) = build_model(&a.model, &a.weights, Some(&a.adapter), device)?;
    let merged = liera::peft::merge_and_unload(&mut net)?;
    liera::io::save_model(&net, &a.out)?;
    println!(
        "merged {merged} adapted layers; wrote {} ({} parameters, the base model's cost)",
        a.out.display(),
        net.num_parameters()
    );
    Ok(())
}
