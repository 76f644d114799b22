//! A residual connection around a layer-scaled branch (ConvNeXt v1's `x + γ ⊙ h`), in one pass.
//!
//! Forward, on (N, C, …) tensors x and h with γ of shape (C): y = x + γ_c·h.
//! Backward: ∂x = g,  ∂h = g·γ_c,  ∂γ_c = Σ_{n,…} g·h  (one per-channel reduction of the product).
//! Shape algebra: x and h are viewed as (outer N, C, inner = the product of the remaining axes).

use crate::backend::AxisLayout;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// self + γ ⊙ h with γ (shape (C)) broadcast over axis 1 of the (N, C, …) tensors self and h.
    pub fn add_channel_scaled(&self, h: &Tensor, gamma: &Tensor) -> Result<Tensor> {
        const OP: &str = "add_channel_scaled";
        self.check_device(OP, h)?;
        self.check_device(OP, gamma)?;
        if self.rank() < 2 || h.shape() != self.shape() || gamma.dims() != [self.dims()[1]] {
            return Err(Error::shape(
                OP,
                format!(
                    "need x and h of one shape (N, C, …) and γ of shape (C): got x {}, h {}, γ {}",
                    self.shape(),
                    h.shape(),
                    gamma.shape()
                ),
            ));
        }
        let d = self.dims();
        let layout = AxisLayout {
            outer: d[0],
            len: d[1],
            inner: d[2..].iter().product(),
        };
        let backend = self.device().backend();
        let y =
            backend.channel_scale_add(&self.storage(), &h.storage(), &gamma.storage(), layout)?;
        let (saved_h, saved_gamma) = (h.detach(), gamma.detach());
        let need = [
            self.requires_grad(),
            h.requires_grad(),
            gamma.requires_grad(),
        ];
        let c = d[1];
        Ok(Tensor::from_op(
            OP,
            y,
            self.shape().clone(),
            &[self, h, gamma],
            move |g| {
                let dev = g.device();
                let dh = if need[1] {
                    let mut per_channel = vec![1; g.rank()];
                    per_channel[1] = c;
                    Some(g.mul(&saved_gamma.reshape(per_channel)?)?)
                } else {
                    None
                };
                let dgamma = if need[2] {
                    let s = dev.backend().sum_product_keep_middle(
                        &g.storage(),
                        &saved_h.storage(),
                        layout,
                    )?;
                    Some(Tensor::from_storage(s, [c], dev))
                } else {
                    None
                };
                Ok(vec![need[0].then(|| g.clone()), dh, dgamma])
            },
        ))
    }
}
