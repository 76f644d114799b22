//! The `liera` command. With no arguments it runs the main job: pretrain a small ConvNeXt on real digits
//! (MNIST), then fine-tune it on real clothing images (Fashion-MNIST, 100 per class) with full fine-tuning,
//! linear probing, LoRA, LieRA and LieRA first-order at equal rank, and print the comparison table.

use clap::{Args, Parser, Subcommand};
use liera::data::embedded::{embedded_fashion_mnist, embedded_mnist, load_dir};
use liera::data::images::{BadImages, Preprocess};
use liera::data::Examples;
use liera::data::Splits;
use liera::job::data::{
    load_for_inference, load_task, load_test, read_data_config, resolve_model, resolve_preprocess,
    write_data_config, LoadOptions, ModelFlags, PreprocessFlags,
};
use liera::job::vtab::{vtab, VtabOptions};
use liera::job::{self, AdapterOptions, CompareOptions, Method, RunOptions, TaskData, IMAGE_SIZE};
use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::train::evaluate;
use liera::{Device, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "liera",
    version,
    about = "Fine-tune ConvNeXt with LoRA and the Lie-group adapter LieRA (W' = W ⊙ exp(ΔW)) on CPU or any GPU",
    after_help = "Examples:\n  liera                                  # the main job: pretrain on digits, compare methods on clothing\n  liera compare --seeds 3                # the same, over 3 seeds (mean ± std)\n  liera pretrain --out runs/base         # pretrain only\n  liera finetune --weights runs/base/model.safetensors --method liera --rank 8\n  liera eval --weights runs/base/model.safetensors --data-dir path/to/fashion-mnist\n  liera merge --weights base.safetensors --adapter runs/x/adapters/liera-seed0 --out merged.safetensors\n  liera bench --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Where to run: auto (a GPU adapter if one exists, else the CPU), cpu or gpu.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Seed of initialisation, adapter init and batch order.
    #[arg(long, global = true, default_value_t = 0)]
    seed: u64,
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain on the source task, then compare fine-tuning methods on the target task (the default job).
    Compare(CompareArgs),
    /// Pretrain a ConvNeXt on the source task (MNIST by default) and save its weights.
    Pretrain(PretrainArgs),
    /// Fine-tune pretrained weights on the target task with one method.
    Finetune(FinetuneArgs),
    /// Evaluate weights (and optionally an adapter) on a test set.
    Eval(EvalArgs),
    /// Merge an adapter into its base weights and write the merged model.
    Merge(MergeArgs),
    /// Print the top classes of images under fine-tuned weights (and adapter).
    Predict(PredictArgs),
    /// Run the VTAB-1k protocol over every task folder of a root and write the table.
    Vtab(VtabArgs),
    /// Measure matmul, convolution and training-step speed on the chosen device.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera predict --weights convnextv2_atto/ photo.jpg\n  liera predict --weights convnextv2_atto/ --adapter runs/lie cat.png dog.jpg --top 3"
)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    images: ImageArgs,
    /// Weights: a safetensors file or a timm model folder (config.json + model.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// A fine-tuned adapter folder to apply first (its data_config.json names the classes).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// The images (PNG or JPEG).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera vtab --root ~/vtab-1k --weights convnextv2_base/ --methods lora,liera\n  liera vtab --root ~/vtab-1k --weights convnextv2_atto/ --tasks cifar,dtd --steps 500 --out runs/vtab\n  liera vtab ... (the same flags again)    # continues a killed run where it stopped"
)]
struct VtabArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    images: ImageArgs,
    /// The VTAB-1k root: one folder per task with train800.txt, val200.txt, train800val200.txt, test.txt.
    #[arg(long)]
    root: PathBuf,
    /// Weights: a safetensors file or a timm model folder (config.json + model.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Comma-separated methods (rows of the table).
    #[arg(long, default_value = "lora,liera")]
    methods: String,
    /// Comma-separated task folder names to run (default: every task under --root).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Training steps of every run (default: 100 epochs of 1,000 images, as in the literature).
    #[arg(long)]
    steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// One learning rate for every method and task (no tuning on val200).
    #[arg(long)]
    lr: Option<f32>,
    /// Comma-separated learning rates to try on val200 (default: each method's ladder).
    #[arg(long, value_delimiter = ',')]
    lr_grid: Option<Vec<f32>>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Recompute each block's activations in the backward pass instead of keeping them (less memory, the
    /// same results).
    #[arg(long)]
    grad_checkpointing: bool,
    /// Checkpoint every final run this many steps (a killed run resumes there).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Output folder (default: a new folder under runs/; give the same one to resume).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera bench                 # the chosen device (a hardware GPU if any, else the CPU)\n  liera bench --device cpu --json\n  liera bench --quick         # a smoke test of the figures"
)]
struct BenchArgs {
    /// Fewer repetitions and smaller sizes (a smoke test of the figures).
    #[arg(long)]
    quick: bool,
    /// Instead of the suite: training steps of this preset (e.g. convnextv2_base), with their time, peak
    /// memory and memory per image.
    #[arg(long)]
    step: Option<String>,
    /// With --step: the methods stepped (full, lora, liera, liera_first_order).
    #[arg(long, default_value = "full,lora,liera")]
    kinds: String,
    /// With --step: images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// With --step: the RGB input side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// With --step: checkpoint every block's activations.
    #[arg(long)]
    grad_checkpointing: bool,
    /// With --step: timed steps after the first, which measures memory (at least 1).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Print the results as JSON (for machines) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// ConvNeXt preset: convnext_{atto,femto,pico,nano,tiny,small,base,large},
    /// convnextv2_{atto,femto,pico,nano,tiny,base,large,huge}, or micro (the main job's, the default on IDX
    /// data). With real weights the architecture is read off the file; a preset that contradicts it is an
    /// error.
    #[arg(long)]
    preset: Option<String>,
    /// Input channels of the network: 1 for grey images (the default on IDX data), 3 for RGB (the default
    /// for image folders, and what timm's weights take; grey IDX images are repeated into each channel).
    #[arg(long)]
    in_chans: Option<usize>,
}

