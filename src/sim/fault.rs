//! Fault injection: a [`FaultPlan`] says which requests the simulator answers wrongly, and how.
//!
//! A plan is a list of rules, each a [`Schedule`] (which occurrences) and a fault. Rules come in
//! four families, each counted over its own sequence of occurrences:
//!
//! | family | occurrence `i` is | faults |
//! |---|---|---|
//! | [`FaultPlan::reply`] | the invocation's sequence number (order of hand-out, from 0) | [`ReplyFault`]: the `/next` reply carrying invocation `i` is corrupted |
//! | [`FaultPlan::poll`] | the order in which `/next` requests arrive (from 0) | [`PollFault`]: the `/next` gets an error status, a reset, or is held and dropped instead of an invocation |
//! | [`FaultPlan::post`] | the sequence number of the invocation the post is for | [`PostFault`]: a `/response` or `/error` post gets an error status |
//! | [`FaultPlan::connection`] | the order in which connections are accepted (from 0) | [`ConnFault`]: a connection is refused, or closed by the server once idle |
//!
//! Within a family the first matching rule wins, except for connections, where every matching
//! rule applies. Every decision is a pure function of the seed, the rule and the occurrence
//! (including [`Schedule::Random`]), so a plan faults the same invocations whatever the thread
//! interleaving of the runtime under test; only which *connection* carries invocation `i` varies.
//!
//! # Raw bytes
//!
//! Faults that only change headers go through hyper. The others need bytes hyper would never
//! write: when a plan is set, every connection is served by a hyper connection that can be
//! *taken back* ([`hyper::server::conn::http1::Connection::into_parts`]) from inside a request
//! handler. A faulted `/next` reply hands a script (write these bytes, drip those, then reset,
//! close, or resume HTTP) to its connection's task, which stops driving hyper, runs the script on
//! the socket itself, and either ends the connection or starts a new hyper connection on it (with
//! any bytes hyper had read ahead put back in front). Without a plan none of this exists: the
//! non-fault path is the plain hyper connection, unchanged.
//!
//! # The ledger
//!
//! With faults the ledger identity is
//! `handed_out == answered_ok + answered_error + timed_out + unanswerable.total() + lost()`
//! (`timed_out` only with late answers refused), and a correct
//! runtime leaves `lost() == 0`. [`Unanswerable`] counts the invocations a fault made impossible
//! to answer: the runtime never got a request id it could use (no complete head, no id, an id
//! that cannot go in a path), or the API stopped reading its answer
//! ([`PostFault::StopReading`]). The simulator retires the first kind at hand-out, as the real
//! service fails an invocation routed to a dead poll, and the second when the post's head
//! arrives. Every other faulted invocation stays outstanding: the runtime had a usable request
//! id and is expected to answer it, normally or with an error.
//!
//! | fault | the runtime sees | ledger |
//! |---|---|---|
//! | [`ReplyFault::ResetBeforeHead`] | a reset, no byte | unanswerable (`reset_before_head`) |
//! | [`ReplyFault::ResetMidHead`] | part of a head, then a reset | unanswerable (`reset_mid_head`) |
//! | [`ReplyFault::Garbage`] | bytes that are not HTTP, then a close | unanswerable (`garbage`) |
//! | [`ReplyFault::OversizedHead`] | a head over 64 KiB | unanswerable (`oversized_head`): a client must refuse it before the id |
//! | [`ReplyFault::MissingRequestId`] | a valid reply without `Lambda-Runtime-Aws-Request-Id` | unanswerable (`missing_id`) |
//! | [`ReplyFault::UnsafeRequestId`] | a request id that cannot be put in a path | unanswerable (`unsafe_id`) |
//! | [`ReplyFault::ResetMidBody`] | a complete head, part of the body, a reset | answerable: an error is expected |
//! | [`ReplyFault::WrongContentLength`] | a complete head, fewer body bytes than declared, a close | answerable: an error is expected |
//! | [`ReplyFault::BadChunkSize`] | a complete chunked head, a malformed chunk size, a close | answerable: an error is expected |
//! | [`ReplyFault::OversizedBody`] | a complete head, a body over the runtime's limit | answerable: `Runtime.EventTooLarge` expected |
//! | [`ReplyFault::MissingDeadline`], [`ReplyFault::InvalidDeadline`] | a valid reply with a usable id but no usable deadline | answerable: `Runtime.InvalidInvocation` expected |
//! | [`ReplyFault::Drip`], [`ReplyFault::Chunked`] | a valid reply, slowly or chunked | answerable: a normal answer expected |
//! | [`PollFault`] | no invocation | nothing handed out |
//! | [`PostFault::Status`] other than 413 | an error status | the post is recorded as the invocation's answer (a second post would be a duplicate) |
//! | [`PostFault::NoReply`] | no reply, the connection left open | the post is recorded as the invocation's answer; the runtime is expected to give up on the reply |
//! | [`PostFault::StopReading`] | the post's body not read, no reply, the connection left open | unanswerable (`post_stalled`), at the post's head (if it is for an outstanding invocation, with its invocation id); the runtime is expected to give up on a post that stalls |
//! | [`PostFault::ReadSlowly`] | the post's body read at a set pace, then the usual reply | as without the fault: the runtime is expected to wait |
//! | [`PostFault::StatusUnread`] | an error status before the body is read, then a close | the post is recorded as the invocation's answer (its body unchecked); the runtime is expected to read the status, not to send the post again |
//! | [`PostFault::Status`]`(413)` | 413 | not an answer: the invocation stays outstanding, the runtime is expected to post `/error` |
//! | [`ConnFault`] | a refused or closed connection | nothing handed out on it is affected |
//!
//! # Example
//!
//! A runtime under a plan: invocation 1 has no deadline, invocation 3 is reset mid-body,
//! and the first post for invocation 4 gets a 500. The runtime answers the first two with
//! errors, and the ledger still balances.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use lambda_tpc::sim::{EventSource, FaultKind, FaultPlan, PostEndpoint, PostFault, ReplyFault, Schedule, Simulator};
//! use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
//!
//! # fn main() -> Result<(), BoxError> {
//! let plan = FaultPlan::new(7)
//!     .reply(Schedule::Nth(1), ReplyFault::MissingDeadline)
//!     .reply(Schedule::Nth(3), ReplyFault::ResetMidBody)
//!     .post(PostEndpoint::Response, Schedule::Nth(4), PostFault::Status(500));
//! let sim = Simulator::builder()
//!     .max_concurrency(1) // one at a time: invocation `i` is the `i`-th event
//!     .events(EventSource::repeat(r#"{"n":1}"#, 6))
//!     .faults(plan)
//!     .start()?;
//! let control = Control::new();
//! let config = Config::builder()
//!     .runtime_api(sim.runtime_api())
//!     .max_concurrency(NonZeroUsize::MIN)
//!     .control(control.clone())
//!     .build_with(|_| None)?;
//! let runtime = std::thread::spawn(move || {
//!     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<serde_json::Value>| async move {
//!         Ok::<_, BoxError>(event.payload)
//!     })
//! });
//! assert!(sim.wait_until_done(Duration::from_secs(10)));
//! control.shutdown();
//! runtime.join().unwrap()?;
//!
//! let errors = sim.errors();
//! assert_eq!(errors.len(), 2);
//! assert_eq!(errors[0].request_id, Some(sim.request_id(1)));
//! assert_eq!(errors[0].error_type.as_deref(), Some("Runtime.InvalidInvocation"));
//! assert_eq!(errors[1].request_id, Some(sim.request_id(3)));
//! assert_eq!(errors[1].error_type.as_deref(), Some("Runtime.EventReadError"));
//!
//! let ledger = sim.shutdown();
//! assert_eq!(ledger.faults.get(FaultKind::PostStatus), 1);
//! // The 500 post still counts as invocation 4's answer.
//! assert_eq!((ledger.answered_ok, ledger.answered_error, ledger.lost()), (4, 2, 0));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use hyper::header::HeaderValue;

