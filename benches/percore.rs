//! Per-core throughput and cost of lambda-tpc, side by side with the official runtime.
//!
//! ```text
//! cargo bench --bench percore                      # default set, about 3 minutes on 2 idle cores
//! cargo bench --bench percore -- --quick           # every contender x every workload, once, short (CI smoke)
//! cargo bench --bench percore -- --full            # every contender x every workload, 3 runs
//! cargo bench --bench percore -- --list            # contenders and workloads by name
//! cargo bench --bench percore -- --contenders official-mt,tpc-wps-* --workloads echo-c64,echo-c1 --runs 5
//! cargo bench --bench percore -- --help            # every option
//! ```
//!
//! The default run measures every contender on the headline workload (`echo-c64`) and the
//! contenders marked `everywhere` (lambda-tpc worker-per-slot on io_uring with and without
//! pipelining, both official variants, the blocking floor) on every workload, 3 runs each.
//! Contenders that insist on io_uring are skipped, with a note, where io_uring is refused.
//!
//! # What it measures
//!
//! For each *contender* (a Lambda runtime: lambda-tpc on compio with each strategy and
//! driver, the official `lambda_runtime` 1.5 with `concurrency-tokio`, a minimal blocking
//! client written here) and each *workload* (payload size, concurrency, arrival process,
//! handler), the cost an execution environment pays per invocation:
//!
//! * **invocations/s** over the measurement window (answers counted by the simulator);
//! * **CPU µs per invocation** of the runtime process, user and system separately: the
//!   child's own `getrusage(RUSAGE_SELF)` (every thread of the process, kernel time
//!   included) over the measurement window, divided by the invocations its handler ran in
//!   that window. This is the headline: on 2 cores invocations/s is bounded by the
//!   simulator, which costs about as much CPU per invocation as the runtime does;
//! * **latency** p50/p99/p99.9 from hand-out of the `/next` reply to the end of the
//!   `/response` body, measured by the simulator over the window. For the `mixed` workload
//!   the p99 of the well-behaved (non-blocking) invocations is also reported: each event
//!   carries its hand-out timestamp (written by the event generator, which the simulator
//!   calls at hand-out) and the validator records `now - timestamp` for those only;
//! * **peak RSS** (`ru_maxrss` of the child, whole life);
//! * **heap allocations per invocation**: the bench binary's global allocator counts
//!   `alloc`, `alloc_zeroed` and `realloc` calls; the child reads the counter at both ends
//!   of the window;
//! * for the open-loop workloads, **rejections**: arrivals that found no parked `/next`
//!   (percent of the window's arrivals). For `open-loop` (64 slots) the arrival rate is
//!   0.9 x the official runtime's closed-loop `echo-c64` throughput in the same invocation,
//!   i.e. close to what it sustains at full concurrency, but at most 0.6 x what the
//!   simulator's CPUs could hand out to it (their count over the simulator's CPU per
//!   invocation in those runs: an open loop costs the simulator more per arrival, and one
//!   that falls behind rejects arrivals for every contender);
//!   `--open-rate` sets it; for
//!   `open-loop-c4` (4 slots, the check AWS's emulator allows) it is a fixed 15,000/s, well
//!   below what four slots serve, so that how fast a slot re-polls decides;
//! * **sim µs**: CPU per invocation of the parent process (simulator, pacer, harness), to
//!   show when the simulator, not the contender, bounds invocations/s;
//! * **noise**: CPU time other processes used on the bench CPUs during the window, from
//!   `/proc/stat` (busy time of those CPUs minus both bench processes' rusage). Cells where
//!   it exceeds 5 % of a CPU are flagged under their table.
//!
//! Each cell runs several times (3 by default; `--runs`), runs of different contenders
//! interleaved; the table shows the median and the spread (min–max) and the ratio of the
//! median to the official runtime's (`official-mt`).
//!
//! # How
//!
//! The parent process pins itself to the simulator CPU(s) (default: the last CPU) and starts
//! the embedded Runtime API simulator there, one per run. It re-executes this binary
//! (`std::env::current_exe()`) as a child with `--child <contender>`; the child pins itself to
//! the runtime CPU(s) (default: the first CPU) before it starts any thread, then runs the
//! contender with the environment a Managed Instance gives a function
//! (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_MAX_CONCURRENCY`, `AWS_LAMBDA_FUNCTION_*`,
//! `AWS_LAMBDA_LOG_*`, `AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`, JSON log
//! format) plus the contender's own variables (`LAMBDA_TPC_STRATEGY`, ...). Inherited
//! `AWS_LAMBDA_*` and `LAMBDA_TPC_*` variables are removed first, except
//! `LAMBDA_TPC_URING_FLAGS`, which passes through for experiments.
//!
//! Warm-up is excluded with a two-line protocol on the child's stdin: the parent watches the
//! simulator's ledger; once the warm-up count of invocations is answered it resets the
//! simulator's latency histogram and writes `mark`; the child's monitor thread snapshots its
//! rusage, allocation count and handler-invocation count. When every event of the run is
//! answered (the event source is finite), the parent writes `end`; the child snapshots
//! again, prints one JSON line (`PERCORE_RESULT {...}`) with both snapshots and exits. Idle
//! time between the last answer and `end` costs no CPU. The run then checks the ledger:
//! nothing lost, no mismatched echo, no error answers, no duplicates.
//!
//! Results: the table on stdout, `target/percore/percore.json` (every run and every
//! summary), `target/percore/percore.svg` (CPU per invocation, user and system, with the
//! spread), the children's stderr in `target/percore/logs/`. The target directory is the
//! one the bench binary was built in (`CARGO_TARGET_DIR` is honoured). A run that fails or
//! loses invocations is reported and the process exits non-zero; nothing about timing is
//! asserted.

#[path = "percore/blocking.rs"]
mod blocking;
#[path = "percore/child.rs"]
mod child;
#[path = "percore/contenders.rs"]
mod contenders;
#[path = "percore/parent.rs"]
mod parent;
#[path = "percore/report.rs"]
mod report;
#[path = "percore/workloads.rs"]
mod workloads;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocator calls that obtain memory (alloc, alloc_zeroed, realloc).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Allocator calls so far in this process.
pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(child::FLAG) {
        child::main(&args[1..])
    } else {
        parent::main(&args)
    }
}
