//! Launchers of the convolution kernels: dense and grouped conv2d and its gradients as implicit GEMMs
//! (gemm.wgsl + conv2d.wgsl), depthwise ones as direct kernels (depthwise.wgsl).

use super::dispatch::{u32_of, Bindings, WG};
use super::runtime::GpuBuffer;
use super::shaders::{
    ConvParams, Family, ShaderVariant, DW_DY_TILE_WORDS, DW_THREADS, DW_TILE_WORDS,
};
use super::GpuBackend;
use crate::backend::{Storage, UnaryOp};
use crate::error::Result;
use crate::shape::Conv2dGeometry;

impl GpuBackend {
    /// (GELU(y), GELU′(y)) with y = conv2d(x, w) + bias, from one GEMM launch whose epilogue writes both,
    /// when the convolution is not depthwise and K is not split; otherwise the convolution, then the two
    /// elementwise kernels.
    pub(super) fn launch_conv2d_gelu(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        g: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let n_out = g.batch * g.c_out * g.h_out * g.w_out;
        let [groups, m, n, k] = forward_shape(g);
        let (tile, tiles) = self.gemm_tile_for(groups, m, n);
        if g.is_depthwise() || self.k_splits(tiles, k, n_out) > 1 {
            let y = self.launch_conv2d(x, w, bias, g)?;
            let z = self.launch_unary(UnaryOp::Gelu, &y, n_out)?;
            let dz = self.launch_unary(UnaryOp::GeluDerivative, &y, n_out)?;
            return Ok((z, dz));
        }
        let (x, w) = (self.buf(x)?, self.buf(w)?);
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        let (z, dz) = (self.alloc(n_out)?, self.alloc(n_out)?);
        self.launch(
            &ShaderVariant::conv2d_act(0, bias.is_some(), is_pointwise(g), true).with_tile(tile),
            "gemm",
            &conv_params(g, bias.is_some())?.words(),
            Bindings::new(
                &[Some(w.raw()), Some(x.raw()), bias.map(|b| b.raw())],
                &[z.raw(), dz.raw()],
            ),
            tiles as u64,
        )?;
        Ok((Self::wrap(z), Self::wrap(dz)))
    }

    pub(super) fn launch_conv2d(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        let (x, w) = (self.buf(x)?, self.buf(w)?);
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        let n_out = g.batch * g.c_out * g.h_out * g.w_out;
        if g.is_depthwise() {
            return self.launch_depthwise(x, w, bias, g, false);
        }
        // Per group: M = C_out/g, N = batch·H_out·W_out, K = (C_in/g)·kh·kw.
        let out = self.gemm(
            &ShaderVariant::conv2d(0, bias.is_some(), is_pointwise(g)),
            conv_params(g, bias.is_some())?.words(),
            CONV_SPLIT_SLOT,
            &[Some(w.raw()), Some(x.raw()), bias.map(|b| b.raw())],
            n_out,
            forward_shape(g),
        )?;
        Ok(Self::wrap(out))
    }

    pub(super) fn launch_conv2d_input_grad(
        &self,
        dy: &Storage,
        w: &Storage,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        let (dy, w) = (self.buf(dy)?, self.buf(w)?);
        let n_in = g.batch * g.c_in * g.h_in * g.w_in;
        if g.is_depthwise() {
            return self.launch_depthwise(dy, w, None, g, true);
        }
        if is_patchify(g) {
            // Per group: M = (C_in/g)·kh·kw, N = batch·H_out·W_out, K = C_out/g; every pixel stored once.
            let out = self.gemm(
                &ShaderVariant::conv2d(3, false, false),
                conv_params(g, false)?.words(),
                CONV_SPLIT_SLOT,
                &[Some(w.raw()), Some(dy.raw())],
                n_in,
                [
                    g.params.groups,
                    g.c_in_per_group() * g.kh * g.kw,
                    g.batch * g.h_out * g.w_out,
                    g.c_out_per_group(),
                ],
            )?;
            return Ok(Self::wrap(out));
        }
        // Per group: M = C_in/g, N = batch·H_in·W_in, K = (C_out/g)·kh·kw.
        let out = self.gemm(
            &ShaderVariant::conv2d(1, false, is_pointwise(g)),
            conv_params(g, false)?.words(),
            CONV_SPLIT_SLOT,
            &[Some(w.raw()), Some(dy.raw())],
            n_in,
            [
                g.params.groups,
                g.c_in_per_group(),
                g.batch * g.h_in * g.w_in,
                g.c_out_per_group() * g.kh * g.kw,
            ],
        )?;
        Ok(Self::wrap(out))
    }

