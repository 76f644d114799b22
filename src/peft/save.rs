//! Adapter files as Hugging Face PEFT writes them: a directory with `adapter_model.safetensors` and
//! `adapter_config.json` (PEFT's schema, see [`crate::peft::PeftConfig`]'s module for the mapping of the
//! methods to PEFT types).
//!
//! Keys: `base_model.model.<layer>.<factor>` with PEFT's factor names ([`crate::peft::factor_specs`]):
//! `lora_A.weight` and `lora_B.weight` for LoRA-generated adapters, except first-order LieRA, written as
//! PEFT's HiRA (`hira_A`, `hira_B`, with s folded into B); `hada_w1_a`, … for LoHa; `lokr_w1`, … for LoKr;
//! for every adapted layer, and `base_model.model.<param>` for every parameter of `modules_to_save`
//! (e.g. the new `head.fc`), as PEFT names them. Shapes follow PEFT for a Linear (A (r, in), B (out, r)) and a
//! dense convolution (A (r, Cin, kh, kw), B (Cout, r, 1, 1)); a grouped or depthwise convolution, which
//! PEFT's conv LoRA does not adapt as a kernel update, stores A as (r, Cin/g, kh, kw) and B as
//! (Cout, r, 1, 1), liera's own layout. Either way they are the same matrices as the (r, Cin/g·kh·kw) and
//! (Cout, r) factors of the forward.

use super::adapter::{adapter_method_name, factor_specs, Adapter};
use super::config::{self, PeftConfig};
use super::target::{exact_regex, matches, matches_param, REGEX_PREFIX};
use crate::error::{Error, Result};
use crate::io::{atomic_write, read_safetensors, write_safetensors, HostTensor};
use crate::nn::Module;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The weights file inside an adapter directory.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The config file inside an adapter directory.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

const PREFIX: &str = "base_model.model.";

/// Every module path of `model`: each adaptable layer and every dotted prefix of a parameter path.
fn module_paths(model: &dyn Module) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    model.visit("", &mut |path, _| {
        for (i, c) in path.char_indices() {
            if c == '.' {
                all.insert(path[..i].to_string());
            }
        }
    });
    model.visit_adaptable("", &mut |path, _| {
        all.insert(path.to_string());
    });
    all
}

/// `t` with every value multiplied by `factor` in f64 (rounded once to f32).
fn scaled(t: &Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 {
        return Ok(t.detach());
    }
    let v: Vec<f32> = t
        .to_vec()?
        .iter()
        .map(|&x| (x as f64 * factor) as f32)
        .collect();
    Tensor::from_slice(&v, t.shape().clone(), t.device())
}

/// Writes the adapters of `model` and its saved modules (per `cfg`) to directory `dir` (created if needed).
/// The config must describe the adapters: the same method, rank, alpha and scaling, and targets that select
/// exactly the adapted layers (otherwise the file could not be loaded back, or would load as another model).
pub fn save_adapter(model: &dyn Module, cfg: &PeftConfig, dir: &Path) -> Result<()> {
    let mut mismatch = Vec::new();
    let mut adapted: Vec<String> = Vec::new();
    model.visit_adaptable("", &mut |path, layer| {
        let targeted = cfg.targets(path);
        match Adapter::of(layer) {
            Some(_) if !targeted => mismatch.push(format!("{path} is adapted but not a target")),
            None if targeted => mismatch.push(format!("{path} is a target but has no adapter")),
            Some(a) if a.spec() != cfg.spec() => {
                let spec = a.spec();
                mismatch.push(format!(
                    "{path} has a {} adapter of rank {} and alpha {}{}, the config says {} r={} alpha={}{}",
                    adapter_method_name(spec.kind, spec.delta),
                    spec.rank,
                    spec.alpha,
                    if spec.rslora { " (rsLoRA)" } else { "" },
                    cfg.method_name(),
                    cfg.r,
                    cfg.alpha,
                    if cfg.use_rslora { " (rsLoRA)" } else { "" },
                ))
            }
            _ => {}
        }
        if Adapter::of(layer).is_some() {
            adapted.push(path.to_string());
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
    if adapted.is_empty() {
        return Err(Error::invalid("save_adapter", "the model has no adapters"));
    }
    // PEFT's `target_modules`: a regex that selects exactly the adapted layers among all modules.
    let all = module_paths(model);
    let target_regex = exact_regex(&adapted, &all);
    let pattern = format!("{REGEX_PREFIX}{target_regex}");
    if let Some(m) = all
        .iter()
        .find(|m| matches(&pattern, m) != adapted.contains(m))
    {
        return Err(Error::invalid(
            "save_adapter",
            format!("internal error: the target regex `{target_regex}` misselects `{m}`"),
        ));
    }
    let layout = config::layout(cfg);

    std::fs::create_dir_all(dir).map_err(|e| crate::io::io_error(dir, e))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut err = Ok(());
    model.visit_adaptable("", &mut |path, layer| {
        let Some(a) = Adapter::of(layer) else { return };
        if err.is_err() {
            return;
        }
        for (spec, p) in a.factors() {
            match p
                .tensor()
                .reshape(spec.stored.clone())
                .and_then(|t| scaled(&t, layout.factor(spec.name)))
            {
                Ok(t) => tensors.push((format!("{PREFIX}{path}.{}", layout.key(spec.name)), t)),
                Err(e) => err = Err(e),
            }
        }
    });
    err?;
    let mut save_modules: Vec<String> = Vec::new();
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            tensors.push((format!("{PREFIX}{path}"), p.tensor().detach()));
            let module = path.rsplit_once('.').map_or(path, |(m, _)| m).to_string();
            if !save_modules.contains(&module) {
                save_modules.push(module);
            }
        }
    });
    write_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &tensors, None)?;
    let json = config::to_json(cfg, &target_regex, &save_modules);
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Format {
        path: dir.join(ADAPTER_CONFIG_FILE).display().to_string(),
        msg: e.to_string(),
    })?;
    atomic_write(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())
}

