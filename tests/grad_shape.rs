//! Gradient property tests of the reductions and shape moves: sum and mean over random axis sets (keepdim or
//! not), sum_to, broadcast_to, reshape, flatten_from, permute and transpose.

mod common;

use common::{check_gradients, devices, input, strides, unravel, Rng, TOL};
use liera::Shape;
use proptest::prelude::*;

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 1..=5)
}

/// Reference sum over `axes` (keepdim layout, which has the same element order as the squeezed one).
fn reference_sum(x: &[f64], shape: &[usize], axes: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let os = strides(&out_shape);
    let mut out = vec![0.0; out_shape.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let idx = unravel(i, shape);
        let o: usize = idx
            .iter()
            .enumerate()
            .map(|(ax, &k)| if axes.contains(&ax) { 0 } else { k * os[ax] })
            .sum();
        out[o] += v;
    }
    out
}

fn reference_permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let is = strides(shape);
    (0..x.len())
        .map(|i| {
            let idx = unravel(i, &out_shape);
            x[idx
                .iter()
                .zip(perm)
                .map(|(&k, &p)| k * is[p])
                .sum::<usize>()]
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sum_and_mean_over_any_axes(shape in shape_strategy(), mask in any::<u8>(), keepdim in any::<bool>(), seed in any::<u64>()) {
        let axes: Vec<usize> = (0..shape.len()).filter(|i| mask & (1 << i) != 0).collect();
        let mut rng = Rng::new(seed);
        let inputs = [input(rng.vec(shape.iter().product(), -1.0, 1.0), &shape)];
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        for dev in devices() {
            let (s, a) = (shape.clone(), axes.clone());
            check_gradients(&dev, &inputs, |t| t[0].sum(&axes, keepdim), |v| reference_sum(&v[0], &s, &a), TOL)
                .map_err(|e| TestCaseError::fail(format!("sum {shape:?} over {axes:?}: {e}")))?;
            check_gradients(&dev, &inputs, |t| t[0].mean(&axes, keepdim),
                |v| reference_sum(&v[0], &s, &a).iter().map(|x| x / count as f64).collect(), TOL)
                .map_err(|e| TestCaseError::fail(format!("mean {shape:?} over {axes:?}: {e}")))?;
        }
    }

    #[test]
    fn sum_to_and_broadcast_to_are_adjoint(shape in shape_strategy(), mask in any::<u8>(), lead in 0usize..3, seed in any::<u64>()) {
        // small: shape with some axes set to 1 and leading axes dropped; big: shape with `lead` new axes.
        let small: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if mask & (1 << i) != 0 { 1 } else { d }).collect();
        let small = small[(mask as usize >> 6).min(small.len())..].to_vec();
        let mut big = vec![2; lead];
        big.extend(&shape);
        let mut rng = Rng::new(seed);
        for dev in devices() {
            // broadcast_to: y[i] = x[project(i)]
            let inputs = [input(rng.vec(small.iter().product(), -1.0, 1.0), &small)];
            let (sm, bg) = (small.clone(), big.clone());
            let target = Shape::new(big.clone());
            check_gradients(&dev, &inputs, |t| t[0].broadcast_to(&target), |v| {
                let pad: Vec<usize> = std::iter::repeat_n(1, bg.len() - sm.len()).chain(sm.iter().copied()).collect();
                let ps = strides(&pad);
                (0..bg.iter().product()).map(|i| {
                    let idx = unravel(i, &bg);
                    v[0][idx.iter().zip(&pad).zip(&ps).map(|((&k, &d), &s)| if d == 1 { 0 } else { k * s }).sum::<usize>()]
                }).collect()
            }, TOL).map_err(|e| TestCaseError::fail(format!("broadcast_to {small:?} -> {big:?}: {e}")))?;
            // sum_to: the reverse direction is a sum over the broadcast axes.
            let inputs = [input(rng.vec(big.iter().product(), -1.0, 1.0), &big)];
            let target = Shape::new(small.clone());
            let offset = big.len() - small.len();
            let axes: Vec<usize> = (0..big.len()).filter(|&i| i < offset || (small[i - offset] == 1 && big[i] != 1)).collect();
            let bg = big.clone();
            check_gradients(&dev, &inputs, |t| t[0].sum_to(&target), |v| reference_sum(&v[0], &bg, &axes), TOL)
                .map_err(|e| TestCaseError::fail(format!("sum_to {big:?} -> {small:?}: {e}")))?;
        }
    }

    #[test]
    fn permute_transpose_reshape(shape in shape_strategy(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let inputs = [input(rng.vec(shape.iter().product(), -1.0, 1.0), &shape)];
        for dev in devices() {
            let (s, p) = (shape.clone(), perm.clone());
            check_gradients(&dev, &inputs, |t| t[0].permute(&perm), |v| reference_permute(&v[0], &s, &p), TOL)
                .map_err(|e| TestCaseError::fail(format!("permute {shape:?} by {perm:?}: {e}")))?;
            let last = shape.len() - 1;
            let mut swap: Vec<usize> = (0..shape.len()).collect();
            swap.swap(0, last);
            check_gradients(&dev, &inputs, |t| t[0].transpose(0, last), |v| reference_permute(&v[0], &s, &swap), TOL)
                .map_err(TestCaseError::fail)?;
            // reshape then a permute, so a wrong reshape backward would show (a bare reshape's gradient is trivial).
            let n: usize = shape.iter().product();
            check_gradients(&dev, &inputs, |t| t[0].reshape([n, 1])?.transpose(0, 1)?.flatten_from(0)?.exp(),
                |v| v[0].iter().map(|x| x.exp()).collect(), TOL).map_err(TestCaseError::fail)?;
        }
    }
}
