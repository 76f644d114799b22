//! CPU depthwise convolution kernels (one channel per group, ConvNeXt's 7×7 `conv_dw`): forward, input
//! gradient and weight gradient, called by the entry points of `conv.rs` (math in `ops/conv2d.rs`; the
//! GPU counterpart is `shaders/depthwise.wgsl`).
//!
//! Three paths per direction: direct loops per channel plane for any stride, whose inner loop walks a
//! contiguous output row with the valid column range worked out once so no bounds test sits in it; for
//! stride 1, a zero-padded copy of each plane followed by register-blocked loops (a block of outputs, or of
//! the weight gradient's partial sums, stays in vector registers across all taps); and for planes under
//! 8 wide, a channels-last layout whose inner loop runs over channels. The stride-1 and channels-last loops
//! are compiled for the widest vector instruction set the CPU has (`elementwise::widest`); they are plain
//! functions called from it, because a loop inside a closure that captures its surroundings compiled to
//! scalar code. `cargo bench --bench depthwise` times the ConvNeXt-atto shapes.

use super::conv::{for_each_tap_row, in_col};
use super::elementwise::widest_floats;
#[cfg(target_arch = "x86_64")]
use super::elementwise::{isa, Isa};
use super::reduce::run_sum;
use super::{copy_pieces, vec_written};
use crate::shape::Conv2dGeometry;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Depthwise forward with the per-channel bias added: channels-last for small planes, the padded-plane path
/// for stride 1 (which writes each output once, bias included, into memory never zeroed), the direct loops
/// otherwise.
pub(super) fn depthwise_conv2d(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    let len = g.batch * g.c_out * g.h_out * g.w_out;
    if padded_plane_path(g) {
        // SAFETY: the padded-plane path writes every output plane whole.
        return unsafe { vec_written(len, |y| depthwise_forward_unit_stride(x, w, bias, y, g)) };
    }
    let mut y = vec![0.0f32; len];
    if g.w_out < SMALL_PLANE {
        depthwise_channels_last(x, w, &mut y, g, Direction::Forward);
    } else {
        depthwise_forward(x, w, &mut y, g);
    }
    if let Some(b) = bias {
        y.par_chunks_mut(g.h_out * g.w_out)
            .enumerate()
            .for_each(|(plane, ys)| {
                let bv = b[plane % g.c_out];
                ys.iter_mut().for_each(|v| *v += bv);
            });
    }
    y
}

/// Depthwise input gradient, by the same choice of path as [`depthwise_conv2d`].
pub(super) fn depthwise_conv2d_input_grad(dy: &[f32], w: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let len = g.batch * g.c_in * g.h_in * g.w_in;
    if padded_plane_path(g) {
        // SAFETY: the padded-plane path writes every input-gradient plane whole.
        return unsafe { vec_written(len, |dx| depthwise_input_grad_unit_stride(dy, w, dx, g)) };
    }
    let mut dx = vec![0.0f32; len];
    if g.w_out < SMALL_PLANE {
        depthwise_channels_last(dy, w, &mut dx, g, Direction::InputGrad);
    } else {
        depthwise_input_grad(dy, w, &mut dx, g);
    }
    dx
}

/// Depthwise weight gradient, by the same choice of path as [`depthwise_conv2d`].
pub(super) fn depthwise_conv2d_weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    if padded_plane_path(g) {
        depthwise_weight_grad_unit_stride(x, dy, g, false).0
    } else if g.w_out < SMALL_PLANE {
        depthwise_weight_grad_channels_last(x, dy, g)
    } else {
        depthwise_weight_grad(x, dy, g)
    }
}

/// Whether a depthwise convolution takes the padded-plane path (stride 1, output rows at least
/// [`SMALL_PLANE`] wide): the others run channels-last (small planes) or as direct loops (strided).
fn padded_plane_path(g: &Conv2dGeometry) -> bool {
    g.w_out >= SMALL_PLANE && g.params.stride == [1, 1]
}

/// The depthwise weight gradient and the bias gradient (db\[c\] = Σ dy over images and pixels) in one
/// pass over dy, where the stride-1 path gives both (each channel's task sums its dy planes while it reads
/// them for the weights); None elsewhere. db\[c\] is Σ over images of `run_sum` of the plane, in f64, as
/// `sum_keep_middle` computes it, so the bits are the same as the separate sums'.
pub(super) fn depthwise_weight_bias_grad_one_pass(
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
) -> Option<(Vec<f32>, Vec<f32>)> {
    if !padded_plane_path(g) {
        return None;
    }
    let (dw, db) = depthwise_weight_grad_unit_stride(x, dy, g, true);
    Some((dw, db.expect("asked for the bias sums")))
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

/// Σ a·b in 8 f32 partial sums side by side (independent, so the loop vectorises, where one accumulator is
/// a chain of dependent adds), then added.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let (ac, bc) = (a.chunks_exact(LANES), b[..a.len()].chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ac.zip(bc) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    acc.iter().sum::<f32>() + tail
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
                        sum += dot(&ds[j0..j1], &xs[s0..s0 + (j1 - j0)]);
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

// Depthwise convolutions with stride 1 (every ConvNeXt block): each plane is first copied into a
// zero-padded buffer, after which every tap reads a plain window: no bounds test sits in the loops, and a
// block of outputs can gather all its taps in registers.

/// Copies `plane` (h×w) into `buf` (rows×cols) with its (0, 0) at (top, left), zeros around it; offsets
/// may be negative (then the plane's leading rows or columns are cut off).
///
/// A buffer of another length is first reset to zeros; one of this length is taken to come from an
/// earlier call with the same arguments but the plane, whose copy covered the same region: its zeros are
/// still in place, so only the plane is copied. (Zeroing the whole buffer for every plane, and copying
/// each row with a call to `memcpy`, were a fifth of the time of `cargo bench --bench depthwise`.)
#[allow(clippy::too_many_arguments)]
fn pad_plane(
    plane: &[f32],
    h: usize,
    w: usize,
    buf: &mut Vec<f32>,
    rows: usize,
    cols: usize,
    top: isize,
    left: isize,
) {
    if buf.len() != rows * cols {
        buf.clear();
        buf.resize(rows * cols, 0.0);
    }
    for r in 0..h {
        let u = r as isize + top;
        if u < 0 || u >= rows as isize {
            continue;
        }
        // Columns v = c + left must lie in [0, cols).
        let c0 = (-left).max(0) as usize;
        let c1 = ((cols as isize - left).min(w as isize)).max(0) as usize;
        if c0 >= c1 {
            continue;
        }
        let v0 = (c0 as isize + left) as usize;
        copy_run(
            &mut buf[u as usize * cols + v0..u as usize * cols + v0 + (c1 - c0)],
            &plane[r * w + c0..r * w + c1],
        );
    }
}

/// `dst` = `src` (of equal length), by [`copy_pieces`] (no `memcpy` call per short row).
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_run: lengths differ");
    // SAFETY: dst is a slice of src.len() values, ours to write.
    unsafe { copy_pieces(src, dst.as_mut_ptr()) }
}

