//! Mini-batches of any [`Examples`] (a [`Dataset`] or an image set) as [`Batch`]es: a seeded, shuffling [`Batcher`] for training and an
//! in-order [`Sequential`] iterator for evaluation, with an [`Augment`] hook ([`RandomTranslate`]).
//!
//! Every random choice is a pure function of the seed and the position in the stream: epoch `e` is ordered
//! by a permutation drawn from `(seed, e)`, and batch `b` is augmented with a generator drawn from
//! `(seed, b)`. So a run is reproducible from its seed, and [`Batcher::seek`] can resume at any step exactly
//! as if the earlier batches had been drawn.

use super::{Dataset, Examples};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast, statistically solid generator, enough for shuffling
/// and augmentation and needing no dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for stream `stream` of `seed`: independent-looking sequences for different streams.
    pub fn derived(seed: u64, stream: u64) -> Self {
        let mut mixer = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        SplitMix64::new(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (0 when `n` is 0), by Lemire's multiply-shift with rejection, so without
    /// modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// An in-place transformation of a batch of images (N, C, H, W), drawing its randomness from `rng`.
pub trait Augment {
    /// Transforms `images` of shape `dims` = (N, C, H, W) in place.
    fn apply(&self, images: &mut [f32], dims: [usize; 4], rng: &mut SplitMix64);
}

impl<F: Fn(&mut [f32], [usize; 4], &mut SplitMix64)> Augment for F {
    fn apply(&self, images: &mut [f32], dims: [usize; 4], rng: &mut SplitMix64) {
        self(images, dims, rng)
    }
}

/// Shifts each image by an independent random offset of up to `max_shift` pixels in each direction,
/// filling the uncovered border with `fill` (use [`super::Normalization::background`], the normalised
/// value of a black pixel, for "zero fill" in pixel space). All channels of an image move together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomTranslate {
    /// Largest shift in pixels, in each direction.
    pub max_shift: usize,
    /// Value written into the uncovered border.
    pub fill: f32,
}

impl RandomTranslate {
    /// Translation by up to ±`max_shift` pixels, filling with `fill`.
    pub fn new(max_shift: usize, fill: f32) -> Self {
        RandomTranslate { max_shift, fill }
    }

    /// Translation by up to ±`max_shift` pixels, filling with the background of `data`.
    pub fn for_dataset(data: &Dataset, max_shift: usize) -> Self {
        RandomTranslate::new(max_shift, data.normalization.background())
    }
}

/// Shifts one (C, H, W) image by (dy, dx) into `out`, which must hold C·H·W values.
fn translate_image(
    image: &[f32],
    out: &mut [f32],
    [c, h, w]: [usize; 3],
    dy: isize,
    dx: isize,
    fill: f32,
) {
    out.fill(fill);
    for ch in 0..c {
        let plane = ch * h * w;
        for y in 0..h as isize {
            let sy = y - dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            // Destination columns whose source column sx = x - dx lies inside the image.
            let x0 = dx.max(0) as usize;
            let x1 = (w as isize + dx.min(0)).max(0) as usize;
            if x0 >= x1 {
                continue;
            }
            let dst = plane + y as usize * w;
            let src = plane + sy as usize * w;
            let sx0 = (x0 as isize - dx) as usize;
            out[dst + x0..dst + x1].copy_from_slice(&image[src + sx0..src + sx0 + (x1 - x0)]);
        }
    }
}

impl Augment for RandomTranslate {
    fn apply(&self, images: &mut [f32], [n, c, h, w]: [usize; 4], rng: &mut SplitMix64) {
        let per_image = c * h * w;
        if self.max_shift == 0 || per_image == 0 || images.len() != n * per_image {
            return;
        }
        let span = 2 * self.max_shift as u64 + 1;
        let mut scratch = vec![0f32; per_image];
        for image in images.chunks_exact_mut(per_image) {
            let dy = rng.below(span) as isize - self.max_shift as isize;
            let dx = rng.below(span) as isize - self.max_shift as isize;
            if dy == 0 && dx == 0 {
                continue;
            }
            translate_image(image, &mut scratch, [c, h, w], dy, dx, self.fill);
            image.copy_from_slice(&scratch);
        }
    }
}

/// One mini-batch on the host: images (N, C, H, W) row-major and their labels.
#[derive(Clone, Debug)]
pub struct Batch {
    /// N·C·H·W values, row-major.
    pub images: Vec<f32>,
    /// (N, C, H, W).
    pub dims: [usize; 4],
    /// One label per image.
    pub labels: Vec<usize>,
}

impl Batch {
    /// The images as a tensor on `device`.
    pub fn images_on(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.images, self.dims.to_vec(), device)
    }
}

fn check_batchable(op: &'static str, data: &dyn Examples, batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::invalid(op, "batch size must be at least 1"));
    }
    if data.is_empty() {
        return Err(Error::invalid(op, "the dataset has no examples"));
    }
    if data.labels().len() != data.len() {
        return Err(Error::invalid(
            op,
            format!(
                "dataset holds {} labels for {} examples",
                data.labels().len(),
                data.len()
            ),
        ));
    }
    Ok(())
}

/// An endless stream of shuffled training batches: each epoch visits every example once in a fresh seeded
/// order; the last partial batch of an epoch is kept (a smaller batch) unless [`Batcher::drop_last`] asks
/// otherwise. Batches never straddle epochs.
pub struct Batcher<'a> {
    data: &'a dyn Examples,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
    augment: Option<Box<dyn Augment + Send + 'a>>,
    /// Order of the current epoch.
    order: Vec<usize>,
    epoch: u64,
    /// Position of the next batch within the epoch.
    batch_in_epoch: usize,
    /// Batches produced since the start (the stream position).
    step: u64,
}

