//! Gradient property tests of the normalisations and the loss: layer norm over NCHW channels and over the
//! last axis (with and without affine parameters), log-softmax over any axis, cross-entropy, GRN
//! (channels-first and -last), global average pooling and linear. References are the definitions in f64.

mod common;

use common::{check_gradients, devices, input, Rng, TOL};
use proptest::prelude::*;

/// Reference layer norm over the middle axis of an (outer, len, inner) view.
fn ref_layer_norm(
    x: &[f64],
    (outer, len, inner): (usize, usize, usize),
    w: Option<&[f64]>,
    b: Option<&[f64]>,
    eps: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |c: usize| (o * len + c) * inner + i;
            let mu = (0..len).map(|c| x[at(c)]).sum::<f64>() / len as f64;
            let var = (0..len).map(|c| (x[at(c)] - mu).powi(2)).sum::<f64>() / len as f64;
            let r = 1.0 / (var + eps).sqrt();
            for c in 0..len {
                y[at(c)] = (x[at(c)] - mu) * r * w.map_or(1.0, |w| w[c]) + b.map_or(0.0, |b| b[c]);
            }
        }
    }
    y
}

fn ref_log_softmax(x: &[f64], (outer, len, inner): (usize, usize, usize)) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |c: usize| (o * len + c) * inner + i;
            let lse = (0..len).map(|c| x[at(c)].exp()).sum::<f64>().ln();
            for c in 0..len {
                y[at(c)] = x[at(c)] - lse;
            }
        }
    }
    y
}

/// The smallest variance over the normalised rows of an (outer, len, inner) view. Layer norm's gradient
/// carries 1/σ³ terms, so rows whose entries nearly coincide (σ² not far above ε) make the f32 gradient
/// ill-conditioned; the tests keep σ² ≥ 0.05.
fn min_row_variance(x: &[f64], (outer, len, inner): (usize, usize, usize)) -> f64 {
    let mut min = f64::INFINITY;
    for o in 0..outer {
        for i in 0..inner {
            let at = |c: usize| x[(o * len + c) * inner + i];
            let mu = (0..len).map(at).sum::<f64>() / len as f64;
            let var = (0..len).map(|c| (at(c) - mu).powi(2)).sum::<f64>() / len as f64;
            min = min.min(var);
        }
    }
    min
}

fn small_shape(rank: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, rank)
}

