//! Convolution and training-step benchmarks: the conv layers of ConvNeXt-atto (forward, input
//! gradient, weight gradient) and the whole atto training step with AdamW at batch 64 on 1×32×32 images,
//! trained in full and with LoRA / LieRA / LieRA first-order adapters at rank 8. Runs on the CPU and, when
//! a GPU adapter exists, on it too. Run with `cargo bench --bench training`.

use liera::job::bench::{conv_layers, matmul, training_steps, BenchResult, StepKind};
use liera::nn::ConvNeXtConfig;
use liera::peft::{AdapterKind, DeltaKind};
use liera::Device;

fn print(device: &Device, results: &[BenchResult]) {
    println!("\ndevice: {}", device.name());
    println!(
        "{:<62} {:>10} {:>9} {:>9}",
        "benchmark", "median ms", "GFLOP/s", "images/s"
    );
    for r in results {
        println!(
            "{:<62} {:>10.2} {:>9} {:>9}",
            r.name,
            1e3 * r.median_s,
            r.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            r.images_per_s.map_or("-".into(), |i| format!("{i:.0}"))
        );
    }
}

fn run(device: &Device, reps: usize) -> liera::Result<()> {
    let mut results = matmul(device, &[(1024, 1024, 1024)], reps)?;
    results.extend(conv_layers(device, 64, reps)?);
    let atto = ConvNeXtConfig::atto();
    let kinds = [
        StepKind::Full,
        StepKind::Adapter(AdapterKind::Lora, DeltaKind::Lora),
        StepKind::Adapter(AdapterKind::Liera, DeltaKind::Lora),
        StepKind::Adapter(AdapterKind::LieraFirstOrder, DeltaKind::Lora),
    ];
    // Interleaved, so the LieRA/LoRA ratio is not biased by load changing between them.
    let steps = training_steps(device, &atto, "convnext_atto", &kinds, 64, 2 * reps)?;
    let ratio = steps[2].median_s / steps[1].median_s;
    results.extend(steps);
    print(device, &results);
    println!("LieRA (exact) step / LoRA step at rank 8: {ratio:.3}");
    Ok(())
}

fn main() {
    if let Err(e) = run(&Device::cpu(), 11) {
        eprintln!("cpu bench failed: {e}");
        std::process::exit(1);
    }
    match Device::gpu() {
        Ok(gpu) => {
            if let Err(e) = run(&gpu, 3) {
                eprintln!("gpu bench failed: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => println!("\nno GPU adapter ({e}); GPU benches skipped"),
    }
}
