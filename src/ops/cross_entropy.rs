//! Cross-entropy of class logits against integer labels, averaged over the batch.
//!
//! Forward: L = −(1/N) Σ_n log softmax(z_n)\[t_n\] for logits z of shape (N, K) and labels t_n ∈ [0, K).
//! Computed as −(1/N) Σ_{n,k} onehot(t)_{nk} · log_softmax(z)_{nk}, so the derivative comes from the
//! composed ops: ∂L/∂z_{nk} = (softmax(z_n)_k − onehot(t_n)_k) / N.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Mean cross-entropy of logits (N, K) against `labels` (N entries, each < K).
    pub fn cross_entropy(&self, labels: &[usize]) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        if self.rank() != 2 {
            return Err(Error::shape(
                OP,
                format!("logits must be (N, classes), got {}", self.shape()),
            ));
        }
        let (n, k) = (self.dims()[0], self.dims()[1]);
        if labels.len() != n || n == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "{} labels for logits {} (need one per row, at least one row)",
                    labels.len(),
                    self.shape()
                ),
            ));
        }
        if let Some((i, &bad)) = labels.iter().enumerate().find(|(_, &t)| t >= k) {
            return Err(Error::invalid(
                OP,
                format!("label {bad} at position {i} is out of range for {k} classes"),
            ));
        }
        let mut onehot = vec![0.0f32; n * k];
        for (row, &t) in labels.iter().enumerate() {
            onehot[row * k + t] = -1.0 / n as f32;
        }
        let weights = Tensor::from_slice(&onehot, [n, k], self.device())?;
        self.log_softmax(1)?.mul(&weights)?.sum_all()
    }
}
