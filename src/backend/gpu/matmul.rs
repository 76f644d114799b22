//! Launchers of the shared tiled GEMM (gemm.wgsl): its split-K planning, and batched matmul on it
//! (matmul.wgsl). The convolutions in `conv.rs` run on the same GEMM.

use super::dispatch::{u32_of, Bindings};
use super::runtime::GpuBuffer;
use super::shaders::{ShaderVariant, GEMM_TILES};
use super::GpuBackend;
use crate::backend::{BinaryOp, MatmulSpec, Storage};
use crate::error::Result;

impl GpuBackend {
    /// The tile side of one GEMM with `batch` × M × N outputs, and its number of output tiles: the
    /// backend's side (see [`GpuOptions::gemm_tile`](super::GpuOptions::gemm_tile)) where the product has
    /// at least `min_parallel_workgroups` such tiles, else 64, so that a small product still spreads over
    /// the device's cores (128×128 tiles of a 40-channel convolution at 32×32 would leave most of them
    /// idle).
    pub(super) fn gemm_tile_for(&self, batch: usize, m: usize, n: usize) -> (u32, usize) {
        let tiles = |side: u32| batch * m.div_ceil(side as usize) * n.div_ceil(side as usize);
        let wide = tiles(self.gemm_tile);
        if wide >= self.min_parallel_workgroups {
            (self.gemm_tile, wide)
        } else {
            (GEMM_TILES[0], tiles(GEMM_TILES[0]))
        }
    }

    /// How many ranges of K a GEMM with `tiles` output tiles is split into: enough workgroups to fill the
    /// device, each keeping at least 256 of K, and the partial results at most 16 M floats.
    pub(super) fn k_splits(&self, tiles: usize, k: usize, out_len: usize) -> usize {
        if tiles >= self.min_parallel_workgroups {
            return 1;
        }
        self.min_parallel_workgroups
            .div_ceil(tiles.max(1))
            .min(k / 256)
            .min((16 << 20) / out_len.max(1))
            .clamp(1, 64)
    }

    /// Runs the gemm kernel of `variant` (batch × M × N outputs, reduction length K) into a new buffer of
    /// `out_len` floats, splitting K when there are few output tiles; `params[split_slot]` receives the
    /// split count. Split partial results are summed by the reduce kernel.
    pub(super) fn gemm(
        &self,
        variant: &ShaderVariant,
        params: Vec<u32>,
        split_slot: usize,
        inputs: &[Option<&wgpu::Buffer>],
        out_len: usize,
        shape: [usize; 4],
    ) -> Result<GpuBuffer> {
        let mut outs = self.gemm_outputs(variant, params, split_slot, inputs, &[out_len], shape)?;
        Ok(outs.remove(0))
    }

    /// [`GpuBackend::gemm`] for a kernel with one or two results, of `lens` floats (bound at outputs 6 and
    /// 7); when K is split, each split's partial result is the first then the second, and
    /// [`GpuBackend::sum_chunks`] sums them into both.
    pub(super) fn gemm_outputs(
        &self,
        variant: &ShaderVariant,
        mut params: Vec<u32>,
        split_slot: usize,
        inputs: &[Option<&wgpu::Buffer>],
        lens: &[usize],
        [batch, m, n, k]: [usize; 4],
    ) -> Result<Vec<GpuBuffer>> {
        let total: usize = lens.iter().sum();
        let (tile, tiles) = self.gemm_tile_for(batch, m, n);
        let variant = &variant.clone().with_tile(tile);
        let splits = self.k_splits(tiles, k, total);
        params[split_slot] = splits as u32;
        let outs = lens
            .iter()
            .map(|&len| self.alloc(len))
            .collect::<Result<Vec<_>>>()?;
        if splits == 1 {
            let raw: Vec<&wgpu::Buffer> = outs.iter().map(GpuBuffer::raw).collect();
            self.launch(
                variant,
                "gemm",
                &params,
                Bindings::new(inputs, &raw),
                tiles as u64,
            )?;
        } else {
            let partial = self.alloc(splits * total)?;
            self.launch(
                variant,
                "gemm",
                &params,
                Bindings::new(inputs, &[partial.raw()]),
                (tiles * splits) as u64,
            )?;
            self.sum_chunks(&partial, &outs.iter().collect::<Vec<_>>(), splits)?;
        }
        Ok(outs)
    }

