//! One kernel with zero entries, the same rank-1 update ΔW = s·B·A, and what LieRA and LoRA make of it
//! (docs/GUIDE.md §9–§12).
//!
//! The kernel (2, 1, 3, 3) holds two classic 3×3 filters at a pretrained-like scale: a Laplacian stencil
//! (zero corners) and a Sobel edge detector (zero middle column). Both adapters get identical factors; then
//!
//! - LieRA, W' = W ⊙ exp(ΔW): zeros stay zero, each entry changes by w·(e^δ − 1), in proportion to |w|, and no
//!   sign flips;
//! - LieRA first-order, W' = W + W ⊙ ΔW: zeros stay zero, change w·δ;
//! - LoRA, W' = W + ΔW: the same δ is added to every entry whatever its size: zeros move and small entries
//!   change sign.
//!
//! `cargo run --release --example lie_vs_lora`

use liera::nn::InitRng;
use liera::peft::{Adapter, AdapterKind};
use liera::{no_grad, Device, Result, Shape, Tensor};

const LAPLACIAN: [f32; 9] = [0.0, 0.1, 0.0, 0.1, -0.4, 0.1, 0.0, 0.1, 0.0];
const SOBEL: [f32; 9] = [0.1, 0.0, -0.1, 0.2, 0.0, -0.2, 0.1, 0.0, -0.1];

/// The (rows, r) factor B and the (r, cols) factor A every adapter gets: rank 1, s = α/r = 1.
const B: [f32; 2] = [0.8, -0.6];
const A: [f32; 9] = [0.3, -0.2, 0.4, -0.5, 0.6, 0.1, 0.2, -0.4, 0.5];

fn print_kernels(title: &str, values: &[f32]) {
    println!("{title}");
    for row in 0..3 {
        let line = |k: usize| {
            (0..3)
                .map(|col| format!("{:>8.4}", values[k * 9 + row * 3 + col]))
                .collect::<String>()
        };
        println!("  {}      {}", line(0), line(1));
    }
}

fn main() -> Result<()> {
    let dev = Device::cpu();
    let shape = Shape::new([2, 1, 3, 3]); // matrix view (rows, cols) = (2, 9)
    let base: Vec<f32> = LAPLACIAN.iter().chain(&SOBEL).copied().collect();
    let w = Tensor::from_slice(&base, shape.clone(), &dev)?; // a frozen base kernel
    println!(
        "matrix view {:?}, rank 1, ΔW = s·B·A with B = {B:?}",
        liera::peft::matrix_view(&shape)
    );
    print_kernels("\nW (Laplacian | Sobel)", &base);

    let mut results = Vec::new();
    for kind in [
        AdapterKind::Liera,
        AdapterKind::LieraFirstOrder,
        AdapterKind::Lora,
    ] {
        let adapter = Adapter::new(kind, "demo", &shape, 1, 1.0, &mut InitRng::new(0), &dev)?;
        // A fresh adapter has B = 0 (so W' = W); give it the shared "trained" factors.
        adapter
            .b()
            .tensor()
            .assign(&Tensor::from_slice(&B, [2, 1], &dev)?)?;
        adapter
            .a()
            .tensor()
            .assign(&Tensor::from_slice(&A, [1, 9], &dev)?)?;
        if results.is_empty() {
            let delta = no_grad(|| adapter.delta(&shape))?.to_vec()?;
            print_kernels("\nΔW (the same for every kind)", &delta);
        }
        let adapted = no_grad(|| adapter.adapt(&w))?.to_vec()?;
        results.push((kind, adapted));
    }

    for (kind, adapted) in &results {
        let title = match kind {
            AdapterKind::Liera => "LieRA            W' = W ⊙ exp(ΔW)",
            AdapterKind::LieraFirstOrder => "LieRA 1st order  W' = W + W ⊙ ΔW",
            AdapterKind::Lora => "LoRA             W' = W + ΔW",
        };
        print_kernels(&format!("\n{title}"), adapted);
        let zeros_moved = base
            .iter()
            .zip(adapted)
            .filter(|(w, a)| **w == 0.0 && **a != 0.0)
            .count();
        let sign_flips = base
            .iter()
            .zip(adapted)
            .filter(|(w, a)| **w * **a < 0.0)
            .count();
        let zeros = base.iter().filter(|w| **w == 0.0).count();
        println!("  zero entries that moved: {zeros_moved} of {zeros}    sign flips: {sign_flips}");
        if *kind == AdapterKind::Liera {
            // W'/W = exp(ΔW) on every nonzero entry: the relative change does not depend on |w|.
            let (taps, ratios): (Vec<usize>, Vec<f32>) = base
                .iter()
                .zip(adapted)
                .enumerate()
                .filter(|(_, (w, _))| **w != 0.0)
                .map(|(i, (w, a))| (i, a / w))
                .take(4)
                .unzip();
            println!("  W'/W at taps {taps:?} = {ratios:.4?}  (= exp(ΔW) there, whatever |w|)");
            assert_eq!(zeros_moved, 0);
            assert_eq!(sign_flips, 0);
        }
    }

    // The change of the centre tap (−0.4) and of a small edge tap (0.1) of the Laplacian.
    println!("\nchange of the Laplacian's centre tap (w = −0.4) and its top tap (w = 0.1):");
    for (kind, adapted) in &results {
        println!(
            "  {:<18} {:>+8.4} {:>+8.4}",
            kind.name(),
            adapted[4] - base[4],
            adapted[1] - base[1]
        );
    }
    println!("LieRA's changes scale with |w|; LoRA's are ΔW itself, blind to the kernel.");
    Ok(())
}
