//! What the simulator reports: counters, latency summary, error records.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::fault::{FaultCounts, Unanswerable};

/// Counters of everything the simulator saw. A snapshot: plain data, taken with
/// [`Simulator::ledger`](super::Simulator::ledger).
///
/// The counters are cumulative over the simulator's life
/// ([`Simulator::reset_measurements`](super::Simulator::reset_measurements) resets the latency
/// histogram only, so that `lost()` stays meaningful).
///
/// At any time `handed_out == answered_ok + answered_error + timed_out +
/// unanswerable.total() + lost()`;
/// after a correct runtime is done, `lost() == 0`. See the [module docs](super) and
/// [`Simulator`](super::Simulator) for runs.
///
/// What a test typically asserts once the runtime under test is done:
///
/// ```
/// use lambda_tpc::sim::Ledger;
///
/// fn assert_settled(l: &Ledger) {
///     let accounted = l.answered() + l.timed_out + l.unanswerable.total() + l.lost();
///     assert_eq!(l.handed_out, accounted, "{l:?}");
///     assert_eq!(l.lost(), 0, "invocations dropped: {l:?}");
///     assert_eq!((l.mismatched, l.duplicates, l.unknown_ids), (0, 0, 0), "{l:?}");
/// }
/// assert_settled(&Ledger::default());
/// ```
///
/// Not exhaustive: counters are added as the simulator learns to check more (a struct
/// literal would break on each); start from [`Ledger::default`] to build one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ledger {
    /// Invocations handed out by `/next` replies.
    pub handed_out: u64,
    /// Invocations answered with an accepted `/response` (202).
    pub answered_ok: u64,
    /// Invocations answered with an accepted `/error` (202), or a streamed `/response` whose
    /// trailers carried `Lambda-Runtime-Function-Error-Type`.
    pub answered_error: u64,
    /// Invocations answered after their deadline, with
    /// [`refuse_late_answers`](super::SimulatorBuilder::refuse_late_answers) on: refused
    /// with 410 as the Runtime API does, and retired (not `lost`, not answered).
    pub timed_out: u64,
    /// Replies for an id that was already answered (400).
    pub duplicates: u64,
    /// Replies for an id that was never handed out, or is not an id at all (400).
    pub unknown_ids: u64,
    /// Replies whose body exceeded the limit (413). Not an answer: the invocation stays
    /// outstanding, the runtime is expected to post to `/error` next.
    pub too_large: u64,
    /// Open-loop arrivals rejected because no `/next` was parked or the runtime was at
    /// `max_concurrency`. Not lost: they were never handed out.
    pub rejected: u64,
    /// Accepted `/response` bodies the validator said no to.
    pub mismatched: u64,
    /// Replies without the `Lambda-Runtime-Invocation-Id` that was handed out with the event,
    /// when invocation ids are on (400, not an answer).
    pub invocation_id_violations: u64,
    /// Requests for unknown paths or methods (404), with a bad response-mode header or an
    /// unreadable body (400), or that hyper could not parse (hyper answers 400/431/414).
    pub bad_requests: u64,
    /// `POST /runtime/init/error` requests (the first gets 202, later ones 403).
    pub init_errors: u64,
    /// Parked `/next` polls whose connection closed before an event was handed to them. The
    /// event that would have gone to them goes to the next poll instead (AWS would route it to
    /// the dead connection and fail the invocation).
    pub abandoned_polls: u64,
    /// `/response` requests that declared `Lambda-Runtime-Function-Response-Mode: streaming`.
    pub streamed: u64,
    /// Of those, the ones whose `Content-Type` says the body opens with an HTTP prelude
    /// ([`CONTENT_TYPE_HTTP_INTEGRATION`](crate::api::CONTENT_TYPE_HTTP_INTEGRATION)).
    pub streamed_http_integration: u64,
    /// TCP connections accepted (including those a fault refused at once).
    pub connections: u64,
    /// Invocations handed out that a fault made impossible to answer, by reason (see
    /// [`fault`](super::fault)). Retired at hand-out: not `in_flight`, not `lost`.
    pub unanswerable: Unanswerable,
    /// Faults injected, by kind (all zero without a [`FaultPlan`](super::FaultPlan)).
    pub faults: FaultCounts,
    /// Invocations handed out and not yet answered, now.
    pub in_flight: u64,
    /// `/next` polls parked now (waiting for an event or for capacity).
    pub parked: u64,
}

impl Ledger {
    /// Counts a streamed `/response` request, and whether it declared a prelude.
    pub(crate) fn count_stream(&mut self, http_integration: bool) {
        self.streamed += 1;
        self.streamed_http_integration += u64::from(http_integration);
    }

    /// Invocations handed out, never answered, and not made unanswerable by a fault. While the
    /// simulator runs this equals `in_flight`; after the runtime is done it counts the
    /// invocations it dropped (including an event handed to a connection that died before the
    /// reply reached the runtime).
    pub fn lost(&self) -> u64 {
        self.handed_out
            .saturating_sub(self.answered_ok)
            .saturating_sub(self.answered_error)
            .saturating_sub(self.timed_out)
            .saturating_sub(self.unanswerable.total())
    }

    /// All answers, successful or not.
    pub fn answered(&self) -> u64 {
        self.answered_ok + self.answered_error
    }
}

/// Latency from hand-out to answer, in microseconds, from
/// [`Simulator::latency`](super::Simulator::latency) (see the [module docs](super) for an
/// example). All zero when nothing was answered.
///
/// Hand-out is the moment the `/next` reply is produced (just before hyper writes it); the answer
/// is the moment the `/response` or `/error` body has been read completely, i.e. when the
/// simulator holds the whole reply, as a caller would. Only accepted answers are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Time since the simulator started or since the last
    /// [`reset_measurements`](super::Simulator::reset_measurements): `count / window` is the
    /// answer throughput.
    pub window: Duration,
}

impl LatencySummary {
    pub(crate) fn from_histogram(h: &Histogram<u64>, window: Duration) -> Self {
        if h.is_empty() {
            return Self {
                window,
                ..Self::default()
            };
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
            window,
        }
    }
}

/// One reported error, kept for tests to assert on (the first N invocation errors, see
/// [`SimulatorBuilder::keep_errors`](super::SimulatorBuilder::keep_errors), and the last init
/// error). See the [`fault`](super::fault) module for an example.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorRecord {
    /// The request id from the path; `None` for an init error.
    pub request_id: Option<String>,
    /// The `Lambda-Runtime-Function-Error-Type` header (or trailer, for a streamed response),
    /// as sent (AWS would map values not matching `(Runtime|Function)\.[A-Z][a-zA-Z]+` to
    /// `Runtime.Unknown`).
    pub header_error_type: Option<String>,
    /// `errorType` from the JSON body, if the body parsed.
    pub error_type: Option<String>,
    /// `errorMessage` from the JSON body, if the body parsed. For a streamed response: the raw
    /// (base64) `Lambda-Runtime-Function-Error-Body` trailer.
    pub error_message: Option<String>,
    /// Whether the error came in the trailers of a streamed `/response`.
    pub streamed: bool,
}
