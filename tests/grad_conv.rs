//! Gradient property tests of conv2d: random batch, channels, groups (dense, grouped, depthwise, depthwise
//! with a channel multiplier), non-square kernels and inputs, stride, padding and dilation, with and without
//! bias, and the convolution with its GELU in one op. The reference is the definition of the convolution
//! written as plain f64 loops.

mod common;

use common::{check_gradients, devices, input, Rng, TOL};
use liera::Conv2dParams;
use proptest::prelude::*;

/// One convolution problem: input (n, c, h, w), weight (o, c/groups, kh, kw).
#[derive(Clone, Debug)]
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    params: Conv2dParams,
    bias: bool,
}

/// y[n, o, i, j] = b[o] + Σ_{c in o's group, p, q} x[n, c, i·s + p·d − pad, j·s + q·d − pad] · w[o, c', p, q],
/// as the f64 loops of `common::reference::conv2d`.
fn reference(case: &ConvCase, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let x_dims = [case.n, case.c, case.h, case.w];
    let w_dims = [case.o, case.c / case.params.groups, case.kh, case.kw];
    common::reference::conv2d(x, x_dims, w, w_dims, b, case.params).0
}

/// Random valid cases: groups from {1, 2, 3, depthwise}, each pair (h, w) etc. independent.
fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..3, 0usize..4, 1usize..3, 1usize..3), // n, group kind, channels per group in/out
        (1usize..4, 1usize..4),                       // kh, kw
        (1usize..3, 1usize..3, 0usize..3, 0usize..3), // stride h/w, padding h/w
        (1usize..3, 1usize..3),                       // dilation h/w
        (0usize..6, 0usize..6, any::<bool>()),        // extra input size, bias
    )
        .prop_map(
            |((n, kind, cpg_in, cpg_out), (kh, kw), (sh, sw, ph, pw), (dh, dw), (eh, ew, bias))| {
                let (groups, c, o) = match kind {
                    0 => (1, cpg_in + 1, cpg_out + 1),
                    1 => (2, 2 * cpg_in, 2 * cpg_out),
                    2 => (3, 3 * cpg_in, 3),
                    _ => {
                        // depthwise: one input channel per group; o = c (plain) or 2c (multiplier)
                        let c = cpg_in + 2;
                        (c, c, c * cpg_out)
                    }
                };
                let params = Conv2dParams {
                    stride: [sh, sw],
                    padding: [ph, pw],
                    dilation: [dh, dw],
                    groups,
                };
                // The input is at least as large as the dilated kernel's span (before padding).
                let h = dh * (kh - 1) + 1 + eh;
                let w = dw * (kw - 1) + 1 + ew;
                ConvCase {
                    n,
                    c,
                    h,
                    w,
                    o,
                    kh,
                    kw,
                    params,
                    bias,
                }
            },
        )
}

/// Random x, w and (with `case.bias`) b for a case.
fn case_inputs(case: &ConvCase, seed: u64) -> Vec<common::Input> {
    let mut rng = Rng::new(seed);
    let cg = case.c / case.params.groups;
    let mut inputs = vec![
        input(
            rng.vec(case.n * case.c * case.h * case.w, -1.0, 1.0),
            &[case.n, case.c, case.h, case.w],
        ),
        input(
            rng.vec(case.o * cg * case.kh * case.kw, -1.0, 1.0),
            &[case.o, cg, case.kh, case.kw],
        ),
    ];
    if case.bias {
        inputs.push(input(rng.vec(case.o, -1.0, 1.0), &[case.o]));
    }
    inputs
}

/// Checks `op` (the convolution, or it with an activation) against the definition followed by `act`, on
/// every device.
fn check_case_with(
    case: &ConvCase,
    seed: u64,
    op: impl Fn(&[liera::Tensor], Conv2dParams) -> liera::Result<liera::Tensor>,
    act: fn(f64) -> f64,
) -> Result<(), TestCaseError> {
    let inputs = case_inputs(case, seed);
    for dev in devices() {
        check_gradients(
            &dev,
            &inputs,
            |t| op(t, case.params),
            |v| {
                reference(case, &v[0], &v[1], v.get(2).map(|b| b.as_slice()))
                    .into_iter()
                    .map(act)
                    .collect()
            },
            TOL,
        )
        .map_err(|e| TestCaseError::fail(format!("{case:?} on {}: {e}", dev.name())))?;
    }
    Ok(())
}

