//! Pretrained weights as users hold them: a safetensors file, or a Hugging Face / timm model folder with
//! `config.json` beside `model.safetensors`. The architecture is read off the weights themselves (stem width
//! and input channels, stage widths, blocks per stage, MLP layout, GRN) and checked against the folder's
//! `architecture`; the preprocessing comes from its `pretrained_cfg`.
//!
//! A timm `config.json` (as `timm.models.push_to_hf_hub` writes it):
//! ```json
//! { "architecture": "convnextv2_atto", "num_classes": 1000,
//!   "pretrained_cfg": { "input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "center",
//!                       "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
//!                       "std": [0.229, 0.224, 0.225] },
//!   "label_names": ["tench", "goldfish", ...] }
//! ```

use super::io_error;
use crate::error::{Error, Result};
use crate::nn::ConvNeXtConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The weights file a model folder holds.
pub const MODEL_FILE: &str = "model.safetensors";
/// The configuration a model folder holds.
pub const CONFIG_FILE: &str = "config.json";

/// timm's `pretrained_cfg`: how the weights expect their input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    /// (C, H, W) of the training input.
    pub input_size: Option<Vec<usize>>,
    /// Fraction of the resized image the evaluation crop keeps.
    pub crop_pct: Option<f64>,
    /// `center` or `squash`.
    pub crop_mode: Option<String>,
    /// `bicubic`, `bilinear` or `nearest`.
    pub interpolation: Option<String>,
    /// Per-channel mean.
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation.
    pub std: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct ConfigJson {
    architecture: Option<String>,
    num_classes: Option<usize>,
    pretrained_cfg: Option<PretrainedCfg>,
    label_names: Option<Vec<String>>,
}

/// Pretrained weights with what is known about them.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainedModel {
    /// The safetensors file.
    pub weights: PathBuf,
    /// The architecture read off the weights (class count = the file's head).
    pub config: ConvNeXtConfig,
    /// timm's architecture name from `config.json`, if any.
    pub architecture: Option<String>,
    /// The preprocessing from `config.json`, if any.
    pub pretrained_cfg: Option<PretrainedCfg>,
    /// Class names from `config.json`, if any.
    pub label_names: Option<Vec<String>>,
}

/// Opens pretrained weights: a safetensors file, or a folder with `model.safetensors` and (optionally)
/// `config.json`. Errors name the file: a missing file, a folder without weights, a config that is not
/// timm's JSON, weights that are not a ConvNeXt, an architecture name that contradicts the weights.
pub fn open_pretrained(path: &Path) -> Result<PretrainedModel> {
    let (weights, config_path) = if path.is_dir() {
        let w = path.join(MODEL_FILE);
        if !w.is_file() {
            let other = [
                "pytorch_model.bin",
                "open_clip_pytorch_model.bin",
                "model.pt",
            ]
            .iter()
            .find(|f| path.join(f).is_file());
            return Err(Error::invalid(
                "weights",
                format!(
                    "{} has no {MODEL_FILE}{}",
                    path.display(),
                    match other {
                        Some(f) => format!(
                            " (it has {f}: liera reads safetensors only; timm's `save_file` or \
                             `push_to_hf_hub(safe_serialization=True)` writes them)"
                        ),
                        None => String::new(),
                    }
                ),
            ));
        }
        let c = path.join(CONFIG_FILE);
        (w, c.is_file().then_some(c))
    } else if path.is_file() {
        (path.to_path_buf(), None)
    } else {
        return Err(Error::invalid(
            "weights",
            format!("{} does not exist", path.display()),
        ));
    };
    let shapes = read_safetensors_shapes(&weights)?;
    let config = infer_convnext(&shapes).map_err(|msg| Error::Format {
        path: weights.display().to_string(),
        msg,
    })?;
    let mut model = PretrainedModel {
        weights,
        config,
        architecture: None,
        pretrained_cfg: None,
        label_names: None,
    };
    if let Some(c) = config_path {
        let text = std::fs::read_to_string(&c).map_err(|e| io_error(&c, e))?;
        let parsed: ConfigJson = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: c.display().to_string(),
            msg: format!("not a timm config.json: {e}"),
        })?;
        if let Some(arch) = &parsed.architecture {
            let named = ConvNeXtConfig::preset(arch).map_err(|e| Error::Format {
                path: c.display().to_string(),
                msg: format!("architecture `{arch}`: {e}"),
            })?;
            let got = &model.config;
            if (&named.dims, &named.depths, named.conv_mlp, named.use_grn)
                != (&got.dims, &got.depths, got.conv_mlp, got.use_grn)
            {
                return Err(Error::Format {
                    path: c.display().to_string(),
                    msg: format!(
                        "architecture `{arch}` (dims {:?}, depths {:?}{}) contradicts the weights in {} \
                         (dims {:?}, depths {:?}{})",
                        named.dims,
                        named.depths,
                        if named.use_grn { ", GRN" } else { "" },
                        model.weights.display(),
                        got.dims,
                        got.depths,
                        if got.use_grn { ", GRN" } else { "" },
                    ),
                });
            }
        }
        if let Some(n) = parsed.num_classes {
            if n != model.config.num_classes {
                return Err(Error::Format {
                    path: c.display().to_string(),
                    msg: format!(
                        "num_classes {n} contradicts the weights' head ({} classes)",
                        model.config.num_classes
                    ),
                });
            }
        }
        model.architecture = parsed.architecture;
        model.pretrained_cfg = parsed.pretrained_cfg;
        model.label_names = parsed.label_names;
    }
    Ok(model)
}

