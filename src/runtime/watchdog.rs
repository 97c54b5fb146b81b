//! The stall watchdog: names a core whose event loop has stopped turning (a handler
//! blocking the thread), while it is stalled.
//!
//! Each core runs a ticker task that stamps its own heartbeat cell every quarter of the
//! threshold; a watchdog thread checks the stamps. Each cell is written by one core and
//! read by the watchdog only: no contention, and nothing on the invocation path (the
//! ticker is a timer, not per invocation). A stall is counted once per episode and
//! reported in the core's [`CoreReport::stalls`](crate::CoreReport::stalls).
//!
//! The per-poll check in the invocation path complements this: it names the request id of
//! a poll that held the thread too long, but only once that poll returns; the watchdog
//! speaks up while the thread is still stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use crate::control::Control;

/// Shortest tick: below it, ticking costs more than it tells.
const MIN_PERIOD: Duration = Duration::from_millis(5);

struct Cells {
    /// Milliseconds since `epoch` at each core's last tick; `u64::MAX` until it first ticks.
    stamps: Vec<AtomicU64>,
    epoch: Instant,
    period: Duration,
}

/// The watchdog, before it is started.
pub(crate) struct Watchdog {
    cells: Option<(Arc<Cells>, Duration)>,
}

/// One core's heartbeat: it calls [`Heartbeat::tick`] every [`Heartbeat::period`].
pub(crate) struct Heartbeat {
    cells: Arc<Cells>,
    index: usize,
}

impl Heartbeat {
    pub fn tick(&self) {
        let ms = self.cells.epoch.elapsed().as_millis() as u64;
        self.cells.stamps[self.index].store(ms, Ordering::Relaxed);
    }

    pub fn period(&self) -> Duration {
        self.cells.period
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
                (
                    Arc::new(Cells {
                        stamps: (0..cores).map(|_| AtomicU64::new(u64::MAX)).collect(),
                        epoch: Instant::now(),
                        period,
                    }),
                    t,
                )
            }),
        }
    }

    pub fn heartbeat(&self, index: usize) -> Option<Heartbeat> {
        self.cells.as_ref().map(|(cells, _)| Heartbeat {
            cells: cells.clone(),
            index,
        })
    }

    /// Starts the watchdog thread.
    pub fn start(self, control: &Control) -> Option<Running> {
        let (cells, threshold) = self.cells?;
        let (stop, stopped) = bounded::<()>(1);
        let control = control.clone();
        let thread = thread::Builder::new()
            .name("lambda-tpc-watchdog".into())
            .spawn(move || {
                let mut stalls = vec![0u64; cells.stamps.len()];
                let mut stalled = vec![false; cells.stamps.len()];
                let check = (threshold / 2).max(MIN_PERIOD);
                loop {
                    match stopped.recv_timeout(check) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return stalls,
                    }
                    if control.is_shutting_down() {
                        continue;
                    }
                    let now = cells.epoch.elapsed().as_millis() as u64;
                    for (i, stamp) in cells.stamps.iter().enumerate() {
                        let last = stamp.load(Ordering::Relaxed);
                        if last == u64::MAX {
                            continue;
                        }
                        let silent = Duration::from_millis(now.saturating_sub(last));
                        // The ticker itself is late by up to one period when healthy.
                        if silent > threshold + cells.period {
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
