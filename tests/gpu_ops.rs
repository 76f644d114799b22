//! Cross-backend tests: every kernel of the contract on the GPU equals the CPU backend (the reference
//! implementation) on random shapes, including sizes that are not multiples of the GPU tile sizes, every
//! convolution geometry (stride, padding, dilation, groups, depthwise), and launches split over several
//! dispatch dimensions. Without a GPU adapter each test prints "skipped: no GPU adapter" and passes (unless
//! LIERA_REQUIRE_GPU=1).
//!
//! Tolerance: |gpu − cpu| ≤ 2·10⁻⁴·(scale + |cpu|), scale = max(1, max|cpu|) of that output. Both backends
//! compute in f32 but sum in different orders (tiles, tree reductions vs. sequential loops), and exp, ln,
//! √ and erf may differ by a few ulp. A reordered f32 sum of n terms of magnitude ≤ s errs by about
//! √n·2⁻²⁴·s ≲ 10⁻⁵·s for the sums here (n ≤ a few thousand), so 2·10⁻⁴ has margin, while any indexing
//! or formula error shows up as an O(1) relative difference.

mod common;

use common::{gpu_device, Rng};
use liera::backend::gpu::{gemm_tile_fits, GpuBackend, GpuOptions};
use liera::backend::{AxisLayout, Backend, BinaryOp, MatmulSpec, Storage, UnaryOp};
use liera::shape::{merge_broadcast_dims, Conv2dGeometry, Conv2dParams, Shape};
use liera::{Device, Tensor};
use proptest::prelude::*;
use std::sync::OnceLock;

const RTOL: f64 = 2e-4;

fn close(what: &str, gpu: &[f32], cpu: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(gpu.len(), cpu.len(), "{}: lengths differ", what);
    let scale = cpu.iter().fold(1.0f64, |m, &v| m.max((v as f64).abs()));
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g as f64 - c as f64).abs();
        let ok = err <= RTOL * (scale + (c as f64).abs()) || (g.is_nan() && c.is_nan()) || g == c;
        prop_assert!(
            ok,
            "{}: element {}: gpu {} vs cpu {} (|diff| {:.3e})",
            what,
            i,
            g,
            c,
            err
        );
    }
    Ok(())
}

