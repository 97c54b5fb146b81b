//! Where invocation events come from ([`EventSource`]) and when they become available
//! ([`Arrival`]).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// Generator behind [`EventSource::from_fn`]. `Arc` because the builder and the simulator may
/// both hold the source; `Send + Sync` because it is called on the simulator's thread(s) and,
/// for paced arrivals, on the pacer thread.
type Generator = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;

#[derive(Clone)]
enum Kind {
    /// The same payload every time; handing it out is a reference-count increment.
    Repeat(Bytes),
    /// A payload computed from the event's index (0-based).
    Generate(Generator),
}

/// A finite or unbounded sequence of invocation events.
///
/// Each event is handed out exactly once (unless the connection it was assigned to closed before
/// the `/next` reply was produced, in which case it is handed to the next poll). The validator
/// configured with [`SimulatorBuilder::validator`](super::SimulatorBuilder::validator) sees the
/// exact bytes handed out.
///
/// Payloads are `bytes::Bytes`; anything that converts into it (`&'static str`,
/// `&'static [u8]`, `String`, `Vec<u8>`) will do.
///
/// ```
/// use lambda_tpc::sim::EventSource;
///
/// let pings = EventSource::repeat(r#"{"ping":true}"#, 100);
/// assert_eq!(pings.count(), 100);
///
/// // Events that differ, e.g. to check that each response belongs to its event.
/// let numbered = EventSource::from_fn(10, |i| format!(r#"{{"i":{i}}}"#).into());
/// assert!(!numbered.is_unbounded());
/// assert!(EventSource::default().is_unbounded()); // `{}` forever
/// ```
#[derive(Clone)]
pub struct EventSource {
    kind: Kind,
    count: u64,
}

impl EventSource {
    /// The `count` of a source that never runs out (runs until shutdown).
    pub const UNBOUNDED: u64 = u64::MAX;

    /// `count` copies of `payload`.
    pub fn repeat(payload: impl Into<Bytes>, count: u64) -> Self {
        Self {
            kind: Kind::Repeat(payload.into()),
            count,
        }
    }

    /// `payload` forever.
    pub fn repeat_unbounded(payload: impl Into<Bytes>) -> Self {
        Self::repeat(payload, Self::UNBOUNDED)
    }

    /// `count` events, the `i`-th (from 0) being `f(i)`.
    ///
    /// `f` runs on a simulator thread while the simulator's state lock is held, so it should be
    /// cheap (pre-build payloads and clone `Bytes` if they are expensive).
    pub fn from_fn(count: u64, f: impl Fn(u64) -> Bytes + Send + Sync + 'static) -> Self {
        Self {
            kind: Kind::Generate(Arc::new(f)),
            count,
        }
    }

    /// Like [`from_fn`](Self::from_fn), forever.
    pub fn from_fn_unbounded(f: impl Fn(u64) -> Bytes + Send + Sync + 'static) -> Self {
        Self::from_fn(Self::UNBOUNDED, f)
    }

    /// Number of events, [`UNBOUNDED`](Self::UNBOUNDED) for an endless source.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the source never runs out.
    pub fn is_unbounded(&self) -> bool {
        self.count == Self::UNBOUNDED
    }

    /// The event with the given index.
    pub(crate) fn event(&self, index: u64) -> Bytes {
        match &self.kind {
            Kind::Repeat(payload) => payload.clone(),
            Kind::Generate(f) => f(index),
        }
    }
}

impl Default for EventSource {
    /// An unbounded stream of `{}`.
    fn default() -> Self {
        Self::repeat_unbounded(Bytes::from_static(b"{}"))
    }
}

impl fmt::Debug for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Repeat(p) => format!("repeat({} bytes)", p.len()),
            Kind::Generate(_) => "from_fn".to_owned(),
        };
        let count = if self.is_unbounded() {
            "unbounded".to_owned()
        } else {
            self.count.to_string()
        };
        f.debug_struct("EventSource")
            .field("kind", &kind)
            .field("count", &count)
            .finish()
    }
}

/// When events become available to the runtime; set with
/// [`SimulatorBuilder::arrival`](super::SimulatorBuilder::arrival).
///
/// [`Closed`](Self::Closed) measures the runtime's throughput (the simulator never waits);
/// [`OpenLoop`](Self::OpenLoop) measures how a runtime copes with a given rate, as AWS
/// would send it.
///
/// ```
/// use lambda_tpc::sim::{Arrival, EventSource, Simulator};
///
/// let sim = Simulator::builder()
///     .events(EventSource::repeat_unbounded("{}"))
///     .arrival(Arrival::OpenLoop { per_sec: 2_000.0 })
///     .start()?;
/// // The clock starts with the first /next; no runtime here, so nothing arrives.
/// assert_eq!(sim.shutdown().rejected, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Arrival {
    /// Events are available as fast as the runtime asks: a parked `/next` gets the next event as
    /// soon as fewer than `max_concurrency` invocations are outstanding.
    #[default]
    Closed,
    /// Events are released at a fixed rate and queue up (without bound) until the runtime has
    /// capacity for them.
    Paced {
        /// Events released per second (> 0).
        per_sec: f64,
    },
    /// Events arrive at a fixed rate; one that arrives while no `/next` is parked, or while
    /// `max_concurrency` invocations are outstanding, is rejected and counted in
    /// [`Ledger::rejected`](super::Ledger::rejected) (this is what AWS does: the caller gets
    /// `Runtime.Unavailable`, nothing is queued).
    OpenLoop {
        /// Events arriving per second (> 0).
        per_sec: f64,
    },
}

/// How the simulator frames the event in a `/next` reply.
///
/// The Runtime API is a Go `net/http` server, and AWS's emulator writes the event with a
/// single `Write` after the headers, without a `Content-Length`. Go then sends the length
/// only if the whole reply fits the 2,048 bytes it buffers before it starts chunking;
/// longer events arrive chunked (one chunk, then the last chunk). The default does the
/// same, so that large events exercise the framing a runtime meets in production.
///
/// ```
/// use lambda_tpc::sim::{EventFraming, EventSource, Simulator};
///
/// let sim = Simulator::builder()
///     .events(EventSource::repeat(vec![b'7'; 64 * 1024], 1))
///     .event_framing(EventFraming::ContentLength)
///     .start()?;
/// # drop(sim);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EventFraming {
    /// As Go's `net/http` frames the emulator's reply: `Content-Length` for events of at
    /// most [`GO_CHUNKING_THRESHOLD`] bytes, chunked above.
    #[default]
    LikeGo,
    /// Always `Content-Length`.
    ContentLength,
    /// Always chunked (the event in one chunk), however small.
    Chunked,
}

/// Largest event [`EventFraming::LikeGo`] sends with a `Content-Length`: the size of the
/// buffer Go's `net/http` fills before it commits to chunked encoding
/// (`bufferBeforeChunkingSize`).
pub const GO_CHUNKING_THRESHOLD: usize = 2048;

impl EventFraming {
    /// Whether an event of `len` bytes is sent chunked.
    pub(crate) fn chunks(self, len: usize) -> bool {
        match self {
            Self::LikeGo => len > GO_CHUNKING_THRESHOLD,
            Self::ContentLength => false,
            Self::Chunked => true,
        }
    }
}
