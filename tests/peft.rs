//! Adapter tests: the adapted kernel equals the base at init for every kind; the tape's
//! gradients for A and B equal the closed forms; merge equals the adapted forward; unmerge restores the base
//! bit-exactly; frozen parameters get no gradient and never change; trainable counts are exact; bad
//! configurations are errors that name the problem.

mod common;

use common::reference::matmul;
use common::temp::TempDir;
use common::Rng;
use common::{assert_close, f32s};
use liera::nn::Classifier;
use liera::nn::{Adaptable, Conv2d, ConvNeXt, ConvNeXtConfig, InitRng, Linear, Module, Param};
use liera::optim::{AdamW, Optimizer};
use liera::peft::{self, Adapter, AdapterKind, PeftConfig};
use liera::{no_grad, Conv2dParams, Device, Tensor};

const KINDS: [AdapterKind; 3] = AdapterKind::ALL;

/// A layer under test: a convolution (dense, grouped or depthwise) or a linear layer, with random weights
/// kept away from zero (so W is in the group), plus a matching input.
enum TestLayer {
    Conv(Conv2d),
    Linear(Linear),
}

impl TestLayer {
    fn adaptable(&mut self) -> &mut dyn Adaptable {
        match self {
            TestLayer::Conv(c) => c,
            TestLayer::Linear(l) => l,
        }
    }
    fn weight(&self) -> Tensor {
        match self {
            TestLayer::Conv(c) => c.weight.tensor().clone(),
            TestLayer::Linear(l) => l.weight.tensor().clone(),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            TestLayer::Conv(c) => c.forward(x).unwrap(),
            TestLayer::Linear(l) => l.forward(x).unwrap(),
        }
    }
    /// The same layer's op with an explicit kernel `w` (to get G = ∂L/∂W' from the tape).
    fn forward_with(&self, x: &Tensor, w: &Tensor) -> Tensor {
        match self {
            TestLayer::Conv(c) => x
                .conv2d(w, c.bias.as_ref().map(|b| b.tensor()), c.params)
                .unwrap(),
            TestLayer::Linear(l) => x.linear(w, l.bias.as_ref().map(|b| b.tensor())).unwrap(),
        }
    }
}

/// (name, layer, input) for: dense 3×3 conv, grouped conv (g = 2, stride 2), depthwise 7×7 (ConvNeXt's
/// conv_dw), 1×1 conv, and a linear layer.
fn layers(rng: &mut Rng, dev: &Device) -> Vec<(&'static str, TestLayer, Tensor)> {
    let conv = |rng: &mut Rng, c_in: usize, c_out: usize, k: usize, p: Conv2dParams| {
        let shape = [c_out, c_in / p.groups, k, k];
        let n = shape.iter().product();
        Conv2d {
            weight: Param::new(
                Tensor::from_slice(&f32s(&rng.vec_away_from_zero(n, 0.2, 1.0)), shape, dev)
                    .unwrap(),
                false,
            ),
            bias: Some(Param::new(
                Tensor::from_slice(&f32s(&rng.vec(c_out, -0.5, 0.5)), [c_out], dev).unwrap(),
                false,
            )),
            params: p,
            adapter: None,
        }
    };
    let image = |rng: &mut Rng, c: usize, hw: usize| {
        Tensor::from_slice(
            &f32s(&rng.vec(2 * c * hw * hw, -1.0, 1.0)),
            [2, c, hw, hw],
            dev,
        )
        .unwrap()
    };
    let dense = conv(rng, 3, 5, 3, Conv2dParams::default().padding(1));
    let grouped = conv(rng, 4, 6, 3, Conv2dParams::default().stride(2).groups(2));
    let depthwise = conv(rng, 4, 4, 7, Conv2dParams::default().padding(3).groups(4));
    let pointwise = conv(rng, 4, 8, 1, Conv2dParams::default());
    let linear = Linear {
        weight: Param::new(
            Tensor::from_slice(&f32s(&rng.vec_away_from_zero(7 * 5, 0.2, 1.0)), [7, 5], dev)
                .unwrap(),
            false,
        ),
        bias: Some(Param::new(Tensor::zeros([7], dev).unwrap(), false)),
        adapter: None,
    };
    let x_dense = image(rng, 3, 6);
    let x_grouped = image(rng, 4, 7);
    let x_dw = image(rng, 4, 5);
    let x_pw = image(rng, 4, 3);
    let x_lin = Tensor::from_slice(&f32s(&rng.vec(3 * 5, -1.0, 1.0)), [3, 5], dev).unwrap();
    vec![
        ("dense conv 3×3", TestLayer::Conv(dense), x_dense),
        (
            "grouped conv g=2 stride 2",
            TestLayer::Conv(grouped),
            x_grouped,
        ),
        ("depthwise conv 7×7", TestLayer::Conv(depthwise), x_dw),
        ("pointwise conv 1×1", TestLayer::Conv(pointwise), x_pw),
        ("linear", TestLayer::Linear(linear), x_lin),
    ]
}

