//! Layer normalisation over one axis: the channels of an NCHW tensor (ConvNeXt's `LayerNorm2d`) or the last
//! axis (`LayerNorm` on channels-last data).
//!
//! Forward, for each position (n, ·) over the C entries x_c of the normalised axis:
//!   μ = (1/C) Σ_c x_c,   σ² = (1/C) Σ_c (x_c − μ)²,   r = 1/√(σ² + ε),   x̂_c = (x_c − μ)·r,
//!   y_c = γ_c·x̂_c + β_c          (γ, β optional, shape (C)).
//! Backward, with g_c = ∂L/∂y_c and ĝ_c = γ_c·g_c (from ∂x̂/∂x = r·(I − 1/C − x̂x̂ᵀ/C)):
//!   ∂L/∂x_c = r·(ĝ_c − mean(ĝ) − x̂_c·mean(ĝ ⊙ x̂)),
//!   ∂L/∂γ_c = Σ_positions g_c·x̂_c,   ∂L/∂β_c = Σ_positions g_c.
//! Shape algebra: x is viewed as (outer, C, inner): NCHW channels → (N, C, H·W); last axis → (rows, C, 1).
//! The forward kernel keeps μ and r for the backward kernel.

use crate::backend::AxisLayout;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Layer norm over axis 1 of an (N, C, …) tensor (ConvNeXt's channels-first `LayerNorm2d`).
    pub fn layer_norm_channels(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape(
                "layer_norm_channels",
                format!("input must be (N, C, ...), got {}", self.shape()),
            ));
        }
        let d = self.dims();
        let layout = AxisLayout {
            outer: d[0],
            len: d[1],
            inner: d[2..].iter().product(),
        };
        layer_norm_axis(self, "layer_norm_channels", layout, weight, bias, eps)
    }

    /// Layer norm over the last axis (channels-last `LayerNorm`).
    pub fn layer_norm_last(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        if self.rank() < 1 {
            return Err(Error::shape(
                "layer_norm_last",
                "input must have at least one axis, got a scalar",
            ));
        }
        let d = self.dims();
        let len = d[d.len() - 1];
        let layout = AxisLayout {
            outer: d[..d.len() - 1].iter().product(),
            len,
            inner: 1,
        };
        layer_norm_axis(self, "layer_norm_last", layout, weight, bias, eps)
    }
}

fn layer_norm_axis(
    x: &Tensor,
    op: &'static str,
    layout: AxisLayout,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    if layout.len == 0 {
        return Err(Error::shape(
            op,
            format!("cannot normalise over an empty axis ({})", x.shape()),
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps must be ≥ 0, got {eps}")));
    }
    for (name, p) in [("weight", weight), ("bias", bias)] {
        if let Some(p) = p {
            x.check_device(op, p)?;
            if p.dims() != [layout.len] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} must have shape [{}] for input {}, got {}",
                        layout.len,
                        x.shape(),
                        p.shape()
                    ),
                ));
            }
        }
    }
    let backend = x.device().backend();
    let out = backend.layer_norm(
        &x.storage(),
        weight.map(|w| w.storage()).as_ref(),
        bias.map(|b| b.storage()).as_ref(),
        layout,
        eps,
    )?;
    let saved_x = x.detach();
    let saved_w = weight.map(|w| w.detach());
    let (mean, rstd) = (out.mean, out.rstd);
    let (has_w, has_b) = (weight.is_some(), bias.is_some());
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    Ok(Tensor::from_op(
        op,
        out.y,
        x.shape().clone(),
        &inputs,
        move |g| {
            let dev = g.device();
            let grads = dev.backend().layer_norm_backward(
                &g.storage(),
                &saved_x.storage(),
                saved_w.as_ref().map(|w| w.storage()).as_ref(),
                &mean,
                &rstd,
                layout,
            )?;
            let mut out = vec![Some(Tensor::from_storage(
                grads.dx,
                saved_x.shape().clone(),
                dev,
            ))];
            if has_w {
                out.push(Some(Tensor::from_storage(grads.dweight, [layout.len], dev)));
            }
            if has_b {
                out.push(Some(Tensor::from_storage(grads.dbias, [layout.len], dev)));
            }
            Ok(out)
        },
    ))
}
