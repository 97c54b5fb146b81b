//! The thread-per-core runtime on compio: one pinned thread per core, each with its own
//! compio runtime (io_uring, or epoll where io_uring is refused).
//!
//! ```no_run
//! use lambda_tpc::{BoxError, LambdaEvent};
//! use serde_json::Value;
//!
//! fn main() -> Result<(), lambda_tpc::Error> {
//!     lambda_tpc::compio::run_concurrent(|event: LambdaEvent<Value>| async move {
//!         Ok::<_, BoxError>(event.payload)
//!     })
//! }
//! ```
//!
//! Blocking work inside a handler stalls every invocation on its core. Move it off the
//! core with [`spawn_blocking`]:
//!
//! ```no_run
//! use lambda_tpc::{BoxError, LambdaEvent};
//!
//! # fn main() -> Result<(), lambda_tpc::Error> {
//! lambda_tpc::compio::run_concurrent(|event: LambdaEvent<u64>| async move {
//!     let n = event.payload;
//!     // Runs on compio's blocking thread pool; this core keeps serving meanwhile.
//!     let sum = lambda_tpc::compio::spawn_blocking(move || (0..n).map(|i| i * i).sum::<u64>()).await?;
//!     Ok::<_, BoxError>(sum)
//! })
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use compio::BufResult;
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use serde::de::DeserializeOwned;

use crate::api::Diagnostic;
use crate::config::{Config, CorePlan, Driver, UringFlags};
use crate::error::Error;
use crate::executor::{Executor, Stream};
use crate::handler::Handler;
use crate::runtime::state::LocalSemaphore;

/// Runs `handler` on every core, with the configuration from the environment
/// ([`Config::from_env`]). Blocks until shutdown or a fatal error.
///
/// `handler` is cloned once per core. Its futures need not be `Send`: each runs on the
/// core that received the invocation. See the [module docs](self) for examples.
///
/// Shutdown is SIGTERM or SIGINT (then the function returns `Ok(())` once in-flight
/// invocations are answered, or the grace period is over).
///
/// # Errors
///
/// An invalid configuration, a Runtime API host that does not resolve, a core that could
/// not start, or a container error from the Runtime API; see [`Error`] for the kinds.
///
/// ```no_run
/// use lambda_tpc::{Diagnostic, LambdaEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Order { id: u64, quantity: u32 }
///
/// #[derive(Serialize)]
/// struct Receipt { id: u64, total_cents: u64 }
///
/// enum OrderError { Empty }
///
/// impl From<OrderError> for Diagnostic {
///     fn from(e: OrderError) -> Diagnostic {
///         match e {
///             OrderError::Empty => Diagnostic::new("Function.EmptyOrder", "quantity is zero"),
///         }
///     }
/// }
///
/// async fn handler(event: LambdaEvent<Order>) -> Result<Receipt, OrderError> {
///     let order = event.payload;
///     if order.quantity == 0 {
///         return Err(OrderError::Empty); // posted to /error as Function.EmptyOrder
///     }
///     Ok(Receipt { id: order.id, total_cents: u64::from(order.quantity) * 250 })
/// }
///
/// fn main() -> Result<(), lambda_tpc::Error> {
///     lambda_tpc::compio::run_concurrent(handler)
/// }
/// ```
pub fn run_concurrent<A, H>(handler: H) -> Result<(), Error>
where
    A: DeserializeOwned + 'static,
    H: Handler<A> + Clone + Send,
{
    run_concurrent_with_config(Config::from_env()?, handler)
}

