//! The wgpu backend: every kernel of the contract as a WGSL compute shader (sources in `shaders/`).
//!
//! - Residency: a tensor's data lives in a GPU buffer ([`GpuBuffer`]) from upload to drop; only
//!   [`Backend::download`] reads back (and counts it, see [`Backend::readback_count`]).
//! - Buffers come from a pool keyed by byte size: a dropped tensor's buffer is reused by the next output of
//!   that size. This is safe without waiting because every use goes through one ordered command stream
//!   (uploads create fresh buffers mapped at creation, never `queue.write_buffer` into pooled ones, whose
//!   write would jump ahead of already-encoded reads).
//! - Pipelines are built once per (module variant, entry point) and cached; all but the multi-tensor
//!   kernels share one bind-group layout: binding 0 a uniform parameter block, 1–5 read-only storage, 6–8
//!   read-write storage. Unused slots get dummy buffers, so an input is never also bound read-write.
//! - Multi-tensor kernels (multi.wgsl: AdamW and the gradient norm's sum of squares over all parameters)
//!   use a wide layout of up to [`MAX_WIDE_SLOTS`] read-write storage bindings, as many as the adapter
//!   allows, so one launch covers several tensors: ConvNeXt-atto's 128 parameters take 32 AdamW launches
//!   and 6 sum-of-squares launches on a 32-binding adapter, instead of 128 and 32.
//! - Command batching: dispatches are recorded into one encoder and submitted together when a readback
//!   needs them or after `MAX_PENDING` dispatches. Their parameter blocks go into one uniform buffer
//!   per batch (at aligned offsets), written by one queue write just before the submit.
//! - Dispatch grids: T workgroups are spread over x, y, z (each at most the adapter's per-dimension limit)
//!   and kernels linearise the workgroup index, so no launch fails for being long.
//! - Errors: wgpu validation and out-of-memory errors are caught (an uncaptured-error handler, and error
//!   scopes around allocations) and returned as [`Error::Device`](crate::error::Error::Device).
//! - Kernel choices: matmul and dense/grouped convolutions share one tiled GEMM (64×64 tiles, or 128×128
//!   on large products where the adapter's limits allow; 8×8 per thread; implicit im2col for
//!   convolutions) that splits K when there are few output tiles; a batched
//!   product with a shared right operand runs as one GEMM; reductions over an axis use a workgroup per
//!   output only for long axes with few outputs, otherwise a thread each. `LIERA_GPU_PROFILE=1` times
//!   every kernel (see [`GpuBackend::profile_report`]).
//!
//! Layout: `runtime.rs` holds the device and buffers, `dispatch.rs` the batching and dispatch helpers;
//! each kernel family's launchers live in a file named like its shader and its CPU counterpart
//! (`elementwise.rs`,
//! `reduce.rs`, `matmul.rs`, `conv.rs`, `norm.rs`, `grn.rs`, `softmax.rs`, `optim.rs`, with `multi.wgsl`'s
//! launchers in `optim.rs` and `reduce.rs`), and the [`Backend`] impl
//! below forwards to them.

mod conv;
mod dispatch;
mod elementwise;
mod grn;
mod lowrank;
mod matmul;
mod norm;
mod optim;
mod reduce;
mod runtime;
pub mod shaders;
mod softmax;

pub use runtime::{gemm_tile_fits, GpuBuffer, GpuOptions, MAX_WIDE_SLOTS};

use super::{
    AdamWItem, AdamWStep, AxisLayout, Backend, BinaryOp, GrnGrads, GrnLayout, GrnOutput,
    LaunchCounters, LayerNormGrads, LayerNormOutput, LowRankGrads, MatmulSpec, Storage, UnaryOp,
};
use crate::error::Result;
use crate::shape::{BroadcastLayout, Conv2dGeometry};
use dispatch::Pending;
use runtime::BufferPool;
use shaders::{ShaderVariant, GEMM_TILES};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What [`GpuBackend::count`] counts (indices into `launches`).
#[derive(Clone, Copy)]
enum Launch {
    Dispatch,
    BindGroup,
    Submit,
    Buffer,
}

