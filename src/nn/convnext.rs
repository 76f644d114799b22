//! ConvNeXt v1 ("A ConvNet for the 2020s") and v2 (with Global Response Normalisation), laid out exactly as
//! timm's `convnext.py`, so parameter paths and shapes equal timm's state-dict keys:
//!
//! ```text
//! stem.0            conv 4×4 stride 4, in_chans → dims[0]          stem.1  LayerNorm2d
//! stages.i.downsample.0  LayerNorm2d(dims[i−1])  .1  conv 2×2 stride 2 (stages i ≥ 1)
//! stages.i.blocks.j      x + drop_path(γ ⊙ fc2(GRN?(GELU(fc1(LN(dwconv7×7(x)))))))
//!   .conv_dw (C, 1, 7, 7) groups C, pad 3   .norm   .mlp.fc1 (4C, C[,1,1])   .mlp.grn (v2)   .mlp.fc2
//!   .gamma (C) layer scale, v1 only (init 10⁻⁶)
//! head.norm  LayerNorm over the pooled (N, C) features     head.fc  Linear(dims[3], num_classes)
//! ```
//!
//! Two MLP layouts, as in timm: `conv_mlp` (atto…nano) keeps NCHW and uses 1×1 convolutions with weights
//! (4C, C, 1, 1) after a channels-first LayerNorm2d; otherwise (tiny and up) the block permutes to NHWC, uses a
//! last-axis LayerNorm and Linear layers with weights (4C, C), and permutes back.

use super::{
    join, Adaptable, Classifier, Conv2d, DropPath, Grn, InitRng, LayerNorm, LayerNorm2d, Linear,
    Module, Param,
};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::shape::Conv2dParams;
use crate::ops::checkpoint::checkpoint;
use crate::tensor::Tensor;
use std::sync::Arc;

use super::norm::CONVNEXT_LN_EPS;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvNeXtConfig {
    /// Input channels (3 for RGB, 1 for the embedded grey-scale data).
    pub in_chans: usize,
    /// Classes of the classifier head.
    pub num_classes: usize,
    /// Channels of the four (or fewer) stages.
    pub dims: Vec<usize>,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// 1×1-conv MLP on NCHW (true) or Linear MLP on NHWC (false).
    pub conv_mlp: bool,
    /// ConvNeXt v2: GRN in the MLP and no layer scale.
    pub use_grn: bool,
    /// Layer-scale init (v1: Some(1e-6); v2: None).
    pub ls_init_value: Option<f32>,
    /// Stochastic-depth rate of the last block (rates rise linearly from 0 over the blocks).
    pub drop_path_rate: f32,
    /// Seed of the initialisation and of the drop-path masks.
    pub seed: u64,
}