/// The tap layout of [`PlaneCorrelation::run`] over padded sources whose rows are `src_w` apart: each tap's
/// source offset from its output and the kernel to run, worked out once per convolution rather than once
/// per plane (a 14×14 plane's correlation is about a thousand cycles of multiply-adds, and building the
/// offsets as a new vector per plane was 9% of the samples of stage 2's depthwise calls).
struct PlaneCorrelation {
    src_w: usize,
    kh: usize,
    kw: usize,
    dil: [usize; 2],
    offsets: Vec<usize>,
    avx2: bool,
}

impl PlaneCorrelation {
    fn new(src_w: usize, kh: usize, kw: usize, dil: [usize; 2]) -> Self {
        #[cfg(target_arch = "x86_64")]
        let avx2 = isa() == Isa::Avx2Fma;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        PlaneCorrelation {
            src_w,
            kh,
            kw,
            dil,
            offsets: (0..kh * kw)
                .map(|pq| (pq / kw) * dil[0] * src_w + (pq % kw) * dil[1])
                .collect(),
            avx2,
        }
    }

    /// out (ho×wo) = bias + Σ_{p,q} k[p·kw + q] · src[i + p·dh][j + q·dw] over a padded source whose rows
    /// are `src_w` apart and hold zeros from the plane's right edge to column [`span_cols`]`(wo, kw, dw)`.
    /// Every element of `out` is written (it may start uninitialised).
    ///
    /// Register-blocked: a block of output rows and [`span`]`(wo)` columns stays in vector registers while
    /// all kh·kw taps add into it, so each multiply-add reads one source value and nothing is stored until
    /// the block is done (an axpy per tap would load and store the output row kh·kw times).
    fn run(&self, src: &[f32], k: &[f32], out: &mut [MaybeUninit<f32>], wo: usize, bias: f32) {
        let taps = Taps {
            k,
            kh: self.kh,
            kw: self.kw,
            dil: self.dil,
            bias,
            offsets: &self.offsets,
        };
        correlate_taps(src, self.src_w, &taps, out, wo, self.avx2);
    }
}

/// [`PlaneCorrelation::run`] once its taps are laid out: with the AVX2 kernel when `avx2` (the CPU must have
/// AVX2 and FMA), else the portable one.
fn correlate_taps(
    src: &[f32],
    src_w: usize,
    taps: &Taps,
    out: &mut [MaybeUninit<f32>],
    wo: usize,
    avx2: bool,
) {
    // With AVX-512: two rows of four vectors, four rows of two or eight rows of one, eight accumulators of
    // 32 registers each way, enough independent chains to keep both FMA units of a core busy. With AVX2's
    // 16 registers of 8 floats such blocks would need every register for accumulators, so there a block
    // is at most 12 to 14 accumulators, leaving registers for the weight: two rows of five to seven
    // vectors for rows over 32 wide (a 56-wide row of the 224 input's first stage is one block, with no
    // wasted column), three rows of four vectors, or seven rows of two (the 14 rows of a 14×14 plane in
    // two blocks). In `cargo bench --bench depthwise` on a Zen 3 (AVX2) the 56×56 planes ran 1.3–1.6×
    // faster with two rows of 56 than of 64, and the 14×14 planes 1.1–1.4× faster with six rows of 16
    // than with eight (and, in the AVX2 kernel, 0–10% faster with seven than with six: best of 20 calls
    // of the forward, three rounds alternated, 2.15–2.20 against 1.96–2.17 ms).
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller's promise that the CPU has AVX2 and FMA.
        unsafe {
            match span(wo) {
                56 => correlate_rows_avx2::<2, 7>(src, src_w, taps, out, wo),
                48 => correlate_rows_avx2::<2, 6>(src, src_w, taps, out, wo),
                40 => correlate_rows_avx2::<2, 5>(src, src_w, taps, out, wo),
                32 => correlate_rows_avx2::<3, 4>(src, src_w, taps, out, wo),
                // Rows of at most 8 (the 8×8 planes of a 32×32 input's first stage): one vector.
                _ if wo <= 8 => correlate_rows_avx2::<8, 1>(src, src_w, taps, out, wo),
                _ => correlate_rows_avx2::<7, 2>(src, src_w, taps, out, wo),
            }
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    match (span(wo), widest_floats()) {
        (64, _) => correlate_rows::<2, 64>(src, src_w, taps, out, wo),
        (56, _) => correlate_rows::<2, 56>(src, src_w, taps, out, wo),
        (48, _) => correlate_rows::<2, 48>(src, src_w, taps, out, wo),
        (40, _) => correlate_rows::<2, 40>(src, src_w, taps, out, wo),
        (32, 16) => correlate_rows::<4, 32>(src, src_w, taps, out, wo),
        (32, _) => correlate_rows::<3, 32>(src, src_w, taps, out, wo),
        (_, 16) => correlate_rows::<8, 16>(src, src_w, taps, out, wo),
        _ => correlate_rows::<6, 16>(src, src_w, taps, out, wo),
    }
}

/// One plane's kernel: its weights (kh × kw, row-major), dilation, and the bias added to every output.
struct Taps<'a> {
    k: &'a [f32],
    kh: usize,
    kw: usize,
    dil: [usize; 2],
    bias: f32,
    /// Tap p·kw + q reads the source `offsets[p·kw + q]` = p·dh·src_w + q·dw after its output.
    offsets: &'a [usize],
}

