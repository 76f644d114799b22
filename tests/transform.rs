//! `liera::data::transform::resize` against real Pillow: the outputs of `Image.resize` for small images in
//! `tests/fixtures/pil_resize.json` (written by `tests/fixtures/pil_resize.py`, run by hand), compared bit
//! for bit for every case: nearest, bilinear and bicubic, down, up and along one axis, grey and RGB. Small
//! cases store Pillow's pixels; photo-sized ones store the input's generator seed and a digest of the output.
//!
//! After those, the hand-computed cases of the public transforms: resizing, `resize_shorter`, cropping,
//! flipping, normalising and `RandomResizedCrop` (the cases that need private items stay in the module).

use liera::data::image::Image;
use liera::data::transform::{
    center_crop, crop, hflip, normalize_into, resize, resize_shorter, shorter_side_size,
    Interpolation, RandomResizedCrop,
};
use liera::data::SplitMix64;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    pillow: String,
    inputs: Vec<Input>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Input {
    name: String,
    width: usize,
    height: usize,
    channels: usize,
    /// The pixels, or (for large inputs) `lcg_seed` to generate them from.
    #[serde(default)]
    pixels: Option<Vec<u8>>,
    #[serde(default)]
    lcg_seed: Option<u32>,
}

impl Input {
    fn image(&self) -> Image {
        let pixels = match (&self.pixels, self.lcg_seed) {
            (Some(p), _) => p.clone(),
            (None, Some(seed)) => lcg_bytes(self.width * self.height * self.channels, seed),
            (None, None) => panic!("input {} has neither pixels nor a seed", self.name),
        };
        Image::new(self.width, self.height, self.channels, pixels).unwrap()
    }
}

/// The fixture script's generator: a 32-bit LCG (Numerical Recipes constants), top byte of each state.
fn lcg_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

/// 64-bit FNV-1a of `bytes`, as 16 hex digits (the fixture script's digest).
fn fnv1a64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

#[derive(Deserialize)]
struct Case {
    input: String,
    interpolation: String,
    width: usize,
    height: usize,
    /// Pillow's output, or (for large inputs) its `fnv1a64` digest.
    #[serde(default)]
    pixels: Option<Vec<u8>>,
    #[serde(default)]
    fnv1a64: Option<String>,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/pil_resize.json")).expect("pil_resize.json parses")
}

#[test]
fn resize_equals_pillow_exactly() {
    let fixture = fixture();
    assert!(!fixture.cases.is_empty());
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let input = fixture
            .inputs
            .iter()
            .find(|i| i.name == case.input)
            .unwrap_or_else(|| panic!("case names unknown input {}", case.input));
        let img = input.image();
        let interp = Interpolation::parse(&case.interpolation).unwrap();
        let out = resize(&img, case.width, case.height, interp).unwrap();
        assert_eq!(
            (out.width, out.height, out.channels),
            (case.width, case.height, input.channels)
        );
        let what = format!(
            "{} → {}×{} {}",
            case.input, case.width, case.height, case.interpolation
        );
        match (&case.pixels, &case.fnv1a64) {
            (Some(expected), _) if &out.pixels != expected => {
                let diffs = out.pixels.iter().zip(expected).filter(|(a, b)| a != b);
                let worst = diffs.clone().map(|(&a, &b)| a.abs_diff(b)).max();
                failures.push(format!(
                    "{what}: {} samples differ, by up to {}",
                    diffs.count(),
                    worst.unwrap_or(0)
                ));
            }
            (None, Some(digest)) if &fnv1a64(&out.pixels) != digest => {
                failures.push(format!("{what}: the output's digest differs"));
            }
            (None, None) => panic!("{what}: neither pixels nor a digest"),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "differences from Pillow {}:\n{}",
        fixture.pillow,
        failures.join("\n")
    );
}

#[test]
fn fixture_covers_every_interpolation_and_both_directions() {
    let fixture = fixture();
    for interp in ["nearest", "bilinear", "bicubic"] {
        let cases: Vec<&Case> = fixture
            .cases
            .iter()
            .filter(|c| c.interpolation == interp)
            .collect();
        let sizes = |c: &Case| {
            let input = fixture.inputs.iter().find(|i| i.name == c.input).unwrap();
            (input.width, input.height, input.channels, c.width, c.height)
        };
        assert!(cases.iter().any(|c| {
            let (w, h, _, tw, th) = sizes(c);
            tw < w && th < h
        }));
        assert!(cases.iter().any(|c| {
            let (w, h, _, tw, th) = sizes(c);
            tw > w && th > h
        }));
        assert!(cases.iter().any(|c| sizes(c).2 == 3));
        assert!(cases.iter().any(|c| sizes(c).2 == 1));
    }
}

