//! One core's share of the runtime: its connections, its strategy loops, and the
//! invocation path (fetch, decode, run the handler, post the result).
//!
//! Everything here lives on one thread. State is in `Cell`/`RefCell` behind an `Rc`:
//! the tasks of a core share it, nothing else can see it, so no lock or atomic is
//! needed on the per-invocation path.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::de::DeserializeOwned;

use super::conn::{Body, Conn};
use crate::api::{
    self, Context, Diagnostic, ERROR_TYPE_DESERIALIZE, ERROR_TYPE_EVENT_TOO_LARGE,
    ERROR_TYPE_HANDLER_PANIC, ERROR_TYPE_INVALID_INVOCATION, ERROR_TYPE_RESPONSE_SERIALIZE,
    ERROR_TYPE_RESPONSE_TOO_LARGE, LambdaEvent, RuntimeApi,
};
use crate::config::{CorePlan, Strategy};
use crate::control::{Control, CoreReport};
use crate::error::Error;
use crate::executor::Executor;
use crate::handler::Handler;
use crate::http::CodecError;

/// Counters of one core, reported when it exits. `Cell`s: single-threaded.
#[derive(Default)]
struct Stats {
    invocations: Cell<u64>,
    responses: Cell<u64>,
    errors: Cell<u64>,
    panics: Cell<u64>,
    deserialize_errors: Cell<u64>,
    invalid_invocations: Cell<u64>,
    post_failures: Cell<u64>,
    reconnects: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
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
}

/// One core's runtime state, shared by its tasks through an `Rc` (not `Arc`: it never
/// leaves the core's thread, so reference counting needs no atomics).
pub(crate) struct Core<E: Executor, A, H> {
    exec: E,
    plan: CorePlan,
    settings: CoreSettings,
    handler: H,
    control: Control,
    /// Idle keep-alive connections for posting results (unbounded and semaphore
    /// strategies; worker-per-slot posts on the slot's own connection). A `RefCell`
    /// borrowed only for a push or pop, never across an await.
    pool: RefCell<Vec<Conn<E::Stream>>>,
    /// Permits of the semaphore strategy.
    permits: Option<LocalSemaphore>,
    /// Invocations received and not yet answered, for the shutdown drain.
    in_flight: Cell<usize>,
    /// The shutdown drain waiting for `in_flight` to reach zero.
    drain_waker: RefCell<Option<Waker>>,
    /// State of the backoff jitter generator (xorshift; quality is irrelevant).
    rng: Cell<u64>,
    stats: Stats,
    _payload: PhantomData<fn() -> A>,
}

