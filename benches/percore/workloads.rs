//! The workloads: what the simulator sends, how fast, and what the handler does with it.
//!
//! Every handler answers with its event unchanged (the simulator's validator checks the
//! bytes), after doing the workload's work. Contenders built on a framework deserialize the
//! event into a `serde_json::Value` and serialize it back, as a typical function does; the
//! blocking reference client echoes the raw bytes.

use std::future::Future;
use std::hash::{DefaultHasher, Hasher};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

/// What a handler does besides echoing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Nothing.
    Echo,
    /// Awaits a timer of the contender's own runtime (the blocking client sleeps its thread).
    Sleep(Duration),
    /// About 100 µs of hashing (calibrated once per bench run).
    Cpu,
    /// Events marked `"b":1` block their thread (`std::thread::sleep`) for this long; the
    /// others are plain echoes.
    Mixed {
        /// How long a marked event blocks.
        block: Duration,
    },
}

/// A handler's work, as the child receives it.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// What to do.
    pub kind: Kind,
    /// Hashing iterations for [`Kind::Cpu`].
    pub cpu_iters: u64,
}

/// Invocations the handler started in this process.
static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Invocations the handler started so far (read by the child's snapshots).
pub fn invocations() -> u64 {
    INVOCATIONS.load(Ordering::Relaxed)
}

impl Work {
    /// The handler of the framework contenders: `sleep` is the contender runtime's timer.
    pub async fn handle<F: Future<Output = ()>>(
        self,
        payload: Value,
        sleep: impl FnOnce(Duration) -> F,
    ) -> Value {
        self.handle_offloading(payload, sleep, |d| async move { std::thread::sleep(d) })
            .await
    }

    /// As [`Work::handle`], with the mixed workload's blocking call made through `block`:
    /// a function that moves its blocking work off the event loop passes its runtime's
    /// `spawn_blocking` here (the mitigation the README recommends).
    pub async fn handle_offloading<F: Future<Output = ()>, B: Future<Output = ()>>(
        self,
        payload: Value,
        sleep: impl FnOnce(Duration) -> F,
        block: impl FnOnce(Duration) -> B,
    ) -> Value {
        INVOCATIONS.fetch_add(1, Ordering::Relaxed);
        match self.kind {
            Kind::Echo => {}
            Kind::Sleep(d) => sleep(d).await,
            Kind::Cpu => {
                black_box(burn(self.cpu_iters));
            }
            Kind::Mixed { block: d } => {
                if payload.get("b").and_then(Value::as_u64) == Some(1) {
                    block(d).await;
                }
            }
        }
        payload
    }

    /// The handler of the blocking client, on the raw event bytes.
    pub fn handle_raw(self, body: &[u8]) {
        INVOCATIONS.fetch_add(1, Ordering::Relaxed);
        match self.kind {
            Kind::Echo => {}
            Kind::Sleep(d) => std::thread::sleep(d),
            Kind::Cpu => {
                black_box(burn(self.cpu_iters));
            }
            Kind::Mixed { block } => {
                if body.starts_with(MIXED_BLOCKING_PREFIX) {
                    std::thread::sleep(block);
                }
            }
        }
    }
}

/// Hashes a 64-byte block `iters` times with SipHash (std's `DefaultHasher`).
pub fn burn(iters: u64) -> u64 {
    let block = [0x5a_u8; 64];
    let mut h = DefaultHasher::new();
    for i in 0..iters {
        h.write(black_box(&block));
        h.write_u64(i);
    }
    h.finish()
}

/// CPU time of the calling thread: immune to preemption by other processes.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux accepts.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Iterations of [`burn`] that take about `target` of CPU time on the calling thread's CPU
/// (fastest of five measurements of a 10 ms run, timed with the thread's CPU clock so that
/// other processes sharing the CPU do not skew it).
pub fn calibrate(target: Duration) -> u64 {
    let time = |iters: u64| {
        let t = thread_cpu();
        black_box(burn(black_box(iters)));
        thread_cpu().saturating_sub(t)
    };
    // Grow the probe until it runs for at least 10 ms, so the clock's resolution is noise.
    let mut probe_iters = 20_000u64;
    while time(probe_iters) < Duration::from_millis(10) && probe_iters < (1 << 36) {
        probe_iters *= 2;
    }
    // The fastest: interrupts only ever make a measurement slower.
    let per = (0..5)
        .map(|_| time(probe_iters).as_nanos() as f64 / probe_iters as f64)
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    ((target.as_nanos() as f64 / per) as u64).max(1)
}

/// What the events look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payload {
    /// `{"data":"xxx..."}` of exactly this many bytes.
    Json(usize),
    /// The mixed workload's 100-byte events: `{"b":0|1,"data":"x...","t":"<16 digits>"}`,
    /// `t` being nanoseconds since the run's start at hand-out.
    Mixed,
}

