//! Elementwise natural logarithm.
//!
//! Forward: y = ln x (x > 0). Derivative: ∂y/∂x = 1/x, so ∂L/∂x = g / x.

use super::unary;
use crate::backend::UnaryOp;
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// ln x elementwise.
    pub fn log(&self) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "log", UnaryOp::Log, move |g| {
            Ok(vec![Some(g.div(&x)?)])
        })
    }
}
