//! Launchers of the elementwise kernels (elementwise.wgsl): fill, unary and broadcasting binary ops.

use super::dispatch::{pack8, u32_of, Bindings};
use super::shaders::ShaderVariant;
use super::GpuBackend;
use crate::backend::{Backend, BinaryOp, Storage, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::BroadcastLayout;

impl GpuBackend {
    pub(super) fn launch_fill(&self, len: usize, value: f32) -> Result<Storage> {
        let out = self.alloc(len)?;
        // `fill` ignores OP; it shares the module of the first unary op.
        self.launch_elements(
            &ShaderVariant::elementwise(UnaryOp::Exp.name()),
            "fill",
            &[u32_of("length", len)?, 0, value.to_bits(), 0],
            Bindings::new(&[], &[out.raw()]),
            len,
        )?;
        Ok(Self::wrap(out))
    }

    pub(super) fn launch_unary(&self, op: UnaryOp, x: &Storage, len: usize) -> Result<Storage> {
        let x = self.buf(x)?;
        let out = self.alloc(len)?;
        let c = match op {
            UnaryOp::AddScalar(c)
            | UnaryOp::MulScalar(c)
            | UnaryOp::PowScalar(c)
            | UnaryOp::MinScalar(c) => c,
            _ => 0.0,
        };
        self.launch_elements(
            &ShaderVariant::elementwise(op.name()),
            "unary",
            &[u32_of("length", len)?, 0, c.to_bits(), 0],
            Bindings::new(&[Some(x.raw())], &[out.raw()]),
            len,
        )?;
        Ok(Self::wrap(out))
    }

    pub(super) fn launch_binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        b: &Storage,
        layout: &BroadcastLayout,
    ) -> Result<Storage> {
        let (a, b) = (self.buf(a)?, self.buf(b)?);
        let n = layout.numel();
        if layout.dims.len() > 8 {
            return Err(Error::Unsupported {
                backend: self.name(),
                op: "binary ops over more than 8 strided dimensions",
            });
        }
        let out = self.alloc(n)?;
        let mut params = vec![
            u32_of("length", n)?,
            layout.dims.len() as u32,
            op.scalar().to_bits(),
            0,
        ];
        params.extend(pack8(&layout.dims)?);
        params.extend(pack8(&layout.a_strides)?);
        params.extend(pack8(&layout.b_strides)?);
        self.launch_elements(
            &ShaderVariant::elementwise(op.name()),
            "binary",
            &params,
            Bindings::new(&[Some(a.raw()), Some(b.raw())], &[out.raw()]),
            n,
        )?;
        Ok(Self::wrap(out))
    }
}
