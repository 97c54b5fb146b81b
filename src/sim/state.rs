//! The simulator's state: event source, outstanding invocations, parked polls, counters.
//!
//! All of it lives in one [`Core`] behind one `std::sync::Mutex` ([`Shared::core`]). The lock is
//! only ever held for a few hundred nanoseconds of bookkeeping, never across an `.await`, never
//! while reading a body or running the validator. A `Mutex` rather than `Rc<RefCell<..>>` on a
//! single thread because (a) the test thread reads snapshots and waits for completion
//! (`Condvar`), (b) the pacer thread releases paced/open-loop events with sub-millisecond
//! precision, which tokio's 1 ms timer cannot, and (c) `threads(n > 1)` shares the state between
//! several single-threaded runtimes. Uncontended, the lock costs two atomic operations, noise
//! next to hyper parsing a request.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::header::HeaderValue;

use super::fault::{FaultPlan, Reason};
use super::ledger::{ErrorRecord, Ledger};
use super::source::{Arrival, EventFraming, EventSource};

/// The validator: `(event, response body) -> ok?`. `Arc` so the config can be shared by every
/// thread; `Send + Sync` because it runs on whichever simulator thread read the response.
pub(crate) type Validator = std::sync::Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

/// Configuration. Immutable after `start`, so every request reads it without locking (it sits
/// in [`Shared`], behind the same `Arc`).
pub(crate) struct Config {
    pub max_concurrency: usize,
    pub arrival: Arrival,
    pub event_framing: EventFraming,
    pub deadline: Duration,
    pub refuse_late_answers: bool,
    pub invocation_ids: bool,
    pub function_arn: HeaderValue,
    pub tenant_id: Option<HeaderValue>,
    pub client_context: Option<HeaderValue>,
    pub cognito_identity: Option<HeaderValue>,
    pub validator: Option<Validator>,
    pub path_prefix: String,
    pub response_limit: usize,
    pub streaming_limit: usize,
    pub keep_errors: usize,
    /// Distinguishes simulators started in the same process; first group of every id.
    pub run: u32,
    /// Fault injection; `None` (the default) keeps every connection on the plain hyper path.
    pub faults: Option<FaultPlan>,
}

/// UUID variant group of request ids.
pub(crate) const REQUEST_ID_VARIANT: u16 = 0x8000;
/// UUID variant group of invocation ids (different from request ids, so a runtime that echoes
/// the request id instead of the invocation id is caught).
pub(crate) const INVOCATION_ID_VARIANT: u16 = 0x9000;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as `out.len()` lower-case hex digits (the low `4 * out.len()` bits).
pub(crate) fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// `{run:08x}-0000-4000-{variant:04x}-{seq:012x}`: UUID-shaped, unique per run and sequence
/// number (up to 2^48 hand-outs), and parseable back without a table.
pub(crate) fn uuid(run: u32, variant: u16, seq: u64) -> [u8; 36] {
    let mut id = *b"00000000-0000-4000-0000-000000000000";
    put_hex(&mut id[0..8], u64::from(run));
    put_hex(&mut id[19..23], u64::from(variant));
    put_hex(&mut id[24..36], seq);
    id
}

