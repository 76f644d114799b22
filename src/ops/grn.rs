//! Global Response Normalisation (ConvNeXt v2), channels-first (N, C, H, W) or channels-last (N, H, W, C).
//!
//! Forward, per image n and channel c, with γ, β of shape (C) and ε = 10⁻⁶ in ConvNeXt v2:
//!   G_c = ‖x_{·,c}‖₂ = √(Σ_{h,w} x²)           (the channel's spatial L2 norm)
//!   N_c = G_c / (mean_c' G_c' + ε)               (divisive normalisation across channels)
//!   y   = γ_c·(x·N_c) + β_c + x                   (timm: x.addcmul(β, γ, x·N))
//! Backward, with S_nc = Σ_{h,w} g·x, B_nc = Σ_{h,w} g, u_nc = γ_c·S_nc and D_n = mean_c G + ε:
//!   ∂L/∂G_nc = (u_nc − (1/C) Σ_c' u_nc'·N_nc') / D_n     (N_c = G_c/D_n, so ∂N_c/∂G_k = (δ_ck − N_c/C)/D_n)
//!   ∂L/∂x    = g·(1 + γ_c·N_nc) + x·∂L/∂G_nc / G_nc       (∂G/∂x = x/G)
//!   ∂L/∂γ_c  = Σ_n S_nc·N_nc,   ∂L/∂β_c = Σ_n B_nc.
//! One fused kernel pair each way (backend `grn`, `grn_backward`: on the GPU two launches forward and three
//! backward, instead of a dozen elementwise ops and their backward passes); tests/grad_norm.rs checks it
//! against finite differences and against the same formula composed from the engine's ops.
//!
//! G is computed as √(Σx² + δ) with δ = 10⁻³⁰: the same f32 value as √(Σx²) unless the channel is all
//! but exactly zero, where √'s derivative 1/(2G) would be infinite and turn the gradient into ∞·0 = NaN. With
//! δ, an all-zero channel gets G = 10⁻¹⁵ and gradient x/G = 0, as torch.norm's backward gives.

use crate::backend::GrnLayout;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// GRN of a 4-D tensor; `channels_last` selects (N, H, W, C) instead of (N, C, H, W).
    pub fn grn(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        channels_last: bool,
    ) -> Result<Tensor> {
        const OP: &str = "grn";
        if self.rank() != 4 {
            return Err(Error::shape(
                OP,
                format!("input must have rank 4, got {}", self.shape()),
            ));
        }
        let (c_axis, spatial): (usize, [usize; 2]) = if channels_last {
            (3, [1, 2])
        } else {
            (1, [2, 3])
        };
        let c = self.dims()[c_axis];
        for (name, p) in [("gamma", gamma), ("beta", beta)] {
            self.check_device(OP, p)?;
            if p.dims() != [c] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} must have shape [{c}] for input {}, got {}",
                        self.shape(),
                        p.shape()
                    ),
                ));
            }
        }
        if c == 0 {
            return Err(Error::shape(
                OP,
                format!("input {} has no channels", self.shape()),
            ));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(OP, format!("eps must be ≥ 0, got {eps}")));
        }
        let d = self.dims();
        let layout = GrnLayout {
            batch: d[0],
            channels: c,
            positions: spatial.iter().map(|&a| d[a]).product(),
            channels_last,
        };
        let out = self.device().backend().grn(
            &self.storage(),
            &gamma.storage(),
            &beta.storage(),
            layout,
            eps,
        )?;
        let (saved_x, saved_gamma) = (self.detach(), gamma.detach());
        let (gnorm, denom) = (out.gnorm, out.denom);
        Ok(Tensor::from_op(
            OP,
            out.y,
            self.shape().clone(),
            &[self, gamma, beta],
            move |g| {
                let dev = g.device();
                let grads = dev.backend().grn_backward(
                    &g.storage(),
                    &saved_x.storage(),
                    &saved_gamma.storage(),
                    &gnorm,
                    &denom,
                    layout,
                )?;
                Ok(vec![
                    Some(Tensor::from_storage(grads.dx, saved_x.shape().clone(), dev)),
                    Some(Tensor::from_storage(grads.dgamma, [c], dev)),
                    Some(Tensor::from_storage(grads.dbeta, [c], dev)),
                ])
            },
        ))
    }
}
