//! Training checkpoints: everything a run needs to continue exactly where it stopped, in one safetensors
//! file written atomically (temporary file, fsync, rename; [`crate::io::atomic_write`]), so a crash or a
//! `kill -9` at any moment leaves either the previous checkpoint or the new one, never a torn file.
//!
//! Contents of `checkpoint.safetensors`:
//! - `param.<name>`: every parameter of the model by its path, base weights and adapter factors
//!   (`param.stages.0.blocks.0.conv_dw.lora_A.weight`, ...);
//! - `optim.<slot>.<name>`: the optimizer's state buffers (AdamW's `m` and `v`);
//! - metadata `liera_checkpoint`: a JSON [`CheckpointMeta`] (kind of run, step, total steps, seed, batch
//!   size, data position, optimizer step count, drop-path position, last logged loss, the optimisation
//!   settings and a fingerprint of the training data).
//!
//! Everything random in a run is a pure function of (seed, position): the batch order and augmentation
//! ([`crate::data::Batcher::seek`]), the drop-path masks ([`crate::nn::ConvNeXt::seek_drop_path`]) and the
//! learning-rate schedule (a function of the step). So a resumed run with the same settings produces, bit
//! for bit, the weights of an uninterrupted one on the same device. A resume must use the same kind, seed,
//! batch size and data ([`Checkpoint::check_fits`]); it may change the optimisation settings (a lower
//! learning rate after a divergence, more steps), and is then told that its result will differ.
//!
//! A checkpoint is only written at a logging step, after the loss of that step was read back and found
//! finite, and only if every parameter and state value is finite: a diverging run never overwrites the
//! last good checkpoint.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::{
    read_safetensors_bytes, read_safetensors_metadata, write_safetensors_host, HostTensor,
};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The checkpoint's file name inside a run's output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The metadata key holding the JSON [`CheckpointMeta`].
const META_KEY: &str = "liera_checkpoint";
const PARAM: &str = "param.";
const OPTIM: &str = "optim.";

/// When and where a training run writes checkpoints, and which one it resumes from.
#[derive(Clone, Debug, Default)]
pub struct Checkpointing {
    /// Where checkpoints are written (None: no checkpoints).
    pub path: Option<PathBuf>,
    /// Write one at the first logging step at least this many steps after the previous one (0: only at the
    /// end); always at the last step.
    pub every: u64,
    /// Continue from this checkpoint (a file, or a folder holding [`CHECKPOINT_FILE`]).
    pub resume: Option<PathBuf>,
}

/// What a checkpoint says about the run that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version ([`CHECKPOINT_VERSION`]).
    pub version: u32,
    /// `pretrain` or `finetune:<method>`.
    pub kind: String,
    /// Steps completed.
    pub step: u64,
    /// The run's planned steps.
    pub total_steps: u64,
    /// The run's seed (a resume must use the same one).
    pub seed: u64,
    /// Images per step (a resume must use the same batch size).
    pub batch_size: usize,
    /// Batches drawn from the training stream (where [`crate::data::Batcher::seek`] resumes).
    pub data_position: u64,
    /// The optimizer's step count (AdamW's bias correction).
    pub optimizer_steps: u64,
    /// Training forward passes seen by the drop-path layers.
    pub drop_path_position: u64,
    /// The loss logged at `step` (finite).
    pub loss: f32,
    /// The optimisation settings of the run.
    pub settings: RunSettings,
    /// A fingerprint of the training images and labels.
    pub data: String,
}

/// The settings that shape a run's trajectory besides its seed and batch size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Peak learning rate.
    pub lr: f32,
    /// Peak learning rate of the classifier when it has its own (`RunOptions::head_lr`); absent in
    /// checkpoints written before it existed, which read as None.
    #[serde(default)]
    pub head_lr: Option<f32>,
    /// Warm-up steps.
    pub warmup: u64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Random-translation augmentation, in pixels.
    pub augment_shift: usize,
}

/// The checkpoint format this liera writes and reads.
pub const CHECKPOINT_VERSION: u32 = 2;

