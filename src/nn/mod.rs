//! Neural-network layers as [`Module`]s with named parameters whose paths follow timm's state-dict keys
//! (`stem.0.weight`, `stages.1.blocks.0.conv_dw.weight`, `head.fc.bias`, ...), so weights load unchanged.
//!
//! - [`Param`]: a parameter slot that can be frozen, unfrozen and replaced.
//! - [`Module`]: walks the parameters (`visit`) and the layers an adapter may wrap (`visit_adaptable`).
//! - [`WeightReparam`]: the seam through which an adapter reparameterises an [`Adaptable`] layer's weight
//!   (W ↦ W′); nn only calls it, the adapters themselves live in a layer above.
//! - Layers: [`Linear`], [`Conv2d`], [`LayerNorm2d`] (channels-first), [`LayerNorm`] (last axis), [`Grn`],
//!   [`DropPath`]; the network: [`ConvNeXt`] (v1 and v2) with presets in [`ConvNeXtConfig`].

mod conv2d;
mod convnext;
mod drop_path;
mod grn;
pub mod init;
mod linear;
mod norm;
mod param;

pub use conv2d::Conv2d;
pub use convnext::{Block, BlockNorm, ConvNeXt, ConvNeXtConfig, Head, Mlp, Pointwise, Stage};
pub use drop_path::DropPath;
pub use grn::Grn;
pub use init::InitRng;
pub use linear::Linear;
pub use norm::{LayerNorm, LayerNorm2d};
pub use param::Param;

use crate::error::Result;
use crate::tensor::Tensor;
use std::any::Any;
use std::fmt;

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A reparameterisation W ↦ W′ of an [`Adaptable`] layer's weight (an adapter): the layer's forward uses
/// [`WeightReparam::effective_weight`] in place of W, and [`Module::named_parameters`] lists the
/// reparameterisation's own parameters after the base ones. Whoever attaches one gets its concrete type
/// back with `downcast_ref` / `downcast_mut` on `dyn WeightReparam` (merging, saving and reporting need
/// more than this seam offers).
pub trait WeightReparam: Any + fmt::Debug + Send + Sync {
    /// The weight the forward uses, given the base weight W (recorded on the tape when it trains).
    fn effective_weight(&self, w: &Tensor) -> Result<Tensor>;
    /// Calls `f(path, param)` for every parameter of its own, named under the layer's path `layer`.
    fn visit(&self, layer: &str, f: &mut dyn FnMut(&str, &Param));
}

impl dyn WeightReparam {
    /// The reparameterisation as a `T`, if it is one.
    pub fn downcast_ref<T: WeightReparam>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }
    /// The reparameterisation as a `T`, mutably, if it is one.
    pub fn downcast_mut<T: WeightReparam>(&mut self) -> Option<&mut T> {
        (self as &mut dyn Any).downcast_mut()
    }
}

/// A layer whose weight a [`WeightReparam`] (an adapter) can reparameterise: [`Conv2d`] (any groups) and
/// [`Linear`]. The weight is viewed as the matrix (rows, cols) = (`shape[0]`, `numel / shape[0]`), i.e.
/// (Cout, Cin/g·kh·kw) for a convolution and (out, in) for a linear layer.
pub trait Adaptable {
    /// The base weight.
    fn weight(&self) -> &Param;
    /// The base weight, mutably (merge writes the adapted kernel here).
    fn weight_mut(&mut self) -> &mut Param;
    /// The adapter, if one is attached.
    fn adapter(&self) -> Option<&dyn WeightReparam>;
    /// The adapter slot (adapters are attached and removed here).
    fn adapter_mut(&mut self) -> &mut Option<Box<dyn WeightReparam>>;
}

/// The plumbing shared by the layers an adapter can wrap (a struct with `weight: Param`,
/// `bias: Option<Param>` and `adapter: Option<Box<dyn WeightReparam>>`): `effective_weight` (W, or W′ with
/// an adapter), the [`Module`] walk over `weight` and `bias` in timm's names, and [`Adaptable`].
macro_rules! adaptable_layer {
    ($layer:ty) => {
        impl $layer {
            /// The weight the forward uses: W, or the adapter's W′ (see
            /// [`WeightReparam::effective_weight`](crate::nn::WeightReparam::effective_weight)).
            pub fn effective_weight(&self) -> $crate::error::Result<$crate::tensor::Tensor> {
                match &self.adapter {
                    Some(a) => a.effective_weight(self.weight.tensor()),
                    None => Ok(self.weight.tensor().clone()),
                }
            }
        }

        impl $crate::nn::Module for $layer {
            fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &$crate::nn::Param)) {
                f(&$crate::nn::join(prefix, "weight"), &self.weight);
                if let Some(b) = &self.bias {
                    f(&$crate::nn::join(prefix, "bias"), b);
                }
            }
            fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut $crate::nn::Param)) {
                f(&$crate::nn::join(prefix, "weight"), &mut self.weight);
                if let Some(b) = &mut self.bias {
                    f(&$crate::nn::join(prefix, "bias"), b);
                }
            }
            fn visit_adaptable(
                &self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &dyn $crate::nn::Adaptable),
            ) {
                f(prefix, self);
            }
            fn visit_adaptable_mut(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &mut dyn $crate::nn::Adaptable),
            ) {
                f(prefix, self);
            }
        }

        impl $crate::nn::Adaptable for $layer {
            fn weight(&self) -> &$crate::nn::Param {
                &self.weight
            }
            fn weight_mut(&mut self) -> &mut $crate::nn::Param {
                &mut self.weight
            }
            fn adapter(&self) -> Option<&dyn $crate::nn::WeightReparam> {
                self.adapter.as_deref()
            }
            fn adapter_mut(&mut self) -> &mut Option<Box<dyn $crate::nn::WeightReparam>> {
                &mut self.adapter
            }
        }
    };
}
pub(crate) use adaptable_layer;

/// A network that maps a batch of images to class logits.
pub trait Classifier {
    /// Logits (N, classes) for images (N, C, H, W); `train` enables training-only behaviour (drop path).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

/// A network component with named parameters.
pub trait Module {
    /// Calls `f(path, param)` for every base parameter (the timm state dict; adapter factors excluded).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param));
    /// Like [`Module::visit`], mutably (freeze, load, replace).
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param));
    /// Calls `f(module path, layer)` for every layer an adapter can wrap. Default: none.
    fn visit_adaptable(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &dyn Adaptable)) {}
    /// Like [`Module::visit_adaptable`], mutably.
    fn visit_adaptable_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
    }

    /// Every parameter by path: the base ones, then each adapter's (e.g. `<layer>.lora_A.weight`).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |path, p| {
            out.push((path.to_string(), p.tensor().clone()))
        });
        self.visit_adaptable("", &mut |path, layer| {
            if let Some(a) = layer.adapter() {
                a.visit(path, &mut |p, param| {
                    out.push((p.to_string(), param.tensor().clone()))
                });
            }
        });
        out
    }
    /// The parameters that require gradients: what to hand an optimizer.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_parameters()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }
    /// Freezes or unfreezes every base parameter.
    fn set_trainable(&mut self, trainable: bool) {
        self.visit_mut("", &mut |_, p| p.set_trainable(trainable));
    }
    /// Total number of base parameters (scalars).
    fn num_parameters(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| n += p.numel());
        n
    }
}