fn values(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    Rng::new(seed)
        .vec(n, lo, hi)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// Runs `f` on both backends (inputs uploaded to each) and compares every output.
fn cross<F>(what: &str, inputs: &[Vec<f32>], f: F) -> Result<(), TestCaseError>
where
    F: Fn(&dyn Backend, &[Storage]) -> liera::Result<Vec<Storage>>,
{
    let Some(gpu) = gpu_device() else {
        return Ok(());
    };
    cross_on(what, gpu.backend(), inputs, f)
}

fn cross_on<F>(
    what: &str,
    gpu: &dyn Backend,
    inputs: &[Vec<f32>],
    f: F,
) -> Result<(), TestCaseError>
where
    F: Fn(&dyn Backend, &[Storage]) -> liera::Result<Vec<Storage>>,
{
    let cpu = Device::cpu();
    let run = |b: &dyn Backend| -> Result<Vec<Vec<f32>>, TestCaseError> {
        let ins: Vec<Storage> = inputs
            .iter()
            .map(|v| b.upload(v))
            .collect::<liera::Result<_>>()
            .map_err(|e| TestCaseError::fail(format!("{what}: upload: {e}")))?;
        let outs = f(b, &ins).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
        outs.iter()
            .map(|s| b.download(s))
            .collect::<liera::Result<_>>()
            .map_err(|e| TestCaseError::fail(format!("{what}: download: {e}")))
    };
    let want = run(cpu.backend())?;
    let got = run(gpu)?;
    for (k, (g, c)) in got.iter().zip(&want).enumerate() {
        close(&format!("{what}, output {k}"), g, c)?;
    }
    Ok(())
}

fn unary_op(code: u8, c: f32) -> UnaryOp {
    match code % 10 {
        0 => UnaryOp::Exp,
        1 => UnaryOp::Log,
        2 => UnaryOp::Neg,
        3 => UnaryOp::Sqrt,
        4 => UnaryOp::Gelu,
        5 => UnaryOp::AddScalar(c),
        6 => UnaryOp::MulScalar(c),
        7 => UnaryOp::PowScalar(c),
        8 => UnaryOp::MinScalar(c),
        _ => UnaryOp::GeluDerivative,
    }
}

/// Functions `name() -> Option<&'static GpuBackend>`, each a second GPU backend made once with the given
/// `GpuOptions` fields (the rest default); None without a GPU.
macro_rules! second_backends {
    ($($(#[$doc:meta])* $name:ident: { $($field:ident: $value:expr),* $(,)? };)*) => {$(
        $(#[$doc])*
        fn $name() -> Option<&'static GpuBackend> {
            static B: OnceLock<Option<GpuBackend>> = OnceLock::new();
            second_backend(&B, GpuOptions { $($field: $value,)* ..GpuOptions::default() })
        }
    )*};
}

const BINARY_OPS: [BinaryOp; 10] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::GeluBackward,
    BinaryOp::AddScaled(-0.75),
    BinaryOp::MulExpScaled(1.25),
    BinaryOp::MulAffineScaled(0.5),
    BinaryOp::MulScaled(-1.5),
    BinaryOp::MinScalarBackward(0.25),
];

/// A convolution geometry from small random parameters (None when the kernel does not fit the input).
#[allow(clippy::too_many_arguments)]
fn geometry(
    batch: usize,
    cin_per_group: usize,
    cout_per_group: usize,
    groups: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<Conv2dGeometry> {
    let x = Shape::new([batch, cin_per_group * groups, hw.0, hw.1]);
    let w = Shape::new([cout_per_group * groups, cin_per_group, k.0, k.1]);
    let p = Conv2dParams::default()
        .stride(stride)
        .padding(padding)
        .dilation(dilation)
        .groups(groups);
    Conv2dGeometry::new(&x, &w, p).ok()
}

fn conv_cross(g: &Conv2dGeometry, with_bias: bool, seed: u64) -> Result<(), TestCaseError> {
    match gpu_device() {
        Some(gpu) => conv_cross_on(gpu.backend(), g, with_bias, seed),
        None => Ok(()),
    }
}

/// [`conv_cross`] on the GPU backend `gpu`.
fn conv_cross_on(
    gpu: &dyn Backend,
    g: &Conv2dGeometry,
    with_bias: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let xn = g.input_shape().numel();
    let wn = g.weight_shape().numel();
    let yn = g.output_shape().numel();
    let inputs = vec![
        values(seed, xn, -1.0, 1.0),
        values(seed + 1, wn, -1.0, 1.0),
        values(seed + 2, g.c_out, -1.0, 1.0),
        values(seed + 3, yn, -1.0, 1.0),
    ];
    let g = *g;
    let launch = move |b: &dyn Backend, s: &[Storage]| {
        let (dw, db) = b.conv2d_weight_bias_grad(&s[0], &s[3], &g)?;
        let (z, dz) = b.conv2d_gelu(&s[0], &s[1], with_bias.then_some(&s[2]), &g)?;
        Ok(vec![
            z,
            dz,
            b.conv2d(&s[0], &s[1], with_bias.then_some(&s[2]), &g)?,
            b.conv2d_input_grad(&s[3], &s[1], &g)?,
            b.conv2d_weight_grad(&s[0], &s[3], &g)?,
            dw,
            db,
        ])
    };
    cross_on(&format!("conv2d {g:?}"), gpu, &inputs, launch)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn fill_and_unary_match_cpu(code in 0u8..10, len in 1usize..3000, c in -2.5f32..2.5, seed in 0u64..1000) {
        let op = unary_op(code, c);
        // ln, √ and non-integer powers need positive inputs; the others see both signs.
        let (lo, hi) = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::PowScalar(_) => (0.05, 3.0),
            _ => (-3.0, 3.0),
        };
        let x = values(seed, len, lo, hi);
        cross(&format!("{op:?}"), &[x], |b, s| {
            Ok(vec![b.unary(op, &s[0], len)?, b.fill(len, c)?])
        })?;
    }

    #[test]
    fn integer_powers_of_negative_bases_match_cpu(p in -3i32..4, len in 1usize..500, seed in 0u64..1000) {
        let op = UnaryOp::PowScalar(p as f32);
        let x = values(seed, len, -2.0, 2.0);
        cross(&format!("{op:?}"), &[x], |b, s| Ok(vec![b.unary(op, &s[0], len)?]))?;
    }

    #[test]
    fn broadcasting_binary_ops_match_cpu(
        out in prop::collection::vec(1usize..7, 1..5),
        mask_a in 0u32..16, mask_b in 0u32..16, op in 0usize..BINARY_OPS.len(), seed in 0u64..1000,
    ) {
        // Each operand keeps an output axis or broadcasts it (size 1), per its bit mask.
        let pick = |mask: u32| -> Vec<usize> {
            out.iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect()
        };
        let (sa, sb, so) = (Shape::new(pick(mask_a)), Shape::new(pick(mask_b)), Shape::new(out.clone()));
        let layout = merge_broadcast_dims("test", &sa, &sb, &so).unwrap();
        let op = BINARY_OPS[op];
        let a = values(seed, sa.numel(), -2.0, 2.0);
        let mut b = values(seed + 1, sb.numel(), 0.2, 2.0);
        if op != BinaryOp::Div {
            b = values(seed + 1, sb.numel(), -2.0, 2.0);
        }
        cross(&format!("{op:?} {sa} with {sb}"), &[a, b], |be, s| {
            Ok(vec![be.binary(op, &s[0], &s[1], &layout)?])
        })?;
    }

    #[test]
    fn matmul_matches_cpu(
        batch in 1usize..4, m in 1usize..90, k in 0usize..70, n in 1usize..90,
        trans_a: bool, trans_b: bool, share_a: bool, share_b: bool, seed in 0u64..1000,
    ) {
        // Batch stride 0 shares one operand across the batch.
        let a_bs = if share_a { 0 } else { m * k };
        let b_bs = if share_b { 0 } else { k * n };
        let spec = MatmulSpec { batch, m, k, n, trans_a, trans_b, a_batch_stride: a_bs, b_batch_stride: b_bs };
        let a = values(seed, if share_a { m * k } else { batch * m * k }.max(1), -1.0, 1.0);
        let b = values(seed + 1, if share_b { k * n } else { batch * k * n }.max(1), -1.0, 1.0);
        cross(&format!("{spec:?}"), &[a, b], |be, s| Ok(vec![be.matmul(&s[0], &s[1], &spec)?]))?;
    }

    /// Products of several 64×64 tiles: whole interior tiles (the kernel's unchecked fast path), ragged
    /// edge tiles and K steps, every thread's 8×8 block of results, both layouts of each operand.
    #[test]
    fn tiled_matmul_across_tiles_matches_cpu(
        m in 60usize..200, k in 1usize..300, n in 60usize..200, trans_a: bool, trans_b: bool,
        seed in 0u64..1000,
    ) {
        let spec = MatmulSpec::single(m, k, n, trans_a, trans_b);
        let a = values(seed, m * k, -1.0, 1.0);
        let b = values(seed + 1, k * n, -1.0, 1.0);
        let inputs = [a, b];
        let launch = |be: &dyn Backend, s: &[Storage]| Ok(vec![be.matmul(&s[0], &s[1], &spec)?]);
        cross(&format!("{spec:?}"), &inputs, launch)?;
        // The same products on the GEMM's other form (on llvmpipe the default one uses subgroups), and
        // with value-by-value loads (the default loads interior tiles by quads).
        if let Some(gpu) = workgroup_gemm_backend() {
            cross_on(&format!("{spec:?}, workgroup-memory GEMM"), gpu, &inputs, launch)?;
        }
        if let Some(gpu) = value_load_gemm_backend() {
            cross_on(&format!("{spec:?}, value loads"), gpu, &inputs, launch)?;
        }
    }

    /// The GEMM's quad loads (interior tiles, vec4 where aligned) on the products that take them: batched
    /// matmuls with shared operands, sizes that do and do not keep quads aligned, and every 1×1 convolution
    /// mode and the patchifying input gradient with enough channels for whole 64×64 tiles (planes whose
    /// pixel count is and is not a multiple of 4, so some quads cross images).
    #[test]
    fn quad_loads_match_cpu(
        batch in 1usize..3, m in 60usize..140, k in 14usize..90, n in 60usize..140, trans_a: bool,
        trans_b: bool, share_b: bool, cin in 14usize..80, cout in 14usize..80, h in 1usize..12,
        w in 1usize..12, patch in 2usize..5, bias: bool, seed in 0u64..1000,
    ) {
        let Some(gpu) = quad_gemm_backend() else { return Ok(()) };
        let b_bs = if share_b { 0 } else { k * n };
        let spec = MatmulSpec {
            batch, m, k, n, trans_a, trans_b, a_batch_stride: m * k, b_batch_stride: b_bs,
        };
        let a = values(seed, batch * m * k, -1.0, 1.0);
        let b = values(seed + 1, if share_b { k * n } else { batch * k * n }, -1.0, 1.0);
        cross_on(&format!("{spec:?}, quad loads"), gpu, &[a, b], |be, s| {
            Ok(vec![be.matmul(&s[0], &s[1], &spec)?])
        })?;
        // And with both channel counts at least 64, so the weight gradient (M = C_out, N = C_in + bias)
        // has interior tiles too.
        for (ci, co) in [(cin, cout), (64 + cin % 16, 64 + cout % 16)] {
            let pointwise = geometry(batch, ci, co, 1, (h, w), (1, 1), 1, 0, 1).unwrap();
            conv_cross_on(gpu, &pointwise, bias, seed)?;
        }
        let c = 1 + cin % 6;
        let x = Shape::new([batch, c, h * patch, w * patch]);
        let wt = Shape::new([cout, c, patch, patch]);
        let p = Conv2dParams { stride: [patch, patch], padding: [0, 0], dilation: [1, 1], groups: 1 };
        conv_cross_on(gpu, &Conv2dGeometry::new(&x, &wt, p).unwrap(), bias, seed)?;
    }

    #[test]
    fn workgroup_memory_gemm_convolutions_match_cpu(
        batch in 1usize..3, cin in 1usize..5, cout in 1usize..70, groups in 1usize..3,
        h in 1usize..10, w in 1usize..10, kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..3, padding in 0usize..3, bias: bool, seed in 0u64..1000,
    ) {
        // The convolutions' implicit GEMMs in the form that reads A from workgroup memory (the other tests
        // run the default form, which uses subgroups where the adapter has them); up to 138 output
        // channels, so the weight rows cross a 64-row tile.
        let Some(gpu) = workgroup_gemm_backend() else { return Ok(()) };
        if let Some(g) = geometry(batch, cin, cout, groups, (h, w), (kh, kw), stride, padding, 1) {
            conv_cross_on(gpu, &g, bias, seed)?;
        }
    }

    #[test]
    fn sum_axis_and_permute_match_cpu(
        outer in 1usize..6, len in 1usize..300, inner in 1usize..9,
        dims in prop::collection::vec(1usize..6, 1..6), perm_seed in 0u64..1000, seed in 0u64..1000,
    ) {
        let l = AxisLayout { outer, len, inner };
        let x = values(seed, l.numel(), -1.0, 1.0);
        cross(&format!("sum_axis {l:?}"), &[x], |b, s| Ok(vec![b.sum_axis(&s[0], l)?]))?;
        // A random permutation (Fisher–Yates from the seed).
        let mut perm: Vec<usize> = (0..dims.len()).collect();
        let mut rng = Rng::new(perm_seed);
        for i in (1..perm.len()).rev() {
            perm.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let n: usize = dims.iter().product();
        let x = values(seed + 7, n, -1.0, 1.0);
        cross(&format!("permute {dims:?} by {perm:?}"), &[x], |b, s| Ok(vec![b.permute(&s[0], &dims, &perm)?]))?;
    }

    #[test]
    fn grouped_and_dense_conv2d_matches_cpu(
        batch in 1usize..3, cin in 1usize..5, cout in 1usize..5, groups in 1usize..4,
        h in 1usize..10, w in 1usize..10, kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..4, padding in 0usize..3, dilation in 1usize..3, bias: bool, seed in 0u64..1000,
    ) {
        if let Some(g) = geometry(batch, cin, cout, groups, (h, w), (kh, kw), stride, padding, dilation) {
            conv_cross(&g, bias, seed)?;
        }
    }

    #[test]
    fn pointwise_conv2d_matches_cpu(
        batch in 1usize..3, cin in 1usize..9, cout in 1usize..9, groups in 1usize..3,
        h in 1usize..9, w in 1usize..9, dilation in 1usize..3, bias: bool, seed in 0u64..1000,
    ) {
        // 1×1, stride 1, no padding: the kernels' pointwise specialisation (dilation is irrelevant).
        let g = geometry(batch, cin, cout, groups, (h, w), (1, 1), 1, 0, dilation).unwrap();
        conv_cross(&g, bias, seed)?;
    }

    #[test]
    fn patchifying_conv2d_matches_cpu(
        batch in 1usize..3, cin in 1usize..5, cout in 1usize..5, groups in 1usize..3,
        kh in 1usize..5, kw in 1usize..5, ph in 1usize..4, pw in 1usize..4, extra in 0usize..2,
        bias: bool, seed in 0u64..1000,
    ) {
        // Stride = kernel, no padding: the stem and downsampling layers of a ConvNeXt. `extra` leaves
        // input rows and columns no tap reads (the general input-gradient path then runs instead).
        let (h, w) = (ph * kh + extra, pw * kw + extra);
        let x = Shape::new([batch, cin * groups, h, w]);
        let wt = Shape::new([cout * groups, cin, kh, kw]);
        let p = Conv2dParams { stride: [kh, kw], padding: [0, 0], dilation: [1, 1], groups };
        let g = Conv2dGeometry::new(&x, &wt, p).unwrap();
        conv_cross(&g, bias, seed)?;
    }

    #[test]
    fn depthwise_conv2d_matches_cpu(
        batch in 1usize..3, channels in 1usize..7, h in 1usize..12, w in 1usize..12, k in 1usize..8,
        stride in 1usize..4, padding in 0usize..4, dilation in 1usize..3, bias: bool, seed in 0u64..1000,
    ) {
        if let Some(g) = geometry(batch, 1, 1, channels, (h, w), (k, k), stride, padding, dilation) {
            prop_assert!(g.is_depthwise());
            conv_cross(&g, bias, seed)?;
        }
    }

    /// The stride-1 depthwise kernels (stride 1, dilation 1, padding below the kernel size), tiled and
    /// sliding-window: row widths that leave 0 to 3 outputs in the last window, the 7×7 ConvNeXt layer,
    /// and the fallback when the padding reaches the kernel size.
    #[test]
    fn depthwise_rows_match_cpu(
        batch in 1usize..3, channels in 1usize..5, h in 1usize..10, w in 1usize..60, k in 1usize..8,
        padding in 0usize..8, bias: bool, seed in 0u64..1000,
    ) {
        if let Some(g) = geometry(batch, 1, 1, channels, (h, w), (k, k), 1, padding.min(k), 1) {
            for b in [sliding_depthwise_backend(), tiled_depthwise_backend()].into_iter().flatten() {
                conv_cross_on(b, &g, bias, seed)?;
            }
        }
    }

    /// The tiled depthwise kernels at sizes that reach every part of them: planes from 1×1 (several to a
    /// workgroup, or too small for a tile) to 64×64 (several tiles each way, partial last tiles),
    /// rectangular kernels up to 8×8, plane counts that leave the last workgroup's plane slots part empty,
    /// and, on a backend that asks for many workgroups, the weight gradient split over image chunks.
    #[test]
    fn tiled_depthwise_kernels_match_cpu(
        batch in 1usize..4, channels in 1usize..10, h in 1usize..65, w in 1usize..65,
        kh in 1usize..9, kw in 1usize..9, ph in 0usize..8, pw in 0usize..8, bias: bool,
        seed in 0u64..1000,
    ) {
        let x = Shape::new([batch, channels, h, w]);
        let wt = Shape::new([channels, 1, kh, kw]);
        let p = Conv2dParams {
            stride: [1, 1], padding: [ph % kh, pw % kw], dilation: [1, 1], groups: channels,
        };
        if let Ok(g) = Conv2dGeometry::new(&x, &wt, p) {
            for b in [tiled_depthwise_backend(), chunked_depthwise_backend()].into_iter().flatten() {
                conv_cross_on(b, &g, bias, seed)?;
            }
        }
    }

    #[test]
    fn layer_norm_matches_cpu(
        outer in 1usize..5, len in 1usize..150, inner in 1usize..20,
        has_weight: bool, has_bias: bool, seed in 0u64..1000,
    ) {
        let l = AxisLayout { outer, len, inner };
        let inputs = vec![
            values(seed, l.numel(), -2.0, 2.0),
            values(seed + 1, len, 0.5, 1.5),
            values(seed + 2, len, -1.0, 1.0),
            values(seed + 3, l.numel(), -1.0, 1.0),
        ];
        cross(&format!("layer_norm {l:?}"), &inputs, |b, s| {
            let f = b.layer_norm(&s[0], has_weight.then_some(&s[1]), has_bias.then_some(&s[2]), l, 1e-5)?;
            let g = b.layer_norm_backward(&s[3], &s[0], has_weight.then_some(&s[1]), &f.mean, &f.rstd, l)?;
            Ok(vec![f.y, f.mean, f.rstd, g.dx, g.dweight, g.dbias])
        })?;
    }

    #[test]
    fn fused_adamw_matches_cpu(len in 1usize..3000, first_step: bool, scaled: bool, t in 1i32..50, seed in 0u64..1000) {
        let h = liera::backend::AdamWStep {
            lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05,
            bias1: 1.0 - 0.9f32.powi(t), bias2: 1.0 - 0.999f32.powi(t),
        };
        let inputs = vec![
            values(seed, len, -1.0, 1.0),
            values(seed + 1, len, -1.0, 1.0),
            values(seed + 2, len, -0.1, 0.1),
            values(seed + 3, len, 0.0, 0.01),
            values(seed + 4, 1, 0.1, 1.0),
        ];
        cross(&format!("adamw len {len}, t {t}, scaled {scaled}"), &inputs, |b, s| {
            let moments = (!first_step).then_some((&s[2], &s[3]));
            let (p, m, v) = b.adamw_update(&s[0], &s[1], moments, scaled.then_some(&s[4]), len, &h)?;
            Ok(vec![p, m, v])
        })?;
    }

    #[test]
    fn log_softmax_matches_cpu(outer in 1usize..6, len in 1usize..200, inner in 1usize..6, seed in 0u64..1000) {
        let l = AxisLayout { outer, len, inner };
        let inputs = vec![values(seed, l.numel(), -5.0, 5.0), values(seed + 1, l.numel(), -1.0, 1.0)];
        cross(&format!("log_softmax {l:?}"), &inputs, |b, s| {
            let y = b.log_softmax(&s[0], l)?;
            let dx = b.log_softmax_backward(&s[1], &y, l)?;
            Ok(vec![y, dx])
        })?;
    }
}

second_backends! {
    /// A GPU backend whose multi-tensor kernels get the smallest wide layout (8 storage bindings: one
    /// parameter per AdamW launch, 7 tensors per sum-of-squares launch), so a few tensors take several
    /// launches; and the default backend (the adapter's own limit, 32 on llvmpipe).
    narrow_backend: { max_wide_slots: Some(8), };
}

/// A chain of layers for the low-rank tests: (O, r, N, form, s) and each layer's W, B, A and upstream
/// gradient g, from `seed`. 13 layers (more than two launches' worth), every form, ranks 1 to 8.
#[allow(clippy::type_complexity)]
fn low_rank_chain(
    seed: u64,
) -> (
    Vec<(usize, usize, usize, liera::ops::reparam::ReparamForm, f32)>,
    Vec<[Vec<f32>; 4]>,
) {
    use liera::ops::reparam::ReparamForm;
    let mut rng = Rng::new(seed);
    let layers: Vec<(usize, usize, usize, ReparamForm, f32)> = (0..13)
        .map(|i| {
            let form = [
                ReparamForm::Add,
                ReparamForm::MulExp,
                ReparamForm::MulAffine,
            ][i % 3];
            (
                1 + (i * 37) % 90,
                1 + i % 8,
                1 + (i * 53) % 200,
                form,
                0.25 + 0.1 * i as f32,
            )
        })
        .collect();
    let data = layers
        .iter()
        .map(|&(o, r, n, _, _)| {
            [
                values(rng.next_u64() % 1000, o * n, -1.0, 1.0),
                values(rng.next_u64() % 1000, o * r, -0.5, 0.5),
                values(rng.next_u64() % 1000, r * n, -0.5, 0.5),
                values(rng.next_u64() % 1000, o * n, -1.0, 1.0),
            ]
        })
        .collect();
    (layers, data)
}

/// Every layer of `low_rank_chain(seed)` reparameterised in a row, then one backward pass of L = Σ_layers
/// Σ y ⊙ g on `dev`: [L, then W′, ∂B, ∂A per layer].
fn run_low_rank_chain(dev: &Device, seed: u64) -> liera::Result<Vec<Vec<f32>>> {
    let (layers, data) = low_rank_chain(seed);
    let mut factors = Vec::new();
    let mut ys = Vec::new();
    for (&(o, r, n, form, s), [w, b, a, _]) in layers.iter().zip(&data) {
        let w = Tensor::from_slice(w, [o, n], dev)?;
        let b = Tensor::param(b, [o, r], dev)?;
        let a = Tensor::param(a, [r, n], dev)?;
        ys.push(w.adapt_low_rank(&b, &a, s, form)?);
        factors.push((b, a));
    }
    // ∂L/∂W′ = g for each layer.
    let mut loss: Option<Tensor> = None;
    for ((&(o, _, n, _, _), [_, _, _, g]), y) in layers.iter().zip(&data).zip(&ys) {
        let term = y.mul(&Tensor::from_slice(g, [o, n], dev)?)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => l.add(&term)?,
            None => term,
        });
    }
    let loss = loss.expect("layers");
    let grads = loss.backward()?;
    // The loss reads every W′ through kernels recorded after the W′ were requested.
    let mut out = vec![loss.to_vec()?];
    for (y, (b, a)) in ys.iter().zip(&factors) {
        out.push(y.to_vec()?);
        out.push(grads.get(b).expect("∂B").to_vec()?);
        out.push(grads.get(a).expect("∂A").to_vec()?);
    }
    Ok(out)
}

