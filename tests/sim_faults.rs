//! Fault injection in the simulator, checked with raw HTTP/1.1 clients: for each fault, the
//! bytes on the wire are what the fault says, and the ledger counts it as documented in
//! `lambda_tpc::sim::fault`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::sim_client::{
    API, Client, End, LONG, eventually, find, next_req, post, raw_header, split_head,
};
use lambda_tpc::sim::fault::{GARBAGE, OVERSIZED_HEAD_BYTES};
use lambda_tpc::sim::{
    ConnFault, EventSource, FaultKind, FaultPlan, Ledger, PollFault, PostEndpoint, PostFault,
    ReplyFault, Schedule, Simulator,
};

const EVENT: &[u8] = br#"{"hello":"world","n":12345}"#;

fn sim(plan: FaultPlan, events: EventSource, max: usize) -> Simulator {
    Simulator::builder()
        .max_concurrency(max)
        .events(events)
        .faults(plan)
        .start()
        .expect("start")
}

fn one_fault(fault: ReplyFault) -> Simulator {
    sim(
        FaultPlan::new(1).reply(Schedule::Nth(0), fault),
        EventSource::repeat(EVENT.to_vec(), 2),
        1,
    )
}

/// The ledger identity every scenario must satisfy, with nothing lost (`lost()` is the
/// remainder of the identity, so it is checked through it, not beside it).
fn assert_identity(l: &Ledger) {
    assert_eq!(
        l.handed_out,
        l.answered_ok + l.answered_error + l.unanswerable.total(),
        "{l:?}"
    );
}

/// Finishes a two-event scenario whose first invocation is settled: takes the second one on
/// a fresh connection, answers it, and checks nothing is lost.
fn finish(sim: Simulator) -> Ledger {
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.body, EVENT);
    assert_eq!(c.respond(&r.request_id(), EVENT).status, 202);
    assert!(sim.wait_until_done(LONG), "{:?}", sim.ledger());
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!(l.lost(), 0, "{l:?}");
    assert_eq!(l.handed_out, 2, "{l:?}");
    l
}

fn error_path(id: &str) -> String {
    format!("{API}/invocation/{id}/error")
}

#[test]
fn reset_before_head_sends_nothing_and_is_unanswerable() {
    let sim = one_fault(ReplyFault::ResetBeforeHead);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!((bytes.as_slice(), end), (&b""[..], End::Reset));
    let l = sim.ledger();
    assert_eq!((l.handed_out, l.in_flight), (1, 0), "{l:?}");
    assert_eq!(l.unanswerable.reset_before_head, 1);
    assert_eq!(l.faults.get(FaultKind::ResetBeforeHead), 1);
    let l = finish(sim);
    assert_eq!((l.answered_ok, l.unanswerable.total()), (1, 1));
}

#[test]
fn reset_mid_head_sends_part_of_a_head() {
    let sim = one_fault(ReplyFault::ResetMidHead);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!(end, End::Reset);
    assert!(bytes.starts_with(b"HTTP/1.1 200 OK\r\n"), "{bytes:?}");
    assert!(
        find(&bytes, b"\r\n\r\n").is_none(),
        "head must be incomplete"
    );
    let l = sim.ledger();
    assert_eq!((l.unanswerable.reset_mid_head, l.in_flight), (1, 0));
    finish(sim);
}

#[test]
fn reset_mid_body_sends_the_head_and_half_the_body() {
    let sim = one_fault(ReplyFault::ResetMidBody);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!(end, End::Reset);
    let (head, body) = split_head(&bytes).expect("complete head");
    assert_eq!(
        raw_header(head, "content-length"),
        Some(EVENT.len().to_string().as_str())
    );
    assert_eq!(body, &EVENT[..EVENT.len() / 2]);
    let id = raw_header(head, "lambda-runtime-aws-request-id")
        .expect("id")
        .to_owned();
    // The id was usable: the invocation is still outstanding and can be answered elsewhere.
    let l = sim.ledger();
    assert_eq!((l.in_flight, l.unanswerable.total()), (1, 0), "{l:?}");
    let mut c2 = Client::connect(sim.addr());
    let r = c2.post(
        &error_path(&id),
        &[(
            "Lambda-Runtime-Function-Error-Type",
            "Runtime.EventReadError",
        )],
        br#"{"errorType":"Runtime.EventReadError","errorMessage":"cut"}"#,
    );
    assert_eq!(r.status, 202);
    let l = finish(sim);
    assert_eq!((l.answered_error, l.answered_ok), (1, 1));
}