fn attach(layer: &mut TestLayer, kind: AdapterKind, rank: usize, alpha: f32, seed: u64) {
    let l = layer.adaptable();
    let w = l.weight().tensor().clone();
    let a = Adapter::new(
        kind,
        "test",
        w.shape(),
        rank,
        alpha,
        &mut InitRng::new(seed),
        w.device(),
    )
    .unwrap();
    *l.adapter_mut() = Some(Box::new(a));
}

#[test]
fn adapted_kernel_equals_base_at_init_for_every_kind() {
    let dev = Device::cpu();
    for kind in KINDS {
        let mut rng = Rng::new(1);
        for (name, mut layer, x) in layers(&mut rng, &dev) {
            let before = layer.forward(&x).to_vec().unwrap();
            attach(&mut layer, kind, 2, 4.0, 7);
            let l = layer.adaptable();
            let adapted = Adapter::of(l).unwrap().adapt(l.weight().tensor()).unwrap();
            // B = 0 ⇒ ΔW = 0 exactly ⇒ W ⊙ exp(0) = W, W + W ⊙ 0 = W, W + 0 = W, bit for bit.
            assert_eq!(
                adapted.to_vec().unwrap(),
                layer.weight().to_vec().unwrap(),
                "{name}, {kind:?}: W' ≠ W at init"
            );
            assert_eq!(
                layer.forward(&x).to_vec().unwrap(),
                before,
                "{name}, {kind:?}"
            );
        }
    }
}

#[test]
fn a_is_kaiming_uniform_and_b_is_zero() {
    let dev = Device::cpu();
    let shape = liera::Shape::new([16, 1, 7, 7]); // depthwise: matrix 16×49, fan_in 49
    let a = Adapter::new(
        AdapterKind::Liera,
        "dw",
        &shape,
        4,
        8.0,
        &mut InitRng::new(3),
        &dev,
    )
    .unwrap();
    assert_eq!(a.a().shape().dims(), [4, 49]);
    assert_eq!(a.b().shape().dims(), [16, 4]);
    assert!(a.b().tensor().to_vec().unwrap().iter().all(|&v| v == 0.0));
    let bound = 1.0 / 49f32.sqrt();
    let va = a.a().tensor().to_vec().unwrap();
    assert!(va.iter().all(|v| v.abs() <= bound));
    // Spread over the interval, not collapsed: the max |A| is close to the bound.
    assert!(va.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.8 * bound);
    assert_eq!(a.scale(), 2.0);
}

