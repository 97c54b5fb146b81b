//! CPU-bound handlers on a rayon pool (feature `rayon`).
//!
//! The handler is a plain synchronous function. The Runtime API I/O (polling `/next`,
//! posting results) stays on a small compio thread-per-core runtime; each invocation's
//! handler call is sent to a rayon thread pool and its result comes back to the I/O core,
//! which posts it.
//!
//! # Sizing
//!
//! * **In flight:** with the default worker-per-slot strategy, at most
//!   `AWS_LAMBDA_MAX_CONCURRENCY` invocations are taken from the Runtime API at once (one
//!   per slot), so at most that many handler calls are queued or running on the pool,
//!   besides calls still running after their invocation was cancelled at its deadline (a
//!   call cannot be interrupted; a queued call whose invocation was cancelled is skipped
//!   when its turn comes). A flood of CPU work therefore waits in the Runtime API's
//!   queue, not in an unbounded queue in this process.
//! * **Pool:** rayon's global pool by default (one thread per CPU), or the pool given to
//!   [`run_concurrent_with_pool`]. With `N` pool threads, `N` handlers run at once and
//!   the rest of the in-flight ones wait for a thread; set
//!   `AWS_LAMBDA_MAX_CONCURRENCY` to about `N` plus a few, so that waiting is short and
//!   the next invocation is already fetched when a thread frees up.
//! * **I/O cores:** [`run_concurrent`] runs the I/O on one core unless `LAMBDA_TPC_CORES`
//!   says otherwise; the I/O thread mostly sleeps, so its CPU also serves the pool. With
//!   [`run_concurrent_with_config`] the configuration decides; keep the I/O cores few.
//!
//! A handler call cannot be interrupted once it runs on the pool: if deadline enforcement
//! cancels the invocation, the error is posted at the deadline but the call still runs to
//! its end (its result is discarded); a call that had not started is not made. A panic in
//! the handler is caught on the pool and posted as `Runtime.HandlerPanic`, as on the other
//! runtimes; one in a drop on the pool (a discarded result, an event never handled) is
//! caught and logged.
//!
//! ```no_run
//! use lambda_tpc::{BoxError, LambdaEvent};
//!
//! fn main() -> Result<(), lambda_tpc::Error> {
//!     lambda_tpc::rayon::run_concurrent(|event: LambdaEvent<Vec<u64>>| {
//!         let sum: u64 = event.payload.iter().map(|x| x * x).sum();
//!         Ok::<_, BoxError>(sum)
//!     })
//! }
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ::rayon::ThreadPool;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{Diagnostic, LambdaEvent};
use crate::compio::CompioExecutor;
use crate::config::{Config, Cores, ENV_CORES};
use crate::error::Error;

/// Runs `handler` on rayon's global pool, with the I/O on one core (unless
/// `LAMBDA_TPC_CORES` is set) and the rest of the configuration from the environment.
/// Blocks until shutdown (SIGTERM/SIGINT). See the [module docs](self) for an example.
///
/// # Errors
///
/// As [`compio::run_concurrent`](crate::compio::run_concurrent).
///
/// ```no_run
/// use lambda_tpc::{BoxError, LambdaEvent};
///
/// fn main() -> Result<(), lambda_tpc::Error> {
///     lambda_tpc::rayon::run_concurrent(|event: LambdaEvent<String>| {
///         if event.payload.is_empty() {
///             return Err::<String, BoxError>("nothing to hash".into());
///         }
///         let digest = event.payload.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
///         Ok(format!("{digest:016x}"))
///     })
/// }
/// ```
pub fn run_concurrent<A, F>(handler: F) -> Result<(), Error>
where
    F: CpuHandler<A>,
    A: DeserializeOwned + Send + 'static,
{
    let mut builder = Config::builder();
    if std::env::var_os(ENV_CORES).is_none() {
        builder = builder.cores(Cores::Count(std::num::NonZeroUsize::MIN));
    }
    run_concurrent_with_config(builder.build()?, handler)
}

