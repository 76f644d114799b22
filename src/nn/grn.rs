//! Global Response Normalisation layer (ConvNeXt v2), parameters `weight` (γ) and `bias` (β), both zero at
//! init so the layer starts as the identity. The math is in [`crate::ops::grn`]:
//! y = γ·(x·N(x)) + β + x with N_c = ‖x_c‖₂ / (mean_c ‖x_c‖₂ + ε).

use super::{join, Module, Param};
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// GRN over `c` channels, channels-first or channels-last.
#[derive(Debug)]
pub struct Grn {
    /// γ (C).
    pub weight: Param,
    /// β (C).
    pub bias: Param,
    /// ε of the divisive normalisation.
    pub eps: f32,
    /// True for (N, H, W, C) input, false for (N, C, H, W).
    pub channels_last: bool,
}

impl Grn {
    /// γ = β = 0, ε = 10⁻⁶ (timm's `GlobalResponseNorm`).
    pub fn new(c: usize, channels_last: bool, device: &Device) -> Result<Self> {
        Ok(Grn {
            weight: Param::new(Tensor::zeros([c], device)?, true),
            bias: Param::new(Tensor::zeros([c], device)?, true),
            eps: 1e-6,
            channels_last,
        })
    }
    /// Applies GRN to a rank-4 tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.grn(
            self.weight.tensor(),
            self.bias.tensor(),
            self.eps,
            self.channels_last,
        )
    }
}

impl Module for Grn {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(prefix, "weight"), &self.weight);
        f(&join(prefix, "bias"), &self.bias);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}