/// With G = ∂L/∂W', M = s·(G ⊙ W') (exact), s·(G ⊙ W) (first order), s·G (LoRA), and in the matrix
/// view ∂L/∂B = M Aᵀ, ∂L/∂A = Bᵀ M. G itself comes from the tape of the same layer op run on W' as a leaf.
///
/// Tolerance: both sides are f32 sums of at most a few hundred products of O(1) terms (unit roundoff 6e-8),
/// so they agree to ~1e-5 of the largest entry; 1e-4 (relative to that scale) leaves margin, and a wrong
/// formula (a missing W' factor, a transposition, the wrong s) errs by O(1).
#[test]
fn tape_gradients_of_a_and_b_equal_the_closed_forms() {
    let dev = Device::cpu();
    for kind in KINDS {
        let mut rng = Rng::new(11);
        for (name, mut layer, x) in layers(&mut rng, &dev) {
            let (rank, alpha) = (2usize, 3.0f32);
            attach(&mut layer, kind, rank, alpha, 5);
            let s = (alpha / rank as f32) as f64;
            let w = layer.weight();
            let (rows, cols) = peft::matrix_view(w.shape());
            // Make B nonzero (small, so exp(ΔW) stays O(1)); otherwise ∂A = Bᵀ M would be trivially 0.
            let bvals = f32s(&rng.vec(rows * rank, -0.3, 0.3));
            let (a_t, b_t) = {
                let ad = Adapter::of(layer.adaptable()).unwrap();
                ad.b()
                    .tensor()
                    .assign(&Tensor::from_slice(&bvals, [rows, rank], &dev).unwrap())
                    .unwrap();
                (ad.a().tensor().clone(), ad.b().tensor().clone())
            };
            let y = layer.forward(&x);
            let r = Tensor::from_slice(
                &f32s(&rng.vec(y.numel(), -1.0, 1.0)),
                y.shape().clone(),
                &dev,
            )
            .unwrap();
            let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&w).is_none(), "{name}: frozen W got a gradient");
            let da = grads.get(&a_t).expect("∂A").to_vec().unwrap();
            let db = grads.get(&b_t).expect("∂B").to_vec().unwrap();

            // Closed form, in f64 from the f32 values.
            let wv: Vec<f64> = w.to_vec().unwrap().iter().map(|&v| v as f64).collect();
            let av: Vec<f64> = a_t.to_vec().unwrap().iter().map(|&v| v as f64).collect();
            let bv: Vec<f64> = bvals.iter().map(|&v| v as f64).collect();
            let ba = matmul(&bv, &av, rows, rank, cols, false, false);
            let w_adapted: Vec<f64> = (0..wv.len())
                .map(|i| {
                    let d = s * ba[i];
                    match kind {
                        AdapterKind::Liera => wv[i] * d.exp(),
                        AdapterKind::LieraFirstOrder => wv[i] + wv[i] * d,
                        AdapterKind::Lora => wv[i] + d,
                    }
                })
                .collect();
            let engine_adapted = {
                let l = layer.adaptable();
                no_grad(|| Adapter::of(l).unwrap().adapt(l.weight().tensor())).unwrap()
            };
            assert_close(
                &format!("{name} {kind:?} W'"),
                &engine_adapted.to_vec().unwrap(),
                &w_adapted,
                1e-5,
            );
            let wp = engine_adapted.to_param();
            let g = layer
                .forward_with(&x, &wp)
                .mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gv: Vec<f64> = g
                .get(&wp)
                .unwrap()
                .to_vec()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let m: Vec<f64> = (0..gv.len())
                .map(|i| match kind {
                    AdapterKind::Liera => s * gv[i] * w_adapted[i],
                    AdapterKind::LieraFirstOrder => s * gv[i] * wv[i],
                    AdapterKind::Lora => s * gv[i],
                })
                .collect();
            let db_closed = matmul(&m, &av, rows, cols, rank, false, true); // M Aᵀ: rows×r
            let da_closed = matmul(&bv, &m, rank, rows, cols, true, false); // Bᵀ M: r×cols
            assert_close(&format!("{name} {kind:?} ∂B"), &db, &db_closed, 1e-4);
            assert_close(&format!("{name} {kind:?} ∂A"), &da, &da_closed, 1e-4);
        }
    }
}

