//! The arrival clock of [`Arrival::Paced`](super::Arrival::Paced) and
//! [`Arrival::OpenLoop`](super::Arrival::OpenLoop).
//!
//! A plain OS thread sleeping until the next arrival, rather than a tokio timer, because tokio's
//! timer has millisecond granularity: at 10k events/s that would turn a steady stream into
//! bursts of ten, which for an open loop means spurious rejections. Sleeps shorter than
//! [`QUANTUM`] are rounded up and the arrivals due in the meantime are released together, to
//! bound the pacer's own CPU use at high rates.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::state::{PacerMsg, Shared};

/// Shortest sleep between two releases.
pub(crate) const QUANTUM: Duration = Duration::from_micros(50);

/// Runs the clock. It starts when the first `/next` arrives (so a runtime's start-up time does
/// not turn into a backlog or into open-loop rejections) and stops on [`PacerMsg::Stop`], when
/// the simulator is dropped, or when the source is exhausted.
pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<PacerMsg>, per_sec: f64, open_loop: bool) {
    // The default timer slack (50 µs) would stretch each sleep by up to that much, and at
    // tens of thousands of arrivals a second release them in pairs: bursts that an open
    // loop turns into rejections that no steady arrival process would cause.
    // SAFETY: PR_SET_TIMERSLACK only sets this thread's timer slack; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    match rx.recv() {
        Ok(PacerMsg::Start) => {}
        Ok(PacerMsg::Stop) | Err(_) => return,
    }
    let t0 = Instant::now();
    let mut released: u64 = 0;
    loop {
        let next_at = t0 + Duration::from_secs_f64((released + 1) as f64 / per_sec);
        let now = Instant::now();
        if next_at > now {
            match rx.recv_timeout((next_at - now).max(QUANTUM)) {
                Ok(PacerMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(PacerMsg::Start) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
        // Float to int saturates, so an absurd rate cannot overflow.
        let due = (t0.elapsed().as_secs_f64() * per_sec) as u64;
        if due <= released {
            continue;
        }
        let n = due - released;
        released = due;
        let mut core = shared.lock();
        if open_loop {
            core.arrive(&shared.cfg, n);
        } else {
            core.release(&shared.cfg, n);
        }
        if core.is_done() {
            shared.done.notify_all();
        }
        if core.nothing_to_release() {
            return;
        }
    }
}
