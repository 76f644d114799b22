//! Image-file datasets: an [`ImageSet`] decodes the images of an [`ImageList`] (in parallel, once), applies
//! the [`Preprocess`] of the weights in use, and keeps the result as 8-bit pixels; a batch normalises them
//! to f32 on the way out.
//!
//! Preprocessing follows timm for the weights' `pretrained_cfg`:
//! - **evaluation** (`crop_mode` "center"): resize the shorter side to ⌊size / crop_pct⌋, then centre-crop
//!   size × size; ("squash"): resize to ⌊size / crop_pct⌋ square, then centre-crop. The VTAB-1k protocol of
//!   the literature is squash with crop_pct 1: a straight resize to 224 × 224 ([`Preprocess::vtab`]);
//! - **training** without augmentation: the evaluation transform; with augmentation: timm's
//!   random-resized-crop (scale 0.08–1, ratio 3/4–4/3) to size × size and a horizontal flip with
//!   probability ½;
//! - then (x / 255 − mean) / std per channel.
//!
//! A set that is evaluated keeps the transformed size × size pixels; a set with augmentation keeps the
//! decoded images (their shorter side reduced to at most [`AUGMENT_MAX_SIDE`] × size, so that a folder of
//! camera photos does not fill the memory) and crops them afresh for every batch. A set larger than the
//! memory budget is not kept: its images are decoded again for every batch ([`Residency::Stream`]).
//!
//! Every random choice of a batch comes from the batch's generator, one seed per image drawn in order, so
//! a batch is the same whatever the thread count and a resumed run continues bit-exactly.

use super::image::{decode_file, Image};
use super::layout::ImageList;
use super::transform::{self, Interpolation, RandomResizedCrop};
use super::{Batch, Examples, Fnv, SplitMix64};
use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

/// ImageNet's channel means (timm's `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations (timm's `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// timm's default crop_pct.
pub const DEFAULT_CROP_PCT: f64 = 0.875;
/// With augmentation, decoded images are kept with their shorter side at most this many times the input
/// size.
pub const AUGMENT_MAX_SIDE: usize = 2;

/// How the evaluation transform fits an image to the input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropMode {
    /// Resize the shorter side to size / crop_pct (aspect kept), centre-crop.
    Center,
    /// Resize both sides to size / crop_pct (aspect lost), centre-crop.
    Squash,
}

impl CropMode {
    /// timm's name (`center`, `squash`); an error for anything else.
    pub fn parse(s: &str) -> Result<CropMode> {
        match s {
            "center" => Ok(CropMode::Center),
            "squash" => Ok(CropMode::Squash),
            other => Err(Error::invalid(
                "preprocess",
                format!("crop_mode `{other}` is not supported (known: center, squash)"),
            )),
        }
    }
    /// timm's name.
    pub fn name(self) -> &'static str {
        match self {
            CropMode::Center => "center",
            CropMode::Squash => "squash",
        }
    }
}

/// How images become network inputs: timm's `pretrained_cfg` fields plus the augmentation switch.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Side of the square network input.
    pub size: usize,
    /// Channels of the network input (1 or 3).
    pub channels: usize,
    /// Fraction of the resized image the centre crop keeps.
    pub crop_pct: f64,
    /// How the evaluation transform resizes.
    pub crop_mode: CropMode,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Random-resized-crop and flip for training batches.
    pub augment: bool,
}

impl Preprocess {
    /// timm's defaults for ImageNet weights at `size`: centre crop 0.875, bicubic, ImageNet mean/std, RGB.
    pub fn imagenet(size: usize) -> Preprocess {
        Preprocess {
            size,
            channels: 3,
            crop_pct: DEFAULT_CROP_PCT,
            crop_mode: CropMode::Center,
            interpolation: Interpolation::Bicubic,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            augment: false,
        }
    }

