//! safetensors model I/O: a load → save → load round trip is bit-exact; every malformed input (wrong,
//! missing or extra key, wrong shape, unsupported dtype, truncated or corrupt bytes) is an error that names
//! the problem; a different class count replaces the head and says so.

mod common;

use common::temp::TempDir;
use liera::io::{load_model, read_safetensors, save_model, write_safetensors};
use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

fn cfg() -> ConvNeXtConfig {
    ConvNeXtConfig {
        in_chans: 1,
        num_classes: 5,
        dims: vec![8, 16],
        depths: vec![1, 2],
        ..ConvNeXtConfig::atto()
    }
    .v2()
}

fn state(m: &dyn Module) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    m.visit("", &mut |n, p| {
        v.push((
            n.to_string(),
            p.tensor()
                .to_vec()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect(),
        ))
    });
    v
}

fn named(m: &dyn Module) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    m.visit("", &mut |n, p| v.push((n.to_string(), p.tensor().clone())));
    v
}

fn load_err(m: &mut dyn Module, path: &Path) -> String {
    load_model(m, path).unwrap_err().to_string()
}

#[test]
fn load_save_load_round_trip_is_bit_exact() {
    let dev = Device::cpu();
    let a = ConvNeXt::new(cfg().with_seed(1), &dev).unwrap();
    // Its own directory, so other tests' in-flight temporary files cannot show up in the check below.
    let dir = TempDir::new("io-round-trip");
    let p1 = dir.path("round1.safetensors");
    save_model(&a, &p1).unwrap();
    let mut b = ConvNeXt::new(cfg().with_seed(2), &dev).unwrap();
    assert_ne!(state(&a), state(&b));
    let notes = load_model(&mut b, &p1).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(state(&a), state(&b));
    let p2 = dir.path("round2.safetensors");
    save_model(&b, &p2).unwrap();
    assert_eq!(
        std::fs::read(&p1).unwrap(),
        std::fs::read(&p2).unwrap(),
        "re-saved file differs"
    );
    // Loading keeps the parameters' identity and trainable flag (the optimizer's tensors stay valid).
    let before: Vec<u64> = named(&b).iter().map(|(_, t)| t.id()).collect();
    load_model(&mut b, &p2).unwrap();
    let after: Vec<u64> = named(&b).iter().map(|(_, t)| t.id()).collect();
    assert_eq!(before, after);
    // The atomic writer leaves no temporary file behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

/// Writes `m`'s state with `edit` applied to the list of (name, tensor) to `name` in `dir`.
fn write_edited(
    m: &dyn Module,
    dir: &TempDir,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> PathBuf {
    let mut t = named(m);
    edit(&mut t);
    let p = dir.path(name);
    write_safetensors(&p, &t, None).unwrap();
    p
}

#[test]
fn key_and_shape_problems_are_named() {
    let dev = Device::cpu();
    let src = ConvNeXt::new(cfg(), &dev).unwrap();
    let mut m = ConvNeXt::new(cfg().with_seed(5), &dev).unwrap();
    let untouched = state(&m);
    let dir = TempDir::new("io-keys");

    let p = write_edited(&src, &dir, "renamed.safetensors", |t| {
        let i = t
            .iter()
            .position(|(n, _)| n == "stages.1.blocks.0.conv_dw.weight")
            .unwrap();
        t[i].0 = "stages.1.blocks.0.convdw.weight".into();
    });
    let e = load_err(&mut m, &p);
    assert!(
        e.contains("missing key `stages.1.blocks.0.conv_dw.weight` (expected shape [16, 1, 7, 7])"),
        "{e}"
    );
    assert!(
        e.contains("unexpected key `stages.1.blocks.0.convdw.weight`"),
        "{e}"
    );

    let p = write_edited(&src, &dir, "missing.safetensors", |t| {
        t.retain(|(n, _)| n != "stem.1.bias")
    });
    let e = load_err(&mut m, &p);
    assert!(e.contains("missing key `stem.1.bias`"), "{e}");
    assert!(!e.contains("unexpected"), "{e}");

    let p = write_edited(&src, &dir, "extra.safetensors", |t| {
        t.push((
            "stages.1.blocks.2.gamma".into(),
            Tensor::zeros([16], &dev).unwrap(),
        ))
    });
    let e = load_err(&mut m, &p);
    assert!(
        e.contains("unexpected key `stages.1.blocks.2.gamma` (shape [16])"),
        "{e}"
    );

    let p = write_edited(&src, &dir, "shape.safetensors", |t| {
        let i = t
            .iter()
            .position(|(n, _)| n == "stages.1.downsample.1.weight")
            .unwrap();
        t[i].1 = Tensor::zeros([16, 8, 1, 4], &dev).unwrap();
    });
    let e = load_err(&mut m, &p);
    assert!(
        e.contains("key `stages.1.downsample.1.weight` has shape [16, 8, 1, 4] in the file, the model expects [16, 8, 2, 2]"),
        "{e}"
    );
    assert!(
        e.contains("shape.safetensors"),
        "the error names the file: {e}"
    );
    assert_eq!(
        state(&m),
        untouched,
        "a failed load must not modify the model"
    );
}

fn raw_file(
    dir: &TempDir,
    name: &str,
    tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>,
) -> PathBuf {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let p = dir.path(name);
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    p
}

#[test]
fn dtypes_other_than_f32_are_errors_or_exact_conversions() {
    let dir = TempDir::new("io-dtypes");
    let p = raw_file(
        &dir,
        "f64.safetensors",
        vec![("stem.0.weight", Dtype::F64, vec![2], vec![0u8; 16])],
    );
    let e = read_safetensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("tensor `stem.0.weight` has dtype F64; only F32"),
        "{e}"
    );
    let p = raw_file(
        &dir,
        "i32.safetensors",
        vec![("x", Dtype::I32, vec![1], vec![0u8; 4])],
    );
    assert!(read_safetensors(&p)
        .unwrap_err()
        .to_string()
        .contains("dtype I32"));
    // F16 and BF16 convert exactly: 1.0, −2.0, 0.5 and a subnormal (2⁻²⁴) in f16; 1.0 and −3.0 in bf16.
    let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x0001]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3f80u16, 0xc040]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let p = raw_file(
        &dir,
        "half.safetensors",
        vec![
            ("a", Dtype::F16, vec![4], f16),
            ("b", Dtype::BF16, vec![2], bf16),
        ],
    );
    let t = read_safetensors(&p).unwrap();
    assert_eq!(t[0].1.data, [1.0, -2.0, 0.5, 2f32.powi(-24)]);
    assert_eq!(t[1].1.data, [1.0, -3.0]);
}

