//! # lambda-tpc
//!
//! A thread-per-core AWS Lambda runtime for **Lambda Managed Instances** (one execution
//! environment serving many invocations at once), built on io_uring through
//! [compio](https://docs.rs/compio).
//!
//! Each core runs one pinned OS thread with its own async runtime, its own `/next` long
//! polls and its own keep-alive connections to the Runtime API. Nothing is shared between
//! cores on the invocation path: no locks, no cross-core channels, no atomic that another
//! core writes. Handler futures need not be `Send`.
//!
//! ```no_run
//! use lambda_tpc::{BoxError, LambdaEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Request { name: String }
//!
//! #[derive(Serialize)]
//! struct Response { greeting: String }
//!
//! fn main() -> Result<(), lambda_tpc::Error> {
//!     lambda_tpc::compio::run_concurrent(|event: LambdaEvent<Request>| async move {
//!         Ok::<_, BoxError>(Response { greeting: format!("hello {}", event.payload.name) })
//!     })
//! }
//! ```
//!
//! # Handlers
//!
//! A handler is any `Fn(LambdaEvent<A>) -> impl Future<Output = Result<R, E>>` (see
//! [`Handler`]) where `A: Deserialize`, `R: Serialize` (or a
//! [`streaming::StreamResponse`]) and `E: Into<Diagnostic>`. What the runtime does with
//! each outcome:
//!
//! * `Ok(response)`: serialized to JSON and posted to `/response`; larger than
//!   [`ConfigBuilder::max_response_bytes`], it is replaced by a
//!   `Function.ResponseSizeTooLarge` error.
//! * `Err(error)`: converted into a [`Diagnostic`] and posted to `/error`.
//! * A panic: caught and posted as `Runtime.HandlerPanic`; the core keeps serving.
//! * An event that does not deserialize into `A`: answered with `Runtime.UnmarshalError`
//!   without calling the handler.
//! * Still running at the invocation's deadline: cancelled and answered with
//!   `Runtime.DeadlineExceeded` (see [`ConfigBuilder::enforce_deadline`]).
//!
//! The error types posted by the runtime itself are the `ERROR_TYPE_*` constants of
//! [`api`].
//!
//! # Running a function locally
//!
//! The [`sim`] module (feature `sim`) is a Runtime API in the same process, so a function
//! can be served for real in a test: start the simulator, point the configuration at it,
//! run the runtime on a thread, and stop it through a [`Control`] once the simulator has
//! seen every event answered.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use lambda_tpc::sim::{EventSource, Simulator};
//! use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
//!
//! # fn main() -> Result<(), BoxError> {
//! let sim = Simulator::builder()
//!     .max_concurrency(2)
//!     .events(EventSource::repeat(r#"{"name":"ada"}"#, 5)) // five invocations
//!     .validator(|_event, response| response == br#""hello ada""#)
//!     .start()?;
//!
//! let control = Control::new();
//! let config = Config::builder()
//!     .runtime_api(sim.runtime_api())
//!     .max_concurrency(NonZeroUsize::new(sim.max_concurrency()).unwrap())
//!     .control(control.clone())
//!     .handle_signals(false) // leave Ctrl-C to the test harness
//!     .build_with(|_| None)?; // ignore this process's AWS_LAMBDA_* variables
//!
//! let runtime = std::thread::spawn(move || {
//!     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<serde_json::Value>| async move {
//!         Ok::<_, BoxError>(format!("hello {}", event.payload["name"].as_str().unwrap_or("?")))
//!     })
//! });
//! assert!(sim.wait_until_done(Duration::from_secs(10)));
//! control.shutdown();
//! runtime.join().expect("the runtime thread does not panic")?;
//!
//! let ledger = sim.shutdown();
//! assert_eq!((ledger.answered_ok, ledger.mismatched, ledger.lost()), (5, 0, 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! | module | role |
//! |---|---|
//! | [`http`] | sans-IO HTTP/1.1 client codec: request encoding, response head and body decoding, every limit a named constant. No I/O. |
//! | [`api`] | the Runtime API: paths and headers as constants, [`Context`], [`LambdaEvent`], [`Diagnostic`], the `AWS_LAMBDA_RUNTIME_API` endpoint, sans-IO encoding of every request. |
//! | [`config`] | [`Config`] and its builder: typed values merged with the environment, bad values refused with the variable named. |
//! | [`error`] | the opaque public [`Error`] with `is_*()` predicates (the codec's `Copy` error is the other tier). |
//! | [`control`] | [`Control`]: stop a running runtime and read its per-core report. |
//! | [`streaming`] | streamed responses: [`streaming::StreamResponse`], chunked posts with error trailers. |
//! | [`executor`] | the [`Executor`] trait: what the strategies need from an async runtime (spawn, owned-buffer TCP, sleep, block on). |
//! | `runtime` (private) | the thread-per-core driver and the strategies, written once against [`Executor`]: start-up handshake, per-core poll loops, the invocation path, connection reuse. |
//! | [`compio`] | the compio executor (io_uring, epoll fallback) and the `run_*` entry points users call. |
//! | [`tokio`] | (feature `tokio`) the async shim for code inside `#[tokio::main]` (multi-thread, `Send` handlers), and tokio as a per-core executor. |
//! | [`logging`] | (feature `logging`) the JSON log subscriber Managed Instances require, with each line tagged with its invocation's request id. |
//! | [`rayon`] | (feature `rayon`) synchronous CPU-bound handlers on a rayon pool, I/O on a small compio runtime. |
//! | [`sim`] | (feature `sim`) an embedded Runtime API simulator on hyper: the data plane of Managed Instances, with a ledger of every invocation. |
//!
//! # Feature flags
//!
//! * `logging`: the [`logging`] module (tracing-subscriber).
//! * `tokio`: the [`tokio`] module.
//! * `rayon`: the [`rayon`] module.
//! * `sim`: the [`sim`] module (hyper + tokio on the simulator's own thread). Used by the
//!   examples, tests and benches; not needed in a deployed function.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link to the feature-gated modules; without those features the links have no
// target, which is expected, not a broken link (all-features builds and docs.rs check them).
#![cfg_attr(
    not(all(
        feature = "sim",
        feature = "tokio",
        feature = "rayon",
        feature = "logging"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

pub mod api;
pub mod compio;
pub mod config;
pub mod control;
pub mod error;
pub mod executor;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
pub mod http;
#[cfg(feature = "logging")]
#[cfg_attr(docsrs, doc(cfg(feature = "logging")))]
pub mod logging;
#[cfg(feature = "rayon")]
#[cfg_attr(docsrs, doc(cfg(feature = "rayon")))]
pub mod rayon;
mod runtime;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod streaming;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

pub use api::{Context, Diagnostic, LambdaEvent};
pub use config::{Config, ConfigBuilder, CorePlan, Cores, Driver, Strategy, UringFlags};
pub use control::{Control, CoreReport, RunReport};
pub use error::{BoxError, Error};
pub use executor::{Executor, Stream};
pub use handler::{Handler, service_fn};

/// Runs `handler` with the thread-per-core driver on any [`Executor`]: one pinned thread
/// per planned core, each running its own instance of `executor`. The strategies are the
/// same code whatever the executor; [`compio::run_concurrent_with_config`] is this
/// function with [`compio::CompioExecutor`].
///
/// With [`tokio::TokioExecutor`] (feature `tokio`) each core runs a current-thread tokio
/// runtime, so handlers can use tokio-based clients and still hold `!Send` state:
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::tokio::TokioExecutor;
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder().max_concurrency(2).events(EventSource::repeat("2", 4)).start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(2).unwrap())
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     let handler = |event: LambdaEvent<u32>| async move {
///         let n = Rc::new(event.payload); // held across an await: the future is !Send
///         tokio::time::sleep(Duration::from_millis(1)).await;
///         Ok::<_, BoxError>(*n + 1)
///     };
///     lambda_tpc::run_concurrent_with_executor(config, handler, TokioExecutor)
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
/// assert_eq!(control.report().unwrap().cores[0].driver, "tokio");
/// assert_eq!(sim.shutdown().answered_ok, 4);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`compio::run_concurrent_with_config`].
pub fn run_concurrent_with_executor<A, H, E>(
    config: Config,
    handler: H,
    executor: E,
) -> Result<(), Error>
where
    A: serde::de::DeserializeOwned + 'static,
    H: Handler<A> + Clone + Send,
    E: Executor,
{
    runtime::run(config, executor, |_| {
        let h = handler.clone();
        move |_: &CorePlan| Ok::<_, Diagnostic>(h)
    })
}