fn check_case(case: &ConvCase, seed: u64) -> Result<(), TestCaseError> {
    check_case_with(case, seed, |t, p| t[0].conv2d(&t[1], t.get(2), p), |y| y)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_any_geometry(case in conv_case(), seed in any::<u64>()) {
        check_case(&case, seed)?;
    }

    /// conv2d_gelu (one launch on the GPU where it fuses) against the definition, GELU(conv + b), and its
    /// gradients through the tape.
    #[test]
    fn conv2d_gelu_any_geometry(case in conv_case(), seed in any::<u64>()) {
        check_case_with(&case, seed, |t, p| t[0].conv2d_gelu(&t[1], t.get(2), p), common::reference::gelu64)?;
    }
}

/// The layer shapes ConvNeXt uses, checked once each: stem 4×4/4, downsample 2×2/2, depthwise 7×7 pad 3,
/// pointwise 1×1 (the im2col-free path).
#[test]
fn conv2d_convnext_layers() {
    let d = Conv2dParams::default();
    let cases = [
        ("stem", 2, 1, 8, 8, 4, 4, 4, d.stride(4), false),
        ("downsample", 2, 4, 4, 4, 6, 2, 2, d.stride(2), true),
        (
            "depthwise 7x7",
            2,
            3,
            9,
            9,
            3,
            7,
            7,
            d.padding(3).groups(3),
            true,
        ),
        ("pointwise", 2, 3, 3, 5, 8, 1, 1, d, true),
        // Output rows of 16 or more take the CPU's plane-wise depthwise paths (the random cases above are
        // small enough to take the channels-last one): stride 1 with a padded plane, and the generic loops
        // for stride 2; dilation 2 as well.
        (
            "depthwise 7x7 wide",
            1,
            2,
            4,
            20,
            2,
            7,
            7,
            d.padding(3).groups(2),
            false,
        ),
        (
            "depthwise 3x3 dilated wide",
            1,
            2,
            5,
            20,
            2,
            3,
            3,
            d.padding(1).dilation(2).groups(2),
            true,
        ),
        (
            "depthwise 3x3 stride 2 wide",
            1,
            2,
            5,
            36,
            2,
            3,
            3,
            d.padding(1).stride(2).groups(2),
            true,
        ),
    ];
    for (name, n, c, h, w, o, kh, kw, params, bias) in cases {
        let case = ConvCase {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            params,
            bias,
        };
        check_case(&case, 7).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The CPU kernels are deterministic: the same convolution's gradients, computed repeatedly over a batch
/// large enough to be split across threads, are bit-identical (a resumed run relies on this).
#[test]
fn conv2d_gradients_are_bit_reproducible() {
    let dev = liera::Device::cpu();
    let mut rng = Rng::new(42);
    let (n, c, h) = (64usize, 16usize, 4usize);
    let x: Vec<f32> = rng
        .vec(n * c * h * h, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let w: Vec<f32> = rng
        .vec(c * 49, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let run = || {
        let xt = liera::Tensor::param(&x, [n, c, h, h], &dev).unwrap();
        let wt = liera::Tensor::param(&w, [c, 1, 7, 7], &dev).unwrap();
        let y = xt
            .conv2d(&wt, None, Conv2dParams::default().padding(3).groups(c))
            .unwrap();
        let grads = y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
        let bits = |t: &liera::Tensor| -> Vec<u32> {
            grads
                .get(t)
                .unwrap()
                .to_vec()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        (bits(&xt), bits(&wt))
    };
    let first = run();
    for _ in 0..5 {
        assert!(
            run() == first,
            "conv2d gradients differ between identical runs"
        );
    }
}
