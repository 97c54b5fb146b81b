//! Fault injection end to end: the runtime against a simulator that misbehaves on purpose,
//! for every executor (compio on io_uring and on epoll, tokio per core, the multi-thread
//! shim), strategy and (for worker-per-slot) pipelining on and off.
//!
//! After every run the simulator's ledger must show each invocation handed out settled
//! exactly once: `handed_out == answered_ok + answered_error + unanswerable`, `lost() == 0`,
//! no duplicate or unknown reply, and the unanswerable ones exactly those the fault plan made
//! unanswerable (see `lambda_tpc::sim::fault` for which those are). The invocations expected
//! to be answered with an error are checked one by one: the right ones, with the right type.
//!
//! A test that fails because the runtime lacks a behaviour is kept, with its assertions, and
//! marked `#[ignore = "runtime: <what is missing>"]`.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Outcome, nz, run_against_started_sim, run_against_started_sim_via};
use lambda_tpc::api::{
    ERROR_TYPE_EVENT_READ, ERROR_TYPE_EVENT_TOO_LARGE, ERROR_TYPE_INVALID_INVOCATION,
    ERROR_TYPE_RESPONSE_TOO_LARGE,
};
use lambda_tpc::sim::{
    ConnFault, EventSource, FaultKind, FaultPlan, PollFault, PostEndpoint, PostFault, ReplyFault,
    Schedule, Simulator, SimulatorBuilder, Unanswerable,
};
use lambda_tpc::{BoxError, Config, ConfigBuilder, Control, Cores, LambdaEvent, Strategy};
use serde_json::Value;

/// Bound on one run; a healthy one takes well under a second.
const RUN_BOUND: Duration = Duration::from_secs(20);

/// Generous bound on how long a run may take to return after a container error.
const PROMPT: Duration = Duration::from_secs(10);

const SEED: u64 = 0x5eed;

/// The executors the runtime can run on. Adding one is one variant here and one arm in
/// [`Executor::run`], the only place they are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Executor {
    Compio,
    CompioEpoll,
    TokioPerCore,
    TokioMultiThread,
}

impl Executor {
    const ALL: [Executor; 4] = [
        Executor::Compio,
        Executor::CompioEpoll,
        Executor::TokioPerCore,
        Executor::TokioMultiThread,
    ];

    /// Runs the test handler until shutdown: it echoes the event, after sleeping `sleep_ms`
    /// if the event has that field.
    fn run(self, config: Config) -> Result<(), lambda_tpc::Error> {
        let exec = match self {
            Executor::Compio => common::Exec::Compio,
            Executor::CompioEpoll => common::Exec::CompioEpoll,
            Executor::TokioPerCore => common::Exec::TokioPerCore,
            Executor::TokioMultiThread => common::Exec::TokioMultiThread,
        };
        if exec.is_compio() {
            common::run_compio_on(exec, config, |ev: LambdaEvent<Value>| async move {
                if let Some(ms) = ev.payload.get("sleep_ms").and_then(Value::as_u64) {
                    compio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok::<_, BoxError>(ev.payload)
            })
        } else {
            common::run_on(exec, config, |ev: LambdaEvent<Value>| async move {
                if let Some(ms) = ev.payload.get("sleep_ms").and_then(Value::as_u64) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok::<_, BoxError>(ev.payload)
            })
        }
    }
}

/// One combination the fault tests run under.
#[derive(Debug, Clone, Copy)]
struct Case {
    executor: Executor,
    strategy: Strategy,
    pipelining: bool,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}, {}, pipelining {}",
            self.executor, self.strategy, self.pipelining
        )
    }
}

/// Every executor and strategy; pipelining on and off where it matters (only worker-per-slot
/// pipelines its post with the next `/next`).
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for executor in Executor::ALL {
        for (strategy, pipelining) in [
            (Strategy::WorkerPerSlot, false),
            (Strategy::WorkerPerSlot, true),
            (Strategy::Unbounded, false),
            (Strategy::Semaphore { permits: nz(2) }, false),
        ] {
            v.push(Case {
                executor,
                strategy,
                pipelining,
            });
        }
    }
    v
}

