//! The thread-per-core driver, generic over the [`Executor`]: one pinned OS thread per
//! core, each running its own executor instance and its own [`core::Core`].
//!
//! Start-up is a two-phase handshake over crossbeam channels (start-up only, never the
//! invocation path): every core builds its handler first, and only when all succeeded do
//! any of them start polling `/next`. If one fails, `/runtime/init/error` is posted once
//! and the run returns an error, before the Runtime API considers init complete.

pub(crate) mod conn;
pub(crate) mod core;
pub(crate) mod malloc;
pub(crate) mod state;
pub(crate) mod watchdog;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, bounded, unbounded};
use serde::de::DeserializeOwned;

use std::rc::Rc;

use self::conn::Conn;
use self::core::{Core, CoreSettings, Job, Spawner, panic_message};
use self::state::{LocalPermit, LocalState};
use crate::api::{self, Diagnostic, RuntimeApi};
use crate::config::{Config, CorePlan};
use crate::error::Error;
use crate::executor::Executor;
use crate::handler::Handler;
use crate::http::{
    BodyDecoder, DEFAULT_MAX_BODY_BYTES, Decoded, MAX_HEADERS, Status, parse_response_head,
};

/// Spawns a thread-per-core core's tasks on its executor (no `Send` needed: they stay on
/// the core's thread).
pub(crate) struct LocalSpawner;

/// A core of the thread-per-core driver.
type LocalCore<E, A, H> = Core<E, A, H, LocalState<Conn<<E as Executor>::Stream>>, LocalSpawner>;

impl<E, A, H> Spawner<Rc<LocalCore<E, A, H>>, Job<A, LocalPermit>> for LocalSpawner
where
    E: Executor,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
{
    fn spawn_loop(&self, core: Rc<LocalCore<E, A, H>>, slot: usize) {
        let exec = core.io.clone();
        exec.spawn(LocalCore::supervise(core, slot));
    }

    fn spawn_invocation(&self, core: Rc<LocalCore<E, A, H>>, job: Job<A, LocalPermit>) {
        let exec = core.io.clone();
        exec.spawn(async move { core.process(job).await });
    }

    fn spawn_ticker(&self, core: Rc<LocalCore<E, A, H>>) {
        let exec = core.io.clone();
        exec.spawn(async move { core.ticker().await });
    }
}

/// Settings every core copies at start-up.
pub(crate) fn core_settings(config: &Config, addr: SocketAddr) -> CoreSettings {
    CoreSettings {
        api: config.runtime_api().clone(),
        addr,
        strategy: config.strategy(),
        max_event_bytes: config.max_event_bytes(),
        max_response_bytes: config.max_response_bytes(),
        pipelining: config.pipelining(),
        shutdown_grace: config.shutdown_grace(),
        enforce_deadline: config.enforce_deadline(),
        slow_poll: config.stall_threshold(),
        unreachable_timeout: config.unreachable_timeout(),
        deferred_post_replies: config.deferred_post_replies(),
    }
}

/// Runs that asked SIGTERM/SIGINT to shut them down (usually one), by registration id.
static SIGNAL_RUNS: std::sync::Mutex<Vec<(u64, crate::Control)>> =
    std::sync::Mutex::new(Vec::new());

/// Whether the process's signal thread is running (set once, on the first run that asks).
static SIGNAL_THREAD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// A run's registration with the signal thread; dropping it unregisters the run.
pub(crate) struct SignalGuard(u64);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        signal_runs().retain(|(id, _)| *id != self.0);
    }
}

fn signal_runs() -> std::sync::MutexGuard<'static, Vec<(u64, crate::Control)>> {
    crate::control::lock(&SIGNAL_RUNS)
}