/// Which occurrences (counted from 0) of a request a rule applies to.
///
/// ```
/// use lambda_tpc::sim::{FaultPlan, ReplyFault, Schedule};
///
/// let hits = |when: Schedule| {
///     let plan = FaultPlan::new(1).reply(when, ReplyFault::Garbage);
///     (0..10).filter(|&i| plan.reply_fault(i).is_some()).collect::<Vec<u64>>()
/// };
/// assert_eq!(hits(Schedule::Nth(3)), [3]);
/// assert_eq!(hits(Schedule::EveryKth(4)), [3, 7]);
/// assert_eq!(hits(Schedule::Range { start: 2, end: 5 }), [2, 3, 4]);
/// assert_eq!(hits(Schedule::Random(0.3)), hits(Schedule::Random(0.3))); // same seed, same draws
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every occurrence.
    Always,
    /// Only occurrence `n`.
    Nth(u64),
    /// Every k-th occurrence: `k - 1`, `2k - 1`, ... (`k >= 1`; `EveryKth(1)` is every one).
    EveryKth(u64),
    /// Every occurrence from `n` on.
    From(u64),
    /// Occurrences `start..end`.
    Range {
        /// First occurrence faulted.
        start: u64,
        /// First occurrence no longer faulted.
        end: u64,
    },
    /// Each occurrence independently with this probability (`0.0..=1.0`), drawn from the
    /// plan's seeded generator as a pure function of (seed, rule, occurrence): the same seed
    /// faults the same occurrences in every run.
    Random(f64),
}

impl Schedule {
    fn validate(&self) -> Result<(), String> {
        match *self {
            Schedule::EveryKth(0) => Err("Schedule::EveryKth(0): k must be at least 1".into()),
            Schedule::Random(p) if !(0.0..=1.0).contains(&p) => Err(format!(
                "Schedule::Random({p}): the probability must be within 0..=1"
            )),
            _ => Ok(()),
        }
    }