    /// ∂L/∂w and, with `with_bias`, ∂L/∂bias from the same launch (the GEMM's extra column of ones, or
    /// the depthwise kernel's extra threads).
    pub(super) fn launch_conv2d_weight_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        g: &Conv2dGeometry,
        with_bias: bool,
    ) -> Result<(Storage, Option<Storage>)> {
        let (x, dy) = (self.buf(x)?, self.buf(dy)?);
        let taps = g.kh * g.kw;
        let n_w = g.c_out * g.c_in_per_group() * taps;
        let n_b = if with_bias { g.c_out } else { 0 };
        if g.is_depthwise() {
            // Split the batch into chunks when the (c, p, q) alone give too few threads. (The count is by
            // outputs even for the sliding-window kernel, which has about a quarter as many threads per
            // chunk: sizing by its threads split more layers and added summing launches, 302 per atto step
            // against the budget of 300 in tests/gpu_model.rs.)
            let tile = self.weight_grad_tile(g);
            let per_chunk = n_w + n_b;
            let chunks = match tile {
                // The tiled reduction has a workgroup per (chunk, channel).
                Some(_) => self.min_parallel_workgroups.div_ceil(g.c_out),
                None => (self.min_parallel_workgroups * WG as usize).div_ceil(per_chunk),
            }
            .clamp(1, g.batch);
            let chunk = g.batch.div_ceil(chunks);
            let chunks = g.batch.div_ceil(chunk);
            let out = self.alloc(n_w)?;
            let db = if with_bias {
                Some(self.alloc(n_b)?)
            } else {
                None
            };
            let partial = if chunks > 1 {
                Some(self.alloc(chunks * per_chunk)?)
            } else {
                None
            };
            let outputs: Vec<&wgpu::Buffer> = match &partial {
                Some(p) => vec![p.raw()],
                None => std::iter::once(out.raw())
                    .chain(db.as_ref().map(GpuBuffer::raw))
                    .collect(),
            };
            let mut params = ConvParams {
                chunk: u32_of("a convolution size", chunk)?,
                ..conv_params(g, with_bias)?
            };
            let bindings = Bindings::new(&[Some(x.raw()), Some(dy.raw())], &outputs);
            let variant = ShaderVariant::plain(Family::Depthwise);
            match tile {
                // A workgroup per (chunk, channel).
                Some(t) => {
                    (params.tile_w, params.tile_h, params.tile_stride) = (t.w, t.h, t.stride);
                    let groups = (chunks * g.c_out) as u64;
                    let words = params.words();
                    self.launch(&variant, "dw_weight_grad_tiled", &words, bindings, groups)?;
                }
                None => {
                    // The sliding-window kernel has a thread per 4 taps of a kernel row (and per bias).
                    let (entry, threads) = if slides_rows(g) {
                        let tap_threads = g.c_out * g.kh * g.kw.div_ceil(4);
                        ("dw_weight_grad_rows", chunks * (tap_threads + n_b))
                    } else {
                        ("dw_weight_grad", chunks * per_chunk)
                    };
                    self.launch_elements(&variant, entry, &params.words(), bindings, threads)?;
                }
            }
            if let Some(partial) = partial {
                let outs: Vec<&GpuBuffer> = std::iter::once(&out).chain(db.as_ref()).collect();
                self.sum_chunks(&partial, &outs, chunks)?;
            }
            return Ok((Self::wrap(out), db.map(Self::wrap)));
        }
        // Per group: M = C_out/g, N = (C_in/g)·kh·kw (+ 1: the bias column), K = batch·H_out·W_out
        // (long: split-K helps).
        let variant = ShaderVariant::conv2d(2, with_bias, is_pointwise(g));
        let shape = [
            g.params.groups,
            g.c_out_per_group(),
            g.c_in_per_group() * taps + usize::from(with_bias),
            g.batch * g.h_out * g.w_out,
        ];
        let inputs = [Some(dy.raw()), Some(x.raw())];
        let params = conv_params(g, false)?.words();
        let lens: &[usize] = if with_bias { &[n_w, n_b] } else { &[n_w] };
        let mut outs = self
            .gemm_outputs(&variant, params, CONV_SPLIT_SLOT, &inputs, lens, shape)?
            .into_iter()
            .map(Self::wrap);
        let dw = outs.next().expect("the weight gradient");
        Ok((dw, outs.next()))
    }
}