/// Event `i`: JSON of varying size, so cuts land in different places.
fn event(i: u64) -> Bytes {
    let pad = "p".repeat((i as usize * 53) % 400 + 8);
    Bytes::from(format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// What one run produced, with the request id of every invocation (index = sequence).
struct Run {
    o: Outcome,
    ids: Vec<String>,
    what: String,
    /// The simulator's address: what this run's log lines name (tests share the log).
    api: String,
}

impl Run {
    /// The error type posted for each invocation answered with an error, by sequence number.
    fn error_types(&self) -> BTreeMap<u64, String> {
        self.o
            .errors
            .iter()
            .map(|e| {
                let id = e.request_id.as_deref().unwrap_or("");
                let seq = self
                    .ids
                    .iter()
                    .position(|i| i == id)
                    .unwrap_or_else(|| panic!("{}: error for unknown id {id:?}", self.what));
                let ty = e.error_type.clone().unwrap_or_default();
                assert_eq!(
                    e.header_error_type.as_deref(),
                    Some(ty.as_str()),
                    "{}: header and body error types differ",
                    self.what
                );
                (seq as u64, ty)
            })
            .collect()
    }

    fn post_failures(&self) -> u64 {
        post_failures(&self.o)
    }
}

/// Posts that failed, over the run's cores (0 without a report).
fn post_failures(o: &common::Outcome) -> u64 {
    core_sum(o, |c| c.post_failures)
}

/// A count summed over the run's cores (0 without a report).
fn core_sum(o: &common::Outcome, count: impl Fn(&lambda_tpc::CoreReport) -> u64) -> u64 {
    o.report
        .as_ref()
        .map_or(0, |r| r.cores.iter().map(count).sum())
}

/// A simulator of `n` events with the validator on, the given plan, and `max` concurrency.
fn sim(plan: FaultPlan, n: u64, max: usize) -> SimulatorBuilder {
    Simulator::builder()
        .max_concurrency(max)
        .events(EventSource::from_fn(n, event))
        .validator(same_json)
        .faults(plan)
}

/// Runs `case` against `sim` (one core, so runs are comparable), with `config` on top.
fn run(case: Case, sim: SimulatorBuilder, config: ConfigBuilder, n: u64) -> Run {
    logs::init();
    let sim = sim.start().expect("simulator starts");
    let ids = (0..n).map(|s| sim.request_id(s)).collect();
    let api = sim.runtime_api().to_owned();
    let config = config
        .strategy(case.strategy)
        .pipelining(case.pipelining)
        .cores(Cores::Count(nz(1)));
    let executor = case.executor;
    let o = run_against_started_sim(sim, config, move |c| executor.run(c), RUN_BOUND);
    Run {
        o,
        ids,
        what: case.to_string(),
        api,
    }
}

/// How each invocation is expected to end.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expect {
    ok: u64,
    /// Sequence number to error type.
    errors: BTreeMap<u64, String>,
    unanswerable: Unanswerable,
}

/// The ledger identity and the expected settlement of every invocation.
fn check(r: &Run, n: u64, expect: &Expect) {
    let (o, what) = (&r.o, &r.what);
    let l = &o.ledger;
    assert!(o.done, "{what}: the run did not settle every event: {l:?}");
    assert!(o.result.is_ok(), "{what}: {:?}", o.result);
    assert_eq!(l.handed_out, n, "{what}: {l:?}");
    assert_eq!(
        l.handed_out,
        l.answered_ok + l.answered_error + l.unanswerable.total(),
        "{what}: identity: {l:?}"
    );
    assert_eq!(l.lost(), 0, "{what}: {l:?}");
    assert_eq!(l.duplicates, 0, "{what}: {l:?}");
    assert_eq!(l.unknown_ids, 0, "{what}: {l:?}");
    assert_eq!(l.mismatched, 0, "{what}: {l:?}");
    assert_eq!(l.invocation_id_violations, 0, "{what}: {l:?}");
    assert_eq!(l.bad_requests, 0, "{what}: {l:?}");
    assert_eq!(l.unanswerable, expect.unanswerable, "{what}: {l:?}");
    assert_eq!(l.answered_ok, expect.ok, "{what}: {l:?}");
    assert_eq!(
        l.answered_error,
        expect.errors.len() as u64,
        "{what}: {l:?}"
    );
    assert_eq!(
        r.error_types(),
        expect.errors,
        "{what}: errors by invocation"
    );
}

/// [`check`] for a run in which every invocation is answered successfully.
fn check_all_ok(r: &Run, n: u64) {
    check(
        r,
        n,
        &Expect {
            ok: n,
            ..Expect::default()
        },
    );
}

/// How a reply fault's invocation is expected to end.
#[derive(Clone, Copy)]
enum Ends {
    Ok,
    Error(&'static str),
    Unanswerable(fn(&mut Unanswerable) -> &mut u64),
}

/// The expected end of every invocation under `plan` (reply and post faults only).
fn expect_for(plan: &FaultPlan, n: u64) -> Expect {
    let mut e = Expect::default();
    for seq in 0..n {
        let ends = match plan.reply_fault(seq) {
            None => Ends::Ok,
            Some(f) => ends_of(f),
        };
        match ends {
            Ends::Ok if plan.post_fault(seq, false) == Some(&PostFault::Status(413)) => {
                e.errors
                    .insert(seq, ERROR_TYPE_RESPONSE_TOO_LARGE.to_owned());
            }
            Ends::Ok => e.ok += 1,
            Ends::Error(ty) => {
                e.errors.insert(seq, ty.to_owned());
            }
            Ends::Unanswerable(counter) => *counter(&mut e.unanswerable) += 1,
        }
    }
    e
}

/// What a correct runtime does with each reply fault (see `lambda_tpc::sim::fault`).
fn ends_of(f: &ReplyFault) -> Ends {
    match f {
        ReplyFault::ResetBeforeHead => Ends::Unanswerable(|u| &mut u.reset_before_head),
        ReplyFault::ResetMidHead => Ends::Unanswerable(|u| &mut u.reset_mid_head),
        ReplyFault::Garbage => Ends::Unanswerable(|u| &mut u.garbage),
        ReplyFault::OversizedHead => Ends::Unanswerable(|u| &mut u.oversized_head),
        ReplyFault::MissingRequestId => Ends::Unanswerable(|u| &mut u.missing_id),
        ReplyFault::UnsafeRequestId(_) => Ends::Unanswerable(|u| &mut u.unsafe_id),
        ReplyFault::ResetMidBody
        | ReplyFault::WrongContentLength { .. }
        | ReplyFault::BadChunkSize => Ends::Error(ERROR_TYPE_EVENT_READ),
        ReplyFault::OversizedBody { .. } => Ends::Error(ERROR_TYPE_EVENT_TOO_LARGE),
        ReplyFault::MissingDeadline | ReplyFault::InvalidDeadline => {
            Ends::Error(ERROR_TYPE_INVALID_INVOCATION)
        }
        ReplyFault::Drip { .. } | ReplyFault::Chunked { .. } => Ends::Ok,
        other => panic!("no expectation for {other:?}"),
    }
}

/// Runs every case with `plan` over `n` events and checks the ledger against what the plan
/// implies; `config` adds settings (e.g. a smaller event limit). Returns the runs.
fn every_case(plan: &FaultPlan, n: u64, max: usize, config: fn() -> ConfigBuilder) -> Vec<Run> {
    let expect = expect_for(plan, n);
    cases()
        .into_iter()
        .map(|case| {
            let r = run(case, sim(plan.clone(), n, max), config(), n);
            check(&r, n, &expect);
            r
        })
        .collect()
}

/// Faults `fault` on invocations 3, 7 and 11 of 12, under every case.
fn reply_fault(fault: ReplyFault, config: fn() -> ConfigBuilder) {
    const N: u64 = 12;
    let kind = fault.kind();
    let plan = FaultPlan::new(SEED).reply(Schedule::EveryKth(4), fault);
    for r in every_case(&plan, N, 3, config) {
        assert_eq!(r.o.ledger.faults.get(kind), 3, "{}", r.what);
    }
}

fn defaults() -> ConfigBuilder {
    Config::builder()
}

fn small_event_limit() -> ConfigBuilder {
    Config::builder().max_event_bytes(4096)
}

#[test]
fn reset_before_the_head_is_unanswerable_and_polling_goes_on() {
    reply_fault(ReplyFault::ResetBeforeHead, defaults);
}

#[test]
fn reset_mid_head_is_unanswerable() {
    reply_fault(ReplyFault::ResetMidHead, defaults);
}

#[test]
fn reset_mid_body_is_answered_with_an_event_read_error() {
    reply_fault(ReplyFault::ResetMidBody, defaults);
}

#[test]
fn dripped_reply_is_answered_normally() {
    const N: u64 = 12;
    for case in cases() {
        // One byte per write everywhere; paced at 1 ms a byte (about a second per reply, so
        // once) for the first strategy of each executor, only yielding in between otherwise.
        let mut plan = FaultPlan::new(SEED);
        if case.strategy == Strategy::WorkerPerSlot && !case.pipelining {
            let delay = Duration::from_millis(1);
            plan = plan.reply(Schedule::Nth(2), ReplyFault::Drip { delay });
        }
        let delay = Duration::ZERO;
        plan = plan.reply(Schedule::EveryKth(4), ReplyFault::Drip { delay });
        let r = run(case, sim(plan.clone(), N, 3), defaults(), N);
        check(&r, N, &expect_for(&plan, N));
        assert!(r.o.ledger.faults.get(FaultKind::Drip) >= 3, "{}", r.what);
    }
}

#[test]
fn garbage_is_unanswerable() {
    reply_fault(ReplyFault::Garbage, defaults);
}

#[test]
fn oversized_head_is_unanswerable() {
    reply_fault(ReplyFault::OversizedHead, defaults);
}

#[test]
fn oversized_body_is_answered_event_too_large() {
    for chunked in [false, true] {
        reply_fault(
            ReplyFault::OversizedBody {
                len: 20_000,
                chunked,
            },
            small_event_limit,
        );
    }
}

#[test]
fn body_over_the_default_event_limit_is_answered_event_too_large() {
    const N: u64 = 4;
    let len = lambda_tpc::http::DEFAULT_MAX_BODY_BYTES as u64 + 1;
    let plan = FaultPlan::new(SEED).reply(
        Schedule::Nth(1),
        ReplyFault::OversizedBody {
            len,
            chunked: false,
        },
    );
    every_case(&plan, N, 2, defaults);
}

#[test]
fn wrong_content_length_is_answered_with_an_event_read_error() {
    reply_fault(ReplyFault::WrongContentLength { extra: 7 }, defaults);
}

#[test]
fn bad_chunk_size_is_answered_with_an_event_read_error() {
    reply_fault(ReplyFault::BadChunkSize, defaults);
}

#[test]
fn chunked_reply_is_answered_normally() {
    reply_fault(ReplyFault::Chunked { chunk: 7 }, defaults);
}

#[test]
fn missing_request_id_is_unanswerable() {
    reply_fault(ReplyFault::MissingRequestId, defaults);
}

#[test]
fn missing_or_invalid_deadline_is_answered_invalid_invocation() {
    reply_fault(ReplyFault::MissingDeadline, defaults);
    reply_fault(ReplyFault::InvalidDeadline, defaults);
}

#[test]
fn unsafe_request_ids_are_unanswerable_and_never_used() {
    for id in ["../../runtime/init/error", "id with spaces"] {
        reply_fault(ReplyFault::UnsafeRequestId(id.into()), defaults);
    }
}

/// What a run that is expected to end by itself produced.
struct Returned {
    result: Result<(), lambda_tpc::Error>,
    ledger: lambda_tpc::sim::Ledger,
    /// Whether it returned within [`PROMPT`] (it is shut down otherwise).
    in_time: bool,
    took: Duration,
}

/// Runs `case` with one poller on one core against a simulator of 100 events faulted by
/// `plan`, with `config` for the rest, until the run returns on its own or [`PROMPT`]
/// passes.
fn run_until_it_returns(plan: FaultPlan, case: Case, config: ConfigBuilder) -> Returned {
    let sim = sim(plan, 100, 1).start().expect("simulator");
    let control = Control::new();
    let config = config
        .runtime_api(sim.runtime_api())
        .max_concurrency(nz(1))
        .strategy(case.strategy)
        .pipelining(case.pipelining)
        .cores(Cores::Count(nz(1)))
        .control(control.clone())
        .build_with(|_| None)
        .expect("config");
    let started = Instant::now();
    let runtime = thread::spawn(move || case.executor.run(config));
    while !runtime.is_finished() && started.elapsed() < PROMPT {
        thread::sleep(Duration::from_millis(5));
    }
    let in_time = runtime.is_finished();
    let took = started.elapsed();
    control.shutdown();
    let result = runtime.join().expect("runtime thread");
    Returned {
        result,
        ledger: sim.shutdown(),
        in_time,
        took,
    }
}

/// 500 and 403 on `/next` are container errors: the run returns promptly with an error that
/// says so, after settling what it had already taken.
#[test]
fn next_500_or_403_makes_the_run_return_promptly() {
    logs::init();
    for status in [500, 403] {
        for case in cases() {
            let what = format!("{status}, {case}");
            // One poller, so exactly the invocations of /next 0..4 are taken before it.
            let plan = FaultPlan::new(SEED).poll(Schedule::From(4), PollFault::Status(status));
            let Returned {
                result,
                ledger: l,
                in_time,
                ..
            } = run_until_it_returns(plan, case, Config::builder());
            assert!(in_time, "{what}: still running after {PROMPT:?}: {l:?}");
            let err = result.expect_err(&what);
            assert!(err.is_container_error(), "{what}: {err}");
            assert_eq!(err.status_code(), Some(status), "{what}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&status.to_string()) && msg.contains("injected fault"),
                "{what}: the message should give the status and the API's body: {msg}"
            );
            assert_eq!(l.handed_out, 4, "{what}: {l:?}");
            assert_eq!((l.answered_ok, l.lost()), (4, 0), "{what}: {l:?}");
            assert!(l.faults.get(FaultKind::PollStatus) >= 1, "{what}: {l:?}");
        }
    }
}

/// Most connection attempts a backing-off poller may make in `window` (5 ms doubling, each
/// delay at least half its ceiling: 8 fit in 300 ms), with a wide margin. A poller that
/// retried without backing off would make thousands.
fn attempts_bound(pollers: u64) -> u64 {
    pollers * 16
}

#[test]
fn connections_refused_at_start_are_retried_with_backoff() {
    const N: u64 = 10;
    const POLLERS: usize = 2;
    let plan = FaultPlan::new(SEED).connection(
        Schedule::Nth(0),
        ConnFault::RefuseFor(Duration::from_millis(300)),
    );
    for r in every_case(&plan, N, POLLERS, defaults) {
        let l = &r.o.ledger;
        let refused = l.faults.get(FaultKind::Refused);
        assert!(refused >= POLLERS as u64, "{}: {l:?}", r.what);
        assert!(
            refused <= attempts_bound(POLLERS as u64),
            "{}: {refused} attempts during the refusal: no backoff? {l:?}",
            r.what
        );
        // This run's own retry line (the log is shared by every case and test).
        assert!(
            logs::contains_line(&["/next failed; retrying", &format!("api={}", r.api)]),
            "{}: the retries are logged",
            r.what
        );
    }
}

#[test]
fn outage_mid_run_is_retried_with_backoff() {
    const N: u64 = 10;
    // One poller: its /next number 4 finds the API gone for 200 ms.
    let plan = FaultPlan::new(SEED).poll(
        Schedule::Nth(4),
        PollFault::Outage(Duration::from_millis(200)),
    );
    for r in every_case(&plan, N, 1, defaults) {
        let l = &r.o.ledger;
        assert_eq!(l.faults.get(FaultKind::Outage), 1, "{}: {l:?}", r.what);
        let refused = l.faults.get(FaultKind::Refused);
        assert!(
            (1..=attempts_bound(1)).contains(&refused),
            "{}: {refused} refused: {l:?}",
            r.what
        );
    }
}

/// A Runtime API that stays gone: the run gives up after the unreachable timeout with an
/// error that says so (and names the last failure), instead of retrying forever.
#[test]
fn runtime_api_gone_for_good_ends_the_run_with_an_error() {
    logs::init();
    const TIMEOUT: Duration = Duration::from_millis(300);
    for case in cases() {
        let what = case.to_string();
        // One poller: its /next number 3 finds the API gone for longer than the test.
        let plan = FaultPlan::new(SEED).poll(
            Schedule::Nth(3),
            PollFault::Outage(Duration::from_secs(600)),
        );
        let Returned {
            result,
            ledger: l,
            in_time,
            took,
        } = run_until_it_returns(
            plan,
            case,
            Config::builder().unreachable_timeout(Some(TIMEOUT)),
        );
        assert!(in_time, "{what}: still retrying after {PROMPT:?}: {l:?}");
        assert!(took >= TIMEOUT, "{what}: gave up too early");
        let err = result.expect_err(&what);
        assert!(err.is_unreachable(), "{what}: {err}");
        let source = std::error::Error::source(&err).map(|s| s.to_string());
        assert!(
            source.is_some_and(|s| !s.is_empty()),
            "{what}: the last failure is the source: {err}"
        );
        assert_eq!(l.handed_out, 3, "{what}: {l:?}");
        assert_eq!((l.answered_ok, l.lost()), (3, 0), "{what}: {l:?}");
    }
}

/// A `/next` reply without a request id is read whole, so its connection is still in step
/// and the slot polls again on it, not on a new one. One slot, so the connections are
/// known: its poll connection and (without pipelining) its post connection.
#[test]
fn a_reply_without_a_request_id_keeps_its_poll_connection() {
    const N: u64 = 12;
    let plan = FaultPlan::new(SEED).reply(Schedule::EveryKth(4), ReplyFault::MissingRequestId);
    let expect = expect_for(&plan, N);
    for case in cases()
        .into_iter()
        .filter(|c| c.strategy == Strategy::WorkerPerSlot)
    {
        let r = run(case, sim(plan.clone(), N, 1), defaults(), N);
        check(&r, N, &expect);
        let l = &r.o.ledger;
        let connections = if case.pipelining { 1 } else { 2 };
        assert_eq!(l.connections, connections, "{}: {l:?}", r.what);
    }
}

/// A post the API never replies to (a hung Runtime API) does not hold its slot forever: the
/// runtime gives up on the reply after the unreachable timeout, closes the connection,
/// counts a post failure (the post is not sent again: the API has it) and serves on.
/// Pipelining is left out: a pipelined post's reply is read with the next invocation, a
/// long poll, which cannot be bounded.
#[test]
fn a_post_never_replied_to_does_not_hold_its_slot() {
    const N: u64 = 6;
    let plan =
        FaultPlan::new(SEED).post(PostEndpoint::Response, Schedule::Nth(2), PostFault::NoReply);
    // Long enough that no other post's reply misses it on a loaded machine.
    let config = || Config::builder().unreachable_timeout(Some(Duration::from_millis(500)));
    for case in cases().into_iter().filter(|c| !c.pipelining) {
        let r = run(case, sim(plan.clone(), N, 1), config(), N);
        // The simulator records the hung post as the invocation's answer.
        check_all_ok(&r, N);
        let l = &r.o.ledger;
        assert_eq!(l.faults.get(FaultKind::PostNoReply), 1, "{}: {l:?}", r.what);
        assert_eq!(r.post_failures(), 1, "{}: {l:?}", r.what);
        let id = format!("request_id=\"{}\"", r.ids[2]);
        assert!(
            logs::contains_line(&[
                "posting the result failed",
                &id,
                "did not reply to a post within 500 ms"
            ]),
            "{}: the post given up is logged with its id",
            r.what
        );
    }
}

/// `n` events like [`event`]'s, except invocation 2's: `big` bytes of padding, echoed back
/// as a post just as large.
fn with_big_second(n: u64, big: usize) -> EventSource {
    EventSource::from_fn(n, move |i| match i {
        2 => Bytes::from(format!(r#"{{"i":2,"pad":"{}"}}"#, "p".repeat(big))),
        i => event(i),
    })
}

/// Limits that let a `big`-byte event and its echo through, and the given unreachable
/// timeout (which bounds each post's progress and its reply).
fn big_posts(big: usize, unreachable: Duration) -> ConfigBuilder {
    Config::builder()
        .unreachable_timeout(Some(unreachable))
        .max_event_bytes(2 * big)
        .max_response_bytes(2 * big)
}

/// A post the API stops reading (its head read, the rest of its body left in the socket
/// buffers, no reply) is given up after the unreachable timeout: the connection is closed,
/// the post counted as failed and logged, and the slot serves on. Invocation 2's response
/// is 8 MiB, more than the socket buffers on both sides hold, so its send stalls; the
/// others are small. Every case, pipelining included: a post this large is sent and read
/// on its own.
#[test]
fn a_post_the_api_stops_reading_does_not_hold_its_slot() {
    const N: u64 = 5;
    const BIG: usize = 8 << 20;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::Nth(2),
        PostFault::StopReading,
    );
    let mut unanswerable = Unanswerable::default();
    unanswerable.post_stalled = 1;
    let expect = Expect {
        ok: N - 1,
        unanswerable,
        ..Expect::default()
    };
    for case in cases() {
        let sim = sim(plan.clone(), N, 1).events(with_big_second(N, BIG));
        let r = run(case, sim, big_posts(BIG, Duration::from_millis(500)), N);
        check(&r, N, &expect);
        let l = &r.o.ledger;
        assert_eq!(
            l.faults.get(FaultKind::PostStopReading),
            1,
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 1, "{}: {l:?}", r.what);
        let id = format!("request_id=\"{}\"", r.ids[2]);
        assert!(
            logs::contains_line(&[
                "posting the result failed",
                &id,
                "stopped reading a post for 500 ms"
            ]),
            "{}: the post given up is logged with its id",
            r.what
        );
    }
}

/// A large post the API refuses before it reads the body, closing the connection (which
/// the kernel resets over the unread bytes), is concluded with the refusal that came
/// before the reset: logged with its status, counted as a failed post, and not sent
/// again (each resend would meet the same refusal until the unreachable timeout, with
/// the slot held). Invocation 2's response is 8 MiB, more than the socket buffers hold,
/// so its send is still going when the reset comes.
#[test]
fn a_large_post_refused_before_its_body_is_read_is_not_sent_again() {
    const N: u64 = 5;
    const BIG: usize = 8 << 20;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::Nth(2),
        PostFault::StatusUnread(410),
    );
    let expect = Expect {
        ok: N,
        ..Expect::default()
    };
    for case in cases() {
        let sim = sim(plan.clone(), N, 1).events(with_big_second(N, BIG));
        let r = run(case, sim, big_posts(BIG, Duration::from_secs(2)), N);
        check(&r, N, &expect);
        let l = &r.o.ledger;
        assert_eq!(
            (l.faults.get(FaultKind::PostStatusUnread), l.duplicates),
            (1, 0),
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 1, "{}: {l:?}", r.what);
        let id = format!("request_id=\"{}\"", r.ids[2]);
        assert!(
            logs::contains_line(&["Runtime API did not accept the result", &id, "status=410"]),
            "{}: the refusal is logged with its status",
            r.what
        );
    }
}

/// A post the API reads slowly but steadily is waited for, however long the whole of it
/// takes: the bound on a post's send and on the wait for its reply counts from the API's
/// last progress, not from the start. Invocation 2's response is 6 MB (the simulator's
/// limit raised to take it), read at 4 MiB/s: about 1.5 s in all, half as much again as
/// the 1 s limit. Generous: the wait for the reply also covers the API reading what sat
/// in its receive buffer when the last byte was acknowledged, on a loaded machine.
#[test]
fn a_post_the_api_reads_slowly_is_delivered() {
    const N: u64 = 4;
    const BIG: usize = 6_000_000;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::Nth(2),
        PostFault::ReadSlowly {
            bytes_per_sec: 4 << 20,
        },
    );
    for case in cases() {
        let sim = sim(plan.clone(), N, 1)
            .events(with_big_second(N, BIG))
            .response_limit(2 * BIG);
        let started = Instant::now();
        let r = run(case, sim, big_posts(BIG, Duration::from_secs(1)), N);
        check_all_ok(&r, N);
        let l = &r.o.ledger;
        assert_eq!(
            l.faults.get(FaultKind::PostReadSlowly),
            1,
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 0, "{}: {l:?}", r.what);
        // The pace held (the fault was applied): the post took longer than the limit, so
        // a bound on the whole send, or on the reply from the send's end, would have cut it.
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "{}: the slow read took {:?}",
            r.what,
            started.elapsed()
        );
    }
}

