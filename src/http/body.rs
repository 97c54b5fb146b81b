//! Body decoding: `Content-Length`, chunked transfer coding (trailers skipped), and
//! close-delimited bodies.
//!
//! The decoders never copy: each step hands back a slice of the input that is body data,
//! and the caller decides where it goes. A step that returns
//! `Status::Complete(_, consumed)` always has `consumed > 0` unless it reports
//! [`Decoded::Done`], so a caller loop always makes progress.

use super::head::{strip_leading_zeros, trim_ows};
use super::{CodecError, Framing, MAX_CHUNK_LINE_BYTES, MAX_TRAILER_BYTES, Status};

/// One decode step's output; see [`BodyDecoder`] for a loop over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Body bytes found in the input (possibly empty when only framing was consumed).
    Data(&'a [u8]),
    /// The body is complete; nothing of it remains on the wire.
    Done,
}

/// Decoder for one response body, whatever its framing.
///
/// The decoder never copies: each step returns a slice of its input that is body data,
/// and the caller drops the consumed bytes or advances past them. A step that returns
/// `Status::Complete(_, consumed)` has `consumed > 0` unless it reports
/// [`Decoded::Done`], so a loop always makes progress.
///
/// A close-delimited body ends when the peer closes; tell the decoder with
/// [`finish_eof`](Self::finish_eof):
///
/// ```
/// use lambda_tpc::http::{BodyDecoder, CodecError, Decoded, Framing, Status};
///
/// let mut body = BodyDecoder::new(Framing::CloseDelimited, 1024);
/// assert_eq!(body.decode(b"all of it")?, Status::Complete(Decoded::Data(b"all of it"), 9));
/// assert!(!body.is_done());
/// body.finish_eof()?; // read returned 0
/// assert!(body.is_done());
///
/// // For a framed body, a close before the end is an error.
/// let mut body = BodyDecoder::new(Framing::Length(10), 1024);
/// body.decode(b"short")?;
/// assert_eq!(body.finish_eof(), Err(CodecError::UnexpectedEof));
/// # Ok::<(), CodecError>(())
/// ```
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    /// `Content-Length` framing: this many bytes remain.
    Length {
        /// Bytes of body still expected.
        remaining: u64,
    },
    /// Chunked transfer coding.
    Chunked(ChunkedDecoder),
    /// Body delimited by connection close.
    Eof {
        /// Body bytes seen so far.
        total: u64,
        /// Largest body accepted.
        limit: u64,
        /// Set once the caller reported the close.
        done: bool,
    },
}

impl BodyDecoder {
    /// A decoder for a body with the given framing; `max_body` bounds chunked and
    /// close-delimited bodies (a `Content-Length` was already checked by the head parser).
    pub fn new(framing: Framing, max_body: usize) -> Self {
        match framing {
            Framing::Length(n) => BodyDecoder::Length { remaining: n },
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(max_body)),
            Framing::CloseDelimited => BodyDecoder::Eof {
                total: 0,
                limit: max_body as u64,
                done: false,
            },
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(c) => c.is_done(),
            BodyDecoder::Eof { done, .. } => *done,
        }
    }

    /// Body bytes known to be on their way and not decoded yet: the rest of a
    /// `Content-Length` body or of the current chunk (see
    /// [`ChunkedDecoder::pending_data`]); 0 when unknown.
    pub fn pending_data(&self) -> u64 {
        match self {
            BodyDecoder::Length { remaining } => *remaining,
            BodyDecoder::Chunked(c) => c.pending_data(),
            BodyDecoder::Eof { .. } => 0,
        }
    }

    /// Decodes the next piece of body from the start of `input` (the bytes received and
    /// not yet consumed). `Status::Partial` means more input is needed.
    ///
    /// # Errors
    ///
    /// A [`CodecError`] for malformed chunked framing, or a body over the limit given to
    /// [`new`](Self::new).
    ///
    /// ```
    /// use lambda_tpc::http::{BodyDecoder, Decoded, Framing, Status};
    ///
    /// let mut body = BodyDecoder::new(Framing::Length(5), 1024);
    /// // Bytes past the body (the next response on the connection) are not consumed.
    /// assert_eq!(body.decode(b"helloHTTP/1.1")?, Status::Complete(Decoded::Data(b"hello"), 5));
    /// assert_eq!(body.decode(b"HTTP/1.1")?, Status::Complete(Decoded::Done, 0));
    /// # Ok::<(), lambda_tpc::http::CodecError>(())
    /// ```
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Status<Decoded<'a>>, CodecError> {
        match self {
            BodyDecoder::Length { remaining } => {
                if *remaining == 0 {
                    return Ok(Status::Complete(Decoded::Done, 0));
                }
                if input.is_empty() {
                    return Ok(Status::Partial);
                }
                let n = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= n as u64;
                Ok(Status::Complete(Decoded::Data(&input[..n]), n))
            }
            BodyDecoder::Chunked(c) => c.decode(input),
            BodyDecoder::Eof { total, limit, done } => {
                if *done {
                    return Ok(Status::Complete(Decoded::Done, 0));
                }
                if input.is_empty() {
                    return Ok(Status::Partial);
                }
                *total += input.len() as u64;
                if *total > *limit {
                    return Err(CodecError::BodyTooLarge);
                }
                Ok(Status::Complete(Decoded::Data(input), input.len()))
            }
        }
    }

    /// Tells the decoder the peer closed the connection. Completes a close-delimited
    /// body (see the [type docs](Self)).
    ///
    /// # Errors
    ///
    /// [`CodecError::UnexpectedEof`] if the body has other framing and is not complete.
    pub fn finish_eof(&mut self) -> Result<(), CodecError> {
        match self {
            BodyDecoder::Eof { done, .. } => {
                *done = true;
                Ok(())
            }
            _ if self.is_done() => Ok(()),
            _ => Err(CodecError::UnexpectedEof),
        }
    }
}

