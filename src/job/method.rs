//! Method policy: what each fine-tuning method trains, its learning-rate defaults and search ladder, and
//! the fine-tuning run built on it.

use super::checkpoint::Checkpointing;
use super::create_dir;
use super::run::{train_and_evaluate, RunOptions, RunResult, TaskData};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::{load_model, save_model};
use crate::nn::{ConvNeXt, ConvNeXtConfig, Module};
use crate::peft::{
    self, adapter_method_name, parse_adapter_method, AdapterKind, DeltaKind, PeftConfig,
    TrainableReport,
};
use std::path::Path;

/// The path prefix of the classifier's parameters (`head.fc.weight`, `head.fc.bias`): what the linear probe
/// trains, what adapter methods train in full beside their adapters, and what `RunOptions::head_lr` applies
/// to.
pub const HEAD_PREFIX: &str = "head.fc.";

/// How to fine-tune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Every parameter trains.
    Full,
    /// Only the new classifier (head.fc) trains.
    LinearProbe,
    /// Adapters on the target layers (plus the new classifier): a composition with a generator of ΔW.
    Adapter(AdapterKind, DeltaKind),
}

impl Method {
    /// The five methods of the comparison, in table order.
    pub const ALL: [Method; 5] = [
        Method::Full,
        Method::LinearProbe,
        Method::Adapter(AdapterKind::Lora, DeltaKind::Lora),
        Method::Adapter(AdapterKind::Liera, DeltaKind::Lora),
        Method::Adapter(AdapterKind::LieraFirstOrder, DeltaKind::Lora),
    ];
    /// A LoRA-generated adapter method.
    pub fn lora(kind: AdapterKind) -> Method {
        Method::Adapter(kind, DeltaKind::Lora)
    }
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::LinearProbe => "linear",
            Method::Adapter(k, d) => adapter_method_name(k, d),
        }
    }
    /// Parses a method name: `full`, `linear`, or an adapter (`lora`, `liera`, `liera_first_order`, and
    /// with another generator `loha`, `lokr`, `liera_loha`, `liera_first_order_lokr`, …).
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "full" => Ok(Method::Full),
            "linear" | "linear_probe" => Ok(Method::LinearProbe),
            other => parse_adapter_method(other)
                .map(|(k, d)| Method::Adapter(k, d))
                .map_err(|_| {
                    Error::invalid(
                        "method",
                        format!(
                            "unknown method `{other}` (known: full, linear, lora, liera, liera_first_order, \
                             and with LoHa or LoKr generating ΔW: loha, lokr, liera_loha, liera_lokr, \
                             liera_first_order_loha, liera_first_order_lokr)"
                        ),
                    )
                }),
        }
    }
    /// `self` with its generator replaced by `delta` (the `--delta` flag): an error for a method without
    /// adapters, or one whose name already chose another generator.
    pub fn with_delta(self, delta: DeltaKind) -> Result<Method> {
        match self {
            Method::Adapter(k, DeltaKind::Lora) => Ok(Method::Adapter(k, delta)),
            Method::Adapter(_, d) if d == delta => Ok(self),
            Method::Adapter(_, d) => Err(Error::invalid(
                "method",
                format!(
                    "--delta {} contradicts method `{}`, which generates ΔW with {}",
                    delta.name(),
                    self.name(),
                    d.name()
                ),
            )),
            _ => Err(Error::invalid(
                "method",
                format!(
                    "--delta {} needs an adapter method, not `{}`",
                    delta.name(),
                    self.name()
                ),
            )),
        }
    }
    /// The starting ladder of peak learning rates for the tuning ([`super::tune::widening_search`] widens it
    /// while the best rate is at an end): three rungs centred where each method's rate has landed on the
    /// clothing task (full ≈ 3·10⁻³, a lone head ≈ 3·10⁻², additive adapters ≈ 2·10⁻², LieRA ≈ 5·10⁻²).
    /// LieRA changes each weight in proportion to |W| (W ⊙ exp(ΔW) and W + W ⊙ ΔW), so its useful step
    /// sizes sit higher than LoRA's, which is why a shared learning rate would not be a fair comparison.
    pub fn lr_grid(self) -> Vec<f32> {
        match self {
            Method::Full => vec![1e-3, 3e-3, 1e-2],
            Method::LinearProbe => vec![1e-2, 3e-2, 1e-1],
            Method::Adapter(AdapterKind::Lora, _) => vec![1e-2, 2e-2, 5e-2],
            Method::Adapter(AdapterKind::Liera | AdapterKind::LieraFirstOrder, _) => {
                vec![2e-2, 5e-2, 1e-1]
            }
        }
    }
    /// The default peak learning rate: adapters and a lone head take larger steps than full fine-tuning,
    /// as in the PEFT literature.
    pub fn default_lr(self) -> f32 {
        match self {
            Method::Full => 1e-3,
            Method::LinearProbe => 1e-2,
            Method::Adapter(..) => 5e-3,
        }
    }
}

