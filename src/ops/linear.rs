//! Affine map over the last axis (a fully connected layer): y = x·Wᵀ + b.
//!
//! Shape algebra: x (…, in), W (out, in), b (out) → y (…, out).
//! Backward (from the composed matmul and broadcasting add): ∂x = G·W, ∂W = Σ_… Gᵀ·x, ∂b = Σ_… G.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// x·Wᵀ (+ b) with `weight` of shape (out, in) and `bias` of shape (out).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        if weight.rank() != 2 || self.rank() < 1 || self.dims()[self.rank() - 1] != weight.dims()[1]
        {
            return Err(Error::shape(
                OP,
                format!(
                    "input {} and weight {} do not fit: need input (…, in) and weight (out, in)",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        // A rank-1 input is one row.
        let x = if self.rank() == 1 {
            self.reshape([1, self.numel()])?
        } else {
            self.clone()
        };
        let mut y = x.matmul_t(weight, false, true)?;
        if let Some(b) = bias {
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "bias must have shape [{}] for weight {}, got {}",
                        weight.dims()[0],
                        weight.shape(),
                        b.shape()
                    ),
                ));
            }
            y = y.add(b)?;
        }
        if self.rank() == 1 {
            y = y.reshape([weight.dims()[0]])?;
        }
        Ok(y)
    }
}
