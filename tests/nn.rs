//! ConvNeXt tests: every preset's parameter names and shapes equal timm's (generated here independently from
//! timm's architecture description), parameter counts match the known totals, and the gradient of a tiny v1
//! and v2 network (both MLP layouts) with respect to every parameter and the input matches central finite
//! differences of a plain f64 reference forward written in this file (on the convolution and erf shared in
//! `tests/common/reference.rs`).

mod common;

use common::reference;
use common::{check_gradients, input, Input, Rng, Tol};
use liera::nn::Classifier;
use liera::nn::{ConvNeXt, ConvNeXtConfig, DropPath, Module, Param};
use liera::{no_grad, Conv2dParams, Device, Tensor};
use std::collections::HashMap;

/// timm's state-dict keys and shapes for a ConvNeXt config, spelled out from `timm/models/convnext.py`.
fn timm_keys(cfg: &ConvNeXtConfig) -> Vec<(String, Vec<usize>)> {
    let mut k: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| k.push((name, shape));
    let d0 = cfg.dims[0];
    add("stem.0.weight".into(), vec![d0, cfg.in_chans, 4, 4]);
    add("stem.0.bias".into(), vec![d0]);
    add("stem.1.weight".into(), vec![d0]);
    add("stem.1.bias".into(), vec![d0]);
    for (i, (&c, &depth)) in cfg.dims.iter().zip(&cfg.depths).enumerate() {
        let s = format!("stages.{i}");
        if i > 0 {
            let p = cfg.dims[i - 1];
            add(format!("{s}.downsample.0.weight"), vec![p]);
            add(format!("{s}.downsample.0.bias"), vec![p]);
            add(format!("{s}.downsample.1.weight"), vec![c, p, 2, 2]);
            add(format!("{s}.downsample.1.bias"), vec![c]);
        }
        for j in 0..depth {
            let b = format!("{s}.blocks.{j}");
            if cfg.ls_init_value.is_some() {
                add(format!("{b}.gamma"), vec![c]);
            }
            add(format!("{b}.conv_dw.weight"), vec![c, 1, 7, 7]);
            add(format!("{b}.conv_dw.bias"), vec![c]);
            add(format!("{b}.norm.weight"), vec![c]);
            add(format!("{b}.norm.bias"), vec![c]);
            let (fc1, fc2) = if cfg.conv_mlp {
                (vec![4 * c, c, 1, 1], vec![c, 4 * c, 1, 1])
            } else {
                (vec![4 * c, c], vec![c, 4 * c])
            };
            add(format!("{b}.mlp.fc1.weight"), fc1);
            add(format!("{b}.mlp.fc1.bias"), vec![4 * c]);
            if cfg.use_grn {
                add(format!("{b}.mlp.grn.weight"), vec![4 * c]);
                add(format!("{b}.mlp.grn.bias"), vec![4 * c]);
            }
            add(format!("{b}.mlp.fc2.weight"), fc2);
            add(format!("{b}.mlp.fc2.bias"), vec![c]);
        }
    }
    let last = *cfg.dims.last().unwrap();
    add("head.norm.weight".into(), vec![last]);
    add("head.norm.bias".into(), vec![last]);
    add("head.fc.weight".into(), vec![cfg.num_classes, last]);
    add("head.fc.bias".into(), vec![cfg.num_classes]);
    k.sort();
    k
}

fn model_keys(m: &ConvNeXt) -> Vec<(String, Vec<usize>)> {
    let mut k = Vec::new();
    m.visit("", &mut |n, p| {
        k.push((n.to_string(), p.shape().dims().to_vec()))
    });
    k.sort();
    k
}

