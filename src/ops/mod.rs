//! Differentiable operations, one file per op. Each file states the op's math (forward and derivative) in its
//! doc comment, checks shapes (returning an error that names the op and the shapes), calls the device's
//! kernel and records the backward rule on the tape.
//!
//! Ops are methods on [`Tensor`]: `a.add(&b)?`, `x.conv2d(&w, Some(&b), params)?`, ...

pub mod binary;
pub mod checkpoint;
pub mod conv2d;
pub mod cross_entropy;
pub mod exp;
pub mod gelu;
pub mod grn;
pub mod layer_norm;
pub mod layer_scale;
pub mod linear;
pub mod log;
pub mod log_softmax;
pub mod matmul;
pub mod permute;
pub mod pool;
pub mod reparam;
pub mod reshape;
pub mod scalar;
pub mod sqrt;
pub mod sum;
pub mod sum_squares;

use crate::backend::UnaryOp;
use crate::error::Result;
use crate::tensor::Tensor;

/// Applies an elementwise kernel and records `backward` (shared by exp, log, sqrt, gelu and the scalar ops).
pub(crate) fn unary(
    x: &Tensor,
    name: &'static str,
    op: UnaryOp,
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Result<Tensor> {
    let storage = x.device().backend().unary(op, &x.storage(), x.numel())?;
    Ok(record_unary(x, name, storage, backward))
}

/// Records an elementwise op of `x` whose result `storage` some fused kernel already computed.
pub(crate) fn record_unary(
    x: &Tensor,
    name: &'static str,
    storage: crate::backend::Storage,
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    Tensor::from_op(name, storage, x.shape().clone(), &[x], backward)
}