/// [`run_concurrent`] with an explicit configuration.
///
/// Also the way to run a function against the simulator (`lambda_tpc::sim`) in a test: see
/// the [crate docs](crate#running-a-function-locally).
///
/// # Errors
///
/// As [`run_concurrent`], less the configuration errors (the configuration is already
/// built).
///
/// ```no_run
/// use std::time::Duration;
/// use lambda_tpc::{BoxError, Config, LambdaEvent, Strategy};
///
/// fn main() -> Result<(), lambda_tpc::Error> {
///     let config = Config::builder()
///         .strategy(Strategy::Unbounded)
///         .shutdown_grace(Duration::from_secs(1))
///         .build()?; // the rest from the environment
///     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<serde_json::Value>| async move {
///         Ok::<_, BoxError>(event.payload)
///     })
/// }
/// ```
pub fn run_concurrent_with_config<A, H>(config: Config, handler: H) -> Result<(), Error>
where
    A: DeserializeOwned + 'static,
    H: Handler<A> + Clone + Send,
{
    let exec = CompioExecutor::from_config(&config);
    crate::run_concurrent_with_executor(config, handler, exec)
}

/// Runs a handler built separately on each core by `factory`, called on the core's own
/// thread: per-core state can be `Rc`/`RefCell`, shared by that core's invocations and
/// by nothing else.
///
/// If `factory` fails (or panics) on any core, `/runtime/init/error` is posted and the
/// run returns an error without polling for invocations.
///
/// ```
/// use std::cell::Cell;
/// use std::num::NonZeroUsize;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder().max_concurrency(2).events(EventSource::repeat("{}", 6)).start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(2).unwrap())
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::compio::run_per_core(config, |core| {
///         let served = Rc::new(Cell::new(0u64)); // this core's own counter
///         let index = core.index;
///         Ok::<_, BoxError>(move |_event: LambdaEvent<serde_json::Value>| {
///             let served = served.clone();
///             async move {
///                 served.set(served.get() + 1);
///                 Ok::<_, BoxError>(format!("core {index} served {}", served.get()))
///             }
///         })
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
/// assert_eq!(sim.shutdown().answered_ok, 6);
/// # Ok(())
/// # }
/// ```
///
/// A factory that fails stops the start-up; the Runtime API is told why:
///
/// ```
/// use std::num::NonZeroUsize;
/// use lambda_tpc::sim::Simulator;
/// use lambda_tpc::{BoxError, Config, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder().start()?;
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(2).unwrap())
///     .build_with(|_| None)?;
/// let result = lambda_tpc::compio::run_per_core(config, |_core| {
///     let database_url = std::env::var("DATABASE_URL_NOT_SET")?; // fails
///     Ok::<_, BoxError>(move |_: LambdaEvent<()>| {
///         let url = database_url.clone();
///         async move { Ok::<_, BoxError>(url) }
///     })
/// });
/// let err = result.unwrap_err();
/// assert!(err.is_init());
/// let posted = sim.init_error().expect("/runtime/init/error was posted");
/// assert_eq!(posted.error_message.as_deref(), Some("environment variable not found"));
/// assert_eq!(sim.ledger().handed_out, 0);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`run_concurrent_with_config`], and [`Error::is_init`] when the factory failed or
/// panicked on a core.
pub fn run_per_core<A, H, F, E>(config: Config, factory: F) -> Result<(), Error>
where
    A: DeserializeOwned + 'static,
    H: Handler<A>,
    F: Fn(&CorePlan) -> Result<H, E> + Send + Sync + 'static,
    E: Into<Diagnostic>,
{
    let exec = CompioExecutor::from_config(&config);
    let factory = std::sync::Arc::new(factory);
    crate::runtime::run(config, exec, |_| {
        let f = factory.clone();
        move |plan: &CorePlan| f(plan).map_err(Into::into)
    })
}

/// Most `spawn_blocking` closures that run at once on one core (its blocking pool's
/// threads). Further calls wait, without blocking the core, for one to finish. A closure
/// keeps its thread until it returns, even when the invocation that started it was
/// cancelled at its deadline: a call that never returns holds one for good.
pub const MAX_BLOCKING_THREADS: usize = 64;

thread_local! {
    /// This thread's share of [`MAX_BLOCKING_THREADS`]. Waiting here rather than in
    /// compio: a full compio pool makes the submitting thread spin (`yield_now`) until a
    /// thread frees, which would stall the whole core.
    static BLOCKING_PERMITS: std::rc::Rc<LocalSemaphore> =
        std::rc::Rc::new(LocalSemaphore::new(MAX_BLOCKING_THREADS));
}

/// Runs `f` on compio's blocking thread pool and waits for it without blocking the
/// core. For blocking calls (file system, a synchronous client, heavy CPU work) that
/// would otherwise stall every invocation on the core. The pool is per core, with up to
/// [`MAX_BLOCKING_THREADS`] threads; beyond, calls wait for a thread. Called from a
/// handler, `f` runs as its invocation: its log lines carry the request id, and
/// [`Context::current`](crate::Context::current) returns the invocation's context.
///
/// Must be awaited inside the compio runtime (a handler run by this module's functions,
/// or [`CompioExecutor::block_on`](Executor::block_on)).
///
/// # Errors
///
/// An error if `f` panicked.
///
/// ```
/// use lambda_tpc::Executor;
/// use lambda_tpc::compio::{CompioExecutor, spawn_blocking};
///
/// let sum = CompioExecutor::default().block_on(async {
///     spawn_blocking(|| (0..1_000u64).sum::<u64>()).await
/// })?;
/// assert_eq!(sum?, 499_500);
/// # Ok::<(), lambda_tpc::BoxError>(())
/// ```
pub async fn spawn_blocking<T, F>(f: F) -> Result<T, crate::BoxError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let permits = BLOCKING_PERMITS.with(std::rc::Rc::clone);
    let permit = permits.acquire().await;
    let invocation = crate::runtime::core::current_context();
    let blocking = compio::runtime::spawn_blocking(move || match invocation {
        Some(ctx) => crate::runtime::core::as_invocation(&ctx, f),
        None => f(),
    });
    // A task of its own holds the thread's permit until the closure has returned, also
    // when the caller stops waiting (its invocation cancelled at the deadline): the
    // closure keeps running. Started here, not from a drop, which may come while compio
    // tears its runtime down and can no longer take new tasks.
    let (tx, rx) = futures_channel::oneshot::channel();
    compio::runtime::spawn(async move {
        let result = blocking.await;
        drop(permit);
        let _ = tx.send(result);
    })
    .detach();
    match rx.await {
        Ok(result) => {
            result.map_err(|e| -> crate::BoxError { format!("blocking task failed: {e}").into() })
        }
        Err(_) => Err("blocking task dropped (the runtime is shutting down)".into()),
    }
}