/// Parameter counts of timm's presets with 1000 classes, 3 input channels. The formula: stem 16·3·d0 + 3·d0;
/// downsample 4·p·c + c + 2p; block 49c + c (dw) + 2c (norm) + 8c² + 5c (mlp) + c (γ, v1) or 8c (GRN, v2);
/// head 2·d3 + 1000·d3 + 1000. They agree with timm's published sizes (atto 3.70 M, femto 5.22 M,
/// pico 9.05 M, nano 15.59 M, tiny 28.59 M, small 50.22 M, base 88.59 M; v2 atto 3.71 M, femto 5.23 M,
/// nano 15.62 M, base 88.72 M). large (197.77 M) and v2 huge (660.29 M) are checked by their layout only,
/// to keep the test's memory small.
#[test]
fn presets_match_timm_names_shapes_and_counts() {
    let dev = Device::cpu();
    let cases: [(&str, usize); 12] = [
        ("convnext_atto", 3_695_520),
        ("convnext_femto", 5_217_784),
        ("convnext_pico", 9_045_672),
        ("convnext_nano", 15_593_560),
        ("convnext_tiny", 28_589_128),
        ("convnextv2_atto", 3_708_400),
        ("convnextv2_tiny", 28_635_496),
        ("convnext_small", 50_223_688),
        ("convnext_base", 88_591_464),
        ("convnextv2_femto", 5_233_240),
        ("convnextv2_nano", 15_623_800),
        ("convnextv2_base", 88_717_800),
    ];
    for (name, count) in cases {
        let cfg = ConvNeXtConfig::preset(name).unwrap();
        let m = ConvNeXt::new(cfg.clone(), &dev).unwrap();
        assert_eq!(
            model_keys(&m),
            timm_keys(&cfg),
            "{name}: keys/shapes differ from timm"
        );
        assert_eq!(m.num_parameters(), count, "{name}");
    }
    let micro = ConvNeXt::new(ConvNeXtConfig::micro(), &dev).unwrap();
    assert_eq!(model_keys(&micro), timm_keys(&ConvNeXtConfig::micro()));
    let large = ConvNeXtConfig::preset("convnextv2_large.fcmae_ft_in22k_in1k").unwrap();
    assert_eq!(
        (large.dims, large.depths, large.conv_mlp, large.use_grn),
        (vec![192, 384, 768, 1536], vec![3, 3, 27, 3], false, true)
    );
    let huge = ConvNeXtConfig::preset("convnextv2_huge").unwrap();
    assert_eq!(huge.dims, vec![352, 704, 1408, 2816]);
    // timm has no v1 huge and no v2 small.
    for unknown in ["convnext_huge", "convnextv2_small", "convnext_giant"] {
        assert!(ConvNeXtConfig::preset(unknown)
            .unwrap_err()
            .to_string()
            .contains(&format!("unknown preset `{unknown}`")));
    }
}

#[test]
fn init_is_seeded_deterministic_and_timm_like() {
    let dev = Device::cpu();
    let cfg = ConvNeXtConfig::micro().with_seed(7);
    let a = ConvNeXt::new(cfg.clone(), &dev).unwrap();
    let b = ConvNeXt::new(cfg.clone(), &dev).unwrap();
    let c = ConvNeXt::new(cfg.with_seed(8), &dev).unwrap();
    let vals = |m: &ConvNeXt| {
        let mut v = Vec::new();
        m.visit("", &mut |n, p| {
            v.push((n.to_string(), p.tensor().to_vec().unwrap()))
        });
        v
    };
    let (va, vb, vc) = (vals(&a), vals(&b), vals(&c));
    assert_eq!(va, vb);
    assert_ne!(va, vc);
    for (n, v) in &va {
        if n.ends_with("gamma") {
            assert!(v.iter().all(|&x| x == 1e-6), "{n}: layer scale init 1e-6");
        } else if n.ends_with("bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{n}: biases start at zero");
        } else if n.contains("norm") || n.starts_with("stem.1") || n.contains("downsample.0") {
            assert!(
                v.iter().all(|&x| x == 1.0),
                "{n}: norm weights start at one"
            );
        } else {
            // trunc-normal σ = 0.02, truncated at ±2σ
            assert!(v.iter().all(|&x| x.abs() <= 0.04), "{n}");
            let std = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            if v.len() > 500 {
                assert!((std - 0.0176).abs() < 0.003, "{n}: std {std}"); // σ of N(0, .02²) truncated at 2σ
            }
        }
    }
    let x = Tensor::from_slice(&vec![0.5; 2 * 32 * 32], [2, 1, 32, 32], &dev).unwrap();
    assert_eq!(a.forward(&x, false).unwrap().dims(), [2, 10]);
    let bad = Tensor::zeros([2, 3, 32, 32], &dev).unwrap();
    assert!(a
        .forward(&bad, false)
        .unwrap_err()
        .to_string()
        .contains("input must be (N, 1, H, W)"));
}

