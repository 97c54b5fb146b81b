//! Fuzzing entry points: one function per parser, each taking arbitrary bytes.
//!
//! Hidden from the docs; not part of the public API. Each function runs its parser on the
//! input, *asserts* the parser's invariants (a failed assertion is a finding), and
//! returns. They are called by the cargo-fuzz targets under `fuzz/` and by the
//! `fuzz_corpus` integration test, which replays the checked-in seed corpus so that CI
//! covers it without cargo-fuzz.
//!
//! Common invariants: nothing panics; `Status::Complete(_, consumed)` has
//! `consumed <= input.len()`; decoding an input delivered in pieces (split points and read
//! sizes derived from the input itself, so a run is reproducible) gives exactly the
//! result of decoding it whole; a refusal is permanent (more input never turns an error
//! into success). Each function documents what it checks on top of that.

use std::borrow::Cow;

use crate::api::{
    CONTENT_TYPE_HTTP_INTEGRATION, CONTENT_TYPE_OCTET_STREAM, Context, ContextError, Diagnostic,
    PATH_ERROR_SUFFIX, PATH_INIT_ERROR, PATH_INVOCATION_PREFIX, PATH_NEXT, PATH_RESPONSE_SUFFIX,
    RuntimeApi, encode_error, encode_init_error, encode_next, encode_response,
    encode_streaming_response_head, header, is_safe_request_id,
};
use crate::config::{Cores, UringFlags};
use crate::http::{
    BodyDecoder, ChunkedDecoder, CodecError, DEFAULT_MAX_BODY_BYTES, Decoded, Framing,
    MAX_CHUNK_LINE_BYTES, MAX_HEAD_BYTES, MAX_HEADERS, MAX_TRAILER_BYTES, Method, RequestWriter,
    Status, encode_chunk, encode_last_chunk, parse_response_head,
};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every entry point, by name. The name is the cargo-fuzz target (`fuzz/fuzz_targets/<name>.rs`)
/// and the seed corpus directory (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("response", response),
    ("body", body),
    ("chunked", chunked),
    ("context", context),
    ("runtime_api", runtime_api),
    ("cores", cores),
    ("uring_flags", uring_flags),
    ("request", request),
    ("next_reply", next_reply),
];

// ---------------------------------------------------------------------------------------
// Deterministic randomness and delivery schedules derived from the input.

/// A small PRNG seeded from a hash of the input, for split points and read sizes.
struct Rng(u64);

