//! The runtime end to end against the simulator (hyper on the server side): every
//! strategy, 1..N cores, errors, bad payloads, panics, oversized bodies, per-core
//! factories, CPU affinity.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{EXECS, Exec, Outcome, nz, run_against_sim, run_on};
use lambda_tpc::api::{
    ERROR_TYPE_DESERIALIZE, ERROR_TYPE_EVENT_TOO_LARGE, ERROR_TYPE_HANDLER_PANIC,
    ERROR_TYPE_RESPONSE_TOO_LARGE,
};
use lambda_tpc::sim::{ErrorRecord, EventSource, Simulator};
use lambda_tpc::{BoxError, Config, Cores, LambdaEvent, Strategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn ty(e: &ErrorRecord) -> &str {
    e.error_type.as_deref().unwrap_or("")
}

fn msg(e: &ErrorRecord) -> &str {
    e.error_message.as_deref().unwrap_or("")
}

fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::WorkerPerSlot,
        Strategy::Unbounded,
        Strategy::Semaphore { permits: nz(3) },
    ]
}

/// Every executor with every strategy.
fn execs_and_strategies() -> impl Iterator<Item = (Exec, Strategy)> {
    EXECS
        .into_iter()
        .flat_map(|e| strategies().into_iter().map(move |s| (e, s)))
}

/// One core with `strategy`, and a shutdown grace far longer than a clean shutdown takes,
/// so that an invocation wrongly left counted in flight shows (see
/// [`assert_nothing_left_in_flight`]).
fn one_core_long_grace(strategy: Strategy) -> lambda_tpc::ConfigBuilder {
    Config::builder()
        .strategy(strategy)
        .cores(Cores::Count(nz(1)))
        .shutdown_grace(LONG_GRACE)
}

const LONG_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The run shut down well before [`LONG_GRACE`]: nothing was left counted in flight.
fn assert_nothing_left_in_flight(o: &Outcome, what: &str) {
    assert!(
        o.shutdown_took < LONG_GRACE - std::time::Duration::from_secs(10),
        "{what}: shutdown took {:?}",
        o.shutdown_took
    );
}

fn cpu_count() -> usize {
    core_affinity::get_core_ids().map_or(1, |v| v.len()).max(1)
}