impl ModelArgs {
    /// The architecture for the IDX path: --preset (micro) with --in-chans (1).
    fn config(&self, classes: usize) -> Result<ConvNeXtConfig> {
        let in_chans = self.in_chans.unwrap_or(1);
        if !(in_chans == 1 || in_chans == 3) {
            return Err(Error::invalid(
                "liera",
                format!("--in-chans must be 1 or 3, got {in_chans}"),
            ));
        }
        Ok(
            ConvNeXtConfig::preset(self.preset.as_deref().unwrap_or("micro"))?
                .with_in_chans(in_chans)
                .with_classes(classes),
        )
    }

    /// Channels of the IDX path's images.
    fn idx_channels(&self) -> usize {
        self.in_chans.unwrap_or(1)
    }

    fn flags(&self) -> ModelFlags {
        ModelFlags {
            preset: self.preset.clone(),
            in_chans: self.in_chans,
        }
    }
}

/// How image files are read and preprocessed (image folders and VTAB-1k task folders).
#[derive(Args, Debug, Clone)]
struct ImageArgs {
    /// A named preprocessing instead of the weights' config: `vtab` (resize straight to 224×224, bicubic,
    /// ImageNet mean/std; the literature's VTAB-1k protocol) or `imagenet` (timm's defaults at 224).
    #[arg(long)]
    preprocess: Option<String>,
    /// Input side length (overrides the weights' input_size).
    #[arg(long)]
    size: Option<usize>,
    /// Fraction of the resized image the evaluation crop keeps (timm's crop_pct).
    #[arg(long)]
    crop_pct: Option<f64>,
    /// How the evaluation transform resizes: center (shorter side, keep aspect) or squash.
    #[arg(long)]
    crop_mode: Option<String>,
    /// Resampling filter: bicubic, bilinear or nearest (antialiased like PIL).
    #[arg(long)]
    interpolation: Option<String>,
    /// Per-channel mean, comma-separated (e.g. 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma-separated.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Train on random-resized crops with horizontal flips (timm's training transform) instead of the
    /// evaluation transform.
    #[arg(long)]
    augment: bool,
    /// Leave unreadable images out (counted in one warning) instead of stopping with an error.
    #[arg(long)]
    skip_bad_images: bool,
}

