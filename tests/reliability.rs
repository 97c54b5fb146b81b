//! Deadlines, graceful shutdown, the shutdown hook, stall detection, blocking work moved
//! off the core, and the rayon path.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use common::{EXECS, Exec, nz, run_against_sim, run_compio_on, run_on};
use lambda_tpc::api::ERROR_TYPE_DEADLINE_EXCEEDED;
use lambda_tpc::sim::{Arrival, EventSource, Simulator, SimulatorBuilder};
use lambda_tpc::{BoxError, Config, Control, Cores, LambdaEvent, Strategy};
use serde_json::Value;

fn strategies() -> [Strategy; 3] {
    [
        Strategy::WorkerPerSlot,
        Strategy::Unbounded,
        Strategy::Semaphore { permits: nz(2) },
    ]
}

/// A one-core configuration for `sim` with `max_concurrency`, environment ignored, and the
/// control that stops it.
fn one_core_config(sim: &Simulator, max_concurrency: usize) -> (Control, Config) {
    let (control, builder) = one_core_builder(sim.runtime_api(), max_concurrency);
    (control, builder.build_with(|_| None).expect("config"))
}

/// [`one_core_config`] for the Runtime API at `api`, still to be built (for settings of
/// the test's own), and the control that stops it.
fn one_core_builder(api: &str, max_concurrency: usize) -> (Control, lambda_tpc::ConfigBuilder) {
    let control = Control::new();
    let builder = Config::builder()
        .runtime_api(api)
        .max_concurrency(nz(max_concurrency))
        .cores(Cores::Count(nz(1)))
        .control(control.clone());
    (control, builder)
}

