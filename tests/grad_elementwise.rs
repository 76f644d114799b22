//! Gradient property tests of the elementwise ops: add, sub, mul, div (with broadcasting), the scalar ops,
//! exp, log, sqrt, GELU, the layer-scaled residual (ops/layer_scale.rs), the adapters' fused weight reparameterisations (ops/reparam.rs) and the squared
//! global norm of gradient clipping (ops/sum_squares.rs). Each compares forward and tape gradients with an f64 reference (see common).

mod common;

use common::reference::gelu64;
use common::{check_gradients, devices, input, unravel, Rng, TOL};
use liera::Tensor;
use proptest::prelude::*;

/// A random shape of rank 0..=4 with small dimensions.
fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 0..=4)
}

/// A pair of shapes that broadcast: start from a full shape, then set some axes of each operand to 1 and
/// drop some leading axes of one of them.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (shape_strategy(), any::<u64>()).prop_map(|(full, seed)| {
        let mut rng = Rng::new(seed);
        let mut a = full.clone();
        let mut b = full.clone();
        for i in 0..full.len() {
            match rng.next_u64() % 4 {
                0 => a[i] = 1,
                1 => b[i] = 1,
                _ => {}
            }
        }
        let drop = (rng.next_u64() % (full.len() as u64 + 1)) as usize;
        if rng.next_u64() & 1 == 0 {
            a.drain(..drop);
        } else {
            b.drain(..drop);
        }
        (a, b)
    })
}

type EngineBinary = fn(&Tensor, &Tensor) -> liera::Result<Tensor>;
type RefBinary = fn(f64, f64) -> f64;
type EngineReparam = fn(&Tensor, &Tensor, f32) -> liera::Result<Tensor>;

