//! Tests of the Runtime API simulator, with raw HTTP/1.1 clients.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::sim_client::{API, Client, LONG, eventually, next_req, post, post_chunked};
use lambda_tpc::sim::{Arrival, EventFraming, EventSource, GO_CHUNKING_THRESHOLD, Simulator};

const EVENT: &[u8] = br#"{"hello":"world"}"#;

fn sim(events: EventSource, max: usize) -> Simulator {
    Simulator::builder()
        .max_concurrency(max)
        .events(events)
        .start()
        .expect("start")
}

#[test]
fn round_trip() {
    let sim = Simulator::builder()
        .events(EventSource::repeat(EVENT.to_vec(), 1))
        .tenant_id(Some("tenant-1".into()))
        .client_context(Some(String::new()))
        .deadline(Duration::from_secs(30))
        .validator(|e, r| e == r)
        .start()
        .expect("start");
    assert_eq!(sim.runtime_api(), sim.addr().to_string());
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    assert_eq!(r.body, EVENT);
    let id = r.request_id();
    assert!(
        id.len() == 36 && id.ends_with("-0000-4000-8000-000000000000"),
        "{id}"
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let deadline: u64 = r
        .header("lambda-runtime-deadline-ms")
        .expect("deadline")
        .parse()
        .expect("number");
    assert!(deadline > now_ms + 20_000 && deadline <= now_ms + 31_000);
    assert!(
        r.header("lambda-runtime-invoked-function-arn")
            .expect("arn")
            .starts_with("arn:aws:lambda:")
    );
    assert!(
        r.header("lambda-runtime-trace-id")
            .expect("trace")
            .starts_with("Root=1-")
    );
    assert_eq!(r.header("lambda-runtime-aws-tenant-id"), Some("tenant-1"));
    assert_eq!(r.header("lambda-runtime-client-context"), Some(""));
    assert_eq!(r.header("lambda-runtime-cognito-identity"), None);
    assert_eq!(r.header("lambda-runtime-invocation-id"), None);
    assert_eq!(sim.ledger().in_flight, 1);

    let a = c.respond(&id, EVENT);
    assert_eq!(a.status, 202);
    assert_eq!(a.body_str(), r#"{"status":"OK"}"#);
    assert!(sim.wait_until_done(LONG));
    assert_eq!(sim.latency().count, 1);
    let l = sim.shutdown();
    assert_eq!(l.handed_out, 1);
    assert_eq!(l.answered_ok, 1);
    assert_eq!(l.in_flight, 0);
    assert_eq!(l.lost(), 0);
    assert_eq!(l.mismatched, 0);
    assert_eq!(l.connections, 1);
}

#[test]
fn event_framing_follows_go_by_default() {
    let at_threshold = vec![b'1'; GO_CHUNKING_THRESHOLD];
    let above = vec![b'2'; GO_CHUNKING_THRESHOLD + 1];
    let cases: [(Option<EventFraming>, &[u8], bool); 6] = [
        (None, &at_threshold, false),
        (None, &above, true),
        (None, b"", false),
        (Some(EventFraming::ContentLength), &above, false),
        (Some(EventFraming::Chunked), &at_threshold[..3], true),
        (Some(EventFraming::Chunked), b"", true),
    ];
    for (framing, event, chunked) in cases {
        let case = format!("{framing:?}, {} bytes", event.len());
        let mut b = Simulator::builder()
            .events(EventSource::repeat(event.to_vec(), 1))
            .validator(|e, r| e == r);
        if let Some(f) = framing {
            b = b.event_framing(f);
        }
        let sim = b.start().expect("start");
        let mut c = Client::connect(sim.addr());
        let r = c.next();
        assert_eq!(r.body, event, "{case}");
        if chunked {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{case}");
            assert_eq!(r.header("content-length"), None, "{case}");
        } else {
            assert_eq!(r.header("transfer-encoding"), None, "{case}");
            let len = event.len().to_string();
            assert_eq!(r.header("content-length"), Some(len.as_str()), "{case}");
        }
        // The connection stays usable after the chunked body.
        assert_eq!(c.respond(&r.request_id(), event).status, 202, "{case}");
        let l = sim.shutdown();
        assert_eq!((l.answered_ok, l.mismatched), (1, 0), "{case}");
    }
}

#[test]
fn concurrency_limit_parks_third_poll() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 10), 2);
    let mut c1 = Client::connect(sim.addr());
    let mut c2 = Client::connect(sim.addr());
    let mut c3 = Client::connect(sim.addr());
    let r1 = c1.next();
    let r2 = c2.next();
    assert_ne!(r1.request_id(), r2.request_id());
    c3.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    assert!(c3.read_within(Duration::from_millis(200)).is_none());
    assert_eq!(sim.ledger().in_flight, 2);
    assert_eq!(c1.respond(&r1.request_id(), b"ok").status, 202);
    let r3 = c3.read();
    assert_eq!(r3.status, 200);
    let l = sim.ledger();
    assert_eq!((l.handed_out, l.in_flight, l.parked), (3, 2, 0));
}