// The transforms on hand-computed cases.

fn grey(width: usize, height: usize, pixels: &[u8]) -> Image {
    Image::new(width, height, 1, pixels.to_vec()).unwrap()
}

/// An image whose pixel (x, y) channel k is a distinct number, to see where pixels went.
fn numbered(width: usize, height: usize, channels: usize) -> Image {
    let pixels = (0..width * height * channels).map(|i| i as u8).collect();
    Image::new(width, height, channels, pixels).unwrap()
}

#[test]
fn bilinear_upscale_2x1_to_4x1() {
    // scale 0.5, no stretching: output centres 0.25, 0.75, 1.25, 1.75. Output 1 (centre 0.75) takes
    // pixels [int(0.25), int(2.25)) = 0, 1 with weights 1 - |0.5 - 0.75| = 0.75 and 1 - |1.5 - 0.75| =
    // 0.25: 0.25·100 = 25. Output 0 (centre 0.25) takes pixels [0, int(1.75)) = pixel 0 alone, so it is
    // pixel 0: the edge is repeated, not reflected.
    let img = grey(2, 1, &[0, 100]);
    let out = resize(&img, 4, 1, Interpolation::Bilinear).unwrap();
    assert_eq!(out.pixels, [0, 25, 75, 100]);
}

#[test]
fn nearest_picks_pixel_centres() {
    // 5 → 2: step 2.5, centres 1.25 and 3.75 → pixels 1 and 3. 2 → 5: step 0.4, positions 0.2, 0.6, 1.0,
    // 1.4, 1.8 → 0, 0, 1, 1, 1.
    let img = grey(5, 1, &[10, 11, 12, 13, 14]);
    assert_eq!(
        resize(&img, 2, 1, Interpolation::Nearest).unwrap().pixels,
        [11, 13]
    );
    let img = grey(1, 2, &[1, 2]);
    let out = resize(&img, 1, 5, Interpolation::Nearest).unwrap();
    assert_eq!(out.pixels, [1, 1, 2, 2, 2]);
    let rgb = numbered(2, 1, 3);
    let out = resize(&rgb, 4, 1, Interpolation::Nearest).unwrap();
    assert_eq!(out.pixels, [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]);
}

#[test]
fn resize_rejects_zero_sizes_and_copies_same_size() {
    let img = numbered(3, 2, 1);
    assert!(resize(&img, 0, 2, Interpolation::Bilinear).is_err());
    assert!(resize(&img, 2, 0, Interpolation::Nearest).is_err());
    let empty = Image::new(0, 0, 3, Vec::new()).unwrap();
    assert!(resize(&empty, 2, 2, Interpolation::Bicubic).is_err());
    assert_eq!(resize(&img, 3, 2, Interpolation::Bicubic).unwrap(), img);
}

#[test]
fn resize_shorter_sizes_truncate_like_torchvision() {
    assert_eq!(shorter_side_size(640, 480, 256), (341, 256)); // 256·640/480 = 341.33
    assert_eq!(shorter_side_size(480, 640, 256), (256, 341));
    assert_eq!(shorter_side_size(300, 200, 224), (336, 224)); // exactly 336
    assert_eq!(shorter_side_size(3, 2, 5), (7, 5)); // 7.5 truncates to 7
    assert_eq!(shorter_side_size(100, 100, 224), (224, 224));
    let out = resize_shorter(&numbered(6, 4, 3), 2, Interpolation::Bilinear).unwrap();
    assert_eq!((out.width, out.height), (3, 2));
    assert!(resize_shorter(&numbered(6, 4, 3), 0, Interpolation::Bilinear).is_err());
}

#[test]
fn center_crop_pads_small_images_with_extra_right_and_bottom() {
    // 2×1 grey into 5×4: pad left 3/2 = 1, right 4/2 = 2, top 3/2 = 1, bottom 2; then the crop is the
    // whole padded image.
    let img = grey(2, 1, &[7, 9]);
    let out = center_crop(&img, 5, 4).unwrap();
    #[rustfmt::skip]
    assert_eq!(out.pixels, [
        0, 0, 0, 0, 0,
        0, 7, 9, 0, 0,
        0, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
    ]);
    // Padded in width only: 2×5 → 3×2. Width padding 0 left, 1 right; then top = round(3/2) = 2.
    let img = numbered(2, 5, 1);
    let out = center_crop(&img, 3, 2).unwrap();
    assert_eq!(out.pixels, [4, 5, 0, 6, 7, 0]);
    assert!(center_crop(&img, 0, 2).is_err());
}