impl ImageArgs {
    fn flags(&self) -> PreprocessFlags {
        PreprocessFlags {
            preset: self.preprocess.clone(),
            size: self.size,
            crop_pct: self.crop_pct,
            crop_mode: self.crop_mode.clone(),
            interpolation: self.interpolation.clone(),
            mean: self.mean.clone(),
            std: self.std.clone(),
            augment: self.augment,
        }
    }
    fn load_options(&self, preprocess: Preprocess, quiet: bool) -> LoadOptions {
        LoadOptions {
            preprocess,
            bad_images: if self.skip_bad_images {
                BadImages::Skip
            } else {
                BadImages::Fail
            },
            progress: !quiet,
        }
    }
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Training steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default: per method).
    #[arg(long)]
    lr: Option<f32>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Write <out>/checkpoint.safetensors (weights, adapters, optimizer state, step, data position) at the
    /// first logging step this many steps after the last one, and at the end (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Recompute each block's activations in the backward pass instead of keeping them: a fraction of the
    /// memory for about a third more compute, the same results (timm's --grad-checkpointing).
    #[arg(long)]
    grad_checkpointing: bool,
    /// Continue from a checkpoint (its file, or the folder holding checkpoint.safetensors); pass the same
    /// flags as the interrupted run for bit-identical results (seed, batch size and method must match; a
    /// lower --lr after a divergence is allowed). --out defaults to the checkpoint's folder.
    #[arg(long)]
    resume: Option<PathBuf>,
}

