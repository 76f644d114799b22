//! One ConvNeXt block, `x + drop_path(γ ⊙ fc2(GRN?(GELU(fc1(LN(dwconv7×7(x)))))))`, and its parts: the
//! pointwise layers ([`Pointwise`]), the MLP ([`Mlp`]), the norm ([`BlockNorm`]), and the branch's layout
//! as plain data, which activation checkpointing runs again in the backward pass. Parameter paths follow
//! timm (see the table in [`super`]):
//!
//! ```text
//! .conv_dw (C, 1, 7, 7) groups C, pad 3   .norm   .mlp.fc1 (4C, C[,1,1])   .mlp.grn (v2)   .mlp.fc2
//! .gamma (C) layer scale, v1 only (init 10⁻⁶)
//! ```

use super::ConvNeXtConfig;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::norm::CONVNEXT_LN_EPS;
use crate::nn::{
    join, Adaptable, Conv2d, DropPath, Grn, InitRng, LayerNorm, LayerNorm2d, Linear, Module, Param,
};
use crate::ops::checkpoint::checkpoint;
use crate::shape::Conv2dParams;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A pointwise (channel-mixing) layer of the MLP: a 1×1 convolution on NCHW or a Linear on NHWC.
#[derive(Debug)]
pub enum Pointwise {
    /// A 1×1 convolution on NCHW (`conv_mlp`).
    Conv(Conv2d),
    /// A Linear over the last axis of NHWC.
    Linear(Linear),
}

impl Pointwise {
    fn new(c_in: usize, c_out: usize, conv: bool, rng: &mut InitRng, dev: &Device) -> Result<Self> {
        Ok(if conv {
            Pointwise::Conv(Conv2d::new(
                c_in,
                c_out,
                1,
                Conv2dParams::default(),
                true,
                rng,
                dev,
            )?)
        } else {
            Pointwise::Linear(Linear::new(c_in, c_out, true, rng, dev)?)
        })
    }
    fn module(&self) -> &dyn Module {
        match self {
            Pointwise::Conv(c) => c,
            Pointwise::Linear(l) => l,
        }
    }
    /// Appends the (effective) weight and the bias, the order [`BranchLayout::branch`] reads them in.
    fn push_params(&self, p: &mut Vec<Tensor>) -> Result<()> {
        let (w, b) = match self {
            Pointwise::Conv(c) => (c.effective_weight()?, &c.bias),
            Pointwise::Linear(l) => (l.effective_weight()?, &l.bias),
        };
        p.push(w);
        p.extend(b.as_ref().map(|b| b.tensor().clone()));
        Ok(())
    }
    fn module_mut(&mut self) -> &mut dyn Module {
        match self {
            Pointwise::Conv(c) => c,
            Pointwise::Linear(l) => l,
        }
    }
}

/// The block's MLP: fc1 (C → 4C), GELU, GRN (v2), fc2 (4C → C).
#[derive(Debug)]
pub struct Mlp {
    /// Expansion C → 4C.
    pub fc1: Pointwise,
    /// GRN after the activation (v2 only).
    pub grn: Option<Grn>,
    /// Projection 4C → C.
    pub fc2: Pointwise,
}

impl Module for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.fc1.module().visit(&join(prefix, "fc1"), f);
        if let Some(g) = &self.grn {
            g.visit(&join(prefix, "grn"), f);
        }
        self.fc2.module().visit(&join(prefix, "fc2"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        self.fc1.module_mut().visit_mut(&join(prefix, "fc1"), f);
        if let Some(g) = &mut self.grn {
            g.visit_mut(&join(prefix, "grn"), f);
        }
        self.fc2.module_mut().visit_mut(&join(prefix, "fc2"), f);
    }
    fn visit_adaptable(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Adaptable)) {
        self.fc1.module().visit_adaptable(&join(prefix, "fc1"), f);
        self.fc2.module().visit_adaptable(&join(prefix, "fc2"), f);
    }
    fn visit_adaptable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
        self.fc1
            .module_mut()
            .visit_adaptable_mut(&join(prefix, "fc1"), f);
        self.fc2
            .module_mut()
            .visit_adaptable_mut(&join(prefix, "fc2"), f);
    }
}

/// The block's norm: channels-first (conv MLP) or last-axis on NHWC (Linear MLP).
#[derive(Debug)]
pub enum BlockNorm {
    /// Channels-first layer norm on NCHW.
    Channels(LayerNorm2d),
    /// Last-axis layer norm on NHWC.
    Last(LayerNorm),
}

impl BlockNorm {
    fn module(&self) -> &dyn Module {
        match self {
            BlockNorm::Channels(n) => n,
            BlockNorm::Last(n) => n,
        }
    }
    fn module_mut(&mut self) -> &mut dyn Module {
        match self {
            BlockNorm::Channels(n) => n,
            BlockNorm::Last(n) => n,
        }
    }
}