#[test]
fn truncated_and_corrupt_files_are_errors_not_panics() {
    let dev = Device::cpu();
    let m = ConvNeXt::new(cfg(), &dev).unwrap();
    let dir = TempDir::new("io-corrupt");
    let good = dir.path("good.safetensors");
    save_model(&m, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let mut target = ConvNeXt::new(cfg(), &dev).unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path("cut.safetensors");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load_err(&mut target, &p);
        assert!(
            e.contains("not a valid safetensors file"),
            "cut at {cut}: {e}"
        );
    }
    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'#'; 32]); // corrupt the JSON header
    let p = dir.path("garbage.safetensors");
    std::fs::write(&p, &garbage).unwrap();
    assert!(load_err(&mut target, &p).contains("not a valid safetensors file"));
    let mut huge = bytes;
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd header length
    std::fs::write(&p, &huge).unwrap();
    assert!(load_err(&mut target, &p).contains("not a valid safetensors file"));
    let missing = dir.path("does-not-exist.safetensors");
    assert!(load_err(&mut target, &missing).contains("does-not-exist.safetensors"));
    let e = save_model(&m, Path::new("/nonexistent-dir/x.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-dir/"), "{e}");
}

#[test]
fn another_class_count_replaces_the_head_and_says_so() {
    let dev = Device::cpu();
    let pretrained = ConvNeXt::new(cfg().with_classes(1000).with_seed(1), &dev).unwrap();
    let dir = TempDir::new("io-head");
    let p = dir.path("head.safetensors");
    save_model(&pretrained, &p).unwrap();
    let mut m = ConvNeXt::new(cfg().with_classes(10).with_seed(2), &dev).unwrap();
    let head_before = m.head.fc.weight.tensor().to_vec().unwrap();
    let notes = load_model(&mut m, &p).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("1000 classes") && notes[0].contains("10-class head"),
        "{notes:?}"
    );
    assert_eq!(m.head.fc.weight.tensor().to_vec().unwrap(), head_before);
    assert_eq!(m.head.fc.weight.shape().dims(), [10, 16]);
    let (src, dst) = (state(&pretrained), state(&m));
    for ((n, a), (_, b)) in src.iter().zip(&dst) {
        if !n.starts_with("head.fc") {
            assert_eq!(a, b, "{n} not loaded");
        }
    }
    // Another feature width is not a class-count change: an error.
    let mut wide = ConvNeXt::new(
        ConvNeXtConfig {
            dims: vec![8, 24],
            ..cfg()
        },
        &dev,
    )
    .unwrap();
    assert!(load_err(&mut wide, &p).contains("head.fc.weight"));
}

#[test]
fn linear_and_conv_mlp_layouts_convert_with_a_note() {
    // timm's tiny-style Linear MLP weights (4C, C) load into the conv-MLP layout (4C, C, 1, 1) and back.
    let dev = Device::cpu();
    let linear = ConvNeXt::new(
        ConvNeXtConfig {
            conv_mlp: false,
            ..cfg()
        },
        &dev,
    )
    .unwrap();
    let dir = TempDir::new("io-mlp-layouts");
    let p = dir.path("linear-mlp.safetensors");
    save_model(&linear, &p).unwrap();
    let mut conv = ConvNeXt::new(
        ConvNeXtConfig {
            conv_mlp: true,
            ..cfg()
        }
        .with_seed(3),
        &dev,
    )
    .unwrap();
    let notes = load_model(&mut conv, &p).unwrap();
    assert_eq!(notes.len(), 6, "fc1 and fc2 of three blocks: {notes:?}");
    assert!(
        notes[0].contains("reshaped [32, 8] from the file to the model's [32, 8, 1, 1]"),
        "{notes:?}"
    );
    let to_bits = |s: Vec<(String, Vec<u32>)>| s.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    assert_eq!(to_bits(state(&linear)), to_bits(state(&conv)));
}
