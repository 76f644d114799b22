//! Fully connected layer y = x·W'ᵀ + b on the last axis, W (out, in); W' = W, or the adapted weight when an
//! adapter ([`WeightReparam`]) is attached.

use super::{InitRng, Param, WeightReparam};
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// A linear layer with an optional bias and an optional adapter.
#[derive(Debug)]
pub struct Linear {
    /// The base weight W (out, in).
    pub weight: Param,
    /// The bias (out), if any.
    pub bias: Option<Param>,
    /// An adapter reparameterising `weight`, if attached.
    pub adapter: Option<Box<dyn WeightReparam>>,
}

impl Linear {
    /// Weight trunc-normal(σ = 0.02), bias zero (timm's ConvNeXt init).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut InitRng,
        device: &Device,
    ) -> Result<Linear> {
        let w = rng.trunc_normal(in_features * out_features, 0.02);
        Ok(Linear {
            weight: Param::from_vec(&w, [out_features, in_features], device)?,
            bias: if bias {
                Some(Param::new(Tensor::zeros([out_features], device)?, true))
            } else {
                None
            },
            adapter: None,
        })
    }
    /// y = x·W'ᵀ + b for x of shape (…, in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(
            &self.effective_weight()?,
            self.bias.as_ref().map(|b| b.tensor()),
        )
    }
}

super::adaptable_layer!(Linear);
