//! Data: the IDX reader ([`idx`]), the embedded MNIST / Fashion-MNIST subsets and directory loading
//! ([`embedded`]), image files ([`image`] decoding, [`transform`] resizing and cropping as timm does,
//! [`layout`] finding them on disk, [`images`] the preprocessed [`ImageSet`]), and seeded mini-batching
//! with augmentation ([`batch`]) over any [`Examples`].
//!
//! A [`Dataset`] holds images as f32 in (N, C, H, W) order, already scaled to [0, 1] and normalised by a
//! [`Normalization`] (mean, std), so batches go to the device as they are. [`Dataset::pad_to`] pads the
//! 28×28 digits to 32×32, the size the ConvNeXt stem (÷4) and three downsampling layers (÷2 each) divide.
//!
//! ```
//! use liera::data::{embedded_fashion_mnist, Batcher};
//! let splits = embedded_fashion_mnist()?.pad_to(32)?;
//! assert_eq!(splits.train.len(), 1000);
//! let mut batches = Batcher::new(&splits.train, 64, 7)?;
//! let batch = batches.next_batch()?;
//! assert_eq!(batch.dims, [64, 1, 32, 32]);
//! # Ok::<(), liera::Error>(())
//! ```

pub mod batch;
pub mod embedded;
pub mod idx;
pub mod image;
pub mod images;
pub mod layout;
pub mod transform;

pub use batch::{Augment, Batch, Batcher, RandomTranslate, Sequential, SplitMix64};
pub use embedded::{embedded_fashion_mnist, embedded_mnist, load_dir, load_dir_with};
pub use idx::{parse_idx, read_idx_file, Idx, RawImages};
pub use image::{decode_file, Image};
pub use images::{BadImages, CropMode, ImageSet, Preprocess, Residency};
pub use layout::{detect, ImageList, Layout, ListedImage};

use crate::error::{Error, Result};

/// A labelled set of images that batches are drawn from: an in-memory [`Dataset`] of normalised values, or
/// an [`ImageSet`] of image files decoded and transformed on the way in. [`Batcher`] (training) and
/// [`Sequential`] (evaluation) draw from either.
pub trait Examples: Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// One label per example, each below [`Examples::classes`].
    fn labels(&self) -> &[usize];
    /// Number of classes.
    fn classes(&self) -> usize;
    /// (C, H, W) of every image of a batch.
    fn image_dims(&self) -> [usize; 3];
    /// The examples at `indices` as a normalised (N, C, H, W) batch. `augment` is the training randomness of
    /// this batch (a set with random training transforms draws from it); `None` asks for the deterministic
    /// evaluation transform.
    fn gather(&self, indices: &[usize], augment: Option<&mut SplitMix64>) -> Result<Batch>;
    /// The normalised value of a black pixel, where it is one number for every channel (what translation
    /// fills the border with); `None` for sets normalised per channel.
    fn background(&self) -> Option<f32> {
        None
    }
    /// A stable fingerprint of the examples (so a checkpoint or a cache entry is never reused for other data).
    fn fingerprint(&self) -> String;
    /// How many examples each class has.
    fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &l in self.labels() {
            if let Some(c) = counts.get_mut(l) {
                *c += 1;
            }
        }
        counts
    }
}

/// Indices of `k` examples of every class of `labels` (each below `classes`), by a seeded shuffle within
/// each class, and of the rest (both in ascending order); every class must keep at least `min_left`
/// examples beyond the `k`. The stratified selection behind [`Dataset::take_per_class`],
/// [`Dataset::hold_out_per_class`] and the held-out split of an image folder.
pub fn per_class_indices(
    labels: &[usize],
    classes: usize,
    op: &'static str,
    k: usize,
    min_left: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class
            .get_mut(l)
            .ok_or_else(|| {
                Error::invalid(
                    op,
                    format!("label {l} of example {i} is not below {classes}"),
                )
            })?
            .push(i);
    }
    let needed = k.saturating_add(min_left);
    let mut rng = SplitMix64::new(seed);
    let (mut chosen, mut rest) = (Vec::new(), Vec::new());
    for (class, mut members) in by_class.into_iter().enumerate() {
        if members.len() < needed {
            return Err(Error::invalid(
                op,
                format!(
                    "class {class} has {} examples; taking {k} needs at least {needed}",
                    members.len(),
                ),
            ));
        }
        rng.shuffle(&mut members);
        chosen.extend_from_slice(&members[..k]);
        rest.extend_from_slice(&members[k..]);
    }
    chosen.sort_unstable();
    rest.sort_unstable();
    Ok((chosen, rest))
}

/// A 64-bit FNV-1a hash: short, stable across runs and platforms (unlike `std`'s hasher), enough to name a
/// cache entry or fingerprint a dataset.
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