impl Taps<'_> {
    /// Checks that the weights and offsets cover the kh×kw taps.
    fn check(&self) {
        let (k, kh, kw) = (self.k, self.kh, self.kw);
        assert!(
            k.len() >= kh * kw && self.offsets.len() == kh * kw,
            "depthwise: {} weights and {} offsets for {kh}×{kw} taps",
            k.len(),
            self.offsets.len()
        );
    }

    /// Checks that a block of output rows i..i + rows and columns j0..j0 + span reads inside `src` (rows
    /// `src_w` apart): its largest source index, once per block rather than per value.
    fn check_block(
        &self,
        src: &[f32],
        src_w: usize,
        (i, rows): (usize, usize),
        (j0, span): (usize, usize),
    ) {
        let (kh, kw, dil) = (self.kh, self.kw, self.dil);
        let last = (i + rows - 1 + (kh - 1) * dil[0]) * src_w + j0 + (kw - 1) * dil[1] + span - 1;
        assert!(
            last < src.len(),
            "depthwise: source index {last} past {}",
            src.len()
        );
    }
}

/// Output columns per register block of [`PlaneCorrelation::run`] for rows `wo` wide: 32 for rows wider than
/// 16, else 16; for wider rows 64 (four AVX-512 vectors), or with AVX2 the row rounded up to whole 8-float
/// vectors, at most 56 (rows wider than 56 take several blocks).
fn span(wo: usize) -> usize {
    match wo {
        0..=16 => 16,
        17..=32 => 32,
        _ if widest_floats() == 16 => 64,
        33..=48 => wo.next_multiple_of(8),
        _ => 56,
    }
}

/// Row stride of a padded source for [`PlaneCorrelation::run`]: the output row rounded up to whole spans (and to
/// whole vectors of the weight gradient's [`LANES`], which reads the same buffer), plus the kernel's reach,
/// so every block reads inside its own row.
fn span_cols(wo: usize, kw: usize, dil_w: usize) -> usize {
    wo.next_multiple_of(span(wo))
        .max(wo.next_multiple_of(LANES))
        + (kw - 1) * dil_w
}

fn correlate_rows<const R: usize, const SPAN: usize>(
    src: &[f32],
    src_w: usize,
    taps: &Taps,
    out: &mut [MaybeUninit<f32>],
    wo: usize,
) {
    let ho = out.len() / wo;
    super::elementwise::widest(
        #[inline(always)]
        || {
            let mut i = 0;
            while i + R <= ho {
                correlate_block::<R, SPAN>(src, src_w, taps, out, wo, i);
                i += R;
            }
            for i in i..ho {
                correlate_block::<1, SPAN>(src, src_w, taps, out, wo, i);
            }
        },
    );
}

/// Output rows i .. i + R of [`PlaneCorrelation::run`], SPAN columns at a time. The loops over the block are
/// written like the GEMM micro-kernel's (fixed trip counts, raw reads after one bounds check), the shape
/// the compiler turns into vector FMAs on registers.
#[inline(always)]
fn correlate_block<const R: usize, const SPAN: usize>(
    src: &[f32],
    src_w: usize,
    taps: &Taps,
    out: &mut [MaybeUninit<f32>],
    wo: usize,
    i: usize,
) {
    let Taps {
        k, bias, offsets, ..
    } = *taps;
    taps.check();
    let sp = src.as_ptr();
    for j0 in (0..wo).step_by(SPAN) {
        taps.check_block(src, src_w, (i, R), (j0, SPAN));
        let mut acc = [[0.0f32; SPAN]; R];
        let origin = i * src_w + j0;
        for (&wv, &off) in k.iter().zip(offsets) {
            let base = origin + off;
            for (r, acc) in acc.iter_mut().enumerate() {
                for (t, a) in acc.iter_mut().enumerate() {
                    // SAFETY: base + r·src_w + t ≤ last < src.len() (asserted above: off ≤
                    // (kh − 1)·dh·src_w + (kw − 1)·dw).
                    let v = unsafe { *sp.add(base + r * src_w + t) };
                    *a = v.mul_add(wv, *a);
                }
            }
        }
        let len = SPAN.min(wo - j0);
        for (r, acc) in acc.iter().enumerate() {
            let row = &mut out[(i + r) * wo + j0..][..len];
            for (o, &a) in row.iter_mut().zip(acc) {
                o.write(a + bias);
            }
        }
    }
}

/// [`correlate_rows`] written with AVX2 intrinsics: blocks of R rows × V vectors of 8 outputs whose
/// accumulators are `__m256` values the compiler keeps in registers. The portable form's arrays of floats
/// were kept on the stack as well, each accumulator stored back after every tap (12 stores per 12
/// multiply-adds in the 28-wide blocks). The same multiply-adds in the same order as [`correlate_block`],
/// so the same results.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn correlate_rows_avx2<const R: usize, const V: usize>(
    src: &[f32],
    src_w: usize,
    taps: &Taps,
    out: &mut [MaybeUninit<f32>],
    wo: usize,
) {
    let ho = out.len() / wo;
    let mut i = 0;
    // SAFETY (both calls): the caller's guarantee, passed on.
    while i + R <= ho {
        unsafe { correlate_block_avx2::<R, V>(src, src_w, taps, out, wo, i) };
        i += R;
    }
    for i in i..ho {
        unsafe { correlate_block_avx2::<1, V>(src, src_w, taps, out, wo, i) };
    }
}

