//! Elementwise exponential, the Lie group's exponential map for the Hadamard group of nonzero kernels.
//!
//! Forward: y = eˣ. Derivative: ∂y/∂x = eˣ = y, so ∂L/∂x = g·y (the forward's output is reused).

use crate::backend::UnaryOp;
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// eˣ elementwise.
    pub fn exp(&self) -> Result<Tensor> {
        let storage = self
            .device()
            .backend()
            .unary(UnaryOp::Exp, &self.storage(), self.numel())?;
        // The backward needs y itself: a constant sharing the output's storage (no reference cycle).
        let y = Tensor::from_storage(storage.clone(), self.shape().clone(), self.device());
        Ok(Tensor::from_op(
            "exp",
            storage,
            self.shape().clone(),
            &[self],
            move |g| Ok(vec![Some(g.mul(&y)?)]),
        ))
    }
}
