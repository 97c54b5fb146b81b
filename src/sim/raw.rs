//! The hand-written side of fault injection: the bytes of faulted `/next` replies, the scripts
//! that put them on the wire, the socket tricks (reset, waiting until bytes have left), and the
//! IO wrapper of faulted connections (bytes to read again, silent keep-alive closes).
//!
//! Only used when a [`FaultPlan`](super::FaultPlan) is set; see [`super::fault`] for the design.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::fault::{FaultKind, GARBAGE, OVERSIZED_HEAD_BYTES, ReplyFault};
use super::state::Shared;

/// What a faulted reply does on the wire.
pub(crate) struct Script {
    steps: Vec<Step>,
    end: End,
}

enum Step {
    /// Write these bytes.
    Write(Bytes),
    /// Write these bytes one per write, pausing in between (zero: yield).
    Drip(Bytes, Duration),
    /// Write a body of `len` bytes of a JSON string (`"xx...x"`), chunked or not.
    Fill { len: u64, chunked: bool },
}

/// How the connection ends after the steps.
enum End {
    /// Go on serving HTTP on it.
    Resume,
    /// Close it gracefully (FIN).
    Close,
    /// Reset it (RST), once the bytes written have left the socket.
    Reset,
}

impl Script {
    /// Reset the connection without writing anything.
    pub(crate) fn reset() -> Self {
        Script {
            steps: Vec::new(),
            end: End::Reset,
        }
    }

    /// Close the connection (FIN) without writing anything.
    pub(crate) fn close() -> Self {
        Script {
            steps: Vec::new(),
            end: End::Close,
        }
    }
}

/// Framing of a hand-written reply head.
enum Framing {
    Length(u64),
    Chunked,
}

const PADDING_NAME: &[u8] = b"x-padding: ";

