//! Sum and mean over axes, and the two shape moves that broadcasting's backward needs.
//!
//! Forward: y = Σ_{axes} x (keepdim keeps the reduced axes with size 1); mean = sum / (number summed).
//! Backward: every summed element contributed with weight 1, so ∂L/∂x = g broadcast back to x's shape
//! (times 1/count for the mean).
//!
//! `sum_to(shape)` reduces a broadcast result back to an operand's shape (the backward of broadcasting);
//! `broadcast_to(shape)` is its adjoint.
//!
//! Shape algebra: the reduced axes are grouped into runs of adjacent axes; each run is one kernel call on the
//! view (outer, run length, inner), innermost run first, so any axis set needs at most one call per run. A
//! sum over every axis but one run of adjacent axes (a per-channel sum of NCHW, the bias gradient of a
//! convolution) is one call of its own, `sum_keep_middle` on the view (before, kept, after).

use crate::backend::{AxisLayout, BinaryOp, Storage};
use crate::error::{Error, Result};
use crate::shape::{merge_broadcast_dims, Shape};
use crate::tensor::Tensor;

/// Sums `x` over the sorted, deduplicated `axes`; returns the keepdim result's storage and shape.
fn sum_axes_kernel(x: &Tensor, axes: &[usize]) -> Result<(Storage, Shape)> {
    let backend = x.device().backend();
    let mut dims = x.dims().to_vec();
    // Reduced axes on both sides of one kept run [a, b): one pass.
    let kept: Vec<usize> = (0..dims.len()).filter(|i| !axes.contains(i)).collect();
    if let (Some(&a), Some(&last)) = (kept.first(), kept.last()) {
        let b = last + 1;
        if kept.len() == b - a && a > 0 && b < dims.len() {
            let layout = AxisLayout {
                outer: dims[..a].iter().product(),
                len: dims[a..b].iter().product(),
                inner: dims[b..].iter().product(),
            };
            let storage = backend.sum_keep_middle(&x.storage(), layout)?;
            for (i, d) in dims.iter_mut().enumerate() {
                if i < a || i >= b {
                    *d = 1;
                }
            }
            return Ok((storage, Shape::new(dims)));
        }
    }
    let mut storage = x.storage();
    let mut i = axes.len();
    while i > 0 {
        // The run of adjacent axes ending at axes[i - 1].
        let end = axes[i - 1];
        let mut start = end;
        while i > 1 && axes[i - 2] + 1 == start {
            i -= 1;
            start -= 1;
        }
        i -= 1;
        let layout = AxisLayout {
            outer: dims[..start].iter().product(),
            len: dims[start..=end].iter().product(),
            inner: dims[end + 1..].iter().product(),
        };
        storage = backend.sum_axis(&storage, layout)?;
        for d in &mut dims[start..=end] {
            *d = 1;
        }
    }
    Ok((storage, Shape::new(dims)))
}

impl Tensor {
    /// Σ over `axes`; with `keepdim` the reduced axes stay as size 1.
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let axes = self.shape().check_axes("sum", axes)?;
        let (storage, kept) = sum_axes_kernel(self, &axes)?;
        let out = if keepdim {
            kept.clone()
        } else {
            Shape::new(
                self.dims()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect::<Vec<_>>(),
            )
        };
        let x_shape = self.shape().clone();
        Ok(Tensor::from_op("sum", storage, out, &[self], move |g| {
            Ok(vec![Some(g.reshape(kept.clone())?.broadcast_to(&x_shape)?)])
        }))
    }

    /// Σ of all elements (a scalar).
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let axes = self.shape().check_axes("mean", axes)?;
        let count: usize = axes.iter().map(|&a| self.dims()[a]).product();
        if count == 0 {
            return Err(Error::shape(
                "mean",
                format!("mean over empty axes {axes:?} of shape {}", self.shape()),
            ));
        }
        self.sum(&axes, keepdim)?.mul_scalar(1.0 / count as f32)
    }

    /// Mean of all elements (a scalar).
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.mean(&axes, false)
    }

    /// Reduces a broadcast tensor to `shape` by summing over the broadcast axes (the backward of
    /// broadcasting). `shape` must broadcast to this tensor's shape.
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if Shape::broadcast("sum_to", shape, self.shape())? != *self.shape() {
            return Err(Error::shape(
                "sum_to",
                format!("{shape} does not broadcast to {}", self.shape()),
            ));
        }
        let lead = self.rank() - shape.rank();
        let axes: Vec<usize> = (0..self.rank())
            .filter(|&i| i < lead || (shape.dims()[i - lead] == 1 && self.dims()[i] != 1))
            .collect();
        self.sum(&axes, true)?.reshape(shape.clone())
    }

    /// Copies this tensor along broadcast axes to `shape` (NumPy rules).
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if Shape::broadcast("broadcast_to", self.shape(), shape)? != *shape {
            return Err(Error::shape(
                "broadcast_to",
                format!("{} does not broadcast to {shape}", self.shape()),
            ));
        }
        // out = x + 0 with the zero a broadcast scalar: one strided copy kernel.
        let backend = self.device().backend();
        let zero = backend.zero_scalar()?;
        let layout = merge_broadcast_dims("broadcast_to", self.shape(), &Shape::scalar(), shape)?;
        let storage = backend.binary(BinaryOp::Add, &self.storage(), &zero, &layout)?;
        let x_shape = self.shape().clone();
        Ok(Tensor::from_op(
            "broadcast_to",
            storage,
            shape.clone(),
            &[self],
            move |g| Ok(vec![Some(g.sum_to(&x_shape)?)]),
        ))
    }
}