fn json_event(i: u64) -> Bytes {
    // Sizes vary so reads split at different places.
    let pad = "p".repeat((i as usize * 37) % 3000);
    Bytes::from(format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn echo(exec: Exec) -> impl FnOnce(Config) -> Result<(), lambda_tpc::Error> + Send + 'static {
    move |config| {
        run_on(exec, config, |ev: LambdaEvent<Value>| async move {
            Ok::<_, BoxError>(ev.payload)
        })
    }
}

fn assert_clean(o: &Outcome, expected_ok: u64, expected_err: u64, what: &str) {
    assert!(o.done, "{what}: run did not finish: {:?}", o.ledger);
    assert!(o.result.is_ok(), "{what}: {:?}", o.result);
    let l = &o.ledger;
    assert_eq!(l.answered_ok, expected_ok, "{what}: {l:?}");
    assert_eq!(l.answered_error, expected_err, "{what}: {l:?}");
    assert_eq!(l.lost(), 0, "{what}: {l:?}");
    assert_eq!(l.duplicates, 0, "{what}: {l:?}");
    assert_eq!(l.unknown_ids, 0, "{what}: {l:?}");
    assert_eq!(l.mismatched, 0, "{what}: {l:?}");
    assert_eq!(l.invocation_id_violations, 0, "{what}: {l:?}");
    assert_eq!(l.bad_requests, 0, "{what}: {l:?}");
}

#[test]
fn every_invocation_answered_once_with_its_body() {
    const N: u64 = 600;
    for exec in EXECS {
        for strategy in strategies() {
            // The multi-thread shim is one logical core whatever the CPU count.
            let core_counts = if exec == Exec::TokioMultiThread {
                1..=1
            } else {
                1..=cpu_count().min(4)
            };
            for cores in core_counts {
                for pipelining in [false, true] {
                    let what =
                        format!("{exec:?}, {strategy}, {cores} core(s), pipelining {pipelining}");
                    let o = run_against_sim(
                        Simulator::builder()
                            .max_concurrency(8)
                            .invocation_ids(true)
                            .tenant_id(Some("tenant-1".into()))
                            .events(EventSource::from_fn(N, json_event))
                            .validator(same_json),
                        Config::builder()
                            .strategy(strategy)
                            .cores(Cores::Count(nz(cores)))
                            .pipelining(pipelining)
                            .shutdown_grace(LONG_GRACE),
                        echo(exec),
                    );
                    assert_clean(&o, N, 0, &what);
                    // A post whose reply is read later (deferred: by the next invocation
                    // or a settle tick; pipelined: by the next invocation) does not hold
                    // the shutdown for replies that may never be read.
                    assert_nothing_left_in_flight(&o, &what);
                    let report = o.report.expect("report");
                    assert_eq!(report.invocations(), N, "{what}");
                    let responses: u64 = report.cores.iter().map(|c| c.responses).sum();
                    assert_eq!(responses, N, "{what}: every answer counted: {report:?}");
                    assert_eq!(report.cores.len(), cores, "{what}: every core reported");
                    // The simulator hands out to parked polls oldest first, so every core's
                    // polls get work.
                    assert!(
                        report.cores.iter().all(|c| c.invocations > 0),
                        "{what}: every core served: {report:?}"
                    );
                    let mut cpus: Vec<usize> = report.cores.iter().map(|c| c.cpu).collect();
                    cpus.sort_unstable();
                    cpus.dedup();
                    assert_eq!(cpus.len(), cores, "{what}: one core per CPU");
                    if exec == Exec::CompioEpoll {
                        assert!(
                            report.cores.iter().all(|c| c.driver == "epoll"),
                            "{what}: {report:?}"
                        );
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Job {
    i: u64,
}

#[derive(Serialize)]
struct Done {
    i: u64,
}

/// Every third invocation fails, every third panics (half of those before the future
/// exists); each is answered with the right error type and the core keeps serving.
#[test]
fn errors_and_panics_are_posted_and_the_core_keeps_serving() {
    const N: u64 = 300;
    for (exec, strategy) in execs_and_strategies() {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(6)
                .events(EventSource::from_fn(N, |i| {
                    Bytes::from(format!(r#"{{"i":{i}}}"#))
                })),
            Config::builder()
                .strategy(strategy)
                .cores(Cores::Count(nz(1))),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<Job>| {
                    let i = ev.payload.i;
                    if i % 6 == 5 {
                        panic!("sync panic {i}");
                    }
                    async move {
                        match i % 3 {
                            0 => Ok(Done { i }),
                            1 => Err(format!("failed {i}")),
                            _ => panic!("async panic {i}"),
                        }
                    }
                })
            },
        );
        let what = format!("{exec:?}, {strategy}");
        assert_clean(&o, N / 3, 2 * N / 3, &what);
        let panics = o
            .errors
            .iter()
            .filter(|e| ty(e) == ERROR_TYPE_HANDLER_PANIC)
            .count();
        let failures = o
            .errors
            .iter()
            .filter(|e| ty(e) == "alloc::string::String" && msg(e).starts_with("failed "))
            .count();
        assert_eq!(panics as u64, N / 3, "{what}");
        assert_eq!(failures as u64, N / 3, "{what}");
        assert!(o.errors.iter().any(|e| msg(e) == "sync panic 5"), "{what}");
        assert!(o.errors.iter().any(|e| msg(e) == "async panic 2"), "{what}");
        let report = o.report.expect("report");
        assert_eq!(report.cores[0].panics, N / 3, "{what}");
        assert_eq!(report.errors(), 2 * N / 3, "{what}");
    }
}

/// A response whose `Serialize` panics.
struct PanicsWhenSerialized(u64);

impl Serialize for PanicsWhenSerialized {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("serialize panic {}", self.0)
    }
}

/// An error whose conversion into a `Diagnostic` panics.
#[derive(Debug)]
struct PanicsWhenConverted(u64);

impl From<PanicsWhenConverted> for lambda_tpc::Diagnostic {
    fn from(e: PanicsWhenConverted) -> Self {
        panic!("conversion panic {}", e.0)
    }
}

/// User code that runs after the handler returned (serializing its response, converting
/// its error) may panic too: the invocation is answered with `Runtime.HandlerPanic`, the
/// core keeps serving, and nothing stays in flight (the run shuts down at once).
#[test]
fn panics_after_the_handler_returned_are_answered_too() {
    const N: u64 = 60;
    for (exec, strategy) in execs_and_strategies() {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(4)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
            one_core_long_grace(strategy),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                    let i = ev.payload;
                    match i % 3 {
                        0 => Ok(Either::Ok(i)),
                        1 => Ok(Either::Panics(PanicsWhenSerialized(i))),
                        _ => Err(PanicsWhenConverted(i)),
                    }
                })
            },
        );
        let what = format!("{exec:?}, {strategy}");
        assert_clean(&o, N / 3, 2 * N / 3, &what);
        assert!(
            o.errors.iter().all(|e| ty(e) == ERROR_TYPE_HANDLER_PANIC),
            "{what}: {:?}",
            o.errors
        );
        assert!(
            o.errors.iter().any(|e| msg(e) == "serialize panic 1"),
            "{what}"
        );
        assert!(
            o.errors.iter().any(|e| msg(e) == "conversion panic 2"),
            "{what}"
        );
        // Shutdown waits for in-flight invocations (up to the 30 s grace): a leaked one
        // would hold it for the whole grace period.
        assert_nothing_left_in_flight(&o, &what);
        let report = o.report.expect("report");
        assert_eq!(report.cores[0].panics, 2 * N / 3, "{what}");
    }
}

/// A response that serializes fine and panics when dropped.
#[derive(Serialize)]
struct PanicsWhenDropped(u64);

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop panic {}", self.0)
        }
    }
}

