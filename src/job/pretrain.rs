//! Pretraining on a source task, with its cached checkpoint.

use super::checkpoint::Checkpointing;
use super::create_dir;
use super::run::{train_and_evaluate, RunOptions, RunResult};
use crate::backend::Device;
use crate::data::{Examples, Fnv, Splits};
use crate::error::Result;
use crate::io::save_model;
use crate::nn::{ConvNeXt, ConvNeXtConfig};
use std::path::{Path, PathBuf};

/// Pretraining: a fresh model of `config` trained on the source task (checkpoints and resume as `ckpt`
/// says); the final weights are saved atomically to `checkpoint`.
pub fn pretrain(
    config: ConvNeXtConfig,
    data: &Splits,
    opts: &RunOptions,
    device: &Device,
    checkpoint: &Path,
    ckpt: &Checkpointing,
) -> Result<RunResult> {
    let mut model = ConvNeXt::new(config.with_seed(opts.seed), device)?;
    model.set_grad_checkpointing(opts.grad_checkpointing);
    let result = train_and_evaluate(&model, "pretrain", &data.into(), opts, device, ckpt)?;
    if let Some(dir) = checkpoint.parent() {
        create_dir(dir)?;
    }
    save_model(&model, checkpoint)?;
    Ok(result)
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
        data.train.fingerprint()
    );
    let mut h = Fnv::new();
    key.bytes().for_each(|b| h.mix(b as u64));
    cache_dir.join(format!("pretrain-{}.safetensors", h.hex()))
}
