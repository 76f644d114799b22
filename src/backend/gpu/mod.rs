//! The wgpu backend: every kernel of the contract as a WGSL compute shader (sources in `shaders/`).
//!
//! - Residency: a tensor's data lives in a GPU buffer ([`GpuBuffer`]) from upload to drop; only
//!   [`Backend::download`] reads back (and counts it, see [`Backend::readback_count`]).
//! - Buffers come from a pool keyed by byte size: a dropped tensor's buffer is reused by the next output of
//!   that size. This is safe without waiting because every use goes through one ordered command stream
//!   (uploads create fresh buffers mapped at creation, never `queue.write_buffer` into pooled ones, whose
//!   write would jump ahead of already-encoded reads).
//! - Pipelines are built once per (module variant, entry point) and cached; all share one bind-group
//!   layout: binding 0 a uniform parameter block, 1–5 read-only storage, 6–8 read-write storage. Unused
//!   slots get dummy buffers, so an input is never also bound read-write.
//! - Command batching: dispatches are recorded into one encoder and submitted together when a readback
//!   needs them or after `MAX_PENDING` dispatches. Their parameter blocks go into one uniform buffer
//!   per batch (at aligned offsets), written by one queue write just before the submit.
//! - Dispatch grids: T workgroups are spread over x, y, z (each at most the adapter's per-dimension limit)
//!   and kernels linearise the workgroup index, so no launch fails for being long.
//! - Errors: wgpu validation and out-of-memory errors are caught (an uncaptured-error handler, and error
//!   scopes around allocations) and returned as [`Error::Device`].
//! - Kernel choices: matmul and dense/grouped convolutions share one tiled GEMM (64×64 tiles, 4×4 per
//!   thread, implicit im2col for convolutions) that splits K when there are few output tiles; a batched
//!   product with a shared right operand runs as one GEMM; reductions over an axis use a workgroup per
//!   output only for long axes with few outputs, otherwise a thread each. `LIERA_GPU_PROFILE=1` times
//!   every kernel (see [`GpuBackend::profile_report`]).

pub mod shaders;

use super::{
    AdamWStep, AxisLayout, Backend, BinaryOp, LayerNormGrads, LayerNormOutput, MatmulSpec, Storage,
    UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{BroadcastLayout, Conv2dGeometry};
use shaders::{op_code, Family, ShaderVariant};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Dispatches recorded before the encoder is submitted without being asked.
const MAX_PENDING: u32 = 128;
/// Pooled bytes kept for reuse; beyond this, dropped buffers are freed.
const POOL_MAX_BYTES: u64 = 1 << 30;
/// Read-only storage slots (bindings 1..=5) and read-write slots (6..=8) of the shared layout.
const RO_SLOTS: usize = 5;
const RW_SLOTS: usize = 3;
/// u32 words of every parameter block (at least the largest Params struct of the shaders, 28).
const PARAM_WORDS: usize = 32;
/// Threads per workgroup of the one-thread-per-element kernels.
const WG: u64 = 256;

/// Options for creating a GPU backend.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Caps the workgroups per dispatch dimension below the adapter's limit (tests use a small cap to
    /// exercise dispatch splitting on small tensors).
    pub max_workgroups_per_dim: Option<u32>,
    /// GEMMs with fewer output tiles than this split K across workgroups (default: 8 on a CPU adapter
    /// such as llvmpipe, 256 on a GPU).
    pub min_parallel_workgroups: Option<u32>,
}

/// A GPU buffer holding `len` f32 values; returns to its backend's pool when dropped.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl GpuBuffer {
    /// Number of f32 values.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn raw(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a GpuBuffer holds its buffer until dropped")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.put(b);
        }
    }
}

impl fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBuffer({} floats)", self.len)
    }
}

/// Free buffers by byte size.
#[derive(Default)]
struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    pooled_bytes: AtomicU64,
}