/// A checkpoint read back from disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The file it was read from.
    pub path: PathBuf,
    /// The run's position and settings.
    pub meta: CheckpointMeta,
    /// Parameters by path.
    pub params: BTreeMap<String, HostTensor>,
    /// Optimizer state by key (`m.<param>`, `v.<param>`).
    pub optimizer: Vec<(String, HostTensor)>,
}

/// The checkpoint file that `--resume <path>` names: the path itself, or `<path>/checkpoint.safetensors`
/// when it is a folder.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::Format {
            path: path.display().to_string(),
            msg: if path.is_dir() {
                format!("no {CHECKPOINT_FILE} in this folder to resume from")
            } else {
                "no such checkpoint file to resume from".into()
            },
        });
    }
    Ok(file)
}

fn host(op: &str, name: &str, t: &Tensor, step: u64) -> Result<HostTensor> {
    let data = t.to_vec()?;
    if let Some(v) = data.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "{op} `{name}` holds {v} after step {step}; the checkpoint was not written (the previous \
                 one is kept)"
            ),
        ));
    }
    Ok(HostTensor {
        shape: t.dims().to_vec(),
        data,
    })
}

/// Writes a checkpoint atomically to `path`. Fails, writing nothing, if any value is non-finite.
pub fn write_checkpoint(
    path: &Path,
    meta: &CheckpointMeta,
    params: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<()> {
    let mut tensors = Vec::with_capacity(params.len() + optimizer.len());
    for (name, t) in params {
        tensors.push((
            format!("{PARAM}{name}"),
            host("parameter", name, t, meta.step)?,
        ));
    }
    for (name, t) in optimizer {
        tensors.push((
            format!("{OPTIM}{name}"),
            host("optimizer state", name, t, meta.step)?,
        ));
    }
    let json = serde_json::to_string(meta).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: format!("cannot encode the checkpoint metadata: {e}"),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    write_safetensors_host(
        path,
        &tensors,
        Some(HashMap::from([(META_KEY.into(), json)])),
    )
}

/// Reads a checkpoint (a file, or a folder holding [`CHECKPOINT_FILE`]).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let file = resolve_checkpoint(path)?;
    let bytes = std::fs::read(&file).map_err(|source| Error::Io {
        path: file.display().to_string(),
        source,
    })?;
    let format = |msg: String| Error::Format {
        path: file.display().to_string(),
        msg,
    };
    let metadata = read_safetensors_metadata(&file, &bytes)?;
    let json = metadata.get(META_KEY).ok_or_else(|| {
        format(format!(
            "not a liera checkpoint (no `{META_KEY}` metadata; a weights file goes to --weights)"
        ))
    })?;
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| format(format!("corrupt checkpoint metadata: {e}")))?;
    if meta.version != CHECKPOINT_VERSION {
        return Err(format(format!(
            "checkpoint format version {} is not supported (this liera reads version \
             {CHECKPOINT_VERSION})",
            meta.version
        )));
    }
    let mut params = BTreeMap::new();
    let mut optimizer = Vec::new();
    for (name, t) in read_safetensors_bytes(&file, &bytes)? {
        if let Some(p) = name.strip_prefix(PARAM) {
            params.insert(p.to_string(), t);
        } else if let Some(o) = name.strip_prefix(OPTIM) {
            optimizer.push((o.to_string(), t));
        } else {
            return Err(format(format!(
                "unexpected tensor `{name}` in a checkpoint"
            )));
        }
    }
    Ok(Checkpoint {
        path: file,
        meta,
        params,
        optimizer,
    })
}

