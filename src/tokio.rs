//! The tokio flavours (feature `tokio`), for comparison and for code already on tokio.
//!
//! * [`run_concurrent`] / [`run_concurrent_with_config`]: async, for a function already
//!   inside `#[tokio::main]`. Runs on the caller's (multi-thread) tokio runtime, like the
//!   official runtime's `run_concurrent`, with the same [`Strategy`]
//!   vocabulary. `WorkerPerSlot` (the default) is the official runtime's model: one task
//!   per slot, each with its own `/next` loop. Handlers and their futures must be `Send`
//!   (tasks move between threads). It uses this crate's own HTTP codec over
//!   `tokio::net::TcpStream`, not hyper, so that comparisons measure execution models,
//!   not HTTP stacks.
//! * [`TokioExecutor`]: tokio as the per-core [`Executor`] of the thread-per-core driver
//!   (a current-thread runtime and a `LocalSet` per pinned core), with
//!   [`run_concurrent_with_executor`](crate::run_concurrent_with_executor).
//!
//! The strategies and the invocation path are the same code as the compio runtime's:
//! only the I/O, the state flavour (atomics here, `Cell`s there) and the spawner differ.
//!
//! ```no_run
//! use lambda_tpc::{BoxError, LambdaEvent};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_tpc::Error> {
//!     lambda_tpc::tokio::run_concurrent(|event: LambdaEvent<serde_json::Value>| async move {
//!         Ok::<_, BoxError>(event.payload)
//!     })
//!     .await
//! }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::TcpStream;
use serde::de::DeserializeOwned;

use crate::config::{Config, CorePlan, Strategy};
use crate::error::Error;
use crate::executor::{Executor, Stream};
use crate::handler::Handler;
use crate::runtime::conn::Conn;
use crate::runtime::core::{Core, Io, Job, Spawner};
use crate::runtime::state::{SharedState, SyncPermit};
use crate::streaming::SendFunctionResponse;

