//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sim_client;

use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use lambda_tpc::sim::{ErrorRecord, Ledger, SimulatorBuilder};
use lambda_tpc::{Config, ConfigBuilder, Control, RunReport};

/// Generous bound for a test run to finish; a healthy run takes well under a second.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What one runtime run against the simulator produced.
pub struct Outcome {
    pub ledger: Ledger,
    pub errors: Vec<ErrorRecord>,
    pub report: Option<RunReport>,
    pub result: Result<(), lambda_tpc::Error>,
    /// Every event of the simulator's finite source was settled.
    pub done: bool,
    /// From `Control::shutdown` to the run's return: the grace period when an invocation
    /// is (or is wrongly believed to be) still in flight, near zero otherwise.
    pub shutdown_took: Duration,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A log writer (`MakeWriter`) that appends to a shared buffer, to read what was logged.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).expect("utf-8 logs")
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

/// Installs the global subscriber for `format` (an `AWS_LAMBDA_LOG_FORMAT` value) at INFO,
/// writing to a buffer; logs one line outside any invocation; then runs `n` invocations
/// on one core, up to 64 at once (unbounded strategy, so they interleave on one thread),
/// whose handler logs three lines across two awaits, each with field `expected` set to
/// its own request id: two from the handler, the third from the body of the streamed
/// response it returns (polled by the runtime after the handler returned). Returns the
/// outcome and everything logged. Once per test binary: the subscriber is global.
pub fn run_logging_handler(format: &str, n: u64) -> (Outcome, String) {
    use bytes::Bytes;
    use lambda_tpc::logging::LogSettings;
    use lambda_tpc::sim::{EventSource, Simulator};
    use lambda_tpc::{BoxError, Cores, LambdaEvent, Strategy};

    let buffer = LogBuffer::default();
    let settings = LogSettings::from_env_with(|k| match k {
        "AWS_LAMBDA_LOG_FORMAT" => Some(format.to_owned()),
        "AWS_LAMBDA_LOG_LEVEL" => Some("INFO".into()),
        _ => None,
    })
    .expect("settings");
    lambda_tpc::logging::init_with_writer(settings, buffer.clone()).expect("init");
    tracing::info!(phase = "init", "outside any invocation");
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(64)
            .tenant_id(Some("tenant-42".into()))
            .events(EventSource::from_fn(n, |i| Bytes::from(i.to_string()))),
        Config::builder()
            .cores(Cores::Count(nz(1)))
            .strategy(Strategy::Unbounded),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<u64>| async move {
                    let id = ev.context.request_id().to_owned();
                    tracing::info!(expected = %id, step = 1, "start");
                    compio::time::sleep(Duration::from_millis(ev.payload % 7)).await;
                    tracing::info!(expected = %id, step = 2, "after the await");
                    // Off the core, on the blocking pool: still this invocation's line.
                    let blocking = id.clone();
                    lambda_tpc::compio::spawn_blocking(move || {
                        tracing::info!(expected = %blocking, step = 4, "on the blocking pool");
                    })
                    .await?;
                    let n = ev.payload;
                    let body = futures_util::stream::once(async move {
                        compio::time::sleep(Duration::from_millis(n % 3)).await;
                        tracing::warn!(expected = %id, step = 3, "done");
                        Ok::<_, BoxError>(n.to_string())
                    });
                    Ok::<_, BoxError>(lambda_tpc::streaming::StreamResponse::new(body))
                },
            )
        },
    );
    (o, buffer.text())
}

pub fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

/// Starts `sim`, builds a config for it from `config` (max concurrency = the simulator's,
/// environment ignored), runs `run` on a thread with that config, waits until the
/// simulator's finite event source is fully answered, shuts the runtime down and returns
/// everything observed.
pub fn run_against_sim(
    sim: SimulatorBuilder,
    config: ConfigBuilder,
    run: impl FnOnce(Config) -> Result<(), lambda_tpc::Error> + Send + 'static,
) -> Outcome {
    let sim = sim.start().expect("simulator starts");
    run_against_started_sim(sim, config, run, RUN_TIMEOUT)
}

/// Polls `f` until it is true or [`RUN_TIMEOUT`] passes.
pub fn wait(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        // Not a spin: on two cores that would starve the runtime under test.
        thread::sleep(Duration::from_millis(1));
    }
    false
}