    /// The VTAB-1k protocol of the PEFT-for-vision literature: resize straight to 224 × 224 (bicubic), no
    /// crop, no augmentation, ImageNet mean/std.
    pub fn vtab() -> Preprocess {
        Preprocess {
            crop_pct: 1.0,
            crop_mode: CropMode::Squash,
            ..Preprocess::imagenet(224)
        }
    }

    /// A named preset: `vtab` or `imagenet` (at 224).
    pub fn preset(name: &str) -> Result<Preprocess> {
        match name {
            "vtab" => Ok(Preprocess::vtab()),
            "imagenet" => Ok(Preprocess::imagenet(224)),
            other => Err(Error::invalid(
                "preprocess",
                format!("unknown preprocessing preset `{other}` (known: vtab, imagenet)"),
            )),
        }
    }

    /// Checks sizes, channels and statistics.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("preprocess", msg));
        if self.size == 0 {
            return bad("the input size must be positive".into());
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(format!(
                "images have 1 or 3 channels, not {}",
                self.channels
            ));
        }
        if !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return bad(format!("crop_pct must be in (0, 1], got {}", self.crop_pct));
        }
        if self.mean.len() != self.channels || self.std.len() != self.channels {
            return bad(format!(
                "mean {:?} and std {:?} need one value per channel ({})",
                self.mean, self.std, self.channels
            ));
        }
        if self.std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return bad(format!("std {:?} must be positive", self.std));
        }
        Ok(())
    }

    /// The side the evaluation transform resizes to before cropping: ⌊size / crop_pct⌋ (timm's
    /// `math.floor`; the small epsilon keeps 224 / 1.0 at 224 despite the division's rounding).
    pub fn scale_size(&self) -> usize {
        ((self.size as f64 / self.crop_pct) + 1e-9).floor() as usize
    }

    /// The deterministic transform: resize, centre-crop to size × size.
    pub fn eval_transform(&self, img: &Image) -> Result<Image> {
        let scale = self.scale_size();
        let resized = match self.crop_mode {
            CropMode::Center => transform::resize_shorter(img, scale, self.interpolation)?,
            CropMode::Squash => transform::resize(img, scale, scale, self.interpolation)?,
        };
        if resized.width == self.size && resized.height == self.size {
            return Ok(resized);
        }
        transform::center_crop(&resized, self.size, self.size)
    }

    /// The random training transform: random-resized-crop to size × size, then a flip with probability ½.
    pub fn train_transform(&self, img: &Image, rng: &mut SplitMix64) -> Result<Image> {
        let crop = RandomResizedCrop::default().apply(
            img,
            self.size,
            self.size,
            self.interpolation,
            rng,
        )?;
        Ok(if rng.next_u64() >> 63 == 1 {
            transform::hflip(&crop)
        } else {
            crop
        })
    }

    /// What the set keeps of a decoded image: the evaluation transform's output, or (with augmentation) the
    /// image itself with its shorter side reduced to at most [`AUGMENT_MAX_SIDE`] × size.
    fn kept(&self, img: Image) -> Result<Image> {
        if !self.augment {
            return self.eval_transform(&img);
        }
        let cap = AUGMENT_MAX_SIDE * self.size;
        if img.width.min(img.height) > cap {
            transform::resize_shorter(&img, cap, self.interpolation)
        } else {
            Ok(img)
        }
    }

    /// A one-line description (for logs and fingerprints).
    pub fn describe(&self) -> String {
        format!(
            "{}×{}×{} {} crop_pct {} {} mean {:?} std {:?}{}",
            self.channels,
            self.size,
            self.size,
            self.crop_mode.name(),
            self.crop_pct,
            self.interpolation.name(),
            self.mean,
            self.std,
            if self.augment {
                " + random-resized-crop and flip"
            } else {
                ""
            }
        )
    }
}

/// Where an [`ImageSet`]'s pixels live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Decoded once and kept in memory as 8-bit pixels.
    Memory,
    /// Decoded again for every batch (a set larger than the memory budget).
    Stream,
}