/// `run_low_rank_chain` on a GPU device against the CPU's.
fn check_low_rank_chain(
    got: &[Vec<f32>],
    want: &[Vec<f32>],
    label: &str,
) -> Result<(), TestCaseError> {
    close(&format!("{label} the loss"), &got[0], &want[0])?;
    for (k, (g, w)) in got[1..].iter().zip(&want[1..]).enumerate() {
        let what = format!("{label} layer {} {}", k / 3, ["W′", "∂B", "∂A"][k % 3]);
        close(&what, g, w)?;
    }
    Ok(())
}

/// Many layers' low-rank reparameterisations in a row, then one backward pass: the GPU gathers them into
/// multi-problem launches (a group per pass, split when the wide layout is full); every W′, ∂B and ∂A
/// matches the CPU, on the default backend (up to 6 forward and 5 backward problems per launch on
/// llvmpipe) and on one with 8 storage bindings (2 and 1).
#[test]
fn gathered_low_rank_reparameterisations_match_cpu() {
    let Some(gpu) = gpu_device() else { return };
    let narrow = Device::from_backend(std::sync::Arc::new(
        GpuBackend::new(GpuOptions {
            max_wide_slots: Some(8),
            ..GpuOptions::default()
        })
        .unwrap(),
    ));
    let want = run_low_rank_chain(&Device::cpu(), 11).unwrap();
    for (dev, label) in [(&gpu, "default:"), (&narrow, "8 slots:")] {
        let got = run_low_rank_chain(dev, 11).unwrap();
        check_low_rank_chain(&got, &want, label).unwrap();
    }
}

