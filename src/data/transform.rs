//! Image transforms on 8-bit [`Image`]s that reproduce what timm and torchvision do to PIL images, so a
//! network fine-tuned here sees the same pixels it would see in PyTorch.
//!
//! The pipelines they build, in the order they run:
//! - training: [`RandomResizedCrop`] (a random area and aspect ratio, cropped and resized to the input size)
//!   → a random [`hflip`] → [`normalize_into`];
//! - evaluation: [`resize_shorter`] (torchvision `Resize(int)`) → [`center_crop`] → [`normalize_into`].
//!
//! Resizing is Pillow's `Image.resize`, reproduced bit for bit: a separable convolution whose filter is
//! stretched by the downscale factor (so shrinking averages every source pixel instead of skipping some),
//! computed with Pillow's fixed-point coefficients and rounding, a horizontal pass into an 8-bit image first
//! and a vertical one after. Nearest is Pillow's affine sampling of pixel centres. The equality is checked
//! against real Pillow output in `tests/transform.rs` (fixtures made by `tests/fixtures/pil_resize.py`).
//!
//! Rounding follows Python where torchvision's arithmetic does: `round` is round-half-to-even
//! ([`f64::round_ties_even`]) and `int` truncates.

use super::image::Image;
use super::SplitMix64;
use crate::error::{Error, Result};

/// A resampling filter, by timm's name for it (`--interpolation`, a model config's `interpolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// The source pixel under each destination pixel centre (PIL `NEAREST`): no averaging, even downscaling.
    Nearest,
    /// The triangle filter (PIL `BILINEAR`), widened by the downscale factor.
    Bilinear,
    /// Keys' cubic convolution with a = -0.5 (PIL `BICUBIC`), widened by the downscale factor; the
    /// default of most timm models.
    Bicubic,
}

impl Interpolation {
    /// Every filter with its name, in the order an error lists them.
    const ALL: [Interpolation; 3] = [
        Interpolation::Nearest,
        Interpolation::Bilinear,
        Interpolation::Bicubic,
    ];

    /// The filter named `name` ("nearest", "bilinear" or "bicubic", as timm spells them); anything else is
    /// an error that lists the known names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|i| i.name()).collect();
                Error::invalid(
                    "Interpolation::parse",
                    format!(
                        "unknown interpolation {name:?}; known: {}",
                        known.join(", ")
                    ),
                )
            })
    }

    /// timm's name of the filter.
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        }
    }
}

/// Fractional bits of Pillow's fixed-point filter coefficients: 8 bits of result, 2 bits of headroom for
/// coefficient sums beyond [0, 1] (the cubic filter's negative lobes), in a 32-bit integer.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// `img` resized to `width × height`, exactly as PIL's `Image.resize((width, height), resample)` does it for
/// 8-bit images.
///
/// Bilinear and bicubic are Pillow's convolution resampler. Per axis, with `scale = in / out` and
/// `fs = max(scale, 1)`, output pixel `i` has its centre at `c = (i + 0.5)·scale` in source coordinates and
/// takes the source pixels `j` in `[int(c - s·fs + 0.5), int(c + s·fs + 0.5))` (clipped to the image; `s` is
/// the filter's support: 1 for the triangle, 2 for the cubic) with weights `f((j - c + 0.5) / fs)`,
/// normalised to sum to 1 and rounded to fixed point with 22 fractional bits (half away from zero). A pixel is `clip(Σ w·p + 2²¹ >> 22)` into 0..=255. The horizontal pass runs first, into an
/// 8-bit image (so its rounding is part of the result), over only the rows the vertical pass reads; a pass
/// whose size does not change is skipped.
///
/// Nearest samples source pixel `(int(x₀ + i·sx), int(y₀ + j·sy))`, `sx = in_w / out_w`, `x₀ = sx / 2`, with
/// the position accumulated by repeated addition in f64 as Pillow does (a product could truncate the other
/// way at an exact integer).
///
/// The same size returns a copy (as PIL does). A zero target size or an empty image is an error.
pub fn resize(img: &Image, width: usize, height: usize, interp: Interpolation) -> Result<Image> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            "resize",
            format!("target size {width}×{height} has a zero side"),
        ));
    }
    check_image("resize", img)?;
    if (width, height) == (img.width, img.height) {
        return Ok(img.clone());
    }
    let filter = match interp {
        Interpolation::Nearest => return Ok(resize_nearest(img, width, height)),
        Interpolation::Bilinear => Filter::Triangle,
        Interpolation::Bicubic => Filter::Cubic,
    };
    let mut vertical = Coefficients::new(img.height, height, filter);
    if width == img.width {
        return Ok(resample_vertical(img, &vertical));
    }
    // Rows the vertical pass reads: the horizontal pass computes only these (all of them when the height
    // stays).
    let first_row = vertical.bounds[0].0;
    let last_row = vertical
        .bounds
        .last()
        .map_or(first_row, |&(start, n)| start + n);
    let horizontal = Coefficients::new(img.width, width, filter);
    let narrowed = resample_horizontal(img, first_row..last_row, &horizontal);
    if height == img.height {
        return Ok(narrowed);
    }
    for (start, _) in &mut vertical.bounds {
        *start -= first_row;
    }
    Ok(resample_vertical(&narrowed, &vertical))
}