#[test]
fn parked_polls_are_fifo() {
    let sim = sim(EventSource::from_fn(3, |i| Bytes::from(i.to_string())), 1);
    let mut c0 = Client::connect(sim.addr());
    let r0 = c0.next();
    assert_eq!(r0.body, b"0");
    let mut a = Client::connect(sim.addr());
    a.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    let mut b = Client::connect(sim.addr());
    b.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 2));
    assert_eq!(c0.respond(&r0.request_id(), b"").status, 202);
    let ra = a.read();
    assert_eq!(ra.body, b"1");
    assert!(b.read_within(Duration::from_millis(100)).is_none());
    assert_eq!(a.respond(&ra.request_id(), b"").status, 202);
    let rb = b.read();
    assert_eq!(rb.body, b"2");
    assert_eq!(b.respond(&rb.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
}

#[test]
fn duplicate_and_unknown_ids() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 1), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    assert_eq!(c.respond(&id, b"x").status, 202);
    let dup = c.respond(&id, b"x");
    assert_eq!(dup.status, 400);
    assert!(dup.body_str().contains("InvalidRequestID"));
    let dup_err = c.post(&format!("{API}/invocation/{id}/error"), &[], b"{}");
    assert_eq!(dup_err.status, 400);
    // Well-formed but never handed out, and not an id at all.
    let unknown = id.replace("-000000000000", "-0000000000ff");
    assert_eq!(c.respond(&unknown, b"x").status, 400);
    assert_eq!(c.respond("not-an-id", b"x").status, 400);
    let l = sim.shutdown();
    assert_eq!(l.duplicates, 2);
    assert_eq!(l.unknown_ids, 2);
    assert_eq!(l.answered_ok, 1);
}

#[test]
fn error_is_recorded() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 2), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let body = br#"{"errorType":"PanicError","errorMessage":"boom","stackTrace":[]}"#;
    let r = c.post(
        &format!("{API}/invocation/{id}/error"),
        &[("Lambda-Runtime-Function-Error-Type", "Runtime.Panic")],
        body,
    );
    assert_eq!(r.status, 202);
    // A malformed error body is still an error answer, with what could be read.
    let id2 = c.next().request_id();
    let r = c.post(&format!("{API}/invocation/{id2}/error"), &[], b"not json");
    assert_eq!(r.status, 202);
    assert!(sim.wait_until_done(LONG));
    let errors = sim.errors();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].request_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        errors[0].header_error_type.as_deref(),
        Some("Runtime.Panic")
    );
    assert_eq!(errors[0].error_type.as_deref(), Some("PanicError"));
    assert_eq!(errors[0].error_message.as_deref(), Some("boom"));
    assert!(!errors[0].streamed);
    assert_eq!(errors[1].error_type, None);
    let l = sim.shutdown();
    assert_eq!((l.answered_error, l.answered_ok, l.lost()), (2, 0, 0));
}

