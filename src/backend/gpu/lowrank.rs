//! The adapters' low-rank reparameterisation on the GPU, many layers per launch (multi.wgsl's
//! lowrank_reparam_multi and lowrank_grads_multi; the math is in `ops/reparam.rs`).
//!
//! A ConvNeXt block materialises its adapted kernels one after the other, and the backward pass yields
//! every layer's factor gradients, which nothing reads before the optimizer. Launched as they come, they
//! cost a dispatch per layer and direction, plus the partial sums of split-K products (122 of the 387
//! dispatches of a LieRA step on convnext_atto). So the backend defers them: a request allocates its
//! outputs and joins the pending group of its kind, and the group is launched, in as few launches as the
//! wide layout allows, when something is about to read one of its outputs (a dispatch that binds it, or
//! any readback), or when a request of the other kind arrives.
//!
//! Deferring cannot change a result: the group holds a handle to every buffer it reads or writes, so none
//! goes back to the pool before the launch; kernels only ever write fresh buffers, so its inputs keep their
//! values; and a dispatch that reads an output is recorded after the group's launch. Threads share one
//! backend (`Device::gpu()` is one per process), so the pending group's lock is held from a look at the
//! group to the end of its launch's recording ([`GpuBackend::launch_group`]): with it let go in between, a
//! problem could join a group of the other kind, or a thread could find no group pending and record a read
//! of an output whose launch another thread had taken but not yet recorded.

use super::dispatch::{u32_of, MULTI_HEADER_WORDS, WG};
use super::shaders::{
    lowrank_problems_per_launch, LOWRANK_GRADS_SLOTS, LOWRANK_REPARAM_SLOTS, MULTI_TABLE_ROWS,
};
use super::GpuBackend;
use crate::backend::{BinaryOp, LowRankGrads, Storage};
use crate::error::{Error, Result};

/// Which kernel a deferred group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LowRankKind {
    /// W' = form(W, s·B·A).
    Reparam,
    /// ∂B and ∂A from ∂L/∂W'.
    Grads,
}

/// One layer's deferred work.
pub(super) struct LowRankProblem {
    /// The two table rows of multi.wgsl: (O, r, N, first workgroup: set at launch) and the kind's row.
    table: [u32; 8],
    /// Threads (one per output element; per four of them for the gradients).
    threads: u64,
    /// The buffers in slot order (`None`: an unused slot, bound to a dummy).
    slots: Vec<Option<Storage>>,
    /// The slots this problem writes.
    outputs: Vec<Storage>,
}

/// The pending group: problems of one kind, in request order.
pub(super) struct Deferred {
    kind: LowRankKind,
    problems: Vec<LowRankProblem>,
}

/// multi.wgsl's form code of an adapter's reparameterisation, if `op` is one.
fn form_code(op: BinaryOp) -> Option<(u32, f32)> {
    match op {
        BinaryOp::AddScaled(s) => Some((1, s)),
        BinaryOp::MulExpScaled(s) => Some((2, s)),
        BinaryOp::MulAffineScaled(s) => Some((3, s)),
        _ => None,
    }
}

impl GpuBackend {
    /// W' = op(W, s·B·A) for B (O×r), A (r×N) and W (O×N), `op` an adapter form ([`BinaryOp::AddScaled`],
    /// [`BinaryOp::MulExpScaled`], [`BinaryOp::MulAffineScaled`]), deferred (see the module docs). `None`
    /// when this cannot be deferred (another op, an empty product, a buffer bound twice): the caller then
    /// launches it at once.
    pub(super) fn defer_lowrank_reparam(
        &self,
        w: &Storage,
        b: &Storage,
        a: &Storage,
        (o, r, n): (usize, usize, usize),
        op: BinaryOp,
    ) -> Result<Option<Storage>> {
        let Some((form, s)) = form_code(op) else {
            return Ok(None);
        };
        if o * r * n == 0 {
            return Ok(None);
        }
        let y = Self::wrap(self.alloc(o * n)?);
        let table = [
            u32_of("rows", o)?,
            u32_of("rank", r)?,
            u32_of("columns", n)?,
            0,
            s.to_bits(),
            form,
            0,
            0,
        ];
        let slots = vec![
            Some(w.clone()),
            Some(b.clone()),
            Some(a.clone()),
            Some(y.clone()),
        ];
        let problem = LowRankProblem {
            table,
            // A thread per four elements of a row (multi.wgsl).
            threads: u32_of("elements", o * n.div_ceil(4))? as u64,
            slots,
            outputs: vec![y.clone()],
        };
        Ok(self.defer(LowRankKind::Reparam, problem)?.then_some(y))
    }

    /// ∂B and ∂A (see [`LowRankGrads`]), each only when asked, deferred (see the module docs). `None` when
    /// this cannot be deferred.
    pub(super) fn defer_lowrank_grads(
        &self,
        x: &LowRankGrads<'_>,
    ) -> Result<Option<(Option<Storage>, Option<Storage>)>> {
        let LowRankGrads {
            g,
            z,
            b,
            a,
            dims: (o, r, n),
            s,
            need: (need_b, need_a),
        } = *x;
        if o * r * n == 0 || !(need_b || need_a) {
            return Ok(None);
        }
        let db = need_b
            .then(|| self.alloc(o * r).map(Self::wrap))
            .transpose()?;
        let da = need_a
            .then(|| self.alloc(r * n).map(Self::wrap))
            .transpose()?;
        // Threads: one per row and four ranks of ∂B, and per column and four ranks of ∂A.
        let r4 = r.div_ceil(4);
        let nb = if need_b { u32_of("∂B", o * r4)? } else { 0 };
        let na = if need_a { u32_of("∂A", r4 * n)? } else { 0 };
        let table = [
            u32_of("rows", o)?,
            u32_of("rank", r)?,
            u32_of("columns", n)?,
            0,
            s.to_bits(),
            z.is_some() as u32,
            nb,
            na,
        ];
        let slots = vec![
            Some(g.clone()),
            z.cloned(),
            Some(b.clone()),
            Some(a.clone()),
            db.clone(),
            da.clone(),
        ];
        let problem = LowRankProblem {
            table,
            threads: nb as u64 + na as u64,
            slots,
            outputs: db.iter().chain(&da).cloned().collect(),
        };
        Ok(self.defer(LowRankKind::Grads, problem)?.then_some((db, da)))
    }