/// A post whose connection is refused (the API's listener gone for a moment, as while its
/// process restarts) is not lost: it is sent again with backoff and delivered once the API
/// listens again. The relay in front of the simulator closes its listening socket right
/// after it accepts the first connection (the first `/next`'s), so the first post's connect
/// is refused by the kernel (`ECONNREFUSED`), while the open poll connection goes on.
/// Pipelining is left out: its posts share the poll connection and make no new one.
#[test]
fn a_post_refused_a_connection_is_sent_again_once_the_api_listens() {
    const N: u64 = 6;
    for case in cases().into_iter().filter(|c| !c.pipelining) {
        let (r, relay) = run_via_relay(case, N, Duration::from_millis(150), defaults(), RUN_BOUND);
        let l = &r.o.ledger;
        assert!(
            relay.reopened(),
            "{}: the relay did not listen again",
            r.what
        );
        check_all_ok(&r, N);
        assert_eq!(r.post_failures(), 0, "{}: {l:?}", r.what);
        assert!(
            logs::contains_line(&[
                "a post could not be delivered; retrying",
                &format!("api={}", relay.addr)
            ]),
            "{}: the retry is logged",
            r.what
        );
    }
}

/// A post whose fresh connection the API resets (accepted, then reset at once: whether
/// the runtime sees it at connect, at send or at the read of the reply depends on timing)
/// is sent again on another connection and delivered. One poller, so the post's
/// connection is the second one made.
#[test]
fn a_post_whose_connection_is_reset_is_sent_again() {
    const N: u64 = 6;
    let plan = FaultPlan::new(SEED).connection(Schedule::Nth(1), ConnFault::Refuse);
    for case in cases().into_iter().filter(|c| !c.pipelining) {
        let r = run(case, sim(plan.clone(), N, 1), defaults(), N);
        check_all_ok(&r, N);
        let l = &r.o.ledger;
        assert_eq!(l.faults.get(FaultKind::Refused), 1, "{}: {l:?}", r.what);
        assert_eq!(r.post_failures(), 0, "{}: {l:?}", r.what);
    }
}

