//! A core's mutable state, in two flavours.
//!
//! [`LocalState`] is for a core that lives on one thread (the thread-per-core driver):
//! `Cell`s and `RefCell`s, no atomics, no locks. [`SharedState`] is for the tokio
//! multi-thread shim, whose tasks move between threads: atomics and short mutexes. The
//! invocation path is written once against [`State`]; which flavour it runs on is a type
//! parameter, so the local one pays nothing for the existence of the other.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
#[cfg(any(feature = "tokio", test))]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(any(feature = "tokio", test))]
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::watchdog::Heartbeat;
use crate::config::CorePlan;

/// Counters a core keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stat {
    Invocations,
    Responses,
    Errors,
    Panics,
    DeserializeErrors,
    InvalidInvocations,
    PostFailures,
    Reconnects,
    DeadlinesExceeded,
    SlowPolls,
    NextFailures,
}

impl Stat {
    /// The counter of an accepted post: an error post's or a response's.
    pub(crate) fn answered(is_error: bool) -> Stat {
        if is_error {
            Stat::Errors
        } else {
            Stat::Responses
        }
    }
}

const STATS: usize = 11;

/// Most idle connections a core keeps for posting; beyond it they are closed. Generous:
/// in a steady state the pool holds about as many connections as invocations in flight.
const MAX_POOLED: usize = 1024;

/// A core's count of invocations in flight (received, not yet answered), which shutdown
/// waits on. Counted through [`InFlight`], so that whatever way an invocation's path ends
/// (a panic of ours included) it is uncounted.
pub(crate) trait InFlightCount {
    /// An invocation was received.
    fn start_invocation(&self);
    /// An invocation was answered (or found unanswerable).
    fn finish_invocation(&self);
    /// Invocations received and not yet answered.
    fn in_flight(&self) -> usize;
}

/// One invocation counted in flight on its core, until this is dropped: the count cannot
/// leak by a path that forgets to finish it, nor by a panic that unwinds through the
/// invocation's path (a leaked count would hold every shutdown for its grace period).
/// The one way left is a spawned task dropped by its executor before its first poll,
/// with its [`Counted`] unadopted: that only happens when the executor itself is torn
/// down, and then nothing waits on the count any more.
#[must_use = "dropping it finishes the invocation"]
pub(crate) struct InFlight<'s, S: InFlightCount + ?Sized> {
    count: &'s S,
}

impl<'s, S: InFlightCount + ?Sized> InFlight<'s, S> {
    /// Counts a received invocation.
    pub(crate) fn start(count: &'s S) -> Self {
        count.start_invocation();
        InFlight { count }
    }

    /// Hands the count to a spawned task, whose future cannot borrow the core's state
    /// (it must be `'static`); the task takes it back with [`InFlight::adopt`].
    pub(crate) fn detach(self) -> Counted {
        std::mem::forget(self);
        Counted(())
    }

    /// Takes back a count handed over with [`InFlight::detach`].
    pub(crate) fn adopt(count: &'s S, counted: Counted) -> Self {
        let Counted(()) = counted;
        InFlight { count }
    }
}

impl<S: InFlightCount + ?Sized> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        self.count.finish_invocation();
    }
}

/// An invocation's in-flight count on its way to a spawned task (see
/// [`InFlight::detach`]).
#[must_use = "the invocation stays counted in flight until adopted and dropped"]
pub(crate) struct Counted(());

