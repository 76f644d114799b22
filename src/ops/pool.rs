//! Global average pooling: the mean over the spatial axes of an NCHW tensor.
//!
//! Forward: y[n, c] = (1/(H·W)) Σ_{h,w} x[n, c, h, w].
//! Backward: ∂L/∂x[n, c, h, w] = g[n, c] / (H·W) (from the composed mean).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// (N, C, H, W) → (N, C): the mean over H and W.
    pub fn global_avg_pool(&self) -> Result<Tensor> {
        if self.rank() != 4 {
            return Err(Error::shape(
                "global_avg_pool",
                format!("input must be NCHW (rank 4), got {}", self.shape()),
            ));
        }
        self.mean(&[2, 3], false)
    }
}