    /// Whether occurrence `i` of rule `rule` is faulted under `seed`.
    fn hits(&self, seed: u64, rule: u64, i: u64) -> bool {
        match *self {
            Schedule::Always => true,
            Schedule::Nth(n) => i == n,
            Schedule::EveryKth(k) => k > 0 && i % k == k - 1,
            Schedule::From(n) => i >= n,
            Schedule::Range { start, end } => (start..end).contains(&i),
            Schedule::Random(p) => {
                let draw = mix(seed ^ mix(rule ^ mix(i)));
                // 53 random bits as a fraction in [0, 1).
                ((draw >> 11) as f64) / ((1u64 << 53) as f64) < p
            }
        }
    }
}

/// SplitMix64's finaliser: a bijective scrambler, so distinct inputs give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What happens to a `/next` reply that carries an invocation. The invocation is handed out
/// (counted in `handed_out`) in every case; see the [module docs](self) for which ones become
/// unanswerable, and for an example.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyFault {
    /// Reset the connection (`SO_LINGER` 0, then close) without writing anything.
    /// Unanswerable: the real service fails an invocation routed to a dead poll.
    ResetBeforeHead,
    /// Write the first half of the reply head, wait until it has left the socket, then reset.
    /// Unanswerable.
    ResetMidHead,
    /// Write the whole head and the first half of the body (the head declares the event's
    /// length, at least 1), wait until it has left the socket, then reset. Answerable: the
    /// runtime had the request id and is expected to post an error.
    ResetMidBody,
    /// Write the normal reply one byte per write, pausing `delay` between bytes (zero: only
    /// yield to the scheduler), then go on serving HTTP on the connection. Answered normally.
    Drip {
        /// Pause between two bytes.
        delay: Duration,
    },
    /// Write [`GARBAGE`] instead of an HTTP reply, then close. Unanswerable.
    Garbage,
    /// A reply head of [`OVERSIZED_HEAD_BYTES`] (a padding header after the normal ones), then
    /// the body, then close. Unanswerable: a client must refuse the head before using it.
    OversizedHead,
    /// A valid reply head declaring a body of `len` bytes (or chunked), followed by `len` bytes
    /// of a JSON string (`"xx...x"`) instead of the event, then go on serving HTTP. Meant to be
    /// larger than the runtime's event limit: answerable, `Runtime.EventTooLarge` expected.
    OversizedBody {
        /// Body length in bytes (at least 2).
        len: u64,
        /// Send it chunked (16 KiB chunks) rather than with a `Content-Length`.
        chunked: bool,
    },
    /// Declare `extra` more bytes than the event has, send the event, then close (FIN).
    /// Answerable: the head was complete, an error is expected.
    WrongContentLength {
        /// Bytes declared and never sent (at least 1).
        extra: u64,
    },
    /// A chunked reply whose first chunk is valid (half the event) and whose next chunk-size
    /// line is not hexadecimal (`zz`), then close. Answerable: an error is expected.
    BadChunkSize,
    /// Not a fault: the normal reply with chunked framing, in chunks of `chunk` bytes, then go
    /// on serving HTTP. Exercises a client's chunked path. Answered normally.
    Chunked {
        /// Chunk size in bytes (at least 1).
        chunk: usize,
    },
    /// The normal reply without `Lambda-Runtime-Aws-Request-Id`. Unanswerable.
    MissingRequestId,
    /// The normal reply without `Lambda-Runtime-Deadline-Ms`. Answerable with an error.
    MissingDeadline,
    /// The normal reply with `Lambda-Runtime-Deadline-Ms: soon`. Answerable with an error.
    InvalidDeadline,
    /// The normal reply with this request id instead of the real one (e.g.
    /// `../../runtime/init/error`, or one containing spaces; it must be a valid header value).
    /// Unanswerable: a reply to it cannot name the invocation (the simulator answers any post
    /// to it 400, counted in `unknown_ids`).
    UnsafeRequestId(String),
}

impl ReplyFault {
    /// The counter this fault bumps in [`FaultCounts`].
    pub fn kind(&self) -> FaultKind {
        match self {
            ReplyFault::ResetBeforeHead => FaultKind::ResetBeforeHead,
            ReplyFault::ResetMidHead => FaultKind::ResetMidHead,
            ReplyFault::ResetMidBody => FaultKind::ResetMidBody,
            ReplyFault::Drip { .. } => FaultKind::Drip,
            ReplyFault::Garbage => FaultKind::Garbage,
            ReplyFault::OversizedHead => FaultKind::OversizedHead,
            ReplyFault::OversizedBody { .. } => FaultKind::OversizedBody,
            ReplyFault::WrongContentLength { .. } => FaultKind::WrongContentLength,
            ReplyFault::BadChunkSize => FaultKind::BadChunkSize,
            ReplyFault::Chunked { .. } => FaultKind::Chunked,
            ReplyFault::MissingRequestId => FaultKind::MissingRequestId,
            ReplyFault::MissingDeadline => FaultKind::MissingDeadline,
            ReplyFault::InvalidDeadline => FaultKind::InvalidDeadline,
            ReplyFault::UnsafeRequestId(_) => FaultKind::UnsafeRequestId,
        }
    }

