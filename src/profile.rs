//! Op-level timing of training steps, switched on with `LIERA_OP_PROFILE=1`: where a step's time goes, op
//! by op, forward and backward apart, to set beside PyTorch's profiler.
//!
//! **Forward.** Every op is built through [`crate::Tensor::from_op`], after its kernel has run. An op's
//! forward time is the time on this thread since the previous op was built (or since [`mark`]): its kernel
//! and the glue before it (shape checks, views). **Backward.** [`crate::Tensor::backward`] times each node's
//! rule, with the accumulation of its gradients, under the node's op name; the ops a rule calls are not
//! counted again as forward ops.
//!
//! These are wall times of the calling thread, so they mean kernel time only where a backend finishes its
//! work before returning: the CPU backend (whose kernels run on rayon's pool while the caller waits). The GPU
//! backend returns once work is recorded; `LIERA_GPU_PROFILE=1` times its kernels instead. Anything a step
//! does outside ops (the optimizer's bookkeeping, data loading) lands in the next op's forward time, so
//! call [`mark`] before a step's first op. The profile costs one flag read per op when off.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Whether `LIERA_OP_PROFILE` is set (to anything but `0`), read once.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LIERA_OP_PROFILE").is_ok_and(|v| v != "0"))
}

/// Which pass a time belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// The op's forward computation.
    Forward,
    /// Its backward rule.
    Backward,
}

/// (calls, seconds) per (op, pass).
type Table = HashMap<(&'static str, Pass), (u64, f64)>;

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

thread_local! {
    /// When this thread last finished an op (or was marked).
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Inside a backward pass: ops built there belong to the node being timed.
    static IN_BACKWARD: Cell<bool> = const { Cell::new(false) };
}

fn add(op: &'static str, pass: Pass, seconds: f64) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table
        .get_or_insert_with(HashMap::new)
        .entry((op, pass))
        .or_insert((0, 0.0));
    entry.0 += 1;
    entry.1 += seconds;
}

/// Starts the clock of this thread's next forward op (call before a step's first op).
pub fn mark() {
    if enabled() {
        LAST.with(|l| l.set(Some(Instant::now())));
    }
}

/// Called as an op is built: charges the time since this thread's last op to `op`'s forward.
pub(crate) fn forward_op(op: &'static str) {
    if !enabled() || IN_BACKWARD.with(Cell::get) {
        return;
    }
    let now = Instant::now();
    if let Some(last) = LAST.with(|l| l.replace(Some(now))) {
        add(op, Pass::Forward, (now - last).as_secs_f64());
    }
}

/// Runs one node's backward work, charging its time to `op`'s backward.
/// A backward pass nested in a node's rule (a checkpointed block's) is part of that node's time and is
/// not broken down again, so the table sums to the step.
pub(crate) fn backward_node<R>(op: &'static str, work: impl FnOnce() -> R) -> R {
    if !enabled() || IN_BACKWARD.with(Cell::get) {
        return work();
    }
    IN_BACKWARD.with(|b| b.set(true));
    let start = Instant::now();
    let r = work();
    add(op, Pass::Backward, start.elapsed().as_secs_f64());
    IN_BACKWARD.with(|b| b.set(false));
    LAST.with(|l| l.set(Some(Instant::now())));
    r
}

/// Forgets every time gathered so far (to leave a warm-up step out).
pub fn reset() {
    *TABLE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    mark();
}

/// The table gathered so far, slowest first, over `steps` steps (per-step milliseconds), or `None` when
/// profiling is off or nothing was timed.
pub fn report(steps: usize) -> Option<String> {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = table.as_ref()?.iter().map(|(k, v)| (*k, *v)).collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1).then(a.0.cmp(&b.0)));
    let total: f64 = rows.iter().map(|r| r.1 .1).sum();
    let per = steps.max(1) as f64;
    let mut out = format!(
        "op time per step (LIERA_OP_PROFILE, {steps} step{}; wall time of the calling thread: kernel time on \
         the CPU, only the time to record the work on the GPU, whose kernels LIERA_GPU_PROFILE times):\n\
         {:<28} {:>9} {:>9} {:>11} {:>7}\n",
        if steps == 1 { "" } else { "s" },
        "op",
        "pass",
        "calls",
        "ms",
        "share"
    );
    for ((op, pass), (calls, s)) in rows {
        let pass = match pass {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        };
        out += &format!(
            "{op:<28} {pass:>9} {:>9.1} {:>11.2} {:>6.1}%\n",
            calls as f64 / per,
            1e3 * s / per,
            100.0 * s / total
        );
    }
    out += &format!(
        "{:<28} {:>9} {:>9} {:>11.2}\n",
        "total",
        "",
        "",
        1e3 * total / per
    );
    Some(out)
}
