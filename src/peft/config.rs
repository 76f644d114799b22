//! The adapter configuration, saved beside the adapter weights as `adapter_config.json` in Hugging Face
//! PEFT's schema, so that `PeftModel.from_pretrained(timm_model, dir)` opens a liera adapter as it is:
//!
//! | liera method        | `peft_type` | weight keys (`base_model.model.<layer>.` + …) | PEFT loads it |
//! |---------------------|-------------|-----------------------------------------------|---------------|
//! | `lora`              | `LORA`      | `lora_A.weight`, `lora_B.weight`              | yes           |
//! | `liera_first_order` | `HIRA`      | `hira_A`, `hira_B` (B holds s·B: HiRA has no α) | yes         |
//! | `liera` (exact)     | `LIERA`     | `lora_A.weight`, `lora_B.weight`              | no: liera's own type |
//!
//! ```json
//! { "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": false,
//!   "target_modules": "stages\\.\\d+\\.blocks\\.\\d+\\.mlp\\.fc1|stages\\.\\d+\\.blocks\\.\\d+\\.mlp\\.fc2",
//!   "modules_to_save": ["head.fc"], "bias": "none", "fan_in_fan_out": false, "lora_dropout": 0.0,
//!   "init_lora_weights": true, "inference_mode": true, "task_type": null, ...,
//!   "liera": { "format_version": 2, "method": "lora", "r": 8, "alpha": 16, "use_rslora": false,
//!              "target_modules": ["mlp.fc1", "mlp.fc2"], "modules_to_save": ["head.fc"], "seed": 0 } }
//! ```
//! `target_modules` is a regex that `re.fullmatch`es exactly the adapted module paths; `modules_to_save` lists
//! the modules whose parameters are saved. liera's own record sits under `liera`, a key PEFT drops (with a
//! warning naming it). PEFT's conv LoRA refuses grouped and depthwise convolutions unless the rank is
//! divisible by the groups (and then computes another function: a dense convolution followed by a grouped
//! one), and its HiRA refuses them outright; liera writes them in its own layout (A (r, Cin/g, kh, kw),
//! B (Cout, r, 1, 1)) under the same type, and PEFT stops on them with its own message.
//!
//! Reading accepts, besides this: the format before it (liera's [`PeftConfig`] as JSON, `lora_A`/`lora_B`
//! keys for every method), and configs written by PEFT: `LORA` (rsLoRA's s = α/√r included) and `HIRA`
//! (read as first-order LieRA with α = r, s = 1), with `target_modules` as a list or a regex. PEFT options
//! liera cannot reproduce (DoRA, bias training, per-layer ranks, excluded modules, …) are errors naming them.

use super::adapter::AdapterKind;
use super::target::{check_pattern, parse_patterns, regex_escape, REGEX_PREFIX};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What to adapt and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// `lora`, `liera` (exact, the default) or `liera_first_order`.
    pub method: AdapterKind,
    /// Rank r of ΔW = s·B·A.
    pub r: usize,
    /// α (the scale s is α/r, or α/√r with [`PeftConfig::use_rslora`]).
    pub alpha: f32,
    /// Module-path patterns of the layers to adapt (see [`crate::peft::target`]).
    pub target_modules: Vec<String>,
    /// Module-path patterns of modules trained in full (e.g. a new classifier `head.fc`).
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// Seed of the A initialisation.
    #[serde(default)]
    pub seed: u64,
    /// rsLoRA's scale s = α/√r instead of α/r.
    #[serde(default)]
    pub use_rslora: bool,
    /// The base model the adapter was trained on (PEFT's `base_model_name_or_path`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_name_or_path: Option<String>,
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
            use_rslora: false,
            base_model_name_or_path: None,
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
    /// Sets rsLoRA scaling (s = α/√r).
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }
    /// Records the base model (written as PEFT's `base_model_name_or_path`).
    pub fn with_base_model(mut self, name_or_path: &str) -> Self {
        self.base_model_name_or_path = Some(name_or_path.to_string());
        self
    }
    /// The scale s of ΔW = s·B·A, in f64: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.r as f64;
        self.alpha as f64 / if self.use_rslora { r.sqrt() } else { r }
    }
    /// "liera r=8 α=8 on conv_dw,mlp.fc1,mlp.fc2": what a command prints when it loads an adapter.
    pub fn describe(&self) -> String {
        format!(
            "{} r={} α={} on {}",
            self.method.name(),
            self.r,
            self.alpha,
            self.target_modules.join(",")
        )
    }

    /// Checks what can be checked without a model: r ≥ 1, α > 0, at least one target, regex patterns compile.
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
        for p in self.target_modules.iter().chain(&self.modules_to_save) {
            check_pattern(p).map_err(|e| Error::invalid("peft", e))?;
        }
        Ok(())
    }
}