/// Output rows i .. i + R of [`correlate_rows_avx2`], 8·V columns at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn correlate_block_avx2<const R: usize, const V: usize>(
    src: &[f32],
    src_w: usize,
    taps: &Taps,
    out: &mut [MaybeUninit<f32>],
    wo: usize,
    i: usize,
) {
    use std::arch::x86_64::*;
    let Taps {
        k, bias, offsets, ..
    } = *taps;
    taps.check();
    let span = 8 * V;
    assert!(
        out.len() >= (i + R) * wo,
        "depthwise: output rows past {}",
        out.len()
    );
    let sp = src.as_ptr();
    for j0 in (0..wo).step_by(span) {
        taps.check_block(src, src_w, (i, R), (j0, span));
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let origin = i * src_w + j0;
        for (&wv, &off) in k.iter().zip(offsets) {
            let w = _mm256_set1_ps(wv);
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    // SAFETY: origin + off + r·src_w + 8·v + 7 ≤ last < src.len() (asserted above).
                    let x = unsafe { _mm256_loadu_ps(sp.add(origin + off + r * src_w + 8 * v)) };
                    *a = _mm256_fmadd_ps(x, w, *a);
                }
            }
        }
        let len = span.min(wo - j0);
        let b = _mm256_set1_ps(bias);
        for (r, row) in acc.iter().enumerate() {
            let dst = out[(i + r) * wo + j0..][..len].as_mut_ptr().cast::<f32>();
            for (v, &a) in row.iter().enumerate() {
                let x = _mm256_add_ps(a, b);
                let n = len.saturating_sub(8 * v).min(8);
                // SAFETY: the n ≤ 8 values from 8·v on lie inside the row's `len` outputs; a masked
                // store writes only the lanes below n. (A row's partial vector, such as the last 6 of a
                // 14-wide row, was stored through a stack copy and a `memmove` call, 6–7% of the CPU
                // samples of stage 2's forward; without it the time measured level.)
                unsafe {
                    if n == 8 {
                        _mm256_storeu_ps(dst.add(8 * v), x);
                    } else if n > 0 {
                        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
                        _mm256_maskstore_ps(dst.add(8 * v), mask, x);
                    }
                }
            }
        }
    }
}

/// The padded input buffer's rows and row stride for stride 1: H + 2·pad_h rows of W + 2·pad_w values
/// (with [`PlaneCorrelation::run`]'s zero columns past them).
fn padded_input_dims(g: &Conv2dGeometry) -> (usize, usize) {
    (
        g.h_in + 2 * g.params.padding[0],
        span_cols(g.w_out, g.kw, g.params.dilation[1]),
    )
}

fn depthwise_forward_unit_stride(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
    g: &Conv2dGeometry,
) {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let (rows, cols) = padded_input_dims(g);
    let p = g.params;
    let correlation = PlaneCorrelation::new(cols, g.kh, g.kw, p.dilation);
    y.par_chunks_mut(hw_out)
        .enumerate()
        .for_each_init(Vec::new, |buf, (plane_idx, y_plane)| {
            let c = plane_idx % g.c_out;
            let x_plane = &x[plane_idx * hw_in..(plane_idx + 1) * hw_in];
            pad_plane(
                x_plane,
                g.h_in,
                g.w_in,
                buf,
                rows,
                cols,
                p.padding[0] as isize,
                p.padding[1] as isize,
            );
            correlation.run(
                buf,
                &w[c * taps..(c + 1) * taps],
                y_plane,
                g.w_out,
                bias.map_or(0.0, |b| b[c]),
            );
        });
}

/// ∂x[h][w] = Σ_{p,q} dy[h + pad − p·d][w + pad − q·d]·k[p][q]: a correlation of dy, padded by
/// (k − 1)·d − pad, with the kernel flipped in both directions.
fn depthwise_input_grad_unit_stride(
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    g: &Conv2dGeometry,
) {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let p = g.params;
    let top = ((g.kh - 1) * p.dilation[0]) as isize - p.padding[0] as isize;
    let left = ((g.kw - 1) * p.dilation[1]) as isize - p.padding[1] as isize;
    let rows = g.h_in + (g.kh - 1) * p.dilation[0];
    let cols = span_cols(g.w_in, g.kw, p.dilation[1]);
    let correlation = PlaneCorrelation::new(cols, g.kh, g.kw, p.dilation);
    dx.par_chunks_mut(hw_in).enumerate().for_each_init(
        || (Vec::new(), vec![0.0f32; taps]),
        |(buf, flipped), (plane_idx, dx_plane)| {
            let c = plane_idx % g.c_in;
            for (f, &v) in flipped.iter_mut().rev().zip(&w[c * taps..(c + 1) * taps]) {
                *f = v;
            }
            let dy_plane = &dy[plane_idx * hw_out..(plane_idx + 1) * hw_out];
            pad_plane(dy_plane, g.h_out, g.w_out, buf, rows, cols, top, left);
            correlation.run(buf, flipped, dx_plane, g.w_in, 0.0);
        },
    );
}

/// ∂k[p][q] = Σ_n Σ_{i,j} dy[i][j]·x_padded[i + p·d][j + q·d], one channel per task, and, `with_bias`, the
/// bias gradient db\[c\] = Σ_n `run_sum`(dy plane (n, c)), added in f64 over the images (a plane's sum
/// costs little once the weight gradient has read it into cache).
fn depthwise_weight_grad_unit_stride(
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
    with_bias: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let (rows, cols) = padded_input_dims(g);
    let p = g.params;
    let mut dw = vec![0.0f32; g.c_out * taps];
    let mut db = vec![0.0f32; g.c_out];
    dw.par_chunks_mut(taps)
        .zip(db.par_iter_mut())
        .enumerate()
        .for_each(|(c, (dw_c, db_c))| {
            let (mut buf, mut dy_buf) = (Vec::new(), Vec::new());
            // The vectorised kernels' partial sums, per tap, over all images (see `weight_grad_row`).
            let mut lanes = vec![[0.0f32; LANES]; taps];
            let mut bias_sum = 0.0f64;
            for n in 0..g.batch {
                let plane_idx = n * g.c_out + c;
                let x_plane = &x[plane_idx * hw_in..(plane_idx + 1) * hw_in];
                let dy_plane = &dy[plane_idx * hw_out..(plane_idx + 1) * hw_out];
                pad_plane(
                    x_plane,
                    g.h_in,
                    g.w_in,
                    &mut buf,
                    rows,
                    cols,
                    p.padding[0] as isize,
                    p.padding[1] as isize,
                );
                let src = Source {
                    values: &buf,
                    row_stride: cols,
                };
                match g.kw {
                    3 => weight_grad_plane::<3>(src, dy_plane, g, &mut lanes, &mut dy_buf),
                    5 => weight_grad_plane::<5>(src, dy_plane, g, &mut lanes, &mut dy_buf),
                    7 => weight_grad_plane::<7>(src, dy_plane, g, &mut lanes, &mut dy_buf),
                    _ => {
                        // Other widths by dot products, each plane's sum into its tap's first lane.
                        for (pq, lane) in lanes.iter_mut().enumerate() {
                            let (kp, kq) = (pq / g.kw, pq % g.kw);
                            let mut sum = 0.0f32;
                            for (i, drow) in dy_plane.chunks_exact(g.w_out).enumerate() {
                                let start = (i + kp * p.dilation[0]) * cols + kq * p.dilation[1];
                                sum += dot(drow, &buf[start..start + g.w_out]);
                            }
                            lane[0] += sum;
                        }
                    }
                }
                if with_bias {
                    // The plane was just read into cache by the weight gradient.
                    bias_sum += run_sum(dy_plane, None);
                }
            }
            for (d, l) in dw_c.iter_mut().zip(&lanes) {
                *d = l.iter().sum::<f32>();
            }
            *db_c = bias_sum as f32;
        });
    (dw, with_bias.then_some(db))
}

