//! The kernel contract: what every backend (the rayon CPU backend, the wgpu GPU backend) implements.
//!
//! Ops (in `crate::ops`) check shapes, build the tape and call these kernels; a backend sees only flat f32
//! buffers ([`Storage`]) and the sizes it needs, never tensors or the tape. A new backend implements
//! [`Backend`] and adds its variant to [`Storage`]; no op changes.

pub mod cpu;
pub mod gpu;
pub mod op_codes;

use crate::error::{Error, Result};
use crate::shape::{BroadcastLayout, Conv2dGeometry};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A flat, contiguous f32 buffer owned by one backend. Cloning is cheap (a reference count).
#[derive(Clone)]
pub enum Storage {
    /// Host memory, for the CPU backend.
    Cpu(Arc<Vec<f32>>),
    /// A GPU buffer of the wgpu backend (freed back to that backend's pool when the last handle drops).
    Gpu(Arc<gpu::GpuBuffer>),
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Cpu(v) => write!(f, "Storage::Cpu({} floats)", v.len()),
            Storage::Gpu(b) => write!(f, "Storage::Gpu({} floats)", b.len()),
        }
    }
}

op_codes::elementwise_ops! {
    /// Elementwise operations of one operand (`y = f(x)`), some with a scalar parameter. Each variant's
    /// op code is also the WGSL constant `OP_<NAME>` of elementwise.wgsl (see [`op_codes`]).
    pub enum UnaryOp {
        /// y = exp(x)
        Exp = 0,
        /// y = ln(x)
        Log = 1,
        /// y = −x
        Neg = 2,
        /// y = √x
        Sqrt = 3,
        /// y = x·Φ(x) = x/2·(1 + erf(x/√2)) (exact GELU)
        Gelu = 4,
        /// y = x + c
        AddScalar(f32) = 5,
        /// y = c·x
        MulScalar(f32) = 6,
        /// y = x^c
        PowScalar(f32) = 7,
        /// y = min(x, c), NaN staying NaN (y = c only where x > c)
        MinScalar(f32) = 8,
        /// y = GELU′(x) = Φ(x) + x·φ(x), φ the standard normal density (what GELU's backward multiplies by)
        GeluDerivative = 9,
    }
}

op_codes::elementwise_ops! {
    /// Elementwise operations of two operands with broadcasting (`y = f(a, b)`), some with a scalar c.
    /// Each variant's op code is also the WGSL constant `OP_<NAME>` of elementwise.wgsl (see
    /// [`op_codes`]).
    pub enum BinaryOp {
        /// a + b
        Add = 16,
        /// a − b
        Sub = 17,
        /// a · b
        Mul = 18,
        /// a / b
        Div = 19,
        /// a · GELU′(b): the GELU backward with a = ∂L/∂y and b = x. GELU′(x) = Φ(x) + x·φ(x).
        GeluBackward = 20,
        /// a + c·b (LoRA's W + s·BA in one pass; `Tensor::add_scaled`).
        AddScaled(f32) = 21,
        /// a · exp(c·b) (LieRA's W ⊙ exp(s·BA) in one pass; `Tensor::mul_exp_scaled`).
        MulExpScaled(f32) = 22,
        /// a · (1 + c·b) (first-order LieRA's W + W ⊙ s·BA in one pass; `Tensor::mul_affine_scaled`).
        MulAffineScaled(f32) = 23,
        /// c · a · b (the adapters' backward s·(G ⊙ W′), s·(G ⊙ W)).
        MulScaled(f32) = 24,
        /// a where b ≤ c, else 0: the backward of min(x, c) with a = ∂L/∂y and b = x.
        MinScalarBackward(f32) = 25,
    }
}

impl BinaryOp {
    /// The scalar c of the ops that have one (0 for the others).
    pub fn scalar(self) -> f32 {
        match self {
            BinaryOp::AddScaled(c)
            | BinaryOp::MulExpScaled(c)
            | BinaryOp::MulAffineScaled(c)
            | BinaryOp::MulScaled(c)
            | BinaryOp::MinScalarBackward(c) => c,
            _ => 0.0,
        }
    }
}