impl Checkpoint {
    /// Checks that this checkpoint can continue `run` (the resuming run's own meta, at step 0): the same
    /// kind, seed, batch size and training data, a step within the run's steps, and counters that agree
    /// with its step. Returns the settings that differ (`lr 0.05 → 0.01`, ...): allowed, but the resumed
    /// run then no longer equals an uninterrupted one.
    pub fn check_fits(&self, run: &CheckpointMeta) -> Result<Vec<String>> {
        let m = &self.meta;
        let (kind, seed, batch_size, steps) =
            (&run.kind, run.seed, run.batch_size, run.total_steps);
        let mut problems = Vec::new();
        if &m.kind != kind {
            problems.push(format!(
                "it was written by a `{}` run, not `{kind}`",
                m.kind
            ));
        }
        if m.seed != seed {
            problems.push(format!("its seed is {}, this run's {seed}", m.seed));
        }
        if m.batch_size != batch_size {
            problems.push(format!(
                "its batch size is {}, this run's {batch_size}",
                m.batch_size
            ));
        }
        if m.step > steps {
            problems.push(format!(
                "it is at step {}, past this run's {steps} steps",
                m.step
            ));
        }
        if m.data != run.data {
            problems.push("it was trained on other data (the fingerprints differ)".into());
        }
        if (m.optimizer_steps, m.data_position, m.drop_path_position) != (m.step, m.step, m.step) {
            problems.push(format!(
                "its counters disagree with its step {} (optimizer {}, data {}, drop path {})",
                m.step, m.optimizer_steps, m.data_position, m.drop_path_position
            ));
        }
        if problems.is_empty() {
            let (a, b) = (&m.settings, &run.settings);
            let mut changed = Vec::new();
            let mut note = |name: &str, was: String, now: String| {
                if was != now {
                    changed.push(format!("{name} {was} → {now}"));
                }
            };
            note("steps", m.total_steps.to_string(), steps.to_string());
            note("lr", a.lr.to_string(), b.lr.to_string());
            let head = |h: Option<f32>| h.map_or("same as lr".to_string(), |h| h.to_string());
            note("head lr", head(a.head_lr), head(b.head_lr));
            note("warmup", a.warmup.to_string(), b.warmup.to_string());
            note(
                "weight decay",
                a.weight_decay.to_string(),
                b.weight_decay.to_string(),
            );
            note(
                "augment shift",
                a.augment_shift.to_string(),
                b.augment_shift.to_string(),
            );
            Ok(changed)
        } else {
            Err(Error::Format {
                path: self.path.display().to_string(),
                msg: format!(
                    "cannot resume from this checkpoint: {}",
                    problems.join("; ")
                ),
            })
        }
    }

