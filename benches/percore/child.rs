//! The child side: pin, start the monitor, run the contender.
//!
//! The monitor thread reads the parent's commands on stdin: `mark` snapshots the
//! measurement window's start, `end` snapshots its end, prints the result line on stdout and
//! exits the process (contenders serve forever). EOF on stdin (the parent died) exits too.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::contenders;
use crate::workloads::{self, Work};

/// First argument of a child process.
pub const FLAG: &str = "--child";

/// Prefix of the child's result line on stdout.
pub const RESULT_PREFIX: &str = "PERCORE_RESULT ";

/// Resource usage at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// User CPU time of the process, µs.
    pub user_us: u64,
    /// System CPU time of the process, µs.
    pub sys_us: u64,
    /// Peak resident set size so far, KiB: this process image's own (`VmHWM`), not
    /// `ru_maxrss`, which keeps the high-water mark of the bench process it was forked from
    /// across the `exec` (so every contender showed the parent's size).
    pub maxrss_kib: u64,
    /// Allocator calls so far.
    pub allocations: u64,
    /// Handler invocations so far.
    pub invocations: u64,
    /// Voluntary context switches so far.
    pub voluntary_switches: u64,
    /// Involuntary context switches so far.
    pub involuntary_switches: u64,
    /// Minor page faults so far (memory the kernel had to map in, zeroed).
    #[serde(default)]
    pub minor_faults: u64,
}

/// The child's report: the window's two snapshots, and the window's length as the child saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChildResult {
    /// At `mark`.
    pub start: Snapshot,
    /// At `end`.
    pub end: Snapshot,
    /// Seconds between the two.
    pub window_s: f64,
}

fn timeval_us(t: libc::timeval) -> u64 {
    (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64
}

/// This process's usage now.
pub fn snapshot() -> Snapshot {
    // Read the counters first: the getrusage call then covers their reads too.
    let allocations = crate::allocations();
    let invocations = workloads::invocations();
    // SAFETY: `rusage` is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`; RUSAGE_SELF is always accepted.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        eprintln!("getrusage failed: {}", std::io::Error::last_os_error());
    }
    Snapshot {
        user_us: timeval_us(ru.ru_utime),
        sys_us: timeval_us(ru.ru_stime),
        maxrss_kib: peak_rss_kib().unwrap_or(ru.ru_maxrss.max(0) as u64),
        allocations,
        invocations,
        voluntary_switches: ru.ru_nvcsw.max(0) as u64,
        involuntary_switches: ru.ru_nivcsw.max(0) as u64,
        minor_faults: ru.ru_minflt.max(0) as u64,
    }
}

/// `VmHWM` from `/proc/self/status`, KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Restricts the calling thread (and every thread it creates afterwards) to `cpus`.
pub fn pin(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("CPU {cpu} out of range")));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Parses a CPU list: `0`, `0-3,6`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad CPU list {s:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("bad CPU range in {s:?}"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(out)
}

/// Formats a CPU list for [`parse_cpus`].
pub fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

struct ChildArgs {
    contender: String,
    workload: String,
    cpus: Vec<usize>,
    cpu_iters: u64,
}

fn parse_args(args: &[String]) -> Result<ChildArgs, String> {
    let mut it = args.iter();
    let contender = it.next().ok_or("--child needs a contender name")?.clone();
    let mut workload = None;
    let mut cpus = None;
    let mut cpu_iters = 1;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => workload = Some(value()?.clone()),
            "--cpus" => cpus = Some(parse_cpus(value()?)?),
            "--cpu-iters" => {
                cpu_iters = value()?.parse().map_err(|e| format!("--cpu-iters: {e}"))?
            }
            other => return Err(format!("unknown child argument {other:?}")),
        }
    }
    Ok(ChildArgs {
        contender,
        workload: workload.ok_or("--workload is required")?,
        cpus: cpus.ok_or("--cpus is required")?,
        cpu_iters,
    })
}

/// Entry point of a child process (`args` follow `--child`).
pub fn main(args: &[String]) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("percore child: {e}");
            return ExitCode::from(2);
        }
    };
    // First thing, before any thread exists: every thread created later inherits the mask.
    if let Err(e) = pin(&args.cpus) {
        eprintln!("percore child: cannot pin to CPUs {:?}: {e}", args.cpus);
        return ExitCode::from(2);
    }
    let Some(contender) = contenders::by_name(&args.contender) else {
        eprintln!("percore child: unknown contender {:?}", args.contender);
        return ExitCode::from(2);
    };
    let Some(workload) = workloads::by_name(&args.workload) else {
        eprintln!("percore child: unknown workload {:?}", args.workload);
        return ExitCode::from(2);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("percore-monitor".into())
        .spawn(monitor)
    {
        eprintln!("percore child: cannot start the monitor thread: {e}");
        return ExitCode::from(2);
    }
    let work = Work {
        kind: workload.kind,
        cpu_iters: args.cpu_iters,
    };
    match (contender.run)(work) {
        Ok(()) => eprintln!("percore child: {} returned before `end`", contender.name),
        Err(e) => eprintln!("percore child: {} failed: {e}", contender.name),
    }
    ExitCode::FAILURE
}

fn monitor() {
    let mut start: Option<(Snapshot, Instant)> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "mark" => start = Some((snapshot(), Instant::now())),
            "end" => {
                let end = snapshot();
                let (start, at) = start.unwrap_or((Snapshot::default(), Instant::now()));
                let result = ChildResult {
                    start,
                    end,
                    window_s: at.elapsed().as_secs_f64(),
                };
                let mut out = std::io::stdout().lock();
                let line = serde_json::to_string(&result).unwrap_or_default();
                let ok = writeln!(out, "{RESULT_PREFIX}{line}").and_then(|()| out.flush());
                std::process::exit(if ok.is_ok() { 0 } else { 1 });
            }
            other => eprintln!("percore child: unknown command {other:?}"),
        }
    }
    // The parent went away: do not serve on.
    std::process::exit(3);
}