/// Where a [`ChunkedDecoder`] is in the chunked grammar (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends chunk data.
    DataEnd,
    /// After the last chunk: skipping trailer lines until the empty line.
    Trailers,
    /// The body is complete.
    Done,
}

/// Incremental decoder for the chunked transfer coding (what
/// [`BodyDecoder::Chunked`] wraps).
///
/// Chunk extensions are ignored, trailer fields are skipped (bounded by
/// [`MAX_TRAILER_BYTES`]), and the sum of chunk sizes is bounded by the body limit given
/// at construction.
///
/// ```
/// use lambda_tpc::http::{ChunkedDecoder, CodecError, Decoded, Status};
///
/// let mut chunked = ChunkedDecoder::new(1024);
/// let wire = b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n";
/// let Status::Complete(Decoded::Data(data), used) = chunked.decode(wire)? else { unreachable!() };
/// assert_eq!(data, b"abc");
/// // The next call consumes the end of the chunk, the last chunk and the trailers.
/// assert_eq!(chunked.decode(&wire[used..])?, Status::Complete(Decoded::Done, wire.len() - used));
/// assert!(chunked.is_done());
///
/// assert_eq!(ChunkedDecoder::new(1024).decode(b"zz\r\n"), Err(CodecError::InvalidChunk));
/// assert_eq!(ChunkedDecoder::new(4).decode(b"5\r\n"), Err(CodecError::BodyTooLarge));
/// # Ok::<(), CodecError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    total: u64,
    limit: u64,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies larger than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            total: 0,
            limit: max_body as u64,
            trailer_bytes: 0,
        }
    }

    /// Whether the terminating empty trailer line has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Bytes of the current chunk's data not decoded yet (0 outside chunk data), within
    /// the limit: how much a reader may ask for in one read.
    ///
    /// ```
    /// use lambda_tpc::http::ChunkedDecoder;
    ///
    /// let mut chunked = ChunkedDecoder::new(1024);
    /// chunked.decode(b"100\r\nabc")?;
    /// assert_eq!(chunked.pending_data(), 0x100 - 3);
    /// # Ok::<(), lambda_tpc::http::CodecError>(())
    /// ```
    pub fn pending_data(&self) -> u64 {
        match self.state {
            ChunkState::Data(n) => n,
            _ => 0,
        }
    }

    /// Decodes the next piece of body from `input`: at most one chunk's data is returned
    /// per call, along with all framing consumed before it.
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidChunk`] for a malformed size line or chunk end,
    /// [`CodecError::BodyTooLarge`] once the chunk sizes pass the limit, and
    /// [`CodecError::TrailersTooLarge`] for oversized or malformed trailers.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Status<Decoded<'a>>, CodecError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(Status::Complete(Decoded::Done, pos)),
                ChunkState::Size => {
                    let Some(line) = find_line(rest, MAX_CHUNK_LINE_BYTES)
                        .map_err(|()| CodecError::InvalidChunk)?
                    else {
                        return Ok(progress(pos));
                    };
                    let size = parse_chunk_size(&rest[..line])?;
                    pos += line + 2;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        self.total = self
                            .total
                            .checked_add(size)
                            .filter(|&t| t <= self.limit)
                            .ok_or(CodecError::BodyTooLarge)?;
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(progress(pos));
                    }
                    let n = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Status::Complete(Decoded::Data(&rest[..n]), pos + n));
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(progress(pos)),
                    _ => return Err(CodecError::InvalidChunk),
                },
                ChunkState::Trailers => {
                    let budget = MAX_TRAILER_BYTES - self.trailer_bytes;
                    let Some(line) =
                        find_line(rest, budget).map_err(|()| CodecError::TrailersTooLarge)?
                    else {
                        return Ok(progress(pos));
                    };
                    pos += line + 2;
                    self.trailer_bytes += line + 2;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(CodecError::TrailersTooLarge);
                    }
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// `Complete(Data(&[]), pos)` if framing was consumed, otherwise `Partial`.
fn progress<'a>(pos: usize) -> Status<Decoded<'a>> {
    if pos == 0 {
        Status::Partial
    } else {
        Status::Complete(Decoded::Data(&[]), pos)
    }
}

/// Finds the CRLF ending the line at the start of `input`, returning the line length
/// (without CRLF). `Ok(None)` if more input is needed; `Err` if the line would exceed
/// `max` bytes (CRLF included) or contains a bare CR or LF.
fn find_line(input: &[u8], max: usize) -> Result<Option<usize>, ()> {
    let window = &input[..input.len().min(max)];
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\n' => return Err(()),
            b'\r' => {
                return match window.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(()),
                    // A CR as the last byte of the window: complete only if more input
                    // may still fit in the budget.
                    None if input.len() < max => Ok(None),
                    None => Err(()),
                };
            }
            _ => {}
        }
    }
    if input.len() >= max {
        Err(())
    } else {
        Ok(None)
    }
}

/// Parses `chunk-size [ BWS ; chunk-ext ]` (without the CRLF).
fn parse_chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let size_part = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    // Whitespace is allowed only *after* the digits (BWS before `;` or the line end).
    let size_part = trim_ows(size_part);
    if size_part.is_empty() || matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(CodecError::InvalidChunk);
    }
    // Leading zeros are no overflow; more than 16 significant hex digits are.
    let size_part = strip_leading_zeros(size_part);
    if size_part.len() > 16 {
        return Err(CodecError::InvalidChunk);
    }
    let mut n: u64 = 0;
    for &b in size_part {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(CodecError::InvalidChunk),
        };
        n = (n << 4) | u64::from(digit);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a fresh decoder in pieces of at most `step` bytes (the decoder
    /// sees everything not yet consumed plus the next piece, as a connection buffer
    /// would), collecting the body. Returns the body and the bytes consumed.
    fn run(
        framing: Framing,
        limit: usize,
        input: &[u8],
        splits: &[usize],
    ) -> Result<(Vec<u8>, usize), CodecError> {
        let mut dec = BodyDecoder::new(framing, limit);
        let mut body = Vec::new();
        let mut consumed = 0;
        let mut avail = 0;
        let mut splits = splits.iter().copied().chain(std::iter::once(input.len()));
        loop {
            match dec.decode(&input[consumed..avail])? {
                Status::Complete(Decoded::Done, n) => return Ok((body, consumed + n)),
                Status::Complete(Decoded::Data(d), n) => {
                    assert!(n > 0, "no progress");
                    body.extend_from_slice(d);
                    consumed += n;
                }
                Status::Partial => match splits.next() {
                    Some(next) if next > avail => avail = next.min(input.len()),
                    Some(_) => continue,
                    None => {
                        dec.finish_eof()?;
                        return Ok((body, consumed));
                    }
                },
            }
        }
    }

    type Expected = Result<(&'static [u8], usize), CodecError>;

    /// Expected `consumed`: the whole input.
    const ALL: usize = usize::MAX;

    fn expect(e: Expected, input: &[u8]) -> Result<(Vec<u8>, usize), CodecError> {
        e.map(|(b, n)| (b.to_vec(), if n == ALL { input.len() } else { n }))
    }

    fn chunked_cases() -> Vec<(&'static str, &'static [u8], Expected)> {
        vec![
            ("one chunk", b"5\r\nhello\r\n0\r\n\r\n", Ok((b"hello", ALL))),
            (
                "two chunks",
                b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
                Ok((b"hello", ALL)),
            ),
            ("empty body", b"0\r\n\r\n", Ok((b"", ALL))),
            (
                "hex upper",
                b"A\r\n0123456789\r\n0\r\n\r\n",
                Ok((b"0123456789", ALL)),
            ),
            (
                "hex lower",
                b"a\r\n0123456789\r\n0\r\n\r\n",
                Ok((b"0123456789", ALL)),
            ),
            (
                "extensions ignored",
                b"5;name=value;x\r\nhello\r\n0;last\r\n\r\n",
                Ok((b"hello", ALL)),
            ),
            (
                "bws before extension",
                b"5 ;x\r\nhello\r\n0\r\n\r\n",
                Ok((b"hello", ALL)),
            ),
            (
                "trailers skipped",
                b"5\r\nhello\r\n0\r\nX-Trailer: a\r\nX-Other: b\r\n\r\n",
                Ok((b"hello", ALL)),
            ),
            (
                "trailing bytes of the next message untouched",
                b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK",
                Ok((b"a", 11)),
            ),
            (
                "missing size",
                b"\r\nhello\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "non-hex size",
                b"5x\r\nhello\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "negative size",
                b"-5\r\nhello\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "leading space",
                b" 5\r\nhello\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "bare lf in size line",
                b"5\nhello\r\n0\r\n\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "data longer than size",
                b"3\r\nhello\r\n0\r\n\r\n",
                Err(CodecError::InvalidChunk),
            ),
            (
                "size overflow",
                b"11111111111111111\r\n",
                Err(CodecError::InvalidChunk),
            ),
            // From a review: zero padding was refused by digit count, not value.
            (
                "leading zeros are no overflow",
                b"00000000000000005\r\nhello\r\n000000000000000000\r\n\r\n",
                Ok((b"hello", ALL)),
            ),
            (
                "sum over limit",
                b"8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n",
                Err(CodecError::BodyTooLarge),
            ),
            (
                "huge single chunk",
                b"ffffffffffffffff\r\n",
                Err(CodecError::BodyTooLarge),
            ),
            (
                "bare lf in trailer",
                b"0\r\nX: a\nY: b\r\n\r\n",
                Err(CodecError::TrailersTooLarge),
            ),
            ("truncated", b"5\r\nhel", Err(CodecError::UnexpectedEof)),
            (
                "truncated trailers",
                b"0\r\nX: a\r\n",
                Err(CodecError::UnexpectedEof),
            ),
        ]
    }

    const LIMIT: usize = 12;

    #[test]
    fn chunked_table_whole_input() {
        for (name, input, expected) in chunked_cases() {
            let got = run(Framing::Chunked, LIMIT, input, &[]);
            let expected = expect(expected, input);
            assert_eq!(got, expected, "case {name}");
        }
    }

    /// Splitting the input at any single byte boundary, or delivering it one byte at a
    /// time, gives exactly the result of delivering it whole.
    #[test]
    fn chunked_table_every_split() {
        for (name, input, expected) in chunked_cases() {
            let expected = expect(expected, input);
            for cut in 0..input.len() {
                let got = run(Framing::Chunked, LIMIT, input, &[cut]);
                assert_eq!(got, expected, "case {name}, split at {cut}");
            }
            let bytewise: Vec<usize> = (1..input.len()).collect();
            let got = run(Framing::Chunked, LIMIT, input, &bytewise);
            assert_eq!(got, expected, "case {name}, byte by byte");
        }
    }

    #[test]
    fn length_and_eof() {
        let cases: Vec<(&str, Framing, &[u8], Expected)> = vec![
            (
                "length exact",
                Framing::Length(5),
                b"hello",
                Ok((b"hello", 5)),
            ),
            (
                "length with more after",
                Framing::Length(2),
                b"hello",
                Ok((b"he", 2)),
            ),
            ("length zero", Framing::Length(0), b"hello", Ok((b"", 0))),
            (
                "length truncated",
                Framing::Length(9),
                b"hello",
                Err(CodecError::UnexpectedEof),
            ),
            ("eof", Framing::CloseDelimited, b"hello", Ok((b"hello", 5))),
            ("eof empty", Framing::CloseDelimited, b"", Ok((b"", 0))),
            (
                "eof over limit",
                Framing::CloseDelimited,
                b"0123456789abcdef",
                Err(CodecError::BodyTooLarge),
            ),
        ];
        for (name, framing, input, expected) in cases {
            let expected = expect(expected, input);
            for cut in 0..=input.len() {
                let got = run(framing, LIMIT, input, &[cut]);
                assert_eq!(got, expected, "case {name}, split at {cut}");
            }
        }
    }

    #[test]
    fn trailer_budget() {
        let mut input = b"0\r\nX: ".to_vec();
        input.resize(MAX_TRAILER_BYTES + 8, b'a');
        input.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            run(Framing::Chunked, LIMIT, &input, &[]),
            Err(CodecError::TrailersTooLarge)
        );
    }

    #[test]
    fn long_extension_refused() {
        let mut input = b"1;".to_vec();
        input.resize(MAX_CHUNK_LINE_BYTES + 8, b'x');
        assert_eq!(
            run(Framing::Chunked, LIMIT, &input, &[]),
            Err(CodecError::InvalidChunk)
        );
    }
}
