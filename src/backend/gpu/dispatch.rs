//! Recording and submitting kernels: the pending command batch and its parameter blocks, bind groups, the
//! pipeline cache, `launch`, submit and flush, dispatch grids (`grid_within`), and the
//! parameter packing and kernel-shape helpers the launchers share.

use super::runtime::{device_err, RO_SLOTS, RW_SLOTS};
use super::shaders::{Family, ShaderVariant};
use super::{GpuBackend, Launch};
use crate::backend::AxisLayout;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

/// Dispatches recorded before the encoder is submitted without being asked.
const MAX_PENDING: u32 = 128;
/// u32 words of every parameter block (at least the largest Params struct of the shaders: multi.wgsl's
/// MultiParams, 64; 256 bytes, the usual uniform offset alignment, so a larger block costs no space).
pub(super) const PARAM_WORDS: usize = 64;
/// Words of multi.wgsl's MultiParams before its table (of `shaders::MULTI_TABLE_ROWS` vec4 rows).
pub(super) const MULTI_HEADER_WORDS: usize = 12;
/// Threads per workgroup of the one-thread-per-element kernels.
pub(super) const WG: u64 = 256;

/// Commands recorded but not yet submitted: one command encoder with one compute pass that every dispatch
/// of the batch is recorded into (wgpu orders the dispatches of a pass by their buffer use, so a pass needs
/// no splitting between a kernel and its consumer).
#[derive(Default)]
pub(super) struct Pending {
    /// Declared before the encoder so that it ends first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: u32,
    /// The parameter blocks of this batch, one per dispatch at `param_stride` bytes apart, written into
    /// `params_ring` just before the batch is submitted (a queue write lands before the submit's commands,
    /// and after the earlier submits that read the ring, so one ring serves every batch).
    params: Vec<u8>,
    params_ring: Option<wgpu::Buffer>,
}

impl Pending {
    /// Ends the open compute pass, if any (before a copy is recorded or the encoder finishes).
    fn end_pass(&mut self) {
        self.pass = None;
    }
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

impl GpuBackend {
    /// The cached pipeline for an entry point of a module variant (built on first use).
    ///
    /// A GEMM module is built in its subgroup form while the backend uses subgroups. Should that form fail
    /// to build (an adapter that reports subgroups but whose shader backend lacks a builtin it uses), the
    /// backend says so once on stderr and keeps to the workgroup-memory form from then on.
    fn pipeline(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
    ) -> Result<wgpu::ComputePipeline> {
        let subgroups = self.gemm_uses_subgroups() && variant.uses_gemm();
        // One copy of the variant per dispatch, in the forms the runtime picks.
        let chosen = variant
            .clone()
            .with_quads(self.gemm_quads)
            .with_subgroups(subgroups);
        match self.build_pipeline(&chosen, entry) {
            Err(e) if subgroups => {
                if self.gemm_subgroups.swap(false, Ordering::Relaxed) {
                    eprintln!("liera: the subgroup GEMM did not build on {} ({e}); using the workgroup-memory GEMM", self.adapter.name);
                }
                self.build_pipeline(&chosen.with_subgroups(false), entry)
            }
            built => built,
        }
    }

    /// The cached pipeline for exactly this variant (built on first use).
    fn build_pipeline(
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
                layout: Some(match variant.family {
                    Family::Multi { .. } => &self.wide_pipeline_layout,
                    _ => &self.pipeline_layout,
                }),
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
        let storage: Vec<&wgpu::Buffer> = bindings
            .inputs
            .iter()
            .map(|b| b.unwrap_or(&self.dummy_ro))
            .chain(
                bindings
                    .outputs
                    .iter()
                    .zip(&self.dummy_rw)
                    .map(|(b, dummy)| b.unwrap_or(dummy)),
            )
            .collect();
        // Deferred low-rank work whose output this dispatch binds goes first (see lowrank.rs).
        self.launch_deferred_if_bound(&storage)?;
        self.record(variant, entry, params, &self.layout, &storage, groups)
    }

    /// Records one dispatch of a multi-tensor kernel (multi.wgsl) over `groups` workgroups, binding
    /// `slots[k]` to binding k + 1 of the wide layout; `None` and the slots past the end get dummies. Every
    /// slot is read-write, so no buffer may appear twice.
    pub(super) fn launch_multi(
        &self,
        entry: &'static str,
        params: &[u32],
        slots: &[Option<&wgpu::Buffer>],
        groups: u64,
    ) -> Result<()> {
        self.launch_multi_with(entry, params, slots, groups, true)
    }

