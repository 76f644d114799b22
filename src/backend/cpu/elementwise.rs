//! CPU elementwise kernels: unary maps and broadcasting binary maps.
//!
//! Each op runs its own monomorphised loop (the `match` on the op sits outside the loop), and the
//! transcendental functions used in training (exp, and erf inside GELU) are written branch-free from
//! polynomials, so the loops vectorise instead of calling libm once per element.

use super::vec_written;
use crate::backend::{AdamWStep, BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many elements a kernel runs on the calling thread (rayon's overhead would dominate).
const PAR_MIN: usize = 1 << 14;
/// Elements per rayon task.
const CHUNK: usize = 1 << 12;

/// a·b + c: fused into one rounding when `FMA`, for code compiled with FMA (inside [`widest`] on a CPU that
/// has it, or the FMA micro-kernels), where `mul_add` is one instruction; elsewhere it would be a call to
/// libm's `fmaf`, so the plain form.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The core of [`exp`] and [`exp_gauss`] (Cephes `expf`): for an argument already clamped to the caller's
/// range, xc = n·ln 2 + r with |r| ≤ ln2/2, and (eʳ by a degree-6 polynomial, n). Its multiply-adds by
/// [`madd`]; the plain form is the one [`exp`] has always computed.
#[inline(always)]
fn exp_reduced<const FMA: bool>(xc: f32) -> (f32, i32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest, so n·ln2 is subtracted without rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let shifted = madd::<FMA>(xc, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let er = madd::<FMA>(p * r, r, r) + 1.0;
    // n as an integer, read from the low bits of `shifted` (whose unit is 1 there): |n| ≤ 151 ≪ 2²², so
    // this equals `n as i32`. Rust's `as i32` saturates, which the compiler cannot vectorise: it became
    // one scalar conversion per element and made every exp-based kernel (GELU, its derivative) about 2.6×
    // slower.
    let ni = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    (er, ni)
}

/// 2ᵉ as an f32, for a normal result (−126 ≤ e ≤ 127), assembled in the exponent bits.
#[inline(always)]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// eˣ in f32, branch-free: [`exp_reduced`], then 2ⁿ as 2^⌊n/2⌋·2^⌈n/2⌉ (each factor a normal float for
/// every n used). Relative error ≤ 2 ulp over the normal range; above ln(f32::MAX) the result is +∞, far
/// below it underflows through the subnormals to 0, and NaN stays NaN (as libm's `expf`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAX_ARG: f32 = 88.722_84; // ln(f32::MAX)
    let (er, ni) = exp_reduced::<false>(x.clamp(-104.0, MAX_ARG));
    let y = er * pow2(ni >> 1) * pow2(ni - (ni >> 1));
    if x > MAX_ARG {
        f32::INFINITY
    } else {
        y
    }
}

/// eˣ for the Gaussian of erf and GELU′, whose arguments are never positive: [`exp_reduced`] with x
/// clamped below at −87.3, so 2ⁿ is one normal float (n ≥ −126) and no overflow check is needed. Below
/// the clamp it returns e^−87.3 ≈ 1.2·10⁻³⁸ instead of a smaller or zero value; every use multiplies it by
/// at most about 14, and erf's 1 − p·e rounds to the same f32 either way. A NaN input gives the clamp's
/// value here, and stays NaN through the rest of erf's formula.
#[inline(always)]
fn exp_gauss<const FMA: bool>(x: f32) -> f32 {
    let (er, ni) = exp_reduced::<FMA>(x.max(-87.3));
    er * pow2(ni)
}

/// erf(x), Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5·10⁻⁷, below f32 resolution near 1), branch-free. The
/// WGSL kernels use the same formula so both backends agree.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_and_gauss::<false>(x).0
}

/// (erf(x), exp(−x²)): the formula's exponential is returned too, for GELU′'s density (one exp for both).
/// Its polynomials in Horner form by [`madd`].
#[inline(always)]
fn erf_and_gauss<const FMA: bool>(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / madd::<FMA>(0.327_591_1, a, 1.0);
    let mut p = madd::<FMA>(t, 1.061_405_4, -1.453_152_1);
    p = madd::<FMA>(t, p, 1.421_413_8);
    p = madd::<FMA>(t, p, -0.284_496_74);
    p = madd::<FMA>(t, p, 0.254_829_6);
    let poly = t * p;
    let e = exp_gauss::<FMA>(-a * a);
    (madd::<FMA>(-poly, e, 1.0).copysign(x), e)
}

/// Exact GELU: x·Φ(x) with Φ(x) = (1 + erf(x/√2))/2.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<false>(x)
}

