//! One keep-alive HTTP/1.1 connection to the Runtime API: the codec driven over an
//! executor's owned-buffer stream.

use std::mem;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

use super::core::Io;
use crate::error::Error;
use crate::executor::Stream;
use crate::http::{
    BodyDecoder, CodecError, Decoded, Framing, MAX_HEADERS, ResponseHead, Status,
    parse_response_head,
};

/// Longest a connect may take before it counts as a failed attempt. The Runtime API is
/// local: a connect is answered or refused within microseconds. One to an address that
/// swallows it would otherwise wait for the kernel's SYN retries (about two minutes here)
/// before the unreachable timeout could start counting.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Read size when nothing tells us how much is coming.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Above this, an idle connection's buffers are shrunk back (a 6 MB event must not pin
/// 6 MB per connection forever).
const RETAIN_BYTES: usize = 256 * 1024;

/// Longest post reply whose length arms the low-water mark of the next pipelined
/// post's read ([`Conn::low_water_for_post_reply`]). The Runtime API's acceptance (`202`,
/// `{"status":"OK"}`) is about 130 bytes and the same every time (its `Date` header is
/// fixed-width); a longer reply is a refusal with a message, not the steady state, and
/// the higher the mark, the further a later, shorter reply could fall short of it.
pub(crate) const MAX_POST_REPLY_MARK: usize = 256;

/// Longest reply taken from a connection whose send failed ([`Conn::salvage_reply`]).
const MAX_EARLY_REPLY: usize = 64 * 1024;

/// A response whose head has been parsed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub status: u16,
    head_len: usize,
    framing: Framing,
    pub keep_alive: bool,
}

impl Head {
    /// The `Content-Length`, for length-delimited bodies.
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// Where a response body ended up.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// In the read buffer at `data`, not copied; the response occupied the buffer up to
    /// `consumed`. A length-delimited body, and a chunked one that came as one chunk (the
    /// Runtime API writes an event in one piece) or a close-delimited one.
    InPlace { data: Range<usize>, consumed: usize },
    /// Decoded into the body buffer (a chunked body of several chunks); the response
    /// occupied this many bytes of the read buffer.
    Decoded { consumed: usize },
}

/// A connection and its reusable buffers. Buffers outlive reconnects, so a steady state
/// allocates nothing.
pub(crate) struct Conn<S> {
    stream: Option<S>,
    /// Bytes read and not yet consumed. Owned by the stream while a read is in flight.
    pub rbuf: Vec<u8>,
    /// The request(s) to send next.
    pub wbuf: Vec<u8>,
    /// Decoded body of a chunked or close-delimited response.
    body: Vec<u8>,
    /// True until the first response on the current stream completes: an EOF on a
    /// stream that already served a response is a keep-alive close, and retryable.
    fresh: bool,
    /// Whether to note when the next `/next` goes out (set by the poll loops while polls
    /// are failing, so that a healthy loop reads no clock for it).
    pub stamp_sends: bool,
    /// When the last `/next` went out, if stamped: how long the API then held it.
    pub sent_at: Option<Instant>,
    /// The receive low-water mark for the next read only, if it finds nothing buffered
    /// (0: none). Set by the pipelined post path (see [`Conn::low_water_for_post_reply`]);
    /// every other read runs with the mark at 1, because a mark above what is still to
    /// come would never complete it.
    pub low_water_next: usize,
    /// The mark the socket has now (1 on a new socket), so that it is set only when it
    /// changes: in the steady state, never.
    low_water: usize,
    /// The shortest reply to a pipelined post seen on this connection (its successors
    /// included: the same server answers them), in bytes.
    post_reply_min: Option<usize>,
    /// Bytes of the read buffer the last completed response occupied.
    last_reply_len: usize,
    /// Whether the next read should first take what is already there without going
    /// through the driver (a deferred post's reply, there by the time it is read).
    pub expect_bytes: bool,
}

impl<S: Stream> Conn<S> {
    pub fn new() -> Self {
        Conn {
            stream: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            body: Vec::new(),
            fresh: true,
            stamp_sends: false,
            sent_at: None,
            low_water_next: 0,
            low_water: 1,
            post_reply_min: None,
            last_reply_len: 0,
            expect_bytes: false,
        }
    }

