//! The model layer on the GPU: a small ConvNeXt (v1 and v2) with LoRA / LieRA / LieRA first-order adapters
//! computes the same logits, loss and adapter/head gradients on the GPU as on the CPU, and merging on the
//! GPU gives the adapted forward. Without an adapter the test says it skipped (unless LIERA_REQUIRE_GPU=1).
//!
//! Tolerance: relative 2·10⁻³ of the largest magnitude per tensor. Both backends compute in f32 but sum in
//! different orders through ~20 layers (convolutions, layer norms, GELU), so differences of ~10⁻⁵ relative
//! per layer compound; any wrong kernel or rule differs at O(1).

mod common;

use common::gpu_device;
use liera::nn::Classifier;
use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::peft::{self, AdapterKind, PeftConfig};
use liera::{Device, Tensor};

fn close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let scale = cpu.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= 2e-3 * scale,
            "{what}: element {i}: gpu {g} vs cpu {c} (scale {scale})"
        );
    }
}

/// A seeded tiny ConvNeXt with adapters whose B factors are made nonzero (so the adapter path matters).
fn adapted_model(v2: bool, kind: AdapterKind, dev: &Device) -> ConvNeXt {
    let mut cfg = ConvNeXtConfig::micro().with_seed(11);
    cfg.dims = vec![8, 16];
    cfg.depths = vec![1, 1];
    let cfg = if v2 { cfg.v2() } else { cfg };
    let mut model = ConvNeXt::new(cfg, dev).unwrap();
    let peft_cfg = PeftConfig::new(kind, 2, 4.0, "conv_dw,mlp.fc1,mlp.fc2")
        .with_modules_to_save("head.fc")
        .with_seed(5);
    peft::apply(&mut model, &peft_cfg).unwrap();
    for (name, t) in model.trainable_parameters() {
        if name.ends_with("lora_B.weight") {
            let vals: Vec<f32> = (0..t.numel())
                .map(|i| 0.05 * ((i * 7 % 11) as f32 - 5.0) / 5.0)
                .collect();
            t.assign(&Tensor::from_slice(&vals, t.shape().clone(), dev).unwrap())
                .unwrap();
        }
    }
    model
}

#[test]
fn adapted_convnext_matches_the_cpu_forward_backward_and_merge() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::cpu();
    let (n, hw) = (4usize, 16usize);
    let images: Vec<f32> = (0..n * hw * hw)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    for v2 in [false, true] {
        for kind in [
            AdapterKind::Lora,
            AdapterKind::Liera,
            AdapterKind::LieraFirstOrder,
        ] {
            let what = format!("{} {}", if v2 { "v2" } else { "v1" }, kind.name());
            let mut results = Vec::new();
            for dev in [&cpu, &gpu] {
                let mut model = adapted_model(v2, kind, dev);
                let x = Tensor::from_slice(&images, [n, 1, hw, hw], dev).unwrap();
                let logits = model.forward(&x, false).unwrap();
                let loss = logits.cross_entropy(&labels).unwrap();
                let grads = loss.backward().unwrap();
                let mut grad_values: Vec<(String, Vec<f32>)> = model
                    .trainable_parameters()
                    .into_iter()
                    .map(|(name, p)| {
                        (
                            name,
                            grads
                                .get(&p)
                                .expect("every trainable parameter gets a gradient")
                                .to_vec()
                                .unwrap(),
                        )
                    })
                    .collect();
                grad_values.sort_by(|a, b| a.0.cmp(&b.0));
                let adapted = logits.to_vec().unwrap();
                peft::merge(&mut model).unwrap();
                let merged = liera::no_grad(|| model.forward(&x, false).unwrap().to_vec().unwrap());
                close(
                    &format!("{what} merged vs adapted on {}", dev.name()),
                    &merged,
                    &adapted,
                );
                results.push((adapted, loss.to_scalar().unwrap(), grad_values));
            }
            let (gpu_r, cpu_r) = (&results[1], &results[0]);
            close(&format!("{what} logits"), &gpu_r.0, &cpu_r.0);
            close(&format!("{what} loss"), &[gpu_r.1], &[cpu_r.1]);
            assert_eq!(gpu_r.2.len(), cpu_r.2.len());
            for ((name, g), (_, c)) in gpu_r.2.iter().zip(&cpu_r.2) {
                close(&format!("{what} gradient of {name}"), g, c);
            }
        }
    }
}

