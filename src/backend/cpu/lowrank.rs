//! An adapter's low-rank work in one pass over its kernel, on the CPU.
//!
//! **Forward.** W′ = op(W, B·A) for B (O×r), A (r×N), W (O×N), op one of the reparameterisations
//! (`AddScaled`: W + s·P, `MulExpScaled`: W ⊙ exp(s·P), `MulAffineScaled`: W ⊙ (1 + s·P), with P = B·A).
//! Each row of P is built 64 columns at a time from the r rows of A (r axpys of a fixed-size block) and
//! turned into W′ at once, so P is never stored: one read of W and one write of W′. The composed form (a
//! GEMM with k = r, then an elementwise pass) writes and rereads P, and its GEMM wastes most of a tile on
//! so short a k.
//!
//! **Backward.** With ∂P = s·(G ⊙ Z) (Z = W′ for LieRA, W for its first order, none for LoRA):
//! ∂B = ∂P·Aᵀ (O×r) and ∂A = Bᵀ·∂P (r×N), from one pass over G (and Z): each row's block of ∂P feeds its r
//! dot products with A's rows (∂B, kept as 64-lane partial sums) and r axpys into ∂A. Tasks take runs of
//! rows, each with its own ∂A, summed in task order at the end (deterministic). The composed form
//! writes ∂P and runs two GEMMs whose short side is r (a quarter of a 32-column tile for r = 8).

use super::{host, vec_written};
use crate::backend::{BinaryOp, LowRankGrads};
use crate::error::Result;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Columns per block: P's and ∂P's blocks live in fixed-size arrays, so their loops vectorise.
const BLOCK: usize = 64;
/// About this many kernel elements per task.
const TASK_ELEMENTS: usize = 1 << 14;

/// Rows per task for an O×N kernel.
fn rows_per_task(n: usize) -> usize {
    (TASK_ELEMENTS / n.max(1)).max(1)
}

/// W′ = op(W, B·A), or `None` for an `op` that is not a reparameterisation form.
pub fn low_rank_reparam(
    w: &[f32],
    b: &[f32],
    a: &[f32],
    (o, r, n): (usize, usize, usize),
    op: BinaryOp,
) -> Option<Vec<f32>> {
    use super::elementwise::exp;
    Some(match op {
        BinaryOp::AddScaled(s) => reparam_rows(w, b, a, (o, r, n), move |w, p| w + s * p),
        BinaryOp::MulExpScaled(s) => reparam_rows(w, b, a, (o, r, n), move |w, p| w * exp(s * p)),
        BinaryOp::MulAffineScaled(s) => {
            reparam_rows(w, b, a, (o, r, n), move |w, p| w * (1.0 + s * p))
        }
        _ => return None,
    })
}

fn reparam_rows(
    w: &[f32],
    b: &[f32],
    a: &[f32],
    (o, r, n): (usize, usize, usize),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    if o * n == 0 {
        return Vec::new();
    }
    let (w, b, a) = (&w[..o * n], &b[..o * r], &a[..r * n]);
    let rows = |i0: usize, out: &mut [MaybeUninit<f32>]| {
        super::elementwise::widest(
            #[inline(always)]
            || {
                for (di, out_row) in out.chunks_mut(n).enumerate() {
                    let i = i0 + di;
                    let b_row = &b[i * r..(i + 1) * r];
                    for j0 in (0..n).step_by(BLOCK) {
                        let len = BLOCK.min(n - j0);
                        let mut p = [0.0f32; BLOCK];
                        if len == BLOCK {
                            // A whole block: fixed trip counts, so P stays in registers across the ranks.
                            for (k, &bk) in b_row.iter().enumerate() {
                                let a_blk: &[f32; BLOCK] = a[k * n + j0..k * n + j0 + BLOCK]
                                    .try_into()
                                    .expect("BLOCK values");
                                for (pj, &aj) in p.iter_mut().zip(a_blk) {
                                    *pj += bk * aj;
                                }
                            }
                        } else {
                            for (k, &bk) in b_row.iter().enumerate() {
                                let a_blk = &a[k * n + j0..k * n + j0 + len];
                                for (pj, &aj) in p.iter_mut().zip(a_blk) {
                                    *pj += bk * aj;
                                }
                            }
                        }
                        let w_blk = &w[i * n + j0..i * n + j0 + len];
                        for ((y, &wj), &pj) in out_row[j0..j0 + len].iter_mut().zip(w_blk).zip(&p) {
                            y.write(f(wj, pj));
                        }
                    }
                }
            },
        )
    };
    let per_task = rows_per_task(n);
    // SAFETY: the tasks' row runs cover the o·n outputs, and each row is written whole (every block).
    unsafe {
        vec_written(o * n, |out| {
            if o * n <= TASK_ELEMENTS {
                rows(0, out);
            } else {
                out.par_chunks_mut(per_task * n)
                    .enumerate()
                    .for_each(|(t, chunk)| rows(t * per_task, chunk));
            }
        })
    }
}