/// A response whose `Drop` panics (after it was serialized) is still sent: the panic is
/// counted, the invocation answered, the core keeps serving.
#[test]
fn a_response_that_panics_when_dropped_is_still_sent() {
    const N: u64 = 30;
    for exec in EXECS {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
            Config::builder().cores(Cores::Count(nz(1))),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                    Ok::<_, BoxError>(PanicsWhenDropped(ev.payload))
                })
            },
        );
        let what = format!("{exec:?}");
        assert_clean(&o, N, 0, &what);
        let report = o.report.expect("report");
        assert_eq!(report.cores[0].panics, N, "{what}");
    }
}

/// A handler future that is ready at once with its payload and panics when dropped
/// (after it completed, through the field it holds): the drop of a handler's future is
/// user code too.
struct ReadyThenPanicsWhenDropped(PanicsWhenDropped);

impl std::future::Future for ReadyThenPanicsWhenDropped {
    type Output = Result<u64, BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(self.0.0))
    }
}

/// A handler whose future panics when it is dropped: after it completed (the answer is
/// the handler's own, and the panic is counted), or when it is cancelled at the deadline
/// (answered `Runtime.DeadlineExceeded`). Either way the invocation is answered, the core
/// keeps serving, and nothing stays in flight.
#[test]
fn a_handler_future_that_panics_when_dropped_is_still_answered() {
    use lambda_tpc::api::ERROR_TYPE_DEADLINE_EXCEEDED;
    const N: u64 = 20;
    for (exec, strategy) in execs_and_strategies() {
        let what = format!("{exec:?}, {strategy}, completed");
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
            one_core_long_grace(strategy),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| {
                    ReadyThenPanicsWhenDropped(PanicsWhenDropped(ev.payload))
                })
            },
        );
        assert_clean(&o, N, 0, &what);
        assert_nothing_left_in_flight(&o, &what);
        assert_eq!(o.report.expect("report").cores[0].panics, N, "{what}");

        let what = format!("{exec:?}, {strategy}, cancelled");
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .deadline(std::time::Duration::from_millis(200))
                .events(EventSource::from_fn(4, |i| Bytes::from(i.to_string()))),
            one_core_long_grace(strategy),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                    let _bomb = PanicsWhenDropped(ev.payload);
                    std::future::pending::<()>().await;
                    Ok::<_, BoxError>(ev.payload)
                })
            },
        );
        assert_clean(&o, 0, 4, &what);
        assert!(
            o.errors
                .iter()
                .all(|e| ty(e) == ERROR_TYPE_DEADLINE_EXCEEDED),
            "{what}: {:?}",
            o.errors
        );
        assert_nothing_left_in_flight(&o, &what);
        let report = o.report.expect("report");
        assert_eq!(report.cores[0].panics, 4, "{what}");
        assert_eq!(report.cores[0].deadlines_exceeded, 4, "{what}");
    }
}