/// [`gelu`], its polynomials' multiply-adds fused when `FMA` (see [`madd`]): about a third fewer vector
/// operations where the CPU has FMA, and within an ulp or two of the plain form.
#[inline(always)]
pub(super) fn gelu_with<const FMA: bool>(x: f32) -> f32 {
    gelu_and_derivative_with::<FMA>(x).0
}

/// GELU′(x) = Φ(x) + x·φ(x), φ(x) = exp(−x²/2)/√(2π). With z = x/√2, erf(z) and φ share exp(−z²), so one
/// exp serves both.
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    gelu_derivative_with::<false>(x)
}

/// [`gelu_derivative`] with [`madd`]'s fused multiply-adds when `FMA`.
#[inline(always)]
fn gelu_derivative_with<const FMA: bool>(x: f32) -> f32 {
    gelu_and_derivative_with::<FMA>(x).1
}

/// (GELU(x), GELU′(x)) from one erf and one exp: the same bits as [`gelu_with`] and
/// [`gelu_derivative_with`], whose expressions these are. A convolution with GELU keeps both (the
/// derivative for its backward pass, [`gelu_and_derivative_in_place`]).
#[inline(always)]
fn gelu_and_derivative_with<const FMA: bool>(x: f32) -> (f32, f32) {
    let (erf, gauss) = erf_and_gauss::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2);
    let gelu = 0.5 * x * (1.0 + erf);
    let cdf = 0.5 * (1.0 + erf);
    let pdf = gauss * 0.398_942_3; // 1/√(2π)
    (gelu, madd::<FMA>(x, pdf, cdf))
}

/// Whether this CPU's [`widest`] code has FMA (x86-64 with AVX2+FMA or AVX-512): which form of GELU and
/// GELU′ the elementwise kernels use.
pub(super) fn has_fma() -> bool {
    isa() != Isa::Portable
}

/// Runs `body` compiled for the widest instruction set this CPU has. `body` is generic and inlined into
/// the `target_feature` function, so its loops are vectorised with AVX-512 or AVX2 where available (the
/// crate itself is built for baseline x86-64, which has only 4-wide SSE2).
#[inline(always)]
pub(super) fn widest<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        match isa() {
            // SAFETY: `isa` found AVX-512F, AVX2 and FMA on this CPU.
            Isa::Avx512 => return unsafe { avx512(body) },
            // SAFETY: `isa` found AVX2 and FMA on this CPU.
            Isa::Avx2Fma => return unsafe { avx2(body) },
            Isa::Portable => {}
        }
    }
    body()
}

/// The widest instruction set of this CPU that the backend compiles code for (off x86-64 always the
/// portable one): what [`widest`] runs and which GEMM micro-kernel is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