/// What the invocation path needs from a core's mutable state.
pub(crate) trait State<C>: InFlightCount + 'static {
    /// A held semaphore permit, released on drop.
    type Permit: 'static;

    /// State for a core with this plan; `seed` seeds the backoff jitter.
    fn new(plan: &CorePlan, seed: u64) -> Self;
    /// An idle pooled connection, if any.
    fn take_conn(&self) -> Option<C>;
    /// Returns a connection to the pool.
    fn put_conn(&self, conn: C);
    /// Waits for a permit when the strategy has a semaphore; `None` otherwise.
    fn acquire(&self) -> impl Future<Output = Option<Self::Permit>>;
    /// Resolves once an invocation is in flight, or after [`State::fire_all`]: the core's
    /// ticker waits here while the core is idle, so that an idle core has no timer.
    /// The invocation that ends the wait stamps the heartbeat before its handler runs.
    fn busy(&self) -> impl Future<Output = ()>;
    /// Gives the core its stall watchdog heartbeat (once, at start-up): the ticker stamps
    /// it, and so does an invocation that starts on an idle core.
    fn set_heartbeat(&self, beat: Heartbeat);
    /// The core's heartbeat, if the watchdog is on.
    fn heartbeat(&self) -> Option<&Heartbeat>;
    /// Resolves when no invocation is in flight.
    fn drained(&self) -> impl Future<Output = ()>;
    fn bump(&self, stat: Stat);
    /// Takes back a [`State::bump`] (a post counted when sent, then refused).
    fn unbump(&self, stat: Stat);
    fn get(&self, stat: Stat) -> u64;
    /// A pseudo-random number (backoff jitter; quality is irrelevant).
    fn random(&self) -> u64;

    /// A slot's settle signal (see [`SlotSignal`]), registered with this core's tick.
    type Slot: SlotSignal;
    /// Registers a new slot signal.
    fn new_slot(&self) -> Self::Slot;
    /// Advances the core's coarse clock by one tick and fires every slot signal armed at
    /// least [`SETTLE_TICKS`] ticks ago.
    fn tick(&self);
    /// Fires every armed slot signal now (shutdown: settle what is pending).
    fn fire_all(&self);
}

/// Ticks an armed slot signal waits before it fires.
pub(crate) const SETTLE_TICKS: u64 = 2;

/// Lets a worker-per-slot slot that has a deferred post pending be woken when it has
/// waited a while for its next invocation, by the core's periodic tick, without a timer
/// of its own per invocation (timers per invocation measurably cost CPU). Arming reads no
/// clock: it records the core's tick count.
pub(crate) trait SlotSignal: 'static {
    /// Starts waiting (a deferred post is pending). A caller that checks for shutdown
    /// after arming and sees none can count on [`State::fire_all`] firing this signal.
    fn arm(&self);
    /// Stops waiting.
    fn disarm(&self);
    /// Resolves once the tick fired this armed signal.
    fn fired(&self) -> impl Future<Output = ()>;
}

/// One xorshift step.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

// ---------------------------------------------------------------------------------------
// Local: one thread.

/// State of a core confined to one thread.
pub(crate) struct LocalState<C> {
    /// Idle keep-alive connections for posting (unbounded and semaphore strategies;
    /// worker-per-slot posts on the slot's own connection). Borrowed only for a push or a
    /// pop, never across an await.
    pool: RefCell<Vec<C>>,
    permits: Option<Rc<LocalSemaphore>>,
    in_flight: Cell<usize>,
    /// The shutdown drain waiting for `in_flight` to reach zero.
    drain_waker: RefCell<Option<Waker>>,
    stats: [Cell<u64>; STATS],
    rng: Cell<u64>,
    /// The core's coarse clock, advanced by its tick task.
    ticks: Rc<Cell<u64>>,
    /// Every slot signal of the core (one per worker-per-slot slot).
    slots: RefCell<Vec<Rc<LocalSlot>>>,
    /// The core's ticker, while it waits for the core to get busy.
    ticker_waker: RefCell<Option<Waker>>,
    /// Set by `fire_all`: the ticker's wait is over for good.
    fired_all: Cell<bool>,
    heartbeat: std::cell::OnceCell<Heartbeat>,
}

use std::rc::Rc;