/// A padded plane: `values` with rows `row_stride` apart.
#[derive(Clone, Copy)]
struct Source<'a> {
    values: &'a [f32],
    row_stride: usize,
}

/// dy values per step of the weight gradient: one AVX-512 vector, or two AVX2 ones. (On AVX2 the seven
/// sums of a 7×7 kernel row then take 14 of the 16 registers; one vector of 8 was 3–4× slower there, in
/// `cargo bench --bench depthwise`.)
const LANES: usize = 16;

/// lanes[p·KW + q] += the LANES partial sums of Σ_i Σ_j dy[i][j]·src[i + p·dh][j + q·dw] for one plane of a
/// stride-1 convolution with KW taps per kernel row (the caller adds each tap's lanes once, after the last
/// image). For each kernel row p the KW sums are kept as vectors of partial sums while dy is read once, a
/// vector at a time (KW multiply-adds per dy vector, each reading one source vector); dy's rows are first
/// copied into `dy_buf` with zeros up to whole vectors, so no row needs a scalar tail.
fn weight_grad_plane<const KW: usize>(
    src: Source,
    dy: &[f32],
    g: &Conv2dGeometry,
    lanes: &mut [[f32; LANES]],
    dy_buf: &mut Vec<f32>,
) {
    let (ho, wo, kh, dil) = (g.h_out, g.w_out, g.kh, g.params.dilation);
    let stride = wo.next_multiple_of(LANES);
    // dy's rows padded with zeros to whole vectors: the zeros are written once per buffer (every plane
    // of a call has the same shape), the rows copied without a `memcpy` call each.
    if dy_buf.len() != ho * stride {
        dy_buf.clear();
        dy_buf.resize(ho * stride, 0.0);
    }
    for (to, from) in dy_buf.chunks_exact_mut(stride).zip(dy.chunks_exact(wo)) {
        copy_run(&mut to[..wo], from);
    }
    // The largest source index read below, checked once rather than per value.
    let last = (ho - 1 + (kh - 1) * dil[0]) * src.row_stride + stride - 1 + (KW - 1) * dil[1];
    assert!(
        last < src.values.len() && lanes.len() == kh * KW,
        "depthwise weight gradient: source index {last} past {} values",
        src.values.len()
    );
    super::elementwise::widest(
        #[inline(always)]
        || {
            for (p, acc) in lanes.chunks_exact_mut(KW).enumerate() {
                let row0 = p * dil[0] * src.row_stride;
                let acc: &mut [[f32; LANES]; KW] = acc.try_into().expect("KW sums");
                weight_grad_row::<KW>(
                    src.values,
                    src.row_stride,
                    row0,
                    dil[1],
                    dy_buf,
                    stride,
                    acc,
                );
            }
        },
    );
}

/// acc[q] += the lanes of Σ_i Σ_j dy[i][j]·src[row0 + i·src_w + j + q·dq] for q < KW (dy: rows of
/// `stride` values, a multiple of LANES), the sums left as LANES partial sums each: they are added across
/// lanes once per channel, after every image, not once per plane (a 14×14 plane has only 196 outputs, and
/// the 7·7 sums of 16 lanes each were a fifth of the weight gradient's time there). The caller has checked
/// that every source index read is in bounds.
#[inline(always)]
fn weight_grad_row<const KW: usize>(
    src: &[f32],
    src_w: usize,
    row0: usize,
    dq: usize,
    dy: &[f32],
    stride: usize,
    acc: &mut [[f32; LANES]; KW],
) {
    let sp = src.as_ptr();
    let mut sums = *acc;
    for (i, drow) in dy.chunks_exact(stride).enumerate() {
        let row = row0 + i * src_w;
        for (j, d) in drow.chunks_exact(LANES).enumerate() {
            let d: &[f32; LANES] = d.try_into().expect("LANES values");
            let at = row + j * LANES;
            for (q, a) in sums.iter_mut().enumerate() {
                for t in 0..LANES {
                    // SAFETY: at + q·dq + t is at most the index the caller checked.
                    let v = unsafe { *sp.add(at + q * dq + t) };
                    a[t] = v.mul_add(d[t], a[t]);
                }
            }
        }
    }
    *acc = sums;
}

// Depthwise convolutions of small planes (output rows shorter than SMALL_PLANE: the late ConvNeXt stages,
// 4×4 down to 1×1 at 32×32 input and 7×7 at 224) run channels-last: each image is transposed to (pixel,
// channel), so the inner loop runs over channels (tens to hundreds, full vectors) instead of over a handful
// of pixels, and only the taps that land inside the image are visited (a 7×7 kernel on a 1×1 plane with
// padding 3 has one such tap).

/// Output rows shorter than this take the channels-last path. (`cargo bench --bench depthwise`: 8-wide
/// planes ran 1.5–2× faster on the padded-plane path, 7-wide ones about 2.5× slower.)
const SMALL_PLANE: usize = 8;

