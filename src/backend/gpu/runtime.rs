//! The GPU runtime: adapter and device setup (limits, the shared bind-group layout, dummy buffers), the
//! buffer pool and [`GpuBuffer`], allocation, and upload and download. Recording and submitting kernels is
//! in `dispatch.rs`.

use super::dispatch::{Pending, PARAM_WORDS};
use super::shaders::{gemm_workgroup_bytes, GEMM_TILES};
use super::{GpuBackend, Launch};
use crate::backend::Storage;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Pooled bytes kept for reuse; beyond this, dropped buffers are freed.
const POOL_MAX_BYTES: u64 = 1 << 30;
/// Read-only storage slots (bindings 1..=5) and read-write slots (6..=8) of the shared layout.
pub(super) const RO_SLOTS: usize = 5;
pub(super) const RW_SLOTS: usize = 3;

/// Options for creating a GPU backend.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Caps the workgroups per dispatch dimension below the adapter's limit (tests use a small cap to
    /// exercise dispatch splitting on small tensors).
    pub max_workgroups_per_dim: Option<u32>,
    /// GEMMs with fewer output tiles than this split K across workgroups (default: 8 on a CPU adapter
    /// such as llvmpipe, 256 on a GPU).
    pub min_parallel_workgroups: Option<u32>,
    /// Caps the storage bindings of the multi-tensor kernels (default: the adapter's limit, at most
    /// [`MAX_WIDE_SLOTS`]; at least 8). Tests use a small cap to spread a few tensors over several launches.
    pub max_wide_slots: Option<u32>,
    /// Whether the GEMM kernels may use subgroup operations (gemm_subgroup.wgsl) where the adapter offers
    /// them with suitable sizes (default: yes, unless `LIERA_GPU_SUBGROUPS=0`). `Some(false)` keeps the
    /// workgroup-memory form everywhere (tests and benchmarks compare the two).
    pub subgroups: Option<bool>,
    /// Whether stride-1 depthwise convolutions take depthwise.wgsl's tiled kernels, which stage each
    /// workgroup's source tile and halo in workgroup memory, or its sliding-window kernels, which read
    /// global memory directly. Default: `LIERA_GPU_DW_TILES` (`1` or `0`) where set, else tiled on a
    /// hardware GPU and sliding-window on a CPU adapter such as llvmpipe, where the tiled kernels measured
    /// slower (`docs/BENCHMARKS.md` has the llvmpipe figures). Tests and benchmarks set it to compare the
    /// two.
    pub depthwise_tiles: Option<bool>,
    /// Whether the GEMM loads interior tiles by quads of 4 values (one vec4 load where the operand is
    /// contiguous and aligned: matmuls, 1×1 convolutions) or value by value (default: quads, unless
    /// `LIERA_GPU_QUADS=0`; tests and benchmarks compare the two).
    pub gemm_quads: Option<bool>,
    /// The GEMM's tile side, 64 or 128 (see [`GEMM_TILES`]). Default: `LIERA_GPU_GEMM_TILE` where set,
    /// else 128 on a hardware GPU whose limits allow its workgroups (256 threads,
    /// [`gemm_workgroup_bytes`]`(128)` bytes of workgroup memory) and 64 otherwise, on a CPU adapter such
    /// as llvmpipe included. A tile the adapter cannot run is an error. Tests and benchmarks set it to
    /// compare the two.
    pub gemm_tile: Option<u32>,
}

/// Whether an adapter with these limits can run the GEMM with tile side `tile`: (tile/8)² threads per
/// workgroup and [`gemm_workgroup_bytes`] of workgroup memory.
pub fn gemm_tile_fits(tile: u32, limits: &wgpu::Limits) -> bool {
    let threads = (tile / 8) * (tile / 8);
    threads <= limits.max_compute_invocations_per_workgroup
        && threads <= limits.max_compute_workgroup_size_x
        && gemm_workgroup_bytes(tile) <= limits.max_compute_workgroup_storage_size
}

