//! The adapter configuration, saved beside the adapter weights as `adapter_config.json` in Hugging Face
//! PEFT's schema, so that `PeftModel.from_pretrained(timm_model, dir)` opens a liera adapter as it is:
//!
//! | liera method        | `peft_type` | weight keys (`base_model.model.<layer>.` + …) | PEFT loads it |
//! |---------------------|-------------|-----------------------------------------------|---------------|
//! | `lora`              | `LORA`      | `lora_A.weight`, `lora_B.weight`              | yes           |
//! | `loha`              | `LOHA`      | `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` | yes      |
//! | `lokr`              | `LOKR`      | `lokr_w1`, and `lokr_w2` or `lokr_w2_a`, `lokr_w2_b` | yes    |
//! | `liera_first_order` | `HIRA`      | `hira_A`, `hira_B` (B holds s·B: HiRA has no α) | yes         |
//! | `liera` (exact), and every other Lie form (`liera_loha`, `liera_first_order_lokr`, …) | `LIERA` | the generator's keys as above (`lora_A.weight`, … for LoRA) | no: liera's own type |
//!
//! LoHa and LoKr are written with PEFT's defaults (`use_effective_conv2d: false`, `decompose_both: false`),
//! the only forms liera reads; their α is PEFT's `alpha`.
//!
//! ```json
//! { "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": false,
//!   "target_modules": "stages\\.\\d+\\.blocks\\.\\d+\\.mlp\\.fc1|stages\\.\\d+\\.blocks\\.\\d+\\.mlp\\.fc2",
//!   "modules_to_save": ["head.fc"], "bias": "none", "fan_in_fan_out": false, "lora_dropout": 0.0,
//!   "init_lora_weights": true, "inference_mode": true, "task_type": null, ...,
//!   "liera": { "format_version": 3, "method": "lora", "delta": "lora", "decompose_factor": -1, "r": 8,
//!              "alpha": 16, "use_rslora": false, "target_modules": ["mlp.fc1", "mlp.fc2"], "modules_to_save": ["head.fc"], "seed": 0 } }
//! ```
//! `target_modules` is a regex that `re.fullmatch`es exactly the adapted module paths; `modules_to_save` lists
//! the modules whose parameters are saved. liera's own record sits under `liera`, a key PEFT drops (with a
//! warning naming it). PEFT's conv LoRA refuses grouped and depthwise convolutions unless the rank is
//! divisible by the groups (and then computes another function: a dense convolution followed by a grouped
//! one), and its HiRA refuses them outright; liera writes them in its own layout (A (r, Cin/g, kh, kw),
//! B (Cout, r, 1, 1)) under the same type, and PEFT stops on them with its own message.
//!
//! Reading accepts, besides this: the format before it (liera's [`PeftConfig`] as JSON, `lora_A`/`lora_B`
//! keys for every method), and configs written by PEFT: `LORA` (rsLoRA's s = α/√r included), `LOHA`, `LOKR`
//! (any `decompose_factor`) and `HIRA` (read as first-order LieRA with α = r, s = 1), with `target_modules` as a list or a regex. PEFT options
//! liera cannot reproduce (DoRA, bias training, per-layer ranks, excluded modules, …) are errors naming them.

use super::adapter::{adapter_method_name, AdapterKind, AdapterSpec, DeltaKind};
use super::target::{check_pattern, parse_patterns, regex_escape, REGEX_PREFIX};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What to adapt and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// How ΔW composes with W: `lora` (additive), `liera` (exact, the default) or `liera_first_order`.
    pub method: AdapterKind,
    /// The generator of ΔW: `lora` (the default), `loha` or `lokr`.
    #[serde(default)]
    pub delta: DeltaKind,
    /// Rank r of the generator.
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
    /// LoKr's `decompose_factor` (−1: split each dimension nearest its square root).
    #[serde(default = "nearest_root")]
    pub decompose_factor: i64,
    /// The base model the adapter was trained on (PEFT's `base_model_name_or_path`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_name_or_path: Option<String>,
}

fn nearest_root() -> i64 {
    -1
}

