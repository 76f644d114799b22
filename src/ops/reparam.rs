//! The adapters' weight reparameterisations, each one fused elementwise pass over the kernel (forward) and
//! one per gradient (backward), instead of the three of scale, exp and multiply.
//!
//! With W the base kernel, P = reshape(B·A) the low-rank product and s the adapter's scale α/r (a constant):
//!
//! ```text
//!   add_scaled:          y = W + s·P          ∂W = g               ∂P = s·g
//!   mul_exp_scaled:      y = W ⊙ exp(s·P)     ∂W = g ⊙ exp(s·P)    ∂P = s·(g ⊙ y)
//!   mul_affine_scaled:   y = W ⊙ (1 + s·P)    ∂W = g ⊙ (1 + s·P)   ∂P = s·(g ⊙ W)
//! ```
//!
//! (LoRA, LieRA and first-order LieRA; see `peft/adapter.rs`.) ∂P of the exact form reuses the forward's
//! output y = W′, which is why LieRA's backward costs no exp. W and P must have the same shape (no
//! broadcasting: these are weights, not activations). The kernels are [`BinaryOp::AddScaled`],
//! [`BinaryOp::MulExpScaled`], [`BinaryOp::MulAffineScaled`] and [`BinaryOp::MulScaled`]; each gradient is
//! only computed for an input that requires one (W is frozen under an adapter).
//!
//! [`Tensor::adapt_low_rank`] takes the factors themselves (P = B·A) and hands the product and the form to
//! [`Backend::low_rank_reparam`](crate::backend::Backend::low_rank_reparam), and both factor gradients to
//! [`Backend::low_rank_factor_grads`](crate::backend::Backend::low_rank_factor_grads): the CPU does each in
//! one pass over the kernel (`backend/cpu/lowrank.rs`), the GPU gathers many layers' into a few launches.

use crate::backend::{BinaryOp, LowRankGrads};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Runs `op` on two same-shaped tensors, returning the result's storage.
fn same_shape_kernel(name: &'static str, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            name,
            format!(
                "the kernel {} and the update {} must have the same shape",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let (storage, shape) = super::binary::broadcast_kernel(name, op, a, b)?;
    Ok(Tensor::from_storage(storage, shape, a.device()))
}

impl Tensor {
    /// W + s·P (LoRA's adapted kernel), with `self` = W.
    pub fn add_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        let y = same_shape_kernel("add_scaled", BinaryOp::AddScaled(s), self, p)?;
        let (need_w, need_p) = (self.requires_grad(), p.requires_grad());
        Ok(Tensor::from_op(
            "add_scaled",
            y.storage(),
            y.shape().clone(),
            &[self, p],
            move |g| {
                Ok(vec![
                    need_w.then(|| g.clone()),
                    need_p.then(|| g.mul_scalar(s)).transpose()?,
                ])
            },
        ))
    }

    /// W ⊙ exp(s·P) (LieRA's adapted kernel), with `self` = W.
    pub fn mul_exp_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        // ∂W = g ⊙ exp(s·P) (the forward's kernel on g), ∂P = s·(g ⊙ y).
        multiplicative(
            "mul_exp_scaled",
            self,
            p,
            s,
            BinaryOp::MulExpScaled(s),
            Operand::Output,
        )
    }

    /// W ⊙ (1 + s·P) (first-order LieRA's adapted kernel, W + W ⊙ s·P), with `self` = W.
    pub fn mul_affine_scaled(&self, p: &Tensor, s: f32) -> Result<Tensor> {
        // ∂W = g ⊙ (1 + s·P) (the forward's kernel on g), ∂P = s·(g ⊙ W).
        multiplicative(
            "mul_affine_scaled",
            self,
            p,
            s,
            BinaryOp::MulAffineScaled(s),
            Operand::Kernel,
        )
    }
}

/// Which tensor ∂P = s·(g ⊙ ·) multiplies: the forward's output y or the kernel W.
enum Operand {
    Output,
    Kernel,
}

