//! The adapters' weight reparameterisations, each one fused elementwise pass over the kernel (forward) and
//! one per gradient (backward), instead of the three of scale, exp and multiply.
//!
//! With W the base kernel, P = reshape(B·A) the low-rank product and s the adapter's scale α/r (a constant):
//!
//! ```text
//!   add_scaled:          y = W + s·P          ∂W = g               ∂P = s·g
//!   mul_exp_scaled:      y = W ⊙ exp(s·P)     ∂W = g ⊙ exp(s·P)    ∂P = s·(g ⊙ y)
//!   mul_affine_scaled:   y = W ⊙ (1 + s·P)    ∂W = g ⊙ (1 + s·P)   ∂P = s·(g ⊙ W)
//! ```
//!
//! (LoRA, LieRA and first-order LieRA; see `peft/adapter.rs`.) ∂P of the exact form reuses the forward's
//! output y = W′, which is why LieRA's backward costs no exp. W and P must have the same shape (no
//! broadcasting: these are weights, not activations). The kernels are [`BinaryOp::AddScaled`],
//! [`BinaryOp::MulExpScaled`], [`BinaryOp::MulAffineScaled`] and [`BinaryOp::MulScaled`]; each gradient is
//! only computed for an input that requires one (W is frozen under an adapter).

use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Runs `op` on two same-shaped tensors, returning the result's storage.
fn same_shape_kernel(name: &'static str, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            name,
            format!(
                "the kernel {} and the update {} must have the same shape",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let (storage, shape) = super::binary::broadcast_kernel(name, op, a, b)?;
    Ok(Tensor::from_storage(storage, shape, a.device()))
}

impl Tensor {
    /// W + s·P (LoRA's adapted kernel), with `self` = W.
    pub fn add_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        let y = same_shape_kernel("add_scaled", BinaryOp::AddScaled(s), self, p)?;
        let (need_w, need_p) = (self.requires_grad(), p.requires_grad());
        Ok(Tensor::from_op(
            "add_scaled",
            y.storage(),
            y.shape().clone(),
            &[self, p],
            move |g| {
                Ok(vec![
                    need_w.then(|| g.clone()),
                    need_p.then(|| g.mul_scalar(s)).transpose()?,
                ])
            },
        ))
    }

    /// W ⊙ exp(s·P) (LieRA's adapted kernel), with `self` = W.
    pub fn mul_exp_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        // ∂W = g ⊙ exp(s·P) (the forward's kernel on g), ∂P = s·(g ⊙ y).
        multiplicative(
            "mul_exp_scaled",
            self,
            p,
            s,
            BinaryOp::MulExpScaled(s),
            Operand::Output,
        )
    }

    /// W ⊙ (1 + s·P) (first-order LieRA's adapted kernel, W + W ⊙ s·P), with `self` = W.
    pub fn mul_affine_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        // ∂W = g ⊙ (1 + s·P) (the forward's kernel on g), ∂P = s·(g ⊙ W).
        multiplicative(
            "mul_affine_scaled",
            self,
            p,
            s,
            BinaryOp::MulAffineScaled(s),
            Operand::Kernel,
        )
    }
}

/// Which tensor ∂P = s·(g ⊙ ·) multiplies: the forward's output y or the kernel W.
enum Operand {
    Output,
    Kernel,
}

/// y = `op`(W, P) for the two multiplicative forms y = W ⊙ f(s·P): ∂W = `op`(g, P) = g ⊙ f(s·P) and
/// ∂P = s·(g ⊙ `dp_with`), each computed only when that input requires a gradient.
fn multiplicative(
    name: &'static str,
    w: &Tensor,
    p: &Tensor,
    s: f32,
    op: BinaryOp,
    dp_with: Operand,
) -> Result<Tensor> {
    let y = same_shape_kernel(name, op, w, p)?;
    let (need_w, need_p) = (w.requires_grad(), p.requires_grad());
    let p_value = p.detach();
    let dp_operand = match dp_with {
        Operand::Output => y.detach(),
        Operand::Kernel => w.detach(),
    };
    Ok(Tensor::from_op(
        name,
        y.storage(),
        y.shape().clone(),
        &[w, p],
        move |g| {
            let dw = need_w
                .then(|| same_shape_kernel(name, op, g, &p_value))
                .transpose()?;
            let dp = need_p
                .then(|| same_shape_kernel(name, BinaryOp::MulScaled(s), g, &dp_operand))
                .transpose()?;
            Ok(vec![dw, dp])
        },
    ))
}