/// Threads sharing one GPU backend, each deferring reparameterisations and factor gradients at the same
/// time: the backend keeps one pending group for all of them, and every thread's results match the CPU.
/// With the group's lock let go between a look at the group and its launch (before this test), a problem
/// could join a group of the other kind, or a read of a W′ be recorded before its launch: this test then
/// failed in 5 of 6 runs (wrong losses and factor gradients), and the gathered test above once in five runs
/// of this file, from other tests on the shared device.
#[test]
fn threads_sharing_a_gpu_backend_defer_low_rank_work_safely() {
    let Some(gpu) = gpu_device() else { return };
    let want: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|t| run_low_rank_chain(&Device::cpu(), 20 + t).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for (t, want) in want.iter().enumerate() {
            let gpu = gpu.clone();
            scope.spawn(move || {
                for round in 0..3 {
                    let got = run_low_rank_chain(&gpu, 20 + t as u64).unwrap();
                    check_low_rank_chain(&got, want, &format!("thread {t} round {round}:"))
                        .unwrap();
                }
            });
        }
    });
}

second_backends! {
    /// GPU backends whose GEMM loads interior tiles by quads (the default), and value by value.
    quad_gemm_backend: { gemm_quads: Some(true), };
    /// See `quad_gemm_backend`.
    value_load_gemm_backend: { gemm_quads: Some(false), };
    /// GPU backends whose stride-1 depthwise convolutions take the sliding-window kernels, and the tiled ones
    /// (whichever the adapter's default, both are tested).
    sliding_depthwise_backend: { depthwise_tiles: Some(false), };
    /// See `sliding_depthwise_backend`.
    tiled_depthwise_backend: { depthwise_tiles: Some(true), };
    /// A tiled-depthwise GPU backend that wants 512 workgroups per launch, so the tiled weight gradient
    /// splits the batch into chunks (a workgroup per chunk and channel) and sums them.
    chunked_depthwise_backend: { depthwise_tiles: Some(true), min_parallel_workgroups: Some(512), };
    /// A GPU backend whose GEMM kernels never use subgroups (gemm_workgroup.wgsl), for the adapters where the
    /// default backend does.
    workgroup_gemm_backend: { subgroups: Some(false), };
}

/// GPU backends with 128×128 GEMM tiles (256 threads per workgroup: a hardware GPU's default where its
/// limits allow, 64×64 on llvmpipe) in the GEMM's three forms: the default (subgroups where the adapter
/// has them, quad loads), A from workgroup memory, and value-by-value loads. None, with a message, where the
/// adapter's limits do not allow such tiles.
fn wide_tile_backends() -> Vec<&'static GpuBackend> {
    static B: OnceLock<Vec<GpuBackend>> = OnceLock::new();
    let Some(limits) = quad_gemm_backend().map(|g| g.limits().clone()) else {
        return Vec::new();
    };
    B.get_or_init(|| {
        if !gemm_tile_fits(128, &limits) {
            eprintln!("skipped: this adapter's limits do not allow 128×128 GEMM tiles");
            return Vec::new();
        }
        [(None, None), (Some(false), None), (None, Some(false))]
            .into_iter()
            .map(|(subgroups, gemm_quads)| {
                GpuBackend::new(GpuOptions {
                    gemm_tile: Some(128),
                    // Every product with a tile's worth of outputs takes the 128 tile (see
                    // `GpuBackend::gemm_tile_for`), K unsplit.
                    min_parallel_workgroups: Some(1),
                    subgroups,
                    gemm_quads,
                    ..GpuOptions::default()
                })
                .expect("a 128-tile GPU backend on an adapter whose limits allow it")
            })
            .collect()
    })
    .iter()
    .collect()
}

/// A GEMM tile side the kernels do not have is refused with an error that names it.
#[test]
fn an_unknown_gemm_tile_side_is_an_error() {
    if gpu_device().is_none() {
        return;
    }
    let err = GpuBackend::new(GpuOptions {
        gemm_tile: Some(96),
        ..GpuOptions::default()
    })
    .expect_err("96 is no GEMM tile side");
    assert!(
        err.to_string().contains("96 is not a GEMM tile side"),
        "{err}"
    );
}

