//! `liera bench`: the benchmark suite (matmul, convolution, training steps, the input pipeline) or the
//! training steps of one preset at any input, printed as a table or as JSON.

use super::args::{check_positive, parse_methods};
use clap::Args;
use liera::job::Method;
use liera::nn::ConvNeXtConfig;
use liera::{Device, Error, Result};

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  liera bench                 # the chosen device (a hardware GPU if any, else the CPU)\n  liera bench --device cpu --json\n  liera bench --quick         # a smoke test of the figures"
)]
pub(crate) struct BenchArgs {
    /// Fewer repetitions and smaller sizes (a smoke test of the figures).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Instead of the suite: training steps of this preset (e.g. convnextv2_base), with their time, peak
    /// memory and memory per image.
    #[arg(long)]
    pub(crate) step: Option<String>,
    /// With --step: the methods stepped (full, lora, liera, liera_first_order, loha, liera_lokr, …).
    #[arg(long, default_value = "full,lora,liera")]
    pub(crate) kinds: String,
    /// With --step: images per step.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// With --step: the RGB input side.
    #[arg(long, default_value_t = 224)]
    pub(crate) size: usize,
    /// With --step: checkpoint every block's activations.
    #[arg(long)]
    pub(crate) grad_checkpointing: bool,
    /// With --step: timed steps after the first, which measures memory (at least 1).
    #[arg(long, default_value_t = 2)]
    pub(crate) reps: usize,
    /// Print the results as JSON (for machines) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run_bench(a: BenchArgs, device: &Device) -> Result<()> {
    let results = match &a.step {
        None => liera::job::bench::suite(device, a.quick)?,
        Some(preset) => {
            use liera::job::bench::StepKind;
            let kinds = parse_methods(&a.kinds)?
                .into_iter()
                .map(|m| match m {
                    Method::Full => Ok(StepKind::Full),
                    Method::Adapter(k, d) => Ok(StepKind::Adapter(k, d)),
                    Method::LinearProbe => Err(Error::invalid(
                        "liera",
                        "--kinds: the step benchmark has full and the adapter kinds, not linear",
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            check_positive("--batch", a.batch as f64)?;
            check_positive("--size", a.size as f64)?;
            liera::job::bench::training_steps_at(
                device,
                &ConvNeXtConfig::preset(preset)?,
                preset,
                &kinds,
                a.batch,
                [3, a.size],
                a.reps,
                a.grad_checkpointing,
            )?
        }
    };
    let peak = liera::job::bench::peak_memory_bytes();
    if a.json {
        let doc = serde_json::json!({
            "device": device.name(),
            "threads": rayon::current_num_threads(),
            "cpu_gemm": liera::backend::cpu::gemm_plan(),
            "gemm": device.backend().gemm_form(),
            "peak_rss_bytes": peak,
            "results": results,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("a JSON value serialises")
        );
        return Ok(());
    }
    println!(
        "device: {}  threads: {}",
        device.name(),
        rayon::current_num_threads()
    );
    println!("cpu GEMM: {}", liera::backend::cpu::gemm_plan());
    if device.backend().is_asynchronous() {
        println!("gpu GEMM: {}", device.backend().gemm_form());
    }
    println!(
        "{:<66} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "benchmark", "median ms", "GFLOP/s", "images/s", "peak MiB", "MiB/image"
    );
    let mib = |b: f64| b / (1u64 << 20) as f64;
    for r in &results {
        println!(
            "{:<66} {:>10.3} {:>9} {:>9} {:>9} {:>10}",
            r.name,
            1e3 * r.median_s,
            r.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            r.images_per_s.map_or("-".into(), |i| format!("{i:.1}")),
            r.peak_rss_bytes
                .map_or("-".into(), |p| format!("{:.0}", mib(p as f64))),
            r.step_bytes_per_image
                .map_or("-".into(), |p| format!("{:.1}", mib(p)))
        );
    }
    if let Some(p) = peak {
        println!(
            "peak resident memory: {:.0} MiB",
            p as f64 / (1 << 20) as f64
        );
    }
    for r in &results {
        if let Some(l) = r.launches_per_step {
            println!(
                "{}: per step {} dispatches, {} bind groups, {} submits, {} buffers created, {} readbacks",
                r.name, l.dispatches, l.bind_groups, l.submits, l.buffers_created, l.readbacks
            );
        }
    }
    Ok(())
}
