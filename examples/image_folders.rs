//! Writes real image folders from the embedded data, to try `liera finetune --data`, `liera vtab` and
//! `liera predict` without downloading anything:
//!
//! - `<out>/fashion/{train,val}/<class>/*.{png,jpg}`: an ImageFolder of Fashion-MNIST (100 training and 20
//!   validation images per class), as RGB pictures of 64×64 to 96×80 pixels, alternately PNG and JPEG;
//! - `<out>/vtab/{fashion,digits}/`: two tasks in the VTAB-1k list layout (`train800.txt`, `val200.txt`,
//!   `train800val200.txt`, `test.txt`; 800 + 200 training images, 500 test images each), from
//!   Fashion-MNIST and from MNIST.
//!
//! The grey 28×28 images are enlarged (nearest neighbour) and tinted by a colour that depends on the image,
//! so the three channels differ.
//!
//! ```sh
//! cargo run --release --example image_folders -- /tmp/liera-images
//! ```

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use liera::data::{embedded_fashion_mnist, embedded_mnist, Dataset};
use std::path::{Path, PathBuf};

const FASHION: [&str; 10] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

/// Image `i` of `data` as 8-bit grey pixels (the embedded values are normalised; this undoes it).
fn grey(data: &Dataset, i: usize) -> Vec<u8> {
    let n = data.normalization;
    data.image(i)
        .expect("index in range")
        .iter()
        .map(|&v| ((v * n.std + n.mean) * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A `w`×`h` RGB picture of a 28×28 grey image, tinted by `seed`.
fn picture(g: &[u8], w: usize, h: usize, seed: usize) -> Vec<u8> {
    let tint = [
        (seed * 37) % 128 + 128,
        (seed * 91) % 128 + 128,
        (seed * 53) % 128 + 128,
    ];
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let v = g[(y * 28 / h) * 28 + x * 28 / w] as usize;
            rgb.extend(tint.iter().map(|&t| (v * t / 255) as u8));
        }
    }
    rgb
}

fn write(path: &Path, rgb: &[u8], w: usize, h: usize) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    let result = if path.extension().is_some_and(|e| e == "png") {
        PngEncoder::new(&mut bytes).write_image(rgb, w as u32, h as u32, ExtendedColorType::Rgb8)
    } else {
        JpegEncoder::new_with_quality(&mut bytes, 92).write_image(
            rgb,
            w as u32,
            h as u32,
            ExtendedColorType::Rgb8,
        )
    };
    result.map_err(std::io::Error::other)?;
    std::fs::write(path, bytes)
}

/// Indices of the first `n` images of each class at or after `skip` of that class.
fn per_class(data: &Dataset, n: usize, skip: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for c in 0..data.classes {
        out.extend(
            (0..data.len())
                .filter(|&i| data.labels[i] == c)
                .skip(skip)
                .take(n),
        );
    }
    out
}

fn image_folder(out: &Path, data: &Dataset, split: &str, idx: &[usize]) -> std::io::Result<()> {
    for (k, &i) in idx.iter().enumerate() {
        let dir = out.join(split).join(FASHION[data.labels[i]]);
        std::fs::create_dir_all(&dir)?;
        let (w, h) = [(64, 64), (96, 80), (72, 88)][k % 3];
        let ext = if k % 2 == 0 { "png" } else { "jpg" };
        write(
            &dir.join(format!("{i}.{ext}")),
            &picture(&grey(data, i), w, h, i),
            w,
            h,
        )?;
    }
    Ok(())
}

fn vtab_task(task: &Path, train: &Dataset, test: &Dataset) -> std::io::Result<()> {
    std::fs::create_dir_all(task.join("images"))?;
    let write_list =
        |name: &str, data: &Dataset, idx: &[usize], tag: &str| -> std::io::Result<()> {
            let mut lines = String::new();
            for &i in idx {
                let rel = format!("images/{tag}_{i}.jpg");
                write(
                    &task.join(&rel),
                    &picture(&grey(data, i), 64, 64, i),
                    64,
                    64,
                )?;
                lines.push_str(&format!("{rel} {}\n", data.labels[i]));
            }
            std::fs::write(task.join(name), lines)
        };
    let train800 = per_class(train, 80, 0);
    let val200 = per_class(train, 20, 80);
    write_list("train800.txt", train, &train800, "train")?;
    write_list("val200.txt", train, &val200, "train")?;
    let both: String = ["train800.txt", "val200.txt"]
        .iter()
        .map(|l| std::fs::read_to_string(task.join(l)))
        .collect::<std::io::Result<Vec<_>>>()?
        .concat();
    std::fs::write(task.join("train800val200.txt"), both)?;
    write_list("test.txt", test, &per_class(test, 50, 0), "test")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "liera-images".into()),
    );
    let fashion = embedded_fashion_mnist()?;
    let digits = embedded_mnist()?;
    image_folder(
        &out.join("fashion"),
        &fashion.train,
        "train",
        &per_class(&fashion.train, 100, 0),
    )?;
    image_folder(
        &out.join("fashion"),
        &fashion.test,
        "val",
        &per_class(&fashion.test, 20, 0),
    )?;
    vtab_task(
        &out.join("vtab").join("fashion"),
        &fashion.train,
        &fashion.test,
    )?;
    vtab_task(
        &out.join("vtab").join("digits"),
        &digits.train,
        &digits.test,
    )?;
    println!(
        "wrote {} (ImageFolder) and {} (VTAB-1k lists: fashion, digits)",
        out.join("fashion").display(),
        out.join("vtab").display()
    );
    Ok(())
}