/// The version of the config format written under the `liera` key (1 was liera's bare [`PeftConfig`]).
pub const FORMAT_VERSION: u32 = 2;

/// How an adapter file stores the factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Layout {
    /// The key suffix of A (`lora_A.weight` or `hira_A`).
    pub a_key: &'static str,
    /// The key suffix of B.
    pub b_key: &'static str,
    /// The stored B is this times liera's B (HiRA has no scale: s is folded into B).
    pub b_factor: f64,
}

const LORA_KEYS: (&str, &str) = ("lora_A.weight", "lora_B.weight");
const HIRA_KEYS: (&str, &str) = ("hira_A", "hira_B");

/// An `adapter_config.json` as read: the config, how the weights are stored, and where liera's own record
/// restored the patterns, PEFT's selections (targets, saved modules), which must agree with them on the model.
#[derive(Clone, Debug)]
pub(crate) struct FileConfig {
    pub cfg: PeftConfig,
    pub layout: Layout,
    pub peft_selection: Option<(Vec<String>, Vec<String>)>,
    /// Written by PEFT: a list entry may select nothing on this model (PEFT only requires that some do).
    pub from_peft: bool,
}

fn peft_type(kind: AdapterKind) -> &'static str {
    match kind {
        AdapterKind::Lora => "LORA",
        AdapterKind::LieraFirstOrder => "HIRA",
        AdapterKind::Liera => "LIERA",
    }
}

pub(crate) fn layout(kind: AdapterKind, cfg: &PeftConfig) -> Layout {
    match kind {
        AdapterKind::LieraFirstOrder => Layout {
            a_key: HIRA_KEYS.0,
            b_key: HIRA_KEYS.1,
            b_factor: cfg.scale(),
        },
        _ => Layout {
            a_key: LORA_KEYS.0,
            b_key: LORA_KEYS.1,
            b_factor: 1.0,
        },
    }
}

/// α as JSON: an integer when it is one (as PEFT writes `lora_alpha`), else its shortest decimal.
fn alpha_json(alpha: f32) -> Value {
    if alpha.fract() == 0.0 && alpha.abs() < 1e15 {
        json!(alpha as i64)
    } else {
        json!(format!("{alpha}").parse::<f64>().unwrap_or(alpha as f64))
    }
}

