//! Prints the devices liera can run on: the CPU backend and the GPU adapter wgpu finds (or why none).
//! `.ci/run` runs it so CI's log names the adapter its GPU tests ran on. With `LIERA_REQUIRE_GPU=1` a
//! missing adapter makes it exit non-zero. It also prints the adapter limits the kernels size themselves by,
//! and which forms of the GEMM and of the depthwise kernels run.
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
            let info = gpu.adapter_info();
            println!(
                "     subgroups: {} (sizes {}..={}); the GEMM {}",
                gpu.adapter_features().contains(wgpu::Features::SUBGROUP),
                info.subgroup_min_size,
                info.subgroup_max_size,
                if gpu.gemm_uses_subgroups() {
                    "shares A by subgroup broadcasts (gemm_subgroup.wgsl)"
                } else {
                    "reads A from workgroup memory (gemm_workgroup.wgsl)"
                }
            );
            // f16 kernels are not written yet; whether the adapter could run them is worth knowing.
            println!(
                "     shader-f16: {}",
                gpu.adapter_features().contains(wgpu::Features::SHADER_F16)
            );
            println!(
                "     GEMM loads: {}",
                if gpu.gemm_uses_quads() {
                    "interior tiles by quads, vec4 where aligned"
                } else {
                    "value by value"
                }
            );
            println!(
                "     GEMM tiles: {0}×{0}{1} (LIERA_GPU_GEMM_TILE; 128×128 fits this adapter: {2})",
                gpu.gemm_tile(),
                if gpu.gemm_tile() > 64 {
                    " on products with enough such tiles to fill the device, else 64×64"
                } else {
                    ""
                },
                liera::backend::gpu::gemm_tile_fits(128, gpu.limits())
            );
            println!(
                "     depthwise 7×7: {}",
                if gpu.depthwise_uses_tiles() {
                    "tiles and halos staged in workgroup memory (dw_*_tiled)"
                } else {
                    "sliding windows over global memory (dw_*_rows)"
                }
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
