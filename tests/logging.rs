//! JSON logs from many concurrent invocations interleaved on one core: every line written
//! by handler code carries the request id of its own invocation. One test in its own
//! binary, because it installs the global subscriber.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{LogBuffer, nz, run_against_sim};
use lambda_tpc::logging::{LogFormat, LogSettings};
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{BoxError, Config, Cores, LambdaEvent, Strategy};
use serde_json::Value;

#[test]
fn every_log_line_carries_its_invocations_request_id() {
    let buffer = LogBuffer::default();
    let settings = LogSettings::from_env_with(|k| match k {
        "AWS_LAMBDA_LOG_FORMAT" => Some("json".into()),
        "AWS_LAMBDA_LOG_LEVEL" => Some("INFO".into()),
        _ => None,
    })
    .expect("settings");
    assert_eq!(settings.format, LogFormat::Json);
    lambda_tpc::logging::init_with_writer(settings, buffer.clone()).expect("init");

    const N: u64 = 400;
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(64)
            .tenant_id(Some("tenant-42".into()))
            .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
        // One core, unbounded: 64 invocations interleave on the same thread.
        Config::builder()
            .cores(Cores::Count(nz(1)))
            .strategy(Strategy::Unbounded),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<u64>| async move {
                    let id = ev.context.request_id().to_owned();
                    tracing::info!(expected = %id, step = 1, "start");
                    compio::time::sleep(Duration::from_millis(ev.payload % 7)).await;
                    tracing::info!(expected = %id, step = 2, "after the await");
                    compio::time::sleep(Duration::from_millis(ev.payload % 3)).await;
                    tracing::warn!(expected = %id, step = 3, "done");
                    Ok::<_, BoxError>(ev.payload)
                },
            )
        },
    );
    assert_eq!(
        (o.ledger.answered_ok, o.ledger.lost()),
        (N, 0),
        "{:?}",
        o.ledger
    );

    let text = buffer.text();
    let mut handler_lines = 0;
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "missing {key}: {line}");
        }
        if let Some(expected) = v.get("expected") {
            handler_lines += 1;
            assert_eq!(
                v.get("requestId"),
                Some(expected),
                "wrong invocation: {line}"
            );
            assert_eq!(
                v.get("tenantId").and_then(Value::as_str),
                Some("tenant-42"),
                "{line}"
            );
        }
    }
    assert_eq!(handler_lines, 3 * N, "every handler line was written");
    let sample: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("expected"))
        .take(3)
        .collect();
    println!("sample:\n{}", sample.join("\n"));
}
