//! The adapters: LoRA, LieRA (exact) and LieRA first-order, as a reparameterisation W ↦ W' of one kernel.
//!
//! **The group.** A kernel W ∈ R^{Cout×(Cin/g)×kh×kw} with no zero entry lies in the abelian Lie group
//! G = (R∖{0})^N under the Hadamard product ⊙ (identity 𝟙, inverse 1/W). Its Lie algebra is R^N with `+`, and
//! the exponential map is the elementwise exp. LieRA moves W by a group element near the identity:
//!
//! ```text
//!   W' = W ⊙ exp(ΔW)                  LieRA (exact, the default)
//!   W' = W + W ⊙ ΔW                   LieRA first-order (exp(ΔW) ≈ 𝟙 + ΔW)
//!   W' = W + ΔW                       LoRA (the additive baseline, same factors)
//! ```
//!
//! **The update in the algebra** is low rank in the matrix view of the kernel, (rows, cols) =
//! (Cout, Cin/g·kh·kw) — for a depthwise kernel (C, kh·kw), for a Linear (out, in):
//!
//! ```text
//!   ΔW = s · B A,   B ∈ R^{rows×r} (init 0),   A ∈ R^{r×cols} (init kaiming-uniform(a = √5):
//!                   U(−1/√cols, 1/√cols)),     s = α / r   (rsLoRA: α / √r)
//! ```
//! so W' = W exactly at step 0 for every kind.
//!
//! **Gradients.** With G = ∂L/∂W' (from the convolution's dW kernel), the chain rule through each W' gives
//! ∂L/∂ΔW = G ⊙ ∂W'/∂ΔW, i.e. G ⊙ W ⊙ exp(ΔW) = G ⊙ W' (exact), G ⊙ W (first order), G (LoRA). Writing
//! M = s · ∂L/∂ΔW in the matrix view,
//!
//! ```text
//!   exact:  M = s·(G ⊙ W')     first-order:  M = s·(G ⊙ W)     LoRA:  M = s·G
//!   ∂L/∂B = M Aᵀ               ∂L/∂A = Bᵀ M
//! ```
//! The forward is the matmul P = B·A, a reshape and one fused elementwise op of `ops/reparam.rs`
//! (W + s·P, W ⊙ exp(s·P), W ⊙ (1 + s·P)) whose backward gives s·G, s·(G ⊙ W′) or s·(G ⊙ W) in one pass; the
//! tape carries that through the matmul to ∂L/∂A and ∂L/∂B, and `tests/peft.rs` checks them against these
//! closed forms. Because W' is proportional to W entrywise,
//! a zero entry of W stays zero under LieRA: it lies outside G and cannot move ([`Adapter::zero_entries`]).

use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::nn::{join, Adaptable, InitRng, Param, WeightReparam};
use crate::shape::Shape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which reparameterisation an adapter applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// W' = W + ΔW.
    Lora,
    /// W' = W ⊙ exp(ΔW).
    #[default]
    Liera,
    /// W' = W + W ⊙ ΔW.
    LieraFirstOrder,
}

impl AdapterKind {
    /// The name used in configs and on the command line: `lora`, `liera`, `liera_first_order`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Liera => "liera",
            AdapterKind::LieraFirstOrder => "liera_first_order",
        }
    }
    /// Parses [`AdapterKind::name`] (also `liera-first-order`, `liera1`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(AdapterKind::Lora),
            "liera" => Ok(AdapterKind::Liera),
            "liera_first_order" | "liera-first-order" | "liera1" => {
                Ok(AdapterKind::LieraFirstOrder)
            }
            other => Err(Error::invalid(
                "peft",
                format!("unknown adapter method `{other}` (lora, liera, liera_first_order)"),
            )),
        }
    }
}

/// The matrix view (rows, cols) = (`shape[0]`, `numel / shape[0]`) of a kernel.
pub fn matrix_view(shape: &Shape) -> (usize, usize) {
    let rows = shape.dims().first().copied().unwrap_or(1).max(1);
    (rows, shape.numel() / rows)
}

