//! An embedded AWS Lambda Runtime API simulator (the data plane of Lambda Managed Instances),
//! served by hyper on its own thread(s) (feature `sim`).
//!
//! It exists so that the runtime's hand-written HTTP client is checked against an HTTP
//! implementation we did not write, and so that examples, tests and benchmarks run without AWS.
//! It implements `GET /2018-06-01/runtime/invocation/next` (a long poll, answered FIFO once an
//! event is available and fewer than `max_concurrency` invocations are outstanding),
//! `POST .../invocation/{id}/response`, `POST .../invocation/{id}/error` and
//! `POST .../init/error`, with HTTP/1.1 keep-alive and pipelining, and keeps a [`Ledger`] of
//! everything it saw plus a hand-out-to-answer latency histogram.
//!
//! Serving a finite set of events to the runtime under test, then checking that every one
//! was answered correctly:
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use lambda_tpc::sim::{Arrival, EventSource, Simulator};
//! use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
//!
//! # fn main() -> Result<(), BoxError> {
//! let sim = Simulator::builder()
//!     .max_concurrency(4)
//!     .events(EventSource::repeat(r#"{"hello":"world"}"#, 20))
//!     .arrival(Arrival::Closed)
//!     .validator(|event, response| event == response) // an echo function
//!     .start()?;
//!
//! // The runtime under test, pointed at the simulator: `sim.runtime_api()` is the value of
//! // AWS_LAMBDA_RUNTIME_API and `sim.max_concurrency()` that of AWS_LAMBDA_MAX_CONCURRENCY.
//! let control = Control::new();
//! let config = Config::builder()
//!     .runtime_api(sim.runtime_api())
//!     .max_concurrency(NonZeroUsize::new(sim.max_concurrency()).unwrap())
//!     .control(control.clone())
//!     .build_with(|_| None)?;
//! let runtime = std::thread::spawn(move || {
//!     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<serde_json::Value>| async move {
//!         Ok::<_, BoxError>(event.payload)
//!     })
//! });
//!
//! assert!(sim.wait_until_done(Duration::from_secs(10)));
//! control.shutdown();
//! runtime.join().unwrap()?;
//! let latency = sim.latency();
//! assert_eq!(latency.count, 20);
//! println!("p50 {} µs, p99 {} µs", latency.p50_us, latency.p99_us);
//! let ledger = sim.shutdown();
//! assert_eq!((ledger.handed_out, ledger.answered_ok), (20, 20));
//! assert_eq!((ledger.lost(), ledger.mismatched), (0, 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour worth knowing
//! - Request ids are `{run:08x}-0000-4000-8000-{seq:012x}` (`run` distinguishes simulators in
//!   one process, `seq` counts hand-outs); invocation ids, when enabled, use `9000` in place of
//!   `8000`.
//! - A `/next` whose client closes the connection while it is parked is noticed (hyper watches
//!   for EOF while a request is in flight), counted in [`Ledger::abandoned_polls`], and never
//!   given an event. AWS's emulator instead keeps such a poll queued and fails the invocation
//!   routed to it; the simulator does not reproduce that failure. An event already handed out
//!   on a connection that then dies is never answered and shows up in [`Ledger::lost`].
//! - Faults are injected deterministically with [`SimulatorBuilder::faults`] and a
//!   [`FaultPlan`]: corrupted `/next` replies (resets, drips, garbage, oversized or badly
//!   framed heads and bodies, missing or unsafe headers), error statuses on `/next` and on
//!   posts, refused connections and silent keep-alive closes. See [`fault`] for each fault and
//!   how the ledger counts it ([`Ledger::unanswerable`], [`Ledger::faults`]).
//! - No timeouts anywhere: parked polls wait forever, idle connections stay open, and invocation
//!   deadlines are only a header (as on Managed Instances).
//! - Replies are checked in this order: id known and unanswered (else 400, `unknown_ids` or
//!   `duplicates`), invocation id echoed when enabled (else 400), body within the limit (else
//!   413, not an answer). The body is always read completely first, so the connection stays
//!   usable after any of these.
//! - A streamed response (`Lambda-Runtime-Function-Response-Mode: streaming`, chunked, with
//!   error trailers) is accepted up to [`STREAMING_LIMIT`] bytes; error trailers make it an
//!   error answer. A trailer section longer than Go's `net/http` reads
//!   ([`MAX_TRAILER_SECTION_BYTES`](crate::api::MAX_TRAILER_SECTION_BYTES)) is refused with
//!   400 (`bad_requests`), and the invocation stays unanswered.