/// The same refusal for longer than the unreachable timeout: the post is given up once the
/// timeout has passed since its first failure (logged and counted, not retried forever),
/// and the core goes on serving on its open poll connection.
#[test]
fn a_post_refused_past_the_unreachable_timeout_is_given_up() {
    const N: u64 = 3;
    let case = Case {
        executor: Executor::Compio,
        strategy: Strategy::WorkerPerSlot,
        pipelining: false,
    };
    let config = || Config::builder().unreachable_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    // Not settled: the first invocation is lost (the simulator waits for it), so the run is
    // shut down at the bound.
    let (r, relay) = run_via_relay(
        case,
        N,
        Duration::from_secs(5),
        config(),
        Duration::from_millis(700),
    );
    let l = &r.o.ledger;
    assert!(!r.o.done, "{l:?}");
    assert!(r.o.result.is_ok(), "{:?}", r.o.result);
    assert_eq!((l.handed_out, l.answered_ok, l.lost()), (1, 0, 1), "{l:?}");
    assert_eq!(r.post_failures(), 1, "{l:?}");
    let failed = format!("request_id=\"{}\"", r.ids[0]);
    assert!(
        logs::contains_line(&["posting the result failed", &failed, "refused"]),
        "the post given up is logged with its id"
    );
    assert!(
        logs::contains_line(&[
            "a post could not be delivered; retrying",
            &format!("api={}", relay.addr)
        ]),
        "retried before it was given up"
    );
    assert!(!relay.reopened(), "the refusal outlasted the run");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// [`run`] with the runtime connecting through a [`relay::Relay`] that refuses connections
/// for `window` after the first, and `bound` on the run.
fn run_via_relay(
    case: Case,
    n: u64,
    window: Duration,
    config: ConfigBuilder,
    bound: Duration,
) -> (Run, relay::Relay) {
    logs::init();
    let sim = sim(FaultPlan::new(SEED), n, 1)
        .start()
        .expect("simulator starts");
    let ids = (0..n).map(|s| sim.request_id(s)).collect();
    let relay = relay::Relay::start(sim.addr(), 1, window);
    let api = relay.addr.to_string();
    let config = config
        .strategy(case.strategy)
        .pipelining(case.pipelining)
        .cores(Cores::Count(nz(1)));
    let executor = case.executor;
    let o = run_against_started_sim_via(sim, &api, config, move |c| executor.run(c), bound);
    let r = Run {
        o,
        ids,
        what: case.to_string(),
        api,
    };
    (r, relay)
}

/// 400, 410 and 500 on posts: the runtime reads the JSON body, logs it, counts a post
/// failure, does not retry (a retry would show up as a duplicate), and goes on serving.
#[test]
fn post_error_statuses_are_logged_and_not_retried() {
    const N: u64 = 12;
    let plan = FaultPlan::new(SEED)
        // Invocation 6 is answered on /error (its deadline is unusable).
        .reply(Schedule::Nth(6), ReplyFault::InvalidDeadline)
        .post(
            PostEndpoint::Response,
            Schedule::Nth(1),
            PostFault::Status(400),
        )
        .post(
            PostEndpoint::Response,
            Schedule::Nth(5),
            PostFault::Status(410),
        )
        .post(
            PostEndpoint::Response,
            Schedule::Nth(9),
            PostFault::Status(500),
        )
        .post(
            PostEndpoint::Error,
            Schedule::Nth(6),
            PostFault::Status(500),
        );
    for r in every_case(&plan, N, 3, defaults) {
        let (l, what) = (&r.o.ledger, &r.what);
        assert_eq!(l.faults.get(FaultKind::PostStatus), 4, "{what}: {l:?}");
        assert_eq!(
            r.post_failures(),
            4,
            "{what}: each refused post counted once"
        );
        for (seq, status) in [
            (1, "400 Bad Request"),
            (5, "410 Gone"),
            (9, "500 Internal Server Error"),
            (6, "500 Internal Server Error"),
        ] {
            let needle = format!("injected fault: {status} for {}", r.ids[seq]);
            assert!(logs::contains(&needle), "{what}: not logged: {needle}");
        }
    }
}

/// A 413 on `/response` is reported through `/error` as `Function.ResponseSizeTooLarge`.
#[test]
fn post_413_is_reported_as_response_too_large() {
    const N: u64 = 12;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::EveryKth(3),
        PostFault::Status(413),
    );
    for r in every_case(&plan, N, 3, defaults) {
        let l = &r.o.ledger;
        assert_eq!(
            l.faults.get(FaultKind::PostTooLarge),
            4,
            "{}: {l:?}",
            r.what
        );
        assert_eq!(l.too_large, 0, "{}: nothing was really too large", r.what);
    }
}

