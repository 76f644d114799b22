//! CPU convolution kernels: forward, input gradient and weight gradient (math in `ops/conv2d.rs`).
//!
//! Dense and grouped convolutions go through im2col patch matrices and the shared blocked GEMM, with the
//! images folded into the GEMM's columns (or into its reduction axis for the weight gradient): Y_g =
//! W_g·X̃_g, ∂X̃_g = W_gᵀ·G_g (scattered back by col2im), ∂W_g = G_g·X̃_gᵀ. All three run the batch as
//! tasks of a few images, each building and multiplying a patch matrix small enough to stay in its core's
//! cache (the weight gradient as fixed parts of the batch, summed in order). A 1×1 convolution with stride
//! 1 and no padding needs no patch matrix (X̃ is the input itself, read in place through a strided view):
//! one product per group for the whole batch. Depthwise convolutions (one channel per group) are
//! dispatched to the direct per-plane kernels of `depthwise.rs`; the tap-row helpers here are shared with
//! them.

use super::depthwise::{
    depthwise_conv2d, depthwise_conv2d_input_grad, depthwise_conv2d_weight_grad,
    depthwise_weight_bias_grad_one_pass,
};
use super::elementwise::gelu_and_derivative_in_place;
use super::matmul::{
    gemm_view, gemm_view_split, vec_written_by, Axis, Epilogue, MatView, OutView, Split,
};
use super::reduce::sum_keep_middle;
use super::vec_written;
use crate::backend::AxisLayout;
use crate::error::{Error, Result};
use crate::shape::Conv2dGeometry;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
    g.kh == 1
        && g.kw == 1
        && g.params.stride == [1, 1]
        && g.params.padding == [0, 0]
        && (g.h_out, g.w_out) == (g.h_in, g.w_in)
}

/// The kernels write through raw pointers sized from the geometry, so a geometry must be the one
/// [`Conv2dGeometry::new`] derives (its fields are public) and every buffer must be as long as it says.
fn check_geometry(g: &Conv2dGeometry, buffers: &[(&str, usize, usize)]) -> Result<()> {
    let derived = Conv2dGeometry::new(&g.input_shape(), &g.weight_shape(), g.params)?;
    if derived != *g {
        return Err(Error::invalid(
            "conv2d",
            format!(
                "inconsistent geometry: input {} and weight {} with {:?} give output {}, not {}",
                g.input_shape(),
                g.weight_shape(),
                g.params,
                derived.output_shape(),
                g.output_shape()
            ),
        ));
    }
    for &(name, len, need) in buffers {
        if len < need {
            return Err(Error::invalid(
                "conv2d",
                format!("{name} buffer holds {len} values, the geometry needs {need}"),
            ));
        }
    }
    Ok(())
}

