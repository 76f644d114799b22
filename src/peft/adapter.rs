//! The adapters as a reparameterisation W ↦ W' of one kernel: a composition (additive, Lie exact, Lie
//! first-order) applied to an update ΔW that a matrix PEFT method (LoRA, LoHa, LoKr) generates.
//!
//! **The group.** A kernel W ∈ R^{Cout×(Cin/g)×kh×kw} with no zero entry lies in the abelian Lie group
//! G = (R∖{0})^N under the Hadamard product ⊙ (identity 𝟙, inverse 1/W). Its Lie algebra is R^N with `+`, and
//! the exponential map is the elementwise exp. LieRA moves W by a group element near the identity, which
//! lifts any matrix PEFT method from linear layers to convolution kernels:
//!
//! ```text
//!   W' = W ⊙ exp(ΔW)                  Lie exact (LieRA, the default)
//!   W' = W + W ⊙ ΔW                   Lie first-order (exp(ΔW) ≈ 𝟙 + ΔW)
//!   W' = W + ΔW                       additive (the PEFT method as published)
//! ```
//!
//! **The generators** ([`DeltaKind`]) produce ΔW in the matrix view of the kernel, (rows, cols) =
//! (Cout, Cin/g·kh·kw) — for a depthwise kernel (C, kh·kw), for a Linear (out, in) — with scale s = α/r:
//!
//! ```text
//!   LoRA:  ΔW = s · B A                     B (rows, r) = 0,  A (r, cols) ~ U(±1/√cols)   (rsLoRA: s = α/√r)
//!   LoHa:  ΔW = s · (B₁A₁) ⊙ (B₂A₂)         B₁, B₂ (rows, r) ~ U(±1/√r),  A₁ (r, cols) ~ U(±1/√cols),  A₂ = 0
//!   LoKr:  ΔW = s · kron(C, W₂)             C (rows₁, c₁) = 0,  W₂ (rows₂, cols₂) = B A (rank r) or full
//! ```
//! Each initialisation is PEFT's (kaiming-uniform with a = √5, i.e. U(±1/√fan_in)), and each makes ΔW = 0, so
//! W' = W exactly at step 0 for every composition. LoKr splits the kernel's matrix as rows = rows₁·rows₂ and
//! cols = c₁·cols₂ with PEFT's `factorization` of Cout and of Cin/g (the spatial taps kh·kw stay in W₂'s
//! columns, as PEFT's conv LoKr keeps them), and keeps W₂ full when r ≥ max(rows₂, Cin/g split)/2, as PEFT
//! does.
//!
//! **Gradients.** With G = ∂L/∂W' (from the convolution's dW kernel), the chain rule through each W' gives
//! D = ∂L/∂ΔW = G ⊙ ∂W'/∂ΔW, i.e. G ⊙ W ⊙ exp(ΔW) = G ⊙ W' (exact), G ⊙ W (first order), G (additive).
//! Writing M = s·D in the matrix view, each generator's factors get
//!
//! ```text
//!   LoRA:  ∂L/∂B = M Aᵀ                 ∂L/∂A = Bᵀ M
//!   LoHa:  ∂L/∂B₁ = (M ⊙ B₂A₂) A₁ᵀ      ∂L/∂A₁ = B₁ᵀ (M ⊙ B₂A₂)      (and 1 ↔ 2)
//!   LoKr:  ∂L/∂C[i,j] = Σ_{k,l} M[i·rows₂+k, j·cols₂+l] W₂[k,l]
//!          ∂L/∂W₂[k,l] = Σ_{i,j} M[i·rows₂+k, j·cols₂+l] C[i,j]    (then ∂L/∂B, ∂L/∂A from ∂L/∂W₂ as LoRA's)
//! ```
//! The forward builds the unscaled product P (a matmul; two matmuls and a product; or the Kronecker product
//! as a broadcast product C[i,·,j,·]·W₂[·,k,·,l] reshaped), then one fused elementwise op of
//! `ops/reparam.rs` (W + s·P, W ⊙ exp(s·P), W ⊙ (1 + s·P)) whose backward gives s·G, s·(G ⊙ W′) or s·(G ⊙ W) in
//! one pass; the tape carries that through P to the factors, and `tests/peft.rs` checks them against these
//! closed forms. Because W' is proportional to W entrywise under both Lie compositions, a zero entry of W
//! stays zero: it lies outside G and cannot move ([`Adapter::zero_entries`]).

