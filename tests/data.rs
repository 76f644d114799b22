//! The data module as a specification: the embedded real subsets have the documented sizes and classes; the
//! IDX reader accepts gzip and plain files alike and turns every malformed file into an error that names the
//! file and the problem (never a panic, never a huge allocation); batching is seeded, covers each example
//! once per epoch, and augments deterministically.

#[path = "common/alloc.rs"]
mod alloc;
mod common;

use alloc::largest_allocation;
use common::temp::TempDir;
use flate2::write::GzEncoder;
use flate2::Compression;
use liera::data::idx::{self, parse_idx, read_idx_file, write_idx, MAX_IDX_BYTES};
use liera::data::{
    embedded_fashion_mnist, embedded_mnist, load_dir, Augment, Batcher, Dataset, Normalization,
    RandomTranslate, Sequential, SplitMix64,
};
use proptest::prelude::*;
use std::io::Write;
use std::path::Path;

/// Asserts `r` is an error whose message contains every one of `needles`.
fn assert_err<T: std::fmt::Debug>(r: liera::Result<T>, needles: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(
            msg.contains(n),
            "error message {msg:?} does not mention {n:?}"
        );
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `n` tiny 4×3 images whose pixels encode their index, and labels `i % classes`.
fn tiny_idx(n: usize, classes: usize) -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..n * 12).map(|i| (i / 12 * 7 + i % 12) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
    (
        write_idx(&[n, 4, 3], &pixels).unwrap(),
        write_idx(&[n], &labels).unwrap(),
    )
}

/// Writes a complete four-file dataset (train: `n_train`, test: `n_test` tiny images) into `dir`.
fn write_dataset(dir: &TempDir, n_train: usize, n_test: usize, gz: bool) {
    let (ti, tl) = tiny_idx(n_train, 10);
    let (ei, el) = tiny_idx(n_test, 10);
    let ext = if gz { ".gz" } else { "" };
    let enc = |bytes: &[u8]| if gz { gzip(bytes) } else { bytes.to_vec() };
    dir.write(&format!("train-images-idx3-ubyte{ext}"), &enc(&ti));
    dir.write(&format!("train-labels-idx1-ubyte{ext}"), &enc(&tl));
    dir.write(&format!("t10k-images-idx3-ubyte{ext}"), &enc(&ei));
    dir.write(&format!("t10k-labels-idx1-ubyte{ext}"), &enc(&el));
}

fn value_range(data: &Dataset) -> (f32, f32) {
    data.images
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn assert_normalised_range(data: &Dataset) {
    let norm = data.normalization;
    let (lo, hi) = value_range(data);
    let (black, white) = (norm.apply(0), norm.apply(255));
    assert!(
        lo >= black - 1e-6 && hi <= white + 1e-6,
        "values {lo}..{hi} outside {black}..{white}"
    );
    // Real digit/clothing images use the whole pixel range.
    assert!((lo - black).abs() < 1e-6 && (hi - white).abs() < 1e-6);
    assert!(data.images.iter().all(|v| v.is_finite()));
}

// ---------------------------------------------------------------- embedded data

#[test]
fn embedded_mnist_has_12000_train_and_2000_test_digits_balanced_over_ten_classes() {
    let mnist = embedded_mnist().unwrap();
    for (data, n, per_class) in [(&mnist.train, 12_000, 1_200), (&mnist.test, 2_000, 200)] {
        assert_eq!(data.len(), n);
        assert_eq!(data.dims(), [n, 1, 28, 28]);
        assert_eq!(data.images.len(), n * 784);
        assert_eq!(data.classes, 10);
        assert_eq!(data.class_counts(), vec![per_class; 10]);
        assert!(data.labels.iter().all(|&l| l < 10));
        assert_eq!(data.normalization, Normalization::MNIST);
        assert_normalised_range(data);
    }
    // The normalisation constants fit the data: mean ≈ 0, std ≈ 1 after normalising.
    let n = mnist.train.images.len() as f64;
    let mean = mnist.train.images.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = mnist
        .train
        .images
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 0.05, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 0.05, "std {}", var.sqrt());
}