/// Walks the valid (output row i, input row ih, columns j0..j1) of tap (kp, kq) and calls
/// `f(i, ih, j0, j1, off_w)` for each output row that reads a real input row; off_w is the input column of
/// output column 0 (jw = j·stride_w + off_w).
pub(super) fn for_each_tap_row(
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
pub(super) fn in_col(j: usize, stride: usize, off_w: isize) -> usize {
    ((j * stride) as isize + off_w) as usize
}

/// Row `row` = (c·kh + p)·kw + q of an image's patch matrix for group `group`: col[(c·kh + p)·kw + q][i·W_out
/// + j] = x[c, i·s + p·d − pad, j·s + q·d − pad] (zero where the tap is padding).
fn im2col_row(x_img: &[f32], g: &Conv2dGeometry, group: usize, row: usize, dst: &mut [f32]) {
    let (cg, hw_in) = (g.c_in_per_group(), g.h_in * g.w_in);
    let sw = g.params.stride[1];
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
}

/// The patch matrices of group `grp` for images n0.. into `col` (one matrix per image, as many images as
/// it holds), on the calling thread.
fn im2col_images(x: &[f32], g: &Conv2dGeometry, grp: usize, n0: usize, col: &mut [f32]) {
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let k = g.c_in_per_group() * g.kh * g.kw;
    for (i, patch) in col.chunks_mut(k * hw_out).enumerate() {
        let x_img = &x[(n0 + i) * g.c_in * hw_in..(n0 + i + 1) * g.c_in * hw_in];
        for (row, dst) in patch.chunks_mut(hw_out).enumerate() {
            im2col_row(x_img, g, grp, row, dst);
        }
    }
}

/// col2im for one image and group: adds col's entries back onto the input positions they were read from,
/// channel by channel on the calling thread.
fn col2im_add(col: &[f32], g: &Conv2dGeometry, group: usize, dx_img: &mut [f32]) {
    let cg = g.c_in_per_group();
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let sw = g.params.stride[1];
    let planes = dx_img[group * cg * hw_in..(group + 1) * cg * hw_in].chunks_mut(hw_in);
    for (c, plane) in planes.enumerate() {
        for pq in 0..taps {
            let src = &col[(c * taps + pq) * hw_out..(c * taps + pq + 1) * hw_out];
            for_each_tap_row(g, pq / g.kw, pq % g.kw, |i, ih, j0, j1, off_w| {
                let dst = &mut plane[ih * g.w_in..(ih + 1) * g.w_in];
                for j in j0..j1 {
                    dst[in_col(j, sw, off_w)] += src[i * g.w_out + j];
                }
            });
        }
    }
}

/// Most floats of patch matrix one task of [`im2col_gemms`], the input gradient or [`im2col_weight_grad`]
/// builds and multiplies (512 KiB: about a core's L2 on current CPUs), so that the matrix is read back from
/// the cache rather than from memory: the patch matrices of a ConvNeXt stem at 224×224 and batch 32 take
/// 19 MB.
const COL_TASK_FLOATS: usize = 1 << 17;

/// Images per task of [`im2col_gemms`], of the input gradient and of [`im2col_weight_grad`], for `rows` ×
/// `hw_out` patch values per image: at least one.
fn images_per_task(rows: usize, hw_out: usize, batch: usize) -> usize {
    (COL_TASK_FLOATS / (rows * hw_out).max(1)).clamp(1, batch.max(1))
}

/// An output that tasks share, each writing images of its own.
#[derive(Clone, Copy)]
struct ImagesOut(*mut f32);
// SAFETY: the tasks given an `ImagesOut` write disjoint images of it (see its users).
unsafe impl Send for ImagesOut {}
unsafe impl Sync for ImagesOut {}

impl ImagesOut {
    /// The pointer (a method, so closures capture the whole Sync wrapper rather than its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The (image, pixel) columns of an NCHW tensor with `channels` planes of `hw` pixels, as one matrix axis.
fn batch_columns(hw: usize, channels: usize) -> Axis {
    Axis::blocked(1, hw, channels * hw)
}

/// y = conv(x, w) + bias.
///
/// Per group: Y_g (O/G × N·HW_out) = W_g (O/G × K) · X̃_g (K × N·HW_out), with the batch folded into the
/// GEMM's columns (see [`Axis::blocked`]), so small images still give large products: over the whole batch
/// at once for a 1×1 convolution, in tasks of a few images otherwise ([`im2col_gemms`]). The GEMM writes y
/// without a zeroing pass and adds the bias as it stores.
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Conv2dGeometry) -> Result<Vec<f32>> {
    check_geometry(
        g,
        &[
            ("input", x.len(), g.input_shape().numel()),
            ("weight", w.len(), g.weight_shape().numel()),
            ("bias", bias.map_or(g.c_out, |b| b.len()), g.c_out),
        ],
    )?;
    if g.is_depthwise() {
        return Ok(depthwise_conv2d(x, w, bias, g));
    }
    let len = g.batch * g.c_out * g.h_out * g.w_out;
    // SAFETY: `conv2d_gemms` writes every element of y: each group's og output channels of every image.
    Ok(unsafe { vec_written_by(len, |y| conv2d_gemms(x, w, bias, g, y)) })
}

/// (GELU(y), GELU′(y)) with y = conv(x, w) + bias: the convolution, then one pass that writes GELU(y) over
/// y and GELU′(y) beside it (one erf and one exp for both). A separate pass rather than the GEMM's store:
/// in the store, GELU's arithmetic (a division, an exponential and two polynomials per element) runs
/// after each tile's multiply-adds, as long as them at k = 40, and the tile's second output stalls on its
/// cache misses; the streaming pass overlaps its arithmetic with its memory traffic. Over the four stages
/// of convnext_atto at 224 (batch 32) the convolution with the pass took 13% less time than with GELU in
/// the store (see docs/BENCHMARKS.md).
pub fn conv2d_gelu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut y = conv2d(x, w, bias, g)?;
    let dz = gelu_and_derivative_in_place(&mut y);
    Ok((y, dz))
}

