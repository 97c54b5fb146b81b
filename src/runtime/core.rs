//! One core's share of the runtime: its strategy loops and the invocation path (fetch,
//! decode, run the handler, post the result).
//!
//! This file holds the core, its loops and the fetch; [`handler_code`] runs the user's
//! code for an invocation (panics caught, deadline enforced, slow polls flagged) and
//! [`post`] answers it (buffered or streamed, and what the reply says).
//!
//! Written once, generic over
//! * the I/O ([`Io`]: compio, tokio, or any [`Executor`]),
//! * the mutable state ([`State`]: thread-local `Cell`s, or atomics for the tokio
//!   multi-thread shim),
//! * how tasks are spawned ([`Spawner`]: provided by each front-end, because only there
//!   are the concrete types known, which is what lets the tokio shim prove its tasks are
//!   `Send` while the compio ones need not be).

use std::any::Any;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::de::DeserializeOwned;

use super::conn::{Body, Conn};
use super::state::{Counted, InFlight, InFlightCount, SlotSignal, Stat, State};
use super::watchdog::Heartbeat;
use crate::api::{
    self, Context, Diagnostic, ERROR_TYPE_DEADLINE_EXCEEDED, ERROR_TYPE_DESERIALIZE,
    ERROR_TYPE_EVENT_READ, ERROR_TYPE_EVENT_TOO_LARGE, ERROR_TYPE_HANDLER_PANIC,
    ERROR_TYPE_INVALID_INVOCATION, ERROR_TYPE_RESPONSE_SERIALIZE, ERROR_TYPE_RESPONSE_TOO_LARGE,
    ERROR_TYPE_STREAM_FAILED, LambdaEvent, RuntimeApi,
};
use crate::config::{CorePlan, Strategy};
use crate::control::{Control, CoreReport};
use crate::error::{Error, NEXT_REQUEST};
use crate::executor::{Executor, Stream};
use crate::handler::Handler;
use crate::http::{CodecError, DEFAULT_MAX_BODY_BYTES, ResponseHead};
use crate::streaming::{
    FunctionResponse, IntoFunctionResponse, MAX_STREAM_BYTES, PRELUDE_SEPARATOR, StreamResponse,
};

mod handler_code;
mod post;

use handler_code::CurrentInvocation;
pub(crate) use handler_code::as_invocation;
pub(crate) use handler_code::current_context;

/// The I/O a core needs: connections, timers, and a name for logs.
pub(crate) trait Io: Clone + 'static {
    type Stream: Stream;
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
    fn driver_name(&self) -> &'static str;
}

impl<E: Executor> Io for E {
    type Stream = E::Stream;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<E::Stream>> {
        Executor::connect(self, addr)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        Executor::sleep(self, duration)
    }

    fn driver_name(&self) -> &'static str {
        Executor::driver_name(self)
    }
}

/// Spawns a core's tasks. Implemented by each front-end for its concrete core type.
pub(crate) trait Spawner<P, J>: 'static {
    /// Spawns poll loop number `slot` (it runs until shutdown).
    fn spawn_loop(&self, core: P, slot: usize);
    /// Spawns the handling of one invocation (unbounded and semaphore strategies).
    fn spawn_invocation(&self, core: P, job: J);
    /// Spawns the core's settle tick (worker-per-slot with deferred post replies).
    fn spawn_ticker(&self, core: P);
}

/// Settings a core copies from the [`Config`](crate::Config) at start-up, so the hot path
/// reads its own memory rather than a structure shared with other cores.
#[derive(Clone)]
pub(crate) struct CoreSettings {
    pub api: RuntimeApi,
    pub addr: SocketAddr,
    pub strategy: Strategy,
    pub max_event_bytes: usize,
    pub max_response_bytes: usize,
    pub pipelining: bool,
    pub shutdown_grace: Duration,
    pub enforce_deadline: bool,
    pub slow_poll: Option<Duration>,
    pub unreachable_timeout: Option<Duration>,
    pub deferred_post_replies: bool,
}

/// Period of a core's settle tick: a worker-per-slot slot that waits for its next
/// invocation with a deferred post pending reads that post's reply after two ticks. Busy
/// slots read it when their next invocation arrives, without a wake-up of its own.
const SETTLE_TICK: Duration = Duration::from_millis(50);

/// How long a core keeps listening after its last invocation once shutdown began, for
/// replies already on their way (see `Core::drain`).
const SHUTDOWN_LINGER: Duration = Duration::from_millis(50);

