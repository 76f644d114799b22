//! The rayon CPU backend: every kernel of the contract on host memory, parallel over outer loops.

mod caches;
mod conv;
mod depthwise;
mod elementwise;
mod grn;
mod lowrank;
mod matmul;
mod norm;
mod reduce;

pub use elementwise::{erf, gelu, gelu_derivative};
pub use matmul::gemm_plan;

use super::{
    AdamWStep, AxisLayout, Backend, BinaryOp, GrnGrads, GrnLayout, GrnOutput, LayerNormGrads,
    LayerNormOutput, LowRankGrads, MatmulSpec, Storage, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{BroadcastLayout, Conv2dGeometry};
use std::mem::MaybeUninit;
use std::sync::Arc;

/// The CPU backend. Kernels run on rayon's global thread pool.
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// The backend (stateless: all memory is ordinary host allocations).
    pub fn new() -> Self {
        keep_freed_memory();
        CpuBackend
    }
}

/// A vector of `len` floats that `fill` writes in place, never zeroed first: a kernel that writes every
/// element of its output needs no zeroing pass before it (a memset over each output, about 3% of a 224-pixel
/// training step when elementwise outputs were zeroed).
///
/// # Safety
/// `fill` must write every one of the `len` elements before it returns.
pub(crate) unsafe fn vec_written(
    len: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation; the capacity is at least len.
    unsafe { v.set_len(len) };
    fill(&mut v);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout and length; every element was written by `fill` (the caller's
    // promise), and MaybeUninit<f32> has the layout of f32.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), len, v.capacity()) }
}

/// Writes `src` to `dst..dst + src.len()` in fixed-size pieces of 8, 4, 2 and 1 values. A copy of run-time
/// length is a call to `memcpy`, which for the few values of a short row costs more than the copy itself:
/// a depthwise plane's row of 7 to 56 floats, or a GEMM tile's partial row (`memmove` was 0.8% of the CPU
/// samples of the atto 224 LieRA step, nearly all from those, before they were written this way).
///
/// # Safety
/// `dst..dst + src.len()` must be valid for writes (it may be uninitialised) and written by no one else
/// meanwhile.
#[inline(always)]
pub(crate) unsafe fn copy_pieces(src: &[f32], dst: *mut f32) {
    /// The first N values of `s` into the first N of `d`, as one N-value array: written value by value,
    /// the compiler kept an 8-value piece as eight scalar moves.
    #[inline(always)]
    fn piece<const N: usize>(d: &mut [MaybeUninit<f32>], s: &[f32]) {
        let s: &[f32; N] = s[..N].try_into().expect("N values");
        let d: &mut [MaybeUninit<f32>; N] = (&mut d[..N]).try_into().expect("N values");
        // SAFETY: MaybeUninit<[f32; N]> has the layout of [MaybeUninit<f32>; N].
        unsafe { &mut *(d as *mut [MaybeUninit<f32>; N]).cast::<MaybeUninit<[f32; N]>>() }
            .write(*s);
    }
    // SAFETY: the caller's range, as MaybeUninit (it may be uninitialised; only whole values are written).
    let dst = unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<f32>>(), src.len()) };
    // Written as fixed-size chunks of both slices: a loop over one slice that writes through an offset
    // pointer was turned back into a `memcpy` call by the compiler.
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        piece::<8>(d, s);
    }
    let (mut d, mut s) = (d.into_remainder(), s.remainder());
    if s.len() >= 4 {
        piece::<4>(d, s);
        (d, s) = (&mut d[4..], &s[4..]);
    }
    if s.len() >= 2 {
        piece::<2>(d, s);
        (d, s) = (&mut d[2..], &s[2..]);
    }
    if !s.is_empty() {
        piece::<1>(d, s);
    }
}

/// Tunes glibc's allocator for training (a no-op elsewhere). [`CpuBackend::new`] calls it; a program that
/// runs its work on threads of a rayon pool should call it first, before those threads allocate.
///
/// A training step allocates and frees the same few dozen activation-sized buffers every step. glibc serves
/// blocks above 128 KiB with fresh `mmap`s and returns them with `munmap`, so every step would pay page
/// faults for new pages and TLB shootdowns on both cores for freed ones (a fifth of a ConvNeXt-atto step in
/// profiles). Raising the mmap and trim thresholds keeps freed blocks in the heap for the next step. That
/// holds for the main heap only: a thread that is not the main one allocates from an arena of its own,
/// whose heaps are at most 64 MiB, so it maps and unmaps any larger block every time (the 224×224 step's
/// 4C-channel activations are 64 MB), whatever the thresholds. So all threads share the main arena: with
/// the `liera` command running on a pool thread, the 224 LieRA step took ~17,000 page faults per step with
/// per-thread arenas and none with one.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 512 << 20;
        // SAFETY: mallopt only changes allocator tuning parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// The host slice behind a storage, or an error if it belongs to another backend.
