//! The HTTP side: accept loops, the hyper service, request handlers.
//!
//! Each simulator thread runs a single-threaded tokio runtime. Thread 0 owns the listener and
//! deals accepted connections round-robin to the threads (itself included); every connection is
//! one task serving HTTP/1.1 with keep-alive and pipelining (hyper answers pipelined requests in
//! order). Handlers lock the shared [`Core`](super::state::Core) briefly and never across an
//! `.await`.
//!
//! With a [`FaultPlan`](super::FaultPlan), connections are served by [`serve_faulted`] instead,
//! which can take a connection back from hyper to write a faulted reply itself (see
//! [`super::fault`]); without one, [`serve`] is the plain hyper connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::fault::{ConnFault, FaultKind, FaultPlan, PollFault, PostFault, Reason, ReplyFault};
use super::ledger::ErrorRecord;
use super::raw::{self, ConnFaults, ConnTrack, FaultIo, Script};
use super::state::{
    AnswerKind, Handout, INVOCATION_ID_VARIANT, REQUEST_ID_VARIANT, Shared, Verdict, WaiterKey,
    parse_uuid, put_hex, uuid,
};
use crate::api::MAX_TRAILER_SECTION_BYTES;

static REQUEST_ID: HeaderName = HeaderName::from_static("lambda-runtime-aws-request-id");
static DEADLINE_MS: HeaderName = HeaderName::from_static("lambda-runtime-deadline-ms");
static FUNCTION_ARN: HeaderName = HeaderName::from_static("lambda-runtime-invoked-function-arn");
static TRACE_ID: HeaderName = HeaderName::from_static("lambda-runtime-trace-id");
static CLIENT_CONTEXT: HeaderName = HeaderName::from_static("lambda-runtime-client-context");
static COGNITO_IDENTITY: HeaderName = HeaderName::from_static("lambda-runtime-cognito-identity");
static TENANT_ID: HeaderName = HeaderName::from_static("lambda-runtime-aws-tenant-id");
static INVOCATION_ID: HeaderName = HeaderName::from_static("lambda-runtime-invocation-id");
static ERROR_TYPE: HeaderName = HeaderName::from_static("lambda-runtime-function-error-type");
static ERROR_BODY: HeaderName = HeaderName::from_static("lambda-runtime-function-error-body");
static RESPONSE_MODE: HeaderName = HeaderName::from_static("lambda-runtime-function-response-mode");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

const API_ROOT: &str = "/2018-06-01/runtime/";