/// A batched matrix product C\[b\] = op(A\[b\]) · op(B\[b\]) where op transposes when asked.
///
/// op(A) is m×k and op(B) is k×n; A is stored row-major as m×k (or k×m when `trans_a`), B as k×n (or n×k
/// when `trans_b`). Batch strides of 0 broadcast one matrix over the batch. C is contiguous (batch, m, n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Number of matrix products (the product of the batch axes).
    pub batch: usize,
    /// Rows of op(A) and of C.
    pub m: usize,
    /// Columns of op(A), rows of op(B): the summed dimension.
    pub k: usize,
    /// Columns of op(B) and of C.
    pub n: usize,
    /// Use Aᵀ: A is stored k×m.
    pub trans_a: bool,
    /// Use Bᵀ: B is stored n×k.
    pub trans_b: bool,
    /// Elements between consecutive A matrices (0: the same A for every batch entry).
    pub a_batch_stride: usize,
    /// Elements between consecutive B matrices (0: the same B for every batch entry).
    pub b_batch_stride: usize,
}

impl MatmulSpec {
    /// One product (batch 1) of op(A) (m×k) and op(B) (k×n), both stored contiguously.
    pub fn single(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> Self {
        MatmulSpec {
            batch: 1,
            m,
            k,
            n,
            trans_a,
            trans_b,
            a_batch_stride: m * k,
            b_batch_stride: k * n,
        }
    }
}

/// A tensor seen as (outer, len, inner) with one axis of length `len` singled out: the reduced axis of a
/// sum, the normalised axis of a layer norm (NCHW channels: (N, C, H·W); last axis: (rows, C, 1)) or the
/// class axis of a softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisLayout {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Length of the axis.
    pub len: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
}

impl AxisLayout {
    /// Elements of the whole tensor.
    pub fn numel(&self) -> usize {
        self.outer * self.len * self.inner
    }
}

/// Outputs of the layer-norm forward kernel; `mean` and `rstd` (1/√(var+ε)) have outer·inner entries and
/// are kept for the backward kernel.
#[derive(Clone, Debug)]
pub struct LayerNormOutput {
    /// The normalised (and scaled and shifted) output, x's shape.
    pub y: Storage,
    /// μ per normalised vector (outer·inner entries).
    pub mean: Storage,
    /// r = 1/√(σ² + ε) per normalised vector (outer·inner entries).
    pub rstd: Storage,
}

/// Gradients from the layer-norm backward kernel.
#[derive(Clone, Debug)]
pub struct LayerNormGrads {
    /// ∂L/∂x, x's shape.
    pub dx: Storage,
    /// Σ over outer and inner of dy·x̂, one per channel.
    pub dweight: Storage,
    /// Σ over outer and inner of dy, one per channel.
    pub dbias: Storage,
}

/// The shape of a Global Response Normalisation: `batch` images of `channels` channels at `positions`
/// positions (H·W), laid out (n, c, p) or, with `channels_last`, (n, p, c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrnLayout {
    /// Images N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Positions per channel, H·W.
    pub positions: usize,
    /// (n, p, c) instead of (n, c, p).
    pub channels_last: bool,
}

impl GrnLayout {
    /// Elements of the tensor.
    pub fn numel(&self) -> usize {
        self.batch * self.channels * self.positions
    }
}

/// Output of the GRN forward kernel.
#[derive(Clone, Debug)]
pub struct GrnOutput {
    /// y, x's shape.
    pub y: Storage,
    /// G = √(Σ_p x² + δ) per (image, channel), batch·channels entries.
    pub gnorm: Storage,
    /// D = mean over channels of G, plus ε, per image.
    pub denom: Storage,
}

/// Gradients from the GRN backward kernels.
#[derive(Clone, Debug)]
pub struct GrnGrads {
    /// ∂L/∂x, x's shape.
    pub dx: Storage,
    /// ∂L/∂γ, one per channel.
    pub dgamma: Storage,
    /// ∂L/∂β, one per channel.
    pub dbeta: Storage,
}

/// Hyper-parameters of one fused AdamW update (see [`Backend::adamw_update`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay β₁.
    pub beta1: f32,
    /// Second-moment decay β₂.
    pub beta2: f32,
    /// ε added to √v̂.
    pub eps: f32,
    /// Decoupled weight decay λ.
    pub weight_decay: f32,
    /// 1 − β₁ᵗ (bias correction of m at step t).
    pub bias1: f32,
    /// 1 − β₂ᵗ (bias correction of v at step t).
    pub bias2: f32,
}