/// A small ConvNeXt (1×16×16 input, dims 8,16, depths 1,1, 3 classes) in either MLP layout.
fn small(conv_mlp: bool, v2: bool) -> ConvNeXtConfig {
    let mut cfg = ConvNeXtConfig {
        in_chans: 1,
        num_classes: 3,
        dims: vec![8, 16],
        depths: vec![1, 1],
        conv_mlp,
        ..ConvNeXtConfig::atto()
    };
    if v2 {
        cfg = cfg.v2();
    }
    cfg.with_seed(42)
}

fn input(dev: &Device, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    Tensor::from_slice(&f32s(&rng.vec(4 * 16 * 16, -1.0, 1.0)), [4, 1, 16, 16], dev).unwrap()
}

/// Gives every adapter a random nonzero B (a "trained" adapter) so merge has something to do.
fn randomise_b(model: &ConvNeXt, seed: u64, scale: f64) {
    let mut rng = Rng::new(seed);
    model.visit_adaptable("", &mut |_, layer| {
        if let Some(a) = Adapter::of(layer) {
            let b = a.b().tensor();
            let v = f32s(&rng.vec(b.numel(), -scale, scale));
            b.assign(&Tensor::from_slice(&v, b.shape().clone(), b.device()).unwrap())
                .unwrap();
        }
    });
}

fn base_snapshot(model: &dyn Module) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    model.visit("", &mut |n, p| {
        v.push((n.to_string(), p.tensor().to_vec().unwrap()))
    });
    v
}

const TARGETS: &str = "conv_dw,mlp.fc1,mlp.fc2";

/// Merge computes W' with the same kernels the adapted forward uses, so on the CPU the merged forward is
/// bitwise equal; the stated tolerance (1e-6 relative to the largest logit) allows a backend whose fused
/// merge rounds differently. Unmerge must restore every base weight bit for bit.
#[test]
fn merge_equals_adapted_forward_and_unmerge_restores_base_bit_exactly() {
    let dev = Device::cpu();
    for kind in KINDS {
        for conv_mlp in [true, false] {
            let mut model = ConvNeXt::new(small(conv_mlp, false), &dev).unwrap();
            let before = base_snapshot(&model);
            let cfg = PeftConfig::new(kind, 2, 4.0, TARGETS).with_modules_to_save("head.fc");
            peft::apply(&mut model, &cfg).unwrap();
            randomise_b(&model, 9, 0.2);
            let x = input(&dev, 3);
            let adapted = no_grad(|| model.forward(&x, false))
                .unwrap()
                .to_vec()
                .unwrap();
            let base_out = {
                let plain = ConvNeXt::new(small(conv_mlp, false), &dev).unwrap();
                no_grad(|| plain.forward(&x, false))
                    .unwrap()
                    .to_vec()
                    .unwrap()
            };
            assert_ne!(adapted, base_out, "a nonzero B must change the function");

            assert_eq!(peft::merge(&mut model).unwrap(), 6);
            let merged = no_grad(|| model.forward(&x, false))
                .unwrap()
                .to_vec()
                .unwrap();
            let scale = adapted.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, m) in adapted.iter().zip(&merged) {
                assert!(
                    (a - m).abs() <= 1e-6 * scale,
                    "{kind:?}: merged {m} vs adapted {a}"
                );
            }
            assert!(
                peft::merge(&mut model).is_err(),
                "double merge must be refused"
            );

            assert_eq!(peft::unmerge(&mut model).unwrap(), 6);
            assert_eq!(
                base_snapshot(&model),
                before,
                "{kind:?}: unmerge must restore W bit-exactly"
            );
            let again = no_grad(|| model.forward(&x, false))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(again, adapted);

            // merge_and_unload: a plain network with the adapted function.
            peft::merge_and_unload(&mut model).unwrap();
            assert!(model
                .named_parameters()
                .iter()
                .all(|(n, _)| !n.contains("lora_")));
            let unloaded = no_grad(|| model.forward(&x, false))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(unloaded, merged);
        }
    }
}