use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::nn::{join, Adaptable, InitRng, Param, WeightReparam};
use crate::ops::reparam::ReparamForm;
use crate::shape::Shape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How ΔW composes with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// W' = W + ΔW (named after LoRA, the additive method; with another [`DeltaKind`] it is that method).
    Lora,
    /// W' = W ⊙ exp(ΔW).
    #[default]
    Liera,
    /// W' = W + W ⊙ ΔW.
    LieraFirstOrder,
}

impl AdapterKind {
    /// All compositions: additive, Lie exact, Lie first-order.
    pub const ALL: [AdapterKind; 3] = [
        AdapterKind::Lora,
        AdapterKind::Liera,
        AdapterKind::LieraFirstOrder,
    ];
    /// The name used in configs and on the command line: `lora`, `liera`, `liera_first_order`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Liera => "liera",
            AdapterKind::LieraFirstOrder => "liera_first_order",
        }
    }
    /// Parses [`AdapterKind::name`] (also `additive`, `liera-first-order`, `liera1`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" | "additive" => Ok(AdapterKind::Lora),
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
    /// True for the two Lie compositions, under which a zero entry of W cannot move.
    pub fn is_lie(self) -> bool {
        self != AdapterKind::Lora
    }
}

/// Which matrix PEFT method generates ΔW (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeltaKind {
    /// ΔW = s·B·A.
    #[default]
    Lora,
    /// ΔW = s·(B₁A₁) ⊙ (B₂A₂).
    Loha,
    /// ΔW = s·kron(C, W₂), W₂ = B·A or full.
    Lokr,
}

impl DeltaKind {
    /// All generators.
    pub const ALL: [DeltaKind; 3] = [DeltaKind::Lora, DeltaKind::Loha, DeltaKind::Lokr];
    /// `lora`, `loha` or `lokr`.
    pub fn name(self) -> &'static str {
        match self {
            DeltaKind::Lora => "lora",
            DeltaKind::Loha => "loha",
            DeltaKind::Lokr => "lokr",
        }
    }
    /// Parses [`DeltaKind::name`].
    pub fn parse(s: &str) -> Result<Self> {
        DeltaKind::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "peft",
                    format!("unknown ΔW generator `{s}` (lora, loha, lokr)"),
                )
            })
    }
}

/// The name of a composition with a generator, as tables and `--methods` spell it: the PEFT method's own
/// name for the additive form (`lora`, `loha`, `lokr`), the composition's name for LoRA-generated Lie forms
/// (`liera`, `liera_first_order`), and `<composition>_<generator>` otherwise (`liera_loha`,
/// `liera_first_order_lokr`).
pub fn adapter_method_name(kind: AdapterKind, delta: DeltaKind) -> &'static str {
    use AdapterKind as K;
    use DeltaKind as D;
    match (kind, delta) {
        (K::Lora, D::Lora) => "lora",
        (K::Lora, D::Loha) => "loha",
        (K::Lora, D::Lokr) => "lokr",
        (K::Liera, D::Lora) => "liera",
        (K::Liera, D::Loha) => "liera_loha",
        (K::Liera, D::Lokr) => "liera_lokr",
        (K::LieraFirstOrder, D::Lora) => "liera_first_order",
        (K::LieraFirstOrder, D::Loha) => "liera_first_order_loha",
        (K::LieraFirstOrder, D::Lokr) => "liera_first_order_lokr",
    }
}

/// Parses [`adapter_method_name`] (and the composition's aliases, with or without a `_<generator>` suffix;
/// `-` may stand for `_`).
pub fn parse_adapter_method(s: &str) -> Result<(AdapterKind, DeltaKind)> {
    let s = s.replace('-', "_");
    match s.as_str() {
        "loha" => return Ok((AdapterKind::Lora, DeltaKind::Loha)),
        "lokr" => return Ok((AdapterKind::Lora, DeltaKind::Lokr)),
        _ => {}
    }
    for delta in [DeltaKind::Loha, DeltaKind::Lokr] {
        if let Some(kind) = s.strip_suffix(&format!("_{}", delta.name())) {
            if let Ok(k) = AdapterKind::parse(kind) {
                return Ok((k, delta));
            }
        }
    }
    AdapterKind::parse(&s)
        .map(|k| (k, DeltaKind::Lora))
        .map_err(|_| {
            Error::invalid(
                "peft",
                format!(
                    "unknown adapter method `{s}` (lora, loha, lokr, liera, liera_loha, liera_lokr, \
                     liera_first_order, liera_first_order_loha, liera_first_order_lokr)"
                ),
            )
        })
}