impl GpuBackend {
    fn count(&self, what: Launch) {
        self.launches[what as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The wgpu backend.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    max_groups_per_dim: u32,
    pool: Arc<BufferPool>,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    /// Storage bindings of the multi-tensor kernels' layout (see [`GpuOptions::max_wide_slots`]).
    wide_slots: u32,
    wide_layout: wgpu::BindGroupLayout,
    wide_pipeline_layout: wgpu::PipelineLayout,
    /// One dummy per wide slot, for the slots a launch leaves unused.
    dummy_wide: Vec<wgpu::Buffer>,
    modules: Mutex<HashMap<ShaderVariant, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(ShaderVariant, &'static str), wgpu::ComputePipeline>>,
    pending: Mutex<Pending>,
    /// The first error wgpu reported outside an error scope, taken by the next check.
    error: Arc<Mutex<Option<String>>>,
    readbacks: AtomicU64,
    /// Dispatches, bind groups, submits and buffers created (see [`LaunchCounters`]).
    launches: [AtomicU64; 4],
    /// The readback buffer, kept for the next readback (most are the loss: 4 bytes).
    staging: Mutex<Option<wgpu::Buffer>>,
    /// The shared read-only zero of [`Backend::zero_scalar`].
    zero: Mutex<Option<Storage>>,
    /// Bytes between parameter blocks in a batch's uniform buffer.
    param_stride: u64,
    /// Output tiles below which a GEMM splits K (see [`GpuOptions::min_parallel_workgroups`]).
    min_parallel_workgroups: usize,
    /// The GEMM modules are built in their subgroup form (cleared if that form fails to build).
    gemm_subgroups: std::sync::atomic::AtomicBool,
    /// Stride-1 depthwise convolutions take the tiled kernels (see [`GpuOptions::depthwise_tiles`]).
    depthwise_tiles: bool,
    /// The GEMM loads interior tiles by quads (see [`GpuOptions::gemm_quads`]).
    gemm_quads: bool,
    /// The GEMM's tile side (see [`GpuOptions::gemm_tile`]).
    gemm_tile: u32,
    /// What the adapter offers (see [`GpuBackend::adapter_features`]).
    adapter_features: wgpu::Features,
    /// The adapters' low-rank work waiting to be launched together (see `lowrank.rs`).
    deferred: Mutex<Option<lowrank::Deferred>>,
    /// Per-kernel (launches, seconds) when `LIERA_GPU_PROFILE=1`: each launch then waits for the GPU,
    /// which serialises everything, so this is for finding slow kernels, not for throughput.
    profile: Option<Mutex<HashMap<String, (u64, f64)>>>,
    dummy_ro: wgpu::Buffer,
    dummy_rw: Vec<wgpu::Buffer>,
}

impl fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBackend({})", self.name())
    }
}

impl Backend for GpuBackend {
    fn is_software_gpu(&self) -> bool {
        self.adapter.device_type == wgpu::DeviceType::Cpu
    }
    fn is_asynchronous(&self) -> bool {
        true
    }
    fn name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }
    fn gemm_form(&self) -> String {
        let a = if self.gemm_uses_subgroups() {
            "A shared by subgroup broadcasts (gemm_subgroup.wgsl)"
        } else {
            "A from workgroup memory (gemm_workgroup.wgsl)"
        };
        let loads = if self.gemm_quads {
            "quad loads"
        } else {
            "value loads"
        };
        let tiles = if self.gemm_tile == GEMM_TILES[0] {
            format!("{0}×{0} tiles", self.gemm_tile)
        } else {
            format!(
                "{0}×{0} tiles on products of at least {1} such tiles, else {2}×{2}",
                self.gemm_tile, self.min_parallel_workgroups, GEMM_TILES[0]
            )
        };
        format!("{tiles}, 8×8 per thread, {a}, {loads}")
    }