impl<'a> Batcher<'a> {
    /// Shuffled batches of `batch_size` from `data`, ordered by `seed`; partial last batches kept.
    pub fn new(data: &'a dyn Examples, batch_size: usize, seed: u64) -> Result<Self> {
        check_batchable("Batcher::new", data, batch_size)?;
        let mut batcher = Batcher {
            data,
            batch_size,
            seed,
            shuffle: true,
            drop_last: false,
            augment: None,
            order: Vec::new(),
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
        };
        batcher.order = batcher.epoch_order(0);
        Ok(batcher)
    }

    /// Drops (true) or keeps (false, the default) each epoch's final partial batch. Fails if dropping would
    /// leave no batch at all (fewer examples than one batch).
    pub fn drop_last(mut self, drop: bool) -> Result<Self> {
        if drop && self.data.len() < self.batch_size {
            return Err(Error::invalid(
                "Batcher::drop_last",
                format!(
                    "{} examples make no full batch of {}",
                    self.data.len(),
                    self.batch_size
                ),
            ));
        }
        self.drop_last = drop;
        Ok(self)
    }

    /// Turns shuffling off (every epoch in dataset order) or back on.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self.order = self.epoch_order(self.epoch);
        self
    }

    /// Applies `augment` to every batch produced.
    pub fn with_augment(mut self, augment: impl Augment + Send + 'a) -> Self {
        self.augment = Some(Box::new(augment));
        self
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.data.len() / self.batch_size
        } else {
            self.data.len().div_ceil(self.batch_size)
        }
    }

    /// The current epoch (0-based): the epoch the next batch comes from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Batches produced so far (or the position set by [`Batcher::seek`]).
    pub fn position(&self) -> u64 {
        self.step
    }

    /// The order in which epoch `epoch` visits the examples: a permutation of `0..len` that depends only on
    /// the seed and the epoch (the identity when shuffling is off).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            SplitMix64::derived(self.seed, epoch.wrapping_mul(2)).shuffle(&mut order);
        }
        order
    }

    /// Moves to stream position `step` (the batch a resumed run draws next), exactly as if `step` batches
    /// had been drawn.
    pub fn seek(&mut self, step: u64) {
        let per_epoch = self.batches_per_epoch().max(1) as u64;
        let epoch = step / per_epoch;
        if epoch != self.epoch || self.order.is_empty() {
            self.order = self.epoch_order(epoch);
        }
        self.epoch = epoch;
        self.batch_in_epoch = (step % per_epoch) as usize;
        self.step = step;
    }

    /// The dataset indices of the next batch; advances the stream.
    pub fn next_indices(&mut self) -> Vec<usize> {
        if self.batch_in_epoch >= self.batches_per_epoch() {
            // Only reachable when drop_last was switched on mid-epoch.
            self.next_epoch();
        }
        let start = self.batch_in_epoch * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let indices = self.order[start..end].to_vec();
        self.batch_in_epoch += 1;
        self.step += 1;
        if self.batch_in_epoch >= self.batches_per_epoch() {
            self.next_epoch();
        }
        indices
    }

    fn next_epoch(&mut self) {
        self.epoch += 1;
        self.batch_in_epoch = 0;
        self.order = self.epoch_order(self.epoch);
    }

    /// The next batch (augmented if an augmentation is set); endless, moving to a reshuffled epoch at the
    /// end of each one.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let step = self.step;
        let indices = self.next_indices();
        // The batch's randomness: the set's own training transforms draw first, then the batch augmentation.
        let mut rng = SplitMix64::derived(self.seed, step.wrapping_mul(2).wrapping_add(1));
        let mut batch = self.data.gather(&indices, Some(&mut rng))?;
        if let Some(augment) = &self.augment {
            augment.apply(&mut batch.images, batch.dims, &mut rng);
        }
        Ok(batch)
    }
}

impl Iterator for Batcher<'_> {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}

impl std::fmt::Debug for Batcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("examples", &self.data.len())
            .field("batch_size", &self.batch_size)
            .field("seed", &self.seed)
            .field("shuffle", &self.shuffle)
            .field("drop_last", &self.drop_last)
            .field("augment", &self.augment.is_some())
            .field("epoch", &self.epoch)
            .field("position", &self.step)
            .finish()
    }
}

/// The examples in dataset order, in batches of `batch_size` (the last one smaller if need be), unshuffled
/// and unaugmented: what [`crate::train::evaluate`] consumes.
pub struct Sequential<'a> {
    data: &'a dyn Examples,
    batch_size: usize,
    next: usize,
}

impl<'a> Sequential<'a> {
    /// In-order batches of `data`.
    pub fn new(data: &'a dyn Examples, batch_size: usize) -> Result<Self> {
        check_batchable("Sequential::new", data, batch_size)?;
        Ok(Sequential {
            data,
            batch_size,
            next: 0,
        })
    }
}

impl std::fmt::Debug for Sequential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequential")
            .field("examples", &self.data.len())
            .field("batch_size", &self.batch_size)
            .field("next", &self.next)
            .finish()
    }
}

impl Iterator for Sequential<'_> {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.data.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.data.len());
        let indices: Vec<usize> = (self.next..end).collect();
        self.next = end;
        Some(self.data.gather(&indices, None))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.data.len() - self.next.min(self.data.len())).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Sequential<'_> {}
