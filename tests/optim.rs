//! Optimizers and schedules: their updates equal the published update rules, computed here by hand (one
//! literal step) and by a plain f64 scalar reference over several steps.

use liera::optim::{clip_grad_norm, AdamW, CosineSchedule, Optimizer, Sgd};
use liera::{Device, Tensor};

fn params(values: &[f32]) -> Vec<(String, Tensor)> {
    let dev = Device::cpu();
    vec![(
        "w".into(),
        Tensor::param(values, [values.len()], &dev).unwrap(),
    )]
}

/// L = Σ c·p² so ∂L/∂p = 2·c·p: a gradient that changes as p moves.
fn quadratic_grads(p: &Tensor, c: &[f32]) -> liera::Grads {
    let c = Tensor::from_slice(c, [c.len()], p.device()).unwrap();
    p.mul(p)
        .unwrap()
        .mul(&c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn close(got: &[f32], want: &[f64], tol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "entry {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }
}

#[test]
fn adamw_first_step_by_hand() {
    // g = c (L = Σ c·p). Step 1: m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε) ≈ lr·sign(g), after the
    // decoupled decay p·(1 − lr·λ): p = [1, −2], lr 0.1, λ 0.01 → [0.999 − 0.1, −1.998 + 0.1].
    let ps = params(&[1.0, -2.0]);
    let c = Tensor::from_slice(&[0.5, -3.0], [2], &Device::cpu()).unwrap();
    let grads = ps[0]
        .1
        .mul(&c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.01).unwrap();
    opt.step(&ps, &grads, 0.1).unwrap();
    close(&ps[0].1.to_vec().unwrap(), &[0.899, -1.898], 1e-6);
    assert_eq!(opt.steps(), 1);
}

/// One AdamW step t in f64 on the quadratic Σ c·p² (gradient 2·c·p), the formulas written out:
/// p ← p·(1 − lr·λ) − lr·m̂/(√v̂ + ε).
#[allow(clippy::too_many_arguments)]
fn adamw_reference_step(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    c: &[f32],
    t: i32,
    lr: f64,
    (b1, b2, eps, wd): (f64, f64, f64, f64),
) {
    for i in 0..p.len() {
        let g = 2.0 * c[i] as f64 * p[i];
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        let mh = m[i] / (1.0 - b1.powi(t));
        let vh = v[i] / (1.0 - b2.powi(t));
        p[i] -= lr * mh / (vh.sqrt() + eps);
    }
}

#[test]
fn adamw_matches_scalar_reference_over_steps() {
    let (b1, b2, eps, wd, lr) = (0.9f64, 0.99f64, 1e-6f64, 0.05f64, 0.03f64);
    let c = [0.7f32, -1.3, 2.0];
    let ps = params(&[0.5, 1.5, -0.8]);
    let mut opt = AdamW::new(b1 as f32, b2 as f32, eps as f32, wd as f32).unwrap();
    let mut p: Vec<f64> = vec![0.5, 1.5, -0.8];
    let (mut m, mut v) = (vec![0.0f64; 3], vec![0.0f64; 3]);
    for t in 1..=6 {
        let grads = quadratic_grads(&ps[0].1, &c);
        opt.step(&ps, &grads, lr as f32).unwrap();
        adamw_reference_step(&mut p, &mut m, &mut v, &c, t, lr, (b1, b2, eps, wd));
        close(&ps[0].1.to_vec().unwrap(), &p, 1e-5);
    }
}

#[test]
fn sgd_momentum_nesterov_weight_decay_match_reference() {
    for nesterov in [false, true] {
        let (mu, wd, lr) = (0.9f64, 0.1f64, 0.05f64);
        let c = [1.0f32, -0.5];
        let ps = params(&[2.0, 1.0]);
        let mut opt = Sgd::new(mu as f32, wd as f32, nesterov).unwrap();
        let mut p = vec![2.0f64, 1.0];
        let mut buf: Option<Vec<f64>> = None;
        for _ in 0..5 {
            let grads = quadratic_grads(&ps[0].1, &c);
            opt.step(&ps, &grads, lr as f32).unwrap();
            let g: Vec<f64> = (0..2)
                .map(|i| 2.0 * c[i] as f64 * p[i] + wd * p[i])
                .collect();
            let b: Vec<f64> = match &buf {
                Some(b) => (0..2).map(|i| mu * b[i] + g[i]).collect(),
                None => g.clone(),
            };
            for i in 0..2 {
                let d = if nesterov { g[i] + mu * b[i] } else { b[i] };
                p[i] -= lr * d;
            }
            buf = Some(b);
            close(&ps[0].1.to_vec().unwrap(), &p, 1e-5);
        }
    }
}

#[test]
fn parameters_without_gradients_stay_bit_identical() {
    let dev = Device::cpu();
    let trained = Tensor::param(&[1.0, 2.0], [2], &dev).unwrap();
    let frozen = Tensor::from_slice(&[3.0, -4.0], [2], &dev).unwrap(); // no requires_grad
    let unused = Tensor::param(&[5.0, 6.0], [2], &dev).unwrap(); // trainable but not in the loss
    let loss = trained.mul(&frozen).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(
        grads.get(&frozen).is_none(),
        "a frozen weight got a gradient buffer"
    );
    let ps = vec![
        ("trained".to_string(), trained.clone()),
        ("frozen".to_string(), frozen.clone()),
        ("unused".to_string(), unused.clone()),
    ];
    let mut opt = AdamW::default();
    for _ in 0..3 {
        opt.step(&ps, &grads, 0.1).unwrap();
    }
    assert_eq!(frozen.to_vec().unwrap(), vec![3.0, -4.0]);
    assert_eq!(unused.to_vec().unwrap(), vec![5.0, 6.0]);
    assert_ne!(trained.to_vec().unwrap(), vec![1.0, 2.0]);
    assert_eq!(
        opt.state().len(),
        2,
        "state only for the trained parameter (m and v)"
    );
}

#[test]
fn state_round_trip_continues_identically() {
    let c = [0.3f32, -2.0, 1.1];
    let a = params(&[1.0, 0.5, -1.5]);
    let b = params(&[1.0, 0.5, -1.5]);
    let mut opt_a = AdamW::default();
    for _ in 0..3 {
        opt_a.step(&a, &quadratic_grads(&a[0].1, &c), 0.05).unwrap();
    }
    b[0].1.assign(&a[0].1.detach()).unwrap();
    let mut opt_b = AdamW::default();
    opt_b.load_state(opt_a.steps(), opt_a.state()).unwrap();
    opt_a.step(&a, &quadratic_grads(&a[0].1, &c), 0.05).unwrap();
    opt_b.step(&b, &quadratic_grads(&b[0].1, &c), 0.05).unwrap();
    assert_eq!(a[0].1.to_vec().unwrap(), b[0].1.to_vec().unwrap());

    let mut sgd = Sgd::new(0.9, 0.0, false).unwrap();
    let err = sgd
        .load_state(1, vec![("m.w".into(), a[0].1.detach())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.w"), "{err}");
}

#[test]
fn cosine_schedule_warms_up_then_decays_to_min() {
    let s = CosineSchedule::new(1.0, 0.1, 4, 14).unwrap();
    assert_eq!(s.lr(0), 0.25);
    assert_eq!(s.lr(3), 1.0);
    assert!((s.lr(4) - 1.0).abs() < 1e-6); // cos(0) = 1: the peak
    assert!((s.lr(9) - 0.55).abs() < 1e-6); // halfway: (base + min) / 2
    assert!(
        (s.lr(13) - (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * 0.9).cos() as f32))).abs() < 1e-6
    );
    assert_eq!(s.lr(14), 0.1);
    assert_eq!(s.lr(1000), 0.1);
    assert!(CosineSchedule::new(0.1, 0.2, 0, 10).is_err());
    assert!(CosineSchedule::new(0.1, 0.0, 11, 10).is_err());
    assert!(CosineSchedule::new(0.1, 0.0, 0, 0).is_err());
}

#[test]
fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
    let dev = Device::cpu();
    let a = Tensor::param(&[0.0], [1], &dev).unwrap();
    let b = Tensor::param(&[0.0], [1], &dev).unwrap();
    let ps = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let loss = || {
        let ca = Tensor::from_slice(&[3.0], [1], &dev).unwrap();
        let cb = Tensor::from_slice(&[4.0], [1], &dev).unwrap();
        a.mul(&ca)
            .unwrap()
            .add(&b.mul(&cb).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
    };
    // ‖(3, 4)‖ = 5 → scaled to norm 1: (0.6, 0.8).
    let mut grads = loss().backward().unwrap();
    let norm = clip_grad_norm(&ps, &mut grads, 1.0).unwrap().unwrap();
    assert!((norm.to_scalar().unwrap() - 5.0).abs() < 1e-6);
    assert!((grads.get(&a).unwrap().to_scalar().unwrap() - 0.6).abs() < 1e-6);
    assert!((grads.get(&b).unwrap().to_scalar().unwrap() - 0.8).abs() < 1e-6);
    // Below the limit: unchanged.
    let mut grads = loss().backward().unwrap();
    clip_grad_norm(&ps, &mut grads, 10.0).unwrap();
    assert!((grads.get(&a).unwrap().to_scalar().unwrap() - 3.0).abs() < 1e-6);
    assert!((grads.get(&b).unwrap().to_scalar().unwrap() - 4.0).abs() < 1e-6);
    assert!(clip_grad_norm(&ps, &mut grads, 0.0).is_err());
}

#[test]
fn invalid_hyper_parameters_are_errors() {
    assert!(AdamW::new(1.0, 0.999, 1e-8, 0.0).is_err());
    assert!(AdamW::new(0.9, 0.999, 0.0, 0.0).is_err());
    assert!(AdamW::new(0.9, 0.999, 1e-8, -1.0).is_err());
    assert!(Sgd::new(-0.1, 0.0, false).is_err());
    assert!(Sgd::new(0.9, f32::NAN, false).is_err());
    let ps = params(&[1.0]);
    let grads = liera::Grads::default();
    let e = AdamW::default()
        .step(&ps, &grads, -1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("learning rate"), "{e}");
}

#[test]
fn adamw_parameter_groups_update_at_their_own_rate() {
    // Two parameters with the same values and gradients; the one named `head.fc.…` trains at 2.5× the
    // step's rate, weight decay included, and both follow the scalar reference at their own rate.
    let dev = Device::cpu();
    let (b1, b2, eps, wd, lr, factor) = (0.9f64, 0.999f64, 1e-8f64, 0.05f64, 0.02f64, 2.5f64);
    let c = [0.7f32, -1.3, 2.0];
    let init = [0.5f32, 1.5, -0.8];
    let ps = vec![
        (
            "stages.0.w".to_string(),
            Tensor::param(&init, [3], &dev).unwrap(),
        ),
        (
            "head.fc.weight".to_string(),
            Tensor::param(&init, [3], &dev).unwrap(),
        ),
    ];
    let mut opt = AdamW::new(b1 as f32, b2 as f32, eps as f32, wd as f32)
        .unwrap()
        .with_lr_scale("head.fc.", factor as f32)
        .unwrap();
    let mut refs: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = (0..2)
        .map(|_| {
            (
                init.iter().map(|&v| v as f64).collect(),
                vec![0.0; 3],
                vec![0.0; 3],
            )
        })
        .collect();
    for t in 1..=5 {
        // Both parameters in one loss, each with its own quadratic gradient 2·c·p.
        let c_t = Tensor::from_slice(&c, [3], &dev).unwrap();
        let loss = ps[0]
            .1
            .mul(&ps[0].1)
            .unwrap()
            .add(&ps[1].1.mul(&ps[1].1).unwrap())
            .unwrap()
            .mul(&c_t)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&ps, &grads, lr as f32).unwrap();
        for (k, (p, m, v)) in refs.iter_mut().enumerate() {
            let rate = if k == 1 { lr * factor } else { lr };
            adamw_reference_step(p, m, v, &c, t, rate, (b1, b2, eps, wd));
        }
        close(&ps[0].1.to_vec().unwrap(), &refs[0].0, 1e-5);
        close(&ps[1].1.to_vec().unwrap(), &refs[1].0, 1e-5);
    }
    assert_ne!(ps[0].1.to_vec().unwrap(), ps[1].1.to_vec().unwrap());
    // A negative or non-finite factor, or an empty prefix, is refused.
    assert!(AdamW::default().with_lr_scale("head.", -1.0).is_err());
    assert!(AdamW::default().with_lr_scale("head.", f32::NAN).is_err());
    assert!(AdamW::default().with_lr_scale("", 2.0).is_err());
}
