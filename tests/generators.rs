//! The ΔW generators — LoRA (s·BA), LoHa (s·(B₁A₁) ⊙ (B₂A₂)) and LoKr (s·kron(C, W₂)) — each in the three
//! compositions (additive W + ΔW, Lie exact W ⊙ exp(ΔW), Lie first-order W + W ⊙ ΔW), on dense, grouped and
//! depthwise convolutions and on Linear kernels:
//! - PEFT's factor names, shapes, initialisations and LoKr factorisation;
//! - W' = W bit for bit at initialisation;
//! - the tape's gradient of every factor equals the closed form of `peft/adapter.rs`;
//! - property test: gradients against central differences of a plain f64 reference, on the CPU and the GPU;
//! - merge equals the adapted forward, unmerge restores W bit-exactly, save and load round-trip;
//! - misuse (rsLoRA on LoHa, a bad decompose factor, wrong factor shapes) is a named error.

mod common;

use common::reference::matmul;
use common::temp::TempDir;
use common::{assert_close, f32s};
use common::{check_gradients, devices, input, Rng, TOL};
use liera::nn::{Classifier, ConvNeXt, ConvNeXtConfig, InitRng, Module};
use liera::peft::{
    self, factor_specs, lokr_factorization, Adapter, AdapterKind, AdapterSpec, DeltaKind,
    FactorSpec, PeftConfig,
};
use liera::{no_grad, Device, Shape, Tensor};
use proptest::prelude::*;

const KINDS: [AdapterKind; 3] = AdapterKind::ALL;

fn spec(kind: AdapterKind, delta: DeltaKind, rank: usize, alpha: f32) -> AdapterSpec {
    AdapterSpec {
        kind,
        delta,
        rank,
        alpha,
        rslora: false,
        decompose_factor: -1,
    }
}

/// Kernels of every kind of layer: dense 3×3, grouped (g = 2), depthwise 7×7, 1×1, a 4×4 stem, Linear.
const SHAPES: [&[usize]; 6] = [
    &[6, 4, 3, 3],
    &[8, 2, 3, 3],
    &[12, 1, 7, 7],
    &[16, 8, 1, 1],
    &[8, 3, 4, 4],
    &[10, 6],
];

/// kron(C, M) in f64: C (p, q), M (m, n) → (p·m, q·n), entry [i·m + k, j·n + l] = C[i,j]·M[k,l].
fn kron64(c: &[f64], (p, q): (usize, usize), m: &[f64], (mr, mc): (usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; p * mr * q * mc];
    for i in 0..p {
        for j in 0..q {
            for k in 0..mr {
                for l in 0..mc {
                    out[(i * mr + k) * (q * mc) + j * mc + l] = c[i * q + j] * m[k * mc + l];
                }
            }
        }
    }
    out
}

/// The unscaled product P (ΔW = s·P) in f64 from the factor values, written from the definitions.
fn product64(delta: DeltaKind, specs: &[FactorSpec], f: &[Vec<f64>]) -> Vec<f64> {
    let dims = |i: usize| (specs[i].shape[0], specs[i].shape[1]);
    match delta {
        DeltaKind::Lora => {
            let ((r, cols), (rows, _)) = (dims(0), dims(1));
            matmul(&f[1], &f[0], rows, r, cols, false, false)
        }
        DeltaKind::Loha => {
            let ((rows, r), (_, cols)) = (dims(0), dims(1));
            let p1 = matmul(&f[0], &f[1], rows, r, cols, false, false);
            let p2 = matmul(&f[2], &f[3], rows, r, cols, false, false);
            p1.iter().zip(&p2).map(|(a, b)| a * b).collect()
        }
        DeltaKind::Lokr => {
            let (w2, w2_dims) = if specs.len() == 3 {
                let ((r2, r), (_, c2)) = (dims(1), dims(2));
                (matmul(&f[1], &f[2], r2, r, c2, false, false), (r2, c2))
            } else {
                (f[1].clone(), dims(1))
            };
            kron64(&f[0], dims(0), &w2, w2_dims)
        }
    }
}

