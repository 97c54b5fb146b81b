//! The parent side: options, the run plan, one simulator and one child per run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use lambda_tpc::sim::{Arrival, EventFraming, EventSource, Simulator};
use serde::Serialize;

use crate::child::{self, ChildResult};
use crate::contenders::{self, CONTENDERS, Contender};
use crate::report;
use crate::workloads::{self, Pace, Payload, WORKLOADS, Workload};

/// Open-loop rate when no closed-loop measurement is available to derive it from.
const FALLBACK_OPEN_RATE: f64 = 20_000.0;

/// Fraction of the official runtime's closed-loop `echo-c64` throughput used as the open-loop
/// arrival rate.
const OPEN_RATE_FRACTION: f64 = 0.9;

/// Cap on the open-loop arrival rate, as a fraction of what the simulator's CPUs could hand
/// out to the reference contender in closed loop (their count over its CPU per invocation in
/// that contender's `echo-c64` runs). In an open loop the simulator spends more per arrival
/// (the pacer's wake-ups, the rejections: about 30 µs against 20 on this machine), and one
/// that falls behind reads parked `/next`s late and rejects arrivals for every contender:
/// at 0.9 x the official runtime's throughput, near the simulator's own limit on two cores,
/// every contender once lost a quarter or more of its arrivals.
const OPEN_RATE_SIM_SHARE: f64 = 0.6;

