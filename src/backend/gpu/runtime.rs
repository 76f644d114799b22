//! The GPU runtime: adapter and device setup, the buffer pool, command batching, the pipeline cache,
//! the bind-group and dispatch helpers every launcher goes through, and parameter packing.

use super::shaders::ShaderVariant;
use super::GpuBackend;
use crate::backend::{AxisLayout, Storage};
use crate::error::{Error, Result};
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
pub(super) const WG: u64 = 256;

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
    pub(super) fn raw(&self) -> &wgpu::Buffer {
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
pub(super) struct BufferPool {
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
pub(super) struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: u32,
    /// The parameter blocks of this batch, one per dispatch at `param_stride` bytes apart, written into
    /// `params_ring` just before the batch is submitted (a queue write lands before the submit's commands).
    params: Vec<u8>,
    params_ring: Option<wgpu::Buffer>,
}

/// A kernel's buffers: read-only inputs (bindings 1..) and read-write outputs (bindings 6..); `None`
/// leaves a slot to a dummy.
pub(super) struct Bindings<'a> {
    inputs: [Option<&'a wgpu::Buffer>; RO_SLOTS],
    outputs: [Option<&'a wgpu::Buffer>; RW_SLOTS],
}

impl<'a> Bindings<'a> {
    pub(super) fn new(inputs: &[Option<&'a wgpu::Buffer>], outputs: &[&'a wgpu::Buffer]) -> Self {
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
    pub(super) fn buf<'a>(&self, s: &'a Storage) -> Result<&'a GpuBuffer> {
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
    pub(super) fn alloc(&self, len: usize) -> Result<GpuBuffer> {
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

    pub(super) fn wrap(b: GpuBuffer) -> Storage {
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
    pub(super) fn launch(
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

    /// Launches a one-thread-per-element kernel over `n` elements.
    pub(super) fn launch_elements(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
        params: &[u32],
        bindings: Bindings<'_>,
        n: usize,
    ) -> Result<()> {
        self.launch(variant, entry, params, bindings, (n as u64).div_ceil(WG))
    }

    /// Copies `data` into a fresh buffer mapped at creation (for `Backend::upload`).
    pub(super) fn upload_buffer(&self, data: &[f32]) -> Result<Storage> {
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

    /// Submits everything recorded so far and reads the buffer back (for `Backend::download`).
    pub(super) fn download_buffer(&self, storage: &Storage) -> Result<Vec<f32>> {
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
}

/// True when a reduction over the middle axis should use a workgroup per position (long axes, few
/// positions); otherwise one thread per position with a serial loop is cheaper (no barriers, and for
/// NCHW the threads read consecutive words).
pub(super) fn workgroup_per_position(l: AxisLayout) -> bool {
    l.len >= 256 && l.outer * l.inner < 4096
}

fn poisoned<T>(_: T) -> Error {
    Error::Device("a GPU backend lock was poisoned by a panic in another thread".into())
}

pub(super) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::Device(format!(
            "{what} = {v} exceeds the 32-bit indexing of the GPU kernels"
        ))
    })
}

/// Packs up to 8 values as two vec4<u32>.
pub(super) fn pack8(vals: &[usize]) -> Result<[u32; 8]> {
    let mut out = [0u32; 8];
    for (o, &v) in out.iter_mut().zip(vals) {
        *o = u32_of("a dimension or stride", v)?;
    }
    Ok(out)
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