/// Runs `handler` on rayon's global pool with an explicit configuration, which decides
/// the I/O cores (all of the affinity mask by default: keep them few, see the
/// [module docs](self#sizing)).
///
/// # Errors
///
/// As [`compio::run_concurrent_with_config`](crate::compio::run_concurrent_with_config).
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, Cores, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder().max_concurrency(4).events(EventSource::repeat("[3,4]", 6)).start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(4).unwrap())
///     .cores(Cores::Count(NonZeroUsize::MIN)) // one I/O core
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::rayon::run_concurrent_with_config(config, |event: LambdaEvent<Vec<u64>>| {
///         // Plain synchronous code, on a rayon thread.
///         Ok::<_, BoxError>(event.payload.iter().map(|x| x * x).sum::<u64>())
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
/// assert_eq!(sim.shutdown().answered_ok, 6);
/// # Ok(())
/// # }
/// ```
pub fn run_concurrent_with_config<A, F>(config: Config, handler: F) -> Result<(), Error>
where
    F: CpuHandler<A>,
    A: DeserializeOwned + Send + 'static,
{
    run_on(config, None, handler)
}

/// Runs `handler` on the given pool, with an explicit configuration: to size the pool
/// yourself, or to keep this function's CPU work apart from other rayon work in the
/// process.
///
/// # Errors
///
/// As [`compio::run_concurrent_with_config`](crate::compio::run_concurrent_with_config).
///
/// ```no_run
/// use std::num::NonZeroUsize;
/// use std::sync::Arc;
/// use lambda_tpc::{BoxError, Config, Cores, LambdaEvent};
///
/// fn main() -> Result<(), BoxError> {
///     // Seven threads of CPU work and one I/O core, on an eight-CPU environment.
///     let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(7).build()?);
///     let config = Config::builder().cores(Cores::Count(NonZeroUsize::MIN)).build()?;
///     lambda_tpc::rayon::run_concurrent_with_pool(config, pool, |event: LambdaEvent<String>| {
///         Ok::<_, BoxError>(event.payload.to_uppercase())
///     })?;
///     Ok(())
/// }
/// ```
pub fn run_concurrent_with_pool<A, F>(
    config: Config,
    pool: Arc<ThreadPool>,
    handler: F,
) -> Result<(), Error>
where
    F: CpuHandler<A>,
    A: DeserializeOwned + Send + 'static,
{
    run_on(config, Some(pool), handler)
}

/// A synchronous handler for the rayon pool. Implemented for every
/// `Fn(LambdaEvent<A>) -> Result<R, E> + Send + Sync + 'static` with `R: Serialize + Send`
/// and `E: Into<Diagnostic> + Send`.
pub trait CpuHandler<A>: Send + Sync + 'static {
    /// The successful result, serialized to JSON.
    type Response: Serialize + Send + 'static;
    /// The error, posted as a [`Diagnostic`].
    type Error: Into<Diagnostic> + Send + 'static;
    /// Handles one invocation (on a pool thread).
    fn call(&self, event: LambdaEvent<A>) -> Result<Self::Response, Self::Error>;
}

impl<A, F, R, E> CpuHandler<A> for F
where
    F: Fn(LambdaEvent<A>) -> Result<R, E> + Send + Sync + 'static,
    R: Serialize + Send + 'static,
    E: Into<Diagnostic> + Send + 'static,
{
    type Response = R;
    type Error = E;

    fn call(&self, event: LambdaEvent<A>) -> Result<R, E> {
        self(event)
    }
}

type Outcome<R> = std::thread::Result<Result<R, Diagnostic>>;

fn run_on<A, F>(config: Config, pool: Option<Arc<ThreadPool>>, handler: F) -> Result<(), Error>
where
    F: CpuHandler<A>,
    A: DeserializeOwned + Send + 'static,
{
    let handler = Arc::new(handler);
    let adapter = move |event: LambdaEvent<A>| {
        let (tx, rx) = futures_channel::oneshot::channel::<Outcome<F::Response>>();
        let handler = handler.clone();
        let job = move || {
            let ctx = event.context.clone();
            let invocation = &ctx;
            // Everything here may run user code: the handler, and drops of its result,
            // of an event never handled, or of the handler itself (the last clone, at
            // shutdown). A panic escaping a rayon job aborts the process.
            let escaped = std::panic::catch_unwind(AssertUnwindSafe(move || {
                // The receiver is gone only if the invocation was cancelled (deadline,
                // answered already): a call that has not started yet is skipped, so
                // that an overloaded pool does not go on to run work nobody waits for.
                if tx.is_canceled() {
                    return;
                }
                // On the pool thread too, the handler's log lines carry its request id.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    crate::runtime::core::as_invocation(invocation, || handler.call(event))
                        .map_err(Into::into)
                }));
                // Cancelled meanwhile: the outcome is dropped here, inside the guard.
                let _ = tx.send(outcome);
            }));
            if let Err(p) = escaped {
                tracing::error!(
                    request_id = ctx.request_id(),
                    panic = crate::runtime::core::panic_message(&*p),
                    "a drop of the handler's result, event or handler panicked on the rayon pool"
                );
            }
        };
        match &pool {
            Some(p) => p.spawn(job),
            None => ::rayon::spawn(job),
        }
        async move {
            match rx.await {
                Ok(Ok(result)) => result,
                // Re-raise the handler's panic on the I/O core, where the runtime catches
                // it and posts it as `Runtime.HandlerPanic` with its message.
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => Err(Diagnostic::new(
                    "Runtime.HandlerLost",
                    "the rayon task was dropped",
                )),
            }
        }
    };
    let exec = CompioExecutor::from_config(&config);
    crate::run_concurrent_with_executor(config, adapter, exec)
}
