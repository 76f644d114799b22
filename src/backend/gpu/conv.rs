//! Launchers of the convolution kernels: dense and grouped conv2d and its gradients as implicit GEMMs
//! (gemm.wgsl + conv2d.wgsl), depthwise ones as direct kernels (depthwise.wgsl).

use super::dispatch::{u32_of, Bindings, WG};
use super::runtime::GpuBuffer;
use super::shaders::{ConvParams, Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{Storage, UnaryOp};
use crate::error::Result;
use crate::shape::Conv2dGeometry;

impl GpuBackend {
    /// (conv2d(x, w) + bias, GELU of it) from one GEMM launch whose epilogue applies GELU, when the
    /// convolution is not depthwise and K is not split; otherwise the convolution, then GELU's kernel.
    pub(super) fn launch_conv2d_gelu(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        g: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let n_out = g.batch * g.c_out * g.h_out * g.w_out;
        let [groups, m, n, k] = forward_shape(g);
        let tiles = groups * m.div_ceil(64) * n.div_ceil(64);
        if g.is_depthwise() || self.k_splits(tiles, k, n_out) > 1 {
            let a = self.launch_conv2d(x, w, bias, g)?;
            let h = self.launch_unary(UnaryOp::Gelu, &a, n_out)?;
            return Ok((a, h));
        }
        let (x, w) = (self.buf(x)?, self.buf(w)?);
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        let (a, h) = (self.alloc(n_out)?, self.alloc(n_out)?);
        self.launch(
            &ShaderVariant::conv2d_act(0, bias.is_some(), is_pointwise(g), true),
            "gemm",
            &conv_params(g, bias.is_some())?.words(),
            Bindings::new(
                &[Some(w.raw()), Some(x.raw()), bias.map(|b| b.raw())],
                &[a.raw(), h.raw()],
            ),
            tiles as u64,
        )?;
        Ok((Self::wrap(a), Self::wrap(h)))
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
            let out = self.alloc(n_out)?;
            let inputs = [Some(x.raw()), Some(w.raw()), bias.map(|b| b.raw())];
            let (entry, threads) = if slides_rows(g) {
                (
                    "dw_forward_rows",
                    g.batch * g.c_out * g.h_out * g.w_out.div_ceil(4),
                )
            } else {
                ("dw_forward", n_out)
            };
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                entry,
                &conv_params(g, bias.is_some())?.words(),
                Bindings::new(&inputs, &[out.raw()]),
                threads,
            )?;
            return Ok(Self::wrap(out));
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
            let out = self.alloc(n_in)?;
            let (entry, threads) = if slides_rows(g) {
                (
                    "dw_input_grad_rows",
                    g.batch * g.c_in * g.h_in * g.w_in.div_ceil(4),
                )
            } else {
                ("dw_input_grad", n_in)
            };
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                entry,
                &conv_params(g, false)?.words(),
                Bindings::new(&[Some(dy.raw()), Some(w.raw())], &[out.raw()]),
                threads,
            )?;
            return Ok(Self::wrap(out));
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
            let threads = self.min_parallel_workgroups * WG as usize;
            let per_chunk = n_w + n_b;
            let chunks = threads.div_ceil(per_chunk).clamp(1, g.batch);
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
            // The sliding-window kernel has a thread per 4 taps of a kernel row (and per bias).
            let (entry, threads) = if slides_rows(g) {
                let tap_threads = g.c_out * g.kh * g.kw.div_ceil(4);
                ("dw_weight_grad_rows", chunks * (tap_threads + n_b))
            } else {
                ("dw_weight_grad", chunks * per_chunk)
            };
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                entry,
                &ConvParams {
                    chunk: u32_of("a convolution size", chunk)?,
                    ..conv_params(g, with_bias)?
                }
                .words(),
                Bindings::new(&[Some(x.raw()), Some(dy.raw())], &outputs),
                threads,
            )?;
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
        _pad: 0,
    })
}
