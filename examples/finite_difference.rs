//! A hand-written finite-difference check of conv2d's gradients against the tape (docs/GUIDE.md §4 and §8).
//!
//! The convolution has every complication at once: stride 2, padding 1, dilation 2, a non-square 3×2
//! kernel and 2 groups. The loss is L = Σ y ⊙ R with a fixed random R. The reference is the definition of
//! the convolution written as plain f64 loops; its central differences (L(θ + h) − L(θ − h)) / 2h are
//! compared with the tape's ∂L/∂x, ∂L/∂w and ∂L/∂b. L is linear in each of x, w and b separately, so the
//! central difference has no truncation error at all: what remains is f32 rounding in the engine.
//!
//! `cargo run --release --example finite_difference`

use liera::{Conv2dParams, Device, Result, Tensor};

/// Shapes of the problem: x (N, C, H, W), w (O, C/G, KH, KW).
const N: usize = 2;
const C: usize = 4;
const H: usize = 7;
const W: usize = 6;
const O: usize = 6;
const GROUPS: usize = 2;
const KH: usize = 3;
const KW: usize = 2;
const STRIDE: usize = 2;
const PAD: usize = 1;
const DIL: usize = 2;

/// Output size: (in + 2·pad − dil·(k − 1) − 1) / stride + 1.
fn out_size(input: usize, k: usize) -> usize {
    (input + 2 * PAD - DIL * (k - 1) - 1) / STRIDE + 1
}

/// y[n, o, i, j] = b[o] + Σ_{c', p, q} w[o, c', p, q] · x[n, g·C/G + c', i·s + p·d − pad, j·s + q·d − pad].
fn reference_conv(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (ho, wo) = (out_size(H, KH), out_size(W, KW));
    let (cg, og) = (C / GROUPS, O / GROUPS);
    let mut y = vec![0.0; N * O * ho * wo];
    for n in 0..N {
        for o in 0..O {
            let g = o / og;
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = b[o];
                    for c in 0..cg {
                        for p in 0..KH {
                            for q in 0..KW {
                                let ih = (i * STRIDE + p * DIL) as isize - PAD as isize;
                                let iw = (j * STRIDE + q * DIL) as isize - PAD as isize;
                                if ih < 0 || iw < 0 || ih >= H as isize || iw >= W as isize {
                                    continue; // padding reads zero
                                }
                                let xi = ((n * C + g * cg + c) * H + ih as usize) * W + iw as usize;
                                acc += w[((o * cg + c) * KH + p) * KW + q] * x[xi];
                            }
                        }
                    }
                    y[((n * O + o) * ho + i) * wo + j] = acc;
                }
            }
        }
    }
    y
}

/// Deterministic values in [−1, 1), rounded to f32 so the engine and the reference see the same numbers.
fn values(seed: &mut u64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32 as f64
        })
        .collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn main() -> Result<()> {
    let dev = Device::cpu();
    let mut seed = 2025u64;
    let mut inputs = [
        values(&mut seed, N * C * H * W),
        values(&mut seed, O * (C / GROUPS) * KH * KW),
        values(&mut seed, O),
    ];
    let (ho, wo) = (out_size(H, KH), out_size(W, KW));
    let r = values(&mut seed, N * O * ho * wo);
    println!(
        "x [{N}, {C}, {H}, {W}]  w [{O}, {}, {KH}, {KW}]  groups {GROUPS}  stride {STRIDE}  padding {PAD}  \
         dilation {DIL}  →  y [{N}, {O}, {ho}, {wo}]",
        C / GROUPS
    );

    // The engine: forward, then L = Σ y ⊙ R and one backward walk.
    let x = Tensor::param(&to_f32(&inputs[0]), [N, C, H, W], &dev)?;
    let w = Tensor::param(&to_f32(&inputs[1]), [O, C / GROUPS, KH, KW], &dev)?;
    let b = Tensor::param(&to_f32(&inputs[2]), [O], &dev)?;
    let params = Conv2dParams::default()
        .stride(STRIDE)
        .padding(PAD)
        .dilation(DIL)
        .groups(GROUPS);
    let y = x.conv2d(&w, Some(&b), params)?;
    assert_eq!(y.dims(), [N, O, ho, wo]);
    let r_t = Tensor::from_slice(&to_f32(&r), y.shape().clone(), &dev)?;
    let grads = y.mul(&r_t)?.sum_all()?.backward()?;

    let y_ref = reference_conv(&inputs[0], &inputs[1], &inputs[2]);
    let fwd_err = y
        .to_vec()?
        .iter()
        .zip(&y_ref)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    println!("forward: max |engine − reference| = {fwd_err:.2e}\n");

    let loss_ref = |vals: &[Vec<f64>; 3]| -> f64 {
        reference_conv(&vals[0], &vals[1], &vals[2])
            .iter()
            .zip(&r)
            .map(|(y, r)| y * r)
            .sum()
    };
    let h = 1e-3;
    let mut worst = 0f64;
    println!(
        "{:<6} {:>8} {:>14} {:>14}",
        "grad", "entries", "max |error|", "max |grad|"
    );
    for (k, (name, t)) in [("∂L/∂x", &x), ("∂L/∂w", &w), ("∂L/∂b", &b)]
        .into_iter()
        .enumerate()
    {
        let tape = grads.get(t).expect("trainable").to_vec()?;
        let (mut max_err, mut max_abs) = (0f64, 0f64);
        for (i, g_tape) in tape.iter().enumerate() {
            let v0 = inputs[k][i];
            inputs[k][i] = v0 + h;
            let up = loss_ref(&inputs);
            inputs[k][i] = v0 - h;
            let down = loss_ref(&inputs);
            inputs[k][i] = v0;
            let numeric = (up - down) / (2.0 * h);
            max_err = max_err.max((*g_tape as f64 - numeric).abs());
            max_abs = max_abs.max(numeric.abs());
        }
        println!(
            "{name:<6} {:>8} {max_err:>14.2e} {max_abs:>14.3}",
            tape.len()
        );
        worst = worst.max(max_err / max_abs.max(1.0));
    }
    // Some input pixels are read by no tap (stride 2 skips them): their gradient must be exactly zero.
    let dx = grads.get(&x).expect("trainable").to_vec()?;
    println!(
        "\n{} of {} input pixels are read by no tap and get ∂L/∂x = 0 exactly",
        dx.iter().filter(|v| **v == 0.0).count(),
        dx.len()
    );
    println!("max relative error {worst:.2e} (f32 rounding; tests/grad_conv.rs checks random geometries)");
    assert!(
        worst < 1e-4,
        "conv2d gradient disagrees with finite differences"
    );
    Ok(())
}
