//! The jobs behind the `liera` command, one file per concern:
//! - [`method`]: what each fine-tuning method trains and its learning-rate policy, and [`finetune`];
//! - [`run`]: the checkpoint-aware training run ([`train_and_evaluate`]) with prefetched batches;
//! - [`pretrain`](mod@pretrain): pretraining on a source task and its cache;
//! - [`compare`](mod@compare): the comparison of all methods that `cargo run --release` runs by default;
//! - [`data`]: pretrained weights with their architecture and preprocessing, and image tasks;
//! - [`tune`]: the learning-rate search (a ladder that widens until the best rate is interior);
//! - [`vtab`](mod@vtab): the VTAB-1k protocol over a folder of tasks;
//! - [`checkpoint`], [`bench`](mod@bench) and the comparison report.
//!
//! Everything here is library code so that tests can run a shortened comparison; the command in
//! `src/main.rs` only parses flags and prints.

pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod method;
pub mod pretrain;
mod report;
pub mod run;
pub mod tune;
pub mod vtab;

pub use checkpoint::{Checkpointing, CHECKPOINT_FILE};
pub use compare::{
    compare, tune_learning_rate, tuning_run_options, tuning_split, CompareOptions, HeadLrSource,
    DEFAULT_HEAD_LR,
};
pub use method::{finetune, prepare_finetune, AdapterOptions, Method, HEAD_PREFIX};
pub use pretrain::{pretrain, pretrain_checkpoint_path};
pub use report::{
    paired_difference, t_quantile_975, write_report, ComparisonReport, PairedDifference, Reading,
};
pub use run::{train_and_evaluate, RunOptions, RunResult, TaskData};
pub use tune::{widening_search, LadderEnd, LadderSearch, Rung, MAX_LADDER_EXTENSIONS};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::ConvNeXtConfig;
use std::path::Path;

/// The side length images are padded to: the ConvNeXt stem divides by 4 and three downsamplings by 2 each,
/// so 32 → 8 → 4 → 2 → 1 (28 would leave odd sizes).
pub const IMAGE_SIZE: usize = 32;

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