/// Makes SIGTERM/SIGINT start a graceful shutdown of this run, until the returned guard
/// is dropped.
///
/// One thread per process receives the signals (signal-hook's handlers, once installed,
/// stay for the life of the process) and shuts down every registered run. With no run
/// registered (before the first, after the last) it gives the signal its default action,
/// ending the process: a signal after the run has returned is not swallowed.
pub(crate) fn install_signal_handler(control: &crate::Control) -> Option<SignalGuard> {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Registered before the handlers are installed: a signal in between must find this run
    // (not the default action, which would end the process under it).
    signal_runs().push((id, control.clone()));
    let guard = SignalGuard(id);
    SIGNAL_THREAD
        .get_or_init(start_signal_thread)
        .then_some(guard)
}

/// Installs the handlers and starts the thread; false if either failed (logged).
fn start_signal_thread() -> bool {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not install SIGTERM/SIGINT handlers");
            return false;
        }
    };
    let spawned = thread::Builder::new()
        .name("lambda-tpc-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let runs: Vec<crate::Control> =
                    signal_runs().iter().map(|(_, c)| c.clone()).collect();
                if runs.is_empty() {
                    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
                        tracing::warn!(signal, error = %e, "could not pass a signal on to its default action");
                    }
                    continue;
                }
                tracing::info!(signal, "signal received; shutting down gracefully");
                for control in runs {
                    control.shutdown();
                }
            }
        });
    match spawned {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the signal thread");
            false
        }
    }
}

/// Applies [`malloc::tune`] if the configuration asks for it, and says what it did.
pub(crate) fn tune_malloc(config: &Config) {
    if !config.tune_malloc() {
        return;
    }
    let tuned = malloc::tune();
    tracing::debug!(
        ?tuned,
        mmap_threshold = malloc::MMAP_THRESHOLD,
        trim_threshold = malloc::TRIM_THRESHOLD,
        "malloc thresholds"
    );
}

/// Runs the shutdown hook, if any, containing a panic.
pub(crate) fn run_shutdown_hook(config: &Config) {
    if let Some(hook) = config.on_shutdown()
        && let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| hook()))
    {
        tracing::error!(panic = panic_message(&*p), "the shutdown hook panicked");
    }
}

/// How a core thread's start-up went.
enum InitOutcome {
    Ready,
    HandlerFailed(Diagnostic),
    RuntimeFailed(std::io::Error),
}