    /// Whether the fault makes its invocation unanswerable (see the [module docs](self)).
    ///
    /// ```
    /// use lambda_tpc::sim::ReplyFault;
    ///
    /// assert!(ReplyFault::Garbage.is_unanswerable()); // no request id reached the runtime
    /// assert!(!ReplyFault::MissingDeadline.is_unanswerable()); // it did: an error is expected
    /// ```
    pub fn is_unanswerable(&self) -> bool {
        self.unanswerable().is_some()
    }

    pub(crate) fn unanswerable(&self) -> Option<Reason> {
        match self {
            ReplyFault::ResetBeforeHead => Some(Reason::ResetBeforeHead),
            ReplyFault::ResetMidHead => Some(Reason::ResetMidHead),
            ReplyFault::Garbage => Some(Reason::Garbage),
            ReplyFault::OversizedHead => Some(Reason::OversizedHead),
            ReplyFault::MissingRequestId => Some(Reason::MissingId),
            ReplyFault::UnsafeRequestId(_) => Some(Reason::UnsafeId),
            ReplyFault::ResetMidBody
            | ReplyFault::Drip { .. }
            | ReplyFault::OversizedBody { .. }
            | ReplyFault::WrongContentLength { .. }
            | ReplyFault::BadChunkSize
            | ReplyFault::Chunked { .. }
            | ReplyFault::MissingDeadline
            | ReplyFault::InvalidDeadline => None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            ReplyFault::OversizedBody { len, .. } if *len < 2 => {
                Err("ReplyFault::OversizedBody: len must be at least 2".into())
            }
            ReplyFault::WrongContentLength { extra: 0 } => {
                Err("ReplyFault::WrongContentLength: extra must be at least 1".into())
            }
            ReplyFault::Chunked { chunk: 0 } => {
                Err("ReplyFault::Chunked: chunk must be at least 1".into())
            }
            ReplyFault::UnsafeRequestId(id) if HeaderValue::from_str(id).is_err() => Err(format!(
                "ReplyFault::UnsafeRequestId({id:?}) is not a valid header value"
            )),
            _ => Ok(()),
        }
    }
}

/// What a `/next` request gets instead of an invocation. Nothing is handed out.
///
/// ```
/// use std::io::{Read, Write};
/// use lambda_tpc::sim::{FaultKind, FaultPlan, PollFault, Schedule, Simulator};
///
/// let sim = Simulator::builder()
///     .faults(FaultPlan::new(0).poll(Schedule::Nth(0), PollFault::Status(500)))
///     .start()?;
/// let mut socket = std::net::TcpStream::connect(sim.addr())?;
/// socket.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n")?;
/// let mut reply = String::new();
/// socket.read_to_string(&mut reply)?;
/// // A container error: a runtime must exit.
/// assert!(reply.starts_with("HTTP/1.1 500 "));
/// let ledger = sim.shutdown();
/// assert_eq!((ledger.faults.get(FaultKind::PollStatus), ledger.handed_out), (1, 0));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollFault {
    /// Answer with this status (400..=599) and a JSON error body. 500 is the Runtime API's
    /// container error (the runtime must exit promptly), as is 403 on `/next`.
    Status(u16),
    /// The API goes away for a while: this `/next`'s connection is reset, and every connection
    /// accepted during the next `duration` is reset at once (counted as
    /// [`FaultKind::Refused`]). Connections already open are left alone.
    Outage(Duration),
    /// Hold this `/next` for `duration` without handing it an event (as a quiet spell
    /// would), then close its connection without a reply: a long poll the API dropped.
    DropAfter(Duration),
}

impl PollFault {
    /// The counter this fault bumps in [`FaultCounts`].
    pub fn kind(&self) -> FaultKind {
        match self {
            PollFault::Status(_) => FaultKind::PollStatus,
            PollFault::Outage(_) => FaultKind::Outage,
            PollFault::DropAfter(_) => FaultKind::DroppedPoll,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            PollFault::Status(s) if !(400..=599).contains(s) => Err(format!(
                "PollFault::Status({s}): the status must be within 400..=599"
            )),
            _ => Ok(()),
        }
    }
}

/// Which posts a [`PostFault`] rule applies to (see the [module docs](self) for an
/// example).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostEndpoint {
    /// `POST .../invocation/{id}/response`.
    Response,
    /// `POST .../invocation/{id}/error`.
    Error,
    /// Both.
    Any,
}

impl PostEndpoint {
    fn matches(self, error: bool) -> bool {
        match self {
            PostEndpoint::Response => !error,
            PostEndpoint::Error => error,
            PostEndpoint::Any => true,
        }
    }
}

