//! 2-D convolution layer (NCHW input, OIHW weight (Cout, Cin/g, kh, kw)) with an optional bias and an optional
//! adapter ([`WeightReparam`]) on the weight; any stride, padding, dilation and groups (depthwise:
//! g = Cin = Cout).

use super::{InitRng, Param, WeightReparam};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::shape::Conv2dParams;
use crate::tensor::Tensor;

/// A convolution layer.
#[derive(Debug)]
pub struct Conv2d {
    /// The base kernel W (O, C/groups, kh, kw).
    pub weight: Param,
    /// The bias (O), if any.
    pub bias: Option<Param>,
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
    /// An adapter reparameterising `weight`, if attached.
    pub adapter: Option<Box<dyn WeightReparam>>,
}

impl Conv2d {
    /// A `k`×`k` convolution from `c_in` to `c_out` channels; weight trunc-normal(σ = 0.02), bias zero.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        params: Conv2dParams,
        bias: bool,
        rng: &mut InitRng,
        device: &Device,
    ) -> Result<Conv2d> {
        let g = params.groups;
        if g == 0 || !c_in.is_multiple_of(g) || !c_out.is_multiple_of(g) {
            return Err(Error::invalid(
                "Conv2d::new",
                format!("groups {g} must divide both {c_in} input and {c_out} output channels"),
            ));
        }
        let shape = [c_out, c_in / g, k, k];
        let w = rng.trunc_normal(shape.iter().product(), 0.02);
        Ok(Conv2d {
            weight: Param::from_vec(&w, shape, device)?,
            bias: if bias {
                Some(Param::new(Tensor::zeros([c_out], device)?, true))
            } else {
                None
            },
            params,
            adapter: None,
        })
    }
    /// y = x ⋆ W' + b.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(
            &self.effective_weight()?,
            self.bias.as_ref().map(|b| b.tensor()),
            self.params,
        )
    }
}

super::adaptable_layer!(Conv2d);
