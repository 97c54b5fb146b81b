//! Streamed responses end to end: chunked posts with the streaming response mode, an HTTP
//! prelude, and mid-stream failures reported in the error trailers. The simulator decodes
//! the chunked body with hyper and checks it.

mod common;

use bytes::Bytes;
use common::{EXECS, nz, run_against_sim, run_on};
use futures_util::StreamExt;
use lambda_tpc::api::ERROR_TYPE_HANDLER_PANIC;
use lambda_tpc::sim::{ErrorRecord, EventSource, Simulator};
use lambda_tpc::streaming::{MetadataPrelude, StreamResponse};
use lambda_tpc::{BoxError, Config, LambdaEvent, Strategy};
use serde_json::Value;

fn lines(n: u64) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => 0,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn trailer_json(e: &ErrorRecord) -> Value {
    let raw = e.error_message.as_deref().expect("error body trailer");
    serde_json::from_slice(&decode_base64(raw)).expect("trailer body is base64 JSON")
}

#[test]
fn streamed_bodies_arrive_whole() {
    const N: u64 = 120;
    for exec in EXECS {
        for strategy in [Strategy::WorkerPerSlot, Strategy::Unbounded] {
            let what = format!("{exec:?}, {strategy}");
            let o = run_against_sim(
                Simulator::builder()
                    .max_concurrency(4)
                    .invocation_ids(true)
                    .events(EventSource::from_fn(N, |i| {
                        Bytes::from((i % 40).to_string())
                    }))
                    .validator(|event, response| {
                        let n: u64 = std::str::from_utf8(event)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        response == lines(n).as_bytes()
                    }),
                Config::builder().strategy(strategy),
                move |config| {
                    run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                        // Some empty chunks too: they must not end the body early.
                        let chunks =
                            (0..ev.payload).flat_map(|i| [format!("line {i}\n"), String::new()]);
                        Ok::<_, BoxError>(StreamResponse::new(futures_util::stream::iter(
                            chunks.map(Ok::<_, BoxError>),
                        )))
                    })
                },
            );
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            let l = &o.ledger;
            assert_eq!(
                (l.answered_ok, l.streamed, l.mismatched, l.lost()),
                (N, N, 0, 0),
                "{what}: {l:?}"
            );
            // No prelude: not declared as one, or a function URL would take the first
            // bytes of the body apart.
            assert_eq!(l.streamed_http_integration, 0, "{what}: {l:?}");
        }
    }
}

#[test]
fn prelude_comes_first() {
    let o = run_against_sim(
        Simulator::builder()
            .max_concurrency(2)
            .events(EventSource::repeat(&b"3"[..], 20))
            .validator(|_, response| {
                let Some(split) = response.windows(8).position(|w| w == [0u8; 8]) else {
                    return false;
                };
                let prelude: Value = match serde_json::from_slice(&response[..split]) {
                    Ok(v) => v,
                    Err(_) => return false,
                };
                prelude["statusCode"] == 201
                    && prelude["headers"]["content-type"] == "text/plain"
                    && prelude["cookies"][0] == "a=b"
                    && &response[split + 8..] == lines(3).as_bytes()
            }),
        Config::builder(),
        |config| {
            lambda_tpc::compio::run_concurrent_with_config(
                config,
                |ev: LambdaEvent<u64>| async move {
                    let prelude = MetadataPrelude {
                        status_code: 201,
                        headers: [("content-type".to_owned(), "text/plain".to_owned())].into(),
                        cookies: vec!["a=b".into()],
                    };
                    let body = futures_util::stream::iter(
                        (0..ev.payload).map(|i| Ok::<_, BoxError>(format!("line {i}\n"))),
                    );
                    Ok::<_, BoxError>(StreamResponse::new(body).with_prelude(prelude))
                },
            )
        },
    );
    let l = &o.ledger;
    // Declared as an HTTP integration response, or a function URL would hand the prelude
    // to the caller as part of the body (with status 200).
    assert_eq!(
        (
            l.answered_ok,
            l.streamed,
            l.streamed_http_integration,
            l.mismatched
        ),
        (20, 20, 20, 0),
        "{l:?}"
    );
}