/// The memory budget for keeping a set's pixels: `LIERA_IMAGE_CACHE_MIB` mebibytes, 4 GiB by default.
pub fn memory_budget() -> usize {
    std::env::var("LIERA_IMAGE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(4 << 30, |m| m << 20)
}

/// What to do with an image that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BadImages {
    /// Stop with an error naming the file.
    #[default]
    Fail,
    /// Leave it out and count it (one warning for the set).
    Skip,
}

/// Labelled image files, preprocessed for a network: see the module documentation.
pub struct ImageSet {
    list: ImageList,
    preprocess: Preprocess,
    residency: Residency,
    /// The kept images (Memory), in list order.
    images: Vec<Image>,
    /// Whether the kept images are the evaluation transform's output (loaded without augmentation) rather
    /// than the decoded images.
    transformed: bool,
    labels: Vec<usize>,
    /// Images left out as unreadable (with [`BadImages::Skip`]).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSet")
            .field("images", &self.labels.len())
            .field("classes", &self.list.classes())
            .field("preprocess", &self.preprocess.describe())
            .field("residency", &self.residency)
            .finish()
    }
}

fn progress(len: usize, label: &str, show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>22} [{bar:28}] {pos}/{len} images  {per_sec}  ({elapsed}, eta {eta})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

impl ImageSet {
    /// Decodes and preprocesses every image of `list` in parallel (a progress bar on stderr when
    /// `show_progress`), kept in memory unless the set is larger than [`memory_budget`], in which case every
    /// image is still decoded once now, to find bad files before training starts.
    pub fn load(
        list: ImageList,
        preprocess: Preprocess,
        bad: BadImages,
        label: &str,
        show_progress: bool,
    ) -> Result<ImageSet> {
        preprocess.check()?;
        if list.items.is_empty() {
            return Err(Error::invalid("data", format!("{label}: no images")));
        }
        let per_image = preprocess.size * preprocess.size * preprocess.channels;
        let residency = if !preprocess.augment
            && list.items.len().saturating_mul(per_image) > memory_budget()
        {
            Residency::Stream
        } else {
            Residency::Memory
        };
        let bar = progress(list.items.len(), label, show_progress);
        let decoded: Vec<Result<Option<Image>>> = list
            .items
            .par_iter()
            .map(|item| {
                let r = decode_file(&item.path, preprocess.channels)
                    .map_err(|e| with_origin(e, &item.origin))
                    .and_then(|img| preprocess.kept(img));
                bar.inc(1);
                r.map(|img| (residency == Residency::Memory).then_some(img))
            })
            .collect();
        bar.finish_and_clear();
        let mut images = Vec::new();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for (item, r) in list.items.iter().zip(decoded) {
            match (r, bad) {
                (Ok(img), _) => {
                    images.extend(img);
                    items.push(item.clone());
                }
                (Err(e), BadImages::Skip) => skipped.push(e.to_string()),
                (Err(e), BadImages::Fail) => return Err(e),
            }
        }
        if items.is_empty() {
            return Err(Error::invalid(
                "data",
                format!(
                    "{label}: every image was unreadable ({} skipped)",
                    skipped.len()
                ),
            ));
        }
        let labels = items.iter().map(|i| i.label).collect();
        Ok(ImageSet {
            list: ImageList {
                items,
                class_names: list.class_names,
            },
            transformed: !preprocess.augment,
            preprocess,
            residency,
            images,
            labels,
            skipped,
        })
    }