/// W' in f64 for a composition.
fn compose64(kind: AdapterKind, w: &[f64], p: &[f64], s: f64) -> Vec<f64> {
    w.iter()
        .zip(p)
        .map(|(&w, &p)| match kind {
            AdapterKind::Lora => w + s * p,
            AdapterKind::Liera => w * (s * p).exp(),
            AdapterKind::LieraFirstOrder => w + w * (s * p),
        })
        .collect()
}

#[test]
fn lokr_factorisation_is_peft_s() {
    // PEFT's `factorization(d, -1)`: the largest divisor p ≤ √d, as (p, d/p); a positive factor that
    // divides d is taken as it is.
    for (d, want) in [
        (1, (1, 1)),
        (3, (1, 3)),
        (7, (1, 7)),
        (8, (2, 4)),
        (16, (4, 4)),
        (24, (4, 6)),
        (40, (5, 8)),
        (96, (8, 12)),
        (128, (8, 16)),
        (160, (10, 16)),
        (127, (1, 127)),
    ] {
        assert_eq!(lokr_factorization(d, -1), want, "factorization({d})");
    }
    assert_eq!(lokr_factorization(128, 4), (4, 32)); // PEFT's docstring
    assert_eq!(lokr_factorization(16, 3), (2, 8)); // 3 does not divide 16: the walk stops at m ≤ 3
}

/// Factor names and stored shapes as PEFT 0.21.2 wrote them for the fixtures of `tests/fixtures/peft/`.
#[test]
fn factor_names_and_shapes_are_peft_s() {
    let names_shapes = |delta, w: &[usize], r| -> Vec<(&'static str, Vec<usize>)> {
        factor_specs(delta, "t", &Shape::new(w.to_vec()), r, -1)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.stored))
            .collect()
    };
    // LoHa on a 4×4 stem (8, 3, 4, 4), r = 2: (O, I) = (8, 48).
    assert_eq!(
        names_shapes(DeltaKind::Loha, &[8, 3, 4, 4], 2),
        [
            ("hada_w1_a", vec![8, 2]),
            ("hada_w1_b", vec![2, 48]),
            ("hada_w2_a", vec![8, 2]),
            ("hada_w2_b", vec![2, 48])
        ]
    );
    // LoKr, v1_conv/lokr: a 2×2 downsample (16, 8, 2, 2) keeps a full 4-D w2; a 1×1 fc2 (16, 64) is low rank.
    assert_eq!(
        names_shapes(DeltaKind::Lokr, &[16, 8, 2, 2], 2),
        [("lokr_w1", vec![4, 2]), ("lokr_w2", vec![4, 4, 2, 2])]
    );
    assert_eq!(
        names_shapes(DeltaKind::Lokr, &[16, 64, 1, 1], 2),
        [
            ("lokr_w1", vec![4, 8]),
            ("lokr_w2_a", vec![4, 2]),
            ("lokr_w2_b", vec![2, 8])
        ]
    );
    // LoKr on depthwise kernels (v2_linear/lokr_dw): 8 channels full, 24 channels low rank over 49 taps.
    assert_eq!(
        names_shapes(DeltaKind::Lokr, &[8, 1, 7, 7], 2),
        [("lokr_w1", vec![2, 1]), ("lokr_w2", vec![4, 1, 7, 7])]
    );
    assert_eq!(
        names_shapes(DeltaKind::Lokr, &[24, 1, 7, 7], 2),
        [
            ("lokr_w1", vec![4, 1]),
            ("lokr_w2_a", vec![6, 2]),
            ("lokr_w2_b", vec![2, 49])
        ]
    );
    // LoKr on a Linear (v1_linear/lokr, fc1 8 → 32, r = 4): full w2 (8, 4).
    assert_eq!(
        names_shapes(DeltaKind::Lokr, &[32, 8], 4),
        [("lokr_w1", vec![4, 2]), ("lokr_w2", vec![8, 4])]
    );
}