/// The executors every behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// Thread-per-core on compio (the default runtime), io_uring.
    Compio,
    /// The same on compio's epoll driver: what a container that refuses io_uring gets.
    CompioEpoll,
    /// Thread-per-core on tokio current-thread runtimes.
    TokioPerCore,
    /// The async shim on a multi-thread tokio runtime.
    TokioMultiThread,
}

pub const EXECS: [Exec; 4] = [
    Exec::Compio,
    Exec::CompioEpoll,
    Exec::TokioPerCore,
    Exec::TokioMultiThread,
];

impl Exec {
    /// Whether handlers run on compio (and may use its timers and `!Send` futures).
    pub fn is_compio(self) -> bool {
        matches!(self, Exec::Compio | Exec::CompioEpoll)
    }
}

/// Runs a compio-flavoured `handler` (its futures may be `!Send` and use compio's
/// timers) with `config` on `exec`, one of the compio executors (blocking until shutdown).
pub fn run_compio_on<A, H>(
    exec: Exec,
    config: lambda_tpc::Config,
    handler: H,
) -> Result<(), lambda_tpc::Error>
where
    A: serde::de::DeserializeOwned + 'static,
    H: lambda_tpc::Handler<A> + Clone + Send,
{
    assert!(exec.is_compio(), "{exec:?} is not a compio executor");
    let driver = if exec == Exec::CompioEpoll {
        lambda_tpc::Driver::Epoll
    } else {
        config.driver()
    };
    let executor = lambda_tpc::compio::CompioExecutor::new(driver, config.uring_flags());
    lambda_tpc::run_concurrent_with_executor(config, handler, executor)
}

/// Runs `handler` with `config` on `exec` (blocking until shutdown).
pub fn run_on<A, H>(
    exec: Exec,
    config: lambda_tpc::Config,
    handler: H,
) -> Result<(), lambda_tpc::Error>
where
    A: serde::de::DeserializeOwned + Send + 'static,
    H: lambda_tpc::tokio::SendHandler<A> + Clone,
{
    match exec {
        Exec::Compio | Exec::CompioEpoll => run_compio_on(exec, config, handler),
        Exec::TokioPerCore => lambda_tpc::run_concurrent_with_executor(
            config,
            handler,
            lambda_tpc::tokio::TokioExecutor,
        ),
        Exec::TokioMultiThread => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(lambda_tpc::tokio::run_concurrent_with_config(
                config, handler,
            ))
        }
    }
}

/// [`run_against_sim`] for a simulator the caller already started (to ask it for request
/// ids first), with its own bound. `done` says whether every event was settled (not merely
/// that the runtime returned); a run still unsettled after `timeout` is shut down.
pub fn run_against_started_sim(
    sim: lambda_tpc::sim::Simulator,
    config: ConfigBuilder,
    run: impl FnOnce(Config) -> Result<(), lambda_tpc::Error> + Send + 'static,
    timeout: Duration,
) -> Outcome {
    let api = sim.runtime_api().to_owned();
    run_against_started_sim_via(sim, &api, config, run, timeout)
}

/// [`run_against_started_sim`] with the runtime pointed at `api` (something in front of the
/// simulator, such as a relay) instead of at the simulator itself.
pub fn run_against_started_sim_via(
    sim: lambda_tpc::sim::Simulator,
    api: &str,
    config: ConfigBuilder,
    run: impl FnOnce(Config) -> Result<(), lambda_tpc::Error> + Send + 'static,
    timeout: Duration,
) -> Outcome {
    init_tracing();
    let control = Control::new();
    let config = config
        .runtime_api(api)
        .max_concurrency(nz(sim.max_concurrency()))
        .control(control.clone())
        .build_with(|_| None)
        .expect("valid config");
    let runtime = thread::spawn(move || run(config));
    let deadline = std::time::Instant::now() + timeout;
    let mut done = false;
    while std::time::Instant::now() < deadline {
        if sim.wait_until_done(Duration::from_millis(20)) {
            done = true;
            break;
        }
        if runtime.is_finished() {
            break;
        }
    }
    let stopping = std::time::Instant::now();
    control.shutdown();
    let result = runtime.join().expect("runtime thread does not panic");
    let shutdown_took = stopping.elapsed();
    let errors = sim.errors();
    let ledger = sim.shutdown();
    Outcome {
        ledger,
        errors,
        report: control.report(),
        result,
        done,
        shutdown_took,
    }
}
