//! CPU normalisation kernels: layer norm (forward, backward) and log-softmax (forward, backward), all over
//! the middle axis of an (outer, len, inner) view (math in `ops/layer_norm.rs` and `ops/log_softmax.rs`).
//!
//! Each outer slice is one rayon task; inside it the statistics of all `inner` positions are accumulated
//! together, row by row of the normalised axis, so the inner loops are contiguous and vectorise for NCHW
//! (inner = H·W); for the last axis (inner = 1) each slice is one row and its sums are scalar reductions.

use super::elementwise::widest;
use super::reduce::run_sum;
use super::vec_written;
use crate::backend::AxisLayout;
use crate::error::Result;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Forward: returns (y, mean, rstd); mean and rstd have outer·inner entries.
#[allow(clippy::type_complexity)]
pub fn layer_norm(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    l: AxisLayout,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (len, inner) = (l.len, l.inner);
    let mut mean = vec![0.0f32; l.outer * inner];
    let mut rstd = vec![0.0f32; l.outer * inner];
    // One outer slice: its statistics into `mu` and `rs`, its normalised values into `ys`.
    // The body runs inside `widest`, as a closure marked `#[inline(always)]`: a closure called from
    // `widest`'s closure is a function of its own, compiled for baseline x86-64 (4-wide SSE2), and `perf
    // annotate` showed this pass in xmm registers before.
    let slice = |o: usize, ys: &mut [MaybeUninit<f32>], mu: &mut [f32], rs: &mut [f32]| {
        widest(
            #[inline(always)]
            || {
                let xs = &x[o * len * inner..(o + 1) * len * inner];
                // Two passes (mean, then centred squares), all in f32: stable for the magnitudes a network
                // produces and exact enough for the f64 reference tests.
                mu.fill(0.0);
                for c in 0..len {
                    for (m, &v) in mu.iter_mut().zip(&xs[c * inner..(c + 1) * inner]) {
                        *m += v;
                    }
                }
                mu.iter_mut().for_each(|m| *m /= len as f32);
                rs.fill(0.0);
                for c in 0..len {
                    for ((r, &m), &v) in rs
                        .iter_mut()
                        .zip(mu.iter())
                        .zip(&xs[c * inner..(c + 1) * inner])
                    {
                        let d = v - m;
                        *r += d * d;
                    }
                }
                rs.iter_mut()
                    .for_each(|r| *r = 1.0 / (*r / len as f32 + eps).sqrt());
                for c in 0..len {
                    let (wc, bc) = (weight.map_or(1.0, |w| w[c]), bias.map_or(0.0, |b| b[c]));
                    let row = &mut ys[c * inner..(c + 1) * inner];
                    for (((yv, &v), &m), &r) in row
                        .iter_mut()
                        .zip(&xs[c * inner..(c + 1) * inner])
                        .zip(mu.iter())
                        .zip(rs.iter())
                    {
                        yv.write((v - m) * r * wc + bc);
                    }
                }
            },
        )
    };
    // SAFETY: the chunks cover y (numel = outer·len·inner) and each is written whole (every c, every i).
    let y = unsafe {
        vec_written(l.numel(), |y| {
            y.par_chunks_mut((len * inner).max(1))
                .zip(
                    mean.par_chunks_mut(inner.max(1))
                        .zip(rstd.par_chunks_mut(inner.max(1))),
                )
                .enumerate()
                .for_each(|(o, (ys, (mu, rs)))| slice(o, ys, mu, rs));
        })
    };
    Ok((y, mean, rstd))
}