/// When events arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the runtime polls.
    Closed,
    /// At this rate, queued when the runtime is busy.
    Paced(f64),
    /// Open loop: arrivals that find no parked `/next` are rejected. At this rate, or
    /// (`None`) at one chosen at run time (see the parent's `--open-rate`).
    OpenLoop(Option<f64>),
}

/// One workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Name used on the command line and in the output.
    pub name: &'static str,
    /// One line for the table heading.
    pub about: &'static str,
    /// The events.
    pub payload: Payload,
    /// `AWS_LAMBDA_MAX_CONCURRENCY` and the simulator's limit.
    pub concurrency: usize,
    /// The arrival process.
    pub pace: Pace,
    /// The handler's work.
    pub kind: Kind,
    /// Invocations before the measurement window.
    pub warmup: u64,
    /// Invocations in the measurement window (default run; `--quick` and `--scale` change it).
    pub measure: u64,
    /// Whether the default run measures every contender on it (otherwise only the contenders
    /// marked `everywhere`).
    pub headline: bool,
}

/// Every workload, in the order they run.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "echo-c64",
        about: "echo 100 B, concurrency 64, closed loop (saturation)",
        payload: Payload::Json(100),
        concurrency: 64,
        pace: Pace::Closed,
        kind: Kind::Echo,
        warmup: 6_000,
        measure: 30_000,
        headline: true,
    },
    Workload {
        name: "echo-c1",
        about: "echo 100 B, concurrency 1, closed loop",
        payload: Payload::Json(100),
        concurrency: 1,
        pace: Pace::Closed,
        kind: Kind::Echo,
        warmup: 1_000,
        measure: 6_000,
        headline: false,
    },
    Workload {
        name: "paced-5k",
        about: "echo 100 B, concurrency 64, paced at 5,000/s (what an instance really pays)",
        payload: Payload::Json(100),
        concurrency: 64,
        pace: Pace::Paced(5_000.0),
        kind: Kind::Echo,
        // Two seconds measured: each invocation wakes an idle CPU here, the noisiest cost
        // on a shared machine, so this cell needs a longer window than the others.
        warmup: 1_000,
        measure: 10_000,
        headline: false,
    },
    Workload {
        name: "echo-64k",
        about: "echo 64 KiB, concurrency 64, closed loop",
        payload: Payload::Json(64 * 1024),
        concurrency: 64,
        pace: Pace::Closed,
        kind: Kind::Echo,
        warmup: 1_000,
        measure: 5_000,
        headline: false,
    },
    Workload {
        name: "sleep-10ms",
        about: "async I/O: await a 10 ms timer, concurrency 256, closed loop",
        payload: Payload::Json(100),
        concurrency: 256,
        pace: Pace::Closed,
        kind: Kind::Sleep(Duration::from_millis(10)),
        warmup: 2_560,
        measure: 10_240,
        headline: false,
    },
    Workload {
        name: "cpu-100us",
        about: "CPU: ~100 µs of hashing per invocation, concurrency 64, closed loop",
        payload: Payload::Json(100),
        concurrency: 64,
        pace: Pace::Closed,
        kind: Kind::Cpu,
        warmup: 500,
        measure: 3_000,
        headline: false,
    },
    Workload {
        name: "mixed",
        about: "1 % of invocations block their thread 20 ms, the rest echo; concurrency 64",
        payload: Payload::Mixed,
        concurrency: 64,
        pace: Pace::Closed,
        kind: Kind::Mixed {
            block: Duration::from_millis(20),
        },
        warmup: 500,
        measure: 4_000,
        headline: false,
    },
    Workload {
        name: "open-loop",
        about: "echo 100 B, concurrency 64, open loop: arrivals finding no parked /next are rejected",
        payload: Payload::Json(100),
        concurrency: 64,
        pace: Pace::OpenLoop(None),
        kind: Kind::Echo,
        warmup: 3_000,
        measure: 20_000,
        headline: false,
    },
    Workload {
        name: "open-loop-c4",
        about: "echo 100 B, concurrency 4, open loop (AWS's emulator check: 4 slots, how fast a slot re-polls is capacity)",
        payload: Payload::Json(100),
        concurrency: 4,
        pace: Pace::OpenLoop(Some(OPEN_LOOP_C4_RATE)),
        kind: Kind::Echo,
        warmup: 2_000,
        measure: 20_000,
        headline: false,
    },
];

