//! The embedded Runtime API simulator as a standalone process, to run any function
//! (this crate's examples, or a `bootstrap` built with another runtime) against it.
//!
//! ```text
//! cargo run --release --example sim -- --invocations 100000 --concurrency 64 --port 9001
//! AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 AWS_LAMBDA_MAX_CONCURRENCY=64 cargo run --release --example echo
//! ```
//!
//! Options: `--invocations N` (default 100000), `--concurrency N` (default 64), `--port P`
//! (default 9001), `--payload BYTES` (default 100), `--cpu N` (pin the simulator),
//! `--rate PER_SEC` (release events at a steady rate instead of as fast as the runtime asks),
//! `--framing go|length|chunked` (how `/next` replies frame the event; default `go`: chunked
//! above 2,048 bytes, as the Runtime API's Go server sends it).
//! It prints progress, then the ledger and latency percentiles, and exits 0 only if every
//! invocation was answered.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use lambda_tpc::sim::{Arrival, EventFraming, EventSource, Simulator};

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

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let (mut invocations, mut concurrency, mut port, mut payload, mut cpu, mut rate) =
        (100_000u64, 64usize, 9001u16, 100usize, None, None);
    let mut framing = EventFraming::LikeGo;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        const FLAGS: [&str; 7] = [
            "--invocations",
            "--concurrency",
            "--port",
            "--payload",
            "--cpu",
            "--rate",
            "--framing",
        ];
        if !FLAGS.contains(&flag.as_str()) {
            return Err(
                format!("unknown argument {flag:?} (options: {})", FLAGS.join(", ")).into(),
            );
        }
        let raw = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {raw:?}: {e}");
        match flag.as_str() {
            "--invocations" => invocations = raw.parse().map_err(|e| bad(&e))?,
            "--concurrency" => concurrency = raw.parse().map_err(|e| bad(&e))?,
            "--port" => port = raw.parse().map_err(|e| bad(&e))?,
            "--payload" => payload = raw.parse().map_err(|e| bad(&e))?,
            "--cpu" => cpu = Some(raw.parse::<usize>().map_err(|e| bad(&e))?),
            "--rate" => {
                let per_sec: f64 = raw.parse().map_err(|e| bad(&e))?;
                if !(per_sec.is_finite() && per_sec > 0.0) {
                    return Err(bad(&"must be a positive number of events per second").into());
                }
                rate = Some(per_sec);
            }
            "--framing" => {
                framing = match raw.as_str() {
                    "go" => EventFraming::LikeGo,
                    "length" => EventFraming::ContentLength,
                    "chunked" => EventFraming::Chunked,
                    _ => return Err(bad(&"expected go, length or chunked").into()),
                }
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let body = support::json_payload(payload);
    let mut builder = Simulator::builder()
        .max_concurrency(concurrency)
        .events(EventSource::repeat(body, invocations))
        .event_framing(framing)
        .bind(([127, 0, 0, 1], port).into());
    if let Some(cpu) = cpu {
        builder = builder.pin_to_cores(vec![cpu]);
    }
    if let Some(per_sec) = rate {
        builder = builder.arrival(Arrival::Paced { per_sec });
    }
    let sim = builder.start()?;
    println!(
        "simulator on {} serving {invocations} invocations, max concurrency {concurrency}",
        sim.runtime_api()
    );
    let started = Instant::now();
    let mut last = Instant::now();
    while !sim.wait_until_done(Duration::from_millis(200)) {
        if last.elapsed() > Duration::from_secs(2) {
            last = Instant::now();
            let l = sim.ledger();
            println!("  {} answered, {} in flight", l.answered(), l.in_flight);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let latency = sim.latency();
    let ledger = sim.shutdown();
    println!(
        "done: {} answered in {secs:.2} s ({:.0}/s); p50 {} µs, p99 {} µs; lost {}",
        ledger.answered(),
        ledger.answered() as f64 / secs,
        latency.p50_us,
        latency.p99_us,
        ledger.lost()
    );
    Ok(ledger.lost() == 0 && ledger.answered() == invocations)
}