impl GpuBackend {
    /// A depthwise convolution's forward (`input_grad` false: `src` is x, with the bias if any) or input
    /// gradient (true: `src` is dy): the tiled kernel where the geometry slides and its tile fits, else the
    /// sliding-window kernel, else the thread-per-output one.
    fn launch_depthwise(
        &self,
        src: &GpuBuffer,
        w: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        g: &Conv2dGeometry,
        input_grad: bool,
    ) -> Result<Storage> {
        let (out_h, out_w) = if input_grad {
            (g.h_in, g.w_in)
        } else {
            (g.h_out, g.w_out)
        };
        let planes = g.batch * g.c_out;
        let out = self.alloc(planes * out_h * out_w)?;
        let mut params = conv_params(g, bias.is_some())?;
        let bindings = Bindings::new(
            &[Some(src.raw()), Some(w.raw()), bias.map(GpuBuffer::raw)],
            &[out.raw()],
        );
        let variant = ShaderVariant::plain(Family::Depthwise);
        let tile = (self.depthwise_tiles && slides_rows(g))
            .then(|| correlation_tile(out_h, out_w, g.kh, g.kw))
            .flatten();
        if let Some(t) = tile {
            (params.tile_w, params.tile_h) = (t.w, t.h);
            (params.tile_planes, params.tile_stride) = (t.planes, t.stride);
            let groups = planes.div_ceil(t.planes as usize)
                * out_h.div_ceil(t.h as usize)
                * out_w.div_ceil(t.w as usize);
            let entry = if input_grad {
                "dw_input_grad_tiled"
            } else {
                "dw_forward_tiled"
            };
            self.launch(&variant, entry, &params.words(), bindings, groups as u64)?;
        } else {
            let (entry, threads) = match (slides_rows(g), input_grad) {
                (true, false) => ("dw_forward_rows", planes * out_h * out_w.div_ceil(4)),
                (true, true) => ("dw_input_grad_rows", planes * out_h * out_w.div_ceil(4)),
                (false, false) => ("dw_forward", planes * out_h * out_w),
                (false, true) => ("dw_input_grad", planes * out_h * out_w),
            };
            self.launch_elements(&variant, entry, &params.words(), bindings, threads)?;
        }
        Ok(Self::wrap(out))
    }

    /// The dy tile of dw_weight_grad_tiled for a geometry that slides, or None where the tiled kernels are
    /// off, the geometry does not slide, or the kernel is too large for its thread roles or tiles.
    fn weight_grad_tile(&self, g: &Conv2dGeometry) -> Option<Tile> {
        // Planes below MIN_REDUCTION_PLANE outputs keep the sliding-window kernel: a tile would be mostly
        // halo, with two barriers per image.
        if !self.depthwise_tiles || !slides_rows(g) || g.h_out * g.w_out < MIN_REDUCTION_PLANE {
            return None;
        }
        reduction_tile(g.h_out, g.w_out, g.kh, g.kw)
    }
}

/// The smallest output plane (in outputs) whose depthwise weight gradient takes the tiled reduction: 7×7,
/// ConvNeXt's last stage at 224×224. (A choice by reasoning, not measured on hardware: on llvmpipe the
/// tiled kernels are off.)
const MIN_REDUCTION_PLANE: usize = 49;