/// The JSON written for `cfg`, whose adapted layers `target_regex` selects exactly and whose saved
/// parameters are those of the modules `save_modules`.
pub(crate) fn to_json(cfg: &PeftConfig, target_regex: &str, save_modules: &[String]) -> Value {
    let mut v = json!({
        "peft_type": peft_type(cfg.method),
        "task_type": null,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "revision": null,
        "inference_mode": true,
        "r": cfg.r,
        "target_modules": target_regex,
        "exclude_modules": null,
        "modules_to_save": if save_modules.is_empty() { Value::Null } else { json!(save_modules) },
        "fan_in_fan_out": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "liera": {
            "format_version": FORMAT_VERSION,
            "method": cfg.method,
            "r": cfg.r,
            "alpha": alpha_json(cfg.alpha),
            "use_rslora": cfg.use_rslora,
            "target_modules": cfg.target_modules,
            "modules_to_save": cfg.modules_to_save,
            "seed": cfg.seed,
        },
    });
    let extra = match cfg.method {
        AdapterKind::LieraFirstOrder => json!({
            "hira_dropout": 0.0,
            "init_weights": true,
        }),
        AdapterKind::Lora | AdapterKind::Liera => json!({
            "lora_alpha": alpha_json(cfg.alpha),
            "lora_dropout": 0.0,
            "use_rslora": cfg.use_rslora,
            "bias": "none",
            "lora_bias": false,
            "use_dora": false,
            "init_lora_weights": true,
            "alpha_pattern": {},
        }),
    };
    let map = v.as_object_mut().expect("an object");
    map.extend(extra.as_object().expect("an object").clone());
    v
}

/// Options of PEFT's configs that change what the adapter computes or which layers it covers, and that liera
/// does not reproduce: each must be absent or at its default (null, false, empty, `"none"`).
const UNSUPPORTED: &[&str] = &[
    "use_dora",
    "lora_bias",
    "alpha_pattern",
    "rank_pattern",
    "exclude_modules",
    "layers_to_transform",
    "layer_replication",
    "fan_in_fan_out",
    "target_parameters",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
];

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty() || s == "none",
        _ => false,
    }
}

/// A PEFT list entry as a liera pattern: PEFT matches `name == t or name.endswith("." + t)`, which is liera's
/// plain pattern unless `t` holds a wildcard character, which PEFT takes literally.
fn peft_name(t: &str) -> String {
    if t.contains(['*', '?']) || t.starts_with(REGEX_PREFIX) {
        format!("{REGEX_PREFIX}(?:.*\\.)?{}", regex_escape(t))
    } else {
        t.to_string()
    }
}

/// Parses `adapter_config.json` text in any of the accepted forms (see the module docs).
pub(crate) fn parse(text: &str) -> std::result::Result<FileConfig, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    if !obj.contains_key("peft_type") {
        // Format 1: liera's PeftConfig as it was serialised.
        let cfg: PeftConfig = serde_json::from_value(v.clone()).map_err(|e| {
            format!("neither PEFT's schema (no `peft_type`) nor liera's earlier format: {e}")
        })?;
        return Ok(FileConfig {
            cfg,
            layout: Layout {
                a_key: LORA_KEYS.0,
                b_key: LORA_KEYS.1,
                b_factor: 1.0,
            },
            peft_selection: None,
            from_peft: false,
        });
    }
    parse_peft(obj)
}