/// Events `{"sleep_ms": n}`: the handler sleeps that long on its runtime's timer.
fn sleepy_events(n: u64, every: u64, long_ms: u64) -> EventSource {
    EventSource::from_fn(n, move |i| {
        let ms = if i % every == 0 { long_ms } else { 0 };
        Bytes::from(format!(r#"{{"sleep_ms":{ms}}}"#))
    })
}

fn sleep_ms(v: &Value) -> u64 {
    v.get("sleep_ms").and_then(Value::as_u64).unwrap_or(0)
}

/// Runs a handler that sleeps `sleep_ms` with the executor's own timer.
fn run_sleeper(exec: Exec, config: Config) -> Result<(), lambda_tpc::Error> {
    match exec {
        _ if exec.is_compio() => run_compio_on(exec, config, |ev: LambdaEvent<Value>| async move {
            compio::time::sleep(Duration::from_millis(sleep_ms(&ev.payload))).await;
            Ok::<_, BoxError>(ev.payload)
        }),
        _ => run_on(exec, config, |ev: LambdaEvent<Value>| async move {
            tokio::time::sleep(Duration::from_millis(sleep_ms(&ev.payload))).await;
            Ok::<_, BoxError>(ev.payload)
        }),
    }
}

/// A handler still running at its deadline is cancelled, `Runtime.DeadlineExceeded` is
/// posted, and its slot serves again; with enforcement off it runs to completion.
#[test]
fn deadline_cancels_a_stuck_handler() {
    for exec in EXECS {
        for strategy in strategies() {
            let what = format!("{exec:?}, {strategy}");
            let o = run_against_sim(
                Simulator::builder()
                    .max_concurrency(2)
                    .deadline(Duration::from_millis(300))
                    .events(sleepy_events(12, 4, 60_000)),
                Config::builder().strategy(strategy),
                move |config| run_sleeper(exec, config),
            );
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            assert_eq!(o.ledger.answered_ok, 9, "{what}: {:?}", o.ledger);
            assert_eq!(o.ledger.answered_error, 3, "{what}: {:?}", o.ledger);
            assert_eq!(o.ledger.lost(), 0, "{what}");
            assert!(
                o.errors
                    .iter()
                    .all(|e| e.error_type.as_deref() == Some(ERROR_TYPE_DEADLINE_EXCEEDED))
            );
            let report = o.report.expect("report");
            assert_eq!(
                report
                    .cores
                    .iter()
                    .map(|c| c.deadlines_exceeded)
                    .sum::<u64>(),
                3,
                "{what}"
            );
        }
    }
    // Enforcement off: the 400 ms handler finishes past its 100 ms deadline and its
    // (late) answer is still posted.
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(2)
            .deadline(Duration::from_millis(100))
            .events(sleepy_events(2, 2, 400)),
        Config::builder().enforce_deadline(false),
        |config| run_sleeper(Exec::Compio, config),
    );
    assert_eq!(
        (o.ledger.answered_ok, o.ledger.answered_error),
        (2, 0),
        "{:?}",
        o.ledger
    );
}

/// Shutdown stops taking invocations, lets the in-flight ones finish, runs the hook once,
/// and the run returns `Ok`.
#[test]
fn graceful_shutdown_finishes_in_flight_work_and_runs_the_hook() {
    for exec in EXECS {
        common::init_tracing();
        let sim = Simulator::builder()
            .max_concurrency(4)
            .events(sleepy_events(1000, 1, 300))
            .start()
            .expect("sim");
        let control = Control::new();
        let hook_runs = Arc::new(AtomicUsize::new(0));
        let h = hook_runs.clone();
        let config = Config::builder()
            .runtime_api(sim.runtime_api())
            .max_concurrency(nz(4))
            .control(control.clone())
            .on_shutdown(move || {
                h.fetch_add(1, Ordering::SeqCst);
            })
            .build_with(|_| None)
            .expect("config");
        let runtime = thread::spawn(move || run_sleeper(exec, config));
        assert!(
            common::wait(|| sim.ledger().in_flight == 4),
            "{exec:?}: 4 in flight"
        );
        control.shutdown();
        let result = runtime.join().expect("join");
        assert!(result.is_ok(), "{exec:?}: {result:?}");
        let ledger = sim.shutdown();
        assert_eq!(
            ledger.lost(),
            0,
            "{exec:?}: in-flight work finished: {ledger:?}"
        );
        assert!(
            ledger.handed_out < 1000,
            "{exec:?}: stopped taking work: {ledger:?}"
        );
        assert_eq!(ledger.answered_ok, ledger.handed_out, "{exec:?}");
        assert_eq!(
            hook_runs.load(Ordering::SeqCst),
            1,
            "{exec:?}: hook ran once"
        );
    }
}

/// When the grace period runs out, the run still returns, and what did not finish is
/// visible as unanswered in the simulator's ledger.
#[test]
fn shutdown_grace_period_is_bounded() {
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(2)
        .events(sleepy_events(10, 1, 60_000))
        .start()
        .expect("sim");
    let control = Control::new();
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(nz(2))
        .enforce_deadline(false)
        .shutdown_grace(Duration::from_millis(200))
        .control(control.clone())
        .build_with(|_| None)
        .expect("config");
    let runtime = thread::spawn(move || run_sleeper(Exec::Compio, config));
    assert!(common::wait(|| sim.ledger().in_flight == 2));
    let asked = std::time::Instant::now();
    control.shutdown();
    assert!(runtime.join().expect("join").is_ok());
    // The configured grace, not the 5 s default: a bound on behaviour with a wide margin
    // for a loaded machine, not a speed target.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let ledger = sim.shutdown();
    assert_eq!((ledger.handed_out, ledger.lost()), (2, 2), "{ledger:?}");
}

/// Durations set to `Duration::MAX` ("forever") work as forever: nothing overflows when
/// they are added to the clock (the shutdown grace is a timer on each core, the stall
/// threshold is compared with the clock), every invocation is answered, and the run
/// returns with its report.
#[test]
fn forever_durations_do_not_overflow() {
    const N: u64 = 50;
    for exec in EXECS {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(sleepy_events(N, 1, 0)),
            Config::builder()
                .shutdown_grace(Duration::MAX)
                .stall_threshold(Some(Duration::MAX))
                .unreachable_timeout(Some(Duration::MAX)),
            move |config| run_sleeper(exec, config),
        );
        assert!(o.done && o.result.is_ok(), "{exec:?}: {:?}", o.result);
        assert_eq!((o.ledger.answered_ok, o.ledger.lost()), (N, 0), "{exec:?}");
        assert!(o.report.is_some(), "{exec:?}: every core reported");
    }
}