#[test]
fn drip_writes_one_byte_at_a_time_and_the_connection_goes_on() {
    for delay in [Duration::ZERO, Duration::from_millis(1)] {
        let sim = one_fault(ReplyFault::Drip { delay });
        let mut c = Client::connect(sim.addr());
        let r = c.next();
        assert_eq!(r.body, EVENT);
        if !delay.is_zero() {
            // With pauses the client sees the reply in pieces (without, the bytes are
            // written one per write but may well be read together).
            assert!(c.reads > 10, "{delay:?}: only {} reads", c.reads);
        }
        assert_eq!(
            r.header("content-length"),
            Some(EVENT.len().to_string().as_str())
        );
        // Same connection: hyper serves it again after the hand-written reply.
        assert_eq!(c.respond(&r.request_id(), EVENT).status, 202);
        let l = finish(sim);
        assert_eq!((l.answered_ok, l.faults.get(FaultKind::Drip)), (2, 1));
        assert_eq!(l.connections, 2);
    }
}

#[test]
fn garbage_is_not_http() {
    let sim = one_fault(ReplyFault::Garbage);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!((bytes.as_slice(), end), (GARBAGE, End::Eof));
    assert_eq!(sim.ledger().unanswerable.garbage, 1);
    finish(sim);
}

#[test]
fn oversized_head_is_over_64_kib() {
    let sim = one_fault(ReplyFault::OversizedHead);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!(end, End::Eof);
    let (head, body) = split_head(&bytes).expect("head");
    assert_eq!(head.len(), OVERSIZED_HEAD_BYTES);
    assert!(head.len() > 64 * 1024);
    assert!(raw_header(head, "lambda-runtime-aws-request-id").is_some());
    assert_eq!(body, EVENT);
    assert_eq!(sim.ledger().unanswerable.oversized_head, 1);
    finish(sim);
}

#[test]
fn oversized_body_with_content_length_then_the_connection_goes_on() {
    const LEN: u64 = 100_000;
    let sim = one_fault(ReplyFault::OversizedBody {
        len: LEN,
        chunked: false,
    });
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.body.len() as u64, LEN);
    assert_eq!(r.header("content-length"), Some(LEN.to_string().as_str()));
    assert!(r.body.starts_with(b"\"xx") && r.body.ends_with(b"xx\""));
    // Answerable, on the same connection.
    let r = c.post(&error_path(&r.request_id()), &[], b"{}");
    assert_eq!(r.status, 202);
    let l = finish(sim);
    assert_eq!(
        (l.answered_error, l.faults.get(FaultKind::OversizedBody)),
        (1, 1)
    );
}

#[test]
fn oversized_body_chunked() {
    const LEN: u64 = 70_000;
    let sim = one_fault(ReplyFault::OversizedBody {
        len: LEN,
        chunked: true,
    });
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.body.len() as u64, LEN);
    assert_eq!(c.post(&error_path(&r.request_id()), &[], b"{}").status, 202);
    finish(sim);
}

#[test]
fn wrong_content_length_declares_more_than_it_sends() {
    let sim = one_fault(ReplyFault::WrongContentLength { extra: 10 });
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!(end, End::Eof);
    let (head, body) = split_head(&bytes).expect("head");
    assert_eq!(
        raw_header(head, "content-length"),
        Some((EVENT.len() + 10).to_string().as_str())
    );
    assert_eq!(body, EVENT);
    let id = raw_header(head, "lambda-runtime-aws-request-id").expect("id");
    assert_eq!(sim.ledger().in_flight, 1);
    let mut c2 = Client::connect(sim.addr());
    assert_eq!(c2.post(&error_path(id), &[], b"{}").status, 202);
    finish(sim);
}