/// What a `/response` or `/error` post for an outstanding invocation gets. Applies to every
/// matching post for a faulted invocation; posts for unknown or already answered ids get their
/// normal 400. See the [module docs](self) for an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostFault {
    /// Answer with this status (400..=599) and a JSON body
    /// `{"errorMessage":"injected fault: <status> for <request id>","errorType":...}`.
    ///
    /// For 413 the post is not an answer (as for a real oversized body): the invocation stays
    /// outstanding and the runtime is expected to post `Function.ResponseSizeTooLarge` to
    /// `/error`. (AWS's emulator instead ends the invocation itself with that error when it
    /// answers 413, and refuses the follow-up with 400 or 403; a runtime that sends the follow-up
    /// and takes such a refusal as the end of the invocation is right against both.) For any other status the post **is** recorded as the invocation's answer, so the
    /// ledger still shows exactly one reply per invocation (and a retried post shows up as a
    /// duplicate); only the status the runtime reads is the fault's.
    Status(u16),
    /// Record the post as the invocation's answer, and never reply: the connection stays
    /// open with the post's reply outstanding, as with a Runtime API that hangs. The
    /// runtime is expected to give up on the reply (its unreachable timeout) rather than
    /// hold the slot forever.
    NoReply,
    /// Stop reading the post once its head has come, and never reply: the connection stays
    /// open with the rest of the body unread, as with a Runtime API that hangs mid-request.
    /// The post is not an answer (its body never arrives whole): the invocation is retired
    /// as [unanswerable](Unanswerable::post_stalled) at once (only a post that would
    /// otherwise be taken: for an outstanding invocation, with its invocation id). A post
    /// small enough for the socket buffers goes out whole anyway and only waits for its
    /// reply (which a runtime pipelining its posts reads with the next invocation, and
    /// so does not time out); a larger one stalls, and the runtime is expected to give
    /// up on it (its unreachable timeout) rather than hold the slot forever.
    StopReading,
    /// Read the post's body at most this many bytes a second, then answer as usual: an API
    /// that reads slowly (AWS caps a streamed response's bandwidth past its first 6 MB)
    /// but has not stopped. The runtime is expected to wait for it, however long the
    /// whole post takes.
    ReadSlowly {
        /// The pace, at least 1.
        bytes_per_sec: u64,
    },
    /// Answer with this status (400..=599, not 413, which is no answer) before reading
    /// the body, and close the connection: as AWS's emulator refuses a post for an
    /// invocation it will not take (it checks the id before it reads the body, and Go's
    /// server then resets a connection left with more than 256 KiB unread). A large post's
    /// send then fails with the refusal already in the runtime's receive buffer. Only a
    /// post that would otherwise be taken is faulted (for an outstanding invocation, with
    /// its invocation id); it is recorded as the invocation's answer, its body unchecked,
    /// so a post sent again shows up as a duplicate.
    StatusUnread(u16),
}

impl PostFault {
    /// The counter this fault bumps in [`FaultCounts`].
    pub fn kind(&self) -> FaultKind {
        match self {
            PostFault::Status(413) => FaultKind::PostTooLarge,
            PostFault::Status(_) => FaultKind::PostStatus,
            PostFault::NoReply => FaultKind::PostNoReply,
            PostFault::StopReading => FaultKind::PostStopReading,
            PostFault::ReadSlowly { .. } => FaultKind::PostReadSlowly,
            PostFault::StatusUnread(_) => FaultKind::PostStatusUnread,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            PostFault::Status(s) if !(400..=599).contains(s) => Err(format!(
                "PostFault::Status({s}): the status must be within 400..=599"
            )),
            PostFault::StatusUnread(s) if !(400..=599).contains(s) || *s == 413 => Err(format!(
                "PostFault::StatusUnread({s}): the status must be within 400..=599, and not 413 \
                 (a 413 is no answer; use PostFault::Status(413))"
            )),
            PostFault::ReadSlowly { bytes_per_sec: 0 } => {
                Err("PostFault::ReadSlowly: the pace must be at least 1 byte a second".into())
            }
            _ => Ok(()),
        }
    }
}

/// What happens to an accepted connection. Every matching rule applies; a refusal wins.
///
/// A runtime must survive both: retry a refused connection, and notice that a pooled
/// connection was closed while idle.
///
/// ```
/// use std::time::Duration;
/// use lambda_tpc::sim::{ConnFault, FaultPlan, Schedule};
///
/// let plan = FaultPlan::new(0)
///     .connection(Schedule::Nth(0), ConnFault::Refuse)
///     .connection(Schedule::From(1), ConnFault::CloseWhenIdle(Duration::from_millis(5)));
/// assert_eq!(plan.connection_faults(0).collect::<Vec<_>>(), [&ConnFault::Refuse]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnFault {
    /// Reset the connection as soon as it is accepted.
    Refuse,
    /// Reset this connection and every connection accepted during the next `duration`.
    RefuseFor(Duration),
    /// Once the connection has answered this many requests (at least 1) and is idle (no request
    /// in progress, every reply flushed), close it without warning (no `Connection: close`),
    /// as a server closing an idle keep-alive connection does.
    CloseAfterRequests(u64),
    /// Close the connection without warning once it has been idle this long.
    CloseWhenIdle(Duration),
}