/// Runs a handler that blocks its core's thread for a second on events `true` (and
/// answers `false` at once), on one core with a 100 ms stall threshold.
fn run_blocking_handler(sim: SimulatorBuilder) -> common::Outcome {
    run_against_sim(
        sim,
        Config::builder()
            .cores(Cores::Count(nz(1)))
            .stall_threshold(Some(Duration::from_millis(100))),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<bool>| async move {
                    if ev.payload {
                        // The footgun: blocking the core's thread.
                        std::thread::sleep(Duration::from_millis(1000));
                    }
                    Ok::<_, BoxError>(ev.payload)
                },
            )
        },
    )
}

/// A handler that blocks its thread is named by the slow-poll check and the watchdog
/// counts the stall; the other invocations are all answered.
#[test]
fn blocking_handler_is_detected() {
    let o = run_blocking_handler(Simulator::builder().max_concurrency(4).events(
        EventSource::from_fn(40, |i| Bytes::from(if i == 5 { "true" } else { "false" })),
    ));
    assert_eq!(o.ledger.answered_ok, 40);
    let report = o.report.expect("report");
    assert_eq!(report.cores[0].slow_polls, 1, "{report:?}");
    assert!(
        report.cores[0].stalls >= 1,
        "watchdog saw the stall: {report:?}"
    );
}

/// A handler that blocks as soon as it starts on a core that was idle (its ticker asleep,
/// the heartbeat marked idle) is still seen by the watchdog: the invocation stamps the
/// heartbeat itself before its handler runs.
#[test]
fn blocking_handler_on_an_idle_core_is_detected() {
    let o = run_blocking_handler(
        Simulator::builder()
            .max_concurrency(1)
            // 250 ms apart: the core settles its last post and goes idle in between.
            .arrival(Arrival::Paced { per_sec: 4.0 })
            .events(EventSource::from_fn(3, |i| {
                Bytes::from(if i == 2 { "true" } else { "false" })
            })),
    );
    assert_eq!(o.ledger.answered_ok, 3);
    let report = o.report.expect("report");
    assert!(
        report.cores[0].stalls >= 1,
        "watchdog saw the stall: {report:?}"
    );
}

/// Blocking work moved off the core with `spawn_blocking` does not stall the other
/// invocations on that core.
#[test]
fn spawn_blocking_keeps_the_core_serving() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(4)
            .events(EventSource::from_fn(200, |i| Bytes::from(i.to_string()))),
        Config::builder().cores(Cores::Count(nz(1))),
        move |config| {
            lambda_tpc::compio::run_concurrent_with_config(config, move |ev: LambdaEvent<u64>| {
                let order = o2.clone();
                async move {
                    if ev.payload == 0 {
                        lambda_tpc::compio::spawn_blocking(|| {
                            std::thread::sleep(Duration::from_millis(500))
                        })
                        .await?;
                    }
                    if let Ok(mut o) = order.lock() {
                        o.push(ev.payload);
                    }
                    Ok::<_, BoxError>(ev.payload)
                }
            })
        },
    );
    assert_eq!(o.ledger.answered_ok, 200);
    let order = order.lock().map(|o| o.clone()).unwrap_or_default();
    let blocked_at = order
        .iter()
        .position(|&i| i == 0)
        .expect("invocation 0 answered");
    assert!(
        blocked_at > 20,
        "other invocations were served while 0 blocked: position {blocked_at}"
    );
}

/// The rayon path runs CPU-heavy handlers on several pool threads at once while the I/O
/// core keeps taking invocations beyond the pool's size.
#[test]
fn rayon_runs_cpu_work_in_parallel_while_polling_continues() {
    common::init_tracing();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(2);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool"),
    );
    let sim = Simulator::builder()
        .max_concurrency(8)
        .events(EventSource::repeat(&b"30"[..], 60))
        .start()
        .expect("sim");
    let (control, config) = one_core_config(&sim, 8);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let runtime = thread::spawn(move || {
        lambda_tpc::rayon::run_concurrent_with_pool(config, pool, move |ev: LambdaEvent<u64>| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            // Real CPU work for about `payload` milliseconds.
            let until = std::time::Instant::now() + Duration::from_millis(ev.payload);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(x)
        })
    });
    let queued_beyond_pool = Arc::new(AtomicBool::new(false));
    let done = common::wait(|| {
        let l = sim.ledger();
        if l.in_flight as usize > threads {
            queued_beyond_pool.store(true, Ordering::SeqCst);
        }
        l.answered() == 60
    });
    control.shutdown();
    assert!(runtime.join().expect("join").is_ok());
    let ledger = sim.shutdown();
    assert!(done, "{ledger:?}");
    assert_eq!((ledger.answered_ok, ledger.lost()), (60, 0));
    assert!(
        peak.load(Ordering::SeqCst) >= 2,
        "handlers ran in parallel on the pool"
    );
    assert!(
        queued_beyond_pool.load(Ordering::SeqCst),
        "the I/O core kept taking invocations while every pool thread was busy"
    );
}