#[test]
fn oversized_response_gets_413_and_connection_stays_usable() {
    let sim = Simulator::builder()
        .events(EventSource::repeat(EVENT.to_vec(), 1))
        .response_limit(1000)
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let big = vec![b'a'; 5000];
    assert_eq!(c.respond(&id, &big).status, 413);
    // Chunked, too.
    c.send(&post_chunked(
        &format!("{API}/invocation/{id}/response"),
        &[],
        &big,
        7,
        &[],
    ));
    assert_eq!(c.read().status, 413);
    let l = sim.ledger();
    assert_eq!((l.too_large, l.in_flight, l.answered_ok), (2, 1, 0));
    // A 413 is not an answer: the error report that follows is accepted.
    let r = c.post(
        &format!("{API}/invocation/{id}/error"),
        &[(
            "Lambda-Runtime-Function-Error-Type",
            "Function.ResponseSizeTooLarge",
        )],
        br#"{"errorType":"Function.ResponseSizeTooLarge","errorMessage":"too big"}"#,
    );
    assert_eq!(r.status, 202);
    assert!(sim.wait_until_done(LONG));
    // Exactly at the limit is fine.
    let l = sim.shutdown();
    assert_eq!((l.answered_error, l.connections), (1, 1));
}

#[test]
fn response_at_default_limit_is_accepted() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 2), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let body = vec![b'x'; lambda_tpc::sim::RESPONSE_LIMIT];
    assert_eq!(c.respond(&id, &body).status, 202);
    let id = c.next().request_id();
    let body = vec![b'x'; lambda_tpc::sim::RESPONSE_LIMIT + 1];
    assert_eq!(c.respond(&id, &body).status, 413);
    assert_eq!(sim.ledger().too_large, 1);
}

/// `/error` bodies are capped at 1 MiB, as by AWS's emulator: one over it is refused with
/// 413 (not an answer), one at it is accepted.
#[test]
fn error_body_over_one_mib_gets_413() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 1), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let url = format!("{API}/invocation/{id}/error");
    let json = |len: usize| {
        let fixed = r#"{"errorType":"Function.Big","errorMessage":""}"#.len();
        format!(
            r#"{{"errorType":"Function.Big","errorMessage":"{}"}}"#,
            "m".repeat(len - fixed)
        )
    };
    let header = [("Lambda-Runtime-Function-Error-Type", "Function.Big")];
    let over = json(lambda_tpc::sim::ERROR_LIMIT + 1);
    assert_eq!(c.post(&url, &header, over.as_bytes()).status, 413);
    assert_eq!((sim.ledger().too_large, sim.ledger().in_flight), (1, 1));
    let at = json(lambda_tpc::sim::ERROR_LIMIT);
    assert_eq!(at.len(), lambda_tpc::sim::ERROR_LIMIT);
    assert_eq!(c.post(&url, &header, at.as_bytes()).status, 202);
    let l = sim.shutdown();
    assert_eq!((l.answered_error, l.too_large, l.lost()), (1, 1, 0));
}

#[test]
fn chunked_response_accepted_and_validated() {
    let sim = Simulator::builder()
        .events(EventSource::from_fn(2, |i| {
            Bytes::from(format!("{{\"n\":{i}}}").repeat(100))
        }))
        .validator(|e, r| e == r)
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    c.send(&post_chunked(
        &format!("{API}/invocation/{}/response", r.request_id()),
        &[],
        &r.body,
        5,
        &[],
    ));
    assert_eq!(c.read().status, 202);
    // A wrong echo is counted, still accepted.
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"nope").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.mismatched), (2, 1));
}