/// Runs `handler` on the current tokio runtime with the configuration from the
/// environment. Resolves at shutdown (SIGTERM/SIGINT) or on a fatal error. See the
/// [module docs](self) for an example.
///
/// Must be awaited inside a tokio runtime with the time and I/O drivers enabled (as
/// `#[tokio::main]` builds it).
///
/// # Errors
///
/// As [`compio::run_concurrent`](crate::compio::run_concurrent).
///
/// ```no_run
/// use lambda_tpc::{BoxError, LambdaEvent, service_fn};
///
/// async fn handler(event: LambdaEvent<serde_json::Value>) -> Result<serde_json::Value, BoxError> {
///     Ok(event.payload)
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), lambda_tpc::Error> {
///     lambda_tpc::logging::init()?;
///     lambda_tpc::tokio::run_concurrent(service_fn(handler)).await
/// }
/// ```
pub async fn run_concurrent<A, H>(handler: H) -> Result<(), Error>
where
    A: DeserializeOwned + Send + 'static,
    H: SendHandler<A>,
{
    run_concurrent_with_config(Config::from_env()?, handler).await
}

/// [`run_concurrent`] with an explicit configuration; with a [`Control`](crate::Control)
/// in it, the run can also be stopped from code.
///
/// The whole process is one logical core here (tokio schedules the tasks over its worker
/// threads). It keeps all `AWS_LAMBDA_MAX_CONCURRENCY` slots or pollers (or
/// `pollers_per_core` of them) and all the semaphore permits; the core settings `cores`,
/// `driver` and `uring_flags` do not apply. The stall watchdog does not run (tokio has no
/// per-core loop to watch); slow handler polls are still detected and logged. The
/// [`RunReport`](crate::RunReport) has one entry.
///
/// # Errors
///
/// As [`compio::run_concurrent_with_config`](crate::compio::run_concurrent_with_config).
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// #[tokio::main]
/// async fn main() -> Result<(), BoxError> {
///     let sim = Simulator::builder().max_concurrency(4).events(EventSource::repeat("3", 8)).start()?;
///     let control = Control::new();
///     let config = Config::builder()
///         .runtime_api(sim.runtime_api())
///         .max_concurrency(NonZeroUsize::new(4).unwrap())
///         .control(control.clone())
///         .build_with(|_| None)?;
///     let factor = Arc::new(7u32); // shared across tasks: `Send` handlers here
///     let run = tokio::spawn(lambda_tpc::tokio::run_concurrent_with_config(config, move |event: LambdaEvent<u32>| {
///         let factor = factor.clone();
///         async move { Ok::<_, BoxError>(event.payload * *factor) }
///     }));
///     // The simulator's wait blocks: keep it off the runtime's threads.
///     let sim = tokio::task::spawn_blocking(move || {
///         assert!(sim.wait_until_done(Duration::from_secs(10)));
///         sim
///     })
///     .await?;
///     control.shutdown();
///     run.await??;
///     assert_eq!(sim.shutdown().answered_ok, 8);
///     Ok(())
/// }
/// ```
pub async fn run_concurrent_with_config<A, H>(config: Config, handler: H) -> Result<(), Error>
where
    A: DeserializeOwned + Send + 'static,
    H: SendHandler<A>,
{
    let addr = config
        .runtime_api()
        .resolve()
        .map_err(|e| Error::io("resolving the Runtime API's address", e))?;
    let control = config.control().cloned().unwrap_or_default();
    control.clear_reports();
    crate::runtime::tune_malloc(&config);
    let plan = CorePlan {
        index: 0,
        cpu: 0,
        pollers: config
            .pollers_per_core_override()
            .map_or(config.max_concurrency().get(), |n| n.get()),
        permits: match config.strategy() {
            Strategy::Semaphore { permits } => Some(permits.get()),
            _ => None,
        },
    };
    tracing::info!(
        runtime_api = %config.runtime_api(),
        strategy = %config.strategy(),
        pollers = plan.pollers,
        max_concurrency = config.max_concurrency().get(),
        "starting lambda-tpc on the current tokio runtime"
    );
    let signals = if config.handle_signals() {
        crate::runtime::install_signal_handler(&control)
    } else {
        None
    };
    let settings = crate::runtime::core_settings(&config, addr);
    let core: Arc<SharedCore<A, H>> = Arc::new(Core::new(
        TokioIo,
        plan,
        settings,
        handler,
        control.clone(),
        TokioSpawner,
        None,
    ));
    // The poll loops and handlers are tasks of their own: if this future is dropped
    // (a `select!`, a timeout, an abort), they are told to stop, and the signal handler
    // goes. A loop parked on `/next` stays parked (abandoning a parked poll loses the
    // invocation the API routes to it): it serves that invocation, then ends, even after
    // this function has returned, for as long as the caller's runtime runs.
    let woken = Arc::clone(&core);
    let stop_on_drop = StopOnDrop {
        control: control.clone(),
        signals,
        wake: Box::new(move || woken.wake_for_shutdown()),
    };
    let report = Core::run(core).await;
    control.push_report(report);
    drop(stop_on_drop);
    crate::runtime::run_shutdown_hook(&config);
    match control.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Shuts the run down when dropped: at the end of [`run_concurrent_with_config`], or with
/// its future if that is dropped first.
struct StopOnDrop {
    control: crate::Control,
    signals: Option<crate::runtime::SignalGuard>,
    /// Wakes the core's ticker and slots waiting on its signals, so that those tasks see
    /// the shutdown even though `Core::run` did not get to do it (loops parked on `/next`
    /// see it when their invocation comes).
    wake: Box<dyn Fn() + Send>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.control.shutdown();
        (self.wake)();
        drop(self.signals.take());
    }
}

/// A handler the multi-thread shim can run: it and its futures, results and errors can
/// cross threads (tokio moves tasks between its workers). Implemented for every such
/// [`Handler`]; a closure returning a `Send` future of `Result<R, E>` with `R` and `E`
/// `Send` qualifies.
pub trait SendHandler<A>:
    Handler<A, Future: Send, Response: SendFunctionResponse, Error: Send> + Send + Sync
{
}

impl<A, H> SendHandler<A> for H
where
    H: Handler<A> + Send + Sync,
    H::Future: Send,
    H::Response: SendFunctionResponse,
    H::Error: Send,
{
}

/// The I/O of the multi-thread shim: tokio's, on whatever runtime is current.
#[derive(Clone, Copy)]
struct TokioIo;

impl Io for TokioIo {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        connect(addr).await
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        ::tokio::time::sleep(duration)
    }

    fn driver_name(&self) -> &'static str {
        "tokio"
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Spawns the shim's tasks with `tokio::spawn`. This is where their `Send`-ness is
/// checked: the bounds of this impl are what make it hold.
struct TokioSpawner;

type SharedCore<A, H> = Core<TokioIo, A, H, SharedState<Conn<TcpStream>>, TokioSpawner>;

impl<A, H> Spawner<Arc<SharedCore<A, H>>, Job<A, SyncPermit>> for TokioSpawner
where
    A: DeserializeOwned + Send + 'static,
    H: SendHandler<A>,
{
    fn spawn_loop(&self, core: Arc<SharedCore<A, H>>, slot: usize) {
        ::tokio::spawn(SharedCore::supervise(core, slot));
    }

    fn spawn_invocation(&self, core: Arc<SharedCore<A, H>>, job: Job<A, SyncPermit>) {
        ::tokio::spawn(async move { core.process(job).await });
    }

    fn spawn_ticker(&self, core: Arc<SharedCore<A, H>>) {
        ::tokio::spawn(async move { core.ticker().await });
    }
}

/// Tokio as the per-core executor of the thread-per-core driver: each pinned core gets
/// a current-thread tokio runtime and a `LocalSet`, so tasks need not be `Send`.
///
/// Use it with [`run_concurrent_with_executor`](crate::run_concurrent_with_executor)
/// (where a complete run against the simulator is shown). The `driver` and
/// `uring_flags` settings do not apply.
///
/// ```no_run
/// use lambda_tpc::{BoxError, Config, LambdaEvent};
/// use lambda_tpc::tokio::TokioExecutor;
///
/// # fn main() -> Result<(), lambda_tpc::Error> {
/// lambda_tpc::run_concurrent_with_executor(
///     Config::from_env()?,
///     |event: LambdaEvent<serde_json::Value>| async move { Ok::<_, BoxError>(event.payload) },
///     TokioExecutor,
/// )
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioExecutor;

impl Executor for TokioExecutor {
    type Stream = TcpStream;

    fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = ::tokio::task::LocalSet::new();
        Ok(local.block_on(&rt, future))
    }

    fn driver_name(&self) -> &'static str {
        "tokio"
    }

    fn spawn<F: Future<Output = ()> + 'static>(&self, future: F) {
        // Dropping a tokio JoinHandle detaches the task.
        drop(::tokio::task::spawn_local(future));
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        connect(addr).await
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        ::tokio::time::sleep(duration)
    }
}

impl Stream for TcpStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let res = self.read_buf(&mut buf).await;
        (res, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = AsyncWriteExt::write_all(self, &buf).await;
        (res, buf)
    }

    fn set_read_low_water(&mut self, bytes: usize) -> io::Result<()> {
        crate::executor::set_rcvlowat(std::os::fd::AsRawFd::as_raw_fd(self), bytes)
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        crate::executor::recv_now(std::os::fd::AsRawFd::as_raw_fd(self), buf)
    }

    fn tcp_socket(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}