/// A reply body. Everything but a large event is sent whole with its length; an event is
/// chunked as [`EventFraming`](super::EventFraming) says, which hyper does for a body of
/// unknown length.
pub(super) enum Body {
    /// Sent with a `Content-Length`.
    Sized(Full<Bytes>),
    /// Sent chunked: the bytes in one chunk (taken when sent), then the last chunk.
    Chunked(Option<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Sized(full) => Pin::new(full).poll_frame(cx),
            Self::Chunked(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Sized(full) => full.is_end_stream(),
            // Never known ended in advance: hyper would send an empty body with a
            // `Content-Length: 0` instead of the last chunk.
            Self::Chunked(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Sized(full) => full.size_hint(),
            // Unknown: hyper then chunks an HTTP/1.1 reply.
            Self::Chunked(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// Where a faulted reply's script goes: the task of the connection the request came on.
type Hijack = mpsc::UnboundedSender<Script>;

/// The boxed service future of faulted connections (`poll_without_shutdown` needs it `Unpin`).
type BoxedReply = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Where a connection comes from: thread 0 accepts, the others receive from it.
pub(crate) enum Conns {
    Listener {
        bind: SocketAddr,
        /// Senders to threads 1.. (unbounded: the acceptor must never wait on a busy thread).
        others: Vec<mpsc::UnboundedSender<(std::net::TcpStream, ConnFaults)>>,
    },
    Channel(mpsc::UnboundedReceiver<(std::net::TcpStream, ConnFaults)>),
}

/// Body of one simulator thread. Reports readiness (and, for thread 0, the bound address) on
/// `ready`, then serves until `stop` turns true. Dropping the runtime at the end drops every
/// connection task, which closes the sockets.
pub(crate) fn run_thread(
    shared: Arc<Shared>,
    conns: Conns,
    mut stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<io::Result<Option<SocketAddr>>>,
) {
    let is_acceptor = matches!(conns, Conns::Listener { .. });
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    if is_acceptor || shared.cfg.faults.is_some() {
        // For backing off after an accept error (e.g. out of file descriptors), and for the
        // delays of fault injection.
        builder.enable_time();
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let http = http_builder();
    rt.block_on(async move {
        match conns {
            Conns::Listener { bind, others } => {
                let listener = match listen(bind) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(listener.local_addr().map(Some));
                drop(ready);
                accept_loop(&shared, &http, listener, others, &mut stop).await;
            }
            Conns::Channel(mut rx) => {
                let _ = ready.send(Ok(None));
                drop(ready);
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        conn = rx.recv() => match conn {
                            Some((std, faults)) => match std.set_nonblocking(true).and_then(|()| TcpStream::from_std(std)) {
                                Ok(stream) => serve(&shared, &http, stream, faults),
                                Err(e) => tracing::warn!("sim: cannot adopt connection: {e}"),
                            },
                            None => break,
                        },
                    }
                }
            }
        }
    });
    drop(rt);
}

/// hyper's HTTP/1 server configuration.
fn http_builder() -> http1::Builder {
    let mut http = http1::Builder::new();
    http
        // Runtimes reuse connections.
        .keep_alive(true)
        // Must stay false: with half-close allowed, hyper stops watching a connection for EOF
        // while a request is in flight, and a parked `/next` whose client went away would never
        // be noticed (see `NextPoll`'s `Drop`).
        .half_close(false)
        // No timer is installed, so no timeouts: a `/next` parks forever by contract, and idle
        // keep-alive connections of a pooled client must not be closed under it. (Without this
        // line hyper would log that its default 30 s header timeout has no timer.)
        .header_read_timeout(None)
        // Pipelined requests (e.g. `POST .../response` + `GET .../next` in one send) are
        // answered in order by hyper regardless; flushing each response as it is produced (the
        // default) keeps the 202 from waiting behind a `/next` that parks.
        .pipeline_flush(false);
    http
}

/// Binds with a large backlog: a runtime opens up to `max_concurrency` connections at once, and
/// std's default backlog of 128 would drop SYNs (a one-second retransmit) beyond that.
fn listen(bind: SocketAddr) -> io::Result<TcpListener> {
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(4096)
}

async fn accept_loop(
    shared: &Arc<Shared>,
    http: &http1::Builder,
    listener: TcpListener,
    others: Vec<mpsc::UnboundedSender<(std::net::TcpStream, ConnFaults)>>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut next = 0usize;
    let mut admitted = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("sim: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Replies are written in one go; Nagle would only delay them behind delayed ACKs.
        let _ = stream.set_nodelay(true);
        let faults = match &shared.cfg.faults {
            None => {
                shared.lock().ledger.connections += 1;
                ConnFaults::default()
            }
            Some(plan) => {
                admitted += 1;
                match admit(shared, plan, admitted - 1) {
                    Some(faults) => faults,
                    None => {
                        raw::reset_now(stream);
                        continue;
                    }
                }
            }
        };
        let target = next % (others.len() + 1);
        next = next.wrapping_add(1);
        if target == 0 {
            serve(shared, http, stream, faults);
        } else {
            match stream.into_std() {
                Ok(std) => {
                    // The receiver only goes away at shutdown.
                    let _ = others[target - 1].send((std, faults));
                }
                Err(e) => tracing::warn!("sim: cannot hand connection over: {e}"),
            }
        }
    }
}

/// Fault injection: counts an accepted connection and decides its faults. `None`: refuse it
/// (the caller resets it).
fn admit(shared: &Shared, plan: &FaultPlan, index: u64) -> Option<ConnFaults> {
    let now = Instant::now();
    let mut faults = ConnFaults::default();
    let mut core = shared.lock();
    core.ledger.connections += 1;
    let mut refuse = core.refuse_until.is_some_and(|t| now < t);
    for f in plan.connection_faults(index) {
        match *f {
            ConnFault::Refuse => refuse = true,
            ConnFault::RefuseFor(d) => {
                refuse = true;
                let until = now + d;
                core.refuse_until = Some(core.refuse_until.map_or(until, |t| t.max(until)));
            }
            ConnFault::CloseAfterRequests(n) => {
                faults.close_after = Some(faults.close_after.map_or(n, |m| m.min(n)));
            }
            ConnFault::CloseWhenIdle(d) => {
                faults.close_idle = Some(faults.close_idle.map_or(d, |m| m.min(d)));
            }
        }
    }
    if refuse {
        core.ledger.faults.bump(FaultKind::Refused);
        return None;
    }
    Some(faults)
}

/// Spawns the task serving one connection.
fn serve(shared: &Arc<Shared>, http: &http1::Builder, stream: TcpStream, faults: ConnFaults) {
    if shared.cfg.faults.is_some() {
        tokio::spawn(serve_faulted(
            Arc::clone(shared),
            http.clone(),
            stream,
            faults,
        ));
        return;
    }
    let svc_shared = Arc::clone(shared);
    let svc = service_fn(move |req| {
        let shared = Arc::clone(&svc_shared);
        async move { Ok::<_, Infallible>(handle(shared, req, None).await) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            // A request hyper could not parse got an automatic 400/414/431 from hyper; count it.
            // Other errors are clients going away (normal for a parked `/next` at the end).
            if e.is_parse() || e.is_parse_too_large() {
                shared.lock().ledger.bad_requests += 1;
            }
            tracing::debug!("sim: connection ended: {e}");
        }
    });
}

/// Serves one connection when a fault plan is set: hyper drives it until a request handler
/// sends a [`Script`] for a faulted reply; then the connection is taken back from hyper
/// (`into_parts`, with the bytes hyper read ahead), the script runs on the socket, and either
/// the connection ends or a new hyper connection goes on serving it.
async fn serve_faulted(
    shared: Arc<Shared>,
    http: http1::Builder,
    stream: TcpStream,
    faults: ConnFaults,
) {
    let track = Arc::new(ConnTrack::default());
    let mut io = FaultIo::new(stream, faults, Arc::clone(&track), Arc::clone(&shared));
    loop {
        let (hijack, mut scripts) = mpsc::unbounded_channel::<Script>();
        let svc = {
            let (shared, track) = (Arc::clone(&shared), Arc::clone(&track));
            service_fn(move |req| -> BoxedReply {
                track.begun.fetch_add(1, Ordering::Relaxed);
                let (shared, track, hijack) =
                    (Arc::clone(&shared), Arc::clone(&track), hijack.clone());
                Box::pin(async move {
                    let resp = handle(shared, req, Some(&hijack)).await;
                    track.done.fetch_add(1, Ordering::Relaxed);
                    Ok(resp)
                })
            })
        };
        let mut conn = http.serve_connection(TokioIo::new(io), svc);
        let script = tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = r {
                    if e.is_parse() || e.is_parse_too_large() {
                        shared.lock().ledger.bad_requests += 1;
                    }
                    tracing::debug!("sim: connection ended: {e}");
                }
                return;
            }
            Some(script) = scripts.recv() => script,
        };
        let parts = conn.into_parts();
        let mut taken = parts.io.into_inner();
        taken.unread(parts.read_buf);
        match taken.run(script).await {
            Some(again) => io = again,
            None => return,
        }
    }
}

/// What a request is.
enum Route<'a> {
    Next,
    /// `POST /runtime/invocation/{id}/response` (`error == false`) or `/error`.
    Reply {
        id: &'a str,
        error: bool,
    },
    InitError,
    NotFound,
}

fn route<'a>(prefix: &str, method: &Method, path: &'a str) -> Route<'a> {
    let Some(rest) = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix(API_ROOT))
    else {
        return Route::NotFound;
    };
    let get = method == Method::GET;
    let post = method == Method::POST;
    match rest {
        "invocation/next" if get => Route::Next,
        "init/error" if post => Route::InitError,
        _ if post => {
            let Some(inv) = rest.strip_prefix("invocation/") else {
                return Route::NotFound;
            };
            if let Some(id) = inv.strip_suffix("/response") {
                Route::Reply { id, error: false }
            } else if let Some(id) = inv.strip_suffix("/error") {
                Route::Reply { id, error: true }
            } else {
                Route::NotFound
            }
        }
        _ => Route::NotFound,
    }
}