#[test]
fn streamed_response_with_error_trailers() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 2), 1);
    let mut c = Client::connect(sim.addr());
    let mode = ("Lambda-Runtime-Function-Response-Mode", "streaming");
    let trailer = (
        "Trailer",
        "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body",
    );
    let id = c.next().request_id();
    c.send(&post_chunked(
        &format!("{API}/invocation/{id}/response"),
        &[mode, trailer],
        b"partial output",
        3,
        &[
            ("Lambda-Runtime-Function-Error-Type", "Function.StreamError"),
            ("Lambda-Runtime-Function-Error-Body", "eyJlcnJvciI6MX0="),
        ],
    ));
    assert_eq!(c.read().status, 202);
    let id = c.next().request_id();
    c.send(&post_chunked(
        &format!("{API}/invocation/{id}/response"),
        &[mode],
        b"all good",
        2,
        &[],
    ));
    assert_eq!(c.read().status, 202);
    assert!(sim.wait_until_done(LONG));
    let errors = sim.errors();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].streamed);
    assert_eq!(
        errors[0].header_error_type.as_deref(),
        Some("Function.StreamError")
    );
    assert_eq!(errors[0].error_message.as_deref(), Some("eyJlcnJvciI6MX0="));
    let l = sim.shutdown();
    assert_eq!((l.streamed, l.answered_error, l.answered_ok), (2, 1, 1));
}

#[test]
fn bad_response_mode_is_400() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 1), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let r = c.post(
        &format!("{API}/invocation/{id}/response"),
        &[("Lambda-Runtime-Function-Response-Mode", "telepathic")],
        b"x",
    );
    assert_eq!(r.status, 400);
    assert_eq!(c.respond(&id, b"x").status, 202);
    let l = sim.shutdown();
    assert_eq!((l.bad_requests, l.answered_ok), (1, 1));
}

#[test]
fn pipelined_response_and_next_in_one_write() {
    let sim = sim(
        EventSource::from_fn(3, |i| Bytes::from(format!("ev{i}"))),
        1,
    );
    let mut c = Client::connect(sim.addr());
    let mut r = c.next();
    assert_eq!(r.body, b"ev0");
    for expected in [&b"ev1"[..], b"ev2"] {
        let mut bytes = post(
            &format!("{API}/invocation/{}/response", r.request_id()),
            &[],
            b"done",
        );
        bytes.extend_from_slice(&next_req());
        c.send(&bytes);
        assert_eq!(c.read().status, 202);
        r = c.read();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, expected);
    }
    // The last one, pipelined with a /next that parks (the source is exhausted): the 202 must
    // not wait behind it.
    let mut bytes = post(
        &format!("{API}/invocation/{}/response", r.request_id()),
        &[],
        b"done",
    );
    bytes.extend_from_slice(&next_req());
    c.send(&bytes);
    assert_eq!(c.read().status, 202);
    assert!(sim.wait_until_done(LONG));
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.connections, l.abandoned_polls), (3, 1, 0));
}

#[test]
fn pipelined_burst_of_requests() {
    // Several complete requests in one write, including unknown paths and ids.
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 1), 1);
    let mut c = Client::connect(sim.addr());
    let id = c.next().request_id();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: sim\r\n\r\n");
    bytes.extend_from_slice(&post(
        &format!("{API}/invocation/bogus/response"),
        &[],
        b"x",
    ));
    bytes.extend_from_slice(&post(&format!("{API}/invocation/{id}/response"), &[], b"x"));
    bytes.extend_from_slice(&post(&format!("{API}/invocation/{id}/response"), &[], b"x"));
    c.send(&bytes);
    let statuses: Vec<u16> = (0..4).map(|_| c.read().status).collect();
    assert_eq!(statuses, [404, 400, 202, 400]);
    let l = sim.shutdown();
    assert_eq!((l.bad_requests, l.unknown_ids, l.duplicates), (1, 1, 1));
}

