//! Stopping a running runtime, and reading what it did.
//!
//! Everything here is cross-thread but off the per-invocation path: it is touched at
//! start-up, at shutdown, and once per core when it exits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::Error;

/// A handle to stop a runtime and read its report. Clone it freely; attach it with
/// [`ConfigBuilder::control`](crate::ConfigBuilder::control).
///
/// A handle serves one run: once [`shutdown`](Self::shutdown) has been called it stays
/// shut down, and a run started with it stops at once. Use a new handle per run.
///
/// Stop a runtime from another thread, then read what each core did:
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder().max_concurrency(4).events(EventSource::repeat("7", 10)).start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(4).unwrap())
///     .control(control.clone())
///     .build_with(|_| None)?;
///
/// let stopper = control.clone();
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::compio::run_concurrent_with_config(config, |ev: LambdaEvent<u64>| async move {
///         Ok::<_, BoxError>(ev.payload * 6)
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// stopper.shutdown(); // from any thread; the run returns once in-flight work is done
/// runtime.join().unwrap()?;
///
/// let report = control.report().expect("the run has returned");
/// assert_eq!(report.invocations(), 10);
/// assert_eq!(report.errors(), 0);
/// println!("{:?} of CPU per invocation", report.cpu_per_invocation().unwrap());
/// for core in &report.cores {
///     println!("core {} on CPU {} ({}): {} invocations", core.index, core.cpu, core.driver, core.invocations);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Control {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Set once shutdown begins; read by every core between invocations.
    stopping: AtomicBool,
    /// One waker per core waiting for shutdown. A `Mutex` is fine: it is locked when a
    /// core starts waiting and once at shutdown, never per invocation.
    wakers: Mutex<Vec<Waker>>,
    /// The first fatal error, which the run returns.
    fatal: Mutex<Option<Error>>,
    /// Per-core reports, pushed by each core as it exits.
    reports: Mutex<Vec<CoreReport>>,
    /// Stall counts of the watchdog for cores whose report had not come when it stopped (a
    /// core left behind, blocked past the grace period): added if the report comes later.
    pending_stalls: Mutex<Vec<u64>>,
}

/// Locks `m`, poisoned or not: the runtime's mutexes guard plain data (counts, lists,
/// wakers) that a panic while holding one cannot leave half-changed, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stopping", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// A new handle.
    pub fn new() -> Control {
        Control::default()
    }

    /// Begins a graceful shutdown: cores stop taking new invocations, let in-flight ones
    /// finish within the configured
    /// [grace period](crate::ConfigBuilder::shutdown_grace), and the run function returns.
    /// Returns at once; idempotent. Called before the run starts, the run stops as soon
    /// as it has started.
    pub fn shutdown(&self) {
        if !self.inner.stopping.swap(true, Ordering::AcqRel) {
            tracing::info!("shutdown requested");
        }
        for w in lock(&self.inner.wakers).drain(..) {
            w.wake();
        }
    }

    /// Whether shutdown has begun: requested with [`shutdown`](Self::shutdown), by
    /// SIGTERM/SIGINT, or after a fatal error.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// What the last run did. Complete once the run function has returned, except for a
    /// core it left behind (still blocked in handler code when the grace period ended),
    /// which is added if it ever exits; while the run goes on, only the cores that have
    /// already exited are in it (`None` before any has).
    pub fn report(&self) -> Option<RunReport> {
        let mut cores = lock(&self.inner.reports).clone();
        if cores.is_empty() {
            return None;
        }
        cores.sort_by_key(|c| c.index);
        Some(RunReport { cores })
    }

    /// Records a fatal error (the first one wins) and shuts everything down.
    pub(crate) fn fatal(&self, e: Error) {
        {
            let mut slot = lock(&self.inner.fatal);
            if slot.is_none() {
                tracing::error!(error = %e, "fatal error, shutting down");
                *slot = Some(e);
            }
        }
        self.shutdown();
    }

    /// Records an error for the run to return (the first one wins) without shutting
    /// anything down: the remaining cores serve on.
    pub(crate) fn record_error(&self, e: Error) {
        let mut slot = lock(&self.inner.fatal);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    pub(crate) fn take_fatal(&self) -> Option<Error> {
        lock(&self.inner.fatal).take()
    }

    pub(crate) fn push_report(&self, mut r: CoreReport) {
        // Both locks, in this order, here and in `add_stalls`: a report pushed while the
        // stall counts are handed out either gets its count there or finds it pending.
        let mut reports = lock(&self.inner.reports);
        if let Some(n) = lock(&self.inner.pending_stalls).get_mut(r.index) {
            r.stalls += std::mem::take(n);
        }
        reports.push(r);
    }

    /// Adds the watchdog's stall counts to the reports of the cores (or keeps them for a
    /// core whose report has not come yet).
    pub(crate) fn add_stalls(&self, stalls: &[u64]) {
        let mut reports = lock(&self.inner.reports);
        let mut pending = stalls.to_vec();
        for r in reports.iter_mut() {
            if let Some(n) = pending.get_mut(r.index) {
                r.stalls += std::mem::take(n);
            }
        }
        *lock(&self.inner.pending_stalls) = pending;
    }

    /// Forgets the previous run's reports and error (a `Control` may serve several runs).
    pub(crate) fn clear_reports(&self) {
        lock(&self.inner.reports).clear();
        lock(&self.inner.pending_stalls).clear();
        lock(&self.inner.fatal).take();
    }

    /// Resolves once shutdown has begun.
    pub(crate) fn stopped(&self) -> Stopped<'_> {
        Stopped {
            control: self,
            registered: None,
        }
    }
}

