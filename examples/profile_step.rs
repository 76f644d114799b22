//! Runs ConvNeXt training steps in a loop, for profilers (`perf record`): `cargo run --release
//! --example profile_step -- [steps] [full|lora|liera] [cpu|gpu|gpu-hw] [preset]` (default convnext_atto).
//! `gpu-hw` plans split-K as on a hardware GPU (256 workgroups, not a CPU adapter's 8), so that llvmpipe
//! shows the launches a hardware GPU would record. On the GPU it also prints what one step
//! launches (dispatches, bind groups, submits, buffers created).
use liera::backend::gpu::{GpuBackend, GpuOptions};
use liera::job::bench::{training_step, StepKind};
use liera::nn::ConvNeXtConfig;
use liera::peft::{AdapterKind, DeltaKind};
use liera::Device;
use std::sync::Arc;

fn main() -> liera::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let kind = match args.get(2).map(String::as_str) {
        Some("lora") => StepKind::Adapter(AdapterKind::Lora, DeltaKind::Lora),
        Some("liera") => StepKind::Adapter(AdapterKind::Liera, DeltaKind::Lora),
        _ => StepKind::Full,
    };
    // A private GPU backend, so that LIERA_GPU_PROFILE=1 can print its per-kernel table (all steps, the
    // warm-up included).
    let gpu = match args.get(3).map(String::as_str) {
        Some("gpu") => Some(Arc::new(GpuBackend::new(GpuOptions::default())?)),
        Some("gpu-hw") => Some(Arc::new(GpuBackend::new(GpuOptions {
            min_parallel_workgroups: Some(256),
            ..GpuOptions::default()
        })?)),
        _ => None,
    };
    let device = match &gpu {
        Some(g) => Device::from_backend(g.clone()),
        None => Device::cpu(),
    };
    let preset = args.get(4).map_or("convnext_atto", String::as_str);
    let r = training_step(
        &device,
        &ConvNeXtConfig::preset(preset)?,
        preset,
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
    if let Some(l) = r.launches_per_step {
        println!("per step: {l:?}");
    }
    if let Some(report) = gpu.and_then(|g| g.profile_report()) {
        println!("{report}");
    }
    Ok(())
}