impl TrainArgs {
    /// The output folder: --out, else the folder of the checkpoint being resumed, else a new one.
    fn out_dir(&self, given: Option<PathBuf>, prefix: &str) -> PathBuf {
        let from_resume = self.resume.as_ref().map(|r| {
            if r.is_dir() {
                r.clone()
            } else {
                r.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        });
        out_dir(given.or(from_resume), prefix)
    }

    fn checkpointing(&self, out: &Path) -> job::Checkpointing {
        job::Checkpointing {
            path: Some(out.join(job::CHECKPOINT_FILE)),
            every: self.checkpoint_every,
            resume: self.resume.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct AdapterArgs {
    /// Adapter rank r.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Adapter α (scale α/r).
    #[arg(long, default_value_t = 8.0)]
    alpha: f32,
    /// Comma-separated module-path patterns of the layers to adapt.
    #[arg(long, default_value = "conv_dw,mlp.fc1,mlp.fc2")]
    target: String,
}

impl AdapterArgs {
    fn options(&self) -> AdapterOptions {
        AdapterOptions {
            rank: self.rank,
            alpha: self.alpha,
            targets: self.target.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera compare                                   # what `cargo run --release` runs\n  liera compare --seeds 3                         # mean ± std over three seeds\n  liera compare --methods lora,liera --rank 4 --target conv_dw\n  liera compare --data-dir ~/datasets             # full IDX files in ~/datasets/{mnist,fashion-mnist}\n  liera compare --weights convnext_atto.safetensors --preset atto --in-chans 3"
)]
struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Fine-tuning steps per method.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Pretraining steps.
    #[arg(long, default_value_t = 400)]
    pretrain_steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// One learning rate for every method (overrides the tuning).
    #[arg(long)]
    lr: Option<f32>,
    /// Use fixed per-method learning rates (1e-3 full, 1e-2 linear, 5e-3 adapters) instead of choosing each
    /// method's on a validation split.
    #[arg(long)]
    no_tune_lr: bool,
    /// Repeat the fine-tuning comparison over this many seeds (seed, seed+1, ...) and report mean ± std.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Comma-separated methods to run.
    #[arg(long, default_value = "full,linear,lora,liera,liera_first_order")]
    methods: String,
    /// A folder with mnist/ and fashion-mnist/ subfolders of full IDX files (gzip or not) instead of the
    /// embedded subsets.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Training images per class taken from the target task's training split.
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Retrain the source model even if a cached checkpoint exists.
    #[arg(long)]
    fresh: bool,
    /// Fine-tune these pretrained weights (liera's or a timm ConvNeXt safetensors file matching --preset and
    /// --in-chans) instead of pretraining on the source task.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the pretrained checkpoint is cached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Output folder (default: a new folder under runs/).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera pretrain --out runs/base                  # weights: runs/base/model.safetensors\n  liera pretrain --preset convnextv2_atto --steps 1000 --data-dir ~/datasets/mnist\n  liera pretrain --resume runs/base               # continue a killed run"
)]
struct PretrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// A folder with the four IDX files of the source task (default: the embedded MNIST subset).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder; the weights go to <out>/model.safetensors.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera finetune --weights runs/base/model.safetensors --method liera --rank 8 --lr 0.05\n  liera finetune --weights runs/base/model.safetensors --method lora --target 'stages.3.*' --alpha 16\n  liera finetune --weights runs/base/model.safetensors --method full --steps 500 --out runs/full"
)]
struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Pretrained weights: a safetensors file (liera's or timm's) or a timm model folder (config.json +
    /// model.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// full, linear, lora, liera (exact) or liera_first_order.
    #[arg(long, default_value = "liera")]
    method: String,
    /// A folder with the four IDX files of the target task (default: the embedded Fashion-MNIST subset).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A task folder of images: ImageFolder (class folders, with train/ and val/ or test/ when present) or
    /// a VTAB-1k task (train800val200.txt, test.txt); IDX files work too. The weights may be a timm model
    /// folder; preprocessing follows its config.
    #[arg(long, conflicts_with = "data_dir")]
    data: Option<PathBuf>,
    #[command(flatten)]
    images: ImageArgs,
    /// Training images per class (IDX data).
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Output folder for the adapter (or the model, for full and linear).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera eval --weights runs/base/model.safetensors --mnist\n  liera eval --weights runs/base/model.safetensors --adapter runs/lie\n  liera eval --weights runs/merged.safetensors --data-dir ~/datasets/fashion-mnist"
)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights to evaluate.
    #[arg(long)]
    weights: PathBuf,
    /// An adapter folder (adapter_config.json + adapter_model.safetensors) to apply first.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A folder with the test IDX files (default: the embedded Fashion-MNIST test set).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A task folder of images (ImageFolder: val/ or test/; VTAB-1k: test.txt) to score instead.
    #[arg(long, conflicts_with_all = ["data_dir", "mnist"])]
    data: Option<PathBuf>,
    #[command(flatten)]
    images: ImageArgs,
    /// Score a freshly initialised head when the data's class count differs from the classifier's
    /// (otherwise that is an error).
    #[arg(long)]
    allow_new_head: bool,
    /// Evaluate on the embedded MNIST test set instead.
    #[arg(long)]
    mnist: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera merge --weights runs/base/model.safetensors --adapter runs/lie --out runs/merged.safetensors"
)]
struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Base weights.
    #[arg(long)]
    weights: PathBuf,
    /// The adapter folder to merge.
    #[arg(long)]
    adapter: PathBuf,
    /// The merged model's path.
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let common = cli.common.clone();
    // No subcommand: the comparison with every default (parsed, so the defaults live in one place).
    let command = match cli.command {
        Some(c) => c,
        None => Cli::try_parse_from(["liera", "compare"])
            .map_err(|e| Error::invalid("liera", e.to_string()))?
            .command
            .expect("`compare` parses to a command"),
    };
    // Flags are checked before any device or data work, so a typo costs nothing.
    match &command {
        Command::Compare(a) => {
            check_adapter_args(&a.adapter)?;
            check_positive("--steps", a.steps as f64)?;
            check_positive("--pretrain-steps", a.pretrain_steps as f64)?;
            check_positive("--batch-size", a.batch_size as f64)?;
            check_positive("--seeds", a.seeds as f64)?;
            check_positive("--per-class", a.per_class as f64)?;
            if let Some(lr) = a.lr {
                check_positive("--lr", lr as f64)?;
            }
            parse_methods(&a.methods)?;
            seed_range(common.seed, a.seeds)?;
        }
        Command::Finetune(a) => {
            check_adapter_args(&a.adapter)?;
            check_train_args(&a.train)?;
            check_positive("--per-class", a.per_class as f64)?;
            Method::parse(&a.method)?;
        }
        Command::Pretrain(a) => check_train_args(&a.train)?,
        Command::Vtab(a) => {
            check_adapter_args(&a.adapter)?;
            check_positive("--batch-size", a.batch_size as f64)?;
            if let Some(s) = a.steps {
                check_positive("--steps", s as f64)?;
            }
            if let Some(lr) = a.lr {
                check_positive("--lr", lr as f64)?;
            }
            for lr in a.lr_grid.iter().flatten() {
                check_positive("--lr-grid", *lr as f64)?;
            }
            parse_methods(&a.methods)?;
        }
        Command::Predict(a) => check_positive("--top", a.top as f64)?,
        Command::Eval(_) | Command::Merge(_) | Command::Bench(_) => {}
    }
    let device = job::select_device(&common.device)?;
    match command {
        Command::Compare(a) => run_compare(a, &common, &device),
        Command::Pretrain(a) => run_pretrain(a, &common, &device),
        Command::Finetune(a) => run_finetune(a, &common, &device),
        Command::Eval(a) => run_eval(a, &common, &device),
        Command::Merge(a) => run_merge(a, &device),
        Command::Predict(a) => run_predict(a, &common, &device),
        Command::Vtab(a) => run_vtab(a, &common, &device),
        Command::Bench(a) => run_bench(a, &device),
    }
}

