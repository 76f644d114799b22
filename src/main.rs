//! The `liera` command. Until the main job exists, it runs a small, honest demonstration of the engine:
//! fitting a LieRA update W' = W ⊙ exp(B·A) of a fixed matrix to a target by gradient descent.

use liera::{Device, Result, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let dev = Device::cpu();
    eprintln!("device: {}", dev.name());
    // A frozen base matrix W (8×12) and a target that is a rank-2 multiplicative change of it.
    let (rows, cols, rank) = (8usize, 12usize, 2usize);
    let w_data: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    let w = Tensor::from_slice(&w_data, [rows, cols], &dev)?;
    let u: Vec<f32> = (0..rows * rank)
        .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
        .collect();
    let v: Vec<f32> = (0..rank * cols)
        .map(|i| ((i * 11 % 5) as f32 - 2.0) / 3.0)
        .collect();
    let target = w.mul(
        &Tensor::from_slice(&u, [rows, rank], &dev)?
            .matmul(&Tensor::from_slice(&v, [rank, cols], &dev)?)?
            .exp()?,
    )?;
    // Adapter factors: B = 0 (so W' = W at step 0), A small.
    let b = Tensor::param(&vec![0.0; rows * rank], [rows, rank], &dev)?;
    let a_init: Vec<f32> = (0..rank * cols)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 25.0)
        .collect();
    let a = Tensor::param(&a_init, [rank, cols], &dev)?;
    let lr = 2.0;
    println!(
        "fitting W ⊙ exp(B·A) to a target ({rows}×{cols}, rank {rank}); loss = mean squared error"
    );
    for step in 0..=200 {
        let adapted = w.mul(&b.matmul(&a)?.exp()?)?;
        let loss = adapted.sub(&target)?.pow_scalar(2.0)?.mean_all()?;
        let grads = loss.backward()?;
        if step % 25 == 0 {
            println!("step {step:4}  loss {:.6}", loss.to_scalar()?);
        }
        liera::no_grad(|| -> Result<()> {
            for p in [&a, &b] {
                let g = grads.get(p).expect("both factors influence the loss");
                p.assign(&p.sub(&g.mul_scalar(lr)?)?)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
