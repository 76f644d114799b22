//! `liera::data::transform::resize` against real Pillow: the outputs of `Image.resize` for small images in
//! `tests/fixtures/pil_resize.json` (written by `tests/fixtures/pil_resize.py`, run by hand), compared bit
//! for bit for every case: nearest, bilinear and bicubic, down, up and along one axis, grey and RGB. Small
//! cases store Pillow's pixels; photo-sized ones store the input's generator seed and a digest of the output.

use liera::data::image::Image;
use liera::data::transform::{resize, Interpolation};
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