/// A stream that fails (or panics) after its first chunk reports the error in the
/// trailers; the runtime keeps serving.
#[test]
fn mid_stream_failures_go_in_the_trailers() {
    for exec in EXECS {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::from_fn(30, |i| {
                    Bytes::from((i % 3).to_string())
                })),
            Config::builder().max_concurrency(nz(2)),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                    let mode = ev.payload;
                    let body = futures_util::stream::iter(0..3u64).map(move |i| match (mode, i) {
                        (1, 1) => Err::<String, BoxError>("boom".into()),
                        (2, 1) => panic!("stream panicked"),
                        _ => Ok(format!("chunk {i}\n")),
                    });
                    Ok::<_, BoxError>(StreamResponse::new(body))
                })
            },
        );
        let what = format!("{exec:?}");
        let l = &o.ledger;
        assert_eq!(
            (l.answered_ok, l.answered_error, l.lost()),
            (10, 20, 0),
            "{what}: {l:?}"
        );
        let trailers: Vec<(String, Value)> = o
            .errors
            .iter()
            .filter(|e| e.streamed)
            .map(|e| {
                (
                    e.header_error_type.clone().unwrap_or_default(),
                    trailer_json(e),
                )
            })
            .collect();
        assert_eq!(trailers.len(), 20, "{what}");
        assert!(
            trailers.iter().any(|(_, j)| j["errorMessage"] == "boom"),
            "{what}: {trailers:?}"
        );
        assert_eq!(
            trailers
                .iter()
                .filter(|(t, j)| t == ERROR_TYPE_HANDLER_PANIC
                    && j["errorMessage"] == "stream panicked")
                .count(),
            10,
            "{what}: {trailers:?}"
        );
    }
}

/// A mid-stream error with a long message still fits the trailer section Go's `net/http`
/// reads (the simulator refuses a longer one with 400, leaving the invocation unanswered):
/// the message is cut, the error type and the start of the message arrive.
#[test]
fn a_long_mid_stream_error_is_cut_to_fit_the_trailers() {
    for exec in EXECS {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(2)
                .events(EventSource::repeat(&b"1"[..], 4)),
            Config::builder().max_concurrency(nz(2)),
            move |config| {
                run_on(exec, config, |_: LambdaEvent<u64>| async move {
                    let body = futures_util::stream::iter(0..2u64).map(move |i| match i {
                        0 => Ok(format!("chunk {i}\n")),
                        _ => {
                            Err::<String, BoxError>(format!("long: {}", "x".repeat(50_000)).into())
                        }
                    });
                    Ok::<_, BoxError>(StreamResponse::new(body))
                })
            },
        );
        let what = format!("{exec:?}");
        let l = &o.ledger;
        assert_eq!(
            (l.answered_error, l.bad_requests, l.lost()),
            (4, 0, 0),
            "{what}: {l:?}"
        );
        let streamed: Vec<_> = o.errors.iter().filter(|e| e.streamed).collect();
        assert_eq!(streamed.len(), 4, "{what}");
        for e in streamed {
            let json = trailer_json(e);
            let message = json["errorMessage"].as_str().unwrap_or_default();
            assert!(message.starts_with("long: xxx"), "{what}: {json}");
            assert!(message.len() < 4096, "{what}: {} bytes", message.len());
        }
    }
}

/// A chunk that panics when read (`as_ref`) or when dropped.
struct BadChunk {
    panics_in_as_ref: bool,
}

impl AsRef<[u8]> for BadChunk {
    fn as_ref(&self) -> &[u8] {
        if self.panics_in_as_ref {
            panic!("chunk as_ref panicked")
        }
        b"bad chunk\n"
    }
}

impl Drop for BadChunk {
    fn drop(&mut self) {
        if !self.panics_in_as_ref && !std::thread::panicking() {
            panic!("chunk drop panicked")
        }
    }
}