impl BufferPool {
    fn take(&self, bytes: u64) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().ok()?;
        let b = free.get_mut(&bytes)?.pop()?;
        self.pooled_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Some(b)
    }
    fn put(&self, b: wgpu::Buffer) {
        let bytes = b.size();
        if self.pooled_bytes.load(Ordering::Relaxed) + bytes > POOL_MAX_BYTES {
            return; // dropped: wgpu frees it once pending work is done
        }
        if let Ok(mut free) = self.free.lock() {
            free.entry(bytes).or_default().push(b);
            self.pooled_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Commands recorded but not yet submitted.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: u32,
    /// The parameter blocks of this batch, one per dispatch at `param_stride` bytes apart, written into
    /// `params_ring` just before the batch is submitted (a queue write lands before the submit's commands).
    params: Vec<u8>,
    params_ring: Option<wgpu::Buffer>,
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
    modules: Mutex<HashMap<ShaderVariant, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(ShaderVariant, &'static str), wgpu::ComputePipeline>>,
    pending: Mutex<Pending>,
    /// The first error wgpu reported outside an error scope, taken by the next check.
    error: Arc<Mutex<Option<String>>>,
    readbacks: AtomicU64,
    /// Bytes between parameter blocks in a batch's uniform buffer.
    param_stride: u64,
    /// Output tiles below which a GEMM splits K (see [`GpuOptions::min_parallel_workgroups`]).
    min_parallel_workgroups: usize,
    /// Per-kernel (launches, seconds) when `LIERA_GPU_PROFILE=1`: each launch then waits for the GPU,
    /// which serialises everything, so this is for finding slow kernels, not for throughput.
    profile: Option<Mutex<HashMap<String, (u64, f64)>>>,
    dummy_ro: wgpu::Buffer,
    dummy_rw: Vec<wgpu::Buffer>,
}

/// A kernel's buffers: read-only inputs (bindings 1..) and read-write outputs (bindings 6..); `None`
/// leaves a slot to a dummy.
struct Bindings<'a> {
    inputs: [Option<&'a wgpu::Buffer>; RO_SLOTS],
    outputs: [Option<&'a wgpu::Buffer>; RW_SLOTS],
}

impl<'a> Bindings<'a> {
    fn new(inputs: &[Option<&'a wgpu::Buffer>], outputs: &[&'a wgpu::Buffer]) -> Self {
        let mut b = Bindings {
            inputs: [None; RO_SLOTS],
            outputs: [None; RW_SLOTS],
        };
        b.inputs[..inputs.len()].copy_from_slice(inputs);
        for (slot, o) in b.outputs.iter_mut().zip(outputs) {
            *slot = Some(o);
        }
        b
    }
}

fn device_err(what: &str, e: impl fmt::Display) -> Error {
    Error::Device(format!("{what}: {e}"))
}

impl GpuBackend {
    /// Opens the highest-performance adapter (honouring `WGPU_BACKEND` etc.) with its own limits.
    pub fn new(options: GpuOptions) -> Result<GpuBackend> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: GpuOptions) -> Result<GpuBackend> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| device_err("no GPU adapter", e))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        if (limits.max_storage_buffers_per_shader_stage as usize) < RO_SLOTS + RW_SLOTS {
            return Err(Error::Device(format!(
                "adapter {} allows {} storage buffers per shader stage; liera's kernels need {}",
                info.name,
                limits.max_storage_buffers_per_shader_stage,
                RO_SLOTS + RW_SLOTS
            )));
        }
        if limits.max_compute_invocations_per_workgroup < 256
            || limits.max_compute_workgroup_size_x < 256
        {
            return Err(Error::Device(format!(
                "adapter {} allows only {} invocations per workgroup; liera's kernels use 256",
                info.name, limits.max_compute_invocations_per_workgroup
            )));
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("liera"),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| device_err("requesting the GPU device failed", e))?;
        let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut s) = slot.lock() {
                s.get_or_insert_with(|| e.to_string());
            }
        }));

        let storage_entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for i in 0..RO_SLOTS {
            entries.push(storage_entry(1 + i as u32, true));
        }
        for i in 0..RW_SLOTS {
            entries.push(storage_entry((1 + RO_SLOTS + i) as u32, false));
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("liera kernels"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("liera kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let storage_usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: storage_usage,
                mapped_at_creation: false,
            })
        };
        let dummy_ro = dummy("dummy input");
        let dummy_rw = (0..RW_SLOTS).map(|_| dummy("dummy output")).collect();
        // Parameter blocks share one uniform buffer per batch at offsets the adapter can bind.
        let param_stride = ((PARAM_WORDS * 4) as u64)
            .next_multiple_of(limits.min_uniform_buffer_offset_alignment.max(16) as u64);
        let min_parallel_workgroups = options.min_parallel_workgroups.unwrap_or(
            if info.device_type == wgpu::DeviceType::Cpu {
                8
            } else {
                256
            },
        ) as usize;
        let max_groups_per_dim = options
            .max_workgroups_per_dim
            .unwrap_or(u32::MAX)
            .min(limits.max_compute_workgroups_per_dimension)
            .max(1);
        Ok(GpuBackend {
            device,
            queue,
            adapter: info,
            limits,
            max_groups_per_dim,
            pool: Arc::new(BufferPool::default()),
            layout,
            pipeline_layout,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                encoder: None,
                dispatches: 0,
                params: Vec::new(),
                params_ring: None,
            }),
            param_stride,
            min_parallel_workgroups,
            profile: std::env::var("LIERA_GPU_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(|| Mutex::new(HashMap::new())),
            error,
            readbacks: AtomicU64::new(0),
            dummy_ro,
            dummy_rw,
        })
    }

    /// The limits the device was opened with (the adapter's own), e.g. the largest buffer it can bind.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Launches a softmax-family kernel over the (outer, inner) positions of `l`: `entry` with one workgroup
    /// per position for long axes, `thread_entry` with one thread per position for short ones.
    fn softmax_launch(
        &self,
        entry: &'static str,
        thread_entry: &'static str,
        bindings: Bindings,
        l: AxisLayout,
    ) -> Result<()> {
        let variant = ShaderVariant::plain(Family::Softmax);
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
        ];
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(&variant, entry, &params, bindings, positions as u64)
        } else {
            self.launch_elements(&variant, thread_entry, &params, bindings, positions)
        }
    }

    /// The adapter's description (name, backend, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// Returns (and clears) an error wgpu reported asynchronously.
    fn check_errors(&self) -> Result<()> {
        let taken = self.error.lock().ok().and_then(|mut e| e.take());
        match taken {
            Some(msg) => Err(Error::Device(format!(
                "wgpu error on {}: {msg}",
                self.adapter.name
            ))),
            None => Ok(()),
        }
    }

    /// The buffer behind a storage, or an error if it belongs to another device.
    fn buf<'a>(&self, s: &'a Storage) -> Result<&'a GpuBuffer> {
        match s {
            Storage::Gpu(b) if Arc::ptr_eq(&b.pool, &self.pool) => Ok(b),
            other => Err(Error::Device(format!(
                "the GPU backend ({}) was given a buffer of another device ({other:?})",
                self.adapter.name
            ))),
        }
    }

    /// Byte size of a buffer for `len` floats (at least one, rounded to 16 bytes for binding alignment).
    fn bytes_for(&self, len: usize) -> Result<u64> {
        let bytes = (len.max(1) as u64 * 4).div_ceil(16) * 16;
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(Error::Device(format!(
                "a tensor of {len} floats ({:.1} MiB) exceeds the largest buffer {} can bind ({:.1} MiB)",
                bytes as f64 / (1 << 20) as f64,
                self.adapter.name,
                max as f64 / (1 << 20) as f64
            )));
        }
        Ok(bytes)
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// Creates a buffer, turning validation and out-of-memory errors into values.
    fn create_buffer(&self, bytes: u64, mapped: bool) -> Result<wgpu::Buffer> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: Self::storage_usage(),
            mapped_at_creation: mapped,
        });
        let e1 = pollster::block_on(invalid.pop());
        let e2 = pollster::block_on(oom.pop());
        if let Some(e) = e1.or(e2) {
            return Err(device_err(
                &format!("allocating {bytes} bytes on {}", self.adapter.name),
                e,
            ));
        }
        Ok(buffer)
    }

    /// An uninitialised output buffer of `len` floats, from the pool when one of that size is free.
    fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        let bytes = self.bytes_for(len)?;
        let buffer = match self.pool.take(bytes) {
            Some(b) => b,
            None => self.create_buffer(bytes, false)?,
        };
        Ok(GpuBuffer {
            buffer: Some(buffer),
            len,
            pool: self.pool.clone(),
        })
    }

    fn wrap(b: GpuBuffer) -> Storage {
        Storage::Gpu(Arc::new(b))
    }

    /// The cached pipeline for an entry point of a module variant (built on first use).
    fn pipeline(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
    ) -> Result<wgpu::ComputePipeline> {
        let key = (variant.clone(), entry);
        if let Some(p) = self.pipelines.lock().map_err(poisoned)?.get(&key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.modules.lock().map_err(poisoned)?;
            modules
                .entry(variant.clone())
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(&variant.name()),
                            source: wgpu::ShaderSource::Wgsl(variant.source().into()),
                        })
                })
                .clone()
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&self.pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.modules.lock().map_err(poisoned)?.remove(variant);
            return Err(device_err(
                &format!("building kernel {entry} of {}", variant.name()),
                e,
            ));
        }
        self.pipelines
            .lock()
            .map_err(poisoned)?
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Splits `groups` workgroups into an (x, y, z) grid within the per-dimension limit, as even as the
    /// limit allows so that few workgroups past `groups` are launched (each kernel skips those by its linear
    /// workgroup index): z slabs first, then y rows of at most `lim` each.
    fn grid(&self, groups: u64) -> Result<[u32; 3]> {
        grid_within(groups, self.max_groups_per_dim as u64).ok_or_else(|| {
            Error::Device(format!(
                "a launch of {groups} workgroups exceeds {}³, the most {} can dispatch",
                self.max_groups_per_dim, self.adapter.name
            ))
        })
    }

    /// Records one dispatch of `entry` over `groups` workgroups.
    fn launch(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
        params: &[u32],
        bindings: Bindings<'_>,
        groups: u64,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        // wgpu rejects a buffer bound read-only and read-write in one dispatch (or twice read-write); every
        // output here is a fresh buffer, and this keeps it so.
        let outputs: Vec<&wgpu::Buffer> = bindings.outputs.iter().flatten().copied().collect();
        for (i, o) in outputs.iter().enumerate() {
            if bindings.inputs.iter().flatten().any(|b| b == o) || outputs[..i].contains(o) {
                return Err(Error::Device(format!(
                    "kernel {entry}: an output buffer is also bound as another operand"
                )));
            }
        }
        let grid = self.grid(groups)?;
        let pipeline = self.pipeline(variant, entry)?;
        if params.len() > PARAM_WORDS {
            return Err(Error::Device(format!(
                "kernel {entry}: {} parameter words exceed the {PARAM_WORDS}-word block",
                params.len()
            )));
        }
        let mut words = params.to_vec();
        words.resize(PARAM_WORDS, 0);
        let mut pending = self.pending.lock().map_err(poisoned)?;
        let ring = pending
            .params_ring
            .get_or_insert_with(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: self.param_stride * MAX_PENDING as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .clone();
        let offset = pending.dispatches as u64 * self.param_stride;
        pending.params.resize(offset as usize, 0);
        pending
            .params
            .extend_from_slice(bytemuck::cast_slice(&words));
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &ring,
                offset,
                size: std::num::NonZeroU64::new(PARAM_WORDS as u64 * 4),
            }),
        }];
        for (i, b) in bindings.inputs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: b.unwrap_or(&self.dummy_ro).as_entire_binding(),
            });
        }
        for (i, b) in bindings.outputs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: (1 + RO_SLOTS + i) as u32,
                resource: b.unwrap_or(&self.dummy_rw[i]).as_entire_binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &self.layout,
            entries: &entries,
        });
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("liera"),
                })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        pending.dispatches += 1;
        if let Some(profile) = &self.profile {
            self.submit(&mut pending);
            let t = std::time::Instant::now();
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| device_err("waiting for the GPU", e))?;
            let mut p = profile.lock().map_err(poisoned)?;
            let e = p.entry(format!("{entry} {}", variant.name())).or_default();
            e.0 += 1;
            e.1 += t.elapsed().as_secs_f64();
        } else if pending.dispatches >= MAX_PENDING {
            self.submit(&mut pending);
        }
        drop(pending);
        self.check_errors()
    }

    /// The kernel time table gathered with `LIERA_GPU_PROFILE=1` (slowest first), or `None`.
    pub fn profile_report(&self) -> Option<String> {
        let p = self.profile.as_ref()?.lock().ok()?;
        let mut rows: Vec<_> = p.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut out = String::new();
        for (name, (n, secs)) in rows {
            out.push_str(&format!("{secs:9.4} s {n:6}× {name}\n"));
        }
        Some(out)
    }

    fn submit(&self, pending: &mut Pending) {
        if let Some(ring) = pending.params_ring.take() {
            self.queue.write_buffer(&ring, 0, &pending.params);
        }
        pending.params.clear();
        if let Some(enc) = pending.encoder.take() {
            self.queue.submit([enc.finish()]);
            // Non-blocking: lets wgpu free the parameter blocks and bind groups of finished work, so a
            // long run without readbacks does not accumulate them.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        pending.dispatches = 0;
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) -> Result<()> {
        let mut pending = self.pending.lock().map_err(poisoned)?;
        self.submit(&mut pending);
        drop(pending);
        self.check_errors()
    }

    /// How many ranges of K a GEMM with `tiles` output tiles is split into: enough workgroups to fill the
    /// device, each keeping at least 256 of K, and the partial results at most 16 M floats.
    fn k_splits(&self, tiles: usize, k: usize, out_len: usize) -> usize {
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
    fn gemm(
        &self,
        variant: &ShaderVariant,
        mut params: Vec<u32>,
        split_slot: usize,
        inputs: &[Option<&wgpu::Buffer>],
        out_len: usize,
        [batch, m, n, k]: [usize; 4],
    ) -> Result<GpuBuffer> {
        let tiles = batch * m.div_ceil(64) * n.div_ceil(64);
        let splits = self.k_splits(tiles, k, out_len);
        params[split_slot] = splits as u32;
        let out = self.alloc(out_len)?;
        if splits == 1 {
            self.launch(
                variant,
                "gemm",
                &params,
                Bindings::new(inputs, &[out.raw()]),
                tiles as u64,
            )?;
            return Ok(out);
        }
        let partial = self.alloc(splits * out_len)?;
        self.launch(
            variant,
            "gemm",
            &params,
            Bindings::new(inputs, &[partial.raw()]),
            (tiles * splits) as u64,
        )?;
        self.sum_chunks(&partial, &out, splits, out_len)?;
        Ok(out)
    }

    /// out[i] = Σ_s partial[s·len + i] for s < chunks: a sum over the middle axis of (1, chunks, len).
    fn sum_chunks(
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

    /// Launches a one-thread-per-element kernel over `n` elements.
    fn launch_elements(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
        params: &[u32],
        bindings: Bindings<'_>,
        n: usize,
    ) -> Result<()> {
        self.launch(variant, entry, params, bindings, (n as u64).div_ceil(WG))
    }
}

/// True when a reduction over the middle axis should use a workgroup per position (long axes, few
/// positions); otherwise one thread per position with a serial loop is cheaper (no barriers, and for
/// NCHW the threads read consecutive words).
fn workgroup_per_position(l: AxisLayout) -> bool {
    l.len >= 256 && l.outer * l.inner < 4096
}

fn poisoned<T>(_: T) -> Error {
    Error::Device("a GPU backend lock was poisoned by a panic in another thread".into())
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::Device(format!(
            "{what} = {v} exceeds the 32-bit indexing of the GPU kernels"
        ))
    })
}

