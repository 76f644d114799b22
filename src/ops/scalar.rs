//! Scalar ops: x + c, c·x, x^c, −x, min(x, c).
//!
//! Derivatives: ∂(x + c)/∂x = 1; ∂(c·x)/∂x = c; ∂(x^c)/∂x = c·x^(c−1); ∂(−x)/∂x = −1;
//! ∂min(x, c)/∂x = 1 where x ≤ c, else 0 (one fused kernel, `BinaryOp::MinScalarBackward`).

use super::unary;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// x + c.
    pub fn add_scalar(&self, c: f32) -> Result<Tensor> {
        unary(self, "add_scalar", UnaryOp::AddScalar(c), |g| {
            Ok(vec![Some(g.clone())])
        })
    }
    /// c · x.
    pub fn mul_scalar(&self, c: f32) -> Result<Tensor> {
        unary(self, "mul_scalar", UnaryOp::MulScalar(c), move |g| {
            Ok(vec![Some(g.mul_scalar(c)?)])
        })
    }
    /// −x.
    pub fn neg(&self) -> Result<Tensor> {
        unary(self, "neg", UnaryOp::Neg, |g| Ok(vec![Some(g.neg()?)]))
    }
    /// min(x, c) elementwise; NaN stays NaN.
    pub fn min_scalar(&self, c: f32) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "min_scalar", UnaryOp::MinScalar(c), move |g| {
            let (storage, shape) = super::binary::broadcast_kernel(
                "min_scalar_backward",
                BinaryOp::MinScalarBackward(c),
                g,
                &x,
            )?;
            Ok(vec![Some(Tensor::from_storage(storage, shape, g.device()))])
        })
    }
    /// x^c (for non-integer c, x must be positive).
    pub fn pow_scalar(&self, c: f32) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "pow_scalar", UnaryOp::PowScalar(c), move |g| {
            Ok(vec![Some(g.mul(&x.pow_scalar(c - 1.0)?.mul_scalar(c)?)?)])
        })
    }
}
