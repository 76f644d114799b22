//! The 7×7 depthwise convolutions of one ConvNeXt-atto training step at 3×224×224, batch 32 (the four
//! stages: 40 channels at 56×56, 80 at 28×28, 160 at 14×14, 320 at 7×7), on the CPU backend: forward,
//! input gradient and weight gradient, median milliseconds and GFLOP/s (2 flops per multiply-add).
//! `cargo bench --bench depthwise [-- --quick]` (all rayon threads; `RAYON_NUM_THREADS` sets them).

use liera::job::bench::time_median;
use liera::shape::{Conv2dGeometry, Conv2dParams, Shape};
use liera::Device;

fn ramp(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + seed) % 23) as f32 / 23.0 - 0.5)
        .collect()
}

fn main() -> liera::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batch, reps) = if quick { (4, 3) } else { (32, 7) };
    let device = Device::cpu();
    let b = device.backend();
    println!("{}, batch {batch}, median of {reps}", device.name());
    println!(
        "{:<28} {:>16} {:>16} {:>16}",
        "depthwise 7×7, pad 3", "forward", "input grad", "weight grad"
    );
    let (mut total_s, mut total_flops) = ([0.0f64; 3], 0.0);
    for (c, side) in [(40usize, 56usize), (80, 28), (160, 14), (320, 7)] {
        let x_shape = Shape::new([batch, c, side, side]);
        let w_shape = Shape::new([c, 1, 7, 7]);
        let g = Conv2dGeometry::new(&x_shape, &w_shape, Conv2dParams::default().padding(3).groups(c))?;
        let x = b.upload(&ramp(x_shape.numel(), 1))?;
        let w = b.upload(&ramp(w_shape.numel(), 2))?;
        let dy = b.upload(&ramp(g.output_shape().numel(), 3))?;
        let flops = 2.0 * g.macs() as f64;
        let times = [
            time_median(reps, || b.conv2d(&x, &w, None, &g).map(drop))?,
            time_median(reps, || b.conv2d_input_grad(&dy, &w, &g).map(drop))?,
            time_median(reps, || b.conv2d_weight_grad(&x, &dy, &g).map(drop))?,
        ];
        let cell = |s: f64| format!("{:7.2} ms {:5.1}", 1e3 * s, flops / s / 1e9);
        println!(
            "{:<28} {:>16} {:>16} {:>16}",
            format!("{c} channels at {side}×{side}"),
            cell(times[0]),
            cell(times[1]),
            cell(times[2])
        );
        for (t, s) in total_s.iter_mut().zip(times) {
            *t += s;
        }
        total_flops += flops;
    }
    let cell = |s: f64| format!("{:7.2} ms {:5.1}", 1e3 * s, total_flops / s / 1e9);
    println!(
        "{:<28} {:>16} {:>16} {:>16}",
        "the four stages",
        cell(total_s[0]),
        cell(total_s[1]),
        cell(total_s[2])
    );
    Ok(())
}