#[test]
fn embedded_fashion_mnist_has_exactly_100_training_images_per_class() {
    let fashion = embedded_fashion_mnist().unwrap();
    assert_eq!(fashion.train.len(), 1_000);
    assert_eq!(fashion.train.class_counts(), vec![100; 10]);
    assert_eq!(fashion.test.len(), 2_000);
    assert_eq!(fashion.test.class_counts(), vec![200; 10]);
    for data in [&fashion.train, &fashion.test] {
        assert_eq!(data.dims()[1..], [1, 28, 28]);
        assert!(data.labels.iter().all(|&l| l < 10));
        assert_eq!(data.normalization, Normalization::FASHION_MNIST);
        assert_normalised_range(data);
    }
    // Source and target tasks really differ: the first training images are not the same.
    let mnist = embedded_mnist().unwrap();
    assert_ne!(
        mnist
            .train
            .image(0)
            .unwrap()
            .iter()
            .map(|v| (v * 1e3) as i32)
            .collect::<Vec<_>>(),
        fashion
            .train
            .image(0)
            .unwrap()
            .iter()
            .map(|v| (v * 1e3) as i32)
            .collect::<Vec<_>>()
    );
}

#[test]
fn padding_to_32_centres_the_image_on_a_black_border() {
    let fashion = embedded_fashion_mnist().unwrap().pad_to(32).unwrap();
    let original = embedded_fashion_mnist().unwrap();
    assert_eq!(fashion.train.dims(), [1000, 1, 32, 32]);
    assert_eq!(fashion.test.dims(), [2000, 1, 32, 32]);
    let black = fashion.train.normalization.background();
    for i in [0, 1, 999] {
        let padded = fashion.train.image(i).unwrap();
        let src = original.train.image(i).unwrap();
        for y in 0..32 {
            for x in 0..32 {
                let v = padded[y * 32 + x];
                if (2..30).contains(&y) && (2..30).contains(&x) {
                    assert_eq!(v, src[(y - 2) * 28 + (x - 2)]);
                } else {
                    assert_eq!(v, black, "border pixel ({y}, {x})");
                }
            }
        }
    }
    assert_eq!(fashion.train.labels, original.train.labels);
    assert_err(original.train.pad_to(20), &["cannot pad", "28×28", "20×20"]);
}

#[test]
fn take_per_class_is_stratified_seeded_and_checks_class_sizes() {
    let mnist = embedded_mnist().unwrap();
    let a = mnist.test.take_per_class(7, 1).unwrap();
    let b = mnist.test.take_per_class(7, 1).unwrap();
    let c = mnist.test.take_per_class(7, 2).unwrap();
    assert_eq!(a.class_counts(), vec![7; 10]);
    assert_eq!(a, b);
    assert_ne!(a.images, c.images);
    assert_err(
        mnist.test.take_per_class(201, 0),
        &["class", "has 200 examples", "taking 201 needs at least 201"],
    );
}

// ---------------------------------------------------------------- IDX reading

#[test]
fn gzip_and_plain_idx_read_identically() {
    let (images, labels) = tiny_idx(5, 3);
    let plain = parse_idx(&images, "plain").unwrap();
    let zipped_bytes = gzip(&images);
    let zipped = parse_idx(&zipped_bytes, "gz").unwrap();
    assert_eq!(plain, zipped);
    assert_eq!(plain.dims, vec![5, 4, 3]);
    assert_eq!(
        idx::read_labels(&labels, "l", 3).unwrap(),
        idx::read_labels(&gzip(&labels), "l.gz", 3).unwrap()
    );

    let dir = TempDir::new("gz-plain");
    let p = dir.write("a", &images);
    let g = dir.write("a.gz", &zipped_bytes);
    assert_eq!(read_idx_file(&p).unwrap(), read_idx_file(&g).unwrap());

    // A whole directory, gzip or plain, gives the same datasets.
    let (plain_dir, gz_dir) = (TempDir::new("plain"), TempDir::new("gz"));
    write_dataset(&plain_dir, 20, 10, false);
    write_dataset(&gz_dir, 20, 10, true);
    let a = load_dir(plain_dir.root()).unwrap();
    let b = load_dir(gz_dir.root()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.dims(), [20, 1, 4, 3]);
    assert_eq!(a.test.len(), 10);
    // Normalised by the training images' own statistics.
    let mean: f32 = a.train.images.iter().sum::<f32>() / a.train.images.len() as f32;
    assert!(mean.abs() < 1e-4, "mean {mean}");
}