    /// Copies the parameters into `params` (every parameter of the model, by path): each must be present
    /// with its shape, and the checkpoint may hold no other. Checked before anything is written.
    pub fn restore_params(&self, params: &[(String, Tensor)]) -> Result<()> {
        let mut problems = Vec::new();
        for (name, t) in params {
            match self.params.get(name) {
                None => problems.push(format!("missing parameter `{name}`")),
                Some(h) if h.shape != t.dims() => problems.push(format!(
                    "parameter `{name}` has shape {:?} in the checkpoint, the model {:?}",
                    h.shape,
                    t.dims()
                )),
                Some(_) => {}
            }
        }
        let names: std::collections::HashSet<&str> =
            params.iter().map(|(n, _)| n.as_str()).collect();
        for name in self.params.keys() {
            if !names.contains(name.as_str()) {
                problems.push(format!(
                    "parameter `{name}` that the model does not have (another method, rank or target?)"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Format {
                path: self.path.display().to_string(),
                msg: format!("checkpoint does not fit the model: {}", problems.join("; ")),
            });
        }
        for (name, t) in params {
            let h = &self.params[name];
            t.assign(&Tensor::from_slice(&h.data, h.shape.clone(), t.device())?)?;
        }
        Ok(())
    }

    /// The optimizer state as tensors on `device`, checked to name only trainable parameters (`trainable`)
    /// with their shapes.
    pub fn optimizer_state(
        &self,
        trainable: &[(String, Tensor)],
        device: &Device,
    ) -> Result<Vec<(String, Tensor)>> {
        self.optimizer
            .iter()
            .map(|(key, h)| {
                let param = key.split_once('.').map(|(_, p)| p).unwrap_or(key);
                let fits = trainable
                    .iter()
                    .any(|(n, t)| n == param && t.dims() == h.shape.as_slice());
                if !fits {
                    return Err(Error::Format {
                        path: self.path.display().to_string(),
                        msg: format!(
                            "optimizer state `{key}` (shape {:?}) matches no trainable parameter",
                            h.shape
                        ),
                    });
                }
                Ok((
                    key.clone(),
                    Tensor::from_slice(&h.data, h.shape.clone(), device)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            version: CHECKPOINT_VERSION,
            kind: "pretrain".into(),
            step,
            total_steps: 100,
            seed: 3,
            batch_size: 8,
            data_position: step,
            optimizer_steps: step,
            drop_path_position: step,
            loss: 1.0,
            settings: RunSettings {
                lr: 0.01,
                head_lr: None,
                warmup: 5,
                weight_decay: 0.05,
                augment_shift: 2,
            },
            data: "00ff".into(),
        }
    }

    fn checkpoint(meta: CheckpointMeta) -> Checkpoint {
        Checkpoint {
            path: PathBuf::from("c.safetensors"),
            meta,
            params: BTreeMap::new(),
            optimizer: Vec::new(),
        }
    }

    #[test]
    fn a_resume_must_keep_kind_seed_batch_and_data_and_is_told_of_changed_settings() {
        let run = meta(0);
        assert_eq!(
            checkpoint(meta(40)).check_fits(&run).unwrap(),
            Vec::<String>::new()
        );
        // Changed optimisation settings are allowed and named.
        let changed = CheckpointMeta {
            total_steps: 200,
            settings: RunSettings {
                lr: 0.001,
                ..run.settings
            },
            ..run.clone()
        };
        assert_eq!(
            checkpoint(meta(40)).check_fits(&changed).unwrap(),
            vec!["steps 100 → 200".to_string(), "lr 0.01 → 0.001".to_string()]
        );
        // A different head learning rate is named like a different lr, in both directions.
        let head = |h: Option<f32>| CheckpointMeta {
            settings: RunSettings {
                head_lr: h,
                ..run.settings
            },
            ..run.clone()
        };
        let with_head = |h: Option<f32>, step: u64| CheckpointMeta {
            step,
            data_position: step,
            optimizer_steps: step,
            drop_path_position: step,
            ..head(h)
        };
        assert_eq!(
            checkpoint(meta(40)).check_fits(&head(Some(0.03))).unwrap(),
            vec!["head lr same as lr → 0.03".to_string()]
        );
        assert_eq!(
            checkpoint(with_head(Some(0.03), 40))
                .check_fits(&head(Some(0.1)))
                .unwrap(),
            vec!["head lr 0.03 → 0.1".to_string()]
        );
        assert!(checkpoint(with_head(Some(0.03), 40))
            .check_fits(&head(Some(0.03)))
            .unwrap()
            .is_empty());
        // Other data, seed, batch size or kind, a step past the run, or counters that disagree: refused.
        let refused = [
            (
                CheckpointMeta {
                    data: "0100".into(),
                    ..run.clone()
                },
                meta(40),
                "other data",
            ),
            (
                CheckpointMeta {
                    seed: 4,
                    ..run.clone()
                },
                meta(40),
                "its seed is 3",
            ),
            (
                CheckpointMeta {
                    batch_size: 16,
                    ..run.clone()
                },
                meta(40),
                "batch size is 8",
            ),
            (
                CheckpointMeta {
                    kind: "finetune:lora".into(),
                    ..run.clone()
                },
                meta(40),
                "not `finetune:lora`",
            ),
            (run.clone(), meta(120), "past this run's 100 steps"),
            (
                run.clone(),
                CheckpointMeta {
                    optimizer_steps: 39,
                    ..meta(40)
                },
                "counters disagree",
            ),
        ];
        for (run, written, needle) in refused {
            let err = checkpoint(written)
                .check_fits(&run)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn metadata_written_before_the_head_rate_existed_reads_as_none() {
        let mut json = serde_json::to_value(meta(10)).unwrap();
        json["settings"]
            .as_object_mut()
            .unwrap()
            .remove("head_lr")
            .expect("the field is written");
        let back: CheckpointMeta = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta(10));
        assert_eq!(back.settings.head_lr, None);
    }
}
