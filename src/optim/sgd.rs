//! Stochastic gradient descent with momentum and (coupled, L2) weight decay, as in PyTorch's `SGD`:
//!
//! ```text
//! g ← ∇L + λ·p
//! b ← g                      (first step)
//! b ← μ·b + g                (later steps)
//! d ← g + μ·b  (Nesterov)  or  b
//! p ← p − lr·d               (lr: the step's rate times the parameter's group factor)
//! ```

use super::{check_hyper, restore_buffers, LrScales, Optimizer};
use crate::autodiff::{no_grad, Grads};
use crate::error::Result;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// SGD with momentum μ, weight decay λ and optional Nesterov momentum.
pub struct Sgd {
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    buffers: HashMap<String, Tensor>,
    steps: u64,
    /// Per-parameter learning-rate factors (parameter groups).
    scales: LrScales,
}

impl Sgd {
    /// Momentum μ ∈ [0, 1), weight decay λ ≥ 0.
    pub fn new(momentum: f32, weight_decay: f32, nesterov: bool) -> Result<Sgd> {
        check_hyper("sgd", "momentum", momentum, (0.0..1.0).contains(&momentum))?;
        check_hyper("sgd", "weight decay", weight_decay, weight_decay >= 0.0)?;
        Ok(Sgd {
            momentum,
            weight_decay,
            nesterov,
            buffers: HashMap::new(),
            steps: 0,
            scales: LrScales::default(),
        })
    }

    /// Parameters whose names start with `prefix` update at `factor` × the step's learning rate (a parameter
    /// group). `factor` must be finite and ≥ 0.
    pub fn with_lr_scale(mut self, prefix: &str, factor: f32) -> Result<Sgd> {
        self.scales.add("sgd", prefix, factor)?;
        Ok(self)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[(String, Tensor)], grads: &Grads, lr: f32) -> Result<()> {
        check_hyper("sgd", "learning rate", lr, lr >= 0.0)?;
        no_grad(|| {
            for (name, p) in params {
                let Some(grad) = grads.get(p) else { continue };
                let mut g = grad.clone();
                if self.weight_decay != 0.0 {
                    g = g.add(&p.mul_scalar(self.weight_decay)?)?;
                }
                let direction = if self.momentum != 0.0 {
                    let b = match self.buffers.get(name) {
                        Some(b) => b.mul_scalar(self.momentum)?.add(&g)?,
                        None => g.clone(),
                    };
                    self.buffers.insert(name.clone(), b.clone());
                    if self.nesterov {
                        g.add(&b.mul_scalar(self.momentum)?)?
                    } else {
                        b
                    }
                } else {
                    g
                };
                p.assign(&p.sub(&direction.mul_scalar(lr * self.scales.factor(name))?)?)?;
            }
            self.steps += 1;
            Ok(())
        })
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .buffers
            .iter()
            .map(|(k, t)| (format!("momentum.{k}"), t.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> Result<()> {
        let restored = restore_buffers("sgd", &["momentum"], state)?;
        self.buffers = restored.into_iter().map(|(_, p, t)| (p, t)).collect();
        self.steps = steps;
        Ok(())
    }
}