fn parse_peft(obj: &Map<String, Value>) -> std::result::Result<FileConfig, String> {
    let ty = obj["peft_type"]
        .as_str()
        .ok_or("`peft_type` is not a string")?;
    let method = match ty {
        "LORA" => AdapterKind::Lora,
        "HIRA" => AdapterKind::LieraFirstOrder,
        "LIERA" => AdapterKind::Liera,
        other => {
            return Err(format!(
                "peft_type `{other}` is not one liera reads (LORA, HIRA, and liera's own LIERA)"
            ))
        }
    };
    for key in UNSUPPORTED {
        if let Some(v) = obj.get(*key).filter(|v| !is_default(v)) {
            return Err(format!(
                "`{key}: {v}` is a PEFT option liera does not support (it must be absent or null/false/empty)"
            ));
        }
    }
    if let Some(b) = obj.get("bias").filter(|v| !is_default(v)) {
        return Err(format!(
            "`bias: {b}` (PEFT training the base biases) is not supported; liera reads `\"none\"`"
        ));
    }
    let r = obj
        .get("r")
        .and_then(Value::as_u64)
        .ok_or("`r` is missing or not a positive integer")? as usize;
    let use_rslora = match obj.get("use_rslora") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().ok_or("`use_rslora` is not a boolean")?,
    };
    let alpha = match method {
        // HiRA has no scale: W' = W + W ⊙ (B A), which is first-order LieRA with s = α/r = 1.
        AdapterKind::LieraFirstOrder => r as f32,
        _ => obj
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or("`lora_alpha` is missing or not a number")? as f32,
    };
    let target_modules = match obj.get("target_modules") {
        Some(Value::String(s)) if s == "all-linear" => {
            return Err(
                "`target_modules: \"all-linear\"` is not supported; list the modules or give a regex".into(),
            )
        }
        Some(Value::String(s)) => vec![format!("{REGEX_PREFIX}{s}")],
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(peft_name))
            .collect::<Option<Vec<_>>>()
            .ok_or("`target_modules` holds a non-string")?,
        _ => {
            return Err(
                "`target_modules` is missing (PEFT chose the layers by architecture); liera needs them \
                 listed or as a regex"
                    .into(),
            )
        }
    };
    let modules_to_save = match obj.get("modules_to_save") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(peft_name))
            .collect::<Option<Vec<_>>>()
            .ok_or("`modules_to_save` holds a non-string")?,
        Some(other) => return Err(format!("`modules_to_save: {other}` is not a list")),
    };
    let base_model_name_or_path = obj
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(String::from);
    let peft_cfg = PeftConfig {
        method,
        r,
        alpha,
        target_modules,
        modules_to_save,
        seed: 0,
        use_rslora,
        base_model_name_or_path,
    };

    let Some(own) = obj.get("liera") else {
        let layout = Layout {
            b_factor: 1.0,
            ..layout(method, &peft_cfg)
        };
        return Ok(FileConfig {
            cfg: peft_cfg,
            layout,
            peft_selection: None,
            from_peft: true,
        });
    };
    // Written by liera: its own record restores the patterns, α of a first-order adapter, and the seed. It
    // must agree with PEFT's fields, which someone may have edited.
    #[derive(Deserialize)]
    struct Own {
        format_version: u32,
        method: AdapterKind,
        r: usize,
        alpha: f32,
        #[serde(default)]
        use_rslora: bool,
        target_modules: Vec<String>,
        #[serde(default)]
        modules_to_save: Vec<String>,
        #[serde(default)]
        seed: u64,
    }
    let own: Own = serde_json::from_value(own.clone())
        .map_err(|e| format!("liera's record (`liera`) is malformed: {e}"))?;
    if own.format_version > FORMAT_VERSION {
        return Err(format!(
            "written by a newer liera (format {}; this one reads up to {FORMAT_VERSION})",
            own.format_version
        ));
    }
    let edited = |what: &str, peft: String, liera: String| {
        format!(
            "`{what}` is {peft} but liera's record says {liera}: the file was edited; delete the `liera` key \
             to read it as a plain PEFT adapter"
        )
    };
    if own.method != method {
        return Err(edited(
            "peft_type",
            ty.into(),
            format!("{} ({})", own.method.name(), peft_type(own.method)),
        ));
    }
    if own.r != r {
        return Err(edited("r", r.to_string(), own.r.to_string()));
    }
    if own.use_rslora != use_rslora && method != AdapterKind::LieraFirstOrder {
        return Err(edited(
            "use_rslora",
            use_rslora.to_string(),
            own.use_rslora.to_string(),
        ));
    }
    if method != AdapterKind::LieraFirstOrder && own.alpha != alpha {
        return Err(edited(
            "lora_alpha",
            alpha.to_string(),
            own.alpha.to_string(),
        ));
    }
    let cfg = PeftConfig {
        method,
        r,
        alpha: own.alpha,
        target_modules: own.target_modules,
        modules_to_save: own.modules_to_save,
        seed: own.seed,
        use_rslora: own.use_rslora,
        base_model_name_or_path: peft_cfg.base_model_name_or_path,
    };
    Ok(FileConfig {
        layout: layout(method, &cfg),
        cfg,
        peft_selection: Some((peft_cfg.target_modules, peft_cfg.modules_to_save)),
        from_peft: false,
    })
}
