//! Matrix-product benchmark: liera's CPU GEMM against the `matrixmultiply` crate (a well-tuned pure-Rust
//! sgemm) in the same run, on the square sizes of SPEC §6 and the skinny shapes a ConvNeXt step uses.
//! Prints the median GFLOP/s of each over several repetitions. Run with `cargo bench --bench matmul`.

use liera::backend::MatmulSpec;
use liera::{Device, Tensor};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median seconds of `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let dev = Device::cpu();
    println!("device: {}", dev.name());
    println!(
        "{:<28} {:>12} {:>16} {:>8}",
        "shape (m×k×n)", "liera GF/s", "matrixmult GF/s", "ratio"
    );
    // (m, k, n, label): square sizes, then a ConvNeXt-atto step's pointwise convs as matmuls at batch 64
    // (rows = 64·H·W positions, k = C, n = 4C) and the head.
    let shapes: [(usize, usize, usize, &str); 6] = [
        (1024, 1024, 1024, "square"),
        (2048, 2048, 2048, "square"),
        (4096, 40, 160, "atto stage 0 fc1"),
        (4096, 160, 40, "atto stage 0 fc2"),
        (256, 320, 1280, "atto stage 2 fc1"),
        (64, 320, 10, "head"),
    ];
    for (m, k, n, label) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 13.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 11.0)
            .collect();
        let ta = Tensor::from_slice(&a, [m, k], &dev).unwrap();
        let tb = Tensor::from_slice(&b, [k, n], &dev).unwrap();
        let flops = 2.0 * (m * k * n) as f64;
        let reps = if flops > 1e10 {
            5
        } else if flops > 1e9 {
            11
        } else {
            31
        };
        let _ = MatmulSpec {
            batch: 1,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
            a_batch_stride: 0,
            b_batch_stride: 0,
        };
        let t_liera = time(reps, || {
            std::hint::black_box(ta.matmul(&tb).unwrap());
        });
        let mut c = vec![0.0f32; m * n];
        let t_peer = time(reps, || unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
            std::hint::black_box(&c);
        });
        let (g_liera, g_peer) = (flops / t_liera / 1e9, flops / t_peer / 1e9);
        println!(
            "{:<28} {:>12.1} {:>16.1} {:>8.2}",
            format!("{m}×{k}×{n} {label}"),
            g_liera,
            g_peer,
            g_liera / g_peer
        );
    }
}