/// Which of the two per-image depthwise products to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// y[i, j, c] = Σ_taps w[c, p, q]·x[i·s + p·d − pad, j·s + q·d − pad, c]
    Forward,
    /// dx[i·s + p·d − pad, j·s + q·d − pad, c] += w[c, p, q]·dy[i, j, c]
    InputGrad,
}

/// (C, HW) → (HW, C) for one image.
fn to_channels_last(plane: &[f32], c: usize, hw: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(c * hw, 0.0);
    for ch in 0..c {
        for (px, &v) in plane[ch * hw..(ch + 1) * hw].iter().enumerate() {
            out[px * c + ch] = v;
        }
    }
}

/// (HW, C) → (C, HW) for one image.
fn to_channels_first(cl: &[f32], c: usize, hw: usize, out: &mut [f32]) {
    for ch in 0..c {
        for (px, o) in out[ch * hw..(ch + 1) * hw].iter_mut().enumerate() {
            *o = cl[px * c + ch];
        }
    }
}

/// For each output pixel (row-major), its valid taps as (tap p·kw + q, input pixel): the same for every
/// image and channel, so worked out once per call rather than per image (where the closure calls of
/// [`for_each_valid_tap`] were over a quarter of the 7×7 forward's time).
fn valid_taps(g: &Conv2dGeometry) -> Vec<Vec<(usize, usize)>> {
    (0..g.h_out * g.w_out)
        .map(|px| {
            let mut valid = Vec::with_capacity(g.kh * g.kw);
            for_each_valid_tap(g, px / g.w_out, px % g.w_out, |t, in_px| {
                valid.push((t, in_px))
            });
            valid
        })
        .collect()
}

/// The taps (p, q) and input position (ih, jw) read by output pixel (i, j), skipping padding.
fn for_each_valid_tap(g: &Conv2dGeometry, i: usize, j: usize, mut f: impl FnMut(usize, usize)) {
    let p = g.params;
    for kp in 0..g.kh {
        let ih = (i * p.stride[0] + kp * p.dilation[0]) as isize - p.padding[0] as isize;
        if ih < 0 || ih >= g.h_in as isize {
            continue;
        }
        for kq in 0..g.kw {
            let jw = (j * p.stride[1] + kq * p.dilation[1]) as isize - p.padding[1] as isize;
            if jw < 0 || jw >= g.w_in as isize {
                continue;
            }
            f(kp * g.kw + kq, ih as usize * g.w_in + jw as usize);
        }
    }
}

/// The weights as (tap, channel), so a tap's weights for all channels are one contiguous row.
fn taps_by_channel(w: &[f32], c: usize, taps: usize) -> Vec<f32> {
    let mut wt = vec![0.0f32; taps * c];
    for ch in 0..c {
        for t in 0..taps {
            wt[t * c + ch] = w[ch * taps + t];
        }
    }
    wt
}

/// Forward (src = x, dst = y) or input gradient (src = dy, dst = dx) of a depthwise convolution,
/// channels-last per image.
fn depthwise_channels_last(
    src: &[f32],
    w: &[f32],
    dst: &mut [f32],
    g: &Conv2dGeometry,
    dir: Direction,
) {
    let c = g.c_in;
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let wt = taps_by_channel(w, c, taps);
    let valid = valid_taps(g);
    let (src_hw, dst_hw) = match dir {
        Direction::Forward => (hw_in, hw_out),
        Direction::InputGrad => (hw_out, hw_in),
    };
    dst.par_chunks_mut(c * dst_hw).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(src_cl, dst_cl), (n, dst_img)| {
            to_channels_last(
                &src[n * c * src_hw..(n + 1) * c * src_hw],
                c,
                src_hw,
                src_cl,
            );
            dst_cl.clear();
            dst_cl.resize(c * dst_hw, 0.0);
            channels_last_image(src_cl, &wt, dst_cl, g, dir, &valid);
            to_channels_first(dst_cl, c, dst_hw, dst_img);
        },
    );
}

/// One image of [`depthwise_channels_last`], compiled for the widest instruction set: for each output
/// pixel and block of channels, the forward sums its valid taps in registers and stores once; the input
/// gradient holds dy's block in registers and adds it, weighted, into each tap's input pixel.
fn channels_last_image(
    src: &[f32],
    wt: &[f32],
    dst: &mut [f32],
    g: &Conv2dGeometry,
    dir: Direction,
    valid: &[Vec<(usize, usize)>],
) {
    super::elementwise::widest(
        #[inline(always)]
        || {
            let c = g.c_in;
            for (out_px, valid) in valid.iter().enumerate() {
                match dir {
                    Direction::Forward => {
                        gather_pixel(src, wt, c, valid, &mut dst[out_px * c..][..c])
                    }
                    Direction::InputGrad => {
                        scatter_pixel(&src[out_px * c..][..c], wt, c, valid, dst)
                    }
                }
            }
        },
    );
}

/// Channels per register block of the channels-last kernels: four AVX-512 vectors.
const CHANNEL_BLOCK: usize = 64;

/// out[ch] = Σ over the valid taps (t, px) of w[t][ch]·src[px][ch] (rows of c values).
#[inline(always)]
fn gather_pixel(src: &[f32], wt: &[f32], c: usize, valid: &[(usize, usize)], out: &mut [f32]) {
    let blocks = c / CHANNEL_BLOCK * CHANNEL_BLOCK;
    for c0 in (0..blocks).step_by(CHANNEL_BLOCK) {
        let mut acc = [0.0f32; CHANNEL_BLOCK];
        for &(t, px) in valid {
            let s: &[f32; CHANNEL_BLOCK] = src[px * c + c0..][..CHANNEL_BLOCK]
                .try_into()
                .expect("a block");
            let w: &[f32; CHANNEL_BLOCK] = wt[t * c + c0..][..CHANNEL_BLOCK]
                .try_into()
                .expect("a block");
            for ((a, &s), &w) in acc.iter_mut().zip(s).zip(w) {
                *a = s.mul_add(w, *a);
            }
        }
        out[c0..c0 + CHANNEL_BLOCK].copy_from_slice(&acc);
    }
    for &(t, px) in valid {
        let (s, w) = (&src[px * c..][..c], &wt[t * c..][..c]);
        for ch in blocks..c {
            out[ch] = s[ch].mul_add(w[ch], out[ch]);
        }
    }
}