proptest! {
    // Each case runs three backends' products and convolutions.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// The GEMM with 128×128 tiles in each of its forms: products across up to three such tiles (interior and
    /// ragged edges, shared and transposed operands), 1×1 convolutions with channel counts on both sides of
    /// 128 (interior tiles in every mode, quads crossing images), and convolutions with taps.
    #[test]
    fn wide_gemm_tiles_match_cpu(
        batch in 1usize..3, m in 100usize..270, k in 1usize..150, n in 100usize..270, trans_a: bool,
        trans_b: bool, share_b: bool, cin in 100usize..160, cout in 100usize..160, h in 1usize..6,
        w in 1usize..6, kh in 1usize..4, bias: bool, seed in 0u64..1000,
    ) {
        let b_bs = if share_b { 0 } else { k * n };
        let spec = MatmulSpec {
            batch, m, k, n, trans_a, trans_b, a_batch_stride: m * k, b_batch_stride: b_bs,
        };
        let a = values(seed, batch * m * k, -1.0, 1.0);
        let b = values(seed + 1, if share_b { k * n } else { batch * k * n }, -1.0, 1.0);
        let pointwise = geometry(batch, cin, cout, 1, (h, w), (1, 1), 1, 0, 1).unwrap();
        for (form, gpu) in wide_tile_backends().into_iter().enumerate() {
            cross_on(&format!("{spec:?}, 128 tiles, form {form}"), gpu, &[a.clone(), b.clone()], |be, s| {
                Ok(vec![be.matmul(&s[0], &s[1], &spec)?])
            })?;
            conv_cross_on(gpu, &pointwise, bias, seed)?;
            if let Some(g) = geometry(batch, 1 + cin % 5, cout, 1, (h + 2, w + 2), (kh, kh), 1, kh / 2, 1) {
                conv_cross_on(gpu, &g, bias, seed)?;
            }
        }
    }
}

#[test]
fn the_gemm_uses_subgroups_where_the_adapter_offers_them_in_fitting_sizes() {
    if gpu_device().is_none() {
        return;
    }
    let gpu = GpuBackend::new(GpuOptions {
        subgroups: Some(true),
        ..GpuOptions::default()
    })
    .unwrap();
    let info = gpu.adapter_info();
    let (lo, hi) = (info.subgroup_min_size, info.subgroup_max_size);
    let fits = gpu.adapter_features().contains(wgpu::Features::SUBGROUP)
        && lo >= 8
        && hi <= 64
        && lo.is_power_of_two()
        && hi.is_power_of_two();
    assert_eq!(
        gpu.gemm_uses_subgroups(),
        fits,
        "{}: subgroup sizes {lo}..={hi}",
        info.name
    );
    let off = workgroup_gemm_backend().unwrap();
    assert!(!off.gemm_uses_subgroups());
}

/// A second GPU backend on the test adapter, with `options`, made once into `cell` (None without a GPU).
fn second_backend(
    cell: &'static OnceLock<Option<GpuBackend>>,
    options: GpuOptions,
) -> Option<&'static GpuBackend> {
    gpu_device()?;
    cell.get_or_init(|| {
        Some(GpuBackend::new(options).expect("a second GPU backend on the same adapter"))
    })
    .as_ref()
}

/// Random tensor lengths for the multi-tensor kernels: empty ones, short ones, and ones over a
/// sum-of-squares chunk (4096) so a tensor spans several workgroups.
fn multi_lengths() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![Just(0usize), 1usize..300, 4000usize..9000],
        1..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The per-channel sum (of x and of a product) with both its kernels (a thread or a workgroup per
    /// channel), and the per-channel scaled add, against the CPU.
    #[test]
    fn sum_keep_middle_matches_cpu(outer in 1usize..40, len in 1usize..70, inner in 1usize..700, seed in 0u64..1000) {
        let l = AxisLayout { outer, len, inner };
        let x = values(seed, l.numel(), -1.0, 1.0);
        let x2 = values(seed + 1, l.numel(), -1.0, 1.0);
        let scale = values(seed + 2, len, -1.0, 1.0);
        cross(&format!("sum_keep_middle, sum_product_keep_middle, channel_scale_add {l:?}"), &[x, x2, scale], |b, s| Ok(vec![
            b.sum_keep_middle(&s[0], l)?,
            b.sum_product_keep_middle(&s[0], &s[1], l)?,
            b.channel_scale_add(&s[0], &s[1], &s[2], l)?,
        ]))?;
    }

    /// AdamW over many parameters at once (the multi-tensor kernel, several launches on both layouts)
    /// against the CPU, and bit for bit against the one-parameter kernel on the same GPU: per-parameter
    /// learning rates, parameters with and without moments mixed, with and without a gradient scale.
    #[test]
    fn multi_tensor_adamw_matches_cpu_and_the_one_tensor_kernel(
        lens in multi_lengths(), moments in prop::collection::vec(any::<bool>(), 24),
        scaled: bool, t in 1i32..50, seed in 0u64..1000,
    ) {
        let Some(gpu) = gpu_device() else { return Ok(()) };
        let hs: Vec<_> = (0..lens.len())
            .map(|k| liera::backend::AdamWStep {
                lr: 1e-2 * (1.0 + k as f32 % 3.0), beta1: 0.9, beta2: 0.999, eps: 1e-8,
                weight_decay: 0.05 * (k % 2) as f32,
                bias1: 1.0 - 0.9f32.powi(t), bias2: 1.0 - 0.999f32.powi(t),
            })
            .collect();
        // Inputs: per tensor p, g, m, v; then the scale.
        let mut inputs = Vec::new();
        for (k, &len) in lens.iter().enumerate() {
            let s = seed + 10 * k as u64;
            inputs.extend([
                values(s, len, -1.0, 1.0),
                values(s + 1, len, -1.0, 1.0),
                values(s + 2, len, -0.1, 0.1),
                values(s + 3, len, 0.0, 0.01),
            ]);
        }
        inputs.push(values(seed + 5, 1, 0.1, 1.0));
        let many = |b: &dyn Backend, s: &[Storage]| -> liera::Result<Vec<Storage>> {
            let items: Vec<_> = lens.iter().enumerate().map(|(k, &len)| liera::backend::AdamWItem {
                param: &s[4 * k],
                grad: &s[4 * k + 1],
                moments: moments[k].then_some((&s[4 * k + 2], &s[4 * k + 3])),
                len,
                h: hs[k],
            }).collect();
            let out = b.adamw_update_many(&items, scaled.then_some(&s[4 * lens.len()]))?;
            Ok(out.into_iter().flat_map(|(p, m, v)| [p, m, v]).collect())
        };
        let one_by_one = |b: &dyn Backend, s: &[Storage]| -> liera::Result<Vec<Storage>> {
            let mut out = Vec::new();
            for (k, &len) in lens.iter().enumerate() {
                let mv = moments[k].then_some((&s[4 * k + 2], &s[4 * k + 3]));
                let (p, m, v) = b.adamw_update(&s[4 * k], &s[4 * k + 1], mv, scaled.then_some(&s[4 * lens.len()]), len, &hs[k])?;
                out.extend([p, m, v]);
            }
            Ok(out)
        };
        let what = format!("adamw over {lens:?}, moments {moments:?}, scaled {scaled}");
        let mut backends: Vec<&dyn Backend> = vec![gpu.backend()];
        backends.extend(narrow_backend().map(|b| b as &dyn Backend));
        for b in backends {
            cross_on(&what, b, &inputs, many)?;
            let run = |f: &Launch<'_>| {
                let ins: Vec<Storage> = inputs.iter().map(|v| b.upload(v).unwrap()).collect();
                f(b, &ins).unwrap().iter().map(|s| b.download(s).unwrap()).collect::<Vec<_>>()
            };
            prop_assert_eq!(run(&many), run(&one_by_one), "{} on {}", what, b.name());
        }
    }

    /// Σ x² over many tensors (several launches and partial sums on both layouts, the same buffer given
    /// twice included) against the CPU.
    #[test]
    fn multi_tensor_sum_squares_matches_cpu(lens in multi_lengths(), twice in 0usize..24, seed in 0u64..1000) {
        let Some(gpu) = gpu_device() else { return Ok(()) };
        let inputs: Vec<Vec<f32>> = lens.iter().enumerate().map(|(k, &len)| values(seed + k as u64, len, -1.0, 1.0)).collect();
        let repeat = twice % lens.len();
        let f = |b: &dyn Backend, s: &[Storage]| -> liera::Result<Vec<Storage>> {
            let mut xs: Vec<(&Storage, usize)> = s.iter().zip(&lens).map(|(x, &len)| (x, len)).collect();
            xs.push((&s[repeat], lens[repeat]));
            Ok(vec![b.sum_squares(&xs)?])
        };
        let what = format!("sum_squares over {lens:?} and tensor {repeat} again");
        cross_on(&what, gpu.backend(), &inputs, f)?;
        if let Some(narrow) = narrow_backend() {
            cross_on(&what, narrow, &inputs, f)?;
        }
    }
}