/// Backward: returns (dx, dweight, dbias) with dweight = Σ dy·x̂ and dbias = Σ dy per channel.
#[allow(clippy::type_complexity)]
pub fn layer_norm_backward(
    dy: &[f32],
    x: &[f32],
    weight: Option<&[f32]>,
    mean: &[f32],
    rstd: &[f32],
    l: AxisLayout,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (len, inner) = (l.len, l.inner);
    let slice = (len * inner).max(1);
    // Tasks take whole runs of `group` outer slices (at least ~16k values, so a last-axis norm over N·H·W
    // rows of C does not become one task and four buffers per row) and return their run's contributions
    // to dweight and dbias; the runs are fixed, so the sums' order does not depend on scheduling.
    let group = (16_384 / slice).max(1);
    // One run of slices (from slice t·group on): its dx, and its contributions to dweight and dbias.
    // Inside `widest` as the forward's `slice`.
    let run = |t: usize, dx_run: &mut [MaybeUninit<f32>]| -> (Vec<f32>, Vec<f32>) {
        widest(
            #[inline(always)]
            || {
                let mut dw = vec![0.0f32; len];
                let mut db = vec![0.0f32; len];
                // mean over the axis of ĝ and of ĝ·x̂, per inner position, for the slice at hand
                let mut mean_g = vec![0.0f32; inner];
                let mut mean_gx = vec![0.0f32; inner];
                // x̂ of one row of the normalised axis.
                let mut xh_row = vec![0.0f32; inner];
                for (s_in_run, dxs) in dx_run.chunks_mut(slice).enumerate() {
                    let o = t * group + s_in_run;
                    let base = o * len * inner;
                    let (xs, gs) = (&x[base..base + len * inner], &dy[base..base + len * inner]);
                    let (mu, rs) = (
                        &mean[o * inner..(o + 1) * inner],
                        &rstd[o * inner..(o + 1) * inner],
                    );
                    mean_g.fill(0.0);
                    mean_gx.fill(0.0);
                    for c in 0..len {
                        let wc = weight.map_or(1.0, |w| w[c]);
                        let (row_x, row_g) = (
                            &xs[c * inner..(c + 1) * inner],
                            &gs[c * inner..(c + 1) * inner],
                        );
                        // Element-wise loops (vectorised), then the two sums over the row by `run_sum`'s
                        // independent partial sums: one running f32 sum each was a chain of dependent adds,
                        // four cycles per element.
                        for (((h, &v), &m), &r) in xh_row.iter_mut().zip(row_x).zip(mu).zip(rs) {
                            *h = (v - m) * r;
                        }
                        for (((&h, &g), mg), mgx) in xh_row
                            .iter()
                            .zip(row_g)
                            .zip(mean_g.iter_mut())
                            .zip(mean_gx.iter_mut())
                        {
                            *mg += wc * g;
                            *mgx += wc * g * h;
                        }
                        dw[c] += run_sum(row_g, Some(&xh_row)) as f32;
                        db[c] += run_sum(row_g, None) as f32;
                    }
                    let inv = 1.0 / len as f32;
                    for c in 0..len {
                        let wc = weight.map_or(1.0, |w| w[c]);
                        let (row_x, row_g) = (
                            &xs[c * inner..(c + 1) * inner],
                            &gs[c * inner..(c + 1) * inner],
                        );
                        let row_dx = &mut dxs[c * inner..(c + 1) * inner];
                        for i in 0..inner {
                            let xh = (row_x[i] - mu[i]) * rs[i];
                            row_dx[i].write(
                                rs[i] * (wc * row_g[i] - mean_g[i] * inv - xh * mean_gx[i] * inv),
                            );
                        }
                    }
                }
                (dw, db)
            },
        )
    };
    let mut partial: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    // SAFETY: the runs cover dx, and every slice of a run is written whole (every c, every i).
    let dx = unsafe {
        vec_written(l.numel(), |dx| {
            partial = dx
                .par_chunks_mut(group * slice)
                .enumerate()
                .map(|(t, dx_run)| run(t, dx_run))
                .collect();
        })
    };
    let mut dweight = vec![0.0f32; len];
    let mut dbias = vec![0.0f32; len];
    for (dw, db) in partial {
        dweight.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(&db).for_each(|(a, b)| *a += b);
    }
    Ok((dx, dweight, dbias))
}

/// y = x − max − log Σ exp(x − max) over the middle axis.
pub fn log_softmax(x: &[f32], l: AxisLayout) -> Result<Vec<f32>> {
    let (len, inner) = (l.len, l.inner);
    let mut y = vec![0.0f32; l.numel()];
    y.par_chunks_mut((len * inner).max(1))
        .enumerate()
        .for_each(|(o, ys)| {
            let xs = &x[o * len * inner..(o + 1) * len * inner];
            for i in 0..inner {
                let at = |c: usize| xs[c * inner + i];
                let m = (0..len).map(at).fold(f32::NEG_INFINITY, f32::max);
                let lse = (0..len)
                    .map(|c| ((at(c) - m) as f64).exp())
                    .sum::<f64>()
                    .ln() as f32;
                for c in 0..len {
                    ys[c * inner + i] = at(c) - m - lse;
                }
            }
        });
    Ok(y)
}