#[test]
fn keep_alive_reuse() {
    const N: u64 = 2000;
    let sim = Simulator::builder()
        .events(EventSource::repeat(EVENT.to_vec(), N))
        .validator(|e, r| e == r)
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    for _ in 0..N {
        let r = c.next();
        assert_eq!(c.respond(&r.request_id(), &r.body).status, 202);
    }
    assert!(sim.wait_until_done(LONG));
    let lat = sim.latency();
    assert_eq!(lat.count, N);
    assert!(lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us);
    sim.reset_measurements();
    assert_eq!(sim.latency().count, 0);
    let l = sim.shutdown();
    assert_eq!((l.connections, l.answered_ok, l.mismatched), (1, N, 0));
}

#[test]
fn open_loop_rejects_when_busy() {
    const N: u64 = 200;
    let sim = Simulator::builder()
        .max_concurrency(1)
        .events(EventSource::repeat(EVENT.to_vec(), N))
        .arrival(Arrival::OpenLoop { per_sec: 2000.0 })
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    // The first /next starts the clock and gets the first arrival.
    let r = c.next();
    // Not answering: every later arrival finds the runtime at max concurrency.
    assert!(eventually(LONG, || sim.ledger().rejected == N - 1));
    assert!(!sim.wait_until_done(Duration::from_millis(10)));
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.handed_out, l.rejected, l.lost()), (1, N - 1, 0));
}

#[test]
fn open_loop_rejects_when_nobody_polls() {
    const N: u64 = 100;
    let sim = Simulator::builder()
        .max_concurrency(4)
        .events(EventSource::repeat(EVENT.to_vec(), N))
        .arrival(Arrival::OpenLoop { per_sec: 2000.0 })
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    // Capacity is free but no /next is parked: rejected.
    assert!(eventually(LONG, || sim.ledger().rejected == N - 1));
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
}

#[test]
fn paced_arrivals_queue_until_taken() {
    const N: u64 = 20;
    let sim = Simulator::builder()
        .max_concurrency(1)
        .events(EventSource::repeat(EVENT.to_vec(), N))
        .arrival(Arrival::Paced { per_sec: 200.0 })
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let t0 = Instant::now();
    for _ in 0..N {
        let r = c.next();
        assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    }
    // 20 events at 200/s cannot be done in less than ~100 ms.
    assert!(t0.elapsed() >= Duration::from_millis(90));
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.answered_ok, l.rejected), (N, 0));
}

#[test]
fn paced_backlog_is_not_rejected() {
    const N: u64 = 50;
    let sim = Simulator::builder()
        .max_concurrency(1)
        .events(EventSource::repeat(EVENT.to_vec(), N))
        .arrival(Arrival::Paced { per_sec: 5000.0 })
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    std::thread::sleep(Duration::from_millis(50)); // let the backlog build up
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    for _ in 1..N {
        let r = c.next();
        assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    }
    assert!(sim.wait_until_done(LONG));
    assert_eq!(sim.shutdown().rejected, 0);
}

#[test]
fn invocation_id_must_be_echoed() {
    let sim = Simulator::builder()
        .events(EventSource::repeat(EVENT.to_vec(), 2))
        .invocation_ids(true)
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    let r = c.next();
    let id = r.request_id();
    let inv = r
        .header("lambda-runtime-invocation-id")
        .expect("invocation id")
        .to_owned();
    assert_ne!(inv, id);
    let path = format!("{API}/invocation/{id}/response");
    assert_eq!(c.post(&path, &[], b"x").status, 400);
    assert_eq!(
        c.post(&path, &[("Lambda-Runtime-Invocation-Id", &id)], b"x")
            .status,
        400
    );
    assert_eq!(sim.ledger().in_flight, 1);
    assert_eq!(
        c.post(&path, &[("lambda-runtime-invocation-id", &inv)], b"x")
            .status,
        202
    );
    // Also on /error.
    let r = c.next();
    let id = r.request_id();
    let inv = r
        .header("lambda-runtime-invocation-id")
        .expect("invocation id")
        .to_owned();
    let path = format!("{API}/invocation/{id}/error");
    assert_eq!(c.post(&path, &[], b"{}").status, 400);
    assert_eq!(
        c.post(&path, &[("Lambda-Runtime-Invocation-Id", &inv)], b"{}")
            .status,
        202
    );
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!(l.invocation_id_violations, 3);
    assert_eq!((l.answered_ok, l.answered_error), (1, 1));
}