/// One parameter of a multi-tensor AdamW update (see [`Backend::adamw_update_many`]).
#[derive(Clone, Copy, Debug)]
pub struct AdamWItem<'a> {
    /// The parameter p.
    pub param: &'a Storage,
    /// Its gradient g.
    pub grad: &'a Storage,
    /// Its moments (m, v), absent on its first step (zero).
    pub moments: Option<(&'a Storage, &'a Storage)>,
    /// Values in p (and g, m, v).
    pub len: usize,
    /// The update's hyper-parameters (the learning rate may differ per parameter).
    pub h: AdamWStep,
}

/// The layout of an elementwise op on two same-shaped contiguous operands of `len` values.
fn flat_layout(len: usize) -> BroadcastLayout {
    BroadcastLayout {
        dims: vec![len.max(1)],
        a_strides: vec![1],
        b_strides: vec![1],
    }
}

/// [`Backend::matmul_reparam`] composed from the product and the elementwise kernel.
pub(crate) fn matmul_reparam_composed<B: Backend + ?Sized>(
    be: &B,
    a: &Storage,
    b: &Storage,
    spec: &MatmulSpec,
    w: &Storage,
    op: BinaryOp,
) -> Result<Storage> {
    let p = be.matmul(a, b, spec)?;
    be.binary(op, w, &p, &flat_layout(spec.batch * spec.m * spec.n))
}

/// [`Backend::low_rank_reparam`] as the product and the form: [`Backend::matmul_reparam`] of B·A.
pub(crate) fn low_rank_reparam_composed<B: Backend + ?Sized>(
    be: &B,
    w: &Storage,
    b: &Storage,
    a: &Storage,
    (o, r, n): (usize, usize, usize),
    op: BinaryOp,
) -> Result<Storage> {
    be.matmul_reparam(b, a, &MatmulSpec::single(o, r, n, false, false), w, op)
}

/// The factor gradients of an adapter's low-rank update P = B·A (B O×r, A r×N): with G = s·(g ⊙ z), or s·g
/// without z, ∂B = G·Aᵀ (O×r) and ∂A = Bᵀ·G (r×N).
#[derive(Clone, Copy, Debug)]
pub struct LowRankGrads<'a> {
    /// ∂L/∂W′ (O×N).
    pub g: &'a Storage,
    /// The factor of the scaled gradient (O×N): W′ for LieRA, W for its first order, none for LoRA.
    pub z: Option<&'a Storage>,
    /// B (O×r).
    pub b: &'a Storage,
    /// A (r×N).
    pub a: &'a Storage,
    /// (O, r, N).
    pub dims: (usize, usize, usize),
    /// The adapter's scale s.
    pub s: f32,
    /// Which gradients are wanted: (∂B, ∂A).
    pub need: (bool, bool),
}

/// [`Backend::low_rank_factor_grads`] from the backend's products and elementwise kernels.
pub(crate) fn low_rank_factor_grads_composed<B: Backend + ?Sized>(
    be: &B,
    x: &LowRankGrads<'_>,
) -> Result<(Option<Storage>, Option<Storage>)> {
    let LowRankGrads {
        g,
        z,
        b,
        a,
        dims: (o, r, n),
        s,
        need: (need_b, need_a),
    } = *x;
    // ∂B = ∂P·Aᵀ (O×r): the scaled gradient is the left operand, Aᵀ read from A (r×N).
    let spec_b = MatmulSpec::single(o, n, r, false, true);
    // ∂A = Bᵀ·∂P (r×N): Bᵀ read from B (O×r), the scaled gradient the right operand.
    let spec_a = MatmulSpec::single(r, o, n, true, false);
    if need_b && need_a {
        // Both: the scaled gradient ∂P = s·(g ⊙ z) once, then two plain products.
        let dp = match z {
            Some(z) => be.binary(BinaryOp::MulScaled(s), g, z, &flat_layout(o * n))?,
            None => be.unary(UnaryOp::MulScalar(s), g, o * n)?,
        };
        return Ok((
            Some(be.matmul(&dp, a, &spec_b)?),
            Some(be.matmul(b, &dp, &spec_a)?),
        ));
    }
    // One: the product with the scaled operand, which a backend may fuse.
    let db = need_b
        .then(|| be.matmul_scaled_operand(g, a, &spec_b, true, s, z, o * n))
        .transpose()?;
    let da = need_a
        .then(|| be.matmul_scaled_operand(b, g, &spec_a, false, s, z, o * n))
        .transpose()?;
    Ok((db, da))
}

