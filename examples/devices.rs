//! Prints the devices liera can run on: the CPU backend and the GPU adapter wgpu finds (or why none).
//! `.ci/run` runs it so CI's log names the adapter its GPU tests ran on. With `LIERA_REQUIRE_GPU=1` a
//! missing adapter makes it exit non-zero. It also prints the adapter limits the kernels size themselves by.
//! `cargo run --example devices`.

use liera::backend::gpu::{GpuBackend, GpuOptions};
use liera::backend::Backend;
use liera::Device;

fn main() {
    println!("cpu: {}", Device::cpu().name());
    match GpuBackend::new(GpuOptions::default()) {
        Ok(gpu) => {
            println!(
                "gpu: {}{}",
                gpu.name(),
                if gpu.is_software_gpu() {
                    " (a software adapter: correct, slower than the CPU backend)"
                } else {
                    ""
                }
            );
            let l = gpu.limits();
            println!(
                "     {} storage buffers per stage, {} KiB workgroup memory, {} MiB per binding",
                l.max_storage_buffers_per_shader_stage,
                l.max_compute_workgroup_storage_size / 1024,
                l.max_storage_buffer_binding_size >> 20
            );
        }
        Err(e) => {
            println!("gpu: none ({e})");
            if std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
        }
    }
}