    /// The class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.list.class_names
    }

    /// The preprocessing applied.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Where the pixels live.
    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// Bytes of kept pixels.
    pub fn resident_bytes(&self) -> usize {
        self.images.iter().map(|i| i.pixels.len()).sum()
    }

    /// The examples at `indices` (repeats allowed) as a new set sharing the preprocessing.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.labels.len()) {
            return Err(Error::invalid(
                "ImageSet::subset",
                format!("index {bad} out of range for {} images", self.labels.len()),
            ));
        }
        Ok(ImageSet {
            list: ImageList {
                items: indices
                    .iter()
                    .map(|&i| self.list.items[i].clone())
                    .collect(),
                class_names: self.list.class_names.clone(),
            },
            preprocess: self.preprocess.clone(),
            transformed: self.transformed,
            residency: self.residency,
            images: if self.residency == Residency::Memory {
                indices.iter().map(|&i| self.images[i].clone()).collect()
            } else {
                Vec::new()
            },
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            skipped: Vec::new(),
        })
    }

    /// The same images with augmentation switched on or off for training batches. Only a set loaded with
    /// augmentation keeps the decoded images that random crops need, so switching it on for a set loaded
    /// without is an error.
    pub fn with_augment(mut self, augment: bool) -> Result<ImageSet> {
        if augment && !self.preprocess.augment {
            return Err(Error::invalid(
                "ImageSet::with_augment",
                "this set was loaded without augmentation: load it with Preprocess::augment",
            ));
        }
        self.preprocess.augment = augment;
        Ok(self)
    }

    /// The network input of example `i`: for training batches (`seed` given, augmentation on) a random
    /// crop; otherwise the evaluation transform.
    fn input(&self, i: usize, seed: Option<u64>) -> Result<Image> {
        let stored;
        let img = match self.residency {
            Residency::Memory => &self.images[i],
            Residency::Stream => {
                let item = &self.list.items[i];
                stored = decode_file(&item.path, self.preprocess.channels)
                    .map_err(|e| with_origin(e, &item.origin))?;
                &stored
            }
        };
        match (self.preprocess.augment, seed) {
            (true, Some(s)) => self
                .preprocess
                .train_transform(img, &mut SplitMix64::new(s)),
            _ if self.transformed && self.residency == Residency::Memory => Ok(img.clone()),
            _ => self.preprocess.eval_transform(img),
        }
    }
}

/// `e` with the list line or file that named the image in front, when the error does not already say it.
fn with_origin(e: Error, origin: &str) -> Error {
    match e {
        Error::Format { path, msg } if path != origin && origin.contains(':') => Error::Format {
            path: origin.to_string(),
            msg: format!("{path}: {msg}"),
        },
        e => e,
    }
}

impl Examples for ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn classes(&self) -> usize {
        self.list.classes()
    }
    fn image_dims(&self) -> [usize; 3] {
        [
            self.preprocess.channels,
            self.preprocess.size,
            self.preprocess.size,
        ]
    }
    fn gather(&self, indices: &[usize], augment: Option<&mut SplitMix64>) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.labels.len()) {
            return Err(Error::invalid(
                "ImageSet::gather",
                format!("index {bad} out of range for {} images", self.labels.len()),
            ));
        }
        // One seed per image, drawn in order: the batch does not depend on the thread count.
        let seeds: Vec<Option<u64>> = match augment {
            Some(rng) if self.preprocess.augment => {
                indices.iter().map(|_| Some(rng.next_u64())).collect()
            }
            _ => vec![None; indices.len()],
        };
        let [c, h, w] = self.image_dims();
        let per_image = c * h * w;
        let mut images = vec![0f32; indices.len() * per_image];
        images
            .par_chunks_mut(per_image)
            .zip(indices.par_iter().zip(seeds.par_iter()))
            .try_for_each(|(out, (&i, &seed))| {
                let (mean, std) = (&self.preprocess.mean, &self.preprocess.std);
                if self.residency == Residency::Memory && self.transformed {
                    // Already transformed: normalise in place of a copy.
                    return transform::normalize_into(&self.images[i], mean, std, out);
                }
                transform::normalize_into(&self.input(i, seed)?, mean, std, out)
            })?;
        Ok(Batch {
            images,
            dims: [indices.len(), c, h, w],
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        })
    }
    fn fingerprint(&self) -> String {
        let mut h = Fnv::new();
        h.mix_bytes(self.preprocess.describe().as_bytes());
        for item in &self.list.items {
            h.mix_bytes(item.path.to_string_lossy().as_bytes());
            h.mix(item.label as u64);
            h.mix(std::fs::metadata(&item.path).map_or(0, |m| m.len()));
        }
        h.hex()
    }
}