#[test]
fn bad_chunk_size_after_a_valid_chunk() {
    let sim = one_fault(ReplyFault::BadChunkSize);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!(end, End::Eof);
    let (head, body) = split_head(&bytes).expect("head");
    assert_eq!(raw_header(head, "transfer-encoding"), Some("chunked"));
    let half = &EVENT[..EVENT.len() / 2];
    let mut expected = format!("{:x}\r\n", half.len()).into_bytes();
    expected.extend_from_slice(half);
    expected.extend_from_slice(b"\r\nzz\r\n");
    assert_eq!(body, expected.as_slice());
    let id = raw_header(head, "lambda-runtime-aws-request-id").expect("id");
    assert_eq!(sim.ledger().in_flight, 1);
    let mut c2 = Client::connect(sim.addr());
    assert_eq!(c2.post(&error_path(id), &[], b"{}").status, 202);
    finish(sim);
}

#[test]
fn chunked_reply_is_valid_and_the_connection_goes_on() {
    let sim = one_fault(ReplyFault::Chunked { chunk: 5 });
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let bytes = c.read_through(b"\r\n0\r\n\r\n");
    let (head, rest) = split_head(&bytes).expect("head");
    assert_eq!(raw_header(head, "transfer-encoding"), Some("chunked"));
    assert_eq!(raw_header(head, "content-length"), None);
    assert!(
        rest.starts_with(b"5\r\n"),
        "{:?}",
        String::from_utf8_lossy(rest)
    );
    assert_eq!(decode_chunked(rest), EVENT);
    let id = raw_header(head, "lambda-runtime-aws-request-id").expect("id");
    // Same connection: HTTP goes on.
    assert_eq!(c.respond(id, EVENT).status, 202);
    let l = finish(sim);
    assert_eq!((l.answered_ok, l.faults.get(FaultKind::Chunked)), (2, 1));
}

fn decode_chunked(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = find(b, b"\r\n").expect("size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).expect("ascii"), 16)
            .expect("hex size");
        b = &b[line + 2..];
        if size == 0 {
            assert_eq!(b, b"\r\n");
            return out;
        }
        out.extend_from_slice(&b[..size]);
        assert_eq!(&b[size..size + 2], b"\r\n");
        b = &b[size + 2..];
    }
}

#[test]
fn missing_request_id_is_unanswerable() {
    let sim = one_fault(ReplyFault::MissingRequestId);
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.header("lambda-runtime-aws-request-id"), None);
    assert!(r.header("lambda-runtime-deadline-ms").is_some());
    assert_eq!(r.body, EVENT);
    let l = sim.ledger();
    assert_eq!((l.unanswerable.missing_id, l.in_flight), (1, 0));
    finish(sim);
}

#[test]
fn missing_or_invalid_deadline_is_answerable() {
    let sim = sim(
        FaultPlan::new(1)
            .reply(Schedule::Nth(0), ReplyFault::MissingDeadline)
            .reply(Schedule::Nth(1), ReplyFault::InvalidDeadline),
        EventSource::repeat(EVENT.to_vec(), 3),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.header("lambda-runtime-deadline-ms"), None);
    assert_eq!(c.post(&error_path(&r.request_id()), &[], b"{}").status, 202);
    let r = c.next();
    assert_eq!(r.header("lambda-runtime-deadline-ms"), Some("soon"));
    assert_eq!(c.post(&error_path(&r.request_id()), &[], b"{}").status, 202);
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"ok").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!((l.answered_error, l.answered_ok, l.lost()), (2, 1, 0));
    assert_eq!(l.faults.get(FaultKind::MissingDeadline), 1);
    assert_eq!(l.faults.get(FaultKind::InvalidDeadline), 1);
}

#[test]
fn unsafe_request_ids_are_unanswerable() {
    let ids = ["../../runtime/init/error", "id with spaces"];
    let sim = sim(
        FaultPlan::new(1)
            .reply(Schedule::Nth(0), ReplyFault::UnsafeRequestId(ids[0].into()))
            .reply(Schedule::Nth(1), ReplyFault::UnsafeRequestId(ids[1].into())),
        EventSource::repeat(EVENT.to_vec(), 3),
        1,
    );
    let mut c = Client::connect(sim.addr());
    for id in ids {
        let r = c.next();
        assert_eq!(r.request_id(), id);
    }
    // A client that posts to it anyway reaches no invocation, and certainly not /init/error.
    let r = c.post(&error_path(ids[0]), &[], b"{}");
    assert_eq!(r.status, 400);
    let l = sim.ledger();
    assert_eq!(
        (l.unanswerable.unsafe_id, l.init_errors, l.unknown_ids),
        (2, 0, 1)
    );
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!((l.handed_out, l.answered_ok, l.lost()), (3, 1, 0));
}

