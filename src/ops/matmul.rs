//! Batched matrix product with either operand transposed.
//!
//! Forward: C = op(A)·op(B), op(X) = X or Xᵀ (of the last two axes). op(A) is (…, m, k), op(B) is (…, k, n),
//! C is (…, m, n). Leading (batch) axes must be equal, or one operand has none and is shared by every batch
//! entry.
//!
//! Backward, with G = ∂L/∂C (from dC = dop(A)·op(B) + op(A)·dop(B)):
//!   ∂L/∂op(A) = G·op(B)ᵀ      ∂L/∂op(B) = op(A)ᵀ·G
//! and, undoing op:  A plain: ∂A = G·op(B)ᵀ;   A transposed: ∂A = op(B)·Gᵀ;
//!                   B plain: ∂B = op(A)ᵀ·G;   B transposed: ∂B = Gᵀ·op(A).
//! Each is one call of this same kernel with transpose flags, never a materialised transpose. A shared
//! operand's gradient is summed over the batch; a shared right operand with row-major left operands is
//! computed as one product of the stacked rows, whose backward then sums over the batch inside one GEMM.

use crate::backend::MatmulSpec;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

impl Tensor {
    /// A·B over the last two axes.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false)
    }

    /// op(A)·op(B) with op transposing the last two axes where asked.
    pub fn matmul_t(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        const OP: &str = "matmul";
        self.check_device(OP, other)?;
        let (a, b) = (self.shape(), other.shape());
        if a.rank() < 2 || b.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!("operands need at least 2 axes, got {a} and {b}"),
            ));
        }
        let (ra, rb) = (a.rank(), b.rank());
        let (ad, bd) = (a.dims(), b.dims());
        let (m, ka) = if trans_a {
            (ad[ra - 1], ad[ra - 2])
        } else {
            (ad[ra - 2], ad[ra - 1])
        };
        let (kb, n) = if trans_b {
            (bd[rb - 1], bd[rb - 2])
        } else {
            (bd[rb - 2], bd[rb - 1])
        };
        if ka != kb {
            return Err(Error::shape(
                OP,
                format!(
                    "inner dimensions differ: {a}{} · {b}{} has k = {ka} vs {kb}",
                    if trans_a { "ᵀ" } else { "" },
                    if trans_b { "ᵀ" } else { "" }
                ),
            ));
        }
        let (a_batch, b_batch) = (&ad[..ra - 2], &bd[..rb - 2]);
        let batch_dims: Vec<usize> = match (a_batch.is_empty(), b_batch.is_empty()) {
            (_, true) => a_batch.to_vec(),
            (true, false) => b_batch.to_vec(),
            (false, false) if a_batch == b_batch => a_batch.to_vec(),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("batch axes of {a} and {b} differ"),
                ))
            }
        };
        let batch: usize = batch_dims.iter().product();
        // A batch of row-major A's times one shared B is a single product of the stacked rows
        // (batch·m, k)·op(B): one large GEMM instead of `batch` small ones, and its backward gives ∂B as one
        // GEMM over the folded batch rather than a batched product followed by a sum (Linear layers on
        // (N, H, W, C) activations hit this case).
        if b_batch.is_empty() && !a_batch.is_empty() && !trans_a && batch > 1 {
            let mut out = batch_dims;
            out.extend([m, n]);
            return self
                .reshape([batch * m, ka])?
                .matmul_t(other, false, trans_b)?
                .reshape(out);
        }
        let spec = MatmulSpec {
            batch,
            m,
            k: ka,
            n,
            trans_a,
            trans_b,
            a_batch_stride: if a_batch.is_empty() { 0 } else { m * ka },
            b_batch_stride: if b_batch.is_empty() { 0 } else { ka * n },
        };
        let storage = self
            .device()
            .backend()
            .matmul(&self.storage(), &other.storage(), &spec)?;
        let mut out = batch_dims;
        out.extend([m, n]);
        let (a_t, b_t) = (self.detach(), other.detach());
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            OP,
            storage,
            Shape::new(out),
            &[self, other],
            move |g| {
                let da = if !need_a {
                    None
                } else if trans_a {
                    Some(b_t.matmul_t(g, trans_b, true)?.sum_to(a_t.shape())?)
                } else {
                    Some(g.matmul_t(&b_t, false, !trans_b)?.sum_to(a_t.shape())?)
                };
                let db = if !need_b {
                    None
                } else if trans_b {
                    Some(g.matmul_t(&a_t, true, trans_a)?.sum_to(b_t.shape())?)
                } else {
                    Some(a_t.matmul_t(g, !trans_a, false)?.sum_to(b_t.shape())?)
                };
                Ok(vec![da, db])
            },
        ))
    }
}