impl ConnFault {
    fn validate(&self) -> Result<(), String> {
        match self {
            ConnFault::CloseAfterRequests(0) => {
                Err("ConnFault::CloseAfterRequests(0): must be at least 1".into())
            }
            _ => Ok(()),
        }
    }
}

/// What the simulator does wrong, and when: rules added with [`reply`](Self::reply),
/// [`poll`](Self::poll), [`post`](Self::post) and [`connection`](Self::connection), given
/// to [`SimulatorBuilder::faults`](super::SimulatorBuilder::faults). See the
/// [module docs](self) for each fault and a run under a plan.
///
/// The `*_fault` lookups say which rule applies to an occurrence, e.g. to know which
/// invocations a [`Schedule::Random`] rule hits.
///
/// ```
/// use lambda_tpc::sim::{ConnFault, FaultPlan, PollFault, PostEndpoint, PostFault, ReplyFault, Schedule};
/// use std::time::Duration;
///
/// let plan = FaultPlan::new(42)
///     .reply(Schedule::EveryKth(5), ReplyFault::ResetMidBody)
///     .reply(Schedule::Random(0.1), ReplyFault::Drip { delay: Duration::ZERO })
///     .poll(Schedule::Nth(100), PollFault::Status(500))
///     .post(PostEndpoint::Response, Schedule::Nth(3), PostFault::Status(410))
///     .connection(Schedule::Always, ConnFault::CloseAfterRequests(10));
/// assert_eq!(plan.reply_fault(4), Some(&ReplyFault::ResetMidBody));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    replies: Vec<(Schedule, ReplyFault)>,
    polls: Vec<(Schedule, PollFault)>,
    posts: Vec<(PostEndpoint, Schedule, PostFault)>,
    connections: Vec<(Schedule, ConnFault)>,
}

/// Rule families, mixed into the generator's input so rules of different families with the
/// same index draw independently.
const FAMILY_REPLY: u64 = 1 << 32;
const FAMILY_POLL: u64 = 2 << 32;
const FAMILY_POST: u64 = 3 << 32;
const FAMILY_CONN: u64 = 4 << 32;

impl FaultPlan {
    /// An empty plan whose [`Schedule::Random`] draws come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds a rule corrupting the `/next` replies of the invocations `when` selects.
    pub fn reply(mut self, when: Schedule, fault: ReplyFault) -> Self {
        self.replies.push((when, fault));
        self
    }

    /// Adds a rule answering the `/next` requests `when` selects without an invocation.
    pub fn poll(mut self, when: Schedule, fault: PollFault) -> Self {
        self.polls.push((when, fault));
        self
    }

    /// Adds a rule answering the posts on `on` for the invocations `when` selects with an error.
    pub fn post(mut self, on: PostEndpoint, when: Schedule, fault: PostFault) -> Self {
        self.posts.push((on, when, fault));
        self
    }

    /// Adds a rule for the accepted connections `when` selects.
    pub fn connection(mut self, when: Schedule, fault: ConnFault) -> Self {
        self.connections.push((when, fault));
        self
    }

    /// Whether the plan has no rule.
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
            && self.polls.is_empty()
            && self.posts.is_empty()
            && self.connections.is_empty()
    }

    /// The fault of the `/next` reply carrying invocation `seq` (0-based hand-out order).
    pub fn reply_fault(&self, seq: u64) -> Option<&ReplyFault> {
        self.replies
            .iter()
            .enumerate()
            .find(|(r, (when, _))| when.hits(self.seed, FAMILY_REPLY | *r as u64, seq))
            .map(|(_, (_, f))| f)
    }

    /// The fault of the `index`-th `/next` request (0-based arrival order).
    pub fn poll_fault(&self, index: u64) -> Option<&PollFault> {
        self.polls
            .iter()
            .enumerate()
            .find(|(r, (when, _))| when.hits(self.seed, FAMILY_POLL | *r as u64, index))
            .map(|(_, (_, f))| f)
    }

    /// The fault of a post for invocation `seq` (`error`: to `/error`, else `/response`).
    pub fn post_fault(&self, seq: u64, error: bool) -> Option<&PostFault> {
        self.posts
            .iter()
            .enumerate()
            .find(|(r, (on, when, _))| {
                on.matches(error) && when.hits(self.seed, FAMILY_POST | *r as u64, seq)
            })
            .map(|(_, (_, _, f))| f)
    }

    /// Every fault applying to the `index`-th accepted connection (0-based).
    pub fn connection_faults(&self, index: u64) -> impl Iterator<Item = &ConnFault> + '_ {
        self.connections
            .iter()
            .enumerate()
            .filter(move |(r, (when, _))| when.hits(self.seed, FAMILY_CONN | *r as u64, index))
            .map(|(_, (_, f))| f)
    }

    /// Checks every rule; the message names the first bad one.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (when, f) in &self.replies {
            when.validate()?;
            f.validate()?;
        }
        for (when, f) in &self.polls {
            when.validate()?;
            f.validate()?;
        }
        for (_, when, f) in &self.posts {
            when.validate()?;
            f.validate()?;
        }
        for (when, f) in &self.connections {
            when.validate()?;
            f.validate()?;
        }
        Ok(())
    }
}