impl ConvNeXtConfig {
    fn base(dims: [usize; 4], depths: [usize; 4], conv_mlp: bool) -> Self {
        ConvNeXtConfig {
            in_chans: 3,
            num_classes: 1000,
            dims: dims.to_vec(),
            depths: depths.to_vec(),
            conv_mlp,
            use_grn: false,
            ls_init_value: Some(1e-6),
            drop_path_rate: 0.0,
            seed: 0,
        }
    }
    /// convnext_atto: dims 40..320, depths 2,2,6,2, conv MLP (3.7 M parameters with 1000 classes).
    pub fn atto() -> Self {
        Self::base([40, 80, 160, 320], [2, 2, 6, 2], true)
    }
    /// convnext_femto: dims 48..384, depths 2,2,6,2, conv MLP.
    pub fn femto() -> Self {
        Self::base([48, 96, 192, 384], [2, 2, 6, 2], true)
    }
    /// convnext_pico: dims 64..512, depths 2,2,6,2, conv MLP.
    pub fn pico() -> Self {
        Self::base([64, 128, 256, 512], [2, 2, 6, 2], true)
    }
    /// convnext_nano: dims 80..640, depths 2,2,8,2, conv MLP.
    pub fn nano() -> Self {
        Self::base([80, 160, 320, 640], [2, 2, 8, 2], true)
    }
    /// convnext_tiny: dims 96..768, depths 3,3,9,3, Linear MLP on channels-last.
    pub fn tiny() -> Self {
        Self::base([96, 192, 384, 768], [3, 3, 9, 3], false)
    }
    /// convnext_small: dims 96..768, depths 3,3,27,3, Linear MLP.
    pub fn small() -> Self {
        Self::base([96, 192, 384, 768], [3, 3, 27, 3], false)
    }
    /// convnext_base: dims 128..1024, depths 3,3,27,3, Linear MLP (`convnextv2_base` is the LieRA paper's
    /// backbone).
    pub fn base_size() -> Self {
        Self::base([128, 256, 512, 1024], [3, 3, 27, 3], false)
    }
    /// convnext_large: dims 192..1536, depths 3,3,27,3, Linear MLP.
    pub fn large() -> Self {
        Self::base([192, 384, 768, 1536], [3, 3, 27, 3], false)
    }
    /// convnextv2_huge's layout: dims 352..2816, depths 3,3,27,3, Linear MLP (a v2 size only).
    pub fn huge() -> Self {
        Self::base([352, 704, 1408, 2816], [3, 3, 27, 3], false)
    }
    /// A small network for the CPU main job on 1×32×32 images: dims 16,32,64,128, depths 1,1,2,1, conv MLP,
    /// 10 classes (a batch-64 training step takes a fraction of a second on 2 cores).
    pub fn micro() -> Self {
        ConvNeXtConfig {
            in_chans: 1,
            num_classes: 10,
            ..Self::base([16, 32, 64, 128], [1, 1, 2, 1], true)
        }
    }
    /// The timm preset names: v1 and v2 sizes, and the main job's `micro`.
    pub const PRESETS: [&'static str; 17] = [
        "convnext_atto",
        "convnext_femto",
        "convnext_pico",
        "convnext_nano",
        "convnext_tiny",
        "convnext_small",
        "convnext_base",
        "convnext_large",
        "convnextv2_atto",
        "convnextv2_femto",
        "convnextv2_pico",
        "convnextv2_nano",
        "convnextv2_tiny",
        "convnextv2_base",
        "convnextv2_large",
        "convnextv2_huge",
        "micro",
    ];
    /// A preset by timm's name: `convnext_{atto,femto,pico,nano,tiny,small,base,large}`,
    /// `convnextv2_{atto,femto,pico,nano,tiny,base,large,huge}` (v2 turns on GRN and drops layer scale), or
    /// `micro`. A bare size (`atto`) means v1. timm's tags after a dot (`convnextv2_base.fcmae_ft_in22k_in1k`)
    /// are ignored.
    pub fn preset(name: &str) -> Result<Self> {
        let name = name.split('.').next().unwrap_or(name);
        let (v2, size) = if let Some(s) = name.strip_prefix("convnextv2_") {
            (true, s)
        } else {
            (false, name.strip_prefix("convnext_").unwrap_or(name))
        };
        let cfg = match (size, v2) {
            ("atto", _) => Self::atto(),
            ("femto", _) => Self::femto(),
            ("pico", _) => Self::pico(),
            ("nano", _) => Self::nano(),
            ("tiny", _) => Self::tiny(),
            ("small", false) => Self::small(),
            ("base", _) => Self::base_size(),
            ("large", _) => Self::large(),
            ("huge", true) => Self::huge(),
            ("micro", false) => Self::micro(),
            _ => {
                return Err(Error::invalid(
                    "ConvNeXtConfig::preset",
                    format!(
                        "unknown preset `{name}` (known: {})",
                        Self::PRESETS.join(", ")
                    ),
                ))
            }
        };
        Ok(if v2 { cfg.v2() } else { cfg })
    }
    /// The ConvNeXt v2 variant: GRN in every MLP, no layer scale.
    pub fn v2(mut self) -> Self {
        self.use_grn = true;
        self.ls_init_value = None;
        self
    }
    /// Sets the number of classes.
    pub fn with_classes(mut self, n: usize) -> Self {
        self.num_classes = n;
        self
    }
    /// Sets the input channels.
    pub fn with_in_chans(mut self, c: usize) -> Self {
        self.in_chans = c;
        self
    }
    /// Sets the stochastic-depth rate.
    pub fn with_drop_path(mut self, rate: f32) -> Self {
        self.drop_path_rate = rate;
        self
    }
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("ConvNeXt", msg));
        if self.dims.is_empty() || self.dims.len() != self.depths.len() {
            return bad(format!(
                "dims {:?} and depths {:?} must be non-empty and of equal length",
                self.dims, self.depths
            ));
        }
        if self.dims.contains(&0) || self.in_chans == 0 || self.num_classes == 0 {
            return bad(format!(
                "dims {:?}, in_chans {} and num_classes {} must all be positive",
                self.dims, self.in_chans, self.num_classes
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "drop_path_rate must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        Ok(())
    }
}

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
    /// checkpointing; see [`ConvNeXt::set_grad_checkpointing`]).
    pub checkpoint: bool,
}