    /// [`GpuBackend::launch_multi`], launching the deferred low-rank work it binds first only when
    /// `deferred_first` (false: the launch of that work itself, recorded with the deferred group's lock
    /// held; see lowrank.rs).
    pub(super) fn launch_multi_with(
        &self,
        entry: &'static str,
        params: &[u32],
        slots: &[Option<&wgpu::Buffer>],
        groups: u64,
        deferred_first: bool,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        if slots.len() > self.wide_slots as usize {
            return Err(Error::Device(format!(
                "kernel {entry}: {} buffers exceed the {} slots of the multi-tensor layout",
                slots.len(),
                self.wide_slots
            )));
        }
        for (i, b) in slots.iter().enumerate() {
            if b.is_some() && slots[..i].contains(b) {
                return Err(Error::Device(format!(
                    "kernel {entry}: a buffer is bound twice (every multi-tensor slot is read-write)"
                )));
            }
        }
        let storage: Vec<&wgpu::Buffer> = self
            .dummy_wide
            .iter()
            .enumerate()
            .map(|(k, dummy)| slots.get(k).copied().flatten().unwrap_or(dummy))
            .collect();
        let variant = ShaderVariant::plain(Family::Multi {
            slots: self.wide_slots,
        });
        if deferred_first {
            self.launch_deferred_if_bound(&storage)?;
        }
        self.record(&variant, entry, params, &self.wide_layout, &storage, groups)
    }

    /// Records a dispatch of `entry` with `params` as its parameter block and `storage[k]` bound to
    /// binding k + 1 of `layout`. Deferred low-rank work whose output it binds must have been launched
    /// first (`launch_deferred_if_bound`, see lowrank.rs).
    fn record(
        &self,
        variant: &ShaderVariant,
        entry: &'static str,
        params: &[u32],
        layout: &wgpu::BindGroupLayout,
        storage: &[&wgpu::Buffer],
        groups: u64,
    ) -> Result<()> {
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
                self.count(Launch::Buffer);
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
        let buffers: Vec<&wgpu::Buffer> = std::iter::once(&ring)
            .chain(storage.iter().copied())
            .collect();
        let bind_group =
            self.pool
                .bind_group(!std::ptr::eq(layout, &self.layout), &buffers, || {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &ring,
                            offset: 0,
                            size: std::num::NonZeroU64::new(PARAM_WORDS as u64 * 4),
                        }),
                    }];
                    for (i, b) in storage.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: 1 + i as u32,
                            resource: b.as_entire_binding(),
                        });
                    }
                    self.count(Launch::BindGroup);
                    self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(entry),
                        layout,
                        entries: &entries,
                    })
                });
        if pending.pass.is_none() {
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("liera"),
                    })
            });
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("liera"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            pending.pass = Some(pass);
        }
        {
            let pass = pending.pass.as_mut().expect("a pass was just opened");
            pass.set_pipeline(&pipeline);
            // The ring holds MAX_PENDING blocks, far below 4 GiB.
            pass.set_bind_group(0, &bind_group, &[offset as u32]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        pending.dispatches += 1;
        self.count(Launch::Dispatch);
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
        pending.end_pass();
        if let Some(ring) = &pending.params_ring {
            if !pending.params.is_empty() {
                self.queue.write_buffer(ring, 0, &pending.params);
            }
        }
        pending.params.clear();
        if let Some(enc) = pending.encoder.take() {
            self.count(Launch::Submit);
            self.queue.submit([enc.finish()]);
            // Non-blocking: lets wgpu free the parameter blocks and bind groups of finished work, so a
            // long run without readbacks does not accumulate them.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        pending.dispatches = 0;
    }

    /// Submits everything recorded so far (and the deferred low-rank work).
    pub fn flush(&self) -> Result<()> {
        self.launch_deferred()?;
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

    /// Records a copy of `bytes` bytes from `src` to `dst` after everything recorded so far and submits the
    /// batch (for `download_buffer`).
    pub(super) fn submit_copy(
        &self,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<()> {
        // A readback may be of deferred low-rank work: launch it first.
        self.launch_deferred()?;
        let mut pending = self.pending.lock().map_err(poisoned)?;
        pending.end_pass();
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("liera"),
                })
        });
        encoder.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        self.submit(&mut pending);
        Ok(())
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
