//! Image files → 8-bit pixels, the way torchvision's `ImageFolder` loader sees them (PIL's
//! `Image.open(path).convert("RGB")`), with an error naming the file for anything that is not a readable
//! PNG or JPEG.
//!
//! Conversion to the model's channels, as PIL's `convert` does it:
//! - to RGB: grey is repeated into the three channels; an alpha channel is dropped (not composited over
//!   a background, as PIL drops it); a palette is looked up (the `png` decoder expands it);
//! - to grey (a one-channel model): L = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16, PIL's ITU-R 601-2 luma;
//! - 16-bit samples become 8-bit by round(v · 255 / 65535). (PIL reads 16-bit grey PNGs as 32-bit integers
//!   and clips them to 255 on `convert`, which saturates almost every pixel; scaling keeps the picture.)
//!
//! EXIF orientation is not applied, as PIL does not apply it on `open`.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// Largest accepted width or height: a guard against decompression bombs (a few bytes of header claiming
/// gigapixels).
pub const MAX_SIDE: u32 = 1 << 15;
/// Largest decoder allocation in bytes.
const MAX_ALLOC: u64 = 1 << 30;

/// An 8-bit image: `height` rows of `width` pixels of `channels` samples each (HWC order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Samples per pixel (1 grey, 3 RGB).
    pub channels: usize,
    /// height·width·channels samples, row-major, channels interleaved.
    pub pixels: Vec<u8>,
}

impl Image {
    /// An image from its samples; checks that their count is height·width·channels.
    pub fn new(width: usize, height: usize, channels: usize, pixels: Vec<u8>) -> Result<Image> {
        if Some(pixels.len())
            != width
                .checked_mul(height)
                .and_then(|v| v.checked_mul(channels))
        {
            return Err(Error::invalid(
                "Image::new",
                format!(
                    "{} samples are not {width}×{height} pixels of {channels} channels",
                    pixels.len()
                ),
            ));
        }
        Ok(Image {
            width,
            height,
            channels,
            pixels,
        })
    }

    /// The samples of pixel (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.width + x) * self.channels;
        &self.pixels[i..i + self.channels]
    }
}

/// Reads and decodes the image file at `path` into `channels` (1 or 3) channels. Errors name the file: it
/// cannot be read, is not PNG or JPEG, is corrupt or truncated, has a zero side or is too large.
pub fn decode_file(path: &Path, channels: usize) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_bytes(&bytes, channels).map_err(|msg| Error::Format {
        path: path.display().to_string(),
        msg,
    })
}

/// Decodes a PNG or JPEG held in memory into `channels` (1 or 3) channels; the error says what is wrong
/// (the caller adds the file name).
pub fn decode_bytes(bytes: &[u8], channels: usize) -> std::result::Result<Image, String> {
    if channels != 1 && channels != 3 {
        return Err(format!(
            "images can be decoded to 1 or 3 channels, not {channels}"
        ));
    }
    let format = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        ImageFormat::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ImageFormat::Jpeg
    } else if bytes.is_empty() {
        return Err("the file is empty".into());
    } else {
        return Err("not a PNG or JPEG file (unsupported format)".into());
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let name = if format == ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    };
    let decoded = reader
        .decode()
        .map_err(|e| format!("corrupt or truncated {name}: {e}"))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    if width == 0 || height == 0 {
        return Err(format!("the image is {width}×{height}: it has no pixels"));
    }
    let rgb_or_grey = to_8bit(decoded);
    let pixels = match (rgb_or_grey, channels) {
        (Eight::Grey(g), 1) => g,
        (Eight::Grey(g), _) => g.iter().flat_map(|&v| [v, v, v]).collect(),
        (Eight::Rgb(rgb), 3) => rgb,
        (Eight::Rgb(rgb), _) => rgb.chunks_exact(3).map(luma).collect(),
    };
    Image::new(width, height, channels, pixels).map_err(|e| e.to_string())
}

/// Decoded samples at 8 bits, alpha dropped.
enum Eight {
    Grey(Vec<u8>),
    Rgb(Vec<u8>),
}

/// round(v · 255 / 65535).
fn narrow(v: u16) -> u8 {
    ((v as u32 * 255 + 32767) / 65535) as u8
}

/// PIL's luma of an RGB pixel (ITU-R 601-2, 16-bit fixed point, rounded).
fn luma(p: &[u8]) -> u8 {
    ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
}

fn to_8bit(image: DynamicImage) -> Eight {
    let drop_alpha = |samples: &[u8], n: usize, keep: usize| -> Vec<u8> {
        samples
            .chunks_exact(n)
            .flat_map(|p| p[..keep].to_vec())
            .collect()
    };
    match image {
        DynamicImage::ImageLuma8(g) => Eight::Grey(g.into_raw()),
        DynamicImage::ImageLumaA8(g) => Eight::Grey(drop_alpha(g.as_raw(), 2, 1)),
        DynamicImage::ImageRgb8(c) => Eight::Rgb(c.into_raw()),
        DynamicImage::ImageRgba8(c) => Eight::Rgb(drop_alpha(c.as_raw(), 4, 3)),
        DynamicImage::ImageLuma16(g) => {
            Eight::Grey(g.as_raw().iter().map(|&v| narrow(v)).collect())
        }
        DynamicImage::ImageLumaA16(g) => {
            Eight::Grey(g.as_raw().chunks_exact(2).map(|p| narrow(p[0])).collect())
        }
        DynamicImage::ImageRgb16(c) => Eight::Rgb(c.as_raw().iter().map(|&v| narrow(v)).collect()),
        DynamicImage::ImageRgba16(c) => Eight::Rgb(
            c.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [narrow(p[0]), narrow(p[1]), narrow(p[2])])
                .collect(),
        ),
        // Formats PNG and JPEG do not produce (f32 images); convert through the crate.
        other => Eight::Rgb(other.to_rgb8().into_raw()),
    }
}
