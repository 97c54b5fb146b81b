//! JSON logs from handlers on the rayon pool: a line written by a CPU-bound handler on a
//! pool thread carries its own invocation's request id, like one written on the core.
//! One test in its own binary, because it installs the global subscriber.

mod common;

use bytes::Bytes;
use common::{LogBuffer, nz, run_against_sim};
use lambda_tpc::logging::LogSettings;
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{BoxError, Config, Cores, LambdaEvent};
use serde_json::Value;

#[test]
fn rayon_handler_lines_carry_their_invocations_request_id() {
    const N: u64 = 200;
    let buffer = LogBuffer::default();
    let settings = LogSettings::from_env_with(|k| match k {
        "AWS_LAMBDA_LOG_FORMAT" => Some("json".into()),
        "AWS_LAMBDA_LOG_LEVEL" => Some("INFO".into()),
        _ => None,
    })
    .expect("settings");
    lambda_tpc::logging::init_with_writer(settings, buffer.clone()).expect("init");
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(16)
            .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
        Config::builder().cores(Cores::Count(nz(1))),
        |config| {
            lambda_tpc::rayon::run_concurrent_with_config(config, |ev: LambdaEvent<u64>| {
                let id = ev.context.request_id().to_owned();
                tracing::info!(expected = %id, "on the pool");
                Ok::<_, BoxError>(ev.payload)
            })
        },
    );
    assert_eq!(
        (o.ledger.answered_ok, o.ledger.lost()),
        (N, 0),
        "{:?}",
        o.ledger
    );
    let text = buffer.text();
    let mut lines = 0;
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(expected) = v.get("expected") {
            lines += 1;
            assert_eq!(
                v.get("requestId"),
                Some(expected),
                "wrong invocation: {line}"
            );
        }
    }
    assert_eq!(lines, N, "every handler line was written");
}
