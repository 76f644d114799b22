//! Kernel throughput on the GPU backend (and the CPU for comparison): matmul and convolutions in GFLOP/s.
//!
//! `cargo run --release --example gpu_bench` (LIERA_DEVICE is ignored; both backends are measured). Each
//! measurement runs the kernel `reps` times back to back and reads one result back at the end, so the time
//! includes the GPU's queueing but only one synchronisation.

use liera::backend::{Backend, MatmulSpec};
use liera::shape::{Conv2dGeometry, Conv2dParams, Shape};
use liera::{Device, Result};
use std::time::Instant;

fn time<F: FnMut() -> Result<liera::backend::Storage>>(
    b: &dyn Backend,
    reps: usize,
    mut f: F,
) -> Result<f64> {
    b.download(&f()?)?; // warm-up: pipelines, pool
    let t = Instant::now();
    let mut last = None;
    for _ in 0..reps {
        last = Some(f()?);
    }
    if let Some(s) = last {
        b.download(&s)?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn bench(dev: &Device) -> Result<()> {
    let b = dev.backend();
    println!("{}", dev.name());
    for n in [256usize, 512, 1024] {
        let x = b.upload(&vec![0.5; n * n])?;
        let spec = MatmulSpec {
            batch: 1,
            m: n,
            k: n,
            n,
            trans_a: false,
            trans_b: false,
            a_batch_stride: 0,
            b_batch_stride: 0,
        };
        let reps = if n >= 1024 { 3 } else { 10 };
        let s = time(b, reps, || b.matmul(&x, &x, &spec))?;
        println!(
            "  matmul {n}³: {:8.2} ms  {:7.1} GFLOP/s",
            s * 1e3,
            2.0 * (n * n * n) as f64 / s / 1e9
        );
    }
    // Launch overhead: many tiny elementwise kernels, as in the optimizer and the small ops of a step.
    let tiny = b.upload(&[1.0; 256])?;
    let launches = 2000;
    let s = time(b, 1, || {
        let mut y = b.unary(liera::backend::UnaryOp::AddScalar(1.0), &tiny, 256)?;
        for _ in 1..launches {
            y = b.unary(liera::backend::UnaryOp::AddScalar(1.0), &y, 256)?;
        }
        Ok(y)
    })?;
    println!(
        "  launch overhead: {:6.1} µs per tiny kernel",
        s / launches as f64 * 1e6
    );
    // ConvNeXt-atto-like layers at batch 64: a 3×3 dense conv, a 7×7 depthwise conv.
    let cases = [
        (
            "conv 3×3 40→80 16×16",
            [64, 40, 16, 16],
            [80, 40, 3, 3],
            Conv2dParams::default().padding(1),
        ),
        (
            "depthwise 7×7 80 16×16",
            [64, 80, 16, 16],
            [80, 1, 7, 7],
            Conv2dParams::default().padding(3).groups(80),
        ),
    ];
    for (name, xs, ws, p) in cases {
        let g = Conv2dGeometry::new(&Shape::new(xs), &Shape::new(ws), p)?;
        let x = b.upload(&vec![0.5; g.input_shape().numel()])?;
        let w = b.upload(&vec![0.1; g.weight_shape().numel()])?;
        let dy = b.upload(&vec![0.1; g.output_shape().numel()])?;
        let flops = 2.0 * g.macs() as f64;
        let f = time(b, 3, || b.conv2d(&x, &w, None, &g))?;
        let dx = time(b, 3, || b.conv2d_input_grad(&dy, &w, &g))?;
        let dw = time(b, 3, || b.conv2d_weight_grad(&x, &dy, &g))?;
        println!(
            "  {name}: forward {:6.1}, dX {:6.1}, dW {:6.1} GFLOP/s",
            flops / f / 1e9,
            flops / dx / 1e9,
            flops / dw / 1e9
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Device::gpu() {
        Ok(gpu) => bench(&gpu)?,
        Err(e) => println!("no GPU adapter: {e}"),
    }
    bench(&Device::cpu())
}
