//! Launchers of the reduce kernels (reduce.wgsl): sums over an axis, chunk sums and permutes.

use super::dispatch::{pack8, u32_of, Bindings};
use super::runtime::GpuBuffer;
use super::shaders::{Family, ShaderVariant};
use super::GpuBackend;
use crate::backend::{AxisLayout, Backend, Storage};
use crate::error::{Error, Result};

impl GpuBackend {
    /// out[i] = Σ_s partial[s·len + i] for s < chunks: a sum over the middle axis of (1, chunks, len).
    pub(super) fn sum_chunks(
        &self,
        partial: &GpuBuffer,
        out: &GpuBuffer,
        chunks: usize,
        len: usize,
    ) -> Result<()> {
        let mut params = vec![1, u32_of("chunks", chunks)?, u32_of("length", len)?, 0];
        params.extend([0u32; 16]);
        self.launch_elements(
            &ShaderVariant::plain(Family::Reduce),
            "sum_axis_thread",
            &params,
            Bindings::new(&[Some(partial.raw())], &[out.raw()]),
            len,
        )
    }

    pub(super) fn launch_sum_axis(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        let x = self.buf(x)?;
        let outputs = l.outer * l.inner;
        let out = self.alloc(outputs)?;
        let mut params = vec![
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
        ];
        params.extend([0u32; 16]);
        let bindings = Bindings::new(&[Some(x.raw())], &[out.raw()]);
        let variant = ShaderVariant::plain(Family::Reduce);
        // Long axes with few outputs get a workgroup each (parallel over l); otherwise a thread each.
        if l.len >= 1024 && outputs < 4096 {
            self.launch(&variant, "sum_axis_wg", &params, bindings, outputs as u64)?;
        } else {
            self.launch_elements(&variant, "sum_axis_thread", &params, bindings, outputs)?;
        }
        Ok(Self::wrap(out))
    }

    /// Σ Σ x² over `inputs`, four tensors per launch (one workgroup), each launch adding the previous
    /// launch's total (bound in the fifth input slot).
    pub(super) fn launch_sum_squares(&self, inputs: &[(&Storage, usize)]) -> Result<Storage> {
        let variant = ShaderVariant::plain(Family::Reduce);
        let mut total: Option<GpuBuffer> = None;
        if inputs.is_empty() {
            return self.launch_fill(1, 0.0);
        }
        for group in inputs.chunks(4) {
            let out = self.alloc(1)?;
            let mut lens = [0u32; 4];
            let mut slots: Vec<Option<&wgpu::Buffer>> = vec![None; 5];
            for (k, &(s, len)) in group.iter().enumerate() {
                lens[k] = u32_of("a tensor's length", len)?;
                slots[k] = Some(self.buf(s)?.raw());
            }
            slots[4] = total.as_ref().map(GpuBuffer::raw);
            let mut params = lens.to_vec();
            params.push(total.is_some() as u32);
            params.extend([0u32; 15]);
            self.launch(
                &variant,
                "sum_squares",
                &params,
                Bindings::new(&slots, &[out.raw()]),
                1,
            )?;
            total = Some(out);
        }
        Ok(Self::wrap(total.expect("at least one group")))
    }

    pub(super) fn launch_permute(
        &self,
        x: &Storage,
        dims: &[usize],
        perm: &[usize],
    ) -> Result<Storage> {
        let x = self.buf(x)?;
        let (dims, perm) = simplify_permutation(dims, perm);
        let (dims, perm) = (&dims[..], &perm[..]);
        let rank = dims.len();
        if rank > 8 {
            return Err(Error::Unsupported {
                backend: self.name(),
                op: "permute of more than 8 axes (after merging axes that stay adjacent)",
            });
        }
        let n: usize = dims.iter().product();
        let out = self.alloc(n)?;
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * dims[i + 1];
        }
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let mut params = vec![u32_of("length", n)?, 0, 0, rank as u32];
        params.extend(pack8(&out_dims)?);
        params.extend(pack8(&src_strides)?);
        self.launch_elements(
            &ShaderVariant::plain(Family::Reduce),
            "permute",
            &params,
            Bindings::new(&[Some(x.raw())], &[out.raw()]),
            n,
        )?;
        Ok(Self::wrap(out))
    }
}

/// The same permutation over fewer axes: size-1 axes dropped, and input axes that stay adjacent and in
/// order in the output merged into one (NCHW → NHWC becomes (N, C, HW) → (N, HW, C)), so the kernel
/// decodes fewer indices.
fn simplify_permutation(dims: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut new_index = vec![usize::MAX; dims.len()];
    let mut kept = Vec::new();
    for (a, &d) in dims.iter().enumerate() {
        if d != 1 {
            new_index[a] = kept.len();
            kept.push(d);
        }
    }
    // Runs of consecutive input axes, in output order.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for p in perm
        .iter()
        .map(|&p| new_index[p])
        .filter(|&p| p != usize::MAX)
    {
        match runs.last_mut() {
            Some(last) if last.1 + 1 == p => last.1 = p,
            _ => runs.push((p, p)),
        }
    }
    if runs.is_empty() {
        return (vec![1], vec![0]);
    }
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&r| runs[r].0);
    let in_dims = order
        .iter()
        .map(|&r| kept[runs[r].0..=runs[r].1].iter().product())
        .collect();
    let mut position = vec![0; runs.len()];
    for (i, &r) in order.iter().enumerate() {
        position[r] = i;
    }
    (in_dims, position)
}
