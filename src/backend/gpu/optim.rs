//! Launcher of the fused AdamW update (optim.wgsl).

use super::dispatch::{u32_of, Bindings};
use super::shaders::{Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{AdamWStep, Storage};
use crate::error::Result;

impl GpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_adamw_update(
        &self,
        param: &Storage,
        grad: &Storage,
        moments: Option<(&Storage, &Storage)>,
        grad_scale: Option<&Storage>,
        len: usize,
        h: &AdamWStep,
    ) -> Result<(Storage, Storage, Storage)> {
        let (param, grad) = (self.buf(param)?, self.buf(grad)?);
        let grad_scale = grad_scale.map(|c| self.buf(c)).transpose()?;
        let moments = match moments {
            Some((m, v)) => Some((self.buf(m)?, self.buf(v)?)),
            None => None,
        };
        let (p, m, v) = (self.alloc(len)?, self.alloc(len)?, self.alloc(len)?);
        let params = [
            u32_of("length", len)?,
            moments.is_some() as u32,
            h.lr.to_bits(),
            h.beta1.to_bits(),
            h.beta2.to_bits(),
            h.eps.to_bits(),
            h.weight_decay.to_bits(),
            h.bias1.to_bits(),
            h.bias2.to_bits(),
            grad_scale.is_some() as u32,
        ];
        self.launch_elements(
            &ShaderVariant::plain(Family::Optim),
            "adamw",
            &params,
            Bindings::new(
                &[
                    Some(param.raw()),
                    Some(grad.raw()),
                    moments.map(|(m, _)| m.raw()),
                    moments.map(|(_, v)| v.raw()),
                    grad_scale.map(|c| c.raw()),
                ],
                &[p.raw(), m.raw(), v.raw()],
            ),
            len,
        )?;
        Ok((Self::wrap(p), Self::wrap(m), Self::wrap(v)))
    }
}