#[test]
fn init_error_recorded() {
    let sim = sim(EventSource::default(), 1);
    let mut c = Client::connect(sim.addr());
    let path = format!("{API}/init/error");
    let r = c.post(
        &path,
        &[("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")],
        br#"{"errorType":"ConfigError","errorMessage":"missing FOO"}"#,
    );
    assert_eq!(r.status, 202);
    let r = c.post(
        &path,
        &[],
        br#"{"errorType":"Second","errorMessage":"again"}"#,
    );
    assert_eq!(r.status, 403);
    let rec = sim.init_error().expect("init error");
    assert_eq!(rec.error_type.as_deref(), Some("Second"));
    assert_eq!(rec.request_id, None);
    assert_eq!(sim.ledger().init_errors, 2);
}

#[test]
fn unknown_paths_and_malformed_requests() {
    let sim = Simulator::builder()
        .path_prefix("/pfx")
        .start()
        .expect("start");
    let mut c = Client::connect(sim.addr());
    // Without the prefix: not found.
    c.send(&next_req());
    assert_eq!(c.read().status, 404);
    c.send(b"POST /pfx/2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read().status, 404);
    c.send(b"GET /pfx/2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read().status, 200);
    // Garbage: hyper answers 400 and closes.
    let mut g = Client::connect(sim.addr());
    g.send(b"GARBAGE\x01\x02 / HTTP/9\r\n\r\n");
    let r = g.try_read();
    assert!(r.map(|r| r.status == 400).unwrap_or(true));
    assert!(eventually(LONG, || sim.ledger().bad_requests == 3));
}

#[test]
fn closed_parked_poll_is_abandoned_not_served() {
    let sim = sim(
        EventSource::from_fn(2, |i| Bytes::from(format!("ev{i}"))),
        1,
    );
    let mut c1 = Client::connect(sim.addr());
    let r0 = c1.next();
    let mut c2 = Client::connect(sim.addr());
    c2.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    drop(c2);
    assert!(eventually(LONG, || sim.ledger().abandoned_polls == 1));
    assert_eq!(sim.ledger().parked, 0);
    let mut c3 = Client::connect(sim.addr());
    c3.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    assert_eq!(c1.respond(&r0.request_id(), b"").status, 202);
    let r1 = c3.read();
    assert_eq!(r1.body, b"ev1");
    assert_eq!(c3.respond(&r1.request_id(), b"").status, 202);
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!((l.lost(), l.abandoned_polls, l.handed_out), (0, 1, 2));
}

#[test]
fn unanswered_invocations_are_lost() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 2), 2);
    let mut c = Client::connect(sim.addr());
    let _ = c.next();
    let r = c.next();
    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
    drop(c);
    assert!(!sim.wait_until_done(Duration::from_millis(50)));
    let l = sim.shutdown();
    assert_eq!((l.handed_out, l.lost()), (2, 1));
}

#[test]
fn shutdown_closes_parked_connections() {
    let sim = sim(EventSource::repeat(EVENT.to_vec(), 0), 1);
    let mut c = Client::connect(sim.addr());
    c.send(&next_req());
    assert!(eventually(LONG, || sim.ledger().parked == 1));
    let l = sim.shutdown();
    assert_eq!(l.abandoned_polls, 0);
    assert!(c.closed_within(LONG));
    assert!(sim_is_gone(&c));
}