/// A payload whose `Deserialize` panics for odd numbers.
struct PanicsWhenDeserialized(u64);

impl<'de> Deserialize<'de> for PanicsWhenDeserialized {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n % 2 == 1 {
            panic!("deserialize panic {n}")
        }
        Ok(PanicsWhenDeserialized(n))
    }
}

/// The payload type's `Deserialize` is user code: a panic there is answered with
/// `Runtime.HandlerPanic` without calling the handler, and the core keeps serving.
#[test]
fn a_payload_whose_deserialize_panics_is_answered() {
    const N: u64 = 40;
    for (exec, strategy) in execs_and_strategies() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
            one_core_long_grace(strategy),
            move |config| {
                run_on(
                    exec,
                    config,
                    move |ev: LambdaEvent<PanicsWhenDeserialized>| {
                        let calls = seen.clone();
                        async move {
                            calls.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, BoxError>(ev.payload.0)
                        }
                    },
                )
            },
        );
        let what = format!("{exec:?}, {strategy}");
        assert_clean(&o, N / 2, N / 2, &what);
        assert!(
            o.errors
                .iter()
                .all(|e| ty(e) == ERROR_TYPE_HANDLER_PANIC
                    && msg(e).starts_with("deserialize panic")),
            "{what}: {:?}",
            o.errors
        );
        assert_eq!(calls.load(Ordering::Relaxed) as u64, N / 2, "{what}");
        assert_nothing_left_in_flight(&o, &what);
        assert_eq!(o.report.expect("report").cores[0].panics, N / 2, "{what}");
    }
}

/// Either a plain number or a response that panics when serialized.
#[derive(Serialize)]
#[serde(untagged)]
enum Either {
    Ok(u64),
    Panics(PanicsWhenSerialized),
}

/// A payload that does not deserialize is answered with `Runtime.UnmarshalError` and
/// the handler is never called for it.
#[test]
fn undeserializable_payloads_are_errors_without_calling_the_handler() {
    const N: u64 = 200;
    for (exec, strategy) in execs_and_strategies() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(4)
                .events(EventSource::from_fn(N, |i| {
                    if i % 4 == 0 {
                        Bytes::from_static(br#"{"i":"not a number"}"#)
                    } else {
                        Bytes::from(format!(r#"{{"i":{i}}}"#))
                    }
                })),
            Config::builder().strategy(strategy),
            move |config| {
                run_on(exec, config, move |ev: LambdaEvent<Job>| {
                    c.fetch_add(1, Ordering::Relaxed);
                    async move { Ok::<_, BoxError>(Done { i: ev.payload.i }) }
                })
            },
        );
        assert_clean(&o, N * 3 / 4, N / 4, &format!("{exec:?}, {strategy}"));
        assert_eq!(calls.load(Ordering::Relaxed) as u64, N * 3 / 4);
        assert!(o.errors.iter().all(|e| ty(e) == ERROR_TYPE_DESERIALIZE));
        assert!(
            msg(&o.errors[0]).contains("invalid type"),
            "{:?}",
            o.errors[0]
        );
    }
}

/// Events of 1 MiB and 5 MiB echo intact; a response over the configured limit is not
/// sent and `Function.ResponseSizeTooLarge` is posted instead; an event over the
/// configured limit is answered with `Runtime.EventTooLarge`.
#[test]
fn large_bodies() {
    let big = |size: usize| {
        let mut s = String::from("\"");
        s.push_str(&"x".repeat(size));
        s.push('"');
        Bytes::from(s)
    };
    for (exec, strategy) in execs_and_strategies() {
        let what = format!("{exec:?}, {strategy}");
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(6, move |i| {
                    big(if i % 2 == 0 { 1 << 20 } else { 5 << 20 })
                }))
                .validator(|e, r| e == r),
            Config::builder().strategy(strategy),
            echo(exec),
        );
        assert_clean(&o, 6, 0, &what);

        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(10, move |i| {
                    big(if i % 2 == 0 { 10 } else { 5000 })
                })),
            Config::builder()
                .strategy(strategy)
                .max_response_bytes(1000),
            echo(exec),
        );
        assert_clean(&o, 5, 5, &what);
        assert!(
            o.errors
                .iter()
                .all(|e| ty(e) == ERROR_TYPE_RESPONSE_TOO_LARGE),
            "{:?}",
            o.errors
        );

        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(10, move |i| {
                    big(if i % 2 == 0 { 10 } else { 5000 })
                })),
            Config::builder().strategy(strategy).max_event_bytes(1000),
            echo(exec),
        );
        assert_clean(&o, 5, 5, &what);
        assert!(
            o.errors.iter().all(|e| ty(e) == ERROR_TYPE_EVENT_TOO_LARGE),
            "{:?}",
            o.errors
        );
    }
}

