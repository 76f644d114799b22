//! Elementwise square root.
//!
//! Forward: y = √x (x ≥ 0). Derivative: ∂y/∂x = 1/(2√x), so ∂L/∂x = g / (2y).

use crate::backend::UnaryOp;
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// √x elementwise.
    pub fn sqrt(&self) -> Result<Tensor> {
        let storage =
            self.device()
                .backend()
                .unary(UnaryOp::Sqrt, &self.storage(), self.numel())?;
        let y = Tensor::from_storage(storage.clone(), self.shape().clone(), self.device());
        Ok(Tensor::from_op(
            "sqrt",
            storage,
            self.shape().clone(),
            &[self],
            move |g| Ok(vec![Some(g.div(&y.mul_scalar(2.0)?)?)]),
        ))
    }
}
