//! Shared test support: a deterministic RNG and the gradient checker; f64 reference ops ([`reference`]) and
//! scratch directories ([`temp`]).
//!
//! The checker compares an op's analytic gradient (from the engine's tape, in f32) with central finite
//! differences of a *plain f64 reference implementation* of the same op (written in the test, or shared in
//! [`reference`]). Because the differences are taken in f64 on an independent implementation, a wrong
//! forward kernel, a wrong backward rule and a wrong tape walk all show up as mismatches.
#![allow(dead_code)]

pub mod images;
pub mod reference;
pub mod temp;

use liera::{Device, Tensor};

/// splitmix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// `n` values uniform in [lo, hi), rounded to f32 so the engine and the reference see the same numbers.
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi) as f32 as f64).collect()
    }
    /// `n` values with |v| in [lo, hi) and random sign (kept away from 0, e.g. for division).
    pub fn vec_away_from_zero(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.uniform(lo, hi);
                (if self.next_u64() & 1 == 0 { v } else { -v }) as f32 as f64
            })
            .collect()
    }
}

/// An input to a checked op: values (exactly representable in f32) and a shape.
#[derive(Clone, Debug)]
pub struct Input {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

pub fn input(values: Vec<f64>, shape: &[usize]) -> Input {
    assert_eq!(
        values.len(),
        shape.iter().product::<usize>(),
        "test bug: values do not fill the shape"
    );
    Input {
        values,
        shape: shape.to_vec(),
    }
}

/// Tolerances for comparing f32 engine results with f64 references:
/// |engine − reference| ≤ atol·scale + rtol·|reference|, where scale = max(1, ‖reference‖∞) of that tensor,
/// so the absolute part grows with the magnitudes involved (f32 rounding error of a sum scales with its
/// terms, not with its possibly cancelled result).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

/// Default: f32 has a 6·10⁻⁸ unit roundoff; ops here sum at most a few hundred terms, so errors stay below
/// ~10⁻⁵ relative; 10⁻³ leaves margin while still catching any wrong formula (those err by O(1)).
pub const TOL: Tol = Tol {
    rtol: 1e-3,
    atol: 1e-4,
};

fn compare(what: &str, got: &[f32], want: &[f64], tol: Tol) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, reference has {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        if err.is_nan() || err > tol.atol * scale + tol.rtol * w.abs() {
            return Err(format!(
                "{what}: element {i}: engine {g} vs reference {w} (|diff| {err:.3e})"
            ));
        }
    }
    Ok(())
}

/// Checks forward and gradients of an op on `device`.
///
/// - `engine` computes the op with liera from tensors built from `inputs` (all trainable);
/// - `reference` computes the same op in plain f64 from the input values;
/// - the loss is L = Σ y ⊙ R with a fixed random R (so every output element's gradient path is exercised
///   with a distinct weight);
/// - ∂L/∂input from the tape is compared with central differences (L(x + h) − L(x − h)) / 2h of the
///   reference, h = 10⁻⁴·max(1, |x|) (f64 truncation error O(h²) ≈ 10⁻⁸, far below the tolerance).
pub fn check_gradients(
    device: &Device,
    inputs: &[Input],
    engine: impl Fn(&[Tensor]) -> liera::Result<Tensor>,
    reference: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    tol: Tol,
) -> Result<(), String> {
    let params: Vec<Tensor> = inputs
        .iter()
        .map(|inp| {
            let v: Vec<f32> = inp.values.iter().map(|&x| x as f32).collect();
            Tensor::param(&v, inp.shape.clone(), device).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let y = engine(&params).map_err(|e| format!("engine forward failed: {e}"))?;
    let values: Vec<Vec<f64>> = inputs.iter().map(|i| i.values.clone()).collect();
    let y_ref = reference(&values);
    compare(
        "forward",
        &y.to_vec().map_err(|e| e.to_string())?,
        &y_ref,
        tol,
    )?;

    let mut rng = Rng::new(y_ref.len() as u64 * 7919 + inputs.len() as u64);
    let r = rng.vec(y_ref.len(), -1.0, 1.0);
    let r32: Vec<f32> = r.iter().map(|&v| v as f32).collect();
    let r_t = Tensor::from_slice(&r32, y.shape().clone(), device).map_err(|e| e.to_string())?;
    let loss = y
        .mul(&r_t)
        .and_then(|p| p.sum_all())
        .map_err(|e| e.to_string())?;
    let grads = loss
        .backward()
        .map_err(|e| format!("backward failed: {e}"))?;
    let ref_loss =
        |vals: &[Vec<f64>]| -> f64 { reference(vals).iter().zip(&r).map(|(a, b)| a * b).sum() };

    for (k, p) in params.iter().enumerate() {
        let analytic = match grads.get(p) {
            Some(g) => g.to_vec().map_err(|e| e.to_string())?,
            None => vec![0.0; p.numel()],
        };
        let mut numeric = Vec::with_capacity(p.numel());
        let mut vals = values.clone();
        for j in 0..p.numel() {
            let x0 = vals[k][j];
            let h = 1e-4 * x0.abs().max(1.0);
            vals[k][j] = x0 + h;
            let up = ref_loss(&vals);
            vals[k][j] = x0 - h;
            let down = ref_loss(&vals);
            vals[k][j] = x0;
            numeric.push((up - down) / (2.0 * h));
        }
        compare(
            &format!("gradient of input {k} (shape {:?})", inputs[k].shape),
            &analytic,
            &numeric,
            tol,
        )?;
    }
    Ok(())
}

/// f64 test values as the f32 the engine takes.
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Asserts that the tape's f32 values `got` equal the closed form `want` (f64) within `rtol` of the largest
/// |want| (plus `rtol`·|want| for the element): closed-form gradient checks, where cancellation makes a
/// purely relative bound meaningless for small entries.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= rtol * (scale + w.abs()),
            "{what}: element {i}: tape {g} vs closed form {w} (|diff| {err:.3e}, scale {scale:.3e})"
        );
    }
}

/// The shared GPU device, or `None` when no adapter exists: then a visible "skipped: no GPU adapter" goes
/// to stderr (written past the test harness's capture, so it shows for passing tests too). With
/// `LIERA_REQUIRE_GPU=1` a missing adapter fails the test instead, so CI cannot silently skip the GPU.
pub fn gpu_device() -> Option<Device> {
    use std::io::Write;
    match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("LIERA_REQUIRE_GPU=1 but the GPU device is unavailable: {e}");
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(std::io::stderr(), "skipped: no GPU adapter ({e})");
            });
            None
        }
    }
}

/// The devices the cross-backend tests run on: the CPU, and the GPU when an adapter exists.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(gpu_device());
    d
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Decodes a flat row-major index into a multi-index of `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for ax in (0..shape.len()).rev() {
        idx[ax] = i % shape[ax];
        i /= shape[ax];
    }
    idx
}