pub(crate) fn host(s: &Storage) -> Result<&[f32]> {
    match s {
        Storage::Cpu(v) => Ok(v.as_slice()),
        _ => Err(Error::Device(format!(
            "the cpu backend was given a buffer of another device ({s:?})"
        ))),
    }
}

/// Wraps a host vector as storage.
pub(crate) fn wrap(v: Vec<f32>) -> Storage {
    Storage::Cpu(Arc::new(v))
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn gemm_form(&self) -> String {
        gemm_plan()
    }
    fn upload(&self, data: &[f32]) -> Result<Storage> {
        Ok(wrap(data.to_vec()))
    }
    fn download(&self, storage: &Storage) -> Result<Vec<f32>> {
        Ok(host(storage)?.to_vec())
    }
    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(wrap(vec![value; len]))
    }
    fn unary(&self, op: UnaryOp, x: &Storage, len: usize) -> Result<Storage> {
        let x = host(x)?;
        Ok(wrap(elementwise::unary(op, &x[..len])))
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        b: &Storage,
        layout: &BroadcastLayout,
    ) -> Result<Storage> {
        Ok(wrap(elementwise::binary(op, host(a)?, host(b)?, layout)))
    }
    fn binary_in_place(&self, op: BinaryOp, a: &mut Storage, b: &Storage) -> Result<bool> {
        let b = host(b)?;
        let Storage::Cpu(a) = a else {
            return Ok(false);
        };
        let Some(a) = Arc::get_mut(a) else {
            return Ok(false);
        };
        if a.len() != b.len() {
            return Err(Error::invalid(
                op.name(),
                format!(
                    "in place over {} values with an operand of {}",
                    a.len(),
                    b.len()
                ),
            ));
        }
        elementwise::binary_in_place(op, a, b);
        Ok(true)
    }
    fn matmul(&self, a: &Storage, b: &Storage, spec: &MatmulSpec) -> Result<Storage> {
        Ok(wrap(matmul::matmul(host(a)?, host(b)?, spec)))
    }
    fn low_rank_reparam(
        &self,
        w: &Storage,
        b: &Storage,
        a: &Storage,
        dims: (usize, usize, usize),
        op: BinaryOp,
    ) -> Result<Storage> {
        match lowrank::low_rank_reparam(host(w)?, host(b)?, host(a)?, dims, op) {
            Some(y) => Ok(wrap(y)),
            None => super::low_rank_reparam_composed(self, w, b, a, dims, op),
        }
    }
    fn low_rank_factor_grads(
        &self,
        x: &LowRankGrads<'_>,
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        let (db, da) = lowrank::low_rank_factor_grads(x)?;
        Ok((db.map(wrap), da.map(wrap)))
    }
    fn sum_axis(&self, x: &Storage, layout: AxisLayout) -> Result<Storage> {
        Ok(wrap(reduce::sum_axis(host(x)?, layout)))
    }
    fn sum_keep_middle(&self, x: &Storage, layout: AxisLayout) -> Result<Storage> {
        Ok(wrap(reduce::sum_keep_middle(host(x)?, layout)))
    }
    fn sum_product_keep_middle(&self, a: &Storage, b: &Storage, l: AxisLayout) -> Result<Storage> {
        Ok(wrap(reduce::sum_product_keep_middle(host(a)?, host(b)?, l)))
    }
    fn channel_scale_add(
        &self,
        x: &Storage,
        h: &Storage,
        scale: &Storage,
        l: AxisLayout,
    ) -> Result<Storage> {
        Ok(wrap(reduce::channel_scale_add(
            host(x)?,
            host(h)?,
            host(scale)?,
            l,
        )))
    }
    fn sum_squares(&self, inputs: &[(&Storage, usize)]) -> Result<Storage> {
        let xs = inputs
            .iter()
            .map(|&(s, len)| Ok(&host(s)?[..len]))
            .collect::<Result<Vec<_>>>()?;
        Ok(wrap(vec![reduce::sum_squares(&xs)]))
    }
    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        Ok(wrap(reduce::permute(host(x)?, dims, perm)))
    }
    fn conv2d(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        geom: &Conv2dGeometry,
    ) -> Result<Storage> {
        let bias = bias.map(host).transpose()?;
        conv::conv2d(host(x)?, host(w)?, bias, geom).map(wrap)
    }
    fn conv2d_gelu(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        geom: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let bias = bias.map(host).transpose()?;
        let (z, dz) = conv::conv2d_gelu(host(x)?, host(w)?, bias, geom)?;
        Ok((wrap(z), wrap(dz)))
    }
    fn conv2d_input_grad(
        &self,
        dy: &Storage,
        w: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<Storage> {
        conv::conv2d_input_grad(host(dy)?, host(w)?, geom).map(wrap)
    }
    fn conv2d_weight_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<Storage> {
        conv::conv2d_weight_grad(host(x)?, host(dy)?, geom).map(wrap)
    }
    fn conv2d_weight_bias_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        geom: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let (dw, db) = conv::conv2d_weight_bias_grad(host(x)?, host(dy)?, geom)?;
        Ok((wrap(dw), wrap(db)))
    }
    fn layer_norm(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: AxisLayout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let weight = weight.map(host).transpose()?;
        let bias = bias.map(host).transpose()?;
        let (y, mean, rstd) = norm::layer_norm(host(x)?, weight, bias, layout, eps)?;
        Ok(LayerNormOutput {
            y: wrap(y),
            mean: wrap(mean),
            rstd: wrap(rstd),
        })
    }
    fn grn(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        layout: GrnLayout,
        eps: f32,
    ) -> Result<GrnOutput> {
        let (y, gnorm, denom) = grn::grn(host(x)?, host(gamma)?, host(beta)?, layout, eps);
        Ok(GrnOutput {
            y: wrap(y),
            gnorm: wrap(gnorm),
            denom: wrap(denom),
        })
    }
    fn grn_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        gamma: &Storage,
        gnorm: &Storage,
        denom: &Storage,
        layout: GrnLayout,
    ) -> Result<GrnGrads> {
        let (dx, dgamma, dbeta) = grn::grn_backward(
            host(dy)?,
            host(x)?,
            host(gamma)?,
            host(gnorm)?,
            host(denom)?,
            layout,
        );
        Ok(GrnGrads {
            dx: wrap(dx),
            dgamma: wrap(dgamma),
            dbeta: wrap(dbeta),
        })
    }
    fn layer_norm_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        weight: Option<&Storage>,
        mean: &Storage,
        rstd: &Storage,
        layout: AxisLayout,
    ) -> Result<LayerNormGrads> {
        let weight = weight.map(host).transpose()?;
        let (dx, dweight, dbias) = norm::layer_norm_backward(
            host(dy)?,
            host(x)?,
            weight,
            host(mean)?,
            host(rstd)?,
            layout,
        )?;
        Ok(LayerNormGrads {
            dx: wrap(dx),
            dweight: wrap(dweight),
            dbias: wrap(dbias),
        })
    }
    fn adamw_update(
        &self,
        param: &Storage,
        grad: &Storage,
        moments: Option<(&Storage, &Storage)>,
        grad_scale: Option<&Storage>,
        len: usize,
        h: &AdamWStep,
    ) -> Result<(Storage, Storage, Storage)> {
        let moments = match moments {
            Some((m, v)) => Some((host(m)?, host(v)?)),
            None => None,
        };
        let c = grad_scale.map(|c| host(c).map(|c| c[0])).transpose()?;
        let (p, m, v) =
            elementwise::adamw(&host(param)?[..len], &host(grad)?[..len], moments, c, h);
        Ok((wrap(p), wrap(m), wrap(v)))
    }
    fn log_softmax(&self, x: &Storage, layout: AxisLayout) -> Result<Storage> {
        norm::log_softmax(host(x)?, layout).map(wrap)
    }
    fn log_softmax_backward(
        &self,
        dy: &Storage,
        y: &Storage,
        layout: AxisLayout,
    ) -> Result<Storage> {
        norm::log_softmax_backward(host(dy)?, host(y)?, layout).map(wrap)
    }
}

#[cfg(test)]
mod tests {
    /// The piecewise copy writes exactly the source's values, for every length through two 8-value pieces
    /// and each remainder of 4, 2 and 1, and nothing past them.
    #[test]
    fn copy_pieces_writes_the_run_and_nothing_after_it() {
        let src: Vec<f32> = (0..20).map(|i| i as f32 + 0.5).collect();
        for len in 0..=src.len() {
            let mut dst = vec![-1.0f32; src.len() + 3];
            // SAFETY: dst holds more than len values.
            unsafe { super::copy_pieces(&src[..len], dst.as_mut_ptr()) };
            assert_eq!(&dst[..len], &src[..len], "length {len}");
            assert!(dst[len..].iter().all(|&v| v == -1.0), "past length {len}");
        }
    }
}