/// The matrix view (rows, cols) = (`shape[0]`, `numel / shape[0]`) of a kernel.
pub fn matrix_view(shape: &Shape) -> (usize, usize) {
    let rows = shape.dims().first().copied().unwrap_or(1).max(1);
    (rows, shape.numel() / rows)
}

/// PEFT's `factorization(dimension, factor)` for LoKr: (`factor`, `dimension`/`factor`) when a positive
/// `factor` divides `dimension`; otherwise PEFT's walk over the divisors m = 1, 2, … while m < `dimension`/m
/// and m ≤ `factor` (−1: unbounded), ordered so that m ≤ n. With −1 that is (p, `dimension`/p) for p the
/// largest divisor ≤ √`dimension`: 8 → (2, 4), 24 → (4, 6), 160 → (10, 16), 7 → (1, 7).
pub fn lokr_factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        let m = factor as usize;
        return (m, dimension / m);
    }
    let bound = if factor == -1 {
        dimension
    } else {
        factor.max(0) as usize
    };
    let (mut m, mut n) = (1, dimension.max(1));
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > bound {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

/// One factor of an adapter: its name (PEFT's key suffix: `lora_A.weight`, `hada_w1_a`, `lokr_w2`, …), its
/// shape in the forward's matrix view, and its shape as PEFT stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct FactorSpec {
    /// PEFT's key suffix after `<layer>.`.
    pub name: &'static str,
    /// The shape the forward uses (always a matrix).
    pub shape: Vec<usize>,
    /// The shape in PEFT's files.
    pub stored: Vec<usize>,
    /// The kaiming-uniform bound 1/√fan_in of its initialisation, or None for zeros.
    init_bound: Option<f64>,
}

/// The factors of a `delta` adapter of rank `rank` on a kernel of shape `weight` (PEFT's names, shapes and
/// initialisations), with LoKr's `decompose_factor` (−1: near √). Errors name `layer`: rank 0, or a LoRA rank
/// above min(rows, cols).
pub fn factor_specs(
    delta: DeltaKind,
    layer: &str,
    weight: &Shape,
    rank: usize,
    decompose_factor: i64,
) -> Result<Vec<FactorSpec>> {
    let (rows, cols) = matrix_view(weight);
    let w = weight.dims();
    if rank == 0 {
        return Err(Error::invalid(
            "peft",
            format!("{layer}: rank must be at least 1"),
        ));
    }
    let kaiming = |fan_in: usize| Some(1.0 / (fan_in as f64).sqrt());
    let spec = |name, shape: Vec<usize>, stored: Option<Vec<usize>>, init_bound| FactorSpec {
        name,
        stored: stored.unwrap_or_else(|| shape.clone()),
        shape,
        init_bound,
    };
    Ok(match delta {
        DeltaKind::Lora => {
            if rank > rows.min(cols) {
                return Err(Error::invalid(
                    "peft",
                    format!(
                        "{layer}: rank {rank} exceeds min(rows, cols) = min({rows}, {cols}) = {} of the \
                         kernel {weight} viewed as a matrix",
                        rows.min(cols)
                    ),
                ));
            }
            // PEFT stores a convolution's A as a (r, Cin/g, kh, kw) kernel and B as a (Cout, r, 1, 1) one.
            let (sa, sb) = if w.len() == 4 {
                (vec![rank, w[1], w[2], w[3]], vec![w[0], rank, 1, 1])
            } else {
                (vec![rank, cols], vec![rows, rank])
            };
            // kaiming_uniform_(a = √5): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
            vec![
                spec("lora_A.weight", vec![rank, cols], Some(sa), kaiming(cols)),
                spec("lora_B.weight", vec![rows, rank], Some(sb), None),
            ]
        }
        DeltaKind::Loha => vec![
            spec("hada_w1_a", vec![rows, rank], None, kaiming(rank)),
            spec("hada_w1_b", vec![rank, cols], None, kaiming(cols)),
            spec("hada_w2_a", vec![rows, rank], None, kaiming(rank)),
            spec("hada_w2_b", vec![rank, cols], None, None),
        ],
        DeltaKind::Lokr => {
            // Cin/g of a kernel (in of a Linear); the remaining kh·kw taps stay with W₂.
            let in_dim = w.get(1).copied().unwrap_or(1).max(1);
            let taps = cols / in_dim;
            let (rows1, rows2) = lokr_factorization(rows, decompose_factor);
            let (c1, in2) = lokr_factorization(in_dim, decompose_factor);
            let cols2 = in2 * taps;
            let mut specs = vec![spec("lokr_w1", vec![rows1, c1], None, None)];
            if 2 * rank >= rows2.max(in2) {
                let stored = (w.len() == 4).then(|| vec![rows2, in2, w[2], w[3]]);
                specs.push(spec("lokr_w2", vec![rows2, cols2], stored, kaiming(cols2)));
            } else {
                specs.push(spec("lokr_w2_a", vec![rows2, rank], None, kaiming(rank)));
                specs.push(spec("lokr_w2_b", vec![rank, cols2], None, kaiming(cols2)));
            }
            specs
        }
    })
}

