//! Text logs (the format outside Managed Instances): every line written by handler code
//! names its own invocation's request id, and there are no colour escapes. One test in its
//! own binary, because it installs the global subscriber.

mod common;

use common::run_logging_handler;

#[test]
fn text_lines_carry_their_invocations_request_id_without_colours() {
    const N: u64 = 200;
    let (o, text) = run_logging_handler("Text", N);
    assert_eq!(
        (o.ledger.answered_ok, o.ledger.lost()),
        (N, 0),
        "{:?}",
        o.ledger
    );
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
    assert_eq!(handler_lines, 4 * N, "every handler line was written");
}