/// What a `/next` produced.
enum Fetched<A> {
    /// A valid invocation with a decoded payload.
    Event(LambdaEvent<A>),
    /// A valid invocation whose payload did not decode: answer with this error.
    BadPayload(Context, Diagnostic),
    /// Not a valid invocation; answered with an error when its id is usable.
    Invalid(api::InvalidInvocation),
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

impl<E, A, H> Core<E, A, H>
where
    E: Executor,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
{
    pub fn new(
        exec: E,
        plan: CorePlan,
        settings: CoreSettings,
        handler: H,
        control: Control,
    ) -> Rc<Self> {
        let seed = (plan.cpu as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ Instant::now().elapsed().as_nanos() as u64
            ^ std::process::id() as u64;
        Rc::new(Core {
            permits: plan.permits.map(LocalSemaphore::new),
            exec,
            plan,
            settings,
            handler,
            control,
            pool: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            drain_waker: RefCell::new(None),
            rng: Cell::new(seed | 1),
            stats: Stats::default(),
            _payload: PhantomData,
        })
    }

    /// Runs the core until shutdown, then drains in-flight invocations for at most the
    /// grace period. Returns the core's report.
    pub async fn run(self: Rc<Self>) -> CoreReport {
        let started = Instant::now();
        let cpu_start = thread_cpu_time();
        let driver = self.exec.driver_name();
        tracing::info!(
            core = self.plan.index,
            cpu = self.plan.cpu,
            driver,
            strategy = %self.settings.strategy,
            pollers = self.plan.pollers,
            permits = ?self.plan.permits,
            "core started"
        );
        for slot in 0..self.plan.pollers {
            let core = self.clone();
            self.exec.spawn(async move { core.supervise(slot).await });
        }
        self.control.stopped().await;
        let drain = Drain { core: &self };
        let grace = self.exec.sleep(self.settings.shutdown_grace);
        futures_util::pin_mut!(grace);
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(drain, grace).await
        {
            tracing::warn!(
                core = self.plan.index,
                in_flight = self.in_flight.get(),
                "shutdown grace period over with invocations still running"
            );
        }
        let s = &self.stats;
        let cpu_end = thread_cpu_time();
        CoreReport {
            user_time: cpu_end.0.saturating_sub(cpu_start.0),
            system_time: cpu_end.1.saturating_sub(cpu_start.1),
            index: self.plan.index,
            cpu: self.plan.cpu,
            driver,
            invocations: s.invocations.get(),
            responses: s.responses.get(),
            errors: s.errors.get(),
            panics: s.panics.get(),
            deserialize_errors: s.deserialize_errors.get(),
            invalid_invocations: s.invalid_invocations.get(),
            post_failures: s.post_failures.get(),
            reconnects: s.reconnects.get(),
            elapsed: started.elapsed(),
        }
    }

    fn stopping(&self) -> bool {
        self.control.is_shutting_down()
    }

    /// Keeps one poll loop alive: a loop that ends by a bug (a panic in our code, not the
    /// handler's, which is caught closer) is logged and restarted, so the core never runs
    /// with fewer `/next` polls than configured.
    async fn supervise(self: Rc<Self>, slot: usize) {
        loop {
            let run = match self.settings.strategy {
                Strategy::WorkerPerSlot => {
                    AssertUnwindSafe(self.clone().slot_loop())
                        .catch_unwind()
                        .await
                }
                Strategy::Unbounded | Strategy::Semaphore { .. } => {
                    AssertUnwindSafe(self.clone().poller_loop())
                        .catch_unwind()
                        .await
                }
            };
            if self.stopping() {
                return;
            }
            match run {
                Ok(()) => return,
                Err(panic) => {
                    tracing::error!(
                        core = self.plan.index,
                        slot,
                        panic = panic_message(&*panic),
                        "poll loop panicked; restarting it"
                    );
                    self.exec.sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Worker-per-slot: `/next`, handle, post on the same connection, repeat.
    async fn slot_loop(self: Rc<Self>) {
        let mut conn = Conn::new();
        let mut backoff = Backoff::default();
        // With pipelining, the post of the previous invocation already carried this
        // slot's next `/next`.
        let mut next_sent = false;
        while !self.stopping() {
            let fetched = match self.fetch(&mut conn, next_sent).await {
                Ok(f) => f,
                Err(e) => {
                    next_sent = false;
                    if !self.fetch_failed(e, &mut conn, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            next_sent = false;
            let Some((target, outcome)) = self.handle(fetched).await else {
                continue;
            };
            let pipeline = self.settings.pipelining && !self.stopping();
            next_sent = self.post(&mut conn, &target, outcome, pipeline).await;
            self.finish_invocation();
        }
    }

    /// Unbounded and semaphore: `/next`, spawn the handler, poll again at once.
    async fn poller_loop(self: Rc<Self>) {
        let mut conn = Conn::new();
        let mut backoff = Backoff::default();
        while !self.stopping() {
            let permit = match &self.permits {
                Some(sem) => Some(sem.acquire().await),
                None => None,
            };
            if self.stopping() {
                return;
            }
            let fetched = match self.fetch(&mut conn, false).await {
                Ok(f) => f,
                Err(e) => {
                    drop(permit);
                    if !self.fetch_failed(e, &mut conn, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let core = self.clone();
            self.exec.spawn(async move {
                if let Some((target, outcome)) = core.handle(fetched).await {
                    let mut post_conn = core.pool.borrow_mut().pop().unwrap_or_else(Conn::new);
                    core.post(&mut post_conn, &target, outcome, false).await;
                    if post_conn.is_open() {
                        core.pool.borrow_mut().push(post_conn);
                    }
                    core.finish_invocation();
                }
                drop(permit);
            });
        }
    }

    /// Deals with a failed `/next`. Returns false if the loop must stop (fatal error).
    async fn fetch_failed(
        &self,
        e: Error,
        conn: &mut Conn<E::Stream>,
        backoff: &mut Backoff,
    ) -> bool {
        conn.close();
        if e.is_container_error() {
            self.control.fatal(e);
            return false;
        }
        if self.stopping() {
            return false;
        }
        let delay = backoff.next(&self.rng);
        tracing::warn!(
            core = self.plan.index,
            error = %e,
            attempt = backoff.attempt,
            retry_in_ms = delay.as_millis() as u64,
            "/next failed; retrying"
        );
        self.exec.sleep(delay).await;
        true
    }

    /// Sends `/next` (unless already sent) and reads one invocation.
    async fn fetch(
        &self,
        conn: &mut Conn<E::Stream>,
        already_sent: bool,
    ) -> Result<Fetched<A>, Error> {
        let s = &self.settings;
        if !already_sent {
            if conn.ensure_connected(&self.exec, s.addr).await? && self.stats.invocations.get() > 0
            {
                bump(&self.stats.reconnects);
            }
            conn.wbuf.clear();
            api::encode_next(&mut conn.wbuf, &s.api)?;
            conn.send().await?;
        }
        // No timeout here, deliberately: this is the long poll. Abandoning it would leave
        // a poll queued on the API side that the next invocation would be routed to.
        // The head is read without a body limit so that an oversized event still yields
        // its request id: it is then answered with an error instead of being lost.
        let (head, ctx) = conn
            .read_head(usize::MAX, |head| {
                (head.status == 200).then(|| Context::from_headers(head.headers))
            })
            .await?;
        if let (Some(Ok(ctx)), Some(len)) = (&ctx, head.content_length())
            && len > s.max_event_bytes as u64
        {
            conn.discard_body(&head).await?;
            return Ok(self.event_too_large(ctx.clone(), len));
        }
        let body = match conn.read_body(&head, s.max_event_bytes).await {
            Ok(body) => body,
            Err(e) if e.codec_error() == Some(CodecError::BodyTooLarge) => {
                // A chunked event over the limit: the connection is closed (we stopped
                // reading mid-body), but the invocation can still be answered.
                match ctx {
                    Some(Ok(ctx)) => {
                        return Ok(self.event_too_large(ctx, s.max_event_bytes as u64 + 1));
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let fetched = match ctx {
            None => {
                let e = Error::status(head.status, "next", conn.body(&body));
                conn.finish(&head, &body);
                return Err(e);
            }
            Some(Err(invalid)) => Fetched::Invalid(invalid),
            Some(Ok(ctx)) => {
                bump(&self.stats.invocations);
                match serde_json::from_slice::<A>(conn.body(&body)) {
                    Ok(payload) => Fetched::Event(LambdaEvent::new(payload, ctx)),
                    Err(e) => {
                        bump(&self.stats.deserialize_errors);
                        let d = Diagnostic::new(
                            ERROR_TYPE_DESERIALIZE,
                            format!("failed to deserialize the event payload: {e}"),
                        );
                        Fetched::BadPayload(ctx, d)
                    }
                }
            }
        };
        conn.finish(&head, &body);
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(fetched)
    }

    /// An invocation whose event exceeds the configured limit: counted, and answered
    /// with an error rather than handed to the handler.
    fn event_too_large(&self, ctx: Context, len: u64) -> Fetched<A> {
        bump(&self.stats.invocations);
        self.in_flight.set(self.in_flight.get() + 1);
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
        Fetched::BadPayload(ctx, d)
    }

    /// Runs the handler (or not, for bad payloads) and returns where to post what.
    /// `None` when there is nobody to answer.
    async fn handle(
        &self,
        fetched: Fetched<A>,
    ) -> Option<(Target, Result<H::Response, Diagnostic>)> {
        match fetched {
            Fetched::Event(event) => {
                let target = Target::Ctx(event.context.clone());
                Some((target, self.run_handler(event).await))
            }
            Fetched::BadPayload(ctx, d) => Some((Target::Ctx(ctx), Err(d))),
            Fetched::Invalid(invalid) => {
                bump(&self.stats.invalid_invocations);
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
                    None => {
                        self.finish_invocation();
                        None
                    }
                }
            }
        }
    }

    async fn run_handler(&self, event: LambdaEvent<A>) -> Result<H::Response, Diagnostic> {
        // A panic can happen when the handler is called (before its future exists) or
        // while the future is polled; both are caught and reported, and the core goes on.
        let panic = match std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.call(event))) {
            Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => return Err(e.into()),
                Err(p) => p,
            },
            Err(p) => p,
        };
        bump(&self.stats.panics);
        let message = panic_message(&*panic);
        tracing::error!(core = self.plan.index, panic = message, "handler panicked");
        Err(Diagnostic::new(ERROR_TYPE_HANDLER_PANIC, message))
    }

    /// Posts an outcome (and, if `then_next`, a `/next` right behind it in the same
    /// write). Returns whether that pipelined `/next` is now in flight on `conn` (always
    /// false without `then_next`). Failures are logged and counted, never propagated: one
    /// lost post must not stop the loop.
    async fn post(
        &self,
        conn: &mut Conn<E::Stream>,
        target: &Target,
        outcome: Result<H::Response, Diagnostic>,
        then_next: bool,
    ) -> bool {
        let s = &self.settings;
        let mut is_error = outcome.is_err();
        conn.wbuf.clear();
        let encoded = match &outcome {
            Ok(response) => self.encode_response(conn, target, response, &mut is_error),
            Err(d) => api::encode_error(
                &mut conn.wbuf,
                &s.api,
                target.request_id(),
                target.invocation_id(),
                d,
            ),
        };
        drop(outcome);
        if let Err(e) = encoded {
            // Only ids that passed validation reach here, so this is a bug; log it rather
            // than send something malformed.
            tracing::error!(request_id = target.request_id(), error = %e, "could not encode the post");
            bump(&self.stats.post_failures);
            return false;
        }
        if then_next && api::encode_next(&mut conn.wbuf, &s.api).is_err() {
            return false;
        }
        let (status, reply) = match self.send_and_read_status(conn).await {
            Ok(r) => r,
            Err(e) => {
                bump(&self.stats.post_failures);
                tracing::warn!(request_id = target.request_id(), error = %e, "posting the result failed");
                conn.close();
                return false;
            }
        };
        conn.trim_write_buffer();
        // A reply that closed the connection means the server did not read on, so a
        // pipelined `/next` behind the post was not taken: the caller sends it again.
        let next_in_flight = then_next && conn.is_open();
        match status {
            200..=299 => bump(if is_error {
                &self.stats.errors
            } else {
                &self.stats.responses
            }),
            413 if !is_error => {
                tracing::warn!(
                    request_id = target.request_id(),
                    "Runtime API answered 413; reporting Function.ResponseSizeTooLarge"
                );
                let d = Diagnostic::new(
                    ERROR_TYPE_RESPONSE_TOO_LARGE,
                    "the Runtime API refused the response as too large (413)",
                );
                // A pipelined `/next` is parked on `conn` and must not be abandoned, so
                // the error goes on another connection in that case.
                let mut other = Conn::new();
                let via = if next_in_flight {
                    &mut other
                } else {
                    &mut *conn
                };
                via.wbuf.clear();
                let posted = api::encode_error(
                    &mut via.wbuf,
                    &s.api,
                    target.request_id(),
                    target.invocation_id(),
                    &d,
                )
                .is_ok()
                    && matches!(self.send_and_read_status(via).await, Ok((200..=299, _)));
                bump(if posted {
                    &self.stats.errors
                } else {
                    &self.stats.post_failures
                });
            }
            code => {
                bump(&self.stats.post_failures);
                tracing::warn!(
                    request_id = target.request_id(),
                    status = code,
                    reply = %reply,
                    "Runtime API did not accept the result"
                );
            }
        }
        next_in_flight
    }

    /// Serializes a response into the write buffer; on a serialization failure or an
    /// oversized body, encodes the corresponding error instead.
    fn encode_response(
        &self,
        conn: &mut Conn<E::Stream>,
        target: &Target,
        response: &H::Response,
        is_error: &mut bool,
    ) -> Result<(), crate::http::CodecError> {
        let s = &self.settings;
        let id = target.request_id();
        let inv = target.invocation_id();
        let slot = api::encode_response(&mut conn.wbuf, &s.api, id, inv)?;
        let failure = match serde_json::to_writer(&mut conn.wbuf, response) {
            Err(e) => Some(Diagnostic::new(
                ERROR_TYPE_RESPONSE_SERIALIZE,
                format!("failed to serialize the response: {e}"),
            )),
            Ok(()) if slot.body_len(&conn.wbuf) > s.max_response_bytes => Some(Diagnostic::new(
                ERROR_TYPE_RESPONSE_TOO_LARGE,
                format!(
                    "response of {} bytes exceeds the limit of {} bytes",
                    slot.body_len(&conn.wbuf),
                    s.max_response_bytes
                ),
            )),
            Ok(()) => None,
        };
        match failure {
            None => {
                slot.finish(&mut conn.wbuf);
                Ok(())
            }
            Some(d) => {
                tracing::error!(request_id = id, error_type = %d.error_type, error = %d.error_message, "response not sent");
                slot.abort(&mut conn.wbuf);
                *is_error = true;
                api::encode_error(&mut conn.wbuf, &s.api, id, inv, &d)
            }
        }
    }

    /// Sends the write buffer and reads the first reply's status (and a snippet of its
    /// body for logs). Retries once on a fresh connection if a reused keep-alive
    /// connection turns out to have been closed by the server before replying (the
    /// request bytes are still in `wbuf`: sending does not consume them).
    async fn send_and_read_status(
        &self,
        conn: &mut Conn<E::Stream>,
    ) -> Result<(u16, String), Error> {
        let reused = conn.is_reused();
        match self.send_once(conn).await {
            Err(e) if reused && (e.is_closed() || e.is_io()) => {
                tracing::debug!(error = %e, "keep-alive connection was closed; retrying on a fresh one");
                conn.close();
                self.send_once(conn).await
            }
            r => r,
        }
    }

    async fn send_once(&self, conn: &mut Conn<E::Stream>) -> Result<(u16, String), Error> {
        if conn
            .ensure_connected(&self.exec, self.settings.addr)
            .await?
        {
            bump(&self.stats.reconnects);
        }
        conn.send().await?;
        let (head, ()) = conn
            .read_head(crate::http::DEFAULT_MAX_BODY_BYTES, |_| ())
            .await?;
        let body: Body = conn
            .read_body(&head, crate::http::DEFAULT_MAX_BODY_BYTES)
            .await?;
        let snippet = if (200..300).contains(&head.status) {
            String::new()
        } else {
            let b = conn.body(&body);
            String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
        };
        conn.finish(&head, &body);
        Ok((head.status, snippet))
    }

    fn finish_invocation(&self) {
        let n = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(n);
        if n == 0
            && let Some(w) = self.drain_waker.borrow_mut().take()
        {
            w.wake();
        }
    }
}

/// Resolves when a core has no invocation in flight.
struct Drain<'a, E: Executor, A, H> {
    core: &'a Core<E, A, H>,
}

impl<E: Executor, A, H> Future for Drain<'_, E, A, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.core.in_flight.get() == 0 {
            Poll::Ready(())
        } else {
            *self.core.drain_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Exponential backoff with jitter for `/next` failures: 5 ms doubling to 1 s, each
/// delay drawn uniformly from its upper half so that many slots do not retry in step.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE_MS: u64 = 5;
    const CAP_MS: u64 = 1000;

    fn next(&mut self, rng: &Cell<u64>) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = Self::BASE_MS
            .saturating_mul(1u64 << self.attempt.min(20).saturating_sub(1))
            .min(Self::CAP_MS);
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        let half = ceiling / 2;
        Duration::from_millis(half + x % (ceiling - half + 1))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A semaphore for one thread: a count and a queue of waiting tasks.
pub(crate) struct LocalSemaphore {
    inner: Rc<SemInner>,
}

struct SemInner {
    available: Cell<usize>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl LocalSemaphore {
    fn new(permits: usize) -> Self {
        LocalSemaphore {
            inner: Rc::new(SemInner {
                available: Cell::new(permits),
                waiters: RefCell::new(VecDeque::new()),
            }),
        }
    }

    fn acquire(&self) -> Acquire<'_> {
        Acquire { sem: &self.inner }
    }
}

struct Acquire<'a> {
    sem: &'a Rc<SemInner>,
}

impl Future for Acquire<'_> {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Permit> {
        let n = self.sem.available.get();
        if n > 0 {
            self.sem.available.set(n - 1);
            Poll::Ready(Permit {
                sem: self.sem.clone(),
            })
        } else {
            self.sem.waiters.borrow_mut().push_back(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A held permit; released on drop.
pub(crate) struct Permit {
    sem: Rc<SemInner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sem.available.set(self.sem.available.get() + 1);
        if let Some(w) = self.sem.waiters.borrow_mut().pop_front() {
            w.wake();
        }
    }
}

/// User and system CPU time of the calling thread so far.
fn thread_cpu_time() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; RUSAGE_THREAD only reads the
    // calling thread's counters and fills the struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    // SAFETY: getrusage returned 0, so it initialised the struct (and it was zeroed).
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
        let rng = Cell::new(12345);
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..15).map(|_| b.next(&rng).as_millis() as u64).collect();
        assert!((2..=5).contains(&delays[0]), "{delays:?}");
        assert!((5..=10).contains(&delays[1]), "{delays:?}");
        assert!(delays[14] >= 500 && delays[14] <= 1000, "{delays:?}");
        b.reset();
        assert!(b.next(&rng).as_millis() <= 5);
    }

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let p = std::panic::catch_unwind(|| panic!("{}", 42)).unwrap_err();
        assert_eq!(panic_message(&*p), "42");
    }
}