/// The GEMMs of a (not depthwise) convolution, overwriting y with the bias.
///
/// # Safety
/// `y` must be valid for writes of the whole output, `g.output_shape().numel()` floats.
unsafe fn conv2d_gemms(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    y: *mut f32,
) {
    if !is_pointwise(g) {
        // SAFETY: the caller's promise, passed on.
        return unsafe { im2col_gemms(x, w, bias, g, ImagesOut(y)) };
    }
    let hw = g.h_in * g.w_in;
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    for grp in 0..g.params.groups {
        let w_g = MatView::dense(&w[grp * og * cg..(grp + 1) * og * cg], og, cg, false);
        let patches = MatView {
            data: &x[grp * cg * hw..],
            rows: Axis::plain(hw),
            cols: batch_columns(hw, g.c_in),
        };
        let base = grp * og * hw;
        // SAFETY: `out` from `base` addresses y[n, grp·og + o, pixel] for every image, each once, all
        // inside y (the caller's promise), and the activation alike.
        unsafe {
            gemm_view(
                &w_g,
                &patches,
                y.add(base),
                &out_images(hw, g.c_out),
                (og, cg, g.batch * hw),
                &output_epilogue(bias, grp * og..(grp + 1) * og),
            )
        };
    }
}

/// Where a convolution's product writes: rows are output channels, columns the (image, pixel) pairs.
fn out_images(hw_out: usize, c_out: usize) -> OutView {
    OutView {
        rows: Axis::plain(hw_out),
        cols: batch_columns(hw_out, c_out),
    }
}

/// The forward product's epilogue for the output channels `chans`: overwrite and add their bias.
fn output_epilogue(bias: Option<&[f32]>, chans: std::ops::Range<usize>) -> Epilogue<'_> {
    Epilogue {
        overwrite: true,
        row_bias: bias.map(|b| &b[chans]),
    }
}

/// The forward of a convolution that needs patch matrices: the batch in tasks of a few images
/// ([`images_per_task`]), each building its images' patch matrix on its own thread and multiplying it
/// there, so that the matrix is still in the core's cache when the product reads it.
///
/// # Safety
/// As for [`conv2d_gemms`].
unsafe fn im2col_gemms(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    y: ImagesOut,
) {
    let hw_out = g.h_out * g.w_out;
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    let per_task = images_per_task(k, hw_out, g.batch);
    let task = |col: &mut Vec<f32>, t: usize| {
        let n0 = t * per_task;
        let count = per_task.min(g.batch - n0);
        col.resize(count * k * hw_out, 0.0);
        for grp in 0..g.params.groups {
            im2col_images(x, g, grp, n0, col);
            let patches = MatView {
                data: col,
                rows: Axis::plain(hw_out),
                cols: batch_columns(hw_out, k),
            };
            let w_g = MatView::dense(&w[grp * og * k..(grp + 1) * og * k], og, k, false);
            let base = (n0 * g.c_out + grp * og) * hw_out;
            let epi = output_epilogue(bias, grp * og..(grp + 1) * og);
            // SAFETY: `out` from `base` addresses y[n, grp·og + o, pixel] for this task's images only,
            // all inside y (the caller's promise); no other task writes them.
            unsafe {
                gemm_view_split(
                    &w_g,
                    &patches,
                    y.get().add(base),
                    &out_images(hw_out, g.c_out),
                    (og, k, count * hw_out),
                    &epi,
                    Split::Serial,
                )
            };
        }
    };
    (0..g.batch.div_ceil(per_task))
        .into_par_iter()
        .for_each_init(Vec::new, task);
}

