//! Prints the devices liera can run on: the CPU backend and the GPU adapter wgpu finds (or why none).
//! `.ci/run` runs it so CI's log names the adapter its GPU tests ran on. With `LIERA_REQUIRE_GPU=1` a
//! missing adapter makes it exit non-zero. `cargo run --example devices`.

use liera::Device;

fn main() {
    println!("cpu: {}", Device::cpu().name());
    match Device::gpu() {
        Ok(gpu) => println!(
            "gpu: {}{}",
            gpu.name(),
            if gpu.backend().is_software_gpu() {
                " (a software adapter: correct, slower than the CPU backend)"
            } else {
                ""
            }
        ),
        Err(e) => {
            println!("gpu: none ({e})");
            if std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
        }
    }
}