fn check_positive(flag: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "liera",
            format!("{flag} must be positive, got {v}"),
        ))
    }
}

fn check_adapter_args(a: &AdapterArgs) -> Result<()> {
    if a.rank == 0 {
        return Err(Error::invalid("liera", "--rank must be at least 1, got 0"));
    }
    check_positive("--alpha", a.alpha as f64)
}

fn check_train_args(t: &TrainArgs) -> Result<()> {
    if let Some(s) = t.steps {
        check_positive("--steps", s as f64)?;
    }
    if let Some(b) = t.batch_size {
        check_positive("--batch-size", b as f64)?;
    }
    if let Some(lr) = t.lr {
        check_positive("--lr", lr as f64)?;
    }
    if let Some(wd) = t.weight_decay {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(Error::invalid(
                "liera",
                format!("--weight-decay must be ≥ 0, got {wd}"),
            ));
        }
    }
    Ok(())
}

/// A new folder runs/<prefix>-<unix time> (or the one given).
fn out_dir(given: Option<PathBuf>, prefix: &str) -> PathBuf {
    given.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("runs").join(format!("{prefix}-{secs}"))
    })
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
        weight_decay: 0.05,
        warmup: 20.min(steps / 10),
        seed: common.seed,
        augment_shift: 2,
        log_every: 5,
        progress: !common.quiet,
        grad_checkpointing: false,
    }
}