/// Pillow's separable filters. The input is the distance from the output pixel's centre in (filter-scaled)
/// source pixels; each is zero beyond its support.
#[derive(Clone, Copy, Debug)]
enum Filter {
    /// `1 - |x|` on |x| < 1.
    Triangle,
    /// Keys' cubic with a = -0.5: `1.5|x|³ - 2.5|x|² + 1` on |x| < 1, `-0.5(|x|³ - 5|x|² + 8|x| - 4)` on
    /// 1 ≤ |x| < 2, written in Pillow's operation order so the f64 results agree to the last bit.
    Cubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Triangle => 1.0,
            Filter::Cubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Triangle if x < 1.0 => 1.0 - x,
            Filter::Cubic if x < 1.0 => (1.5 * x - 2.5) * x * x + 1.0,
            Filter::Cubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            _ => 0.0,
        }
    }
}

/// The fixed-point filter taps of one axis: output pixel `i` is `Σ_t weights[i·stride + t] ·
/// src[bounds[i].0 + t]` for `t < bounds[i].1`.
struct Coefficients {
    /// (first source pixel, number of taps) per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Taps per output pixel in `weights` (only the first `bounds[i].1` are used).
    stride: usize,
    /// Weights scaled by 2^PRECISION_BITS.
    weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's coefficients for resampling `in_size` pixels to `out_size` (both non-zero), with every
    /// floating-point operation in Pillow's order and precision so the rounded taps are identical.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
        // Pillow takes the box edges as f32 before widening: exact below 2^24, and kept for the rest.
        let scale = in_size as f32 as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut taps = vec![0f64; stride];
        for (i, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's (int) cast; that is Pillow's "rounding" of the bounds.
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (end - start).max(0) as usize;
            let mut sum = 0.0;
            for (t, tap) in taps[..n].iter_mut().enumerate() {
                let w =
                    filter.weight(((t as i64 + start) as f64 - center + 0.5) * inv_filter_scale);
                *tap = w;
                sum += w;
            }
            for (tap, fixed) in taps[..n].iter().zip(row.iter_mut()) {
                let w = if sum != 0.0 { tap / sum } else { *tap };
                let scaled = w * (1u32 << PRECISION_BITS) as f64;
                *fixed = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((start as usize, n));
        }
        Coefficients {
            bounds,
            stride,
            weights,
        }
    }

    /// The used taps of output pixel `i`, and the first source pixel they apply to.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.stride..i * self.stride + n])
    }
}

