//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter), as in PyTorch's `AdamW`. At step t ≥ 1:
//!
//! ```text
//! p ← p − lr·λ·p                          (decoupled decay: not part of the gradient moments)
//! m ← β₁·m + (1 − β₁)·g
//! v ← β₂·v + (1 − β₂)·g²
//! p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! `lr` is the step's rate times the parameter's group factor ([`AdamW::with_lr_scale`]; 1 by default).

use super::{check_hyper, restore_buffers, LrScales, Optimizer};
use crate::autodiff::{no_grad, Grads};
use crate::backend::{AdamWItem, AdamWStep};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// AdamW with moments β₁, β₂, ε and decoupled weight decay λ.
pub struct AdamW {
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    /// Per parameter name: (first moment m, second moment v).
    moments: HashMap<String, (Tensor, Tensor)>,
    steps: u64,
    /// Per-parameter learning-rate factors (parameter groups).
    scales: LrScales,
}

impl AdamW {
    /// β₁, β₂ ∈ [0, 1), ε > 0, λ ≥ 0. PyTorch's defaults are (0.9, 0.999, 1e-8, 0.01).
    pub fn new(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Result<AdamW> {
        check_hyper("adamw", "beta1", beta1, (0.0..1.0).contains(&beta1))?;
        check_hyper("adamw", "beta2", beta2, (0.0..1.0).contains(&beta2))?;
        check_hyper("adamw", "eps", eps, eps > 0.0)?;
        check_hyper("adamw", "weight decay", weight_decay, weight_decay >= 0.0)?;
        Ok(AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            moments: HashMap::new(),
            steps: 0,
            scales: LrScales::default(),
        })
    }

    /// Parameters whose names start with `prefix` update at `factor` × the step's learning rate, weight
    /// decay included (a parameter group, as PyTorch's `param_groups` with their own `lr`). `factor` must be
    /// finite and ≥ 0. Groups are matched in the order they were added.
    pub fn with_lr_scale(mut self, prefix: &str, factor: f32) -> Result<AdamW> {
        self.scales.add("adamw", prefix, factor)?;
        Ok(self)
    }
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW::new(0.9, 0.999, 1e-8, 0.01).expect("valid defaults")
    }
}

impl AdamW {
    /// One update, each gradient multiplied by `grad_scale` inside the fused kernel when given.
    fn update(
        &mut self,
        params: &[(String, Tensor)],
        grads: &Grads,
        lr: f32,
        grad_scale: Option<&Tensor>,
    ) -> Result<()> {
        check_hyper("adamw", "learning rate", lr, lr >= 0.0)?;
        let t = i32::try_from(self.steps + 1).map_err(|_| {
            Error::invalid(
                "adamw",
                format!(
                    "step count {} is beyond the bias correction's range",
                    self.steps
                ),
            )
        })?;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        no_grad(|| {
            // Every parameter with a gradient, checked, then one backend call for all of them (the GPU
            // updates many per launch, see `Backend::adamw_update_many`); the results are checked against
            // the same formulas written out in f64 in tests/optim.rs.
            let mut chosen = Vec::new();
            let mut storages = Vec::new();
            for (name, p) in params {
                let Some(g) = grads.get(p) else { continue };
                p.check_device("adamw", g)?;
                if let Some((_, first, _)) = chosen.first() {
                    p.check_device("adamw", first)?;
                }
                if let Some(c) = grad_scale {
                    p.check_device("adamw", c)?;
                }
                let moments = match self.moments.get(name) {
                    Some((m, v)) if m.numel() != p.numel() || v.numel() != p.numel() => {
                        return Err(Error::shape(
                            "adamw",
                            format!(
                                "the moments of `{name}` have shapes {} and {}, the parameter {}",
                                m.shape(),
                                v.shape(),
                                p.shape()
                            ),
                        ))
                    }
                    Some((m, v)) => Some((m.storage(), v.storage())),
                    None => None,
                };
                let h = AdamWStep {
                    lr: lr * self.scales.factor(name),
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    bias1,
                    bias2,
                };
                chosen.push((name, p.clone(), h));
                storages.push((p.storage(), g.storage(), moments));
            }
            let Some((_, first, _)) = chosen.first() else {
                self.steps += 1;
                return Ok(());
            };
            let items: Vec<AdamWItem<'_>> = chosen
                .iter()
                .zip(&storages)
                .map(|((_, p, h), (ps, gs, mv))| AdamWItem {
                    param: ps,
                    grad: gs,
                    moments: mv.as_ref().map(|(m, v)| (m, v)),
                    len: p.numel(),
                    h: *h,
                })
                .collect();
            let scale = grad_scale.map(|c| c.storage());
            let updated = first
                .device()
                .backend()
                .adamw_update_many(&items, scale.as_ref())?;
            for ((name, p, _), (p_new, m_new, v_new)) in chosen.iter().zip(updated) {
                let dev = p.device();
                let (m, v) = (
                    Tensor::from_storage(m_new, p.shape().clone(), dev),
                    Tensor::from_storage(v_new, p.shape().clone(), dev),
                );
                p.assign(&Tensor::from_storage(p_new, p.shape().clone(), dev))?;
                self.moments.insert((*name).clone(), (m, v));
            }
            self.steps += 1;
            Ok(())
        })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &[(String, Tensor)], grads: &Grads, lr: f32) -> Result<()> {
        self.update(params, grads, lr, None)
    }
    /// The clip factor is multiplied in by the fused update kernel: no pass of its own.
    fn step_scaled(
        &mut self,
        params: &[(String, Tensor)],
        grads: &Grads,
        lr: f32,
        grad_scale: &Tensor,
    ) -> Result<()> {
        self.update(params, grads, lr, Some(grad_scale))
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .moments
            .iter()
            .flat_map(|(k, (m, v))| [(format!("m.{k}"), m.clone()), (format!("v.{k}"), v.clone())])
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> Result<()> {
        let restored = restore_buffers("adamw", &["m", "v"], state)?;
        let mut first = HashMap::new();
        let mut second = HashMap::new();
        for (slot, param, t) in restored {
            if slot == "m" {
                first.insert(param, t)
            } else {
                second.insert(param, t)
            };
        }
        let mut moments = HashMap::new();
        for (param, m) in first {
            let v = second.remove(&param).ok_or_else(|| {
                Error::invalid("adamw", format!("state has m.{param} but no v.{param}"))
            })?;
            moments.insert(param, (m, v));
        }
        if let Some(param) = second.keys().next() {
            return Err(Error::invalid(
                "adamw",
                format!("state has v.{param} but no m.{param}"),
            ));
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}