#[test]
fn frozen_parameters_get_no_gradient_and_stay_bit_identical_under_adamw() {
    let dev = Device::cpu();
    for conv_mlp in [true, false] {
        let mut model = ConvNeXt::new(small(conv_mlp, true), &dev).unwrap();
        let cfg =
            PeftConfig::new(AdapterKind::Liera, 2, 2.0, TARGETS).with_modules_to_save("head.fc");
        peft::apply(&mut model, &cfg).unwrap();
        let before = base_snapshot(&model);
        let params = model.trainable_parameters();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.contains(".lora_") || n.starts_with("head.fc.")),
            "{names:?}"
        );
        let frozen: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        assert!(!frozen.is_empty());
        let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.05).unwrap();
        let x = input(&dev, 4);
        let labels = [0usize, 1, 2, 1];
        for _ in 0..3 {
            let loss = model
                .forward(&x, true)
                .unwrap()
                .cross_entropy(&labels)
                .unwrap();
            let grads = loss.backward().unwrap();
            for (n, t) in &frozen {
                assert!(
                    t.is_leaf() && !t.requires_grad(),
                    "{n} must be a constant leaf"
                );
                assert!(grads.get(t).is_none(), "frozen {n} got a gradient buffer");
            }
            // Everything trainable is on the loss's path and gets a gradient.
            for (n, t) in &params {
                assert!(grads.get(t).is_some(), "trainable {n} got no gradient");
            }
            opt.step(&params, &grads, 1e-2).unwrap();
        }
        let after = base_snapshot(&model);
        for ((n, b), (_, a)) in before.iter().zip(&after) {
            if n.starts_with("head.fc.") {
                assert_ne!(a, b, "{n} trains and must move");
            } else {
                assert_eq!(a, b, "frozen {n} changed");
            }
        }
        model.visit_adaptable("", &mut |path, layer| {
            if let Some(a) = Adapter::of(layer) {
                assert!(
                    a.b().tensor().to_vec().unwrap().iter().any(|&v| v != 0.0),
                    "{path}: B did not move"
                );
            }
        });
    }
}