/// The bytes [`ReplyFault::Garbage`] writes instead of an HTTP reply.
pub const GARBAGE: &[u8] = b"\x00\xff\x13garbage: this is not HTTP at all\r\n\r\n";

/// Size of the head written by [`ReplyFault::OversizedHead`]: 64 KiB (the runtime's limit)
/// plus 1 KiB.
pub const OVERSIZED_HEAD_BYTES: usize = 65 * 1024;

/// Why an invocation became unanswerable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    ResetBeforeHead,
    ResetMidHead,
    Garbage,
    OversizedHead,
    MissingId,
    UnsafeId,
    PostStalled,
}

/// Invocations handed out that a fault made impossible to answer (the runtime never had a
/// usable request id, or the API stopped reading its answer), by reason: [`Ledger::unanswerable`](super::Ledger::unanswerable).
/// See the [module docs](self). Not exhaustive, as the faults are not: start from
/// [`Unanswerable::default`] to build one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unanswerable {
    /// [`ReplyFault::ResetBeforeHead`].
    pub reset_before_head: u64,
    /// [`ReplyFault::ResetMidHead`].
    pub reset_mid_head: u64,
    /// [`ReplyFault::Garbage`].
    pub garbage: u64,
    /// [`ReplyFault::OversizedHead`].
    pub oversized_head: u64,
    /// [`ReplyFault::MissingRequestId`].
    pub missing_id: u64,
    /// [`ReplyFault::UnsafeRequestId`].
    pub unsafe_id: u64,
    /// [`PostFault::StopReading`]: retired when the post's head came, its body unread.
    pub post_stalled: u64,
}

impl Unanswerable {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.reset_before_head
            + self.reset_mid_head
            + self.garbage
            + self.oversized_head
            + self.missing_id
            + self.unsafe_id
            + self.post_stalled
    }

    pub(crate) fn bump(&mut self, reason: Reason) {
        let c = match reason {
            Reason::ResetBeforeHead => &mut self.reset_before_head,
            Reason::ResetMidHead => &mut self.reset_mid_head,
            Reason::Garbage => &mut self.garbage,
            Reason::OversizedHead => &mut self.oversized_head,
            Reason::MissingId => &mut self.missing_id,
            Reason::UnsafeId => &mut self.unsafe_id,
            Reason::PostStalled => &mut self.post_stalled,
        };
        *c += 1;
    }
}

/// Every fault the simulator can inject, as counted in [`FaultCounts`] (see [`PollFault`]
/// for an example).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FaultKind {
    /// [`ReplyFault::ResetBeforeHead`].
    ResetBeforeHead,
    /// [`ReplyFault::ResetMidHead`].
    ResetMidHead,
    /// [`ReplyFault::ResetMidBody`].
    ResetMidBody,
    /// [`ReplyFault::Drip`].
    Drip,
    /// [`ReplyFault::Garbage`].
    Garbage,
    /// [`ReplyFault::OversizedHead`].
    OversizedHead,
    /// [`ReplyFault::OversizedBody`].
    OversizedBody,
    /// [`ReplyFault::WrongContentLength`].
    WrongContentLength,
    /// [`ReplyFault::BadChunkSize`].
    BadChunkSize,
    /// [`ReplyFault::Chunked`].
    Chunked,
    /// [`ReplyFault::MissingRequestId`].
    MissingRequestId,
    /// [`ReplyFault::MissingDeadline`].
    MissingDeadline,
    /// [`ReplyFault::InvalidDeadline`].
    InvalidDeadline,
    /// [`ReplyFault::UnsafeRequestId`].
    UnsafeRequestId,
    /// [`PollFault::Status`].
    PollStatus,
    /// [`PollFault::Outage`] (the triggering `/next`; refused connections count as
    /// [`FaultKind::Refused`]).
    Outage,
    /// [`PostFault::Status`] other than 413.
    PostStatus,
    /// [`PostFault::Status`]`(413)`.
    PostTooLarge,
    /// [`PostFault::NoReply`].
    PostNoReply,
    /// [`PostFault::StopReading`].
    PostStopReading,
    /// [`PostFault::ReadSlowly`].
    PostReadSlowly,
    /// [`PostFault::StatusUnread`].
    PostStatusUnread,
    /// A connection reset at accept ([`ConnFault::Refuse`], [`ConnFault::RefuseFor`],
    /// [`PollFault::Outage`]).
    Refused,
    /// A connection closed by [`ConnFault::CloseAfterRequests`].
    CloseAfterRequests,
    /// A connection closed by [`ConnFault::CloseWhenIdle`].
    CloseWhenIdle,
    /// [`PollFault::DropAfter`].
    DroppedPoll,
}

