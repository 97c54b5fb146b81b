//! JSON logs from many concurrent invocations interleaved on one core: every line written
//! by handler code carries the request id of its own invocation. One test in its own
//! binary, because it installs the global subscriber.

mod common;

use common::run_logging_handler;
use serde_json::Value;

#[test]
fn every_log_line_carries_its_invocations_request_id() {
    const N: u64 = 400;
    let (o, text) = run_logging_handler("json", N);
    assert_eq!(
        (o.ledger.answered_ok, o.ledger.lost()),
        (N, 0),
        "{:?}",
        o.ledger
    );
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
    assert_eq!(handler_lines, 4 * N, "every handler line was written");
    let sample: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("expected"))
        .take(3)
        .collect();
    println!("sample:\n{}", sample.join("\n"));
}