fn default_finetune_options(common: &Common, steps: u64, batch_size: usize) -> RunOptions {
    RunOptions {
        steps,
        batch_size,
        lr: 1e-3,
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

fn run_compare(a: CompareArgs, common: &Common, device: &Device) -> Result<()> {
    let methods = parse_methods(&a.methods)?;
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
        tune_lr: !a.no_tune_lr,
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

fn run_pretrain(a: PretrainArgs, common: &Common, device: &Device) -> Result<()> {
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

fn run_finetune(mut a: FinetuneArgs, common: &Common, device: &Device) -> Result<()> {
    if let Some(dir) = a.data.clone() {
        if liera::data::detect(&dir)? != liera::data::Layout::Idx {
            return run_finetune_images(a, &dir, common, device);
        }
        a.data_dir = Some(dir);
    }
    let method = Method::parse(&a.method)?;
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

fn run_finetune_images(
    a: FinetuneArgs,
    dir: &Path,
    common: &Common,
    device: &Device,
) -> Result<()> {
    let method = Method::parse(&a.method)?;
    let model = resolve_model(&a.weights, &a.model.flags())?;
    let preprocess = resolve_preprocess(&model, &a.images.flags())?;
    let task = load_task(
        dir,
        ("train800val200.txt", "test.txt"),
        &a.images.load_options(preprocess.clone(), common.quiet),
    )?;
    let mut opts = default_finetune_options(
        common,
        a.train.steps.unwrap_or(300),
        a.train.batch_size.unwrap_or(32),
    );
    opts.augment_shift = 0;
    opts.lr = a.train.lr.unwrap_or(method.default_lr());
    opts.weight_decay = a.train.weight_decay.unwrap_or(opts.weight_decay);
    opts.grad_checkpointing = a.train.grad_checkpointing;
    let out = a
        .train
        .out_dir(a.out, &format!("finetune-{}", method.name()));
    let config = model.config.clone().with_classes(task.train.classes());
    let r = job::finetune(
        &config,
        &model.weights,
        &TaskData {
            train: &task.train,
            test: &task.test,
        },
        method,
        &a.adapter.options(),
        &opts,
        device,
        Some(&out),
        &a.train.checkpointing(&out),
    )?;
    write_data_config(&out, task.train.class_names(), &preprocess)?;
    println!(
        "{}: trainable {} of {} parameters, test accuracy {:.2}% ({} images), {:.1}s ({:.1} img/s); saved to {}",
        r.method,
        r.trainable,
        r.total,
        100.0 * r.eval.accuracy,
        r.eval.examples,
        r.seconds,
        r.images_per_second,
        out.display()
    );
    Ok(())
}

/// The preprocessing for evaluating or predicting with `adapter` (or fine-tuned weights): what it was
/// fine-tuned with (its data_config.json), else the weights' config; flags on top either way.
fn inference_preprocess(
    model: &liera::io::PretrainedModel,
    adapter: Option<&Path>,
    images: &ImageArgs,
) -> Result<(Preprocess, Option<Vec<String>>)> {
    let dir = adapter.map(Path::to_path_buf).or_else(|| {
        model
            .weights
            .parent()
            .filter(|d| d.join(job::data::DATA_CONFIG_FILE).is_file())
            .map(Path::to_path_buf)
    });
    let data_cfg = match dir {
        Some(d) => read_data_config(&d)?,
        None => None,
    };
    let mut model = model.clone();
    if let Some(c) = &data_cfg {
        model.pretrained_cfg = Some(c.pretrained_cfg.clone());
    }
    let mut flags = images.flags();
    flags.augment = false;
    let pre = resolve_preprocess(&model, &flags)?;
    let names = data_cfg
        .map(|c| c.label_names)
        .or(model.label_names.clone());
    Ok((pre, names))
}

fn run_predict(a: PredictArgs, common: &Common, device: &Device) -> Result<()> {
    let model = resolve_model(&a.weights, &a.model.flags())?;
    let (pre, names) = inference_preprocess(&model, a.adapter.as_deref(), &a.images)?;
    let net = load_for_inference(&model, a.adapter.as_deref(), None, false, device)?;
    let _ = common;
    for file in &a.files {
        let img = liera::data::decode_file(file, pre.channels)?;
        let input = pre.eval_transform(&img)?;
        let mut x = vec![0f32; pre.channels * pre.size * pre.size];
        liera::data::transform::normalize_into(&input, &pre.mean, &pre.std, &mut x)?;
        let logits = liera::no_grad(|| {
            let t =
                liera::Tensor::from_slice(&x, vec![1, pre.channels, pre.size, pre.size], device)?;
            liera::nn::Classifier::forward(&net, &t, false)?.to_vec()
        })?;
        let probs = softmax(&logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
        println!("{}", file.display());
        for &k in order.iter().take(a.top) {
            let name = names
                .as_ref()
                .and_then(|n| n.get(k).cloned())
                .unwrap_or_else(|| format!("class {k}"));
            println!("  {:6.2}%  {name}", 100.0 * probs[k]);
        }
    }
    Ok(())
}

/// Softmax in f64 (stable: shifted by the largest logit).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn run_vtab(a: VtabArgs, common: &Common, device: &Device) -> Result<()> {
    let methods = parse_methods(&a.methods)?;
    let model = resolve_model(&a.weights, &a.model.flags())?;
    let mut flags = a.images.flags();
    if flags.preset.is_none() && !a.images_given() {
        flags.preset = Some("vtab".into());
    }
    let preprocess = resolve_preprocess(&model, &flags)?;
    // 100 epochs of train800val200 (1,000 images), as in the literature.
    let steps = a
        .steps
        .unwrap_or_else(|| (100 * 1000u64).div_ceil(a.batch_size as u64));
    let out = out_dir(a.out.clone(), "vtab");
    let opts = VtabOptions {
        root: a.root.clone(),
        tasks: a.tasks.clone(),
        model,
        load: a.images.load_options(preprocess, common.quiet),
        methods,
        adapter: a.adapter.options(),
        run: RunOptions {
            steps,
            batch_size: a.batch_size,
            lr: 1e-3,
            weight_decay: a.weight_decay,
            warmup: (steps / 10).min(200),
            seed: common.seed,
            augment_shift: 0,
            log_every: 5,
            progress: !common.quiet,
            grad_checkpointing: a.grad_checkpointing,
        },
        lr: a.lr,
        lr_grid: a.lr_grid.clone(),
        checkpoint_every: a.checkpoint_every,
        out: out.clone(),
    };
    let table = vtab(&opts, device, &mut |line| eprintln!("{line}"))?;
    println!("\n{}", table.markdown());
    println!(
        "report: {}  csv: {}  plot: {}",
        out.join("report.md").display(),
        out.join("results.csv").display(),
        out.join("plot.svg").display()
    );
    Ok(())
}

impl VtabArgs {
    /// Whether any preprocessing flag was given (then the weights' config is the base, not the preset).
    fn images_given(&self) -> bool {
        let i = &self.images;
        i.size.is_some()
            || i.crop_pct.is_some()
            || i.crop_mode.is_some()
            || i.interpolation.is_some()
            || i.mean.is_some()
            || i.std.is_some()
    }
}

fn build_model(
    model: &ModelArgs,
    weights: &Path,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<ConvNeXt> {
    let mut net = ConvNeXt::new(model.config(10)?, device)?;
    for note in liera::io::load_model(&mut net, weights)? {
        eprintln!("note: {note}");
    }
    if let Some(dir) = adapter {
        let cfg = liera::peft::load_adapter(&mut net, dir)?;
        eprintln!(
            "adapter: {} r={} α={} on {}",
            cfg.method.name(),
            cfg.r,
            cfg.alpha,
            cfg.target_modules.join(",")
        );
    }
    Ok(net)
}

fn run_eval_images(a: &EvalArgs, dir: &Path, common: &Common, device: &Device) -> Result<()> {
    let model = resolve_model(&a.weights, &a.model.flags())?;
    let (pre, _) = inference_preprocess(&model, a.adapter.as_deref(), &a.images)?;
    let test = load_test(dir, &a.images.load_options(pre, common.quiet))?;
    let net = load_for_inference(
        &model,
        a.adapter.as_deref(),
        Some(test.classes()),
        a.allow_new_head,
        device,
    )?;
    let e = evaluate(
        &net,
        device,
        liera::data::batch::Sequential::new(&test, 64)?,
    )?;
    println!(
        "test accuracy {:.2}%  mean cross-entropy {:.4}  ({} images)",
        100.0 * e.accuracy,
        e.loss,
        e.examples
    );
    Ok(())
}

fn run_eval(mut a: EvalArgs, common: &Common, device: &Device) -> Result<()> {
    if let Some(dir) = a.data.clone() {
        if liera::data::detect(&dir)? != liera::data::Layout::Idx {
            return run_eval_images(&a, &dir, common, device);
        }
        a.data_dir = Some(dir);
    }
    let net = build_model(&a.model, &a.weights, a.adapter.as_deref(), device)?;
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

fn run_merge(a: MergeArgs, device: &Device) -> Result<()> {
    let mut net = build_model(&a.model, &a.weights, Some(&a.adapter), device)?;
    let merged = liera::peft::merge_and_unload(&mut net)?;
    liera::io::save_model(&net, &a.out)?;
    println!(
        "merged {merged} adapted layers; wrote {} ({} parameters, the base model's cost)",
        a.out.display(),
        net.num_parameters()
    );
    Ok(())
}

fn run_bench(a: BenchArgs, device: &Device) -> Result<()> {
    let results = match &a.step {
        None => liera::job::bench::suite(device, a.quick)?,
        Some(preset) => {
            use liera::job::bench::StepKind;
            let kinds = parse_methods(&a.kinds)?
                .into_iter()
                .map(|m| match m {
                    Method::Full => Ok(StepKind::Full),
                    Method::Adapter(k) => Ok(StepKind::Adapter(k)),
                    Method::LinearProbe => Err(Error::invalid(
                        "liera",
                        "--kinds: the step benchmark has full and the adapter kinds, not linear",
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            check_positive("--batch", a.batch as f64)?;
            check_positive("--size", a.size as f64)?;
            liera::job::bench::training_steps_at(
                device,
                &ConvNeXtConfig::preset(preset)?,
                preset,
                &kinds,
                a.batch,
                [3, a.size],
                a.reps,
                a.grad_checkpointing,
            )?
        }
    };
    let peak = liera::job::bench::peak_memory_bytes();
    if a.json {
        let doc = serde_json::json!({
            "device": device.name(),
            "threads": rayon::current_num_threads(),
            "peak_rss_bytes": peak,
            "results": results,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("a JSON value serialises")
        );
        return Ok(());
    }
    println!(
        "device: {}  threads: {}",
        device.name(),
        rayon::current_num_threads()
    );
    println!(
        "{:<66} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "benchmark", "median ms", "GFLOP/s", "images/s", "peak MiB", "MiB/image"
    );
    let mib = |b: f64| b / (1u64 << 20) as f64;
    for r in &results {
        println!(
            "{:<66} {:>10.3} {:>9} {:>9} {:>9} {:>10}",
            r.name,
            1e3 * r.median_s,
            r.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            r.images_per_s.map_or("-".into(), |i| format!("{i:.1}")),
            r.peak_rss_bytes
                .map_or("-".into(), |p| format!("{:.0}", mib(p as f64))),
            r.step_bytes_per_image
                .map_or("-".into(), |p| format!("{:.1}", mib(p)))
        );
    }
    if let Some(p) = peak {
        println!(
            "peak resident memory: {:.0} MiB",
            p as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The comma-separated `--methods` list: each known, none twice (a repeated method would be counted as
/// another seed in the summary and overwrite the other's adapter).
fn parse_methods(list: &str) -> Result<Vec<Method>> {
    let mut methods = Vec::new();
    for name in list.split(',') {
        let m = Method::parse(name.trim())?;
        if methods.contains(&m) {
            return Err(Error::invalid(
                "liera",
                format!("--methods lists `{}` twice", m.name()),
            ));
        }
        methods.push(m);
    }
    Ok(methods)
}

/// Seeds `first`, `first + 1`, … (`count` of them), or an error if they would pass u64::MAX.
fn seed_range(first: u64, count: u64) -> Result<Vec<u64>> {
    let end = first.checked_add(count).ok_or_else(|| {
        Error::invalid(
            "liera",
            format!("--seed {first} with --seeds {count} runs past the largest seed"),
        )
    })?;
    Ok((first..end).collect())
}