#[test]
fn next_error_statuses_hand_out_nothing() {
    let sim = sim(
        FaultPlan::new(1)
            .poll(Schedule::Nth(0), PollFault::Status(500))
            .poll(Schedule::Nth(1), PollFault::Status(403)),
        EventSource::repeat(EVENT.to_vec(), 1),
        1,
    );
    let mut c = Client::connect(sim.addr());
    for status in [500, 403] {
        c.send(&next_req());
        let r = c.read();
        assert_eq!(r.status, status);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json body");
        let msg = body["errorMessage"].as_str().expect("errorMessage");
        assert!(msg.contains(&status.to_string()), "{msg}");
        assert!(body["errorType"].as_str().is_some());
        assert_eq!(r.header("lambda-runtime-aws-request-id"), None);
    }
    assert_eq!(sim.ledger().handed_out, 0);
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.handed_out, l.faults.get(FaultKind::PollStatus)), (1, 2));
}

/// Connects and sends a `/next`; whether the server reset the connection at once (the
/// connect itself succeeds: the kernel completes it before the server accepts). A connection
/// that is not refused takes an invocation (not answered).
fn refused(sim: &Simulator) -> bool {
    let mut c = Client::connect(sim.addr());
    // If the reset arrived first, the write reports it and the read then sees a plain EOF.
    let wrote = std::io::Write::write_all(&mut c.stream, &next_req()).is_ok();
    match c.try_read() {
        Ok(r) => {
            assert_eq!(r.status, 200);
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            assert!(
                !wrote,
                "a plain close without a reply, after a successful write"
            );
            true
        }
        Err(e) => panic!("{e}"),
    }
}

/// A window no test outlasts, so "refused while it lasts" does not depend on timing.
const FOREVER: Duration = Duration::from_secs(600);

/// Starts a simulator whose first `/next` begins an outage of `window`, and checks that
/// `/next` is reset without handing anything out.
fn outage(window: Duration) -> Simulator {
    let sim = sim(
        FaultPlan::new(1).poll(Schedule::Nth(0), PollFault::Outage(window)),
        EventSource::repeat(EVENT.to_vec(), 1),
        1,
    );
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!((bytes.as_slice(), end), (&b""[..], End::Reset));
    let l = sim.ledger();
    assert_eq!((l.handed_out, l.faults.get(FaultKind::Outage)), (0, 1));
    sim
}

#[test]
fn outage_resets_the_poll_and_refuses_connections_while_it_lasts() {
    let sim = outage(FOREVER);
    assert!(refused(&sim));
    assert!(refused(&sim));
    let l = sim.shutdown();
    assert_eq!(l.faults.get(FaultKind::Refused), 2);
    assert_eq!((l.connections, l.handed_out), (3, 0));
}

#[test]
fn outage_ends() {
    let sim = outage(Duration::from_millis(100));
    assert!(eventually(LONG, || !refused(&sim)));
    let l = sim.shutdown();
    assert_eq!(l.connections, 2 + l.faults.get(FaultKind::Refused));
    // The connection that was not refused took the event.
    assert_eq!((l.handed_out, l.in_flight), (1, 1));
}

#[test]
fn refused_connections() {
    let sim = sim(
        FaultPlan::new(1)
            .connection(Schedule::Nth(0), ConnFault::Refuse)
            .connection(Schedule::Nth(2), ConnFault::RefuseFor(FOREVER)),
        EventSource::repeat(EVENT.to_vec(), 5),
        1,
    );
    assert!(refused(&sim), "connection 0");
    // Connection 1 works.
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    assert!(refused(&sim), "connection 2 starts the window");
    assert!(refused(&sim), "connection 3 is within it");
    // (That a refusal window ends is checked by `outage_ends`: the same mechanism.)
    let l = sim.shutdown();
    assert_eq!(l.faults.get(FaultKind::Refused), 3);
    assert_eq!((l.connections, l.answered_ok, l.lost()), (4, 1, 0));
}

