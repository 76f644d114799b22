//! Gradient property tests of the batched matrix product with every transpose combination and with a shared
//! (unbatched) operand.

mod common;

use common::reference::batched_matmul;
use common::{check_gradients, devices, input, Rng, TOL};
use proptest::prelude::*;

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
                |v| batched_matmul(&v[0], &v[1], batch, m, k, n, ta, tb, a_batched, b_batched), TOL)
                .map_err(|e| TestCaseError::fail(format!("{a_shape:?}{} x {b_shape:?}{}: {e}", if ta {"T"} else {""}, if tb {"T"} else {""})))?;
        }
    }
}
