//! CPU convolution kernels: forward, input gradient and weight gradient (math in `ops/conv2d.rs`).
//!
//! Dense and grouped convolutions go through an im2col patch matrix per image and group and the shared
//! blocked GEMM: Y_g = W_g·X̃_g, ∂X̃_g = W_gᵀ·G_g (scattered back by col2im), ∂W_g = Σ_n G_g·X̃_gᵀ. A 1×1
//! convolution with stride 1 and no padding needs no patch matrix (X̃ is the image itself). Depthwise
//! convolutions (one channel per group) run direct loops per channel plane whose inner loop walks a
//! contiguous output row, with the valid column range worked out once so no bounds test sits in it.

use super::matmul::gemm_acc;
use crate::error::Result;
use crate::shape::Conv2dGeometry;
use rayon::prelude::*;

/// The columns j of an output row for which the input column j·stride + q·dil − pad lies in [0, width).
fn valid_cols(w_out: usize, width: usize, stride: usize, offset: isize) -> (usize, usize) {
    // jw = j·stride + offset ∈ [0, width)  ⇔  j ∈ [ceil(−offset/stride), ceil((width − offset)/stride))
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let hi_num = width as isize - offset;
    let hi = if hi_num <= 0 {
        0
    } else {
        (hi_num as usize).div_ceil(stride)
    };
    (lo.min(w_out), hi.min(w_out))
}

/// Offset of kernel tap `p` along one axis: the input index of output 0.
fn tap_offset(p: usize, dil: usize, pad: usize) -> isize {
    (p * dil) as isize - pad as isize
}

/// True when the patch matrix of an image is the image itself.
fn is_pointwise(g: &Conv2dGeometry) -> bool {
    g.kh == 1 && g.kw == 1 && g.params.stride == [1, 1] && g.params.padding == [0, 0]
}

/// Walks the valid (output row i, input row ih, columns j0..j1) of tap (kp, kq) and calls
/// `f(i, ih, j0, j1, off_w)` for each output row that reads a real input row; off_w is the input column of
/// output column 0 (jw = j·stride_w + off_w).
fn for_each_tap_row(
    g: &Conv2dGeometry,
    kp: usize,
    kq: usize,
    mut f: impl FnMut(usize, usize, usize, usize, isize),
) {
    let p = g.params;
    let off_h = tap_offset(kp, p.dilation[0], p.padding[0]);
    let off_w = tap_offset(kq, p.dilation[1], p.padding[1]);
    let (j0, j1) = valid_cols(g.w_out, g.w_in, p.stride[1], off_w);
    if j0 >= j1 {
        return;
    }
    for i in 0..g.h_out {
        let ih = (i * p.stride[0]) as isize + off_h;
        if ih >= 0 && ih < g.h_in as isize {
            f(i, ih as usize, j0, j1, off_w);
        }
    }
}

/// The input column read by output column j.
#[inline(always)]
fn in_col(j: usize, stride: usize, off_w: isize) -> usize {
    ((j * stride) as isize + off_w) as usize
}

/// im2col for one image and group: col[(c·kh + p)·kw + q][i·W_out + j] (zero where the tap is padding).
fn im2col(x_img: &[f32], g: &Conv2dGeometry, group: usize, col: &mut [f32]) {
    let cg = g.c_in_per_group();
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let sw = g.params.stride[1];
    col.par_chunks_mut(hw_out)
        .with_min_len(4)
        .enumerate()
        .for_each(|(row, dst)| {
            let (c, pq) = (row / (g.kh * g.kw), row % (g.kh * g.kw));
            let plane = &x_img[(group * cg + c) * hw_in..(group * cg + c + 1) * hw_in];
            dst.fill(0.0);
            for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                let src = &plane[ih * g.w_in..(ih + 1) * g.w_in];
                let out_row = &mut dst[i * g.w_out..(i + 1) * g.w_out];
                for (j, o) in out_row.iter_mut().enumerate().take(j1).skip(j0) {
                    *o = src[in_col(j, sw, off_w)];
                }
            });
        });
}

