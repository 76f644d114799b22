//! [`Param`]: a named slot holding one parameter tensor, trainable (a leaf that requires gradients) or frozen
//! (a constant leaf: the tape never records it, so it never gets a gradient buffer).
//!
//! Optimizers update the tensor in place ([`Tensor::assign`]); freezing or unfreezing swaps in a new leaf over
//! the same data (a new identity), so hand the optimizer the parameter list again after changing what trains
//! (its state is keyed by name, not identity, and survives that).

use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// One parameter of a module.
#[derive(Clone, Debug)]
pub struct Param {
    tensor: Tensor,
}

impl Param {
    /// A parameter over `tensor`'s data; `trainable` decides whether it requires gradients. A leaf that
    /// already has the requested flag is kept as is (same identity), anything else becomes a new leaf.
    pub fn new(tensor: Tensor, trainable: bool) -> Param {
        if tensor.is_leaf() && tensor.requires_grad() == trainable {
            return Param { tensor };
        }
        let tensor = if trainable {
            tensor.detach().to_param()
        } else {
            tensor.detach()
        };
        Param { tensor }
    }
    /// A trainable parameter from host data.
    pub fn from_vec(
        data: &[f32],
        shape: impl Into<Shape>,
        device: &crate::Device,
    ) -> Result<Param> {
        Ok(Param::new(Tensor::from_slice(data, shape, device)?, true))
    }
    /// The current tensor (cheap clone sharing data and identity).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    /// The parameter's shape.
    pub fn shape(&self) -> &Shape {
        self.tensor.shape()
    }
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.tensor.numel()
    }
    /// True if the parameter requires gradients.
    pub fn is_trainable(&self) -> bool {
        self.tensor.requires_grad()
    }
    /// Freezes (`false`) or unfreezes (`true`) the parameter; a no-op if it is already in that state.
    pub fn set_trainable(&mut self, trainable: bool) {
        if trainable != self.is_trainable() {
            *self = Param::new(self.tensor.clone(), trainable);
        }
    }
    /// Replaces the value by `value` (same shape, same device), keeping the trainable flag. The slot gets a new
    /// tensor identity; tensors computed before keep the old data.
    pub fn replace(&mut self, value: &Tensor) -> Result<()> {
        if value.shape() != self.shape() {
            return Err(Error::shape(
                "Param::replace",
                format!(
                    "cannot replace a {} parameter by a {} tensor",
                    self.shape(),
                    value.shape()
                ),
            ));
        }
        self.tensor
            .device()
            .check_same("Param::replace", value.device())?;
        *self = Param::new(value.clone(), self.is_trainable());
        Ok(())
    }
}