/// The follow-up `/error` after a 413, refused (as AWS's emulator refuses it, having ended
/// the invocation itself when it answered 413), counts the invocation as answered with an
/// error, not as a failed post.
#[test]
fn a_refused_follow_up_to_a_413_is_not_a_failed_post() {
    const N: u64 = 6;
    let plan = FaultPlan::new(SEED)
        .post(
            PostEndpoint::Response,
            Schedule::Nth(2),
            PostFault::Status(413),
        )
        .post(
            PostEndpoint::Error,
            Schedule::Nth(2),
            PostFault::Status(403),
        );
    for r in every_case(&plan, N, 2, defaults) {
        let l = &r.o.ledger;
        assert_eq!(
            (
                l.faults.get(FaultKind::PostTooLarge),
                l.faults.get(FaultKind::PostStatus)
            ),
            (1, 1),
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 0, "{}: {l:?}", r.what);
        assert_eq!(core_sum(&r.o, |c| c.errors), 1, "{}: {l:?}", r.what);
    }
}

/// Every connection is closed by the server, without warning, once it has answered one
/// request: every post goes out on a connection that is already closed, and must be retried
/// once on a fresh one (no post failure, no duplicate, nothing lost).
#[test]
fn keep_alive_closed_after_each_request_is_retried_on_a_fresh_connection() {
    const N: u64 = 12;
    let plan = FaultPlan::new(SEED).connection(Schedule::Always, ConnFault::CloseAfterRequests(1));
    for r in every_case(&plan, N, 2, defaults) {
        let l = &r.o.ledger;
        assert!(
            l.faults.get(FaultKind::CloseAfterRequests) >= N,
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 0, "{}: a post was not retried", r.what);
    }
}