/// Answers one request. `hijack` is set on faulted connections (see [`serve_faulted`]).
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    hijack: Option<&Hijack>,
) -> Response<Body> {
    match route(&shared.cfg.path_prefix, req.method(), req.uri().path()) {
        Route::Next => next(shared, hijack).await,
        Route::Reply { id, error } => {
            let seq = parse_uuid(id.as_bytes(), shared.cfg.run, REQUEST_ID_VARIANT);
            reply(shared, req, seq, error).await
        }
        Route::InitError => init_error(shared, req).await,
        Route::NotFound => {
            shared.lock().ledger.bad_requests += 1;
            json(
                StatusCode::NOT_FOUND,
                br#"{"errorMessage":"Not found","errorType":"NotFound"}"#,
            )
        }
    }
}

fn json(status: StatusCode, body: &'static [u8]) -> Response<Body> {
    json_bytes(status, Bytes::from_static(body))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::Sized(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    resp
}

/// A header value we formatted ourselves (always visible ASCII).
fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A `/next` long poll: resolves when an event is handed to it.
///
/// Dropping it before it resolves (hyper drops the in-flight request when the client closes the
/// connection) removes the parked poll; an event already assigned to it goes to the next poll.
/// Once resolved the invocation is handed out: if the connection dies before the reply is
/// written, the runtime never answers and the invocation shows up as `lost`.
struct NextPoll {
    shared: Arc<Shared>,
    /// `None` before the first poll and after resolving.
    key: Option<WaiterKey>,
    started: bool,
}

impl Future for NextPoll {
    type Output = Handout;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Handout> {
        let this = self.get_mut();
        let cfg = &this.shared.cfg;
        let mut core = this.shared.lock();
        if !this.started {
            this.started = true;
            return match core.poll_new(cfg, cx.waker()) {
                Ok(h) => Poll::Ready(h),
                Err(key) => {
                    this.key = Some(key);
                    Poll::Pending
                }
            };
        }
        let Some(key) = this.key else {
            return Poll::Pending;
        };
        match core.poll_parked(cfg, key, cx.waker()) {
            Some(h) => {
                this.key = None;
                Poll::Ready(h)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for NextPoll {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.lock().abandon(&self.shared.cfg, key);
        }
    }
}

async fn next(shared: Arc<Shared>, hijack: Option<&Hijack>) -> Response<Body> {
    let faults = match (&shared.cfg.faults, hijack) {
        (Some(plan), Some(hijack)) => Some((plan, hijack)),
        _ => None,
    };
    if let Some((plan, hijack)) = faults {
        let index = shared.next_polls.fetch_add(1, Ordering::Relaxed);
        if let Some(&fault) = plan.poll_fault(index) {
            return poll_fault(&shared, hijack, fault).await;
        }
    }
    let Handout { seq, event } = NextPoll {
        shared: Arc::clone(&shared),
        key: None,
        started: false,
    }
    .await;
    let cfg = &shared.cfg;
    let fault =
        faults.and_then(|(plan, hijack)| Some((plan.reply_fault(seq)?, hijack, event.clone())));
    let body = if cfg.event_framing.chunks(event.len()) {
        // hyper is not to be handed an empty data frame; an empty event is just the last chunk.
        Body::Chunked(Some(event).filter(|e| !e.is_empty()))
    } else {
        Body::Sized(Full::new(event))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.reserve(10);
    h.insert(&REQUEST_ID, value(&uuid(cfg.run, REQUEST_ID_VARIANT, seq)));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let deadline = (now + cfg.deadline).as_millis();
    h.insert(
        &DEADLINE_MS,
        HeaderValue::from(u64::try_from(deadline).unwrap_or(u64::MAX)),
    );
    h.insert(&FUNCTION_ARN, cfg.function_arn.clone());
    h.insert(&TRACE_ID, value(&trace_id(cfg.run, seq, now.as_secs())));
    if let Some(v) = &cfg.client_context {
        h.insert(&CLIENT_CONTEXT, v.clone());
    }
    if let Some(v) = &cfg.cognito_identity {
        h.insert(&COGNITO_IDENTITY, v.clone());
    }
    if let Some(v) = &cfg.tenant_id {
        h.insert(&TENANT_ID, v.clone());
    }
    if cfg.invocation_ids {
        h.insert(
            &INVOCATION_ID,
            value(&uuid(cfg.run, INVOCATION_ID_VARIANT, seq)),
        );
    }
    h.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    if let Some((fault, hijack, event)) = fault {
        return reply_fault(&shared, hijack, seq, fault, resp, event).await;
    }
    resp
}

/// The JSON body of an injected error status.
fn fault_body(status: u16, what: &str) -> Bytes {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let message = serde_json::json!({
        "errorMessage": format!("injected fault: {status} {reason} for {what}"),
        "errorType": format!("InjectedFault.{}", reason.replace(' ', "")),
    });
    Bytes::from(message.to_string())
}

/// A `/next` that gets no invocation (see [`PollFault`]).
async fn poll_fault(shared: &Shared, hijack: &Hijack, fault: PollFault) -> Response<Body> {
    shared.lock().ledger.faults.bump(fault.kind());
    match fault {
        PollFault::Status(status) => json_bytes(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            fault_body(status, "/next"),
        ),
        PollFault::Outage(duration) => {
            {
                let mut core = shared.lock();
                let until = Instant::now() + duration;
                core.refuse_until = Some(core.refuse_until.map_or(until, |t| t.max(until)));
            }
            if hijack.send(Script::reset()).is_ok() {
                return std::future::pending().await;
            }
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"errorMessage":"outage","errorType":"InjectedFault"}"#,
            )
        }
        PollFault::DropAfter(duration) => {
            tokio::time::sleep(duration).await;
            if hijack.send(Script::close()).is_ok() {
                return std::future::pending().await;
            }
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"errorMessage":"dropped poll","errorType":"InjectedFault"}"#,
            )
        }
    }
}

