//! Micro-benches of the sans-IO codec on the invocation path (criterion).
//!
//! ```text
//! cargo bench --bench codec
//! cargo bench --bench codec -- next_head     # one group
//! ```
//!
//! * `next_head/parse`: [`parse_response_head`] on a realistic `/next` reply head (request
//!   id, deadline, function ARN, trace id, content type, length, date);
//! * `next_head/context`: [`Context::from_headers`] on that head's fields;
//! * `chunked/decode_64k`: the chunked decoder over a 64 KiB body in 4 KiB chunks;
//! * `encode/next`: [`encode_next`] into a reused buffer;
//! * `encode/response_100b`: [`encode_response`] plus `serde_json` serialization of a 100 B
//!   body into a reused buffer, and the length fill-in.
//! * `invocation/codec_path`: everything the codec and the Runtime API layer do for one
//!   invocation, in the order a worker-per-slot slot does it: encode `/next`, parse the
//!   `/next` reply head and frame its 100 B body, build the [`Context`], encode the response
//!   post around the (already serialized) 100 B result, parse the post's `202` reply head.
//!   No I/O, no executor, no serde of the user's types: the user-space cost per invocation
//!   that is ours alone, on top of which come the executor's and the handler's.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambda_tpc::api::{Context, RuntimeApi, encode_next, encode_response};
use lambda_tpc::http::{
    ChunkedDecoder, Decoded, Framing, MAX_HEADERS, Status, parse_response_head,
};

/// A `/next` reply head as the Runtime API sends it.
const NEXT_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: application/json\r\n\
lambda-runtime-aws-request-id: 8476a536-e9f4-11e8-9739-2dfe598c3fcd\r\n\
lambda-runtime-deadline-ms: 1542409706888\r\n\
lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-2:123456789012:function:custom-runtime\r\n\
lambda-runtime-trace-id: Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1\r\n\
content-length: 100\r\n\
date: Mon, 01 Jan 2026 00:00:00 GMT\r\n\
\r\n";

const MAX_BODY: usize = 6 * 1024 * 1024;

fn next_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("next_head");
    g.throughput(Throughput::Bytes(NEXT_HEAD.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse_response_head(black_box(NEXT_HEAD), &mut headers, MAX_BODY) {
                Ok(Status::Complete(head, n)) => {
                    black_box((head.status, head.framing, n));
                }
                other => panic!("the sample head must parse: {other:?}"),
            }
        })
    });
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Status::Complete(head, _)) = parse_response_head(NEXT_HEAD, &mut headers, MAX_BODY)
    else {
        panic!("the sample head must parse");
    };
    let fields = head.headers;
    g.bench_function("context", |b| {
        b.iter(|| black_box(Context::from_headers(black_box(fields)).is_ok()))
    });
    g.finish();
}

fn chunked(c: &mut Criterion) {
    const CHUNK: usize = 4096;
    const TOTAL: usize = 64 * 1024;
    let mut body = Vec::new();
    for _ in 0..TOTAL / CHUNK {
        body.extend_from_slice(format!("{CHUNK:x}\r\n").as_bytes());
        body.extend(std::iter::repeat_n(b'x', CHUNK));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("decode_64k", |b| {
        b.iter(|| {
            let mut dec = ChunkedDecoder::new(MAX_BODY);
            let mut input = black_box(&body[..]);
            let mut data = 0usize;
            loop {
                match dec.decode(input) {
                    Ok(Status::Complete(Decoded::Data(d), used)) => {
                        data += d.len();
                        input = &input[used..];
                    }
                    Ok(Status::Complete(Decoded::Done, _)) => break,
                    other => panic!("the sample body must decode: {other:?}"),
                }
            }
            black_box(data)
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let api = RuntimeApi::parse("127.0.0.1:9001").expect("a valid endpoint");
    let request_id = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";
    let body: serde_json::Value =
        serde_json::from_str(&format!("{{\"data\":\"{}\"}}", "x".repeat(100 - 11)))
            .expect("valid JSON");
    let mut g = c.benchmark_group("encode");
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("next", |b| {
        b.iter(|| {
            buf.clear();
            encode_next(&mut buf, black_box(&api)).expect("encodes");
            black_box(buf.len())
        })
    });
    g.bench_function("response_100b", |b| {
        b.iter(|| {
            buf.clear();
            let slot = encode_response(&mut buf, black_box(&api), black_box(request_id), None)
                .expect("encodes");
            serde_json::to_writer(&mut buf, black_box(&body)).expect("serializes");
            black_box(slot.finish(&mut buf))
        })
    });
    g.finish();
}

/// The `/next` reply as it arrives: head plus a 100 B body.
fn next_reply() -> Vec<u8> {
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(100 - 11));
    let mut r = NEXT_HEAD.to_vec();
    r.extend_from_slice(body.as_bytes());
    r
}

/// The Runtime API's reply to a response post.
const POST_REPLY: &[u8] = b"HTTP/1.1 202 Accepted\r\n\
content-type: application/json\r\n\
content-length: 16\r\n\
date: Mon, 01 Jan 2026 00:00:00 GMT\r\n\
\r\n\
{\"status\":\"OK\"}";

fn invocation(c: &mut Criterion) {
    let api = RuntimeApi::parse("127.0.0.1:9001").expect("a valid endpoint");
    let reply = next_reply();
    let result = br#"{"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("invocation");
    g.bench_function("codec_path", |b| {
        b.iter(|| {
            out.clear();
            encode_next(&mut out, black_box(&api)).expect("encodes");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Ok(Status::Complete(head, used)) =
                parse_response_head(black_box(&reply), &mut headers, MAX_BODY)
            else {
                panic!("the sample reply must parse");
            };
            let Framing::Length(n) = head.framing else {
                panic!("the sample reply has a length");
            };
            let body = &reply[used..used + n as usize];
            let ctx = Context::from_headers(head.headers).expect("a valid context");
            out.clear();
            let slot = encode_response(&mut out, &api, ctx.request_id(), ctx.invocation_id())
                .expect("encodes");
            out.extend_from_slice(black_box(result));
            black_box(slot.finish(&mut out));
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Ok(Status::Complete(post, _)) =
                parse_response_head(black_box(POST_REPLY), &mut headers, MAX_BODY)
            else {
                panic!("the sample post reply must parse");
            };
            black_box((body.len(), post.status, ctx))
        })
    });
    g.finish();
}

criterion_group!(benches, next_head, chunked, encode, invocation);
criterion_main!(benches);