/// A handler error whose message is far over the 1 MiB the API takes in an `/error` body
/// (and grows six-fold when escaped) is still answered: the message is cut to fit, not
/// refused with 413 and lost.
#[test]
fn an_error_message_over_the_error_body_limit_is_cut_to_fit() {
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(2)
            .events(EventSource::repeat(&b"3000000"[..], 2)),
        Config::builder(),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<usize>| async move {
                    Err::<(), _>(format!("big\u{1}{}", "\"".repeat(ev.payload)))
                },
            )
        },
    );
    assert_clean(&o, 0, 2, "3 MB error message");
    assert_eq!(o.ledger.too_large, 0, "nothing oversized reached the API");
    for e in &o.errors {
        assert!(msg(e).starts_with("big\u{1}\"\""), "{:.20}", msg(e));
        assert!(msg(e).len() > 1000, "cut, not emptied: {}", msg(e).len());
    }
}

/// The default response limit is the Runtime API's own: a 7 MB result is replaced by an
/// error before anything is sent.
#[test]
fn response_over_the_api_limit() {
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(2)
            .events(EventSource::repeat(&b"7000000"[..], 3)),
        Config::builder(),
        |config| {
            run_on(
                Exec::TokioMultiThread,
                config,
                |ev: LambdaEvent<usize>| async move { Ok::<_, BoxError>("y".repeat(ev.payload)) },
            )
        },
    );
    assert_clean(&o, 0, 3, "7 MB response (tokio shim)");
    assert!(
        o.errors
            .iter()
            .all(|e| ty(e) == ERROR_TYPE_RESPONSE_TOO_LARGE)
    );
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(2)
            .events(EventSource::repeat(&b"7000000"[..], 3)),
        Config::builder(),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<usize>| async move { Ok::<_, BoxError>("y".repeat(ev.payload)) },
            )
        },
    );
    assert_clean(&o, 0, 3, "7 MB response");
    assert_eq!(o.ledger.too_large, 0, "nothing oversized reached the API");
    assert!(
        o.errors
            .iter()
            .all(|e| ty(e) == ERROR_TYPE_RESPONSE_TOO_LARGE)
    );
}

/// The per-core factory runs on each core's own thread and may build `Rc` state.
#[test]
fn per_core_factory_builds_local_state() {
    const N: u64 = 400;
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(8)
            .events(EventSource::repeat(&b"{}"[..], N)),
        Config::builder(),
        |config| {
            lambda_tpc::compio::run_per_core(config, |core| {
                let count = Rc::new(Cell::new(0u64));
                let index = core.index;
                Ok::<_, BoxError>(move |_ev: LambdaEvent<Value>| {
                    let count = count.clone();
                    async move {
                        count.set(count.get() + 1);
                        Ok::<_, BoxError>(serde_json::json!({ "core": index, "n": count.get() }))
                    }
                })
            })
        },
    );
    assert_clean(&o, N, 0, "per core");
}

/// A factory that fails on any core posts `/runtime/init/error`, no invocation is taken,
/// and the run returns an init error.
#[test]
fn failing_factory_posts_init_error() {
    init_error_case(false);
    init_error_case(true);
}