/// ∂L/∂x from dy = ∂L/∂y: per group, ∂X̃_g = W_gᵀ · G_g over the whole batch, scattered back by col2im (a
/// pointwise convolution writes ∂x directly).
pub fn conv2d_input_grad(dy: &[f32], w: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    check_geometry(
        g,
        &[
            ("output gradient", dy.len(), g.output_shape().numel()),
            ("weight", w.len(), g.weight_shape().numel()),
        ],
    )?;
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let len = g.batch * g.c_in * hw_in;
    if g.is_depthwise() {
        return Ok(depthwise_conv2d_input_grad(dy, w, g));
    }
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    // Wᵀ of group grp: (K × O/G), read from the (O/G × K) block of w.
    let w_t = |grp: usize| MatView::dense(&w[grp * og * k..(grp + 1) * og * k], k, og, true);
    let grad = |grp: usize, n0: usize| MatView {
        data: &dy[(n0 * g.c_out + grp * og) * hw_out..],
        rows: Axis::plain(hw_out),
        cols: batch_columns(hw_out, g.c_out),
    };
    if is_pointwise(g) {
        // The GEMM writes ∂x directly, overwriting: no zeroing pass.
        let out = OutView {
            rows: Axis::plain(hw_in),
            cols: batch_columns(hw_in, g.c_in),
        };
        // SAFETY: over the groups, `out` from each group's base addresses dx[n, grp·cg + c, pixel] for
        // every image, channel and pixel exactly once, all inside the len floats.
        let dx = unsafe {
            vec_written_by(len, |dx| {
                for grp in 0..g.params.groups {
                    gemm_view(
                        &w_t(grp),
                        &grad(grp, 0),
                        dx.add(grp * cg * hw_in),
                        &out,
                        (k, og, g.batch * hw_out),
                        &Epilogue::OVERWRITE,
                    );
                }
            })
        };
        return Ok(dx);
    }
    // The batch in tasks of a few images, each multiplying into a patch-matrix buffer of its own and
    // scattering it back into its images while the buffer is still in the core's cache.
    let per_task = images_per_task(k, hw_out, g.batch);
    let task = |col: &mut Vec<f32>, (t, dx_imgs): (usize, &mut [MaybeUninit<f32>])| {
        // The scatter below adds into dx: each task zeroes its own images first, in parallel and just
        // before they are written (a zeroed allocation was a serial memset of the whole dx).
        for v in dx_imgs.iter_mut() {
            v.write(0.0);
        }
        // SAFETY: every element of dx_imgs was just initialised, and MaybeUninit<f32> has f32's layout.
        let dx_imgs: &mut [f32] =
            unsafe { std::slice::from_raw_parts_mut(dx_imgs.as_mut_ptr().cast(), dx_imgs.len()) };
        let n0 = t * per_task;
        let count = dx_imgs.len() / (g.c_in * hw_in);
        // The product overwrites it, so stale values of another task's images do not matter.
        col.resize(count * k * hw_out, 0.0);
        let out = OutView {
            rows: Axis::plain(hw_out),
            cols: batch_columns(hw_out, k),
        };
        for grp in 0..g.params.groups {
            // SAFETY: `out` addresses every element of `col` (count × k × hw_out) exactly once.
            unsafe {
                gemm_view_split(
                    &w_t(grp),
                    &grad(grp, n0),
                    col.as_mut_ptr(),
                    &out,
                    (k, og, count * hw_out),
                    &Epilogue::OVERWRITE,
                    Split::Serial,
                )
            };
            let images = dx_imgs.chunks_mut(g.c_in * hw_in);
            for (dx_img, col_img) in images.zip(col.chunks(k * hw_out)) {
                col2im_add(col_img, g, grp, dx_img);
            }
        }
    };
    // SAFETY: the chunks cover dx, and each task writes every element of its chunk (zeros, then adds).
    let dx = unsafe {
        vec_written(len, |dx| {
            dx.par_chunks_mut(per_task * g.c_in * hw_in)
                .enumerate()
                .for_each_init(Vec::new, task)
        })
    };
    Ok(dx)
}

/// Pixels per image from which [`pointwise_weight_grad`] is used; below it (ConvNeXt's last stage at
/// 224×224 input, 7², and every stage at 32×32) an image's product is too small to be worth a product of
/// its own, and the batch-folded product of [`conv2d_weight_grad`] is faster: at 7² (1280 ↔ 320 channels)
/// it measured about a third faster than image parts, which there sum eight partial 1280×320 gradients.
/// At 14² (stage 2, 640 ↔ 160 channels) the image parts, whose A is read in place where the batch-folded
/// product packs it, were faster on the 2-core AMD EPYC (Zen 3) development machine: the backend's weight
/// gradients at batch 32, best of 15, three rounds alternating a threshold of 256 with 100, fc1 10.94, 9.59,
/// 9.40 → 8.72, 8.45, 8.21 ms and fc2 9.23, 9.29, 9.22 → 8.31, 8.87, 8.64; at 7² a threshold of 40 made
/// them 9–25% slower (8.5–9.7 → 9.7–11.1 ms).
const PER_IMAGE_MIN_PIXELS: usize = 128;

