//! The stall watchdog: names a core whose event loop has stopped turning (a handler
//! blocking the thread), while it is stalled.
//!
//! Each core's ticker task stamps the core's heartbeat cell every quarter of the threshold
//! while the core has invocations in flight; a watchdog thread checks the stamps. Each
//! cell is written by one core and read by the watchdog only: no contention, and nothing
//! per invocation (the ticker is a timer). A stall is counted once per episode and
//! reported in the core's [`CoreReport::stalls`](crate::CoreReport::stalls).
//!
//! An idle core marks its cell idle and its ticker sleeps without a timer; the first
//! invocation to start on it stamps the cell again, synchronously, before its handler
//! runs (so a handler that blocks at once is still seen) and nudges the watchdog, which
//! sleeps without a timer too while every core is idle. An idle runtime wakes nobody.
//!
//! The per-poll check in the invocation path complements this: it names the request id of
//! a poll that held the thread too long, but only once that poll returns; the watchdog
//! speaks up while the thread is still stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::control::Control;

/// Shortest tick: below it, ticking costs more than it tells.
const MIN_PERIOD: Duration = Duration::from_millis(5);

/// A stamp that means "not watched": the core has not started, or is idle.
const IDLE: u64 = u64::MAX;

struct Cells {
    /// Milliseconds since `epoch` at each core's last tick; [`IDLE`] while not watched.
    stamps: Vec<AtomicU64>,
    epoch: Instant,
    period: Duration,
    /// Wakes the watchdog when a core leaves idle (capacity 1: one pending nudge is
    /// enough, a full channel means the watchdog is already due to look).
    nudge: Sender<()>,
}

/// The watchdog, before it is started.
pub(crate) struct Watchdog {
    cells: Option<(Arc<Cells>, Duration, Receiver<()>)>,
}

/// One core's heartbeat: it calls [`Heartbeat::tick`] every [`Heartbeat::period`] while
/// the core is busy, and [`Heartbeat::idle`] when it goes idle.
pub(crate) struct Heartbeat {
    cells: Arc<Cells>,
    index: usize,
}

impl Heartbeat {
    /// Stamps the core's cell; the first stamp after idle also wakes the watchdog.
    pub fn tick(&self) {
        let ms = self.cells.epoch.elapsed().as_millis() as u64;
        if self.cells.stamps[self.index].swap(ms, Ordering::Relaxed) == IDLE {
            let _ = self.cells.nudge.try_send(());
        }
    }

    /// Marks the core idle: the watchdog stops watching it until the next tick.
    pub fn idle(&self) {
        self.cells.stamps[self.index].store(IDLE, Ordering::Relaxed);
    }

    pub fn period(&self) -> Duration {
        self.cells.period
    }
}

impl Drop for Heartbeat {
    /// A core that is gone (ended, or its thread unwound from a panic of ours) is not
    /// watched any more: a stale stamp would be reported as a handler blocking its
    /// thread, and keep the watchdog waking for ever.
    fn drop(&mut self) {
        self.idle();
    }
}

/// A running watchdog.
pub(crate) struct Running {
    stop: Sender<()>,
    thread: thread::JoinHandle<Vec<u64>>,
}

impl Watchdog {
    /// A watchdog for `cores` cores; `None` threshold disables it.
    pub fn new(cores: usize, threshold: Option<Duration>) -> Watchdog {
        Watchdog {
            cells: threshold.map(|t| {
                let period = (t / 4).max(MIN_PERIOD);
                let (nudge, nudged) = bounded(1);
                (
                    Arc::new(Cells {
                        stamps: (0..cores).map(|_| AtomicU64::new(IDLE)).collect(),
                        epoch: Instant::now(),
                        period,
                        nudge,
                    }),
                    t,
                    nudged,
                )
            }),
        }
    }

    pub fn heartbeat(&self, index: usize) -> Option<Heartbeat> {
        self.cells.as_ref().map(|(cells, _, _)| Heartbeat {
            cells: cells.clone(),
            index,
        })
    }

    /// Starts the watchdog thread.
    pub fn start(self, control: &Control) -> Option<Running> {
        let (cells, threshold, nudged) = self.cells?;
        let (stop, stopped) = bounded::<()>(1);
        let control = control.clone();
        let thread = thread::Builder::new()
            .name("lambda-tpc-watchdog".into())
            .spawn(move || {
                let mut stalls = vec![0u64; cells.stamps.len()];
                let mut stalled = vec![false; cells.stamps.len()];
                let check = (threshold / 2).max(MIN_PERIOD);
                loop {
                    let all_idle = cells
                        .stamps
                        .iter()
                        .all(|s| s.load(Ordering::Relaxed) == IDLE);
                    if all_idle {
                        // Nothing can stall: sleep until a core starts work.
                        select! {
                            recv(stopped) -> _ => return stalls,
                            recv(nudged) -> _ => {}
                        }
                    } else {
                        select! {
                            recv(stopped) -> _ => return stalls,
                            recv(nudged) -> _ => {}
                            default(check) => {}
                        }
                    }
                    if control.is_shutting_down() {
                        continue;
                    }
                    let now = cells.epoch.elapsed().as_millis() as u64;
                    for (i, stamp) in cells.stamps.iter().enumerate() {
                        let last = stamp.load(Ordering::Relaxed);
                        if last == IDLE {
                            stalled[i] = false;
                            continue;
                        }
                        let silent = Duration::from_millis(now.saturating_sub(last));
                        // The ticker itself is late by up to one period when healthy.
                        if silent > threshold.saturating_add(cells.period) {
                            if !stalled[i] {
                                stalled[i] = true;
                                stalls[i] += 1;
                                tracing::warn!(
                                    core = i,
                                    stalled_ms = silent.as_millis() as u64,
                                    "core's event loop is stalled: a handler is blocking its \
                                     thread, and every invocation on this core waits"
                                );
                            }
                        } else if stalled[i] {
                            stalled[i] = false;
                            tracing::info!(core = i, "core's event loop is turning again");
                        }
                    }
                }
            })
            .ok()?;
        Some(Running { stop, thread })
    }
}

impl Running {
    /// Stops the watchdog; returns the stall count per core.
    pub fn stop(self) -> Vec<u64> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_is_gone_is_not_watched() {
        let dog = Watchdog::new(2, Some(Duration::from_millis(100)));
        let stamp = |i: usize| {
            dog.cells
                .as_ref()
                .map(|(cells, _, _)| cells.stamps[i].load(Ordering::Relaxed))
        };
        let (a, b) = (dog.heartbeat(0), dog.heartbeat(1));
        for beat in [&a, &b].into_iter().flatten() {
            beat.tick();
        }
        assert!(stamp(0) != Some(IDLE) && stamp(1) != Some(IDLE));
        // Core 0's thread unwinds mid-invocation: its heartbeat goes with it.
        drop(a);
        assert_eq!(stamp(0), Some(IDLE));
        assert_ne!(stamp(1), Some(IDLE));
    }
}