pub(super) fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // AVX-512 code is compiled with AVX2 and FMA enabled too, so all three must be present.
        let avx2_fma =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if std::is_x86_feature_detected!("avx512f") && avx2_fma {
            return Isa::Avx512;
        }
        if avx2_fma {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// Floats per vector register in the code [`widest`] runs: 16 with AVX-512 (32 registers), else 8 (AVX2's
/// 16 registers; without AVX2 and FMA, or off x86, the compiler's vectors are narrower still). Register-blocked
/// loops size their blocks by it: a block of accumulators that fits AVX-512's registers spills on AVX2.
pub(super) fn widest_floats() -> usize {
    if isa() == Isa::Avx512 {
        16
    } else {
        8
    }
}

/// out[i] = f(x[i]) in parallel chunks.
fn map_unary(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let body = |(o, xs): (&mut [MaybeUninit<f32>], &[f32])| {
        widest(
            #[inline(always)]
            || {
                for (o, &v) in o.iter_mut().zip(xs) {
                    o.write(f(v));
                }
            },
        )
    };
    // SAFETY: the chunks of `out` pair with those of x, which has its length: every element is written.
    unsafe {
        vec_written(x.len(), |out| {
            if x.len() < PAR_MIN {
                body((out, x));
            } else {
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(body);
            }
        })
    }
}

/// y = f(x).
pub fn unary(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    match op {
        UnaryOp::Exp => map_unary(x, exp),
        UnaryOp::Log => map_unary(x, f32::ln),
        UnaryOp::Neg => map_unary(x, |v| -v),
        UnaryOp::Sqrt => map_unary(x, f32::sqrt),
        UnaryOp::Gelu if has_fma() => map_unary(x, gelu_with::<true>),
        UnaryOp::Gelu => map_unary(x, gelu),
        UnaryOp::GeluDerivative if has_fma() => map_unary(x, gelu_derivative_with::<true>),
        UnaryOp::GeluDerivative => map_unary(x, gelu_derivative),
        UnaryOp::AddScalar(c) => map_unary(x, move |v| v + c),
        UnaryOp::MulScalar(c) => map_unary(x, move |v| v * c),
        UnaryOp::PowScalar(c) => {
            if c == 2.0 {
                map_unary(x, |v| v * v)
            } else if c == 1.0 {
                map_unary(x, |v| v)
            } else {
                map_unary(x, move |v| v.powf(c))
            }
        }
        UnaryOp::MinScalar(c) => map_unary(x, move |v| if v > c { c } else { v }),
    }
}

/// Runs `$body` with `$f` bound to the scalar function of binary op `$op`, f(a, b): one table for
/// [`binary`] and [`binary_in_place`], so both compute the same bits.
macro_rules! with_binary_fn {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |x: f32, y: f32| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $f = |x: f32, y: f32| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $f = |x: f32, y: f32| x * y;
                $body
            }
            BinaryOp::Div => {
                let $f = |x: f32, y: f32| x / y;
                $body
            }
            BinaryOp::GeluBackward if has_fma() => {
                let $f = gelu_backward_with::<true>;
                $body
            }
            BinaryOp::GeluBackward => {
                let $f = gelu_backward_with::<false>;
                $body
            }
            BinaryOp::AddScaled(c) => {
                let $f = move |x: f32, y: f32| x + c * y;
                $body
            }
            BinaryOp::MulExpScaled(c) => {
                let $f = move |x: f32, y: f32| x * exp(c * y);
                $body
            }
            BinaryOp::MulAffineScaled(c) => {
                let $f = move |x: f32, y: f32| x * (1.0 + c * y);
                $body
            }
            BinaryOp::MulScaled(c) => {
                let $f = move |x: f32, y: f32| c * x * y;
                $body
            }
            BinaryOp::MinScalarBackward(c) => {
                let $f = move |g: f32, x: f32| if x > c { 0.0 } else { g };
                $body
            }
        }
    };
}

/// y = f(a, b) with broadcasting.
pub fn binary(op: BinaryOp, a: &[f32], b: &[f32], layout: &BroadcastLayout) -> Vec<f32> {
    with_binary_fn!(op, f => map_binary(a, b, layout, f))
}

/// GELU's backward at one element, g·GELU′(x): [`BinaryOp::GeluBackward`], whether into a new buffer or
/// over the gradient's own ([`binary_in_place`]).
#[inline(always)]
fn gelu_backward_with<const FMA: bool>(g: f32, x: f32) -> f32 {
    g * gelu_derivative_with::<FMA>(x)
}

/// a ← f(a, b) elementwise over a's own buffer, for a `b` of a's length: [`binary`]'s op (the same bits)
/// without a new output, so the pass reads two tensors and writes over one it has just read instead of
/// writing a third.
pub(super) fn binary_in_place(op: BinaryOp, a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{op:?} in place: operand lengths");
    with_binary_fn!(op, f => map_in_place(a, b, f))
}

/// y ← GELU(y) in place, returning GELU′ of the old y: [`gelu_and_derivative_with`] over a buffer in one
/// pass (in parallel chunks, in [`widest`]'s code).
pub(super) fn gelu_and_derivative_in_place(y: &mut [f32]) -> Vec<f32> {
    #[inline(always)]
    fn run<const FMA: bool>(y: &mut [f32], d: &mut [MaybeUninit<f32>]) {
        for (v, o) in y.iter_mut().zip(d) {
            let (z, dz) = gelu_and_derivative_with::<FMA>(*v);
            *v = z;
            o.write(dz);
        }
    }
    let fma = has_fma();
    let body = |(y, d): (&mut [f32], &mut [MaybeUninit<f32>])| {
        widest(
            #[inline(always)]
            || {
                if fma {
                    run::<true>(y, d)
                } else {
                    run::<false>(y, d)
                }
            },
        )
    };
    // SAFETY: the chunks of d pair with those of y, which has its length: every element is written.
    unsafe {
        vec_written(y.len(), |d| {
            if y.len() < PAR_MIN {
                body((y, d));
            } else {
                y.par_chunks_mut(CHUNK)
                    .zip(d.par_chunks_mut(CHUNK))
                    .for_each(body);
            }
        })
    }
}