impl PeftConfig {
    /// A config from comma-separated target patterns (`"conv_dw,mlp.fc1,mlp.fc2"`), no saved modules, seed 0.
    pub fn new(method: AdapterKind, r: usize, alpha: f32, targets: &str) -> PeftConfig {
        PeftConfig {
            method,
            delta: DeltaKind::Lora,
            r,
            alpha,
            target_modules: parse_patterns(targets),
            modules_to_save: Vec::new(),
            seed: 0,
            use_rslora: false,
            decompose_factor: -1,
            base_model_name_or_path: None,
        }
    }
    /// Sets the generator of ΔW.
    pub fn with_delta(mut self, delta: DeltaKind) -> Self {
        self.delta = delta;
        self
    }
    /// The composition and generator's name (`liera`, `loha`, `liera_lokr`, …).
    pub fn method_name(&self) -> &'static str {
        adapter_method_name(self.method, self.delta)
    }
    /// What every adapter of this config is built from.
    pub fn spec(&self) -> AdapterSpec {
        AdapterSpec {
            kind: self.method,
            delta: self.delta,
            rank: self.r,
            alpha: self.alpha,
            rslora: self.use_rslora,
            decompose_factor: self.decompose_factor,
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
            self.method_name(),
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
        if self.use_rslora && self.delta != DeltaKind::Lora {
            return Err(Error::invalid(
                "peft",
                format!(
                    "rsLoRA scaling (α/√r) applies to LoRA only, not {}",
                    self.delta.name()
                ),
            ));
        }
        if self.decompose_factor == 0 || self.decompose_factor < -1 {
            return Err(Error::invalid(
                "peft",
                format!(
                    "LoKr's decompose_factor must be positive or -1, got {}",
                    self.decompose_factor
                ),
            ));
        }
        for p in self.target_modules.iter().chain(&self.modules_to_save) {
            check_pattern(p).map_err(|e| Error::invalid("peft", e))?;
        }
        Ok(())
    }
}

/// The version of the config format written under the `liera` key (1 was liera's bare [`PeftConfig`]; 3
/// added the generator `delta` and `decompose_factor`).
pub const FORMAT_VERSION: u32 = 3;

/// How an adapter file stores the factors, beyond [`crate::peft::factor_specs`]' names and shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Layout {
    /// LoRA's A and B are stored as PEFT's HiRA keys `hira_A`, `hira_B`.
    pub hira_keys: bool,
    /// The stored B is this times liera's B (HiRA has no scale: s is folded into B).
    pub b_factor: f64,
}

impl Layout {
    /// The key suffix (after `<layer>.`) under which the factor named `name` is stored.
    pub fn key(&self, name: &'static str) -> &'static str {
        match (self.hira_keys, name) {
            (true, "lora_A.weight") => "hira_A",
            (true, "lora_B.weight") => "hira_B",
            _ => name,
        }
    }
    /// The factor by which the stored values of factor `name` exceed liera's.
    pub fn factor(&self, name: &str) -> f64 {
        if name == "lora_B.weight" {
            self.b_factor
        } else {
            1.0
        }
    }
}

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

/// The PEFT type a composition with a generator is written as: PEFT's own where PEFT has the method.
fn peft_type(kind: AdapterKind, delta: DeltaKind) -> &'static str {
    match (kind, delta) {
        (AdapterKind::Lora, DeltaKind::Lora) => "LORA",
        (AdapterKind::Lora, DeltaKind::Loha) => "LOHA",
        (AdapterKind::Lora, DeltaKind::Lokr) => "LOKR",
        (AdapterKind::LieraFirstOrder, DeltaKind::Lora) => "HIRA",
        _ => "LIERA",
    }
}

