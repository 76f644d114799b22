//! Log-softmax over one axis.
//!
//! Forward: y_k = x_k − log Σ_j e^{x_j}, computed as x_k − m − log Σ_j e^{x_j − m} with m = max_j x_j so no
//! exponential overflows.
//! Backward: ∂y_k/∂x_j = δ_kj − softmax_j, so ∂L/∂x_j = g_j − e^{y_j}·Σ_k g_k.
//! Shape algebra: x is viewed as (outer, K, inner) around the chosen axis; y has x's shape.

use crate::backend::AxisLayout;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The (outer, len, inner) view of `t` around `axis`.
pub(crate) fn axis_layout(op: &'static str, t: &Tensor, axis: usize) -> Result<AxisLayout> {
    let d = t.dims();
    if axis >= d.len() {
        return Err(Error::invalid(
            op,
            format!("axis {axis} out of range for shape {}", t.shape()),
        ));
    }
    Ok(AxisLayout {
        outer: d[..axis].iter().product(),
        len: d[axis],
        inner: d[axis + 1..].iter().product(),
    })
}

impl Tensor {
    /// log softmax(x) along `axis`.
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor> {
        const OP: &str = "log_softmax";
        let layout = axis_layout(OP, self, axis)?;
        if layout.len == 0 {
            return Err(Error::shape(
                OP,
                format!("axis {axis} of {} is empty", self.shape()),
            ));
        }
        let backend = self.device().backend();
        let storage = backend.log_softmax(&self.storage(), layout)?;
        let y = Tensor::from_storage(storage.clone(), self.shape().clone(), self.device());
        Ok(Tensor::from_op(
            OP,
            storage,
            self.shape().clone(),
            &[self],
            move |g| {
                let s = g.device().backend().log_softmax_backward(
                    &g.storage(),
                    &y.storage(),
                    layout,
                )?;
                Ok(vec![Some(Tensor::from_storage(
                    s,
                    y.shape().clone(),
                    g.device(),
                ))])
            },
        ))
    }
}
