//! Burn's wgpu matmul of two 1024×1024 f32 matrices on the adapter wgpu picks by default, in GFLOP/s:
//! three products first (Burn autotunes its kernels on them, untimed), then four rounds of three products
//! back to back and one readback, as liera's `gpu_bench` times its own (`matmul 1024³`). Alternate the two
//! programs round by round to compare them: `cargo run --release` here (Burn takes about ten minutes to
//! build on 2 cores), then `cargo run --release --example gpu_bench` in the repository.
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

fn main() {
    let device = WgpuDevice::default();
    let n = 1024usize;
    let a = Tensor::<Wgpu, 2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<Wgpu, 2>::random([n, n], Distribution::Default, &device);
    let t = Instant::now();
    for _ in 0..3 {
        let _ = a.clone().matmul(b.clone()).into_data();
    }
    println!("warm-up and autotune: {:.1} s", t.elapsed().as_secs_f64());
    for _ in 0..4 {
        let t = Instant::now();
        let mut last = None;
        for _ in 0..3 {
            last = Some(a.clone().matmul(b.clone()));
        }
        let _ = last.map(|c| c.into_data());
        let s = t.elapsed().as_secs_f64() / 3.0;
        println!(
            "burn matmul {n}³: {:.2} GFLOP/s",
            2.0 * (n as f64).powi(3) / s / 1e9
        );
    }
}