#[test]
fn post_error_statuses_are_recorded_answers_with_a_json_body() {
    let sim = sim(
        FaultPlan::new(1)
            .post(
                PostEndpoint::Response,
                Schedule::Nth(0),
                PostFault::Status(400),
            )
            .post(
                PostEndpoint::Response,
                Schedule::Nth(1),
                PostFault::Status(410),
            )
            .post(PostEndpoint::Any, Schedule::Nth(2), PostFault::Status(500))
            .post(
                PostEndpoint::Error,
                Schedule::Nth(3),
                PostFault::Status(500),
            ),
        EventSource::repeat(EVENT.to_vec(), 5),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let mut check = |status: u16, error: bool| {
        let r = c.next();
        let id = r.request_id();
        let path = if error {
            error_path(&id)
        } else {
            format!("{API}/invocation/{id}/response")
        };
        let a = c.post(&path, &[], b"{}");
        assert_eq!(a.status, status, "{}", a.body_str());
        if status != 202 {
            let body: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
            let msg = body["errorMessage"].as_str().expect("message");
            assert!(
                msg.contains(&id) && msg.contains(&status.to_string()),
                "{msg}"
            );
        }
        // Recorded: a second post is a duplicate.
        assert_eq!(c.post(&path, &[], b"{}").status, 400);
    };
    check(400, false);
    check(410, false);
    check(500, false);
    check(500, true);
    check(202, false);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!((l.answered_ok, l.answered_error, l.lost()), (4, 1, 0));
    assert_eq!((l.duplicates, l.faults.get(FaultKind::PostStatus)), (5, 4));
}

#[test]
fn post_413_is_not_an_answer() {
    let sim = sim(
        FaultPlan::new(1).post(
            PostEndpoint::Response,
            Schedule::Always,
            PostFault::Status(413),
        ),
        EventSource::repeat(EVENT.to_vec(), 1),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    let id = r.request_id();
    let a = c.respond(&id, b"{}");
    assert_eq!(a.status, 413);
    assert!(a.body_str().contains("injected fault"), "{}", a.body_str());
    assert_eq!(sim.ledger().in_flight, 1);
    let e = c.post(
        &error_path(&id),
        &[(
            "Lambda-Runtime-Function-Error-Type",
            "Function.ResponseSizeTooLarge",
        )],
        br#"{"errorType":"Function.ResponseSizeTooLarge","errorMessage":"413"}"#,
    );
    assert_eq!(e.status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!((l.answered_error, l.lost(), l.too_large), (1, 0, 0));
    assert_eq!(l.faults.get(FaultKind::PostTooLarge), 1);
}

#[test]
fn keep_alive_connection_closed_after_n_requests_without_warning() {
    let sim = sim(
        FaultPlan::new(1).connection(Schedule::Always, ConnFault::CloseAfterRequests(2)),
        EventSource::repeat(EVENT.to_vec(), 2),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.header("connection"), None);
    let a = c.respond(&r.request_id(), EVENT);
    assert_eq!(a.status, 202);
    // No `Connection: close`: the close is silent, as an idle timeout's is.
    assert_eq!(a.header("connection"), None);
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!((bytes.as_slice(), end), (&b""[..], End::Eof));
    assert_eq!(sim.ledger().faults.get(FaultKind::CloseAfterRequests), 1);
    let l = finish(sim);
    assert_eq!(l.answered_ok, 2);
}

#[test]
fn pipelined_request_behind_the_last_one_is_served_before_the_close() {
    let sim = sim(
        FaultPlan::new(1).connection(Schedule::Always, ConnFault::CloseAfterRequests(2)),
        EventSource::repeat(EVENT.to_vec(), 2),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    // The post is request 2; the /next behind it arrived with it, so it is not idle yet.
    let mut bytes = post(
        &format!("{API}/invocation/{}/response", r.request_id()),
        &[],
        EVENT,
    );
    bytes.extend_from_slice(&next_req());
    c.send(&bytes);
    assert_eq!(c.read().status, 202);
    let r = c.read();
    assert_eq!((r.status, r.body.as_slice()), (200, EVENT));
    let (rest, end) = c.read_until_end(LONG);
    assert_eq!((rest.as_slice(), end), (&b""[..], End::Eof));
    let mut c2 = Client::connect(sim.addr());
    assert_eq!(c2.respond(&r.request_id(), EVENT).status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.lost(), l.abandoned_polls), (2, 0, 0));
}

#[test]
fn idle_connection_closed_but_not_one_with_a_parked_poll() {
    let sim = sim(
        FaultPlan::new(1).connection(
            Schedule::Always,
            ConnFault::CloseWhenIdle(Duration::from_millis(50)),
        ),
        EventSource::repeat(EVENT.to_vec(), 2),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    // Idle now (the reply is flushed, the invocation not answered): closed.
    let (bytes, end) = c.read_until_end(LONG);
    assert_eq!((bytes.as_slice(), end), (&b""[..], End::Eof));
    // A poll parked on another connection (max concurrency 1) keeps it busy, not idle.
    let mut parked = Client::connect(sim.addr());
    parked.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sim.ledger().abandoned_polls, 0);
    let mut c2 = Client::connect(sim.addr());
    assert_eq!(c2.respond(&r.request_id(), EVENT).status, 202);
    let r2 = parked.read();
    assert_eq!(r2.status, 200);
    assert_eq!(parked.respond(&r2.request_id(), EVENT).status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.lost()), (2, 0));
    assert!(l.faults.get(FaultKind::CloseWhenIdle) >= 1, "{l:?}");
}

#[test]
fn bytes_pipelined_behind_a_faulted_reply_are_served_after_it() {
    let sim = one_fault(ReplyFault::Drip {
        delay: Duration::ZERO,
    });
    let mut c = Client::connect(sim.addr());
    // The /next and a request behind it in one write: hyper has read both when the /next is
    // taken over; the second must still be answered afterwards.
    let mut bytes = next_req();
    bytes.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: sim\r\n\r\n");
    c.send(&bytes);
    let r = c.read();
    assert_eq!((r.status, r.body.as_slice()), (200, EVENT));
    assert_eq!(c.read().status, 404);
    assert_eq!(c.respond(&r.request_id(), EVENT).status, 202);
    finish(sim);
}

/// Drives `n` invocations one after another on fresh connections, answering each that has a
/// usable id; returns which sequence numbers came without a request id.
fn missing_ids(seed: u64, n: u64) -> (Vec<u64>, FaultPlan) {
    let plan = FaultPlan::new(seed).reply(Schedule::Random(0.3), ReplyFault::MissingRequestId);
    let sim = sim(plan.clone(), EventSource::repeat(EVENT.to_vec(), n), 1);
    let mut c = Client::connect(sim.addr());
    let mut missing = Vec::new();
    for seq in 0..n {
        let r = c.next();
        match r.header("lambda-runtime-aws-request-id") {
            Some(id) => {
                let id = id.to_owned();
                assert_eq!(c.respond(&id, b"").status, 202);
            }
            None => missing.push(seq),
        }
    }
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_identity(&l);
    assert_eq!(l.lost(), 0);
    assert_eq!(l.unanswerable.missing_id, missing.len() as u64);
    (missing, plan)
}

#[test]
fn random_schedules_are_deterministic_by_seed() {
    let (a, plan) = missing_ids(7, 40);
    let (b, _) = missing_ids(7, 40);
    assert_eq!(a, b, "same seed, same faults");
    let predicted: Vec<u64> = (0..40).filter(|&s| plan.reply_fault(s).is_some()).collect();
    assert_eq!(a, predicted, "the plan says which invocations are faulted");
    assert!(!a.is_empty() && a.len() < 40);
    let (c, _) = missing_ids(8, 40);
    assert_ne!(a, c, "another seed, other faults");
}

#[test]
fn a_mixed_plan_keeps_the_ledger_identity() {
    // Several kinds at once, on several threads, with a client that copes with all of them.
    const N: u64 = 60;
    let plan = FaultPlan::new(99)
        .reply(Schedule::EveryKth(7), ReplyFault::ResetBeforeHead)
        .reply(Schedule::EveryKth(11), ReplyFault::MissingDeadline)
        .reply(Schedule::Random(0.1), ReplyFault::Garbage)
        .reply(Schedule::Random(0.1), ReplyFault::Chunked { chunk: 4 })
        .post(
            PostEndpoint::Response,
            Schedule::EveryKth(5),
            PostFault::Status(410),
        )
        .connection(Schedule::EveryKth(3), ConnFault::CloseAfterRequests(3));
    let sim = Simulator::builder()
        .max_concurrency(4)
        .threads(2)
        .events(EventSource::from_fn(N, |i| {
            Bytes::from(format!("{{\"i\":{i}}}"))
        }))
        .faults(plan)
        .start()
        .expect("start");
    let addr = sim.addr();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let Ok(mut c) = Client::try_connect(addr) else {
                    return;
                };
                loop {
                    // A write error shows up as a read error just below.
                    let _ = std::io::Write::write_all(&mut c.stream, &next_req());
                    let r = match c.try_read() {
                        Ok(r) => r,
                        Err(_) => {
                            // Reset, garbage (unparseable, then closed), a quiet close, or
                            // the simulator shutting down (then connecting fails: done).
                            match Client::try_connect(addr) {
                                Ok(fresh) => c = fresh,
                                Err(_) => return,
                            }
                            continue;
                        }
                    };
                    if r.status != 200 {
                        return;
                    }
                    let Some(id) = r.header("lambda-runtime-aws-request-id") else {
                        continue;
                    };
                    let path = if r.header("lambda-runtime-deadline-ms").is_some() {
                        format!("{API}/invocation/{id}/response")
                    } else {
                        error_path(id)
                    };
                    let req = post(&path, &[], &r.body);
                    let _ = std::io::Write::write_all(&mut c.stream, &req);
                    if c.try_read().is_err() {
                        // Closed under us while idle: the post was not read; send it again.
                        c = Client::connect(addr);
                        c.send(&req);
                        let a = c.read();
                        assert_ne!(a.status, 400, "retry must not be a duplicate");
                    }
                }
            })
        })
        .collect();
    assert!(sim.wait_until_done(LONG), "{:?}", sim.ledger());
    let l = sim.shutdown();
    for w in workers {
        // Parked polls are closed by the shutdown; the worker then gets an error and exits,
        // or it reconnects to a dead simulator and panics on connect.
        let _ = w.join();
    }
    assert_identity(&l);
    assert_eq!((l.handed_out, l.lost(), l.duplicates), (N, 0, 0), "{l:?}");
    assert!(l.unanswerable.reset_before_head > 0 && l.faults.get(FaultKind::Chunked) > 0);
}