/// A fixed-point sum back to a byte: Pillow starts every sum at one half (2^(PRECISION_BITS-1)), so the
/// shift rounds to nearest, and clips the cubic filter's overshoot to 0..=255. Sums are i64 here; Pillow's
/// are 32-bit, which they fit (Σ|w| < 1.3 for these filters, and 1.3·255·2^22 < 2^31), so they agree.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every fixed-point sum starts from.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// The rows `rows` of `img` resampled horizontally to `c.bounds.len()` columns.
fn resample_horizontal(img: &Image, rows: std::ops::Range<usize>, c: &Coefficients) -> Image {
    let ch = img.channels;
    let out_width = c.bounds.len();
    let mut pixels = vec![0u8; rows.len() * out_width * ch];
    let src_rows = img.pixels.chunks_exact(img.width * ch).skip(rows.start);
    for (src, dst) in src_rows.zip(pixels.chunks_exact_mut(out_width * ch)) {
        for (x, out) in dst.chunks_exact_mut(ch).enumerate() {
            let (start, taps) = c.taps(x);
            let src = &src[start * ch..];
            for (k, o) in out.iter_mut().enumerate() {
                let sum = taps
                    .iter()
                    .enumerate()
                    .fold(HALF, |acc, (t, &w)| acc + src[t * ch + k] as i64 * w as i64);
                *o = clip8(sum);
            }
        }
    }
    Image {
        width: out_width,
        height: rows.len(),
        channels: ch,
        pixels,
    }
}