/// Arrivals per second of `open-loop-c4`: enough that four slots are often all taken
/// while one re-polls, well below what they can serve.
pub const OPEN_LOOP_C4_RATE: f64 = 15_000.0;

/// The workload called `name`.
pub fn by_name(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// `{"data":"xxx..."}`, exactly `total` bytes (at least 12).
pub fn json_payload(total: usize) -> Vec<u8> {
    let fill = total.max(12) - 11;
    let mut v = Vec::with_capacity(total.max(12));
    v.extend_from_slice(b"{\"data\":\"");
    v.resize(v.len() + fill, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// Every this many events of the mixed workload, one blocks.
pub const MIXED_EVERY: u64 = 100;

/// How a blocking event of the mixed workload starts.
pub const MIXED_BLOCKING_PREFIX: &[u8] = b"{\"b\":1,";

/// Digits of the mixed workload's timestamp field.
const STAMP_DIGITS: usize = 16;

/// Event `index` of the mixed workload, stamped `nanos`. Keys are in sorted order and the
/// JSON compact, so a `serde_json::Value` round trip gives the same bytes back.
pub fn mixed_payload(index: u64, nanos: u64) -> Vec<u8> {
    let blocking = index % MIXED_EVERY == MIXED_EVERY / 2;
    let mut v = Vec::with_capacity(100);
    v.extend_from_slice(if blocking {
        MIXED_BLOCKING_PREFIX
    } else {
        b"{\"b\":0,"
    });
    v.extend_from_slice(b"\"data\":\"");
    // 100 bytes in all: 7 + 8 + fill + 7 + 16 + 2.
    v.resize(v.len() + 60, b'x');
    v.extend_from_slice(b"\",\"t\":\"");
    v.extend_from_slice(format!("{:0width$}", nanos, width = STAMP_DIGITS).as_bytes());
    v.extend_from_slice(b"\"}");
    v
}

/// The mixed workload's event: whether it blocks, and its hand-out stamp.
pub fn parse_mixed(event: &[u8]) -> Option<(bool, u64)> {
    let stamp = event.get(event.len().checked_sub(STAMP_DIGITS + 2)?..event.len() - 2)?;
    let nanos = std::str::from_utf8(stamp).ok()?.parse().ok()?;
    Some((event.starts_with(MIXED_BLOCKING_PREFIX), nanos))
}

/// Checks the payload helpers once at start-up (a harness=false bench has no test runner).
pub fn self_check() -> Result<(), String> {
    let ok = json_payload(100).len() == 100
        && json_payload(64 * 1024).len() == 64 * 1024
        && mixed_payload(3, 99).len() == 100
        && parse_mixed(&mixed_payload(MIXED_EVERY / 2, 1234)) == Some((true, 1234))
        && parse_mixed(&mixed_payload(3, 99)) == Some((false, 99))
        && serde_json::from_slice::<Value>(&mixed_payload(3, 99))
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
            == Some(mixed_payload(3, 99));
    if ok {
        Ok(())
    } else {
        Err("payload self-check failed (bench bug)".into())
    }
}