#[test]
fn bad_plans_are_refused_at_start() {
    let bad = [
        FaultPlan::new(0).reply(Schedule::EveryKth(0), ReplyFault::Garbage),
        FaultPlan::new(0).reply(Schedule::Random(1.5), ReplyFault::Garbage),
        FaultPlan::new(0).reply(Schedule::Always, ReplyFault::UnsafeRequestId("a\nb".into())),
        FaultPlan::new(0).poll(Schedule::Always, PollFault::Status(200)),
        FaultPlan::new(0).post(PostEndpoint::Any, Schedule::Always, PostFault::Status(99)),
        FaultPlan::new(0).connection(Schedule::Always, ConnFault::CloseAfterRequests(0)),
    ];
    for plan in bad {
        let err = Simulator::builder().faults(plan.clone()).start();
        assert!(err.is_err(), "{plan:?}");
    }
}

#[test]
fn an_empty_plan_injects_nothing() {
    let sim = sim(FaultPlan::new(3), EventSource::repeat(EVENT.to_vec(), 2), 1);
    let mut c = Client::connect(sim.addr());
    for _ in 0..2 {
        let r = c.next();
        assert_eq!(c.respond(&r.request_id(), EVENT).status, 202);
    }
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.faults.total(), l.connections), (2, 0, 1));
}