pub mod fault;
mod ledger;
mod pacer;
mod raw;
mod server;
mod source;
mod state;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use tokio::sync::watch;

pub use self::fault::{
    ConnFault, FaultCounts, FaultKind, FaultPlan, PollFault, PostEndpoint, PostFault, ReplyFault,
    Schedule, Unanswerable,
};
pub use self::ledger::{ErrorRecord, LatencySummary, Ledger};
pub use self::source::{Arrival, EventFraming, EventSource, GO_CHUNKING_THRESHOLD};
use self::state::{Config, PacerMsg, Shared, Validator};

/// AWS's limit on a buffered response (and the emulator's): 6,291,556 bytes.
pub const RESPONSE_LIMIT: usize = 6_291_556;

/// Limit on an `/error` body: 1 MiB, the emulator's cap (the runtime cuts its error
/// messages to stay within it, [`MAX_ERROR_BODY_BYTES`](crate::api::MAX_ERROR_BODY_BYTES)).
/// A longer one is refused with 413 and counted in [`Ledger::too_large`]; the invocation
/// stays outstanding, so a runtime that sends one shows a lost invocation.
pub const ERROR_LIMIT: usize = crate::api::MAX_ERROR_BODY_BYTES;

/// Limit on a streamed response body: 200 MiB.
pub const STREAMING_LIMIT: usize = 200 * 1024 * 1024;