/// A workgroup's tile in depthwise.wgsl's tiled kernels: `planes` planes of `h` × `w` outputs, whose
/// staged source rows are `stride` words apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    w: u32,
    h: u32,
    planes: u32,
    stride: u32,
}

impl Tile {
    /// The tile of `planes` planes of `h` × `w` outputs for a `kh` × `kw` kernel, if its staged source
    /// (h + kh − 1 rows per plane, each w + kw − 1 values padded to 1 mod 4 words) fits DW_TILE_WORDS.
    fn fitting(w: usize, h: usize, planes: usize, kh: usize, kw: usize) -> Option<Tile> {
        let row = w + kw - 1;
        let stride = row + (5 - row % 4) % 4;
        if planes * (h + kh - 1) * stride > DW_TILE_WORDS {
            return None;
        }
        let u = |v: usize| u32::try_from(v).ok();
        Some(Tile {
            w: u(w)?,
            h: u(h)?,
            planes: u(planes)?,
            stride: u(stride)?,
        })
    }
}

/// The tile of dw_forward_tiled and dw_input_grad_tiled for an output plane `out_h` × `out_w` and a
/// kernel `kh` × `kw`: 4·DW_THREADS outputs, 4 per thread along a row; the width is the plane's, rounded
/// up to a power of two within 4 ..= 32, the height likewise within what is left, and as many planes as fill
/// the workgroup (so 7×7 planes go four to a workgroup). None when the staged source (the tile and its
/// halo of kernel − 1 rows and columns, per plane) exceeds DW_TILE_WORDS: planes of 4×4 or less with a
/// 7×7 kernel, which stay with the sliding-window kernels.
fn correlation_tile(out_h: usize, out_w: usize, kh: usize, kw: usize) -> Option<Tile> {
    let outputs = 4 * DW_THREADS;
    let w = out_w.next_power_of_two().clamp(4, 32);
    let h = out_h.next_power_of_two().min(outputs / w);
    Tile::fitting(w, h, outputs / (w * h), kh, kw)
}

/// The dy tile of dw_weight_grad_tiled for an output plane `out_h` × `out_w` and a kernel `kh` × `kw`:
/// whole rows up to 64 wide, as many as DW_DY_TILE_WORDS and the staged x tile (DW_TILE_WORDS, with the
/// halo) allow. None when the kernel's tap quads (kh · ⌈kw/4⌉, one thread each) exceed the workgroup.
fn reduction_tile(out_h: usize, out_w: usize, kh: usize, kw: usize) -> Option<Tile> {
    if kh * kw.div_ceil(4) > DW_THREADS {
        return None;
    }
    let w = out_w.min(64);
    let staged_rows = DW_TILE_WORDS / (w + kw + 2); // the padded row is at most w + kw + 2 words
    let h = out_h
        .min(DW_DY_TILE_WORDS / w)
        .min(staged_rows.checked_sub(kh - 1)?);
    if h == 0 {
        return None;
    }
    Tile::fitting(w, h, 1, kh, kw)
}

/// The forward GEMM's (batch = groups, M = C_out/g, N = batch·H_out·W_out, K = (C_in/g)·kh·kw).
fn forward_shape(g: &Conv2dGeometry) -> [usize; 4] {
    [
        g.params.groups,
        g.c_out_per_group(),
        g.batch * g.h_out * g.w_out,
        g.c_in_per_group() * g.kh * g.kw,
    ]
}

/// A 1×1 convolution with stride 1 and no padding: its patch matrix is the input itself.
fn is_pointwise(g: &Conv2dGeometry) -> bool {
    g.kh == 1 && g.kw == 1 && g.params.stride == [1, 1] && g.params.padding == [0, 0]
}

/// A convolution whose taps tile the input exactly (stride = kernel > 1×1, no padding or dilation, and
/// the output covers every row and column): each input pixel is read by exactly one tap of one output.
fn is_patchify(g: &Conv2dGeometry) -> bool {
    let p = g.params;
    g.kh * g.kw > 1
        && p.stride == [g.kh, g.kw]
        && p.padding == [0, 0]
        && p.dilation == [1, 1]
        && g.h_in == g.h_out * g.kh
        && g.w_in == g.w_out * g.kw
}