/// One ConvNeXt block (see the module docs).
#[derive(Debug)]
pub struct Block {
    /// The 7×7 depthwise convolution.
    pub conv_dw: Conv2d,
    /// The norm after the depthwise convolution.
    pub norm: BlockNorm,
    /// The inverted-bottleneck MLP.
    pub mlp: Mlp,
    /// Layer scale γ (v1), shape (C).
    pub gamma: Option<Param>,
    /// Stochastic depth on the residual branch.
    pub drop_path: DropPath,
    /// Recompute the branch in the backward pass instead of keeping its intermediates (activation
    /// checkpointing; see [`ConvNeXt::set_grad_checkpointing`](super::ConvNeXt::set_grad_checkpointing)).
    pub checkpoint: bool,
}

impl Block {
    pub(super) fn new(
        c: usize,
        cfg: &ConvNeXtConfig,
        drop: f32,
        rng: &mut InitRng,
        dev: &Device,
    ) -> Result<Self> {
        let conv = cfg.conv_mlp;
        let dw = Conv2dParams::default().padding(3).groups(c);
        let conv_dw = Conv2d::new(c, c, 7, dw, true, rng, dev)?;
        let norm = if conv {
            BlockNorm::Channels(LayerNorm2d::new(c, CONVNEXT_LN_EPS, dev)?)
        } else {
            BlockNorm::Last(LayerNorm::new(c, CONVNEXT_LN_EPS, dev)?)
        };
        let fc1 = Pointwise::new(c, 4 * c, conv, rng, dev)?;
        let grn = if cfg.use_grn {
            Some(Grn::new(4 * c, !conv, dev)?)
        } else {
            None
        };
        let fc2 = Pointwise::new(4 * c, c, conv, rng, dev)?;
        let gamma = match cfg.ls_init_value {
            Some(v) => Some(Param::new(Tensor::full([c], v, dev)?, true)),
            None => None,
        };
        Ok(Block {
            conv_dw,
            norm,
            mlp: Mlp { fc1, grn, fc2 },
            gamma,
            drop_path: DropPath::new(drop, rng.next_u64())?,
            checkpoint: false,
        })
    }

    /// x + drop_path(γ ⊙ mlp(norm(conv_dw(x)))), NCHW in and out; without stochastic depth, x + γ ⊙ h
    /// is one op ([`Tensor::add_channel_scaled`]). With [`Block::checkpoint`] on (and in
    /// training), the branch's intermediates are not kept: the backward pass recomputes them
    /// ([`crate::ops::checkpoint`]).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let layout = self.layout();
        let params = self.branch_params()?;
        let h = if self.checkpoint && train {
            let mut inputs = Vec::with_capacity(params.len() + 1);
            inputs.push(x.clone());
            inputs.extend(params);
            checkpoint(
                &inputs,
                Arc::new(move |t: &[Tensor]| layout.branch(&t[0], &t[1..])),
            )?
        } else {
            layout.branch(x, &params)?
        };
        match &self.gamma {
            // Layer scale and residual in one pass when stochastic depth leaves the branch as it is.
            Some(gamma) if !self.drop_path.is_active(train) => {
                x.add_channel_scaled(&h, gamma.tensor())
            }
            Some(gamma) => {
                let c = gamma.tensor().numel();
                let h = h.mul(&gamma.tensor().reshape([1, c, 1, 1])?)?;
                self.drop_path.forward(&h, train)?.add(x)
            }
            None => self.drop_path.forward(&h, train)?.add(x),
        }
    }

    /// The shape of the residual branch: which layers exist and how they are configured.
    fn layout(&self) -> BranchLayout {
        let pointwise = |p: &Pointwise| match p {
            Pointwise::Conv(c) => (Some(c.params), c.bias.is_some()),
            Pointwise::Linear(l) => (None, l.bias.is_some()),
        };
        BranchLayout {
            dw: self.conv_dw.params,
            dw_bias: self.conv_dw.bias.is_some(),
            norm_eps: match &self.norm {
                BlockNorm::Channels(n) => n.eps,
                BlockNorm::Last(n) => n.eps,
            },
            channels_first: matches!(self.norm, BlockNorm::Channels(_)),
            fc1: pointwise(&self.mlp.fc1),
            grn: self.mlp.grn.as_ref().map(|g| (g.eps, g.channels_last)),
            fc2: pointwise(&self.mlp.fc2),
        }
    }

    /// The tensors the branch reads, in [`BranchLayout::branch`]'s order, with every adapted weight
    /// materialised (W′ = the adapter's reparameterisation of W, recorded on the tape as usual).
    fn branch_params(&self) -> Result<Vec<Tensor>> {
        let mut p = vec![self.conv_dw.effective_weight()?];
        p.extend(self.conv_dw.bias.as_ref().map(|b| b.tensor().clone()));
        let (w, b) = match &self.norm {
            BlockNorm::Channels(n) => (&n.weight, &n.bias),
            BlockNorm::Last(n) => (&n.weight, &n.bias),
        };
        p.extend([w.tensor().clone(), b.tensor().clone()]);
        self.mlp.fc1.push_params(&mut p)?;
        if let Some(g) = &self.mlp.grn {
            p.extend([g.weight.tensor().clone(), g.bias.tensor().clone()]);
        }
        self.mlp.fc2.push_params(&mut p)?;
        Ok(p)
    }
}