    /// Adds `problem` to the pending group (launching a group of the other kind first); false, with
    /// nothing deferred, if the problem binds one buffer twice (every multi-tensor slot is read-write).
    fn defer(&self, kind: LowRankKind, problem: LowRankProblem) -> Result<bool> {
        let raws = self.raw_slots(&problem)?;
        if raws.iter().enumerate().any(|(k, b)| raws[..k].contains(b)) {
            return Ok(false);
        }
        // One hold of the lock for the check, the launch and the push: with the lock let go between them,
        // another thread on this backend could start a group of the other kind, and this problem would
        // join it and run through the other kernel.
        let mut d = self.deferred.lock().map_err(poisoned)?;
        if d.as_ref().is_some_and(|g| g.kind != kind) {
            if let Some(group) = d.take() {
                self.launch_group(group)?;
            }
        }
        d.get_or_insert_with(|| Deferred {
            kind,
            problems: Vec::new(),
        })
        .problems
        .push(problem);
        Ok(true)
    }

    /// The raw buffers of a problem's bound slots.
    fn raw_slots<'s>(&self, p: &'s LowRankProblem) -> Result<Vec<&'s wgpu::Buffer>> {
        p.slots
            .iter()
            .flatten()
            .map(|s| self.buf(s).map(|b| b.raw()))
            .collect()
    }

    /// Launches the pending group if one of `bound` is among its outputs (called before every dispatch).
    pub(super) fn launch_deferred_if_bound(&self, bound: &[&wgpu::Buffer]) -> Result<()> {
        let mut d = self.deferred.lock().map_err(poisoned)?;
        let hit = d.as_ref().is_some_and(|g| {
            g.problems.iter().any(|p| {
                p.outputs.iter().any(|o| {
                    self.buf(o)
                        .is_ok_and(|b| bound.iter().any(|x| *x == b.raw()))
                })
            })
        });
        match d.take() {
            Some(group) if hit => self.launch_group(group),
            group => {
                *d = group;
                Ok(())
            }
        }
    }

    /// Launches the pending group, if any.
    pub(super) fn launch_deferred(&self) -> Result<()> {
        let mut d = self.deferred.lock().map_err(poisoned)?;
        match d.take() {
            Some(group) => self.launch_group(group),
            None => Ok(()),
        }
    }

    /// Records the launches of `group`: consecutive problems share a launch while the wide layout's slots
    /// and the parameter table have room and no buffer would be bound twice.
    ///
    /// Called with the deferred group's lock held, taken before the group was and let go only after its
    /// launches are recorded: a thread that finds no group pending, so records a dispatch reading one of
    /// this group's outputs at once, must find it already recorded (the backend is shared by every thread
    /// of the process). The launches therefore do not look for deferred work themselves.
    fn launch_group(&self, group: Deferred) -> Result<()> {
        let (entry, per) = match group.kind {
            LowRankKind::Reparam => ("lowrank_reparam_multi", LOWRANK_REPARAM_SLOTS),
            LowRankKind::Grads => ("lowrank_grads_multi", LOWRANK_GRADS_SLOTS),
        };
        let cap = lowrank_problems_per_launch(self.wide_slots, per) as usize;
        if cap == 0 {
            return Err(Error::Device(format!(
                "{entry}: {} storage slots cannot hold one problem of {per}",
                self.wide_slots
            )));
        }
        let mut start = 0;
        while start < group.problems.len() {
            let mut seen: Vec<&wgpu::Buffer> = Vec::new();
            let mut end = start;
            while end < group.problems.len() && end - start < cap {
                let mine = self.raw_slots(&group.problems[end])?;
                if mine.iter().any(|b| seen.contains(b)) {
                    break;
                }
                seen.extend(mine);
                end += 1;
            }
            let mut table = [0u32; 4 * MULTI_TABLE_ROWS as usize];
            let mut slots: Vec<Option<&wgpu::Buffer>> = Vec::new();
            let mut groups = 0u64;
            for (t, p) in group.problems[start..end].iter().enumerate() {
                let mut rows = p.table;
                rows[3] = u32_of("workgroups", groups as usize)?;
                table[8 * t..8 * t + 8].copy_from_slice(&rows);
                groups += p.threads.div_ceil(WG);
                for s in &p.slots {
                    slots.push(
                        s.as_ref()
                            .map(|s| self.buf(s).map(|b| b.raw()))
                            .transpose()?,
                    );
                }
            }
            let mut params = vec![
                (end - start) as u32,
                0,
                0,
                0,
                u32_of("workgroups", groups as usize)?,
            ];
            params.resize(MULTI_HEADER_WORDS, 0);
            params.extend(table);
            self.launch_multi_with(entry, &params, &slots, groups, false)?;
            start = end;
        }
        Ok(())
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Device("the deferred low-rank group's lock was poisoned".into())
}