/// The compio [`Executor`]: builds one compio runtime per core with the configured
/// driver and io_uring flags. The functions of this module use it; pass one to
/// [`run_concurrent_with_executor`](crate::run_concurrent_with_executor) only to reuse
/// the thread-per-core driver with a driver choice of your own.
///
/// With [`Driver::Auto`], a kernel that refuses the io_uring set-up flags gets io_uring
/// without them, and one that refuses io_uring gets epoll.
///
/// ```
/// use lambda_tpc::compio::CompioExecutor;
/// use lambda_tpc::{Driver, Executor, UringFlags};
///
/// let exec = CompioExecutor::new(Driver::Epoll, UringFlags::NONE);
/// let driver = exec.block_on(async { exec.driver_name() })?;
/// assert_eq!(driver, "epoll");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CompioExecutor {
    driver: Driver,
    flags: UringFlags,
}

impl CompioExecutor {
    /// An executor with the given driver choice and io_uring flags.
    pub fn new(driver: Driver, flags: UringFlags) -> Self {
        CompioExecutor { driver, flags }
    }

    /// An executor with the driver and flags of `config`, as
    /// [`run_concurrent_with_config`] builds it.
    pub fn from_config(config: &Config) -> Self {
        CompioExecutor::new(config.driver(), config.uring_flags())
    }