impl Rng {
    fn from_data(data: &[u8]) -> Rng {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng(h | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Ways to deliver `len` bytes: each is the increasing list of points at which the
/// delivered length grows (the whole input is delivered after the last one).
fn schedules(len: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(), vec![rng.below(len + 1)]];
    // Random read sizes, 1 to 17 bytes or a quarter of the input.
    let max_read = (len / 4).clamp(1, 17);
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        at += 1 + rng.below(max_read);
        if at >= len {
            break;
        }
        cuts.push(at);
    }
    out.push(cuts);
    if len <= 1024 {
        out.push((1..len).collect());
    }
    out
}

/// Whether `inner` lies within `outer` (empty slices anywhere count as inside).
fn within(inner: &[u8], outer: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

/// Strips optional whitespace (SP / HTAB) from both ends, as a parser does to field
/// values.
fn trim_ows(s: &[u8]) -> &[u8] {
    crate::http::trim_ows(s)
}

// ---------------------------------------------------------------------------------------
// Body decoding driver.

/// Decoded body and bytes consumed, or the error.
type BodyResult = Result<(Vec<u8>, usize), CodecError>;

/// Feeds `input` to a fresh [`BodyDecoder`] as a connection would (the decoder sees the
/// unconsumed bytes delivered so far; when it needs more and everything has been
/// delivered, the peer "closes"), asserting the step invariants.
fn decode_body(framing: Framing, limit: usize, input: &[u8], cuts: &[usize]) -> BodyResult {
    let mut dec = BodyDecoder::new(framing, limit);
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut points = cuts
        .iter()
        .copied()
        .filter(|&c| c < input.len())
        .chain(std::iter::once(input.len()));
    let mut avail = points.next().unwrap_or(input.len());
    loop {
        let slice = &input[consumed..avail];
        match dec.decode(slice)? {
            Status::Complete(Decoded::Done, n) => {
                assert!(n <= slice.len(), "Done consumed {n} of {}", slice.len());
                assert!(dec.is_done(), "Done but not is_done");
                assert_eq!(
                    dec.decode(&slice[n..]),
                    Ok(Status::Complete(Decoded::Done, 0)),
                    "a finished decoder stays finished"
                );
                assert_eq!(dec.finish_eof(), Ok(()), "eof after Done is fine");
                return Ok((body, consumed + n));
            }
            Status::Complete(Decoded::Data(d), n) => {
                assert!(n > 0, "Data step without progress");
                assert!(n <= slice.len(), "Data consumed {n} of {}", slice.len());
                assert!(
                    within(d, &slice[n - d.len()..n]),
                    "data is not the tail of the consumed bytes"
                );
                body.extend_from_slice(d);
                consumed += n;
            }
            Status::Partial => {
                assert!(!dec.is_done(), "Partial but is_done");
                if !matches!(framing, Framing::Chunked) {
                    assert!(slice.is_empty(), "length/eof decoder Partial on data");
                }
                if avail == input.len() {
                    dec.finish_eof()?;
                    assert!(dec.is_done(), "finish_eof succeeded but not is_done");
                    return Ok((body, consumed));
                }
                match points.find(|&p| p > avail) {
                    Some(p) => avail = p,
                    None => avail = input.len(),
                }
            }
        }
        if !matches!(framing, Framing::Length(_)) {
            assert!(body.len() <= limit, "body over the limit");
        }
    }
}

/// Decodes `input` under every schedule, asserts they agree, and returns the result.
fn decode_body_all_ways(framing: Framing, limit: usize, input: &[u8], rng: &mut Rng) -> BodyResult {
    let whole = decode_body(framing, limit, input, &[]);
    if let Ok((body, consumed)) = &whole {
        assert!(*consumed <= input.len());
        if let Framing::Length(n) = framing {
            assert_eq!(body.len() as u64, n, "length body size");
        }
    }
    for cuts in schedules(input.len(), rng) {
        let got = decode_body(framing, limit, input, &cuts);
        assert_eq!(
            got, whole,
            "{framing:?} decoded in pieces at {cuts:?} differs"
        );
    }
    whole
}

// ---------------------------------------------------------------------------------------
// A whole-input chunked decoder, written from RFC 9112 §7.1 and the documented limits
// without the incremental state machine: the oracle for `ChunkedDecoder`.

enum RefLine {
    /// The input ends before the line does.
    Incomplete,
    /// A bare CR or LF, or longer than allowed.
    Bad,
}

/// Length of the line at the start of `input`, which must end in CRLF within `max` bytes.
fn ref_line(input: &[u8], max: usize) -> Result<usize, RefLine> {
    match input.iter().position(|&b| b == b'\r' || b == b'\n') {
        None if input.len() >= max => Err(RefLine::Bad),
        None => Err(RefLine::Incomplete),
        Some(i) if input[i] == b'\n' || i + 2 > max => Err(RefLine::Bad),
        Some(i) => match input.get(i + 1) {
            None => Err(RefLine::Incomplete),
            Some(b'\n') => Ok(i),
            Some(_) => Err(RefLine::Bad),
        },
    }
}

fn reference_chunked(input: &[u8], limit: u64) -> BodyResult {
    let line_err = |bad: CodecError| {
        move |e: RefLine| match e {
            RefLine::Incomplete => CodecError::UnexpectedEof,
            RefLine::Bad => bad,
        }
    };
    let mut pos = 0;
    let mut body = Vec::new();
    let mut total: u64 = 0;
    loop {
        let len = ref_line(&input[pos..], MAX_CHUNK_LINE_BYTES)
            .map_err(line_err(CodecError::InvalidChunk))?;
        let line = &input[pos..pos + len];
        pos += len + 2;
        // chunk-size, then BWS, then optional `;` extensions (not interpreted).
        let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
        let digits_end = size_part
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let digits = &size_part[..digits_end];
        // At most 16 hex digits once zero padding is set aside (a u64).
        let significant = digits.iter().skip_while(|&&b| b == b'0').count();
        if digits.is_empty() || significant > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(CodecError::InvalidChunk);
        }
        let text = std::str::from_utf8(digits).map_err(|_| CodecError::InvalidChunk)?;
        let size = u64::from_str_radix(text, 16).map_err(|_| CodecError::InvalidChunk)?;
        if size == 0 {
            break;
        }
        total = total
            .checked_add(size)
            .filter(|&t| t <= limit)
            .ok_or(CodecError::BodyTooLarge)?;
        let rest = &input[pos..];
        let size = usize::try_from(size).map_err(|_| CodecError::UnexpectedEof)?;
        if rest.len() < size {
            return Err(CodecError::UnexpectedEof);
        }
        body.extend_from_slice(&rest[..size]);
        pos += size;
        match &input[pos..] {
            [b'\r', b'\n', ..] => pos += 2,
            [] | [b'\r'] => return Err(CodecError::UnexpectedEof),
            _ => return Err(CodecError::InvalidChunk),
        }
    }
    let mut trailer_bytes = 0;
    loop {
        let len = ref_line(&input[pos..], MAX_TRAILER_BYTES - trailer_bytes)
            .map_err(line_err(CodecError::TrailersTooLarge))?;
        pos += len + 2;
        trailer_bytes += len + 2;
        if len == 0 {
            return Ok((body, pos));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Response heads and whole responses.

/// What a head parse returned, owned, for comparisons.
#[derive(Debug, PartialEq, Eq)]
enum HeadSummary {
    Complete {
        status: u16,
        version: u8,
        framing: Framing,
        keep_alive: bool,
        headers: Vec<(String, Vec<u8>)>,
        consumed: usize,
    },
    Partial,
    Err(CodecError),
}

fn parse_head(buf: &[u8], max_body: usize) -> HeadSummary {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_response_head(buf, &mut headers, max_body) {
        Ok(Status::Complete(h, consumed)) => HeadSummary::Complete {
            status: h.status,
            version: h.version,
            framing: h.framing,
            keep_alive: h.keep_alive,
            headers: h
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
            consumed,
        },
        Ok(Status::Partial) => HeadSummary::Partial,
        Err(e) => HeadSummary::Err(e),
    }
}

/// Checks one head parse of `buf` against the rules it must follow.
fn check_head(buf: &[u8], max_body: usize, rng: &mut Rng) -> HeadSummary {
    let whole = parse_head(buf, max_body);
    match &whole {
        HeadSummary::Complete {
            status,
            version,
            framing,
            keep_alive,
            headers,
            consumed,
        } => {
            let (status, consumed) = (*status, *consumed);
            assert!((100..=999).contains(&status), "status {status} accepted");
            assert!(*version <= 1, "version 1.{version}");
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
            assert!(consumed <= MAX_HEAD_BYTES, "head over MAX_HEAD_BYTES");
            assert_eq!(buf[consumed - 1], b'\n', "head does not end a line");
            assert!(headers.len() <= MAX_HEADERS);
            let named = |name: &'static str| {
                headers
                    .iter()
                    .filter(move |h| h.0.eq_ignore_ascii_case(name))
            };
            let no_body = (100..200).contains(&status) || status == 204 || status == 304;
            match *framing {
                _ if no_body => assert_eq!(*framing, Framing::Length(0), "{status} has a body"),
                Framing::Chunked => {
                    assert!(named("transfer-encoding").count() > 0, "chunked without TE");
                    assert_eq!(named("content-length").count(), 0, "chunked and CL");
                }
                Framing::Length(n) => {
                    assert!(n <= max_body as u64, "length {n} over the limit");
                    let decimal = |v: &[u8]| {
                        let v = trim_ows(v);
                        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                            return None;
                        }
                        std::str::from_utf8(v).ok()?.parse::<u64>().ok()
                    };
                    assert!(
                        named("content-length")
                            .any(|h| h.1.split(|&b| b == b',').any(|v| decimal(v) == Some(n))),
                        "length {n} not from a content-length"
                    );
                }
                Framing::CloseDelimited => {
                    assert_eq!(
                        named("content-length").count(),
                        0,
                        "close-delimited with CL"
                    );
                    assert!(!keep_alive, "close-delimited but keep-alive");
                }
            }
            // Every strict prefix of a complete head is incomplete, and the head alone
            // parses the same.
            let cut = rng.below(consumed);
            assert_eq!(
                parse_head(&buf[..cut], max_body),
                HeadSummary::Partial,
                "cut {cut}"
            );
            assert_eq!(parse_head(&buf[..consumed], max_body), whole, "head alone");
            // A smaller body limit refuses exactly the longer Content-Lengths.
            let small = parse_head(buf, 16);
            match *framing {
                Framing::Length(n) if n > 16 && !no_body => {
                    assert_eq!(small, HeadSummary::Err(CodecError::BodyTooLarge));
                }
                _ => assert_eq!(small, whole, "limit 16 changed an in-limit head"),
            }
        }
        HeadSummary::Partial => {
            assert!(buf.len() <= MAX_HEAD_BYTES, "partial beyond MAX_HEAD_BYTES");
        }
        HeadSummary::Err(_) => {}
    }
    // A prefix is a valid prefix of this outcome: incomplete, or already the same.
    if !buf.is_empty() {
        let cut = rng.below(buf.len());
        let prefix = parse_head(&buf[..cut], max_body);
        if prefix != HeadSummary::Partial {
            assert_eq!(prefix, whole, "prefix of {cut} bytes decided differently");
        }
    }
    whole
}

/// A whole response exchange as the runtime reads it: heads (1xx interim heads skipped),
/// then the body with the final head's framing, delivered whole and in pieces.
///
/// Checks: an accepted head has a status in 100..=999, HTTP/1.0 or 1.1, ends a line
/// within [`MAX_HEAD_BYTES`], and a framing that follows from its headers (no body for
/// 1xx/204/304; chunked only with a `Transfer-Encoding` and no `Content-Length`; a length
/// only from a `Content-Length` and within the limit; close-delimited never keep-alive);
/// every prefix of a complete head is `Partial`; errors are permanent; a smaller body
/// limit refuses exactly the longer lengths; the body decodes the same however it is
/// split.
pub fn response(data: &[u8]) {
    let mut rng = Rng::from_data(data);
    let mut rest = data;
    // Each round consumes at least one byte, so this ends.
    loop {
        let HeadSummary::Complete {
            status,
            framing,
            consumed,
            ..
        } = check_head(rest, DEFAULT_MAX_BODY_BYTES, &mut rng)
        else {
            return;
        };
        rest = &rest[consumed..];
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let _ = decode_body_all_ways(framing, DEFAULT_MAX_BODY_BYTES, rest, &mut rng);
        return;
    }
}

/// A body decoder of any framing. The first byte picks the framing (length, close,
/// chunked twice as often) and the body limit; for a length the next two bytes are the
/// length. Checks the step invariants (progress, data is input, a finished decoder stays
/// finished, the limit), split-invariance, and the result against a model: a length body
/// is the first `n` bytes, a close-delimited body is everything, a chunked body matches
/// the reference decoder.
pub fn body(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let limit = [0, 1, 16, 1000, DEFAULT_MAX_BODY_BYTES][usize::from(selector >> 2) % 5];
    let (framing, input) = match selector & 3 {
        0 => {
            let (n, input) = match rest {
                [a, b, input @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), input),
                _ => (0, &[][..]),
            };
            (Framing::Length(n), input)
        }
        1 => (Framing::CloseDelimited, rest),
        _ => (Framing::Chunked, rest),
    };
    let mut rng = Rng::from_data(data);
    let got = decode_body_all_ways(framing, limit, input, &mut rng);
    let expected = match framing {
        Framing::Length(n) => {
            let n = n as usize;
            if input.len() >= n {
                Ok((input[..n].to_vec(), n))
            } else {
                Err(CodecError::UnexpectedEof)
            }
        }
        Framing::CloseDelimited => {
            if input.len() <= limit {
                Ok((input.to_vec(), input.len()))
            } else {
                Err(CodecError::BodyTooLarge)
            }
        }
        Framing::Chunked => reference_chunked(input, limit as u64),
    };
    assert_eq!(got, expected, "{framing:?} limit {limit}: decoder vs model");
}

/// The chunked decoder on raw input (default limit). Checks the [`body`] invariants and
/// the reference decoder, plus: bytes after the end of the body are never looked at (the
/// body alone, or followed by other bytes, decodes the same); a limit of 16 refuses
/// exactly the bodies over 16 bytes.
pub fn chunked(data: &[u8]) {
    let mut rng = Rng::from_data(data);
    let got = decode_body_all_ways(Framing::Chunked, DEFAULT_MAX_BODY_BYTES, data, &mut rng);
    assert_eq!(
        got,
        reference_chunked(data, DEFAULT_MAX_BODY_BYTES as u64),
        "chunked decoder vs reference"
    );
    if let Ok((body, consumed)) = &got {
        let alone = decode_body(
            Framing::Chunked,
            DEFAULT_MAX_BODY_BYTES,
            &data[..*consumed],
            &[],
        );
        assert_eq!(alone.as_ref(), Ok(&(body.clone(), *consumed)), "body alone");
        let mut more = data.to_vec();
        more.extend_from_slice(b"5\r\nextra\r\n");
        let followed = decode_body(Framing::Chunked, DEFAULT_MAX_BODY_BYTES, &more, &[]);
        assert_eq!(
            followed.as_ref(),
            Ok(&(body.clone(), *consumed)),
            "body followed"
        );
    }
    // ChunkedDecoder used directly behaves as through BodyDecoder.
    let mut direct = ChunkedDecoder::new(16);
    let mut small = BodyDecoder::new(Framing::Chunked, 16);
    assert_eq!(direct.decode(data), small.decode(data));
    let small = decode_body(Framing::Chunked, 16, data, &[]);
    match &got {
        Ok((body, _)) if body.len() > 16 => assert_eq!(small, Err(CodecError::BodyTooLarge)),
        Ok(_) => assert_eq!(small, got, "limit 16 changed a small body"),
        Err(_) => assert!(small == got || small == Err(CodecError::BodyTooLarge)),
    }
}

// ---------------------------------------------------------------------------------------
// Context.

/// `Context::from_headers` on header fields made from the input: a response head parsed
/// by httparse if the input is one, otherwise `name:value` lines (names need not be
/// tokens, values may hold any byte).
///
/// Checks the outcome against a model of the rules: the first occurrence of each header
/// wins; a missing or unsafe request id, a missing or non-decimal deadline, or a kept
/// value that is not UTF-8 (but for the trace id, which is then dropped) is the matching
/// [`ContextError`] (in that order), carrying the
/// request id only when it is safe and the invocation id only when it is echo-able; a
/// built context returns exactly the header values (a deadline too small to be epoch
/// milliseconds counts from now), and its request id passes [`is_safe_request_id`].
pub fn context(data: &[u8]) {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let owned: Vec<(String, Vec<u8>)>;
    let headers: Vec<httparse::Header<'_>> = match response.parse(data) {
        Ok(httparse::Status::Complete(_)) => response.headers.to_vec(),
        _ => {
            owned = data
                .split(|&b| b == b'\n')
                .filter_map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let colon = line.iter().position(|&b| b == b':')?;
                    let value = &line[colon + 1..];
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    Some((
                        String::from_utf8_lossy(&line[..colon]).into_owned(),
                        value.to_vec(),
                    ))
                })
                .collect();
            owned
                .iter()
                .map(|(name, value)| httparse::Header { name, value })
                .collect()
        }
    };
    check_context(&headers);
}

