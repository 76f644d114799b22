//! Image files for tests, built from the embedded Fashion-MNIST data: grey images and their coloured RGB
//! versions, PNG and JPEG files, an ImageFolder tree, a VTAB-1k list, and a timm-layout model folder.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use liera::data::embedded_fashion_mnist;
use liera::io::save_model;
use liera::nn::{ConvNeXt, ConvNeXtConfig};
use liera::Device;
use std::path::Path;

/// `n` Fashion-MNIST training images of each of the first `classes` classes as 8-bit 28×28 grey pixels
/// (recovered exactly from the embedded set's normalised values), with their labels.
pub fn fashion(classes: usize, n: usize, skip: usize) -> Vec<(Vec<u8>, usize)> {
    let data = embedded_fashion_mnist().unwrap().train;
    let norm = data.normalization;
    let mut out = Vec::new();
    for c in 0..classes {
        let idx: Vec<usize> = (0..data.len())
            .filter(|&i| data.labels[i] == c)
            .skip(skip)
            .take(n)
            .collect();
        for i in idx {
            let px = data
                .image(i)
                .unwrap()
                .iter()
                .map(|&v| {
                    ((v * norm.std + norm.mean) * 255.0)
                        .round()
                        .clamp(0.0, 255.0) as u8
                })
                .collect();
            out.push((px, c));
        }
    }
    out
}

/// A grey 28×28 image as a `w`×`h` RGB picture: nearest upscaling, and a colour that depends on the
/// class, so that the three channels differ.
pub fn colour(grey: &[u8], label: usize, w: usize, h: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let g = grey[(y * 28 / h) * 28 + x * 28 / w] as u32;
            rgb.extend([
                g as u8,
                (g * (label as u32 + 2) / 6).min(255) as u8,
                (255 - g) as u8,
            ]);
        }
    }
    rgb
}

pub fn write_png(path: &Path, pixels: &[u8], w: usize, h: usize, color: ExtendedColorType) {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(pixels, w as u32, h as u32, color)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub fn write_jpeg(path: &Path, rgb: &[u8], w: usize, h: usize) {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 95)
        .write_image(rgb, w as u32, h as u32, ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes `images` as `root/<class name>/<i>.{png,jpg}` (alternating formats, sizes varying).
pub fn write_image_folder(root: &Path, images: &[(Vec<u8>, usize)]) {
    for (i, (grey, label)) in images.iter().enumerate() {
        let dir = root.join(format!("class_{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (w, h) = [(32, 32), (40, 36), (36, 44)][i % 3];
        let rgb = colour(grey, *label, w, h);
        if i % 2 == 0 {
            write_png(
                &dir.join(format!("{i}.png")),
                &rgb,
                w,
                h,
                ExtendedColorType::Rgb8,
            );
        } else {
            write_jpeg(&dir.join(format!("{i}.jpg")), &rgb, w, h);
        }
    }
}

/// Writes `images` under `task/images/` and a VTAB-1k list `task/<list>` naming them.
pub fn write_list(task: &Path, list: &str, images: &[(Vec<u8>, usize)]) {
    let dir = task.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = list.trim_end_matches(".txt");
    let mut lines = String::new();
    for (i, (grey, label)) in images.iter().enumerate() {
        let name = format!("{stem}_{i}.png");
        write_png(
            &dir.join(&name),
            &colour(grey, *label, 32, 32),
            32,
            32,
            ExtendedColorType::Rgb8,
        );
        lines.push_str(&format!("images/{name} {label}\n"));
    }
    std::fs::write(task.join(list), lines).unwrap();
}

/// A timm-layout model folder: `model.safetensors` with random weights of `config` and a `config.json`.
pub fn write_model_folder(
    dir: &Path,
    config: &ConvNeXtConfig,
    architecture: &str,
    cfg: serde_json::Value,
) {
    std::fs::create_dir_all(dir).unwrap();
    let model = ConvNeXt::new(config.clone(), &Device::cpu()).unwrap();
    save_model(&model, &dir.join("model.safetensors")).unwrap();
    let json = serde_json::json!({
        "architecture": architecture,
        "num_classes": config.num_classes,
        "pretrained_cfg": cfg,
    });
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
}