/// Future returned by [`Control::stopped`].
pub(crate) struct Stopped<'a> {
    control: &'a Control,
    /// The waker registered with the control, if any. Executors such as compio's poll
    /// their top-level future on every turn of the event loop; remembering the
    /// registration keeps those polls to one atomic load, without taking the lock.
    registered: Option<Waker>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.control.is_shutting_down() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        {
            let mut wakers = lock(&self.control.inner.wakers);
            // Re-check under the lock: `shutdown` sets the flag before draining the
            // wakers, so either we see the flag now or our waker is drained and woken.
            if self.control.is_shutting_down() {
                return Poll::Ready(());
            }
            wakers.push(cx.waker().clone());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What one core did during a run: an entry of [`RunReport::cores`]. See [`Control`] for
/// an example.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreReport {
    /// Index of the core among the runtime's cores.
    pub index: usize,
    /// CPU id it was pinned to (0 for the multi-thread tokio shim, which pins nothing).
    pub cpu: usize,
    /// The I/O driver it ran on (`io_uring` or `epoll`, or the executor's name).
    pub driver: &'static str,
    /// Invocations received from `/next`.
    pub invocations: u64,
    /// Successful responses posted.
    pub responses: u64,
    /// Errors posted (handler errors, panics, bad payloads, oversized responses).
    pub errors: u64,
    /// Panics caught in user code (the handler and everything of the user's the runtime
    /// calls for an invocation; one invocation may count more than one, e.g. a future
    /// that panics when polled and again when dropped).
    pub panics: u64,
    /// Events whose payload did not deserialize.
    pub deserialize_errors: u64,
    /// `/next` replies that were not valid invocations.
    pub invalid_invocations: u64,
    /// Posts the Runtime API did not accept (non-2xx), or that failed on the network for
    /// good: given up after retrying until the unreachable timeout, cut short mid-reply,
    /// or left without a reply for that long. A post sent again after its connection
    /// broke, which the API refuses because the first had arrived, counts here too.
    pub post_failures: u64,
    /// Handlers cancelled at their invocation's deadline.
    pub deadlines_exceeded: u64,
    /// Handler polls that held the core's thread longer than the stall threshold.
    pub slow_polls: u64,
    /// `/next` requests that failed: on the network, with a status other than 200 (a 403
    /// or 500 among them, which end the run), with a reply that is not HTTP, or with one
    /// that carries no usable request id. Each is retried after a backoff unless the run
    /// is ending. A poll connection that the API closed while it sat idle is polled again
    /// at once on a fresh one and not counted.
    pub next_failures: u64,
    /// Times the watchdog saw this core's event loop stalled past the threshold.
    pub stalls: u64,
    /// Connections opened after the core's first invocation (pool growth, and
    /// reconnections after the API closed a connection).
    pub reconnects: u64,
    /// Time the core ran.
    pub elapsed: Duration,
    /// CPU time the core's thread spent in user space while serving. Not meaningful for
    /// the multi-thread tokio shim, whose one core runs on whichever worker thread polls
    /// it.
    pub user_time: Duration,
    /// CPU time the core's thread spent in the kernel while serving (same caveat as
    /// `user_time`).
    pub system_time: Duration,
}

/// What a run did, per core, from [`Control::report`] (see there for an example).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// One entry per core, by index.
    pub cores: Vec<CoreReport>,
}

impl RunReport {
    /// Invocations received by all cores.
    pub fn invocations(&self) -> u64 {
        self.cores.iter().map(|c| c.invocations).sum()
    }

    /// Errors posted by all cores.
    pub fn errors(&self) -> u64 {
        self.cores.iter().map(|c| c.errors).sum()
    }

    /// CPU time (user plus system) of all core threads.
    pub fn cpu_time(&self) -> Duration {
        self.cores.iter().map(|c| c.user_time + c.system_time).sum()
    }

    /// CPU time per invocation, if there was any: the cost of the runtime plus the
    /// handlers, on the core threads (blocking-pool and rayon threads are not counted).
    pub fn cpu_per_invocation(&self) -> Option<Duration> {
        let n = self.invocations();
        (n > 0).then(|| Duration::from_nanos((self.cpu_time().as_nanos() / u128::from(n)) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(index: usize) -> CoreReport {
        CoreReport {
            index,
            ..CoreReport::default()
        }
    }

    #[test]
    fn a_core_reported_late_still_gets_its_stalls() {
        let control = Control::new();
        control.push_report(core(0));
        // The run returns with core 1 left behind, blocked: its stalls wait for it.
        control.add_stalls(&[2, 5]);
        let stalls = |c: &Control| {
            c.report().map(|r| {
                r.cores
                    .iter()
                    .map(|c| (c.index, c.stalls))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(stalls(&control), Some(vec![(0, 2)]));
        control.push_report(core(1));
        assert_eq!(stalls(&control), Some(vec![(0, 2), (1, 5)]));
    }
}