/// [`Backend::matmul_scaled_operand`] composed: the scaled operand, then the product; `scaled` is (left,
/// c, z, the operand's length).
pub(crate) fn matmul_scaled_operand_composed<B: Backend + ?Sized>(
    be: &B,
    a: &Storage,
    b: &Storage,
    spec: &MatmulSpec,
    (left, c, z, x_len): (bool, f32, Option<&Storage>, usize),
) -> Result<Storage> {
    let x = if left { a } else { b };
    let scaled = match z {
        Some(z) => be.binary(BinaryOp::MulScaled(c), x, z, &flat_layout(x_len))?,
        None => be.unary(UnaryOp::MulScalar(c), x, x_len)?,
    };
    if left {
        be.matmul(&scaled, b, spec)
    } else {
        be.matmul(a, &scaled, spec)
    }
}

/// The kernels every backend provides. All buffers are contiguous row-major f32; sizes are checked by the
/// calling op, so a kernel may assume they are consistent.
pub trait Backend: Send + Sync {
    /// A human-readable name ("cpu (2 threads)", "llvmpipe (Vulkan)").
    fn name(&self) -> String;

    /// Copies host data into a new buffer.
    fn upload(&self, data: &[f32]) -> Result<Storage>;
    /// Copies a buffer back to the host. On a GPU this is a synchronising readback.
    fn download(&self, storage: &Storage) -> Result<Vec<f32>>;
    /// A buffer of `len` copies of `value`.
    fn fill(&self, len: usize, value: f32) -> Result<Storage>;
    /// A one-element 0.0 that no kernel writes to (the broadcast operand of `broadcast_to`'s copy); a
    /// backend may keep one rather than fill one per call.
    fn zero_scalar(&self) -> Result<Storage> {
        self.fill(1, 0.0)
    }