/// One core's runtime state. Shared by the core's tasks through a pointer chosen by the
/// front-end: `Rc` on the thread-per-core driver (it never leaves its thread, so
/// reference counting needs no atomics), `Arc` on the tokio multi-thread shim.
pub(crate) struct Core<I: Io, A, H, S, Sp> {
    pub io: I,
    plan: CorePlan,
    settings: CoreSettings,
    handler: H,
    control: Control,
    state: S,
    spawner: Sp,
    /// When the last slow-poll warning was logged (rate limit: once a second per core).
    /// A mutex only because the tokio shim's cores are shared between threads; taken for
    /// a compare and a store, never across an await.
    last_slow_log: std::sync::Mutex<Option<Instant>>,
    /// When the last `/next` retry warning was logged: every slot of a core fails at once
    /// in an outage, and one line a second per core says as much as one per slot.
    last_retry_log: std::sync::Mutex<Option<Instant>>,
    /// When the last post retry warning was logged (same limit, kept apart from the
    /// `/next` one so that neither hides the other).
    last_post_retry_log: std::sync::Mutex<Option<Instant>>,
    /// When this core first saw the shutdown: retries and waits on posts end with the
    /// grace period counted from it. Set once, by whichever task sees it first (a
    /// `OnceLock` because the tokio shim's cores are shared between threads).
    stop_began: std::sync::OnceLock<Instant>,
    _payload: PhantomData<fn() -> A>,
}

/// What a `/next` produced.
pub(crate) enum Fetched<A> {
    /// A valid invocation with a decoded payload.
    Event(LambdaEvent<A>),
    /// A valid invocation that is answered with this error without calling the handler
    /// (payload did not decode, was too large, or could not be read).
    Refused(Context, Diagnostic),
    /// Not a valid invocation; answered with an error when its id is usable.
    Invalid(api::InvalidInvocation),
}

/// One invocation handed to a spawned task, with the semaphore permit it holds and its
/// in-flight count.
pub(crate) struct Job<A, Pm> {
    fetched: Fetched<A>,
    permit: Option<Pm>,
    counted: Counted,
}

/// The request an answer goes to: a valid invocation's context (no copy: the handler
/// gets a clone, which is a reference-count increment), or the ids salvaged from an
/// invalid one.
enum Target {
    Ctx(Context),
    Ids {
        request_id: String,
        invocation_id: Option<String>,
    },
}

impl Target {
    fn request_id(&self) -> &str {
        match self {
            Target::Ctx(c) => c.request_id(),
            Target::Ids { request_id, .. } => request_id,
        }
    }

    fn invocation_id(&self) -> Option<&str> {
        match self {
            Target::Ctx(c) => c.invocation_id(),
            Target::Ids { invocation_id, .. } => invocation_id.as_deref(),
        }
    }
}

/// What [`Core::prepare_post`] left to do.
enum Prepared {
    /// A buffered post is encoded in the connection's write buffer, ready to send.
    Buffered { is_error: bool },
    /// Nothing: the post was streamed already, or could not be encoded (logged).
    Done,
}

/// A post sent on a slot's post connection whose reply has not been read yet. Its
/// invocation stays in flight until then, so that shutdown waits for the reply.
struct PendingPost<'s, S: InFlightCount> {
    target: Target,
    _in_flight: InFlight<'s, S>,
    is_error: bool,
    /// The connection had carried a reply before this post: a failure to read this reply
    /// is most likely the server's idle close, and the post (still in the write buffer)
    /// is sent again at once rather than after a backoff (see [`Core::before_resend`]).
    reused: bool,
    /// The post's streak of failed attempts so far, which a resend after its reply failed
    /// goes on with: one limit for the whole delivery.
    backoff: Backoff,
}

/// How a handler run ended when it did not return normally.
enum Abnormal {
    Panic(Box<dyn Any + Send>),
    Deadline,
}