/// How an adapter is built: composition, generator, rank, α and scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterSpec {
    /// The composition.
    pub kind: AdapterKind,
    /// The generator of ΔW.
    pub delta: DeltaKind,
    /// The rank r.
    pub rank: usize,
    /// α (s = α/r).
    pub alpha: f32,
    /// rsLoRA's s = α/√r (LoRA only).
    pub rslora: bool,
    /// LoKr's `decompose_factor` (−1: the factorisation nearest √).
    pub decompose_factor: i64,
}

impl AdapterSpec {
    /// A LoRA-generated adapter of `kind` (no rsLoRA).
    pub fn lora(kind: AdapterKind, rank: usize, alpha: f32) -> AdapterSpec {
        AdapterSpec {
            kind,
            delta: DeltaKind::Lora,
            rank,
            alpha,
            rslora: false,
            decompose_factor: -1,
        }
    }
}

impl AdapterSpec {
    /// The factors of this spec on a kernel of shape `weight` ([`factor_specs`]), after checking the spec
    /// itself. `layer` names the layer in errors.
    fn factors_for(&self, layer: &str, weight: &Shape) -> Result<Vec<FactorSpec>> {
        self.check(layer)?;
        factor_specs(self.delta, layer, weight, self.rank, self.decompose_factor)
    }

    /// α > 0 and finite; rsLoRA only with LoRA. `layer` names the layer in the error.
    fn check(&self, layer: &str) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid(
                "peft",
                format!(
                    "{layer}: alpha must be positive and finite, got {}",
                    self.alpha
                ),
            ));
        }
        if self.rslora && self.delta != DeltaKind::Lora {
            return Err(Error::invalid(
                "peft",
                format!(
                    "{layer}: rsLoRA scaling applies to LoRA only, not {}",
                    self.delta.name()
                ),
            ));
        }
        Ok(())
    }
}

/// The factors of ΔW, attached to one kernel.
#[derive(Debug)]
pub struct Adapter {
    spec: AdapterSpec,
    /// The kernel shape the factors were made for (their shapes cannot change after construction).
    weight_shape: Shape,
    /// The factors, in [`factor_specs`]' order.
    factors: Vec<(FactorSpec, Param)>,
    /// While merged: the base kernel W, kept bit-exact for [`crate::peft::unmerge`], and whether the factors
    /// were trainable.
    merged: Option<(Tensor, bool)>,
}

impl Adapter {
    /// A fresh LoRA-generated adapter for a kernel of shape `weight_shape` on `device` (B = 0,
    /// A kaiming-uniform(√5)). `layer` names the layer in errors. Errors: rank 0, rank > min(rows, cols),
    /// α ≤ 0 or not finite.
    pub fn new(
        kind: AdapterKind,
        layer: &str,
        weight_shape: &Shape,
        rank: usize,
        alpha: f32,
        rng: &mut InitRng,
        device: &crate::Device,
    ) -> Result<Adapter> {
        Adapter::build(
            AdapterSpec::lora(kind, rank, alpha),
            layer,
            weight_shape,
            rng,
            device,
        )
    }