    /// y = f(x) elementwise over `len` elements.
    fn unary(&self, op: UnaryOp, x: &Storage, len: usize) -> Result<Storage>;
    /// y = f(a, b) elementwise with the strides of `layout` (broadcast axes have stride 0).
    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        b: &Storage,
        layout: &BroadcastLayout,
    ) -> Result<Storage>;

    /// a ← op(a, b) over a's own buffer (a and b of one shape, no broadcasting), where the backend can
    /// write a storage in place: the CPU, for a host buffer that no other storage handle shares. Returns
    /// whether it did; the default does nothing, and the caller then runs [`Backend::binary`] into a new
    /// buffer. Written in place, a backward rule such as GELU's reads two tensors and writes over one it
    /// has just read, instead of writing a third (whose lines the CPU would first read from memory).
    fn binary_in_place(&self, op: BinaryOp, a: &mut Storage, b: &Storage) -> Result<bool> {
        let _ = (op, a, b);
        Ok(false)
    }

    /// Batched matrix product, see [`MatmulSpec`].
    fn matmul(&self, a: &Storage, b: &Storage, spec: &MatmulSpec) -> Result<Storage>;

    /// y = op(W, op(A)·op(B)) elementwise, for `op` one of the adapters' reparameterisations
    /// ([`BinaryOp::AddScaled`], [`BinaryOp::MulExpScaled`], [`BinaryOp::MulAffineScaled`]) and W of the
    /// product's shape: the adapted kernel from its low-rank factors. The default is [`Backend::matmul`] then
    /// [`Backend::binary`]; a backend may fuse them (the GPU's GEMM epilogue), with the same results.
    fn matmul_reparam(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        w: &Storage,
        op: BinaryOp,
    ) -> Result<Storage> {
        matmul_reparam_composed(self, a, b, spec, w, op)
    }
    /// op(A)·op(B) with the left operand (`left`) or the right one, X, replaced by c·X·Z
    /// ([`BinaryOp::MulScaled`], Z of X's layout) or, without `z`, X·c: an adapter factor's gradient
    /// without materialising the scaled gradient. The default composes; a backend may fuse.
    #[allow(clippy::too_many_arguments)]
    fn matmul_scaled_operand(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        left: bool,
        c: f32,
        z: Option<&Storage>,
        x_len: usize,
    ) -> Result<Storage> {
        matmul_scaled_operand_composed(self, a, b, spec, (left, c, z, x_len))
    }
    /// An adapter's kernel from its low-rank factors: W′ = op(W, B·A) for B (O×r), A (r×N) and W (O×N),
    /// `dims` = (O, r, N), `op` one of the forms of [`Backend::matmul_reparam`]. The default is that product;
    /// a backend may gather many layers' (the GPU does).
    fn low_rank_reparam(
        &self,
        w: &Storage,
        b: &Storage,
        a: &Storage,
        dims: (usize, usize, usize),
        op: BinaryOp,
    ) -> Result<Storage> {
        low_rank_reparam_composed(self, w, b, a, dims, op)
    }
    /// Both factor gradients of an adapter's low-rank update (see [`LowRankGrads`]), each only where asked.
    /// The default scales the gradient once and runs two products (or, for one gradient,
    /// [`Backend::matmul_scaled_operand`]); a backend may gather them (the GPU launches many layers'
    /// together).
    fn low_rank_factor_grads(
        &self,
        x: &LowRankGrads<'_>,
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        low_rank_factor_grads_composed(self, x)
    }

    /// Sum over the middle axis: y[o, i] = Σ_l x[o, l, i]; y has outer·inner elements.
    fn sum_axis(&self, x: &Storage, layout: AxisLayout) -> Result<Storage>;
    /// Sum over the outer and inner axes, keeping the middle one: y\[l\] = Σ_o Σ_i x\[o, l, i\]; y has `len`
    /// elements (a per-channel sum of NCHW, e.g. a bias gradient). The default is two [`Backend::sum_axis`]
    /// calls; a backend may do it in one pass.
    fn sum_keep_middle(&self, x: &Storage, layout: AxisLayout) -> Result<Storage> {
        let inner_summed = self.sum_axis(
            x,
            AxisLayout {
                outer: layout.outer * layout.len,
                len: layout.inner,
                inner: 1,
            },
        )?;
        self.sum_axis(
            &inner_summed,
            AxisLayout {
                outer: 1,
                len: layout.outer,
                inner: layout.len,
            },
        )
    }
    /// y\[l\] = Σ_o Σ_i a\[o, l, i\]·b\[o, l, i\] (the per-channel gradient of a layer scale, Σ g·h).
    fn sum_product_keep_middle(
        &self,
        a: &Storage,
        b: &Storage,
        layout: AxisLayout,
    ) -> Result<Storage>;
    /// y = x + scale\[l\]·h at every (o, l, i) of an (outer, len, inner) view (a residual plus a layer-scaled
    /// branch in one pass).
    fn channel_scale_add(
        &self,
        x: &Storage,
        h: &Storage,
        scale: &Storage,
        layout: AxisLayout,
    ) -> Result<Storage>;
    /// Σ over `inputs` of Σ_i x_i² (each input's first `len` elements): one element, the squared global norm
    /// of gradient clipping, in a few launches for any number of tensors.
    fn sum_squares(&self, inputs: &[(&Storage, usize)]) -> Result<Storage>;
    /// Reorders axes: y has dimensions dims\[perm\[0\]\], dims\[perm\[1\]\], ... where x has `dims`.
    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage>;

    /// 2-D convolution y = x ⋆ w (+ bias per output channel), NCHW input, OIHW weight.
    fn conv2d(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        geom: &Conv2dGeometry,
    ) -> Result<Storage>;
    /// (GELU(y), GELU′(y)) with y = conv2d(x, w) + bias: a convolution's activation and the derivative its
    /// backward multiplies by, which a backend may compute together (the CPU in one pass over y, writing
    /// GELU over it; the GPU in the GEMM's epilogue for convolutions that run as one, never storing y); the
    /// default is [`Backend::conv2d`], then [`UnaryOp::Gelu`] and [`UnaryOp::GeluDerivative`].
    fn conv2d_gelu(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        geom: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let y = self.conv2d(x, w, bias, geom)?;
        let n = geom.output_shape().numel();
        let z = self.unary(UnaryOp::Gelu, &y, n)?;
        let dz = self.unary(UnaryOp::GeluDerivative, &y, n)?;
        Ok((z, dz))
    }
    /// ∂L/∂x of a convolution given dy = ∂L/∂y (a transposed convolution of dy with w).
    fn conv2d_input_grad(
        &self,
        dy: &Storage,
        w: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<Storage>;
    /// ∂L/∂w of a convolution given the input x and dy = ∂L/∂y.
    fn conv2d_weight_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<Storage>;

    /// ∂L/∂w and ∂L/∂bias (Σ over images and positions of dy, per output channel) of a convolution. The
    /// default is [`Backend::conv2d_weight_grad`] and a per-channel sum; a backend may compute both in one
    /// pass (the GPU's GEMM takes the bias as one more column).
    fn conv2d_weight_bias_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let dw = self.conv2d_weight_grad(x, dy, geom)?;
        let db = self.sum_keep_middle(
            dy,
            AxisLayout {
                outer: geom.batch,
                len: geom.c_out,
                inner: geom.h_out * geom.w_out,
            },
        )?;
        Ok((dw, db))
    }
    /// Layer norm over the middle axis of `layout`: y = (x − μ)·rstd·weight + bias.
    fn layer_norm(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: AxisLayout,
        eps: f32,
    ) -> Result<LayerNormOutput>;
    /// The layer-norm backward, from the forward's saved mean and rstd.
    fn layer_norm_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        weight: Option<&Storage>,
        mean: &Storage,
        rstd: &Storage,
        layout: AxisLayout,
    ) -> Result<LayerNormGrads>;

    /// Global Response Normalisation (see `ops/grn.rs` for the formulas): y = (x·N)·γ + β + x with
    /// N = G / D, G = √(Σ_p x² + δ) per image and channel, D = mean_c G + ε per image.
    fn grn(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        layout: GrnLayout,
        eps: f32,
    ) -> Result<GrnOutput>;
    /// The GRN backward, from the forward's saved G and D.
    fn grn_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        gamma: &Storage,
        gnorm: &Storage,
        denom: &Storage,
        layout: GrnLayout,
    ) -> Result<GrnGrads>;

    /// y = x − log Σ exp(x) over the middle axis of `layout`.
    fn log_softmax(&self, x: &Storage, layout: AxisLayout) -> Result<Storage>;
    /// dx = dy − exp(y)·Σ dy over the middle axis, with y the forward's output.
    fn log_softmax_backward(
        &self,
        dy: &Storage,
        y: &Storage,
        layout: AxisLayout,
    ) -> Result<Storage>;

    /// [`Backend::adamw_update`] of every item, all with the same `grad_scale`; returns each item's
    /// (p', m', v') in order. The default updates one item at a time; a backend may update many per launch
    /// (the GPU's multi-tensor kernel), with the same results bit for bit.
    fn adamw_update_many(
        &self,
        items: &[AdamWItem<'_>],
        grad_scale: Option<&Storage>,
    ) -> Result<Vec<(Storage, Storage, Storage)>> {
        items
            .iter()
            .map(|it| self.adamw_update(it.param, it.grad, it.moments, grad_scale, it.len, &it.h))
            .collect()
    }

    /// One AdamW update of a parameter of `len` values: returns (p', m', v') with
    /// m' = β₁·m + (1 − β₁)·g, v' = β₂·v + (1 − β₂)·g², p' = p·(1 − lr·λ) − lr·(m'/b₁)/(√(v'/b₂) + ε);
    /// `m`, `v` absent means zero (the first step). With `grad_scale` (one element c, e.g. gradient
    /// clipping's factor, computed on the device) the gradient used is g·c, rounded as a separate multiply
    /// would round it. The default composes the elementwise kernels (about a dozen passes over memory); a
    /// backend may fuse it into one pass.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        param: &Storage,
        grad: &Storage,
        moments: Option<(&Storage, &Storage)>,
        grad_scale: Option<&Storage>,
        len: usize,
        h: &AdamWStep,
    ) -> Result<(Storage, Storage, Storage)> {
        let flat = flat_layout(len);
        let scaled;
        let grad = match grad_scale {
            Some(c) => {
                let by_scalar = BroadcastLayout {
                    dims: vec![len.max(1)],
                    a_strides: vec![1],
                    b_strides: vec![0],
                };
                scaled = self.binary(BinaryOp::Mul, grad, c, &by_scalar)?;
                &scaled
            }
            None => grad,
        };
        let scaled_g = self.unary(UnaryOp::MulScalar(1.0 - h.beta1), grad, len)?;
        let g2 = self.binary(BinaryOp::Mul, grad, grad, &flat)?;
        let scaled_g2 = self.unary(UnaryOp::MulScalar(1.0 - h.beta2), &g2, len)?;
        let (m, v) = match moments {
            Some((m, v)) => (
                self.binary(
                    BinaryOp::Add,
                    &self.unary(UnaryOp::MulScalar(h.beta1), m, len)?,
                    &scaled_g,
                    &flat,
                )?,
                self.binary(
                    BinaryOp::Add,
                    &self.unary(UnaryOp::MulScalar(h.beta2), v, len)?,
                    &scaled_g2,
                    &flat,
                )?,
            ),
            None => (scaled_g, scaled_g2),
        };
        let v_hat = self.unary(UnaryOp::MulScalar(1.0 / h.bias2), &v, len)?;
        let denom = self.unary(
            UnaryOp::AddScalar(h.eps),
            &self.unary(UnaryOp::Sqrt, &v_hat, len)?,
            len,
        )?;
        let step = self.unary(
            UnaryOp::MulScalar(h.lr / h.bias1),
            &self.binary(BinaryOp::Div, &m, &denom, &flat)?,
            len,
        )?;
        let decayed = self.unary(UnaryOp::MulScalar(1.0 - h.lr * h.weight_decay), param, len)?;
        let p = self.binary(BinaryOp::Sub, &decayed, &step, &flat)?;
        Ok((p, m, v))
    }

    /// How many host readbacks ([`Backend::download`]) this backend has performed; lets tests check that a
    /// training step reads nothing back until asked.
    fn readback_count(&self) -> u64 {
        0
    }

    /// What this backend has launched since it was created (all zero on a backend that launches nothing,
    /// the CPU): the difference of two readings is the cost of the work between them.
    fn counters(&self) -> LaunchCounters {
        LaunchCounters::default()
    }

    /// True when kernels are queued and run later (a GPU): only a readback waits for them. On a synchronous
    /// backend (the CPU) every kernel has finished when its call returns.
    fn is_asynchronous(&self) -> bool {
        false
    }

    /// True for a GPU adapter that is really software running on the CPU (Mesa's llvmpipe/lavapipe,
    /// SwiftShader): correct, but slower than the CPU backend, so the command does not choose it unasked.
    fn is_software_gpu(&self) -> bool {
        false
    }

    /// Which form of its matrix-product kernel this backend runs, for benchmark reports (the CPU's
    /// instruction set, tile and blocking; the GPU's GEMM entry file).
    fn gemm_form(&self) -> String;
}