const USAGE: &str = "\
usage: cargo bench --bench percore -- [options]

  --quick               every contender x every workload, 1 run, short (CI smoke, < 1 min)
  --full                every contender x every workload, 3 runs
  --runs N              runs per cell (default 3, --quick 1)
  --contenders LIST     comma list of names; a trailing * matches a prefix (tpc-*)
  --workloads LIST      comma list of names, as above
  --scale F             multiply warm-up and measured invocation counts by F
  --open-rate N         open-loop arrivals per second (default: 0.9 x official-mt's
                        echo-c64 throughput in this run, else 0.9 x the slowest
                        contender's, else 20000; at most 0.6 x what the
                        simulator's CPUs hand out to that contender, for headroom)
  --sim-cpus LIST       CPUs of the simulator (default: the last CPU)
  --runtime-cpus LIST   CPUs of the contender (default: the first CPU)
  --timeout SECS        give up on a run after this long (default 300)
  --framing F           how /next replies frame events: go (default: chunked above
                        2048 bytes, as the Runtime API's Go server), length, chunked
  --list                list contenders and workloads
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Default,
    Quick,
    Full,
}

struct Options {
    mode: Mode,
    runs: Option<usize>,
    contenders: Option<Vec<String>>,
    workloads: Option<Vec<String>>,
    scale: f64,
    open_rate: Option<f64>,
    sim_cpus: Option<Vec<usize>>,
    runtime_cpus: Option<Vec<usize>>,
    timeout: Duration,
    framing: (EventFraming, &'static str),
    list: bool,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Default,
        runs: None,
        contenders: None,
        workloads: None,
        scale: 1.0,
        open_rate: None,
        sim_cpus: None,
        runtime_cpus: None,
        timeout: Duration::from_secs(300),
        framing: (EventFraming::LikeGo, "go"),
        list: false,
    };
    let mut it = args.iter();
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            // cargo passes --bench to harness = false benches.
            "--bench" => {}
            "--quick" => o.mode = Mode::Quick,
            "--full" => o.mode = Mode::Full,
            "--list" => o.list = true,
            "--runs" => {
                let n: usize = value()?.parse().map_err(|e| format!("--runs: {e}"))?;
                o.runs = Some(n.max(1));
            }
            "--contenders" => o.contenders = Some(list(value()?)),
            "--workloads" => o.workloads = Some(list(value()?)),
            "--scale" => {
                let f: f64 = value()?.parse().map_err(|e| format!("--scale: {e}"))?;
                if !(f.is_finite() && f > 0.0) {
                    return Err("--scale must be positive".into());
                }
                o.scale = f;
            }
            "--open-rate" => {
                let f: f64 = value()?.parse().map_err(|e| format!("--open-rate: {e}"))?;
                if !(f.is_finite() && f > 0.0) {
                    return Err("--open-rate must be positive".into());
                }
                o.open_rate = Some(f);
            }
            "--sim-cpus" => o.sim_cpus = Some(child::parse_cpus(value()?)?),
            "--runtime-cpus" => o.runtime_cpus = Some(child::parse_cpus(value()?)?),
            "--timeout" => {
                let s: u64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                o.timeout = Duration::from_secs(s.max(1));
            }
            "--framing" => {
                o.framing = match value()?.as_str() {
                    "go" => (EventFraming::LikeGo, "go"),
                    "length" => (EventFraming::ContentLength, "length"),
                    "chunked" => (EventFraming::Chunked, "chunked"),
                    other => {
                        return Err(format!(
                            "--framing {other:?}: expected go, length or chunked"
                        ));
                    }
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(o)
}

/// `pattern` is a name, or a prefix followed by `*`.
fn matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// One cell of the matrix: a workload and the contenders measured on it.
pub struct Planned {
    pub workload: &'static Workload,
    pub contenders: Vec<&'static Contender>,
    pub warmup: u64,
    pub measure: u64,
}

fn plan(o: &Options, io_uring: bool) -> Result<Vec<Planned>, String> {
    if let Some(ws) = &o.workloads
        && let Some(bad) = ws.iter().find(|p| {
            !WORKLOADS
                .iter()
                .any(|w| matches(std::slice::from_ref(p), w.name))
        })
    {
        return Err(format!("no workload matches {bad:?} (try --list)"));
    }
    if let Some(cs) = &o.contenders
        && let Some(bad) = cs.iter().find(|p| {
            !CONTENDERS
                .iter()
                .any(|c| matches(std::slice::from_ref(p), c.name))
        })
    {
        return Err(format!("no contender matches {bad:?} (try --list)"));
    }
    let mut out = Vec::new();
    for w in WORKLOADS {
        if let Some(ws) = &o.workloads
            && !matches(ws, w.name)
        {
            continue;
        }
        let contenders: Vec<&'static Contender> = CONTENDERS
            .iter()
            .filter(|c| io_uring || !c.requires_io_uring())
            .filter(|c| match &o.contenders {
                Some(cs) => matches(cs, c.name),
                None => {
                    o.mode != Mode::Default
                        || w.headline
                        || c.everywhere
                        || c.also.contains(&w.name)
                }
            })
            .collect();
        if contenders.is_empty() {
            continue;
        }
        let (warmup, measure) = match o.mode {
            Mode::Quick => ((w.warmup / 10).max(200), (w.measure / 20).max(400)),
            _ => (w.warmup, w.measure),
        };
        let scale = |n: u64| ((n as f64 * o.scale).round() as u64).max(1);
        out.push(Planned {
            workload: w,
            contenders,
            warmup: scale(warmup),
            measure: scale(measure),
        });
    }
    if out.is_empty() {
        return Err("nothing selected".into());
    }
    Ok(out)
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub workload: &'static str,
    pub contender: &'static str,
    pub run: usize,
    /// Invocations the child's handler ran in the window.
    pub invocations: u64,
    /// Answers the simulator accepted in the window.
    pub answered: u64,
    /// The window, as the parent saw it (mark to last answer), seconds.
    pub window_s: f64,
    /// `answered / window_s`.
    pub throughput: f64,
    /// CPU per invocation of the child, µs.
    pub cpu_us: f64,
    pub user_us: f64,
    pub sys_us: f64,
    /// Context switches (voluntary + involuntary) per invocation.
    pub switches: f64,
    /// Allocator calls per invocation.
    pub allocs: f64,
    /// Minor page faults per invocation.
    pub faults: f64,
    /// Peak RSS of the child, MiB.
    pub rss_mib: f64,
    /// CPU per invocation of the parent process (the simulator, the pacer, this harness), µs.
    pub sim_cpu_us: f64,
    /// CPU time used on the simulator's and the contender's CPUs by anything other than the
    /// two bench processes, percent of the window (summed over the CPUs; from /proc/stat, so
    /// at clock-tick resolution). Above a few percent the figures are noisy.
    pub foreign_pct: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Mixed workload: latency of the non-blocking invocations.
    pub ok_p50_us: Option<u64>,
    pub ok_p99_us: Option<u64>,
    pub ok_p999_us: Option<u64>,
    /// Open loop: arrivals in the window, and how many were rejected.
    pub arrivals: u64,
    pub rejected: u64,
    /// Arrival rate for paced and open-loop runs.
    pub rate: Option<f64>,
    /// Wall time of the whole run (start-up, warm-up, window, teardown), seconds.
    pub wall_s: f64,
}

/// A run that did not complete, or lost something.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub workload: &'static str,
    pub contender: &'static str,
    pub run: usize,
    pub error: String,
}

/// Where the machine and the settings are recorded in the output.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub cpu_model: String,
    pub kernel: String,
    pub cpus_online: usize,
    pub sim_cpus: Vec<usize>,
    pub runtime_cpus: Vec<usize>,
    pub cpu_iters: u64,
    pub mode: String,
    pub runs: usize,
    pub open_rate: Option<f64>,
    /// How `/next` replies framed events (`--framing`).
    pub framing: &'static str,
    pub command: String,
    pub total_wall_s: f64,
}

/// Latency of the mixed workload's well-behaved invocations, recorded by the validator.
struct OkLatency {
    on: AtomicBool,
    base: Instant,
    samples: Mutex<Vec<u32>>,
}

impl OkLatency {
    fn record(&self, event: &[u8]) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some((false, stamp)) = workloads::parse_mixed(event) {
            let now = self.base.elapsed().as_nanos() as u64;
            let us = now.saturating_sub(stamp) / 1000;
            self.samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
}

fn quantile(sorted: &[u32], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(u64::from(sorted[rank - 1]))
}

/// Kills the child on drop unless it already exited (so a failed run never leaves one behind).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct RunSpec<'a> {
    workload: &'static Workload,
    contender: &'static Contender,
    run: usize,
    warmup: u64,
    measure: u64,
    open_rate: f64,
    cpu_iters: u64,
    sim_cpus: &'a [usize],
    runtime_cpus: &'a [usize],
    timeout: Duration,
    framing: EventFraming,
    log: PathBuf,
}

/// Variables a Managed Instance sets for a function (besides the Runtime API's address and
/// the maximum concurrency).
const MANAGED_INSTANCE_ENV: &[(&str, &str)] = &[
    ("AWS_LAMBDA_FUNCTION_NAME", "percore-bench"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
    ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/percore-bench"),
    (
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "2026/01/01/percore-bench[$LATEST]0123456789abcdef0123456789abcdef",
    ),
    ("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances"),
    ("AWS_LAMBDA_LOG_FORMAT", "json"),
];

fn run_once(spec: &RunSpec<'_>) -> Result<RunResult, String> {
    let started = Instant::now();
    let w = spec.workload;
    let total = spec.warmup + spec.measure;
    let ok_latency = Arc::new(OkLatency {
        on: AtomicBool::new(false),
        base: Instant::now(),
        samples: Mutex::new(Vec::with_capacity(spec.measure as usize)),
    });
    let events = match w.payload {
        Payload::Json(n) => EventSource::repeat(workloads::json_payload(n), total),
        Payload::Mixed => {
            let rec = Arc::clone(&ok_latency);
            EventSource::from_fn(total, move |i| {
                workloads::mixed_payload(i, rec.base.elapsed().as_nanos() as u64).into()
            })
        }
    };
    let (arrival, rate) = match w.pace {
        Pace::Closed => (Arrival::Closed, None),
        Pace::Paced(r) => (Arrival::Paced { per_sec: r }, Some(r)),
        Pace::OpenLoop(_) => (
            Arrival::OpenLoop {
                per_sec: spec.open_rate,
            },
            Some(spec.open_rate),
        ),
    };
    let mixed = w.payload == Payload::Mixed;
    let rec = Arc::clone(&ok_latency);
    let sim = Simulator::builder()
        .max_concurrency(w.concurrency)
        .events(events)
        .arrival(arrival)
        .event_framing(spec.framing)
        .validator(move |event, response| {
            if mixed {
                rec.record(event);
            }
            event == response
        })
        .pin_to_cores(spec.sim_cpus.to_vec())
        .threads(spec.sim_cpus.len())
        .start()
        .map_err(|e| format!("simulator: {e}"))?;

    let log = std::fs::File::create(&spec.log)
        .map_err(|e| format!("creating {}: {e}", spec.log.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(child::FLAG)
        .arg(spec.contender.name)
        .args(["--workload", w.name])
        .args(["--cpus", &child::format_cpus(spec.runtime_cpus)])
        .args(["--cpu-iters", &spec.cpu_iters.to_string()]);
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("AWS_LAMBDA_") || k.starts_with("LAMBDA_TPC_"))
            && k != "LAMBDA_TPC_URING_FLAGS"
        {
            cmd.env_remove(k);
        }
    }
    let concurrency = w.concurrency.to_string();
    cmd.env("AWS_LAMBDA_RUNTIME_API", sim.runtime_api())
        .env("AWS_LAMBDA_MAX_CONCURRENCY", &concurrency)
        .envs(MANAGED_INSTANCE_ENV.iter().copied());
    for (k, v) in spec.contender.env {
        cmd.env(k, v.replace("{c}", &concurrency));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = ChildGuard(
        cmd.spawn()
            .map_err(|e| format!("spawning the child: {e}"))?,
    );
    let mut stdin = child.0.stdin.take().ok_or("child has no stdin")?;
    let stdout = child.0.stdout.take().ok_or("child has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("percore-child-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix(child::RESULT_PREFIX) {
                    let _ = tx.send(json.to_owned());
                }
            }
        })
        .map_err(|e| format!("stdout reader: {e}"))?;

    let deadline = started + spec.timeout;
    let cpus: Vec<usize> = spec
        .sim_cpus
        .iter()
        .chain(spec.runtime_cpus)
        .copied()
        .collect();
    let progress = |sim: &Simulator| {
        let l = sim.ledger();
        l.answered() + l.rejected
    };
    // Warm-up.
    wait(&mut child.0, deadline, || {
        if progress(&sim) >= spec.warmup {
            true
        } else {
            std::thread::sleep(Duration::from_millis(2));
            false
        }
    })?;
    // Measurement window.
    ok_latency.on.store(true, Ordering::Relaxed);
    sim.reset_measurements();
    let l0 = sim.ledger();
    let parent0 = child::snapshot();
    let busy0 = cpu_busy_us(&cpus);
    let t0 = Instant::now();
    stdin
        .write_all(b"mark\n")
        .map_err(|e| format!("writing to the child: {e}"))?;
    wait(&mut child.0, deadline, || {
        sim.wait_until_done(Duration::from_millis(20))
    })?;
    let window = t0.elapsed();
    let busy1 = cpu_busy_us(&cpus);
    let parent1 = child::snapshot();
    let l1 = sim.ledger();
    let latency = sim.latency();
    ok_latency.on.store(false, Ordering::Relaxed);
    stdin
        .write_all(b"end\n")
        .map_err(|e| format!("writing to the child: {e}"))?;
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the child did not report its result".to_owned())?;
    let result: ChildResult =
        serde_json::from_str(&line).map_err(|e| format!("child result {line:?}: {e}"))?;
    let exit_by = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < exit_by => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return Err("the child did not exit after `end`".into()),
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("the child exited with {status}"));
    }
    let ledger = sim.shutdown();

    let mut problems = Vec::new();
    if ledger.lost() > 0 {
        problems.push(format!("{} lost", ledger.lost()));
    }
    if ledger.answered() + ledger.rejected != total {
        problems.push(format!(
            "{} answered + {} rejected of {total}",
            ledger.answered(),
            ledger.rejected
        ));
    }
    for (n, what) in [
        (ledger.answered_error, "error answers"),
        (ledger.mismatched, "mismatched echoes"),
        (ledger.duplicates, "duplicate answers"),
        (ledger.unknown_ids, "unknown ids"),
        (ledger.bad_requests, "bad requests"),
        (ledger.too_large, "too-large replies"),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if !problems.is_empty() {
        return Err(format!("ledger: {}", problems.join(", ")));
    }

    let (s, e) = (result.start, result.end);
    let invocations = e.invocations.saturating_sub(s.invocations);
    if invocations == 0 {
        return Err("no invocation in the measurement window".into());
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / invocations as f64;
    let answered = l1.answered().saturating_sub(l0.answered());
    let arrivals = (l1.answered() + l1.rejected).saturating_sub(l0.answered() + l0.rejected);
    let mut ok = std::mem::take(
        &mut *ok_latency
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    ok.sort_unstable();
    let child_cpu = (e.user_us + e.sys_us).saturating_sub(s.user_us + s.sys_us);
    let parent_cpu =
        (parent1.user_us + parent1.sys_us).saturating_sub(parent0.user_us + parent0.sys_us);
    let foreign_pct = match (busy0, busy1) {
        (Some(b0), Some(b1)) => {
            let foreign = b1.saturating_sub(b0) as f64 - child_cpu as f64 - parent_cpu as f64;
            Some(
                (foreign.max(0.0) / (window.as_secs_f64() * 1e6) * 100.0)
                    .min(100.0 * cpus.len() as f64),
            )
        }
        _ => None,
    };
    Ok(RunResult {
        workload: w.name,
        contender: spec.contender.name,
        run: spec.run,
        invocations,
        answered,
        window_s: window.as_secs_f64(),
        throughput: answered as f64 / window.as_secs_f64().max(1e-9),
        cpu_us: per(e.user_us + e.sys_us, s.user_us + s.sys_us),
        user_us: per(e.user_us, s.user_us),
        sys_us: per(e.sys_us, s.sys_us),
        switches: per(
            e.voluntary_switches + e.involuntary_switches,
            s.voluntary_switches + s.involuntary_switches,
        ),
        allocs: per(e.allocations, s.allocations),
        faults: per(e.minor_faults, s.minor_faults),
        rss_mib: e.maxrss_kib as f64 / 1024.0,
        sim_cpu_us: parent_cpu as f64 / answered.max(1) as f64,
        foreign_pct,
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        p999_us: latency.p999_us,
        max_us: latency.max_us,
        ok_p50_us: quantile(&ok, 0.5),
        ok_p99_us: quantile(&ok, 0.99),
        ok_p999_us: quantile(&ok, 0.999),
        arrivals,
        rejected: l1.rejected.saturating_sub(l0.rejected),
        rate,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Polls `done` until it says yes; fails if the child exits first or the deadline passes.
fn wait(
    child: &mut Child,
    deadline: Instant,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    loop {
        if done() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("the child exited early ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
        if Instant::now() >= deadline {
            return Err("timed out (see --timeout)".into());
        }
    }
}

/// Busy time of `cpus` since boot (user, nice, system, irq, softirq, steal), µs, from
/// /proc/stat (clock-tick resolution).
fn cpu_busy_us(cpus: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let tick = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&t| t > 0)?;
    let mut ticks = 0u64;
    let mut seen = 0;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(id) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|id| id.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&id) {
            continue;
        }
        let v: Vec<u64> = fields.map(|x| x.parse().unwrap_or(0)).collect();
        let busy = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| v.get(i))
            .sum::<u64>();
        ticks += busy;
        seen += 1;
    }
    (seen > 0).then(|| ticks * 1_000_000 / tick)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(
            "\n    child stderr ({}):\n      {}",
            path.display(),
            tail.join("\n      ")
        )
    }
}

/// `<target>/percore`, `<target>` being the directory the bench binary was built in.
fn out_dir() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then_some(())?;
        Some(deps.parent()?.parent()?.to_path_buf())
    });
    target
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("percore")
}

