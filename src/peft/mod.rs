//! Parameter-efficient fine-tuning: LoRA, LieRA (exact) and LieRA first-order adapters on the Conv2d (any
//! groups, depthwise included) and Linear layers of a [`Module`].
//!
//! An [`Adapter`] is nn's [`WeightReparam`](crate::nn::WeightReparam): the layers hold it behind that seam
//! and only ask it for W′ and its parameters; everything here gets the concrete adapter back with
//! [`Adapter::of`] (other reparameterisations are left alone, but no adapter is attached over one).
//!
//! - [`Adapter`] (in `adapter.rs`): the math of W' = W ⊙ exp(s·B·A) and its relatives, with the derivation.
//! - [`apply`]: freezes the model, attaches adapters to the layers matched by [`PeftConfig::target_modules`],
//!   and unfreezes [`PeftConfig::modules_to_save`]; frozen weights are constant leaves (no gradient buffer).
//! - [`merge`] / [`unmerge`] / [`merge_and_unload`]: materialise W' once (exact), restore W bit-exactly.
//! - [`trainable_report`]: trainable parameters per layer and in total, and zero entries of LieRA kernels.
//! - [`save_adapter`] / [`load_adapter`]: adapter folders in Hugging Face PEFT's format (LoRA as `LORA`,
//!   first-order LieRA as PEFT's `HIRA`, exact LieRA as liera's own `LIERA`), readable by
//!   `PeftModel.from_pretrained`; PEFT's own LoRA and HiRA folders and liera's earlier format read back.

mod adapter;
mod config;
mod regex;
mod report;
mod save;
pub mod target;

