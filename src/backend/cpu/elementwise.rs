//! CPU elementwise kernels: unary maps and broadcasting binary maps.

use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread (rayon's overhead would dominate).
const PAR_MIN: usize = 1 << 14;

/// erf(x), Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5·10⁻⁷, below f32 resolution near 1). The WGSL kernels
/// use the same formula so both backends agree.
pub fn erf(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    sign * (1.0 - poly * (-x * x).exp())
}

/// Exact GELU: x·Φ(x) with Φ(x) = (1 + erf(x/√2))/2.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU′(x) = Φ(x) + x·φ(x), φ(x) = exp(−x²/2)/√(2π).
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3; // 1/√(2π)
    cdf + x * pdf
}

fn unary_fn(op: UnaryOp) -> impl Fn(f32) -> f32 + Sync {
    move |x: f32| match op {
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Neg => -x,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Gelu => gelu(x),
        UnaryOp::AddScalar(c) => x + c,
        UnaryOp::MulScalar(c) => x * c,
        UnaryOp::PowScalar(c) => x.powf(c),
    }
}

/// y = f(x).
pub fn unary(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    let f = unary_fn(op);
    if x.len() < PAR_MIN {
        x.iter().map(|&v| f(v)).collect()
    } else {
        x.par_iter().map(|&v| f(v)).collect()
    }
}

fn binary_fn(op: BinaryOp) -> impl Fn(f32, f32) -> f32 + Sync {
    move |a: f32, b: f32| match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::GeluBackward => a * gelu_derivative(b),
    }
}

/// y = f(a, b) with broadcasting: the output is walked row by row (rows are its last merged axis), each
/// row's starting offsets in a and b decoded from the row index.
pub fn binary(op: BinaryOp, a: &[f32], b: &[f32], layout: &BroadcastLayout) -> Vec<f32> {
    let f = binary_fn(op);
    let n = layout.numel();
    let mut out = vec![0.0f32; n];
    if layout.is_contiguous() {
        let body = |(o, (&x, &y)): (&mut f32, (&f32, &f32))| *o = f(x, y);
        if n < PAR_MIN {
            out.iter_mut().zip(a.iter().zip(b)).for_each(body);
        } else {
            out.par_iter_mut().zip(a.par_iter().zip(b)).for_each(body);
        }
        return out;
    }
    let rank = layout.dims.len();
    let row = layout.dims[rank - 1];
    let (sa, sb) = (layout.a_strides[rank - 1], layout.b_strides[rank - 1]);
    let row_body = |(r, out_row): (usize, &mut [f32])| {
        // Decode the row index into offsets over the outer axes (innermost outer axis first).
        let (mut rem, mut oa, mut ob) = (r, 0usize, 0usize);
        for ax in (0..rank - 1).rev() {
            let i = rem % layout.dims[ax];
            rem /= layout.dims[ax];
            oa += i * layout.a_strides[ax];
            ob += i * layout.b_strides[ax];
        }
        for (j, o) in out_row.iter_mut().enumerate() {
            *o = f(a[oa + j * sa], b[ob + j * sb]);
        }
    };
    if n < PAR_MIN {
        out.chunks_mut(row).enumerate().for_each(row_body);
    } else {
        out.par_chunks_mut(row).enumerate().for_each(row_body);
    }
    out
}