#[test]
fn write_idx_round_trips() {
    let data: Vec<u8> = (0..24).collect();
    let bytes = write_idx(&[2, 3, 4], &data).unwrap();
    assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
    let back = parse_idx(&bytes, "x").unwrap();
    assert_eq!(back.dims, vec![2, 3, 4]);
    assert_eq!(&back.data[..], &data[..]);
    assert_err(write_idx(&[2, 3], &data), &["do not match"]);
}

#[test]
fn bad_magic_is_named() {
    let (mut images, _) = tiny_idx(2, 2);
    images[0] = 0x50;
    assert_err(
        parse_idx(&images, "f.idx"),
        &["f.idx", "bad IDX magic number"],
    );
    assert_err(
        parse_idx(&[0, 0], "short"),
        &["short", "too short for an IDX header"],
    );
    assert_err(
        parse_idx(b"PK\x03\x04 not idx", "zip"),
        &["zip", "bad IDX magic"],
    );
}

#[test]
fn wrong_dtype_is_named() {
    let (mut images, _) = tiny_idx(2, 2);
    images[2] = 0x0D; // float
    assert_err(
        parse_idx(&images, "floats"),
        &["floats", "unsupported IDX dtype 0x0d", "unsigned byte"],
    );
}

#[test]
fn truncated_files_are_named() {
    let (images, _) = tiny_idx(3, 2);
    let cut = &images[..images.len() - 5];
    assert_err(parse_idx(cut, "cut"), &["cut", "truncated data", "3×4×3"]);
    // Cut inside the header.
    assert_err(
        parse_idx(&images[..9], "hdr"),
        &["hdr", "truncated IDX header"],
    );
    // A gzip stream cut short.
    let gz = gzip(&images);
    assert_err(
        parse_idx(&gz[..gz.len() / 2], "gz"),
        &["gz", "corrupt gzip"],
    );
}

#[test]
fn header_data_size_mismatch_is_named() {
    let (mut images, _) = tiny_idx(3, 2);
    images.extend_from_slice(&[1, 2, 3]);
    assert_err(
        parse_idx(&images, "long"),
        &["long", "size mismatch", "3 extra"],
    );
}

#[test]
fn rank_mismatches_say_which_kind_of_file_was_expected() {
    let (images, labels) = tiny_idx(3, 2);
    assert_err(
        idx::read_images(&labels, "lab"),
        &["lab", "expected an image file", "labels file?"],
    );
    assert_err(
        idx::read_labels(&images, "img", 10),
        &["img", "expected a labels file", "image file?"],
    );
}

#[test]
fn image_label_count_mismatch_is_named() {
    let dir = TempDir::new("count");
    write_dataset(&dir, 20, 10, false);
    let (_, labels) = tiny_idx(19, 10);
    dir.write("train-labels-idx1-ubyte", &labels);
    assert_err(
        load_dir(dir.root()),
        &[
            "train-images-idx3-ubyte",
            "count mismatch",
            "20 images",
            "19 labels",
        ],
    );
}

#[test]
fn out_of_range_labels_are_named() {
    let labels = write_idx(&[4], &[0, 9, 10, 3]).unwrap();
    assert_err(
        idx::read_labels(&labels, "labels.idx", 10),
        &["labels.idx", "label 10 at index 2 is out of range"],
    );
}

