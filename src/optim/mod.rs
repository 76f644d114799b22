//! Optimizers and learning-rate schedules.
//!
//! Parameters are passed as `(name, tensor)` pairs (the names a model's `named_parameters` gives), gradients
//! as the [`Grads`] of a backward pass. Updates run on the device's kernels (SGD through the engine's tensor
//! ops, AdamW through the fused [`Backend::adamw_update`](crate::backend::Backend::adamw_update)) under
//! [`no_grad`](crate::no_grad) and are stored with [`Tensor::assign`](crate::Tensor::assign), so they run
//! on whatever device holds the parameters (no readback on a GPU). Optimizer state is keyed by parameter
//! name, so it can be saved in a checkpoint and restored ([`Optimizer::state`], [`Optimizer::load_state`]).

mod adamw;
mod clip;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use clip::clip_grad_norm;
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
    /// The number of steps taken.
    fn steps(&self) -> u64;
    /// The state (moment buffers etc.) as named tensors, for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores a state saved by [`Optimizer::state`] after `steps` steps.
    fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> Result<()>;
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