/// Hand count for `small(true, _)` (dims 8, 16; one block per stage) with r = 2 on conv_dw, mlp.fc1, mlp.fc2:
/// r·(rows + cols) per layer —
///   stage 0 (C = 8):  conv_dw 8×49 → 2·57 = 114;  fc1 32×8 → 2·40 = 80;  fc2 8×32 → 80
///   stage 1 (C = 16): conv_dw 16×49 → 2·65 = 130; fc1 64×16 → 2·80 = 160; fc2 16×64 → 160
/// = 724, plus the saved head.fc: 16·3 + 3 = 51; total trainable 775.
#[test]
fn trainable_parameter_counts_are_exact() {
    let dev = Device::cpu();
    for (conv_mlp, v2) in [(true, false), (false, false), (true, true)] {
        let mut model = ConvNeXt::new(small(conv_mlp, v2), &dev).unwrap();
        let base = model.num_parameters();
        let cfg =
            PeftConfig::new(AdapterKind::Liera, 2, 2.0, TARGETS).with_modules_to_save("head.fc");
        let report = peft::apply(&mut model, &cfg).unwrap();
        let per_layer: Vec<(String, usize)> = report
            .rows
            .iter()
            .map(|r| (r.path.clone(), r.trainable))
            .collect();
        let want = [
            ("stages.0.blocks.0.conv_dw", 114),
            ("stages.0.blocks.0.mlp.fc1", 80),
            ("stages.0.blocks.0.mlp.fc2", 80),
            ("stages.1.blocks.0.conv_dw", 130),
            ("stages.1.blocks.0.mlp.fc1", 160),
            ("stages.1.blocks.0.mlp.fc2", 160),
            ("head.fc.weight", 48),
            ("head.fc.bias", 3),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        assert_eq!(per_layer, want);
        assert_eq!(report.trainable, 775);
        assert_eq!(report.total, base + 724);
        let counted: usize = model
            .trainable_parameters()
            .iter()
            .map(|(_, t)| t.numel())
            .sum();
        assert_eq!(counted, 775);
        let text = report.to_string();
        assert!(text.contains("trainable 775 of"), "{text}");
    }
}

#[test]
fn zero_entries_are_reported_and_cannot_move_under_liera() {
    let dev = Device::cpu();
    let mut model = ConvNeXt::new(small(true, false), &dev).unwrap();
    // Zero three taps of the first depthwise kernel.
    {
        let w = model.stages[0].blocks[0].conv_dw.weight.tensor().clone();
        let mut v = w.to_vec().unwrap();
        v[0] = 0.0;
        v[10] = 0.0;
        v[48] = 0.0;
        w.assign(&Tensor::from_slice(&v, w.shape().clone(), &dev).unwrap())
            .unwrap();
    }
    let cfg = PeftConfig::new(AdapterKind::Liera, 2, 2.0, "conv_dw");
    let report = peft::apply(&mut model, &cfg).unwrap();
    assert_eq!(report.rows[0].path, "stages.0.blocks.0.conv_dw");
    assert_eq!(report.rows[0].zero_entries, Some(3));
    assert_eq!(report.rows[1].zero_entries, Some(0));
    randomise_b(&model, 5, 0.5);
    peft::merge(&mut model).unwrap();
    let merged = model.stages[0].blocks[0]
        .conv_dw
        .weight
        .tensor()
        .to_vec()
        .unwrap();
    assert_eq!((merged[0], merged[10], merged[48]), (0.0, 0.0, 0.0));
    // LoRA reports no zero count (its entries can move).
    let mut lora = ConvNeXt::new(small(true, false), &dev).unwrap();
    let r = peft::apply(
        &mut lora,
        &PeftConfig::new(AdapterKind::Lora, 2, 2.0, "conv_dw"),
    )
    .unwrap();
    assert_eq!(r.rows[0].zero_entries, None);
}

#[test]
fn invalid_configurations_are_named_errors_and_leave_the_model_unchanged() {
    let dev = Device::cpu();
    let mut model = ConvNeXt::new(small(true, false), &dev).unwrap();
    let cases = [
        (
            PeftConfig::new(AdapterKind::Liera, 0, 1.0, TARGETS),
            "rank r must be at least 1",
        ),
        (
            PeftConfig::new(AdapterKind::Liera, 2, 0.0, TARGETS),
            "alpha must be positive",
        ),
        (
            PeftConfig::new(AdapterKind::Lora, 2, -1.0, TARGETS),
            "alpha must be positive",
        ),
        (
            PeftConfig::new(AdapterKind::Liera, 2, 1.0, "conv_dw,nonexistent"),
            "`nonexistent` matches no",
        ),
        (
            PeftConfig::new(AdapterKind::Liera, 2, 1.0, ""),
            "no target modules",
        ),
        // conv_dw of stage 0 is 8×49 as a matrix: rank 9 > min(8, 49).
        (
            PeftConfig::new(AdapterKind::Liera, 9, 1.0, "conv_dw"),
            "stages.0.blocks.0.conv_dw: rank 9 exceeds min(rows, cols) = min(8, 49) = 8",
        ),
        (
            PeftConfig::new(AdapterKind::Liera, 2, 1.0, "conv_dw").with_modules_to_save("nope"),
            "modules_to_save pattern `nope` matches no parameter",
        ),
        (
            PeftConfig::new(AdapterKind::Liera, 2, 1.0, "head.fc").with_modules_to_save("head.fc"),
            "head.fc is both an adapter target and in modules_to_save",
        ),
    ];
    for (cfg, msg) in cases {
        let err = peft::apply(&mut model, &cfg).unwrap_err().to_string();
        assert!(err.contains(msg), "expected `{msg}` in `{err}`");
        assert!(
            model
                .named_parameters()
                .iter()
                .all(|(_, t)| t.requires_grad()),
            "model changed by a failed apply"
        );
        assert!(model
            .named_parameters()
            .iter()
            .all(|(n, _)| !n.contains("lora_")));
    }
    peft::apply(
        &mut model,
        &PeftConfig::new(AdapterKind::Liera, 2, 1.0, "conv_dw"),
    )
    .unwrap();
    let err = peft::apply(
        &mut model,
        &PeftConfig::new(AdapterKind::Liera, 2, 1.0, "conv_dw"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("already has an adapter"), "{err}");
    assert!(AdapterKind::parse("dora")
        .unwrap_err()
        .to_string()
        .contains("unknown adapter method `dora`"));
}

#[test]
fn adapter_save_load_round_trip_and_shape_errors() {
    let dev = Device::cpu();
    for kind in KINDS {
        let mut model = ConvNeXt::new(small(false, false), &dev).unwrap();
        let cfg = PeftConfig::new(kind, 2, 4.0, TARGETS)
            .with_modules_to_save("head.fc")
            .with_seed(3);
        peft::apply(&mut model, &cfg).unwrap();
        randomise_b(&model, 21, 0.2);
        let x = input(&dev, 8);
        let want = no_grad(|| model.forward(&x, false))
            .unwrap()
            .to_vec()
            .unwrap();
        let tmp = TempDir::new(&format!("adapter-{}", kind.name()));
        let dir = tmp.path("adapter");
        peft::save_adapter(&model, &cfg, &dir).unwrap();
        let names = liera::io::read_safetensors(&dir.join(peft::ADAPTER_WEIGHTS_FILE)).unwrap();
        // PEFT's names: LoRA (and liera's exact LieRA) `lora_A.weight`, first order as PEFT's HiRA `hira_A`.
        let (ka, kb) = match kind {
            AdapterKind::LieraFirstOrder => ("hira_A", "hira_B"),
            _ => ("lora_A.weight", "lora_B.weight"),
        };
        let key = |layer: &str, k: &str| format!("base_model.model.{layer}.{k}");
        let keys: Vec<&str> = names.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.contains(&key("stages.0.blocks.0.conv_dw", ka).as_str()),
            "{keys:?}"
        );
        assert!(keys.contains(&key("stages.1.blocks.0.mlp.fc2", kb).as_str()));
        assert!(keys.contains(&"base_model.model.head.fc.weight"));
        // PEFT's conv layout: A (r, Cin/g, kh, kw), B (Cout, r, 1, 1); Linear: A (r, in), B (out, r).
        let shape = |k: String| names.iter().find(|(n, _)| *n == k).unwrap().1.shape.clone();
        assert_eq!(shape(key("stages.0.blocks.0.conv_dw", ka)), [2, 1, 7, 7]);
        assert_eq!(shape(key("stages.0.blocks.0.conv_dw", kb)), [8, 2, 1, 1]);
        assert_eq!(shape(key("stages.0.blocks.0.mlp.fc1", ka)), [2, 8]);
        assert_eq!(shape(key("stages.0.blocks.0.mlp.fc1", kb)), [32, 2]);

        // A fresh base (same seed: same base weights) with the adapter loaded computes the same function.
        let mut fresh = ConvNeXt::new(small(false, false), &dev).unwrap();
        let loaded = peft::load_adapter(&mut fresh, &dir).unwrap();
        assert_eq!(loaded, cfg);
        let got = no_grad(|| fresh.forward(&x, false))
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(
            got, want,
            "{kind:?}: loaded adapter computes another function"
        );
        assert_eq!(
            fresh.trainable_parameters().len(),
            model.trainable_parameters().len()
        );

        // Onto a base with other widths: a clear error naming a key and both shapes; the model is unchanged.
        let mut other = ConvNeXt::new(
            ConvNeXtConfig {
                dims: vec![8, 24],
                ..small(false, false)
            },
            &dev,
        )
        .unwrap();
        let err = peft::load_adapter(&mut other, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "key `{}` has shape [16, 2, 1, 1] in the file, the model needs [24, 2, 1, 1]",
                key("stages.1.blocks.0.conv_dw", kb)
            )),
            "{err}"
        );
        assert!(other
            .named_parameters()
            .iter()
            .all(|(n, t)| t.requires_grad() && !n.contains("lora_")));
    }
}