/// a[i] ← f(a[i], b[i]) in parallel chunks, in [`widest`]'s code.
fn map_in_place(a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    let body = |(a, b): (&mut [f32], &[f32])| {
        widest(
            #[inline(always)]
            || {
                for (x, &y) in a.iter_mut().zip(b) {
                    *x = f(*x, y);
                }
            },
        )
    };
    if a.len() < PAR_MIN {
        body((a, b));
    } else {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .for_each(body);
    }
}

/// One output row of a broadcast: the row's operands are read with strides `sa`, `sb` (1 or 0 in every
/// layout the merge produces, each specialised so the loop vectorises).
#[inline(always)]
fn row_kernel(
    out: &mut [MaybeUninit<f32>],
    a: &[f32],
    sa: usize,
    b: &[f32],
    sb: usize,
    f: &impl Fn(f32, f32) -> f32,
) {
    let n = out.len();
    widest(
        #[inline(always)]
        || match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in out.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                    o.write(f(x, y));
                }
            }
            (1, 0) => {
                let y = b[0];
                for (o, &x) in out.iter_mut().zip(&a[..n]) {
                    o.write(f(x, y));
                }
            }
            (0, 1) => {
                let x = a[0];
                for (o, &y) in out.iter_mut().zip(&b[..n]) {
                    o.write(f(x, y));
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    o.write(f(a[j * sa], b[j * sb]));
                }
            }
        },
    )
}

/// The output is walked row by row (rows are its last merged axis), each row's starting offsets in a and b
/// decoded from the row index.
fn map_binary(
    a: &[f32],
    b: &[f32],
    layout: &BroadcastLayout,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let n = layout.numel();
    if n == 0 {
        return Vec::new();
    }
    if layout.is_contiguous() {
        let body = |(i, o): (usize, &mut [MaybeUninit<f32>])| {
            let s = i * CHUNK;
            row_kernel(o, &a[s..], 1, &b[s..], 1, &f);
        };
        // SAFETY: row_kernel writes every element of each chunk, and the chunks cover `out`.
        return unsafe {
            vec_written(n, |out| {
                if n < PAR_MIN {
                    row_kernel(out, a, 1, b, 1, &f);
                } else {
                    out.par_chunks_mut(CHUNK).enumerate().for_each(body);
                }
            })
        };
    }
    let rank = layout.dims.len();
    let row = layout.dims[rank - 1];
    let (sa, sb) = (layout.a_strides[rank - 1], layout.b_strides[rank - 1]);
    let row_body = |(r, out_row): (usize, &mut [MaybeUninit<f32>])| {
        // Decode the row index into offsets over the outer axes (innermost outer axis first).
        let (mut rem, mut oa, mut ob) = (r, 0usize, 0usize);
        for ax in (0..rank - 1).rev() {
            let i = rem % layout.dims[ax];
            rem /= layout.dims[ax];
            oa += i * layout.a_strides[ax];
            ob += i * layout.b_strides[ax];
        }
        row_kernel(out_row, &a[oa..], sa, &b[ob..], sb, &f);
    };
    // SAFETY: the rows cover the output (n is a multiple of the row length) and row_kernel writes each
    // row whole.
    unsafe {
        vec_written(n, |out| {
            if n < PAR_MIN {
                out.chunks_mut(row).enumerate().for_each(row_body);
            } else {
                out.par_chunks_mut(row)
                    .enumerate()
                    .with_min_len((CHUNK / row).max(1))
                    .for_each(row_body);
            }
        })
    }
}

