//! The training loop shared by the `liera` command and the examples: mini-batch steps with AdamW, a cosine
//! schedule, optional gradient clipping, and evaluation.
//!
//! A step reads nothing back from the device except the loss on logging steps (every `log_every` steps and
//! the last one), which is also where a non-finite loss is caught: the run stops with the step number and the
//! parameters of the last good logging step are not overwritten by the caller's checkpoint logic.

use crate::autodiff::no_grad;
use crate::backend::Device;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::nn::Classifier;
use crate::optim::{clip_grad_scale, CosineSchedule, Optimizer};
use crate::tensor::Tensor;
use std::time::Instant;

/// Hyper-parameters of a training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate (after warmup).
    pub lr: f32,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Global gradient-norm limit (None: no clipping).
    pub clip_norm: Option<f32>,
    /// Read the loss back every this many steps (and at the last step).
    pub log_every: u64,
}

/// A logged step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLog {
    /// 1-based step number.
    pub step: u64,
    /// The batch loss at that step.
    pub loss: f32,
    /// The learning rate used at that step.
    pub lr: f32,
    /// Seconds since the start of the run.
    pub elapsed: f64,
}

/// Runs steps `start + 1 ..= opts.steps` (`start` 0 for a fresh run, the checkpoint's step when resuming),
/// drawing batches from `next_batch` and calling `on_log` at every logging step. Returns the logged steps.
/// A non-finite loss is an error naming the step.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &dyn Classifier,
    params: &[(String, Tensor)],
    optimizer: &mut dyn Optimizer,
    device: &Device,
    opts: &TrainOptions,
    start: u64,
    next_batch: &mut dyn FnMut() -> Result<Batch>,
    on_log: &mut dyn FnMut(&StepLog) -> Result<()>,
) -> Result<Vec<StepLog>> {
    if opts.log_every == 0 {
        return Err(Error::invalid("train", "log_every must be at least 1"));
    }
    if params.iter().all(|(_, p)| !p.requires_grad()) {
        return Err(Error::invalid("train", "no trainable parameters"));
    }
    let schedule = CosineSchedule::new(
        opts.lr,
        opts.min_lr,
        opts.warmup.min(opts.steps),
        opts.steps.max(1),
    )?;
    let began = Instant::now();
    let mut logs = Vec::new();
    for t in start..opts.steps {
        let batch = next_batch()?;
        let x = batch.images_on(device)?;
        let loss = model.forward(&x, true)?.cross_entropy(&batch.labels)?;
        let grads = loss.backward()?;
        // Clipping's factor is computed on the device and folded into the optimizer's update.
        let clip = match opts.clip_norm {
            Some(max) => clip_grad_scale(params, &grads, max)?.map(|(_, scale)| scale),
            None => None,
        };
        let lr = schedule.lr(t);
        let step = t + 1;
        // Only a logging step reads the loss back (and checks it before the update).
        let logged = if step % opts.log_every == 0 || step == opts.steps {
            let value = loss.to_scalar()?;
            if !value.is_finite() {
                return Err(Error::Diverged {
                    step,
                    value,
                    note: String::new(),
                });
            }
            Some(value)
        } else {
            None
        };
        match &clip {
            Some(scale) => optimizer.step_scaled(params, &grads, lr, scale)?,
            None => optimizer.step(params, &grads, lr)?,
        }
        if let Some(loss) = logged {
            let log = StepLog {
                step,
                loss,
                lr,
                elapsed: began.elapsed().as_secs_f64(),
            };
            on_log(&log)?;
            logs.push(log);
        }
    }
    Ok(logs)
}

/// Accuracy and mean cross-entropy of `model` over `batches` (evaluation mode, no tape).
pub fn evaluate(
    model: &dyn Classifier,
    device: &Device,
    batches: impl IntoIterator<Item = Result<Batch>>,
) -> Result<Evaluation> {
    no_grad(|| {
        let (mut correct, mut seen, mut loss_sum) = (0usize, 0usize, 0f64);
        for batch in batches {
            let batch = batch?;
            let logits = model.forward(&batch.images_on(device)?, false)?;
            let n = batch.labels.len();
            loss_sum += logits.cross_entropy(&batch.labels)?.to_scalar()? as f64 * n as f64;
            let values = logits.to_vec()?;
            let classes = logits.dims()[1];
            for (row, &label) in values.chunks(classes).zip(&batch.labels) {
                correct += (argmax(row) == label) as usize;
            }
            seen += n;
        }
        if seen == 0 {
            return Err(Error::invalid("evaluate", "no examples to evaluate"));
        }
        Ok(Evaluation {
            accuracy: correct as f64 / seen as f64,
            loss: loss_sum / seen as f64,
            examples: seen,
        })
    })
}

/// The result of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Number of examples evaluated.
    pub examples: usize,
}

/// Index of the largest entry (the first one on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}
