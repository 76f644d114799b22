//! Scalar ops: x + c, c·x, x^c, −x.
//!
//! Derivatives: ∂(x + c)/∂x = 1; ∂(c·x)/∂x = c; ∂(x^c)/∂x = c·x^(c−1); ∂(−x)/∂x = −1.

use super::unary;
use crate::backend::UnaryOp;
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
    /// x^c (for non-integer c, x must be positive).
    pub fn pow_scalar(&self, c: f32) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "pow_scalar", UnaryOp::PowScalar(c), move |g| {
            Ok(vec![Some(g.mul(&x.pow_scalar(c - 1.0)?.mul_scalar(c)?)?)])
        })
    }
}
