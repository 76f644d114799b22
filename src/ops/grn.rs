//! Global Response Normalisation (ConvNeXt v2), channels-first (N, C, H, W) or channels-last (N, H, W, C).
//!
//! Forward, per image n and channel c, with γ, β of shape (C) and ε = 10⁻⁶ in ConvNeXt v2:
//!   G_c = ‖x_{·,c}‖₂ = √(Σ_{h,w} x²)           (the channel's spatial L2 norm)
//!   N_c = G_c / (mean_c' G_c' + ε)               (divisive normalisation across channels)
//!   y   = γ_c·(x·N_c) + β_c + x                   (timm: x.addcmul(β, γ, x·N))
//! Backward: composed from the ops used (sum, sqrt, mean, div, mul, add), each with its own rule; the test
//! checks the composite against finite differences.
//!
//! G is computed as √(Σx² + δ) with δ = 10⁻³⁰: the same f32 value as √(Σx²) unless the channel is all
//! but exactly zero, where √'s derivative 1/(2G) would be infinite and turn the gradient into ∞·0 = NaN. With
//! δ, an all-zero channel gets G = 10⁻¹⁵ and gradient x/G = 0, as torch.norm's backward gives.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// GRN of a 4-D tensor; `channels_last` selects (N, H, W, C) instead of (N, C, H, W).
    pub fn grn(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        channels_last: bool,
    ) -> Result<Tensor> {
        const OP: &str = "grn";
        if self.rank() != 4 {
            return Err(Error::shape(
                OP,
                format!("input must have rank 4, got {}", self.shape()),
            ));
        }
        let (c_axis, spatial): (usize, [usize; 2]) = if channels_last {
            (3, [1, 2])
        } else {
            (1, [2, 3])
        };
        let c = self.dims()[c_axis];
        for (name, p) in [("gamma", gamma), ("beta", beta)] {
            self.check_device(OP, p)?;
            if p.dims() != [c] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} must have shape [{c}] for input {}, got {}",
                        self.shape(),
                        p.shape()
                    ),
                ));
            }
        }
        let param_shape = if channels_last {
            vec![1, 1, 1, c]
        } else {
            vec![1, c, 1, 1]
        };
        let g = self
            .mul(self)?
            .sum(&spatial, true)?
            .add_scalar(1e-30)?
            .sqrt()?;
        let n = g.div(&g.mean(&[c_axis], true)?.add_scalar(eps)?)?;
        let gamma = gamma.reshape(param_shape.clone())?;
        let beta = beta.reshape(param_shape)?;
        self.mul(&n)?.mul(&gamma)?.add(&beta)?.add(self)
    }
}
