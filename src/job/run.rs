//! The checkpoint-aware training run shared by pretraining, fine-tuning and the comparisons: options,
//! the run loop with its progress bar, prefetching of batches, checkpoint writing and resume.

use super::checkpoint::{
    read_checkpoint, write_checkpoint, CheckpointMeta, Checkpointing, RunSettings,
    CHECKPOINT_VERSION,
};
use super::method::HEAD_PREFIX;
use crate::autodiff::Grads;
use crate::backend::Device;
use crate::data::batch::{Batcher, RandomTranslate, Sequential};
use crate::data::{Batch, Examples, Splits};
use crate::error::{Error, Result};
use crate::nn::{ConvNeXt, Module};
use crate::optim::{AdamW, Optimizer};
use crate::peft;
use crate::tensor::Tensor;
use crate::train::{evaluate, train, Evaluation, StepLog, TrainOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

/// The examples of a task: what a run trains on and what it is scored on.
#[derive(Clone, Copy)]
pub struct TaskData<'a> {
    /// The training examples.
    pub train: &'a dyn Examples,
    /// The examples scored after training.
    pub test: &'a dyn Examples,
}

impl<'a> From<&'a Splits> for TaskData<'a> {
    fn from(s: &'a Splits) -> Self {
        TaskData {
            train: &s.train,
            test: &s.test,
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
    /// Peak learning rate of the classifier (`head.fc.*`, [`HEAD_PREFIX`]); None: the head trains at `lr`
    /// like every other parameter. Set, the head's rate is the scheduled rate × `head_lr / lr`, so it follows
    /// the same warm-up and cosine shape (an AdamW parameter group, [`AdamW::with_lr_scale`]). This is how
    /// `liera compare` gives every method the same head rate while each tunes its own `lr`.
    pub head_lr: Option<f32>,
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
    /// Recompute each block's intermediates in the backward pass instead of keeping them (less memory,
    /// one more forward; the same results): [`crate::nn::ConvNeXt::set_grad_checkpointing`].
    pub grad_checkpointing: bool,
}

impl RunOptions {
    pub(crate) fn check(&self) -> Result<()> {
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
        if let Some(h) = self.head_lr {
            if !(h.is_finite() && h >= 0.0) {
                return Err(Error::invalid(
                    "train",
                    format!("the head's learning rate must be finite and ≥ 0, got {h}"),
                ));
            }
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
pub(crate) fn progress_bar(steps: u64, label: &str, show: bool) -> ProgressBar {
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

/// An optimizer behind a `RefCell`, so the logging callback can read its state for a checkpoint between
/// the steps that `train` takes through it.
struct SharedOptimizer<'a, O: Optimizer>(&'a RefCell<O>);

impl<O: Optimizer> Optimizer for SharedOptimizer<'_, O> {
    fn step(&mut self, params: &[(String, Tensor)], grads: &Grads, lr: f32) -> Result<()> {
        self.0.borrow_mut().step(params, grads, lr)
    }
    fn step_scaled(
        &mut self,
        params: &[(String, Tensor)],
        grads: &Grads,
        lr: f32,
        grad_scale: &Tensor,
    ) -> Result<()> {
        self.0
            .borrow_mut()
            .step_scaled(params, grads, lr, grad_scale)
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

/// Trains `model` (whatever its trainable parameters are) on `data.train` and evaluates it on `data.test`,
/// writing checkpoints and resuming as `ckpt` says. `label` is the run's kind (`pretrain`, or the method
/// name for fine-tuning), recorded in the checkpoint and checked on resume.
///
/// Batches are drawn on a producer thread that runs ahead of the training step by a few batches (a bounded
/// queue), so decoding and transforming images overlaps the step; the stream is the same as drawing them
/// in line, so a resumed run still continues bit-exactly.
pub fn train_and_evaluate(
    model: &ConvNeXt,
    label: &str,
    data: &TaskData,
    opts: &RunOptions,
    device: &Device,
    ckpt: &Checkpointing,
) -> Result<RunResult> {
    let TaskData {
        train: train_set,
        test,
    } = *data;
    opts.check()?;
    let kind = if label == "pretrain" {
        label.to_string()
    } else {
        format!("finetune:{label}")
    };
    let params = model.trainable_parameters();
    let mut adamw = AdamW::new(0.9, 0.999, 1e-8, opts.weight_decay)?;
    if let Some(head_lr) = opts.head_lr {
        // A head rate for a model without a trainable head would silently do nothing.
        if !params.iter().any(|(n, _)| n.starts_with(HEAD_PREFIX)) {
            return Err(Error::invalid(
                "train",
                format!("a head learning rate was given, but no `{HEAD_PREFIX}*` parameter trains"),
            ));
        }
        adamw = adamw.with_lr_scale(HEAD_PREFIX, head_lr / opts.lr)?;
    }
    let optimizer = RefCell::new(adamw);
    let batch = opts.batch_size.min(train_set.len());
    let mut batcher = Batcher::new(train_set, batch, opts.seed)?;
    if opts.augment_shift > 0 {
        let Some(fill) = train_set.background() else {
            return Err(Error::invalid(
                "train",
                "--augment-shift needs images with a known background value (IDX data)",
            ));
        };
        batcher = batcher.with_augment(RandomTranslate::new(opts.augment_shift, fill));
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
            head_lr: opts.head_lr,
            warmup: opts.warmup,
            weight_decay: opts.weight_decay,
            augment_shift: opts.augment_shift,
        },
        data: train_set.fingerprint(),
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
    let consumed = Cell::new(batcher.position());
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
    let logs = with_prefetch(batcher, opts.steps - start, |queue| {
        train(
            model,
            &params,
            &mut SharedOptimizer(&optimizer),
            device,
            &train_opts,
            start,
            &mut || {
                consumed.set(consumed.get() + 1);
                queue.next_batch()
            },
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
                let due = log.step == opts.steps
                    || (ckpt.every > 0 && log.step - last_written >= ckpt.every);
                if due {
                    let meta = CheckpointMeta {
                        step: log.step,
                        data_position: consumed.get(),
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
        )
    });
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
    let report = peft::trainable_report(model)?;
    Ok(RunResult {
        method: label.to_string(),
        trainable: report.trainable,
        total: report.total,
        eval,
        seconds,
        images_per_second,
        logs,
    })
}

/// How many batches the producer thread may draw ahead of the training step.
pub const PREFETCH_BATCHES: usize = 2;

/// The consumer side of [`with_prefetch`]: the next batch of the stream.
pub struct Prefetched {
    rx: mpsc::Receiver<Result<Batch>>,
}

impl Prefetched {
    /// The next batch, in stream order (an error if the producer stopped early, which it only does on an
    /// error it has already sent).
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(Error::invalid("train", "the batch producer stopped")))
    }
}

/// Runs `f` with a queue of up to `count` batches drawn from `batcher` on a producer thread, at most
/// [`PREFETCH_BATCHES`] ahead. When `f` returns early (an error, a divergence), the queue closes and the
/// producer stops at its next batch.
pub fn with_prefetch<T>(
    mut batcher: Batcher<'_>,
    count: u64,
    f: impl FnOnce(&mut Prefetched) -> T,
) -> T {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(PREFETCH_BATCHES);
        scope.spawn(move || {
            for _ in 0..count {
                let batch = batcher.next_batch();
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        f(&mut Prefetched { rx })
    })
}