/// The fused AdamW update (math in [`crate::backend::Backend::adamw_update`]): one pass over p, g, m, v.
pub fn adamw(
    p: &[f32],
    g: &[f32],
    moments: Option<(&[f32], &[f32])>,
    grad_scale: Option<f32>,
    h: &AdamWStep,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = p.len();
    let decay = 1.0 - h.lr * h.weight_decay;
    let c = grad_scale.unwrap_or(1.0);
    let (c1, c2) = (1.0 - h.beta1, 1.0 - h.beta2);
    let (inv_b2, step) = (1.0 / h.bias2, h.lr / h.bias1);
    type Out<'a> = &'a mut [MaybeUninit<f32>];
    let body = |i: usize, (po, (mo, vo)): (Out, (Out, Out))| {
        let s = i * CHUNK;
        widest(
            #[inline(always)]
            || {
                for j in 0..po.len() {
                    // g·1 is g exactly, so an absent scale multiplies by 1 (no branch in the loop).
                    let gj = g[s + j] * c;
                    let (m0, v0) = moments.map_or((0.0, 0.0), |(m, v)| (m[s + j], v[s + j]));
                    let m1 = h.beta1 * m0 + c1 * gj;
                    let v1 = h.beta2 * v0 + c2 * (gj * gj);
                    mo[j].write(m1);
                    vo[j].write(v1);
                    po[j].write(p[s + j] * decay - step * m1 / ((v1 * inv_b2).sqrt() + h.eps));
                }
            },
        )
    };
    // The three outputs are written once, never zeroed first (zeroed, they were three serial memsets of
    // every parameter's size per step). SAFETY: the chunks of each cover it, and `body` writes every
    // element of its three chunks.
    let (mut m_out, mut v_out) = (Vec::new(), Vec::new());
    let p_out = unsafe {
        vec_written(n, |po| {
            m_out = vec_written(n, |mo| {
                v_out = vec_written(n, |vo| {
                    po.par_chunks_mut(CHUNK)
                        .zip(mo.par_chunks_mut(CHUNK).zip(vo.par_chunks_mut(CHUNK)))
                        .enumerate()
                        .for_each(|(i, chunks)| body(i, chunks))
                })
            })
        })
    };
    (p_out, m_out, v_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused AdamW pass over several chunks (its three outputs written uninitialised) gives, for every
    /// element, the formula's value in the same f32 arithmetic, with and without moments and a gradient
    /// scale: no element of p, m or v is left unwritten or taken from another chunk.
    #[test]
    fn adamw_writes_every_element_of_its_three_outputs() {
        let n = 3 * CHUNK + 17;
        let val = |i: usize, a: usize, b: f32| ((i * a) % 101) as f32 / 50.0 - b;
        let p: Vec<f32> = (0..n).map(|i| val(i, 7, 1.0)).collect();
        let g: Vec<f32> = (0..n).map(|i| val(i, 13, 0.9)).collect();
        let m: Vec<f32> = (0..n).map(|i| val(i, 17, 1.1) * 0.1).collect();
        let v: Vec<f32> = (0..n).map(|i| val(i, 19, 0.0).abs() * 0.01).collect();
        let h = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            bias1: 0.19,
            bias2: 0.002,
        };
        for (moments, scale) in [(None, None), (Some((&m[..], &v[..])), Some(0.5f32))] {
            let (po, mo, vo) = adamw(&p, &g, moments, scale, &h);
            assert_eq!((po.len(), mo.len(), vo.len()), (n, n, n));
            for i in 0..n {
                let gi = g[i] * scale.unwrap_or(1.0);
                let (m0, v0) = moments.map_or((0.0, 0.0), |(m, v)| (m[i], v[i]));
                let m1 = h.beta1 * m0 + (1.0 - h.beta1) * gi;
                let v1 = h.beta2 * v0 + (1.0 - h.beta2) * (gi * gi);
                let p1 = p[i] * (1.0 - h.lr * h.weight_decay)
                    - h.lr / h.bias1 * m1 / ((v1 * (1.0 / h.bias2)).sqrt() + h.eps);
                assert_eq!(mo[i].to_bits(), m1.to_bits(), "m at {i}");
                assert_eq!(vo[i].to_bits(), v1.to_bits(), "v at {i}");
                assert_eq!(po[i].to_bits(), p1.to_bits(), "p at {i}");
            }
        }
    }

    /// The polynomial exp is within 2 ulp of the correctly rounded value (f64 reference) over the range
    /// training uses, and saturates instead of producing ∞ or NaN.
    #[test]
    fn exp_is_accurate_to_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.001_7;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // The edges behave as libm's expf: overflow to ∞, underflow to 0, NaN propagates, and the top of
        // the range (88.3 .. ln f32::MAX) is still accurate.
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        let top = exp(88.7) as f64;
        assert!(
            (top / (88.7f32 as f64).exp() - 1.0).abs() < 1e-6,
            "exp(88.7) = {top}"
        );
        let sub = exp(-95.0) as f64; // a subnormal result
        assert!(
            (sub / (-95.0f32 as f64).exp() - 1.0).abs() < 1e-3,
            "exp(-95) = {sub}"
        );
    }

    /// erf matches the f64 series to the formula's 1.5·10⁻⁷ plus f32 rounding.
    #[test]
    fn erf_matches_a_reference() {
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            // erf via the complementary series is overkill here: libm's erf in f64 is exact enough.
            let want = libm_erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 4e-7, "erf({x})");
        }
    }

    /// The Gaussian's exponential, plain and fused: within 2 ulp of eˣ down to the clamp, tiny below it.
    #[test]
    fn gauss_exp_is_accurate_to_two_ulp_in_both_forms() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
            for (form, got) in [
                ("plain", exp_gauss::<false>(x)),
                ("fused", exp_gauss::<true>(x)),
            ] {
                assert!(
                    (got as f64 - want).abs() <= 2.0 * ulp,
                    "{form} exp({x}) = {got}, want {want}"
                );
            }
            x += 0.001_3;
        }
        for x in [-87.5f32, -100.0, -1e4, f32::NEG_INFINITY] {
            for got in [exp_gauss::<false>(x), exp_gauss::<true>(x)] {
                assert!((0.0..1.3e-38).contains(&got), "exp({x}) = {got}");
            }
        }
    }

    /// GELU and GELU′, plain and fused, against the definitions in f64 (erf by its series); the public
    /// `gelu` and `gelu_derivative` are the plain forms.
    #[test]
    fn gelu_and_its_derivative_match_a_reference_in_both_forms() {
        let sqrt_half = std::f64::consts::FRAC_1_SQRT_2;
        for i in -600..=600 {
            let x = i as f32 / 100.0 + 0.003;
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + libm_erf(xd * sqrt_half));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let (want, want_d) = (xd * cdf, cdf + xd * pdf);
            let tol = 5e-7 * xd.abs().max(1.0);
            let forms = [
                (
                    "plain",
                    gelu_with::<false>(x),
                    gelu_derivative_with::<false>(x),
                ),
                (
                    "fused",
                    gelu_with::<true>(x),
                    gelu_derivative_with::<true>(x),
                ),
            ];
            for (form, g, d) in forms {
                assert!(
                    (g as f64 - want).abs() < tol,
                    "{form} gelu({x}) = {g}, want {want}"
                );
                assert!(
                    (d as f64 - want_d).abs() < tol,
                    "{form} gelu'({x}) = {d}, want {want_d}"
                );
            }
            assert_eq!(gelu(x), gelu_with::<false>(x));
            assert_eq!(gelu_derivative(x), gelu_derivative_with::<false>(x));
        }
    }

    /// Every binary op written over its first operand gives the bits of its new-buffer form, on enough
    /// elements for the parallel chunks; the GELU′ unary op is the derivative GELU's backward uses; and the
    /// one-pass GELU with GELU′ gives both unary ops' values.
    #[test]
    fn in_place_binary_ops_and_the_gelu_derivative_match_their_other_forms() {
        let n = 3 * CHUNK + 77;
        let a: Vec<f32> = (0..n).map(|i| (i % 301) as f32 / 50.0 - 3.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 173) as f32 / 40.0 - 2.0).collect();
        let shape = crate::shape::Shape::new([n]);
        let layout = crate::shape::merge_broadcast_dims("test", &shape, &shape, &shape).unwrap();
        let c = 0.37;
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::GeluBackward,
            BinaryOp::AddScaled(c),
            BinaryOp::MulExpScaled(c),
            BinaryOp::MulAffineScaled(c),
            BinaryOp::MulScaled(c),
            BinaryOp::MinScalarBackward(c),
        ] {
            let want = binary(op, &a, &b, &layout);
            let mut got = a.clone();
            binary_in_place(op, &mut got, &b);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{op:?}"
            );
        }
        let ones = vec![1.0; n];
        let from_backward = binary(BinaryOp::GeluBackward, &ones, &a, &layout);
        assert_eq!(unary(UnaryOp::GeluDerivative, &a), from_backward);
        // GELU and GELU′ in one pass, GELU over the input: the two unary ops' bits.
        let mut z = a.clone();
        let dz = gelu_and_derivative_in_place(&mut z);
        assert_eq!(z, unary(UnaryOp::Gelu, &a));
        assert_eq!(dz, from_backward);
    }

    /// erf(x) = 2/√π Σ (−1)ⁿ x^(2n+1) / (n!(2n+1)), summed until the terms vanish (|x| ≤ 4).
    fn libm_erf(x: f64) -> f64 {
        let (mut sum, mut term, mut n) = (0.0f64, x, 0.0f64);
        while term.abs() > 1e-18 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 300.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
