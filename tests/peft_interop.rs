//! Interoperability with the real libraries (issue 14), on the fixtures of `tests/fixtures/peft/`, written by
//! timm and PEFT themselves (`make_fixtures.py`, versions in `versions.json`):
//! - timm's checkpoints (v1 in both MLP layouts, v2 in both) load and give timm's logits;
//! - PEFT's LoRA and HiRA adapters (lists and regexes as `target_modules`, rsLoRA, `modules_to_save`) load,
//!   compute PEFT's adapted logits, and merge to PEFT's merged weights; PEFT's LoRA on a depthwise
//!   convolution is refused with the reason;
//! - liera's adapters are written in PEFT's schema (LoRA as `LORA`, first order as `HIRA`, exact LieRA as
//!   `LIERA`) and read back; configs in liera's earlier format still load; edited or unsupported configs are
//!   errors naming the field.
//!
//! With `LIERA_PEFT_CHECK_DIR=<dir>`, the round-trip test also writes one case per liera adapter there
//! (base, adapter, liera's merged weights and logits) for `make_fixtures.py --check <dir>`.

mod common;

use common::temp::TempDir;
use common::Rng;
use liera::io::{load_model, open_pretrained, read_safetensors, save_model, HostTensor};
use liera::nn::{Classifier, ConvNeXt, Module};
use liera::peft::{self, Adapter, AdapterKind, DeltaKind, PeftConfig};
use liera::{no_grad, Device, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const VARIANTS: [&str; 4] = ["v1_conv", "v1_linear", "v2_conv", "v2_linear"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

fn host(path: &Path) -> BTreeMap<String, HostTensor> {
    read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The fixture's timm checkpoint in a ConvNeXt whose architecture is read off the weights.
fn base(variant: &str, dev: &Device) -> ConvNeXt {
    let path = fixtures().join(variant).join("model.safetensors");
    let pretrained = open_pretrained(&path).unwrap();
    let mut model = ConvNeXt::new(pretrained.config.clone(), dev).unwrap();
    let notes = load_model(&mut model, &path).unwrap();
    assert!(
        notes.is_empty(),
        "{variant}: timm's keys load one to one: {notes:?}"
    );
    model
}

fn input(variant: &str, dev: &Device) -> Tensor {
    let io = host(&fixtures().join(variant).join("io.safetensors"));
    let x = &io["input"];
    Tensor::from_slice(&x.data, x.shape.clone(), dev).unwrap()
}

fn logits(model: &ConvNeXt, x: &Tensor) -> Vec<f32> {
    no_grad(|| model.forward(x, false))
        .unwrap()
        .to_vec()
        .unwrap()
}

/// Max |got − want| ≤ `rtol` · max(1, max |want|); returns the max difference.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
    let (mut worst, mut at) = (0f64, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (*g as f64 - *w as f64).abs();
        if d > worst || d.is_nan() {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= rtol * scale,
        "{what}: max |got − want| = {worst:e} at {at} (got {}, want {}), allowed {:e}",
        got[at],
        want[at],
        rtol * scale
    );
    worst
}

/// Every parameter of `model` against PEFT's merged weights (`merged.<name>`), all of which it must have.
fn assert_weights(what: &str, model: &ConvNeXt, expected: &BTreeMap<String, HostTensor>) {
    let params = model.named_parameters();
    let merged: Vec<_> = expected
        .keys()
        .filter_map(|k| k.strip_prefix("merged."))
        .collect();
    assert_eq!(merged.len(), params.len(), "{what}: parameter counts");
    for (name, t) in &params {
        let want = &expected[&format!("merged.{name}")];
        assert_eq!(t.shape().dims(), want.shape.as_slice(), "{what}: {name}");
        assert_close(
            &format!("{what}: {name}"),
            &t.to_vec().unwrap(),
            &want.data,
            2e-6,
        );
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Copies the files of folder `from` into a new folder `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn timm_checkpoints_load_and_give_timm_logits() {
    let dev = Device::cpu();
    for variant in VARIANTS {
        let model = base(variant, &dev);
        let cfg = &open_pretrained(&fixtures().join(variant).join("model.safetensors"))
            .unwrap()
            .config;
        assert_eq!(
            (cfg.in_chans, cfg.num_classes, &cfg.dims, &cfg.depths),
            (3, 5, &vec![8, 16, 24, 32], &vec![1, 2, 1, 1]),
            "{variant}"
        );
        assert_eq!(cfg.conv_mlp, variant.ends_with("conv"), "{variant}");
        assert_eq!(cfg.use_grn, variant.starts_with("v2"), "{variant}");
        let io = host(&fixtures().join(variant).join("io.safetensors"));
        let got = logits(&model, &input(variant, &dev));
        let d = assert_close(
            &format!("{variant}: logits vs timm"),
            &got,
            &io["logits"].data,
            1e-4,
        );
        eprintln!("{variant}: max |liera − timm| logit difference {d:.2e}");
    }
}

#[test]
fn peft_lora_hira_loha_and_lokr_adapters_load_and_merge_to_peft_weights() {
    let dev = Device::cpu();
    let mut seen = 0;
    for variant in VARIANTS {
        for name in ["lora", "hira", "loha", "lokr", "loha_dw", "lokr_dw"] {
            let what = format!("{variant}/{name}");
            let dir = fixtures().join(variant).join(name);
            if name.ends_with("_dw") && !dir.exists() {
                continue; // the depthwise cases exist for one variant each
            }
            seen += 1;
            let json = read_json(&dir.join(peft::ADAPTER_CONFIG_FILE));
            let mut model = base(variant, &dev);
            let cfg =
                peft::load_adapter(&mut model, &dir).unwrap_or_else(|e| panic!("{what}: {e}"));
            let r = json["r"].as_u64().unwrap() as usize;
            assert_eq!(cfg.r, r, "{what}");
            match &name[..4] {
                "lora" => {
                    assert_eq!(cfg.method, AdapterKind::Lora, "{what}");
                    assert_eq!(cfg.alpha as f64, json["lora_alpha"].as_f64().unwrap());
                    assert_eq!(cfg.use_rslora, json["use_rslora"].as_bool().unwrap());
                }
                "hira" => {
                    // HiRA: W + W ⊙ (B A), first-order LieRA with s = α/r = 1.
                    assert_eq!(cfg.method, AdapterKind::LieraFirstOrder, "{what}");
                    assert_eq!(cfg.alpha, r as f32, "{what}");
                }
                generator => {
                    // LoHa and LoKr: additive, with PEFT's `alpha`.
                    assert_eq!(cfg.method, AdapterKind::Lora, "{what}");
                    assert_eq!(cfg.delta, DeltaKind::parse(generator).unwrap(), "{what}");
                    assert_eq!(cfg.alpha as f64, json["alpha"].as_f64().unwrap(), "{what}");
                }
            }
            // A list stays a list of names; a regex becomes a `re:` pattern.
            match &json["target_modules"] {
                Value::String(re) => assert_eq!(cfg.target_modules, [format!("re:{re}")]),
                Value::Array(list) => assert_eq!(
                    cfg.target_modules,
                    list.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>()
                ),
                other => panic!("{what}: target_modules {other}"),
            }
            let expected = host(
                &fixtures()
                    .join(variant)
                    .join(format!("{name}_expected.safetensors")),
            );
            let got = logits(&model, &input(variant, &dev));
            let d = assert_close(
                &format!("{what}: adapted logits vs PEFT"),
                &got,
                &expected["logits"].data,
                1e-4,
            );
            eprintln!("{what}: max |liera − PEFT| adapted logit difference {d:.2e}");
            peft::merge_and_unload(&mut model).unwrap();
            assert_weights(&what, &model, &expected);
        }
    }
    assert_eq!(seen, 4 * 4 + 2, "every fixture case ran");
}

/// rsLoRA's scale matters: read with the usual α/r, the same file merges to other weights.
#[test]
fn rslora_scaling_is_honoured() {
    let dev = Device::cpu();
    let tmp = TempDir::new("rslora");
    let dir = tmp.path("adapter");
    copy_dir(&fixtures().join("v1_linear/lora"), &dir);
    let mut json = read_json(&dir.join(peft::ADAPTER_CONFIG_FILE));
    assert_eq!(json["use_rslora"], true);
    json["use_rslora"] = Value::Bool(false);
    std::fs::write(dir.join(peft::ADAPTER_CONFIG_FILE), json.to_string()).unwrap();
    let mut model = base("v1_linear", &dev);
    let cfg = peft::load_adapter(&mut model, &dir).unwrap();
    assert!(!cfg.use_rslora);
    peft::merge_and_unload(&mut model).unwrap();
    let expected = host(&fixtures().join("v1_linear/lora_expected.safetensors"));
    let name = "stages.0.blocks.0.mlp.fc1.weight";
    let got = model
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .to_vec()
        .unwrap();
    let want = &expected[&format!("merged.{name}")].data;
    let d = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        d > 1e-3,
        "α/r instead of α/√r should change the merge, max diff {d}"
    );
}

#[test]
fn peft_lora_on_a_depthwise_conv_is_refused_with_the_reason() {
    let dev = Device::cpu();
    let mut model = base("v1_conv", &dev);
    let err = peft::load_adapter(&mut model, &fixtures().join("v1_conv/lora_dw"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `base_model.model.stages.0.blocks.0.conv_dw.lora_A.weight` has shape [8, 8, 7, 7] in the file, the model needs [8, 1, 7, 7]")
            && err.contains("PEFT's LoRA on a grouped or depthwise convolution is a dense convolution"),
        "{err}"
    );
    assert!(model
        .named_parameters()
        .iter()
        .all(|(_, t)| t.requires_grad()));
}

/// Gives every adapter factor that is all zero (LoRA's B, LoHa's hada_w2_b, LoKr's lokr_w1) random values.
fn randomise_b(model: &ConvNeXt, seed: u64) {
    let mut rng = Rng::new(seed);
    model.visit_adaptable("", &mut |_, layer| {
        if let Some(a) = Adapter::of(layer) {
            for (_, p) in a.factors() {
                let b = p.tensor();
                if b.to_vec().unwrap().iter().any(|&v| v != 0.0) {
                    continue;
                }
                let v: Vec<f32> = rng
                    .vec(b.numel(), -0.3, 0.3)
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                b.assign(&Tensor::from_slice(&v, b.shape().clone(), b.device()).unwrap())
                    .unwrap();
            }
        }
    });
}

/// One liera adapter for the round trip: (case name, base variant, config, what PEFT should do with it).
fn liera_cases() -> Vec<(&'static str, &'static str, PeftConfig, &'static str)> {
    let mk = |kind, r, alpha, targets: &str| {
        PeftConfig::new(kind, r, alpha, targets)
            .with_modules_to_save("head.fc")
            .with_seed(5)
    };
    vec![
        (
            "lora_v1_conv",
            "v1_conv",
            mk(AdapterKind::Lora, 2, 3.0, "mlp.fc1,mlp.fc2,stem.0"),
            "load",
        ),
        (
            "lora_rslora_v2_linear",
            "v2_linear",
            PeftConfig::new(AdapterKind::Lora, 4, 6.0, "mlp.fc1,mlp.fc2,head.fc")
                .with_rslora(true)
                .with_seed(6),
            "load",
        ),
        (
            "first_order_v1_linear",
            "v1_linear",
            mk(
                AdapterKind::LieraFirstOrder,
                2,
                3.0,
                "stages.*.blocks.*.mlp.fc1,mlp.fc2,downsample.1",
            ),
            "load",
        ),
        (
            "first_order_v2_conv",
            "v2_conv",
            mk(AdapterKind::LieraFirstOrder, 3, 4.0, "stem.0,mlp.fc1"),
            "load",
        ),
        (
            "exact_liera_v1_conv",
            "v1_conv",
            mk(AdapterKind::Liera, 2, 4.0, "mlp.fc1,mlp.fc2"),
            "refuse",
        ),
        (
            "lora_depthwise_v1_conv",
            "v1_conv",
            mk(AdapterKind::Lora, 2, 4.0, "conv_dw,mlp.fc1"),
            "refuse",
        ),
        (
            "first_order_depthwise_v2_linear",
            "v2_linear",
            mk(AdapterKind::LieraFirstOrder, 2, 4.0, "conv_dw"),
            "refuse",
        ),
        // LoHa and LoKr: PEFT's own types when additive, depthwise included (PEFT adapts those kernels).
        (
            "loha_v1_conv",
            "v1_conv",
            mk(AdapterKind::Lora, 2, 3.0, "conv_dw,mlp.fc1,stem.0").with_delta(DeltaKind::Loha),
            "load",
        ),
        (
            "loha_v2_linear",
            "v2_linear",
            mk(AdapterKind::Lora, 3, 2.0, "mlp.fc1,mlp.fc2,downsample.1")
                .with_delta(DeltaKind::Loha),
            "load",
        ),
        (
            "lokr_v1_linear",
            "v1_linear",
            mk(AdapterKind::Lora, 1, 2.0, "mlp.fc1,mlp.fc2,conv_dw").with_delta(DeltaKind::Lokr),
            "load",
        ),
        (
            "lokr_v2_conv",
            "v2_conv",
            mk(AdapterKind::Lora, 4, 4.0, "stem.0,mlp.fc2,downsample.1")
                .with_delta(DeltaKind::Lokr),
            "load",
        ),
        // Lie forms of LoHa and LoKr: liera's own LIERA type.
        (
            "liera_loha_v2_conv",
            "v2_conv",
            mk(AdapterKind::Liera, 2, 3.0, "conv_dw,mlp.fc1").with_delta(DeltaKind::Loha),
            "refuse",
        ),
        (
            "liera_first_order_lokr_v1_conv",
            "v1_conv",
            mk(AdapterKind::LieraFirstOrder, 2, 3.0, "mlp.fc1,mlp.fc2").with_delta(DeltaKind::Lokr),
            "refuse",
        ),
    ]
}

#[test]
fn liera_adapters_are_written_in_peft_schema_and_round_trip() {
    let dev = Device::cpu();
    let check_dir = std::env::var_os("LIERA_PEFT_CHECK_DIR").map(PathBuf::from);
    let tmp = TempDir::new("liera-peft");
    for (case, variant, cfg, expect) in liera_cases() {
        let mut model = base(variant, &dev);
        peft::apply(&mut model, &cfg).unwrap();
        randomise_b(&model, 17);
        let x = input(variant, &dev);
        let want = logits(&model, &x);
        let dir = tmp.path(case);
        peft::save_adapter(&model, &cfg, &dir).unwrap();

        // PEFT's schema.
        let json = read_json(&dir.join(peft::ADAPTER_CONFIG_FILE));
        let ty = match (cfg.method, cfg.delta) {
            (AdapterKind::Lora, DeltaKind::Lora) => "LORA",
            (AdapterKind::Lora, DeltaKind::Loha) => "LOHA",
            (AdapterKind::Lora, DeltaKind::Lokr) => "LOKR",
            (AdapterKind::LieraFirstOrder, DeltaKind::Lora) => "HIRA",
            _ => "LIERA",
        };
        assert_eq!(json["peft_type"], ty, "{case}");
        assert_eq!(json["r"], cfg.r, "{case}");
        assert_eq!(json["task_type"], Value::Null, "{case}");
        if cfg.delta == DeltaKind::Lora {
            assert_eq!(json["fan_in_fan_out"], false, "{case}");
        } else {
            assert!(
                json.get("fan_in_fan_out").is_none(),
                "{case}: not a LoHa/LoKr key"
            );
        }
        assert_eq!(json["inference_mode"], true, "{case}");
        assert_eq!(json["liera"]["method"], cfg.method.name(), "{case}");
        assert_eq!(json["liera"]["seed"], cfg.seed, "{case}");
        assert_eq!(json["liera"]["format_version"], peft::FORMAT_VERSION);
        if ty == "HIRA" {
            assert!(
                json.get("lora_alpha").is_none(),
                "{case}: HiRA has no alpha"
            );
        } else if cfg.delta != DeltaKind::Lora {
            // LoHa and LoKr: PEFT's `alpha`, and the defaults liera computes with.
            assert_eq!(json["alpha"].as_f64().unwrap(), cfg.alpha as f64, "{case}");
            assert_eq!(json["use_effective_conv2d"], false, "{case}");
            if cfg.delta == DeltaKind::Lokr {
                assert_eq!(json["decompose_both"], false, "{case}");
                assert_eq!(json["decompose_factor"], -1, "{case}");
            }
        } else {
            assert_eq!(
                json["lora_alpha"].as_f64().unwrap(),
                cfg.alpha as f64,
                "{case}"
            );
            assert_eq!(json["use_rslora"], cfg.use_rslora, "{case}");
            assert_eq!(json["bias"], "none", "{case}");
        }
        let saves = if cfg.modules_to_save.is_empty() {
            Value::Null
        } else {
            serde_json::json!(["head.fc"])
        };
        assert_eq!(json["modules_to_save"], saves, "{case}");
        // The regex selects exactly the adapted layers.
        let re = format!("re:{}", json["target_modules"].as_str().unwrap());
        let mut n = 0;
        model.visit_adaptable("", &mut |path, layer| {
            assert_eq!(
                liera::peft::target::matches(&re, path),
                Adapter::of(layer).is_some(),
                "{case}: {re} at {path}"
            );
            n += Adapter::of(layer).is_some() as usize;
        });
        let keys = host(&dir.join(peft::ADAPTER_WEIGHTS_FILE));
        // Every adapted layer's factors under PEFT's names and stored shapes, and the saved head.
        let mut want_keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        model.visit_adaptable("", &mut |path, layer| {
            if let Some(a) = Adapter::of(layer) {
                for (f, _) in a.factors() {
                    let name = match (ty, f.name) {
                        ("HIRA", "lora_A.weight") => "hira_A",
                        ("HIRA", "lora_B.weight") => "hira_B",
                        (_, name) => name,
                    };
                    want_keys.insert(format!("base_model.model.{path}.{name}"), f.stored.clone());
                }
            }
        });
        if !cfg.modules_to_save.is_empty() {
            want_keys.insert("base_model.model.head.fc.weight".into(), vec![5, 32]);
            want_keys.insert("base_model.model.head.fc.bias".into(), vec![5]);
        }
        let got_keys: BTreeMap<String, Vec<usize>> = keys
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        assert_eq!(got_keys, want_keys, "{case}");
        assert!(n > 0, "{case}");

        // Read back: the same config and (up to the rounding of s·B / s for HiRA) the same function.
        let mut fresh = base(variant, &dev);
        let loaded = peft::load_adapter(&mut fresh, &dir).unwrap();
        assert_eq!(loaded, cfg, "{case}");
        let got = logits(&fresh, &x);
        if ty == "HIRA" {
            assert_close(&format!("{case}: reloaded"), &got, &want, 1e-5);
        } else {
            assert_eq!(
                got, want,
                "{case}: reloaded adapter computes another function"
            );
        }

        if let Some(root) = &check_dir {
            let cd = root.join(case);
            let _ = std::fs::remove_dir_all(&cd);
            std::fs::create_dir_all(&cd).unwrap();
            std::fs::copy(
                fixtures().join(variant).join("model.safetensors"),
                cd.join("model.safetensors"),
            )
            .unwrap();
            peft::save_adapter(&model, &cfg, &cd.join("adapter")).unwrap();
            let out = Tensor::from_slice(&want, [x.shape().dims()[0], 5], &dev).unwrap();
            liera::io::write_safetensors(
                &cd.join("io.safetensors"),
                &[("input".into(), x.clone()), ("logits".into(), out)],
                None,
            )
            .unwrap();
            let mut merged = base(variant, &dev);
            peft::load_adapter(&mut merged, &dir).unwrap();
            peft::merge_and_unload(&mut merged).unwrap();
            save_model(&merged, &cd.join("merged.safetensors")).unwrap();
            std::fs::write(
                cd.join("check.json"),
                serde_json::json!({ "expect": expect }).to_string(),
            )
            .unwrap();
        }
    }
}

/// The config format before PEFT's schema: liera's own JSON and `lora_A`/`lora_B` keys for every method.
#[test]
fn adapters_in_the_earlier_liera_format_still_load() {
    let dev = Device::cpu();
    let tmp = TempDir::new("old-format");
    for (kind, name) in [
        (AdapterKind::Lora, "lora"),
        (AdapterKind::Liera, "liera"),
        (AdapterKind::LieraFirstOrder, "liera_first_order"),
    ] {
        let mut model = base("v1_conv", &dev);
        let cfg = PeftConfig::new(kind, 2, 4.0, "conv_dw,mlp.fc1,mlp.fc2")
            .with_modules_to_save("head.fc")
            .with_seed(3);
        peft::apply(&mut model, &cfg).unwrap();
        randomise_b(&model, 9);
        let x = input("v1_conv", &dev);
        let want = logits(&model, &x);
        // What liera wrote before: its config struct as JSON and PEFT-shaped factors under lora_A/lora_B.
        let dir = tmp.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let old = format!(
            r#"{{
  "method": "{name}",
  "r": 2,
  "alpha": 4.0,
  "target_modules": ["conv_dw", "mlp.fc1", "mlp.fc2"],
  "modules_to_save": ["head.fc"],
  "seed": 3
}}"#
        );
        std::fs::write(dir.join(peft::ADAPTER_CONFIG_FILE), old).unwrap();
        let mut tensors = Vec::new();
        model.visit_adaptable("", &mut |path, layer| {
            if let Some(a) = Adapter::of(layer) {
                let w = layer.weight().shape().dims().to_vec();
                let (sa, sb) = if w.len() == 4 {
                    (vec![2, w[1], w[2], w[3]], vec![w[0], 2, 1, 1])
                } else {
                    (vec![2, w[1]], vec![w[0], 2])
                };
                tensors.push((
                    format!("base_model.model.{path}.lora_A.weight"),
                    a.a().tensor().reshape(sa).unwrap(),
                ));
                tensors.push((
                    format!("base_model.model.{path}.lora_B.weight"),
                    a.b().tensor().reshape(sb).unwrap(),
                ));
            }
        });
        model.visit("", &mut |path, p| {
            if path.starts_with("head.fc.") {
                tensors.push((format!("base_model.model.{path}"), p.tensor().clone()));
            }
        });
        liera::io::write_safetensors(&dir.join(peft::ADAPTER_WEIGHTS_FILE), &tensors, None)
            .unwrap();

        let mut fresh = base("v1_conv", &dev);
        let loaded = peft::load_adapter(&mut fresh, &dir).unwrap();
        assert_eq!(loaded, cfg, "{name}");
        assert_eq!(
            logits(&fresh, &x),
            want,
            "{name}: old-format adapter computes another function"
        );
    }
}

/// PEFT options liera cannot reproduce, edited liera records and unknown types are errors naming the field;
/// a PEFT list entry that selects nothing is ignored (PEFT requires only that some entry selects a layer).
#[test]
fn unsupported_or_edited_configs_are_named_errors() {
    let dev = Device::cpu();
    let tmp = TempDir::new("edited");
    let edit = |from: &Path, tag: &str, f: &dyn Fn(&mut Value)| -> PathBuf {
        let dir = tmp.path(tag);
        copy_dir(from, &dir);
        let mut json = read_json(&dir.join(peft::ADAPTER_CONFIG_FILE));
        f(&mut json);
        std::fs::write(dir.join(peft::ADAPTER_CONFIG_FILE), json.to_string()).unwrap();
        dir
    };
    let peft_lora = fixtures().join("v1_conv/lora");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            edit(&peft_lora, "dora", &|j| j["use_dora"] = Value::Bool(true)),
            "`use_dora: true` is a PEFT option liera does not support",
        ),
        (
            edit(&peft_lora, "rank-pattern", &|j| {
                j["rank_pattern"] = serde_json::json!({"stem.0": 4})
            }),
            "`rank_pattern: {\"stem.0\":4}` is a PEFT option liera does not support",
        ),
        (
            edit(&peft_lora, "bias", &|j| j["bias"] = "all".into()),
            "`bias: \"all\"`",
        ),
        (
            edit(&peft_lora, "ia3", &|j| j["peft_type"] = "IA3".into()),
            "peft_type `IA3` is not one liera reads",
        ),
        (
            edit(&peft_lora, "all-linear", &|j| {
                j["target_modules"] = "all-linear".into()
            }),
            "`target_modules: \"all-linear\"` is not supported",
        ),
        (
            edit(&peft_lora, "bad-regex", &|j| {
                j["target_modules"] = r"stem\.(0".into()
            }),
            "missing `)`",
        ),
    ];
    // A liera-written adapter whose PEFT fields were edited.
    let mut model = base("v1_conv", &dev);
    let cfg = PeftConfig::new(AdapterKind::Lora, 2, 4.0, "mlp.fc1").with_modules_to_save("head.fc");
    peft::apply(&mut model, &cfg).unwrap();
    let ours = tmp.path("ours");
    peft::save_adapter(&model, &cfg, &ours).unwrap();
    let mut cases = cases;
    cases.push((
        edit(&ours, "edited-alpha", &|j| j["lora_alpha"] = 8.into()),
        "`lora_alpha` is 8 but liera's record says 4: the file was edited",
    ));
    cases.push((
        edit(&ours, "edited-targets", &|j| {
            j["target_modules"] = r".*mlp\.fc[12]".into()
        }),
        "PEFT's target_modules (at layer `stages.0.blocks.0.mlp.fc2`) and liera's record",
    ));
    cases.push((
        edit(&ours, "newer", &|j| {
            j["liera"]["format_version"] = 99.into()
        }),
        "written by a newer liera (format 99",
    ));
    for (dir, msg) in cases {
        let mut model = base("v1_conv", &dev);
        let err = peft::load_adapter(&mut model, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(msg),
            "{}: expected `{msg}` in `{err}`",
            dir.display()
        );
        assert!(model
            .named_parameters()
            .iter()
            .all(|(_, t)| t.requires_grad()));
    }

    // PEFT list entries that select nothing here (q_proj) are dropped, as PEFT ignores them.
    let extra = edit(&peft_lora, "extra-entry", &|j| {
        j["target_modules"]
            .as_array_mut()
            .unwrap()
            .push("q_proj".into())
    });
    let mut model = base("v1_conv", &dev);
    let mut cfg = peft::load_adapter(&mut model, &extra).unwrap();
    cfg.target_modules.sort(); // PEFT writes its set of names in no particular order
    assert_eq!(cfg.target_modules, ["mlp.fc1", "mlp.fc2", "stem.0"]);
}