#[test]
fn drop_path_drops_whole_samples_in_training_only() {
    let dev = Device::cpu();
    let dp = DropPath::new(0.5, 1).unwrap();
    let x = Tensor::from_slice(&vec![1.0; 64 * 3], [64, 3], &dev).unwrap();
    assert_eq!(
        dp.forward(&x, false).unwrap().to_vec().unwrap(),
        vec![1.0; 64 * 3]
    );
    let y = dp.forward(&x, true).unwrap().to_vec().unwrap();
    let kept = y.chunks(3).filter(|r| r.iter().all(|&v| v == 2.0)).count();
    let dropped = y.chunks(3).filter(|r| r.iter().all(|&v| v == 0.0)).count();
    assert_eq!(
        kept + dropped,
        64,
        "each sample is kept (scaled 1/(1-p)) or dropped whole"
    );
    assert!((16..=48).contains(&kept), "{kept} of 64 kept at p = 0.5");
    let again = DropPath::new(0.5, 1)
        .unwrap()
        .forward(&x, true)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(again, y, "seeded");
    assert!(DropPath::new(1.0, 0).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// f64 reference forward of ConvNeXt, written from the architecture description (NCHW throughout).

#[derive(Clone)]
struct T {
    d: Vec<usize>,
    v: Vec<f64>,
}

/// Convolution with a bias, equal stride and padding on both axes (no dilation): the shared reference.
fn conv(x: &T, w: &[f64], wd: &[usize], b: &[f64], stride: usize, pad: usize, groups: usize) -> T {
    let p = Conv2dParams::default()
        .stride(stride)
        .padding(pad)
        .groups(groups);
    let xd = [x.d[0], x.d[1], x.d[2], x.d[3]];
    let (v, d) = reference::conv2d(&x.v, xd, w, [wd[0], wd[1], wd[2], wd[3]], Some(b), p);
    T { d: d.to_vec(), v }
}

/// Layer norm over axis 1 of (N, C, rest…), ε = 1e-6.
fn ln_channels(x: &T, g: &[f64], b: &[f64]) -> T {
    let (n, c) = (x.d[0], x.d[1]);
    let inner: usize = x.d[2..].iter().product();
    let mut y = x.v.clone();
    for ni in 0..n {
        for s in 0..inner {
            let idx = |ci: usize| (ni * c + ci) * inner + s;
            let mu = (0..c).map(|ci| x.v[idx(ci)]).sum::<f64>() / c as f64;
            let var = (0..c).map(|ci| (x.v[idx(ci)] - mu).powi(2)).sum::<f64>() / c as f64;
            let r = 1.0 / (var + 1e-6).sqrt();
            for ci in 0..c {
                y[idx(ci)] = (x.v[idx(ci)] - mu) * r * g[ci] + b[ci];
            }
        }
    }
    T {
        d: x.d.clone(),
        v: y,
    }
}

fn gelu(x: &T) -> T {
    let v = x.v.iter().copied().map(reference::gelu64).collect();
    T { d: x.d.clone(), v }
}

/// Pointwise channel mixing (a 1×1 conv, or equally a Linear on channels-last), W (out, in).
fn pointwise(x: &T, w: &[f64], b: &[f64], out: usize) -> T {
    conv(x, w, &[out, x.d[1], 1, 1], b, 1, 0, 1)
}

/// GRN on NCHW: y = γ·x·N + β + x, N_c = ‖x_c‖ / (mean_c ‖x_c‖ + 1e-6).
fn grn(x: &T, g: &[f64], b: &[f64]) -> T {
    let (n, c, hw) = (x.d[0], x.d[1], x.d[2] * x.d[3]);
    let mut y = x.v.clone();
    for ni in 0..n {
        let norms: Vec<f64> = (0..c)
            .map(|ci| {
                (0..hw)
                    .map(|s| x.v[(ni * c + ci) * hw + s].powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        let mean = norms.iter().sum::<f64>() / c as f64;
        for ci in 0..c {
            let nc = norms[ci] / (mean + 1e-6);
            for s in 0..hw {
                let i = (ni * c + ci) * hw + s;
                y[i] = g[ci] * x.v[i] * nc + b[ci] + x.v[i];
            }
        }
    }
    T {
        d: x.d.clone(),
        v: y,
    }
}

fn reference(cfg: &ConvNeXtConfig, p: &HashMap<String, Vec<f64>>, x: T) -> Vec<f64> {
    let g = |k: &str| {
        p.get(k)
            .unwrap_or_else(|| panic!("reference needs {k}"))
            .as_slice()
    };
    let d0 = cfg.dims[0];
    let mut h = conv(
        &x,
        g("stem.0.weight"),
        &[d0, cfg.in_chans, 4, 4],
        g("stem.0.bias"),
        4,
        0,
        1,
    );
    h = ln_channels(&h, g("stem.1.weight"), g("stem.1.bias"));
    for (i, (&c, &depth)) in cfg.dims.iter().zip(&cfg.depths).enumerate() {
        let s = format!("stages.{i}");
        if i > 0 {
            let pc = cfg.dims[i - 1];
            h = ln_channels(
                &h,
                g(&format!("{s}.downsample.0.weight")),
                g(&format!("{s}.downsample.0.bias")),
            );
            h = conv(
                &h,
                g(&format!("{s}.downsample.1.weight")),
                &[c, pc, 2, 2],
                g(&format!("{s}.downsample.1.bias")),
                2,
                0,
                1,
            );
        }
        for j in 0..depth {
            let b = format!("{s}.blocks.{j}");
            let k = |n: &str| format!("{b}.{n}");
            let mut y = conv(
                &h,
                g(&k("conv_dw.weight")),
                &[c, 1, 7, 7],
                g(&k("conv_dw.bias")),
                1,
                3,
                c,
            );
            // LayerNorm over channels is the same math in either layout; so are the 1×1 conv / Linear and GRN.
            y = ln_channels(&y, g(&k("norm.weight")), g(&k("norm.bias")));
            y = gelu(&pointwise(
                &y,
                g(&k("mlp.fc1.weight")),
                g(&k("mlp.fc1.bias")),
                4 * c,
            ));
            if cfg.use_grn {
                y = grn(&y, g(&k("mlp.grn.weight")), g(&k("mlp.grn.bias")));
            }
            y = pointwise(&y, g(&k("mlp.fc2.weight")), g(&k("mlp.fc2.bias")), c);
            let hw = y.d[2] * y.d[3];
            for (idx, v) in y.v.iter_mut().enumerate() {
                if cfg.ls_init_value.is_some() {
                    *v *= g(&k("gamma"))[(idx / hw) % c];
                }
            }
            for (a, r) in y.v.iter_mut().zip(&h.v) {
                *a += r;
            }
            h = y;
        }
    }
    let (n, c, hw) = (h.d[0], h.d[1], h.d[2] * h.d[3]);
    let pooled: Vec<f64> = (0..n * c)
        .map(|i| h.v[i * hw..(i + 1) * hw].iter().sum::<f64>() / hw as f64)
        .collect();
    let pooled = ln_channels(
        &T {
            d: vec![n, c],
            v: pooled,
        },
        g("head.norm.weight"),
        g("head.norm.bias"),
    );
    let k = cfg.num_classes;
    let (w, b) = (g("head.fc.weight"), g("head.fc.bias"));
    let mut out = vec![0.0; n * k];
    for ni in 0..n {
        for o in 0..k {
            out[ni * k + o] = b[o]
                + (0..c)
                    .map(|ci| w[o * c + ci] * pooled.v[ni * c + ci])
                    .sum::<f64>();
        }
    }
    out
}

/// Random values for each parameter, in ranges that keep every part of the network active: conv/linear
/// weights ±0.5, biases ±0.3, norm weights around 1, layer scale and GRN γ of order 1 (at init they are
/// 1e-6 and 0, which would hide the blocks' gradients), GRN β ±0.3.
fn random_params(m: &ConvNeXt, rng: &mut Rng) -> Vec<(String, Input)> {
    let mut out = Vec::new();
    m.visit("", &mut |n, p| {
        let len = p.numel();
        let v = if n.ends_with("gamma")
            || (n.contains("norm") || n.starts_with("stem.1") || n.contains("downsample.0"))
                && n.ends_with("weight")
        {
            rng.vec(len, 0.5, 1.5)
        } else if n.contains("grn") {
            rng.vec(len, -0.5, 0.5)
        } else if n.ends_with("bias") {
            rng.vec(len, -0.3, 0.3)
        } else {
            rng.vec(len, -0.5, 0.5)
        };
        out.push((n.to_string(), input(v, p.shape().dims())));
    });
    out
}

/// Tolerance: the engine runs in f32 through ~20 ops deep; each op adds relative rounding ~1e-6 at these
/// sizes, so the forward and gradients agree with the f64 reference to ~1e-5 of their scale. The finite
/// differences are central, in f64, step 1e-4·max(1, |x|): truncation O(h²) ≈ 1e-8. rtol 2e-3, atol 2e-4
/// (×scale) catches any wrong rule (those err by O(1)) while leaving margin for f32 cancellation in the
/// layer norms.
const NET_TOL: Tol = Tol {
    rtol: 2e-3,
    atol: 2e-4,
};

fn gradient_check(cfg: ConvNeXtConfig, seed: u64) {
    let dev = Device::cpu();
    let template = ConvNeXt::new(cfg.clone(), &dev).unwrap();
    let mut rng = Rng::new(seed);
    let named = random_params(&template, &mut rng);
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut inputs: Vec<Input> = vec![input(rng.vec(2 * 16 * 16, -1.0, 1.0), &[2, 1, 16, 16])];
    inputs.extend(named.into_iter().map(|(_, i)| i));
    let engine = |ts: &[Tensor]| {
        let mut m = ConvNeXt::new(cfg.clone(), &dev)?;
        let mut k = 1;
        let mut err = Ok(());
        m.visit_mut("", &mut |n, p: &mut Param| {
            assert_eq!(n, names[k - 1], "visit order is stable");
            if err.is_ok() {
                err = p.replace(&ts[k]); // keeps the checker's leaf (same identity) in the model
            }
            k += 1;
        });
        err?;
        m.forward(&ts[0], false)
    };
    let reference = |vals: &[Vec<f64>]| {
        let p: HashMap<String, Vec<f64>> = names
            .iter()
            .cloned()
            .zip(vals[1..].iter().cloned())
            .collect();
        reference(
            &cfg,
            &p,
            T {
                d: vec![2, 1, 16, 16],
                v: vals[0].clone(),
            },
        )
    };
    if let Err(e) = check_gradients(&dev, &inputs, engine, reference, NET_TOL) {
        panic!("{e}");
    }
}

fn tiny_cfg(conv_mlp: bool, v2: bool) -> ConvNeXtConfig {
    let cfg = ConvNeXtConfig {
        in_chans: 1,
        num_classes: 3,
        dims: vec![4, 8],
        depths: vec![1, 1],
        conv_mlp,
        ..ConvNeXtConfig::atto()
    };
    if v2 {
        cfg.v2()
    } else {
        cfg
    }
}

#[test]
fn gradients_of_tiny_convnext_v1_conv_mlp_match_finite_differences() {
    gradient_check(tiny_cfg(true, false), 1);
}

#[test]
fn gradients_of_tiny_convnext_v1_linear_mlp_match_finite_differences() {
    gradient_check(tiny_cfg(false, false), 2);
}

#[test]
fn gradients_of_tiny_convnext_v2_conv_mlp_match_finite_differences() {
    gradient_check(tiny_cfg(true, true), 3);
}

#[test]
fn gradients_of_tiny_convnext_v2_linear_mlp_match_finite_differences() {
    gradient_check(tiny_cfg(false, true), 4);
}

#[test]
fn both_mlp_layouts_compute_the_same_function() {
    // A Linear MLP on NHWC and a 1×1-conv MLP on NCHW with the same numbers are the same network.
    let dev = Device::cpu();
    for v2 in [false, true] {
        let a = ConvNeXt::new(tiny_cfg(true, v2), &dev).unwrap();
        let mut b = ConvNeXt::new(tiny_cfg(false, v2).with_seed(99), &dev).unwrap();
        let mut src = HashMap::new();
        a.visit("", &mut |n, p| {
            src.insert(n.to_string(), p.tensor().clone());
        });
        b.visit_mut("", &mut |n, p| {
            let t = no_grad(|| src[n].reshape(p.shape().clone())).unwrap();
            p.replace(&t).unwrap();
        });
        let mut rng = Rng::new(5);
        let x = Tensor::from_slice(
            &rng.vec(2 * 256, -1.0, 1.0)
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            [2, 1, 16, 16],
            &dev,
        )
        .unwrap();
        let ya = a.forward(&x, false).unwrap().to_vec().unwrap();
        let yb = b.forward(&x, false).unwrap().to_vec().unwrap();
        for (p, q) in ya.iter().zip(&yb) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()), "{p} vs {q}");
        }
    }
}

/// Activation checkpointing changes what a step keeps, not what it computes: with every block
/// checkpointed, the logits and every gradient (base weights in full fine-tuning; adapter factors through
/// LieRA's W ⊙ exp(ΔW) and LoRA) equal those of the plain forward, for the three block layouts, on every
/// device. The recomputation runs the same kernels on the same values, so equality is exact up to the
/// order in which a gradient's contributions are summed (1e-6 relative).
#[test]
fn grad_checkpointing_gives_the_same_logits_and_gradients() {
    use liera::peft::{self, AdapterKind, PeftConfig};
    let small = |v2: bool, conv_mlp: bool| ConvNeXtConfig {
        in_chans: 3,
        num_classes: 5,
        dims: vec![8, 16],
        depths: vec![2, 1],
        conv_mlp,
        use_grn: v2,
        ls_init_value: if v2 { None } else { Some(0.5) },
        drop_path_rate: 0.0,
        seed: 9,
    };
    for dev in common::devices() {
        for (v2, conv_mlp) in [(false, true), (false, false), (true, false), (true, true)] {
            for adapter in [None, Some(AdapterKind::Liera), Some(AdapterKind::Lora)] {
                let run = |checkpointed: bool| -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
                    let mut m = ConvNeXt::new(small(v2, conv_mlp), &dev).unwrap();
                    if let Some(kind) = adapter {
                        let cfg =
                            PeftConfig::new(kind, 2, 4.0, "conv_dw,mlp.fc1,mlp.fc2").with_seed(3);
                        peft::apply(&mut m, &cfg).unwrap();
                        // B = 0 at init would hide the adapter's path: give it values.
                        for (name, t) in m.trainable_parameters() {
                            if name.contains("lora_B") {
                                let v: Vec<f32> = (0..t.numel())
                                    .map(|i| 0.05 * ((i % 7) as f32 - 3.0))
                                    .collect();
                                t.assign(&Tensor::from_slice(&v, t.shape().clone(), &dev).unwrap())
                                    .unwrap();
                            }
                        }
                    } else {
                        m.set_trainable(true);
                    }
                    m.set_grad_checkpointing(checkpointed);
                    let x: Vec<f32> = (0..2 * 3 * 16 * 16)
                        .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                        .collect();
                    let x = Tensor::from_slice(&x, [2, 3, 16, 16], &dev).unwrap();
                    let logits = m.forward(&x, true).unwrap();
                    let loss = logits.cross_entropy(&[1, 3]).unwrap();
                    // The tape holds one checkpoint node per block instead of the blocks' ops.
                    let ops = loss.tape().ops();
                    let checkpoints = ops.iter().filter(|&&o| o == "checkpoint").count();
                    assert_eq!(checkpoints, if checkpointed { 3 } else { 0 });
                    // GELU is its own op, or part of the 1×1 convolution before it (conv_mlp).
                    let gelu_on_tape = ops.iter().any(|o| o.contains("gelu"));
                    assert_eq!(gelu_on_tape, !checkpointed);
                    let grads = loss.backward().unwrap();
                    let g = m
                        .trainable_parameters()
                        .into_iter()
                        .map(|(n, t)| {
                            (
                                n,
                                grads
                                    .get(&t)
                                    .expect("every trainable tensor gets a gradient")
                                    .to_vec()
                                    .unwrap(),
                            )
                        })
                        .collect();
                    (logits.to_vec().unwrap(), g)
                };
                let (plain_logits, plain) = run(false);
                let (ckpt_logits, ckpt) = run(true);
                let what = format!("{} v2={v2} conv_mlp={conv_mlp} {adapter:?}", dev.name());
                assert_eq!(plain_logits, ckpt_logits, "{what}: logits");
                assert_eq!(plain.len(), ckpt.len());
                for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
                    let scale = a.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
                    let worst = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst <= 1e-6 * scale.max(1.0),
                        "{what}: {name} differs by {worst}"
                    );
                }
            }
        }
    }
}