/// The image ranges [`pointwise_weight_grad`] is split into: one task and one partial sum each, added in
/// order at the end. A fixed count, so that the result does not depend on the threads.
const WEIGHT_GRAD_PARTS: usize = 8;

/// The weight gradient of a 1×1 convolution, Σ_n dY_n·X_nᵀ per group, split by images into parts that run
/// in parallel, each a product per image on its own thread, with no waits inside: the reduction axis is
/// the long one (images × pixels), while each product is small (channels × channels), so splitting the
/// images beats splitting each product (which waited for the threads twice per pass over k, ten passes
/// per image at 56²). The operand with more channels (channels × pixels, each channel's pixels
/// contiguous) is the GEMM's A, read in place, and the other is packed transposed as B:
/// - more output than input channels (ConvNeXt's fc1): dW = dY_n·X_nᵀ, dY_n in place;
/// - more input than output channels (fc2): dWᵀ = X_n·dY_nᵀ, X_n in place, transposed into dw at the end.
fn pointwise_weight_grad<'a>(x: &'a [f32], dy: &'a [f32], g: &Conv2dGeometry, dw: &mut [f32]) {
    let hw = g.h_in * g.w_in;
    let (k, og) = (g.c_in_per_group(), g.c_out_per_group());
    let x_is_a = k > og;
    // The product of one group, row-major (rows × cols), so the GEMM stores whole rows.
    let (rows, cols) = if x_is_a { (k, og) } else { (og, k) };
    // (data, channels per image, channels per group) of A and of B.
    let (a_src, b_src) = if x_is_a {
        ((x, g.c_in, k), (dy, g.c_out, og))
    } else {
        ((dy, g.c_out, og), (x, g.c_in, k))
    };
    let parts = g.batch.min(WEIGHT_GRAD_PARTS);
    let out = OutView {
        rows: Axis::plain(cols),
        cols: Axis::plain(1),
    };
    for grp in 0..g.params.groups {
        // Image n of an operand, from group grp's first channel on.
        let image = |(data, channels, per_group): (&'a [f32], usize, usize), n: usize| {
            &data[(n * channels + grp * per_group) * hw..]
        };
        let partial = |part: usize| {
            let mut acc = vec![0.0f32; rows * cols];
            for n in part * g.batch / parts..(part + 1) * g.batch / parts {
                let a = MatView {
                    data: image(a_src, n),
                    rows: Axis::plain(hw),
                    cols: Axis::plain(1),
                };
                let b_t = MatView {
                    data: image(b_src, n),
                    rows: Axis::plain(1),
                    cols: Axis::plain(hw),
                };
                // SAFETY: `out` addresses acc, rows × cols elements, each once.
                unsafe {
                    gemm_view_split(
                        &a,
                        &b_t,
                        acc.as_mut_ptr(),
                        &out,
                        (rows, hw, cols),
                        &Epilogue::ADD,
                        Split::Serial,
                    )
                };
            }
            acc
        };
        let sum = sum_in_order(
            (0..parts).into_par_iter().map(partial).collect(),
            rows * cols,
        );
        let dw_g = &mut dw[grp * og * k..(grp + 1) * og * k];
        if x_is_a {
            for (c, row) in sum.chunks_exact(og).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    dw_g[o * k + c] = v;
                }
            }
        } else {
            dw_g.copy_from_slice(&sum);
        }
    }
}

/// Σ of the partial sums in their order (so the result does not depend on the threads that computed them);
/// `len` zeros when there are none.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0.0; len]);
    for p in partials {
        for (s, v) in sum.iter_mut().zip(&p) {
            *s += v;
        }
    }
    sum
}

