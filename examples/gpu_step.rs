//! Training-step throughput (forward + backward, no optimizer) of a small ConvNeXt-style network on the GPU
//! backend and on the CPU: stem conv 2×2/2 → LayerNorm2d → 2 blocks (depthwise 7×7 → channels-last
//! LayerNorm → Linear 4× → GELU → Linear → residual) → global average pool → Linear → cross-entropy.
//!
//! Then the real thing: a ConvNeXt-atto training step with AdamW (`liera::job::bench::training_step`, batch 64).
//!
//! `cargo run --release --example gpu_step` (LIERA_GPU_PROFILE=1 adds a per-kernel time table). Reads back
//! only the loss, once per step.

use liera::backend::gpu::{GpuBackend, GpuOptions};
use liera::{Conv2dParams, Device, Result, Tensor};
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 64;
const C: usize = 40;

struct Net {
    params: Vec<Tensor>,
}

fn param(dev: &Device, shape: &[usize], scale: f32, seed: u32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((h >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::param(&v, shape.to_vec(), dev)
}

impl Net {
    fn new(dev: &Device) -> Result<Net> {
        let mut p = vec![
            param(dev, &[C, 1, 2, 2], 0.5, 1)?,
            param(dev, &[C], 0.1, 2)?,
        ];
        for b in 0..2u32 {
            let s = 10 + 10 * b;
            p.push(param(dev, &[C, 1, 7, 7], 0.1, s)?);
            p.push(param(dev, &[C], 0.1, s + 1)?);
            p.push(param(dev, &[4 * C, C], 0.15, s + 2)?);
            p.push(param(dev, &[4 * C], 0.1, s + 3)?);
            p.push(param(dev, &[C, 4 * C], 0.08, s + 4)?);
            p.push(param(dev, &[C], 0.1, s + 5)?);
        }
        p.push(param(dev, &[10, C], 0.15, 99)?);
        Ok(Net { params: p })
    }

    fn loss(&self, x: &Tensor, labels: &[usize]) -> Result<Tensor> {
        let p = &self.params;
        let mut h = x
            .conv2d(&p[0], Some(&p[1]), Conv2dParams::default().stride(2))?
            .layer_norm_channels(None, None, 1e-6)?;
        for b in 0..2 {
            let q = &p[2 + 6 * b..8 + 6 * b];
            let y = h
                .conv2d(
                    &q[0],
                    Some(&q[1]),
                    Conv2dParams::default().padding(3).groups(C),
                )?
                .permute(&[0, 2, 3, 1])?
                .layer_norm_last(None, None, 1e-6)?
                .linear(&q[2], Some(&q[3]))?
                .gelu()?
                .linear(&q[4], Some(&q[5]))?
                .permute(&[0, 3, 1, 2])?;
            h = h.add(&y)?;
        }
        h.global_avg_pool()?
            .linear(&p[14], None)?
            .cross_entropy(labels)
    }
}

fn bench(dev: &Device) -> Result<()> {
    let net = Net::new(dev)?;
    let xs: Vec<f32> = (0..BATCH * 32 * 32)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let x = Tensor::from_slice(&xs, [BATCH, 1, 32, 32], dev)?;
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let step = || -> Result<f32> {
        let loss = net.loss(&x, &labels)?;
        let _grads = loss.backward()?;
        loss.to_scalar()
    };
    step()?; // warm-up: pipelines and the buffer pool
    let steps = 3;
    let t = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = step()?;
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{}: {:7.1} ms per step of {BATCH} images, {:6.1} images/s (loss {loss:.4})",
        dev.name(),
        s * 1e3,
        BATCH as f64 / s
    );
    Ok(())
}

fn atto(dev: &Device) -> Result<()> {
    let r = liera::job::bench::training_step(
        dev,
        &liera::nn::ConvNeXtConfig::atto(),
        "convnext_atto",
        liera::job::bench::StepKind::Full,
        BATCH,
        2,
    )?;
    println!(
        "{}: {}: {:.1} ms, {:.1} images/s",
        dev.name(),
        r.name,
        1e3 * r.median_s,
        r.images_per_s.unwrap_or(0.0)
    );
    Ok(())
}

fn main() -> Result<()> {
    // A private backend so that LIERA_GPU_PROFILE=1 can print its per-kernel time table.
    match GpuBackend::new(GpuOptions::default()) {
        Ok(gpu) => {
            let gpu = Arc::new(gpu);
            let dev = Device::from_backend(gpu.clone());
            bench(&dev)?;
            atto(&dev)?;
            if let Some(report) = gpu.profile_report() {
                println!("{report}");
            }
        }
        Err(e) => println!("no GPU adapter: {e}"),
    }
    bench(&Device::cpu())?;
    atto(&Device::cpu())
}