fn check_context(headers: &[httparse::Header<'_>]) {
    let first = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let header_text = |v: &[u8]| {
        v.iter()
            .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
    };
    let expected_invocation = first(header::INVOCATION_ID)
        .filter(|v| !v.is_empty() && header_text(v))
        .and_then(|v| std::str::from_utf8(v).ok());
    let id = first(header::REQUEST_ID);
    let deadline = first(header::DEADLINE_MS).map(|v| {
        let v = trim_ows(v);
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(v).ok()?.parse::<u64>().ok()
    });
    let optional = [
        header::FUNCTION_ARN,
        header::TRACE_ID,
        header::CLIENT_CONTEXT,
        header::COGNITO_IDENTITY,
        header::TENANT_ID,
        header::INVOCATION_ID,
    ]
    .map(first);
    let expected_error = match (id, deadline) {
        (None, _) => Some(ContextError::MissingRequestId),
        (Some(id), _) if !is_safe_request_id(id) => Some(ContextError::UnsafeRequestId),
        (_, None) => Some(ContextError::MissingDeadline),
        (_, Some(None)) => Some(ContextError::InvalidDeadline),
        // The trace id (index 1) is dropped when it is not UTF-8, not refused.
        _ if optional
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 1)
            .filter_map(|(_, v)| *v)
            .any(|v| std::str::from_utf8(v).is_err()) =>
        {
            Some(ContextError::NonUtf8Header)
        }
        _ => None,
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let before = now_ms();
    let built = Context::from_headers(headers);
    let after = now_ms();
    match built {
        Ok(ctx) => {
            assert_eq!(expected_error, None, "context built from invalid headers");
            assert!(
                is_safe_request_id(ctx.request_id().as_bytes()),
                "unsafe id built"
            );
            assert_eq!(Some(ctx.request_id().as_bytes()), id);
            match deadline {
                // A value that cannot be an epoch deadline (before 2001) is a timeout
                // relative to now (local emulators send the function timeout).
                Some(Some(ms)) if ms < 1_000_000_000_000 => {
                    let d = ctx.deadline_ms();
                    assert!(
                        before.saturating_add(ms) <= d && d <= after.saturating_add(ms),
                        "relative deadline {ms} became {d}"
                    );
                }
                _ => assert_eq!(Some(Some(ctx.deadline_ms())), deadline),
            }
            fn text(v: Option<&[u8]>) -> Option<&str> {
                v.and_then(|v| std::str::from_utf8(v).ok())
            }
            fn non_empty(v: Option<&[u8]>) -> Option<&str> {
                text(v).filter(|s| !s.is_empty())
            }
            assert_eq!(ctx.invoked_function_arn(), text(optional[0]).unwrap_or(""));
            assert_eq!(ctx.xray_trace_id(), non_empty(optional[1]));
            assert_eq!(ctx.client_context_raw(), non_empty(optional[2]));
            assert_eq!(ctx.identity_raw(), non_empty(optional[3]));
            assert_eq!(ctx.tenant_id(), non_empty(optional[4]));
            assert_eq!(ctx.invocation_id(), expected_invocation);
            // The remaining accessors must not panic on anything a header can hold.
            let _ = ctx.client_context();
            let _ = ctx.identity();
            let _ = (ctx.deadline(), ctx.remaining());
            let _ = format!("{:?}", ctx.clone());
        }
        Err(invalid) => {
            assert_eq!(Some(invalid.error), expected_error, "wrong context error");
            let expected_id = match invalid.error {
                ContextError::MissingRequestId | ContextError::UnsafeRequestId => None,
                _ => id.and_then(|v| std::str::from_utf8(v).ok()),
            };
            assert_eq!(
                invalid.request_id.as_deref(),
                expected_id,
                "reported request id"
            );
            if let Some(id) = &invalid.request_id {
                assert!(is_safe_request_id(id.as_bytes()), "unsafe id reported");
            }
            assert_eq!(invalid.invocation_id.as_deref(), expected_invocation);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration values.

/// `RuntimeApi::parse` on the input (lossy UTF-8). Checks that an accepted endpoint has a
/// non-empty authority and a prefix that is empty or `/...` without a trailing `/`,
/// neither holding bytes a request line cannot carry; that it re-parses to itself from
/// `http://{authority}{prefix}`; and that `/next` encoded for it is one request httparse
/// reads back with that target and `Host`.
pub fn runtime_api(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let Ok(api) = RuntimeApi::parse(&input) else {
        return;
    };
    let (authority, prefix) = (api.authority(), api.prefix());
    assert!(!authority.is_empty(), "empty authority");
    assert!(
        prefix.is_empty() || (prefix.starts_with('/') && !prefix.ends_with('/')),
        "prefix {prefix:?}"
    );
    let visible = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    assert!(
        visible(authority) && visible(prefix),
        "{authority:?} {prefix:?}"
    );
    assert!(!prefix.contains(['?', '#', '%']), "prefix {prefix:?}");
    let again = RuntimeApi::parse(&format!("http://{authority}{prefix}"));
    assert_eq!(again.as_ref(), Ok(&api), "re-parse");
    let mut buf = Vec::new();
    if encode_next(&mut buf, &api).is_err() {
        panic!("encode_next refused a parsed endpoint {api:?}");
    }
    let (req, n) = parse_request(&buf);
    assert_eq!(n, buf.len(), "one request");
    assert_eq!(req.path, format!("{prefix}{PATH_NEXT}"));
    assert_eq!(req.header("host"), Some(authority.as_bytes()));
}

/// `Cores::parse` on the input (lossy UTF-8). Checks that `all` is recognised in any
/// case, that a list is sorted, deduplicated, non-empty and below 4096, that it re-parses
/// to itself when written back as a comma list, and that case never matters.
pub fn cores(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let got = Cores::parse(&input);
    match &got {
        Ok(Cores::All) => assert!(input.trim().eq_ignore_ascii_case("all")),
        Ok(Cores::List(list)) => {
            assert!(!list.is_empty(), "empty list accepted");
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "not sorted/deduplicated"
            );
            assert!(list.iter().all(|&c| c < 4096), "cpu id out of range");
            let written = list
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            assert_eq!(
                Cores::parse(&written).as_ref(),
                Ok(&Cores::List(list.clone()))
            );
        }
        Ok(other) => panic!("parse produced {other:?}"),
        Err(_) => {}
    }
    let upper = Cores::parse(&input.to_ascii_uppercase());
    assert_eq!(upper.is_ok(), got.is_ok(), "case changed the outcome");
    if got.is_ok() {
        assert_eq!(upper, got);
    }
}

/// `UringFlags::parse` on the input (lossy UTF-8). Checks that an accepted set re-parses
/// to itself when written back as a comma list of names (or `none`), that case never
/// matters, and that an error names what it refused.
pub fn uring_flags(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let got = UringFlags::parse(&input);
    match &got {
        Ok(flags) => {
            let names: Vec<&str> = [
                (flags.coop_taskrun, "coop_taskrun"),
                (flags.taskrun_flag, "taskrun_flag"),
                (flags.single_issuer, "single_issuer"),
                (flags.defer_taskrun, "defer_taskrun"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
            let written = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(",")
            };
            assert_eq!(
                UringFlags::parse(&written).as_ref(),
                Ok(flags),
                "{written:?}"
            );
        }
        Err(message) => assert!(
            message.contains("unknown io_uring flag")
                || message.starts_with("defer_taskrun needs single_issuer"),
            "{message}"
        ),
    }
    let upper = UringFlags::parse(&input.to_ascii_uppercase());
    assert_eq!(upper.is_ok(), got.is_ok(), "case changed the outcome");
    if got.is_ok() {
        assert_eq!(upper, got);
    }
}

// ---------------------------------------------------------------------------------------
// Request encoding round trip.

/// Reads fields from fuzz input: a byte, or a length byte followed by that many bytes.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte()).min(self.0.len());
        let (field, rest) = self.0.split_at(n);
        self.0 = rest;
        field
    }

    fn text(&mut self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.bytes())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request read back by httparse, owned.
struct ParsedRequest {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl ParsedRequest {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses one complete request head at the start of `buf` with httparse, panicking if it
/// is not one.
fn parse_request(buf: &[u8]) -> (ParsedRequest, usize) {
    let mut storage = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut storage);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "httparse refused our request ({other:?}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    assert_eq!(req.version, Some(1), "not HTTP/1.1");
    let parsed = ParsedRequest {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
    };
    (parsed, n)
}

/// Reads a chunked body with httparse's chunk-size parser and header parser (for the
/// trailers); returns the body, the trailers and the bytes used.
type ChunkedRead = (Vec<u8>, Vec<(String, Vec<u8>)>, usize);

fn read_chunked_with_httparse(buf: &[u8]) -> ChunkedRead {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let (n, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(v)) => v,
            other => panic!("httparse refused our chunk size: {other:?}"),
        };
        pos += n;
        if size == 0 {
            break;
        }
        let size = size as usize;
        assert!(buf.len() >= pos + size + 2, "chunk data cut short");
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        assert_eq!(
            &buf[pos..pos + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        pos += 2;
    }
    let mut storage = [httparse::EMPTY_HEADER; 16];
    let (n, trailers) = match httparse::parse_headers(&buf[pos..], &mut storage) {
        Ok(httparse::Status::Complete((n, t))) => (
            n,
            t.iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        ),
        other => panic!("httparse refused our trailers: {other:?}"),
    };
    (body, trailers, pos + n)
}

fn is_target_ok(part: &[u8]) -> bool {
    part.iter().all(|b| (0x21..0x7f).contains(b))
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value a standard parser accepts: HTAB, SP, visible ASCII, obs-text.
fn is_field_value_ok(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

/// Request encoding round trip. The first byte picks raw [`RequestWriter`] requests or
/// the Runtime API encoders (`/next`, response, streamed response with error trailers,
/// error, init error); the rest are length-prefixed fields (ids, values, bodies).
/// One to three requests are appended to one buffer (pipelining).
///
/// Checks: the encoder refuses exactly the requests with a byte a request line or field
/// cannot carry (and then leaves the buffer as it was); otherwise httparse reads back,
/// back to back, exactly the requests written: same method, target and headers (values
/// compared without surrounding whitespace, which is not part of a field value), the body
/// intact (chunked bodies read with httparse's chunk parser, trailers included, and with
/// our own decoder), and nothing left over.
pub fn request(data: &[u8]) {
    let mut f = Fields(data);
    let api_mode = f.byte() & 1 == 1;
    let count = 1 + usize::from(f.byte() % 3);
    let mut buf = b"previous bytes".to_vec();
    let mut starts = Vec::new();
    let mut expectations = Vec::new();
    for _ in 0..count {
        let start = buf.len();
        let expected = if api_mode {
            encode_api_request(&mut f, &mut buf)
        } else {
            encode_raw_request(&mut f, &mut buf)
        };
        match expected {
            Some(e) => {
                starts.push(start);
                expectations.push(e);
            }
            None => assert_eq!(buf.len(), start, "a refused request left bytes behind"),
        }
        if f.is_empty() {
            break;
        }
    }
    let mut pos = b"previous bytes".len();
    for (start, e) in starts.into_iter().zip(expectations) {
        assert_eq!(pos, start, "requests are not back to back");
        let (req, n) = parse_request(&buf[pos..]);
        assert_eq!(req.method, e.method);
        assert_eq!(req.path.as_bytes(), e.target.as_slice(), "target");
        let got: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let want: Vec<(String, Vec<u8>)> = e
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), trim_ows(v).to_vec()))
            .collect();
        assert_eq!(got, want, "headers");
        pos += n;
        match e.body {
            ExpectedBody::None => {}
            ExpectedBody::Length(body) => {
                let len = req
                    .header("content-length")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                assert_eq!(len, Some(body.len()), "content-length");
                assert_eq!(
                    buf.get(pos..pos + body.len()),
                    Some(body.as_slice()),
                    "body"
                );
                pos += body.len();
            }
            ExpectedBody::Chunked(body, trailers) => {
                let (got_body, got_trailers, n) = read_chunked_with_httparse(&buf[pos..]);
                assert_eq!(got_body, body, "chunked body");
                let want: Vec<(String, Vec<u8>)> = trailers
                    .iter()
                    .map(|(k, v)| (k.clone(), trim_ows(v).to_vec()))
                    .collect();
                assert_eq!(got_trailers, want, "trailers");
                let ours = decode_body(Framing::Chunked, DEFAULT_MAX_BODY_BYTES, &buf[pos..], &[]);
                assert_eq!(ours, Ok((body, n)), "our decoder on our encoder");
                pos += n;
            }
        }
    }
    assert_eq!(pos, buf.len(), "bytes after the last request");
}

enum ExpectedBody {
    None,
    Length(Vec<u8>),
    Chunked(Vec<u8>, Vec<(String, Vec<u8>)>),
}

struct ExpectedRequest {
    method: &'static str,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: ExpectedBody,
}

/// Encodes one request with [`RequestWriter`] from fuzz fields; `None` if (correctly)
/// refused.
fn encode_raw_request(f: &mut Fields<'_>, buf: &mut Vec<u8>) -> Option<ExpectedRequest> {
    let start = buf.len();
    let opts = f.byte();
    let method = if opts & 1 == 0 {
        Method::Get
    } else {
        Method::Post
    };
    let parts: Vec<&[u8]> = (0..usize::from((opts >> 1) & 3))
        .map(|_| f.bytes())
        .collect();
    let host = f.bytes();
    let target = parts.concat();
    let target_ok = !target.is_empty() && is_target_ok(&target) && is_target_ok(host);
    let mut w = match RequestWriter::new(buf, method, &parts, host) {
        Ok(w) => w,
        Err(e) => {
            assert_eq!(e, CodecError::InvalidRequestPart);
            assert!(!target_ok, "refused target {target:?} host {host:?}");
            return None;
        }
    };
    assert!(target_ok, "accepted target {target:?} host {host:?}");
    let mut headers = vec![("Host".to_owned(), host.to_vec())];
    for _ in 0..((opts >> 3) & 3) {
        let name = f.text();
        let value = f.bytes();
        let ok = is_token(&name) && is_field_value_ok(value);
        match w.header(&name, value) {
            Ok(_) => assert!(ok, "accepted header {name:?}: {value:?}"),
            Err(_) => {
                assert!(!ok, "refused header {name:?}: {value:?}");
                assert_eq!(buf.len(), start, "refused header not rolled back");
                return None;
            }
        }
        headers.push((name.into_owned(), value.to_vec()));
    }
    let body = match (opts >> 5) & 3 {
        0 => {
            w.finish(None);
            ExpectedBody::None
        }
        1 | 2 => {
            let body = f.bytes();
            w.finish(Some(body.len()));
            buf.extend_from_slice(body);
            headers.push((
                "Content-Length".to_owned(),
                body.len().to_string().into_bytes(),
            ));
            ExpectedBody::Length(body.to_vec())
        }
        _ => {
            w.finish_chunked();
            headers.push(("Transfer-Encoding".to_owned(), b"chunked".to_vec()));
            let mut body = Vec::new();
            for _ in 0..f.byte() % 4 {
                let chunk = f.bytes();
                encode_chunk(buf, chunk);
                body.extend_from_slice(chunk);
            }
            let n_trailers = f.byte() % 3;
            let trailers: Vec<(Cow<'_, str>, &[u8])> =
                (0..n_trailers).map(|_| (f.text(), f.bytes())).collect();
            let refs: Vec<(&str, &[u8])> = trailers.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            let ok = refs
                .iter()
                .all(|(k, v)| is_token(k) && is_field_value_ok(v));
            let before = buf.len();
            match encode_last_chunk(buf, &refs) {
                Ok(()) => assert!(ok, "accepted trailers {refs:?}"),
                Err(_) => {
                    assert!(!ok, "refused trailers {refs:?}");
                    assert_eq!(buf.len(), before, "refused trailers appended bytes");
                    // The request is unfinished: drop it.
                    buf.truncate(start);
                    return None;
                }
            }
            let trailers = refs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect();
            ExpectedBody::Chunked(body, trailers)
        }
    };
    Some(ExpectedRequest {
        method: if method == Method::Get { "GET" } else { "POST" },
        target,
        headers,
        body,
    })
}

/// Endpoints the Runtime API encoders are exercised with (or one parsed from the input).
const ENDPOINTS: [&str; 4] = [
    "127.0.0.1:9001",
    "http://localhost:9001/prefix/x",
    "[::1]:8080",
    "http://[fe80::1]:1/a.b/_c-d",
];

/// Encodes one Runtime API request from fuzz fields; `None` if (correctly) refused.
fn encode_api_request(f: &mut Fields<'_>, buf: &mut Vec<u8>) -> Option<ExpectedRequest> {
    let start = buf.len();
    let opts = f.byte();
    let endpoint = match opts & 7 {
        i @ 0..4 => Cow::Borrowed(ENDPOINTS[usize::from(i)]),
        _ => f.text(),
    };
    let api = match RuntimeApi::parse(&endpoint) {
        Ok(api) => api,
        Err(_) => RuntimeApi::parse(ENDPOINTS[0]).ok()?,
    };
    let prefix = api.prefix().as_bytes();
    let host = ("Host".to_owned(), api.authority().as_bytes().to_vec());
    let id = f.text();
    let invocation = if opts & 8 != 0 { Some(f.text()) } else { None };
    let inv_ok = invocation
        .as_deref()
        .is_none_or(|v| is_field_value_ok(v.as_bytes()));
    let id_ok = is_safe_request_id(id.as_bytes());
    let invocation_header = invocation
        .as_ref()
        .map(|v| (header::INVOCATION_ID.to_owned(), v.as_bytes().to_vec()));
    let path = |suffix: &str| {
        [
            prefix,
            PATH_INVOCATION_PREFIX.as_bytes(),
            id.as_bytes(),
            suffix.as_bytes(),
        ]
        .concat()
    };
    match ((opts >> 4) & 7) % 5 {
        0 => {
            if encode_next(buf, &api).is_err() {
                panic!("encode_next refused {api:?}");
            }
            Some(ExpectedRequest {
                method: "GET",
                target: [prefix, PATH_NEXT.as_bytes()].concat(),
                headers: vec![host],
                body: ExpectedBody::None,
            })
        }
        1 => {
            let body = f.bytes();
            let slot = match encode_response(buf, &api, &id, invocation.as_deref()) {
                Ok(slot) => slot,
                Err(_) => {
                    assert!(!(id_ok && inv_ok), "refused response {id:?} {invocation:?}");
                    assert_eq!(buf.len(), start, "refused response left bytes");
                    return None;
                }
            };
            assert!(id_ok && inv_ok, "accepted response {id:?} {invocation:?}");
            buf.extend_from_slice(body);
            assert_eq!(slot.body_len(buf), body.len());
            assert_eq!(slot.finish(buf), body.len());
            let mut headers = vec![host];
            headers.extend(invocation_header);
            headers.push((
                "Content-Length".to_owned(),
                body.len().to_string().into_bytes(),
            ));
            Some(ExpectedRequest {
                method: "POST",
                target: path(PATH_RESPONSE_SUFFIX),
                headers,
                body: ExpectedBody::Length(body.to_vec()),
            })
        }
        4 => {
            let content_type = if f.byte() & 1 == 1 {
                CONTENT_TYPE_HTTP_INTEGRATION
            } else {
                CONTENT_TYPE_OCTET_STREAM
            };
            if encode_streaming_response_head(buf, &api, &id, invocation.as_deref(), content_type)
                .is_err()
            {
                assert!(!(id_ok && inv_ok), "refused stream {id:?} {invocation:?}");
                assert_eq!(buf.len(), start, "refused stream head left bytes");
                return None;
            }
            assert!(id_ok && inv_ok, "accepted stream {id:?} {invocation:?}");
            let mut body = Vec::new();
            for _ in 0..f.byte() % 4 {
                let chunk = f.bytes();
                encode_chunk(buf, chunk);
                body.extend_from_slice(chunk);
            }
            let (error_type, error_body) = (f.bytes(), f.bytes());
            let trailers: Vec<(&str, &[u8])> = if f.byte() & 1 == 1 {
                vec![
                    (header::FUNCTION_ERROR_TYPE, error_type),
                    (header::FUNCTION_ERROR_BODY, error_body),
                ]
            } else {
                Vec::new()
            };
            let ok = trailers.iter().all(|(_, v)| is_field_value_ok(v));
            let before = buf.len();
            match encode_last_chunk(buf, &trailers) {
                Ok(()) => assert!(ok, "accepted trailers {trailers:?}"),
                Err(_) => {
                    assert!(!ok, "refused trailers {trailers:?}");
                    assert_eq!(buf.len(), before, "refused trailers appended bytes");
                    buf.truncate(start);
                    return None;
                }
            }
            let mut headers = vec![
                host,
                (header::RESPONSE_MODE.to_owned(), b"streaming".to_vec()),
                (
                    "Trailer".to_owned(),
                    format!(
                        "{}, {}",
                        header::FUNCTION_ERROR_TYPE,
                        header::FUNCTION_ERROR_BODY
                    )
                    .into_bytes(),
                ),
                (
                    header::CONTENT_TYPE.to_owned(),
                    content_type.as_bytes().to_vec(),
                ),
            ];
            headers.extend(invocation_header);
            headers.push(("Transfer-Encoding".to_owned(), b"chunked".to_vec()));
            let trailers = trailers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect();
            Some(ExpectedRequest {
                method: "POST",
                target: path(PATH_RESPONSE_SUFFIX),
                headers,
                body: ExpectedBody::Chunked(body, trailers),
            })
        }
        kind => {
            let error_type = f.text();
            let message = f.text();
            let diagnostic = Diagnostic::new(error_type.as_ref(), message.as_ref());
            let (result, target) = if kind == 2 {
                let r = encode_error(buf, &api, &id, invocation.as_deref(), &diagnostic);
                (r, path(PATH_ERROR_SUFFIX))
            } else {
                let r = encode_init_error(buf, &api, &diagnostic);
                (r, [prefix, PATH_INIT_ERROR.as_bytes()].concat())
            };
            let ok = kind == 3 || (id_ok && inv_ok);
            if result.is_err() {
                assert!(!ok, "refused error post {id:?} {invocation:?}");
                assert_eq!(buf.len(), start, "refused error post left bytes");
                return None;
            }
            assert!(ok, "accepted error post {id:?} {invocation:?}");
            // The body is the last thing written: the Content-Length says how long.
            let (req, n) = parse_request(&buf[start..]);
            let len = req
                .header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            assert_eq!(start + n + len, buf.len(), "error body length");
            let body = buf[start + n..].to_vec();
            let parsed: Diagnostic = match serde_json::from_slice(&body) {
                Ok(d) => d,
                Err(e) => panic!("error body is not a diagnostic: {e}"),
            };
            assert_eq!(parsed.error_type, diagnostic.error_type, "error type");
            assert_eq!(parsed.error_message, diagnostic.error_message, "message");
            let safe_type =
                !error_type.is_empty() && error_type.bytes().all(|b| (0x21..0x7f).contains(&b));
            let type_header = if safe_type {
                error_type.as_bytes().to_vec()
            } else {
                b"Runtime.Unknown".to_vec()
            };
            let mut headers = vec![host, (header::FUNCTION_ERROR_TYPE.to_owned(), type_header)];
            if kind == 2 {
                headers.extend(invocation_header);
            }
            headers.push(("Content-Length".to_owned(), len.to_string().into_bytes()));
            Some(ExpectedRequest {
                method: "POST",
                target,
                headers,
                body: ExpectedBody::Length(body),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The connection: replies read off a stream, as the poll loop reads them.

/// A stream that delivers `data` in pieces (of pseudo-random size up to 4 KiB, or all of
/// one size), then ends: with end of stream, or with a connection reset (`reset`). Every
/// read completes at once, so the connection's futures never wait. The connection's unit
/// tests read off it too.
pub struct Scripted {
    data: Vec<u8>,
    pos: usize,
    pieces: Pieces,
    reset: bool,
    /// The receive low-water mark: a read delivers at least this many bytes (or all that
    /// are left), as the kernel completes one only when that many are queued.
    mark: usize,
    /// Every mark set, in order (the connection's unit tests check them).
    pub marks: Vec<usize>,
    /// For every read made with a mark above 1: how many bytes the reader had buffered
    /// already (the connection's unit tests check that it is none: a raised mark is for a
    /// reply's first bytes only, since the rest of a reply may never make it up).
    pub raised_reads: Vec<usize>,
    /// Reads made with [`Stream::try_read_now`](crate::executor::Stream::try_read_now).
    pub direct_reads: usize,
    /// Whether every write fails (a connection reset), as when the peer replied early and
    /// closed the connection over the unread request.
    fail_writes: bool,
}

/// How [`Scripted`] cuts its data.
enum Pieces {
    Random(Rng),
    Fixed(usize),
}

impl Scripted {
    /// `data` in pieces of `step` bytes (at least 1), then end of stream or a reset.
    pub fn fixed(data: Vec<u8>, step: usize, reset: bool) -> Scripted {
        Scripted {
            data,
            pos: 0,
            pieces: Pieces::Fixed(step.max(1)),
            reset,
            mark: 1,
            marks: Vec::new(),
            raised_reads: Vec::new(),
            direct_reads: 0,
            fail_writes: false,
        }
    }

    /// The same stream, with every write failing with a connection reset.
    pub fn failing_writes(mut self) -> Scripted {
        self.fail_writes = true;
        self
    }

    /// `data` in pieces of pseudo-random sizes drawn from the data itself, then end of
    /// stream.
    fn random(data: &[u8]) -> Scripted {
        Scripted {
            data: data.to_vec(),
            pos: 0,
            pieces: Pieces::Random(Rng::from_data(data)),
            mark: 1,
            marks: Vec::new(),
            raised_reads: Vec::new(),
            direct_reads: 0,
            reset: false,
            fail_writes: false,
        }
    }
}

impl Scripted {
    /// The next piece into `buf`'s spare capacity: what a read would return.
    fn piece(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let spare = buf.capacity() - buf.len();
        let left = self.data.len() - self.pos;
        let piece = match &mut self.pieces {
            Pieces::Random(rng) => 1 + rng.below(4096),
            Pieces::Fixed(step) => *step,
        };
        if self.mark > 1 {
            self.raised_reads.push(buf.len());
        }
        let n = spare.min(left).min(piece.max(self.mark));
        if n == 0 && self.reset {
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        buf.extend_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl crate::executor::Stream for Scripted {
    async fn read(&mut self, mut buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        let res = self.piece(&mut buf);
        (res, buf)
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> Option<std::io::Result<usize>> {
        self.direct_reads += 1;
        Some(self.piece(buf))
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        if self.fail_writes {
            return (Err(std::io::ErrorKind::ConnectionReset.into()), buf);
        }
        (Ok(()), buf)
    }

    fn set_read_low_water(&mut self, bytes: usize) -> std::io::Result<()> {
        self.mark = bytes.max(1);
        self.marks.push(self.mark);
        Ok(())
    }
}

/// Runs a future of the scripted connection, which never waits.
pub fn now<F: std::future::Future>(f: F) -> F::Output {
    match futures_util::FutureExt::now_or_never(f) {
        Some(out) => out,
        None => panic!("a read of the scripted stream waited"),
    }
}

/// The input as the byte stream of a `/next` connection: replies are read one after
/// another exactly as the poll loop reads them (the head without a body limit, so that
/// an oversized event still yields its request id; then, by status and context, the body
/// under the same limits, or skipped), until the stream ends or is refused. Checks that
/// nothing panics, that the read buffer never grows past what the limits allow (an
/// announced `Content-Length` reserves at most its reply's body limit), and that a body read in
/// place lies inside the buffer.
pub fn next_reply(data: &[u8]) {
    use crate::runtime::conn::{Body, Conn, READ_CHUNK};
    /// The event limit the harness runs with (the default is 6 MiB; smaller keeps runs
    /// fast and the same code paths).
    const MAX_EVENT: usize = 64 * 1024;
    let bound = 2 * (MAX_HEAD_BYTES + DEFAULT_MAX_BODY_BYTES + READ_CHUNK);
    let mut conn = Conn::with_stream(Scripted::random(data));
    for _ in 0..16 {
        let Ok((head, ctx)) = now(conn.read_head(usize::MAX, |head| {
            (head.status == 200).then(|| Context::from_headers(head.headers))
        })) else {
            break;
        };
        let limit = match &ctx {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(_) => MAX_EVENT,
        };
        let oversized = matches!(ctx, Some(Ok(_)))
            && head.content_length().is_some_and(|n| n > MAX_EVENT as u64);
        if oversized {
            if now(conn.discard_body(&head)).is_err() {
                break;
            }
        } else {
            let Ok(body) = now(conn.read_body(&head, limit)) else {
                break;
            };
            if let Body::InPlace { data: range, .. } = &body {
                assert!(range.end - range.start <= limit, "body over its limit");
            }
            let _ = conn.body(&body).len();
            conn.finish(&head, &body);
        }
        assert!(
            conn.read_capacity() <= bound,
            "read buffer grew to {} bytes",
            conn.read_capacity()
        );
        if !conn.is_open() {
            break;
        }
    }
    assert!(
        conn.read_capacity() <= bound,
        "read buffer grew to {} bytes",
        conn.read_capacity()
    );
}