#[test]
fn crop_bounds_and_hflip() {
    let img = numbered(3, 2, 3);
    let out = crop(&img, 1, 1, 2, 1).unwrap();
    assert_eq!(out.pixels, [12, 13, 14, 15, 16, 17]);
    assert!(crop(&img, 2, 0, 2, 1).is_err());
    assert!(crop(&img, 0, 0, 3, 3).is_err());
    assert!(crop(&img, 0, 0, 0, 1).is_err());
    assert!(crop(&img, usize::MAX, 0, 2, 1).is_err());
    assert_eq!(crop(&img, 0, 0, 3, 2).unwrap(), img);
    let flipped = hflip(&img);
    assert_eq!(
        flipped.pixels,
        [6, 7, 8, 3, 4, 5, 0, 1, 2, 15, 16, 17, 12, 13, 14, 9, 10, 11]
    );
    assert_eq!(hflip(&flipped), img);
}

#[test]
fn normalize_into_is_chw_scaled_and_checked() {
    // 2×1 RGB: pixels (0, 255, 51) and (255, 0, 102).
    let img = Image::new(2, 1, 3, vec![0, 255, 51, 255, 0, 102]).unwrap();
    let mean = [0.5, 0.0, 0.2];
    let std = [0.5, 2.0, 0.1];
    let mut out = [0.0; 6];
    normalize_into(&img, &mean, &std, &mut out).unwrap();
    // R: (0 - .5)/.5 = -1, (1 - .5)/.5 = 1; G: 1/2 = .5, 0; B: (.2 - .2)/.1 = 0, (.4 - .2)/.1 = 2.
    let expected = [-1.0, 1.0, 0.5, 0.0, 0.0, 2.0];
    for (o, e) in out.iter().zip(expected) {
        assert!((o - e).abs() < 1e-6, "{out:?}");
    }
    // Same f32 operations as torch: ToTensor's p / 255, then (x - mean) / std.
    assert_eq!(out[4], (51.0f32 / 255.0 - 0.2) / 0.1);
    assert!(normalize_into(&img, &mean[..2], &std, &mut out).is_err());
    assert!(normalize_into(&img, &mean, &[0.5, 0.0, 1.0], &mut out).is_err());
    assert!(normalize_into(&img, &mean, &std, &mut [0.0; 5]).is_err());
}

#[test]
fn random_resized_crop_stays_inside_and_is_seeded() {
    let rrc = RandomResizedCrop::default();
    for (w, h) in [(224, 224), (500, 375), (375, 500), (7, 3), (1, 1), (1, 40)] {
        let mut rng = SplitMix64::new(3);
        for _ in 0..500 {
            let (left, top, cw, ch) = rrc.params(w, h, &mut rng);
            assert!(
                cw > 0 && ch > 0 && left + cw <= w && top + ch <= h,
                "{w}×{h}"
            );
        }
    }
    let draw = |seed| {
        let mut rng = SplitMix64::new(seed);
        (0..20)
            .map(|_| rrc.params(640, 480, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(11), draw(11));
    assert_ne!(draw(11), draw(12));
    let mut rng = SplitMix64::new(5);
    let img = numbered(40, 30, 3);
    let out = rrc
        .apply(&img, 16, 12, Interpolation::Bicubic, &mut rng)
        .unwrap();
    assert_eq!((out.width, out.height, out.channels), (16, 12, 3));
}

#[test]
fn random_resized_crop_falls_back_for_impossible_ratios() {
    // A ratio of at least 10 on nearly the whole area never fits a square: w = √(0.9·A·10) > side.
    let wide = RandomResizedCrop::new((0.9, 1.0), (10.0, 20.0)).unwrap();
    let mut rng = SplitMix64::new(1);
    // in_ratio 1 < 10 → w = 100, h = round(100 / 10) = 10, centred: top (100 - 10) / 2 = 45.
    assert_eq!(wide.params(100, 100, &mut rng), (0, 45, 100, 10));
    let tall = RandomResizedCrop::new((0.9, 1.0), (0.05, 0.1)).unwrap();
    // in_ratio 1 > 0.1 → h = 100, w = round(100 · 0.1) = 10, left 45.
    assert_eq!(tall.params(100, 100, &mut rng), (45, 0, 10, 100));
    // An area larger than the image fits no attempt; the ratio 1 is inside the range → whole image.
    let big = RandomResizedCrop {
        scale: (4.0, 4.0),
        ratio: (0.5, 2.0),
    };
    assert_eq!(big.params(30, 30, &mut rng), (0, 0, 30, 30));
    assert!(RandomResizedCrop::new((0.5, 0.1), (1.0, 1.0)).is_err());
    assert!(RandomResizedCrop::new((0.1, 0.5), (0.0, 1.0)).is_err());
}