/// Reference broadcasting: out[i] = f(a[idx_a(i)], b[idx_b(i)]).
fn reference_binary(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    let rank = sa.len().max(sb.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect()
    };
    let (pa, pb) = (pad(sa), pad(sb));
    let out: Vec<usize> = (0..rank).map(|i| pa[i].max(pb[i])).collect();
    let n: usize = out.iter().product();
    let flat = |idx: &[usize], s: &[usize]| {
        idx.iter()
            .zip(s)
            .fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i })
    };
    (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            f(a[flat(&idx, &pa)], b[flat(&idx, &pb)])
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn add_sub_mul_div_broadcast((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let a = rng.vec(sa.iter().product(), -2.0, 2.0);
        // b is kept away from zero so that division stays well conditioned.
        let b = rng.vec_away_from_zero(sb.iter().product(), 0.5, 2.0);
        let inputs = [input(a, &sa), input(b, &sb)];
        for dev in devices() {
            let ops: [(&str, EngineBinary, RefBinary); 4] = [
                ("add", |x, y| x.add(y), |x, y| x + y),
                ("sub", |x, y| x.sub(y), |x, y| x - y),
                ("mul", |x, y| x.mul(y), |x, y| x * y),
                ("div", |x, y| x.div(y), |x, y| x / y),
            ];
            for (name, op, f) in ops {
                let (sa, sb) = (sa.clone(), sb.clone());
                check_gradients(&dev, &inputs, |t| op(&t[0], &t[1]), |v| reference_binary(&v[0], &sa, &v[1], &sb, f), TOL)
                    .map_err(|e| TestCaseError::fail(format!("{name} {sa:?} {sb:?} on {}: {e}", dev.name())))?;
            }
        }
    }

    #[test]
    fn scalar_ops(shape in shape_strategy(), c in -3.0f32..3.0, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(shape.iter().product(), 0.5, 2.0); // positive: pow with a real exponent
        let inputs = [input(x, &shape)];
        let c64 = c as f64;
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].add_scalar(c), |v| v[0].iter().map(|x| x + c64).collect(), TOL).map_err(TestCaseError::fail)?;
            check_gradients(&dev, &inputs, |t| t[0].mul_scalar(c), |v| v[0].iter().map(|x| x * c64).collect(), TOL).map_err(TestCaseError::fail)?;
            check_gradients(&dev, &inputs, |t| t[0].neg(), |v| v[0].iter().map(|x| -x).collect(), TOL).map_err(TestCaseError::fail)?;
            check_gradients(&dev, &inputs, |t| t[0].pow_scalar(c), |v| v[0].iter().map(|x| x.powf(c64)).collect(), TOL).map_err(TestCaseError::fail)?;
        }
        // min(x, c) on both sides of c, kept 0.05 from its kink so finite differences see one side.
        let around_c: Vec<f64> = rng.vec_away_from_zero(shape.iter().product(), 0.05, 1.0).into_iter().map(|d| c64 + d).collect();
        let inputs = [input(around_c, &shape)];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].min_scalar(c), |v| v[0].iter().map(|x| x.min(c64)).collect(), TOL).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn exp_log_sqrt(shape in shape_strategy(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(shape.iter().product(), 0.25, 3.0); // log and sqrt need x > 0
        let inputs = [input(x, &shape)];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].exp(), |v| v[0].iter().map(|x| x.exp()).collect(), TOL).map_err(TestCaseError::fail)?;
            check_gradients(&dev, &inputs, |t| t[0].log(), |v| v[0].iter().map(|x| x.ln()).collect(), TOL).map_err(TestCaseError::fail)?;
            check_gradients(&dev, &inputs, |t| t[0].sqrt(), |v| v[0].iter().map(|x| x.sqrt()).collect(), TOL).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn gelu(shape in shape_strategy(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(shape.iter().product(), -4.0, 4.0);
        let inputs = [input(x, &shape)];
        // erf in f32 (A&S 7.1.26) has absolute error ≤ 1.5e-7, far inside TOL.
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].gelu(), |v| v[0].iter().map(|&x| gelu64(x)).collect(), TOL).map_err(TestCaseError::fail)?;
        }
    }

    /// W + s·P, W ⊙ exp(s·P), W ⊙ (1 + s·P): gradients for both W and P (the adapters freeze W, but the op
    /// is general), and for P alone as the adapters use it.
    #[test]
    fn weight_reparameterisations(shape in shape_strategy(), s in -2.0f32..2.0, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let n = shape.iter().product();
        let inputs = [input(rng.vec(n, -2.0, 2.0), &shape), input(rng.vec(n, -1.0, 1.0), &shape)];
        let s64 = s as f64;
        let refs: [(&str, EngineReparam, RefBinary); 3] = [
            ("add_scaled", |w, p, s| w.add_scaled(p, s), |w, p| w + p),
            ("mul_exp_scaled", |w, p, s| w.mul_exp_scaled(p, s), |w, p| w * p.exp()),
            ("mul_affine_scaled", |w, p, s| w.mul_affine_scaled(p, s), |w, p| w * (1.0 + p)),
        ];
        for dev in devices() {
            for (name, op, f) in refs {
                check_gradients(&dev, &inputs, |t| op(&t[0], &t[1], s), |v| v[0].iter().zip(&v[1]).map(|(&w, &p)| f(w, s64 * p)).collect(), TOL)
                    .map_err(|e| TestCaseError::fail(format!("{name} {shape:?} s={s} on {}: {e}", dev.name())))?;
                // P alone requires a gradient (W frozen), as under an adapter.
                let frozen = Tensor::from_slice(&inputs[0].values.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape.clone(), &dev).unwrap();
                check_gradients(&dev, &inputs[1..], |t| op(&frozen, &t[0], s), |v| inputs[0].values.iter().zip(&v[0]).map(|(&w, &p)| f(w, s64 * p)).collect(), TOL)
                    .map_err(|e| TestCaseError::fail(format!("{name} (W frozen) {shape:?} on {}: {e}", dev.name())))?;
            }
        }
    }

    /// Σ_k Σ_i x_k² over 1–9 tensors (past the four the GPU kernel takes per launch, so the running total
    /// is chained), one of them long enough (up to 3000) that every thread of the GPU workgroup strides it.
    #[test]
    fn sum_squares_of_several_tensors(
        shapes in prop::collection::vec(shape_strategy(), 1..10),
        long in 1usize..3000,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut shapes = shapes;
        shapes.push(vec![long]);
        let inputs: Vec<_> = shapes
            .iter()
            .map(|sh| input(rng.vec(sh.iter().product(), -2.0, 2.0), sh))
            .collect();
        for dev in devices() {
            check_gradients(
                &dev,
                &inputs,
                |t| Tensor::sum_squares_all(&t.iter().collect::<Vec<_>>()),
                |v| vec![v.iter().flatten().map(|x| x * x).sum()],
                TOL,
            )
            .map_err(|e| TestCaseError::fail(format!("{} tensors on {}: {e}", shapes.len(), dev.name())))?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// y = x + γ_c·h on (N, C, …) tensors of rank 2 to 4 against f64, and its tape gradients.
    #[test]
    fn layer_scaled_residual(n in 1usize..3, c in 1usize..5, rest in prop::collection::vec(1usize..4, 0..=2), seed in any::<u64>()) {
        let mut shape = vec![n, c];
        shape.extend(&rest);
        let numel: usize = shape.iter().product();
        let inner = numel / (n * c);
        let mut rng = Rng::new(seed);
        let inputs = [
            input(rng.vec(numel, -1.0, 1.0), &shape),
            input(rng.vec(numel, -1.0, 1.0), &shape),
            input(rng.vec(c, -1.0, 1.0), &[c]),
        ];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].add_channel_scaled(&t[1], &t[2]), |v| {
                (0..numel).map(|j| v[0][j] + v[2][(j / inner) % c] * v[1][j]).collect()
            }, TOL).map_err(|e| TestCaseError::fail(format!("{shape:?} on {}: {e}", dev.name())))?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The adapted kernel from its factors in one op (one launch per pass on the GPU) against the composed
    /// ops, forward and both factor gradients, on both devices; sizes past one 64×64 GEMM tile, and K
    /// (the rank) long enough for the gradients' split-K.
    #[test]
    fn adapt_low_rank_equals_the_composed_ops(o in 1usize..80, r in 1usize..9, n in 1usize..300, form in 0usize..3, s in -1.0f32..1.0, seed in any::<u64>()) {
        use liera::ops::reparam::ReparamForm;
        let mut rng = Rng::new(seed);
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let (wv, bv, av, gv) = (
            f32s(rng.vec(o * n, -1.0, 1.0)),
            f32s(rng.vec(o * r, -0.5, 0.5)),
            f32s(rng.vec(r * n, -0.5, 0.5)),
            f32s(rng.vec(o * n, -1.0, 1.0)),
        );
        let form = [ReparamForm::Add, ReparamForm::MulExp, ReparamForm::MulAffine][form];
        for dev in devices() {
            let run = |fused: bool| -> liera::Result<Vec<Vec<f32>>> {
                let w = Tensor::from_slice(&wv, [o, n], &dev)?;
                let b = Tensor::param(&bv, [o, r], &dev)?;
                let a = Tensor::param(&av, [r, n], &dev)?;
                let y = if fused {
                    w.adapt_low_rank(&b, &a, s, form)?
                } else {
                    let p = b.matmul(&a)?;
                    match form {
                        ReparamForm::Add => w.add_scaled(&p, s)?,
                        ReparamForm::MulExp => w.mul_exp_scaled(&p, s)?,
                        ReparamForm::MulAffine => w.mul_affine_scaled(&p, s)?,
                    }
                };
                let grads = y.mul(&Tensor::from_slice(&gv, [o, n], &dev)?)?.sum_all()?.backward()?;
                Ok(vec![y.to_vec()?, grads.get(&b).expect("∂B").to_vec()?, grads.get(&a).expect("∂A").to_vec()?])
            };
            let (fused, composed) = (run(true).unwrap(), run(false).unwrap());
            for (k, (x, y)) in fused.iter().zip(&composed).enumerate() {
                let scale = y.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    prop_assert!((u - v).abs() <= 1e-5 * (scale + v.abs()), "{form:?} {o}×{r}×{n} on {}: output {k} element {i}: fused {u} vs composed {v}", dev.name());
                }
            }
        }
    }
}