/// Connections idle for 20 ms are closed by the server; the handler takes 50 ms, so the
/// connection a result is posted on has been closed meanwhile (worker-per-slot: the slot's
/// own; the others: the pooled one).
#[test]
fn idle_keep_alive_closed_is_retried_on_a_fresh_connection() {
    const N: u64 = 8;
    let plan = FaultPlan::new(SEED).connection(
        Schedule::Always,
        ConnFault::CloseWhenIdle(Duration::from_millis(20)),
    );
    let slow = |i: u64| Bytes::from(format!(r#"{{"i":{i},"sleep_ms":50}}"#));
    for case in cases() {
        let r = run(
            case,
            sim(plan.clone(), N, 2).events(EventSource::from_fn(N, slow)),
            defaults(),
            N,
        );
        check_all_ok(&r, N);
        let l = &r.o.ledger;
        assert!(
            l.faults.get(FaultKind::CloseWhenIdle) >= 1,
            "{}: {l:?}",
            r.what
        );
        assert_eq!(r.post_failures(), 0, "{}: a post was not retried", r.what);
    }
}

/// Everything at once, drawn from a seeded generator: every invocation must end as the plan
/// says it should.
#[test]
fn a_mixed_seeded_plan_settles_every_invocation_as_expected() {
    const N: u64 = 60;
    let r = |p| Schedule::Random(p);
    let plan = FaultPlan::new(SEED)
        .reply(r(0.05), ReplyFault::ResetBeforeHead)
        .reply(r(0.05), ReplyFault::ResetMidHead)
        .reply(r(0.05), ReplyFault::ResetMidBody)
        .reply(
            r(0.05),
            ReplyFault::Drip {
                delay: Duration::ZERO,
            },
        )
        .reply(r(0.05), ReplyFault::Garbage)
        .reply(r(0.05), ReplyFault::OversizedHead)
        .reply(
            r(0.05),
            ReplyFault::OversizedBody {
                len: 5000,
                chunked: true,
            },
        )
        .reply(r(0.05), ReplyFault::WrongContentLength { extra: 3 })
        .reply(r(0.05), ReplyFault::BadChunkSize)
        .reply(r(0.05), ReplyFault::Chunked { chunk: 7 })
        .reply(r(0.05), ReplyFault::MissingRequestId)
        .reply(r(0.05), ReplyFault::InvalidDeadline)
        .reply(
            r(0.05),
            ReplyFault::UnsafeRequestId("../../runtime/init/error".into()),
        )
        .post(PostEndpoint::Response, r(0.1), PostFault::Status(413))
        .post(PostEndpoint::Any, r(0.1), PostFault::Status(410))
        .connection(Schedule::EveryKth(2), ConnFault::CloseAfterRequests(3));
    let runs = every_case(&plan, N, 4, small_event_limit);
    // The plan does fault a good share of invocations, of several kinds.
    let l = &runs[0].o.ledger;
    let kinds = FaultKind::ALL
        .iter()
        .filter(|&&k| l.faults.get(k) > 0)
        .count();
    assert!(kinds >= 8, "{l:?}");
    assert!(
        l.unanswerable.total() >= 3 && l.answered_error >= 5,
        "{l:?}"
    );
}

/// Log capture, to check what the runtime logs (e.g. the body of a refused post).
/// A TCP relay in front of the simulator that stops listening for a while: connections
/// made then are refused by the kernel, as when the Runtime API's process restarts, while
/// connections already open go on.
mod relay {
    use std::io::{self, ErrorKind};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    pub struct Relay {
        pub addr: SocketAddr,
        stop: Arc<AtomicBool>,
        reopened: Arc<AtomicBool>,
    }

    impl Relay {
        /// Relays to `upstream`; after accepting `refuse_after` connections, closes the
        /// listening socket (before relaying the last one's bytes, so that nothing the
        /// runtime does in reply to them can connect first) and opens it again on the same
        /// address `window` later.
        pub fn start(upstream: SocketAddr, refuse_after: usize, window: Duration) -> Relay {
            let listener = TcpListener::bind("127.0.0.1:0").expect("relay binds");
            listener.set_nonblocking(true).expect("non-blocking");
            let addr = listener.local_addr().expect("relay address");
            let stop = Arc::new(AtomicBool::new(false));
            let reopened = Arc::new(AtomicBool::new(false));
            let (s, o) = (Arc::clone(&stop), Arc::clone(&reopened));
            thread::spawn(move || accept_loop(listener, upstream, refuse_after, window, &s, &o));
            Relay {
                addr,
                stop,
                reopened,
            }
        }

        /// Whether the listener was opened again after the refusal.
        pub fn reopened(&self) -> bool {
            self.reopened.load(Ordering::Relaxed)
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn accept_loop(
        listener: TcpListener,
        upstream: SocketAddr,
        refuse_after: usize,
        window: Duration,
        stop: &AtomicBool,
        reopened: &AtomicBool,
    ) {
        let addr = listener.local_addr().expect("relay address");
        let mut listener = Some(listener);
        let mut accepted = 0;
        let mut reopen_at = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(l) = &listener else {
                if reopen_at.is_some_and(|t| Instant::now() >= t) {
                    // std sets SO_REUSEADDR, so the address can be taken again while
                    // connections accepted on it are open.
                    if let Ok(l) = TcpListener::bind(addr)
                        && l.set_nonblocking(true).is_ok()
                    {
                        listener = Some(l);
                        reopened.store(true, Ordering::Relaxed);
                        continue;
                    }
                }
                thread::sleep(Duration::from_millis(1));
                continue;
            };
            match l.accept() {
                Ok((down, _)) => {
                    accepted += 1;
                    if accepted == refuse_after {
                        listener = None;
                        reopen_at = Some(Instant::now() + window);
                    }
                    if pipe(down, upstream).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Copies both ways between `down` and a new connection to `upstream`, passing on each
    /// end of stream.
    fn pipe(down: TcpStream, upstream: SocketAddr) -> io::Result<()> {
        down.set_nonblocking(false)?;
        let up = TcpStream::connect(upstream)?;
        for s in [&down, &up] {
            s.set_nodelay(true)?;
        }
        let (down2, up2) = (down.try_clone()?, up.try_clone()?);
        thread::spawn(move || copy(down, up));
        thread::spawn(move || copy(up2, down2));
        Ok(())
    }

    fn copy(mut from: TcpStream, mut to: TcpStream) {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// A streamed response the API stops reading (the post's head read, the chunks left in
/// the socket buffers until they fill) is given up after the unreachable timeout: the
/// connection is closed, the post counted as failed, and the slot serves on. Invocation 1
/// streams 16 chunks of 1 MiB, more than the socket buffers hold; the others one line.
#[test]
fn a_stream_the_api_stops_reading_does_not_hold_its_slot() {
    use lambda_tpc::streaming::StreamResponse;
    const N: u64 = 3;
    const CHUNK: usize = 1 << 20;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::Nth(1),
        PostFault::StopReading,
    );
    logs::init();
    for exec in common::EXECS {
        for strategy in [Strategy::WorkerPerSlot, Strategy::Unbounded] {
            let what = format!("{exec:?}, {strategy}");
            let o = common::run_against_sim(
                Simulator::builder()
                    .max_concurrency(1)
                    .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string())))
                    .faults(plan.clone()),
                Config::builder()
                    .strategy(strategy)
                    .unreachable_timeout(Some(Duration::from_millis(500))),
                move |config| {
                    common::run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                        let (chunks, size) = if ev.payload == 1 { (16, CHUNK) } else { (1, 8) };
                        let body = futures_util::stream::iter(
                            (0..chunks).map(move |_| Ok::<_, BoxError>("x".repeat(size))),
                        );
                        Ok::<_, BoxError>(StreamResponse::new(body))
                    })
                },
            );
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            let l = &o.ledger;
            assert_eq!(
                (l.answered_ok, l.unanswerable.post_stalled, l.lost()),
                (N - 1, 1, 0),
                "{what}: {l:?}"
            );
            assert_eq!(l.faults.get(FaultKind::PostStopReading), 1, "{what}: {l:?}");
            assert_eq!(post_failures(&o), 1, "{what}: {l:?}");
            // Given up as stalled (not as a reply that never came, which would also leave
            // these counts if the stream had fitted in the buffers), and no error post
            // sent to the hung API after it.
            assert_eq!(l.duplicates, 0, "{what}: {l:?}");
            assert!(
                logs::contains_line(&[
                    "streaming the response failed",
                    "stopped reading a post for 500 ms"
                ]),
                "{what}: the stall is logged"
            );
        }
    }
}

/// A streamed response the API refuses (410) before it reads the body, then closes the
/// connection over what is unread: the refusal that came before the reset concludes it
/// (logged with its status, counted as a failed post), with no error post after it (the
/// invocation is over) and nothing sent again. Invocation 1 streams 16 chunks of 1 MiB,
/// more than the socket buffers hold, so its sends are still going when the reset comes.
#[test]
fn a_stream_refused_before_it_is_read_is_not_followed_by_an_error_post() {
    use lambda_tpc::streaming::StreamResponse;
    const N: u64 = 3;
    const CHUNK: usize = 1 << 20;
    let plan = FaultPlan::new(SEED).post(
        PostEndpoint::Response,
        Schedule::Nth(1),
        PostFault::StatusUnread(410),
    );
    logs::init();
    for exec in common::EXECS {
        for strategy in [Strategy::WorkerPerSlot, Strategy::Unbounded] {
            let what = format!("{exec:?}, {strategy}");
            let sim = Simulator::builder()
                .max_concurrency(1)
                .events(EventSource::from_fn(N, |i| Bytes::from(i.to_string())))
                .faults(plan.clone())
                .start()
                .expect("simulator starts");
            let id = sim.request_id(1);
            let o = common::run_against_started_sim(
                sim,
                Config::builder()
                    .strategy(strategy)
                    .unreachable_timeout(Some(Duration::from_secs(2))),
                move |config| {
                    common::run_on(exec, config, |ev: LambdaEvent<u64>| async move {
                        let (chunks, size) = if ev.payload == 1 { (16, CHUNK) } else { (1, 8) };
                        let body = futures_util::stream::iter(
                            (0..chunks).map(move |_| Ok::<_, BoxError>("x".repeat(size))),
                        );
                        Ok::<_, BoxError>(StreamResponse::new(body))
                    })
                },
                RUN_BOUND,
            );
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            let l = &o.ledger;
            // The refused post is recorded as the invocation's answer by the fault.
            assert_eq!(
                (l.answered_ok, l.answered_error, l.duplicates, l.lost()),
                (N, 0, 0, 0),
                "{what}: {l:?}"
            );
            assert_eq!(
                l.faults.get(FaultKind::PostStatusUnread),
                1,
                "{what}: {l:?}"
            );
            assert_eq!(post_failures(&o), 1, "{what}: {l:?}");
            assert!(
                logs::contains_line(&[
                    "Runtime API did not accept the streamed response",
                    &format!("request_id=\"{id}\""),
                    "status=410"
                ]),
                "{what}: the refusal is logged with its status"
            );
        }
    }
}

/// A streamed response whose connection is refused (the API's listener gone for a
/// moment) is started again with backoff once the API listens, not replaced by an error:
/// nothing of the stream had been taken. The relay closes its listening socket after the
/// first `/next`'s connection, so the first stream's connect is refused by the kernel.
#[test]
fn a_stream_refused_a_connection_is_started_once_the_api_listens() {
    use lambda_tpc::streaming::StreamResponse;
    const N: u64 = 4;
    logs::init();
    for exec in common::EXECS {
        for strategy in [Strategy::WorkerPerSlot, Strategy::Unbounded] {
            let what = format!("{exec:?}, {strategy}");
            let sim = sim(FaultPlan::new(SEED), N, 1)
                .start()
                .expect("simulator starts");
            // The stream's connect must fall within the window: generous, for a loaded
            // machine.
            let relay = relay::Relay::start(sim.addr(), 1, Duration::from_millis(500));
            let o =
                common::run_against_started_sim_via(
                    sim,
                    &relay.addr.to_string(),
                    Config::builder()
                        .strategy(strategy)
                        .cores(Cores::Count(nz(1))),
                    move |config| {
                        common::run_on(exec, config, |ev: LambdaEvent<Value>| async move {
                            let body = serde_json::to_vec(&ev.payload)?;
                            Ok::<_, BoxError>(StreamResponse::new(futures_util::stream::iter([
                                Ok::<_, BoxError>(body),
                            ])))
                        })
                    },
                    RUN_BOUND,
                );
            assert!(relay.reopened(), "{what}: the relay did not listen again");
            assert!(o.done && o.result.is_ok(), "{what}: {:?}", o.result);
            let l = &o.ledger;
            assert_eq!(
                (
                    l.answered_ok,
                    l.answered_error,
                    l.streamed,
                    l.mismatched,
                    l.lost()
                ),
                (N, 0, N, 0, 0),
                "{what}: {l:?}"
            );
            assert!(
                logs::contains_line(&[
                    "a streamed response could not be started; retrying",
                    &format!("api={}", relay.addr)
                ]),
                "{what}: the retry is logged"
            );
        }
    }
}

mod logs {
    use std::io;
    use std::sync::{Mutex, PoisonError};

    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    use tracing_subscriber::prelude::*;

    static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    struct Capture;

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            LOGS.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Installs the global subscriber: warnings and above are captured for [`contains`];
    /// what `RUST_LOG` asks for (default: warnings) goes to the test output. Every test calls
    /// this first, so it wins over `common::init_tracing`.
    pub fn init() {
        let capture = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| Capture)
            .with_filter(LevelFilter::WARN);
        let shown = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
        let _ = tracing_subscriber::registry()
            .with(capture)
            .with(shown)
            .try_init();
    }

    /// Whether anything logged so far (by any test of this binary) contains `needle`.
    pub fn contains(needle: &str) -> bool {
        let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&logs).contains(needle)
    }

    /// Whether one line logged so far contains every one of `needles`.
    pub fn contains_line(needles: &[&str]) -> bool {
        let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&logs)
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    }
}

