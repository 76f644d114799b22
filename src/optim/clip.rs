//! Gradient clipping by global norm: with n = √(Σ_p ‖g_p‖²), every gradient is scaled by
//! c = 1 / max(1, n / max_norm), so the clipped global norm is min(n, max_norm).
//!
//! Everything stays on the device (no readback): n² is one fused reduction over all gradients
//! ([`Tensor::sum_squares_all`]), and c = min(1, max_norm · n⁻¹) takes three elementwise ops on one value
//! (a NaN norm gives a NaN factor, so a diverged step is not hidden).

use crate::autodiff::{no_grad, Grads};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The global norm n of the gradients of `params` in `grads` and the factor c = 1 / max(1, n / max_norm)
/// that clips it, both one-element tensors on the device, without changing `grads` (hand c to
/// [`Optimizer::step_scaled`](super::Optimizer::step_scaled), which folds it into the update); None when no
/// parameter has a gradient.
pub fn clip_grad_scale(
    params: &[(String, Tensor)],
    grads: &Grads,
    max_norm: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be finite and > 0, got {max_norm}"),
        ));
    }
    no_grad(|| {
        let gs: Vec<&Tensor> = params.iter().filter_map(|(_, p)| grads.get(p)).collect();
        if gs.is_empty() {
            return Ok(None);
        }
        // One fused reduction over every gradient (a few launches), not a square, sum and add each.
        let norm = Tensor::sum_squares_all(&gs)?.sqrt()?;
        let scale = norm
            .pow_scalar(-1.0)?
            .mul_scalar(max_norm)?
            .min_scalar(1.0)?;
        Ok(Some((norm, scale)))
    })
}

/// Scales the gradients of `params` in `grads` in place so their global norm is at most `max_norm`; returns
/// the global norm before clipping as a one-element tensor (read it when logging), or None when no
/// parameter has a gradient.
pub fn clip_grad_norm(
    params: &[(String, Tensor)],
    grads: &mut Grads,
    max_norm: f32,
) -> Result<Option<Tensor>> {
    let Some((norm, scale)) = clip_grad_scale(params, grads, max_norm)? else {
        return Ok(None);
    };
    no_grad(|| {
        for (_, p) in params {
            if let Some(g) = grads.remove(p) {
                grads.set(p, g.mul(&scale)?)?;
            }
        }
        Ok(Some(norm))
    })
}