/// A [`SlotSignal`] of a single-threaded core.
pub(crate) struct LocalSlot {
    ticks: Rc<Cell<u64>>,
    armed_at: Cell<Option<u64>>,
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl SlotSignal for Rc<LocalSlot> {
    fn arm(&self) {
        self.fired.set(false);
        self.armed_at.set(Some(self.ticks.get()));
    }

    fn disarm(&self) {
        self.armed_at.set(None);
    }

    fn fired(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.fired.get() {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

impl<C> InFlightCount for LocalState<C> {
    fn start_invocation(&self) {
        let n = self.in_flight.get();
        self.in_flight.set(n + 1);
        if n == 0
            && let Some(w) = self.ticker_waker.borrow_mut().take()
        {
            if let Some(beat) = self.heartbeat.get() {
                beat.tick();
            }
            w.wake();
        }
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

    fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}

impl<C: 'static> State<C> for LocalState<C> {
    type Permit = LocalPermit;
    type Slot = Rc<LocalSlot>;

    fn new_slot(&self) -> Rc<LocalSlot> {
        let slot = Rc::new(LocalSlot {
            ticks: self.ticks.clone(),
            armed_at: Cell::new(None),
            fired: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.slots.borrow_mut().push(slot.clone());
        slot
    }

    fn fire_all(&self) {
        self.ticks.set(self.ticks.get() + SETTLE_TICKS);
        self.tick();
        self.fired_all.set(true);
        if let Some(w) = self.ticker_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn tick(&self) {
        let now = self.ticks.get() + 1;
        self.ticks.set(now);
        for slot in self.slots.borrow().iter() {
            if slot.armed_at.get().is_some_and(|t| now - t >= SETTLE_TICKS) {
                slot.armed_at.set(None);
                slot.fired.set(true);
                if let Some(w) = slot.waker.borrow_mut().take() {
                    w.wake();
                }
            }
        }
    }

    fn new(plan: &CorePlan, seed: u64) -> Self {
        LocalState {
            pool: RefCell::new(Vec::new()),
            permits: plan.permits.map(|n| Rc::new(LocalSemaphore::new(n))),
            in_flight: Cell::new(0),
            drain_waker: RefCell::new(None),
            stats: Default::default(),
            rng: Cell::new(seed | 1),
            ticks: Rc::new(Cell::new(0)),
            slots: RefCell::new(Vec::new()),
            ticker_waker: RefCell::new(None),
            fired_all: Cell::new(false),
            heartbeat: std::cell::OnceCell::new(),
        }
    }

    fn take_conn(&self) -> Option<C> {
        self.pool.borrow_mut().pop()
    }

    fn put_conn(&self, conn: C) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(conn);
        }
    }

    async fn acquire(&self) -> Option<LocalPermit> {
        match &self.permits {
            Some(sem) => Some(sem.acquire().await),
            None => None,
        }
    }

    fn busy(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.in_flight.get() > 0 || self.fired_all.get() {
                Poll::Ready(())
            } else {
                *self.ticker_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn set_heartbeat(&self, beat: Heartbeat) {
        let _ = self.heartbeat.set(beat);
    }

    fn heartbeat(&self) -> Option<&Heartbeat> {
        self.heartbeat.get()
    }

    fn drained(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.in_flight.get() == 0 {
                Poll::Ready(())
            } else {
                *self.drain_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn bump(&self, stat: Stat) {
        let c = &self.stats[stat as usize];
        c.set(c.get() + 1);
    }

    fn unbump(&self, stat: Stat) {
        let c = &self.stats[stat as usize];
        c.set(c.get().saturating_sub(1));
    }

    fn get(&self, stat: Stat) -> u64 {
        self.stats[stat as usize].get()
    }

    fn random(&self) -> u64 {
        let x = xorshift(self.rng.get());
        self.rng.set(x);
        x
    }
}

/// A semaphore for one thread: a count and a queue of waiting acquires.
pub(crate) struct LocalSemaphore {
    available: Cell<usize>,
    /// Waiting acquires, oldest first, each under its own id: one task may wait in several
    /// (a `join!` of two), and each must be woken, and leave the queue, on its own.
    waiters: RefCell<VecDeque<(u64, Waker)>>,
    next_id: Cell<u64>,
}

impl LocalSemaphore {
    pub(crate) fn new(permits: usize) -> Self {
        LocalSemaphore {
            available: Cell::new(permits),
            waiters: RefCell::new(VecDeque::new()),
            next_id: Cell::new(0),
        }
    }

    /// Waits for a permit.
    pub(crate) fn acquire(self: &Rc<Self>) -> impl Future<Output = LocalPermit> + '_ {
        LocalAcquire {
            sem: self,
            id: None,
        }
    }

    /// Takes acquire `id` out of the queue; whether it was there (not yet woken).
    fn dequeue(&self, id: u64) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        match waiters.iter().position(|(i, _)| *i == id) {
            Some(at) => {
                waiters.remove(at);
                true
            }
            None => false,
        }
    }
}

struct LocalAcquire<'a> {
    sem: &'a Rc<LocalSemaphore>,
    /// Set once this acquire has waited: its id in the queue (gone from it once woken).
    id: Option<u64>,
}

impl Future for LocalAcquire<'_> {
    type Output = LocalPermit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LocalPermit> {
        let n = self.sem.available.get();
        if n > 0 {
            self.sem.available.set(n - 1);
            if let Some(id) = self.id.take() {
                // Taken before its turn came (a permit freed while it polled anyway).
                self.sem.dequeue(id);
            }
            return Poll::Ready(LocalPermit {
                sem: self.sem.clone(),
            });
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.sem.next_id.get();
                self.sem.next_id.set(id.wrapping_add(1));
                self.id = Some(id);
                id
            }
        };
        let mut waiters = self.sem.waiters.borrow_mut();
        match waiters.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(cx.waker()),
            // First wait, or woken for a permit another acquire took first: queue again.
            None => waiters.push_back((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for LocalAcquire<'_> {
    /// A waiter given up (its task cancelled) may have been woken for a released permit:
    /// pass the wake-up on, or the next waiter would wait with a permit free.
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let woken = !self.sem.dequeue(id);
        if woken && self.sem.available.get() > 0 {
            let next = self.sem.waiters.borrow_mut().pop_front();
            if let Some((_, w)) = next {
                w.wake();
            }
        }
    }
}

/// A held local permit; released on drop.
pub(crate) struct LocalPermit {
    sem: Rc<LocalSemaphore>,
}

impl Drop for LocalPermit {
    fn drop(&mut self) {
        self.sem.available.set(self.sem.available.get() + 1);
        let next = self.sem.waiters.borrow_mut().pop_front();
        if let Some((_, w)) = next {
            w.wake();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared: tasks that move between threads (only the tokio multi-thread shim has them).

#[cfg(any(feature = "tokio", test))]
use crate::control::lock;

#[cfg(any(feature = "tokio", test))]
/// State shared by tasks on a multi-thread runtime.
pub(crate) struct SharedState<C> {
    /// Idle connections for posting. A mutex held for one push or pop.
    pool: Mutex<Vec<C>>,
    permits: Option<Arc<SyncSemaphore>>,
    in_flight: AtomicUsize,
    drain_waker: Mutex<Option<Waker>>,
    stats: [AtomicU64; STATS],
    rng: AtomicU64,
    ticks: Arc<AtomicU64>,
    slots: Mutex<Vec<Arc<SharedSlot>>>,
    /// The core's ticker, while it waits for the core to get busy.
    ticker_waker: Mutex<Option<Waker>>,
    /// Set by `fire_all`: the ticker's wait is over for good.
    fired_all: std::sync::atomic::AtomicBool,
    heartbeat: std::sync::OnceLock<Heartbeat>,
}

/// A [`SlotSignal`] shared by tasks on several threads.
#[cfg(any(feature = "tokio", test))]
pub(crate) struct SharedSlot {
    ticks: Arc<AtomicU64>,
    /// `u64::MAX` when not armed.
    armed_at: AtomicU64,
    fired: std::sync::atomic::AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[cfg(any(feature = "tokio", test))]
impl SlotSignal for Arc<SharedSlot> {
    fn arm(&self) {
        self.fired.store(false, Ordering::Release);
        self.armed_at
            .store(self.ticks.load(Ordering::Relaxed), Ordering::Release);
        // Pairs with the fence in `fire_all`: either it sees this arm, or the caller's
        // next look at the shutdown flag sees the shutdown (which precedes `fire_all`).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.armed_at.store(u64::MAX, Ordering::Release);
    }

    fn fired(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            if self.fired.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(any(feature = "tokio", test))]
impl<C> InFlightCount for SharedState<C> {
    fn start_invocation(&self) {
        // SeqCst pairs with `busy`: either it sees this count, or this sees its waker.
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(w) = lock(&self.ticker_waker).take()
        {
            if let Some(beat) = self.heartbeat.get() {
                beat.tick();
            }
            w.wake();
        }
    }

    fn finish_invocation(&self) {
        let prev = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if prev <= 1
            && let Some(w) = lock(&self.drain_waker).take()
        {
            w.wake();
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(any(feature = "tokio", test))]
impl<C: Send + 'static> State<C> for SharedState<C> {
    type Permit = SyncPermit;
    type Slot = Arc<SharedSlot>;

    fn new_slot(&self) -> Arc<SharedSlot> {
        let slot = Arc::new(SharedSlot {
            ticks: self.ticks.clone(),
            armed_at: AtomicU64::new(u64::MAX),
            fired: std::sync::atomic::AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        lock(&self.slots).push(slot.clone());
        slot
    }

    fn fire_all(&self) {
        // Pairs with the fence in `arm`.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.ticks.fetch_add(SETTLE_TICKS, Ordering::AcqRel);
        self.tick();
        self.fired_all.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.ticker_waker).take() {
            w.wake();
        }
    }

    fn tick(&self) {
        let now = self.ticks.fetch_add(1, Ordering::AcqRel) + 1;
        for slot in lock(&self.slots).iter() {
            let at = slot.armed_at.load(Ordering::Acquire);
            if at != u64::MAX && now.saturating_sub(at) >= SETTLE_TICKS {
                slot.armed_at.store(u64::MAX, Ordering::Release);
                slot.fired.store(true, Ordering::Release);
                if let Some(w) = lock(&slot.waker).take() {
                    w.wake();
                }
            }
        }
    }

    fn new(plan: &CorePlan, seed: u64) -> Self {
        SharedState {
            pool: Mutex::new(Vec::new()),
            permits: plan.permits.map(|n| Arc::new(SyncSemaphore::new(n))),
            in_flight: AtomicUsize::new(0),
            drain_waker: Mutex::new(None),
            stats: Default::default(),
            rng: AtomicU64::new(seed | 1),
            ticks: Arc::new(AtomicU64::new(0)),
            slots: Mutex::new(Vec::new()),
            ticker_waker: Mutex::new(None),
            fired_all: std::sync::atomic::AtomicBool::new(false),
            heartbeat: std::sync::OnceLock::new(),
        }
    }

    fn take_conn(&self) -> Option<C> {
        lock(&self.pool).pop()
    }

    fn put_conn(&self, conn: C) {
        let mut pool = lock(&self.pool);
        if pool.len() < MAX_POOLED {
            pool.push(conn);
        }
    }

    async fn acquire(&self) -> Option<SyncPermit> {
        match &self.permits {
            Some(sem) => Some(SyncAcquire { sem }.await),
            None => None,
        }
    }

    fn busy(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            let ready = || {
                self.in_flight.load(Ordering::SeqCst) > 0 || self.fired_all.load(Ordering::SeqCst)
            };
            if ready() {
                return Poll::Ready(());
            }
            *lock(&self.ticker_waker) = Some(cx.waker().clone());
            // Re-check after registering, so a start between the check and the
            // registration is not missed.
            if ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn set_heartbeat(&self, beat: Heartbeat) {
        let _ = self.heartbeat.set(beat);
    }

    fn heartbeat(&self) -> Option<&Heartbeat> {
        self.heartbeat.get()
    }

    fn drained(&self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return Poll::Ready(());
            }
            *lock(&self.drain_waker) = Some(cx.waker().clone());
            // Re-check after registering, so a finish between the check and the
            // registration is not missed.
            if self.in_flight.load(Ordering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn bump(&self, stat: Stat) {
        self.stats[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn unbump(&self, stat: Stat) {
        let _ = self.stats[stat as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }

    fn get(&self, stat: Stat) -> u64 {
        self.stats[stat as usize].load(Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(xorshift(x)))
            .unwrap_or(1);
        xorshift(prev)
    }
}

#[cfg(any(feature = "tokio", test))]
/// A semaphore for tasks on several threads.
pub(crate) struct SyncSemaphore {
    inner: Mutex<(usize, VecDeque<Waker>)>,
}

#[cfg(any(feature = "tokio", test))]
impl SyncSemaphore {
    fn new(permits: usize) -> Self {
        SyncSemaphore {
            inner: Mutex::new((permits, VecDeque::new())),
        }
    }
}

#[cfg(any(feature = "tokio", test))]
struct SyncAcquire<'a> {
    sem: &'a Arc<SyncSemaphore>,
}

#[cfg(any(feature = "tokio", test))]
impl Future for SyncAcquire<'_> {
    type Output = SyncPermit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SyncPermit> {
        let mut inner = lock(&self.sem.inner);
        if inner.0 > 0 {
            inner.0 -= 1;
            Poll::Ready(SyncPermit {
                sem: self.sem.clone(),
            })
        } else {
            if !inner.1.iter().any(|w| w.will_wake(cx.waker())) {
                inner.1.push_back(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

#[cfg(any(feature = "tokio", test))]
/// A held shared permit; released on drop.
pub(crate) struct SyncPermit {
    sem: Arc<SyncSemaphore>,
}

#[cfg(any(feature = "tokio", test))]
impl Drop for SyncPermit {
    fn drop(&mut self) {
        let waker = {
            let mut inner = lock(&self.sem.inner);
            inner.0 += 1;
            inner.1.pop_front()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(permits: Option<usize>) -> CorePlan {
        CorePlan {
            index: 0,
            cpu: 0,
            pollers: 1,
            permits,
        }
    }

    /// A waker that records being woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        (f.clone(), Waker::from(f))
    }

    #[test]
    fn a_waiter_given_up_passes_its_wake_up_on() {
        // Given up before and after the release that woke it.
        for dropped_after_wake in [false, true] {
            let sem = Rc::new(LocalSemaphore::new(1));
            let held = take(&sem);
            let (_, wa) = flag();
            let (b_woken, wb) = flag();
            let mut a = Box::pin(sem.acquire());
            let mut b = Box::pin(sem.acquire());
            assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
            assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_pending());
            if dropped_after_wake {
                drop(held);
                drop(a);
            } else {
                drop(a);
                drop(held);
            }
            assert!(b_woken.0.load(Ordering::SeqCst), "{dropped_after_wake}");
            assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_ready());
        }
    }

    /// A permit held, as a `Ready` acquire.
    fn take(sem: &Rc<LocalSemaphore>) -> LocalPermit {
        match poll_once(std::pin::pin!(sem.acquire())) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("a permit was free"),
        }
    }

    #[test]
    fn an_acquire_served_early_leaves_no_stale_turn() {
        // Task T holds the permit (`held`) and waits in a second acquire (`b`, a `join!`)
        // behind task X (`x`).
        let sem = Rc::new(LocalSemaphore::new(1));
        let held = take(&sem);
        let (x_woken, wx) = flag();
        let (_, wt) = flag();
        let mut x = Box::pin(sem.acquire());
        let mut b = Box::pin(sem.acquire());
        assert!(x.as_mut().poll(&mut Context::from_waker(&wx)).is_pending());
        assert!(b.as_mut().poll(&mut Context::from_waker(&wt)).is_pending());
        // The release wakes x, but b (polled in the same pass) takes the permit first.
        drop(held);
        let Poll::Ready(b_permit) = b.as_mut().poll(&mut Context::from_waker(&wt)) else {
            panic!("the permit was free")
        };
        x_woken.0.store(false, Ordering::SeqCst);
        assert!(x.as_mut().poll(&mut Context::from_waker(&wx)).is_pending());
        // b's release must reach x, not a turn b left behind.
        drop(b_permit);
        assert!(x_woken.0.load(Ordering::SeqCst));
        assert!(x.as_mut().poll(&mut Context::from_waker(&wx)).is_ready());
    }

    #[test]
    fn acquires_of_one_task_leave_the_queue_each_on_its_own() {
        // One task waits in two acquires and gives one up (a timeout around it).
        let sem = Rc::new(LocalSemaphore::new(1));
        let held = take(&sem);
        let (woken, w) = flag();
        let mut x = Box::pin(sem.acquire());
        let mut y = Box::pin(sem.acquire());
        assert!(x.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        assert!(y.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        drop(y);
        drop(held);
        assert!(woken.0.load(Ordering::SeqCst), "x was woken");
        assert!(x.as_mut().poll(&mut Context::from_waker(&w)).is_ready());
    }

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        f.poll(&mut cx)
    }

    #[test]
    fn local_semaphore_counts() {
        let s: LocalState<()> = State::new(&plan(Some(2)), 1);
        let mut a = Box::pin(s.acquire());
        let Poll::Ready(Some(p1)) = poll_once(a.as_mut()) else {
            panic!("first permit")
        };
        let mut b = Box::pin(s.acquire());
        let Poll::Ready(Some(_p2)) = poll_once(b.as_mut()) else {
            panic!("second permit")
        };
        let mut c = Box::pin(s.acquire());
        assert!(poll_once(c.as_mut()).is_pending(), "third waits");
        drop(p1);
        assert!(poll_once(c.as_mut()).is_ready(), "released permit taken");
    }

    #[test]
    fn shared_semaphore_counts() {
        let s: SharedState<()> = State::new(&plan(Some(1)), 1);
        let mut a = Box::pin(s.acquire());
        let Poll::Ready(Some(p1)) = poll_once(a.as_mut()) else {
            panic!("first permit")
        };
        let mut b = Box::pin(s.acquire());
        assert!(poll_once(b.as_mut()).is_pending());
        drop(p1);
        assert!(poll_once(b.as_mut()).is_ready());
    }

    #[test]
    fn no_semaphore_means_no_permit() {
        let s: LocalState<()> = State::new(&plan(None), 1);
        let mut a = Box::pin(s.acquire());
        assert!(matches!(poll_once(a.as_mut()), Poll::Ready(None)));
    }

    fn in_flight_never_negative<S: State<()>>(s: &S) {
        s.start_invocation();
        s.start_invocation();
        assert_eq!(s.in_flight(), 2);
        s.finish_invocation();
        s.finish_invocation();
        s.finish_invocation();
        assert_eq!(s.in_flight(), 0, "never below zero");
        let mut drained = Box::pin(s.drained());
        assert!(poll_once(drained.as_mut()).is_ready());
    }

    /// However an invocation's path ends (normally, by a panic unwinding through it, or
    /// in a spawned task the count was handed to), its count goes.
    #[test]
    fn in_flight_is_finished_however_its_path_ends() {
        let s: LocalState<()> = State::new(&plan(None), 1);
        {
            let _a = InFlight::start(&s);
            assert_eq!(s.in_flight(), 1);
        }
        assert_eq!(s.in_flight(), 0);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _a = InFlight::start(&s);
            let _b = InFlight::start(&s);
            assert_eq!(s.in_flight(), 2);
            panic!("a bug of ours");
        }));
        assert!(unwound.is_err());
        assert_eq!(s.in_flight(), 0);
        let counted = InFlight::start(&s).detach();
        assert_eq!(s.in_flight(), 1, "handed over, still counted");
        let adopted = InFlight::adopt(&s, counted);
        assert_eq!(s.in_flight(), 1);
        drop(adopted);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn drain_and_stats() {
        in_flight_never_negative(&<LocalState<()> as State<()>>::new(&plan(None), 3));
        in_flight_never_negative(&<SharedState<()> as State<()>>::new(&plan(None), 3));
        let s: LocalState<()> = State::new(&plan(None), 3);
        s.bump(Stat::Panics);
        s.bump(Stat::Panics);
        assert_eq!(s.get(Stat::Panics), 2);
        assert_ne!(s.random(), s.random());
    }
}