#[test]
fn a_directory_with_a_missing_or_wrong_file_is_named() {
    let dir = TempDir::new("missing");
    write_dataset(&dir, 20, 10, true);
    std::fs::remove_file(dir.path("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_err(
        load_dir(dir.root()),
        &[
            "missing test labels file",
            "t10k-labels-idx1-ubyte",
            "found: t10k-images",
        ],
    );
    // Wrong file: images where the labels should be.
    let (images, _) = tiny_idx(10, 10);
    dir.write("t10k-labels-idx1-ubyte", &images);
    assert_err(
        load_dir(dir.root()),
        &["t10k-labels-idx1-ubyte", "expected a labels file"],
    );
    // Not a directory at all.
    assert_err(
        load_dir(Path::new("/nonexistent/liera-data")),
        &["/nonexistent/liera-data", "not a directory"],
    );
    // Mirror naming with a dot is accepted.
    let dotted = TempDir::new("dotted");
    write_dataset(&dotted, 20, 10, false);
    for stem in ["train-images", "train-labels", "t10k-images", "t10k-labels"] {
        let idx = if stem.ends_with("images") {
            "idx3"
        } else {
            "idx1"
        };
        std::fs::rename(
            dotted.path(&format!("{stem}-{idx}-ubyte")),
            dotted.path(&format!("{stem}.{idx}-ubyte")),
        )
        .unwrap();
    }
    assert_eq!(load_dir(dotted.root()).unwrap().train.len(), 20);
}

#[test]
fn a_header_claiming_four_billion_images_fails_without_allocating() {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [4_000_000_000u32, 28, 28] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(&[0; 784 * 2]);
    let (result, largest) = largest_allocation(|| parse_idx(&bytes, "huge"));
    // The claim is 4·10⁹·784 bytes; the reader may copy what is present (~1.6 kB), nothing near the claim.
    assert!(
        largest < 1 << 20,
        "allocated {largest} bytes for a 1.6 kB file"
    );
    assert_err(result, &["huge", "truncated data", "4000000000×28×28"]);
    assert_err(
        parse_idx(&gzip(&bytes), "huge.gz"),
        &["huge.gz", "truncated data"],
    );
    // Dimensions whose product overflows usize.
    let mut overflow = vec![0, 0, 8, 4];
    for _ in 0..4 {
        overflow.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert_err(parse_idx(&overflow, "ovf"), &["ovf", "overflow"]);
}

#[test]
fn decompression_stops_at_the_size_limit() {
    // 257 MiB of zeros compresses to ~260 KB; the reader must refuse it at 256 MiB.
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(MAX_IDX_BYTES >> 20) + 1 {
        enc.write_all(&chunk).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert_err(
        parse_idx(&bomb, "bomb.gz"),
        &["bomb.gz", "exceeds the limit"],
    );
}

fn valid_idx_strategy() -> impl Strategy<Value = Vec<u8>> {
    (1usize..6, 1usize..5, 1usize..5, any::<bool>()).prop_map(|(n, h, w, gz)| {
        let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 31) as u8).collect();
        let raw = write_idx(&[n, h, w], &pixels).unwrap();
        if gz {
            gzip(&raw)
        } else {
            raw
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the reader: every outcome is Ok or a Format error naming the file.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Err(e) = parse_idx(&bytes, "random") {
            prop_assert!(e.to_string().starts_with("random: "));
        }
        let _ = idx::read_images(&bytes, "random");
        let _ = idx::read_labels(&bytes, "random", 10);
    }

    /// Random headers of the right magic (any rank, any dimensions) never panic or allocate beyond the data.
    #[test]
    fn random_headers_never_panic(
        rank in 0u8..8,
        dims in proptest::collection::vec(any::<u32>(), 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = vec![0, 0, 8, rank];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&tail);
        if let Ok(idx) = parse_idx(&bytes, "hdr") {
            prop_assert!(idx.data.len() <= tail.len() + 32);
        }
    }

    /// Valid files (gzip or plain) with random bytes overwritten, inserted or cut never panic.
    #[test]
    fn mutated_valid_files_never_panic(
        file in valid_idx_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = file;
        for (at, value, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ => bytes.truncate(i),
            }
        }
        let _ = parse_idx(&bytes, "mutated");
        let _ = idx::read_images(&bytes, "mutated");
        let _ = idx::read_labels(&bytes, "mutated", 10);
    }
}

// ---------------------------------------------------------------- batching

/// `n` one-pixel images whose value is their index (so a batch reveals which examples it holds).
fn indexed(n: usize) -> Dataset {
    Dataset::new(
        (0..n).map(|i| i as f32).collect(),
        (0..n).map(|i| i % 3).collect(),
        [1, 1, 1],
        3,
        Normalization::IDENTITY,
    )
    .unwrap()
}

fn ids(batch: &liera::data::Batch) -> Vec<usize> {
    batch.images.iter().map(|&v| v as usize).collect()
}

#[test]
fn every_example_appears_exactly_once_per_epoch_and_epochs_reshuffle() {
    let data = indexed(103);
    let mut batcher = Batcher::new(&data, 10, 42).unwrap();
    assert_eq!(batcher.batches_per_epoch(), 11);
    let mut epochs = Vec::new();
    for epoch in 0..3 {
        assert_eq!(batcher.epoch(), epoch);
        let mut seen = Vec::new();
        for b in 0..11 {
            let batch = batcher.next_batch().unwrap();
            let n = if b == 10 { 3 } else { 10 };
            assert_eq!(batch.dims, [n, 1, 1, 1]);
            assert_eq!(
                batch.labels,
                ids(&batch).iter().map(|i| i % 3).collect::<Vec<_>>()
            );
            seen.extend(ids(&batch));
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>(), "epoch {epoch}");
        epochs.push(seen);
    }
    assert_ne!(epochs[0], epochs[1], "epochs are reshuffled");
    assert_ne!(epochs[0], (0..103).collect::<Vec<_>>(), "shuffled at all");
}

#[test]
fn drop_last_drops_the_partial_batch() {
    let data = indexed(103);
    let mut batcher = Batcher::new(&data, 10, 1).unwrap().drop_last(true).unwrap();
    assert_eq!(batcher.batches_per_epoch(), 10);
    for _ in 0..25 {
        assert_eq!(batcher.next_batch().unwrap().dims[0], 10);
    }
    assert_eq!(batcher.epoch(), 2);
    assert_err(
        Batcher::new(&indexed(5), 10, 1).unwrap().drop_last(true),
        &["no full batch"],
    );
    assert_err(Batcher::new(&data, 0, 1), &["batch size"]);
    assert_err(Sequential::new(&data, 0), &["batch size"]);
}

#[test]
fn batching_is_deterministic_per_seed_and_seek_resumes_exactly() {
    let data = indexed(50);
    let draw = |seed| {
        let mut b = Batcher::new(&data, 8, seed).unwrap();
        (0..20)
            .map(|_| ids(&b.next_batch().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let all = draw(7);
    let mut resumed = Batcher::new(&data, 8, 7).unwrap();
    resumed.seek(13);
    assert_eq!(resumed.position(), 13);
    assert_eq!(ids(&resumed.next_batch().unwrap()), all[13]);
    // Unshuffled batching follows dataset order.
    let mut plain = Batcher::new(&data, 8, 7).unwrap().shuffle(false);
    assert_eq!(
        ids(&plain.next_batch().unwrap()),
        (0..8).collect::<Vec<_>>()
    );
}

#[test]
fn sequential_batches_cover_the_dataset_in_order() {
    let data = indexed(23);
    let batches: Vec<_> = Sequential::new(&data, 10)
        .unwrap()
        .collect::<liera::Result<_>>()
        .unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(
        batches.iter().flat_map(ids).collect::<Vec<_>>(),
        (0..23).collect::<Vec<_>>()
    );
    assert_eq!(batches[2].dims, [3, 1, 1, 1]);
    assert_eq!(Sequential::new(&data, 10).unwrap().len(), 3);
}

#[test]
fn random_translation_shifts_by_at_most_two_pixels_with_zero_fill() {
    // One 1×8×8 image with a single bright pixel at (4, 4), on a black (−1) background.
    let mut image = vec![-1.0f32; 64];
    image[4 * 8 + 4] = 5.0;
    let translate = RandomTranslate::new(2, -1.0);
    let mut rng = SplitMix64::new(3);
    let mut shifts = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut batch = image.clone();
        translate.apply(&mut batch, [1, 1, 8, 8], &mut rng);
        let bright: Vec<usize> = (0..64).filter(|&i| batch[i] == 5.0).collect();
        assert_eq!(bright.len(), 1, "the pixel moves, it is not lost or copied");
        let (y, x) = (bright[0] / 8, bright[0] % 8);
        assert!((2..=6).contains(&y) && (2..=6).contains(&x));
        assert!(batch.iter().filter(|&&v| v == -1.0).count() == 63);
        shifts.insert((y, x));
    }
    assert_eq!(shifts.len(), 25, "all 5×5 shifts occur");

    // Content shifted past the edge leaves the frame; the uncovered rows and columns take the fill value,
    // so an all-ones 4×4 image keeps a (4−|dy|)×(4−|dx|) rectangle of ones.
    let possible: Vec<usize> = (0..=2)
        .flat_map(|a| (0..=2).map(move |b| (4 - a) * (4 - b)))
        .collect();
    for _ in 0..50 {
        let mut square = vec![1.0f32; 2 * 16]; // two images: each moves independently
        translate.apply(&mut square, [2, 1, 4, 4], &mut rng);
        for image in square.chunks(16) {
            let ones = image.iter().filter(|&&v| v == 1.0).count();
            assert!(possible.contains(&ones), "{ones} ones");
            assert!(image.iter().all(|&v| v == 1.0 || v == -1.0));
        }
    }

    // Any closure of the right shape is an augmentation.
    let mark_first = |images: &mut [f32], dims: [usize; 4], _: &mut SplitMix64| {
        assert_eq!(dims, [1, 1, 4, 4]);
        images[0] = 9.0;
    };
    let mut edge = vec![1.0f32; 16];
    mark_first.apply(&mut edge, [1, 1, 4, 4], &mut rng);
    assert_eq!(edge[0], 9.0);
}

#[test]
fn augmented_batches_are_deterministic_per_seed() {
    let fashion = embedded_fashion_mnist().unwrap().pad_to(32).unwrap();
    let train = fashion.train.take(64);
    let draw = |seed| {
        let mut b = Batcher::new(&train, 16, seed)
            .unwrap()
            .with_augment(RandomTranslate::for_dataset(&train, 2));
        (0..6)
            .map(|_| b.next_batch().unwrap().images)
            .collect::<Vec<_>>()
    };
    let a = draw(5);
    assert_eq!(a, draw(5));
    assert_ne!(a, draw(6));
    // Augmentation changes pixels but keeps the value set inside the normalised range.
    let plain: Vec<_> = {
        let mut b = Batcher::new(&train, 16, 5).unwrap();
        (0..6).map(|_| b.next_batch().unwrap().images).collect()
    };
    assert_ne!(a, plain);
    let norm = train.normalization;
    assert!(a
        .iter()
        .flatten()
        .all(|&v| v >= norm.apply(0) - 1e-6 && v <= norm.apply(255) + 1e-6));
}

/// With `LIERA_TEST_IDX_DIRS` set to directories holding full IDX datasets (separated by `:`), each loads
/// with 60,000 / 10,000 examples of 28×28. Skipped (with a message) when unset: the data is not in the repo.
#[test]
fn full_idx_directories_load_when_given() {
    let Ok(dirs) = std::env::var("LIERA_TEST_IDX_DIRS") else {
        eprintln!("skipped: set LIERA_TEST_IDX_DIRS to check full MNIST-style directories");
        return;
    };
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let splits = load_dir(Path::new(dir)).unwrap();
        assert_eq!(splits.train.dims(), [60_000, 1, 28, 28], "{dir}");
        assert_eq!(splits.test.dims(), [10_000, 1, 28, 28], "{dir}");
        assert!(splits.train.class_counts().iter().all(|&c| c > 5_000));
        eprintln!("{dir}: {:?}", splits.train.normalization);
    }
}