/// Packs up to 8 values as two vec4<u32>.
fn pack8(vals: &[usize]) -> Result<[u32; 8]> {
    let mut out = [0u32; 8];
    for (o, &v) in out.iter_mut().zip(vals) {
        *o = u32_of("a dimension or stride", v)?;
    }
    Ok(out)
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

/// Index of the split count in the conv2d parameter block (after the 16 geometry words).
const CONV_SPLIT_SLOT: usize = 16;

/// The 16 geometry words shared by conv2d.wgsl and depthwise.wgsl (`last`: groups, or has_bias for
/// depthwise) and 4 more for the gemm split count.
fn conv_params(g: &Conv2dGeometry, last: usize) -> Result<Vec<u32>> {
    let p = g.params;
    [
        g.batch,
        g.c_in,
        g.h_in,
        g.w_in,
        g.c_out,
        g.kh,
        g.kw,
        g.h_out,
        g.w_out,
        p.stride[0],
        p.stride[1],
        p.padding[0],
        p.padding[1],
        p.dilation[0],
        p.dilation[1],
        last,
        1,
        0,
        0,
        0,
    ]
    .iter()
    .map(|&v| u32_of("a convolution size", v))
    .collect()
}

impl fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBackend({})", self.name())
    }
}

/// The (x, y, z) grid of [`GpuBackend::grid`] with per-dimension limit `lim`; None beyond lim³. Launches
/// x·y·z ≥ groups workgroups, fewer than groups + y·z.
pub(crate) fn grid_within(groups: u64, lim: u64) -> Option<[u32; 3]> {
    let groups = groups.max(1);
    let z = groups.div_ceil(lim * lim);
    if z > lim {
        return None;
    }
    let per_slab = groups.div_ceil(z);
    let y = per_slab.div_ceil(lim);
    let x = per_slab.div_ceil(y);
    Some([x as u32, y as u32, z as u32])
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

    fn upload(&self, data: &[f32]) -> Result<Storage> {
        let bytes = self.bytes_for(data.len())?;
        let buffer = self.create_buffer(bytes, true)?;
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| device_err("writing an upload", e))?;
            let src: &[u8] = bytemuck::cast_slice(data);
            view.slice(..src.len()).copy_from_slice(src);
        }
        buffer.unmap();
        Ok(Self::wrap(GpuBuffer {
            buffer: Some(buffer),
            len: data.len(),
            pool: self.pool.clone(),
        }))
    }

    fn download(&self, storage: &Storage) -> Result<Vec<f32>> {
        let src = self.buf(storage)?;
        self.readbacks.fetch_add(1, Ordering::Relaxed);
        if src.len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (src.len as u64 * 4).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut pending = self.pending.lock().map_err(poisoned)?;
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("liera"),
                    })
            });
            encoder.copy_buffer_to_buffer(src.raw(), 0, &staging, 0, bytes);
            self.submit(&mut pending);
        }
        self.check_errors()?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_err("waiting for the GPU", e))?;
        rx.recv()
            .map_err(|e| device_err("readback was abandoned", e))?
            .map_err(|e| device_err("mapping the readback buffer", e))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| device_err("reading the readback buffer", e))?;
            bytemuck::cast_slice::<u8, f32>(&view)[..src.len].to_vec()
        };
        staging.unmap();
        self.check_errors()?;
        Ok(out)
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        let out = self.alloc(len)?;
        self.launch_elements(
            &ShaderVariant::elementwise(0),
            "fill",
            &[u32_of("length", len)?, 0, value.to_bits(), 0],
            Bindings::new(&[], &[out.raw()]),
            len,
        )?;
        Ok(Self::wrap(out))
    }

    fn unary(&self, op: UnaryOp, x: &Storage, len: usize) -> Result<Storage> {
        let x = self.buf(x)?;
        let out = self.alloc(len)?;
        let c = match op {
            UnaryOp::AddScalar(c) | UnaryOp::MulScalar(c) | UnaryOp::PowScalar(c) => c,
            _ => 0.0,
        };
        self.launch_elements(
            &ShaderVariant::elementwise(op_code::unary(op)),
            "unary",
            &[u32_of("length", len)?, 0, c.to_bits(), 0],
            Bindings::new(&[Some(x.raw())], &[out.raw()]),
            len,
        )?;
        Ok(Self::wrap(out))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        b: &Storage,
        layout: &BroadcastLayout,
    ) -> Result<Storage> {
        let (a, b) = (self.buf(a)?, self.buf(b)?);
        let n = layout.numel();
        if layout.dims.len() > 8 {
            return Err(Error::Unsupported {
                backend: self.name(),
                op: "binary ops over more than 8 strided dimensions",
            });
        }
        let out = self.alloc(n)?;
        let mut params = vec![
            u32_of("length", n)?,
            layout.dims.len() as u32,
            op.scalar().to_bits(),
            0,
        ];
        params.extend(pack8(&layout.dims)?);
        params.extend(pack8(&layout.a_strides)?);
        params.extend(pack8(&layout.b_strides)?);
        self.launch_elements(
            &ShaderVariant::elementwise(op_code::binary(op)),
            "binary",
            &params,
            Bindings::new(&[Some(a.raw()), Some(b.raw())], &[out.raw()]),
            n,
        )?;
        Ok(Self::wrap(out))
    }

    fn matmul(&self, a: &Storage, b: &Storage, spec: &MatmulSpec) -> Result<Storage> {
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

    fn sum_axis(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
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

    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
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

    fn conv2d(
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
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_forward",
                &conv_params(g, bias.is_some() as usize)?,
                Bindings::new(&inputs, &[out.raw()]),
                n_out,
            )?;
            return Ok(Self::wrap(out));
        }
        // Per group: M = C_out/g, N = batch·H_out·W_out, K = (C_in/g)·kh·kw.
        let out = self.gemm(
            &ShaderVariant::conv2d(0, bias.is_some(), is_pointwise(g)),
            conv_params(g, g.params.groups)?,
            CONV_SPLIT_SLOT,
            &[Some(w.raw()), Some(x.raw()), bias.map(|b| b.raw())],
            n_out,
            [
                g.params.groups,
                g.c_out_per_group(),
                g.batch * g.h_out * g.w_out,
                g.c_in_per_group() * g.kh * g.kw,
            ],
        )?;
        Ok(Self::wrap(out))
    }

    fn conv2d_input_grad(&self, dy: &Storage, w: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        let (dy, w) = (self.buf(dy)?, self.buf(w)?);
        let n_in = g.batch * g.c_in * g.h_in * g.w_in;
        if g.is_depthwise() {
            let out = self.alloc(n_in)?;
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_input_grad",
                &conv_params(g, 0)?,
                Bindings::new(&[Some(dy.raw()), Some(w.raw())], &[out.raw()]),
                n_in,
            )?;
            return Ok(Self::wrap(out));
        }
        if is_patchify(g) {
            // Per group: M = (C_in/g)·kh·kw, N = batch·H_out·W_out, K = C_out/g; every pixel stored once.
            let out = self.gemm(
                &ShaderVariant::conv2d(3, false, false),
                conv_params(g, g.params.groups)?,
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
            conv_params(g, g.params.groups)?,
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

    fn conv2d_weight_grad(&self, x: &Storage, dy: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        let (x, dy) = (self.buf(x)?, self.buf(dy)?);
        let taps = g.kh * g.kw;
        let n_w = g.c_out * g.c_in_per_group() * taps;
        if g.is_depthwise() {
            // Split the batch into chunks when the (c, p, q) alone give too few threads.
            let threads = self.min_parallel_workgroups * WG as usize;
            let chunks = threads.div_ceil(n_w).clamp(1, g.batch);
            let chunk = g.batch.div_ceil(chunks);
            let chunks = g.batch.div_ceil(chunk);
            let out = self.alloc(n_w)?;
            let partial = if chunks > 1 {
                Some(self.alloc(chunks * n_w)?)
            } else {
                None
            };
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_weight_grad",
                &conv_params(g, chunk)?,
                Bindings::new(
                    &[Some(x.raw()), Some(dy.raw())],
                    &[partial.as_ref().unwrap_or(&out).raw()],
                ),
                chunks * n_w,
            )?;
            if let Some(partial) = partial {
                self.sum_chunks(&partial, &out, chunks, n_w)?;
            }
            return Ok(Self::wrap(out));
        }
        // Per group: M = C_out/g, N = (C_in/g)·kh·kw, K = batch·H_out·W_out (long: split-K helps).
        let out = self.gemm(
            &ShaderVariant::conv2d(2, false, is_pointwise(g)),
            conv_params(g, g.params.groups)?,
            CONV_SPLIT_SLOT,
            &[Some(dy.raw()), Some(x.raw())],
            n_w,
            [
                g.params.groups,
                g.c_out_per_group(),
                g.c_in_per_group() * taps,
                g.batch * g.h_out * g.w_out,
            ],
        )?;
        Ok(Self::wrap(out))
    }

    fn layer_norm(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        l: AxisLayout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let x = self.buf(x)?;
        let weight = weight.map(|b| self.buf(b)).transpose()?;
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        let positions = l.outer * l.inner;
        let (y, mean, rstd) = (
            self.alloc(l.numel())?,
            self.alloc(positions)?,
            self.alloc(positions)?,
        );
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            eps.to_bits(),
            weight.is_some() as u32,
            bias.is_some() as u32,
            0,
            0,
        ];
        let variant = ShaderVariant::plain(Family::Norm);
        let bindings = Bindings::new(
            &[
                Some(x.raw()),
                weight.map(|b| b.raw()),
                bias.map(|b| b.raw()),
            ],
            &[y.raw(), mean.raw(), rstd.raw()],
        );
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(&variant, "ln_forward", &params, bindings, positions as u64)?;
        } else {
            self.launch_elements(&variant, "ln_forward_thread", &params, bindings, positions)?;
        }
        Ok(LayerNormOutput {
            y: Self::wrap(y),
            mean: Self::wrap(mean),
            rstd: Self::wrap(rstd),
        })
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
        let (dy, x, mean, rstd) = (
            self.buf(dy)?,
            self.buf(x)?,
            self.buf(mean)?,
            self.buf(rstd)?,
        );
        let weight = weight.map(|b| self.buf(b)).transpose()?;
        let (dx, dweight, dbias) = (
            self.alloc(l.numel())?,
            self.alloc(l.len)?,
            self.alloc(l.len)?,
        );
        let params = [
            u32_of("outer", l.outer)?,
            u32_of("len", l.len)?,
            u32_of("inner", l.inner)?,
            0,
            weight.is_some() as u32,
            0,
            0,
            0,
        ];
        let variant = ShaderVariant::plain(Family::Norm);
        let inputs = [
            Some(x.raw()),
            weight.map(|b| b.raw()),
            Some(dy.raw()),
            Some(mean.raw()),
            Some(rstd.raw()),
        ];
        let bindings = Bindings::new(&inputs, &[dx.raw()]);
        let positions = l.outer * l.inner;
        if workgroup_per_position(l) {
            self.launch(
                &variant,
                "ln_backward_dx",
                &params,
                bindings,
                positions as u64,
            )?;
        } else {
            self.launch_elements(
                &variant,
                "ln_backward_dx_thread",
                &params,
                bindings,
                positions,
            )?;
        }
        self.launch(
            &variant,
            "ln_backward_params",
            &params,
            Bindings::new(&inputs, &[dweight.raw(), dbias.raw()]),
            l.len as u64,
        )?;
        Ok(LayerNormGrads {
            dx: Self::wrap(dx),
            dweight: Self::wrap(dweight),
            dbias: Self::wrap(dbias),
        })
    }

    fn log_softmax(&self, x: &Storage, l: AxisLayout) -> Result<Storage> {
        let x = self.buf(x)?;
        let y = self.alloc(l.numel())?;
        let bindings = Bindings::new(&[Some(x.raw())], &[y.raw()]);
        self.softmax_launch("log_softmax", "log_softmax_thread", bindings, l)?;
        Ok(Self::wrap(y))
    }

    fn log_softmax_backward(&self, dy: &Storage, y: &Storage, l: AxisLayout) -> Result<Storage> {
        let (dy, y) = (self.buf(dy)?, self.buf(y)?);
        let dx = self.alloc(l.numel())?;
        let bindings = Bindings::new(&[Some(dy.raw()), Some(y.raw())], &[dx.raw()]);
        self.softmax_launch(
            "log_softmax_backward",
            "log_softmax_backward_thread",
            bindings,
            l,
        )?;
        Ok(Self::wrap(dx))
    }

    fn adamw_update(
        &self,
        param: &Storage,
        grad: &Storage,
        moments: Option<(&Storage, &Storage)>,
        len: usize,
        h: &AdamWStep,
    ) -> Result<(Storage, Storage, Storage)> {
        let (param, grad) = (self.buf(param)?, self.buf(grad)?);
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
                ],
                &[p.raw(), m.raw(), v.raw()],
            ),
            len,
        )?;
        Ok((Self::wrap(p), Self::wrap(m), Self::wrap(v)))
    }

    fn readback_count(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod grid_tests {
    use super::grid_within;

    #[test]
    fn grids_cover_the_launch_within_the_limit_without_doubling_it() {
        let lim = 65535u64;
        for groups in [
            1,
            7,
            lim - 1,
            lim,
            lim + 1,
            3 * lim + 5,
            lim * lim,
            lim * lim + 1,
            5 * lim * lim + 3,
        ] {
            let [x, y, z] = grid_within(groups, lim).unwrap();
            let (x, y, z) = (x as u64, y as u64, z as u64);
            assert!(x <= lim && y <= lim && z <= lim, "{groups}: {x}×{y}×{z}");
            let launched = x * y * z;
            assert!(launched >= groups, "{groups}: {x}×{y}×{z} too small");
            assert!(
                launched < groups + (y + 1) * z,
                "{groups}: {x}×{y}×{z} wastes {}",
                launched - groups
            );
        }
        assert_eq!(grid_within(lim + 1, lim).unwrap(), [32768, 2, 1]);
        assert!(grid_within(lim * lim * lim + 1, lim).is_none());
    }
}
