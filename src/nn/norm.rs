//! Layer normalisation layers (weight γ = 1, bias β = 0 at init; ε = 10⁻⁶ as in ConvNeXt):
//! [`LayerNorm2d`] normalises the channels of NCHW data (timm's `LayerNorm2d`), [`LayerNorm`] the last axis
//! (channels-last data, and the head's (N, C) features). The math is in [`crate::ops::layer_norm`].

use super::{join, Module, Param};
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// ConvNeXt's layer-norm epsilon.
pub const CONVNEXT_LN_EPS: f32 = 1e-6;

fn affine(c: usize, device: &Device) -> Result<(Param, Param)> {
    Ok((
        Param::new(Tensor::ones([c], device)?, true),
        Param::new(Tensor::zeros([c], device)?, true),
    ))
}

fn visit_affine(w: &Param, b: &Param, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
    f(&join(prefix, "weight"), w);
    f(&join(prefix, "bias"), b);
}

/// Layer norm over axis 1 of (N, C, H, W).
#[derive(Debug)]
pub struct LayerNorm2d {
    /// γ (C).
    pub weight: Param,
    /// β (C).
    pub bias: Param,
    /// ε added to the variance.
    pub eps: f32,
}

impl LayerNorm2d {
    /// γ = 1, β = 0 over `c` channels.
    pub fn new(c: usize, eps: f32, device: &Device) -> Result<Self> {
        let (weight, bias) = affine(c, device)?;
        Ok(LayerNorm2d { weight, bias, eps })
    }
    /// Normalises each (n, ·, h, w) channel vector.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm_channels(
            Some(self.weight.tensor()),
            Some(self.bias.tensor()),
            self.eps,
        )
    }
}

impl Module for LayerNorm2d {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        visit_affine(&self.weight, &self.bias, prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}

/// Layer norm over the last axis.
#[derive(Debug)]
pub struct LayerNorm {
    /// γ (C).
    pub weight: Param,
    /// β (C).
    pub bias: Param,
    /// ε added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// γ = 1, β = 0 over a last axis of length `c`.
    pub fn new(c: usize, eps: f32, device: &Device) -> Result<Self> {
        let (weight, bias) = affine(c, device)?;
        Ok(LayerNorm { weight, bias, eps })
    }
    /// Normalises each row of the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm_last(
            Some(self.weight.tensor()),
            Some(self.bias.tensor()),
            self.eps,
        )
    }
}

impl Module for LayerNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        visit_affine(&self.weight, &self.bias, prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}
