//! The subcommands on image files: finetune and eval on an image folder or a VTAB-1k task folder (reached
//! through `--data`), predict, and the VTAB-1k protocol over a root of task folders (vtab).

use super::args::{out_dir, AdapterArgs, Common, ImageArgs, ModelArgs};
use super::idx::{default_finetune_options, EvalArgs, FinetuneArgs};
use clap::Args;
use liera::data::images::Preprocess;
use liera::data::Examples;
use liera::job::data::{
    load_for_inference, load_task, load_test, read_data_config, resolve_model, resolve_preprocess,
    write_data_config,
};
use liera::job::vtab::{vtab, VtabOptions};
use liera::job::{self, Method, RunOptions, TaskData};
use liera::train::evaluate;
use liera::{Device, Result};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera predict --weights convnextv2_atto/ photo.jpg\n  liera predict --weights convnextv2_atto/ --adapter runs/lie cat.png dog.jpg --top 3"
)]
pub(crate) struct PredictArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    /// Weights: a safetensors file or a timm model folder (config.json + model.safetensors).
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// A fine-tuned adapter folder to apply first (its data_config.json names the classes).
    #[arg(long)]
    pub(crate) adapter: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    /// The images (PNG or JPEG).
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera vtab --root ~/vtab-1k --weights convnextv2_base/ --methods lora,liera\n  liera vtab --root ~/vtab-1k --weights convnextv2_atto/ --tasks cifar,dtd --steps 500 --out runs/vtab\n  liera vtab ... (the same flags again)    # continues a killed run where it stopped"
)]
pub(crate) struct VtabArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) adapter: AdapterArgs,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    /// The VTAB-1k root: one folder per task with train800.txt, val200.txt, train800val200.txt, test.txt.
    #[arg(long)]
    pub(crate) root: PathBuf,
    /// Weights: a safetensors file or a timm model folder (config.json + model.safetensors).
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// Comma-separated methods (rows of the table): full, linear, lora, liera, liera_first_order, and with
    /// LoHa or LoKr generating ΔW loha, lokr, liera_loha, liera_lokr, liera_first_order_loha, ….
    #[arg(long, default_value = "lora,liera")]
    pub(crate) methods: String,
    /// Comma-separated task folder names to run (default: every task under --root).
    #[arg(long, value_delimiter = ',')]
    pub(crate) tasks: Vec<String>,
    /// Training steps of every run (default: 100 epochs of 1,000 images, as in the literature).
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// One learning rate for every method and task (no tuning on val200).
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// Comma-separated learning rates to try on val200 (default: each method's ladder).
    #[arg(long, value_delimiter = ',')]
    pub(crate) lr_grid: Option<Vec<f32>>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) weight_decay: f32,
    /// Recompute each block's activations in the backward pass instead of keeping them (less memory, the
    /// same results).
    #[arg(long)]
    pub(crate) grad_checkpointing: bool,
    /// Checkpoint every final run this many steps (a killed run resumes there).
    #[arg(long, default_value_t = 50)]
    pub(crate) checkpoint_every: u64,
    /// Output folder (default: a new folder under runs/; give the same one to resume).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

pub(crate) fn run_finetune_images(
    a: FinetuneArgs,
    dir: &Path,
    common: &Common,
    device: &Device,
) -> Result<()> {
    let method = a.adapter.method(Method::parse(&a.method)?, true)?;
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

pub(crate) fn run_eval_images(
    a: &EvalArgs,
    dir: &Path,
    common: &Common,
    device: &Device,
) -> Result<()> {
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

pub(crate) fn run_predict(a: PredictArgs, common: &Common, device: &Device) -> Result<()> {
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

pub(crate) fn run_vtab(a: VtabArgs, common: &Common, device: &Device) -> Result<()> {
    let methods = a.adapter.methods(&a.methods)?;
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
            head_lr: None,
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
