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
//!   needs them or after `MAX_PENDING` dispatches.
//! - Dispatch grids: T workgroups are spread over x, y, z (each at most the adapter's per-dimension limit)
//!   and kernels linearise the workgroup index, so no launch fails for being long.
//! - Errors: wgpu validation and out-of-memory errors are caught (an uncaptured-error handler, and error
//!   scopes around allocations) and returned as [`Error::Device`].

pub mod shaders;

use super::{
    AxisLayout, Backend, BinaryOp, LayerNormGrads, LayerNormOutput, MatmulSpec, Storage, UnaryOp,
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
/// u32 words of every parameter block (the largest Params struct of the shaders has 28).
const PARAM_WORDS: usize = 32;
/// Threads per workgroup of the one-thread-per-element kernels.
const WG: u64 = 256;

/// Options for creating a GPU backend.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Caps the workgroups per dispatch dimension below the adapter's limit (tests use a small cap to
    /// exercise dispatch splitting on small tensors).
    pub max_workgroups_per_dim: Option<u32>,
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
            }),
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

    /// Splits `groups` workgroups into an (x, y, z) grid within the per-dimension limit.
    fn grid(&self, groups: u64) -> Result<[u32; 3]> {
        let lim = self.max_groups_per_dim as u64;
        let x = groups.min(lim);
        let y = groups.div_ceil(x).min(lim);
        let z = groups.div_ceil(x * y);
        if z > lim {
            return Err(Error::Device(format!(
                "a launch of {groups} workgroups exceeds {lim}³, the most {} can dispatch",
                self.adapter.name
            )));
        }
        Ok([x as u32, y as u32, z as u32])
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
        let grid = self.grid(groups)?;
        let pipeline = self.pipeline(variant, entry)?;
        // The parameter block, padded to PARAM_WORDS (at least every kernel's Params struct); a fresh
        // buffer initialised at creation, so it is ordered with the commands that read it.
        debug_assert!(params.len() <= PARAM_WORDS);
        let mut words = params.to_vec();
        words.resize(PARAM_WORDS.max(params.len()), 0);
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: words.len() as u64 * 4,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: true,
        });
        uniform
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| device_err("writing kernel parameters", e))?
            .copy_from_slice(bytemuck::cast_slice(&words));
        uniform.unmap();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
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
        let mut pending = self.pending.lock().map_err(poisoned)?;
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
        if pending.dispatches >= MAX_PENDING {
            self.submit(&mut pending);
        }
        drop(pending);
        self.check_errors()
    }

    fn submit(&self, pending: &mut Pending) {
        if let Some(enc) = pending.encoder.take() {
            self.queue.submit([enc.finish()]);
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

impl Backend for GpuBackend {
    fn is_software_gpu(&self) -> bool {
        self.adapter.device_type == wgpu::DeviceType::Cpu
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
        let mut params = vec![u32_of("length", n)?, layout.dims.len() as u32, 0, 0];
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
        let MatmulSpec { batch, m, k, n, .. } = *spec;
        let out = self.alloc(batch * m * n)?;
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
        let tiles = (batch * m.div_ceil(64) * n.div_ceil(64)) as u64;
        self.launch(
            &ShaderVariant::matmul(spec.trans_a, spec.trans_b),
            "gemm",
            &params,
            Bindings::new(&[Some(a.raw()), Some(b.raw())], &[out.raw()]),
            tiles,
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
        // Long axes get a workgroup each (parallel over l); short ones a thread each.
        if l.len >= 64 {
            self.launch(&variant, "sum_axis_wg", &params, bindings, outputs as u64)?;
        } else {
            self.launch_elements(&variant, "sum_axis_thread", &params, bindings, outputs)?;
        }
        Ok(Self::wrap(out))
    }

    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        let x = self.buf(x)?;
        let rank = dims.len();
        if rank > 8 {
            return Err(Error::Unsupported {
                backend: self.name(),
                op: "permute of more than 8 axes",
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
        let out = self.alloc(n_out)?;
        let inputs = [Some(x.raw()), Some(w.raw()), bias.map(|b| b.raw())];
        if g.is_depthwise() {
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_forward",
                &conv_params(g, bias.is_some() as usize)?,
                Bindings::new(&inputs, &[out.raw()]),
                n_out,
            )?;
        } else {
            let params = conv_params(g, g.params.groups)?;
            // GEMM per group: M = C_out/g, N = batch·H_out·W_out.
            let tiles =
                g.params.groups * g.c_out_per_group().div_ceil(64) * (n_out / g.c_out).div_ceil(64);
            self.launch(
                &ShaderVariant::conv2d(0, bias.is_some()),
                "gemm",
                &params,
                Bindings::new(
                    &[Some(w.raw()), Some(x.raw()), bias.map(|b| b.raw())],
                    &[out.raw()],
                ),
                tiles as u64,
            )?;
        }
        Ok(Self::wrap(out))
    }

    fn conv2d_input_grad(&self, dy: &Storage, w: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        let (dy, w) = (self.buf(dy)?, self.buf(w)?);
        let n_in = g.batch * g.c_in * g.h_in * g.w_in;
        let out = self.alloc(n_in)?;
        if g.is_depthwise() {
            self.launch_elements(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_input_grad",
                &conv_params(g, 0)?,
                Bindings::new(&[Some(dy.raw()), Some(w.raw())], &[out.raw()]),
                n_in,
            )?;
        } else {
            let tiles = g.params.groups
                * g.c_in_per_group().div_ceil(64)
                * (g.batch * g.h_in * g.w_in).div_ceil(64);
            self.launch(
                &ShaderVariant::conv2d(1, false),
                "gemm",
                &conv_params(g, g.params.groups)?,
                Bindings::new(&[Some(w.raw()), Some(dy.raw())], &[out.raw()]),
                tiles as u64,
            )?;
        }
        Ok(Self::wrap(out))
    }

    fn conv2d_weight_grad(&self, x: &Storage, dy: &Storage, g: &Conv2dGeometry) -> Result<Storage> {
        let (x, dy) = (self.buf(x)?, self.buf(dy)?);
        let taps = g.kh * g.kw;
        let n_w = g.c_out * g.c_in_per_group() * taps;
        let out = self.alloc(n_w)?;
        if g.is_depthwise() {
            self.launch(
                &ShaderVariant::plain(Family::Depthwise),
                "dw_weight_grad",
                &conv_params(g, 0)?,
                Bindings::new(&[Some(x.raw()), Some(dy.raw())], &[out.raw()]),
                n_w as u64,
            )?;
        } else {
            let tiles = g.params.groups
                * g.c_out_per_group().div_ceil(64)
                * (g.c_in_per_group() * taps).div_ceil(64);
            self.launch(
                &ShaderVariant::conv2d(2, false),
                "gemm",
                &conv_params(g, g.params.groups)?,
                Bindings::new(&[Some(dy.raw()), Some(x.raw())], &[out.raw()]),
                tiles as u64,
            )?;
        }
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
        self.launch(
            &ShaderVariant::plain(Family::Norm),
            "ln_forward",
            &params,
            Bindings::new(
                &[
                    Some(x.raw()),
                    weight.map(|b| b.raw()),
                    bias.map(|b| b.raw()),
                ],
                &[y.raw(), mean.raw(), rstd.raw()],
            ),
            positions as u64,
        )?;
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
        self.launch(
            &variant,
            "ln_backward_dx",
            &params,
            Bindings::new(&inputs, &[dx.raw()]),
            (l.outer * l.inner) as u64,
        )?;
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
        self.launch(
            &ShaderVariant::plain(Family::Softmax),
            "log_softmax",
            &[
                u32_of("outer", l.outer)?,
                u32_of("len", l.len)?,
                u32_of("inner", l.inner)?,
                0,
            ],
            Bindings::new(&[Some(x.raw())], &[y.raw()]),
            (l.outer * l.inner) as u64,
        )?;
        Ok(Self::wrap(y))
    }

    fn log_softmax_backward(&self, dy: &Storage, y: &Storage, l: AxisLayout) -> Result<Storage> {
        let (dy, y) = (self.buf(dy)?, self.buf(y)?);
        let dx = self.alloc(l.numel())?;
        self.launch(
            &ShaderVariant::plain(Family::Softmax),
            "log_softmax_backward",
            &[
                u32_of("outer", l.outer)?,
                u32_of("len", l.len)?,
                u32_of("inner", l.inner)?,
                0,
            ],
            Bindings::new(&[Some(dy.raw()), Some(y.raw())], &[dx.raw()]),
            (l.outer * l.inner) as u64,
        )?;
        Ok(Self::wrap(dx))
    }

    fn readback_count(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }
}