/// dx = dy − exp(y)·Σ dy over the middle axis.
pub fn log_softmax_backward(dy: &[f32], y: &[f32], l: AxisLayout) -> Result<Vec<f32>> {
    let (len, inner) = (l.len, l.inner);
    let mut dx = vec![0.0f32; l.numel()];
    dx.par_chunks_mut((len * inner).max(1))
        .enumerate()
        .for_each(|(o, dxs)| {
            let base = o * len * inner;
            for i in 0..inner {
                let sum: f32 = (0..len).map(|c| dy[base + c * inner + i]).sum();
                for c in 0..len {
                    let k = base + c * inner + i;
                    dxs[c * inner + i] = dy[k] - y[k].exp() * sum;
                }
            }
        });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_over_channels_matches_the_f64_formulas_at_vector_lengths() {
        // Planes of 49, 196 and 3136 positions (convnext's stages 3, 2 and 0 at 224×224) and one under a
        // vector (5): the vectorised loops and `run_sum`'s partial sums, forward and backward.
        let mut seed = 5u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        };
        for (outer, len, inner) in [(3, 7, 49), (2, 6, 196), (2, 4, 3136), (2, 5, 5)] {
            let l = AxisLayout { outer, len, inner };
            let x: Vec<f32> = (0..l.numel()).map(|_| next()).collect();
            let dy: Vec<f32> = (0..l.numel()).map(|_| next()).collect();
            let w: Vec<f32> = (0..len).map(|_| 1.0 + 0.25 * next()).collect();
            let b: Vec<f32> = (0..len).map(|_| next()).collect();
            let eps = 1e-6f32;
            let (y, mean, rstd) = layer_norm(&x, Some(&w), Some(&b), l, eps).unwrap();
            let (dx, dw, db) = layer_norm_backward(&dy, &x, Some(&w), &mean, &rstd, l).unwrap();
            let at = |o: usize, c: usize, i: usize| (o * len + c) * inner + i;
            let (mut want_dw, mut want_db) = (vec![0.0f64; len], vec![0.0f64; len]);
            let mut scale = 1.0f64;
            let mut worst = 0.0f64;
            for o in 0..outer {
                for i in 0..inner {
                    let xs: Vec<f64> = (0..len).map(|c| x[at(o, c, i)] as f64).collect();
                    let mu = xs.iter().sum::<f64>() / len as f64;
                    let var = xs.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / len as f64;
                    let r = 1.0 / (var + eps as f64).sqrt();
                    let xh: Vec<f64> = xs.iter().map(|v| (v - mu) * r).collect();
                    let wg: Vec<f64> = (0..len)
                        .map(|c| w[c] as f64 * dy[at(o, c, i)] as f64)
                        .collect();
                    let mean_wg = wg.iter().sum::<f64>() / len as f64;
                    let mean_wgx = wg.iter().zip(&xh).map(|(a, h)| a * h).sum::<f64>() / len as f64;
                    for c in 0..len {
                        let want_y = xh[c] * w[c] as f64 + b[c] as f64;
                        let want_dx = r * (wg[c] - mean_wg - xh[c] * mean_wgx);
                        want_dw[c] += dy[at(o, c, i)] as f64 * xh[c];
                        want_db[c] += dy[at(o, c, i)] as f64;
                        scale = scale.max(want_y.abs()).max(want_dx.abs());
                        worst = worst
                            .max((y[at(o, c, i)] as f64 - want_y).abs())
                            .max((dx[at(o, c, i)] as f64 - want_dx).abs());
                    }
                }
            }
            assert!(worst <= 1e-5 * scale, "{l:?}: y or dx off by {worst}");
            for c in 0..len {
                let tol = 1e-5 * (outer * inner) as f64;
                assert!(
                    (dw[c] as f64 - want_dw[c]).abs() <= tol,
                    "{l:?}: dw[{c}] {} against {}",
                    dw[c],
                    want_dw[c]
                );
                assert!(
                    (db[c] as f64 - want_db[c]).abs() <= tol,
                    "{l:?}: db[{c}] {} against {}",
                    db[c],
                    want_db[c]
                );
            }
        }
    }
}