/// The `/next` reply of invocation `seq`, corrupted by `fault` (see [`ReplyFault`]). Counts
/// the fault, retires the invocation if the fault makes it unanswerable, then either edits the
/// headers of `resp` or hands the connection a script and never resolves.
async fn reply_fault(
    shared: &Shared,
    hijack: &Hijack,
    seq: u64,
    fault: &ReplyFault,
    mut resp: Response<Body>,
    event: Bytes,
) -> Response<Body> {
    {
        let mut core = shared.lock();
        core.ledger.faults.bump(fault.kind());
        if let Some(reason) = fault.unanswerable() {
            core.retire_unanswerable(&shared.cfg, seq, reason);
            if core.is_done() {
                shared.done.notify_all();
            }
        }
    }
    let h = resp.headers_mut();
    match fault {
        ReplyFault::MissingRequestId => {
            h.remove(&REQUEST_ID);
        }
        ReplyFault::MissingDeadline => {
            h.remove(&DEADLINE_MS);
        }
        ReplyFault::InvalidDeadline => {
            h.insert(&DEADLINE_MS, HeaderValue::from_static("soon"));
        }
        ReplyFault::UnsafeRequestId(id) => {
            // Checked when the simulator started.
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert(&REQUEST_ID, v);
            }
        }
        _ => {
            if let Some(script) = raw::reply_script(fault, resp.headers(), &event)
                && hijack.send(script).is_ok()
            {
                // The connection's task stops polling this future and drops it.
                return std::future::pending().await;
            }
        }
    }
    resp
}

