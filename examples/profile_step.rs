//! Runs ConvNeXt-atto training steps in a loop, for profilers (`perf record`): `cargo run --release
//! --example profile_step -- [steps] [full|lora|liera]`.
use liera::job::bench::{training_step, StepKind};
use liera::nn::ConvNeXtConfig;
use liera::peft::{AdapterKind, DeltaKind};
use liera::Device;

fn main() -> liera::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let kind = match args.get(2).map(String::as_str) {
        Some("lora") => StepKind::Adapter(AdapterKind::Lora, DeltaKind::Lora),
        Some("liera") => StepKind::Adapter(AdapterKind::Liera, DeltaKind::Lora),
        _ => StepKind::Full,
    };
    let r = training_step(
        &Device::cpu(),
        &ConvNeXtConfig::atto(),
        "convnext_atto",
        kind,
        64,
        reps,
    )?;
    println!(
        "{}: {:.1} ms, {:.0} images/s",
        r.name,
        1e3 * r.median_s,
        r.images_per_s.unwrap_or(0.0)
    );
    Ok(())
}
