//! The tape of a tiny expression and the gradients the backward walk computes from it
//! (docs/GUIDE.md §1 and §2).
//!
//! L = Σ_ij k_i · exp(a_ij · b_j) + ½ Σ_ij a_ij²   with a (2, 3) and b (3) trainable, k (2, 1) a constant.
//!
//! b and k are broadcast against a, and a is used by two ops, so the printout shows both reasons a backward
//! pass adds things up: a broadcast input's gradient is summed over the broadcast axis, and a tensor used
//! twice receives the sum of both contributions:
//!
//!   ∂L/∂a_ij = k_i · b_j · exp(a_ij · b_j) + a_ij
//!   ∂L/∂b_j  = Σ_i k_i · a_ij · exp(a_ij · b_j)
//!
//! `cargo run --release --example tape`

use liera::{no_grad, Device, Result, Tensor};

fn main() -> Result<()> {
    let dev = Device::cpu();
    let a_val = [0.5f32, -1.0, 0.25, 1.5, 0.0, -0.75];
    let b_val = [0.8f32, -0.4, 1.2];
    let k_val = [2.0f32, -1.0];
    let a = Tensor::param(&a_val, [2, 3], &dev)?;
    let b = Tensor::param(&b_val, [3], &dev)?;
    let k = Tensor::from_slice(&k_val, [2, 1], &dev)?; // a constant: never on the tape as a node

    let e = a.mul(&b)?.exp()?; // (2, 3) · (3) broadcasts to (2, 3)
    let loss = e
        .mul(&k)? // (2, 3) · (2, 1) broadcasts to (2, 3)
        .sum_all()?
        .add(&a.mul(&a)?.mul_scalar(0.5)?.sum_all()?)?;

    println!(
        "tensors: a = #{} (param), b = #{} (param), k = #{} (const)\n",
        a.id(),
        b.id(),
        k.id()
    );
    println!("the tape of L, in creation order (ids only grow, so this is a topological order):");
    print!("{}", loss.tape());
    println!("\nbackward visits it in reverse: {:?}\n", {
        let mut ops = loss.tape().ops();
        ops.reverse();
        ops
    });

    let grads = loss.backward()?;
    let da = grads.get(&a).expect("a is trainable").to_vec()?;
    let db = grads.get(&b).expect("b is trainable").to_vec()?;
    println!("L = {:.6}", loss.to_scalar()?);
    println!(
        "Grads holds {} gradients: the two leaves; k got none",
        grads.len()
    );
    assert!(grads.get(&k).is_none());

    // The same gradients by hand, in f64.
    let mut da_hand = [0f64; 6];
    let mut db_hand = [0f64; 3];
    for i in 0..2 {
        for j in 0..3 {
            let (aij, bj, ki) = (a_val[i * 3 + j] as f64, b_val[j] as f64, k_val[i] as f64);
            let ex = (aij * bj).exp();
            da_hand[i * 3 + j] = ki * bj * ex + aij; // two uses of a: the two terms add
            db_hand[j] += ki * aij * ex; // b was broadcast over i: sum over i
        }
    }
    println!("\n{:>10} {:>12} {:>12}", "", "tape", "by hand");
    let mut max_err = 0f64;
    for (idx, (t, h)) in da.iter().zip(&da_hand).enumerate() {
        println!(
            "{:>10} {:>12.6} {:>12.6}",
            format!("∂a[{},{}]", idx / 3, idx % 3),
            t,
            h
        );
        max_err = max_err.max((*t as f64 - h).abs());
    }
    for (j, (t, h)) in db.iter().zip(&db_hand).enumerate() {
        println!("{:>10} {:>12.6} {:>12.6}", format!("∂b[{j}]"), t, h);
        max_err = max_err.max((*t as f64 - h).abs());
    }
    println!("\nmax |tape − hand| = {max_err:.2e} (f32 rounding)");
    assert!(max_err < 1e-5);

    // Under no_grad nothing is recorded: the result is a constant with an empty tape.
    let evaluated = no_grad(|| a.mul(&b)?.exp()?.sum_all())?;
    println!(
        "under no_grad the same forward records {} ops (requires_grad = {})",
        evaluated.tape().len(),
        evaluated.requires_grad()
    );
    Ok(())
}