/// `img` resampled vertically to `c.bounds.len()` rows (the bounds index rows of `img`).
fn resample_vertical(img: &Image, c: &Coefficients) -> Image {
    let row_len = img.width * img.channels;
    let out_height = c.bounds.len();
    let mut pixels = vec![0u8; out_height * row_len];
    let mut sums = vec![0i64; row_len];
    for (y, dst) in pixels.chunks_exact_mut(row_len).enumerate() {
        let (start, taps) = c.taps(y);
        sums.fill(HALF);
        // Row by row, so the inner loop runs along contiguous memory; the sum is the same.
        for (t, &w) in taps.iter().enumerate() {
            let src = &img.pixels[(start + t) * row_len..(start + t + 1) * row_len];
            for (s, &p) in sums.iter_mut().zip(src) {
                *s += p as i64 * w as i64;
            }
        }
        for (o, &s) in dst.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    Image {
        width: img.width,
        height: out_height,
        channels: img.channels,
        pixels,
    }
}

/// Pillow's nearest-neighbour resize (an affine scale): the source index of each output pixel, or `None`
/// where it falls outside (Pillow fills those with 0; with a pure scale none does, but the rule is kept).
fn nearest_indices(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
    let step = in_size as f32 as f64 / out_size as f64;
    let mut pos = step * 0.5;
    (0..out_size)
        .map(|_| {
            // Pillow's COORD: negative → -1 (outside), else truncation.
            let i = (pos >= 0.0)
                .then_some(pos as usize)
                .filter(|&i| i < in_size);
            pos += step;
            i
        })
        .collect()
}

fn resize_nearest(img: &Image, width: usize, height: usize) -> Image {
    let ch = img.channels;
    let xs = nearest_indices(img.width, width);
    let ys = nearest_indices(img.height, height);
    let mut pixels = vec![0u8; width * height * ch];
    for (dst, sy) in pixels.chunks_exact_mut(width * ch).zip(ys) {
        let Some(sy) = sy else { continue };
        for (out, sx) in dst.chunks_exact_mut(ch).zip(&xs) {
            if let Some(sx) = *sx {
                out.copy_from_slice(img.pixel(sx, sy));
            }
        }
    }
    Image {
        width,
        height,
        channels: ch,
        pixels,
    }
}

/// Fails unless `img` has pixels and exactly width·height·channels samples (its fields are public, so it
/// may not have come from [`Image::new`]); the transforms index by the sizes.
fn check_image(op: &'static str, img: &Image) -> Result<()> {
    let (w, h, c) = (img.width, img.height, img.channels);
    if w == 0 || h == 0 || c == 0 {
        return Err(Error::invalid(op, format!("image {w}×{h}×{c} is empty")));
    }
    if Some(img.pixels.len()) != w.checked_mul(h).and_then(|v| v.checked_mul(c)) {
        return Err(Error::invalid(
            op,
            format!("{} samples are not a {w}×{h}×{c} image", img.pixels.len()),
        ));
    }
    Ok(())
}

/// The output size of torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size · long / short)` (truncated, as torchvision computes it in Python floats), so a square stays
/// square. Returns (width, height).
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // size·long and short are exact in f64 (below 2^53) and the division is correctly rounded: Python's
    // int / int gives the same float.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `Resize(size)` with an int (timm's evaluation resize): `img` scaled so that its shorter side
/// is `size` (see [`shorter_side_size`]) with [`resize`]. An image already that size is returned as a copy.
pub fn resize_shorter(img: &Image, size: usize, interp: Interpolation) -> Result<Image> {
    if size == 0 {
        return Err(Error::invalid("resize_shorter", "target size is 0"));
    }
    check_image("resize_shorter", img)?;
    let (w, h) = shorter_side_size(img.width, img.height, size);
    resize(img, w, h, interp)
}

/// The `width × height` region of `img` whose top-left pixel is (left, top), as PIL's
/// `Image.crop((left, top, left + width, top + height))` (torchvision `F.crop`). A region reaching outside
/// the image, or an empty one, is an error.
pub fn crop(img: &Image, left: usize, top: usize, width: usize, height: usize) -> Result<Image> {
    check_image("crop", img)?;
    let fits =
        |start: usize, len: usize, size: usize| start.checked_add(len).is_some_and(|e| e <= size);
    if width == 0 || height == 0 || !fits(left, width, img.width) || !fits(top, height, img.height)
    {
        return Err(Error::invalid(
            "crop",
            format!(
                "region {width}×{height} at ({left}, {top}) is empty or outside the {}×{} image",
                img.width, img.height
            ),
        ));
    }
    let ch = img.channels;
    let mut pixels = Vec::with_capacity(width * height * ch);
    for row in img
        .pixels
        .chunks_exact(img.width * ch)
        .skip(top)
        .take(height)
    {
        pixels.extend_from_slice(&row[left * ch..(left + width) * ch]);
    }
    Ok(Image {
        width,
        height,
        channels: ch,
        pixels,
    })
}

/// `img` padded with black: `left`/`top`/`right`/`bottom` pixels on each side (PIL `ImageOps.expand` with
/// fill 0, which torchvision's `F.pad(img, [l, t, r, b], fill=0)` is for 8-bit images).
fn pad(img: &Image, left: usize, top: usize, right: usize, bottom: usize) -> Image {
    let ch = img.channels;
    let width = img.width + left + right;
    let height = img.height + top + bottom;
    let mut pixels = vec![0u8; width * height * ch];
    for (y, row) in img.pixels.chunks_exact(img.width * ch).enumerate() {
        let start = ((y + top) * width + left) * ch;
        pixels[start..start + row.len()].copy_from_slice(row);
    }
    Image {
        width,
        height,
        channels: ch,
        pixels,
    }
}

/// Offset of a centred crop of `crop` pixels out of `size`: torchvision's `int(round((size - crop) / 2.0))`,
/// which rounds half to even (a surplus of 1 gives 0, of 3 gives 2, of 5 gives 2).
fn center_offset(size: usize, crop: usize) -> usize {
    ((size - crop) as f64 / 2.0).round_ties_even() as usize
}

/// torchvision's `CenterCrop((height, width))`: the centred `width × height` region, at
/// `top = int(round((h - height) / 2))` and `left = int(round((w - width) / 2))` (Python's round: half to
/// even). Along a side shorter than the crop the image is first padded with black, `(crop - side) // 2` before
/// and `(crop - side + 1) // 2` after (the odd pixel goes right / bottom), as torchvision pads. A zero crop
/// size or an empty image is an error.
pub fn center_crop(img: &Image, width: usize, height: usize) -> Result<Image> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            "center_crop",
            format!("crop size {width}×{height} has a zero side"),
        ));
    }
    check_image("center_crop", img)?;
    let padded;
    let img = if width > img.width || height > img.height {
        let (dw, dh) = (
            width.saturating_sub(img.width),
            height.saturating_sub(img.height),
        );
        padded = pad(img, dw / 2, dh / 2, dw.div_ceil(2), dh.div_ceil(2));
        &padded
    } else {
        img
    };
    crop(
        img,
        center_offset(img.width, width),
        center_offset(img.height, height),
        width,
        height,
    )
}