pub use adapter::{
    adapter_method_name, factor_specs, kron, lokr_factorization, matrix_view, parse_adapter_method,
    Adapter, AdapterKind, AdapterSpec, DeltaKind, FactorSpec,
};
pub use config::{PeftConfig, FORMAT_VERSION};
pub use report::{trainable_report, LayerReport, TrainableReport};
pub use save::{load_adapter, save_adapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

use crate::error::{Error, Result};
use crate::nn::init::{seed_for, InitRng};
use crate::nn::{Module, Param};

/// Applies `cfg` to `model`: validates it, freezes every base parameter, attaches a fresh adapter (B = 0, so
/// the network's function is unchanged) to every matched layer, and unfreezes the saved modules. Returns the
/// trainable-parameter report. On error the model is left unchanged.
///
/// Errors: rank 0, α ≤ 0, a target or saved-module pattern that matches nothing, a rank above
/// min(rows, cols) of a matched kernel, a layer that already has an adapter or is both a target and saved.
///
/// ```
/// use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
/// use liera::peft::{self, AdapterKind, PeftConfig};
/// use liera::nn::Classifier;
/// use liera::{no_grad, Device, Tensor};
/// let dev = Device::cpu();
/// // A tiny ConvNeXt: 1×16×16 images, two stages of widths 8 and 16, one block each, 3 classes.
/// let cfg = ConvNeXtConfig { in_chans: 1, num_classes: 3, dims: vec![8, 16], depths: vec![1, 1],
///                            ..ConvNeXtConfig::atto() };
/// let mut model = ConvNeXt::new(cfg.with_seed(1), &dev)?;
/// let x = Tensor::from_slice(&[0.3; 2 * 16 * 16], [2, 1, 16, 16], &dev)?;
/// let before = no_grad(|| model.forward(&x, false))?.to_vec()?;
///
/// let peft_cfg = PeftConfig::new(AdapterKind::Liera, 2, 4.0, "conv_dw,mlp.fc1,mlp.fc2")
///     .with_modules_to_save("head.fc");
/// let report = peft::apply(&mut model, &peft_cfg)?;
/// assert_eq!(report.rows.iter().filter(|r| r.method == "liera").count(), 6); // 3 layers × 2 blocks
/// // B = 0, so the adapted network computes exactly what the base did.
/// assert_eq!(no_grad(|| model.forward(&x, false))?.to_vec()?, before);
/// // Only the adapter factors and the head train.
/// let trainable: usize = model.trainable_parameters().iter().map(|(_, t)| t.numel()).sum();
/// assert_eq!(trainable, report.trainable);
/// assert!(trainable < model.num_parameters() / 4);
/// # Ok::<(), liera::Error>(())
/// ```
pub fn apply(model: &mut dyn Module, cfg: &PeftConfig) -> Result<TrainableReport> {
    cfg.validate()?;
    // Plan first (immutable pass), so errors leave the model untouched.
    let mut layers: Vec<String> = Vec::new();
    let mut all_layers: Vec<String> = Vec::new();
    let mut problem: Option<Error> = None;
    model.visit_adaptable("", &mut |path, layer| {
        all_layers.push(path.to_string());
        if cfg.targets(path) {
            if layer.adapter().is_some() && problem.is_none() {
                problem = Some(Error::invalid(
                    "peft",
                    format!("{path}: layer already has an adapter"),
                ));
            }
            layers.push(path.to_string());
        }
    });
    if let Some(e) = problem {
        return Err(e);
    }
    for p in &cfg.target_modules {
        if !all_layers.iter().any(|l| target::matches(p, l)) {
            let examples: Vec<&str> = all_layers.iter().take(6).map(String::as_str).collect();
            return Err(Error::invalid(
                "peft",
                format!(
                    "target pattern `{p}` matches no Conv2d or Linear layer (layers are e.g. {})",
                    examples.join(", ")
                ),
            ));
        }
    }
    let mut saved_params: Vec<String> = Vec::new();
    model.visit("", &mut |path, _| {
        if cfg.saves(path) {
            saved_params.push(path.to_string());
        }
    });
    for p in &cfg.modules_to_save {
        if !saved_params.iter().any(|s| target::matches_param(p, s)) {
            return Err(Error::invalid(
                "peft",
                format!("modules_to_save pattern `{p}` matches no parameter"),
            ));
        }
    }
    if let Some(l) = layers.iter().find(|l| {
        saved_params.iter().any(|s| {
            s.strip_prefix(l.as_str())
                .is_some_and(|r| r.starts_with('.'))
        })
    }) {
        return Err(Error::invalid(
            "peft",
            format!("{l} is both an adapter target and in modules_to_save; choose one"),
        ));
    }
    // Build every adapter before touching the model.
    let mut adapters = Vec::new();
    let mut built: Result<()> = Ok(());
    model.visit_adaptable("", &mut |path, layer| {
        if built.is_err() || !layers.iter().any(|l| l == path) {
            return;
        }
        let w = layer.weight().tensor();
        let mut rng = InitRng::new(seed_for(cfg.seed, path));
        match Adapter::build(cfg.spec(), path, w.shape(), &mut rng, w.device()) {
            Ok(a) => adapters.push((path.to_string(), a)),
            Err(e) => built = Err(e),
        }
    });
    built?;
    // Commit: freeze all, attach, unfreeze the saved modules.
    model.set_trainable(false);
    let mut adapters: std::collections::HashMap<String, Adapter> = adapters.into_iter().collect();
    model.visit_adaptable_mut("", &mut |path, layer| {
        if let Some(a) = adapters.remove(path) {
            *layer.adapter_mut() = Some(Box::new(a));
        }
    });
    if let Some(path) = adapters.keys().next() {
        return Err(Error::invalid(
            "peft",
            format!("{path}: the model's mutable walk does not visit this layer (a Module bug)"),
        ));
    }
    model.visit_mut("", &mut |path, p| {
        if saved_params.iter().any(|s| s == path) {
            p.set_trainable(true);
        }
    });
    trainable_report(model)
}

/// Runs `f` on every adapted layer's adapter and weight, after checking that the model has adapters and
/// that none is in the state `refuse` names (Some(true): merged, Some(false): active), so that an error
/// leaves every layer as it was. The adapter stays attached whatever `f` returns.
fn for_each_adapter(
    model: &mut dyn Module,
    op: &'static str,
    refuse: Option<bool>,
    f: &mut dyn FnMut(&str, &mut Adapter, &mut Param) -> Result<()>,
) -> Result<usize> {
    let (mut n, mut wrong) = (0, None);
    model.visit_adaptable("", &mut |path, layer| {
        if let Some(a) = Adapter::of(layer) {
            n += 1;
            if Some(a.is_merged()) == refuse && wrong.is_none() {
                wrong = Some(path.to_string());
            }
        }
    });
    if n == 0 {
        return Err(Error::invalid(op, "the model has no adapters"));
    }
    if let Some(path) = wrong {
        let state = if refuse == Some(true) {
            "already merged"
        } else {
            "not merged"
        };
        return Err(Error::invalid(
            op,
            format!("{path}: adapter is {state}; nothing was changed"),
        ));
    }
    let mut result = Ok(());
    model.visit_adaptable_mut("", &mut |path, layer| {
        if result.is_ok() && Adapter::of(layer).is_some() {
            // Taken out of its slot for the call, so that `f` can borrow the weight mutably beside it.
            let mut slot = layer.adapter_mut().take();
            if let Some(a) = slot
                .as_deref_mut()
                .and_then(|r| r.downcast_mut::<Adapter>())
            {
                result = f(path, a, layer.weight_mut());
            }
            *layer.adapter_mut() = slot;
        }
    });
    result.map(|()| n)
}

/// Merges every adapter: each layer's weight becomes W' (computed once, exactly as the forward does) and the
/// adapter goes dormant, keeping W for [`unmerge`]. Returns the number of merged layers. Errors, changing
/// nothing, if an adapter is already merged.
pub fn merge(model: &mut dyn Module) -> Result<usize> {
    for_each_adapter(model, "merge", Some(true), &mut |path, a, w| {
        a.merge_into(path, w)
    })
}

/// Undoes [`merge`]: every weight is restored bit-exactly from the kept copy and the adapters are active
/// (and trainable, if they were) again. Errors, changing nothing, if an adapter is not merged.
pub fn unmerge(model: &mut dyn Module) -> Result<usize> {
    for_each_adapter(model, "unmerge", Some(false), &mut |path, a, w| {
        a.unmerge_from(path, w)
    })
}

/// Merges (if not merged yet) and removes every adapter: the network is a plain network again, costing
/// what the base costs. If a merge fails, the adapters stay attached (those before it merged).
pub fn merge_and_unload(model: &mut dyn Module) -> Result<usize> {
    for_each_adapter(model, "merge_and_unload", None, &mut |path, a, w| {
        if !a.is_merged() {
            a.merge_into(path, w)?;
        }
        Ok(())
    })?;
    // Every adapter is merged now: drop them.
    let mut n = 0;
    model.visit_adaptable_mut("", &mut |_, layer| {
        if Adapter::of(layer).is_some() {
            *layer.adapter_mut() = None;
            n += 1;
        }
    });
    Ok(n)
}
