//! CPU reductions and data movement: sum over an axis, permute.

use super::elementwise::widest;
use super::vec_written;
use crate::backend::AxisLayout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// y[o, i] = Σ_l x[o, l, i].
pub fn sum_axis(x: &[f32], l: AxisLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; l.outer * l.inner];
    if l.inner == 1 {
        // Contiguous rows: one sum per row (`run_sum`: 16 f32 partial sums, added in f64).
        out.par_iter_mut()
            .enumerate()
            .with_min_len(64)
            .for_each(|(o, y)| {
                *y = run_sum(&x[o * l.len..(o + 1) * l.len], None) as f32;
            });
        return out;
    }
    out.par_chunks_mut(l.inner.max(1))
        .enumerate()
        .for_each(|(o, y)| {
            let base = o * l.len * l.inner;
            for j in 0..l.len {
                let row = &x[base + j * l.inner..base + (j + 1) * l.inner];
                for (acc, &v) in y.iter_mut().zip(row) {
                    *acc += v;
                }
            }
        });
    out
}

/// Σ x (with `y`, Σ x·y) over a contiguous run: 16 f32 partial sums side by side (independent, so the loop
/// vectorises, where one f64 accumulator is a chain of dependent adds), added in f64 at the end. A run of
/// n values puts n/16 terms in each partial sum.
#[inline]
pub(super) fn run_sum(x: &[f32], y: Option<&[f32]>) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let mut tail = 0.0f64;
    match y {
        None => {
            let chunks = x.chunks_exact(LANES);
            tail += chunks.remainder().iter().map(|&v| v as f64).sum::<f64>();
            for c in chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
        }
        Some(y) => {
            let (xc, yc) = (x.chunks_exact(LANES), y[..x.len()].chunks_exact(LANES));
            tail += xc
                .remainder()
                .iter()
                .zip(yc.remainder())
                .map(|(&u, &v)| (u * v) as f64)
                .sum::<f64>();
            for (c, d) in xc.zip(yc) {
                for ((a, &u), &v) in acc.iter_mut().zip(c).zip(d) {
                    *a += u * v;
                }
            }
        }
    }
    tail + acc.iter().map(|&a| a as f64).sum::<f64>()
}

/// y[l] = Σ_o Σ_i x[o, l, i]: one pass per output (in parallel over l), each contiguous run of `inner`
/// values summed by `run_sum`.
pub fn sum_keep_middle(x: &[f32], l: AxisLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; l.len];
    out.par_iter_mut().enumerate().for_each(|(c, y)| {
        let mut acc = 0.0f64;
        for o in 0..l.outer {
            let start = (o * l.len + c) * l.inner;
            acc += run_sum(&x[start..start + l.inner], None);
        }
        *y = acc as f32;
    });
    out
}

/// y[l] = Σ_o Σ_i a·b at (o, l, i), like [`sum_keep_middle`].
pub fn sum_product_keep_middle(a: &[f32], b: &[f32], l: AxisLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; l.len];
    out.par_iter_mut().enumerate().for_each(|(c, y)| {
        let mut acc = 0.0f64;
        for o in 0..l.outer {
            let start = (o * l.len + c) * l.inner;
            let (a, b) = (&a[start..start + l.inner], &b[start..start + l.inner]);
            acc += run_sum(a, Some(b));
        }
        *y = acc as f32;
    });
    out
}