/// The weight gradient of a convolution with patch matrices (the stem and the downsampling layers), Σ_n
/// dY_n·X̃_nᵀ per group: the batch cut into [`WEIGHT_GRAD_PARTS`] fixed parts run in parallel, each summing
/// its images in tasks of a few ([`images_per_task`]) whose patch matrix it builds and multiplies on its
/// own thread, so the product reads it from the core's cache; the parts' sums are added in order.
fn im2col_weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let hw_out = g.h_out * g.w_out;
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    let per_task = images_per_task(k, hw_out, g.batch);
    let parts = g.batch.clamp(1, WEIGHT_GRAD_PARTS);
    let out = OutView {
        rows: Axis::plain(k),
        cols: Axis::plain(1),
    };
    let partial = |part: usize| {
        let mut acc = vec![0.0f32; g.c_out * k];
        let mut col = Vec::new();
        let images = part * g.batch / parts..(part + 1) * g.batch / parts;
        for n0 in images.clone().step_by(per_task) {
            let count = per_task.min(images.end - n0);
            col.resize(count * k * hw_out, 0.0);
            // One image's (channel, pixel) columns are one plain axis: dY is then read in place.
            let (dy_cols, col_rows) = if count == 1 {
                (Axis::plain(1), Axis::plain(1))
            } else {
                (batch_columns(hw_out, g.c_out), batch_columns(hw_out, k))
            };
            for grp in 0..g.params.groups {
                im2col_images(x, g, grp, n0, &mut col);
                let grad = MatView {
                    data: &dy[(n0 * g.c_out + grp * og) * hw_out..],
                    rows: Axis::plain(hw_out),
                    cols: dy_cols,
                };
                let patches_t = MatView {
                    data: &col,
                    rows: col_rows,
                    cols: Axis::plain(hw_out),
                };
                // SAFETY: `out` addresses the (og × k) block of group grp in acc, each element once.
                unsafe {
                    gemm_view_split(
                        &grad,
                        &patches_t,
                        acc.as_mut_ptr().add(grp * og * k),
                        &out,
                        (og, count * hw_out, k),
                        &Epilogue::ADD,
                        Split::Serial,
                    )
                };
            }
        }
        acc
    };
    sum_in_order(
        (0..parts).into_par_iter().map(partial).collect(),
        g.c_out * k,
    )
}