/// The chunk type is user code too: a chunk whose `as_ref` or `Drop` panics fails the
/// stream with `Runtime.HandlerPanic` in the trailers, and the slot serves on (one slot).
#[test]
fn a_chunk_that_panics_fails_the_stream_with_handler_panic() {
    const N: u64 = 6;
    for exec in EXECS {
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(1)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string()))),
            Config::builder()
                .cores(lambda_tpc::Cores::Count(nz(1)))
                .shutdown_grace(std::time::Duration::from_secs(30)),
            move |config| {
                run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                    let panics_in_as_ref = ev.payload.is_multiple_of(2);
                    let body = futures_util::stream::iter([Ok::<_, BoxError>(BadChunk {
                        panics_in_as_ref,
                    })]);
                    Ok::<_, BoxError>(StreamResponse::new(body))
                })
            },
        );
        let what = format!("{exec:?}");
        let l = &o.ledger;
        assert!(o.done, "{what}: {l:?}");
        assert_eq!((l.answered_error, l.lost()), (N, 0), "{what}: {l:?}");
        let messages: Vec<String> = o
            .errors
            .iter()
            .filter(|e| {
                e.streamed && e.header_error_type.as_deref() == Some(ERROR_TYPE_HANDLER_PANIC)
            })
            .map(|e| {
                trailer_json(e)["errorMessage"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(messages.len() as u64, N, "{what}: {:?}", o.errors);
        for panic in ["chunk as_ref panicked", "chunk drop panicked"] {
            let n = messages.iter().filter(|m| *m == panic).count() as u64;
            assert_eq!(n, N / 2, "{what}: {messages:?}");
        }
        assert!(
            o.shutdown_took < std::time::Duration::from_secs(20),
            "{what}"
        );
    }
}

/// The server closes keep-alive connections that sit idle for 20 ms, and every handler
/// takes 50 ms: a streamed response must not be lost on a connection closed meanwhile (a
/// stream cannot be replayed the way a buffered post is, so it always goes on a fresh one).
#[test]
fn streamed_response_after_an_idle_close_is_delivered() {
    use lambda_tpc::sim::{ConnFault, FaultPlan, Schedule};
    use std::time::Duration;
    const N: u64 = 8;
    for exec in EXECS {
        for (strategy, deferred) in [
            (Strategy::WorkerPerSlot, true),
            (Strategy::WorkerPerSlot, false),
            (Strategy::Unbounded, false),
        ] {
            let what = format!("{exec:?}, {strategy}, deferred replies {deferred}");
            let plan = FaultPlan::new(7).connection(
                Schedule::Always,
                ConnFault::CloseWhenIdle(Duration::from_millis(20)),
            );
            let o = run_against_sim(
                Simulator::builder()
                    .max_concurrency(2)
                    .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string())))
                    .validator(|event, response| {
                        response == format!("v{}", String::from_utf8_lossy(event)).as_bytes()
                    })
                    .faults(plan),
                Config::builder()
                    .cores(lambda_tpc::Cores::Count(nz(1)))
                    .strategy(strategy)
                    .deferred_post_replies(deferred),
                move |config| {
                    // Longer than the idle close, on the executor's own timer.
                    let slow = Duration::from_millis(50);
                    let reply = |n: u64| {
                        StreamResponse::new(futures_util::stream::iter([Ok::<_, BoxError>(
                            format!("v{n}"),
                        )]))
                    };
                    match exec {
                        _ if exec.is_compio() => common::run_compio_on(
                            exec,
                            config,
                            move |ev: LambdaEvent<u64>| async move {
                                compio::time::sleep(slow).await;
                                Ok::<_, BoxError>(reply(ev.payload))
                            },
                        ),
                        _ => run_on(exec, config, move |ev: LambdaEvent<u64>| async move {
                            tokio::time::sleep(slow).await;
                            Ok::<_, BoxError>(reply(ev.payload))
                        }),
                    }
                },
            );
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            let l = &o.ledger;
            assert_eq!(
                (l.answered_ok, l.streamed, l.mismatched, l.lost()),
                (N, N, 0, 0),
                "{what}: {l:?}"
            );
            // No prelude: not declared as one, or a function URL would take the first
            // bytes of the body apart.
            assert_eq!(l.streamed_http_integration, 0, "{what}: {l:?}");
        }
    }
}

