//! Adapter files, PEFT-style: a directory with `adapter_model.safetensors` and `adapter_config.json`.
//!
//! Keys: `base_model.model.<layer>.lora_A.weight` and `.lora_B.weight` for every adapted layer, and
//! `base_model.model.<param>` for every parameter of `modules_to_save` (e.g. the new `head.fc`). Shapes
//! follow PEFT for a Linear (A (r, in), B (out, r)) and a dense convolution (A (r, Cin, kh, kw), B (Cout, r,
//! 1, 1)); a grouped or depthwise convolution, which PEFT's conv LoRA does not adapt, stores A as
//! (r, Cin/g, kh, kw) and B as (Cout, r, 1, 1), liera's own layout. Either way they are the same matrices as
//! the (r, Cin/g·kh·kw) and (Cout, r) factors of the forward.

use super::adapter::Adapter;
use super::config::PeftConfig;
use crate::error::{Error, Result};
use crate::io::{atomic_write, read_safetensors, write_safetensors, HostTensor};
use crate::nn::Module;
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::Path;

/// The weights file inside an adapter directory.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The config file inside an adapter directory.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

const PREFIX: &str = "base_model.model.";

/// PEFT's stored shapes of A and B for a kernel of shape `w`.
fn stored_shapes(w: &[usize], r: usize) -> (Vec<usize>, Vec<usize>) {
    if w.len() == 4 {
        (vec![r, w[1], w[2], w[3]], vec![w[0], r, 1, 1])
    } else {
        let cols = w.iter().skip(1).product();
        (vec![r, cols], vec![w[0], r])
    }
}

/// Writes the adapters of `model` and its saved modules (per `cfg`) to directory `dir` (created if needed).
/// The config must describe the adapters: the same method, rank and alpha, and targets that select exactly
/// the adapted layers (otherwise the file could not be loaded back, or would load as another model).
pub fn save_adapter(model: &dyn Module, cfg: &PeftConfig, dir: &Path) -> Result<()> {
    let mut mismatch = Vec::new();
    model.visit_adaptable("", &mut |path, layer| {
        let targeted = cfg.targets(path);
        match Adapter::of(layer) {
            Some(_) if !targeted => mismatch.push(format!("{path} is adapted but not a target")),
            None if targeted => mismatch.push(format!("{path} is a target but has no adapter")),
            Some(a) if (a.kind(), a.rank(), a.alpha()) != (cfg.method, cfg.r, cfg.alpha) => {
                mismatch.push(format!(
                    "{path} has a {} adapter of rank {} and alpha {}, the config says {} r={} alpha={}",
                    a.kind().name(),
                    a.rank(),
                    a.alpha(),
                    cfg.method.name(),
                    cfg.r,
                    cfg.alpha
                ))
            }
            _ => {}
        }
    });
    if !mismatch.is_empty() {
        return Err(Error::invalid(
            "save_adapter",
            format!(
                "the config does not describe the model's adapters: {}",
                mismatch.join("; ")
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::io::io_error(dir, e))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut err = Ok(());
    model.visit_adaptable("", &mut |path, layer| {
        let Some(a) = Adapter::of(layer) else { return };
        let (sa, sb) = stored_shapes(layer.weight().shape().dims(), a.rank());
        match (a.a.tensor().reshape(sa), a.b.tensor().reshape(sb)) {
            (Ok(ta), Ok(tb)) => {
                tensors.push((format!("{PREFIX}{path}.lora_A.weight"), ta.detach()));
                tensors.push((format!("{PREFIX}{path}.lora_B.weight"), tb.detach()));
            }
            (Err(e), _) | (_, Err(e)) => err = Err(e),
        }
    });
    err?;
    if tensors.is_empty() {
        return Err(Error::invalid("save_adapter", "the model has no adapters"));
    }
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            tensors.push((format!("{PREFIX}{path}"), p.tensor().detach()));
        }
    });
    write_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &tensors, None)?;
    let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Format {
        path: dir.join(ADAPTER_CONFIG_FILE).display().to_string(),
        msg: e.to_string(),
    })?;
    atomic_write(&dir.join(ADAPTER_CONFIG_FILE), json.as_bytes())
}

/// Reads an adapter directory written by [`save_adapter`] and applies it to `model` (a base model without
/// adapters): attaches the adapters, loads A, B and the saved modules, freezes the rest. Every key and shape
/// is checked against the model first; a mismatch is an error naming the key and both shapes, and leaves
/// the model unchanged. Returns the config.
pub fn load_adapter(model: &mut dyn Module, dir: &Path) -> Result<PeftConfig> {
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| crate::io::io_error(&cfg_path, e))?;
    let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: cfg_path.display().to_string(),
        msg: format!("not a valid adapter config: {e}"),
    })?;
    cfg.validate()?;
    let mut adapted = None;
    model.visit_adaptable("", &mut |path, layer| {
        if layer.adapter().is_some() && adapted.is_none() {
            adapted = Some(path.to_string());
        }
    });
    if let Some(path) = adapted {
        return Err(Error::invalid(
            "load_adapter",
            format!("the model already has adapters ({path}, ...): load onto a base model"),
        ));
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let file: BTreeMap<String, HostTensor> = read_safetensors(&weights_path)?.into_iter().collect();

    // The keys and stored shapes this config implies for this model.
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    model.visit_adaptable("", &mut |path, layer| {
        if cfg.targets(path) {
            let (sa, sb) = stored_shapes(layer.weight().shape().dims(), cfg.r);
            expected.insert(format!("{PREFIX}{path}.lora_A.weight"), sa);
            expected.insert(format!("{PREFIX}{path}.lora_B.weight"), sb);
        }
    });
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            expected.insert(format!("{PREFIX}{path}"), p.shape().dims().to_vec());
        }
    });
    let mut problems = Vec::new();
    for (k, want) in &expected {
        match file.get(k) {
            None => problems.push(format!("missing key `{k}` (expected shape {want:?})")),
            Some(t) if &t.shape != want => problems.push(format!(
                "key `{k}` has shape {:?} in the file, the model needs {want:?}",
                t.shape
            )),
            Some(_) => {}
        }
    }
    for (k, t) in &file {
        if !expected.contains_key(k) {
            problems.push(format!(
                "unexpected key `{k}` (shape {:?}) that matches no adapted layer or saved module of this model",
                t.shape
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Format {
            path: weights_path.display().to_string(),
            msg: format!("adapter does not fit the model: {}", problems.join("; ")),
        });
    }

    super::apply(model, &cfg)?;
    let mut result = Ok(());
    let mut set = |key: String, p: &crate::nn::Param| {
        if result.is_err() {
            return;
        }
        let Some(t) = file.get(&key) else {
            result = Err(Error::Format {
                path: weights_path.display().to_string(),
                msg: format!("missing key `{key}`"),
            });
            return;
        };
        result = Tensor::from_slice(&t.data, p.shape().clone(), p.tensor().device())
            .and_then(|v| p.tensor().assign(&v));
    };
    model.visit_adaptable("", &mut |path, layer| {
        if let Some(a) = Adapter::of(layer) {
            set(format!("{PREFIX}{path}.lora_A.weight"), &a.a);
            set(format!("{PREFIX}{path}.lora_B.weight"), &a.b);
        }
    });
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            set(format!("{PREFIX}{path}"), p);
        }
    });
    result?;
    Ok(cfg)
}