/// Invocations cancelled at their deadline while their rayon calls still wait for a pool
/// thread are not run later: the single pool thread is held by the first call until every
/// invocation, the held one included, has been answered `Runtime.DeadlineExceeded`; the
/// six calls queued behind it must then be skipped, not made one after another for
/// nobody.
#[test]
fn rayon_skips_calls_whose_invocation_was_cancelled_before_they_started() {
    common::init_tracing();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool"),
    );
    let sim = Simulator::builder()
        .max_concurrency(4)
        .deadline(Duration::from_millis(150))
        .events(EventSource::from_fn(7, |i| Bytes::from(i.to_string())))
        .start()
        .expect("sim");
    let (control, config) = one_core_config(&sim, 4);
    let release = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (held, made) = (release.clone(), calls.clone());
    let handler_pool = pool.clone();
    let runtime = thread::spawn(move || {
        lambda_tpc::rayon::run_concurrent_with_pool(
            config,
            handler_pool,
            move |ev: LambdaEvent<u64>| {
                if let Ok(mut made) = made.lock() {
                    made.push(ev.payload);
                }
                while ev.payload == 0 && !held.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
                Ok::<_, BoxError>(ev.payload)
            },
        )
    });
    let all_cancelled = common::wait(|| sim.ledger().answered_error == 7);
    release.store(true, Ordering::SeqCst);
    // The pool runs jobs in order on its one thread: once this runs, the queued ones have.
    pool.install(|| ());
    control.shutdown();
    assert!(runtime.join().expect("join").is_ok());
    let ledger = sim.shutdown();
    assert!(all_cancelled, "{ledger:?}");
    assert_eq!((ledger.answered_ok, ledger.lost()), (0, 0));
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(
        calls,
        [0],
        "calls made after their invocation was cancelled"
    );
}

/// User code dropped on the pool after its invocation was cancelled (here the handler's
/// result, whose `Drop` panics) is guarded like the handler itself: a panic escaping a
/// rayon job would abort the whole process.
#[test]
fn a_panicking_drop_on_the_rayon_pool_is_caught() {
    struct PanicsWhenDropped(Arc<AtomicBool>);
    impl serde::Serialize for PanicsWhenDropped {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_unit()
        }
    }
    impl Drop for PanicsWhenDropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
            panic!("the result's drop panicked");
        }
    }
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(1)
        .deadline(Duration::from_millis(100))
        .events(EventSource::repeat(&b"1"[..], 1))
        .start()
        .expect("sim");
    let (control, config) = one_core_config(&sim, 1);
    let answered = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (waits, flag) = (answered.clone(), dropped.clone());
    let runtime = thread::spawn(move || {
        lambda_tpc::rayon::run_concurrent_with_config(config, move |_: LambdaEvent<u64>| {
            // Returns only once the invocation was cancelled: the result has nowhere to go.
            while !waits.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            Ok::<_, BoxError>(PanicsWhenDropped(flag.clone()))
        })
    });
    let cancelled = common::wait(|| sim.ledger().answered_error == 1);
    answered.store(true, Ordering::SeqCst);
    let was_dropped = common::wait(|| dropped.load(Ordering::SeqCst));
    control.shutdown();
    assert!(runtime.join().expect("join").is_ok());
    let ledger = sim.shutdown();
    assert!(cancelled && was_dropped, "{ledger:?}");
    assert_eq!(ledger.lost(), 0);
}

