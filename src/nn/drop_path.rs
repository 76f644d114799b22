//! Stochastic depth (DropPath): in training, each sample's residual branch is dropped with probability p and
//! kept ones are scaled by 1/(1 − p), so the expectation is unchanged; in evaluation it is the identity.
//!
//! y[n, …] = x[n, …] · m_n / (1 − p),  m_n ~ Bernoulli(1 − p).   ∂L/∂x = g · m_n / (1 − p) (from the mul).
//! The masks come from a seeded counter-based generator (seed, call number), so runs are reproducible; the
//! N mask values are uploaded (a small host→device copy, never a readback).

use super::init::{seed_for, InitRng};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};

/// DropPath with drop probability `prob`.
#[derive(Debug)]
pub struct DropPath {
    /// Probability of dropping a sample's residual branch in training.
    pub prob: f32,
    seed: u64,
    calls: AtomicU64,
}

impl DropPath {
    /// `prob` ∈ [0, 1); `seed` fixes the masks.
    pub fn new(prob: f32, seed: u64) -> Result<DropPath> {
        if !(0.0..1.0).contains(&prob) {
            return Err(Error::invalid(
                "DropPath",
                format!("drop probability must be in [0, 1), got {prob}"),
            ));
        }
        Ok(DropPath {
            prob,
            seed,
            calls: AtomicU64::new(0),
        })
    }
    /// Sets the number of training calls seen so far (the mask stream's position), so a resumed run draws
    /// the masks an uninterrupted one would.
    pub fn seek(&self, calls: u64) {
        self.calls.store(calls, Ordering::Relaxed);
    }
    /// Whether [`DropPath::forward`] changes anything (training with a drop probability above 0).
    pub fn is_active(&self, train: bool) -> bool {
        train && self.prob != 0.0
    }
    /// Drops whole samples of `x` (N, …) in training mode; the identity otherwise or when p = 0.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !self.is_active(train) {
            return Ok(x.clone());
        }
        let Some(&n) = x.dims().first() else {
            return Err(Error::shape(
                "DropPath",
                format!(
                    "expects a batch axis (N, …), got a tensor of shape {}",
                    x.shape()
                ),
            ));
        };
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = InitRng::new(seed_for(self.seed, &call.to_string()));
        let keep = 1.0 - self.prob as f64;
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if rng.next_f64() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mut shape = vec![1; x.rank()];
        shape[0] = n;
        x.mul(&Tensor::from_slice(&mask, shape, x.device())?)
    }
}
