//! Launchers of the fused AdamW update: one parameter per launch (optim.wgsl), or many (multi.wgsl).

use super::dispatch::{u32_of, Bindings, MULTI_HEADER_WORDS, WG};
use super::runtime::GpuBuffer;
use super::shaders::{adamw_tensors_per_launch, Family, ShaderVariant, MULTI_TABLE_ROWS};
use super::GpuBackend;
use crate::backend::{AdamWItem, AdamWStep, Storage};
use crate::error::Result;

impl GpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_adamw_update(
        &self,
        param: &Storage,
        grad: &Storage,
        moments: Option<(&Storage, &Storage)>,
        grad_scale: Option<&Storage>,
        len: usize,
        h: &AdamWStep,
    ) -> Result<(Storage, Storage, Storage)> {
        let (param, grad) = (self.buf(param)?, self.buf(grad)?);
        let grad_scale = grad_scale.map(|c| self.buf(c)).transpose()?;
        let moments = match moments {
            Some((m, v)) => Some((self.buf(m)?, self.buf(v)?)),
            None => None,
        };
        let (p, m, v) = (self.alloc(len)?, self.alloc(len)?, self.alloc(len)?);
        let params = [
            u32_of("length", len)?,
            moments.is_some() as u32,
            h.lr.to_bits(),
            h.beta1.to_bits(),
            h.beta2.to_bits(),
            h.eps.to_bits(),
            h.weight_decay.to_bits(),
            h.bias1.to_bits(),
            h.bias2.to_bits(),
            grad_scale.is_some() as u32,
        ];
        self.launch_elements(
            &ShaderVariant::plain(Family::Optim),
            "adamw",
            &params,
            Bindings::new(
                &[
                    Some(param.raw()),
                    Some(grad.raw()),
                    moments.map(|(m, _)| m.raw()),
                    moments.map(|(_, v)| v.raw()),
                    grad_scale.map(|c| c.raw()),
                ],
                &[p.raw(), m.raw(), v.raw()],
            ),
            len,
        )?;
        Ok((Self::wrap(p), Self::wrap(m), Self::wrap(v)))
    }
}

impl GpuBackend {
    /// AdamW over many parameters (multi.wgsl's adamw_multi): each launch updates as many parameters as the
    /// wide layout (see `shaders::adamw_tensors_per_launch`) and the parameter table allow, provided
    /// they share the step's shared hyper-parameters and whether they have moments; the learning rate and
    /// weight decay are per parameter. Bit-identical to [`Backend::adamw_update`](crate::backend::Backend)
    /// per item.
    pub(super) fn launch_adamw_many(
        &self,
        items: &[AdamWItem<'_>],
        grad_scale: Option<&Storage>,
    ) -> Result<Vec<(Storage, Storage, Storage)>> {
        let per_launch = adamw_tensors_per_launch(self.wide_slots) as usize;
        let scale = grad_scale.map(|c| self.buf(c)).transpose()?;
        let shared = |h: &AdamWStep| [h.beta1, h.beta2, h.eps, h.bias1, h.bias2].map(f32::to_bits);
        struct Bound<'b> {
            p: &'b GpuBuffer,
            g: &'b GpuBuffer,
            mv: Option<(&'b GpuBuffer, &'b GpuBuffer)>,
        }
        let bound = items
            .iter()
            .map(|it| {
                Ok(Bound {
                    p: self.buf(it.param)?,
                    g: self.buf(it.grad)?,
                    mv: match it.moments {
                        Some((m, v)) => Some((self.buf(m)?, self.buf(v)?)),
                        None => None,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        fn inputs<'b>(b: &Bound<'b>) -> Vec<&'b wgpu::Buffer> {
            let mut v = vec![b.p.raw(), b.g.raw()];
            if let Some((m, mv)) = b.mv {
                v.extend([m.raw(), mv.raw()]);
            }
            v
        }
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0usize;
        while start < items.len() {
            let first = &items[start];
            let mut seen: Vec<&wgpu::Buffer> = scale.iter().map(|c| c.raw()).collect();
            let mut end = start;
            while end < items.len() && end - start < per_launch {
                let it = &items[end];
                let mine = inputs(&bound[end]);
                let clash = mine
                    .iter()
                    .enumerate()
                    .any(|(k, b)| seen.contains(b) || mine[..k].contains(b));
                if shared(&it.h) != shared(&first.h)
                    || it.moments.is_some() != first.moments.is_some()
                    || clash
                {
                    break;
                }
                seen.extend(mine);
                end += 1;
            }
            if end == start {
                // An item whose own buffers coincide (or coincide with the scale): the one-tensor kernel.
                let it = first;
                out.push(self.launch_adamw_update(
                    it.param, it.grad, it.moments, grad_scale, it.len, &it.h,
                )?);
                start += 1;
                continue;
            }
            let mut table = [0u32; 4 * MULTI_TABLE_ROWS as usize];
            let mut groups = 0u64;
            let fresh = items[start..end]
                .iter()
                .map(|it| {
                    Ok((
                        self.alloc(it.len)?,
                        self.alloc(it.len)?,
                        self.alloc(it.len)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            // Slot 1 is the gradient scale; tensor t's seven buffers follow (see multi.wgsl).
            let mut slots: Vec<Option<&wgpu::Buffer>> = vec![scale.map(GpuBuffer::raw)];
            for (t, ((it, b), (p, m, v))) in items[start..end]
                .iter()
                .zip(&bound[start..end])
                .zip(&fresh)
                .enumerate()
            {
                table[4 * t] = u32_of("a parameter's length", it.len)?;
                table[4 * t + 1] = u32_of("workgroups", groups as usize)?;
                table[4 * t + 2] = it.h.lr.to_bits();
                table[4 * t + 3] = it.h.weight_decay.to_bits();
                groups += (it.len as u64).div_ceil(WG);
                slots.extend([
                    Some(b.p.raw()),
                    Some(b.g.raw()),
                    b.mv.map(|(m, _)| m.raw()),
                    b.mv.map(|(_, v)| v.raw()),
                    Some(p.raw()),
                    Some(m.raw()),
                    Some(v.raw()),
                ]);
            }
            let mut params = vec![
                (end - start) as u32,
                first.moments.is_some() as u32 | (u32::from(scale.is_some()) << 1),
                0,
                0,
                u32_of("workgroups", groups as usize)?,
            ];
            params.extend(shared(&first.h));
            params.resize(MULTI_HEADER_WORDS, 0);
            params.extend(table);
            self.launch_multi("adamw_multi", &params, &slots, groups)?;
            out.extend(
                fresh
                    .into_iter()
                    .map(|(p, m, v)| (Self::wrap(p), Self::wrap(m), Self::wrap(v))),
            );
            start = end;
        }
        Ok(out)
    }
}