/// The sum of a block of partial sums: folded to 8 lanes by whole-vector adds, then those 8 added (64
/// dependent scalar adds per rank and row were about as long as the row's multiply-adds for N = 320).
#[inline(always)]
fn lane_sum(lane: &[f32; BLOCK]) -> f32 {
    let mut v = [0.0f32; 8];
    for chunk in lane.chunks_exact(8) {
        for (a, &x) in v.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    v.iter().sum()
}

/// (∂B, ∂A) of [`LowRankGrads`], each only where asked; an error if a buffer belongs to another device.
#[allow(clippy::type_complexity)]
pub fn low_rank_factor_grads(x: &LowRankGrads<'_>) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>)> {
    let (o, r, n) = x.dims;
    let (need_b, need_a) = x.need;
    let s = x.s;
    let (g, b, a) = (
        &host(x.g)?[..o * n],
        &host(x.b)?[..o * r],
        &host(x.a)?[..r * n],
    );
    let z = x.z.map(host).transpose()?.map(|z| &z[..o * n]);
    let per_task = rows_per_task(n);
    let tasks = o.div_ceil(per_task);
    // Task t: rows t·per_task.., its rows of ∂B and its own ∂A (r×N).
    let task = |t: usize| -> (Vec<f32>, Vec<f32>) {
        let (i0, i1) = (t * per_task, ((t + 1) * per_task).min(o));
        let mut db = if need_b {
            vec![0.0f32; (i1 - i0) * r]
        } else {
            Vec::new()
        };
        let mut da = if need_a {
            vec![0.0f32; r * n]
        } else {
            Vec::new()
        };
        super::elementwise::widest(
            #[inline(always)]
            || {
                // ∂B's partial sums for one row, 64 lanes per rank index.
                let mut lanes = vec![[0.0f32; BLOCK]; if need_b { r } else { 0 }];
                for i in i0..i1 {
                    lanes.iter_mut().for_each(|l| *l = [0.0; BLOCK]);
                    let b_row = &b[i * r..(i + 1) * r];
                    for j0 in (0..n).step_by(BLOCK) {
                        let len = BLOCK.min(n - j0);
                        let mut dp = [0.0f32; BLOCK];
                        let g_blk = &g[i * n + j0..i * n + j0 + len];
                        match z {
                            Some(z) => {
                                let z_blk = &z[i * n + j0..i * n + j0 + len];
                                for ((d, &gj), &zj) in dp.iter_mut().zip(g_blk).zip(z_blk) {
                                    *d = s * gj * zj;
                                }
                            }
                            None => {
                                for (d, &gj) in dp.iter_mut().zip(g_blk) {
                                    *d = s * gj;
                                }
                            }
                        }
                        if len == BLOCK {
                            // A whole block: the same sums in loops of fixed length, which the compiler
                            // turns into whole vectors without remainder code.
                            for (k, lane) in lanes.iter_mut().enumerate() {
                                let a_blk: &[f32; BLOCK] = a[k * n + j0..k * n + j0 + BLOCK]
                                    .try_into()
                                    .expect("BLOCK values");
                                for ((l, &d), &aj) in lane.iter_mut().zip(&dp).zip(a_blk) {
                                    *l += d * aj;
                                }
                            }
                            if need_a {
                                for (k, &bk) in b_row.iter().enumerate() {
                                    let da_blk: &mut [f32; BLOCK] = (&mut da
                                        [k * n + j0..k * n + j0 + BLOCK])
                                        .try_into()
                                        .expect("BLOCK values");
                                    for (acc, &d) in da_blk.iter_mut().zip(&dp) {
                                        *acc += bk * d;
                                    }
                                }
                            }
                        } else {
                            for (k, lane) in lanes.iter_mut().enumerate() {
                                let a_blk = &a[k * n + j0..k * n + j0 + len];
                                for ((l, &d), &aj) in lane.iter_mut().zip(&dp).zip(a_blk) {
                                    *l += d * aj;
                                }
                            }
                            if need_a {
                                for (k, &bk) in b_row.iter().enumerate() {
                                    let da_blk = &mut da[k * n + j0..k * n + j0 + len];
                                    for (acc, &d) in da_blk.iter_mut().zip(&dp) {
                                        *acc += bk * d;
                                    }
                                }
                            }
                        }
                    }
                    for (k, lane) in lanes.iter().enumerate() {
                        db[(i - i0) * r + k] = lane_sum(lane);
                    }
                }
            },
        );
        (db, da)
    };
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if tasks <= 1 {
        (0..tasks).map(task).collect()
    } else {
        (0..tasks).into_par_iter().map(task).collect()
    };
    let db = need_b.then(|| {
        parts
            .iter()
            .flat_map(|(db, _)| db.iter().copied())
            .collect()
    });
    let da = need_a.then(|| {
        let mut da = vec![0.0f32; r * n];
        for (_, part) in &parts {
            da.iter_mut().zip(part).for_each(|(acc, &v)| *acc += v);
        }
        da
    });
    Ok((db, da))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LowRankGrads, Storage};
    use std::sync::Arc;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.8)
            .collect()
    }

    /// The one-pass forward and backward against plain f64 sums, for every form, with and without Z, for
    /// each subset of the wanted gradients, on kernels of one task and of several (the ∂A partials summed).
    #[test]
    fn one_pass_low_rank_work_matches_the_plain_sums() {
        for (o, r, n) in [(5, 3, 7), (96, 8, 320), (300, 4, 65)] {
            let (w, b, a, g) = (
                vals(o * n, 1),
                vals(o * r, 2),
                vals(r * n, 3),
                vals(o * n, 4),
            );
            let s = 0.7f32;
            let p = |i: usize, j: usize| {
                (0..r)
                    .map(|k| b[i * r + k] as f64 * a[k * n + j] as f64)
                    .sum::<f64>()
            };
            for (op, f) in [
                (
                    BinaryOp::AddScaled(s),
                    (|w: f64, p: f64, s: f64| w + s * p) as fn(f64, f64, f64) -> f64,
                ),
                (BinaryOp::MulExpScaled(s), |w, p, s| w * (s * p).exp()),
                (BinaryOp::MulAffineScaled(s), |w, p, s| w * (1.0 + s * p)),
            ] {
                let y =
                    low_rank_reparam(&w, &b, &a, (o, r, n), op).expect("a reparameterisation form");
                for i in 0..o {
                    for j in 0..n {
                        let want = f(w[i * n + j] as f64, p(i, j), s as f64);
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{op:?} {o}×{r}×{n} [{i}][{j}]: {got} vs {want}"
                        );
                    }
                }
            }
            assert!(low_rank_reparam(&w, &b, &a, (o, r, n), BinaryOp::Mul).is_none());
            let stores = |v: &[f32]| Storage::Cpu(Arc::new(v.to_vec()));
            let (gs, ws, bs, as_) = (stores(&g), stores(&w), stores(&b), stores(&a));
            for with_z in [false, true] {
                let dp = |i: usize, j: usize| {
                    s as f64 * g[i * n + j] as f64 * if with_z { w[i * n + j] as f64 } else { 1.0 }
                };
                for need in [(true, true), (true, false), (false, true)] {
                    let x = LowRankGrads {
                        g: &gs,
                        z: with_z.then_some(&ws),
                        b: &bs,
                        a: &as_,
                        dims: (o, r, n),
                        s,
                        need,
                    };
                    let (db, da) = low_rank_factor_grads(&x).expect("host buffers");
                    assert_eq!((db.is_some(), da.is_some()), need);
                    if let Some(db) = db {
                        for i in 0..o {
                            for k in 0..r {
                                let want: f64 =
                                    (0..n).map(|j| dp(i, j) * a[k * n + j] as f64).sum();
                                let got = db[i * r + k] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "∂B {o}×{r}×{n} z {with_z} [{i}][{k}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                    if let Some(da) = da {
                        for k in 0..r {
                            for j in 0..n {
                                let want: f64 =
                                    (0..o).map(|i| b[i * r + k] as f64 * dp(i, j)).sum();
                                let got = da[k * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "∂A {o}×{r}×{n} z {with_z} [{k}][{j}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