second_backends! {
    /// A second GPU backend whose dispatches may use at most 4 workgroups per dimension, so launches of a few
    /// dozen workgroups are split over x, y and z exactly as launches of more than 65535 are on the real limit.
    split_backend: { max_workgroups_per_dim: Some(4), };
}

/// A kernel launch on some backend: inputs in, outputs out.
type Launch<'a> = dyn Fn(&dyn Backend, &[Storage]) -> liera::Result<Vec<Storage>> + 'a;

#[test]
fn split_dispatches_match_cpu() {
    let Some(gpu) = split_backend() else { return };
    let check = |what: &str, inputs: &[Vec<f32>], f: &Launch<'_>| {
        cross_on(what, gpu, inputs, f).unwrap();
    };
    // 9000 elements = 36 workgroups of 256: a 4 × 4 × 3 grid.
    let n = 9000;
    check("unary exp, split", &[values(1, n, -2.0, 2.0)], &|b, s| {
        Ok(vec![b.unary(UnaryOp::Exp, &s[0], n)?, b.fill(n, 0.5)?])
    });
    let l = merge_broadcast_dims(
        "t",
        &Shape::new([n / 9, 9]),
        &Shape::new([1, 9]),
        &Shape::new([n / 9, 9]),
    )
    .unwrap();
    check(
        "binary add, split",
        &[values(2, n, -1.0, 1.0), values(3, 9, -1.0, 1.0)],
        &|b, s| Ok(vec![b.binary(BinaryOp::Add, &s[0], &s[1], &l)?]),
    );
    // 2 × 3 × 5 = 30 output tiles of 64 × 64.
    let spec = MatmulSpec {
        batch: 2,
        m: 150,
        k: 20,
        n: 300,
        trans_a: false,
        trans_b: true,
        a_batch_stride: 3000,
        b_batch_stride: 0,
    };
    check(
        "matmul, split",
        &[values(4, 6000, -1.0, 1.0), values(5, 6000, -1.0, 1.0)],
        &|b, s| Ok(vec![b.matmul(&s[0], &s[1], &spec)?]),
    );
    let sl = AxisLayout {
        outer: 7,
        len: 64,
        inner: 5,
    };
    check(
        "sum_axis / softmax / layer norm, split",
        &[values(6, sl.numel(), -1.0, 1.0)],
        &|b, s| {
            let ln = b.layer_norm(&s[0], None, None, sl, 1e-5)?;
            let g = b.layer_norm_backward(&s[0], &s[0], None, &ln.mean, &ln.rstd, sl)?;
            Ok(vec![
                b.sum_axis(&s[0], sl)?,
                b.log_softmax(&s[0], sl)?,
                ln.y,
                g.dx,
                g.dweight,
            ])
        },
    );
    let g = geometry(2, 3, 2, 1, (30, 30), (3, 3), 1, 1, 1).unwrap();
    let dw = geometry(2, 1, 1, 3, (30, 30), (3, 3), 1, 1, 1).unwrap();
    for geom in [g, dw] {
        let inputs = vec![
            values(7, geom.input_shape().numel(), -1.0, 1.0),
            values(8, geom.weight_shape().numel(), -1.0, 1.0),
            values(9, geom.output_shape().numel(), -1.0, 1.0),
        ];
        check(&format!("conv2d {geom:?}, split"), &inputs, &|b, s| {
            Ok(vec![
                b.conv2d(&s[0], &s[1], None, &geom)?,
                b.conv2d_input_grad(&s[2], &s[1], &geom)?,
                b.conv2d_weight_grad(&s[0], &s[2], &geom)?,
            ])
        });
    }
    // More workgroups than 4³ cannot be dispatched: an error value, not a panic.
    let x = gpu.upload(&vec![1.0; 65 * 256]).unwrap();
    let err = gpu.unary(UnaryOp::Neg, &x, 65 * 256).unwrap_err();
    assert!(err.to_string().contains("workgroups"), "{err}");
}

#[test]
fn split_k_gemms_match_cpu() {
    if gpu_device().is_none() {
        return;
    }
    // A backend that splits K whenever a product has fewer than 64 output tiles.
    let gpu = GpuBackend::new(GpuOptions {
        min_parallel_workgroups: Some(64),
        ..GpuOptions::default()
    })
    .unwrap();
    for (batch, m, n, k, trans_a, trans_b) in [
        (1, 30, 20, 1000, false, false),
        (2, 70, 10, 900, true, false),
        (3, 5, 65, 600, false, true),
        (1, 64, 64, 2049, true, true),
    ] {
        let spec = MatmulSpec {
            batch,
            m,
            k,
            n,
            trans_a,
            trans_b,
            a_batch_stride: m * k,
            b_batch_stride: k * n,
        };
        let inputs = [
            values(1, batch * m * k, -1.0, 1.0),
            values(2, batch * k * n, -1.0, 1.0),
        ];
        cross_on(&format!("split-K {spec:?}"), &gpu, &inputs, |b, s| {
            Ok(vec![b.matmul(&s[0], &s[1], &spec)?])
        })
        .unwrap();
    }
    // K = 64·3·3 = 576 (forward), 64·9 (input grad), 2·20·20 = 800 (weight grad, with and without the
    // bias gradient's column).
    for groups in [1, 2] {
        let g = geometry(
            2,
            64 / groups,
            64 / groups,
            groups,
            (20, 20),
            (3, 3),
            1,
            1,
            1,
        )
        .unwrap();
        let inputs = vec![
            values(3, g.input_shape().numel(), -1.0, 1.0),
            values(4, g.weight_shape().numel(), -1.0, 1.0),
            values(5, g.c_out, -1.0, 1.0),
            values(6, g.output_shape().numel(), -1.0, 1.0),
        ];
        cross_on(&format!("split-K conv {g:?}"), &gpu, &inputs, |b, s| {
            let (dw, db) = b.conv2d_weight_bias_grad(&s[0], &s[3], &g)?;
            let (z, dz) = b.conv2d_gelu(&s[0], &s[1], Some(&s[2]), &g)?;
            Ok(vec![
                z,
                dz,
                b.conv2d(&s[0], &s[1], Some(&s[2]), &g)?,
                b.conv2d_input_grad(&s[3], &s[1], &g)?,
                b.conv2d_weight_grad(&s[0], &s[3], &g)?,
                dw,
                db,
            ])
        })
        .unwrap();
    }
}

#[test]
fn an_elementwise_op_over_more_than_65535_workgroups_is_split() {
    let Some(dev) = gpu_device() else { return };
    let b = dev.backend();
    // 65535·256 + 1000 floats (67 MB): one dimension of workgroups is not enough.
    let n = 65535 * 256 + 1000;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let y = b
        .download(
            &b.unary(UnaryOp::MulScalar(2.0), &b.upload(&x).unwrap(), n)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(y.len(), n);
    for i in (0..n).step_by(4099).chain(n - 1000..n) {
        assert_eq!(y[i], 2.0 * x[i], "element {i}");
    }
    // A broadcasting add over the same count: index decoding past 2²² (where the kernels' fast integer
    // division hands over to `/`) and below it.
    let rows = n / 8;
    let layout = merge_broadcast_dims(
        "t",
        &Shape::new([rows, 8]),
        &Shape::new([1, 8]),
        &Shape::new([rows, 8]),
    )
    .unwrap();
    let bias: Vec<f32> = (0..8).map(|j| j as f32 * 1000.0).collect();
    let (xs, bs) = (b.upload(&x).unwrap(), b.upload(&bias).unwrap());
    let z = b
        .download(&b.binary(BinaryOp::Add, &xs, &bs, &layout).unwrap())
        .unwrap();
    for i in (0..n).step_by(4099).chain(n - 1000..n) {
        assert_eq!(z[i], x[i] + bias[i % 8], "element {i}");
    }
}

#[test]
fn foreign_and_oversized_buffers_are_errors() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::cpu();
    let on_cpu = cpu.backend().upload(&[1.0, 2.0]).unwrap();
    let on_gpu = gpu.backend().upload(&[1.0, 2.0]).unwrap();
    let e = gpu.backend().unary(UnaryOp::Exp, &on_cpu, 2).unwrap_err();
    assert!(matches!(e, liera::Error::Device(_)), "{e}");
    let e = cpu.backend().unary(UnaryOp::Exp, &on_gpu, 2).unwrap_err();
    assert!(matches!(e, liera::Error::Device(_)), "{e}");
    // A tensor beyond the binding limit is refused with a message naming the limit.
    let e = gpu.backend().fill(1 << 40, 0.0).unwrap_err();
    assert!(e.to_string().contains("exceeds the largest buffer"), "{e}");
}

