//! The flags several subcommands share (the device and seed, the model, image preprocessing, training and
//! adapter flags), what they turn into, and the checks run on flags before any device or data work.

use clap::Args;
use liera::data::images::{BadImages, Preprocess};
use liera::job::data::{LoadOptions, ModelFlags, PreprocessFlags};
use liera::job::{self, AdapterOptions, Method};
use liera::nn::ConvNeXtConfig;
use liera::peft::DeltaKind;
use liera::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Where to run: auto (a GPU adapter if one exists, else the CPU), cpu or gpu.
    #[arg(long, global = true, default_value = "auto")]
    pub(crate) device: String,
    /// Seed of initialisation, adapter init and batch order.
    #[arg(long, global = true, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Hide progress bars.
    #[arg(long, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// ConvNeXt preset: convnext_{atto,femto,pico,nano,tiny,small,base,large},
    /// convnextv2_{atto,femto,pico,nano,tiny,base,large,huge}, or micro (the main job's, the default on IDX
    /// data). With real weights the architecture is read off the file; a preset that contradicts it is an
    /// error.
    #[arg(long)]
    pub(crate) preset: Option<String>,
    /// Input channels of the network: 1 for grey images (the default on IDX data), 3 for RGB (the default
    /// for image folders, and what timm's weights take; grey IDX images are repeated into each channel).
    #[arg(long)]
    pub(crate) in_chans: Option<usize>,
}

impl ModelArgs {
    /// The architecture for the IDX path: --preset (micro) with --in-chans (1).
    pub(crate) fn config(&self, classes: usize) -> Result<ConvNeXtConfig> {
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
    pub(crate) fn idx_channels(&self) -> usize {
        self.in_chans.unwrap_or(1)
    }

    pub(crate) fn flags(&self) -> ModelFlags {
        ModelFlags {
            preset: self.preset.clone(),
            in_chans: self.in_chans,
        }
    }
}

/// How image files are read and preprocessed (image folders and VTAB-1k task folders).
#[derive(Args, Debug, Clone)]
pub(crate) struct ImageArgs {
    /// A named preprocessing instead of the weights' config: `vtab` (resize straight to 224×224, bicubic,
    /// ImageNet mean/std; the literature's VTAB-1k protocol) or `imagenet` (timm's defaults at 224).
    #[arg(long)]
    pub(crate) preprocess: Option<String>,
    /// Input side length (overrides the weights' input_size).
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// Fraction of the resized image the evaluation crop keeps (timm's crop_pct).
    #[arg(long)]
    pub(crate) crop_pct: Option<f64>,
    /// How the evaluation transform resizes: center (shorter side, keep aspect) or squash.
    #[arg(long)]
    pub(crate) crop_mode: Option<String>,
    /// Resampling filter: bicubic, bilinear or nearest (antialiased like PIL).
    #[arg(long)]
    pub(crate) interpolation: Option<String>,
    /// Per-channel mean, comma-separated (e.g. 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',')]
    pub(crate) mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) std: Option<Vec<f32>>,
    /// Train on random-resized crops with horizontal flips (timm's training transform) instead of the
    /// evaluation transform.
    #[arg(long)]
    pub(crate) augment: bool,
    /// Leave unreadable images out (counted in one warning) instead of stopping with an error.
    #[arg(long)]
    pub(crate) skip_bad_images: bool,
}

