//! The reference floor: one OS thread per concurrency slot, each looping `/next` → handler →
//! `/response` on its own blocking `std::net::TcpStream`, with just enough HTTP parsing to
//! find the status, the request id, and the body (framed by `Content-Length`, or chunked,
//! as the Runtime API sends events over 2 KiB; trailers are not expected). No framework,
//! no JSON: the event bytes are echoed as they came. What is left is the protocol's cost.

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

    /// Reads until `buf` holds at least `len` bytes.
    fn fill_to(&mut self, stream: &mut TcpStream, len: usize) -> io::Result<()> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        while self.end < len {
            self.fill(stream)?;
        }
        Ok(())
    }

    /// Decodes the chunked body starting at `from` in place, the data of each chunk moved
    /// down against the last; returns where the body ends, and leaves `start` after the
    /// last chunk.
    fn dechunk(&mut self, stream: &mut TcpStream, from: usize) -> io::Result<usize> {
        let bad = |what: &str| io::Error::other(format!("malformed chunked body: {what}"));
        let (mut pos, mut write) = (from, from);
        loop {
            let line_end = loop {
                if let Some(p) = self.buf[pos..self.end]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                {
                    break pos + p;
                }
                if self.end - pos > 1024 {
                    return Err(bad("chunk-size line too long"));
                }
                self.fill(stream)?;
            };
            let line = &self.buf[pos..line_end];
            let digits = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or(line)
                .trim_ascii();
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| usize::from_str_radix(d, 16).ok())
                .ok_or_else(|| bad("chunk size"))?;
            pos = line_end + 2;
            self.fill_to(stream, pos + size + 2)?;
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(bad(if size == 0 { "trailers" } else { "chunk end" }));
            }
            self.buf.copy_within(pos..pos + size, write);
            write += size;
            pos += size + 2;
            if size == 0 {
                self.start = pos;
                return Ok(write);
            }
        }
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
        let mut chunked = false;
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
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(bad("a transfer coding other than chunked"));
                }
                chunked = true;
            }
        }
        if chunked {
            let end = self.dechunk(stream, head_len)?;
            return Ok(Message {
                status,
                request_id,
                body: head_len..end,
            });
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