impl Fnv {
    /// The hash of nothing.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// Mixes one 64-bit value in.
    pub fn mix(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    /// Mixes every byte of `bytes` in.
    pub fn mix_bytes(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.mix(b as u64));
    }
    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Per-channel affine normalisation applied after scaling pixels to [0, 1]: `x' = (x - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Mean of the [0, 1]-scaled pixels, subtracted first.
    pub mean: f32,
    /// Standard deviation the centred pixels are divided by.
    pub std: f32,
}

impl Normalization {
    /// The commonly used MNIST training-set statistics.
    pub const MNIST: Normalization = Normalization {
        mean: 0.1307,
        std: 0.3081,
    };
    /// The commonly used Fashion-MNIST training-set statistics.
    pub const FASHION_MNIST: Normalization = Normalization {
        mean: 0.2860,
        std: 0.3530,
    };
    /// No normalisation: values stay in [0, 1].
    pub const IDENTITY: Normalization = Normalization {
        mean: 0.0,
        std: 1.0,
    };

    /// Mean and standard deviation of `pixels` scaled to [0, 1] (computed in f64). A constant or empty image
    /// set gets std 1 so that normalising never divides by zero.
    pub fn from_pixels(pixels: &[u8]) -> Normalization {
        if pixels.is_empty() {
            return Normalization::IDENTITY;
        }
        let mut histogram = [0u64; 256];
        for &p in pixels {
            histogram[p as usize] += 1;
        }
        let n = pixels.len() as f64;
        let mean = histogram
            .iter()
            .enumerate()
            .map(|(v, &c)| v as f64 / 255.0 * c as f64)
            .sum::<f64>()
            / n;
        let var = histogram
            .iter()
            .enumerate()
            .map(|(v, &c)| (v as f64 / 255.0 - mean).powi(2) * c as f64)
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        Normalization {
            mean: mean as f32,
            std: if std > 1e-6 { std as f32 } else { 1.0 },
        }
    }

    /// The normalised value of pixel byte `p`.
    pub fn apply(&self, p: u8) -> f32 {
        (p as f32 / 255.0 - self.mean) / self.std
    }

    /// The normalised value of a black (zero) pixel: what padding and translation fill with, so that the
    /// added border looks like the images' own background.
    pub fn background(&self) -> f32 {
        self.apply(0)
    }
}

/// Labelled images in (N, C, H, W) order, normalised, with labels in `0..classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// N·C·H·W values, row-major.
    pub images: Vec<f32>,
    /// One label per image, each in `0..classes`.
    pub labels: Vec<usize>,
    /// Channels C of every image.
    pub channels: usize,
    /// Height H of every image.
    pub height: usize,
    /// Width W of every image.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
    /// How the images were normalised (and so which value a black pixel has).
    pub normalization: Normalization,
}

/// A training split and a test split of the same task.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// The training split.
    pub train: Dataset,
    /// The test split.
    pub test: Dataset,
}

impl Splits {
    /// Both splits padded to `size × size` (see [`Dataset::pad_to`]).
    pub fn pad_to(self, size: usize) -> Result<Splits> {
        Ok(Splits {
            train: self.train.pad_to(size)?,
            test: self.test.pad_to(size)?,
        })
    }
    /// Both splits with `channels` channels (see [`Dataset::with_channels`]).
    pub fn with_channels(self, channels: usize) -> Result<Splits> {
        Ok(Splits {
            train: self.train.with_channels(channels)?,
            test: self.test.with_channels(channels)?,
        })
    }
}

