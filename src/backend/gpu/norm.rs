//! Launchers of the layer-norm kernels (norm.wgsl), forward and backward.

use super::dispatch::{u32_of, workgroup_per_position, Bindings};
use super::shaders::{Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{AxisLayout, LayerNormGrads, LayerNormOutput, Storage};
use crate::error::Result;

impl GpuBackend {
    pub(super) fn launch_layer_norm(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        l: AxisLayout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let x = self.buf(x)?;
        let weight = weight.map(|b| self.buf(b)).transpose()?;
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        let positions = l.outer * l.inner;
        let (y, mean, rstd) = (
            self.alloc(l.numel())?,
            self.alloc(positions)?,
            self.alloc(positions)?,
        );
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            eps.to_bits(),
            weight.is_some() as u32,
            bias.is_some() as u32,
            0,
            0,
        ];
        let variant = ShaderVariant::plain(Family::Norm);
        let bindings = Bindings::new(
            &[
                Some(x.raw()),
                weight.map(|b| b.raw()),
                bias.map(|b| b.raw()),
            ],
            &[y.raw(), mean.raw(), rstd.raw()],
        );
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(&variant, "ln_forward", &params, bindings, positions as u64)?;
        } else {
            self.launch_elements(&variant, "ln_forward_thread", &params, bindings, positions)?;
        }
        Ok(LayerNormOutput {
            y: Self::wrap(y),
            mean: Self::wrap(mean),
            rstd: Self::wrap(rstd),
        })
    }

    pub(super) fn launch_layer_norm_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        weight: Option<&Storage>,
        mean: &Storage,
        rstd: &Storage,
        l: AxisLayout,
    ) -> Result<LayerNormGrads> {
        let (dy, x, mean, rstd) = (
            self.buf(dy)?,
            self.buf(x)?,
            self.buf(mean)?,
            self.buf(rstd)?,
        );
        let weight = weight.map(|b| self.buf(b)).transpose()?;
        let (dx, dweight, dbias) = (
            self.alloc(l.numel())?,
            self.alloc(l.len)?,
            self.alloc(l.len)?,
        );
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
            weight.is_some() as u32,
            0,
            0,
            0,
        ];
        let variant = ShaderVariant::plain(Family::Norm);
        let inputs = [
            Some(x.raw()),
            weight.map(|b| b.raw()),
            Some(dy.raw()),
            Some(mean.raw()),
            Some(rstd.raw()),
        ];
        let bindings = Bindings::new(&inputs, &[dx.raw()]);
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(
                &variant,
                "ln_backward_dx",
                &params,
                bindings,
                positions as u64,
            )?;
        } else {
            self.launch_elements(
                &variant,
                "ln_backward_dx_thread",
                &params,
                bindings,
                positions,
            )?;
        }
        self.launch(
            &variant,
            "ln_backward_params",
            &params,
            Bindings::new(&inputs, &[dweight.raw(), dbias.raw()]),
            l.len as u64,
        )?;
        Ok(LayerNormGrads {
            dx: Self::wrap(dx),
            dweight: Self::wrap(dweight),
            dbias: Self::wrap(dbias),
        })
    }
}