/// PEFT's initialisations: LoHa's hada_w2_b and LoKr's lokr_w1 are zero (so ΔW = 0), every other factor is
/// kaiming-uniform(a = √5), U(±1/√fan_in) with fan_in its column count.
#[test]
fn initialisation_is_peft_s_and_leaves_w_unchanged() {
    let dev = Device::cpu();
    let mut rng = Rng::new(4);
    for delta in DeltaKind::ALL {
        for kind in KINDS {
            for w_shape in SHAPES {
                let n: usize = w_shape.iter().product();
                let w = Tensor::from_slice(
                    &f32s(&rng.vec_away_from_zero(n, 0.2, 1.0)),
                    w_shape.to_vec(),
                    &dev,
                )
                .unwrap();
                let a = Adapter::build(
                    spec(kind, delta, 2, 3.0),
                    "t",
                    w.shape(),
                    &mut InitRng::new(9),
                    &dev,
                )
                .unwrap();
                let what = format!("{delta:?} {kind:?} {w_shape:?}");
                for (f, p) in a.factors() {
                    let v = p.tensor().to_vec().unwrap();
                    let zero = matches!(f.name, "lora_B.weight" | "hada_w2_b" | "lokr_w1");
                    if zero {
                        assert!(v.iter().all(|&x| x == 0.0), "{what}: {} must be 0", f.name);
                    } else {
                        let bound = 1.0 / (f.shape[1] as f32).sqrt();
                        assert!(v.iter().all(|x| x.abs() <= bound), "{what}: {}", f.name);
                        assert!(v.iter().any(|&x| x != 0.0), "{what}: {}", f.name);
                    }
                }
                let adapted = no_grad(|| a.adapt(&w)).unwrap();
                assert_eq!(
                    adapted.to_vec().unwrap(),
                    w.to_vec().unwrap(),
                    "{what}: W' ≠ W at init"
                );
            }
        }
    }
}

/// Random nonzero factors of a `delta` adapter on `w_shape` (small, so exp(ΔW) stays O(1)).
fn random_factors(
    delta: DeltaKind,
    w_shape: &[usize],
    rank: usize,
    rng: &mut Rng,
) -> (Vec<FactorSpec>, Vec<Vec<f64>>) {
    let specs = factor_specs(delta, "t", &Shape::new(w_shape.to_vec()), rank, -1).unwrap();
    let vals = specs
        .iter()
        .map(|f| rng.vec_away_from_zero(f.shape.iter().product(), 0.1, 0.6))
        .collect();
    (specs, vals)
}

fn tensors(specs: &[FactorSpec], vals: &[Vec<f64>], dev: &Device) -> Vec<Tensor> {
    specs
        .iter()
        .zip(vals)
        .map(|(f, v)| Tensor::param(&f32s(v), f.shape.clone(), dev).unwrap())
        .collect()
}