/// col2im for one image and group: adds col's entries back onto the input positions they were read from.
fn col2im_add(col: &[f32], g: &Conv2dGeometry, group: usize, dx_img: &mut [f32]) {
    let cg = g.c_in_per_group();
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let sw = g.params.stride[1];
    // One task per input channel: the taps of a channel write only that channel's plane.
    dx_img[group * cg * hw_in..(group + 1) * cg * hw_in]
        .par_chunks_mut(hw_in)
        .enumerate()
        .for_each(|(c, plane)| {
            for pq in 0..taps {
                let src = &col[(c * taps + pq) * hw_out..(c * taps + pq + 1) * hw_out];
                for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                    let dst = &mut plane[ih * g.w_in..(ih + 1) * g.w_in];
                    for j in j0..j1 {
                        dst[in_col(j, sw, off_w)] += src[i * g.w_out + j];
                    }
                });
            }
        });
}

/// y = conv(x, w) + bias.
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Conv2dGeometry) -> Result<Vec<f32>> {
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let mut y = vec![0.0f32; g.batch * g.c_out * hw_out];
    if g.is_depthwise() {
        depthwise_forward(x, w, &mut y, g);
    } else {
        let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
        let k = cg * g.kh * g.kw;
        y.par_chunks_mut(g.c_out * hw_out)
            .enumerate()
            .for_each(|(n, y_img)| {
                let x_img = &x[n * g.c_in * hw_in..(n + 1) * g.c_in * hw_in];
                let mut col = Vec::new();
                for grp in 0..g.params.groups {
                    let patches: &[f32] = if is_pointwise(g) {
                        &x_img[grp * cg * hw_in..(grp + 1) * cg * hw_in]
                    } else {
                        col.resize(k * hw_out, 0.0);
                        im2col(x_img, g, grp, &mut col);
                        &col
                    };
                    let w_g = &w[grp * og * k..(grp + 1) * og * k];
                    let y_g = &mut y_img[grp * og * hw_out..(grp + 1) * og * hw_out];
                    gemm_acc(w_g, patches, y_g, og, k, hw_out, false, false);
                }
            });
    }
    if let Some(b) = bias {
        y.par_chunks_mut(hw_out)
            .enumerate()
            .for_each(|(plane, ys)| {
                let bv = b[plane % g.c_out];
                ys.iter_mut().for_each(|v| *v += bv);
            });
    }
    Ok(y)
}

/// ∂L/∂x from dy = ∂L/∂y.
pub fn conv2d_input_grad(dy: &[f32], w: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let mut dx = vec![0.0f32; g.batch * g.c_in * hw_in];
    if g.is_depthwise() {
        depthwise_input_grad(dy, w, &mut dx, g);
        return Ok(dx);
    }
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    dx.par_chunks_mut(g.c_in * hw_in)
        .enumerate()
        .for_each(|(n, dx_img)| {
            let dy_img = &dy[n * g.c_out * hw_out..(n + 1) * g.c_out * hw_out];
            let mut col = Vec::new();
            for grp in 0..g.params.groups {
                let w_g = &w[grp * og * k..(grp + 1) * og * k];
                let dy_g = &dy_img[grp * og * hw_out..(grp + 1) * og * hw_out];
                if is_pointwise(g) {
                    let dx_g = &mut dx_img[grp * cg * hw_in..(grp + 1) * cg * hw_in];
                    gemm_acc(w_g, dy_g, dx_g, k, og, hw_out, true, false);
                } else {
                    col.clear();
                    col.resize(k * hw_out, 0.0);
                    gemm_acc(w_g, dy_g, &mut col, k, og, hw_out, true, false);
                    col2im_add(&col, g, grp, dx_img);
                }
            }
        });
    Ok(dx)
}

/// ∂L/∂w from the input x and dy = ∂L/∂y (summed over the batch).
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    if g.is_depthwise() {
        return Ok(depthwise_weight_grad(x, dy, g));
    }
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    let wlen = g.c_out * k;
    let per_image = |n: usize| -> Vec<f32> {
        let x_img = &x[n * g.c_in * hw_in..(n + 1) * g.c_in * hw_in];
        let dy_img = &dy[n * g.c_out * hw_out..(n + 1) * g.c_out * hw_out];
        let mut dw = vec![0.0f32; wlen];
        let mut col = Vec::new();
        for grp in 0..g.params.groups {
            let patches: &[f32] = if is_pointwise(g) {
                &x_img[grp * cg * hw_in..(grp + 1) * cg * hw_in]
            } else {
                col.resize(k * hw_out, 0.0);
                im2col(x_img, g, grp, &mut col);
                &col
            };
            let dy_g = &dy_img[grp * og * hw_out..(grp + 1) * og * hw_out];
            let dw_g = &mut dw[grp * og * k..(grp + 1) * og * k];
            gemm_acc(dy_g, patches, dw_g, og, hw_out, k, false, true);
        }
        dw
    };
    Ok((0..g.batch).into_par_iter().map(per_image).reduce(
        || vec![0.0f32; wlen],
        |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        },
    ))
}