/// The sizes of a weight gradient's inputs against the geometry.
fn check_weight_grad_inputs(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Result<()> {
    check_geometry(
        g,
        &[
            ("input", x.len(), g.input_shape().numel()),
            ("output gradient", dy.len(), g.output_shape().numel()),
        ],
    )
}

/// (∂L/∂w, ∂L/∂b): the weight gradient of [`conv2d_weight_grad`] and the bias gradient, db\[o\] = Σ dy over
/// images and pixels (for a stride-1 depthwise convolution summed in the same pass as the weights).
pub fn conv2d_weight_bias_grad(
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_weight_grad_inputs(x, dy, g)?;
    if g.is_depthwise() {
        if let Some(both) = depthwise_weight_bias_grad_one_pass(x, dy, g) {
            return Ok(both);
        }
    }
    let layout = AxisLayout {
        outer: g.batch,
        len: g.c_out,
        inner: g.h_out * g.w_out,
    };
    Ok((conv2d_weight_grad(x, dy, g)?, sum_keep_middle(dy, layout)))
}

/// ∂L/∂w from the input x and dy = ∂L/∂y: per group, ∂W_g = G_g · X̃_gᵀ with the batch folded into the
/// reduction (k) axis of the GEMM.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    check_weight_grad_inputs(x, dy, g)?;
    if g.is_depthwise() {
        return Ok(depthwise_conv2d_weight_grad(x, dy, g));
    }
    let (hw_in, hw_out) = (g.h_in * g.w_in, g.h_out * g.w_out);
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let k = cg * g.kh * g.kw;
    if !is_pointwise(g) {
        return Ok(im2col_weight_grad(x, dy, g));
    }
    let mut dw = vec![0.0f32; g.c_out * k];
    if hw_in >= PER_IMAGE_MIN_PIXELS {
        pointwise_weight_grad(x, dy, g, &mut dw);
        return Ok(dw);
    }
    // Small planes: one product per group over the whole batch, the images folded into its k axis.
    for grp in 0..g.params.groups {
        let grad = MatView {
            data: &dy[grp * og * hw_out..],
            rows: Axis::plain(hw_out),
            cols: batch_columns(hw_out, g.c_out),
        };
        let patches_t = MatView {
            data: &x[grp * cg * hw_in..],
            rows: batch_columns(hw_in, g.c_in),
            cols: Axis::plain(hw_in),
        };
        let out = OutView {
            rows: Axis::plain(k),
            cols: Axis::plain(1),
        };
        // SAFETY: `out` addresses the (og × k) block of group grp in dw, each element once.
        unsafe {
            gemm_view(
                &grad,
                &patches_t,
                dw.as_mut_ptr().add(grp * og * k),
                &out,
                (og, g.batch * hw_out, k),
                &Epilogue::ADD,
            )
        };
    }
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{Conv2dParams, Shape};

    /// The forward, input gradient and weight gradient of convolutions with patch matrices, in tasks of
    /// one image (the stem-like and grouped cases, whose patch matrices exceed `COL_TASK_FLOATS` per image)
    /// and of several, with fewer images than weight-gradient parts and more, against the direct sums in
    /// f64: y[n,o,i,j] = b[o] + Σ x·w, dx[n,c,h,w] = Σ dy·w over the outputs that read x[n,c,h,w], and
    /// dw[o,c',p,q] = Σ dy·x over the images and outputs.
    #[test]
    fn image_tasks_match_the_direct_sums() {
        let d = Conv2dParams::default();
        for (n, c, (h, w), weight, params) in [
            (3, 40, (56, 56), [80, 40, 2, 2], d.stride(2)),
            (3, 40, (30, 30), [20, 20, 3, 3], d.padding(1).groups(2)),
            (5, 3, (10, 9), [4, 3, 3, 3], d.padding(1).stride(2)),
            (11, 3, (10, 9), [4, 3, 3, 3], d.padding(1).stride(2)),
        ] {
            let x_shape = Shape::new([n, c, h, w]);
            let g = Conv2dGeometry::new(&x_shape, &Shape::new(weight), params)
                .expect("a valid geometry");
            let k = g.c_in_per_group() * g.kh * g.kw;
            let per_task = images_per_task(k, g.h_out * g.w_out, n);
            assert!(
                per_task < n || c == 3,
                "{weight:?}: {per_task} images per task"
            );
            let val =
                |i: usize, m: usize, d: usize| ((i * m % d) as f32 - (d / 2) as f32) / d as f32;
            let x: Vec<f32> = (0..x_shape.numel()).map(|i| val(i, 37, 101)).collect();
            let wv: Vec<f32> = (0..g.weight_shape().numel())
                .map(|i| val(i, 29, 71))
                .collect();
            let bias: Vec<f32> = (0..g.c_out).map(|i| val(i, 13, 17)).collect();
            let dy: Vec<f32> = (0..g.output_shape().numel())
                .map(|i| val(i, 53, 89))
                .collect();
            let y = conv2d(&x, &wv, Some(&bias), &g).expect("valid sizes");
            let dx = conv2d_input_grad(&dy, &wv, &g).expect("valid sizes");
            let dw = conv2d_weight_grad(&x, &dy, &g).expect("valid sizes");
            let mut want_dw = vec![0.0f64; wv.len()];
            let mut want_y: Vec<f64> = (0..g.output_shape().numel())
                .map(|i| bias[i / (g.h_out * g.w_out) % g.c_out] as f64)
                .collect();
            let mut want_dx = vec![0.0f64; x.len()];
            let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
            let p = g.params;
            for b in 0..n {
                for o in 0..g.c_out {
                    for i in 0..g.h_out {
                        for j in 0..g.w_out {
                            let at_y = ((b * g.c_out + o) * g.h_out + i) * g.w_out + j;
                            for cc in 0..cg {
                                let ch = o / og * cg + cc;
                                for (kp, kq) in
                                    (0..g.kh).flat_map(|kp| (0..g.kw).map(move |kq| (kp, kq)))
                                {
                                    let ih =
                                        (i * p.stride[0] + kp) as isize - p.padding[0] as isize;
                                    let iw =
                                        (j * p.stride[1] + kq) as isize - p.padding[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                        continue;
                                    }
                                    let at_x = ((b * c + ch) * h + ih as usize) * w + iw as usize;
                                    let at_w = ((o * cg + cc) * g.kh + kp) * g.kw + kq;
                                    let wt = wv[at_w] as f64;
                                    want_y[at_y] += x[at_x] as f64 * wt;
                                    want_dx[at_x] += dy[at_y] as f64 * wt;
                                    want_dw[at_w] += dy[at_y] as f64 * x[at_x] as f64;
                                }
                            }
                        }
                    }
                }
            }
            for (got, want, what) in [
                (&y, &want_y, "y"),
                (&dx, &want_dx, "dx"),
                (&dw, &want_dw, "dw"),
            ] {
                for (i, (&a, &b)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{weight:?} {what}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The weight and bias gradients together equal the weight gradient alone and the per-channel sums of
    /// dy bit for bit: depthwise with stride 1 (the bias summed in the weight gradient's pass), a
    /// depthwise plane too small for that path, a strided depthwise and a dense convolution.
    #[test]
    fn weight_and_bias_gradients_match_their_separate_forms() {
        let d = Conv2dParams::default();
        for (c, (h, w), weight, params) in [
            (5, (12, 11), [5, 1, 7, 7], d.padding(3).groups(5)),
            (4, (5, 5), [4, 1, 3, 3], d.padding(1).groups(4)),
            (3, (9, 10), [3, 1, 3, 3], d.padding(1).stride(2).groups(3)),
            (3, (6, 7), [4, 3, 2, 2], d.stride(2)),
        ] {
            let x_shape = Shape::new([3, c, h, w]);
            let g = Conv2dGeometry::new(&x_shape, &Shape::new(weight), params)
                .expect("a valid geometry");
            let x: Vec<f32> = (0..x_shape.numel())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let dy: Vec<f32> = (0..g.output_shape().numel())
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let (dw, db) = conv2d_weight_bias_grad(&x, &dy, &g).expect("valid sizes");
            assert_eq!(dw, conv2d_weight_grad(&x, &dy, &g).expect("valid sizes"));
            let layout = AxisLayout {
                outer: g.batch,
                len: g.c_out,
                inner: g.h_out * g.w_out,
            };
            assert_eq!(db, sum_keep_middle(&dy, layout), "{c} channels {h}×{w}");
            assert!(db.iter().any(|&v| v != 0.0));
        }
    }

    /// The weight gradient of 1×1 convolutions (split by images into parts from PER_IMAGE_MIN_PIXELS on,
    /// batch-folded below), with more input than output channels and the other way
    /// round, one and two groups, and batches below, at and above the part count, against the sum it
    /// stands for, dw[o][c] = Σ_n Σ_px dy[n, o, px]·x[n, g·k + c, px] within o's group g.
    #[test]
    fn pointwise_weight_gradient_matches_the_sum() {
        let cases = [
            (1, 24, 8, (16, 17), 3),
            (2, 40, 6, (20, 13), 11),
            (1, 8, 40, (16, 17), WEIGHT_GRAD_PARTS),
            (2, 6, 38, (20, 13), 2),
            (1, 24, 8, (7, 7), 11),
            (2, 40, 6, (3, 5), 3),
            (1, 8, 40, (1, 1), 13),
            (2, 6, 38, (14, 14), WEIGHT_GRAD_PARTS + 1),
        ];
        let (mut per_image, mut folded) = (0, 0);
        for (groups, c_in, c_out, (h, w), n) in cases {
            let x_shape = Shape::new([n, c_in, h, w]);
            let g = Conv2dGeometry::new(
                &x_shape,
                &Shape::new([c_out, c_in / groups, 1, 1]),
                Conv2dParams::default().groups(groups),
            )
            .expect("a valid geometry");
            if h * w >= PER_IMAGE_MIN_PIXELS {
                per_image += 1;
            } else {
                folded += 1;
            }
            let hw = h * w;
            let x: Vec<f32> = (0..x_shape.numel())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let dy: Vec<f32> = (0..n * c_out * hw)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let dw = conv2d_weight_grad(&x, &dy, &g).expect("a weight gradient");
            let (k, og) = (c_in / groups, c_out / groups);
            for o in 0..c_out {
                for c in 0..k {
                    let grp = o / og;
                    let want: f64 = (0..n)
                        .flat_map(|b| (0..hw).map(move |p| (b, p)))
                        .map(|(b, p)| {
                            dy[(b * c_out + o) * hw + p] as f64
                                * x[(b * c_in + grp * k + c) * hw + p] as f64
                        })
                        .sum();
                    let got = dw[o * k + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "groups {groups}, {h}×{w}, batch {n}: dw[{o}][{c}] = {got}, the sum is {want}"
                    );
                }
            }
        }
        assert!(per_image >= 2 && folded >= 2, "both forms are covered");
    }
}