/// Launch counts of a backend: what a GPU training step costs besides its arithmetic. Each dispatch pays a
/// driver round trip and a barrier, each bind group an allocation, each submit a queue round trip; on a
/// hardware GPU a step of small kernels is bound by these, not by FLOPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaunchCounters {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Bind groups created.
    pub bind_groups: u64,
    /// Command buffers submitted to the queue.
    pub submits: u64,
    /// Buffers created (pool misses, uploads, parameter blocks, readback staging).
    pub buffers_created: u64,
    /// Host readbacks.
    pub readbacks: u64,
}

impl std::ops::Sub for LaunchCounters {
    type Output = LaunchCounters;
    fn sub(self, o: LaunchCounters) -> LaunchCounters {
        LaunchCounters {
            dispatches: self.dispatches - o.dispatches,
            bind_groups: self.bind_groups - o.bind_groups,
            submits: self.submits - o.submits,
            buffers_created: self.buffers_created - o.buffers_created,
            readbacks: self.readbacks - o.readbacks,
        }
    }
}

/// Where tensors live and kernels run: a shared handle to a [`Backend`].
#[derive(Clone)]
pub struct Device(Arc<dyn Backend>);

impl Device {
    /// The rayon CPU backend (one shared instance).
    pub fn cpu() -> Device {
        static CPU: OnceLock<Device> = OnceLock::new();
        CPU.get_or_init(|| Device(Arc::new(cpu::CpuBackend::new())))
            .clone()
    }
    /// The wgpu GPU backend on the highest-performance adapter (one shared instance, created on first use);
    /// an [`Error::Device`] when no adapter exists or it cannot be opened.
    pub fn gpu() -> Result<Device> {
        /// Why no GPU device: a setting the user got wrong (kept as `Error::Invalid`), or anything else.
        #[derive(Clone)]
        enum NoGpu {
            Invalid(&'static str, String),
            Device(String),
        }
        // The outcome is kept, so a missing adapter is looked for once, not per call.
        static GPU: OnceLock<std::result::Result<Device, NoGpu>> = OnceLock::new();
        GPU.get_or_init(|| {
            gpu::GpuBackend::new(gpu::GpuOptions::default())
                .map(|b| Device(Arc::new(b)))
                // Keep the bare message: `Error::Device` adds its own "device:" prefix again below.
                .map_err(|e| match e {
                    Error::Device(msg) => NoGpu::Device(msg),
                    Error::Invalid { op, msg } => NoGpu::Invalid(op, msg),
                    other => NoGpu::Device(other.to_string()),
                })
        })
        .clone()
        .map_err(|e| match e {
            NoGpu::Invalid(op, msg) => Error::invalid(op, msg),
            NoGpu::Device(msg) => Error::Device(msg),
        })
    }

    /// The device to run on: `LIERA_DEVICE=cpu|gpu` forces one; otherwise a hardware GPU adapter if one
    /// exists, else the CPU. A software adapter (Mesa's llvmpipe, SwiftShader) is passed over, since the CPU
    /// backend is faster than a GPU emulated on the same cores. With `LIERA_REQUIRE_GPU=1` any adapter is
    /// taken, software included, and none is an error instead of a fallback (so CI can insist that the GPU
    /// path ran). Says on stderr which device was chosen.
    pub fn best() -> Result<Device> {
        let require_gpu = std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1");
        let forced = std::env::var("LIERA_DEVICE").unwrap_or_default();
        let dev = match forced.trim().to_ascii_lowercase().as_str() {
            "cpu" => Device::cpu(),
            "gpu" => Device::gpu()?,
            "" => match Device::gpu() {
                Ok(d) if require_gpu || !d.backend().is_software_gpu() => d,
                Ok(d) => {
                    eprintln!(
                        "liera: the only GPU adapter is software ({}); using the faster CPU backend \
                         (LIERA_DEVICE=gpu or --device gpu uses the adapter anyway)",
                        d.name()
                    );
                    Device::cpu()
                }
                Err(e) if require_gpu => {
                    return Err(Error::Device(format!(
                        "LIERA_REQUIRE_GPU=1 but no GPU device is usable: {e}"
                    )))
                }
                // A setting the user got wrong (such as LIERA_GPU_GEMM_TILE) is an error, not a reason to
                // train on the CPU instead.
                Err(e @ Error::Invalid { .. }) => return Err(e),
                Err(e) => {
                    eprintln!("liera: no GPU adapter ({e}); falling back to the CPU");
                    Device::cpu()
                }
            },
            other => {
                return Err(Error::invalid(
                    "Device::best",
                    format!("LIERA_DEVICE must be cpu or gpu, got {other:?}"),
                ))
            }
        };
        eprintln!("device: {}", dev.name());
        Ok(dev)
    }
    /// A device from any backend.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Device {
        Device(backend)
    }
    /// The kernels of this device.
    pub fn backend(&self) -> &dyn Backend {
        self.0.as_ref()
    }
    /// The backend's name.
    pub fn name(&self) -> String {
        self.0.name()
    }
    /// True if both handles are the same device.
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    /// An error unless `other` is this device.
    pub fn check_same(&self, op: &'static str, other: &Device) -> Result<()> {
        if self.same(other) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                a: self.name(),
                b: other.name(),
            })
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.name())
    }
}
