//! The CPU backend's calls for one pair of ConvNeXt 1×1 layers (fc1: C → 4C, fc2: 4C → C) at batch 32:
//! forward, forward with GELU, input gradient, and weight with bias gradient, best of 5 each, in ms and
//! GFLOP/s. `cargo run --release --example pointwise_convs -- [side] [C]`: the defaults 56 and 40 are stage 0
//! of convnext_atto at 3×224×224 (14 and 160 are stage 2). To compare two builds, alternate their binaries
//! and compare each call's time with the same run's forward time (the machine's speed drifts between runs).
use liera::shape::{Conv2dGeometry, Conv2dParams, Shape};
use liera::{Device, Error, Result, Tensor};
use std::time::Instant;

const BATCH: usize = 32;

/// The best of 5 timed calls of `f`, after one untimed call.
fn best(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut b = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed().as_secs_f64());
    }
    Ok(b)
}

/// The positional argument `i` as a positive integer, or `default` when absent.
fn arg(i: usize, default: usize) -> Result<usize> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(s) => s.parse().ok().filter(|&v| v > 0).ok_or_else(|| {
            Error::invalid(
                "pointwise_convs",
                format!("argument {i} must be a positive integer, got {s:?}"),
            )
        }),
    }
}

fn main() -> Result<()> {
    let (side, c) = (arg(1, 56)?, arg(2, 40)?);
    let d = Device::cpu();
    let be = d.backend();
    println!("{}, batch {BATCH}, {side}×{side} planes", d.name());
    for (cin, cout) in [(c, 4 * c), (4 * c, c)] {
        let (x_shape, w_shape) = ([BATCH, cin, side, side], [cout, cin, 1, 1]);
        let fill = |n: usize, v: f32| vec![v; n];
        let x = Tensor::from_slice(&fill(BATCH * cin * side * side, 0.1), x_shape, &d)?;
        let w = Tensor::from_slice(&fill(cout * cin, 0.01), w_shape, &d)?;
        let b = Tensor::from_slice(&fill(cout, 0.0), [cout], &d)?;
        let dy = Tensor::from_slice(
            &fill(BATCH * cout * side * side, 0.1),
            [BATCH, cout, side, side],
            &d,
        )?;
        let g = Conv2dGeometry::new(
            &Shape::new(x_shape),
            &Shape::new(w_shape),
            Conv2dParams::default(),
        )?;
        let gflop = 2.0 * (BATCH * side * side * cin * cout) as f64 / 1e9;
        let (xs, ws, bs, dys) = (x.storage(), w.storage(), b.storage(), dy.storage());
        let fwd = best(|| be.conv2d(&xs, &ws, Some(&bs), &g).map(drop))?;
        let fwd_gelu = best(|| be.conv2d_gelu(&xs, &ws, Some(&bs), &g).map(drop))?;
        let dx = best(|| be.conv2d_input_grad(&dys, &ws, &g).map(drop))?;
        let dw = best(|| be.conv2d_weight_bias_grad(&xs, &dys, &g).map(drop))?;
        println!(
            "{cin:>4} -> {cout:<4} fwd {:6.1} ms ({:3.0} GFLOP/s)  fwd+GELU {:6.1} ms  dX {:6.1} ms ({:3.0})  dW+db {:6.1} ms ({:3.0})",
            fwd * 1e3,
            gflop / fwd,
            fwd_gelu * 1e3,
            dx * 1e3,
            gflop / dx,
            dw * 1e3,
            gflop / dw
        );
    }
    Ok(())
}