/// AdamW on the GPU (the composed default of `Backend::adamw_update`, or a fused GPU kernel) takes the same
/// steps as the CPU's fused kernel.
#[test]
fn adamw_steps_match_the_cpu() {
    use liera::optim::{AdamW, Optimizer};
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::cpu();
    let n = 1000;
    let init: Vec<f32> = (0..n)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
        .collect();
    let mut finals = Vec::new();
    for dev in [&cpu, &gpu] {
        let p = Tensor::param(&init, [n], dev).unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let mut opt = AdamW::new(0.9, 0.99, 1e-8, 0.1).unwrap();
        for step in 0..4 {
            // L = Σ (p − c)²·k: gradients that change with p, different per element.
            let target = Tensor::from_slice(&vec![0.3 * step as f32; n], [n], dev).unwrap();
            let loss = p
                .sub(&target)
                .unwrap()
                .pow_scalar(2.0)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&params, &grads, 0.05).unwrap();
        }
        finals.push(p.to_vec().unwrap());
    }
    close("AdamW parameters after 4 steps", &finals[1], &finals[0]);
}

/// The launch budget of a training step: convnext_atto's full fine-tuning step at batch 64 records at most
/// 300 dispatches on an adapter with 32 storage bindings and a CPU adapter's split-K plan (llvmpipe's
/// defaults, pinned here so the count does not depend on the adapter), and so do the LoRA and LieRA r8 steps (whose adapters' products are gathered into a few launches per pass).
/// Counting is exact, so a fusion undone fails this test.
#[test]
fn the_atto_step_stays_within_its_launch_budget() {
    use liera::backend::gpu::{GpuBackend, GpuOptions};
    use liera::job::bench::{training_step, StepKind};
    use liera::peft::DeltaKind;
    if gpu_device().is_none() {
        return;
    }
    let backend = GpuBackend::new(GpuOptions {
        min_parallel_workgroups: Some(8),
        max_wide_slots: Some(32),
        ..GpuOptions::default()
    })
    .unwrap();
    if backend.limits().max_storage_buffers_per_shader_stage < 32 {
        eprintln!("skipped: the adapter has fewer than 32 storage bindings per stage");
        return;
    }
    let dev = Device::from_backend(std::sync::Arc::new(backend));
    for (kind, budget) in [
        (StepKind::Full, 300),
        (StepKind::Adapter(AdapterKind::Lora, DeltaKind::Lora), 300),
        (StepKind::Adapter(AdapterKind::Liera, DeltaKind::Lora), 300),
    ] {
        let r = training_step(&dev, &ConvNeXtConfig::atto(), "convnext_atto", kind, 64, 1).unwrap();
        let l = r.launches_per_step.expect("a GPU step counts its launches");
        assert!(l.dispatches <= budget, "{kind:?}: {l:?} over {budget}");
        assert!(l.bind_groups <= l.dispatches, "{kind:?}: {l:?}");
    }
}

/// Bind groups are kept and reused: the pool hands a step the buffers the step before it had, in the same
/// places, so once the parameters' and moments' buffers have settled (a few steps of full fine-tuning) a
/// step creates bind groups only for the dispatches that bind something new (the batch is uploaded afresh
/// each step); without the cache every dispatch made its own (311 per step here).
#[test]
fn bind_groups_are_reused_from_step_to_step() {
    use liera::backend::gpu::{GpuBackend, GpuOptions};
    use liera::job::bench::{training_step, StepKind};
    if gpu_device().is_none() {
        return;
    }
    // A backend of its own: the counters and the pool are per backend, and other tests share the default.
    let backend = GpuBackend::new(GpuOptions::default()).unwrap();
    let dev = Device::from_backend(std::sync::Arc::new(backend));
    let r = training_step(
        &dev,
        &ConvNeXtConfig::atto(),
        "convnext_atto",
        StepKind::Full,
        8,
        8,
    )
    .unwrap();
    let l = r.launches_per_step.expect("a GPU step counts its launches");
    assert!(l.dispatches > 250, "{l:?}");
    assert!(l.bind_groups * 10 < l.dispatches, "{l:?}");
    assert_eq!(l.buffers_created, 1, "{l:?}: the upload of the batch");
}