impl Block {
    fn new(
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

    /// x + drop_path(γ ⊙ mlp(norm(conv_dw(x)))), NCHW in and out. With [`Block::checkpoint`] on (and in
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
        self.drop_path.forward(&h, train)?.add(x)
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
            gamma: self.gamma.is_some(),
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
        p.extend(self.gamma.as_ref().map(|g| g.tensor().clone()));
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
    gamma: bool,
}

impl BranchLayout {
    /// γ ⊙ fc2(GRN?(GELU(fc1(norm(conv_dw(x)))))), reading the parameters from `p` in
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
        let mut h = pointwise(&h, self.fc1, &mut next)?.gelu()?;
        if let Some((eps, channels_last)) = self.grn {
            let (gw, gb) = (next()?, next()?);
            h = h.grn(gw, gb, eps, channels_last)?;
        }
        let mut h = pointwise(&h, self.fc2, &mut next)?;
        if !self.channels_first {
            h = h.permute(&[0, 3, 1, 2])?;
        }
        if self.gamma {
            let g = next()?;
            h = h.mul(&g.reshape([1, g.numel(), 1, 1])?)?;
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

/// A stage: an optional downsample (LayerNorm2d, conv 2×2 stride 2) then blocks.
#[derive(Debug)]
pub struct Stage {
    /// Norm and stride-2 convolution at the start of stages after the first.
    pub downsample: Option<(LayerNorm2d, Conv2d)>,
    /// The stage's blocks.
    pub blocks: Vec<Block>,
}

impl Stage {
    /// Downsample (if any), then every block.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = match &self.downsample {
            Some((norm, conv)) => conv.forward(&norm.forward(x)?)?,
            None => x.clone(),
        };
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        Ok(h)
    }
}

impl Module for Stage {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        if let Some((n, c)) = &self.downsample {
            n.visit(&join(prefix, "downsample.0"), f);
            c.visit(&join(prefix, "downsample.1"), f);
        }
        for (j, b) in self.blocks.iter().enumerate() {
            b.visit(&join(prefix, &format!("blocks.{j}")), f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        if let Some((n, c)) = &mut self.downsample {
            n.visit_mut(&join(prefix, "downsample.0"), f);
            c.visit_mut(&join(prefix, "downsample.1"), f);
        }
        for (j, b) in self.blocks.iter_mut().enumerate() {
            b.visit_mut(&join(prefix, &format!("blocks.{j}")), f);
        }
    }
    fn visit_adaptable(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Adaptable)) {
        if let Some((_, c)) = &self.downsample {
            c.visit_adaptable(&join(prefix, "downsample.1"), f);
        }
        for (j, b) in self.blocks.iter().enumerate() {
            b.visit_adaptable(&join(prefix, &format!("blocks.{j}")), f);
        }
    }
    fn visit_adaptable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
        if let Some((_, c)) = &mut self.downsample {
            c.visit_adaptable_mut(&join(prefix, "downsample.1"), f);
        }
        for (j, b) in self.blocks.iter_mut().enumerate() {
            b.visit_adaptable_mut(&join(prefix, &format!("blocks.{j}")), f);
        }
    }
}

/// The classifier head: global average pool, LayerNorm over channels, Linear.
#[derive(Debug)]
pub struct Head {
    /// Layer norm of the pooled features.
    pub norm: LayerNorm,
    /// The classifier.
    pub fc: Linear,
}

impl Head {
    fn new(c: usize, classes: usize, rng: &mut InitRng, dev: &Device) -> Result<Self> {
        Ok(Head {
            norm: LayerNorm::new(c, CONVNEXT_LN_EPS, dev)?,
            fc: Linear::new(c, classes, true, rng, dev)?,
        })
    }
}

/// A ConvNeXt (v1 or v2) image classifier.
#[derive(Debug)]
pub struct ConvNeXt {
    /// The architecture this network was built from.
    pub config: ConvNeXtConfig,
    /// Patchify stem: a stride-4 4×4 convolution and a channels-first norm.
    pub stem: (Conv2d, LayerNorm2d),
    /// The stages.
    pub stages: Vec<Stage>,
    /// Pooling, norm and classifier.
    pub head: Head,
    device: Device,
}