/// `Root=1-{epoch:08x}-{run:08x}{seq:016x};Parent={seq:016x};Sampled=0`: X-Ray shaped, unique
/// per invocation, so a test can check the runtime propagates the right one.
fn trace_id(run: u32, seq: u64, epoch_secs: u64) -> [u8; 74] {
    let mut t = *b"Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0";
    put_hex(&mut t[7..15], epoch_secs);
    put_hex(&mut t[16..24], u64::from(run));
    put_hex(&mut t[24..40], seq);
    put_hex(&mut t[48..64], seq);
    t
}

/// A request body read completely.
struct ReadBody {
    /// The body, `None` when it exceeded the limit (the rest was read and discarded).
    bytes: Option<Bytes>,
    /// Streaming error trailers: `(error type, raw error body)`.
    trailer_error: Option<(String, Option<String>)>,
    /// The trailer section was longer than Go's `net/http` reads
    /// ([`MAX_TRAILER_SECTION_BYTES`]).
    trailers_too_long: bool,
}

/// Reads the whole body (Content-Length or chunked), keeping at most `limit` bytes. Over the
/// limit the rest is still read and discarded so the connection stays usable for the `/error`
/// post that follows a 413. `pace`: at most that many bytes a second
/// ([`PostFault::ReadSlowly`]).
async fn read_body(
    mut body: Incoming,
    limit: usize,
    pace: Option<u64>,
) -> Result<ReadBody, hyper::Error> {
    // One data frame (the common case for small bodies) is kept as is, without copying.
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    let mut trailers: Option<HeaderMap> = None;
    let hint = usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(0);
    let started = Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let frame = match frame.into_data() {
            Ok(data) => {
                total = total.saturating_add(data.len());
                if let Some(rate) = pace {
                    // Not before the pace allows this much; hyper reads no further
                    // meanwhile, so the sender's buffers fill.
                    let due = std::time::Duration::try_from_secs_f64(total as f64 / rate as f64)
                        .ok()
                        .and_then(|d| started.checked_add(d));
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                if total > limit {
                    first = None;
                    rest = None;
                } else if let Some(buf) = &mut rest {
                    buf.extend_from_slice(&data);
                } else if let Some(f) = first.take() {
                    let mut buf = BytesMut::with_capacity(hint.clamp(f.len() + data.len(), limit));
                    buf.extend_from_slice(&f);
                    buf.extend_from_slice(&data);
                    rest = Some(buf);
                } else {
                    first = Some(data);
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    let bytes = if total > limit {
        None
    } else {
        Some(rest.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
    };
    // As Go measures it: every `name: value\r\n`, then the blank line.
    let trailers_too_long = trailers.as_ref().is_some_and(|t| {
        let section = t
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + 2;
        section > MAX_TRAILER_SECTION_BYTES
    });
    let trailer_error = trailers.and_then(|t| {
        let ty = t.get(&ERROR_TYPE)?.to_str().ok()?.to_owned();
        let body = t
            .get(&ERROR_BODY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Some((ty, body))
    });
    Ok(ReadBody {
        bytes,
        trailer_error,
        trailers_too_long,
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

/// An `/error` or `/init/error` body, as much as can be made of it.
fn error_record(request_id: Option<String>, headers: &HeaderMap, body: &[u8]) -> ErrorRecord {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let (error_type, error_message) =
        parsed.map_or((None, None), |b| (b.error_type, b.error_message));
    ErrorRecord {
        request_id,
        header_error_type: headers
            .get(&ERROR_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        error_type,
        error_message,
        streamed: false,
    }
}

/// `POST /runtime/invocation/{id}/response` and `/error`.
async fn reply(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    seq: Option<u64>,
    error: bool,
) -> Response<Body> {
    let cfg = &shared.cfg;
    let (parts, body) = req.into_parts();
    let streaming = match parts.headers.get(&RESPONSE_MODE) {
        None => false,
        Some(v) if !error && v.as_bytes().eq_ignore_ascii_case(b"streaming") => true,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"buffered") => false,
        Some(_) => {
            shared.lock().ledger.bad_requests += 1;
            return json(
                StatusCode::BAD_REQUEST,
                br#"{"errorMessage":"Invalid Lambda-Runtime-Function-Response-Mode","errorType":"InvalidResponseModeHeader"}"#,
            );
        }
    };
    // Only a body declared as opening with a prelude gets it taken apart by an HTTP
    // integration (a function URL); otherwise the caller would see the prelude as body.
    let integration = streaming
        && parts.headers.get(CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(crate::api::CONTENT_TYPE_HTTP_INTEGRATION.as_bytes())
        });
    let echoed = parts
        .headers
        .get(&INVOCATION_ID)
        .and_then(|v| parse_uuid(v.as_bytes(), cfg.run, INVOCATION_ID_VARIANT));
    let post_fault = match (&cfg.faults, seq) {
        (Some(plan), Some(seq)) => plan.post_fault(seq, error).copied(),
        _ => None,
    };
    // Only a post that would otherwise be taken (for an outstanding invocation, with the
    // invocation id it was handed out with) is faulted; others get their usual refusal.
    let id_ok = !cfg.invocation_ids || echoed == seq;
    if let (Some(PostFault::StopReading), Some(seq), true) = (post_fault, seq, id_ok) {
        let stalled = {
            let mut core = shared.lock();
            let retired = core.retire_unanswerable(cfg, seq, Reason::PostStalled);
            if retired {
                if streaming {
                    core.ledger.count_stream(integration);
                }
                core.ledger.faults.bump(FaultKind::PostStopReading);
                if core.is_done() {
                    shared.done.notify_all();
                }
            }
            retired
        };
        if stalled {
            // Held, unread, until the connection's task is dropped: hyper reads no more
            // of the body than its buffer holds, and the socket's buffers fill.
            let _unread = body;
            return std::future::pending().await;
        }
    }
    if let (Some(PostFault::StatusUnread(status)), Some(seq), true) = (post_fault, seq, id_ok) {
        let faulted = {
            let mut core = shared.lock();
            // Only an outstanding invocation's post: anything else is refused below, once
            // read, and counted once.
            let take = core.is_outstanding(seq);
            if take {
                if streaming {
                    core.ledger.count_stream(integration);
                }
                // An `/error` post counts as an error answer (its body, unread, keeps no
                // record).
                let kind = if error {
                    AnswerKind::Error(None)
                } else {
                    AnswerKind::Ok
                };
                // A late post counts as such (`timed_out`), not as a fault.
                if let Verdict::Accepted(_) = core.answer(cfg, seq, kind, Instant::now()) {
                    core.ledger.faults.bump(FaultKind::PostStatusUnread);
                }
                if core.is_done() {
                    shared.done.notify_all();
                }
            }
            take
        };
        if faulted {
            // The body is dropped unread: hyper closes the connection after this reply,
            // and the kernel resets it over the unread bytes.
            drop(body);
            let id = uuid(cfg.run, REQUEST_ID_VARIANT, seq);
            let mut reply = json_bytes(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                fault_body(status, &String::from_utf8_lossy(&id)),
            );
            reply
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return reply;
        }
    }
    let limit = if streaming {
        cfg.streaming_limit
    } else if error {
        cfg.response_limit.min(super::ERROR_LIMIT)
    } else {
        cfg.response_limit
    };
    let pace = match post_fault {
        Some(PostFault::ReadSlowly { bytes_per_sec }) => Some(bytes_per_sec),
        _ => None,
    };
    let body = match read_body(body, limit, pace).await {
        Ok(b) if b.trailers_too_long => {
            // Go's net/http fails the body there; the answer is lost.
            shared.lock().ledger.bad_requests += 1;
            return json(
                StatusCode::BAD_REQUEST,
                br#"{"errorMessage":"http: suspiciously long trailer after chunked body","errorType":"InvalidRequest"}"#,
            );
        }
        Ok(b) => b,
        Err(e) => {
            tracing::debug!("sim: cannot read reply body: {e}");
            shared.lock().ledger.bad_requests += 1;
            return json(
                StatusCode::BAD_REQUEST,
                br#"{"errorMessage":"Unreadable body","errorType":"InvalidRequest"}"#,
            );
        }
    };
    let at = Instant::now();

    // Error records are built outside the lock (JSON parsing), only while still wanted. A
    // record is only kept if the answer is accepted, i.e. `seq` parsed from the path, so the id
    // is rebuilt from it rather than copied from the path for every request.
    let want_record = error || body.trailer_error.is_some();
    let record = if want_record && shared.lock().errors.len() < cfg.keep_errors {
        let id = seq
            .map(|s| String::from_utf8_lossy(&uuid(cfg.run, REQUEST_ID_VARIANT, s)).into_owned());
        match (&body.trailer_error, &body.bytes) {
            (Some((ty, msg)), _) => Some(ErrorRecord {
                request_id: id,
                header_error_type: Some(ty.clone()),
                error_type: None,
                error_message: msg.clone(),
                streamed: true,
            }),
            (None, Some(b)) => Some(error_record(id, &parts.headers, b)),
            (None, None) => None,
        }
    } else {
        None
    };

    let mut injected = None;
    let mut hang = false;
    let verdict = {
        let mut core = shared.lock();
        if streaming {
            core.ledger.count_stream(integration);
        }
        match core.check_id(seq) {
            Err(v) => v,
            Ok(()) => match seq {
                Some(_) if !id_ok => {
                    core.ledger.invocation_id_violations += 1;
                    Verdict::InvocationIdViolation
                }
                Some(_) if post_fault == Some(PostFault::Status(413)) => {
                    // Not an answer, like a real 413.
                    core.ledger.faults.bump(FaultKind::PostTooLarge);
                    injected = Some(413);
                    Verdict::TooLarge
                }
                Some(_) if body.bytes.is_none() => {
                    core.ledger.too_large += 1;
                    Verdict::TooLarge
                }
                Some(seq) => {
                    let kind = if error || body.trailer_error.is_some() {
                        AnswerKind::Error(record)
                    } else {
                        AnswerKind::Ok
                    };
                    let v = core.answer(cfg, seq, kind, at);
                    match post_fault {
                        Some(PostFault::Status(status)) => {
                            // The answer is recorded; only the status the runtime reads is
                            // wrong.
                            core.ledger.faults.bump(FaultKind::PostStatus);
                            injected = Some(status);
                        }
                        Some(PostFault::NoReply) => {
                            core.ledger.faults.bump(FaultKind::PostNoReply);
                            hang = true;
                        }
                        Some(PostFault::ReadSlowly { .. }) => {
                            core.ledger.faults.bump(FaultKind::PostReadSlowly);
                        }
                        // Handled before the body was read; here only for a post it did
                        // not fault (no outstanding id, or the wrong invocation id),
                        // which is refused above, so unreachable.
                        Some(PostFault::StopReading | PostFault::StatusUnread(_)) | None => {}
                    }
                    if core.is_done() {
                        shared.done.notify_all();
                    }
                    v
                }
                None => Verdict::Unknown,
            },
        }
    };

    if hang {
        return std::future::pending().await;
    }
    if let (Some(status), Some(seq)) = (injected, seq) {
        if let Verdict::Accepted(Some(event)) = &verdict
            && let (Some(validate), Some(resp), false) = (&cfg.validator, &body.bytes, error)
            && body.trailer_error.is_none()
            && !validate(event, resp)
        {
            shared.lock().ledger.mismatched += 1;
        }
        let id = uuid(cfg.run, REQUEST_ID_VARIANT, seq);
        return json_bytes(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            fault_body(status, &String::from_utf8_lossy(&id)),
        );
    }
    match verdict {
        Verdict::Accepted(event) => {
            if let (Some(validate), Some(event), Some(resp), false) =
                (&cfg.validator, event, &body.bytes, error)
                && body.trailer_error.is_none() && !validate(&event, resp) {
                    shared.lock().ledger.mismatched += 1;
                }
            json(StatusCode::ACCEPTED, br#"{"status":"OK"}"#)
        }
        Verdict::Unknown => json(
            StatusCode::BAD_REQUEST,
            br#"{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}"#,
        ),
        Verdict::Duplicate => json(
            StatusCode::BAD_REQUEST,
            br#"{"errorMessage":"Invocation already answered","errorType":"InvalidRequestID"}"#,
        ),
        Verdict::InvocationIdViolation => json(
            StatusCode::BAD_REQUEST,
            br#"{"errorMessage":"Missing or wrong Lambda-Runtime-Invocation-Id","errorType":"InvalidInvocationID"}"#,
        ),
        Verdict::Late => json(
            StatusCode::GONE,
            br#"{"errorMessage":"Invocation timed out","errorType":"InvocationTimeout"}"#,
        ),
        Verdict::TooLarge => json(
            StatusCode::PAYLOAD_TOO_LARGE,
            br#"{"errorMessage":"Exceeded maximum allowed payload size","errorType":"RequestEntityTooLarge"}"#,
        ),
    }
}

/// `POST /runtime/init/error`: 202 the first time, 403 afterwards (as with several workers on
/// AWS); every one is counted and the last one recorded.
async fn init_error(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body, shared.cfg.response_limit, None).await {
        Ok(b) => b.bytes.unwrap_or_default(),
        Err(e) => {
            tracing::debug!("sim: cannot read init error body: {e}");
            shared.lock().ledger.bad_requests += 1;
            return json(
                StatusCode::BAD_REQUEST,
                br#"{"errorMessage":"Unreadable body","errorType":"InvalidRequest"}"#,
            );
        }
    };
    let record = error_record(None, &parts.headers, &body);
    let first = {
        let mut core = shared.lock();
        core.ledger.init_errors += 1;
        core.init_error = Some(record);
        core.ledger.init_errors == 1
    };
    if first {
        json(StatusCode::ACCEPTED, br#"{"status":"OK"}"#)
    } else {
        json(
            StatusCode::FORBIDDEN,
            br#"{"errorMessage":"Init error already reported","errorType":"InitErrorAlreadyReported"}"#,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_shape() {
        let t = trace_id(0x1234, 0xabc, 0x5f00_0000);
        let s = std::str::from_utf8(&t).unwrap_or_default();
        assert_eq!(
            s,
            "Root=1-5f000000-000012340000000000000abc;Parent=0000000000000abc;Sampled=0"
        );
    }
}