/// `HTTP/1.1 200 OK`, the given headers, the framing header, and `pad` bytes of padding header.
fn head(headers: &HeaderMap, framing: Framing, pad: usize) -> BytesMut {
    let mut h = BytesMut::with_capacity(512 + pad);
    h.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in headers {
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => h.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if pad > 0 {
        h.extend_from_slice(PADDING_NAME);
        h.resize(h.len() + pad, b'a');
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn chunk(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The script of a raw reply fault, from the headers and event of the normal reply; `None` for
/// the faults hyper writes (header changes only).
pub(crate) fn reply_script(
    fault: &ReplyFault,
    headers: &HeaderMap,
    event: &Bytes,
) -> Option<Script> {
    let len = event.len() as u64;
    let normal = || head(headers, Framing::Length(len), 0);
    let (steps, end) = match fault {
        ReplyFault::ResetBeforeHead => (Vec::new(), End::Reset),
        ReplyFault::ResetMidHead => {
            // The only blank line of a head is its end, so half of it is never complete.
            let h = normal().freeze();
            let cut = h.len() / 2;
            (vec![Step::Write(h.slice(..cut))], End::Reset)
        }
        ReplyFault::ResetMidBody => {
            let mut h = head(headers, Framing::Length(len.max(1)), 0);
            h.extend_from_slice(&event[..event.len() / 2]);
            (vec![Step::Write(h.freeze())], End::Reset)
        }
        ReplyFault::Drip { delay } => {
            let mut h = normal();
            h.extend_from_slice(event);
            (vec![Step::Drip(h.freeze(), *delay)], End::Resume)
        }
        ReplyFault::Garbage => (vec![Step::Write(Bytes::from_static(GARBAGE))], End::Close),
        ReplyFault::OversizedHead => {
            let base = normal().len() + PADDING_NAME.len() + 2;
            let mut h = head(
                headers,
                Framing::Length(len),
                OVERSIZED_HEAD_BYTES.saturating_sub(base),
            );
            h.extend_from_slice(event);
            (vec![Step::Write(h.freeze())], End::Close)
        }
        ReplyFault::OversizedBody { len, chunked } => {
            let framing = if *chunked {
                Framing::Chunked
            } else {
                Framing::Length(*len)
            };
            let h = head(headers, framing, 0).freeze();
            let fill = Step::Fill {
                len: *len,
                chunked: *chunked,
            };
            (vec![Step::Write(h), fill], End::Resume)
        }
        ReplyFault::WrongContentLength { extra } => {
            let mut h = head(headers, Framing::Length(len + extra), 0);
            h.extend_from_slice(event);
            (vec![Step::Write(h.freeze())], End::Close)
        }
        ReplyFault::BadChunkSize => {
            let mut h = head(headers, Framing::Chunked, 0);
            let half = &event[..event.len() / 2];
            if !half.is_empty() {
                chunk(&mut h, half);
            }
            h.extend_from_slice(b"zz\r\n");
            (vec![Step::Write(h.freeze())], End::Close)
        }
        ReplyFault::Chunked { chunk: size } => {
            // One write per chunk, so chunk boundaries and read boundaries differ.
            let mut steps = vec![Step::Write(head(headers, Framing::Chunked, 0).freeze())];
            for c in event.chunks((*size).max(1)) {
                let mut b = BytesMut::with_capacity(c.len() + 16);
                chunk(&mut b, c);
                steps.push(Step::Write(b.freeze()));
            }
            steps.push(Step::Write(Bytes::from_static(b"0\r\n\r\n")));
            (steps, End::Resume)
        }
        ReplyFault::MissingRequestId
        | ReplyFault::MissingDeadline
        | ReplyFault::InvalidDeadline
        | ReplyFault::UnsafeRequestId(_) => return None,
    };
    Some(Script { steps, end })
}

/// Counters a faulted connection's service keeps for its IO wrapper: requests whose head
/// arrived, and requests whose reply was produced.
#[derive(Default)]
pub(crate) struct ConnTrack {
    pub begun: AtomicU64,
    pub done: AtomicU64,
}

/// Connection-level faults chosen for a connection when it was accepted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnFaults {
    pub close_after: Option<u64>,
    pub close_idle: Option<Duration>,
}

/// The IO of a faulted connection: the socket, bytes to be read again (read ahead by a hyper
/// connection that was taken apart), and the silent keep-alive close.
pub(crate) struct FaultIo {
    stream: TcpStream,
    unread: Bytes,
    track: Arc<ConnTrack>,
    /// `track.done` when the write side was last flushed: every reply produced by then has
    /// left hyper's buffers.
    flushed: u64,
    faults: ConnFaults,
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// Set once the connection reported EOF to hyper for a close fault.
    closed: bool,
    shared: Arc<Shared>,
}

impl FaultIo {
    pub(crate) fn new(
        stream: TcpStream,
        faults: ConnFaults,
        track: Arc<ConnTrack>,
        shared: Arc<Shared>,
    ) -> Self {
        FaultIo {
            stream,
            unread: Bytes::new(),
            track,
            flushed: 0,
            faults,
            idle_timer: None,
            closed: false,
            shared,
        }
    }

    /// Puts bytes read ahead back in front of the socket's.
    pub(crate) fn unread(&mut self, ahead: Bytes) {
        if ahead.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = ahead;
        } else {
            let mut b = BytesMut::with_capacity(ahead.len() + self.unread.len());
            b.extend_from_slice(&ahead);
            b.extend_from_slice(&self.unread);
            self.unread = b.freeze();
        }
    }

    /// A hand-written reply replaced the reply to the request in progress: count it as
    /// produced and flushed.
    pub(crate) fn raw_reply_done(&mut self) {
        self.flushed = self.track.done.fetch_add(1, Ordering::Relaxed) + 1;
    }

    /// Whether a close fault ends the connection now. Idle means every request received has
    /// its reply produced and flushed; hyper reads right after flushing, so an idle connection
    /// is seen at once.
    fn close_now(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed {
            return true;
        }
        let ConnFaults {
            close_after,
            close_idle,
        } = self.faults;
        if close_after.is_none() && close_idle.is_none() {
            return false;
        }
        let done = self.track.done.load(Ordering::Relaxed);
        let idle = self.track.begun.load(Ordering::Relaxed) == done && self.flushed == done;
        if !idle {
            self.idle_timer = None;
            return false;
        }
        let kind = if close_after.is_some_and(|n| done >= n) {
            FaultKind::CloseAfterRequests
        } else if let Some(d) = close_idle {
            let timer = self
                .idle_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            FaultKind::CloseWhenIdle
        } else {
            return false;
        };
        self.closed = true;
        self.shared.lock().ledger.faults.bump(kind);
        tracing::debug!("sim: closing an idle connection ({kind:?})");
        true
    }

    /// Runs a reply script on the socket. Returns the connection if HTTP goes on on it.
    pub(crate) async fn run(mut self, script: Script) -> Option<FaultIo> {
        for step in &script.steps {
            let r = match step {
                Step::Write(b) => write_all(&self.stream, b).await,
                Step::Drip(b, delay) => drip(&self.stream, b, *delay).await,
                Step::Fill { len, chunked } => fill(&self.stream, *len, *chunked).await,
            };
            if let Err(e) = r {
                // The client went away (e.g. it stopped reading an oversized reply): done.
                tracing::debug!("sim: faulted reply cut short: {e}");
                return None;
            }
        }
        match script.end {
            End::Resume => {
                self.raw_reply_done();
                Some(self)
            }
            End::Close => {
                close(self.stream).await;
                None
            }
            End::Reset => {
                wait_sent(&self.stream).await;
                reset_now(self.stream);
                None
            }
        }
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        if this.close_now(cx) {
            // EOF: hyper ends an idle connection quietly, without `Connection: close`.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        if r.is_ready() {
            // hyper flushes its own buffer completely before flushing the IO.
            let done = this.track.done.load(Ordering::Relaxed);
            let before = std::mem::replace(&mut this.flushed, done);
            // A reply just left: if that made the connection idle and a close rule is set,
            // have hyper read again so `close_now` sees it (hyper does not read after a
            // flush when its last read was pending; it waits for the socket). Only on that
            // transition, so a flush with nothing new does not spin.
            let rules = this.faults.close_after.is_some() || this.faults.close_idle.is_some();
            if rules && done != before && this.track.begun.load(Ordering::Relaxed) == done {
                cx.waker().wake_by_ref();
            }
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn drip(stream: &TcpStream, bytes: &[u8], delay: Duration) -> io::Result<()> {
    for i in 0..bytes.len() {
        write_all(stream, &bytes[i..=i]).await?;
        if delay.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}

/// Writes `len` bytes of `"xx...x"`, in 16 KiB pieces (chunks, if `chunked`).
async fn fill(stream: &TcpStream, len: u64, chunked: bool) -> io::Result<()> {
    const PIECE: u64 = 16 * 1024;
    let mut block = BytesMut::with_capacity(PIECE as usize + 16);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(PIECE);
        block.clear();
        if chunked {
            block.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        for i in at..at + n {
            block.extend_from_slice(if i == 0 || i == len - 1 { b"\"" } else { b"x" });
        }
        if chunked {
            block.extend_from_slice(b"\r\n");
        }
        write_all(stream, &block).await?;
        at += n;
    }
    if chunked {
        write_all(stream, b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Bytes written and not yet acknowledged by the peer (`TIOCOUTQ`), `None` if unknown.
fn unsent(stream: &TcpStream) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is valid while `stream` is borrowed, and TIOCOUTQ writes one
    // `c_int` through the pointer, which points to one.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

/// Waits (at most 200 ms) until everything written has reached the peer, so that a reset that
/// follows does not discard it: the bytes on the wire are the ones the fault says.
async fn wait_sent(stream: &TcpStream) {
    for _ in 0..200 {
        match unsent(stream) {
            Some(n) if n > 0 => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => return,
        }
    }
}

/// Resets the connection: `SO_LINGER` 0, then close, which sends RST instead of FIN.
pub(crate) fn reset_now(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is valid while `stream` lives; the option value is a `linger`
    // of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(
            "sim: cannot set SO_LINGER for a reset: {}",
            io::Error::last_os_error()
        );
    }
    drop(stream);
}

/// Closes gracefully: FIN, then read and drop whatever the peer still sends until it closes
/// too (at most 2 s), so the close is not turned into a reset by unread bytes.
async fn close(mut stream: TcpStream) {
    let _ = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx)).await;
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "lambda-runtime-aws-request-id",
            HeaderValue::from_static("abc"),
        );
        h
    }

    fn bytes_of(s: &Script) -> Vec<u8> {
        let mut out = Vec::new();
        for step in &s.steps {
            match step {
                Step::Write(b) | Step::Drip(b, _) => out.extend_from_slice(b),
                Step::Fill { .. } => out.extend_from_slice(b"<fill>"),
            }
        }
        out
    }

    #[test]
    fn scripts() {
        let ev = Bytes::from_static(b"{\"a\":1}");
        let h = headers();
        let s = reply_script(&ReplyFault::ResetMidBody, &h, &ev).expect("raw");
        assert_eq!(
            bytes_of(&s),
            b"HTTP/1.1 200 OK\r\nlambda-runtime-aws-request-id: abc\r\ncontent-length: 7\r\n\r\n{\"a"
        );
        let s = reply_script(&ReplyFault::BadChunkSize, &h, &ev).expect("raw");
        assert!(bytes_of(&s).ends_with(b"chunked\r\n\r\n3\r\n{\"a\r\nzz\r\n"));
        let s = reply_script(&ReplyFault::Chunked { chunk: 3 }, &h, &ev).expect("raw");
        assert!(bytes_of(&s).ends_with(b"\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n"));
        let s = reply_script(&ReplyFault::OversizedHead, &h, &ev).expect("raw");
        let b = bytes_of(&s);
        let end = b
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end")
            + 4;
        assert_eq!(end, OVERSIZED_HEAD_BYTES);
        assert!(reply_script(&ReplyFault::MissingDeadline, &h, &ev).is_none());
    }
}
