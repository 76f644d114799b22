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

mod block;

pub use block::{Block, BlockNorm, Mlp, Pointwise};

use super::{
    join, Adaptable, Classifier, Conv2d, InitRng, LayerNorm, LayerNorm2d, Linear, Module, Param,
};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::shape::Conv2dParams;
use crate::tensor::Tensor;

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
