//! Fully connected layer y = x·W'ᵀ + b on the last axis, W (out, in); W' = W, or the adapted weight when a
//! PEFT adapter is attached (see [`crate::peft::Adapter`]).

use super::{join, Adaptable, InitRng, Module, Param};
use crate::backend::Device;
use crate::error::Result;
use crate::peft::Adapter;
use crate::tensor::Tensor;

/// A linear layer with an optional bias and an optional adapter.
#[derive(Debug)]
pub struct Linear {
    /// The base weight W (out, in).
    pub weight: Param,
    /// The bias (out), if any.
    pub bias: Option<Param>,
    /// A PEFT adapter reparameterising `weight`, if attached.
    pub adapter: Option<Adapter>,
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
    /// The weight the forward uses: W, or W' with an active adapter.
    pub fn effective_weight(&self) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a.effective_weight(self.weight.tensor()),
            None => Ok(self.weight.tensor().clone()),
        }
    }
    /// y = x·W'ᵀ + b for x of shape (…, in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(
            &self.effective_weight()?,
            self.bias.as_ref().map(|b| b.tensor()),
        )
    }
}

impl Module for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
    fn visit_adaptable(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Adaptable)) {
        f(prefix, self);
    }
    fn visit_adaptable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
        f(prefix, self);
    }
}

impl Adaptable for Linear {
    fn layer_kind(&self) -> &'static str {
        "linear"
    }
    fn weight(&self) -> &Param {
        &self.weight
    }
    fn weight_mut(&mut self) -> &mut Param {
        &mut self.weight
    }
    fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }
    fn adapter_mut(&mut self) -> &mut Option<Adapter> {
        &mut self.adapter
    }
    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        Module::visit_mut(self, prefix, f);
    }
}