impl<I, A, H, S, Sp> Core<I, A, H, S, Sp>
where
    I: Io,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
    S: State<Conn<I::Stream>>,
{
    pub fn new(
        io: I,
        plan: CorePlan,
        settings: CoreSettings,
        handler: H,
        control: Control,
        spawner: Sp,
        heartbeat: Option<Heartbeat>,
    ) -> Self {
        let seed = (plan.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0)
            ^ u64::from(std::process::id());
        let state = S::new(&plan, seed);
        if let Some(beat) = heartbeat {
            state.set_heartbeat(beat);
        }
        Core {
            state,
            io,
            plan,
            settings,
            handler,
            control,
            spawner,
            last_slow_log: std::sync::Mutex::new(None),
            last_retry_log: std::sync::Mutex::new(None),
            last_post_retry_log: std::sync::Mutex::new(None),
            stop_began: std::sync::OnceLock::new(),
            _payload: PhantomData,
        }
    }

    /// Runs the core until shutdown, then drains in-flight invocations for at most the
    /// grace period. Returns the core's report.
    pub async fn run<P>(this: P) -> CoreReport
    where
        P: Deref<Target = Self> + Clone + 'static,
        Sp: Spawner<P, Job<A, S::Permit>>,
    {
        let started = Instant::now();
        let cpu_start = thread_cpu_time();
        let driver = this.io.driver_name();
        tracing::info!(
            core = this.plan.index,
            cpu = this.plan.cpu,
            driver,
            strategy = %this.settings.strategy,
            pollers = this.plan.pollers,
            permits = ?this.plan.permits,
            "core started"
        );
        for slot in 0..this.plan.pollers {
            this.spawner.spawn_loop(this.clone(), slot);
        }
        if this.defers_post_replies() || this.state.heartbeat().is_some() {
            this.spawner.spawn_ticker(this.clone());
        }
        this.control.stopped().await;
        this.stop_began.get_or_init(Instant::now);
        // Slots parked on `/next` with a deferred post pending read its reply now.
        this.state.fire_all();
        {
            let drain = pin!(Self::drain(&this));
            let grace = pin!(this.io.sleep(this.settings.shutdown_grace));
            if let futures_util::future::Either::Right(_) =
                futures_util::future::select(drain, grace).await
            {
                tracing::warn!(
                    core = this.plan.index,
                    in_flight = this.state.in_flight(),
                    "shutdown grace period over with invocations still running"
                );
            }
        }
        let cpu_end = thread_cpu_time();
        let s = &this.state;
        CoreReport {
            index: this.plan.index,
            cpu: this.plan.cpu,
            driver,
            invocations: s.get(Stat::Invocations),
            responses: s.get(Stat::Responses),
            errors: s.get(Stat::Errors),
            panics: s.get(Stat::Panics),
            deserialize_errors: s.get(Stat::DeserializeErrors),
            invalid_invocations: s.get(Stat::InvalidInvocations),
            post_failures: s.get(Stat::PostFailures),
            reconnects: s.get(Stat::Reconnects),
            deadlines_exceeded: s.get(Stat::DeadlinesExceeded),
            slow_polls: s.get(Stat::SlowPolls),
            next_failures: s.get(Stat::NextFailures),
            stalls: 0,
            elapsed: started.elapsed(),
            user_time: cpu_end.0.saturating_sub(cpu_start.0),
            system_time: cpu_end.1.saturating_sub(cpu_start.1),
        }
    }

    /// Wakes what waits on the core's own signals (the ticker, slots with a deferred post
    /// pending) so that they see the shutdown: what [`Core::run`] does once shutdown
    /// begins, for a run whose future was dropped before it could.
    #[cfg(feature = "tokio")]
    pub(crate) fn wake_for_shutdown(&self) {
        self.state.fire_all();
    }

    fn stopping(&self) -> bool {
        self.control.is_shutting_down()
    }

    /// How long a post's streak of failures or wait for a reply that began at `since`
    /// (`None`: now) may last: the unreachable timeout, and once shutting down no later
    /// than the end of the grace period (on the multi-thread shim, tasks outlive the
    /// run). `None`: no limit. The clock is only read once shutting down: a reply is
    /// waited for on every invocation.
    fn post_limit(&self, since: Option<Instant>) -> Option<Duration> {
        let limit = self.settings.unreachable_timeout;
        if !self.stopping() {
            return limit;
        }
        let stop = *self.stop_began.get_or_init(Instant::now);
        let since = since.unwrap_or_else(Instant::now);
        let left = (stop + self.settings.shutdown_grace).saturating_duration_since(since);
        Some(limit.map_or(left, |l| l.min(left)))
    }

    fn defers_post_replies(&self) -> bool {
        self.settings.strategy == Strategy::WorkerPerSlot
            && self.settings.deferred_post_replies
            && !self.settings.pipelining
    }

    /// The core's ticker: the settle tick (every [`SETTLE_TICK`], fires the signals of
    /// slots that have had a deferred post pending for two ticks, see
    /// [`Core::fetch_settling`]; one timer per core, not one per invocation) and the stall
    /// watchdog's heartbeat (every [`Heartbeat::period`]), on one timer.
    ///
    /// While no invocation is in flight there is nothing to settle (a deferred post keeps
    /// its invocation in flight until its reply is read) and no handler to watch, so the
    /// ticker marks the heartbeat idle and waits without a timer until an invocation
    /// starts: an idle core wakes nobody.
    pub async fn ticker(&self) {
        let settle = self.defers_post_replies();
        let heartbeat = self.state.heartbeat();
        let period = heartbeat.map_or(SETTLE_TICK, |b| b.period().min(SETTLE_TICK));
        let mut since_settle = Duration::ZERO;
        while !self.stopping() {
            if let Some(beat) = heartbeat {
                beat.tick();
            }
            self.io.sleep(period).await;
            since_settle += period;
            if since_settle >= SETTLE_TICK {
                since_settle = Duration::ZERO;
                if settle {
                    self.state.tick();
                }
            }
            if self.state.in_flight() == 0 && !self.stopping() {
                if let Some(beat) = heartbeat {
                    beat.idle();
                }
                // The invocation that ends this wait stamps the heartbeat itself, before
                // its handler runs: this task only runs once the thread is free again.
                self.state.busy().await;
                since_settle = Duration::ZERO;
            }
        }
    }

    /// Waits until no invocation is in flight and none arrived for [`SHUTDOWN_LINGER`]:
    /// a `/next` reply the API sent just before shutdown may still be on the wire, and it
    /// is read, handled and answered rather than dropped with the core.
    async fn drain(&self) {
        loop {
            self.state.drained().await;
            let seen = self.state.get(Stat::Invocations) + self.state.get(Stat::InvalidInvocations);
            self.io.sleep(SHUTDOWN_LINGER).await;
            let now = self.state.get(Stat::Invocations) + self.state.get(Stat::InvalidInvocations);
            if now == seen && self.state.in_flight() == 0 {
                return;
            }
        }
    }

    /// Keeps one poll loop alive: a loop that ends by a bug (a panic in our code, not the
    /// handler's, which is caught closer) is logged and restarted, so the core never runs
    /// with fewer `/next` polls than configured.
    pub async fn supervise<P>(this: P, slot: usize)
    where
        P: Deref<Target = Self> + Clone + 'static,
        Sp: Spawner<P, Job<A, S::Permit>>,
    {
        loop {
            let run = match this.settings.strategy {
                Strategy::WorkerPerSlot => AssertUnwindSafe(this.slot_loop()).catch_unwind().await,
                Strategy::Unbounded | Strategy::Semaphore { .. } => {
                    AssertUnwindSafe(Self::poller_loop(this.clone()))
                        .catch_unwind()
                        .await
                }
            };
            if this.stopping() {
                return;
            }
            match run {
                Ok(()) => return,
                Err(panic) => {
                    tracing::error!(
                        core = this.plan.index,
                        slot,
                        panic = panic_message(&*panic),
                        "poll loop panicked; restarting it"
                    );
                    this.io.sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Worker-per-slot: `/next`, handle, post, repeat.
    ///
    /// By default a slot has two connections: one for its `/next` polls, one for its
    /// posts. It sends the post, then the next `/next`, and goes to sleep waiting for the
    /// next invocation; the post's reply is read when that invocation comes, before its
    /// handler runs (it is in the socket buffer by then). So a slot re-polls without waiting a
    /// round trip for the reply, and sleeps once per invocation instead of twice: the
    /// reply's arrival wakes nobody. Each connection stays strictly request-reply.
    ///
    /// With pipelining, the post and the next `/next` share one connection and one write.
    /// With deferred replies off, the post goes on the poll connection and its reply is
    /// read before the next `/next` is sent (the official runtime's sequence).
    async fn slot_loop(&self) {
        let mut conn = Conn::new();
        let mut post_conn = Conn::new();
        let mut pending: Option<PendingPost<'_, S>> = None;
        let signal = self.state.new_slot();
        let mut backoff = Backoff::default();
        // With pipelining, the post of the previous invocation already carried this
        // slot's next `/next`.
        let mut next_sent = false;
        // A `/next` already sent (pipelined behind the last post, as shutdown began) is
        // read like any parked poll: an invocation the API routes to it is still served
        // while the core drains.
        while next_sent || !self.stopping() {
            conn.stamp_sends = backoff.failing_since.is_some();
            let fetched = self
                .fetch_settling(&mut conn, next_sent, &mut post_conn, &mut pending, &signal)
                .await;
            // Dropped at the end of this pass (or by a panic unwinding through it): the
            // invocation is finished then, unless a deferred post takes it over.
            let (fetched, in_flight) = match fetched {
                Ok(f) => f,
                Err(e) => {
                    next_sent = false;
                    if !self.fetch_failed(e, &mut conn, &mut backoff).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            // The last post is settled before the next handler runs, not after: its reply
            // is in the socket buffer by now, as a rule, and a post that went out on a
            // connection the API had closed while idle is sent again now, rather than
            // after this handler, by which time it may have missed its own deadline. (A
            // post whose fresh connection failed is sent again after a backoff, and this
            // handler waits for that, up to the unreachable timeout: an API that hands
            // out invocations but refuses or resets new connections is rare, and a late
            // result beats a lost one.)
            if let Some(p) = pending.take() {
                self.settle(&mut post_conn, p).await;
            }
            let Some((target, outcome)) = self.handle(fetched).await else {
                next_sent = false;
                continue;
            };
            if self.settings.pipelining && !self.stopping() {
                next_sent = self
                    .post_pipelined(&mut conn, &target, outcome, in_flight)
                    .await;
            } else if self.settings.pipelining {
                next_sent = self.post(&mut conn, &target, outcome, false).await;
            } else if self.defers_post_replies() {
                pending = self
                    .post_deferred(&mut post_conn, target, outcome, in_flight)
                    .await;
            } else {
                next_sent = self.post(&mut conn, &target, outcome, false).await;
            }
        }
        if let Some(p) = pending.take() {
            self.settle(&mut post_conn, p).await;
        }
    }

    /// Waits for the next invocation on `conn`; meanwhile, if a deferred post is pending
    /// and no invocation came for two settle ticks (50 to 100 ms), settles it (taking it
    /// out of `pending`). Without that, the reply to the last post before a quiet spell
    /// would go unread, and a post that a server-side idle close swallowed would never be
    /// sent again.
    async fn fetch_settling<'s>(
        &'s self,
        conn: &mut Conn<I::Stream>,
        next_sent: bool,
        post_conn: &mut Conn<I::Stream>,
        pending: &mut Option<PendingPost<'s, S>>,
        signal: &S::Slot,
    ) -> Result<(Fetched<A>, InFlight<'s, S>), Error> {
        if pending.is_none() {
            return self.fetch(conn, next_sent).await;
        }
        signal.arm();
        // On the multi-thread shim, shutdown may have fired every signal between this
        // loop's check and the arm: nothing would fire this one, and the pending post
        // would hold its invocation in flight through the whole grace period.
        if self.stopping() {
            signal.disarm();
            if let Some(p) = pending.take() {
                self.settle(post_conn, p).await;
            }
            return self.fetch(conn, next_sent).await;
        }
        // Set once the settle has begun reading: from then on it must run to completion,
        // because dropping an in-flight read may discard bytes already received. (An
        // atomic only so that the future stays `Send` for the tokio shim; this one task
        // reads and writes it.)
        let reading = std::sync::atomic::AtomicBool::new(false);
        let fetch = pin!(self.fetch(conn, next_sent));
        let settle = pin!(async {
            signal.fired().await;
            reading.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(p) = pending.take() {
                self.settle(post_conn, p).await;
            }
        });
        let result = match futures_util::future::select(fetch, settle).await {
            futures_util::future::Either::Left((fetched, settle)) => {
                if reading.load(std::sync::atomic::Ordering::Relaxed) {
                    settle.await;
                }
                fetched
            }
            futures_util::future::Either::Right(((), fetch)) => fetch.await,
        };
        signal.disarm();
        result
    }

    /// Unbounded and semaphore: `/next`, spawn the handler, poll again at once.
    async fn poller_loop<P>(this: P)
    where
        P: Deref<Target = Self> + Clone + 'static,
        Sp: Spawner<P, Job<A, S::Permit>>,
    {
        let mut conn = Conn::new();
        let mut backoff = Backoff::default();
        while !this.stopping() {
            let permit = this.state.acquire().await;
            if this.stopping() {
                return;
            }
            conn.stamp_sends = backoff.failing_since.is_some();
            let (fetched, in_flight) = match this.fetch(&mut conn, false).await {
                Ok(f) => f,
                Err(e) => {
                    drop(permit);
                    if !this.fetch_failed(e, &mut conn, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let counted = in_flight.detach();
            this.spawner.spawn_invocation(
                this.clone(),
                Job {
                    fetched,
                    permit,
                    counted,
                },
            );
        }
    }

    /// The body of a spawned invocation task: handle, then post on a pooled connection.
    pub async fn process(&self, job: Job<A, S::Permit>) {
        let Job {
            fetched,
            permit,
            counted,
        } = job;
        let in_flight = InFlight::adopt(&self.state, counted);
        let run = AssertUnwindSafe(async {
            let _in_flight = in_flight;
            if let Some((target, outcome)) = self.handle(fetched).await {
                let mut conn = self.state.take_conn().unwrap_or_else(Conn::new);
                self.post(&mut conn, &target, outcome, false).await;
                if conn.is_open() {
                    self.state.put_conn(conn);
                }
            }
        });
        // User code is guarded where it runs; a panic here is a bug of ours. A detached
        // task would swallow it silently (the invocation's count goes with the task's
        // future all the same).
        if let Err(panic) = run.catch_unwind().await {
            tracing::error!(
                core = self.plan.index,
                panic = panic_message(&*panic),
                "invocation task panicked (a bug in lambda-tpc)"
            );
        }
        drop(permit);
    }

    /// Deals with a failed `/next`. Returns false if the loop must stop (fatal error or
    /// shutdown).
    async fn fetch_failed(
        &self,
        e: Error,
        conn: &mut Conn<I::Stream>,
        backoff: &mut Backoff,
    ) -> bool {
        // Only stamped during a streak: the first failure of one starts it anyway.
        let held = conn
            .sent_at
            .take()
            .is_some_and(|t| t.elapsed() >= HELD_POLL);
        // A reply read whole (a status other than 200, an invocation without a usable
        // request id) leaves the connection in step, and the next poll goes on it: a new
        // connection would cost a handshake and tell the API nothing. (Where the body
        // could not be read, `fetch` has closed it already.) Any other failure may have
        // left part of a reply unread.
        if !(e.is_status() || e.is_invalid_invocation()) {
            conn.close();
        }
        self.state.bump(Stat::NextFailures);
        if e.is_container_error() {
            self.control.fatal(e);
            return false;
        }
        if self.stopping() {
            return false;
        }
        if e.is_reply_read_failure() && held {
            backoff.reset();
        }
        let limit = self.settings.unreachable_timeout;
        let what = "/next failed; retrying";
        let delay = match self.retry_delay(backoff, &e, limit, &self.last_retry_log, what) {
            Ok(delay) => delay,
            Err(failing_for) => {
                let api = self.settings.api.to_string();
                self.control.fatal(Error::unreachable(failing_for, api, e));
                return false;
            }
        };
        self.io.sleep(delay).await;
        true
    }

    /// One more failure in `backoff`'s streak (which it starts if none is running): the
    /// delay before the next try, or `Err(how long the streak has lasted)` once that is
    /// `limit` or more (`None`: no limit). Not past the limit, the last try comes when it
    /// runs out, not a backoff later. Every slot of every core retries in an outage, so
    /// the retry is logged (as `what`, with `e`) at most once a second per core, through
    /// `last_log`.
    fn retry_delay(
        &self,
        backoff: &mut Backoff,
        e: &Error,
        limit: Option<Duration>,
        last_log: &std::sync::Mutex<Option<Instant>>,
        what: &'static str,
    ) -> Result<Duration, Duration> {
        let since = *backoff.failing_since.get_or_insert_with(Instant::now);
        let failing_for = since.elapsed();
        if limit.is_some_and(|l| failing_for >= l) {
            return Err(failing_for);
        }
        let delay = backoff
            .next(self.state.random())
            .min(limit.map_or(Duration::MAX, |l| l - failing_for));
        if once_a_second(last_log) {
            tracing::warn!(
                core = self.plan.index,
                api = %self.settings.addr,
                error = %e,
                attempt = backoff.attempt,
                failing_for_ms = failing_for.as_millis() as u64,
                retry_in_ms = delay.as_millis() as u64,
                "{what}"
            );
        }
        Ok(delay)
    }

    /// Sends `/next` (unless already sent) and reads one invocation, counted in flight.
    async fn fetch(
        &self,
        conn: &mut Conn<I::Stream>,
        already_sent: bool,
    ) -> Result<(Fetched<A>, InFlight<'_, S>), Error> {
        let s = &self.settings;
        // No timeout on the head, deliberately: this is the long poll. Abandoning it would
        // leave a poll queued on the API side that the next invocation would be routed
        // to. The head is read without a body limit so that an oversized event still
        // yields its request id: it is then answered with an error instead of being lost.
        // (Read here, not in a helper: the extra future layer cost about 300 instructions
        // per invocation, moving the head and context out of it.)
        let context_of = |head: &ResponseHead<'_, '_>| {
            (head.status == 200).then(|| Context::from_headers(head.headers))
        };
        let reused = !already_sent && conn.is_reused();
        let polled = if already_sent {
            Ok(())
        } else {
            self.send_next(conn).await
        };
        let mut reply = match polled {
            Ok(()) => conn.read_head(usize::MAX, context_of).await,
            Err(e) => Err(e),
        };
        // A slot's poll connection sits idle while its handler runs (its posts go on
        // another), long enough for the API to close it as an idle keep-alive: a failure
        // before any reply byte on a reused connection is that, not an outage, and is
        // polled again at once on a fresh one (no warning, no backoff).
        if let Err(e) = &reply
            && reused
            && (e.is_closed() || e.is_io())
        {
            tracing::debug!(error = %e, "poll connection was closed while idle; polling on a fresh one");
            conn.close();
            reply = match self.send_next(conn).await {
                Ok(()) => conn.read_head(usize::MAX, context_of).await,
                Err(e) => Err(e),
            };
        }
        let (head, ctx) = reply?;
        let ctx = match ctx {
            None => {
                // The status decides (a 403 or 500 ends the run); a body that cannot be
                // read only loses the detail it carried.
                let e = match conn.read_body(&head, DEFAULT_MAX_BODY_BYTES).await {
                    Ok(body) => {
                        let e = Error::status(head.status, NEXT_REQUEST, conn.body(&body));
                        conn.finish(&head, &body);
                        e
                    }
                    Err(body_error) => {
                        conn.close();
                        let detail = format!("(body unreadable: {body_error})");
                        Error::status(head.status, NEXT_REQUEST, detail.as_bytes())
                    }
                };
                return Err(e);
            }
            Some(Err(invalid)) => {
                let in_flight = invalid
                    .request_id
                    .is_some()
                    .then(|| InFlight::start(&self.state));
                // Drain the body to keep the connection usable; its content is moot. If
                // it cannot be read (too large, cut short, bad framing) the connection
                // goes, but an invocation with a request id is still answered.
                match conn.read_body(&head, s.max_event_bytes).await {
                    Ok(body) => conn.finish(&head, &body),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not read an invalid invocation's body");
                        conn.close();
                    }
                }
                return match in_flight {
                    Some(in_flight) => Ok((Fetched::Invalid(invalid), in_flight)),
                    // Nobody to answer: a failed `/next` (counted, backed off, logged at
                    // most once a second). An API or proxy that answered every poll at
                    // once like this made the slot poll at full speed, an error line each.
                    None => {
                        self.state.bump(Stat::InvalidInvocations);
                        Err(invalid.error.into())
                    }
                };
            }
            Some(Ok(ctx)) => ctx,
        };
        self.state.bump(Stat::Invocations);
        let in_flight = InFlight::start(&self.state);
        if let Some(len) = head.content_length()
            && len > s.max_event_bytes as u64
        {
            let refused = self.event_too_large(ctx, len);
            if let Err(e) = conn.discard_body(&head).await {
                // The connection is gone; the invocation is still answered (on another).
                tracing::warn!(core = self.plan.index, error = %e, "could not skip an oversized event body");
                conn.close();
            }
            return Ok((refused, in_flight));
        }
        let body = match conn.read_body(&head, s.max_event_bytes).await {
            Ok(body) => body,
            Err(e) if e.codec_error() == Some(CodecError::BodyTooLarge) => {
                // A chunked event over the limit: we stopped reading mid-body, so the
                // connection is closed, but the invocation can still be answered.
                return Ok((
                    self.event_too_large(ctx, s.max_event_bytes as u64 + 1),
                    in_flight,
                ));
            }
            Err(e) => {
                // The head arrived, the body did not (reset, bad framing): answer the
                // invocation rather than leave it to time out.
                tracing::error!(
                    core = self.plan.index,
                    request_id = ctx.request_id(),
                    error = %e,
                    "could not read the event body; answering with an error"
                );
                let d = Diagnostic::new(
                    ERROR_TYPE_EVENT_READ,
                    format!("the runtime could not read the event payload: {e}"),
                );
                return Ok((Fetched::Refused(ctx, d), in_flight));
            }
        };
        // The payload type's `Deserialize` is user code: a panic in it is answered like a
        // handler's, not left to unwind through the poll loop with the invocation unanswered.
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            serde_json::from_slice::<A>(conn.body(&body))
        }));
        let fetched = match decoded {
            Err(p) => {
                let what = "the event's deserialization";
                let d = self.abnormal(ctx.request_id(), what, Abnormal::Panic(p));
                Fetched::Refused(ctx, d)
            }
            Ok(Ok(payload)) => Fetched::Event(LambdaEvent::new(payload, ctx)),
            Ok(Err(e)) => {
                self.state.bump(Stat::DeserializeErrors);
                let d = Diagnostic::new(
                    ERROR_TYPE_DESERIALIZE,
                    format!("failed to deserialize the event payload: {e}"),
                );
                Fetched::Refused(ctx, d)
            }
        };
        conn.finish(&head, &body);
        Ok((fetched, in_flight))
    }

    /// Sends a `/next` on `conn` (connecting first if needed).
    async fn send_next(&self, conn: &mut Conn<I::Stream>) -> Result<(), Error> {
        if conn.ensure_connected(&self.io, self.settings.addr).await?
            && self.state.get(Stat::Invocations) > 0
        {
            self.state.bump(Stat::Reconnects);
        }
        conn.wbuf.clear();
        api::encode_next(&mut conn.wbuf, &self.settings.api)?;
        conn.send().await?;
        conn.sent_at = conn.stamp_sends.then(Instant::now);
        Ok(())
    }

    /// An invocation whose event exceeds the configured limit: answered with an error
    /// rather than handed to the handler.
    fn event_too_large(&self, ctx: Context, len: u64) -> Fetched<A> {
        tracing::error!(
            core = self.plan.index,
            request_id = ctx.request_id(),
            bytes = len,
            limit = self.settings.max_event_bytes,
            "event payload over the limit; answering with an error"
        );
        let d = Diagnostic::new(
            ERROR_TYPE_EVENT_TOO_LARGE,
            format!(
                "event payload of {len} bytes exceeds the runtime's limit of {} bytes",
                self.settings.max_event_bytes
            ),
        );
        Fetched::Refused(ctx, d)
    }

    /// Runs the handler (or not, for refused events) and returns where to post what.
    /// `None` when there is nobody to answer.
    async fn handle(
        &self,
        fetched: Fetched<A>,
    ) -> Option<(Target, Result<H::Response, Diagnostic>)> {
        match fetched {
            Fetched::Event(event) => {
                let target = Target::Ctx(event.context.clone());
                let outcome = self.run_handler(event, &target).await;
                Some((target, outcome))
            }
            Fetched::Refused(ctx, d) => Some((Target::Ctx(ctx), Err(d))),
            Fetched::Invalid(invalid) => {
                self.state.bump(Stat::InvalidInvocations);
                tracing::error!(
                    core = self.plan.index,
                    error = %invalid.error,
                    request_id = invalid.request_id.as_deref().unwrap_or("<none>"),
                    "invalid invocation from /next"
                );
                match invalid.request_id {
                    Some(request_id) => Some((
                        Target::Ids {
                            request_id,
                            invocation_id: invalid.invocation_id,
                        },
                        Err(Diagnostic::new(
                            ERROR_TYPE_INVALID_INVOCATION,
                            format!("invalid invocation: {}", invalid.error),
                        )),
                    )),
                    None => None,
                }
            }
        }
    }
}

/// Whether a rate-limited log line may go out now (at most once a second per `last`),
/// recording it if so.
fn once_a_second(last: &std::sync::Mutex<Option<Instant>>) -> bool {
    let now = Instant::now();
    let mut last = crate::control::lock(last);
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        *last = Some(now);
        true
    } else {
        false
    }
}

/// Returns `Pending` once (after waking itself), so that the executor runs its other
/// tasks before this one goes on.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Exponential backoff with jitter for `/next` failures: 5 ms doubling to 1 s, each
/// delay drawn uniformly from its upper half so that many slots do not retry in step.
#[derive(Default)]
struct Backoff {
    attempt: u32,
    /// When the current streak of failures began (for the unreachable timeout).
    failing_since: Option<Instant>,
}

/// A `/next` that the API held this long before it failed was parked there: the API was
/// up, and the streak of failures starts again from this one. The unreachable timeout is
/// for an API that cannot be reached, not for a long poll it dropped after a quiet spell.
const HELD_POLL: Duration = Duration::from_secs(1);

impl Backoff {
    const BASE_MS: u64 = 5;
    const CAP_MS: u64 = 1000;

    fn next(&mut self, random: u64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = Self::BASE_MS
            .saturating_mul(1u64 << self.attempt.min(20).saturating_sub(1))
            .min(Self::CAP_MS);
        let half = ceiling / 2;
        Duration::from_millis(half + random % (ceiling - half + 1))
    }

    fn reset(&mut self) {
        self.attempt = 0;
        self.failing_since = None;
    }
}

/// User and system CPU time of the calling thread so far.
pub(crate) fn thread_cpu_time() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; RUSAGE_THREAD only reads the
    // calling thread's counters and fills the struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    // SAFETY: getrusage returned 0, so it filled the struct (which was zeroed anyway).
    let u = unsafe { usage.assume_init() };
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    (tv(u.ru_utime), tv(u.ru_stime))
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps_with_jitter() {
        let mut x = 12345u64;
        let mut rand = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 11
        };
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..15).map(|_| b.next(rand()).as_millis() as u64).collect();
        assert!((2..=5).contains(&delays[0]), "{delays:?}");
        assert!((5..=10).contains(&delays[1]), "{delays:?}");
        assert!(delays[14] >= 500 && delays[14] <= 1000, "{delays:?}");
        b.reset();
        assert!(b.next(rand()).as_millis() <= 5);
    }

    #[test]
    fn rate_limited_logging() {
        let last = std::sync::Mutex::new(None);
        assert!(once_a_second(&last));
        assert!(!once_a_second(&last), "twice within a second");
        *last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(2));
        assert!(once_a_second(&last), "a second later");
    }

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let p = std::panic::catch_unwind(|| panic!("{}", 42)).unwrap_err();
        assert_eq!(panic_message(&*p), "42");
    }
}