// Layer norm divides by σ, so its gradient has terms of size 1/σ³; inputs spread over [−2, 2] with ≥ 2
// entries and every row's σ² ≥ 0.05 (see `min_row_variance`) keep it well conditioned.
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn layer_norm_channels_nchw(n in 1usize..3, c in 2usize..6, h in 1usize..4, w in 1usize..4, affine in 0u8..3, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut inputs = vec![input(rng.vec(n * c * h * w, -2.0, 2.0), &[n, c, h, w])];
        prop_assume!(min_row_variance(&inputs[0].values, (n, c, h * w)) >= 0.05);
        if affine >= 1 { inputs.push(input(rng.vec(c, 0.5, 1.5), &[c])); }
        if affine >= 2 { inputs.push(input(rng.vec(c, -1.0, 1.0), &[c])); }
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].layer_norm_channels(t.get(1), t.get(2), 1e-6),
                |v| ref_layer_norm(&v[0], (n, c, h * w), v.get(1).map(|x| x.as_slice()), v.get(2).map(|x| x.as_slice()), 1e-6), TOL)
                .map_err(|e| TestCaseError::fail(format!("[{n},{c},{h},{w}] affine {affine} on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn layer_norm_last_axis(lead in small_shape(0..=3), c in 2usize..7, affine in 0u8..3, seed in any::<u64>()) {
        let mut shape = lead.clone();
        shape.push(c);
        let rows: usize = lead.iter().product();
        let mut rng = Rng::new(seed);
        let mut inputs = vec![input(rng.vec(rows * c, -2.0, 2.0), &shape)];
        prop_assume!(min_row_variance(&inputs[0].values, (rows, c, 1)) >= 0.05);
        if affine >= 1 { inputs.push(input(rng.vec(c, 0.5, 1.5), &[c])); }
        if affine >= 2 { inputs.push(input(rng.vec(c, -1.0, 1.0), &[c])); }
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].layer_norm_last(t.get(1), t.get(2), 1e-5),
                |v| ref_layer_norm(&v[0], (rows, c, 1), v.get(1).map(|x| x.as_slice()), v.get(2).map(|x| x.as_slice()), 1e-5), TOL)
                .map_err(|e| TestCaseError::fail(format!("{shape:?} on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn log_softmax_any_axis(shape in small_shape(1..=4), axis_pick in any::<usize>(), seed in any::<u64>()) {
        let axis = axis_pick % shape.len();
        let layout = (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product());
        let mut rng = Rng::new(seed);
        let inputs = [input(rng.vec(shape.iter().product(), -3.0, 3.0), &shape)];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].log_softmax(axis), |v| ref_log_softmax(&v[0], layout), TOL)
                .map_err(|e| TestCaseError::fail(format!("{shape:?} axis {axis} on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn cross_entropy_mean_over_batch(n in 1usize..6, k in 2usize..7, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let labels: Vec<usize> = (0..n).map(|_| (rng.next_u64() % k as u64) as usize).collect();
        let inputs = [input(rng.vec(n * k, -3.0, 3.0), &[n, k])];
        for dev in devices() {
            let l = labels.clone();
            check_gradients(&dev, &inputs, |t| t[0].cross_entropy(&l), |v| {
                let ls = ref_log_softmax(&v[0], (n, k, 1));
                vec![-(0..n).map(|r| ls[r * k + labels[r]]).sum::<f64>() / n as f64]
            }, TOL).map_err(|e| TestCaseError::fail(format!("n {n} k {k} on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn grn_both_layouts(n in 1usize..3, c in 1usize..5, h in 1usize..4, w in 1usize..4, channels_last in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let shape = if channels_last { vec![n, h, w, c] } else { vec![n, c, h, w] };
        // |x| ≥ 0.3 keeps each channel's norm well away from 0, where √ has an infinite slope.
        let inputs = [
            input(rng.vec_away_from_zero(n * c * h * w, 0.3, 2.0), &shape),
            input(rng.vec(c, -1.0, 1.0), &[c]),
            input(rng.vec(c, -1.0, 1.0), &[c]),
        ];
        let eps = 1e-6;
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].grn(&t[1], &t[2], eps as f32, channels_last), |v| {
                let (x, gamma, beta) = (&v[0], &v[1], &v[2]);
                let at = |b: usize, ch: usize, i: usize, j: usize| if channels_last { ((b * h + i) * w + j) * c + ch } else { ((b * c + ch) * h + i) * w + j };
                let mut y = vec![0.0; x.len()];
                for b in 0..n {
                    let norms: Vec<f64> = (0..c).map(|ch| (0..h * w).map(|s| x[at(b, ch, s / w, s % w)].powi(2)).sum::<f64>().sqrt()).collect();
                    let mean = norms.iter().sum::<f64>() / c as f64;
                    for ch in 0..c {
                        let nx = norms[ch] / (mean + eps);
                        for s in 0..h * w {
                            let k = at(b, ch, s / w, s % w);
                            y[k] = gamma[ch] * x[k] * nx + beta[ch] + x[k];
                        }
                    }
                }
                y
            }, TOL).map_err(|e| TestCaseError::fail(format!("{shape:?} on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn global_avg_pool_nchw(n in 1usize..3, c in 1usize..4, h in 1usize..5, w in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let inputs = [input(rng.vec(n * c * h * w, -1.0, 1.0), &[n, c, h, w])];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].global_avg_pool(), |v| {
                v[0].chunks(h * w).map(|p| p.iter().sum::<f64>() / (h * w) as f64).collect()
            }, TOL).map_err(|e| TestCaseError::fail(format!("on {}: {e}", dev.name())))?;
        }
    }

    #[test]
    fn linear_with_and_without_bias(lead in small_shape(1..=3), fan_in in 1usize..6, fan_out in 1usize..6, bias in any::<bool>(), seed in any::<u64>()) {
        let mut shape = lead.clone();
        shape.push(fan_in);
        let rows: usize = lead.iter().product();
        let mut rng = Rng::new(seed);
        let mut inputs = vec![input(rng.vec(rows * fan_in, -1.0, 1.0), &shape), input(rng.vec(fan_out * fan_in, -1.0, 1.0), &[fan_out, fan_in])];
        if bias { inputs.push(input(rng.vec(fan_out, -1.0, 1.0), &[fan_out])); }
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].linear(&t[1], t.get(2)), |v| {
                let mut y = vec![0.0; rows * fan_out];
                for r in 0..rows {
                    for o in 0..fan_out {
                        y[r * fan_out + o] = v.get(2).map_or(0.0, |b| b[o]) + (0..fan_in).map(|i| v[0][r * fan_in + i] * v[1][o * fan_in + i]).sum::<f64>();
                    }
                }
                y
            }, TOL).map_err(|e| TestCaseError::fail(format!("{shape:?} on {}: {e}", dev.name())))?;
        }
    }
}

/// Softmax stability: huge logits do not overflow (the max is subtracted first).
#[test]
fn log_softmax_is_stable_for_large_logits() {
    let dev = liera::Device::cpu();
    let x = liera::Tensor::from_slice(&[1000.0, 1001.0, 999.0], [1, 3], &dev).unwrap();
    let y = x.log_softmax(1).unwrap().to_vec().unwrap();
    let lse = (1.0f64.exp() + 1.0 + (-1.0f64).exp()).ln() + 1000.0;
    for (got, xi) in y.iter().zip([1000.0f64, 1001.0, 999.0]) {
        assert!((*got as f64 - (xi - lse)).abs() < 1e-4, "{y:?}");
    }
}

/// A channel that is exactly zero (a dead channel after GELU, say) has G = 0, where √ has an infinite slope:
/// its gradient must be finite (0 for x, as torch.norm's backward gives) and the other channels' unchanged.
#[test]
fn grn_gradient_is_finite_for_an_all_zero_channel() {
    for dev in devices() {
        // (1, 2, 2, 2) channels-first: channel 0 all zero, channel 1 not.
        let x = liera::Tensor::param(
            &[0.0, 0.0, 0.0, 0.0, 0.5, -1.0, 2.0, 0.25],
            [1, 2, 2, 2],
            &dev,
        )
        .unwrap();
        let gamma = liera::Tensor::param(&[0.7, -0.3], [2], &dev).unwrap();
        let beta = liera::Tensor::param(&[0.1, 0.2], [2], &dev).unwrap();
        let y = x.grn(&gamma, &beta, 1e-6, false).unwrap();
        let weights = liera::Tensor::from_slice(
            &[1.0, -2.0, 0.5, 3.0, 1.5, -1.0, 0.25, 2.0],
            [1, 2, 2, 2],
            &dev,
        )
        .unwrap();
        let grads = y
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, t) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
            let g = grads.get(t).unwrap().to_vec().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{name} on {}: {g:?}",
                dev.name()
            );
        }
        // The zero channel passes its upstream gradient straight through the residual: ∂y/∂x = 1 there
        // (γ·x·N contributes x·∂N/∂x + N = 0 + ~0).
        let gx = grads.get(&x).unwrap().to_vec().unwrap();
        for (got, want) in gx[..4].iter().zip([1.0, -2.0, 0.5, 3.0]) {
            assert!(
                (got - want).abs() < 1e-5,
                "zero channel on {}: {gx:?}",
                dev.name()
            );
        }
    }
}

