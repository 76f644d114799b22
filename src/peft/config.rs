//! The adapter configuration, saved beside the adapter weights as `adapter_config.json`.

use super::adapter::AdapterKind;
use super::target::parse_patterns;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What to adapt and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// `lora`, `liera` (exact, the default) or `liera_first_order`.
    pub method: AdapterKind,
    /// Rank r of ΔW = (α/r)·B·A.
    pub r: usize,
    /// α (the scale is α/r).
    pub alpha: f32,
    /// Module-path patterns of the layers to adapt (see [`crate::peft::target`]).
    pub target_modules: Vec<String>,
    /// Module-path patterns of modules trained in full (e.g. a new classifier `head.fc`).
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// Seed of the A initialisation.
    #[serde(default)]
    pub seed: u64,
}

impl PeftConfig {
    /// A config from comma-separated target patterns (`"conv_dw,mlp.fc1,mlp.fc2"`), no saved modules, seed 0.
    pub fn new(method: AdapterKind, r: usize, alpha: f32, targets: &str) -> PeftConfig {
        PeftConfig {
            method,
            r,
            alpha,
            target_modules: parse_patterns(targets),
            modules_to_save: Vec::new(),
            seed: 0,
        }
    }
    /// True if the parameter at `path` is one of `modules_to_save` (trained fully and saved with the
    /// adapter).
    pub fn saves(&self, path: &str) -> bool {
        self.modules_to_save
            .iter()
            .any(|p| super::target::matches_param(p, path))
    }
    /// True if the layer at `path` is an adapter target.
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules
            .iter()
            .any(|p| super::target::matches(p, path))
    }
    /// Sets the fully trained modules from a comma-separated list (`"head.fc"`).
    pub fn with_modules_to_save(mut self, list: &str) -> Self {
        self.modules_to_save = parse_patterns(list);
        self
    }
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Checks what can be checked without a model: r ≥ 1, α > 0, at least one target.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("peft", "rank r must be at least 1, got 0"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid(
                "peft",
                format!("alpha must be positive and finite, got {}", self.alpha),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid("peft", "no target modules given"));
        }
        Ok(())
    }
}