    fn upload(&self, data: &[f32]) -> Result<Storage> {
        self.upload_buffer(data)
    }
    fn download(&self, storage: &Storage) -> Result<Vec<f32>> {
        self.download_buffer(storage)
    }
    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        self.launch_fill(len, value)
    }
    fn zero_scalar(&self) -> Result<Storage> {
        let mut kept = self
            .zero
            .lock()
            .map_err(|_| crate::error::Error::Device("the zero-scalar lock was poisoned".into()))?;
        if let Some(z) = kept.as_ref() {
            return Ok(z.clone());
        }
        let z = self.launch_fill(1, 0.0)?;
        *kept = Some(z.clone());
        Ok(z)
    }
    fn unary(&self, op: UnaryOp, x: &Storage, len: usize) -> Result<Storage> {
        self.launch_unary(op, x, len)
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        b: &Storage,
        layout: &BroadcastLayout,
    ) -> Result<Storage> {
        self.launch_binary(op, a, b, layout)
    }
    fn matmul(&self, a: &Storage, b: &Storage, spec: &MatmulSpec) -> Result<Storage> {
        self.launch_matmul(a, b, spec)
    }
    fn matmul_reparam(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        w: &Storage,
        op: BinaryOp,
    ) -> Result<Storage> {
        match self.launch_matmul_reparam(a, b, spec, w, op)? {
            Some(y) => Ok(y),
            None => super::matmul_reparam_composed(self, a, b, spec, w, op),
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn matmul_scaled_operand(
        &self,
        a: &Storage,
        b: &Storage,
        spec: &MatmulSpec,
        left: bool,
        c: f32,
        z: Option<&Storage>,
        x_len: usize,
    ) -> Result<Storage> {
        match self.launch_matmul_scaled_operand(a, b, spec, left, c, z)? {
            Some(y) => Ok(y),
            None => super::matmul_scaled_operand_composed(self, a, b, spec, (left, c, z, x_len)),
        }
    }
    fn low_rank_reparam(
        &self,
        w: &Storage,
        b: &Storage,
        a: &Storage,
        dims: (usize, usize, usize),
        op: BinaryOp,
    ) -> Result<Storage> {
        match self.defer_lowrank_reparam(w, b, a, dims, op)? {
            Some(y) => Ok(y),
            None => super::low_rank_reparam_composed(self, w, b, a, dims, op),
        }
    }
    fn low_rank_factor_grads(
        &self,
        x: &LowRankGrads<'_>,
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        match self.defer_lowrank_grads(x)? {
            Some(grads) => Ok(grads),
            None => super::low_rank_factor_grads_composed(self, x),
        }
    }
    fn sum_axis(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        self.launch_sum_axis(x, l)
    }
    fn sum_keep_middle(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        self.launch_sum_keep_middle(x, None, l)
    }
    fn sum_product_keep_middle(&self, a: &Storage, b: &Storage, l: AxisLayout) -> Result<Storage> {
        self.launch_sum_keep_middle(a, Some(b), l)
    }
    fn channel_scale_add(
        &self,
        x: &Storage,
        h: &Storage,
        scale: &Storage,
        l: AxisLayout,
    ) -> Result<Storage> {
        self.launch_channel_scale_add(x, h, scale, l)
    }
    fn sum_squares(&self, inputs: &[(&Storage, usize)]) -> Result<Storage> {
        self.launch_sum_squares(inputs)
    }
    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        self.launch_permute(x, dims, perm)
    }
    fn conv2d(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        self.launch_conv2d(x, w, bias, g)
    }
    fn conv2d_input_grad(&self, dy: &Storage, w: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        self.launch_conv2d_input_grad(dy, w, g)
    }
    fn conv2d_gelu(
        &self,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        g: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        self.launch_conv2d_gelu(x, w, bias, g)
    }
    fn conv2d_weight_grad(&self, x: &Storage, dy: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        Ok(self.launch_conv2d_weight_grad(x, dy, g, false)?.0)
    }
    fn conv2d_weight_bias_grad(
        &self,
        x: &Storage,
        dy: &Storage,
        g: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        match self.launch_conv2d_weight_grad(x, dy, g, true)? {
            (dw, Some(db)) => Ok((dw, db)),
            (_, None) => unreachable!("a bias gradient was asked for"),
        }
    }
    fn layer_norm(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        l: AxisLayout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        self.launch_layer_norm(x, weight, bias, l, eps)
    }
    fn layer_norm_backward(
        &self,
        dy: &Storage,
        x: &Storage,
        weight: Option<&Storage>,
        mean: &Storage,
        rstd: &Storage,
        l: AxisLayout,
    ) -> Result<LayerNormGrads> {
        self.launch_layer_norm_backward(dy, x, weight, mean, rstd, l)
    }
    fn grn(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        layout: GrnLayout,
        eps: f32,
    ) -> Result<GrnOutput> {
        self.launch_grn(x, gamma, beta, layout, eps)
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
        self.launch_grn_backward(dy, x, gamma, gnorm, denom, layout)
    }
    fn log_softmax(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        self.launch_log_softmax(x, l)
    }
    fn log_softmax_backward(&self, dy: &Storage, y: &Storage, l: AxisLayout) -> Result<Storage> {
        self.launch_log_softmax_backward(dy, y, l)
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
        self.launch_adamw_update(param, grad, moments, grad_scale, len, h)
    }
    fn adamw_update_many(
        &self,
        items: &[AdamWItem<'_>],
        grad_scale: Option<&Storage>,
    ) -> Result<Vec<(Storage, Storage, Storage)>> {
        self.launch_adamw_many(items, grad_scale)
    }

    fn readback_count(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }
    fn counters(&self) -> LaunchCounters {
        let n = |c: Launch| self.launches[c as usize].load(Ordering::Relaxed);
        LaunchCounters {
            dispatches: n(Launch::Dispatch),
            bind_groups: n(Launch::BindGroup),
            submits: n(Launch::Submit),
            buffers_created: n(Launch::Buffer),
            readbacks: self.readback_count(),
        }
    }
}