/// Index of the split count in the conv2d parameter block (its word offset in [`ConvParams`]).
const CONV_SPLIT_SLOT: usize = std::mem::offset_of!(ConvParams, splits) / 4;

/// Whether a depthwise convolution takes depthwise.wgsl's sliding-window kernels (`dw_forward_rows`,
/// `dw_input_grad_rows`, `dw_weight_grad_rows`): stride 1, dilation 1, and padding below the kernel size on
/// each axis (so the input gradient is a correlation of dy with a padding of kernel − 1 − pad ≥ 0).
fn slides_rows(g: &Conv2dGeometry) -> bool {
    let p = g.params;
    p.stride == [1, 1] && p.dilation == [1, 1] && p.padding[0] < g.kh && p.padding[1] < g.kw
}

/// The parameter block of a convolution kernel (conv2d.wgsl or depthwise.wgsl): the geometry, groups,
/// one K split (the gemm sets the real count) and `has_bias`; `chunk` is 0 (only dw_weight_grad sets it).
fn conv_params(g: &Conv2dGeometry, has_bias: bool) -> Result<ConvParams> {
    let p = g.params;
    let size = |v: usize| u32_of("a convolution size", v);
    Ok(ConvParams {
        batch: size(g.batch)?,
        c_in: size(g.c_in)?,
        h_in: size(g.h_in)?,
        w_in: size(g.w_in)?,
        c_out: size(g.c_out)?,
        kh: size(g.kh)?,
        kw: size(g.kw)?,
        h_out: size(g.h_out)?,
        w_out: size(g.w_out)?,
        stride_h: size(p.stride[0])?,
        stride_w: size(p.stride[1])?,
        pad_h: size(p.padding[0])?,
        pad_w: size(p.padding[1])?,
        dil_h: size(p.dilation[0])?,
        dil_w: size(p.dilation[1])?,
        groups: size(p.groups)?,
        splits: 1,
        has_bias: has_bias.into(),
        chunk: 0,
        tile_w: 0,
        tile_h: 0,
        tile_planes: 0,
        tile_stride: 0,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiles of ConvNeXt's 7×7 depthwise planes: 256 outputs per workgroup, small planes shared, and
    /// the planes too small for a staged tile (4×4 and less) left to the sliding-window kernels.
    #[test]
    fn correlation_tiles_of_the_convnext_planes() {
        let tile = |side: usize| correlation_tile(side, side, 7, 7).map(|t| (t.w, t.h, t.planes));
        assert_eq!(tile(56), Some((32, 8, 1)));
        assert_eq!(tile(28), Some((32, 8, 1)));
        assert_eq!(tile(14), Some((16, 16, 1)));
        assert_eq!(tile(8), Some((8, 8, 4)));
        assert_eq!(tile(7), Some((8, 8, 4)));
        assert_eq!(tile(4), None);
        assert_eq!(tile(1), None);
        // Rows padded to 1 mod 4 words: 32 + 6 = 38 → 41.
        assert_eq!(correlation_tile(56, 56, 7, 7).map(|t| t.stride), Some(41));
    }

    /// The weight gradient's dy tiles: whole rows up to 64 wide, at most 256 outputs; kernels whose tap
    /// quads exceed the workgroup have none.
    #[test]
    fn reduction_tiles_fit_their_workgroup_memory() {
        let tile = |side: usize, k: usize| reduction_tile(side, side, k, k).map(|t| (t.w, t.h));
        assert_eq!(tile(56, 7), Some((56, 4)));
        assert_eq!(tile(14, 7), Some((14, 14)));
        assert_eq!(tile(7, 7), Some((7, 7)));
        assert_eq!(tile(100, 3), Some((64, 4)));
        assert_eq!(tile(56, 31), None);
        for (side, k) in [(56, 7), (64, 9), (9, 9), (64, 15)] {
            if let Some(t) = reduction_tile(side, side, k, k) {
                assert!((t.w * t.h) as usize <= DW_DY_TILE_WORDS);
                assert!((t.h as usize + k - 1) * t.stride as usize <= DW_TILE_WORDS);
            }
        }
    }
}
