//! Launchers of the log-softmax kernels (softmax.wgsl), forward and backward.

use super::dispatch::{u32_of, workgroup_per_position, Bindings};
use super::shaders::{Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{AxisLayout, Storage};
use crate::error::Result;

impl GpuBackend {
    /// Launches a softmax-family kernel over the (outer, inner) positions of `l`: `entry` with one workgroup
    /// per position for long axes, `thread_entry` with one thread per position for short ones.
    fn softmax_launch(
        &self,
        entry: &'static str,
        thread_entry: &'static str,
        bindings: Bindings,
        l: AxisLayout,
    ) -> Result<()> {
        let variant = ShaderVariant::plain(Family::Softmax);
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
        ];
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(&variant, entry, &params, bindings, positions as u64)
        } else {
            self.launch_elements(&variant, thread_entry, &params, bindings, positions)
        }
    }

    pub(super) fn launch_log_softmax(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        let x = self.buf(x)?;
        let y = self.alloc(l.numel())?;
        let bindings = Bindings::new(&[Some(x.raw())], &[y.raw()]);
        self.softmax_launch("log_softmax", "log_softmax_thread", bindings, l)?;
        Ok(Self::wrap(y))
    }

    pub(super) fn launch_log_softmax_backward(
        &self,
        dy: &Storage,
        y: &Storage,
        l: AxisLayout,
    ) -> Result<Storage> {
        let (dy, y) = (self.buf(dy)?, self.buf(y)?);
        let dx = self.alloc(l.numel())?;
        let bindings = Bindings::new(&[Some(dy.raw()), Some(y.raw())], &[dx.raw()]);
        self.softmax_launch(
            "log_softmax_backward",
            "log_softmax_backward_thread",
            bindings,
            l,
        )?;
        Ok(Self::wrap(dx))
    }
}