/// Depthwise forward: one (n, c) plane per task, taps outermost so the inner loop is a strided axpy.
fn depthwise_forward(x: &[f32], w: &[f32], y: &mut [f32], g: &Conv2dGeometry) {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let sw = g.params.stride[1];
    y.par_chunks_mut(hw_out)
        .enumerate()
        .for_each(|(plane_idx, y_plane)| {
            let c = plane_idx % g.c_out;
            let x_plane = &x[plane_idx * hw_in..(plane_idx + 1) * hw_in];
            let w_c = &w[c * taps..(c + 1) * taps];
            for (pq, &wv) in w_c.iter().enumerate() {
                for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                    let src = &x_plane[ih * g.w_in..(ih + 1) * g.w_in];
                    let dst = &mut y_plane[i * g.w_out..(i + 1) * g.w_out];
                    if sw == 1 {
                        let s0 = in_col(j0, 1, off_w);
                        for (o, &v) in dst[j0..j1].iter_mut().zip(&src[s0..s0 + (j1 - j0)]) {
                            *o += wv * v;
                        }
                    } else {
                        for j in j0..j1 {
                            dst[j] += wv * src[in_col(j, sw, off_w)];
                        }
                    }
                });
            }
        });
}

/// Depthwise input gradient: the forward's reads become scatter-adds into the same plane.
fn depthwise_input_grad(dy: &[f32], w: &[f32], dx: &mut [f32], g: &Conv2dGeometry) {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let sw = g.params.stride[1];
    dx.par_chunks_mut(hw_in)
        .enumerate()
        .for_each(|(plane_idx, dx_plane)| {
            let c = plane_idx % g.c_in;
            let dy_plane = &dy[plane_idx * hw_out..(plane_idx + 1) * hw_out];
            let w_c = &w[c * taps..(c + 1) * taps];
            for (pq, &wv) in w_c.iter().enumerate() {
                for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                    let src = &dy_plane[i * g.w_out..(i + 1) * g.w_out];
                    let dst = &mut dx_plane[ih * g.w_in..(ih + 1) * g.w_in];
                    if sw == 1 {
                        let d0 = in_col(j0, 1, off_w);
                        for (o, &v) in dst[d0..d0 + (j1 - j0)].iter_mut().zip(&src[j0..j1]) {
                            *o += wv * v;
                        }
                    } else {
                        for j in j0..j1 {
                            dst[in_col(j, sw, off_w)] += wv * src[j];
                        }
                    }
                });
            }
        });
}

/// Depthwise weight gradient: one channel per task, summing over the batch inside.
fn depthwise_weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let sw = g.params.stride[1];
    let mut dw = vec![0.0f32; g.c_out * taps];
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, dw_c)| {
        for n in 0..g.batch {
            let plane_idx = n * g.c_out + c;
            let x_plane = &x[plane_idx * hw_in..(plane_idx + 1) * hw_in];
            let dy_plane = &dy[plane_idx * hw_out..(plane_idx + 1) * hw_out];
            for (pq, acc) in dw_c.iter_mut().enumerate() {
                let mut sum = 0.0f32;
                for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                    let xs = &x_plane[ih * g.w_in..(ih + 1) * g.w_in];
                    let ds = &dy_plane[i * g.w_out..(i + 1) * g.w_out];
                    if sw == 1 {
                        let s0 = in_col(j0, 1, off_w);
                        sum += ds[j0..j1]
                            .iter()
                            .zip(&xs[s0..s0 + (j1 - j0)])
                            .map(|(a, b)| a * b)
                            .sum::<f32>();
                    } else {
                        for j in j0..j1 {
                            sum += ds[j] * xs[in_col(j, sw, off_w)];
                        }
                    }
                });
                *acc += sum;
            }
        }
    });
    dw
}