    /// A connection over an already open stream (the fuzz harness's scripted one).
    pub fn with_stream(stream: S) -> Self {
        let mut conn = Conn::new();
        conn.stream = Some(stream);
        conn
    }

    /// Bytes reserved for reading (the fuzz harness bounds it).
    pub fn read_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// The open stream's TCP socket ([`Stream::tcp_socket`]).
    pub fn tcp_socket(&self) -> Option<std::os::fd::RawFd> {
        self.stream.as_ref().and_then(Stream::tcp_socket)
    }

    /// Whether the open stream has already carried a complete response (so a failure
    /// before any reply byte may be a server-side keep-alive close).
    pub fn is_reused(&self) -> bool {
        self.stream.is_some() && !self.fresh
    }

    /// Drops the stream (and any unread bytes); buffers are kept.
    pub fn close(&mut self) {
        self.stream = None;
        self.rbuf.clear();
        self.fresh = true;
        self.low_water = 1;
        self.low_water_next = 0;
        self.expect_bytes = false;
    }

    /// Connects if not connected. Returns whether a new connection was made.
    pub async fn ensure_connected<I: Io<Stream = S>>(
        &mut self,
        exec: &I,
        addr: SocketAddr,
    ) -> Result<bool, Error> {
        if self.stream.is_some() {
            return Ok(false);
        }
        let what = "connecting to the Runtime API";
        // Dropping a connect that has not completed loses nothing.
        let stream = match select(pin!(exec.connect(addr)), pin!(exec.sleep(CONNECT_TIMEOUT))).await
        {
            Either::Left((connected, _)) => connected.map_err(|e| Error::io(what, e))?,
            Either::Right(((), _)) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                );
                return Err(Error::io(what, e));
            }
        };
        self.stream = Some(stream);
        self.rbuf.clear();
        self.fresh = true;
        self.low_water = 1;
        Ok(true)
    }

    /// Sends `wbuf`. Its contents are kept (a retry can send them again); callers clear
    /// it before encoding the next request. Dropped before it completes, it leaves `wbuf`
    /// empty and part of the request sent: the caller must close the connection. A
    /// failure closes the connection, keeping in `rbuf` a whole reply the API had sent
    /// already, if any ([`Conn::has_early_reply`]).
    pub async fn send(&mut self) -> Result<(), Error> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Error::from(CodecError::UnexpectedEof));
        };
        let buf = mem::take(&mut self.wbuf);
        let (res, buf) = stream.write_all(buf).await;
        self.wbuf = buf;
        if let Err(e) = res {
            // Taken out only when kept, so that a plain failure keeps the buffer's
            // allocation, as a close does.
            let early = self.salvage_reply().then(|| mem::take(&mut self.rbuf));
            self.close();
            if let Some(early) = early {
                self.rbuf = early;
            }
            return Err(Error::io("sending a request", e));
        }
        Ok(())
    }

    /// Whether a failed send left the API's whole reply to read (see
    /// [`Conn::salvage_reply`]): the connection is closed and `rbuf` holds the reply, which
    /// the next read of a reply takes. Cleared by the next connect.
    pub fn has_early_reply(&self) -> bool {
        self.stream.is_none() && !self.rbuf.is_empty()
    }

    /// After a failed send: takes what the API had already sent (without waiting) into
    /// `rbuf`, and says whether it is one whole reply. An API may answer a request before
    /// it has read all of it (a refusal: AWS's emulator checks the invocation id before it
    /// reads a response's body) and then close the connection. The send of a large post
    /// then fails with a reset while the refusal sits in the receive buffer (the kernel
    /// keeps what came before the reset), and the refusal says more than the reset: the
    /// post must not be sent again.
    fn salvage_reply(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        self.rbuf.clear();
        let mut closed = false;
        // A refusal is a short JSON message; a reply this long is not one.
        while self.rbuf.len() < MAX_EARLY_REPLY {
            self.rbuf.reserve(READ_CHUNK);
            match stream.try_read_now(&mut self.rbuf) {
                Some(Ok(0)) => {
                    closed = true;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_response_head(&self.rbuf, &mut headers, MAX_EARLY_REPLY) {
            Ok(Status::Complete(head, n)) if !head.is_interim() => match head.framing {
                Framing::Length(len) => (self.rbuf.len() - n) as u64 >= len,
                Framing::CloseDelimited => closed,
                Framing::Chunked => false,
            },
            _ => false,
        }
    }

    /// Reads more bytes into `rbuf`, making room for at least `want` more. Returns the
    /// number read; 0 means the peer closed. The caller closes the connection on an error
    /// or end of stream, through [`Conn::cut`]. The read runs at the low-water mark armed
    /// for it (see [`Conn::low_water_for_post_reply`]) or at 1, and takes what is already
    /// there without the driver if [`Conn::expect_bytes`] is set.
    async fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(0);
        };
        let mark = match mem::take(&mut self.low_water_next) {
            0 => 1,
            _ if !self.rbuf.is_empty() => 1,
            n => n,
        };
        if mark != self.low_water {
            match stream.set_read_low_water(mark) {
                Ok(()) => self.low_water = mark,
                // A raise that did not take costs a wake-up, nothing else, once the mark
                // is at 1 (it may still be at an earlier, higher one).
                Err(_) if mark > 1 => {
                    if self.low_water != 1 {
                        stream.set_read_low_water(1)?;
                        self.low_water = 1;
                    }
                }
                // Reading with a raised mark could wait for bytes that never come.
                Err(e) => return Err(e),
            }
        }
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want);
        }
        if mem::take(&mut self.expect_bytes)
            && let Some(res) = stream.try_read_now(&mut self.rbuf)
        {
            return res;
        }
        let (res, buf) = stream.read(mem::take(&mut self.rbuf)).await;
        self.rbuf = buf;
        res
    }

    /// Closes the connection after a read ended it (`io`: the read's error; `None`: end of
    /// stream) and says how. Before any byte of the reply, the request may not have been
    /// received ([`Error::is_closed`] or [`Error::is_io`]: a reused keep-alive connection
    /// the server closed while idle, which the caller may retry); once part of the reply
    /// came, the request was received, so it is a protocol error (a retry would post the
    /// same result twice).
    fn cut(&mut self, mid_reply: bool, io: Option<std::io::Error>) -> Error {
        self.close();
        match (mid_reply, io) {
            (false, None) => Error::closed(),
            (false, Some(e)) => Error::io(crate::error::READING_A_RESPONSE, e),
            (true, None) => CodecError::UnexpectedEof.into(),
            (true, Some(e)) => Error::from(CodecError::UnexpectedEof).with_source(e),
        }
    }

    /// What [`Conn::fill`] returned, for reads that need more bytes: end of stream is an
    /// error too. (Not an async wrapper around `fill`: another future layer on every
    /// read showed in the instruction count.)
    fn more(&mut self, read: std::io::Result<usize>, mid_reply: bool) -> Result<(), Error> {
        match read {
            Ok(0) => Err(self.cut(mid_reply, None)),
            Ok(_) => Ok(()),
            Err(e) => Err(self.cut(mid_reply, Some(e))),
        }
    }

    /// Reads until a final (non-1xx) response head is complete and returns it, along
    /// with `extract`'s view of it (the head borrows the read buffer, so anything needed
    /// from the headers is taken out through `extract`).
    ///
    /// A peer close (or reset) before any byte of the response is [`Error::is_closed`]
    /// (or [`Error::is_io`]): the request may not have been received, and the caller may
    /// send it again (at once on a fresh connection if [`Conn::is_reused`] was true: the
    /// peer had most likely closed it while idle). One after part of it (an interim
    /// response included) is a protocol error, see [`Conn::cut`].
    pub async fn read_head<T>(
        &mut self,
        max_body: usize,
        mut extract: impl FnMut(&ResponseHead<'_, '_>) -> T,
    ) -> Result<(Head, T), Error> {
        // Bytes already buffered belong to this reply (pipelined behind the last one).
        let mut started = !self.rbuf.is_empty();
        loop {
            {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match parse_response_head(&self.rbuf, &mut headers, max_body) {
                    Ok(Status::Complete(head, n)) => {
                        if head.is_interim() {
                            self.rbuf.drain(..n);
                            started = true;
                            continue;
                        }
                        let t = extract(&head);
                        return Ok((
                            Head {
                                status: head.status,
                                head_len: n,
                                framing: head.framing,
                                keep_alive: head.keep_alive,
                            },
                            t,
                        ));
                    }
                    Ok(Status::Partial) => {}
                    Err(e) => {
                        self.close();
                        return Err(e.into());
                    }
                }
            }
            let mid_reply = started || !self.rbuf.is_empty();
            let read = self.fill(READ_CHUNK).await;
            self.more(read, mid_reply)?;
        }
    }

    /// Reads the body of `head`, leaving it in place or in the body buffer.
    pub async fn read_body(&mut self, head: &Head, max_body: usize) -> Result<Body, Error> {
        if let Framing::Length(n) = head.framing {
            // Checked here too, not only by the head parser: a caller may parse the head
            // without a limit (to learn the request id of an oversized event) and then
            // read the body with one. A length over the limit reserves nothing; one
            // within it is reserved at once (one allocation for a large event, not a
            // series of regrowths), so a peer that announces and does not send holds at
            // most the limit on the connection.
            let end = match usize::try_from(n) {
                Ok(n) if n <= max_body => head.head_len.checked_add(n),
                _ => None,
            };
            let Some(end) = end else {
                self.close();
                return Err(CodecError::BodyTooLarge.into());
            };
            while self.rbuf.len() < end {
                let want = end - self.rbuf.len();
                let read = self.fill(want).await;
                self.more(read, true)?;
            }
            return Ok(Body::InPlace {
                data: head.head_len..end,
                consumed: end,
            });
        }
        let mut decoder = BodyDecoder::new(head.framing, max_body);
        self.body.clear();
        let start = head.head_len;
        // The body so far while it is one run of bytes in the read buffer: left there,
        // not copied. A second chunk ends the run: it is copied to the body buffer, and
        // from then on the buffer is drained as it is decoded.
        let mut run: Option<Range<usize>> = Some(start..start);
        // Decoded up to here. Outside a run, the bytes between `start` and `pos` are
        // dropped once per read rather than once per chunk, so that each buffered byte
        // moves at most once (a body of many small chunks would otherwise move the
        // buffer's tail per chunk).
        let mut pos = start;
        loop {
            match decoder.decode(&self.rbuf[pos..]) {
                Ok(Status::Complete(Decoded::Data(d), n)) => {
                    // Where `d` lies in the read buffer: a non-empty `d` is a slice of it
                    // (an empty one may point anywhere).
                    let at = (d.as_ptr() as usize).wrapping_sub(self.rbuf.as_ptr() as usize);
                    match &mut run {
                        _ if d.is_empty() => {}
                        Some(r) if r.start == r.end => *r = at..at + d.len(),
                        Some(r) if r.end == at => r.end += d.len(),
                        Some(r) => {
                            self.body.extend_from_slice(&self.rbuf[r.clone()]);
                            self.body.extend_from_slice(d);
                            run = None;
                        }
                        None => self.body.extend_from_slice(d),
                    }
                    pos += n;
                }
                Ok(Status::Complete(Decoded::Done, n)) => {
                    if let Some(data) = run {
                        return Ok(Body::InPlace {
                            data,
                            consumed: pos + n,
                        });
                    }
                    self.rbuf.drain(start..pos);
                    return Ok(Body::Decoded {
                        consumed: start + n,
                    });
                }
                Ok(Status::Partial) => {
                    // Outside a run, drop consumed framing and data so the buffer does not
                    // grow with the body; only unconsumed bytes move. In a run nothing is
                    // dropped: the buffer holds the body, as for a `Content-Length` one
                    // (the decoder's limit bounds it).
                    if run.is_none() {
                        self.rbuf.drain(start..pos);
                        pos = start;
                    }
                    // Room for the rest of the current chunk at once (one allocation for a
                    // large event, as for a `Content-Length` one; the decoder has checked
                    // it against the limit).
                    let want = usize::try_from(decoder.pending_data())
                        .unwrap_or(usize::MAX)
                        .max(READ_CHUNK);
                    let n = match self.fill(want).await {
                        Ok(n) => n,
                        Err(e) => return Err(self.cut(true, Some(e))),
                    };
                    if n == 0 {
                        let done = decoder.finish_eof();
                        self.stream = None;
                        return match done {
                            Ok(()) => {
                                let consumed = self.rbuf.len();
                                Ok(match run {
                                    Some(data) => Body::InPlace { data, consumed },
                                    None => Body::Decoded { consumed },
                                })
                            }
                            Err(e) => {
                                self.close();
                                Err(e.into())
                            }
                        };
                    }
                }
                Err(e) => {
                    self.close();
                    return Err(e.into());
                }
            }
        }
    }

    /// Reads and drops the length-delimited body of `head` without buffering it whole,
    /// leaving the connection ready for the next response.
    pub async fn discard_body(&mut self, head: &Head) -> Result<(), Error> {
        let Some(len) = head.content_length() else {
            self.close();
            return Ok(());
        };
        let mut remaining = len;
        self.rbuf.drain(..head.head_len.min(self.rbuf.len()));
        loop {
            let have = (self.rbuf.len() as u64).min(remaining);
            self.rbuf.drain(..have as usize);
            remaining -= have;
            if remaining == 0 {
                break;
            }
            let read = self.fill(READ_CHUNK).await;
            self.more(read, true)?;
        }
        self.fresh = false;
        if !head.keep_alive {
            self.close();
        }
        Ok(())
    }

    /// The body bytes of a response read by [`Conn::read_body`].
    pub fn body(&self, body: &Body) -> &[u8] {
        match body {
            Body::InPlace { data, .. } => &self.rbuf[data.clone()],
            Body::Decoded { .. } => &self.body,
        }
    }

    /// Arms the next read, if it finds nothing buffered, to complete only once more than
    /// the shortest reply to a pipelined post seen so far has arrived: that is, once the
    /// post's reply and the first bytes behind it (the pipelined `/next`'s invocation)
    /// are in. The reply's arrival alone then wakes nobody: at a steady, modest rate a
    /// slot sleeps once per invocation instead of twice.
    ///
    /// Why it does not wait for bytes that never come: an end of stream or an error
    /// completes the read whatever the mark; an invocation's reply is at least 84 bytes
    /// (status line, request id and deadline headers), which covers a reply up to 84
    /// bytes shorter than the shortest before it on the connection (a server that
    /// answered posts with ~130 bytes and then with under ~47 would leave the slot
    /// waiting for the API's next bytes on it, or its close); and the mark is back at 1
    /// for every read after this one. Until the invocation comes, the post's reply waits
    /// unread in the socket: a refusal is counted and logged then (the post was counted
    /// as answered when sent).
    pub fn low_water_for_post_reply(&mut self) {
        if let Some(min) = self.post_reply_min {
            self.low_water_next = min + 1;
        }
    }

    /// Notes the response just finished as a pipelined post's reply (see
    /// [`Conn::low_water_for_post_reply`]).
    pub fn note_post_reply(&mut self) {
        let len = self.last_reply_len;
        if (1..=MAX_POST_REPLY_MARK).contains(&len) {
            self.post_reply_min = Some(self.post_reply_min.map_or(len, |m| m.min(len)));
        }
    }

    /// Discards a complete response from the read buffer (keeping any bytes of the next
    /// one), and closes the connection if the response said so.
    pub fn finish(&mut self, head: &Head, body: &Body) {
        let (Body::InPlace { consumed, .. } | Body::Decoded { consumed }) = body;
        let end = *consumed;
        let end = end.min(self.rbuf.len());
        self.last_reply_len = end;
        // An arming no read used (the reply was buffered already) is spent: the next read
        // is for what follows it, which may be shorter than the mark.
        self.low_water_next = 0;
        if end == self.rbuf.len() {
            self.rbuf.clear();
        } else {
            self.rbuf.drain(..end);
        }
        self.fresh = false;
        if !head.keep_alive {
            self.close();
        }
        if self.rbuf.capacity() > RETAIN_BYTES && self.rbuf.len() < READ_CHUNK {
            self.rbuf.shrink_to(READ_CHUNK);
        }
        if self.body.capacity() > RETAIN_BYTES {
            self.body = Vec::new();
        }
    }

    /// Shrinks an oversized write buffer after a large response was sent.
    pub fn trim_write_buffer(&mut self) {
        if self.wbuf.capacity() > RETAIN_BYTES {
            self.wbuf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{Scripted, now};
    use crate::http::DEFAULT_MAX_BODY_BYTES;

    fn read_one(conn: &mut Conn<Scripted>) -> Result<(u16, Vec<u8>), Error> {
        let (head, ()) = now(conn.read_head(DEFAULT_MAX_BODY_BYTES, |_| ()))?;
        let body = now(conn.read_body(&head, DEFAULT_MAX_BODY_BYTES))?;
        let b = conn.body(&body).to_vec();
        conn.finish(&head, &body);
        Ok((head.status, b))
    }

    /// A failed send keeps a whole reply the API had sent already (a refusal before it
    /// read the whole request), to be read as the request's, and nothing else: a reply
    /// cut short, a chunked one, an interim one, or a close-delimited body the connection
    /// did not end (a reset instead) goes with the connection.
    #[test]
    fn a_failed_send_keeps_only_a_whole_early_reply() {
        let gone = &b"HTTP/1.1 410 Gone\r\nContent-Length: 2\r\n\r\n{}"[..];
        let open_ended = &b"HTTP/1.1 410 Gone\r\n\r\n{}"[..];
        // (what the API sent, whether a reset follows it rather than a close, kept)
        let cases: [(&[u8], bool, bool); 9] = [
            (gone, false, true),
            (gone, true, true),
            (
                b"HTTP/1.1 410 Gone\r\nContent-Length: 5\r\n\r\n{}",
                false,
                false,
            ),
            (b"HTTP/1.1 410 Gone\r\nContent-Len", false, false),
            (
                b"HTTP/1.1 410 Gone\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                false,
                false,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, false),
            (open_ended, false, true),
            (open_ended, true, false),
            (b"", false, false),
        ];
        for (sent, reset, kept) in cases {
            let what = String::from_utf8_lossy(sent);
            for step in [1, 7, 4096] {
                let stream = Scripted::fixed(sent.to_vec(), step, reset).failing_writes();
                let mut conn = Conn::with_stream(stream);
                conn.wbuf.extend_from_slice(b"POST /x HTTP/1.1\r\n\r\n");
                assert!(now(conn.send()).is_err(), "{what:?}");
                assert!(!conn.is_open(), "{what:?}");
                assert_eq!(conn.has_early_reply(), kept, "{what:?}, reset {reset}");
                if kept {
                    let (status, body) = read_one(&mut conn).expect("the kept reply reads");
                    assert_eq!((status, &body[..]), (410, &b"{}"[..]), "{what:?}");
                    assert!(!conn.has_early_reply(), "{what:?}: read once");
                }
            }
        }
    }

    /// The receive low-water mark is raised (past the shortest pipelined post reply seen)
    /// only for the read that starts a pipelined post's reply with nothing buffered, and
    /// set back to 1 for every read after it: the rest of a reply, or an invocation that
    /// comes in pieces, may never make up a raised mark. A refusal longer than
    /// `MAX_POST_REPLY_MARK` arms nothing, and a close forgets an armed mark.
    #[test]
    fn low_water_mark_only_for_the_read_that_starts_a_pipelined_reply() {
        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n";
        let long = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 300\r\n\r\n{}",
            "x".repeat(300)
        );
        let event = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: a\r\nLambda-Runtime-Deadline-Ms: 1\r\nContent-Length: 2\r\n\r\n{}";
        let mut data = Vec::new();
        for part in [&ok[..], ok, event, long.as_bytes(), event] {
            data.extend_from_slice(part);
        }
        // One byte per read, except where a raised mark makes a read wait for more.
        let mut conn = Conn::with_stream(Scripted::fixed(data, 1, false));
        let marks = |conn: &Conn<Scripted>| conn.stream.as_ref().map(|s| s.marks.clone());
        let raised = |conn: &Conn<Scripted>| conn.stream.as_ref().map(|s| s.raised_reads.clone());
        let mark = ok.len() + 1;

        // No pipelined reply seen yet: nothing to arm.
        conn.low_water_for_post_reply();
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(202));
        conn.note_post_reply();
        assert_eq!(marks(&conn), Some(vec![]));

        // Armed past the 202's length: one read brings the reply and a byte behind it.
        conn.low_water_for_post_reply();
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(202));
        assert_eq!(marks(&conn), Some(vec![mark]));
        assert_eq!(conn.low_water_next, 0);

        // Armed with a byte already buffered: the invocation is read at mark 1.
        conn.low_water_for_post_reply();
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(200));
        assert_eq!(marks(&conn), Some(vec![mark, 1]));

        // A reply longer than the mark: its first read is raised, the rest at 1. A long
        // refusal is not the steady state: noting it changes nothing.
        conn.low_water_for_post_reply();
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(400));
        assert_eq!(marks(&conn), Some(vec![mark, 1, mark, 1]));
        conn.note_post_reply();
        assert_eq!(conn.post_reply_min, Some(ok.len()));
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(200));
        assert_eq!(marks(&conn), Some(vec![mark, 1, mark, 1]));
        // Two reads were raised, each with nothing buffered before it.
        assert_eq!(raised(&conn), Some(vec![0, 0]));

        // A close forgets an armed mark and the socket's.
        conn.low_water_for_post_reply();
        assert_eq!(conn.low_water_next, mark);
        conn.close();
        assert_eq!((conn.low_water_next, conn.low_water), (0, 1));
    }

    /// An arming that no read used, because the post's reply was in the buffer already,
    /// is spent with that reply: the invocation behind it is read at mark 1.
    #[test]
    fn an_unused_low_water_arming_ends_with_its_reply() {
        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n";
        let event = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: a\r\nLambda-Runtime-Deadline-Ms: 1\r\nContent-Length: 2\r\n\r\n{}";
        let mut conn = Conn::with_stream(Scripted::fixed(event.to_vec(), 1, false));
        conn.post_reply_min = Some(ok.len());
        conn.rbuf.extend_from_slice(ok);
        conn.low_water_for_post_reply();
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(202));
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(200));
        let raised = conn.stream.as_ref().map(|s| s.raised_reads.clone());
        assert_eq!(raised, Some(vec![]));
    }

    /// A read that expects its bytes to be there takes them without the driver once, for
    /// its first read only; a close forgets it.
    #[test]
    fn an_expected_reply_is_taken_directly_once() {
        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n";
        let data = [&ok[..], ok].concat();
        let mut conn = Conn::with_stream(Scripted::fixed(data, 10, false));
        let direct = |conn: &Conn<Scripted>| conn.stream.as_ref().map(|s| s.direct_reads);
        conn.expect_bytes = true;
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(202));
        assert_eq!(direct(&conn), Some(1));
        assert!(!conn.expect_bytes);
        assert_eq!(read_one(&mut conn).ok().map(|r| r.0), Some(202));
        assert_eq!(direct(&conn), Some(1));
        conn.expect_bytes = true;
        conn.close();
        assert!(!conn.expect_bytes);
    }

    /// A body that comes as one run of bytes (one chunk, as the Runtime API writes an
    /// event; or close-delimited) is left in the read buffer, not copied; several chunks
    /// are decoded into the body buffer. Either way the bytes of the next response on the
    /// connection are kept, however the input is split.
    #[test]
    fn chunked_bodies_in_place_or_decoded() {
        let next = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let cases: [(&[u8], &[u8], bool); 5] = [
            (
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                b"hello",
                true,
            ),
            (
                b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX: y\r\n\r\n",
                b"hello",
                true,
            ),
            (b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"", true),
            (
                b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
                b"hello",
                false,
            ),
            (
                b"Transfer-Encoding: chunked\r\n\r\n1\r\nh\r\n1\r\ne\r\n3\r\nllo\r\n0\r\n\r\n",
                b"hello",
                false,
            ),
        ];
        for (rest, want, in_place) in cases {
            for step in [1, 2, 5, 4096] {
                let case = format!("{:?} step={step}", String::from_utf8_lossy(rest));
                let mut data = b"HTTP/1.1 202 Accepted\r\n".to_vec();
                data.extend_from_slice(rest);
                data.extend_from_slice(next);
                let mut conn = Conn::with_stream(Scripted::fixed(data, step, false));
                let (head, ()) = now(conn.read_head(DEFAULT_MAX_BODY_BYTES, |_| ())).expect(&case);
                let body = now(conn.read_body(&head, DEFAULT_MAX_BODY_BYTES)).expect(&case);
                assert_eq!(conn.body(&body), want, "{case}");
                assert_eq!(
                    matches!(body, Body::InPlace { .. }),
                    in_place,
                    "{case}: {body:?}"
                );
                conn.finish(&head, &body);
                assert_eq!(
                    read_one(&mut conn).expect(&case),
                    (200, b"abc".to_vec()),
                    "{case}"
                );
            }
        }
        // Close-delimited: the run ends at end of stream.
        for step in [1, 3, 4096] {
            let data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it".to_vec();
            let mut conn = Conn::with_stream(Scripted::fixed(data, step, false));
            let (head, ()) = now(conn.read_head(DEFAULT_MAX_BODY_BYTES, |_| ())).expect("head");
            let body = now(conn.read_body(&head, DEFAULT_MAX_BODY_BYTES)).expect("body");
            assert_eq!(conn.body(&body), b"all of it", "step={step}");
            assert!(matches!(body, Body::InPlace { .. }), "step={step}");
        }
    }

    #[derive(Debug, PartialEq)]
    enum Ended {
        /// Before any byte of the reply: the request may be sent again.
        Closed,
        /// Reset before any byte: also retryable.
        Io,
        /// Part of the reply came: the request was received, no retry.
        MidReply,
    }

    /// How a second reply on a kept-alive connection fails decides whether a post is sent
    /// again: only a close (or reset) before any byte of it may be retried; once part of
    /// the reply arrived the post was received, and sending it again would be refused as
    /// a duplicate and counted as a failed post.
    #[test]
    fn how_a_cut_reply_ends() {
        let cases: [(&[u8], bool, Ended); 9] = [
            (b"", false, Ended::Closed),
            (b"", true, Ended::Io),
            (b"HTTP/1.1 202 Acc", false, Ended::MidReply),
            (b"HTTP/1.1 202 Acc", true, Ended::MidReply),
            (b"H", false, Ended::MidReply),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, Ended::MidReply),
            (
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"sta",
                false,
                Ended::MidReply,
            ),
            (
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"sta",
                true,
                Ended::MidReply,
            ),
            (
                b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"s",
                true,
                Ended::MidReply,
            ),
        ];
        for (second, reset, want) in cases {
            for step in [1, 7, 4096] {
                let case = format!(
                    "{:?} reset={reset} step={step}",
                    String::from_utf8_lossy(second)
                );
                let mut data = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}".to_vec();
                data.extend_from_slice(second);
                let mut conn = Conn::with_stream(Scripted::fixed(data, step, reset));
                assert_eq!(
                    read_one(&mut conn).expect(&case),
                    (202, b"{}".to_vec()),
                    "{case}"
                );
                assert!(conn.is_reused(), "{case}");
                let e = read_one(&mut conn).expect_err(&case);
                let got = match (e.is_closed(), e.is_io(), e.codec_error()) {
                    (true, false, None) => Ended::Closed,
                    (false, true, None) => Ended::Io,
                    (false, false, Some(CodecError::UnexpectedEof)) => Ended::MidReply,
                    _ => panic!("{case}: unexpected error {e}"),
                };
                assert_eq!(got, want, "{case}: {e}");
                if reset && got == Ended::MidReply {
                    assert!(
                        std::error::Error::source(&e).is_some(),
                        "{case}: the reset is kept"
                    );
                }
                assert!(!conn.is_open(), "{case}");
            }
        }
    }
}
