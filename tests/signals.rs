//! SIGTERM starts a graceful shutdown: in-flight work finishes, the hook runs, the run
//! returns `Ok`. Alone in its own test binary, because the signal goes to the whole
//! process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{BoxError, Config, LambdaEvent};

#[test]
fn sigterm_shuts_down_gracefully() {
    common::init_tracing();
    let sim = Simulator::builder()
        .max_concurrency(2)
        .events(EventSource::from_fn(1_000_000, |_| {
            Bytes::from_static(b"200")
        }))
        .start()
        .expect("sim");
    let hooked = Arc::new(AtomicBool::new(false));
    let h = hooked.clone();
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(common::nz(2))
        .on_shutdown(move || h.store(true, Ordering::SeqCst))
        .build_with(|_| None)
        .expect("config");
    assert!(config.handle_signals(), "on by default");
    let runtime = thread::spawn(move || {
        lambda_tpc::compio::run_concurrent_with_config(config, |ev: LambdaEvent<u64>| async move {
            compio::time::sleep(Duration::from_millis(ev.payload)).await;
            Ok::<_, BoxError>(ev.payload)
        })
    });
    // Polling has started, so the handler is installed (it is installed before any core
    // takes work).
    assert!(common::wait(|| sim.ledger().in_flight == 2));
    // SAFETY: kill with our own pid and a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let result = runtime.join().expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(hooked.load(Ordering::SeqCst), "shutdown hook ran");
    let ledger = sim.shutdown();
    assert_eq!(
        ledger.lost(),
        0,
        "in-flight invocations finished: {ledger:?}"
    );
    assert!(ledger.handed_out < 1_000_000);
}

/// Set in the child process of [`after_the_run_sigterm_ends_the_process`].
const CHILD: &str = "LAMBDA_TPC_SIGNALS_TEST_CHILD";

/// Once the run has returned, SIGTERM does what it would without lambda-tpc: it ends the
/// process. (The signal handler stays installed for the life of the process; with no run
/// to shut down, the signal goes on to its default action instead of being swallowed.)
/// The process that gets the signals is a child: this test binary re-run for this test.
#[test]
fn after_the_run_sigterm_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os(CHILD).is_some() {
        return child_runs_then_gets_sigterm_again();
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "after_the_run_sigterm_ends_the_process",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .status()
        .expect("child ran");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

fn child_runs_then_gets_sigterm_again() {
    let sim = Simulator::builder()
        .max_concurrency(1)
        .events(EventSource::from_fn(1_000_000, |_| {
            Bytes::from_static(b"1")
        }))
        .start()
        .expect("sim");
    let config = Config::builder()
        .runtime_api(sim.runtime_api())
        .max_concurrency(common::nz(1))
        .build_with(|_| None)
        .expect("config");
    let runtime = thread::spawn(move || {
        lambda_tpc::compio::run_concurrent_with_config(config, |ev: LambdaEvent<u64>| async move {
            Ok::<_, BoxError>(ev.payload)
        })
    });
    assert!(common::wait(|| sim.ledger().answered_ok > 0));
    // SAFETY: kill with our own pid and a valid signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let result = runtime.join().expect("join");
    assert!(
        result.is_ok(),
        "the first SIGTERM shut the run down: {result:?}"
    );
    sim.shutdown();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    thread::sleep(Duration::from_secs(10));
    // Still here: the signal was swallowed. Exiting normally fails the parent's check.
}