/// More `spawn_blocking` calls than the core's blocking pool has threads wait for a
/// thread without stalling the core (compio's pool, when full, makes the submitting thread
/// spin until a thread frees). The blocked closures are released by a task on the core, or
/// after ten seconds by a fallback thread: only a core that kept running releases them.
#[test]
fn spawn_blocking_beyond_the_pool_does_not_stall_the_core() {
    use lambda_tpc::Executor;
    use lambda_tpc::compio::{CompioExecutor, MAX_BLOCKING_THREADS, spawn_blocking};
    use std::sync::Condvar;

    let gate = Arc::new((Mutex::new(None::<&str>), Condvar::new()));
    let open = |gate: &(Mutex<Option<&'static str>>, Condvar), by: &'static str| {
        if let Ok(mut g) = gate.0.lock() {
            g.get_or_insert(by);
        }
        gate.1.notify_all();
    };
    let fallback = {
        let gate = gate.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(10));
            open(&gate, "the fallback thread");
        })
    };
    let calls = MAX_BLOCKING_THREADS + 6;
    let exec = CompioExecutor::default();
    let finished = exec
        .block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..calls {
                let gate = gate.clone();
                tasks.push(compio::runtime::spawn(spawn_blocking(move || {
                    let mut g = gate.0.lock().expect("gate");
                    while g.is_none() {
                        g = gate.1.wait(g).expect("gate");
                    }
                })));
            }
            // Every call is submitted or waiting for a thread by now; the core must still
            // run this timer.
            compio::time::sleep(Duration::from_millis(50)).await;
            open(&gate, "the core");
            let mut finished = 0;
            for t in tasks {
                if matches!(t.await, Ok(Ok(()))) {
                    finished += 1;
                }
            }
            finished
        })
        .expect("runtime");
    let by = gate.0.lock().expect("gate").unwrap_or("nobody");
    assert_eq!(
        by, "the core",
        "the core stalled until the fallback released the pool"
    );
    assert_eq!(finished, calls);
    drop(fallback);
}

/// A handler that blocks its core's thread through shutdown never lets the core run its
/// grace timer: the run still returns (after the grace period and a margin) with an error
/// naming the stuck core, instead of waiting for it forever. The handler is released only after the
/// run returned, so the order is certain.
#[test]
fn a_core_blocked_through_shutdown_does_not_hold_the_run() {
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(1)
        .events(sleepy_events(1, 1, 0))
        .start()
        .expect("sim");
    let (control, config) = one_core_builder(sim.runtime_api(), 1);
    let config = config
        .shutdown_grace(Duration::from_millis(200))
        .build_with(|_| None)
        .expect("config");
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(Mutex::new(blocked));
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let runtime = thread::spawn(move || {
        lambda_tpc::compio::run_concurrent_with_config(config, move |ev: LambdaEvent<Value>| {
            let _ = started_tx.send(());
            // Blocks the core's thread until the test lets go.
            if let Ok(rx) = blocked.lock() {
                let _ = rx.recv_timeout(Duration::from_secs(60));
            }
            async move { Ok::<_, BoxError>(ev.payload) }
        })
    });
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("the handler ran");
    control.shutdown();
    let returned = common::wait(|| runtime.is_finished());
    let _ = release.send(());
    assert!(returned, "the run waited for a blocked core");
    let err = runtime
        .join()
        .expect("join")
        .expect_err("a core was left behind");
    assert!(err.is_core_failure(), "{err}");
    sim.shutdown();
}