/// conv2d → layer_norm_channels → gelu → global_avg_pool → linear → cross_entropy, forward and backward.
fn small_conv_net(dev: &Device) -> liera::Result<(Tensor, Vec<Tensor>, liera::Grads)> {
    let p =
        |seed, n, shape: &[usize]| Tensor::param(&values(seed, n, -0.5, 0.5), shape.to_vec(), dev);
    let x = Tensor::from_slice(&values(1, 2 * 3 * 9 * 9, -1.0, 1.0), [2, 3, 9, 9], dev)?;
    let w = p(2, 8 * 3 * 3 * 3, &[8, 3, 3, 3])?;
    let b = p(3, 8, &[8])?;
    let ln_w = p(4, 8, &[8])?;
    let ln_b = p(5, 8, &[8])?;
    let fc_w = p(6, 5 * 8, &[5, 8])?;
    let fc_b = p(7, 5, &[5])?;
    let h = x.conv2d(&w, Some(&b), Conv2dParams::default().stride(2).padding(1))?;
    let h = h
        .layer_norm_channels(Some(&ln_w), Some(&ln_b), 1e-6)?
        .gelu()?;
    let logits = h.global_avg_pool()?.linear(&fc_w, Some(&fc_b))?;
    let loss = logits.cross_entropy(&[1, 4])?;
    let grads = loss.backward()?;
    Ok((loss, vec![w, b, ln_w, ln_b, fc_w, fc_b], grads))
}

#[test]
fn a_conv_net_step_reads_nothing_back_until_the_loss_is_asked_for() {
    let Some(gpu) = gpu_device() else { return };
    // Other tests share this device and read back concurrently, so the step runs on a private backend.
    let dev = Device::from_backend(std::sync::Arc::new(
        GpuBackend::new(GpuOptions::default()).unwrap(),
    ));
    let before = dev.backend().readback_count();
    let (loss, params, grads) = small_conv_net(&dev).unwrap();
    assert_eq!(
        dev.backend().readback_count(),
        before,
        "forward + backward read something back"
    );
    let l_gpu = loss.to_scalar().unwrap();
    assert_eq!(dev.backend().readback_count(), before + 1);

    // And the step agrees with the CPU: loss and every parameter gradient.
    let (loss_cpu, params_cpu, grads_cpu) = small_conv_net(&Device::cpu()).unwrap();
    close("loss", &[l_gpu], &[loss_cpu.to_scalar().unwrap()]).unwrap();
    for (k, (p, pc)) in params.iter().zip(&params_cpu).enumerate() {
        let g = grads.get(p).unwrap().to_vec().unwrap();
        let gc = grads_cpu.get(pc).unwrap().to_vec().unwrap();
        close(&format!("gradient of parameter {k}"), &g, &gc).unwrap();
    }
    let _ = gpu;
}

/// AdamW's fused gradient scale (gradient clipping's factor) is the multiply it replaces: on every
/// device, adamw(g, scale c) equals adamw(g·c) bit for bit, with g·c computed by the elementwise kernel.
#[test]
fn adamw_with_a_gradient_scale_equals_scaling_first() {
    let h = liera::backend::AdamWStep {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
        bias1: 1.0 - 0.9f32.powi(3),
        bias2: 1.0 - 0.999f32.powi(3),
    };
    let len = 1000;
    for dev in common::devices() {
        let b = dev.backend();
        let up = |v: Vec<f32>| b.upload(&v).unwrap();
        let (p, g, m, v) = (
            up(values(1, len, -1.0, 1.0)),
            up(values(2, len, -1.0, 1.0)),
            up(values(3, len, -0.1, 0.1)),
            up(values(4, len, 0.0, 0.01)),
        );
        let c = up(vec![0.37]);
        let layout = merge_broadcast_dims(
            "test",
            &Shape::new([len]),
            &Shape::scalar(),
            &Shape::new([len]),
        )
        .unwrap();
        let gc = b.binary(BinaryOp::Mul, &g, &c, &layout).unwrap();
        let fused = b
            .adamw_update(&p, &g, Some((&m, &v)), Some(&c), len, &h)
            .unwrap();
        let composed = b
            .adamw_update(&p, &gc, Some((&m, &v)), None, len, &h)
            .unwrap();
        for (what, x, y) in [
            ("p", &fused.0, &composed.0),
            ("m", &fused.1, &composed.1),
            ("v", &fused.2, &composed.2),
        ] {
            assert_eq!(
                b.download(x).unwrap(),
                b.download(y).unwrap(),
                "{what} on {}",
                b.name()
            );
        }
    }
}

/// The launch counters count what a step records, and a repeated step reuses its buffers: the parameter
/// blocks share one ring, readbacks one staging buffer, and outputs come from the pool, so the second step
/// creates no buffer at all; every dispatch gets one bind group; the batch is submitted once for the
/// loss readback.
#[test]
fn a_repeated_step_creates_no_buffers_and_counts_its_launches() {
    let Some(gpu) = gpu_device() else { return };
    let dev = Device::from_backend(std::sync::Arc::new(
        GpuBackend::new(GpuOptions::default()).unwrap(),
    ));
    let step = || {
        let (loss, _, grads) = small_conv_net(&dev).unwrap();
        let l = loss.to_scalar().unwrap();
        drop(grads);
        l
    };
    step(); // the first step also builds what later steps keep (the shared zero of broadcast_to)
    let c0 = dev.backend().counters();
    let first = step();
    let c1 = dev.backend().counters();
    let second = step();
    let c2 = dev.backend().counters();
    assert_eq!(first, second);
    let (a, b) = (c1 - c0, c2 - c1);
    assert!(a.dispatches > 10, "{a:?}");
    assert_eq!(
        a.dispatches, b.dispatches,
        "the same step records the same kernels"
    );
    // Bind groups are kept (see gpu_model's bind_groups_are_reused_from_step_to_step), but this net
    // uploads its input and parameters afresh each step, so most of its dispatches bind a new buffer.
    assert!(b.bind_groups <= b.dispatches, "{b:?}");
    assert_eq!(b.readbacks, 1, "{b:?}");
    assert_eq!(b.submits, 1, "{b:?}: one submit, for the readback");
    // Uploads (small_conv_net builds its input and six parameters anew, and cross-entropy uploads the
    // one-hot labels) are the only new buffers.
    assert_eq!(b.buffers_created, 8, "{b:?}: 8 uploads, nothing else");
    assert_eq!(Device::cpu().backend().counters(), Default::default());
    let _ = gpu;
}

#[test]
fn best_prefers_a_hardware_gpu_adapter() {
    let Some(gpu) = gpu_device() else { return };
    // The variables are process-wide, so only the default choice is checked here: a hardware adapter
    // always wins; a software one only when LIERA_REQUIRE_GPU=1 insists (else the CPU backend is faster).
    if std::env::var_os("LIERA_DEVICE").is_none() {
        let required = std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1");
        let best = Device::best().unwrap();
        if required || !gpu.backend().is_software_gpu() {
            assert!(best.same(&gpu));
        } else {
            assert!(best.same(&Device::cpu()));
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("GPU adapter: {}\n", gpu.name()).as_bytes(),
    );
}

#[test]
fn long_chains_of_kernels_stay_ordered_across_batches_and_pooled_buffers() {
    let Some(dev) = gpu_device() else { return };
    let b = dev.backend();
    // 700 dependent launches (several submitted batches); every intermediate is dropped at once, so its
    // pooled buffer is reused by a later launch while earlier reads of it may still be pending.
    let n = 1000;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let ones = b.fill(n, 1.0).unwrap();
    let layout =
        merge_broadcast_dims("t", &Shape::new([n]), &Shape::new([n]), &Shape::new([n])).unwrap();
    let mut y = b.upload(&x).unwrap();
    for _ in 0..350 {
        y = b.unary(UnaryOp::AddScalar(1.0), &y, n).unwrap();
        y = b.binary(BinaryOp::Mul, &y, &ones, &layout).unwrap();
    }
    let got = b.download(&y).unwrap();
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, i as f32 + 350.0, "element {i}");
    }
}

