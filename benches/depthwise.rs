//! The 7×7 depthwise convolutions of one ConvNeXt-atto training step, one per stage (40, 80, 160 and 320
//! channels), at 3×224×224 with batch 32 (planes of 56, 28, 14 and 7) and at 32×32 with batch 64 (8, 4, 2
//! and 1), on the CPU backend: forward, input gradient and weight gradient, median milliseconds and
//! GFLOP/s (2 flops per multiply-add). `cargo bench --bench depthwise [-- --quick] [224|32] [gpu]` (all
//! rayon threads; `RAYON_NUM_THREADS` sets them). With `gpu` the GPU backend is timed instead: each call is
//! followed by a one-value readback, so a time covers the kernels and one wait for the queue.

use liera::job::bench::{ramp, time_median};
use liera::shape::{Conv2dGeometry, Conv2dParams, Shape};
use liera::Device;

fn main() -> liera::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let wanted = |group: &str| {
        !args.iter().any(|a| a == "224" || a == "32") || args.iter().any(|a| a == group)
    };
    let device = if args.iter().any(|a| a == "gpu") {
        Device::gpu()?
    } else {
        Device::cpu()
    };
    let reps = if quick { 3 } else { 7 };
    println!("{}, median of {reps}", device.name());
    if wanted("224") {
        run(&device, "at 224", if quick { 4 } else { 32 }, 56, reps)?;
    }
    if wanted("32") {
        run(&device, "at 32", if quick { 8 } else { 64 }, 8, reps)?;
    }
    Ok(())
}

/// The four stages' depthwise layers at batch `batch`, the first stage's planes `side`×`side`.
fn run(device: &Device, label: &str, batch: usize, side: usize, reps: usize) -> liera::Result<()> {
    let b = device.backend();
    println!(
        "{:<28} {:>16} {:>16} {:>16}",
        format!("7×7, pad 3, {label}, batch {batch}"),
        "forward",
        "input grad",
        "weight grad"
    );
    let (mut total_s, mut total_flops) = ([0.0f64; 3], 0.0);
    for (c, side) in [
        (40usize, side),
        (80, side / 2),
        (160, side / 4),
        (320, side / 8),
    ] {
        let x_shape = Shape::new([batch, c, side, side]);
        let w_shape = Shape::new([c, 1, 7, 7]);
        let g = Conv2dGeometry::new(
            &x_shape,
            &w_shape,
            Conv2dParams::default().padding(3).groups(c),
        )?;
        let x = b.upload(&ramp(x_shape.numel(), 101))?;
        let w = b.upload(&ramp(w_shape.numel(), 103))?;
        let dy = b.upload(&ramp(g.output_shape().numel(), 107))?;
        let flops = 2.0 * g.macs() as f64;
        // Waits for the queue (a no-op on the CPU, whose kernels finish before they return).
        let finish = || -> liera::Result<()> {
            if b.is_asynchronous() {
                b.download(&b.fill(1, 0.0)?)?;
            }
            Ok(())
        };
        let times = [
            time_median(reps, || b.conv2d(&x, &w, None, &g).and_then(|_| finish()))?,
            time_median(reps, || {
                b.conv2d_input_grad(&dy, &w, &g).and_then(|_| finish())
            })?,
            time_median(reps, || {
                b.conv2d_weight_grad(&x, &dy, &g).and_then(|_| finish())
            })?,
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
