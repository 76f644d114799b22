//! The squared global norm of several tensors, as gradient clipping needs it:
//!
//! ```text
//!   y = Σ_k Σ_i x_k[i]²        (a scalar: shape [])
//!   ∂L/∂x_k = 2·g·x_k          (g = ∂L/∂y)
//! ```
//!
//! One backend call for any number of tensors ([`Backend::sum_squares`](crate::backend::Backend): on the
//! GPU, multi.wgsl's sum_squares_multi takes as many tensors per launch as the adapter's storage bindings
//! allow, each workgroup summing one chunk, and one more launch adds the chunks), instead of a square, a sum
//! and an add per tensor: for the atto model's 128 gradients, 6 launches on a 32-binding adapter instead of
//! about 380.

use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

impl Tensor {
    /// Σ_k Σ_i x_k\[i\]² over `tensors` (all on one device; none: an error).
    pub fn sum_squares_all(tensors: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::invalid("sum_squares_all", "no tensors given"));
        };
        for t in &tensors[1..] {
            first.check_device("sum_squares_all", t)?;
        }
        let storages: Vec<_> = tensors.iter().map(|t| (t.storage(), t.numel())).collect();
        let refs: Vec<_> = storages.iter().map(|(s, n)| (s, *n)).collect();
        let y = first.device().backend().sum_squares(&refs)?;
        let kept: Vec<Option<Tensor>> = tensors
            .iter()
            .map(|t| t.requires_grad().then(|| t.detach()))
            .collect();
        Ok(Tensor::from_op(
            "sum_squares_all",
            y,
            Shape::new(Vec::<usize>::new()),
            tensors,
            move |g| {
                kept.iter()
                    .map(|x| x.as_ref().map(|x| x.mul(&g.mul_scalar(2.0)?)).transpose())
                    .collect()
            },
        ))
    }
}