/// y = `op`(W, P) for the two multiplicative forms y = W ⊙ f(s·P): ∂W = `op`(g, P) = g ⊙ f(s·P) and
/// ∂P = s·(g ⊙ `dp_with`), each computed only when that input requires a gradient.
fn multiplicative(
    name: &'static str,
    w: &Tensor,
    p: &Tensor,
    s: f32,
    op: BinaryOp,
    dp_with: Operand,
) -> Result<Tensor> {
    let y = same_shape_kernel(name, op, w, p)?;
    let (need_w, need_p) = (w.requires_grad(), p.requires_grad());
    let p_value = p.detach();
    let dp_operand = match dp_with {
        Operand::Output => y.detach(),
        Operand::Kernel => w.detach(),
    };
    Ok(Tensor::from_op(
        name,
        y.storage(),
        y.shape().clone(),
        &[w, p],
        move |g| {
            let dw = need_w
                .then(|| same_shape_kernel(name, op, g, &p_value))
                .transpose()?;
            let dp = need_p
                .then(|| same_shape_kernel(name, BinaryOp::MulScaled(s), g, &dp_operand))
                .transpose()?;
            Ok(vec![dw, dp])
        },
    ))
}

/// Which of the adapters' reparameterisations [`Tensor::adapt_low_rank`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReparamForm {
    /// W + s·P (LoRA).
    Add,
    /// W ⊙ exp(s·P) (LieRA).
    MulExp,
    /// W ⊙ (1 + s·P) (first-order LieRA).
    MulAffine,
}

impl Tensor {
    /// The adapted kernel from low-rank factors, P = B·A reshaped to W's shape (`self` = W, B (O, r),
    /// A (r, N), O·N = W's size): W + s·P, W ⊙ exp(s·P) or W ⊙ (1 + s·P), with the gradients of the table
    /// above and ∂B = ∂P·Aᵀ, ∂A = Bᵀ·∂P. The same values as `w.mul_exp_scaled(&b.matmul(a)?.reshape(…), s)`
    /// and its siblings, without the intermediate P: on the GPU each layer's W′ and factor gradients join
    /// multi-layer launches (see the module docs). A W that requires a gradient takes the composed ops.
    pub fn adapt_low_rank(
        &self,
        b: &Tensor,
        a: &Tensor,
        s: f32,
        form: ReparamForm,
    ) -> Result<Tensor> {
        const OP: &str = "adapt_low_rank";
        self.check_device(OP, b)?;
        self.check_device(OP, a)?;
        if b.rank() != 2 || a.rank() != 2 || b.dims()[1] != a.dims()[0] {
            return Err(Error::shape(
                OP,
                format!(
                    "need B (O, r) and A (r, N), got B {} and A {}",
                    b.shape(),
                    a.shape()
                ),
            ));
        }
        let (o, r, n) = (b.dims()[0], b.dims()[1], a.dims()[1]);
        if o * n != self.numel() {
            return Err(Error::shape(
                OP,
                format!(
                    "the kernel {} and the update B·A ({o}×{n}) must have the same size",
                    self.shape()
                ),
            ));
        }
        let op = match form {
            ReparamForm::Add => BinaryOp::AddScaled(s),
            ReparamForm::MulExp => BinaryOp::MulExpScaled(s),
            ReparamForm::MulAffine => BinaryOp::MulAffineScaled(s),
        };
        if self.requires_grad() {
            let p = b.matmul(a)?.reshape(self.shape().clone())?;
            return match form {
                ReparamForm::Add => self.add_scaled(&p, s),
                ReparamForm::MulExp => self.mul_exp_scaled(&p, s),
                ReparamForm::MulAffine => self.mul_affine_scaled(&p, s),
            };
        }
        let y = self.device().backend().low_rank_reparam(
            &self.storage(),
            &b.storage(),
            &a.storage(),
            (o, r, n),
            op,
        )?;
        let y = Tensor::from_storage(y, self.shape().clone(), self.device());
        // ∂P = s·(g ⊙ z): z is the output (exact form), the kernel (first order) or absent (LoRA).
        let z = match form {
            ReparamForm::MulExp => Some(y.detach()),
            ReparamForm::MulAffine => Some(self.detach()),
            ReparamForm::Add => None,
        };
        let (saved_b, saved_a) = (b.detach(), a.detach());
        let (need_b, need_a) = (b.requires_grad(), a.requires_grad());
        Ok(Tensor::from_op(
            OP,
            y.storage(),
            self.shape().clone(),
            &[self, b, a],
            move |g| {
                let dev = g.device();
                let z = z.as_ref().map(|z| z.storage());
                let (db, da) = dev.backend().low_rank_factor_grads(&LowRankGrads {
                    g: &g.storage(),
                    z: z.as_ref(),
                    b: &saved_b.storage(),
                    a: &saved_a.storage(),
                    dims: (o, r, n),
                    s,
                    need: (need_b, need_a),
                })?;
                let db = db.map(|s| Tensor::from_storage(s, [o, r], dev));
                let da = da.map(|s| Tensor::from_storage(s, [r, n], dev));
                Ok(vec![None, db, da])
            },
        ))
    }
}
