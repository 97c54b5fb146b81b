//! Soak run: many invocations with faults mixed in, checking that memory stays flat and
//! nothing is lost.
//!
//! ```text
//! cargo run --release --example soak                              # 2 million invocations
//! cargo run --release --example soak -- --invocations 20000000    # the full soak
//! ```
//!
//! The simulator (on the last CPU) injects, at random but reproducible (seeded) points:
//! connection resets before the head and mid-body, garbage instead of HTTP, replies without
//! a deadline, chunked replies with a bad chunk size, valid chunked replies, 500s on
//! `/response`, and keep-alive connections closed behind the runtime's back. The runtime
//! (worker-per-slot, or `--strategy`) serves echo invocations on the other CPUs. Every
//! few seconds the process's resident memory is sampled; at the end the ledger must show
//! every invocation answered exactly once, except those a fault made unanswerable (no
//! usable request id ever reached the runtime), and RSS must not have grown after
//! warm-up by more than `--rss-slack-mib` (default 64).
//!
//! Options: `--invocations N`, `--concurrency N` (default 64), `--strategy S`,
//! `--seed N`, `--rss-slack-mib N`.

#[path = "support/mod.rs"]
mod support;

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lambda_tpc::sim::{
    ConnFault, EventSource, FaultPlan, PostEndpoint, PostFault, ReplyFault, Schedule, Simulator,
};
use lambda_tpc::{BoxError, Config, Control, Cores, LambdaEvent, Strategy};
use serde_json::Value;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page / (1024.0 * 1024.0)
}

fn run() -> Result<bool, BoxError> {
    let (mut invocations, mut concurrency, mut seed, mut slack) =
        (2_000_000u64, 64usize, 7u64, 64.0f64);
    let mut strategy = Strategy::WorkerPerSlot;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--invocations" => invocations = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--rss-slack-mib" => slack = value()?.parse()?,
            "--strategy" => strategy = value()?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let (sim_cpu, runtime_cpus, _) = support::split_cpus()?;

    let plan = FaultPlan::new(seed)
        .reply(Schedule::Random(2e-5), ReplyFault::ResetBeforeHead)
        .reply(Schedule::Random(2e-5), ReplyFault::ResetMidBody)
        .reply(Schedule::Random(1e-5), ReplyFault::Garbage)
        .reply(Schedule::Random(2e-5), ReplyFault::MissingDeadline)
        .reply(Schedule::Random(1e-5), ReplyFault::BadChunkSize)
        .reply(Schedule::Random(1e-3), ReplyFault::Chunked { chunk: 7 })
        .post(
            PostEndpoint::Response,
            Schedule::Random(2e-5),
            PostFault::Status(500),
        )
        .connection(Schedule::Random(1e-3), ConnFault::CloseAfterRequests(50));
    let sim = Simulator::builder()
        .max_concurrency(concurrency)
        .events(EventSource::from_fn(invocations, |i| {
            bytes::Bytes::from(format!(
                r#"{{"i":{i},"pad":"{}"}}"#,
                "x".repeat((i % 200) as usize)
            ))
        }))
        .faults(plan)
        .keep_errors(0)
        .pin_to_cores(vec![sim_cpu])
        .start()?;
    let control = Control::new();
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(NonZeroUsize::new(concurrency).ok_or("concurrency must be positive")?)
        .cores(Cores::List(runtime_cpus))
        .strategy(strategy)
        .control(control.clone())
        .build()?;
    println!(
        "soak: {invocations} invocations, concurrency {concurrency}, {strategy}, seed {seed}, simulator on CPU {sim_cpu}"
    );
    let started = Instant::now();
    let runtime = std::thread::spawn(move || {
        lambda_tpc::compio::run_concurrent_with_config(
            config,
            |ev: LambdaEvent<Value>| async move { Ok::<_, BoxError>(ev.payload) },
        )
    });

    println!(
        "{:>8} {:>12} {:>10} {:>9}",
        "seconds", "answered", "per sec", "RSS MiB"
    );
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let mut last = (Instant::now(), 0u64);
    let done = loop {
        let finished = sim.wait_until_done(Duration::from_secs(5));
        let l = sim.ledger();
        let answered = l.answered() + l.unanswerable.total();
        let rss = rss_mib();
        let rate = (answered - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), answered);
        samples.push((answered, rss));
        println!(
            "{:>8.0} {:>12} {:>10.0} {:>9.1}",
            started.elapsed().as_secs_f64(),
            answered,
            rate,
            rss
        );
        if finished || runtime.is_finished() {
            break finished;
        }
    };
    control.shutdown();
    let result = runtime.join().map_err(|_| "runtime thread panicked")?;
    let ledger = sim.shutdown();
    result?;

    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nfinished in {secs:.0} s ({:.0} invocations/s)",
        ledger.handed_out as f64 / secs
    );
    println!(
        "ledger: handed out {}, answered ok {}, answered with an error {}, unanswerable {} {:?}, lost {}, duplicates {}",
        ledger.handed_out,
        ledger.answered_ok,
        ledger.answered_error,
        ledger.unanswerable.total(),
        ledger.unanswerable,
        ledger.lost(),
        ledger.duplicates
    );
    println!(
        "faults injected: {} ({:?})",
        ledger.faults.total(),
        ledger.faults
    );
    // RSS after warm-up (first tenth of the run) against the end.
    let warm = samples
        .iter()
        .find(|(n, _)| *n >= invocations / 10)
        .map_or(0.0, |s| s.1);
    let peak_after = samples
        .iter()
        .filter(|(n, _)| *n >= invocations / 10)
        .map(|s| s.1)
        .fold(0.0, f64::max);
    let end = samples.last().map_or(0.0, |s| s.1);
    println!(
        "RSS: {warm:.1} MiB after warm-up, {peak_after:.1} MiB peak after it, {end:.1} MiB at the end"
    );

    let accounted = ledger.answered_ok + ledger.answered_error + ledger.unanswerable.total();
    let mut ok = true;
    if !done
        || accounted != ledger.handed_out
        || ledger.lost() != 0
        || ledger.handed_out != invocations
    {
        println!("FAIL: not every invocation is accounted for");
        ok = false;
    }
    if peak_after - warm > slack {
        println!(
            "FAIL: RSS grew by {:.1} MiB after warm-up (slack {slack} MiB)",
            peak_after - warm
        );
        ok = false;
    }
    if ok {
        println!("OK: nothing lost, memory flat");
    }
    Ok(ok)
}
