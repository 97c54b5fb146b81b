//! The whole thing on one machine: the embedded Runtime API simulator and the
//! thread-per-core runtime in one process, serving a few hundred thousand echo invocations.
//!
//! ```text
//! cargo run --release --example local
//! cargo run --release --example local -- --invocations 1000000 --concurrency 64 --strategy unbounded
//! ```
//!
//! Options: `--invocations N` (default 300000), `--concurrency N` (default 8 per CPU, the
//! documented Managed Instances default for Rust), `--strategy S` (`worker-per-slot`,
//! `unbounded`, `semaphore:N`), `--pipelining`, `--driver auto|io_uring|epoll`,
//! `--payload BYTES` (default 100). `LAMBDA_TPC_*` variables work too.
//!
//! The simulator runs on the last CPU and the runtime on the others (with one CPU, both
//! share it).

#[path = "support/mod.rs"]
mod support;

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{BoxError, Config, Control, Cores, Driver, LambdaEvent, Strategy};
use serde_json::Value;

struct Args {
    invocations: u64,
    concurrency: Option<usize>,
    strategy: Option<Strategy>,
    pipelining: bool,
    driver: Option<Driver>,
    payload: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        invocations: 300_000,
        concurrency: None,
        strategy: None,
        pipelining: false,
        driver: None,
        payload: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--invocations" => {
                a.invocations = value("--invocations")?
                    .parse()
                    .map_err(|e| format!("--invocations: {e}"))?
            }
            "--concurrency" => {
                a.concurrency = Some(
                    value("--concurrency")?
                        .parse()
                        .map_err(|e| format!("--concurrency: {e}"))?,
                )
            }
            "--strategy" => a.strategy = Some(value("--strategy")?.parse()?),
            "--driver" => a.driver = Some(value("--driver")?.parse()?),
            "--payload" => {
                a.payload = value("--payload")?
                    .parse()
                    .map_err(|e| format!("--payload: {e}"))?
            }
            "--pipelining" => a.pipelining = true,
            "-h" | "--help" => {
                return Err("usage: local [--invocations N] [--concurrency N] [--strategy S] [--pipelining] \
                            [--driver auto|io_uring|epoll] [--payload BYTES]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let (sim_cpu, runtime_cpus, cpu_count) = support::split_cpus()?;
    let concurrency = args.concurrency.unwrap_or(8 * cpu_count).max(1);
    let payload = support::json_payload(args.payload);

    let sim = Simulator::builder()
        .max_concurrency(concurrency)
        .events(EventSource::repeat(payload, args.invocations))
        .invocation_ids(true)
        .validator(|event, response| {
            serde_json::from_slice::<Value>(event).ok()
                == serde_json::from_slice::<Value>(response).ok()
        })
        .pin_to_cores(vec![sim_cpu])
        .start()?;

    let control = Control::new();
    let mut builder = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(NonZeroUsize::new(concurrency).ok_or("concurrency must be positive")?)
        .control(control.clone());
    if std::env::var_os("LAMBDA_TPC_CORES").is_none() {
        builder = builder.cores(Cores::List(runtime_cpus));
    }
    if let Some(s) = args.strategy {
        builder = builder.strategy(s);
    }
    if let Some(d) = args.driver {
        builder = builder.driver(d);
    }
    if args.pipelining {
        builder = builder.pipelining(true);
    }
    let config = builder.build()?;
    let strategy = config.strategy();
    let pipelining = config.pipelining();

    println!(
        "lambda-tpc local run: {} echo invocations of {} bytes, max concurrency {concurrency}, simulator on CPU {sim_cpu}",
        args.invocations, args.payload
    );
    let started = Instant::now();
    let runtime = std::thread::spawn(move || {
        lambda_tpc::compio::run_concurrent_with_config(
            config,
            |event: LambdaEvent<Value>| async move { Ok::<_, BoxError>(event.payload) },
        )
    });

    let bar = ProgressBar::new(args.invocations);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} invocations  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let l = sim.ledger();
        bar.set_position(l.answered() + l.rejected);
        if l.answered() + l.rejected >= args.invocations
            || runtime.is_finished()
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    bar.finish();
    control.shutdown();
    let result = runtime.join().map_err(|_| "the runtime thread panicked")?;
    let latency = sim.latency();
    let ledger = sim.shutdown();
    result?;
    let report = control.report().ok_or("the runtime produced no report")?;

    let secs = elapsed.as_secs_f64();
    let drivers: Vec<&str> = report.cores.iter().map(|c| c.driver).collect();
    println!();
    println!("driver         {}", drivers.first().copied().unwrap_or("?"));
    println!(
        "cores          {:?} (simulator on CPU {sim_cpu})",
        report.cores.iter().map(|c| c.cpu).collect::<Vec<_>>()
    );
    println!(
        "strategy       {strategy}{}",
        if pipelining { " + pipelining" } else { "" }
    );
    println!(
        "throughput     {:.0} invocations/s in {:.2} s",
        report.invocations() as f64 / secs,
        secs
    );
    for c in &report.cores {
        let cpu = c.user_time + c.system_time;
        println!(
            "  core {} (CPU {}): {:>8} invocations, {:.0}/s, CPU {:.1} µs/invocation ({:.1} user + {:.1} sys)",
            c.index,
            c.cpu,
            c.invocations,
            c.invocations as f64 / secs,
            per_inv(cpu, c.invocations),
            per_inv(c.user_time, c.invocations),
            per_inv(c.system_time, c.invocations),
        );
    }
    println!(
        "latency        p50 {} µs, p99 {} µs, p99.9 {} µs (hand-out to reply, measured by the simulator)",
        latency.p50_us, latency.p99_us, latency.p999_us
    );
    println!(
        "ledger         handed out {}, answered {} ({} ok, {} errors), lost {}, mismatched {}, duplicates {}",
        ledger.handed_out,
        ledger.answered(),
        ledger.answered_ok,
        ledger.answered_error,
        ledger.lost(),
        ledger.mismatched,
        ledger.duplicates
    );
    if ledger.lost() > 0 || ledger.mismatched > 0 || ledger.answered() < args.invocations {
        return Err("some invocations were lost or answered wrongly".into());
    }
    println!("nothing lost.");
    Ok(())
}

fn per_inv(d: Duration, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        d.as_secs_f64() * 1e6 / n as f64
    }
}