/// Reads an adapter directory written by [`save_adapter`], by an earlier liera, or by PEFT (LoRA, LoHa, LoKr
/// or HiRA), and applies it to `model` (a base model without adapters): attaches the adapters, loads their
/// factors and the saved modules, freezes the rest. Every key and shape is checked against the model first; a mismatch is an error
/// naming the key and both shapes, and leaves the model unchanged. Returns the config.
pub fn load_adapter(model: &mut dyn Module, dir: &Path) -> Result<PeftConfig> {
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| crate::io::io_error(&cfg_path, e))?;
    let bad_config = |msg: String| Error::Format {
        path: cfg_path.display().to_string(),
        msg: format!("not an adapter config liera can read: {msg}"),
    };
    let file_cfg = config::parse(&text).map_err(bad_config)?;
    let (mut cfg, layout) = (file_cfg.cfg, file_cfg.layout);
    if file_cfg.from_peft {
        // PEFT requires only that some entry of a list selects something; liera requires each to.
        let (mut layers, mut params) = (Vec::new(), Vec::new());
        model.visit_adaptable("", &mut |path, _| layers.push(path.to_string()));
        model.visit("", &mut |path, _| params.push(path.to_string()));
        let keep = |ps: &mut Vec<String>, hit: &dyn Fn(&str) -> bool| {
            if ps.iter().any(|p| hit(p)) {
                ps.retain(|p| hit(p));
            }
        };
        keep(&mut cfg.target_modules, &|p| {
            layers.iter().any(|l| matches(p, l))
        });
        keep(&mut cfg.modules_to_save, &|p| {
            params.iter().any(|l| matches_param(p, l))
        });
    }
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
    // liera's own patterns must select what PEFT's fields select (both are in the file).
    if let Some((targets, saves)) = &file_cfg.peft_selection {
        let mut differ = None;
        model.visit_adaptable("", &mut |path, _| {
            if differ.is_none() && cfg.targets(path) != targets.iter().any(|t| matches(t, path)) {
                differ = Some(format!("target_modules (at layer `{path}`)"));
            }
        });
        model.visit("", &mut |path, _| {
            if differ.is_none() && cfg.saves(path) != saves.iter().any(|t| matches_param(t, path)) {
                differ = Some(format!("modules_to_save (at parameter `{path}`)"));
            }
        });
        if let Some(what) = differ {
            return Err(bad_config(format!(
                "PEFT's {what} and liera's record under `liera` select different layers: the file was \
                 edited; delete the `liera` key to read it as a plain PEFT adapter"
            )));
        }
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let file: BTreeMap<String, HostTensor> = read_safetensors(&weights_path)?.into_iter().collect();

    // The keys and stored shapes this config implies for this model.
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut a_keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut spec_error = None;
    model.visit_adaptable("", &mut |path, layer| {
        if !cfg.targets(path) || spec_error.is_some() {
            return;
        }
        let w = layer.weight().shape();
        match factor_specs(cfg.delta, path, w, cfg.r, cfg.decompose_factor) {
            Ok(specs) => {
                for spec in specs {
                    let key = format!("{PREFIX}{path}.{}", layout.key(spec.name));
                    if spec.name == "lora_A.weight" {
                        a_keys.insert(key.clone(), w.dims().to_vec());
                    }
                    expected.insert(key, spec.stored);
                }
            }
            Err(e) => spec_error = Some(e),
        }
    });
    if let Some(e) = spec_error {
        return Err(e);
    }
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            expected.insert(format!("{PREFIX}{path}"), p.shape().dims().to_vec());
        }
    });
    let mut problems = Vec::new();
    for (k, want) in &expected {
        match file.get(k) {
            None => problems.push(format!("missing key `{k}` (expected shape {want:?})")),
            Some(t) if &t.shape != want => {
                // PEFT's LoRA on a grouped conv: A is a dense (r, Cin, kh, kw) conv, B a grouped one.
                let grouped = a_keys.get(k).is_some_and(|w| {
                    w.len() == 4
                        && t.shape.len() == 4
                        && t.shape[1] > w[1]
                        && t.shape[1] % w[1] == 0
                });
                problems.push(format!(
                    "key `{k}` has shape {:?} in the file, the model needs {want:?}{}",
                    t.shape,
                    if grouped {
                        " (PEFT's LoRA on a grouped or depthwise convolution is a dense convolution followed \
                         by a grouped one, not an update of the kernel, and liera cannot read it)"
                    } else {
                        ""
                    }
                ))
            }
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
    let mut set = |key: String, p: &crate::nn::Param, divide_by: f64| {
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
        let data: Vec<f32> = if divide_by == 1.0 {
            t.data.clone()
        } else {
            t.data
                .iter()
                .map(|&x| (x as f64 / divide_by) as f32)
                .collect()
        };
        result = Tensor::from_slice(&data, p.shape().clone(), p.tensor().device())
            .and_then(|v| p.tensor().assign(&v));
    };
    model.visit_adaptable("", &mut |path, layer| {
        if let Some(a) = Adapter::of(layer) {
            for (spec, p) in a.factors() {
                set(
                    format!("{PREFIX}{path}.{}", layout.key(spec.name)),
                    p,
                    layout.factor(spec.name),
                );
            }
        }
    });
    model.visit("", &mut |path, p| {
        if cfg.saves(path) {
            set(format!("{PREFIX}{path}"), p, 1.0);
        }
    });
    result?;
    Ok(cfg)
}