/// Panics when dropped (outside an unwind).
struct Bomb(u64);

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("stream drop panic {}", self.0)
        }
    }
}

/// A stream that panics when dropped (after it ended) still delivers what it streamed;
/// the panic is counted and the core keeps serving (one slot, so the next invocation is
/// only served if the slot survived).
#[test]
fn a_stream_that_panics_when_dropped_is_still_delivered() {
    const N: u64 = 6;
    for exec in EXECS {
        for strategy in [Strategy::WorkerPerSlot, Strategy::Unbounded] {
            let what = format!("{exec:?}, {strategy}");
            let o = run_against_sim(
                Simulator::builder()
                    .max_concurrency(1)
                    .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string())))
                    .validator(|_, response| response == b"chunk\n"),
                Config::builder()
                    .strategy(strategy)
                    .cores(lambda_tpc::Cores::Count(nz(1)))
                    .shutdown_grace(std::time::Duration::from_secs(30)),
                move |config| {
                    run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                        let bomb = Bomb(ev.payload);
                        let stream = futures_util::stream::iter([Ok::<_, BoxError>("chunk\n")])
                            .map(move |c| {
                                let _keep = &bomb;
                                c
                            });
                        Ok::<_, BoxError>(StreamResponse::new(stream))
                    })
                },
            );
            let l = &o.ledger;
            assert!(o.done && o.result.is_ok(), "{what}: {:?} {l:?}", o.result);
            assert_eq!(
                (l.answered_ok, l.streamed, l.mismatched, l.lost()),
                (N, N, 0, 0),
                "{what}: {l:?}"
            );
            assert!(
                o.shutdown_took < std::time::Duration::from_secs(20),
                "{what}"
            );
            assert_eq!(o.report.expect("report").cores[0].panics, N, "{what}");
        }
    }
}

/// A stream that never ends is cut off at the invocation's deadline like a handler that
/// never returns: `Runtime.DeadlineExceeded` in the trailers, and the slot serves again
/// (one slot, so the second invocation is only served if the first let go). Whether the
/// stream waits forever, or never waits (chunks always ready, empty or not).
#[test]
fn a_stream_still_running_at_the_deadline_is_cut_off() {
    use lambda_tpc::api::ERROR_TYPE_DEADLINE_EXCEEDED;
    for exec in EXECS {
        for kind in ["waits", "empty chunks", "one-byte chunks"] {
            let o = run_against_sim(
                Simulator::builder()
                    .max_concurrency(1)
                    .deadline(std::time::Duration::from_millis(300))
                    .events(EventSource::from_fn(2, |i| Bytes::from(i.to_string()))),
                Config::builder().cores(lambda_tpc::Cores::Count(nz(1))),
                move |config| {
                    run_on(exec, config, move |_: LambdaEvent<u64>| async move {
                        let first = futures_util::stream::iter([Ok::<_, BoxError>("started\n")]);
                        let rest: futures_util::stream::BoxStream<'static, Result<&str, BoxError>> =
                            match kind {
                                "waits" => futures_util::stream::pending().boxed(),
                                "empty chunks" => {
                                    futures_util::stream::repeat_with(|| Ok("")).boxed()
                                }
                                _ => futures_util::stream::repeat_with(|| Ok("x")).boxed(),
                            };
                        Ok::<_, BoxError>(StreamResponse::new(first.chain(rest)))
                    })
                },
            );
            let what = format!("{exec:?}, {kind}");
            let l = &o.ledger;
            assert!(o.done, "{what}: {l:?}");
            assert_eq!((l.answered_error, l.lost()), (2, 0), "{what}: {l:?}");
            assert!(
                o.errors.iter().all(|e| e.streamed
                    && e.header_error_type.as_deref() == Some(ERROR_TYPE_DEADLINE_EXCEEDED)),
                "{what}: {:?}",
                o.errors
            );
        }
    }
}