/// Runs the runtime: one thread per planned core, each building its handler with its
/// `maker` (called on the core's thread, inside its executor, so it may create `!Send`
/// state), then serving until shutdown or a fatal error.
pub(crate) fn run<E, A, H, Mk>(
    config: Config,
    exec: E,
    mut makers: impl FnMut(&CorePlan) -> Mk,
) -> Result<(), Error>
where
    E: Executor,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
    Mk: FnOnce(&CorePlan) -> Result<H, Diagnostic> + Send + 'static,
{
    let plan = config.plan();
    if plan.is_empty() {
        return Err(Error::config(None, "no core to run on"));
    }
    let addr = config
        .runtime_api()
        .resolve()
        .map_err(|e| Error::io("resolving the Runtime API's address", e))?;
    let control = config.control().cloned().unwrap_or_default();
    control.clear_reports();
    let settings = core_settings(&config, addr);
    tune_malloc(&config);
    let watchdog = watchdog::Watchdog::new(plan.len(), config.stall_threshold());
    tracing::info!(
        runtime_api = %config.runtime_api(),
        cores = plan.len(),
        cpus = ?plan.iter().map(|p| p.cpu).collect::<Vec<_>>(),
        strategy = %config.strategy(),
        max_concurrency = config.max_concurrency().get(),
        pipelining = config.pipelining(),
        "starting lambda-tpc"
    );
    // The API hands out at most max-concurrency invocations at once, and one core may get
    // them all: a semaphore whose every core has that many permits never makes a handler
    // wait, which is probably not what was meant.
    let max = config.max_concurrency().get();
    if let crate::Strategy::Semaphore { permits } = config.strategy()
        && semaphore_never_binds(&plan, max)
    {
        tracing::warn!(
            permits_total = permits.get(),
            max_concurrency = max,
            "semaphore permits per core are not below the maximum concurrency, so they never \
             limit anything (use unbounded, or fewer permits)"
        );
    }

    let (init_tx, init_rx) = unbounded::<(usize, InitOutcome)>();
    let (exit_tx, exit_rx) = unbounded::<usize>();
    let main_thread = thread::current();
    let mut threads = Vec::with_capacity(plan.len());
    let mut go = Vec::with_capacity(plan.len());
    for p in &plan {
        let p = *p;
        let maker = makers(&p);
        let (go_tx, go_rx) = bounded::<bool>(1);
        go.push(go_tx);
        let exec = exec.clone();
        let settings = settings.clone();
        let control = control.clone();
        let init_tx = init_tx.clone();
        let heartbeat = watchdog.heartbeat(p.index);
        let exited = CoreExited {
            index: p.index,
            tx: exit_tx.clone(),
            main: main_thread.clone(),
            control: control.clone(),
        };
        let spawned = thread::Builder::new()
            .name(format!("lambda-tpc-{}", p.index))
            .spawn(move || {
                // Tells the run this core is gone however the thread ends (panics too).
                let _exited = exited;
                if !core_affinity::set_for_current(core_affinity::CoreId { id: p.cpu }) {
                    tracing::warn!(
                        core = p.index,
                        cpu = p.cpu,
                        "could not pin the thread to its CPU"
                    );
                }
                let exec2 = exec.clone();
                let report_tx = init_tx.clone();
                let core_control = control.clone();
                let result = exec.block_on(async move {
                    let handler = match std::panic::catch_unwind(AssertUnwindSafe(|| maker(&p))) {
                        Ok(Ok(h)) => h,
                        Ok(Err(d)) => {
                            let _ = report_tx.send((p.index, InitOutcome::HandlerFailed(d)));
                            return None;
                        }
                        Err(panic) => {
                            let d = Diagnostic::new("Runtime.InitError", panic_message(&*panic));
                            let _ = report_tx.send((p.index, InitOutcome::HandlerFailed(d)));
                            return None;
                        }
                    };
                    let _ = report_tx.send((p.index, InitOutcome::Ready));
                    // Blocking here is fine: nothing else runs on this core yet.
                    if !go_rx.recv().unwrap_or(false) {
                        return None;
                    }
                    let core: Rc<LocalCore<E, A, H>> = Rc::new(Core::new(
                        exec2,
                        p,
                        settings,
                        handler,
                        core_control,
                        LocalSpawner,
                        heartbeat,
                    ));
                    Some(Core::run(core).await)
                });
                match result {
                    Ok(Some(report)) => control.push_report(report),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = init_tx.send((p.index, InitOutcome::RuntimeFailed(e)));
                    }
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                for g in &go {
                    let _ = g.send(false);
                }
                let message = format!("could not spawn a core thread: {e}");
                tracing::error!(error = %e, "could not spawn a core thread");
                post_init_error(
                    config.runtime_api(),
                    addr,
                    &Diagnostic::new(ERROR_TYPE_STARTUP, message.clone()),
                );
                return Err(Error::startup(message));
            }
        }
    }
    drop(init_tx);

    // Phase 1: every core reports whether it is ready.
    let mut first_failure: Option<(usize, InitOutcome)> = None;
    let mut pending = plan.len();
    // By core index (the order the threads were spawned in).
    let mut reported = vec![false; plan.len()];
    while pending > 0 {
        match init_rx.recv_timeout(Duration::from_millis(100)) {
            Ok((index, outcome)) => {
                pending -= 1;
                if let Some(r) = reported.get_mut(index) {
                    *r = true;
                }
                if !matches!(outcome, InitOutcome::Ready) && first_failure.is_none() {
                    first_failure = Some((index, outcome));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // A thread that died without reporting would otherwise hang start-up, also
                // when another core has already failed (its report never comes). A thread
                // reports before it ends, so an empty channel means the report is not on
                // its way.
                let dead = threads
                    .iter()
                    .zip(&reported)
                    .any(|(t, &reported)| t.is_finished() && !reported);
                if dead && init_rx.is_empty() {
                    first_failure.get_or_insert((
                        usize::MAX,
                        InitOutcome::RuntimeFailed(std::io::Error::other(
                            "a core thread exited during start-up",
                        )),
                    ));
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Every sender is gone: the cores still pending died without reporting
                // (a panic in the executor's start, for one). That is a failed start, not
                // a successful one with fewer cores.
                if pending > 0 && first_failure.is_none() {
                    first_failure = Some((
                        usize::MAX,
                        InitOutcome::RuntimeFailed(std::io::Error::other(
                            "a core thread exited during start-up",
                        )),
                    ));
                }
                break;
            }
        }
    }

    // Phase 2: go, or abort everything.
    let start = first_failure.is_none();
    let signals = if start && config.handle_signals() {
        install_signal_handler(&control)
    } else {
        None
    };
    let watchdog = if start {
        watchdog.start(&control)
    } else {
        None
    };
    for g in &go {
        let _ = g.send(start);
    }
    let failure = first_failure.map(|(index, outcome)| match outcome {
        InitOutcome::HandlerFailed(d) => {
            tracing::error!(core = index, error_type = %d.error_type, error = %d.error_message, "handler initialisation failed");
            post_init_error(config.runtime_api(), addr, &d);
            Error::init(format!("{}: {}", d.error_type, d.error_message))
        }
        InitOutcome::RuntimeFailed(e) => {
            tracing::error!(core = index, error = %e, "could not start the core's runtime");
            // Reported like a failed handler initialisation, so that the reason shows
            // where Lambda shows init errors, not only in this process's log.
            let d = Diagnostic::new(
                ERROR_TYPE_STARTUP,
                format!("the runtime could not start a core: {e}"),
            );
            post_init_error(config.runtime_api(), addr, &d);
            Error::startup(format!("core {index}: {e}"))
        }
        InitOutcome::Ready => Error::startup("unreachable start-up state"),
    });

    drop(exit_tx);
    let exited = wait_for_cores(&control, &exit_rx, threads.len(), config.shutdown_grace());
    for (i, t) in threads.into_iter().enumerate() {
        // A core that has not said it is done is blocked in handler code past the grace
        // period: it is left behind (the process exits without it) rather than waited
        // for. One that has said so is past its last line, so joining it is immediate.
        if !exited.get(i).copied().unwrap_or(false) {
            control.record_error(Error::core_failed(
                i,
                "was still blocked in handler code when the shutdown grace period ended",
            ));
            continue;
        }
        if let Err(panic) = t.join() {
            tracing::error!(
                panic = panic_message(&*panic),
                "a core thread panicked (a bug in lambda-tpc)"
            );
        }
    }
    drop(signals);
    if let Some(w) = watchdog {
        control.add_stalls(&w.stop());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    run_shutdown_hook(&config);
    match control.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Error type posted to `/runtime/init/error` when a core's runtime could not start (its
/// thread or its I/O driver).
const ERROR_TYPE_STARTUP: &str = "Runtime.StartupError";

/// How long after the grace period a core may take to wind down before the run stops
/// waiting for it.
const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// Sent (and the run's thread unparked) when a core's thread ends, however it ends.
struct CoreExited {
    index: usize,
    tx: crossbeam_channel::Sender<usize>,
    main: thread::Thread,
    /// Where a panic that ends the thread is recorded, for the run to return.
    control: crate::Control,
}

impl Drop for CoreExited {
    fn drop(&mut self) {
        if thread::panicking() {
            self.control.record_error(Error::core_failed(
                self.index,
                "stopped serving: its thread panicked (see the log); the other cores served on",
            ));
        }
        let _ = self.tx.send(self.index);
        self.main.unpark();
    }
}

/// Unparks a thread: the waker with which the run's thread waits for shutdown.
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits until every core has exited, or, once shutdown has begun, until the grace
/// period and [`EXIT_MARGIN`] have passed: a core whose handler blocks its thread never
/// runs its grace timer, and must not hold the process forever. Sleeps without a timer
/// until shutdown begins (an idle runtime wakes nobody).
/// Returns which cores said they are done.
fn wait_for_cores(
    control: &crate::Control,
    exits: &crossbeam_channel::Receiver<usize>,
    cores: usize,
    grace: Duration,
) -> Vec<bool> {
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut stopped = std::pin::pin!(control.stopped());
    let mut exited = vec![false; cores];
    let mut shutdown_at: Option<std::time::Instant> = None;
    let limit = grace.saturating_add(EXIT_MARGIN);
    loop {
        for i in exits.try_iter() {
            if let Some(e) = exited.get_mut(i) {
                *e = true;
            }
        }
        if exited.iter().all(|&e| e) {
            return exited;
        }
        if shutdown_at.is_none() && stopped.as_mut().poll(&mut cx).is_ready() {
            shutdown_at = Some(std::time::Instant::now());
        }
        match shutdown_at {
            None => thread::park(),
            Some(t0) => {
                let waited = t0.elapsed();
                if waited >= limit {
                    let stuck: Vec<usize> = (0..cores).filter(|&i| !exited[i]).collect();
                    tracing::error!(
                        cores = ?stuck,
                        waited_ms = waited.as_millis() as u64,
                        "cores did not stop within the shutdown grace period (a handler is blocking its thread); returning without them"
                    );
                    return exited;
                }
                thread::park_timeout(limit - waited);
            }
        }
    }
}

/// Posts `/runtime/init/error` with a blocking socket (start-up has no runtime to spare,
/// and it happens once). Failures are logged: the run returns the init error either way.
fn post_init_error(api: &RuntimeApi, addr: SocketAddr, d: &Diagnostic) {
    let mut request = Vec::new();
    if let Err(e) = api::encode_init_error(&mut request, api, d) {
        tracing::error!(error = %e, "could not encode /init/error");
        return;
    }
    let result = (|| -> std::io::Result<u16> {
        let timeout = Duration::from_secs(5);
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(&request)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a reply",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse_response_head(&buf, &mut headers, DEFAULT_MAX_BODY_BYTES) {
                Ok(Status::Complete(head, len)) => {
                    let mut body = BodyDecoder::new(head.framing, DEFAULT_MAX_BODY_BYTES);
                    // The status is all we need; drain what is there so the server sees a
                    // clean close.
                    let _ = matches!(
                        body.decode(&buf[len..]),
                        Ok(Status::Complete(Decoded::Done, _))
                    );
                    return Ok(head.status);
                }
                Ok(Status::Partial) => continue,
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
    })();
    match result {
        Ok(status @ 200..=299) => tracing::info!(status, "posted /runtime/init/error"),
        Ok(status) => tracing::warn!(status, "Runtime API did not accept /runtime/init/error"),
        Err(e) => tracing::warn!(error = %e, "could not post /runtime/init/error"),
    }
}

/// Whether every core's semaphore has at least `max_concurrency` permits (the start-up
/// warning in [`run`]); false without a semaphore.
fn semaphore_never_binds(plan: &[crate::CorePlan], max_concurrency: usize) -> bool {
    !plan.is_empty()
        && plan
            .iter()
            .all(|p| p.permits.is_some_and(|n| n >= max_concurrency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_semaphore_that_never_binds_is_recognised() {
        let plan = |permits: &[Option<usize>]| -> Vec<crate::CorePlan> {
            permits
                .iter()
                .enumerate()
                .map(|(index, &permits)| crate::CorePlan {
                    index,
                    cpu: index,
                    pollers: 1,
                    permits,
                })
                .collect()
        };
        // semaphore:4 with max concurrency 1 (one core used).
        assert!(semaphore_never_binds(&plan(&[Some(4)]), 1));
        assert!(semaphore_never_binds(&plan(&[Some(64)]), 64));
        // semaphore:64 over two cores, max 64: one core may get all 64, so 32 binds.
        assert!(!semaphore_never_binds(&plan(&[Some(32), Some(32)]), 64));
        assert!(!semaphore_never_binds(&plan(&[Some(3)]), 64));
        assert!(!semaphore_never_binds(&plan(&[None]), 1));
        assert!(!semaphore_never_binds(&[], 1));
    }
}
