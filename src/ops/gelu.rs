//! GELU, exact (erf) form, as in ConvNeXt.
//!
//! Forward: y = x·Φ(x), Φ(x) = ½(1 + erf(x/√2)) the standard normal CDF.
//! Derivative: ∂y/∂x = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π) the normal density.
//! The backward runs one fused kernel, `BinaryOp::GeluBackward`, computing g·GELU′(x).

use super::{record_unary, unary};
use crate::backend::{BinaryOp, Storage, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// GELU(x) = x·Φ(x) elementwise.
    pub fn gelu(&self) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "gelu", UnaryOp::Gelu, move |g| gelu_backward(g, &x))
    }

    /// GELU of this tensor recorded with its value `y` already computed (by a fused kernel such as
    /// [`Tensor::conv2d_gelu`]'s).
    pub(crate) fn gelu_computed(&self, y: Storage) -> Tensor {
        let x = self.detach();
        record_unary(self, "gelu", y, move |g| gelu_backward(g, &x))
    }
}

fn gelu_backward(g: &Tensor, x: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let (storage, shape) =
        super::binary::broadcast_kernel("gelu_backward", BinaryOp::GeluBackward, g, x)?;
    Ok(vec![Some(Tensor::from_storage(storage, shape, g.device()))])
}