/// With L = Σ R ⊙ W' (so G = ∂L/∂W' = R), D = G ⊙ ∂W'/∂ΔW (G, G ⊙ W', G ⊙ W) and M = s·D, the closed forms of
/// `peft/adapter.rs`:
/// LoRA ∂B = M Aᵀ, ∂A = Bᵀ M; LoHa ∂B₁ = (M ⊙ P₂) A₁ᵀ, ∂A₁ = B₁ᵀ (M ⊙ P₂) and 1 ↔ 2;
/// LoKr ∂C[i,j] = Σ_{k,l} M[i·m+k, j·n+l] W₂[k,l], ∂W₂[k,l] = Σ_{i,j} M[i·m+k, j·n+l] C[i,j], then
/// ∂B = ∂W₂ Aᵀ, ∂A = Bᵀ ∂W₂ for a low-rank W₂.
///
/// Tolerance: f32 sums of at most a few hundred O(1) products (unit roundoff 6e-8) agree with f64 to ~1e-5 of
/// the largest entry; 1e-4 leaves margin, and a wrong formula (a missing factor, a transposition, the wrong
/// block index of the Kronecker product) errs by O(1).
#[test]
fn tape_gradients_of_every_factor_equal_the_closed_forms() {
    let dev = Device::cpu();
    let mut rng = Rng::new(21);
    for delta in DeltaKind::ALL {
        for kind in KINDS {
            for w_shape in SHAPES {
                let what = format!("{delta:?} {kind:?} {w_shape:?}");
                let (rank, alpha) = (2usize, 3.0f32);
                let s = (alpha / rank as f32) as f64;
                let n: usize = w_shape.iter().product();
                let wv = rng.vec_away_from_zero(n, 0.2, 1.0);
                let w = Tensor::from_slice(&f32s(&wv), w_shape.to_vec(), &dev).unwrap();
                let (specs, fv) = random_factors(delta, w_shape, rank, &mut rng);
                let ft = tensors(&specs, &fv, &dev);
                let a = Adapter::from_factors(
                    spec(kind, delta, rank, alpha),
                    "t",
                    w.shape(),
                    ft.clone(),
                )
                .unwrap();
                let rv = rng.vec(n, -1.0, 1.0);
                let r = Tensor::from_slice(&f32s(&rv), w_shape.to_vec(), &dev).unwrap();
                let wp = a.adapt(&w).unwrap();
                let grads = wp.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();

                // Closed form in f64.
                let p = product64(delta, &specs, &fv);
                let w_adapted = compose64(kind, &wv, &p, s);
                assert_close(
                    &format!("{what} W'"),
                    &wp.to_vec().unwrap(),
                    &w_adapted,
                    1e-5,
                );
                let m: Vec<f64> = (0..n)
                    .map(|i| {
                        s * rv[i]
                            * match kind {
                                AdapterKind::Lora => 1.0,
                                AdapterKind::Liera => w_adapted[i],
                                AdapterKind::LieraFirstOrder => wv[i],
                            }
                    })
                    .collect();
                let dims = |i: usize| (specs[i].shape[0], specs[i].shape[1]);
                let closed: Vec<Vec<f64>> = match delta {
                    DeltaKind::Lora => {
                        let ((r, cols), (rows, _)) = (dims(0), dims(1));
                        vec![
                            matmul(&fv[1], &m, r, rows, cols, true, false), // Bᵀ M
                            matmul(&m, &fv[0], rows, cols, r, false, true), // M Aᵀ
                        ]
                    }
                    DeltaKind::Loha => {
                        let ((rows, r), (_, cols)) = (dims(0), dims(1));
                        let p1 = matmul(&fv[0], &fv[1], rows, r, cols, false, false);
                        let p2 = matmul(&fv[2], &fv[3], rows, r, cols, false, false);
                        let m1: Vec<f64> = m.iter().zip(&p2).map(|(a, b)| a * b).collect();
                        let m2: Vec<f64> = m.iter().zip(&p1).map(|(a, b)| a * b).collect();
                        vec![
                            matmul(&m1, &fv[1], rows, cols, r, false, true),
                            matmul(&fv[0], &m1, r, rows, cols, true, false),
                            matmul(&m2, &fv[3], rows, cols, r, false, true),
                            matmul(&fv[2], &m2, r, rows, cols, true, false),
                        ]
                    }
                    DeltaKind::Lokr => {
                        let (p1, q1) = dims(0);
                        let low_rank = specs.len() == 3;
                        let (w2, (mr, mc)) = if low_rank {
                            let ((r2, r), (_, c2)) = (dims(1), dims(2));
                            (matmul(&fv[1], &fv[2], r2, r, c2, false, false), (r2, c2))
                        } else {
                            (fv[1].clone(), dims(1))
                        };
                        let cols = q1 * mc;
                        let mut dc = vec![0.0; p1 * q1];
                        let mut dw2 = vec![0.0; mr * mc];
                        for i in 0..p1 {
                            for j in 0..q1 {
                                for k in 0..mr {
                                    for l in 0..mc {
                                        let mm = m[(i * mr + k) * cols + j * mc + l];
                                        dc[i * q1 + j] += mm * w2[k * mc + l];
                                        dw2[k * mc + l] += mm * fv[0][i * q1 + j];
                                    }
                                }
                            }
                        }
                        if low_rank {
                            let r = dims(1).1;
                            vec![
                                dc,
                                matmul(&dw2, &fv[2], mr, mc, r, false, true),
                                matmul(&fv[1], &dw2, r, mr, mc, true, false),
                            ]
                        } else {
                            vec![dc, dw2]
                        }
                    }
                };
                for ((f, t), want) in specs.iter().zip(&ft).zip(&closed) {
                    let got = grads
                        .get(t)
                        .unwrap_or_else(|| panic!("{what}: no gradient for {}", f.name));
                    assert_close(
                        &format!("{what} ∂{}", f.name),
                        &got.to_vec().unwrap(),
                        want,
                        1e-4,
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Every composition of every generator, on random kernel shapes (groups and taps included), ranks and
    /// LoKr decompose factors: W' and the gradient of every factor against central differences of the plain
    /// f64 reference above, on the CPU and the GPU (the tolerance of `common::TOL`).
    #[test]
    fn generator_gradients_match_f64_finite_differences(
        cout in 2usize..9,
        cin_g in 1usize..5,
        k in prop::sample::select(vec![0usize, 1, 2, 3]), // 0: a Linear kernel
        rank in 1usize..4,
        factor in prop::sample::select(vec![-1i64, 2]),
        delta in prop::sample::select(DeltaKind::ALL.to_vec()),
        kind in prop::sample::select(KINDS.to_vec()),
        seed in 0u64..1_000_000,
    ) {
        let w_shape: Vec<usize> = if k == 0 { vec![cout, cin_g + 1] } else { vec![cout, cin_g, k, k] };
        let shape = Shape::new(w_shape.clone());
        let (rows, cols) = peft::matrix_view(&shape);
        let rank = if delta == DeltaKind::Lora { rank.min(rows.min(cols)) } else { rank };
        let specs = factor_specs(delta, "t", &shape, rank, factor).unwrap();
        let mut rng = Rng::new(seed);
        let n = shape.numel();
        let wv = rng.vec_away_from_zero(n, 0.2, 1.0);
        let inputs: Vec<_> = specs
            .iter()
            .map(|f| input(rng.vec(f.shape.iter().product(), -0.6, 0.6), &f.shape))
            .collect();
        let alpha = rank as f32 * 0.75;
        let s = 0.75f64;
        let a_spec = AdapterSpec { decompose_factor: factor, ..spec(kind, delta, rank, alpha) };
        for dev in devices() {
            let w = Tensor::from_slice(&f32s(&wv), w_shape.clone(), &dev).unwrap();
            check_gradients(
                &dev,
                &inputs,
                |t| Adapter::from_factors(a_spec, "t", &shape, t.to_vec())?.adapt(&w),
                |v| compose64(kind, &wv, &product64(delta, &specs, v), s),
                TOL,
            )
            .map_err(|e| TestCaseError::fail(format!(
                "{delta:?} {kind:?} {w_shape:?} r={rank} factor={factor} on {}: {e}",
                dev.name()
            )))?;
        }
    }
}

fn small_convnext(dev: &Device) -> ConvNeXt {
    let cfg = ConvNeXtConfig {
        in_chans: 1,
        num_classes: 3,
        dims: vec![8, 16],
        depths: vec![1, 1],
        ..ConvNeXtConfig::atto()
    };
    ConvNeXt::new(cfg.v2().with_seed(42), dev).unwrap()
}

/// Gives every factor that is all zero (the one PEFT zeroes) random values, so ΔW ≠ 0.
fn randomise_zero_factors(model: &ConvNeXt, seed: u64) {
    let mut rng = Rng::new(seed);
    model.visit_adaptable("", &mut |_, layer| {
        if let Some(a) = Adapter::of(layer) {
            for (_, p) in a.factors() {
                let t = p.tensor();
                if t.to_vec().unwrap().iter().all(|&v| v == 0.0) {
                    let v = f32s(&rng.vec(t.numel(), -0.3, 0.3));
                    t.assign(&Tensor::from_slice(&v, t.shape().clone(), t.device()).unwrap())
                        .unwrap();
                }
            }
        }
    });
}

fn logits(model: &ConvNeXt, x: &Tensor) -> Vec<f32> {
    no_grad(|| model.forward(x, false))
        .unwrap()
        .to_vec()
        .unwrap()
}

fn snapshot(model: &dyn Module) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    model.visit("", &mut |n, p| {
        v.push((n.to_string(), p.tensor().to_vec().unwrap()))
    });
    v
}

/// On a small ConvNeXt-V2 with adapters on the depthwise and pointwise layers: merge gives the adapted
/// forward (bit for bit on the CPU: the merged kernel is the one the forward computes), unmerge restores
/// every base weight bit-exactly, and save/load gives back the same config (PEFT's type for the additive
/// forms, liera's `LIERA` for the Lie ones), PEFT's key names, and the same function bit for bit.
#[test]
fn merge_unmerge_and_save_load_for_every_combination() {
    let dev = Device::cpu();
    let tmp = TempDir::new("generators");
    let mut rng = Rng::new(5);
    let x = Tensor::from_slice(
        &f32s(&rng.vec(2 * 16 * 16, -1.0, 1.0)),
        [2, 1, 16, 16],
        &dev,
    )
    .unwrap();
    for delta in DeltaKind::ALL {
        for kind in KINDS {
            let what = format!("{delta:?} {kind:?}");
            let mut model = small_convnext(&dev);
            let base = snapshot(&model);
            let base_out = logits(&model, &x);
            let cfg = PeftConfig::new(kind, 2, 4.0, "conv_dw,mlp.fc1,mlp.fc2")
                .with_delta(delta)
                .with_modules_to_save("head.fc")
                .with_seed(3);
            let report = peft::apply(&mut model, &cfg).unwrap();
            assert_eq!(logits(&model, &x), base_out, "{what}: ΔW = 0 at init");
            let factors: usize = report
                .rows
                .iter()
                .filter(|r| r.rank > 0)
                .map(|r| r.trainable)
                .sum();
            let mut counted = 0;
            model.visit_adaptable("", &mut |_, l| {
                if let Some(a) = Adapter::of(l) {
                    counted += a.num_parameters();
                }
            });
            assert_eq!(factors, counted, "{what}: trainable factor count");
            assert!(report
                .rows
                .iter()
                .all(|r| r.rank == 0 || r.method == cfg.method_name()));

            randomise_zero_factors(&model, 8);
            let adapted = logits(&model, &x);
            assert_ne!(
                adapted, base_out,
                "{what}: nonzero factors must change the function"
            );

            // Save and load into a fresh base.
            let dir = tmp.path(cfg.method_name());
            peft::save_adapter(&model, &cfg, &dir).unwrap();
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(peft::ADAPTER_CONFIG_FILE)).unwrap(),
            )
            .unwrap();
            let ty = match (kind, delta) {
                (AdapterKind::Lora, DeltaKind::Lora) => "LORA",
                (AdapterKind::Lora, DeltaKind::Loha) => "LOHA",
                (AdapterKind::Lora, DeltaKind::Lokr) => "LOKR",
                (AdapterKind::LieraFirstOrder, DeltaKind::Lora) => "HIRA",
                _ => "LIERA",
            };
            assert_eq!(json["peft_type"], ty, "{what}");
            assert_eq!(json["liera"]["delta"], delta.name(), "{what}");
            let keys: Vec<String> =
                liera::io::read_safetensors(&dir.join(peft::ADAPTER_WEIGHTS_FILE))
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
            let prefix = match delta {
                DeltaKind::Lora if ty == "HIRA" => ".hira_",
                DeltaKind::Lora => ".lora_",
                DeltaKind::Loha => ".hada_w",
                DeltaKind::Lokr => ".lokr_w",
            };
            assert!(
                keys.iter()
                    .all(|k| k.contains(prefix) || k.contains(".head.fc.")),
                "{what}: {keys:?}"
            );
            let mut fresh = small_convnext(&dev);
            let loaded = peft::load_adapter(&mut fresh, &dir).unwrap();
            assert_eq!(loaded, cfg, "{what}");
            let reloaded = logits(&fresh, &x);
            if ty == "HIRA" {
                // s·B is stored (HiRA has no scale) and divided back: one rounding each way.
                let scale = adapted.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(adapted
                    .iter()
                    .zip(&reloaded)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * scale));
            } else {
                assert_eq!(
                    reloaded, adapted,
                    "{what}: reloaded adapter computes another function"
                );
            }

            // Merge, unmerge, merge and unload.
            assert_eq!(peft::merge(&mut model).unwrap(), 6, "{what}");
            assert_eq!(logits(&model, &x), adapted, "{what}: merged ≠ adapted");
            assert_eq!(peft::unmerge(&mut model).unwrap(), 6);
            let restored: Vec<_> = snapshot(&model)
                .into_iter()
                .filter(|(n, _)| {
                    !n.contains(".lora_")
                        && !n.contains(".hada_")
                        && !n.contains(".lokr_")
                        && !n.starts_with("head.")
                })
                .collect();
            let base_kept: Vec<_> = base
                .iter()
                .filter(|(n, _)| !n.starts_with("head."))
                .cloned()
                .collect();
            assert_eq!(
                restored, base_kept,
                "{what}: unmerge must restore W bit-exactly"
            );
            assert_eq!(logits(&model, &x), adapted);
            peft::merge_and_unload(&mut model).unwrap();
            assert!(model
                .named_parameters()
                .iter()
                .all(|(n, _)| !n.contains("lora_")
                    && !n.contains("hada_")
                    && !n.contains("lokr_")));
            assert_eq!(logits(&model, &x), adapted, "{what}: unloaded ≠ adapted");
        }
    }
}

#[test]
fn misuse_is_a_named_error() {
    let dev = Device::cpu();
    let shape = Shape::new([8, 4, 3, 3]);
    let err = Adapter::build(
        AdapterSpec {
            rslora: true,
            ..spec(AdapterKind::Liera, DeltaKind::Loha, 2, 2.0)
        },
        "conv",
        &shape,
        &mut InitRng::new(1),
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rsLoRA") && err.contains("loha"), "{err}");

    let cfg = PeftConfig::new(AdapterKind::Lora, 2, 2.0, "conv_dw").with_delta(DeltaKind::Lokr);
    let bad = PeftConfig {
        decompose_factor: 0,
        ..cfg.clone()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("decompose_factor"), "{err}");
    let err = PeftConfig {
        use_rslora: true,
        ..cfg
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("rsLoRA"), "{err}");

    // Factors of the wrong shape or number.
    let t = |s: [usize; 2]| Tensor::zeros(s, &dev).unwrap();
    let err = Adapter::from_factors(
        spec(AdapterKind::Liera, DeltaKind::Loha, 2, 2.0),
        "conv",
        &shape,
        vec![t([8, 2]), t([2, 36]), t([8, 2])],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4 factors, got 3"), "{err}");
    let err = Adapter::from_factors(
        spec(AdapterKind::Liera, DeltaKind::Loha, 2, 2.0),
        "conv",
        &shape,
        vec![t([8, 2]), t([2, 35]), t([8, 2]), t([2, 36])],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hada_w1_b"), "{err}");

    // An adapter applied to a kernel of another shape.
    let a = Adapter::build(
        spec(AdapterKind::Liera, DeltaKind::Lokr, 2, 2.0),
        "conv",
        &shape,
        &mut InitRng::new(1),
        &dev,
    )
    .unwrap();
    let other = Tensor::zeros([8, 4, 1, 1], &dev).unwrap();
    let err = a.adapt(&other).unwrap_err().to_string();
    assert!(
        err.contains("made for a kernel [8, 4, 3, 3]")
            && err.contains("cannot adapt a kernel [8, 4, 1, 1]"),
        "{err}"
    );
}