/// Numbers simulators started in this process, so ids of one never parse as ids of another.
static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// Configures and starts a [`Simulator`]. Created by [`Simulator::builder`]; every
/// setting has a default, so `Simulator::builder().start()` serves `{}` forever to up to
/// 8 invocations at once. See the [module docs](self) for a plain run.
///
/// The `/next` headers are configurable, to test code that reads the [`Context`]:
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder()
///     .max_concurrency(1)
///     .events(EventSource::repeat("{}", 2))
///     .function_arn("arn:aws:lambda:eu-west-1:123456789012:function:orders")
///     .tenant_id(Some("tenant-7".to_owned()))
///     .deadline(Duration::from_secs(2))
///     .invocation_ids(true) // replies must echo Lambda-Runtime-Invocation-Id
///     .path_prefix("/emulator")
///     .validator(|_event, response| response == br#""tenant-7 on orders""#)
///     .start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     // `runtime_api()` is `host:port`; the prefix is added by hand.
///     .runtime_api(format!("http://{}/emulator", sim.runtime_api()))
///     .max_concurrency(NonZeroUsize::MIN)
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<serde_json::Value>| async move {
///         let ctx = event.context;
///         assert!(ctx.remaining() <= Duration::from_secs(2));
///         let function = ctx.invoked_function_arn().rsplit(':').next().unwrap_or("");
///         Ok::<_, BoxError>(format!("{} on {function}", ctx.tenant_id().unwrap_or("-")))
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
/// let ledger = sim.shutdown();
/// assert_eq!((ledger.answered_ok, ledger.mismatched, ledger.invocation_id_violations), (2, 0, 0));
/// # Ok(())
/// # }
/// ```
///
/// [`Context`]: crate::Context
pub struct SimulatorBuilder {
    max_concurrency: usize,
    events: EventSource,
    arrival: Arrival,
    event_framing: EventFraming,
    deadline: Duration,
    refuse_late_answers: bool,
    invocation_ids: bool,
    function_arn: String,
    tenant_id: Option<String>,
    client_context: Option<String>,
    cognito_identity: Option<String>,
    validator: Option<Validator>,
    pin_to_cores: Vec<usize>,
    threads: usize,
    bind: SocketAddr,
    path_prefix: String,
    response_limit: usize,
    keep_errors: usize,
    faults: Option<FaultPlan>,
}

impl Default for SimulatorBuilder {
    fn default() -> Self {
        Self {
            max_concurrency: 8,
            events: EventSource::default(),
            arrival: Arrival::Closed,
            event_framing: EventFraming::default(),
            deadline: Duration::from_secs(30),
            refuse_late_answers: false,
            invocation_ids: false,
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:sim".to_owned(),
            tenant_id: None,
            client_context: None,
            cognito_identity: None,
            validator: None,
            pin_to_cores: Vec::new(),
            threads: 1,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            path_prefix: String::new(),
            response_limit: RESPONSE_LIMIT,
            keep_errors: 1024,
            faults: None,
        }
    }
}

impl SimulatorBuilder {
    /// Most invocations handed out and unanswered at once (`AWS_LAMBDA_MAX_CONCURRENCY`).
    /// Default 8.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// The events to hand out. Default: `{}` forever.
    pub fn events(mut self, events: EventSource) -> Self {
        self.events = events;
        self
    }

    /// When events become available. Default [`Arrival::Closed`].
    pub fn arrival(mut self, arrival: Arrival) -> Self {
        self.arrival = arrival;
        self
    }

    /// `Lambda-Runtime-Deadline-Ms` is hand-out time plus this. Default 30 s. Not enforced
    /// unless late answers are [refused](Self::refuse_late_answers).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Refuse answers that come after the invocation's deadline with 410, as the Runtime
    /// API does, and count them in [`Ledger::timed_out`] instead of as answered. Default
    /// off: most tests and benchmarks are about what the runtime sends, not when.
    pub fn refuse_late_answers(mut self, on: bool) -> Self {
        self.refuse_late_answers = on;
        self
    }

    /// Send `Lambda-Runtime-Invocation-Id` and require replies to echo it. Default off.
    pub fn invocation_ids(mut self, on: bool) -> Self {
        self.invocation_ids = on;
        self
    }

    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub fn function_arn(mut self, arn: impl Into<String>) -> Self {
        self.function_arn = arn.into();
        self
    }

    /// `Lambda-Runtime-Aws-Tenant-Id`, sent when `Some`. Default none.
    pub fn tenant_id(mut self, tenant: Option<String>) -> Self {
        self.tenant_id = tenant;
        self
    }

    /// `Lambda-Runtime-Client-Context`, sent when `Some` (possibly empty). Default none.
    pub fn client_context(mut self, value: Option<String>) -> Self {
        self.client_context = value;
        self
    }

    /// `Lambda-Runtime-Cognito-Identity`, sent when `Some` (possibly empty). Default none.
    pub fn cognito_identity(mut self, value: Option<String>) -> Self {
        self.cognito_identity = value;
        self
    }

    /// Checks every accepted `/response` body against its event: `f(event, response)`; a
    /// `false` counts in [`Ledger::mismatched`]. Runs on a simulator thread, outside any lock.
    /// A streamed response is checked as it arrived: prelude, separator and body.
    pub fn validator(mut self, f: impl Fn(&[u8], &[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.validator = Some(Arc::new(f));
        self
    }

    /// Pins simulator thread `i` to core `cores[i % cores.len()]` (and the pacer thread, if
    /// any, to `cores[0]`). Default: not pinned.
    pub fn pin_to_cores(mut self, cores: Vec<usize>) -> Self {
        self.pin_to_cores = cores;
        self
    }

    /// Number of server threads. Each runs its own single-threaded tokio runtime (there is no
    /// work-stealing runtime); thread 0 accepts and deals connections round-robin, and all share
    /// one state lock. More than one only helps when the runtime under test outruns a single
    /// simulator core. Default 1.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Address to listen on. Default `127.0.0.1:0` (any free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// A prefix before `/2018-06-01/...` (e.g. `/prefix`). Default none.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = prefix.into();
        self
    }

    /// How `/next` replies frame the event. Default [`EventFraming::LikeGo`]: chunked above
    /// [`GO_CHUNKING_THRESHOLD`] bytes, as the Runtime API sends it.
    pub fn event_framing(mut self, framing: EventFraming) -> Self {
        self.event_framing = framing;
        self
    }

    /// Largest accepted `/response` or `/error` body; above it the reply is 413. Default
    /// [`RESPONSE_LIMIT`].
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.response_limit = bytes;
        self
    }

    /// How many invocation errors to keep for [`Simulator::errors`] (the first ones). Default
    /// 1024.
    pub fn keep_errors(mut self, n: usize) -> Self {
        self.keep_errors = n;
        self
    }

    /// Injects the faults of `plan` (see [`fault`]). Default: none. An empty plan is the same
    /// as none; a non-empty one serves every connection through the fault-capable path (a
    /// little slower than the plain one, so not for benchmarks).
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }

    /// Binds the listener and starts the simulator's threads; returns once they serve.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a zero `max_concurrency` or `threads`, an arrival
    /// rate that is not finite and positive, a header value that is not visible ASCII, or
    /// an invalid fault plan (the message names the rule); otherwise the error of binding
    /// the address or spawning a thread.
    pub fn start(self) -> io::Result<Simulator> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if self.max_concurrency == 0 {
            return Err(invalid("max_concurrency must be at least 1"));
        }
        if self.threads == 0 {
            return Err(invalid("threads must be at least 1"));
        }
        let rate = match self.arrival {
            Arrival::Closed => None,
            Arrival::Paced { per_sec } => Some((per_sec, false)),
            Arrival::OpenLoop { per_sec } => Some((per_sec, true)),
        };
        if let Some((per_sec, _)) = rate
            && !(per_sec.is_finite() && per_sec > 0.0)
        {
            return Err(invalid("arrival rate must be finite and positive"));
        }
        let header = |s: &str| {
            HeaderValue::from_str(s).map_err(|_| invalid("header value is not visible ASCII"))
        };
        let opt_header = |s: &Option<String>| s.as_deref().map(header).transpose();
        if let Some(plan) = &self.faults {
            plan.validate().map_err(|e| invalid(&e))?;
        }
        let cfg = Config {
            max_concurrency: self.max_concurrency,
            arrival: self.arrival,
            event_framing: self.event_framing,
            deadline: self.deadline,
            refuse_late_answers: self.refuse_late_answers,
            invocation_ids: self.invocation_ids,
            function_arn: header(&self.function_arn)?,
            tenant_id: opt_header(&self.tenant_id)?,
            client_context: opt_header(&self.client_context)?,
            cognito_identity: opt_header(&self.cognito_identity)?,
            validator: self.validator,
            path_prefix: self.path_prefix.trim_end_matches('/').to_owned(),
            response_limit: self.response_limit,
            streaming_limit: STREAMING_LIMIT.max(self.response_limit),
            keep_errors: self.keep_errors,
            run: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            faults: self.faults.filter(|p| !p.is_empty()),
        };
        // 1 µs to 1 h at 3 significant digits.
        let latency = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| io::Error::other(format!("histogram: {e:?}")))?;
        let pacer_channel = rate.map(|_| mpsc::channel::<PacerMsg>());
        let shared = Arc::new(Shared::new(
            cfg,
            self.events,
            latency,
            pacer_channel.as_ref().map(|(tx, _)| tx.clone()),
        ));

        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut others = Vec::new();
        let mut threads = Vec::new();
        let mut sim_threads = Vec::new();
        let spawn = |i: usize, f: Box<dyn FnOnce() + Send>| -> io::Result<JoinHandle<()>> {
            let core = (!self.pin_to_cores.is_empty())
                .then(|| self.pin_to_cores[i % self.pin_to_cores.len()]);
            std::thread::Builder::new()
                .name(format!("lambda-sim-{i}"))
                .spawn(move || {
                    if let Some(id) = core
                        && !core_affinity::set_for_current(core_affinity::CoreId { id })
                    {
                        tracing::warn!("sim: cannot pin thread {i} to core {id}");
                    }
                    f()
                })
        };
        let mut result = Ok(());
        for i in 1..self.threads {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            others.push(tx);
            let (sh, stop_rx, ready) = (Arc::clone(&shared), stop_rx.clone(), ready_tx.clone());
            let body = move || server::run_thread(sh, server::Conns::Channel(rx), stop_rx, ready);
            match spawn(i, Box::new(body)) {
                Ok(h) => threads.push(h),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let conns = server::Conns::Listener {
                bind: self.bind,
                others,
            };
            let (sh, stop_rx) = (Arc::clone(&shared), stop_rx.clone());
            let body = move || server::run_thread(sh, conns, stop_rx, ready_tx);
            match spawn(0, Box::new(body)) {
                Ok(h) => threads.push(h),
                Err(e) => result = Err(e),
            }
        } else {
            drop(ready_tx);
        }
        // Every thread reports once; thread 0 with the bound address.
        let mut addr = None;
        if result.is_ok() {
            for _ in 0..threads.len() {
                match ready_rx.recv() {
                    Ok(Ok(Some(a))) => addr = Some(a),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        result = Err(e);
                        break;
                    }
                    Err(_) => {
                        result = Err(io::Error::other("simulator thread died while starting"));
                        break;
                    }
                }
            }
        }
        sim_threads.append(&mut threads);
        let mut sim = Simulator {
            addr: addr.unwrap_or(self.bind),
            runtime_api: String::new(),
            shared,
            stop,
            threads: sim_threads,
            pacer: None,
        };
        if let Err(e) = result {
            sim.stop();
            return Err(e);
        }
        let Some(addr) = addr else {
            sim.stop();
            return Err(io::Error::other("simulator did not report its address"));
        };
        sim.runtime_api = addr.to_string();
        if let (Some((tx, rx)), Some((per_sec, open_loop))) = (pacer_channel, rate) {
            let sh = Arc::clone(&sim.shared);
            let body = move || pacer::run(sh, rx, per_sec, open_loop);
            match spawn(0, Box::new(body)) {
                Ok(h) => sim.pacer = Some((tx, h)),
                Err(e) => {
                    sim.stop();
                    return Err(e);
                }
            }
        }
        Ok(sim)
    }
}