/// A last-axis layer norm over many rows (N·H·W rows of C in a channels-last block) runs its backward in
/// runs of rows; the result must be the same as for the rows taken in two separate halves: dx row by row
/// bit for bit, dweight and dbias the sums of the halves'.
#[test]
fn layer_norm_last_backward_over_many_rows_equals_its_halves() {
    use liera::{Device, Tensor};
    let dev = Device::cpu();
    let (rows, c) = (600usize, 64usize);
    let mut rng = Rng::new(11);
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let x = to_f32(rng.vec(rows * c, -2.0, 2.0));
    let r = to_f32(rng.vec(rows * c, -1.0, 1.0));
    let w = to_f32(rng.vec(c, 0.5, 1.5));
    let b = to_f32(rng.vec(c, -0.5, 0.5));
    let grads = |lo: usize, hi: usize| {
        let xt = Tensor::param(&x[lo * c..hi * c], [hi - lo, c], &dev).unwrap();
        let wt = Tensor::param(&w, [c], &dev).unwrap();
        let bt = Tensor::param(&b, [c], &dev).unwrap();
        let rt = Tensor::from_slice(&r[lo * c..hi * c], [hi - lo, c], &dev).unwrap();
        let y = xt.layer_norm_last(Some(&wt), Some(&bt), 1e-6).unwrap();
        let g = y.mul(&rt).unwrap().sum_all().unwrap().backward().unwrap();
        [&xt, &wt, &bt].map(|t| g.get(t).unwrap().to_vec().unwrap())
    };
    let [dx, dw, db] = grads(0, rows);
    let [dx1, dw1, db1] = grads(0, rows / 2);
    let [dx2, dw2, db2] = grads(rows / 2, rows);
    assert_eq!(dx, [dx1, dx2].concat(), "dx differs from the halves'");
    for (what, whole, (h1, h2)) in [("dweight", &dw, (&dw1, &dw2)), ("dbias", &db, (&db1, &db2))] {
        for (i, (&g, (&a, &b))) in whole.iter().zip(h1.iter().zip(h2)).enumerate() {
            assert!(
                (g - (a + b)).abs() <= 1e-4 * (1.0 + g.abs()),
                "{what}[{i}]: {g} vs {a} + {b}"
            );
        }
    }
}