/// What the adapter methods adapt and with which rank.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Rank r of ΔW = (α/r)·B·A.
    pub rank: usize,
    /// α (the scale is α/r).
    pub alpha: f32,
    /// Comma-separated module-path patterns.
    pub targets: String,
}

impl Default for AdapterOptions {
    /// Rank 8, α = 8 (scale 1), on every depthwise and pointwise layer of the blocks.
    fn default() -> Self {
        AdapterOptions {
            rank: 8,
            alpha: 8.0,
            targets: "conv_dw,mlp.fc1,mlp.fc2".into(),
        }
    }
}

/// Builds the model to fine-tune: `config`'s architecture with `base` weights loaded (any class count), a
/// fresh classifier for `classes`, and what trains set by `method`. Returns the model, the trainable report
/// and the adapter config (adapter methods only).
pub fn prepare_finetune(
    config: &ConvNeXtConfig,
    base: &Path,
    classes: usize,
    method: Method,
    adapter: &AdapterOptions,
    seed: u64,
    device: &Device,
) -> Result<(ConvNeXt, TrainableReport, Option<PeftConfig>)> {
    let mut model = ConvNeXt::new(config.clone(), device)?;
    load_model(&mut model, base)?;
    model.replace_head(classes, seed ^ 0x4EAD)?;
    let peft_cfg = match method {
        Method::Full => {
            model.set_trainable(true);
            None
        }
        Method::LinearProbe => {
            model.set_trainable(false);
            model.visit_mut("", &mut |path, p| {
                if path.starts_with(HEAD_PREFIX) {
                    p.set_trainable(true)
                }
            });
            None
        }
        Method::Adapter(kind, delta) => {
            let cfg = PeftConfig::new(kind, adapter.rank, adapter.alpha, &adapter.targets)
                .with_delta(delta)
                .with_modules_to_save("head.fc")
                .with_seed(seed);
            peft::apply(&mut model, &cfg)?;
            Some(cfg)
        }
    };
    let report = peft::trainable_report(&model)?;
    Ok((model, report, peft_cfg))
}

/// Fine-tunes `base` weights (of `config`'s architecture) on `data` with one method and evaluates on
/// `data.test`; saves the adapter (adapter methods) or the model under `save_dir`; checkpoints and resumes
/// as `ckpt` says.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    config: &ConvNeXtConfig,
    base: &Path,
    data: &TaskData,
    method: Method,
    adapter: &AdapterOptions,
    opts: &RunOptions,
    device: &Device,
    save_dir: Option<&Path>,
    ckpt: &Checkpointing,
) -> Result<RunResult> {
    let (mut model, _, peft_cfg) = prepare_finetune(
        config,
        base,
        data.train.classes(),
        method,
        adapter,
        opts.seed,
        device,
    )?;
    model.set_grad_checkpointing(opts.grad_checkpointing);
    let result = train_and_evaluate(&model, method.name(), data, opts, device, ckpt)?;
    if let Some(dir) = save_dir {
        match &peft_cfg {
            Some(cfg) => peft::save_adapter(&model, cfg, dir)?,
            None => {
                create_dir(dir)?;
                save_model(&model, &dir.join("model.safetensors"))?
            }
        }
    }
    Ok(result)
}