// `FaultCounts` indexes its array by discriminant: `ALL` must list every kind, in order
// (checked by the `kinds_in_order` test; this catches a kind added at the end and not listed).
const _: () = assert!(FaultKind::DroppedPoll as usize + 1 == FaultKind::ALL.len());

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 26] = [
        FaultKind::ResetBeforeHead,
        FaultKind::ResetMidHead,
        FaultKind::ResetMidBody,
        FaultKind::Drip,
        FaultKind::Garbage,
        FaultKind::OversizedHead,
        FaultKind::OversizedBody,
        FaultKind::WrongContentLength,
        FaultKind::BadChunkSize,
        FaultKind::Chunked,
        FaultKind::MissingRequestId,
        FaultKind::MissingDeadline,
        FaultKind::InvalidDeadline,
        FaultKind::UnsafeRequestId,
        FaultKind::PollStatus,
        FaultKind::Outage,
        FaultKind::PostStatus,
        FaultKind::PostTooLarge,
        FaultKind::PostNoReply,
        FaultKind::PostStopReading,
        FaultKind::PostReadSlowly,
        FaultKind::PostStatusUnread,
        FaultKind::Refused,
        FaultKind::CloseAfterRequests,
        FaultKind::CloseWhenIdle,
        FaultKind::DroppedPoll,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// How many faults of each kind were injected. Plain data, part of the
/// [`Ledger`](super::Ledger); `Debug` lists only the kinds that occurred.
///
/// ```
/// use lambda_tpc::sim::{FaultCounts, FaultKind};
///
/// let counts = FaultCounts::default();
/// assert_eq!(counts.total(), 0);
/// assert!(FaultKind::ALL.iter().all(|&kind| counts.get(kind) == 0));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    counts: [u64; FaultKind::ALL.len()],
}

impl FaultCounts {
    /// Faults of this kind injected.
    pub fn get(&self, kind: FaultKind) -> u64 {
        self.counts[kind.index()]
    }

    /// All faults injected.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn bump(&mut self, kind: FaultKind) {
        self.counts[kind.index()] += 1;
    }
}

impl fmt::Debug for FaultCounts {
    /// Only the kinds that occurred.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for k in FaultKind::ALL {
            if self.get(k) > 0 {
                m.entry(&k, &self.get(k));
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let hits = |s: Schedule| -> Vec<u64> { (0..12).filter(|&i| s.hits(7, 1, i)).collect() };
        assert_eq!(hits(Schedule::Nth(3)), [3]);
        assert_eq!(hits(Schedule::EveryKth(4)), [3, 7, 11]);
        assert_eq!(hits(Schedule::EveryKth(1)).len(), 12);
        assert_eq!(hits(Schedule::From(10)), [10, 11]);
        assert_eq!(hits(Schedule::Range { start: 2, end: 4 }), [2, 3]);
        assert_eq!(hits(Schedule::Random(0.0)), Vec::<u64>::new());
        assert_eq!(hits(Schedule::Random(1.0)).len(), 12);
        // Deterministic, and about right.
        let r = Schedule::Random(0.25);
        let n = (0..10_000).filter(|&i| r.hits(7, 1, i)).count();
        assert!((2_200..2_800).contains(&n), "{n}");
        let again = (0..10_000).filter(|&i| r.hits(7, 1, i)).count();
        assert_eq!(n, again);
        let other_seed = (0..64).filter(|&i| r.hits(8, 1, i)).collect::<Vec<_>>();
        let this_seed = (0..64).filter(|&i| r.hits(7, 1, i)).collect::<Vec<_>>();
        assert_ne!(other_seed, this_seed);
    }

    #[test]
    fn first_matching_rule_wins_and_validation() {
        let plan = FaultPlan::new(1)
            .reply(Schedule::Nth(2), ReplyFault::Garbage)
            .reply(Schedule::Always, ReplyFault::MissingDeadline);
        assert_eq!(plan.reply_fault(2), Some(&ReplyFault::Garbage));
        assert_eq!(plan.reply_fault(3), Some(&ReplyFault::MissingDeadline));
        assert!(plan.validate().is_ok());
        assert!(
            FaultPlan::new(0)
                .reply(Schedule::EveryKth(0), ReplyFault::Garbage)
                .validate()
                .is_err()
        );
        assert!(
            FaultPlan::new(0)
                .post(PostEndpoint::Any, Schedule::Always, PostFault::Status(202))
                .validate()
                .is_err()
        );
        assert!(
            FaultPlan::new(0)
                .reply(
                    Schedule::Always,
                    ReplyFault::UnsafeRequestId("a\r\nb".into())
                )
                .validate()
                .is_err()
        );
    }

    #[test]
    fn kinds_in_order() {
        for (i, k) in FaultKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
    }

    #[test]
    fn counts() {
        let mut c = FaultCounts::default();
        c.bump(FaultKind::Garbage);
        c.bump(FaultKind::Garbage);
        c.bump(FaultKind::CloseWhenIdle);
        assert_eq!(c.get(FaultKind::Garbage), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(format!("{c:?}"), "{Garbage: 2, CloseWhenIdle: 1}");
        let mut u = Unanswerable::default();
        u.bump(Reason::UnsafeId);
        u.bump(Reason::MissingId);
        assert_eq!((u.total(), u.unsafe_id), (2, 1));
    }
}
