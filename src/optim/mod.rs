//! Optimizers and learning-rate schedules.
//!
//! Parameters are passed as `(name, tensor)` pairs (the names a model's `named_parameters` gives), gradients
//! as the [`Grads`] of a backward pass. Updates run on the device's kernels (SGD through the engine's tensor
//! ops, AdamW through the fused [`Backend::adamw_update`](crate::backend::Backend::adamw_update)) under
//! [`no_grad`](crate::no_grad) and are stored with [`Tensor::assign`](crate::Tensor::assign), so they run
//! on whatever device holds the parameters (no readback on a GPU). Optimizer state is keyed by parameter
//! name, so it can be saved in a checkpoint and restored ([`Optimizer::state`], [`Optimizer::load_state`]).
//!
//! Parameter groups: [`LrScales`] gives every parameter whose name starts with a prefix its own learning rate
//! as a constant factor of the one passed to [`Optimizer::step`] (so it follows the same schedule);
//! [`AdamW::with_lr_scale`] and [`Sgd::with_lr_scale`] set them. This is how a fine-tuning run trains the new
//! classifier at its own rate (`RunOptions::head_lr`).

mod adamw;
mod clip;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use clip::{clip_grad_norm, clip_grad_scale};
pub use schedule::CosineSchedule;
pub use sgd::Sgd;

use crate::autodiff::Grads;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A first-order optimizer.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads`, at learning rate `lr`. Parameters
    /// without a gradient (frozen, or unused by the loss) are left untouched.
    fn step(&mut self, params: &[(String, Tensor)], grads: &Grads, lr: f32) -> Result<()>;
    /// [`Optimizer::step`] with every gradient multiplied by `grad_scale`, a one-element tensor on the
    /// parameters' device (gradient clipping's factor, [`clip_grad_scale`]). The default multiplies the
    /// gradients first; AdamW folds the multiply into its fused update (the same rounding), so clipping
    /// costs no pass over the gradients.
    fn step_scaled(
        &mut self,
        params: &[(String, Tensor)],
        grads: &Grads,
        lr: f32,
        grad_scale: &Tensor,
    ) -> Result<()> {
        let mut scaled = Grads::default();
        crate::autodiff::no_grad(|| {
            for (_, p) in params {
                if let Some(g) = grads.get(p) {
                    scaled.set(p, g.mul(grad_scale)?)?;
                }
            }
            Ok::<_, crate::Error>(())
        })?;
        self.step(params, &scaled, lr)
    }
    /// The number of steps taken.
    fn steps(&self) -> u64;
    /// The state (moment buffers etc.) as named tensors, for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores a state saved by [`Optimizer::state`] after `steps` steps.
    fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> Result<()>;
}

/// Per-parameter learning-rate factors keyed by name prefix: a parameter named `<prefix>…` updates at
/// `lr · factor` (the first matching prefix wins; no match: factor 1). In AdamW the decoupled weight decay
/// `lr·λ·p` uses the scaled rate too, as PyTorch's parameter groups do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LrScales(Vec<(String, f32)>);

impl LrScales {
    /// Adds a group: parameters named `prefix…` train at `factor` times the step's learning rate. `factor`
    /// must be finite and ≥ 0 (0 freezes the group's values while its gradients still flow).
    pub fn add(&mut self, op: &'static str, prefix: &str, factor: f32) -> Result<()> {
        check_hyper(op, "learning-rate factor", factor, factor >= 0.0)?;
        if prefix.is_empty() {
            return Err(Error::invalid(
                op,
                "a learning-rate group needs a non-empty name prefix",
            ));
        }
        self.0.push((prefix.to_string(), factor));
        Ok(())
    }
    /// The factor of the parameter called `name`.
    pub fn factor(&self, name: &str) -> f32 {
        self.0
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map_or(1.0, |(_, f)| *f)
    }
    /// Whether no group was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Checks a hyper-parameter and names it in the error.
pub(crate) fn check_hyper(op: &'static str, name: &str, value: f32, ok: bool) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("invalid {name}: {value}")))
    }
}

/// Restores named state buffers, checking that each belongs to a known slot (`<slot>.<param>`); the shapes
/// are checked against the parameters when a step uses them.
pub(crate) fn restore_buffers(
    op: &'static str,
    slots: &[&str],
    state: Vec<(String, Tensor)>,
) -> Result<Vec<(String, String, Tensor)>> {
    state
        .into_iter()
        .map(|(key, t)| {
            let (slot, param) = key
                .split_once('.')
                .filter(|(slot, _)| slots.contains(slot))
                .ok_or_else(|| {
                    Error::invalid(op, format!("unexpected optimizer state key `{key}`"))
                })?;
            Ok((slot.to_string(), param.to_string(), t.detach()))
        })
        .collect()
}