impl ConvNeXt {
    /// Moves every drop-path layer's mask stream to training step `steps` (each training forward draws
    /// one mask per block), for an exact resume.
    pub fn seek_drop_path(&self, steps: u64) {
        for stage in &self.stages {
            for block in &stage.blocks {
                block.drop_path.seek(steps);
            }
        }
    }
    /// Turns activation checkpointing of every block on or off (timm's `set_grad_checkpointing`): in
    /// training, a block keeps only its input and parameters and recomputes its intermediates in the
    /// backward pass, which cuts the memory of a step to about a block's worth per image for one more
    /// forward pass. Results are the same either way.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        for stage in &mut self.stages {
            for block in &mut stage.blocks {
                block.checkpoint = on;
            }
        }
    }
    /// A freshly initialised network (deterministic for `config.seed`).
    pub fn new(config: ConvNeXtConfig, device: &Device) -> Result<ConvNeXt> {
        config.validate()?;
        let mut rng = InitRng::new(config.seed);
        let dev = device;
        let d0 = config.dims[0];
        let stem_conv = Conv2d::new(
            config.in_chans,
            d0,
            4,
            Conv2dParams::default().stride(4),
            true,
            &mut rng.fork(),
            dev,
        )?;
        let stem = (stem_conv, LayerNorm2d::new(d0, CONVNEXT_LN_EPS, dev)?);
        let total: usize = config.depths.iter().sum();
        let rate = |k: usize| {
            if total > 1 {
                config.drop_path_rate * k as f32 / (total - 1) as f32
            } else {
                0.0
            }
        };
        let mut stages = Vec::new();
        let mut k = 0;
        for (i, (&c, &depth)) in config.dims.iter().zip(&config.depths).enumerate() {
            let mut srng = rng.fork();
            let downsample = if i > 0 {
                let prev = config.dims[i - 1];
                Some((
                    LayerNorm2d::new(prev, CONVNEXT_LN_EPS, dev)?,
                    Conv2d::new(
                        prev,
                        c,
                        2,
                        Conv2dParams::default().stride(2),
                        true,
                        &mut srng,
                        dev,
                    )?,
                ))
            } else {
                None
            };
            let mut blocks = Vec::new();
            for _ in 0..depth {
                blocks.push(Block::new(c, &config, rate(k), &mut srng.fork(), dev)?);
                k += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        let last = *config.dims.last().expect("validated non-empty");
        let head = Head::new(last, config.num_classes, &mut rng.fork(), dev)?;
        Ok(ConvNeXt {
            config,
            stem,
            stages,
            head,
            device: dev.clone(),
        })
    }

    /// The device holding the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Replaces the classifier's fc layer by a fresh one for `num_classes` classes (seeded), keeping
    /// `head.norm`. Used when loading weights trained for another class count.
    pub fn replace_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        if num_classes == 0 {
            return Err(Error::invalid(
                "ConvNeXt::replace_head",
                "num_classes must be positive",
            ));
        }
        let c = *self.config.dims.last().expect("validated non-empty");
        self.head.fc = Linear::new(c, num_classes, true, &mut InitRng::new(seed), &self.device)?;
        self.config.num_classes = num_classes;
        Ok(())
    }

    /// Pooled, normalised features (N, `dims[last]`) before the classifier.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.config.in_chans {
            return Err(Error::shape(
                "ConvNeXt",
                format!(
                    "input must be (N, {}, H, W), got {}",
                    self.config.in_chans,
                    x.shape()
                ),
            ));
        }
        let mut h = self.stem.1.forward(&self.stem.0.forward(x)?)?;
        for s in &self.stages {
            h = s.forward(&h, train)?;
        }
        self.head.norm.forward(&h.global_avg_pool()?)
    }
}

impl Classifier for ConvNeXt {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head.fc.forward(&self.forward_features(x, train)?)
    }
}

impl Module for ConvNeXt {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.stem.0.visit(&join(prefix, "stem.0"), f);
        self.stem.1.visit(&join(prefix, "stem.1"), f);
        for (i, s) in self.stages.iter().enumerate() {
            s.visit(&join(prefix, &format!("stages.{i}")), f);
        }
        self.head.norm.visit(&join(prefix, "head.norm"), f);
        self.head.fc.visit(&join(prefix, "head.fc"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        self.stem.0.visit_mut(&join(prefix, "stem.0"), f);
        self.stem.1.visit_mut(&join(prefix, "stem.1"), f);
        for (i, s) in self.stages.iter_mut().enumerate() {
            s.visit_mut(&join(prefix, &format!("stages.{i}")), f);
        }
        self.head.norm.visit_mut(&join(prefix, "head.norm"), f);
        self.head.fc.visit_mut(&join(prefix, "head.fc"), f);
    }
    fn visit_adaptable(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Adaptable)) {
        self.stem.0.visit_adaptable(&join(prefix, "stem.0"), f);
        for (i, s) in self.stages.iter().enumerate() {
            s.visit_adaptable(&join(prefix, &format!("stages.{i}")), f);
        }
        self.head.fc.visit_adaptable(&join(prefix, "head.fc"), f);
    }
    fn visit_adaptable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Adaptable)) {
        self.stem.0.visit_adaptable_mut(&join(prefix, "stem.0"), f);
        for (i, s) in self.stages.iter_mut().enumerate() {
            s.visit_adaptable_mut(&join(prefix, &format!("stages.{i}")), f);
        }
        self.head
            .fc
            .visit_adaptable_mut(&join(prefix, "head.fc"), f);
    }
}