    pub(super) fn launch_matmul(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
    ) -> Result<Storage> {
        let (a, b) = (self.buf(a)?, self.buf(b)?);
        let mut spec = *spec;
        // A shared right operand with contiguous, untransposed left matrices is one product of
        // (batch·m) × k rows: e.g. a linear layer on (N, H, W, C) would otherwise run N·H GEMMs of W rows,
        // mostly empty 64-row tiles.
        if spec.batch > 1
            && spec.b_batch_stride == 0
            && !spec.trans_a
            && spec.a_batch_stride == spec.m * spec.k
        {
            spec.m *= spec.batch;
            spec.batch = 1;
        }
        let spec = &spec;
        let MatmulSpec { batch, m, k, n, .. } = *spec;
        let params = [
            batch,
            m,
            n,
            k,
            spec.a_batch_stride,
            spec.b_batch_stride,
            0,
            0,
        ]
        .iter()
        .map(|&v| u32_of("a matmul size", v))
        .collect::<Result<Vec<u32>>>()?;
        let out = self.gemm(
            &ShaderVariant::matmul(spec.trans_a, spec.trans_b),
            params,
            6,
            &[Some(a.raw()), Some(b.raw())],
            batch * m * n,
            [batch, m, n, k],
        )?;
        Ok(Self::wrap(out))
    }

    /// op(W, A·B) for the adapters' reparameterisations in one launch (matmul.wgsl's REPARAM epilogue):
    /// None when the product does not fit the fused form (batched, or K split), for the caller's composed
    /// fallback.
    pub(super) fn launch_matmul_reparam(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        w: &Storage,
        op: BinaryOp,
    ) -> Result<Option<Storage>> {
        let reparam = match op {
            BinaryOp::AddScaled(_) => 1,
            BinaryOp::MulExpScaled(_) => 2,
            BinaryOp::MulAffineScaled(_) => 3,
            _ => return Ok(None),
        };
        let len = spec.m * spec.n;
        let (tile, tiles) = self.gemm_tile_for(1, spec.m, spec.n);
        if spec.batch != 1 || self.k_splits(tiles, spec.k, len) > 1 {
            return Ok(None);
        }
        let (a, b, w) = (self.buf(a)?, self.buf(b)?, self.buf(w)?);
        let out = self.alloc(len)?;
        self.launch(
            &ShaderVariant::matmul_fused(spec.trans_a, spec.trans_b, reparam, 0, false)
                .with_tile(tile),
            "gemm",
            &matmul_params(spec, op.scalar())?,
            Bindings::new(&[Some(a.raw()), Some(b.raw()), Some(w.raw())], &[out.raw()]),
            tiles as u64,
        )?;
        Ok(Some(Self::wrap(out)))
    }

    /// op(A)·op(B) with the left (`left`) or right operand X read as c·X·Z (`z`) or X·c (matmul.wgsl's
    /// SCALED_OPERAND), K split as usual; None when batched (the caller composes instead).
    pub(super) fn launch_matmul_scaled_operand(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        left: bool,
        c: f32,
        z: Option<&Storage>,
    ) -> Result<Option<Storage>> {
        if spec.batch != 1 {
            return Ok(None);
        }
        let (a, b) = (self.buf(a)?, self.buf(b)?);
        let z = z.map(|z| self.buf(z)).transpose()?;
        let out = self.gemm(
            &ShaderVariant::matmul_fused(
                spec.trans_a,
                spec.trans_b,
                0,
                if left { 1 } else { 2 },
                z.is_some(),
            ),
            matmul_params(spec, c)?,
            6,
            &[Some(a.raw()), Some(b.raw()), z.map(GpuBuffer::raw)],
            spec.m * spec.n,
            [1, spec.m, spec.n, spec.k],
        )?;
        Ok(Some(Self::wrap(out)))
    }
}

/// matmul.wgsl's parameter block (the split count, word 6, is set by the gemm launcher).
fn matmul_params(spec: &MatmulSpec, scalar: f32) -> Result<Vec<u32>> {
    let mut p = [
        spec.batch,
        spec.m,
        spec.n,
        spec.k,
        spec.a_batch_stride,
        spec.b_batch_stride,
        1,
    ]
    .iter()
    .map(|&v| u32_of("a matmul size", v))
    .collect::<Result<Vec<u32>>>()?;
    p.push(scalar.to_bits());
    Ok(p)
}
