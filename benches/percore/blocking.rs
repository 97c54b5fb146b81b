//! The reference floor: one OS thread per concurrency slot, each looping `/next` → handler →
//! `/response` on its own blocking `std::net::TcpStream`, with just enough HTTP parsing to
//! find the status, the request id, and the `Content-Length`-framed body. No framework, no
//! JSON: the event bytes are echoed as they came. What is left is the protocol's cost.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;

use lambda_tpc::BoxError;

use crate::workloads::Work;

/// Runs `AWS_LAMBDA_MAX_CONCURRENCY` slot threads against `AWS_LAMBDA_RUNTIME_API`.
pub fn run(work: Work) -> Result<(), BoxError> {
    let api =
        std::env::var("AWS_LAMBDA_RUNTIME_API").map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set")?;
    let slots = std::env::var("AWS_LAMBDA_MAX_CONCURRENCY")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let addr = api
        .to_socket_addrs()?
        .next()
        .ok_or("AWS_LAMBDA_RUNTIME_API does not resolve")?;
    let mut threads = Vec::with_capacity(slots);
    for i in 0..slots {
        let api = api.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("slot-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    if let Err(e) = slot(addr, &api, work) {
                        // One slot failing invalidates the run: say so and stop.
                        eprintln!("blocking client: slot {i}: {e}");
                        std::process::exit(4);
                    }
                })?,
        );
    }
    for t in threads {
        t.join().map_err(|_| "a slot thread panicked")?;
    }
    Err("every slot returned".into())
}

const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
const INVOCATION_PREFIX: &str = "/2018-06-01/runtime/invocation/";

fn slot(addr: SocketAddr, api: &str, work: Work) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let next = format!("GET {NEXT_PATH} HTTP/1.1\r\nHost: {api}\r\n\r\n").into_bytes();
    let mut reader = Reader::new();
    let mut out = Vec::with_capacity(1024);
    loop {
        stream.write_all(&next)?;
        let msg = reader.read(&mut stream)?;
        if msg.status != 200 {
            return Err(io::Error::other(format!("/next answered {}", msg.status)));
        }
        let id = msg
            .request_id
            .ok_or_else(|| io::Error::other("/next reply without a request id"))?;
        let body = &reader.buf[msg.body.clone()];
        work.handle_raw(body);
        out.clear();
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(INVOCATION_PREFIX.as_bytes());
        out.extend_from_slice(&reader.buf[id]);
        write!(
            out,
            "/response HTTP/1.1\r\nHost: {api}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        out.extend_from_slice(body);
        stream.write_all(&out)?;
        let reply = reader.read(&mut stream)?;
        if reply.status != 202 {
            return Err(io::Error::other(format!(
                "/response answered {}",
                reply.status
            )));
        }
    }
}

/// One response: byte ranges into [`Reader::buf`], valid until the next read.
struct Message {
    status: u16,
    request_id: Option<Range<usize>>,
    body: Range<usize>,
}

/// A read buffer with whatever followed the last message kept for the next.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn fill(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    fn read(&mut self, stream: &mut TcpStream) -> io::Result<Message> {
        // Move what is left of the previous read to the front.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let head_len = loop {
            if let Some(p) = self.buf[..self.end]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break p + 4;
            }
            if self.end > 64 * 1024 {
                return Err(io::Error::other("response head too large"));
            }
            self.fill(stream)?;
        };
        let bad = |what: &str| io::Error::other(format!("malformed response: {what}"));
        let head = &self.buf[..head_len];
        let mut lines = head.split(|&b| b == b'\n');
        let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
        let status = status_line
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut content_length = 0usize;
        let mut request_id = None;
        let mut offset = status_line.len() + 1;
        for line in lines {
            let at = offset;
            offset += line.len() + 1;
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("content-length"))?;
            } else if name.eq_ignore_ascii_case(b"lambda-runtime-aws-request-id") {
                let lead = line[colon + 1..].len() - line[colon + 1..].trim_ascii_start().len();
                let start = at + colon + 1 + lead;
                request_id = Some(start..start + value.len());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(bad("chunked bodies are not supported here"));
            }
        }
        let total = head_len + content_length;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        while self.end < total {
            self.fill(stream)?;
        }
        self.start = total;
        Ok(Message {
            status,
            request_id,
            body: head_len..total,
        })
    }
}
