//! Permute: reorders axes (y's axis k is x's axis perm\[k\]); data is copied into the new order.
//!
//! Shape algebra: y.dims\[k\] = x.dims\[perm\[k\]\].
//! Backward: ∂L/∂x = permute(g, perm⁻¹) where perm⁻¹\[perm\[k\]\] = k.

use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

impl Tensor {
    /// Reorders axes: the result's axis k is this tensor's axis `perm[k]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm
                .iter()
                .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the {rank} axes of {}",
                    self.shape()
                ),
            ));
        }
        let out = Shape::new(perm.iter().map(|&p| self.dims()[p]).collect::<Vec<_>>());
        let storage = self
            .device()
            .backend()
            .permute(&self.storage(), self.dims(), perm)?;
        let mut inverse = vec![0; rank];
        for (k, &p) in perm.iter().enumerate() {
            inverse[p] = k;
        }
        Ok(Tensor::from_op(
            "permute",
            storage,
            out,
            &[self],
            move |g| Ok(vec![Some(g.permute(&inverse)?)]),
        ))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(Error::invalid(
                "transpose",
                format!("axes {a} and {b} out of range for shape {}", self.shape()),
            ));
        }
        perm.swap(a, b);
        self.permute(&perm)
    }
}
