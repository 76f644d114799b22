//! The datasets compiled into the library, and loading the same four-file IDX layout from a directory.
//!
//! The embedded files are the real subsets in `data/` (see `data/README.md` for provenance, licences and
//! the script that reproduces them): MNIST 12,000 train / 2,000 test (the source task) and Fashion-MNIST
//! 1,000 train (exactly 100 per class) / 2,000 test (the target task). Nothing is downloaded at run time.

use super::idx::{self, RawImages};
use super::{Dataset, Normalization, Splits};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Number of classes of MNIST and Fashion-MNIST.
pub const CLASSES: usize = 10;

/// One split's files: the images and labels, as bytes with the names used in error messages.
struct EmbeddedSplit {
    images: (&'static str, &'static [u8]),
    labels: (&'static str, &'static [u8]),
}

macro_rules! embedded_file {
    ($path:literal) => {
        (
            concat!("embedded:data/", $path),
            include_bytes!(concat!("../../data/", $path)) as &'static [u8],
        )
    };
}

const MNIST_TRAIN: EmbeddedSplit = EmbeddedSplit {
    images: embedded_file!("mnist/train-images-idx3-ubyte.gz"),
    labels: embedded_file!("mnist/train-labels-idx1-ubyte.gz"),
};
const MNIST_TEST: EmbeddedSplit = EmbeddedSplit {
    images: embedded_file!("mnist/t10k-images-idx3-ubyte.gz"),
    labels: embedded_file!("mnist/t10k-labels-idx1-ubyte.gz"),
};
const FASHION_TRAIN: EmbeddedSplit = EmbeddedSplit {
    images: embedded_file!("fashion-mnist/train-images-idx3-ubyte.gz"),
    labels: embedded_file!("fashion-mnist/train-labels-idx1-ubyte.gz"),
};
const FASHION_TEST: EmbeddedSplit = EmbeddedSplit {
    images: embedded_file!("fashion-mnist/t10k-images-idx3-ubyte.gz"),
    labels: embedded_file!("fashion-mnist/t10k-labels-idx1-ubyte.gz"),
};

fn load_embedded(split: &EmbeddedSplit, norm: Normalization) -> Result<Dataset> {
    let (images_name, images_bytes) = split.images;
    let (labels_name, labels_bytes) = split.labels;
    let raw = idx::read_images(images_bytes, images_name)?;
    let labels = idx::read_labels(labels_bytes, labels_name, CLASSES)?;
    idx::check_counts(&raw, images_name, &labels, labels_name)?;
    Dataset::from_raw(&raw, labels, CLASSES, norm)
}

/// The embedded MNIST subset (12,000 train, 1,200 per digit; 2,000 test, 200 per digit), 1×28×28,
/// normalised with [`Normalization::MNIST`].
///
/// ```
/// use liera::data::embedded_mnist;
/// let mnist = embedded_mnist()?;
/// assert_eq!((mnist.train.len(), mnist.test.len()), (12_000, 2_000));
/// # Ok::<(), liera::Error>(())
/// ```
pub fn embedded_mnist() -> Result<Splits> {
    Ok(Splits {
        train: load_embedded(&MNIST_TRAIN, Normalization::MNIST)?,
        test: load_embedded(&MNIST_TEST, Normalization::MNIST)?,
    })
}

/// The embedded Fashion-MNIST subset (1,000 train, exactly 100 per class as in VTAB-1k; 2,000 test, 200 per
/// class), 1×28×28, normalised with [`Normalization::FASHION_MNIST`].
pub fn embedded_fashion_mnist() -> Result<Splits> {
    Ok(Splits {
        train: load_embedded(&FASHION_TRAIN, Normalization::FASHION_MNIST)?,
        test: load_embedded(&FASHION_TEST, Normalization::FASHION_MNIST)?,
    })
}

/// The four standard file names (without `.gz`) of an IDX dataset directory and what each holds.
pub const STANDARD_FILES: [(&str, &str); 4] = [
    ("train-images-idx3-ubyte", "training images"),
    ("train-labels-idx1-ubyte", "training labels"),
    ("t10k-images-idx3-ubyte", "test images"),
    ("t10k-labels-idx1-ubyte", "test labels"),
];

/// Finds `stem` in `dir` as `stem`, `stem.gz`, or with a dot before `idx` (`train-images.idx3-ubyte`, as
/// some mirrors name them), gzip or not.
fn find_file(dir: &Path, stem: &str, what: &str) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    let candidates = [
        stem.to_string(),
        format!("{stem}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    for name in &candidates {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    Err(Error::Format {
        path: dir.display().to_string(),
        msg: format!(
            "missing {what} file: expected {stem} or {stem}.gz (or {dotted}[.gz]) in this directory (found: {})",
            if present.is_empty() {
                "nothing".to_string()
            } else {
                present.join(", ")
            }
        ),
    })
}

/// Reads the four standard IDX files (each gzip or plain) from `dir`, with 10 classes, normalised by the
/// statistics of the training images (so any MNIST-like dataset is centred). See [`load_dir_with`].
pub fn load_dir(dir: &Path) -> Result<Splits> {
    load_dir_with(dir, CLASSES, None)
}

/// Reads the four standard IDX files from `dir` ([`STANDARD_FILES`], each plain or `.gz`): labels must be
/// below `classes`; images are normalised by `norm`, or by the training images' own mean and std when
/// `None`. A missing file is an error naming the directory and the file expected; a malformed one an error
/// naming the file and its problem.
pub fn load_dir_with(dir: &Path, classes: usize, norm: Option<Normalization>) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(Error::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut paths = Vec::with_capacity(4);
    for (stem, what) in STANDARD_FILES {
        paths.push(find_file(dir, stem, what)?);
    }
    let read_split = |images_path: &Path, labels_path: &Path| -> Result<(RawImages, Vec<usize>)> {
        let images_name = images_path.display().to_string();
        let labels_name = labels_path.display().to_string();
        let raw = idx::images_from_idx(idx::read_idx_file(images_path)?, &images_name)?;
        let labels = idx::labels_from_idx(idx::read_idx_file(labels_path)?, &labels_name, classes)?;
        idx::check_counts(&raw, &images_name, &labels, &labels_name)?;
        Ok((raw, labels))
    };
    let (train_raw, train_labels) = read_split(&paths[0], &paths[1])?;
    let (test_raw, test_labels) = read_split(&paths[2], &paths[3])?;
    if (train_raw.rows, train_raw.cols) != (test_raw.rows, test_raw.cols) {
        return Err(Error::Format {
            path: paths[2].display().to_string(),
            msg: format!(
                "test images are {}×{} but training images are {}×{}",
                test_raw.rows, test_raw.cols, train_raw.rows, train_raw.cols
            ),
        });
    }
    let norm = norm.unwrap_or_else(|| Normalization::from_pixels(&train_raw.pixels));
    Ok(Splits {
        train: Dataset::from_raw(&train_raw, train_labels, classes, norm)?,
        test: Dataset::from_raw(&test_raw, test_labels, classes, norm)?,
    })
}
