//! CPU matrix product: operands are packed row-major once (transposes resolved), then rows of C are computed
//! in parallel as sums of scaled rows of B, blocked over k so a panel of B stays in cache. The inner loop
//! (c_row += a · b_row) is a contiguous axpy that the compiler vectorises.

use crate::backend::MatmulSpec;
use rayon::prelude::*;
use std::borrow::Cow;

/// Rows of k processed per cache block.
const KC: usize = 256;
/// Rows of C handed to one rayon task.
const ROWS_PER_TASK: usize = 4;

/// C[b] = op(A[b]) · op(B[b]), contiguous (batch, m, n).
pub fn matmul(a: &[f32], b: &[f32], spec: &MatmulSpec) -> Vec<f32> {
    let MatmulSpec { batch, m, k, n, .. } = *spec;
    let mut c = vec![0.0f32; batch * m * n];
    if m * n == 0 {
        return c;
    }
    c.par_chunks_mut(m * n).enumerate().for_each(|(bi, c_mat)| {
        let a_mat = &a[bi * spec.a_batch_stride..bi * spec.a_batch_stride + m * k];
        let b_mat = &b[bi * spec.b_batch_stride..bi * spec.b_batch_stride + k * n];
        gemm_acc(a_mat, b_mat, c_mat, m, k, n, spec.trans_a, spec.trans_b);
    });
    c
}

/// Row-major copy of a rows×cols matrix stored transposed (cols×rows), or the matrix itself.
fn row_major(x: &[f32], rows: usize, cols: usize, transposed: bool) -> Cow<'_, [f32]> {
    if !transposed {
        return Cow::Borrowed(x);
    }
    let mut out = vec![0.0f32; rows * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        for (c, v) in row.iter_mut().enumerate() {
            *v = x[c * rows + r];
        }
    });
    Cow::Owned(out)
}

/// c += op(a)·op(b) for one m×k by k×n product; c is m×n row-major. Shared with the convolution kernels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) {
    // k = 0: an empty sum, c is unchanged (and a transposed pack would chunk by zero).
    if m * n == 0 || k == 0 {
        return;
    }
    let a = row_major(a, m, k, trans_a);
    let b = row_major(b, k, n, trans_b);
    let (a, b) = (&*a, &*b);
    c.par_chunks_mut(n * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, c_rows)| {
            let row0 = task * ROWS_PER_TASK;
            for p0 in (0..k).step_by(KC) {
                let p1 = (p0 + KC).min(k);
                for (r, c_row) in c_rows.chunks_mut(n).enumerate() {
                    let a_row = &a[(row0 + r) * k..(row0 + r + 1) * k];
                    for p in p0..p1 {
                        let alpha = a_row[p];
                        let b_row = &b[p * n..(p + 1) * n];
                        for (cv, &bv) in c_row.iter_mut().zip(b_row) {
                            *cv += alpha * bv;
                        }
                    }
                }
            }
        });
}