    /// A fresh adapter as `spec` says, initialised as PEFT initialises its generator (ΔW = 0).
    pub fn build(
        spec: AdapterSpec,
        layer: &str,
        weight_shape: &Shape,
        rng: &mut InitRng,
        device: &crate::Device,
    ) -> Result<Adapter> {
        let factors = spec
            .factors_for(layer, weight_shape)?
            .into_iter()
            .map(|f| {
                let n: usize = f.shape.iter().product();
                let p = match f.init_bound {
                    Some(bound) => {
                        Param::from_vec(&rng.uniform_vec(n, bound), f.shape.clone(), device)?
                    }
                    None => Param::new(Tensor::zeros(f.shape.clone(), device)?, true),
                };
                Ok((f, p))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Adapter {
            spec,
            weight_shape: weight_shape.clone(),
            factors,
            merged: None,
        })
    }

    /// An adapter over given factor tensors (in [`factor_specs`]' order and matrix shapes) instead of fresh
    /// ones; a leaf tensor that requires a gradient is used as it is (same identity), so its gradient can be
    /// looked up after a backward pass. Errors: a spec error as for [`Adapter::build`], or a factor count or
    /// shape that differs from [`factor_specs`], named.
    pub fn from_factors(
        spec: AdapterSpec,
        layer: &str,
        weight_shape: &Shape,
        factors: Vec<Tensor>,
    ) -> Result<Adapter> {
        let specs = spec.factors_for(layer, weight_shape)?;
        if specs.len() != factors.len() {
            return Err(Error::shape(
                "peft",
                format!(
                    "{layer}: a {} adapter on {weight_shape} has {} factors, got {}",
                    spec.delta.name(),
                    specs.len(),
                    factors.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for (f, t) in specs.into_iter().zip(factors) {
            if t.shape().dims() != f.shape.as_slice() {
                return Err(Error::shape(
                    "peft",
                    format!(
                        "{layer}: factor {} must be {:?}, got {}",
                        f.name,
                        f.shape,
                        t.shape()
                    ),
                ));
            }
            let trainable = t.requires_grad();
            out.push((f, Param::new(t, trainable)));
        }
        Ok(Adapter {
            spec,
            weight_shape: weight_shape.clone(),
            factors: out,
            merged: None,
        })
    }

    /// The same adapter with rsLoRA's scale s = α/√r (`on`) or the usual α/r.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.spec.rslora = on;
        self
    }

    /// How the adapter was built.
    pub fn spec(&self) -> AdapterSpec {
        self.spec
    }
    /// The composition.
    pub fn kind(&self) -> AdapterKind {
        self.spec.kind
    }
    /// The generator of ΔW.
    pub fn delta_kind(&self) -> DeltaKind {
        self.spec.delta
    }
    /// The rank r.
    pub fn rank(&self) -> usize {
        self.spec.rank
    }
    /// α.
    pub fn alpha(&self) -> f32 {
        self.spec.alpha
    }
    /// True if the scale is rsLoRA's α/√r.
    pub fn rslora(&self) -> bool {
        self.spec.rslora
    }
    /// s = α / r, or α / √r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.spec.rslora {
            (self.spec.alpha as f64 / (self.spec.rank as f64).sqrt()) as f32
        } else {
            self.spec.alpha / self.spec.rank as f32
        }
    }
    /// The factors with their specs, in [`factor_specs`]' order.
    pub fn factors(&self) -> impl Iterator<Item = (&FactorSpec, &Param)> {
        self.factors.iter().map(|(s, p)| (s, p))
    }
    /// The factor named `name` (`lora_A.weight`, `hada_w2_b`, `lokr_w1`, …), if this adapter has it.
    pub fn factor(&self, name: &str) -> Option<&Param> {
        self.factors
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, p)| p)
    }
    /// LoRA's A (r, cols). Panics on another generator (a programming error, not a user's).
    pub fn a(&self) -> &Param {
        self.factor("lora_A.weight")
            .expect("a LoRA-generated adapter")
    }
    /// LoRA's B (rows, r). Panics on another generator.
    pub fn b(&self) -> &Param {
        self.factor("lora_B.weight")
            .expect("a LoRA-generated adapter")
    }
    /// Scalars in the factors (LoRA: r·(rows + cols)).
    pub fn num_parameters(&self) -> usize {
        self.factors.iter().map(|(_, p)| p.numel()).sum()
    }
    /// Trainable scalars in the factors (0 while merged).
    pub fn num_trainable(&self) -> usize {
        self.factors
            .iter()
            .filter(|(_, p)| p.is_trainable())
            .map(|(_, p)| p.numel())
            .sum()
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

    fn param(&self, i: usize) -> &Tensor {
        self.factors[i].1.tensor()
    }

    /// The unscaled update P in the matrix view (ΔW = s·P): B·A, (B₁A₁) ⊙ (B₂A₂) or kron(C, W₂).
    fn product(&self) -> Result<Tensor> {
        match self.spec.delta {
            DeltaKind::Lora => self.param(1).matmul(self.param(0)),
            DeltaKind::Loha => self
                .param(0)
                .matmul(self.param(1))?
                .mul(&self.param(2).matmul(self.param(3))?),
            DeltaKind::Lokr => {
                let c = self.param(0);
                let w2 = if self.factors.len() == 3 {
                    self.param(1).matmul(self.param(2))?
                } else {
                    self.param(1).clone()
                };
                kron(c, &w2)
            }
        }
    }

    /// ΔW = s·P, reshaped to `shape` (the kernel's).
    pub fn delta(&self, shape: &Shape) -> Result<Tensor> {
        self.product()?
            .mul_scalar(self.scale())?
            .reshape(shape.clone())
    }

    /// W' from the base kernel W (see the module docs); recorded on the tape when a factor trains.
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
    ///     a.b().tensor().assign(&Tensor::from_slice(&[1.0, -1.0], [2, 1], &dev)?)?;
    /// }
    /// let (wl, wa) = (liera.adapt(&w)?.to_vec()?, lora.adapt(&w)?.to_vec()?);
    /// assert_eq!(wl[0], 0.0); // W ⊙ exp(ΔW): the zero entry cannot move
    /// assert!(wl[2] < 0.0); // and no sign flips
    /// assert_ne!(wa[0], 0.0); // W + ΔW moves it
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn adapt(&self, w: &Tensor) -> Result<Tensor> {
        if w.shape() != &self.weight_shape {
            let have: Vec<String> = self
                .factors
                .iter()
                .map(|(s, p)| format!("{} {}", s.name, p.shape()))
                .collect();
            return Err(Error::shape(
                "peft",
                format!(
                    "an adapter made for a kernel {} (factors {}) cannot adapt a kernel {}",
                    self.weight_shape,
                    have.join(", "),
                    w.shape()
                ),
            ));
        }
        let s = self.scale();
        if self.spec.delta == DeltaKind::Lora {
            // P = B·A: the product, the form and their gradients fused where the backend can.
            let form = match self.spec.kind {
                AdapterKind::Liera => ReparamForm::MulExp,
                AdapterKind::LieraFirstOrder => ReparamForm::MulAffine,
                AdapterKind::Lora => ReparamForm::Add,
            };
            return w.adapt_low_rank(self.param(1), self.param(0), s, form);
        }
        let p = self.product()?.reshape(w.shape().clone())?;
        match self.spec.kind {
            AdapterKind::Liera => w.mul_exp_scaled(&p, s),
            AdapterKind::LieraFirstOrder => w.mul_affine_scaled(&p, s),
            AdapterKind::Lora => w.add_scaled(&p, s),
        }
    }

    fn set_factors_trainable(&mut self, on: bool) {
        for (_, p) in &mut self.factors {
            p.set_trainable(on);
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
        let trainable = self.factors.iter().any(|(_, p)| p.is_trainable());
        self.set_factors_trainable(false);
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
        self.set_factors_trainable(trainable);
        Ok(())
    }

    /// The number of exactly-zero entries of `w` (a readback): under LieRA these cannot move.
    pub fn zero_entries(w: &Tensor) -> Result<usize> {
        Ok(w.to_vec()?.iter().filter(|v| **v == 0.0).count())
    }
}

/// kron(C, M) for matrices C (p, q) and M (m, n): the (p·m, q·n) matrix whose block (i, j) is C_ij·M:
///
/// ```text
///   kron(C, M)[i·m + k, j·n + l] = C[i,j]·M[k,l]
/// ```
/// Built as the broadcast product of C viewed as (p, 1, q, 1) and M as (1, m, 1, n), whose (p, m, q, n)
/// result in row-major order is exactly that matrix; the product's backward reduces to
/// ∂C_ij = Σ_kl g·M_kl and ∂M_kl = Σ_ij g·C_ij (g over the matching entries).
pub fn kron(c: &Tensor, m: &Tensor) -> Result<Tensor> {
    let (&[p, q], &[mr, mc]) = (c.shape().dims(), m.shape().dims()) else {
        return Err(Error::shape(
            "kron",
            format!("needs two matrices, got {} and {}", c.shape(), m.shape()),
        ));
    };
    c.reshape([p, 1, q, 1])?
        .mul(&m.reshape([1, mr, 1, mc])?)?
        .reshape([p * mr, q * mc])
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

    /// Calls `f` on `<layer>.<factor>` for every factor, with PEFT's names (`lora_A.weight`,
    /// `lora_B.weight`; `hada_w1_a`, …; `lokr_w1`, …).
    fn visit(&self, layer: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (s, p) in &self.factors {
            f(&join(layer, s.name), p);
        }
    }
}
