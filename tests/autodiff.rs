//! The tape itself: accumulation, no-grad mode, frozen leaves, printing, and a gradient checker that can fail.

mod common;

use common::{check_gradients, input, Rng, TOL};
use liera::backend::UnaryOp;
use liera::{no_grad, Device, Tensor};

#[test]
fn gradient_checker_rejects_a_wrong_backward_rule() {
    // exp with a deliberately wrong derivative (g·x instead of g·eˣ): the checker must report it.
    let wrong_exp = |x: &Tensor| -> liera::Result<Tensor> {
        let storage = x
            .device()
            .backend()
            .unary(UnaryOp::Exp, &x.storage(), x.numel())?;
        let saved = x.detach();
        Ok(Tensor::from_op(
            "wrong_exp",
            storage,
            x.shape().clone(),
            &[x],
            move |g| Ok(vec![Some(g.mul(&saved)?)]),
        ))
    };
    let mut rng = Rng::new(1);
    let inputs = [input(rng.vec(6, -1.0, 1.0), &[2, 3])];
    let reference = |v: &[Vec<f64>]| v[0].iter().map(|x| x.exp()).collect::<Vec<_>>();
    let verdict = check_gradients(
        &Device::cpu(),
        &inputs,
        |t| wrong_exp(&t[0]),
        reference,
        TOL,
    );
    let err = verdict.expect_err("a wrong backward rule must fail the check");
    assert!(
        err.contains("gradient of input 0"),
        "unexpected failure message: {err}"
    );
    // The same harness accepts the correct op, so the failure above is the rule's fault.
    check_gradients(&Device::cpu(), &inputs, |t| t[0].exp(), reference, TOL).unwrap();
}

#[test]
fn gradient_checker_rejects_a_wrong_forward() {
    let mut rng = Rng::new(2);
    let inputs = [input(rng.vec(4, 0.5, 1.0), &[4])];
    let verdict = check_gradients(
        &Device::cpu(),
        &inputs,
        |t| t[0].exp(),
        |v| v[0].iter().map(|x| x.exp() + 1e-2).collect(),
        TOL,
    );
    assert!(verdict
        .expect_err("forward mismatch must fail")
        .contains("forward"));
}

#[test]
fn a_tensor_used_twice_accumulates_both_gradients() {
    let dev = Device::cpu();
    let x = Tensor::param(&[1.0, 2.0, 3.0], [3], &dev).unwrap();
    // L = Σ x·x + Σ 3x  ⇒ ∂L/∂x = 2x + 3
    let loss = x
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&x.mul_scalar(3.0).unwrap().sum_all().unwrap())
        .unwrap();
    let g = loss.backward().unwrap().get(&x).unwrap().to_vec().unwrap();
    assert_eq!(g, vec![5.0, 7.0, 9.0]);
}

#[test]
fn no_grad_records_nothing_and_frozen_leaves_get_no_gradient() {
    let dev = Device::cpu();
    let w = Tensor::param(&[1.0, -1.0], [2], &dev).unwrap();
    let frozen = Tensor::from_slice(&[2.0, 3.0], [2], &dev).unwrap();
    let y = no_grad(|| w.mul(&frozen).unwrap());
    assert!(!y.requires_grad() && y.is_leaf(), "no_grad must not record");
    let loss = w.mul(&frozen).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), vec![2.0, 3.0]);
    assert!(
        grads.get(&frozen).is_none(),
        "a frozen leaf must not receive a gradient"
    );
    assert_eq!(grads.len(), 1, "only the parameter gets a gradient buffer");
    // Recording is back on after no_grad.
    assert!(w.exp().unwrap().requires_grad());
}

#[test]
fn the_tape_prints_ops_in_creation_order() {
    let dev = Device::cpu();
    let a = Tensor::param(&[1.0; 6], [2, 3], &dev).unwrap();
    let b = Tensor::from_slice(&[0.5; 3], [3], &dev).unwrap();
    let loss = a.mul(&b).unwrap().exp().unwrap().sum_all().unwrap();
    let tape = loss.tape();
    assert_eq!(tape.ops(), vec!["mul", "exp", "sum"]);
    let text = tape.to_string();
    assert!(
        text.contains(&format!(
            "mul(#{} param [2, 3], #{} const [3]) -> [2, 3]",
            a.id(),
            b.id()
        )),
        "{text}"
    );
}

#[test]
fn backward_rejects_a_non_scalar_loss() {
    let dev = Device::cpu();
    let a = Tensor::param(&[1.0, 2.0], [2], &dev).unwrap();
    let err = a.exp().unwrap().backward().err().expect("non-scalar loss");
    assert!(err.to_string().contains("one element"), "{err}");
}

#[test]
fn assign_updates_a_parameter_in_place_and_checks_shapes() {
    let dev = Device::cpu();
    let w = Tensor::param(&[1.0, 2.0], [2], &dev).unwrap();
    let id = w.id();
    w.assign(&Tensor::from_slice(&[5.0, 6.0], [2], &dev).unwrap())
        .unwrap();
    assert_eq!((w.id(), w.to_vec().unwrap()), (id, vec![5.0, 6.0]));
    let err = w.assign(&Tensor::zeros([3], &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("assign"), "{err}");
    let derived = w.exp().unwrap();
    assert!(
        derived.assign(&w).is_err(),
        "a computed tensor cannot be assigned"
    );
}