/// A running Runtime API simulator. Stops (closing every connection) on
/// [`shutdown`](Self::shutdown) or drop.
///
/// It speaks plain HTTP/1.1, so any client can drive it; here by hand, over
/// `std::net::TcpStream`, as a runtime would:
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{SocketAddr, TcpStream};
/// use lambda_tpc::http::{MAX_HEADERS, Status, parse_response_head};
/// use lambda_tpc::sim::{EventSource, Simulator};
///
/// /// Sends one request on a fresh connection; returns the status, the request id header
/// /// and the body.
/// fn call(addr: SocketAddr, request: &str) -> Result<(u16, Option<String>, Vec<u8>), Box<dyn std::error::Error>> {
///     let mut socket = TcpStream::connect(addr)?;
///     socket.write_all(request.as_bytes())?;
///     let mut reply = Vec::new();
///     socket.read_to_end(&mut reply)?; // `Connection: close`: the server closes after replying
///     let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
///     let Status::Complete(head, len) = parse_response_head(&reply, &mut headers, 1 << 20)? else {
///         return Err("incomplete reply".into());
///     };
///     let id = head.header("Lambda-Runtime-Aws-Request-Id").map(|v| String::from_utf8_lossy(v).into_owned());
///     Ok((head.status, id, reply[len..].to_vec()))
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sim = Simulator::builder().events(EventSource::repeat(r#"{"n":1}"#, 1)).start()?;
/// let addr = sim.addr();
///
/// let next = "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";
/// let (status, id, event) = call(addr, next)?;
/// assert_eq!((status, event.as_slice()), (200, &br#"{"n":1}"#[..]));
/// let id = id.expect("every invocation has a request id");
/// assert_eq!(id, sim.request_id(0));
/// assert_eq!(sim.ledger().in_flight, 1);
///
/// let post = format!(
///     "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: sim\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\"ok\""
/// );
/// assert_eq!(call(addr, &post)?.0, 202);
/// assert_eq!(call(addr, &post)?.0, 400); // answered already
///
/// assert!(sim.wait_until_done(std::time::Duration::ZERO));
/// let ledger = sim.shutdown();
/// assert_eq!((ledger.answered_ok, ledger.duplicates, ledger.lost()), (1, 1, 0));
/// # Ok(())
/// # }
/// ```
pub struct Simulator {
    /// State shared with the server and pacer threads (see the `state` module for why a Mutex).
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime_api: String,
    /// Tells the server threads to stop; a `watch` so a thread that checks late still sees it.
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The pacer's control channel and thread, for paced and open-loop arrivals.
    pacer: Option<(mpsc::Sender<PacerMsg>, JoinHandle<()>)>,
}

impl Simulator {
    /// A builder with the defaults.
    pub fn builder() -> SimulatorBuilder {
        SimulatorBuilder::default()
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, the value for `AWS_LAMBDA_RUNTIME_API` (without the
    /// [`path_prefix`](SimulatorBuilder::path_prefix), if one was set).
    pub fn runtime_api(&self) -> &str {
        &self.runtime_api
    }

    /// The configured `max_concurrency` (for `AWS_LAMBDA_MAX_CONCURRENCY`; the runtime's
    /// [`ConfigBuilder::max_concurrency`](crate::ConfigBuilder::max_concurrency) takes it as
    /// a `NonZeroUsize`, and the builder refuses zero).
    pub fn max_concurrency(&self) -> usize {
        self.shared.cfg.max_concurrency
    }

    /// The request id invocation `seq` (0-based hand-out order) gets, so that a test can tell
    /// which invocation an [`ErrorRecord`] or a log line is about. (A
    /// [`ReplyFault::UnsafeRequestId`] or [`ReplyFault::MissingRequestId`] replaces or removes
    /// it on the wire.)
    pub fn request_id(&self, seq: u64) -> String {
        String::from_utf8_lossy(&state::uuid(
            self.shared.cfg.run,
            state::REQUEST_ID_VARIANT,
            seq,
        ))
        .into_owned()
    }

    /// A snapshot of the counters (while the simulator runs, or after: see
    /// [`shutdown`](Self::shutdown) for the final one).
    pub fn ledger(&self) -> Ledger {
        self.shared.lock().ledger
    }

    /// Waits until every event of a finite source was handed out and answered, or rejected
    /// (or made unanswerable by a fault). Returns `false` on timeout (always, for an
    /// unbounded source). `Duration::ZERO` checks without waiting.
    ///
    /// Blocks the calling thread: not for use on an async runtime's threads.
    pub fn wait_until_done(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut core = self.shared.lock();
        loop {
            if core.is_done() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            core = match self.shared.done.wait_timeout(core, end - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Latency from hand-out to answer since start or the last
    /// [`reset_measurements`](Self::reset_measurements).
    pub fn latency(&self) -> LatencySummary {
        let core = self.shared.lock();
        LatencySummary::from_histogram(&core.latency, core.window_start.elapsed())
    }

    /// Clears the latency histogram and restarts its window (e.g. after warm-up). The ledger is
    /// not reset.
    pub fn reset_measurements(&self) {
        let mut core = self.shared.lock();
        core.latency.reset();
        core.window_start = Instant::now();
    }

    /// The first invocation errors (see [`SimulatorBuilder::keep_errors`]), in arrival order:
    /// every accepted `/error` post, and every streamed response that ended with error
    /// trailers. See the [`fault`] module for an example.
    pub fn errors(&self) -> Vec<ErrorRecord> {
        self.shared.lock().errors.clone()
    }

    /// The last `/init/error` report (see
    /// [`compio::run_per_core`](crate::compio::run_per_core) for an example).
    pub fn init_error(&self) -> Option<ErrorRecord> {
        self.shared.lock().init_error.clone()
    }

    /// Stops the simulator, closing every connection, and returns the final counters.
    pub fn shutdown(mut self) -> Ledger {
        self.stop();
        self.ledger()
    }

    fn stop(&mut self) {
        self.shared.lock().shutting_down = true;
        self.stop.send_replace(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!("sim: a server thread panicked");
            }
        }
        if let Some((tx, handle)) = self.pacer.take() {
            let _ = tx.send(PacerMsg::Stop);
            if handle.join().is_err() {
                tracing::warn!("sim: the pacer thread panicked");
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .field("threads", &self.threads.len())
            .field("ledger", &self.ledger())
            .finish()
    }
}
