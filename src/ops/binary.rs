//! Elementwise add, sub, mul, div with NumPy broadcasting.
//!
//! Forward: y = a ∘ b where a and b are broadcast to a common shape (trailing axes aligned; each pair of
//! dimensions equal or one of them 1).
//!
//! Backward: a broadcast copies a value to many outputs, so its gradient is the *sum* of theirs; each
//! input's gradient is reduced back to its own shape with [`Tensor::sum_to`]:
//! - add: ∂a = Σ g,        ∂b = Σ g
//! - sub: ∂a = Σ g,        ∂b = −Σ g
//! - mul: ∂a = Σ g·b,      ∂b = Σ g·a
//! - div: ∂a = Σ g / b,    ∂b = −Σ g·a / b²

use crate::backend::{BinaryOp, Storage};
use crate::error::Result;
use crate::shape::{merge_broadcast_dims, Shape};
use crate::tensor::Tensor;

/// Runs a broadcasting binary kernel: checks devices and shapes, returns the result's storage and shape.
pub(crate) fn broadcast_kernel(
    name: &'static str,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
) -> Result<(Storage, Shape)> {
    a.check_device(name, b)?;
    let out = Shape::broadcast(name, a.shape(), b.shape())?;
    let layout = merge_broadcast_dims(name, a.shape(), b.shape(), &out)?;
    let storage = a
        .device()
        .backend()
        .binary(op, &a.storage(), &b.storage(), &layout)?;
    Ok((storage, out))
}

/// op(g, x) for a backward rule whose incoming gradient g has x's shape: written over g's own buffer when
/// the engine holds g alone and the backend can ([`Backend::binary_in_place`]), else into a new one by
/// [`broadcast_kernel`]. The same values either way.
///
/// [`Backend::binary_in_place`]: crate::backend::Backend::binary_in_place
pub(crate) fn over_gradient(
    name: &'static str,
    op: BinaryOp,
    g: &Tensor,
    x: &Tensor,
) -> Result<Tensor> {
    if g.shape() == x.shape() {
        let (be, xs) = (g.device().backend(), x.storage());
        let in_place = g.with_unique_storage(|s| be.binary_in_place(op, s, &xs));
        if in_place.transpose()? == Some(true) {
            return Ok(Tensor::from_storage(
                g.storage(),
                g.shape().clone(),
                g.device(),
            ));
        }
    }
    let (storage, shape) = broadcast_kernel(name, op, g, x)?;
    Ok(Tensor::from_storage(storage, shape, g.device()))
}

impl Tensor {
    /// a + b (broadcasting).
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let (storage, shape) = broadcast_kernel("add", BinaryOp::Add, self, other)?;
        let (sa, sb) = (self.shape().clone(), other.shape().clone());
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            "add",
            storage,
            shape,
            &[self, other],
            move |g| {
                Ok(vec![
                    need_a.then(|| g.sum_to(&sa)).transpose()?,
                    need_b.then(|| g.sum_to(&sb)).transpose()?,
                ])
            },
        ))
    }

    /// a − b (broadcasting).
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let (storage, shape) = broadcast_kernel("sub", BinaryOp::Sub, self, other)?;
        let (sa, sb) = (self.shape().clone(), other.shape().clone());
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            "sub",
            storage,
            shape,
            &[self, other],
            move |g| {
                Ok(vec![
                    need_a.then(|| g.sum_to(&sa)).transpose()?,
                    need_b.then(|| g.sum_to(&sb)?.neg()).transpose()?,
                ])
            },
        ))
    }

    /// a · b elementwise (broadcasting).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        let (storage, shape) = broadcast_kernel("mul", BinaryOp::Mul, self, other)?;
        let (a, b) = (self.detach(), other.detach());
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            "mul",
            storage,
            shape,
            &[self, other],
            move |g| {
                let da = if need_a {
                    Some(g.mul(&b)?.sum_to(a.shape())?)
                } else {
                    None
                };
                let db = if need_b {
                    Some(g.mul(&a)?.sum_to(b.shape())?)
                } else {
                    None
                };
                Ok(vec![da, db])
            },
        ))
    }

    /// a / b elementwise (broadcasting).
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        let (storage, shape) = broadcast_kernel("div", BinaryOp::Div, self, other)?;
        let (a, b) = (self.detach(), other.detach());
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            "div",
            storage,
            shape,
            &[self, other],
            move |g| {
                let da = if need_a {
                    Some(g.div(&b)?.sum_to(a.shape())?)
                } else {
                    None
                };
                let db = if need_b {
                    Some(g.mul(&a)?.div(&b.mul(&b)?)?.neg()?.sum_to(b.shape())?)
                } else {
                    None
                };
                Ok(vec![da, db])
            },
        ))
    }
}