impl ImageArgs {
    pub(crate) fn flags(&self) -> PreprocessFlags {
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
    pub(crate) fn load_options(&self, preprocess: Preprocess, quiet: bool) -> LoadOptions {
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
pub(crate) struct TrainArgs {
    /// Training steps.
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Peak learning rate (default: per method).
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// AdamW weight decay.
    #[arg(long)]
    pub(crate) weight_decay: Option<f32>,
    /// Write <out>/checkpoint.safetensors (weights, adapters, optimizer state, step, data position) at the
    /// first logging step this many steps after the last one, and at the end (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub(crate) checkpoint_every: u64,
    /// Recompute each block's activations in the backward pass instead of keeping them: a fraction of the
    /// memory for about a third more compute, the same results (timm's --grad-checkpointing).
    #[arg(long)]
    pub(crate) grad_checkpointing: bool,
    /// Continue from a checkpoint (its file, or the folder holding checkpoint.safetensors); pass the same
    /// flags as the interrupted run for bit-identical results (seed, batch size and method must match; a
    /// lower --lr after a divergence is allowed). --out defaults to the checkpoint's folder.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
}

impl TrainArgs {
    /// The output folder: --out, else the folder of the checkpoint being resumed, else a new one.
    pub(crate) fn out_dir(&self, given: Option<PathBuf>, prefix: &str) -> PathBuf {
        let from_resume = self.resume.as_ref().map(|r| {
            if r.is_dir() {
                r.clone()
            } else {
                r.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        });
        out_dir(given.or(from_resume), prefix)
    }

    pub(crate) fn checkpointing(&self, out: &Path) -> job::Checkpointing {
        job::Checkpointing {
            path: Some(out.join(job::CHECKPOINT_FILE)),
            every: self.checkpoint_every,
            resume: self.resume.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct AdapterArgs {
    /// Adapter rank r.
    #[arg(long, default_value_t = 8)]
    pub(crate) rank: usize,
    /// Adapter α (scale α/r).
    #[arg(long, default_value_t = 8.0)]
    pub(crate) alpha: f32,
    /// Comma-separated module-path patterns of the layers to adapt.
    #[arg(long, default_value = "conv_dw,mlp.fc1,mlp.fc2")]
    pub(crate) target: String,
    /// The matrix PEFT method that generates ΔW for the adapter methods: lora (ΔW = s·BA), loha
    /// (s·(B₁A₁)⊙(B₂A₂)) or lokr (s·kron(C, BA)). `--method liera --delta loha` is LoHa lifted to the Lie
    /// group; `--method lora --delta loha` is plain LoHa.
    #[arg(long)]
    pub(crate) delta: Option<String>,
}

impl AdapterArgs {
    /// `method` with `--delta` applied: an adapter method gets that generator; `full` or `linear` is an
    /// error when it is the one method asked for (`single`), and left as it is in a list.
    pub(crate) fn method(&self, method: Method, single: bool) -> Result<Method> {
        let Some(delta) = &self.delta else {
            return Ok(method);
        };
        let delta = DeltaKind::parse(delta.trim())
            .map_err(|e| Error::invalid("liera", format!("--delta: {e}")))?;
        match method {
            Method::Adapter(..) => method.with_delta(delta),
            _ if single => method.with_delta(delta),
            _ => Ok(method),
        }
    }
    /// A `--methods` list with `--delta` applied to its adapter methods, still with none twice.
    pub(crate) fn methods(&self, list: &str) -> Result<Vec<Method>> {
        let flag = if self.delta.is_some() {
            "--methods with --delta"
        } else {
            "--methods"
        };
        parse_methods_with(list, flag, |m| self.method(m, false))
    }
    pub(crate) fn options(&self) -> AdapterOptions {
        AdapterOptions {
            rank: self.rank,
            alpha: self.alpha,
            targets: self.target.clone(),
        }
    }
}

pub(crate) fn check_positive(flag: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "liera",
            format!("{flag} must be positive, got {v}"),
        ))
    }
}

pub(crate) fn check_adapter_args(a: &AdapterArgs) -> Result<()> {
    if a.rank == 0 {
        return Err(Error::invalid("liera", "--rank must be at least 1, got 0"));
    }
    check_positive("--alpha", a.alpha as f64)
}

pub(crate) fn check_train_args(t: &TrainArgs) -> Result<()> {
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
pub(crate) fn out_dir(given: Option<PathBuf>, prefix: &str) -> PathBuf {
    given.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("runs").join(format!("{prefix}-{secs}"))
    })
}

/// The comma-separated `--methods` list: each known, none twice (a repeated method would be counted as
/// another seed in the summary and overwrite the other's adapter).
pub(crate) fn parse_methods(list: &str) -> Result<Vec<Method>> {
    parse_methods_with(list, "--methods", Ok)
}

/// [`parse_methods`] with each method passed through `map` (e.g. `--delta` applied) before the check for
/// repeats; `flag` names the list in that error.
fn parse_methods_with(
    list: &str,
    flag: &str,
    map: impl Fn(Method) -> Result<Method>,
) -> Result<Vec<Method>> {
    let mut methods = Vec::new();
    for name in list.split(',') {
        let m = map(Method::parse(name.trim())?)?;
        if methods.contains(&m) {
            return Err(Error::invalid(
                "liera",
                format!("{flag} lists `{}` twice", m.name()),
            ));
        }
        methods.push(m);
    }
    Ok(methods)
}

/// Seeds `first`, `first + 1`, … (`count` of them), or an error if they would pass u64::MAX.
pub(crate) fn seed_range(first: u64, count: u64) -> Result<Vec<u64>> {
    let end = first.checked_add(count).ok_or_else(|| {
        Error::invalid(
            "liera",
            format!("--seed {first} with --seeds {count} runs past the largest seed"),
        )
    })?;
    Ok((first..end).collect())
}
