//! Adapts a ConvNeXt's depthwise (conv_dw) and pointwise (mlp.fc1, mlp.fc2) layers with LieRA
//! (W' = W ⊙ exp((α/r)·B·A)), trains the new classifier head in full, prints the trainable-parameter report,
//! and runs a few AdamW steps on random data, printing the loss. Then merges the adapters and checks the
//! merged network computes the same logits.
//!
//! `cargo run --release --example lie_adapt [preset]` (preset: micro (default), atto, femto, ..., or
//! convnextv2_atto; images are 1×32×32, 10 classes).

use liera::nn::Classifier;
use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::optim::{AdamW, Optimizer};
use liera::peft::{self, AdapterKind, PeftConfig};
use liera::{no_grad, Device, Result, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let dev = Device::cpu();
    let preset = std::env::args().nth(1).unwrap_or_else(|| "micro".into());
    let cfg = ConvNeXtConfig::preset(&preset)?
        .with_in_chans(1)
        .with_classes(10)
        .with_seed(1);
    let mut model = ConvNeXt::new(cfg, &dev)?;
    println!(
        "{preset}: {} base parameters on {}",
        model.num_parameters(),
        dev.name()
    );

    let peft_cfg = PeftConfig::new(AdapterKind::Liera, 4, 8.0, "conv_dw,mlp.fc1,mlp.fc2")
        .with_modules_to_save("head.fc")
        .with_seed(7);
    let report = peft::apply(&mut model, &peft_cfg)?;
    println!("{report}\n");

    // Random images and labels (a fixed batch, so the loss must fall as the adapters fit it).
    let (n, hw) = (32usize, 32usize);
    let mut state = 0x1234_5678u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let images: Vec<f32> = (0..n * hw * hw)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let labels: Vec<usize> = (0..n).map(|_| (next() % 10) as usize).collect();
    let x = Tensor::from_slice(&images, [n, 1, hw, hw], &dev)?;

    let params = model.trainable_parameters();
    let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.01)?;
    for step in 1..=15 {
        let t = std::time::Instant::now();
        let loss = model.forward(&x, true)?.cross_entropy(&labels)?;
        let grads = loss.backward()?;
        opt.step(&params, &grads, 3e-3)?;
        println!(
            "step {step:2}  loss {:.4}  ({:.0} ms)",
            loss.to_scalar()?,
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    let adapted = no_grad(|| model.forward(&x, false))?.to_vec()?;
    let merged_layers = peft::merge(&mut model)?;
    let merged = no_grad(|| model.forward(&x, false))?.to_vec()?;
    let max_diff = adapted
        .iter()
        .zip(&merged)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("merged {merged_layers} layers; max |logit difference| after merge: {max_diff:e}");
    Ok(())
}
