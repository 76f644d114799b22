//! Benchmarks shared by `liera bench` and `cargo bench`: matrix products, the convolution kernels of a
//! ConvNeXt, and whole training steps (ConvNeXt-atto with AdamW, full and with LoRA / LieRA adapters).
//! Every figure is the median of several timed repetitions after a warm-up; GPU timings end with a
//! readback so queued work is counted.

use crate::backend::{Device, LaunchCounters};
use crate::error::Result;
use crate::nn::Classifier;
use crate::nn::{ConvNeXt, ConvNeXtConfig, Module};
use crate::optim::{AdamW, Optimizer};
use crate::peft::{self, adapter_method_name, AdapterKind, DeltaKind, PeftConfig};
use crate::shape::{Conv2dGeometry, Conv2dParams};
use crate::tensor::Tensor;
use serde::Serialize;
use std::time::Instant;

/// One measured figure.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchResult {
    /// What was measured ("matmul 1024×1024×1024", "atto step liera r8", ...).
    pub name: String,
    /// Median seconds per repetition.
    pub median_s: f64,
    /// Repetitions timed.
    pub reps: usize,
    /// Floating-point work rate (GFLOP/s), where the FLOP count is known.
    pub gflops: Option<f64>,
    /// Images per second, for training steps and the input pipeline.
    pub images_per_s: Option<f64>,
    /// Peak resident memory of the process while this figure was measured (Linux), where measured.
    pub peak_rss_bytes: Option<u64>,
    /// Memory a training step adds per image of its batch (activations, gradients; the peak during one
    /// step minus the resident memory before it, over the batch size), where measured.
    pub step_bytes_per_image: Option<f64>,
    /// What one training step launches on a GPU (dispatches, bind groups, submits, buffers created,
    /// readbacks), counted over the last timed step; absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launches_per_step: Option<LaunchCounters>,
}

/// Median of `reps` timings of `f` after one warm-up call.
pub fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The median (the mean of the two middle values for an even count).
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.total_cmp(b));
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    }
}

/// n deterministic benchmark values in [−0.5, 0.5): (i·7919 mod modulus)/modulus − 0.5 (a prime modulus
/// gives each operand its own pattern).
pub fn ramp(n: usize, modulus: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % modulus) as f32 / modulus as f32 - 0.5)
        .collect()
}

/// C = A·B for square and ConvNeXt-shaped matrices.
pub fn matmul(
    device: &Device,
    sizes: &[(usize, usize, usize)],
    reps: usize,
) -> Result<Vec<BenchResult>> {
    sizes
        .iter()
        .map(|&(m, k, n)| {
            let a = Tensor::from_slice(&ramp(m * k, 97), [m, k], device)?;
            let b = Tensor::from_slice(&ramp(k * n, 89), [k, n], device)?;
            let t = time_median(reps, || {
                let c = a.matmul(&b)?;
                sync(&c)
            })?;
            Ok(BenchResult {
                name: format!("matmul {m}×{k}×{n}"),
                median_s: t,
                reps: reps.max(1),
                gflops: Some(2.0 * (m * k * n) as f64 / t / 1e9),
                images_per_s: None,
                ..Default::default()
            })
        })
        .collect()
}

/// Forces queued work to finish: a one-element readback (of the sum) on a GPU, nothing on the CPU, whose
/// kernels have finished when they return.
fn sync(t: &Tensor) -> Result<()> {
    if t.device().backend().is_asynchronous() && t.numel() > 0 {
        t.reshape([t.numel()])?.sum(&[0], false)?.to_scalar()?;
    }
    Ok(())
}