/// What a block's residual branch consists of, as plain data, so the branch can be run again from its
/// tensors alone (by a checkpoint's backward pass).
#[derive(Clone, Copy, Debug)]
struct BranchLayout {
    dw: Conv2dParams,
    dw_bias: bool,
    norm_eps: f32,
    /// LayerNorm2d and 1×1 convolutions on NCHW (conv MLP), or NHWC with LayerNorm and Linear.
    channels_first: bool,
    /// The pointwise layer's conv parameters (None: Linear) and whether it has a bias.
    fc1: (Option<Conv2dParams>, bool),
    /// GRN's (eps, channels_last), v2 only.
    grn: Option<(f32, bool)>,
    fc2: (Option<Conv2dParams>, bool),
}

impl BranchLayout {
    /// fc2(GRN?(GELU(fc1(norm(conv_dw(x)))))) (the layer scale γ is applied by the caller, with the
    /// residual), reading the parameters from `p` in
    /// [`Block::branch_params`]'s order.
    fn branch(&self, x: &Tensor, p: &[Tensor]) -> Result<Tensor> {
        let mut it = p.iter();
        let mut next = || {
            it.next().ok_or_else(|| {
                Error::invalid("ConvNeXt block", "fewer parameters than the block's layout")
            })
        };
        let w = next()?;
        let b = if self.dw_bias { Some(next()?) } else { None };
        let h = x.conv2d(w, b, self.dw)?;
        let (nw, nb) = (next()?, next()?);
        let h = if self.channels_first {
            h.layer_norm_channels(Some(nw), Some(nb), self.norm_eps)?
        } else {
            // NCHW → NHWC so the norm and the Linear layers act on the channel axis (back below).
            h.permute(&[0, 2, 3, 1])?
                .layer_norm_last(Some(nw), Some(nb), self.norm_eps)?
        };
        fn pointwise<'a>(
            h: &Tensor,
            (conv, bias): (Option<Conv2dParams>, bool),
            next: &mut impl FnMut() -> Result<&'a Tensor>,
        ) -> Result<Tensor> {
            let w = next()?;
            let b = if bias { Some(next()?) } else { None };
            match conv {
                Some(params) => h.conv2d(w, b, params),
                None => h.linear(w, b),
            }
        }
        // fc1 and GELU: one op on the conv path (the GPU applies GELU in the GEMM's epilogue).
        let mut h = match self.fc1 {
            (Some(params), bias) => {
                let w = next()?;
                let b = if bias { Some(next()?) } else { None };
                h.conv2d_gelu(w, b, params)?
            }
            (None, _) => pointwise(&h, self.fc1, &mut next)?.gelu()?,
        };
        if let Some((eps, channels_last)) = self.grn {
            let (gw, gb) = (next()?, next()?);
            h = h.grn(gw, gb, eps, channels_last)?;
        }
        let mut h = pointwise(&h, self.fc2, &mut next)?;
        if !self.channels_first {
            h = h.permute(&[0, 3, 1, 2])?;
        }
        Ok(h)
    }
}

impl Module for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        if let Some(g) = &self.gamma {
            f(&join(prefix, "gamma"), g);
        }
        self.conv_dw.visit(&join(prefix, "conv_dw"), f);
        self.norm.module().visit(&join(prefix, "norm"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        if let Some(g) = &mut self.gamma {
            f(&join(prefix, "gamma"), g);
        }
        self.conv_dw.visit_mut(&join(prefix, "conv_dw"), f);
        self.norm.module_mut().visit_mut(&join(prefix, "norm"), f);
        self.mlp.visit_mut(&join(prefix, "mlp"), f);
    }
    fn visit_adaptable(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Adaptable)) {
        self.conv_dw.visit_adaptable(&join(prefix, "conv_dw"), f);
        self.mlp.visit_adaptable(&join(prefix, "mlp"), f);
    }
    fn visit_adaptable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
        self.conv_dw
            .visit_adaptable_mut(&join(prefix, "conv_dw"), f);
        self.mlp.visit_adaptable_mut(&join(prefix, "mlp"), f);
    }
}
