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
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Self {
            stream,
            buf: Vec::new(),
        }
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
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ascii head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .expect("status")
            .parse()
            .expect("status code");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .expect("content-length framing expected");
        let start = head_end + 4;
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

    fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        }
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
