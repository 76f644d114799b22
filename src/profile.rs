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
//!
//! **Busy threads.** Beside each wall time the profile reads the process's CPU time (all threads, user and
//! system) over the same interval, and reports CPU time ÷ (wall time × rayon's thread count): 100% when
//! every thread of the pool worked through the whole op, 50% on two threads when one sat idle (a serial
//! part, or a split that left a thread without work). It is an upper bound on useful work: a rayon worker
//! that spins a moment looking for a task before it sleeps burns CPU time too, and other threads of the
//! process (a data loader) count as well, so read it on a bench step, where there are none.

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

/// One (op, pass) of the table.
#[derive(Clone, Copy, Default)]
struct Entry {
    calls: u64,
    /// Wall seconds on the calling thread.
    wall: f64,
    /// CPU seconds of the whole process over those intervals.
    cpu: f64,
}

type Table = HashMap<(&'static str, Pass), Entry>;

/// A point in time: the calling thread's clock and the process's CPU time.
#[derive(Clone, Copy)]
struct Stamp {
    wall: Instant,
    cpu: f64,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }
    /// (wall, CPU) seconds from `self` to `later`.
    fn until(self, later: Stamp) -> (f64, f64) {
        (
            (later.wall - self.wall).as_secs_f64(),
            (later.cpu - self.cpu).max(0.0),
        )
    }
}

/// CPU seconds used so far by all threads of this process (user and system), or 0 where the platform
/// gives no such clock (the busy column then reads 0).
fn process_cpu_seconds() -> f64 {
    #[cfg(unix)]
    if let Some(s) = clock_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) {
        return s;
    }
    0.0
}

/// The seconds of one of the system's clocks, None if it cannot be read.
#[cfg(unix)]
fn clock_seconds(clock: libc::clockid_t) -> Option<f64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(clock, &mut t) } == 0;
    ok.then_some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

thread_local! {
    /// When this thread last finished an op (or was marked).
    static LAST: Cell<Option<Stamp>> = const { Cell::new(None) };
    /// Inside a backward pass: ops built there belong to the node being timed.
    static IN_BACKWARD: Cell<bool> = const { Cell::new(false) };
}

fn add(op: &'static str, pass: Pass, (wall, cpu): (f64, f64)) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table
        .get_or_insert_with(HashMap::new)
        .entry((op, pass))
        .or_default();
    entry.calls += 1;
    entry.wall += wall;
    entry.cpu += cpu;
}

/// Starts the clock of this thread's next forward op (call before a step's first op).
pub fn mark() {
    if enabled() {
        LAST.with(|l| l.set(Some(Stamp::now())));
    }
}

/// Called as an op is built: charges the time since this thread's last op to `op`'s forward.
pub(crate) fn forward_op(op: &'static str) {
    if !enabled() || IN_BACKWARD.with(Cell::get) {
        return;
    }
    let now = Stamp::now();
    if let Some(last) = LAST.with(|l| l.replace(Some(now))) {
        add(op, Pass::Forward, last.until(now));
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
    let start = Stamp::now();
    let r = work();
    let end = Stamp::now();
    add(op, Pass::Backward, start.until(end));
    IN_BACKWARD.with(|b| b.set(false));
    LAST.with(|l| l.set(Some(end)));
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
    rows.sort_by(|a, b| b.1.wall.total_cmp(&a.1.wall).then(a.0.cmp(&b.0)));
    let total = rows.iter().fold(Entry::default(), |t, r| Entry {
        calls: t.calls + r.1.calls,
        wall: t.wall + r.1.wall,
        cpu: t.cpu + r.1.cpu,
    });
    let per = steps.max(1) as f64;
    let threads = rayon::current_num_threads().max(1) as f64;
    let busy = |e: &Entry| 100.0 * e.cpu / (e.wall * threads).max(f64::MIN_POSITIVE);
    let mut out = format!(
        "op time per step (LIERA_OP_PROFILE, {steps} step{}; wall time of the calling thread: kernel time on \
         the CPU, only the time to record the work on the GPU, whose kernels LIERA_GPU_PROFILE times; busy: \
         the process's CPU time over wall time × {threads} threads, 100% when no thread idled):\n\
         {:<28} {:>9} {:>9} {:>11} {:>7} {:>6}\n",
        if steps == 1 { "" } else { "s" },
        "op",
        "pass",
        "calls",
        "ms",
        "share",
        "busy"
    );
    for ((op, pass), e) in rows {
        let pass = match pass {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        };
        out += &format!(
            "{op:<28} {pass:>9} {:>9.1} {:>11.2} {:>6.1}% {:>5.0}%\n",
            e.calls as f64 / per,
            1e3 * e.wall / per,
            100.0 * e.wall / total.wall,
            busy(&e)
        );
    }
    out += &format!(
        "{:<28} {:>9} {:>9} {:>11.2} {:>7} {:>5.0}%\n",
        "total",
        "",
        "",
        1e3 * total.wall / per,
        "",
        busy(&total)
    );
    Some(out)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// CPU seconds used so far by the calling thread.
    fn thread_cpu_seconds() -> f64 {
        clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID).expect("the thread's CPU clock")
    }

    /// The busy column's clock sums the CPU time of every thread of the process: two threads that each
    /// work 40 ms of their own CPU time move it by at least 80 ms, however the system schedules them.
    #[test]
    fn the_process_clock_counts_the_work_of_every_thread() {
        let work = || {
            let start = thread_cpu_seconds();
            let mut x = 1.0f64;
            while thread_cpu_seconds() - start < 0.04 {
                for _ in 0..1000 {
                    x = std::hint::black_box(x * 1.000_001 + 1e-9);
                }
            }
            x
        };
        let before = Stamp::now();
        let other = std::thread::spawn(work);
        work();
        other.join().expect("the second thread");
        let (wall, cpu) = before.until(Stamp::now());
        assert!(cpu >= 0.08, "{cpu} CPU seconds for two threads' 40 ms each");
        assert!(wall > 0.0);
    }
}