/// The sequence number of an id made by [`uuid`] with this run and variant, `None` for anything
/// else.
pub(crate) fn parse_uuid(s: &[u8], run: u32, variant: u16) -> Option<u64> {
    if s.len() != 36 || s[..24] != uuid(run, variant, 0)[..24] {
        return None;
    }
    s[24..].iter().try_fold(0u64, |acc, &c| {
        // Lower-case only: we never send upper case, so anything else is not our id.
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// Sequence numbers are dense small integers: a multiplicative hash is enough and cheaper than
/// SipHash on the per-reply path (the map is ours, keys are not attacker-chosen; an unknown id
/// is rejected by [`parse_uuid`] or by the `seq < next_seq` check before any lookup).
#[derive(Default)]
pub(crate) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// An invocation handed out and not yet answered.
struct Outstanding {
    handed_at: Instant,
    /// The event, kept only when a validator needs it.
    event: Option<Bytes>,
}

/// A parked `/next` poll. Slots are reused (free list) so parking does not allocate once the
/// slab has grown to the peak number of parked polls.
enum SlotState {
    Free,
    /// Waiting for an event; the waker of the connection task that owns the poll. Whoever
    /// frees capacity or releases an event (a reply on any server thread, the pacer thread)
    /// assigns the event under the lock and wakes this task: no polling, no busy loop.
    Waiting(Option<Waker>),
    /// An event was assigned (capacity reserved) but the poll has not taken it yet.
    Assigned(Bytes),
}

struct Slot {
    /// Bumped when the slot is freed, so stale queue entries are recognised.
    generation: u32,
    state: SlotState,
}

/// Handle of a parked poll: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaiterKey {
    index: u32,
    generation: u32,
}

/// An invocation being handed out by a `/next` reply.
pub(crate) struct Handout {
    pub seq: u64,
    pub event: Bytes,
}

/// Messages to the pacer thread.
pub(crate) enum PacerMsg {
    /// The first `/next` arrived: start the arrival clock.
    Start,
    /// The simulator is shutting down.
    Stop,
}

/// How an invocation was answered.
pub(crate) enum AnswerKind {
    Ok,
    Error(Option<ErrorRecord>),
}

/// What a reply to an invocation amounts to.
pub(crate) enum Verdict {
    /// Accepted (202). Carries the event if a validator must check the response.
    Accepted(Option<Bytes>),
    Unknown,
    Duplicate,
    InvocationIdViolation,
    TooLarge,
    /// Answered after the invocation's deadline, with late answers refused (410).
    Late,
}

/// The mutable state, always accessed through [`Shared::lock`].
pub(crate) struct Core {
    pub ledger: Ledger,
    source: EventSource,
    /// Events taken from the source so far (handed out, assigned, rejected, or queued for
    /// redelivery).
    taken: u64,
    /// Paced mode: events released by the pacer and not yet taken.
    tokens: u64,
    /// Events taken from the source for a poll whose connection closed before it could hand
    /// them out; they go first to the next poll.
    redeliver: VecDeque<Bytes>,
    next_seq: u64,
    outstanding: HashMap<u64, Outstanding, BuildHasherDefault<SeqHasher>>,
    /// Events assigned to parked polls that have not taken them yet. They count against
    /// `max_concurrency` like outstanding invocations.
    reserved: usize,
    /// Parked polls in arrival order (FIFO); may contain stale keys of abandoned polls.
    waiters: VecDeque<WaiterKey>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    pub latency: Histogram<u64>,
    pub window_start: Instant,
    pub errors: Vec<ErrorRecord>,
    pub init_error: Option<ErrorRecord>,
    /// Set when the pacer's clock must be started by the first `/next`. A channel (not a flag
    /// the pacer polls) so the pacer thread sleeps until then.
    pacer: Option<mpsc::Sender<PacerMsg>>,
    /// Set by shutdown: polls dropped from now on are not "abandoned".
    pub shutting_down: bool,
    /// Fault injection: connections accepted before this instant are reset at once.
    pub refuse_until: Option<Instant>,
}

/// State shared by the server threads, the pacer thread and the [`Simulator`](super::Simulator).
pub(crate) struct Shared {
    pub cfg: Config,
    /// The mutable state; see the module documentation for why one `Mutex`.
    core: Mutex<Core>,
    /// Signalled when a finite source is done, for `wait_until_done`.
    pub done: Condvar,
    /// Fault injection: `/next` requests received so far (the occurrence index of
    /// [`FaultPlan::poll`] rules). Only touched when a plan is set.
    pub next_polls: AtomicU64,
}

impl Shared {
    pub fn new(
        cfg: Config,
        source: EventSource,
        latency: Histogram<u64>,
        pacer: Option<mpsc::Sender<PacerMsg>>,
    ) -> Self {
        let core = Core {
            ledger: Ledger::default(),
            source,
            taken: 0,
            tokens: 0,
            redeliver: VecDeque::new(),
            next_seq: 0,
            outstanding: HashMap::with_capacity_and_hasher(
                cfg.max_concurrency.min(4096),
                BuildHasherDefault::default(),
            ),
            reserved: 0,
            waiters: VecDeque::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            latency,
            window_start: Instant::now(),
            errors: Vec::new(),
            init_error: None,
            pacer,
            shutting_down: false,
            refuse_until: None,
        };
        Self {
            cfg,
            core: Mutex::new(core),
            done: Condvar::new(),
            next_polls: AtomicU64::new(0),
        }
    }

    /// Locks the state. A panic while holding the lock (only possible in a user's event
    /// generator) leaves counters consistent enough to keep reporting, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Core {
    fn has_capacity(&self, cfg: &Config) -> bool {
        (self.ledger.in_flight as usize) + self.reserved < cfg.max_concurrency
    }

    fn remaining(&self) -> u64 {
        self.source.count().saturating_sub(self.taken)
    }

    /// Whether an event can be taken now (not counting open-loop arrivals, which never wait).
    fn has_event(&self, cfg: &Config) -> bool {
        !self.redeliver.is_empty()
            || match cfg.arrival {
                Arrival::Closed => self.remaining() > 0,
                Arrival::Paced { .. } => self.tokens > 0,
                Arrival::OpenLoop { .. } => false,
            }
    }

    fn take_event(&mut self, cfg: &Config) -> Option<Bytes> {
        if let Some(ev) = self.redeliver.pop_front() {
            return Some(ev);
        }
        match cfg.arrival {
            Arrival::Closed if self.remaining() > 0 => {}
            Arrival::Paced { .. } if self.tokens > 0 => self.tokens -= 1,
            _ => return None,
        }
        let ev = self.source.event(self.taken);
        self.taken += 1;
        Some(ev)
    }

    fn hand_out(&mut self, cfg: &Config, event: Bytes) -> Handout {
        let seq = self.next_seq;
        self.next_seq += 1;
        let kept = cfg.validator.as_ref().map(|_| event.clone());
        self.outstanding.insert(
            seq,
            Outstanding {
                handed_at: Instant::now(),
                event: kept,
            },
        );
        self.ledger.handed_out += 1;
        self.ledger.in_flight += 1;
        Handout { seq, event }
    }

    fn start_clock(&mut self) {
        if let Some(tx) = self.pacer.take() {
            // The pacer may already be gone (shutdown); nothing to start then.
            let _ = tx.send(PacerMsg::Start);
        }
    }

    /// A `/next` arrived: hand out now if possible, else park it.
    pub fn poll_new(&mut self, cfg: &Config, waker: &Waker) -> Result<Handout, WaiterKey> {
        self.start_clock();
        // FIFO: polls already parked go first. (Whenever capacity and an event exist together,
        // `dispatch` has already emptied the queue, so this only matters for clarity.)
        if self.ledger.parked == 0
            && self.has_capacity(cfg)
            && let Some(ev) = self.take_event(cfg)
        {
            return Ok(self.hand_out(cfg, ev));
        }
        let slot = Slot {
            generation: 0,
            state: SlotState::Waiting(Some(waker.clone())),
        };
        let key = match self.free_slots.pop() {
            Some(index) => {
                let s = &mut self.slots[index as usize];
                s.state = slot.state;
                WaiterKey {
                    index,
                    generation: s.generation,
                }
            }
            None => {
                self.slots.push(slot);
                WaiterKey {
                    index: (self.slots.len() - 1) as u32,
                    generation: 0,
                }
            }
        };
        self.waiters.push_back(key);
        self.ledger.parked += 1;
        Err(key)
    }

    fn free_slot(&mut self, key: WaiterKey) {
        let s = &mut self.slots[key.index as usize];
        s.generation = s.generation.wrapping_add(1);
        s.state = SlotState::Free;
        self.free_slots.push(key.index);
    }

    fn slot_mut(&mut self, key: WaiterKey) -> Option<&mut SlotState> {
        self.slots
            .get_mut(key.index as usize)
            .filter(|s| s.generation == key.generation)
            .map(|s| &mut s.state)
    }

    /// A parked poll is polled again: take its event if one was assigned.
    pub fn poll_parked(&mut self, cfg: &Config, key: WaiterKey, waker: &Waker) -> Option<Handout> {
        let state = self.slot_mut(key)?;
        match state {
            SlotState::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                return None;
            }
            SlotState::Free => return None,
            SlotState::Assigned(_) => {}
        }
        let SlotState::Assigned(ev) = std::mem::replace(state, SlotState::Free) else {
            return None;
        };
        self.free_slot(key);
        self.reserved -= 1;
        Some(self.hand_out(cfg, ev))
    }

    /// A parked poll was dropped (its connection closed, or shutdown) before taking an event.
    pub fn abandon(&mut self, cfg: &Config, key: WaiterKey) {
        let Some(state) = self.slot_mut(key) else {
            return;
        };
        match std::mem::replace(state, SlotState::Free) {
            SlotState::Assigned(ev) => {
                // Never handed out: give it to the next poll instead of losing it.
                self.reserved -= 1;
                self.redeliver.push_front(ev);
            }
            SlotState::Waiting(_) => {
                self.ledger.parked -= 1;
                if !self.shutting_down {
                    self.ledger.abandoned_polls += 1;
                }
            }
            SlotState::Free => return,
        }
        self.free_slot(key);
        self.dispatch(cfg);
    }

    /// Assigns `ev` to the oldest live parked poll and wakes it; gives `ev` back if none.
    fn assign(&mut self, ev: Bytes) -> Result<(), Bytes> {
        while let Some(key) = self.waiters.pop_front() {
            // A key whose slot was freed since (abandoned poll) is stale: skip it.
            let Some(SlotState::Waiting(waker)) = self.slot_mut(key) else {
                continue;
            };
            let waker = waker.take();
            if let Some(state) = self.slot_mut(key) {
                *state = SlotState::Assigned(ev);
            }
            self.ledger.parked -= 1;
            self.reserved += 1;
            if let Some(w) = waker {
                w.wake();
            }
            return Ok(());
        }
        Err(ev)
    }

    /// Hands events to parked polls while there are events, capacity and polls.
    pub fn dispatch(&mut self, cfg: &Config) {
        while self.ledger.parked > 0 && self.has_capacity(cfg) && self.has_event(cfg) {
            let Some(ev) = self.take_event(cfg) else {
                break;
            };
            if let Err(ev) = self.assign(ev) {
                // Cannot happen while `parked > 0`; keep the event rather than lose it.
                self.redeliver.push_front(ev);
                break;
            }
        }
    }

    /// Paced mode: the pacer released `n` more events.
    pub fn release(&mut self, cfg: &Config, n: u64) {
        let room = self.remaining().saturating_sub(self.tokens);
        self.tokens += n.min(room);
        self.dispatch(cfg);
    }

    /// Open-loop mode: `n` events arrive now; each goes to a parked poll or is rejected.
    pub fn arrive(&mut self, cfg: &Config, n: u64) {
        for _ in 0..n {
            if self.remaining() == 0 {
                break;
            }
            let ev = self.source.event(self.taken);
            self.taken += 1;
            if !(self.ledger.parked > 0 && self.has_capacity(cfg) && self.assign(ev).is_ok()) {
                self.ledger.rejected += 1;
            }
        }
    }

    /// Whether the pacer has nothing left to release.
    pub fn nothing_to_release(&self) -> bool {
        self.remaining() == self.tokens
    }

    /// A finite source is done: every event handed out and answered, or rejected.
    pub fn is_done(&self) -> bool {
        !self.source.is_unbounded()
            && self.remaining() == 0
            && self.tokens == 0
            && self.redeliver.is_empty()
            && self.reserved == 0
            && self.ledger.in_flight == 0
    }

    /// Whether `seq` is currently outstanding; `Err` says why not.
    pub fn check_id(&mut self, seq: Option<u64>) -> Result<(), Verdict> {
        match seq {
            Some(s) if self.outstanding.contains_key(&s) => Ok(()),
            Some(s) if s < self.next_seq => {
                self.ledger.duplicates += 1;
                Err(Verdict::Duplicate)
            }
            _ => {
                self.ledger.unknown_ids += 1;
                Err(Verdict::Unknown)
            }
        }
    }

    /// Records the answer to outstanding invocation `seq` (checked by [`check_id`]).
    pub fn answer(&mut self, cfg: &Config, seq: u64, kind: AnswerKind, at: Instant) -> Verdict {
        let Some(o) = self.outstanding.remove(&seq) else {
            self.ledger.unknown_ids += 1;
            return Verdict::Unknown;
        };
        self.ledger.in_flight -= 1;
        if cfg.refuse_late_answers && at > o.handed_at + cfg.deadline {
            self.ledger.timed_out += 1;
            self.dispatch(cfg);
            return Verdict::Late;
        }
        match kind {
            AnswerKind::Ok => self.ledger.answered_ok += 1,
            AnswerKind::Error(record) => {
                self.ledger.answered_error += 1;
                if let Some(r) = record
                    && self.errors.len() < cfg.keep_errors
                {
                    self.errors.push(r);
                }
            }
        }
        let us = at.saturating_duration_since(o.handed_at).as_micros();
        self.latency
            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
        self.dispatch(cfg);
        Verdict::Accepted(o.event)
    }
}

impl Core {
    /// Whether invocation `seq` was handed out and is not settled yet.
    pub fn is_outstanding(&self, seq: u64) -> bool {
        self.outstanding.contains_key(&seq)
    }

    /// Fault injection: invocation `seq` can never be answered (the runtime will not get a
    /// usable request id, or the API stopped reading its answer). Retires it like an answer
    /// (capacity is freed, the next parked poll may get an event) but counts it under
    /// `unanswerable`.
    /// Returns whether it was outstanding (and so retired).
    pub fn retire_unanswerable(&mut self, cfg: &Config, seq: u64, reason: Reason) -> bool {
        if self.outstanding.remove(&seq).is_none() {
            return false;
        }
        self.ledger.in_flight -= 1;
        self.ledger.unanswerable.bump(reason);
        self.dispatch(cfg);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = uuid(0xab, REQUEST_ID_VARIANT, 0x1234_5678_9abc);
        assert_eq!(&id, b"000000ab-0000-4000-8000-123456789abc");
        assert_eq!(
            parse_uuid(&id, 0xab, REQUEST_ID_VARIANT),
            Some(0x1234_5678_9abc)
        );
        assert_eq!(parse_uuid(&id, 0xac, REQUEST_ID_VARIANT), None);
        assert_eq!(parse_uuid(&id, 0xab, INVOCATION_ID_VARIANT), None);
        assert_eq!(
            parse_uuid(
                b"000000ab-0000-4000-8000-123456789ABC",
                0xab,
                REQUEST_ID_VARIANT
            ),
            None
        );
        assert_eq!(parse_uuid(b"short", 0xab, REQUEST_ID_VARIANT), None);
    }
}
