//! Text logs (the format outside Managed Instances): every line written by handler code
//! names its own invocation's request id, and there are no colour escapes. One test in its
//! own binary, because it installs the global subscriber.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{LogBuffer, nz, run_against_sim};
use lambda_tpc::logging::{LogFormat, LogSettings};
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{BoxError, Config, Cores, LambdaEvent, Strategy};

#[test]
fn text_lines_carry_their_invocations_request_id_without_colours() {
    let buffer = LogBuffer::default();
    let settings = LogSettings::from_env_with(|k| match k {
        "AWS_LAMBDA_LOG_FORMAT" => Some("Text".into()),
        "AWS_LAMBDA_LOG_LEVEL" => Some("INFO".into()),
        _ => None,
    })
    .expect("settings");
    assert_eq!(settings.format, LogFormat::Text);
    lambda_tpc::logging::init_with_writer(settings, buffer.clone()).expect("init");
    tracing::info!(phase = "init", "outside any invocation");

    const N: u64 = 200;
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(32)
            .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
        // One core, unbounded: the invocations interleave on the same thread.
        Config::builder()
            .cores(Cores::Count(nz(1)))
            .strategy(Strategy::Unbounded),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<u64>| async move {
                    let id = ev.context.request_id().to_owned();
                    tracing::info!(expected = %id, step = 1, "start");
                    compio::time::sleep(Duration::from_millis(ev.payload % 5)).await;
                    tracing::warn!(expected = %id, step = 2, "done");
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
    assert!(!text.contains('\x1b'), "no colour escapes:\n{text}");
    let outside = text
        .lines()
        .find(|l| l.contains("outside any invocation"))
        .expect("the line logged before the run");
    let cols: Vec<&str> = outside.split('\t').collect();
    assert_eq!(cols.len(), 3, "no request id column outside: {outside}");
    assert_eq!(cols[1], "INFO", "{outside}");
    assert!(cols[2].contains("phase=\"init\""), "{outside}");

    let mut handler_lines = 0;
    for line in text.lines().filter(|l| l.contains("expected=")) {
        handler_lines += 1;
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            4,
            "timestamp, request id, level, message: {line}"
        );
        assert!(cols[0].ends_with('Z') && cols[0].len() == 24, "{line}");
        assert!(matches!(cols[2], "INFO" | "WARN"), "{line}");
        let expected = format!("expected={}", cols[1]);
        assert!(
            cols[3].contains(&expected),
            "the line names another invocation: {line}"
        );
    }
    assert_eq!(handler_lines, 2 * N, "every handler line was written");
}