/// `img` mirrored left to right (PIL `Image.transpose(FLIP_LEFT_RIGHT)`, what torchvision's
/// `RandomHorizontalFlip` applies).
pub fn hflip(img: &Image) -> Image {
    let ch = img.channels.max(1);
    let mut pixels = Vec::with_capacity(img.pixels.len());
    for row in img.pixels.chunks_exact((img.width * ch).max(1)) {
        for px in row.chunks_exact(ch).rev() {
            pixels.extend_from_slice(px);
        }
    }
    Image {
        width: img.width,
        height: img.height,
        channels: img.channels,
        pixels,
    }
}

/// A uniform f64 in [0, 1): the top 53 bits of the generator, so every value is a multiple of 2^-53 (what
/// torch's `uniform_` is to its generator).
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// torchvision's `RandomResizedCrop` (timm's training crop): a region of random area and aspect ratio, resized
/// to the network's input size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Range of the region's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the region's aspect ratio (width / height), drawn log-uniformly.
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    /// torchvision's and timm's defaults: 8 % to 100 % of the area, aspect ratio 3/4 to 4/3.
    fn default() -> Self {
        RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

impl RandomResizedCrop {
    /// A crop with the given area and ratio ranges; each range must be ordered, the area fractions in
    /// (0, 1] and the ratios positive and finite.
    pub fn new(scale: (f64, f64), ratio: (f64, f64)) -> Result<Self> {
        let ok_scale = scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0;
        let ok_ratio = ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite();
        if !ok_scale || !ok_ratio {
            return Err(Error::invalid(
                "RandomResizedCrop::new",
                format!(
                    "scale {scale:?} must be an ordered range in (0, 1] and ratio {ratio:?} an ordered \
                     range of positive numbers"
                ),
            ));
        }
        Ok(RandomResizedCrop { scale, ratio })
    }

    /// The region to crop from a `width × height` image, as (left, top, width, height): torchvision's
    /// `RandomResizedCrop.get_params`. Up to 10 attempts draw an area `A·U(scale)` and a ratio
    /// `r = exp(U(ln ratio.0, ln ratio.1))`, giving `w = round(√(area·r))`, `h = round(√(area/r))`; the first
    /// with `0 < w ≤ width` and `0 < h ≤ height` is placed at a uniform top in `0..=height-h`, then a uniform
    /// left in `0..=width-w`. If none fits: the largest centred region whose ratio is clamped into `ratio`
    /// (the whole image if its own ratio is inside). The region is always inside the image and non-empty
    /// (for a non-empty image).
    pub fn params(
        &self,
        width: usize,
        height: usize,
        rng: &mut SplitMix64,
    ) -> (usize, usize, usize, usize) {
        let area = (width * height) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * (self.scale.0 + (self.scale.1 - self.scale.0) * uniform(rng));
            let aspect = (log_lo + (log_hi - log_lo) * uniform(rng)).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
                let (w, h) = (w as usize, h as usize);
                let top = rng.below((height - h + 1) as u64) as usize;
                let left = rng.below((width - w + 1) as u64) as usize;
                return (left, top, w, h);
            }
        }
        let in_ratio = width as f64 / height as f64;
        let lo = self.ratio.0.min(self.ratio.1);
        let hi = self.ratio.0.max(self.ratio.1);
        // torchvision can round a side to 0 on a sliver of an image; keep at least one pixel.
        let (w, h) = if in_ratio < lo {
            let h = (width as f64 / lo).round_ties_even() as usize;
            (width, h.clamp(1, height.max(1)))
        } else if in_ratio > hi {
            let w = (height as f64 * hi).round_ties_even() as usize;
            (w.clamp(1, width.max(1)), height)
        } else {
            (width, height)
        };
        ((width - w) / 2, (height - h) / 2, w, h)
    }

    /// torchvision's `RandomResizedCrop(size)(img)`: the region of [`RandomResizedCrop::params`] cropped and
    /// resized to `out_width × out_height` (`F.resized_crop`).
    pub fn apply(
        &self,
        img: &Image,
        out_width: usize,
        out_height: usize,
        interp: Interpolation,
        rng: &mut SplitMix64,
    ) -> Result<Image> {
        check_image("RandomResizedCrop::apply", img)?;
        let (left, top, w, h) = self.params(img.width, img.height, rng);
        resize(&crop(img, left, top, w, h)?, out_width, out_height, interp)
    }
}

