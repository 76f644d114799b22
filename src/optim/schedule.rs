//! Cosine learning-rate schedule with linear warmup:
//!
//! ```text
//! lr(t) = base · (t + 1) / warmup                                   for t < warmup
//! lr(t) = min + ½ (base − min) (1 + cos(π · (t − warmup) / (total − warmup)))   afterwards
//! ```
//! and `min` once t ≥ total.

use crate::error::{Error, Result};

/// A cosine schedule over `total` steps with `warmup` linear warmup steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Learning rate at the end of warmup.
    pub base_lr: f32,
    /// Learning rate the cosine decays to (reached at `total`).
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Total steps of the schedule.
    pub total: u64,
}

impl CosineSchedule {
    /// Checks 0 ≤ min ≤ base, warmup ≤ total, total > 0.
    pub fn new(base_lr: f32, min_lr: f32, warmup: u64, total: u64) -> Result<CosineSchedule> {
        let ok = base_lr.is_finite()
            && min_lr.is_finite()
            && 0.0 <= min_lr
            && min_lr <= base_lr
            && warmup <= total
            && total > 0;
        if !ok {
            return Err(Error::invalid(
                "cosine schedule",
                format!("need 0 ≤ min_lr ≤ base_lr, warmup ≤ total, total > 0; got base_lr {base_lr}, min_lr {min_lr}, warmup {warmup}, total {total}"),
            ));
        }
        Ok(CosineSchedule {
            base_lr,
            min_lr,
            warmup,
            total,
        })
    }

    /// The learning rate for step `t` (0-based).
    pub fn lr(&self, t: u64) -> f32 {
        if t < self.warmup {
            return self.base_lr * (t + 1) as f32 / self.warmup as f32;
        }
        if t >= self.total {
            return self.min_lr;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let progress = (t - self.warmup) as f64 / span;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_lr as f64 + (self.base_lr - self.min_lr) as f64 * cos) as f32
    }
}
