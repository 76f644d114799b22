//! Reshape: the same elements in the same (row-major) order under another shape. No data moves; the result
//! shares the input's storage.
//!
//! Backward: ∂L/∂x = reshape(g, shape of x).

use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

impl Tensor {
    /// The same data viewed with `shape` (same element count).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {shape} ({} elements)",
                    self.shape(),
                    self.numel(),
                    shape.numel()
                ),
            ));
        }
        let x_shape = self.shape().clone();
        Ok(Tensor::from_op(
            "reshape",
            self.storage(),
            shape,
            &[self],
            move |g| Ok(vec![Some(g.reshape(x_shape.clone())?)]),
        ))
    }

    /// Flattens axes `start..` into one (e.g. (N, C, H, W).flatten_from(1) is (N, C·H·W)).
    pub fn flatten_from(&self, start: usize) -> Result<Tensor> {
        if start > self.rank() {
            return Err(Error::invalid(
                "flatten_from",
                format!("axis {start} out of range for shape {}", self.shape()),
            ));
        }
        let mut dims = self.dims()[..start].to_vec();
        dims.push(self.dims()[start..].iter().product());
        self.reshape(dims)
    }
}