/// Runs an op built from ops in src/ops on both devices and compares the forward value and the tape's
/// gradient of L = Σ y ⊙ R (R fixed and random) with respect to every input.
fn cross_grad(
    what: &str,
    inputs: &[(Vec<f32>, Vec<usize>)],
    f: &dyn Fn(&[Tensor]) -> liera::Result<Tensor>,
) {
    let Some(gpu) = gpu_device() else { return };
    let run = |dev: &Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let params: Vec<Tensor> = inputs
            .iter()
            .map(|(v, s)| Tensor::param(v, s.clone(), dev).unwrap())
            .collect();
        let y = f(&params).unwrap_or_else(|e| panic!("{what}: {e}"));
        let r =
            Tensor::from_slice(&values(99, y.numel(), -1.0, 1.0), y.shape().clone(), dev).unwrap();
        let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = params
            .iter()
            .map(|p| {
                grads
                    .get(p)
                    .map_or(vec![0.0; p.numel()], |g| g.to_vec().unwrap())
            })
            .collect();
        (y.to_vec().unwrap(), g)
    };
    let (y_gpu, g_gpu) = run(&gpu);
    let (y_cpu, g_cpu) = run(&Device::cpu());
    close(&format!("{what}: forward"), &y_gpu, &y_cpu).unwrap();
    for (k, (g, c)) in g_gpu.iter().zip(&g_cpu).enumerate() {
        close(&format!("{what}: gradient of input {k}"), g, c).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn op_gradients_through_the_tape_match_cpu(
        n in 1usize..4, c in 1usize..6, h in 1usize..7, w in 1usize..7, seed in 0u64..1000,
    ) {
        let x = || (values(seed, n * c * h * w, -1.5, 1.5), vec![n, c, h, w]);
        // √x + ln x + x^1.5 (the divisor below) crosses 0 near x = 0.42, where f32 rounding differences
        // between the backends would be amplified without bound: x ≥ 0.8 keeps it above 1.3.
        let pos = || (values(seed + 1, n * c * h * w, 0.8, 2.0), vec![n, c, h, w]);
        let per_c = |s| (values(s, c, 0.5, 1.5), vec![c]);
        cross_grad("gelu·exp·sqrt·log·pow", &[x(), pos()], &|t| {
            let a = t[0].gelu()?.mul(&t[0].exp()?)?;
            let b = t[1].sqrt()?.add(&t[1].log()?)?.add(&t[1].pow_scalar(1.5)?)?;
            a.div(&b)?.add_scalar(0.5)?.mul_scalar(-2.0)?.neg()
        });
        cross_grad("sum, mean, permute, broadcasting", &[x(), (values(seed + 2, c * w, -1.0, 1.0), vec![c, 1, w])], &|t| {
            let y = t[0].sub(&t[1])?.permute(&[0, 2, 3, 1])?;
            y.sum(&[1], true)?.mul(&y.mean(&[3], true)?)
        });
        cross_grad("layer_norm_channels and layer_norm_last", &[x(), per_c(seed + 3), per_c(seed + 4)], &|t| {
            let y = t[0].layer_norm_channels(Some(&t[1]), Some(&t[2]), 1e-5)?;
            y.permute(&[0, 2, 3, 1])?.layer_norm_last(Some(&t[1]), None, 1e-5)
        });
        cross_grad("grn", &[x(), per_c(seed + 5), per_c(seed + 6)], &|t| {
            t[0].grn(&t[1], &t[2], 1e-6, false)
        });
        cross_grad("matmul_t and log_softmax", &[
            (values(seed + 7, n * c * h, -1.0, 1.0), vec![n, c, h]),
            (values(seed + 8, n * w * h, -1.0, 1.0), vec![n, w, h]),
        ], &|t| t[0].matmul_t(&t[1], false, true)?.log_softmax(2));
        cross_grad("conv2d with bias, groups", &[
            (values(seed + 9, n * 2 * c * h * w, -1.0, 1.0), vec![n, 2 * c, h, w]),
            (values(seed + 10, 4 * c * 2 * 2, -1.0, 1.0), vec![4, c, 2, 2]),
            (values(seed + 11, 4, -1.0, 1.0), vec![4]),
        ], &|t| t[0].conv2d(&t[1], Some(&t[2]), Conv2dParams::default().padding(1).groups(2)));
    }
}

#[test]
fn empty_tensors_run_without_launching() {
    let Some(dev) = gpu_device() else { return };
    let empty = Tensor::zeros([0, 3], &dev).unwrap();
    assert!(empty.exp().unwrap().to_vec().unwrap().is_empty());
    assert!(empty.add(&empty).unwrap().to_vec().unwrap().is_empty());
    let w = Tensor::ones([3, 4], &dev).unwrap();
    assert!(empty.matmul(&w).unwrap().to_vec().unwrap().is_empty());
    assert_eq!(
        empty.sum(&[0], false).unwrap().to_vec().unwrap(),
        vec![0.0; 3]
    );
    // k = 0: an empty sum, all zeros.
    let a = Tensor::zeros([2, 0], &dev).unwrap();
    let b = Tensor::zeros([0, 5], &dev).unwrap();
    assert_eq!(a.matmul(&b).unwrap().to_vec().unwrap(), vec![0.0; 10]);
}

/// A ConvNeXt's (optionally adapted) logits, loss and every parameter gradient after one forward/backward
/// on `dev`.
fn convnext_step(
    config: &liera::nn::ConvNeXtConfig,
    adapter: Option<liera::peft::AdapterKind>,
    dev: &Device,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    use liera::nn::Classifier;
    use liera::nn::{ConvNeXt, Module};
    let mut model = ConvNeXt::new(config.clone(), dev).unwrap();
    if let Some(kind) = adapter {
        let cfg = liera::peft::PeftConfig::new(kind, 4, 4.0, "conv_dw,mlp.fc1,mlp.fc2");
        liera::peft::apply(&mut model, &cfg).unwrap();
    }
    let x = Tensor::from_slice(&values(11, 2 * 32 * 32, -1.0, 1.0), [2, 1, 32, 32], dev).unwrap();
    let logits = model.forward(&x, true).unwrap();
    let grads = logits.cross_entropy(&[3, 7]).unwrap().backward().unwrap();
    let mut out = logits.to_vec().unwrap();
    out.push(logits.cross_entropy(&[3, 7]).unwrap().to_scalar().unwrap());
    let g = model
        .named_parameters()
        .into_iter()
        .filter_map(|(name, p)| grads.get(&p).map(|g| (name, g.to_vec().unwrap())))
        .collect();
    (out, g)
}

#[test]
fn convnext_forward_and_gradients_match_cpu() {
    if gpu_device().is_none() {
        return;
    }
    let mut micro = liera::nn::ConvNeXtConfig::micro();
    micro.ls_init_value = Some(0.5); // not 10⁻⁶, so the blocks' gradients are not vanishingly small
    let mut nhwc = micro.clone(); // the channels-last Linear MLP of convnext_tiny and up
    nhwc.conv_mlp = false;
    // v2 (GRN, no layer scale); with drop path, whose masks come from the seed on either device.
    // And with LieRA (exact and first order) and LoRA adapters on the depthwise and MLP layers.
    use liera::peft::AdapterKind;
    for (name, config, adapter) in [
        ("micro", micro.clone(), None),
        ("micro, channels-last MLP", nhwc, None),
        (
            "micro v2 with drop path",
            micro.clone().v2().with_drop_path(0.2),
            None,
        ),
        ("micro + LieRA", micro.clone(), Some(AdapterKind::Liera)),
        (
            "micro + LieRA first order",
            micro.clone(),
            Some(AdapterKind::LieraFirstOrder),
        ),
        ("micro + LoRA", micro, Some(AdapterKind::Lora)),
    ] {
        let (y_gpu, g_gpu) = convnext_step(&config, adapter, &gpu_device().unwrap());
        let (y_cpu, g_cpu) = convnext_step(&config, adapter, &Device::cpu());
        close(&format!("{name}: logits and loss"), &y_gpu, &y_cpu).unwrap();
        assert_eq!(g_gpu.len(), g_cpu.len());
        for ((path, g), (_, c)) in g_gpu.iter().zip(&g_cpu) {
            // Relative to each gradient's own largest entry (they can be far below 1); a deep chain of
            // reordered f32 sums, so 10⁻³ of that.
            let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(c).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-3 * (scale + b.abs()),
                    "{name}: gradient of {path}, element {i}: gpu {a} vs cpu {b} (largest {scale})"
                );
            }
        }
    }
}