fn init_error_case(panics: bool) {
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(4)
        .events(EventSource::repeat(&b"{}"[..], 10))
        .start()
        .expect("sim");
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(nz(4))
        .build_with(|_| None)
        .expect("config");
    let last = config.plan().len() - 1;
    let result = lambda_tpc::compio::run_per_core(config, move |core| {
        if core.index == last {
            if panics {
                panic!("factory panicked");
            }
            return Err("no database".to_owned());
        }
        Ok(|ev: LambdaEvent<Value>| async move { Ok::<_, BoxError>(ev.payload) })
    });
    let err = result.expect_err("init must fail");
    assert!(err.is_init(), "{err}");
    let init = sim.init_error().expect("init error posted");
    let expected = if panics {
        "factory panicked"
    } else {
        "no database"
    };
    assert_eq!(msg(&init), expected);
    let ledger = sim.shutdown();
    assert_eq!(ledger.init_errors, 1);
    assert_eq!(
        ledger.handed_out, 0,
        "no invocation taken after a failed init"
    );
}

/// A runtime started from a thread whose affinity mask holds one CPU uses only that CPU.
#[test]
fn affinity_mask_restricts_the_cores() {
    let Some(ids) = core_affinity::get_core_ids() else {
        panic!("cannot read the affinity mask");
    };
    let only = *ids.last().expect("at least one CPU");
    let handle = std::thread::spawn(move || {
        assert!(core_affinity::set_for_current(only));
        let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let s = seen.clone();
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(8)
                .events(EventSource::repeat(&b"1"[..], 200)),
            Config::builder(),
            move |config| {
                assert_eq!(config.cpus(), &[only.id]);
                lambda_tpc::compio::run_concurrent_with_config(
                    config,
                    move |_ev: LambdaEvent<Value>| {
                        // SAFETY: sched_getcpu has no preconditions.
                        let cpu = unsafe { libc::sched_getcpu() };
                        if let Ok(mut set) = s.lock() {
                            set.insert(cpu);
                        }
                        async move { Ok::<_, BoxError>(cpu) }
                    },
                )
            },
        );
        assert_clean(&o, 200, 0, "affinity");
        let report = o.report.expect("report");
        assert!(report.cores.iter().all(|c| c.cpu == only.id), "{report:?}");
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![only.id as i32]);
    });
    handle.join().expect("test thread");
}

/// Bad configuration values are clear errors naming the variable.
#[test]
fn bad_environment_values_are_refused() {
    let cases = [
        ("AWS_LAMBDA_RUNTIME_API", "not-an-endpoint"),
        ("AWS_LAMBDA_MAX_CONCURRENCY", "lots"),
        ("AWS_LAMBDA_MAX_CONCURRENCY", "0"),
        ("LAMBDA_TPC_CORES", "9999"),
        ("LAMBDA_TPC_STRATEGY", "fastest"),
        ("LAMBDA_TPC_POLLERS_PER_CORE", "-1"),
        ("LAMBDA_TPC_DRIVER", "kqueue"),
    ];
    for (var, value) in cases {
        let env = move |k: &str| match k {
            _ if k == var => Some(value.to_owned()),
            "AWS_LAMBDA_RUNTIME_API" => Some("127.0.0.1:9001".to_owned()),
            _ => None,
        };
        let err = Config::builder().build_with(env).expect_err(var);
        assert!(err.is_config());
        assert_eq!(err.config_var(), Some(var));
        let msg = err.to_string();
        assert!(msg.contains(var), "{msg}");
    }
    let err = Config::builder()
        .build_with(|_| None)
        .expect_err("missing runtime API");
    assert!(
        err.to_string()
            .contains("AWS_LAMBDA_RUNTIME_API is not set")
            || err.to_string().contains("AWS_LAMBDA_RUNTIME_API: not set"),
        "{err}"
    );
}

/// The runtime API may be given with a scheme and a path prefix.
#[test]
fn runtime_api_with_scheme_and_prefix() {
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(2)
        .path_prefix("/emulator")
        .events(EventSource::repeat(&b"[1,2]"[..], 50))
        .validator(|e, r| e == r)
        .start()
        .expect("sim");
    let control = lambda_tpc::Control::new();
    let config = Config::builder()
        .runtime_api(format!("http://{}/emulator/", sim.runtime_api()))
        .max_concurrency(nz(2))
        .control(control.clone())
        .build_with(|_| None)
        .expect("config");
    let t = std::thread::spawn(move || echo(Exec::Compio)(config));
    assert!(sim.wait_until_done(common::RUN_TIMEOUT));
    control.shutdown();
    t.join().expect("join").expect("run ok");
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.mismatched, l.bad_requests), (50, 0, 0));
}