/// Low-rank factors A, B with scale s = α/r, attached to one kernel.
#[derive(Debug)]
pub struct Adapter {
    kind: AdapterKind,
    rank: usize,
    alpha: f32,
    /// rsLoRA's s = α/√r instead of α/r.
    rslora: bool,
    /// A: (r, cols).
    pub a: Param,
    /// B: (rows, r).
    pub b: Param,
    /// While merged: the base kernel W, kept bit-exact for [`crate::peft::unmerge`], and whether the factors
    /// were trainable.
    merged: Option<(Tensor, bool)>,
}

impl Adapter {
    /// A fresh adapter for a kernel of shape `weight_shape` on `device` (B = 0, A kaiming-uniform(√5)).
    /// `layer` names the layer in errors. Errors: rank 0, rank > min(rows, cols), α ≤ 0 or not finite.
    pub fn new(
        kind: AdapterKind,
        layer: &str,
        weight_shape: &Shape,
        rank: usize,
        alpha: f32,
        rng: &mut InitRng,
        device: &crate::Device,
    ) -> Result<Adapter> {
        let (rows, cols) = matrix_view(weight_shape);
        if rank == 0 {
            return Err(Error::invalid(
                "peft",
                format!("{layer}: rank must be at least 1"),
            ));
        }
        if rank > rows.min(cols) {
            return Err(Error::invalid(
                "peft",
                format!(
                    "{layer}: rank {rank} exceeds min(rows, cols) = min({rows}, {cols}) = {} of the \
                     kernel {weight_shape} viewed as a matrix",
                    rows.min(cols)
                ),
            ));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::invalid(
                "peft",
                format!("{layer}: alpha must be positive and finite, got {alpha}"),
            ));
        }
        // kaiming_uniform_(a = √5): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in, fan_in = cols.
        let bound = 1.0 / (cols as f64).sqrt();
        let a = Param::from_vec(&rng.uniform_vec(rank * cols, bound), [rank, cols], device)?;
        let b = Param::new(Tensor::zeros([rows, rank], device)?, true);
        Ok(Adapter {
            kind,
            rank,
            alpha,
            rslora: false,
            a,
            b,
            merged: None,
        })
    }

    /// The same adapter with rsLoRA's scale s = α/√r (`on`) or the usual α/r.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.rslora = on;
        self
    }

    /// The adapter's kind.
    pub fn kind(&self) -> AdapterKind {
        self.kind
    }
    /// The rank r.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// α.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }
    /// True if the scale is rsLoRA's α/√r.
    pub fn rslora(&self) -> bool {
        self.rslora
    }
    /// s = α / r, or α / √r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.rslora {
            (self.alpha as f64 / (self.rank as f64).sqrt()) as f32
        } else {
            self.alpha / self.rank as f32
        }
    }
    /// Scalars in A and B: r·(rows + cols).
    pub fn num_parameters(&self) -> usize {
        self.a.numel() + self.b.numel()
    }
    /// True while merged into the base kernel.
    pub fn is_merged(&self) -> bool {
        self.merged.is_some()
    }

    /// The adapter attached to `layer`, if it has one (and it is an [`Adapter`], not another
    /// [`WeightReparam`]).
    pub fn of(layer: &(impl Adaptable + ?Sized)) -> Option<&Adapter> {
        layer.adapter()?.downcast_ref()
    }

    /// ΔW = s·B·A, reshaped to `shape` (the kernel's).
    pub fn delta(&self, shape: &Shape) -> Result<Tensor> {
        self.b
            .tensor()
            .matmul(self.a.tensor())?
            .mul_scalar(self.scale())?
            .reshape(shape.clone())
    }

    /// W' from the base kernel W (see the module docs); recorded on the tape when A or B trains.
    ///
    /// ```
    /// use liera::nn::InitRng;
    /// use liera::peft::{Adapter, AdapterKind};
    /// use liera::{Device, Shape, Tensor};
    /// let dev = Device::cpu();
    /// let w = Tensor::from_slice(&[0.0, 0.5, -0.25, 1.0], [2, 2], &dev)?; // a 2×2 "kernel" with a zero
    /// let mut adapter = |kind| Adapter::new(kind, "demo", &Shape::new([2, 2]), 1, 1.0,
    ///                                       &mut InitRng::new(3), &dev);
    /// let (liera, lora) = (adapter(AdapterKind::Liera)?, adapter(AdapterKind::Lora)?);
    /// assert_eq!(liera.adapt(&w)?.to_vec()?, w.to_vec()?); // B = 0: W' = W at step 0
    /// for a in [&liera, &lora] {
    ///     a.b.tensor().assign(&Tensor::from_slice(&[1.0, -1.0], [2, 1], &dev)?)?;
    /// }
    /// let (wl, wa) = (liera.adapt(&w)?.to_vec()?, lora.adapt(&w)?.to_vec()?);
    /// assert_eq!(wl[0], 0.0); // W ⊙ exp(ΔW): the zero entry cannot move
    /// assert!(wl[2] < 0.0); // and no sign flips
    /// assert_ne!(wa[0], 0.0); // W + ΔW moves it
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn adapt(&self, w: &Tensor) -> Result<Tensor> {
        let (rows, cols) = matrix_view(w.shape());
        if self.b.shape().dims() != [rows, self.rank] || self.a.shape().dims() != [self.rank, cols]
        {
            return Err(Error::shape(
                "peft",
                format!(
                    "adapter factors B {} and A {} do not fit a kernel {} (matrix {rows}×{cols})",
                    self.b.shape(),
                    self.a.shape(),
                    w.shape()
                ),
            ));
        }
        let p = self
            .b
            .tensor()
            .matmul(self.a.tensor())?
            .reshape(w.shape().clone())?;
        let s = self.scale();
        match self.kind {
            AdapterKind::Liera => w.mul_exp_scaled(&p, s),
            AdapterKind::LieraFirstOrder => w.mul_affine_scaled(&p, s),
            AdapterKind::Lora => w.add_scaled(&p, s),
        }
    }

    /// Merges into `weight`: writes W' (computed once, without the tape) and keeps W for unmerge; freezes the
    /// factors while merged. Errors if already merged.
    pub fn merge_into(&mut self, layer: &str, weight: &mut Param) -> Result<()> {
        if self.is_merged() {
            return Err(Error::invalid(
                "peft",
                format!("{layer}: adapter is already merged"),
            ));
        }
        let merged = no_grad(|| self.adapt(weight.tensor()))?;
        let base = weight.tensor().detach();
        weight.replace(&merged)?;
        let trainable = self.a.is_trainable() || self.b.is_trainable();
        self.a.set_trainable(false);
        self.b.set_trainable(false);
        self.merged = Some((base, trainable));
        Ok(())
    }

    /// Restores W bit-exactly from the kept copy and reactivates the adapter. Errors if not merged.
    pub fn unmerge_from(&mut self, layer: &str, weight: &mut Param) -> Result<()> {
        let Some((base, trainable)) = self.merged.take() else {
            return Err(Error::invalid(
                "peft",
                format!("{layer}: adapter is not merged"),
            ));
        };
        weight.replace(&base)?;
        self.a.set_trainable(trainable);
        self.b.set_trainable(trainable);
        Ok(())
    }

    /// The number of exactly-zero entries of `w` (a readback): under LieRA these cannot move.
    pub fn zero_entries(w: &Tensor) -> Result<usize> {
        Ok(w.to_vec()?.iter().filter(|v| **v == 0.0).count())
    }
}

/// How a layer's forward and parameter walk see an attached adapter.
impl WeightReparam for Adapter {
    /// The kernel a layer's forward uses: W' while active, the (already merged) stored weight while merged.
    fn effective_weight(&self, w: &Tensor) -> Result<Tensor> {
        if self.is_merged() {
            Ok(w.clone())
        } else {
            self.adapt(w)
        }
    }

    /// Calls `f` on `<layer>.lora_A.weight` and `<layer>.lora_B.weight` (PEFT's names).
    fn visit(&self, layer: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(layer, "lora_A.weight"), &self.a);
        f(&join(layer, "lora_B.weight"), &self.b);
    }
}