/// y = x + scale[l]·h at every (o, l, i), one rayon task per (o, l) row (at least 16 rows a task), the output
/// written once, never zeroed first, by loops compiled for the widest vector instruction set (`widest`).
/// A zeroed output cost a serial `memset` on the calling thread before the parallel pass: the op's threads
/// were busy 70–77% of its time in the op profile of the 224 LieRA step.
pub fn channel_scale_add(x: &[f32], h: &[f32], scale: &[f32], l: AxisLayout) -> Vec<f32> {
    let n = l.numel();
    assert!(
        x.len() >= n && h.len() >= n && scale.len() >= l.len,
        "channel_scale_add: {} and {} values and {} scales for {n} outputs of {} channels",
        x.len(),
        h.len(),
        scale.len(),
        l.len
    );
    #[inline(always)]
    fn row(y: &mut [MaybeUninit<f32>], x: &[f32], h: &[f32], s: f32) {
        for ((y, &x), &h) in y.iter_mut().zip(x).zip(h) {
            y.write(x + s * h);
        }
    }
    let inner = l.inner.max(1);
    // SAFETY: the rows cover the output, and each row's loop writes every one of its elements (x and h
    // hold at least n values, asserted above).
    unsafe {
        vec_written(n, |y| {
            y.par_chunks_mut(inner)
                .enumerate()
                .with_min_len(16)
                .for_each(|(r, y)| {
                    let s = scale[r % l.len.max(1)];
                    let start = r * inner;
                    let (x, h) = (&x[start..start + y.len()], &h[start..start + y.len()]);
                    widest(
                        #[inline(always)]
                        || row(y, x, h, s),
                    )
                })
        })
    }
}

/// Σ over the slices of Σ_i x_i², by `run_sum` over chunks of at most 16384 values of one slice (so at
/// most 1024 terms in each f32 partial sum), computed in parallel and added in f64 in a fixed order, so the result does not depend on the thread count or
/// on scheduling (a resumed run clips exactly as an uninterrupted one).
pub fn sum_squares(xs: &[&[f32]]) -> f32 {
    const CHUNK: usize = 16384;
    let chunks: Vec<&[f32]> = xs.iter().flat_map(|x| x.chunks(CHUNK)).collect();
    let partial: Vec<f64> = chunks.par_iter().map(|c| run_sum(c, Some(c))).collect();
    partial.iter().sum::<f64>() as f32
}

/// y = x with axes reordered: y's axis k is x's axis perm[k].
pub fn permute(x: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = dims.len();
    let n: usize = dims.iter().product();
    let mut out = vec![0.0f32; n];
    if rank == 0 || n == 0 {
        out.copy_from_slice(&x[..n]);
        return out;
    }
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank - 1).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    // Stride in x of each output axis.
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let row = out_dims[rank - 1];
    let inner_stride = src_strides[rank - 1];
    out.par_chunks_mut(row.max(1))
        .enumerate()
        .with_min_len(16)
        .for_each(|(r, out_row)| {
            let (mut rem, mut off) = (r, 0usize);
            for ax in (0..rank - 1).rev() {
                off += (rem % out_dims[ax]) * src_strides[ax];
                rem /= out_dims[ax];
            }
            for (j, o) in out_row.iter_mut().enumerate() {
                *o = x[off + j * inner_stride];
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer-scaled residual over many rows (several rayon tasks of at least 16 rows, rows of 1 to 49
    /// values, so both the vector loop and its tail run) equals x + scale·h element by element, in the same
    /// f32 arithmetic, so bit for bit: no element is left unwritten.
    #[test]
    fn channel_scale_add_writes_every_element() {
        for (outer, len, inner) in [(3, 40, 49), (2, 7, 1), (1, 130, 17), (4, 5, 9)] {
            let l = AxisLayout { outer, len, inner };
            let n = l.numel();
            let x: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 31.0 - 1.5).collect();
            let h: Vec<f32> = (0..n).map(|i| (i % 89) as f32 / 17.0 - 2.5).collect();
            let scale: Vec<f32> = (0..len).map(|c| c as f32 / 7.0 - 0.75).collect();
            let y = channel_scale_add(&x, &h, &scale, l);
            assert_eq!(y.len(), n);
            for (i, &v) in y.iter().enumerate() {
                let want = x[i] + scale[(i / inner) % len] * h[i];
                assert_eq!(v.to_bits(), want.to_bits(), "{outer}×{len}×{inner} at {i}");
            }
        }
    }
}