/// The GEMM tile side for a new backend (see [`GpuOptions::gemm_tile`]).
fn backend_gemm_tile(
    options: &GpuOptions,
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
) -> Result<u32> {
    const VAR: &str = "LIERA_GPU_GEMM_TILE";
    let (asked, source) = match options.gemm_tile {
        Some(t) => (Some(t), "GpuOptions::gemm_tile"),
        None => match std::env::var(VAR) {
            Ok(v) => (
                Some(v.trim().parse().map_err(|_| {
                    Error::invalid(
                        VAR,
                        format!("`{v}` is not a tile side; use one of {GEMM_TILES:?}"),
                    )
                })?),
                VAR,
            ),
            Err(_) => (None, VAR),
        },
    };
    match asked {
        Some(t) if !GEMM_TILES.contains(&t) => Err(Error::invalid(
            source,
            format!("{t} is not a GEMM tile side; use one of {GEMM_TILES:?}"),
        )),
        Some(t) if !gemm_tile_fits(t, limits) => Err(Error::invalid(
            source,
            format!(
                "{} cannot run {t}×{t} GEMM tiles: they need {} threads and {} bytes of workgroup \
                 memory per workgroup, and it allows {} threads and {} bytes",
                info.name,
                (t / 8) * (t / 8),
                gemm_workgroup_bytes(t),
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size
            ),
        )),
        Some(t) => Ok(t),
        None if info.device_type != wgpu::DeviceType::Cpu && gemm_tile_fits(128, limits) => Ok(128),
        None => Ok(GEMM_TILES[0]),
    }
}

/// The most storage bindings the multi-tensor kernels (multi.wgsl) use, however many the adapter allows.
pub const MAX_WIDE_SLOTS: u32 = 64;

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
    /// The free buffers of each size, ordered by wgpu's buffer order (creation): `take` hands out the first,
    /// so a step that allocates and frees as the step before it gets the same buffers in the same places,
    /// and its bind groups repeat.
    free: Mutex<HashMap<u64, BTreeSet<wgpu::Buffer>>>,
    pooled_bytes: AtomicU64,
    /// Bind groups by what they bind (see [`BufferPool::bind_group`]). They live here because a bind group
    /// keeps its buffers alive: when the pool lets a buffer go, the bind groups that name it go too.
    bind_groups: Mutex<HashMap<BindGroupKey, wgpu::BindGroup>>,
}

/// A bind group's identity: the layout (`true`: the wide multi-tensor one) and the buffers bound at bindings
/// 0, 1, … (the parameter ring first, bound with a dynamic offset, so one group serves every dispatch that
/// binds the same storage buffers).
type BindGroupKey = (bool, Vec<wgpu::Buffer>);

/// Bind groups kept at most; past this the cache starts again (a workload whose buffers never repeat).
const MAX_BIND_GROUPS: usize = 4096;

impl BufferPool {
    /// The bind group of the kernels' layout (`wide`: the multi-tensor layout) binding `buffers[0]` (the
    /// parameter ring, at a dynamic offset) and `buffers[k]` at binding k, made by `create` the first
    /// time. A training step binds the same pooled buffers step after step (see `free`), so after the first
    /// steps its dispatches create no bind groups.
    pub(super) fn bind_group(
        &self,
        wide: bool,
        buffers: &[&wgpu::Buffer],
        create: impl FnOnce() -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        let key = (wide, buffers.iter().map(|&b| b.clone()).collect::<Vec<_>>());
        let Ok(mut cache) = self.bind_groups.lock() else {
            return create();
        };
        if let Some(g) = cache.get(&key) {
            return g.clone();
        }
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        let g = create();
        cache.insert(key, g.clone());
        g
    }

