//! A minimal raw HTTP/1.1 client over `std::net::TcpStream`, so the simulator is exercised by
//! bytes we control (pipelining, chunked bodies, malformed requests).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const API: &str = "/2018-06-01/runtime";

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn request_id(&self) -> String {
        self.header("lambda-runtime-aws-request-id")
            .expect("request id header")
            .to_owned()
    }
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Reads that returned data so far (a dripped reply takes many).
    pub reads: usize,
}

/// How [`Client::read_until_end`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed (FIN).
    Eof,
    /// The server reset the connection (RST).
    Reset,
    /// Nothing more arrived within the timeout; the connection is still open.
    TimedOut,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).expect("connect")
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            reads: 0,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one response; panics on timeout (30 s) or EOF.
    pub fn read(&mut self) -> Resp {
        self.try_read().expect("response")
    }

    /// `None` if nothing complete arrives within `timeout` (the connection stays usable).
    pub fn read_within(&mut self, timeout: Duration) -> Option<Resp> {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let r = self.try_read().ok();
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        r
    }

    /// Reads one response; `Err` on timeout or EOF.
    pub fn try_read(&mut self) -> io::Result<Resp> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill()?;
        };
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let head = String::from_utf8(self.buf[..head_end].to_vec())
            .map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .ok_or_else(|| invalid("bad header line"))?;
                Ok((n.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<io::Result<_>>()?;
        let start = head_end + 4;
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            self.buf.drain(..start);
            let body = self.read_chunked()?;
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .expect("content-length framing expected");
        while self.buf.len() < start + len {
            self.fill()?;
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Decodes a chunked body at the start of the buffer (no trailers expected).
    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                self.fill()?;
            };
            let line = std::str::from_utf8(&self.buf[..line_end]).expect("ascii chunk size");
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
            })?;
            while self.buf.len() < line_end + 2 + size + 2 {
                self.fill()?;
            }
            let data = line_end + 2;
            body.extend_from_slice(&self.buf[data..data + size]);
            assert_eq!(
                &self.buf[data + size..data + size + 2],
                b"\r\n",
                "chunk end"
            );
            self.buf.drain(..data + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Reads everything until the server closes or resets the connection, or nothing arrives
    /// for `idle`; returns the bytes (including any already buffered) and how it ended.
    pub fn read_until_end(&mut self, idle: Duration) -> (Vec<u8>, End) {
        self.stream.set_read_timeout(Some(idle)).expect("timeout");
        let end = loop {
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break End::Eof,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break End::TimedOut;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
                Err(e) => panic!("unexpected read error: {e}"),
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        (std::mem::take(&mut self.buf), end)
    }

    /// Reads until `needle` has arrived; takes the bytes up to and including it.
    pub fn read_through(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(p) = find(&self.buf, needle) {
                return self.buf.drain(..p + needle.len()).collect();
            }
            self.fill().expect("read");
        }
    }

    /// Reads until `n` bytes are buffered, then takes them.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().expect("read");
        }
        self.buf.drain(..n).collect()
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        }
        self.reads += 1;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Whether the server closed the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut tmp = [0u8; 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    pub fn next(&mut self) -> Resp {
        self.send(&next_req());
        let r = self.read();
        assert_eq!(r.status, 200, "next: {r:?}");
        r
    }

    pub fn respond(&mut self, id: &str, body: &[u8]) -> Resp {
        self.send(&post(&format!("{API}/invocation/{id}/response"), &[], body));
        self.read()
    }

    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(&post(path, headers, body));
        self.read()
    }
}

/// The head of a raw reply (up to and including the blank line) and what follows it.
pub fn split_head(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = find(bytes, b"\r\n\r\n")? + 4;
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end..]))
}

/// A header's value in a raw head (case-insensitive name).
pub fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn next_req() -> Vec<u8> {
    format!("GET {API}/invocation/next HTTP/1.1\r\nHost: sim\r\n\r\n").into_bytes()
}

pub fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A chunked POST, the body split into `chunks` pieces, with optional trailers.
pub fn post_chunked(
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunks: usize,
    trailers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    let size = body.len().div_ceil(chunks.max(1)).max(1);
    for c in body.chunks(size) {
        bytes.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        bytes.extend_from_slice(c);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        bytes.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// Polls `cond` until true or `timeout` (generous; for state changes on the server thread).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

pub const LONG: Duration = Duration::from_secs(20);