pub(crate) fn layout(cfg: &PeftConfig) -> Layout {
    match (cfg.method, cfg.delta) {
        (AdapterKind::LieraFirstOrder, DeltaKind::Lora) => Layout {
            hira_keys: true,
            b_factor: cfg.scale(),
        },
        _ => Layout {
            hira_keys: false,
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
        "peft_type": peft_type(cfg.method, cfg.delta),
        "task_type": null,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "revision": null,
        "inference_mode": true,
        "r": cfg.r,
        "target_modules": target_regex,
        "exclude_modules": null,
        "modules_to_save": if save_modules.is_empty() { Value::Null } else { json!(save_modules) },
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "liera": {
            "format_version": FORMAT_VERSION,
            "method": cfg.method,
            "delta": cfg.delta,
            "decompose_factor": cfg.decompose_factor,
            "r": cfg.r,
            "alpha": alpha_json(cfg.alpha),
            "use_rslora": cfg.use_rslora,
            "target_modules": cfg.target_modules,
            "modules_to_save": cfg.modules_to_save,
            "seed": cfg.seed,
        },
    });
    let lycoris = json!({
        "alpha": alpha_json(cfg.alpha),
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": false,
        "init_weights": true,
        "alpha_pattern": {},
    });
    let extra = match (cfg.method, cfg.delta) {
        (AdapterKind::LieraFirstOrder, DeltaKind::Lora) => json!({
            "hira_dropout": 0.0,
            "init_weights": true,
            "fan_in_fan_out": false,
        }),
        (_, DeltaKind::Lora) => json!({
            "fan_in_fan_out": false,
            "lora_alpha": alpha_json(cfg.alpha),
            "lora_dropout": 0.0,
            "use_rslora": cfg.use_rslora,
            "bias": "none",
            "lora_bias": false,
            "use_dora": false,
            "init_lora_weights": true,
            "alpha_pattern": {},
        }),
        (_, DeltaKind::Loha) => lycoris,
        (_, DeltaKind::Lokr) => {
            let mut v = lycoris;
            let map = v.as_object_mut().expect("an object");
            map.insert("decompose_both".into(), json!(false));
            map.insert("decompose_factor".into(), json!(cfg.decompose_factor));
            map.insert("rank_dropout_scale".into(), json!(false));
            v
        }
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
    "use_effective_conv2d",
    "decompose_both",
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
                hira_keys: false,
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
    // LIERA's composition and generator come from liera's record below; LoRA-generated exact LieRA until then.
    let (method, delta) = match ty {
        "LORA" => (AdapterKind::Lora, DeltaKind::Lora),
        "LOHA" => (AdapterKind::Lora, DeltaKind::Loha),
        "LOKR" => (AdapterKind::Lora, DeltaKind::Lokr),
        "HIRA" => (AdapterKind::LieraFirstOrder, DeltaKind::Lora),
        "LIERA" => (AdapterKind::Liera, DeltaKind::Lora),
        other => {
            return Err(format!(
                "peft_type `{other}` is not one liera reads (LORA, LOHA, LOKR, HIRA, and liera's own LIERA)"
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
    let alpha = match ty {
        // HiRA has no scale: W' = W + W ⊙ (B A), which is first-order LieRA with s = α/r = 1.
        "HIRA" => r as f32,
        // LoHa and LoKr name it `alpha`; LoRA (and LIERA's LoRA form) `lora_alpha`.
        _ => {
            let key = if obj.contains_key("lora_alpha") {
                "lora_alpha"
            } else {
                "alpha"
            };
            obj.get(key)
                .and_then(Value::as_f64)
                .ok_or(format!("`{key}` is missing or not a number"))? as f32
        }
    };
    let decompose_factor = match obj.get("decompose_factor") {
        None | Some(Value::Null) => -1,
        Some(v) => v.as_i64().ok_or("`decompose_factor` is not an integer")?,
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
        delta,
        r,
        alpha,
        target_modules,
        modules_to_save,
        seed: 0,
        use_rslora,
        decompose_factor,
        base_model_name_or_path,
    };

    let Some(own) = obj.get("liera") else {
        if ty == "LIERA" {
            return Err(
                "peft_type `LIERA` without liera's record (the `liera` key) does not say its composition \
                 and generator"
                    .into(),
            );
        }
        let layout = Layout {
            b_factor: 1.0,
            ..layout(&peft_cfg)
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
        #[serde(default)]
        delta: DeltaKind,
        #[serde(default = "nearest_root")]
        decompose_factor: i64,
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
    if peft_type(own.method, own.delta) != ty {
        return Err(edited(
            "peft_type",
            ty.into(),
            format!(
                "{} ({})",
                adapter_method_name(own.method, own.delta),
                peft_type(own.method, own.delta)
            ),
        ));
    }
    if obj.contains_key("decompose_factor") && own.decompose_factor != decompose_factor {
        return Err(edited(
            "decompose_factor",
            decompose_factor.to_string(),
            own.decompose_factor.to_string(),
        ));
    }
    let method = own.method;
    if own.r != r {
        return Err(edited("r", r.to_string(), own.r.to_string()));
    }
    if own.use_rslora != use_rslora && ty != "HIRA" {
        return Err(edited(
            "use_rslora",
            use_rslora.to_string(),
            own.use_rslora.to_string(),
        ));
    }
    if ty != "HIRA" && own.alpha != alpha {
        return Err(edited(
            "lora_alpha",
            alpha.to_string(),
            own.alpha.to_string(),
        ));
    }
    let cfg = PeftConfig {
        method,
        delta: own.delta,
        r,
        alpha: own.alpha,
        target_modules: own.target_modules,
        modules_to_save: own.modules_to_save,
        seed: own.seed,
        use_rslora: own.use_rslora,
        decompose_factor: own.decompose_factor,
        base_model_name_or_path: peft_cfg.base_model_name_or_path,
    };
    Ok(FileConfig {
        layout: layout(&cfg),
        cfg,
        peft_selection: Some((peft_cfg.target_modules, peft_cfg.modules_to_save)),
        from_peft: false,
    })
}