/// An executor whose runtime panics as it starts (the core thread dies before reporting)
/// or as it finishes, after serving (standing in for a bug of ours outside any handler).
#[derive(Clone, Default)]
struct PanickingExecutor {
    at_start: bool,
    inner: lambda_tpc::compio::CompioExecutor,
}

impl lambda_tpc::Executor for PanickingExecutor {
    type Stream = <lambda_tpc::compio::CompioExecutor as lambda_tpc::Executor>::Stream;

    fn block_on<F: std::future::Future>(&self, future: F) -> std::io::Result<F::Output> {
        if self.at_start {
            panic!("the executor could not start")
        }
        let _served = self.inner.block_on(future)?;
        panic!("the executor failed after serving")
    }

    fn driver_name(&self) -> &'static str {
        self.inner.driver_name()
    }

    fn spawn<F: std::future::Future<Output = ()> + 'static>(&self, future: F) {
        self.inner.spawn(future)
    }

    fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> {
        self.inner.connect(addr)
    }

    fn sleep(&self, d: std::time::Duration) -> impl std::future::Future<Output = ()> {
        self.inner.sleep(d)
    }
}

/// A core thread that dies before saying whether it started is a failed start (posted to
/// `/runtime/init/error`), not a run that returns `Ok` having served nothing.
#[test]
fn a_core_thread_dying_at_start_fails_the_run() {
    let o = run_against_sim(
        Simulator::builder().events(EventSource::from_fn(1, |_| Bytes::from_static(b"1"))),
        Config::builder().cores(Cores::Count(nz(1))),
        |config| {
            lambda_tpc::run_concurrent_with_executor(
                config,
                |ev: LambdaEvent<u64>| async move { Ok::<_, BoxError>(ev.payload) },
                PanickingExecutor {
                    at_start: true,
                    ..Default::default()
                },
            )
        },
    );
    assert_eq!(
        o.ledger.init_errors, 1,
        "the reason was posted to /init/error"
    );
    let err = o.result.expect_err("the start failed");
    assert!(err.to_string().contains("start-up"), "{err}");
}

/// The tokio shim's run is a future: dropping it (a timeout, a `select!`) stops the run
/// instead of leaving its poll loops serving in the background.
#[test]
fn dropping_the_tokio_shims_future_shuts_it_down() {
    let sim = Simulator::builder()
        .events(EventSource::from_fn(1_000_000, |i| {
            Bytes::from(i.to_string())
        }))
        .start()
        .expect("sim");
    let control = lambda_tpc::Control::new();
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(nz(2))
        .handle_signals(false)
        .control(control.clone())
        .build_with(|_| None)
        .expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let timed_out = rt.block_on(async {
        let run = lambda_tpc::tokio::run_concurrent_with_config(
            config,
            |ev: LambdaEvent<u64>| async move { Ok::<_, BoxError>(ev.payload) },
        );
        tokio::time::timeout(std::time::Duration::from_millis(300), run)
            .await
            .is_err()
    });
    assert!(timed_out, "the run ended on its own");
    assert!(control.is_shutting_down(), "dropped, but not shut down");
    // The poll loops are tasks of the caller's runtime, which is still alive here: a loop
    // parked on `/next` serves the invocation routed to it and ends, so hand-outs stop.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let settled = sim.ledger().handed_out;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let later = sim.ledger().handed_out;
    assert!(
        later - settled <= 2,
        "the loops kept polling: {settled} then {later} handed out"
    );
    drop(rt);
    sim.shutdown();
}

/// A core thread that ends in a panic while serving makes the run return an error that
/// says so, not `Ok` as if the run had been clean.
#[test]
fn a_core_thread_panicking_while_serving_is_reported() {
    const N: u64 = 20;
    let o = run_against_sim(
        Simulator::builder().events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
        Config::builder().cores(Cores::Count(nz(1))),
        |config| {
            lambda_tpc::run_concurrent_with_executor(
                config,
                |ev: LambdaEvent<u64>| async move { Ok::<_, BoxError>(ev.payload) },
                PanickingExecutor::default(),
            )
        },
    );
    assert_eq!((o.ledger.answered_ok, o.ledger.lost()), (N, 0));
    let err = o.result.expect_err("a core failed");
    assert!(err.is_core_failure(), "{err}");
}
