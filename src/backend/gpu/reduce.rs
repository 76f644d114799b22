//! Launchers of the reduce kernels (reduce.wgsl): sums over an axis, chunk sums and permutes.

use super::dispatch::{pack8, u32_of, Bindings, MULTI_HEADER_WORDS};
use super::runtime::GpuBuffer;
use super::shaders::{sum_squares_tensors_per_launch, Family, ShaderVariant, MULTI_TABLE_ROWS};
use super::GpuBackend;
use crate::backend::{AxisLayout, Backend, Storage};
use crate::error::{Error, Result};

/// Elements per workgroup of sum_squares_multi (multi.wgsl's SQ_CHUNK).
const SQ_CHUNK: usize = 4096;

impl GpuBackend {
    /// The sum of `chunks` partial results, each of `outs`' total length: out[i] = Σ_s partial[s·len + i]
    /// (sum_chunks), the first output's length of each sum written to `outs[0]` and the rest to `outs[1]`
    /// (a weight gradient's split-K partials that carry the bias gradient after it).
    pub(super) fn sum_chunks(
        &self,
        partial: &GpuBuffer,
        outs: &[&GpuBuffer],
        chunks: usize,
    ) -> Result<()> {
        let len: usize = outs.iter().map(|o| o.len()).sum();
        let mut params = vec![
            1,
            u32_of("chunks", chunks)?,
            u32_of("length", len)?,
            u32_of("length", outs[0].len())?,
        ];
        params.extend([0u32; 16]);
        let raw: Vec<&wgpu::Buffer> = outs.iter().map(|o| o.raw()).collect();
        self.launch_elements(
            &ShaderVariant::plain(Family::Reduce),
            "sum_chunks",
            &params,
            Bindings::new(&[Some(partial.raw())], &raw),
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

    /// Σ_o Σ_i x[o, l, i], or of x·x2 when `x2` is given (sum_keep_middle_*).
    pub(super) fn launch_sum_keep_middle(
        &self,
        x: &Storage,
        x2: Option<&Storage>,
        l: AxisLayout,
    ) -> Result<Storage> {
        let x = self.buf(x)?;
        let x2 = x2.map(|s| self.buf(s)).transpose()?;
        let out = self.alloc(l.len)?;
        let mut params = vec![
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            x2.is_some() as u32,
        ];
        let positions = l.outer * l.inner;
        u32_of("outer·inner", positions)?;
        params.extend([0u32; 16]);
        let variant = ShaderVariant::plain(Family::Reduce);
        let bindings = Bindings::new(&[Some(x.raw()), x2.map(GpuBuffer::raw)], &[out.raw()]);
        // A workgroup per output pays for its tree reduction's barriers; below this many positions, a
        // thread per output with a serial loop is cheaper.
        if positions > 16384 {
            self.launch(
                &variant,
                "sum_keep_middle_wg",
                &params,
                bindings,
                l.len as u64,
            )?;
        } else {
            self.launch_elements(&variant, "sum_keep_middle_thread", &params, bindings, l.len)?;
        }
        Ok(Self::wrap(out))
    }

    /// y = x + scale[l]·h over an (outer, len, inner) view (channel_scale_add).
    pub(super) fn launch_channel_scale_add(
        &self,
        x: &Storage,
        h: &Storage,
        scale: &Storage,
        l: AxisLayout,
    ) -> Result<Storage> {
        let (x, h, scale) = (self.buf(x)?, self.buf(h)?, self.buf(scale)?);
        let n = l.numel();
        let out = self.alloc(n)?;
        let mut params = vec![
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
        ];
        u32_of("length", n)?;
        params.extend([0u32; 16]);
        self.launch_elements(
            &ShaderVariant::plain(Family::Reduce),
            "channel_scale_add",
            &params,
            Bindings::new(
                &[Some(x.raw()), Some(h.raw()), Some(scale.raw())],
                &[out.raw()],
            ),
            n,
        )?;
        Ok(Self::wrap(out))
    }

    /// Σ Σ x² over `inputs` (multi.wgsl's sum_squares_multi): every launch takes as many tensors as the
    /// wide layout and the parameter table allow, each workgroup writes the sum over one chunk, and one
    /// more launch adds the chunks' sums. ConvNeXt-atto's 128 gradients take 6 launches on a 32-slot
    /// adapter.
    pub(super) fn launch_sum_squares(&self, inputs: &[(&Storage, usize)]) -> Result<Storage> {
        let per_launch = sum_squares_tensors_per_launch(self.wide_slots) as usize;
        let bufs = inputs
            .iter()
            .map(|&(s, len)| Ok((self.buf(s)?, len)))
            .collect::<Result<Vec<_>>>()?;
        let chunks: Vec<usize> = bufs.iter().map(|(_, len)| len.div_ceil(SQ_CHUNK)).collect();
        let total: usize = chunks.iter().sum();
        if total == 0 {
            return self.launch_fill(1, 0.0);
        }
        let partials = self.alloc(total)?;
        let mut offset = 0usize;
        let mut start = 0usize;
        while start < bufs.len() {
            // The next launch: up to `per_launch` tensors, none of whose buffers is already in it.
            let mut end = start;
            while end < bufs.len()
                && end - start < per_launch
                && !bufs[start..end]
                    .iter()
                    .any(|(b, _)| b.raw() == bufs[end].0.raw())
            {
                end += 1;
            }
            let mut table = [0u32; 4 * MULTI_TABLE_ROWS as usize];
            let mut groups = 0usize;
            let mut slots: Vec<Option<&wgpu::Buffer>> = vec![Some(partials.raw())];
            for (t, ((b, len), &c)) in bufs[start..end].iter().zip(&chunks[start..end]).enumerate()
            {
                table[2 * t] = u32_of("a tensor's length", *len)?;
                table[2 * t + 1] = u32_of("workgroups", groups)?;
                groups += c;
                slots.push(Some(b.raw()));
            }
            let mut params = vec![
                (end - start) as u32,
                0,
                0,
                u32_of("partial sums", offset)?,
                u32_of("workgroups", groups)?,
            ];
            params.resize(MULTI_HEADER_WORDS, 0);
            params.extend(table);
            self.launch_multi("sum_squares_multi", &params, &slots, groups as u64)?;
            offset += groups;
            start = end;
        }
        self.launch_sum_axis(
            &Self::wrap(partials),
            AxisLayout {
                outer: 1,
                len: total,
                inner: 1,
            },
        )
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