/// torchvision's `ToTensor()` then `Normalize(mean, std)`: the HWC bytes of `img` into `out` as CHW f32,
/// `(p / 255 - mean[c]) / std[c]`, computed in f32 in that order as torch does, so the values are the
/// same. `mean` and `std` need one entry per channel, every std non-zero, and `out` exactly C·H·W values.
///
/// This runs for every image of every batch, so each channel's 256 possible values are tabulated first and
/// the pixels become lookups.
pub fn normalize_into(img: &Image, mean: &[f32], std: &[f32], out: &mut [f32]) -> Result<()> {
    let ch = img.channels;
    if mean.len() != ch || std.len() != ch {
        return Err(Error::invalid(
            "normalize_into",
            format!(
                "{} means and {} stds for a {ch}-channel image",
                mean.len(),
                std.len()
            ),
        ));
    }
    if std.contains(&0.0) {
        return Err(Error::invalid(
            "normalize_into",
            format!("std {std:?} has a zero (division by zero)"),
        ));
    }
    let plane = img.width * img.height;
    if out.len() != plane * ch || img.pixels.len() != plane * ch {
        return Err(Error::invalid(
            "normalize_into",
            format!(
                "output of {} values for a {}×{}×{ch} image (needs {})",
                out.len(),
                img.width,
                img.height,
                plane * ch
            ),
        ));
    }
    for (c, dst) in out.chunks_exact_mut(plane.max(1)).enumerate().take(ch) {
        let table: Vec<f32> = (0..=255u8)
            .map(|p| (p as f32 / 255.0 - mean[c]) / std[c])
            .collect();
        for (o, px) in dst.iter_mut().zip(img.pixels.chunks_exact(ch)) {
            *o = table[px[c] as usize];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: usize, height: usize, pixels: &[u8]) -> Image {
        Image::new(width, height, 1, pixels.to_vec()).unwrap()
    }

    /// An image whose pixel (x, y) channel k is a distinct number, to see where pixels went.
    fn numbered(width: usize, height: usize, channels: usize) -> Image {
        let pixels = (0..width * height * channels).map(|i| i as u8).collect();
        Image::new(width, height, channels, pixels).unwrap()
    }

    #[test]
    fn interpolation_names_round_trip_and_unknown_lists_known() {
        for i in Interpolation::ALL {
            assert_eq!(Interpolation::parse(i.name()).unwrap(), i);
        }
        let err = Interpolation::parse("lanczos").unwrap_err().to_string();
        assert!(
            err.contains("lanczos") && err.contains("nearest, bilinear, bicubic"),
            "{err}"
        );
    }

    #[test]
    fn bilinear_4x1_to_2x1_matches_hand_computed_pillow() {
        // scale 2 → the triangle is stretched to support 2. Output 0: centre 1, taps x = 0, 1, 2 at
        // (x - 1 + 0.5) / 2 = -0.25, 0.25, 0.75 → weights 0.75, 0.75, 0.25, normalised 3/7, 3/7, 1/7.
        // Output 1: centre 3, taps 1, 2, 3 → 1/7, 3/7, 3/7. Fixed point: 3/7·2²² → 1797559, 1/7·2²² → 599186.
        let img = grey(4, 1, &[10, 20, 200, 255]);
        let out = resize(&img, 2, 1, Interpolation::Bilinear).unwrap();
        // (3·10 + 3·20 + 200) / 7 = 41.43 → 41; (20 + 3·200 + 3·255) / 7 = 197.86 → 198.
        assert_eq!(out.pixels, [41, 198]);
        // Exact in real numbers: (3·70 + 140) / 7 = 50 and (70 + 3·140 + 3·210) / 7 = 160; the rounded taps
        // still land on them.
        let img = grey(4, 1, &[0, 70, 140, 210]);
        assert_eq!(
            resize(&img, 2, 1, Interpolation::Bilinear).unwrap().pixels,
            [50, 160]
        );
        // The taps themselves.
        let c = Coefficients::new(4, 2, Filter::Triangle);
        assert_eq!(c.bounds, [(0, 3), (1, 3)]);
        assert_eq!(c.taps(0).1, [1797559, 1797559, 599186]);
        assert_eq!(c.taps(1).1, [599186, 1797559, 1797559]);
    }

    #[test]
    fn bicubic_clips_overshoot_and_keeps_constants() {
        let img = grey(4, 1, &[0, 0, 255, 255]);
        let out = resize(&img, 8, 1, Interpolation::Bicubic).unwrap();
        // A step overshoots below 0 and above 255 with the cubic's negative lobes; both are clipped.
        assert_eq!(out.pixels.first(), Some(&0));
        assert_eq!(out.pixels.last(), Some(&255));
        assert!(
            out.pixels.windows(2).all(|w| w[0] <= w[1]),
            "{:?}",
            out.pixels
        );
        let flat = Image::new(5, 3, 3, vec![77; 45]).unwrap();
        for interp in Interpolation::ALL {
            for (w, h) in [(2, 2), (11, 7), (5, 1), (1, 3)] {
                let out = resize(&flat, w, h, interp).unwrap();
                assert_eq!((out.width, out.height, out.channels), (w, h, 3));
                assert!(out.pixels.iter().all(|&p| p == 77), "{interp:?} {w}×{h}");
            }
        }
    }

    #[test]
    fn center_crop_offsets_round_half_to_even() {
        // Surplus 1 → round(0.5) = 0; surplus 3 → round(1.5) = 2; surplus 5 → round(2.5) = 2; 2 → 1.
        assert_eq!(
            [1, 3, 5, 2, 0].map(|s| center_offset(10 + s, 10)),
            [0, 2, 2, 1, 0]
        );
        // A 5×6 image (pixel value = y·5 + x), crop 2×3: left = round(1.5) = 2, top = round(1.5) = 2.
        let img = numbered(5, 6, 1);
        let out = center_crop(&img, 2, 3).unwrap();
        assert_eq!((out.width, out.height), (2, 3));
        assert_eq!(out.pixels, [12, 13, 17, 18, 22, 23]);
    }

    #[test]
    fn uniform_is_in_unit_interval() {
        let mut rng = SplitMix64::new(0);
        let draws: Vec<f64> = (0..10_000).map(|_| uniform(&mut rng)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