impl Dataset {
    /// A dataset from normalised values; checks that the lengths agree and every label is below `classes`.
    pub fn new(
        images: Vec<f32>,
        labels: Vec<usize>,
        [channels, height, width]: [usize; 3],
        classes: usize,
        normalization: Normalization,
    ) -> Result<Dataset> {
        let per_image = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                Error::invalid(
                    "Dataset::new",
                    format!("invalid image shape {channels}×{height}×{width}"),
                )
            })?;
        if Some(images.len()) != labels.len().checked_mul(per_image) {
            return Err(Error::invalid(
                "Dataset::new",
                format!(
                    "{} image values are not {} labels × {channels}×{height}×{width}",
                    images.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
            return Err(Error::invalid(
                "Dataset::new",
                format!("label {l} at index {i} is not below {classes} classes"),
            ));
        }
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
            classes,
            normalization,
        })
    }

    /// A single-channel dataset from raw IDX images and labels, scaled to [0, 1] and normalised by `norm`.
    pub fn from_raw(
        raw: &RawImages,
        labels: Vec<usize>,
        classes: usize,
        norm: Normalization,
    ) -> Result<Dataset> {
        let table: Vec<f32> = (0..=255u8).map(|p| norm.apply(p)).collect();
        let images = raw.pixels.iter().map(|&p| table[p as usize]).collect();
        Dataset::new(images, labels, [1, raw.rows, raw.cols], classes, norm)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image (C·H·W).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The values of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let n = self.image_len();
        let start = i.checked_mul(n)?;
        self.images.get(start..start.checked_add(n)?)
    }

    /// (N, C, H, W).
    pub fn dims(&self) -> [usize; 4] {
        [self.len(), self.channels, self.height, self.width]
    }

    /// How many examples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        Examples::class_counts(self)
    }

    /// The examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(
                "Dataset::subset",
                format!("index {bad} out of range for {} examples", self.len()),
            ));
        }
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(image), Some(&label)) = (self.image(i), self.labels.get(i)) else {
                return Err(Error::invalid(
                    "Dataset::subset",
                    format!("image {i} is missing: the dataset's images and labels disagree"),
                ));
            };
            images.extend_from_slice(image);
            labels.push(label);
        }
        Ok(Dataset {
            images,
            labels,
            ..self.clone_meta()
        })
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let values = (n * self.image_len()).min(self.images.len());
        Dataset {
            images: self.images[..values].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone_meta()
        }
    }

    /// A stratified subset: `k` examples of every class, chosen by a seeded shuffle within each class and
    /// returned in their original relative order. Fails, naming the class, if a class has fewer than `k`.
    pub fn take_per_class(&self, k: usize, seed: u64) -> Result<Dataset> {
        let (chosen, _) = self.per_class_indices("Dataset::take_per_class", k, 0, seed)?;
        self.subset(&chosen)
    }

    /// Splits off `k` examples of every class (a stratified held-out set, chosen like
    /// [`Dataset::take_per_class`]): returns (the rest, the held-out examples). Fails, naming the class, if a
    /// class has no more than `k` examples (nothing would be left of it).
    pub fn hold_out_per_class(&self, k: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        let (held, rest) = self.per_class_indices("Dataset::hold_out_per_class", k, 1, seed)?;
        Ok((self.subset(&rest)?, self.subset(&held)?))
    }

    /// [`per_class_indices`] over this dataset's labels.
    fn per_class_indices(
        &self,
        op: &'static str,
        k: usize,
        min_left: usize,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        per_class_indices(&self.labels, self.classes, op, k, min_left, seed)
    }

    /// The images zero-padded (in pixel space: filled with the normalised value of a black pixel) to
    /// `size × size`, centred; when the padding is odd the extra row/column goes to the bottom/right.
    /// Fails if `size` is smaller than the images.
    pub fn pad_to(&self, size: usize) -> Result<Dataset> {
        if size < self.height || size < self.width {
            return Err(Error::invalid(
                "Dataset::pad_to",
                format!(
                    "cannot pad {}×{} images to the smaller size {size}×{size}",
                    self.height, self.width
                ),
            ));
        }
        if size == self.height && size == self.width {
            return Ok(self.clone());
        }
        let (top, left) = ((size - self.height) / 2, (size - self.width) / 2);
        let planes = self.len() * self.channels;
        let mut images = vec![self.normalization.background(); planes * size * size];
        let plane_in = self.height * self.width;
        for (src, dst) in self
            .images
            .chunks_exact(plane_in)
            .zip(images.chunks_exact_mut(size * size))
        {
            for (y, row) in src.chunks_exact(self.width).enumerate() {
                let start = (y + top) * size + left;
                dst[start..start + self.width].copy_from_slice(row);
            }
        }
        Ok(Dataset {
            images,
            labels: self.labels.clone(),
            height: size,
            width: size,
            ..self.clone_meta()
        })
    }

    /// The images with `channels` channels: grey-scale images repeated into every channel (how a network
    /// pretrained on RGB, such as a timm ConvNeXt, sees grey images), or the dataset itself when it already
    /// has that many. Any other conversion is an error.
    pub fn with_channels(&self, channels: usize) -> Result<Dataset> {
        if channels == self.channels {
            return Ok(self.clone());
        }
        if self.channels != 1 || channels == 0 {
            return Err(Error::invalid(
                "Dataset::with_channels",
                format!(
                    "cannot turn {}-channel images into {channels}-channel ones (only grey → any)",
                    self.channels
                ),
            ));
        }
        let plane = self.height * self.width;
        let mut images = Vec::with_capacity(self.images.len() * channels);
        for img in self.images.chunks_exact(plane) {
            for _ in 0..channels {
                images.extend_from_slice(img);
            }
        }
        Ok(Dataset {
            images,
            labels: self.labels.clone(),
            channels,
            ..self.clone_meta()
        })
    }

    /// Everything but the examples (for struct-update syntax).
    fn clone_meta(&self) -> Dataset {
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
            normalization: self.normalization,
        }
    }
}

impl Examples for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn image_dims(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    /// Copies the images out (the values are already normalised; augmentation, if any, is the batcher's).
    fn gather(&self, indices: &[usize], _augment: Option<&mut SplitMix64>) -> Result<Batch> {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(image), Some(&label)) = (self.image(i), self.labels.get(i)) else {
                return Err(Error::invalid(
                    "Dataset::gather",
                    format!("index {i} out of range for {} examples", self.len()),
                ));
            };
            images.extend_from_slice(image);
            labels.push(label);
        }
        Ok(Batch {
            dims: [labels.len(), self.channels, self.height, self.width],
            images,
            labels,
        })
    }
    fn background(&self) -> Option<f32> {
        Some(self.normalization.background())
    }
    fn fingerprint(&self) -> String {
        let mut h = Fnv::new();
        self.images.iter().for_each(|v| h.mix(v.to_bits() as u64));
        self.labels.iter().for_each(|&l| h.mix(l as u64));
        h.hex()
    }
}