/// GRN composed from the engine's ops (timm's formula, as the op was written before its fused kernels).
fn grn_composed(
    x: &liera::Tensor,
    gamma: &liera::Tensor,
    beta: &liera::Tensor,
    eps: f32,
    channels_last: bool,
) -> liera::Result<liera::Tensor> {
    let (c_axis, spatial, param_shape) = if channels_last {
        (3, [1, 2], [1, 1, 1, gamma.numel()])
    } else {
        (1, [2, 3], [1, gamma.numel(), 1, 1])
    };
    let g = x.mul(x)?.sum(&spatial, true)?.add_scalar(1e-30)?.sqrt()?;
    let n = g.div(&g.mean(&[c_axis], true)?.add_scalar(eps)?)?;
    x.mul(&n)?
        .mul(&gamma.reshape(param_shape)?)?
        .add(&beta.reshape(param_shape)?)?
        .add(x)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The fused GRN kernels equal the composed formula, forward and every gradient, on sizes past the
    /// finite-difference test's: more channels than a GPU workgroup has threads, and up to 81 positions.
    #[test]
    fn fused_grn_equals_the_composed_formula(n in 1usize..4, c in prop_oneof![1usize..8, 250usize..600], h in 1usize..10, w in 1usize..10, channels_last: bool, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let shape = if channels_last { [n, h, w, c] } else { [n, c, h, w] };
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let (xv, gv, bv, wv) = (
            f32s(rng.vec(n * c * h * w, -2.0, 2.0)),
            f32s(rng.vec(c, -1.0, 1.0)),
            f32s(rng.vec(c, -1.0, 1.0)),
            f32s(rng.vec(n * c * h * w, -1.0, 1.0)),
        );
        for dev in devices() {
            let run = |fused: bool| -> liera::Result<Vec<Vec<f32>>> {
                let x = liera::Tensor::param(&xv, shape, &dev)?;
                let gamma = liera::Tensor::param(&gv, [c], &dev)?;
                let beta = liera::Tensor::param(&bv, [c], &dev)?;
                let y = if fused { x.grn(&gamma, &beta, 1e-6, channels_last)? } else { grn_composed(&x, &gamma, &beta, 1e-6, channels_last)? };
                let weights = liera::Tensor::from_slice(&wv, shape, &dev)?;
                let grads = y.mul(&weights)?.sum_all()?.backward()?;
                let mut out = vec![y.to_vec()?];
                for t in [&x, &gamma, &beta] {
                    out.push(grads.get(t).expect("a gradient").to_vec()?);
                }
                Ok(out)
            };
            let (fused, composed) = (run(true).unwrap(), run(false).unwrap());
            for (k, (a, b)) in fused.iter().zip(&composed).enumerate() {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    prop_assert!((u - v).abs() <= 1e-4 * (scale + v.abs()), "{shape:?} on {}: output {k} element {i}: fused {u} vs composed {v}", dev.name());
                }
            }
        }
    }
}
