//! CPU Global Response Normalisation, forward and backward (math in `ops/grn.rs`). Each image is one rayon
//! task: a pass over it gathers the per-channel sums (walking the memory in order, for either layout), a
//! second pass writes y or ∂L/∂x; the parameter gradients add the images' per-channel sums in image order.

use crate::backend::GrnLayout;
use rayon::prelude::*;

/// δ under G's square root (see `ops/grn.rs`).
const DELTA: f32 = 1e-30;

/// Calls `f(c, i)` for every element i of one image's (c, p) or (p, c) block, in memory order.
fn each(l: GrnLayout, mut f: impl FnMut(usize, usize)) {
    let (c_n, p_n) = (l.channels, l.positions);
    if l.channels_last {
        for p in 0..p_n {
            for c in 0..c_n {
                f(c, p * c_n + c);
            }
        }
    } else {
        for c in 0..c_n {
            for p in 0..p_n {
                f(c, c * p_n + p);
            }
        }
    }
}

/// Forward: returns (y, G per (n, c), D per n).
pub fn grn(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    l: GrnLayout,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let block = (l.channels * l.positions).max(1);
    let c_n = l.channels;
    let mut y = vec![0.0f32; l.numel()];
    let mut gnorm = vec![0.0f32; l.batch * c_n];
    let mut denom = vec![0.0f32; l.batch];
    y.par_chunks_mut(block)
        .zip(gnorm.par_chunks_mut(c_n.max(1)))
        .zip(denom.par_iter_mut())
        .enumerate()
        .for_each(|(n, ((y, g), d))| {
            let x = &x[n * block..(n + 1) * block];
            let mut ss = vec![0.0f32; c_n];
            each(l, |c, i| ss[c] += x[i] * x[i]);
            let mut total = 0.0f32;
            for (g, s) in g.iter_mut().zip(&ss) {
                *g = (s + DELTA).sqrt();
                total += *g;
            }
            *d = total / c_n as f32 + eps;
            let nrm: Vec<f32> = g.iter().map(|g| g / *d).collect();
            each(l, |c, i| y[i] = (x[i] * nrm[c]) * gamma[c] + beta[c] + x[i]);
        });
    (y, gnorm, denom)
}

/// Backward: returns (∂L/∂x, ∂L/∂γ, ∂L/∂β) from the forward's G and D.
pub fn grn_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    gnorm: &[f32],
    denom: &[f32],
    l: GrnLayout,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let block = (l.channels * l.positions).max(1);
    let c_n = l.channels;
    let mut dx = vec![0.0f32; l.numel()];
    // Per image: S·N and B per channel, for the parameter gradients.
    let mut sn = vec![0.0f32; l.batch * c_n];
    let mut bs = vec![0.0f32; l.batch * c_n];
    dx.par_chunks_mut(block)
        .zip(sn.par_chunks_mut(c_n.max(1)))
        .zip(bs.par_chunks_mut(c_n.max(1)))
        .enumerate()
        .for_each(|(n, ((dx, sn), bs))| {
            let (g, x) = (
                &dy[n * block..(n + 1) * block],
                &x[n * block..(n + 1) * block],
            );
            let gn = &gnorm[n * c_n..(n + 1) * c_n];
            let d = denom[n];
            let mut s = vec![0.0f32; c_n];
            each(l, |c, i| {
                s[c] += g[i] * x[i];
                bs[c] += g[i];
            });
            let nrm: Vec<f32> = gn.iter().map(|g| g / d).collect();
            let u: Vec<f32> = s.iter().zip(gamma).map(|(s, g)| g * s).collect();
            let mean_un = u.iter().zip(&nrm).map(|(u, n)| u * n).sum::<f32>() / c_n as f32;
            let k: Vec<f32> = u
                .iter()
                .zip(gn)
                .map(|(u, g)| (u - mean_un) / d / g)
                .collect();
            let a: Vec<f32> = gamma.iter().zip(&nrm).map(|(g, n)| g * n).collect();
            for ((sn, s), n) in sn.iter_mut().zip(&s).zip(&nrm) {
                *sn = s * n;
            }
            each(l, |c, i| dx[i] = g[i] * (1.0 + a[c]) + x[i] * k[c]);
        });
    let sum_images = |v: &[f32]| -> Vec<f32> {
        let mut out = vec![0.0f32; c_n];
        for row in v.chunks(c_n.max(1)) {
            for (o, r) in out.iter_mut().zip(row) {
                *o += r;
            }
        }
        out
    };
    (dx, sum_images(&sn), sum_images(&bs))
}
