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