    fn proactor(&self, flags: UringFlags) -> ProactorBuilder {
        let mut b = ProactorBuilder::new();
        b.coop_taskrun(flags.coop_taskrun)
            .taskrun_flag(flags.taskrun_flag)
            .single_issuer(flags.single_issuer)
            .defer_taskrun(flags.defer_taskrun)
            // Only `Asyncify` (spawn_blocking) needs the pool; socket I/O does not.
            .thread_pool_limit(MAX_BLOCKING_THREADS);
        match self.driver {
            Driver::Auto => {}
            Driver::IoUring => {
                b.driver_type(DriverType::IoUring);
            }
            Driver::Epoll => {
                b.driver_type(DriverType::Poll);
            }
        }
        b
    }

    fn build(&self) -> io::Result<compio::runtime::Runtime> {
        let rt = compio::runtime::RuntimeBuilder::new()
            .with_proactor(self.proactor(self.flags))
            .build();
        match (self.driver, rt) {
            // The fusion driver falls back to epoll when io_uring set-up fails, which
            // also happens when only our set-up flags are refused (older kernels). Try
            // io_uring once more without them before settling for epoll.
            (Driver::Auto, Ok(rt))
                if rt.driver_type().is_polling() && self.flags != UringFlags::NONE =>
            {
                // Still compio's choice (not forced): it also falls back when the kernel
                // lacks operations we need, and that must stand.
                match compio::runtime::RuntimeBuilder::new()
                    .with_proactor(self.proactor(UringFlags::NONE))
                    .build()
                {
                    Ok(plain) if !plain.driver_type().is_polling() => {
                        tracing::warn!(
                            "io_uring refused the set-up flags; running io_uring without them"
                        );
                        Ok(plain)
                    }
                    _ => Ok(rt),
                }
            }
            (Driver::IoUring, Err(_)) if self.flags != UringFlags::NONE => {
                let mut b = self.proactor(UringFlags::NONE);
                b.driver_type(DriverType::IoUring);
                let plain = compio::runtime::RuntimeBuilder::new()
                    .with_proactor(b)
                    .build();
                if plain.is_ok() {
                    tracing::warn!(
                        "io_uring refused the set-up flags; running io_uring without them"
                    );
                }
                plain
            }
            (_, rt) => rt,
        }
    }
}

impl Default for CompioExecutor {
    fn default() -> Self {
        CompioExecutor::new(Driver::Auto, UringFlags::default())
    }
}

impl Executor for CompioExecutor {
    type Stream = TcpStream;

    fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        let rt = self.build()?;
        Ok(rt.block_on(future))
    }

    fn driver_name(&self) -> &'static str {
        compio::runtime::Runtime::try_with_current(|rt| match rt.driver_type() {
            DriverType::IoUring => "io_uring",
            DriverType::Poll => "epoll",
            DriverType::IOCP => "iocp",
        })
        .unwrap_or("none")
    }

    fn spawn<F: Future<Output = ()> + 'static>(&self, future: F) {
        // Dropping a compio JoinHandle cancels the task: detach it.
        compio::runtime::spawn(future).detach();
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn sleep(&self, duration: Duration) {
        compio::time::sleep(duration).await
    }
}

/// Whether the current thread's compio runtime runs on the poll (epoll) driver.
fn on_poll_driver() -> bool {
    compio::runtime::Runtime::try_with_current(|rt| rt.driver_type() == DriverType::Poll)
        .unwrap_or(false)
}

impl Stream for TcpStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // A read into an empty buffer starts a reply just asked for, which has not come
        // yet as a rule. compio's poll driver would try the receive first (a wasted
        // `recvfrom`, EAGAIN) before waiting; wait for readability instead, then take
        // what came directly. io_uring tries inside the kernel, at no cost.
        if buf.is_empty() && on_poll_driver() {
            use compio::driver::ToSharedFd;
            use compio::driver::op::{Interest, PollOnce};
            let op = PollOnce::new(self.to_shared_fd(), Interest::Readable);
            if compio::runtime::submit(op).await.0.is_ok()
                && let Some(res) = self.try_read_now(&mut buf)
            {
                return (res, buf);
            }
        }
        let BufResult(res, buf) = AsyncReadExt::append(self, buf).await;
        (res, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let BufResult(res, buf) = AsyncWriteExt::write_all(self, buf).await;
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
