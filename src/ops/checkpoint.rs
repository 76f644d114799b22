//! Activation checkpointing: trade compute for memory.
//!
//! y = f(x₁, …, xₙ) computed as usual, but without recording f's intermediate values: the tape holds one
//! node whose inputs are the xᵢ. Its backward rule runs f again on fresh leaves x̃ᵢ (sharing the xᵢ's
//! data) with recording on, then back-propagates the incoming ∂L/∂y through that recomputation:
//!
//! ∂L/∂xᵢ = (∂y/∂xᵢ)ᵀ ∂L/∂y, read off the recomputed graph as the gradient of x̃ᵢ.
//!
//! So the memory a block's intermediates take is held only while that block's backward runs, at the cost
//! of one more forward of the block. f must be deterministic (the same outputs for the same inputs), and
//! every tensor it reads that needs a gradient must be among the inputs: what it captures otherwise is a
//! constant of the recomputation.

use crate::autodiff::{enable_grad, is_grad_enabled, no_grad};
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A function of tensors that can be run again in the backward pass.
pub type Recompute = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

/// `f(inputs)`, keeping only `inputs` for the backward pass (see the module documentation). Without
/// recording, or when no input requires a gradient, it is plain `f(inputs)`.
pub fn checkpoint(inputs: &[Tensor], f: Recompute) -> Result<Tensor> {
    if !is_grad_enabled() || !inputs.iter().any(Tensor::requires_grad) {
        return f(inputs);
    }
    let out = no_grad(|| f(inputs))?;
    let saved: Vec<Tensor> = inputs.to_vec();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    Ok(Tensor::from_op(
        "checkpoint",
        out.storage(),
        out.shape().clone(),
        &refs,
        move |g| {
            // Fresh leaves, so that the recomputed graph ends at them and not at the outer tape.
            let leaves: Vec<Tensor> = saved
                .iter()
                .map(|t| {
                    if t.requires_grad() {
                        t.detach().to_param()
                    } else {
                        t.detach()
                    }
                })
                .collect();
            let y = enable_grad(|| f(&leaves))?;
            let grads = y.backward_with(g)?;
            Ok(leaves.iter().map(|l| grads.get(l).cloned()).collect())
        },
    ))
}