    fn take(&self, bytes: u64) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().ok()?;
        let b = free.get_mut(&bytes)?.pop_first()?;
        self.pooled_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Some(b)
    }
    fn put(&self, b: wgpu::Buffer) {
        let bytes = b.size();
        if self.pooled_bytes.load(Ordering::Relaxed) + bytes > POOL_MAX_BYTES {
            // Dropped: wgpu frees it once pending work is done and no bind group holds it.
            if let Ok(mut cache) = self.bind_groups.lock() {
                cache.retain(|(_, buffers), _| !buffers.contains(&b));
            }
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            free.entry(bytes).or_default().insert(b);
            self.pooled_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

pub(super) fn device_err(what: &str, e: impl fmt::Display) -> Error {
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
        // The subgroup GEMM takes its thread roles from whole 8-lane groups of a subgroup: every size the
        // adapter may pick must be a multiple of 8 (a power of two from 8) and at most the 64 threads of a
        // workgroup.
        let sizes_fit =
            |lo: u32, hi: u32| lo >= 8 && hi <= 64 && lo.is_power_of_two() && hi.is_power_of_two();
        let gemm_subgroups = options
            .subgroups
            .unwrap_or_else(|| std::env::var("LIERA_GPU_SUBGROUPS").map_or(true, |v| v != "0"))
            && adapter.features().contains(wgpu::Features::SUBGROUP)
            && sizes_fit(info.subgroup_min_size, info.subgroup_max_size);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("liera"),
                required_limits: limits.clone(),
                required_features: if gemm_subgroups {
                    wgpu::Features::SUBGROUP
                } else {
                    wgpu::Features::empty()
                },
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
                // Each dispatch's parameter block is at its own offset of one ring, given when the bind
                // group is set, so bind groups can be kept and reused (see BufferPool::bind_group).
                has_dynamic_offset: true,
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
        // The wide layout of the multi-tensor kernels: the parameter block and `wide_slots` read-write
        // storage bindings.
        let wide_slots = options
            .max_wide_slots
            .unwrap_or(MAX_WIDE_SLOTS)
            .min(MAX_WIDE_SLOTS)
            .min(limits.max_storage_buffers_per_shader_stage)
            .max((RO_SLOTS + RW_SLOTS) as u32);
        let wide_entries: Vec<_> = entries[..1]
            .iter()
            .cloned()
            .chain((1..=wide_slots).map(|k| storage_entry(k, false)))
            .collect();
        let wide_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("liera multi-tensor kernels"),
            entries: &wide_entries,
        });
        let wide_pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("liera multi-tensor kernels"),
            bind_group_layouts: &[Some(&wide_layout)],
            immediate_size: 0,
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
        // One per wide slot: a buffer bound read-write twice in one dispatch is rejected.
        let dummy_wide = (0..wide_slots).map(|_| dummy("dummy slot")).collect();
        // Parameter blocks share one uniform buffer per batch at offsets the adapter can bind.
        let param_stride = ((PARAM_WORDS * 4) as u64)
            .next_multiple_of(limits.min_uniform_buffer_offset_alignment.max(16) as u64);
        let depthwise_tiles = options.depthwise_tiles.unwrap_or_else(|| {
            match std::env::var("LIERA_GPU_DW_TILES").as_deref() {
                Ok("1") => true,
                Ok("0") => false,
                _ => info.device_type != wgpu::DeviceType::Cpu,
            }
        });
        let gemm_quads = options
            .gemm_quads
            .unwrap_or_else(|| std::env::var("LIERA_GPU_QUADS").map_or(true, |v| v != "0"));
        let gemm_tile = backend_gemm_tile(&options, &info, &limits)?;
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
            wide_slots,
            wide_layout,
            wide_pipeline_layout,
            dummy_wide,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            param_stride,
            min_parallel_workgroups,
            gemm_subgroups: std::sync::atomic::AtomicBool::new(gemm_subgroups),
            depthwise_tiles,
            gemm_quads,
            gemm_tile,
            adapter_features: adapter.features(),
            deferred: Mutex::new(None),
            profile: std::env::var("LIERA_GPU_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(|| Mutex::new(HashMap::new())),
            error,
            readbacks: AtomicU64::new(0),
            launches: Default::default(),
            staging: Mutex::new(None),
            zero: Mutex::new(None),
            dummy_ro,
            dummy_rw,
        })
    }

    /// The limits the device was opened with (the adapter's own), e.g. the largest buffer it can bind.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// True when stride-1 depthwise convolutions take the tiled kernels (see
    /// [`GpuOptions::depthwise_tiles`]).
    pub fn depthwise_uses_tiles(&self) -> bool {
        self.depthwise_tiles
    }

    /// True when the GEMM loads interior tiles by quads (see [`GpuOptions::gemm_quads`]).
    pub fn gemm_uses_quads(&self) -> bool {
        self.gemm_quads
    }

    /// The GEMM's tile side (see [`GpuOptions::gemm_tile`]).
    pub fn gemm_tile(&self) -> u32 {
        self.gemm_tile
    }

    /// True while the GEMM kernels run in their subgroup form (see [`GpuOptions::subgroups`]).
    pub fn gemm_uses_subgroups(&self) -> bool {
        self.gemm_subgroups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The features the adapter offers (the device is opened with only those liera uses).
    pub fn adapter_features(&self) -> wgpu::Features {
        self.adapter_features
    }

    /// The adapter's description (name, backend, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// Returns (and clears) an error wgpu reported asynchronously.
    pub(super) fn check_errors(&self) -> Result<()> {
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
        self.count(Launch::Buffer);
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
        let kept = self.staging.lock().ok().and_then(|mut s| s.take());
        let staging = match kept.filter(|b| b.size() >= bytes) {
            Some(b) => b,
            None => {
                self.count(Launch::Buffer);
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        self.submit_copy(src.raw(), &staging, bytes)?;
        self.check_errors()?;
        let slice = staging.slice(..bytes);
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
        if let Ok(mut kept) = self.staging.lock() {
            *kept = Some(staging);
        }
        self.check_errors()?;
        Ok(out)
    }
}