/// A Runtime API written by hand for replies the simulator cannot produce: the first
/// `/next` gets `first_reply` verbatim, later ones are parked forever, posts get 202.
/// Returns its address and the request lines it saw, in order.
fn scripted_api(first_reply: Vec<u8>) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (seen, lines) = std::sync::mpsc::channel();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (seen, served, first_reply) = (seen.clone(), served.clone(), first_reply.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                // One request per read is enough here: the runtime sends each request in
                // one write and waits for its reply.
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let line = request.lines().next().unwrap_or_default().to_owned();
                    let is_next = line.starts_with("GET");
                    let _ = seen.send(line);
                    let reply: &[u8] = if !is_next {
                        b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n"
                    } else if !served.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        &first_reply
                    } else {
                        continue; // parked: never answered
                    };
                    if stream.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

/// Runs the echo handler on compio against `scripted_api(first_reply)` until it returns
/// on its own or `until` holds for the request lines seen; then shuts it down.
fn run_scripted(
    first_reply: Vec<u8>,
    config: ConfigBuilder,
    mut until: impl FnMut(&[String]) -> bool,
) -> (Result<(), lambda_tpc::Error>, Vec<String>, bool) {
    let (addr, lines) = scripted_api(first_reply);
    let control = Control::new();
    let config = config
        .runtime_api(addr)
        .max_concurrency(nz(1))
        .cores(Cores::Count(nz(1)))
        .control(control.clone())
        .build_with(|_| None)
        .expect("config");
    let started = Instant::now();
    let runtime = thread::spawn(move || Executor::Compio.run(config));
    let mut seen = Vec::new();
    while !runtime.is_finished() && started.elapsed() < PROMPT {
        seen.extend(lines.try_iter());
        if until(&seen) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let returned = runtime.is_finished();
    control.shutdown();
    let result = runtime.join().expect("runtime thread");
    seen.extend(lines.try_iter());
    (result, seen, returned)
}

/// An invocation with a usable request id but no deadline (invalid) whose chunked body is
/// over the event limit: the body cannot be read, and the invocation is still answered
/// with an error instead of being taken for a failed `/next`.
#[test]
fn invalid_invocation_with_an_unreadable_body_is_still_answered() {
    logs::init();
    let mut reply = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: req-1\r\n\
        Transfer-Encoding: chunked\r\n\r\n400\r\n"
        .to_vec();
    reply.extend_from_slice(&[b'x'; 0x400]);
    reply.extend_from_slice(b"\r\n0\r\n\r\n");
    let answered = |seen: &[String]| seen.iter().any(|l| l.contains("/req-1/error"));
    let (result, seen, _) = run_scripted(reply, Config::builder().max_event_bytes(100), answered);
    assert!(result.is_ok(), "{result:?}");
    assert!(answered(&seen), "req-1 was never answered: {seen:?}");
}

/// A 500 on `/next` announcing an absurd body: a container error all the same, and the
/// run returns with it promptly (no allocation of the announced size, no panic).
#[test]
fn next_500_announcing_an_absurd_body_is_still_a_container_error() {
    logs::init();
    for length in ["9999999999999999999", "100000000000"] {
        let reply = format!("HTTP/1.1 500 Oops\r\nContent-Length: {length}\r\n\r\n{{}}");
        let (result, seen, returned) =
            run_scripted(reply.into_bytes(), Config::builder(), |_| false);
        assert!(
            returned,
            "{length}: still running after {PROMPT:?}: {seen:?}"
        );
        let err = result.expect_err(length);
        assert!(err.is_container_error(), "{length}: {err}");
    }
}