/// The name → shape table of a safetensors file, read from its header only (a 350 MB checkpoint is not
/// read whole).
pub fn read_safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let bad = |msg: String| Error::Format {
        path: path.display().to_string(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = f.metadata().map_err(|e| io_error(path, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        bad("not a valid safetensors file: shorter than its 8-byte header length".into())
    })?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || n + 8 > file_len {
        return Err(bad(format!(
            "not a valid safetensors file: header length {n} does not fit the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    #[derive(Deserialize)]
    struct Entry {
        shape: Vec<usize>,
    }
    let table: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| {
            bad(format!(
                "not a valid safetensors file: header is not JSON: {e}"
            ))
        })?;
    table
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let e: Entry = serde_json::from_value(v)
                .map_err(|e| bad(format!("not a valid safetensors file: entry `{k}`: {e}")))?;
            Ok((k, e.shape))
        })
        .collect()
}

/// The ConvNeXt whose timm state dict has these keys and shapes (see [`crate::nn::ConvNeXt`]), or what is
/// missing.
pub fn infer_convnext(
    shapes: &BTreeMap<String, Vec<usize>>,
) -> std::result::Result<ConvNeXtConfig, String> {
    let get = |k: &str| shapes.get(k);
    let stem = get("stem.0.weight").ok_or(
        "no `stem.0.weight`: not a timm ConvNeXt checkpoint (keys such as stem.0.weight, \
         stages.0.blocks.0.conv_dw.weight, head.fc.weight)",
    )?;
    if stem.len() != 4 {
        return Err(format!(
            "stem.0.weight has shape {stem:?}, not (C, in_chans, 4, 4)"
        ));
    }
    let in_chans = stem[1];
    let mut dims = Vec::new();
    let mut depths = Vec::new();
    for stage in 0.. {
        let dw = format!("stages.{stage}.blocks.0.conv_dw.weight");
        let Some(s) = get(&dw) else { break };
        dims.push(s[0]);
        let mut blocks = 0;
        while get(&format!("stages.{stage}.blocks.{blocks}.conv_dw.weight")).is_some() {
            blocks += 1;
        }
        depths.push(blocks);
    }
    if dims.is_empty() {
        return Err("no `stages.0.blocks.0.conv_dw.weight`: not a timm ConvNeXt checkpoint".into());
    }
    let fc1 = get("stages.0.blocks.0.mlp.fc1.weight")
        .ok_or("no `stages.0.blocks.0.mlp.fc1.weight`: not a timm ConvNeXt checkpoint")?;
    let use_grn = get("stages.0.blocks.0.mlp.grn.weight").is_some();
    let gamma = get("stages.0.blocks.0.gamma").is_some();
    let head = get("head.fc.weight").ok_or("no `head.fc.weight` (the classifier)")?;
    if head.len() != 2 {
        return Err(format!(
            "head.fc.weight has shape {head:?}, not (classes, features)"
        ));
    }
    Ok(ConvNeXtConfig {
        in_chans,
        num_classes: head[0],
        dims,
        depths,
        conv_mlp: fc1.len() == 4,
        use_grn,
        ls_init_value: gamma.then_some(1e-6),
        drop_path_rate: 0.0,
        seed: 0,
    })
}