/// Misuse of save/load/merge is an error that names the problem and leaves the model as it was.
#[test]
fn adapter_misuse_is_an_error_and_changes_nothing() {
    let dev = Device::cpu();
    let mut model = ConvNeXt::new(small(false, false), &dev).unwrap();
    let cfg = PeftConfig::new(AdapterKind::Liera, 2, 4.0, TARGETS).with_seed(3);
    peft::apply(&mut model, &cfg).unwrap();
    let tmp = TempDir::new("adapter-misuse");
    let dir = tmp.path("adapter");

    // A config that does not describe the adapters would write a file that cannot be loaded back.
    let other_rank = PeftConfig::new(AdapterKind::Liera, 3, 4.0, TARGETS);
    let err = peft::save_adapter(&model, &other_rank, &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 2") && err.contains("r=3"), "{err}");
    let other_kind = PeftConfig::new(AdapterKind::Lora, 2, 4.0, TARGETS);
    assert!(peft::save_adapter(&model, &other_kind, &dir).is_err());
    assert!(!dir.exists(), "nothing is written for a refused save");
    peft::save_adapter(&model, &cfg, &dir).unwrap();

    // Loading onto a model that already has adapters (here: the same model) is refused, not a panic.
    let err = peft::load_adapter(&mut model, &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already has adapters"), "{err}");

    // Merge with one adapter already merged: refused before any layer changes.
    randomise_b(&model, 5, 0.2);
    let weights = |m: &ConvNeXt| -> Vec<Vec<f32>> {
        m.named_parameters()
            .iter()
            .map(|(_, t)| t.to_vec().unwrap())
            .collect()
    };
    let first = "stages.0.blocks.0.conv_dw";
    {
        let layer = &mut model.stages[0].blocks[0].conv_dw;
        let a = layer.adapter.as_deref_mut().unwrap();
        let a = a.downcast_mut::<Adapter>().unwrap();
        a.merge_into(first, &mut layer.weight).unwrap();
    }
    let before = weights(&model);
    let err = peft::merge(&mut model).unwrap_err().to_string();
    assert!(
        err.contains(first) && err.contains("already merged"),
        "{err}"
    );
    assert_eq!(weights(&model), before, "a refused merge changed a weight");
    let err = peft::unmerge(&mut model).unwrap_err().to_string();
    assert!(err.contains("not merged"), "{err}");
    assert_eq!(
        weights(&model),
        before,
        "a refused unmerge changed a weight"
    );
}

/// End to end through the shared training loop: adapters + head on a fixed random batch; the loss falls
/// for every kind (the factors receive useful gradients through the whole network).
#[test]
fn a_few_adamw_steps_lower_the_loss_for_every_kind() {
    use liera::data::Batch;
    use liera::train::{train, TrainOptions};
    let dev = Device::cpu();
    let mut rng = Rng::new(77);
    let batch = Batch {
        images: f32s(&rng.vec(8 * 256, -1.0, 1.0)),
        dims: [8, 1, 16, 16],
        labels: vec![0, 1, 2, 0, 1, 2, 0, 1],
    };
    for kind in KINDS {
        let mut model = ConvNeXt::new(small(true, false), &dev).unwrap();
        let cfg = PeftConfig::new(kind, 2, 4.0, TARGETS).with_modules_to_save("head.fc");
        peft::apply(&mut model, &cfg).unwrap();
        let params = model.trainable_parameters();
        let mut opt = AdamW::default();
        let opts = TrainOptions {
            steps: 12,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 0,
            clip_norm: Some(1.0),
            log_every: 1,
        };
        let logs = train(
            &model,
            &params,
            &mut opt,
            &dev,
            &opts,
            0,
            &mut || Ok(batch.clone()),
            &mut |_| Ok(()),
        )
        .unwrap();
        let (first, last) = (logs[0].loss, logs.last().unwrap().loss);
        assert!(last < 0.8 * first, "{kind:?}: loss {first} → {last}");
    }
}