/// The convolution layers of a ConvNeXt-atto step at batch 64 on 32×32 images, plus a dense 3×3 layer of
/// the same width for reference: forward, input gradient and weight gradient of each.
pub fn conv_layers(device: &Device, batch: usize, reps: usize) -> Result<Vec<BenchResult>> {
    let d = Conv2dParams::default();
    // (label, c_in, h, c_out, k, params)
    let layers: [(&str, usize, usize, usize, usize, Conv2dParams); 6] = [
        ("stem 4×4/4 1→40 @32", 1, 32, 40, 4, d.stride(4)),
        ("dense 3×3 40→40 @8", 40, 8, 40, 3, d.padding(1)),
        ("depthwise 7×7 40 @8", 40, 8, 40, 7, d.padding(3).groups(40)),
        ("pointwise 1×1 40→160 @8", 40, 8, 160, 1, d),
        ("pointwise 1×1 160→40 @8", 160, 8, 40, 1, d),
        ("downsample 2×2/2 40→80 @8", 40, 8, 80, 2, d.stride(2)),
    ];
    let mut out = Vec::new();
    for (label, c, h, o, k, params) in layers {
        let x = Tensor::from_slice(&ramp(batch * c * h * h, 101), [batch, c, h, h], device)?;
        let w = Tensor::from_slice(
            &ramp(o * (c / params.groups) * k * k, 103),
            [o, c / params.groups, k, k],
            device,
        )?;
        let geom = Conv2dGeometry::new(x.shape(), w.shape(), params)?;
        let flops = 2.0 * geom.macs() as f64;
        let dy = Tensor::from_slice(
            &ramp(geom.output_shape().numel(), 107),
            geom.output_shape(),
            device,
        )?;
        let backend = device.backend();
        let fwd = time_median(reps, || sync(&x.conv2d(&w, None, params)?))?;
        let dx = time_median(reps, || {
            let s = backend.conv2d_input_grad(&dy.storage(), &w.storage(), &geom)?;
            sync(&Tensor::from_storage(s, geom.input_shape(), device))
        })?;
        let dw = time_median(reps, || {
            let s = backend.conv2d_weight_grad(&x.storage(), &dy.storage(), &geom)?;
            sync(&Tensor::from_storage(s, geom.weight_shape(), device))
        })?;
        for (kind, t) in [("forward", fwd), ("input grad", dx), ("weight grad", dw)] {
            out.push(BenchResult {
                name: format!("conv {label} {kind}"),
                median_s: t,
                reps: reps.max(1),
                gflops: Some(flops / t / 1e9),
                images_per_s: None,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

/// What a benchmarked training step trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Every parameter.
    Full,
    /// Adapters of a composition and generator at rank 8 on conv_dw, mlp.fc1, mlp.fc2 plus the head.
    Adapter(AdapterKind, DeltaKind),
}

/// A prepared training step: a model of one [`StepKind`], its optimizer and a fixed batch.
struct StepRunner {
    model: ConvNeXt,
    params: Vec<(String, Tensor)>,
    opt: AdamW,
    x: Tensor,
    labels: Vec<usize>,
}

impl StepRunner {
    fn new(
        device: &Device,
        config: &ConvNeXtConfig,
        kind: StepKind,
        batch: usize,
        [c, size]: [usize; 2],
        grad_checkpointing: bool,
    ) -> Result<Self> {
        let mut model = ConvNeXt::new(config.clone().with_in_chans(c).with_classes(10), device)?;
        model.set_grad_checkpointing(grad_checkpointing);
        if let StepKind::Adapter(k, d) = kind {
            let cfg = PeftConfig::new(k, 8, 8.0, "conv_dw,mlp.fc1,mlp.fc2")
                .with_delta(d)
                .with_modules_to_save("head.fc");
            peft::apply(&mut model, &cfg)?;
        }
        Ok(StepRunner {
            params: model.trainable_parameters(),
            model,
            opt: AdamW::new(0.9, 0.999, 1e-8, 0.05)?,
            x: Tensor::from_slice(
                &ramp(batch * c * size * size, 113),
                [batch, c, size, size],
                device,
            )?,
            labels: (0..batch).map(|i| i % 10).collect(),
        })
    }
    /// Forward, backward, gradient clipping, AdamW update and the loss readback (which also waits for a
    /// GPU), as a training step of `liera finetune` does them; seconds.
    fn step(&mut self) -> Result<f64> {
        crate::profile::mark();
        let t = Instant::now();
        let loss = self
            .model
            .forward(&self.x, true)?
            .cross_entropy(&self.labels)?;
        let grads = loss.backward()?;
        match crate::optim::clip_grad_scale(&self.params, &grads, 5.0)? {
            Some((_, scale)) => self.opt.step_scaled(&self.params, &grads, 1e-4, &scale)?,
            None => self.opt.step(&self.params, &grads, 1e-4)?,
        }
        loss.to_scalar()?;
        Ok(t.elapsed().as_secs_f64())
    }
}

fn step_name(label: &str, kind: StepKind, batch: usize, [c, size]: [usize; 2]) -> String {
    let what = match kind {
        StepKind::Full => "full".to_string(),
        StepKind::Adapter(k, d) => format!("{} r8", adapter_method_name(k, d)),
    };
    format!("{label} {c}×{size}×{size} step ({what}, batch {batch})")
}

/// Median time of one training step (forward, backward, clipping, AdamW update, loss readback) of
/// `config` at `batch` images of 1×32×32 and 10 classes.
pub fn training_step(
    device: &Device,
    config: &ConvNeXtConfig,
    label: &str,
    kind: StepKind,
    batch: usize,
    reps: usize,
) -> Result<BenchResult> {
    Ok(training_steps(device, config, label, &[kind], batch, reps)?.remove(0))
}

/// [`training_steps`] at 1×32×32 (the embedded data's input).
pub fn training_steps(
    device: &Device,
    config: &ConvNeXtConfig,
    label: &str,
    kinds: &[StepKind],
    batch: usize,
    reps: usize,
) -> Result<Vec<BenchResult>> {
    training_steps_at(device, config, label, kinds, batch, [1, 32], reps, false)
}

/// Training steps of several kinds at `batch` images of `[channels, size]`, timed interleaved (one step
/// of each kind per round), so that a change in machine load between kinds does not bias their ratio
/// (LieRA vs LoRA), optionally with every block checkpointed. Each kind's first (warm-up) step also measures its memory: the peak resident memory
/// during that step, and what the step adds per image over the memory held before it.
#[allow(clippy::too_many_arguments)]
pub fn training_steps_at(
    device: &Device,
    config: &ConvNeXtConfig,
    label: &str,
    kinds: &[StepKind],
    batch: usize,
    input: [usize; 2],
    reps: usize,
    grad_checkpointing: bool,
) -> Result<Vec<BenchResult>> {
    let mut runners = Vec::with_capacity(kinds.len());
    let mut memory = Vec::with_capacity(kinds.len());
    for &k in kinds {
        let mut r = StepRunner::new(device, config, k, batch, input, grad_checkpointing)?;
        reset_peak_memory();
        let before = current_rss_bytes();
        r.step()?; // warm-up, and the memory of one step
        let peak = peak_memory_bytes();
        memory.push((
            peak,
            peak.zip(before)
                .map(|(p, b)| p.saturating_sub(b) as f64 / batch as f64),
        ));
        runners.push(r);
    }
    let mut times = vec![Vec::with_capacity(reps); kinds.len()];
    let mut launches = vec![LaunchCounters::default(); kinds.len()];
    // The op profile (LIERA_OP_PROFILE=1) covers the timed steps only, not the warm-ups.
    crate::profile::reset();
    for _ in 0..reps.max(1) {
        for ((r, t), l) in runners.iter_mut().zip(&mut times).zip(&mut launches) {
            let before = device.backend().counters();
            t.push(r.step()?);
            *l = device.backend().counters() - before;
        }
    }
    if let Some(table) = crate::profile::report(reps.max(1) * kinds.len()) {
        eprintln!(
            "{label}, {} kind{} timed together ({}):\n{table}",
            kinds.len(),
            if kinds.len() == 1 {
                ""
            } else {
                "s, the table averages them"
            },
            device.name()
        );
    }
    Ok(kinds
        .iter()
        .zip(times)
        .zip(memory)
        .zip(launches)
        .map(|(((&kind, t), (peak, per_image)), launches)| {
            let reps = t.len();
            let median = median(t);
            BenchResult {
                name: format!(
                    "{}{}",
                    step_name(label, kind, batch, input),
                    if grad_checkpointing {
                        " checkpointed"
                    } else {
                        ""
                    }
                ),
                peak_rss_bytes: peak,
                step_bytes_per_image: per_image,
                median_s: median,
                reps,
                gflops: None,
                images_per_s: Some(batch as f64 / median),
                launches_per_step: (launches != LaunchCounters::default()).then_some(launches),
            }
        })
        .collect())
}

/// The standard suite of `liera bench`: matmul, the atto conv layers, and atto training steps (full, LoRA,
/// LieRA, LieRA first-order). `quick` uses fewer repetitions and smaller products.
pub fn suite(device: &Device, quick: bool) -> Result<Vec<BenchResult>> {
    let reps = if quick { 3 } else { 7 };
    let sizes: &[(usize, usize, usize)] = if quick {
        &[(512, 512, 512)]
    } else {
        &[
            (1024, 1024, 1024),
            (2048, 2048, 2048),
            (4096, 40, 160),
            (4096, 160, 40),
        ]
    };
    let mut out = matmul(device, sizes, reps)?;
    out.extend(conv_layers(device, 64, reps)?);
    let atto = ConvNeXtConfig::atto();
    let kinds = [
        StepKind::Full,
        StepKind::Adapter(AdapterKind::Lora, DeltaKind::Lora),
        StepKind::Adapter(AdapterKind::Liera, DeltaKind::Lora),
        StepKind::Adapter(AdapterKind::LieraFirstOrder, DeltaKind::Lora),
    ];
    out.extend(training_steps(
        device,
        &atto,
        "convnext_atto",
        &kinds,
        64,
        2 * reps,
    )?);
    // RGB at 224: what fine-tuning pretrained weights on photos costs.
    let (batch, size) = if quick { (4, 64) } else { (32, 224) };
    out.extend(training_steps_at(
        device,
        &atto,
        "convnext_atto",
        &kinds[..3],
        batch,
        [3, size],
        if quick { 1 } else { 3 },
        false,
    )?);
    out.extend(input_pipeline(
        if quick { 8 } else { 64 },
        if quick { 1 } else { 3 },
    )?);
    Ok(out)
}

/// The input pipeline at 224×224 on `count` synthetic photos (JPEG, 500×375, quality 90, written to a
/// scratch folder and removed after): decoding plus the VTAB resize (what loading a task costs per image),
/// assembling a normalised batch of 32 from kept pixels (an evaluation batch), and a batch of 32 random
/// resized crops with flips (an augmented training batch). Each is images per second on all threads.
pub fn input_pipeline(count: usize, reps: usize) -> Result<Vec<BenchResult>> {
    use crate::data::images::{BadImages, ImageSet, Preprocess};
    use crate::data::layout::{ImageList, ListedImage};
    use crate::data::{Examples, SplitMix64};
    let dir = std::env::temp_dir().join(format!("liera-bench-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| crate::io::io_error(&dir, e))?;
    let result = (|| {
        let (w, h) = (500u32, 375u32);
        let mut rng = SplitMix64::new(11);
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            // Smooth gradients with noise: compresses like a photo, not like a flat test card.
            let pixels: Vec<u8> = (0..w * h)
                .flat_map(|p| {
                    let (x, y) = (p % w, p / w);
                    let n = (rng.next_u64() % 24) as u32;
                    [
                        ((x * 255 / w + n + i as u32 * 7) % 256) as u8,
                        ((y * 255 / h + n) % 256) as u8,
                        (((x + y) * 255 / (w + h) + n) % 256) as u8,
                    ]
                })
                .collect();
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode(&pixels, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| crate::error::Error::invalid("bench", e.to_string()))?;
            let path = dir.join(format!("{i}.jpg"));
            crate::io::atomic_write(&path, &bytes)?;
            items.push(ListedImage {
                origin: path.display().to_string(),
                path,
                label: i % 10,
            });
        }
        let list = ImageList {
            items,
            class_names: (0..10).map(|c| c.to_string()).collect(),
        };
        let mut set = None;
        let load = time_median(reps, || {
            set = Some(ImageSet::load(
                list.clone(),
                Preprocess::vtab(),
                BadImages::Fail,
                "bench",
                false,
            )?);
            Ok(())
        })?;
        let set = set.expect("loaded at least once");
        let batch: Vec<usize> = (0..32).map(|i| i % count).collect();
        let eval = time_median(reps, || set.gather(&batch, None).map(|_| ()))?;
        let augmented = ImageSet::load(
            list.clone(),
            Preprocess {
                augment: true,
                ..Preprocess::imagenet(224)
            },
            BadImages::Fail,
            "bench",
            false,
        )?;
        let mut rng = SplitMix64::new(3);
        let train = time_median(reps, || {
            augmented.gather(&batch, Some(&mut rng)).map(|_| ())
        })?;
        let figure = |name: String, seconds: f64, images: usize| BenchResult {
            name,
            median_s: seconds,
            reps: reps.max(1),
            images_per_s: Some(images as f64 / seconds),
            ..Default::default()
        };
        Ok(vec![
            figure(
                format!("input: decode JPEG 500×375 + resize to 224×224 ({count} images)"),
                load,
                count,
            ),
            figure(
                "input: normalised batch of 32 at 224 from memory".into(),
                eval,
                32,
            ),
            figure(
                "input: augmented batch of 32 at 224 (random resized crop + flip)".into(),
                train,
                32,
            ),
        ])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A `/proc/self/status` field in bytes (Linux), if known.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process in bytes (Linux: VmHWM, since the start or the last
/// [`reset_peak_memory`]), if known.
pub fn peak_memory_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes (Linux: VmRSS), if known.
pub fn current_rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// Restarts the peak-memory count from the current resident memory (Linux: writing 5 to
/// `/proc/self/clear_refs`), after handing freed heap pages back to the system (glibc's `malloc_trim`),
/// so that the memory an earlier measurement freed is not counted as held; does nothing where that is not
/// possible.
pub fn reset_peak_memory() {
    release_free_heap();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Returns the allocator's free pages to the system, so resident memory is what is live.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds unused; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