/// dst[o][ch] += d[ch]·src[s][ch] for each pair (s, o) (rows of c values): the input gradient's
/// w[t]·dy into input pixel px for the pairs (t, px), the weight gradient's dy·x[px] into tap t's row for
/// (px, t).
#[inline(always)]
fn scatter_pixel(d: &[f32], src: &[f32], c: usize, pairs: &[(usize, usize)], dst: &mut [f32]) {
    let blocks = c / CHANNEL_BLOCK * CHANNEL_BLOCK;
    for c0 in (0..blocks).step_by(CHANNEL_BLOCK) {
        let d: &[f32; CHANNEL_BLOCK] = d[c0..c0 + CHANNEL_BLOCK].try_into().expect("a block");
        for &(s, o) in pairs {
            let v: &[f32; CHANNEL_BLOCK] = src[s * c + c0..][..CHANNEL_BLOCK]
                .try_into()
                .expect("a block");
            let o: &mut [f32; CHANNEL_BLOCK] = (&mut dst[o * c + c0..][..CHANNEL_BLOCK])
                .try_into()
                .expect("a block");
            for ((o, &d), &v) in o.iter_mut().zip(d).zip(v) {
                *o = d.mul_add(v, *o);
            }
        }
    }
    for &(s, o) in pairs {
        let v = &src[s * c..][..c];
        let o = &mut dst[o * c..][..c];
        for ch in blocks..c {
            o[ch] = d[ch].mul_add(v[ch], o[ch]);
        }
    }
}

/// One image's share of [`depthwise_weight_grad_channels_last`]: acc[t][ch] += Σ over output pixels of
/// dy[px][ch]·x[tap t's input pixel][ch], compiled for the widest instruction set.
fn weight_grad_image(
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
    acc: &mut [f32],
    pairs: &[Vec<(usize, usize)>],
) {
    super::elementwise::widest(
        #[inline(always)]
        || {
            let c = g.c_in;
            for (out_px, pairs) in pairs.iter().enumerate() {
                scatter_pixel(&dy[out_px * c..][..c], x, c, pairs, acc);
            }
        },
    );
}