fn machine() -> (String, String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.into());
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (model, kernel, usize::try_from(online).unwrap_or(1))
}

/// Entry point of the parent.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("percore: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let o = parse_options(args)?;
    if o.list {
        println!("contenders:");
        for c in CONTENDERS {
            let mark = if c.everywhere { "*" } else { " " };
            println!("  {mark} {:<20} {}", c.name, c.about);
        }
        println!("workloads:");
        for w in WORKLOADS {
            let mark = if w.headline { "*" } else { " " };
            println!("  {mark} {:<20} {}", w.name, w.about);
        }
        println!(
            "(default run: every contender on the * workload, the * contenders on every workload)"
        );
        return Ok(true);
    }
    workloads::self_check()?;
    let io_uring = contenders::io_uring_available();
    if !io_uring {
        println!(
            "percore: io_uring is refused here (seccomp?): skipping the contenders that require it"
        );
    }
    let plan = plan(&o, io_uring)?;
    let runs = o.runs.unwrap_or(if o.mode == Mode::Quick { 1 } else { 3 });

    let mask: Vec<usize> = core_affinity::get_core_ids()
        .ok_or("cannot read the CPU affinity mask")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let (first, last) = match (mask.iter().min(), mask.iter().max()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => return Err("empty CPU affinity mask".into()),
    };
    let sim_cpus = o.sim_cpus.clone().unwrap_or_else(|| vec![last]);
    let runtime_cpus = o.runtime_cpus.clone().unwrap_or_else(|| vec![first]);
    if let Some(bad) = sim_cpus
        .iter()
        .chain(&runtime_cpus)
        .find(|c| !mask.contains(c))
    {
        return Err(format!("CPU {bad} is not in the affinity mask {mask:?}"));
    }
    child::pin(&sim_cpus).map_err(|e| format!("pinning the parent to {sim_cpus:?}: {e}"))?;
    let cpu_iters = workloads::calibrate(Duration::from_micros(100));
    let (cpu_model, kernel, cpus_online) = machine();

    let out = out_dir();
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    // Logs of earlier invocations would be mistaken for this one's.
    if let Ok(dir) = std::fs::read_dir(&logs) {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|x| x == "stderr") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    let total_runs: usize = plan.iter().map(|p| p.contenders.len() * runs).sum();
    println!(
        "percore: {} runs ({} workloads, {runs} run(s) per cell), {cpu_model}, {kernel}, {cpus_online} CPUs online",
        total_runs,
        plan.len()
    );
    println!(
        "simulator on CPU {}, contender on CPU {}{}; CPU handler: {cpu_iters} hashing iterations ≈ 100 µs",
        child::format_cpus(&sim_cpus),
        child::format_cpus(&runtime_cpus),
        if sim_cpus.iter().any(|c| runtime_cpus.contains(c)) {
            " (shared: figures are not per-core)"
        } else {
            ""
        }
    );
    let bar = ProgressBar::new(total_runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut open_rate_used = None;
    for p in &plan {
        let open_rate = match (p.workload.pace, o.open_rate) {
            (Pace::OpenLoop(Some(fixed)), _) => fixed,
            (Pace::OpenLoop(None), Some(r)) => r,
            (Pace::OpenLoop(None), None) => {
                derive_open_rate(&results, &p.contenders, sim_cpus.len())
            }
            _ => 0.0,
        };
        if p.workload.pace == Pace::OpenLoop(None) {
            open_rate_used = Some(open_rate);
        }
        for run in 0..runs {
            for &c in &p.contenders {
                bar.set_message(format!(
                    "{} · {} · run {}/{runs}",
                    p.workload.name,
                    c.name,
                    run + 1
                ));
                let log = logs.join(format!("{}-{}-{run}.stderr", p.workload.name, c.name));
                let spec = RunSpec {
                    workload: p.workload,
                    contender: c,
                    run,
                    warmup: p.warmup,
                    measure: p.measure,
                    open_rate,
                    cpu_iters,
                    sim_cpus: &sim_cpus,
                    runtime_cpus: &runtime_cpus,
                    timeout: o.timeout,
                    framing: o.framing.0,
                    log: log.clone(),
                };
                match run_once(&spec) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        let error = format!("{e}{}", log_tail(&log));
                        bar.println(format!(
                            "FAILED {} · {} · run {}: {error}",
                            p.workload.name,
                            c.name,
                            run + 1
                        ));
                        failures.push(Failure {
                            workload: p.workload.name,
                            contender: c.name,
                            run,
                            error,
                        });
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let total_wall = started.elapsed();

    let setup = Setup {
        cpu_model,
        kernel,
        cpus_online,
        sim_cpus,
        runtime_cpus,
        cpu_iters,
        mode: format!("{:?}", o.mode).to_lowercase(),
        runs,
        open_rate: open_rate_used,
        framing: o.framing.1,
        command: std::iter::once("percore".to_owned())
            .chain(args.iter().filter(|a| *a != "--bench").cloned())
            .collect::<Vec<_>>()
            .join(" "),
        total_wall_s: total_wall.as_secs_f64(),
    };
    let summaries = report::summarize(&plan, &results);
    report::print(&setup, &plan, &summaries);
    match report::write_json(
        &out.join("percore.json"),
        &setup,
        &results,
        &summaries,
        &failures,
    ) {
        Ok(()) => println!("wrote {}", out.join("percore.json").display()),
        Err(e) => eprintln!("percore: writing the JSON: {e}"),
    }
    match report::write_svg(&out.join("percore.svg"), &setup, &plan, &summaries) {
        Ok(()) => println!("wrote {}", out.join("percore.svg").display()),
        Err(e) => eprintln!("percore: writing the chart: {e}"),
    }
    println!(
        "{} runs in {:.0} s; {} failed",
        results.len() + failures.len(),
        total_wall.as_secs_f64(),
        failures.len()
    );
    for f in &failures {
        println!(
            "FAILED {} · {} · run {}: {}",
            f.workload,
            f.contender,
            f.run + 1,
            f.error
        );
    }
    Ok(failures.is_empty())
}

/// The open-loop rate: a fraction of the official runtime's closed-loop echo throughput at
/// full concurrency measured earlier in this invocation (of the slowest contender about to run
/// open loop when the official runtime did not run), capped to leave the simulator's
/// `sim_cpus` headroom ([`OPEN_RATE_SIM_SHARE`]).
fn derive_open_rate(
    results: &[RunResult],
    contenders: &[&'static Contender],
    sim_cpus: usize,
) -> f64 {
    let median_echo = |name: &str, field: fn(&RunResult) -> f64| {
        let mut t: Vec<f64> = results
            .iter()
            .filter(|r| r.workload == "echo-c64" && r.contender == name)
            .map(field)
            .collect();
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied()
    };
    let throughput = |name: &'static str| median_echo(name, |r| r.throughput).map(|t| (name, t));
    let reference = CONTENDERS
        .iter()
        .find(|c| c.baseline)
        .and_then(|c| throughput(c.name))
        .or_else(|| {
            contenders
                .iter()
                .filter_map(|c| throughput(c.name))
                .min_by(|a, b| a.1.total_cmp(&b.1))
        });
    reference.map_or(FALLBACK_OPEN_RATE, |(name, t)| {
        let cap = median_echo(name, |r| r.sim_cpu_us)
            .filter(|&us| us > 0.0)
            .map_or(f64::INFINITY, |us| {
                OPEN_RATE_SIM_SHARE * sim_cpus as f64 * 1e6 / us
            });
        (t * OPEN_RATE_FRACTION).min(cap).round().max(100.0)
    })
}