/// One request read off `s` by a scripted Runtime API: method, path, body.
fn read_request(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> (String, String, Vec<u8>) {
    use std::io::Read;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = req.parse(buf).expect("a valid request") {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value)
                        .expect("ascii")
                        .parse::<usize>()
                        .expect("a length")
                });
            if buf.len() >= head_len + len {
                let method = req.method.expect("method").to_owned();
                let path = req.path.expect("path").to_owned();
                let body = buf[head_len..head_len + len].to_vec();
                buf.drain(..head_len + len);
                return (method, path, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .expect("the runtime sends its next request");
        assert!(n > 0, "the runtime closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn event_reply(id: &str, body: &str) -> String {
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
        + 60_000;
    format!(
        "HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: {id}\r\n\
         Lambda-Runtime-Deadline-Ms: {deadline}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const ACCEPTED: &str = "HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}";

/// With pipelining, the `/next` written behind the last post before shutdown began is
/// still read: an invocation the API routes to it while the core drains is served, not
/// abandoned, before the run returns. A scripted Runtime API serves two slots: one a slow
/// invocation that keeps the core draining for a while after shutdown begins (a pipelined
/// post counts as finished once sent, so nothing else would), the other a quick one,
/// whose post and pipelined `/next` are in before shutdown begins, and then, after it
/// has begun, the post's reply and one more invocation.
#[test]
fn a_pipelined_next_sent_as_shutdown_began_is_still_served() {
    use std::io::Write;
    common::init_tracing();
    let expect = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>, want: (&str, &str), what| {
        let (method, path, body) = read_request(s, buf);
        assert_eq!((method.as_str(), path.as_str()), want, "{what}");
        body
    };
    const NEXT: (&str, &str) = ("GET", "/2018-06-01/runtime/invocation/next");
    for exec in EXECS {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let control = Control::new();
        let config = Config::builder()
            .runtime_api(listener.local_addr().expect("addr").to_string())
            .max_concurrency(nz(2))
            .cores(Cores::Count(nz(1)))
            .pipelining(true)
            .control(control.clone())
            .build_with(|_| None)
            .expect("valid config");
        let runtime = thread::spawn(move || run_sleeper(exec, config));
        let mut conns = [(); 2].map(|()| {
            let (s, _) = listener.accept().expect("the runtime connects");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            (s, Vec::new())
        });
        for (s, buf) in &mut conns {
            expect(s, buf, NEXT, format!("{exec:?}: each slot polls"));
        }
        let [(mut quick, mut qbuf), (mut slow, mut sbuf)] = conns;
        slow.write_all(event_reply("slow", r#"{"sleep_ms":1500}"#).as_bytes())
            .expect("write");
        quick
            .write_all(event_reply("id-1", r#"{"n":1}"#).as_bytes())
            .expect("write");
        let body = expect(
            &mut quick,
            &mut qbuf,
            ("POST", "/2018-06-01/runtime/invocation/id-1/response"),
            format!("{exec:?}"),
        );
        assert_eq!(body, br#"{"n":1}"#, "{exec:?}");
        expect(
            &mut quick,
            &mut qbuf,
            NEXT,
            format!("{exec:?}: the /next pipelined behind the post"),
        );
        // The slot now waits for the post's reply; shutdown begins before it comes, and
        // the API routes one more invocation to the pipelined /next.
        control.shutdown();
        quick
            .write_all(format!("{ACCEPTED}{}", event_reply("id-2", r#"{"n":2}"#)).as_bytes())
            .expect("write");
        let body = expect(
            &mut quick,
            &mut qbuf,
            ("POST", "/2018-06-01/runtime/invocation/id-2/response"),
            format!("{exec:?}: the invocation routed to the pipelined /next is answered"),
        );
        assert_eq!(body, br#"{"n":2}"#, "{exec:?}");
        quick.write_all(ACCEPTED.as_bytes()).expect("write");
        expect(
            &mut slow,
            &mut sbuf,
            ("POST", "/2018-06-01/runtime/invocation/slow/response"),
            format!("{exec:?}: the slow invocation is answered"),
        );
        slow.write_all(ACCEPTED.as_bytes()).expect("write");
        let result = runtime.join().expect("runtime thread does not panic");
        assert!(result.is_ok(), "{exec:?}: {result:?}");
        let report = control.report().expect("report");
        assert_eq!(report.cores[0].responses, 3, "{exec:?}");
    }
}

/// A worker-per-slot slot's connections sit idle while its handler runs (by default its
/// posts go on a second connection), long enough for the API to close them as idle
/// keep-alives. Nothing may be lost to that, and it is not an outage:
///
/// * the post that went out on the dead post connection is sent again before the next
///   handler runs (inv-1's answer was resent after inv-2's 1.8 s handler, after its own
///   1.5 s deadline: refused with 410, as the Runtime API does);
/// * the `/next` that went out on the dead poll connection is sent again at once on a
///   fresh one (it was logged as a failed `/next`, backed off and counted toward the
///   unreachable timeout).
#[test]
fn connections_the_api_closes_while_idle_lose_no_answer() {
    use lambda_tpc::sim::{ConnFault, FaultPlan, Schedule};
    for exec in EXECS {
        // With pipelining, the post and the next `/next` go out together on the poll
        // connection, which the API closed while the handler ran.
        for (deferred, pipelining) in [(true, false), (false, false), (false, true)] {
            // Two for the simulator, one for the runtime: the next event is handed out
            // while the last answer is still unconfirmed.
            let sim = Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(3, |i| {
                    let ms = [0, 400, 1800][i as usize];
                    Bytes::from(format!(r#"{{"sleep_ms":{ms}}}"#))
                }))
                .deadline(Duration::from_millis(1500))
                .refuse_late_answers(true)
                .faults(FaultPlan::new(1).connection(
                    Schedule::Always,
                    ConnFault::CloseWhenIdle(Duration::from_millis(150)),
                ))
                .start()
                .expect("simulator");
            let (control, config) = one_core_builder(sim.runtime_api(), 1);
            let config = config
                .strategy(Strategy::WorkerPerSlot)
                .deferred_post_replies(deferred)
                .pipelining(pipelining)
                // inv-2 is meant to answer late: the simulator, not the runtime, refuses it.
                .enforce_deadline(false)
                .build_with(|_| None)
                .expect("config");
            let runtime = thread::spawn(move || run_sleeper(exec, config));
            let done = sim.wait_until_done(Duration::from_secs(20));
            control.shutdown();
            let result = runtime.join().expect("runtime thread");
            let case = format!("{exec:?} deferred={deferred} pipelining={pipelining}");
            assert!(done && result.is_ok(), "{case}: {result:?}");
            let l = sim.shutdown();
            assert_eq!(
                (l.answered_ok, l.timed_out, l.lost()),
                (2, 1, 0),
                "{case}: inv-0 and inv-1 answered in time, inv-2 late by design: {l:?}"
            );
            let report = control.report().expect("report");
            assert_eq!(report.cores[0].next_failures, 0, "{case}: {report:?}");
        }
    }
}

/// A long poll the API held for a while and then dropped shows the API was there: it does
/// not count toward the unreachable timeout with the failure before it (the run ended as
/// "unreachable for 1508 ms" although every poll reached the API).
#[test]
fn a_long_poll_the_api_dropped_is_not_an_outage() {
    use lambda_tpc::sim::{ConnFault, FaultPlan, PollFault, Schedule};
    for exec in EXECS {
        let sim = Simulator::builder()
            .max_concurrency(1)
            .events(sleepy_events(1, 1, 0))
            .faults(
                FaultPlan::new(1)
                    .poll(Schedule::Nth(0), PollFault::Status(502))
                    // The 502 is read whole and would leave its connection in use; closed
                    // (as if idle), the dropped poll goes on a fresh connection and counts
                    // as a failure in a row with the 502.
                    .connection(Schedule::Nth(0), ConnFault::CloseAfterRequests(1))
                    .poll(
                        Schedule::Nth(1),
                        PollFault::DropAfter(Duration::from_millis(1500)),
                    ),
            );
        let config = Config::builder()
            .cores(Cores::Count(nz(1)))
            .unreachable_timeout(Some(Duration::from_secs(1)));
        let out = run_against_sim(sim, config, move |c| run_sleeper(exec, c));
        assert!(out.result.is_ok(), "{exec:?}: {:?}", out.result);
        assert!(out.done, "{exec:?}: {:?}", out.ledger);
        assert_eq!(
            (out.ledger.answered_ok, out.ledger.lost()),
            (1, 0),
            "{exec:?}: {:?}",
            out.ledger
        );
        let report = out.report.expect("report");
        assert_eq!(report.cores[0].next_failures, 2, "{exec:?}: {report:?}");
    }
}

/// `/next` replies without a request id cannot be answered: each is a failed poll,
/// backed off and counted (a slot polled again at full speed, logging an error per reply,
/// for an API or proxy that kept answering that way).
#[test]
fn replies_without_a_request_id_are_backed_off() {
    use lambda_tpc::sim::{FaultPlan, ReplyFault, Schedule};
    const BAD: u64 = 6;
    for exec in EXECS {
        let sim = Simulator::builder()
            .max_concurrency(1)
            .events(sleepy_events(BAD + 2, 1, 0))
            .faults(FaultPlan::new(1).reply(
                Schedule::Range { start: 0, end: BAD },
                ReplyFault::MissingRequestId,
            ));
        let config = Config::builder().cores(Cores::Count(nz(1)));
        let out = run_against_sim(sim, config, move |c| run_sleeper(exec, c));
        assert!(out.result.is_ok() && out.done, "{exec:?}: {:?}", out.ledger);
        let l = out.ledger;
        assert_eq!(
            (l.answered_ok, l.unanswerable.missing_id, l.lost()),
            (2, BAD, 0),
            "{exec:?}: {l:?}"
        );
        let core = &out.report.expect("report").cores[0];
        assert_eq!(
            (core.next_failures, core.invalid_invocations),
            (BAD, BAD),
            "{exec:?}: {core:?}"
        );
    }
}

/// Compio with connects that take `delay` (`None`: never complete), as on a lossy path or
/// toward an address that swallows them.
#[derive(Clone)]
struct SlowConnects {
    inner: lambda_tpc::compio::CompioExecutor,
    delay: Option<Duration>,
}

impl lambda_tpc::Executor for SlowConnects {
    type Stream = <lambda_tpc::compio::CompioExecutor as lambda_tpc::Executor>::Stream;

    fn block_on<F: std::future::Future>(&self, f: F) -> std::io::Result<F::Output> {
        self.inner.block_on(f)
    }

    fn driver_name(&self) -> &'static str {
        self.inner.driver_name()
    }

    fn spawn<F: std::future::Future<Output = ()> + 'static>(&self, f: F) {
        self.inner.spawn(f)
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<Self::Stream> {
        match self.delay {
            Some(d) => self.inner.sleep(d).await,
            None => std::future::pending().await,
        }
        self.inner.connect(addr).await
    }

    fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> {
        self.inner.sleep(d)
    }
}

/// Runs an echo handler on `executor` against an "API" at `addr` that accepts each
/// connection, reads the request and closes it without a byte of reply; returns the run's
/// result, or `None` if it had not ended within `bound`.
fn run_against_a_dead_api(
    executor: SlowConnects,
    unreachable: Duration,
    bound: Duration,
) -> Option<Result<(), lambda_tpc::Error>> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
        }
    });
    let (control, config) = one_core_builder(&addr.to_string(), 1);
    let config = config
        .unreachable_timeout(Some(unreachable))
        .build_with(|_| None)
        .expect("config");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let echo = |e: LambdaEvent<Value>| async move { Ok::<_, BoxError>(e.payload) };
        let _ = tx.send(lambda_tpc::run_concurrent_with_executor(
            config, echo, executor,
        ));
    });
    let r = rx.recv_timeout(bound).ok();
    if r.is_none() {
        control.shutdown();
    }
    r
}

/// A slow connect is not the API holding a poll: an API that drops every poll at once
/// is given up on even when each connect takes over a second (the held-poll rule measured
/// from the end of the backoff, connect included, and the run never gave up).
#[test]
fn an_api_that_drops_every_poll_is_given_up_on_despite_slow_connects() {
    let executor = SlowConnects {
        inner: lambda_tpc::compio::CompioExecutor::default(),
        delay: Some(Duration::from_millis(1100)),
    };
    let r = run_against_a_dead_api(executor, Duration::from_secs(3), Duration::from_secs(15));
    assert!(
        matches!(&r, Some(Err(e)) if e.is_unreachable()),
        "not given up within 15 s: {r:?}"
    );
}

/// A connect that never completes (an address that swallows SYNs) times out, so the
/// unreachable timeout can end the run (it waited for the kernel's SYN retries, about two
/// minutes, per attempt).
#[test]
fn a_connect_that_never_completes_times_out() {
    let executor = SlowConnects {
        inner: lambda_tpc::compio::CompioExecutor::default(),
        delay: None,
    };
    let r = run_against_a_dead_api(executor, Duration::from_secs(1), Duration::from_secs(20));
    match r {
        Some(Err(e)) if e.is_unreachable() => {
            assert!(e.to_string().contains("no answer within"), "{e}");
        }
        other => panic!("not given up within 20 s: {other:?}"),
    }
}