/// Weight gradient channels-last: dw[c, p, q] = Σ_n Σ_{i,j} dy[n, i, j, c]·x[n, ih, jw, c], accumulated per
/// image into (tap, channel) rows. The batch is cut into a fixed number of chunks whose partial sums are
/// added in chunk order, so the result does not depend on how rayon schedules the chunks (a resumed run
/// must reproduce an uninterrupted one bit for bit).
fn depthwise_weight_grad_channels_last(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    const CHUNKS: usize = 8;
    let c = g.c_in;
    let (hw_in, hw_out, taps) = (g.h_in * g.w_in, g.h_out * g.w_out, g.kh * g.kw);
    let per_chunk = g.batch.div_ceil(CHUNKS);
    // Each output pixel's (input pixel, tap) pairs: dy·x[px] goes into tap t's row.
    let pairs: Vec<Vec<(usize, usize)>> = valid_taps(g)
        .into_iter()
        .map(|v| v.into_iter().map(|(t, px)| (px, t)).collect())
        .collect();
    let partials: Vec<Vec<f32>> = (0..g.batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0.0f32; taps * c];
            let (mut x_cl, mut dy_cl) = (Vec::new(), Vec::new());
            for n in chunk * per_chunk..((chunk + 1) * per_chunk).min(g.batch) {
                to_channels_last(&x[n * c * hw_in..(n + 1) * c * hw_in], c, hw_in, &mut x_cl);
                to_channels_last(
                    &dy[n * c * hw_out..(n + 1) * c * hw_out],
                    c,
                    hw_out,
                    &mut dy_cl,
                );
                weight_grad_image(&x_cl, &dy_cl, g, &mut acc, &pairs);
            }
            acc
        })
        .collect();
    let mut per_tap = vec![0.0f32; taps * c];
    for part in &partials {
        per_tap.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    // (tap, channel) → (channel, tap), the OIHW layout of a depthwise weight.
    let mut dw = vec![0.0f32; c * taps];
    for t in 0..taps {
        for ch in 0..c {
            dw[ch * taps + t] = per_tap[t * c + ch];
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SplitMix64;
    use crate::shape::{Conv2dParams, Shape};

    fn close(what: &str, fast: &[f32], direct: &[f32]) {
        assert_eq!(fast.len(), direct.len(), "{what}: lengths");
        for (i, (&a, &b)) in fast.iter().zip(direct).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}: element {i}: {a} against {b}"
            );
        }
    }

    /// Both correlation kernels (the portable one, and with AVX2 the intrinsics one) on padded planes of
    /// every block width and with row counts that leave remainder blocks, against the correlation in f64.
    #[test]
    fn both_correlation_kernels_match_the_definition() {
        let mut rng = SplitMix64::new(11);
        for (h, w, k, dil) in [
            (14, 14, 7, 1),
            (28, 28, 7, 1),
            (9, 56, 7, 1),
            (11, 70, 7, 1),
            (8, 45, 7, 1),
            (9, 52, 7, 1),
            (7, 33, 3, 2),
            (10, 8, 3, 1),
            (12, 17, 5, 1),
        ] {
            let (ho, wo) = (h - (k - 1) * dil, w - (k - 1) * dil);
            let src_w = span_cols(wo, k, dil);
            let mut src = vec![0.0f32; h * src_w];
            for row in src.chunks_exact_mut(src_w) {
                row[..w].copy_from_slice(&draw(&mut rng, w));
            }
            let kernel = draw(&mut rng, k * k);
            let offsets: Vec<usize> = (0..k * k)
                .map(|pq| (pq / k) * dil * src_w + (pq % k) * dil)
                .collect();
            let taps = Taps {
                k: &kernel,
                kh: k,
                kw: k,
                dil: [dil, dil],
                bias: 0.25,
                offsets: &offsets,
            };
            let want: Vec<f32> = (0..ho * wo)
                .map(|o| {
                    let (i, j) = (o / wo, o % wo);
                    let sum: f64 = (0..k * k)
                        .map(|pq| {
                            let at = (i + pq / k * dil) * src_w + j + pq % k * dil;
                            kernel[pq] as f64 * src[at] as f64
                        })
                        .sum();
                    (sum + 0.25) as f32
                })
                .collect();
            let mut kernels = vec![false];
            #[cfg(target_arch = "x86_64")]
            if isa() == Isa::Avx2Fma || isa() == Isa::Avx512 {
                kernels.push(true);
            }
            for avx2 in kernels {
                let mut out = vec![MaybeUninit::new(f32::NAN); ho * wo];
                correlate_taps(&src, src_w, &taps, &mut out, wo, avx2);
                close(
                    &format!("{h}×{w}, {k}×{k} dilation {dil}, avx2 {avx2}"),
                    &written(&out),
                    &want,
                );
            }
        }
    }

    /// The values of a buffer every element of which was initialised (NaN before a kernel wrote it).
    fn written(v: &[MaybeUninit<f32>]) -> Vec<f32> {
        // SAFETY: every element was initialised, by the NaN fill or by the kernel.
        v.iter().map(|x| unsafe { x.assume_init() }).collect()
    }

    fn draw(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    /// The channels-last paths (blocks of 64 channels and the remainder) against the direct loops, on
    /// planes under 8 wide, stride 1 and 2.
    #[test]
    fn channels_last_paths_match_the_direct_loops() {
        let mut rng = SplitMix64::new(9);
        let d = Conv2dParams::default();
        for (n, c, h, w, k, params) in [
            (2, 3, 5, 6, 7, d.padding(3)),
            (3, 70, 7, 7, 7, d.padding(3)),
            (1, 130, 2, 3, 3, d.padding(1)),
            (2, 64, 6, 5, 3, d.padding(1).stride(2)),
            (1, 200, 1, 1, 7, d.padding(3)),
        ] {
            let x_shape = Shape::new([n, c, h, w]);
            let g = Conv2dGeometry::new(&x_shape, &Shape::new([c, 1, k, k]), params.groups(c))
                .expect("a valid geometry");
            assert!(g.w_out < SMALL_PLANE);
            let x = draw(&mut rng, x_shape.numel());
            let wt = draw(&mut rng, c * k * k);
            let dy = draw(&mut rng, g.output_shape().numel());
            let what = format!("{c} channels, {h}×{w}, {k}×{k}, {:?}", g.params);

            let mut fast = vec![0.0; dy.len()];
            let mut direct = vec![0.0; dy.len()];
            depthwise_channels_last(&x, &wt, &mut fast, &g, Direction::Forward);
            depthwise_forward(&x, &wt, &mut direct, &g);
            close(&format!("forward {what}"), &fast, &direct);

            let mut fast = vec![0.0; x.len()];
            let mut direct = vec![0.0; x.len()];
            depthwise_channels_last(&dy, &wt, &mut fast, &g, Direction::InputGrad);
            depthwise_input_grad(&dy, &wt, &mut direct, &g);
            close(&format!("input grad {what}"), &fast, &direct);

            close(
                &format!("weight grad {what}"),
                &depthwise_weight_grad_channels_last(&x, &dy, &g),
                &depthwise_weight_grad(&x, &dy, &g),
            );
        }
    }

    /// The stride-1 paths (a padded plane, register blocks of 2 × 64, 4 or 3 × 32 and 8 or 6 × 16 outputs
    /// with AVX-512 or AVX2, and 2 × 40, 48 or 56 with AVX2) against the direct loops, at row widths on
    /// both sides of each span, rows wider than one block, and row counts that leave a remainder block.
    #[test]
    fn padded_plane_paths_match_the_direct_loops() {
        let mut rng = SplitMix64::new(5);
        let d = Conv2dParams::default();
        let cases = [
            (5, 17, 7, d.padding(3)),
            (7, 33, 7, d.padding(3)),
            (6, 56, 7, d.padding(3)),
            (3, 70, 7, d.padding(3)),
            (9, 40, 3, d.padding(2).dilation(2)),
            (6, 29, 5, d),
            (4, 130, 3, d.padding(1)),
            (5, 21, 4, d.padding(2)),
            (14, 14, 7, d.padding(3)),
            (9, 8, 3, d.padding(1)),
            (5, 45, 7, d.padding(3)),
        ];
        for (h, w, k, params) in cases {
            let (n, c) = (2, 3);
            let x_shape = Shape::new([n, c, h, w]);
            let g = Conv2dGeometry::new(&x_shape, &Shape::new([c, 1, k, k]), params.groups(c))
                .expect("a valid geometry");
            let x = draw(&mut rng, x_shape.numel());
            let wt = draw(&mut rng, c * k * k);
            let dy = draw(&mut rng, g.output_shape().numel());
            let what = format!("{h}×{w}, {k}×{k}, {:?}", g.params);

            // The padded-plane path writes its output whole, bias included: NaN where it wrote nothing.
            let bias = draw(&mut rng, c);
            let mut fast = vec![MaybeUninit::new(f32::NAN); dy.len()];
            depthwise_forward_unit_stride(&x, &wt, Some(&bias), &mut fast, &g);
            let mut direct = vec![0.0; dy.len()];
            depthwise_forward(&x, &wt, &mut direct, &g);
            let hw_out = g.h_out * g.w_out;
            for (plane, ys) in direct.chunks_mut(hw_out).enumerate() {
                ys.iter_mut().for_each(|v| *v += bias[plane % c]);
            }
            close(&format!("forward {what}"), &written(&fast), &direct);

            let mut fast = vec![MaybeUninit::new(f32::NAN); x.len()];
            depthwise_input_grad_unit_stride(&dy, &wt, &mut fast, &g);
            let mut direct = vec![0.0; x.len()];
            depthwise_input_grad(&dy, &wt, &mut direct, &g);
            close(&format!("input grad {what}"), &written(&fast), &direct);

            close(
                &format!("weight grad {what}"),
                &depthwise_weight_grad_unit_stride(&x, &dy, &g, false).0,
                &depthwise_weight_grad(&x, &dy, &g),
            );
        }
    }
}
