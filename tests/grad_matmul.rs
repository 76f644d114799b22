//! Gradient property tests of the batched matrix product with every transpose combination and with a shared
//! (unbatched) operand.

mod common;

use common::{check_gradients, devices, input, Rng, TOL};
use proptest::prelude::*;

/// Reference op(A)·op(B) for batches; `a_batched`/`b_batched` say whether each operand has the batch axis.
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    a_batched: bool,
    b_batched: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let ao = if a_batched { bi * m * k } else { 0 };
        let bo = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                out[bi * m * n + i * n + j] = (0..k)
                    .map(|p| {
                        let av = if ta {
                            a[ao + p * m + i]
                        } else {
                            a[ao + i * k + p]
                        };
                        let bv = if tb {
                            b[bo + j * k + p]
                        } else {
                            b[bo + p * n + j]
                        };
                        av * bv
                    })
                    .sum();
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matmul_any_transpose_and_batch(m in 1usize..7, k in 1usize..7, n in 1usize..7, batch in 1usize..4,
                                     ta in any::<bool>(), tb in any::<bool>(), sharing in 0u8..3, seed in any::<u64>()) {
        // sharing: 0 both batched, 1 A shared (rank 2), 2 B shared (rank 2).
        let (a_batched, b_batched) = (sharing != 1, sharing != 2);
        let mut a_shape = if ta { vec![k, m] } else { vec![m, k] };
        let mut b_shape = if tb { vec![n, k] } else { vec![k, n] };
        if a_batched { a_shape.insert(0, batch); }
        if b_batched { b_shape.insert(0, batch); }
        let mut rng = Rng::new(seed);
        let inputs = [input(rng.vec(a_shape.iter().product(), -1.0, 1.0), &a_shape), input(rng.vec(b_shape.iter().product(), -1.0, 1.0), &b_shape)];
        for dev in devices() {
            check_gradients(&dev, &inputs, |t| t[0].matmul_t(&t[1], ta, tb),
                |v| reference(&v[0], &v[1], batch, m, k, n, ta, tb, a_batched, b_batched), TOL)
                .map_err(|e| TestCaseError::fail(format!("{a_shape:?}{} x {b_shape:?}{}: {e}", if ta {"T"} else {""}, if tb {"T"} else {""})))?;
        }
    }
}