fn sim_is_gone(c: &Client) -> bool {
    std::net::TcpStream::connect(c.stream.peer_addr().expect("peer")).is_err()
}

fn many_connections(threads: usize, conns: usize, per_conn: u64) {
    let total = conns as u64 * per_conn;
    let sim = Simulator::builder()
        .max_concurrency(conns)
        .threads(threads)
        .events(EventSource::from_fn(total, |i| Bytes::from(i.to_string())))
        .validator(|e, r| e == r)
        .start()
        .expect("start");
    let addr = sim.addr();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut r = c.next();
                for i in 0..per_conn {
                    // Answer and poll again in one write, as a pipelining client would.
                    let mut bytes = post(
                        &format!("{API}/invocation/{}/response", r.request_id()),
                        &[],
                        &r.body,
                    );
                    let more = i + 1 < per_conn;
                    if more {
                        bytes.extend_from_slice(&next_req());
                    }
                    c.send(&bytes);
                    assert_eq!(c.read().status, 202);
                    if more {
                        r = c.read();
                        assert_eq!(r.status, 200);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!(l.answered_ok, total);
    assert_eq!(
        (l.mismatched, l.lost(), l.connections),
        (0, 0, conns as u64)
    );
}

#[test]
fn many_connections_one_thread() {
    many_connections(1, 128, 20);
}

#[test]
fn many_connections_two_threads() {
    many_connections(2, 64, 20);
}

#[test]
fn parked_polls_exceeding_concurrency() {
    // 256 connections parked at once, only 16 served at a time.
    const CONNS: usize = 256;
    let sim = Simulator::builder()
        .max_concurrency(16)
        .events(EventSource::repeat(EVENT.to_vec(), CONNS as u64))
        .start()
        .expect("start");
    let mut clients: Vec<Client> = (0..CONNS).map(|_| Client::connect(sim.addr())).collect();
    for c in &mut clients {
        c.send(&next_req());
    }
    assert!(eventually(LONG, || {
        let l = sim.ledger();
        l.handed_out == 16 && l.parked == (CONNS - 16) as u64
    }));
    // Each client answers when its event arrives; 16 at a time get one.
    let answerers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let r = c.read();
                assert_eq!(r.status, 200);
                assert_eq!(c.respond(&r.request_id(), b"").status, 202);
            })
        })
        .collect();
    for a in answerers {
        a.join().expect("client thread");
    }
    assert!(sim.wait_until_done(LONG));
    assert_eq!(sim.shutdown().answered_ok, CONNS as u64);
}

#[test]
fn parked_polls_woken_across_threads() {
    // max_concurrency 1 with 4 clients on 2 server threads: nearly every reply wakes a poll
    // parked on a connection served by the other thread.
    const CLIENTS: u64 = 4;
    const EACH: u64 = 50;
    let sim = Simulator::builder()
        .max_concurrency(1)
        .threads(2)
        .events(EventSource::repeat(EVENT.to_vec(), CLIENTS * EACH))
        .start()
        .expect("start");
    let addr = sim.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..EACH {
                    let r = c.next();
                    assert_eq!(c.respond(&r.request_id(), b"").status, 202);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert!(sim.wait_until_done(LONG));
    let l = sim.shutdown();
    assert_eq!(
        (l.answered_ok, l.lost(), l.connections),
        (CLIENTS * EACH, 0, CLIENTS)
    );
}

#[test]
fn start_errors_are_reported() {
    let a = sim(EventSource::default(), 1);
    let taken = Simulator::builder().bind(a.addr()).threads(2).start();
    assert!(taken.is_err());
    assert!(Simulator::builder().max_concurrency(0).start().is_err());
    assert!(
        Simulator::builder()
            .arrival(Arrival::OpenLoop { per_sec: 0.0 })
            .start()
            .is_err()
    );
    // The first simulator is unaffected.
    let mut c = Client::connect(a.addr());
    assert_eq!(c.next().status, 200);
}
