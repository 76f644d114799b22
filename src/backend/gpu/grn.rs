//! Launchers of the Global Response Normalisation kernels (grn.wgsl), forward and backward: two launches
//! forward, three backward.

use super::dispatch::{u32_of, Bindings};
use super::shaders::{Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{GrnGrads, GrnLayout, GrnOutput, Storage};
use crate::error::Result;

impl GpuBackend {
    fn grn_params(l: GrnLayout, eps: f32) -> Result<[u32; 8]> {
        u32_of("a GRN input's length", l.numel())?;
        Ok([
            u32_of("batch", l.batch)?,
            u32_of("channels", l.channels)?,
            u32_of("positions", l.positions)?,
            l.channels_last as u32,
            eps.to_bits(),
            0,
            0,
            0,
        ])
    }

    pub(super) fn launch_grn(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        l: GrnLayout,
        eps: f32,
    ) -> Result<GrnOutput> {
        let (x, gamma, beta) = (self.buf(x)?, self.buf(gamma)?, self.buf(beta)?);
        let params = Self::grn_params(l, eps)?;
        let variant = ShaderVariant::plain(Family::Grn);
        let (gnorm, denom, y) = (
            self.alloc(l.batch * l.channels)?,
            self.alloc(l.batch)?,
            self.alloc(l.numel())?,
        );
        self.launch(
            &variant,
            "grn_norms",
            &params,
            Bindings::new(&[Some(x.raw())], &[gnorm.raw(), denom.raw()]),
            l.batch as u64,
        )?;
        self.launch_elements(
            &variant,
            "grn_apply",
            &params,
            Bindings::new(
                &[
                    Some(x.raw()),
                    Some(gamma.raw()),
                    Some(beta.raw()),
                    Some(gnorm.raw()),
                    Some(denom.raw()),
                ],
                &[y.raw()],
            ),
            l.numel(),
        )?;
        Ok(GrnOutput {
            y: Self::wrap(y),
            gnorm: Self::wrap(gnorm),
            denom: Self::wrap(denom),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_grn_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        gamma: &Storage,
        gnorm: &Storage,
        denom: &Storage,
        l: GrnLayout,
    ) -> Result<GrnGrads> {
        let (dy, x, gamma) = (self.buf(dy)?, self.buf(x)?, self.buf(gamma)?);
        let (gnorm, denom) = (self.buf(gnorm)?, self.buf(denom)?);
        let params = Self::grn_params(l, 0.0)?;
        let variant = ShaderVariant::plain(Family::Grn);
        let per_image = l.batch * l.channels;
        let (k, a, sb) = (
            self.alloc(per_image)?,
            self.alloc(per_image)?,
            self.alloc(2 * per_image)?,
        );
        self.launch(
            &variant,
            "grn_backward_stats",
            &params,
            Bindings::new(
                &[
                    Some(dy.raw()),
                    Some(x.raw()),
                    Some(gamma.raw()),
                    Some(gnorm.raw()),
                    Some(denom.raw()),
                ],
                &[k.raw(), a.raw(), sb.raw()],
            ),
            l.batch as u64,
        )?;
        let dx = self.alloc(l.numel())?;
        self.launch_elements(
            &variant,
            "grn_backward_dx",
            &params,
            Bindings::new(
                &[Some(dy.raw()), Some(x.raw()), Some(a.raw()), Some(k.raw())],
                &[dx.raw()],
            ),
            l.numel(),
        )?;
        let (dgamma, dbeta) = (self.alloc(l.channels)?, self.alloc(l.channels)?);
        self.launch_elements(
            &variant,
            "grn_param_grads",
            &params,
            Bindings::new(&[Some(sb.raw())], &[dgamma.raw(), dbeta.raw()]),
            l.channels,
        )?;
        Ok(GrnGrads {
            dx: Self::wrap(dx),
            dgamma: Self::wrap(dgamma),
            dbeta: Self::wrap(dbeta),
        })
    }
}
