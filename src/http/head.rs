//! Response head parsing: status line and headers via `httparse`, then the framing rules
//! of RFC 9112 §6.3 applied strictly.

use super::{CodecError, MAX_HEAD_BYTES, Status};

/// How the body of a response is delimited: the `framing` of a [`ResponseHead`], and what
/// a [`BodyDecoder`](super::BodyDecoder) is built from.
///
/// ```
/// use lambda_tpc::http::{Framing, MAX_HEADERS, Status, parse_response_head};
///
/// let framing = |head: &[u8]| {
///     let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
///     match parse_response_head(head, &mut headers, 1024) {
///         Ok(Status::Complete(h, _)) => h.framing,
///         other => panic!("{other:?}"),
///     }
/// };
/// assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"), Framing::Length(2));
/// assert_eq!(framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), Framing::Chunked);
/// assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Framing::CloseDelimited);
/// // No body whatever the headers say.
/// assert_eq!(framing(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"), Framing::Length(0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow the head (`Content-Length`, or 0 for 1xx/204/304).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No length: the body runs until the peer closes the connection.
    CloseDelimited,
}

/// A parsed response head, from [`parse_response_head`]. Header names and values borrow
/// the input buffer.
///
/// ```
/// use lambda_tpc::http::{Framing, MAX_HEADERS, Status, parse_response_head};
///
/// let bytes = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: req-1\r\nContent-Length: 2\r\n\r\n{}";
/// let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
/// let Status::Complete(head, len) = parse_response_head(bytes, &mut headers, 1024)? else {
///     unreachable!("the head is complete")
/// };
/// assert_eq!((head.status, head.version, head.keep_alive), (200, 1, true));
/// assert_eq!(head.framing, Framing::Length(2));
/// assert_eq!(head.header("lambda-runtime-aws-request-id"), Some(&b"req-1"[..]));
/// assert_eq!(&bytes[len..], b"{}");
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
#[derive(Debug)]
pub struct ResponseHead<'h, 'b> {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response: HTTP/1.1
    /// without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`, and never
    /// for a close-delimited body.
    pub keep_alive: bool,
    /// The header fields, in order.
    pub headers: &'h [httparse::Header<'b>],
}

impl ResponseHead<'_, '_> {
    /// An interim 1xx response (other than 101): another head follows on the wire and
    /// the caller should skip this one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Parses a response head from the start of `buf`.
///
/// `headers` is scratch space for the parser (normally a stack array of
/// [`super::MAX_HEADERS`] empty headers); `max_body` is the largest `Content-Length`
/// accepted. On success returns the head and the number of bytes it occupies, so the body
/// starts at `buf[consumed..]`; [`Status::Partial`] means the head is not complete yet.
/// An interim 1xx head is returned like any other: skip it
/// ([`ResponseHead::is_interim`]) and parse again after it.
///
/// # Errors
///
/// A [`CodecError`] when the head can never become valid: malformed, longer than
/// [`MAX_HEAD_BYTES`] (checked on partial input too), more than
/// [`MAX_HEADERS`](super::MAX_HEADERS) fields, invalid or conflicting framing, or a
/// `Content-Length` over `max_body`.
///
/// ```
/// use lambda_tpc::http::{CodecError, MAX_HEADERS, Status, parse_response_head};
///
/// let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
/// let big = b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n";
/// assert_eq!(parse_response_head(big, &mut headers, 1024).unwrap_err(), CodecError::BodyTooLarge);
///
/// let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
/// let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n";
/// let Status::Complete(head, len) = parse_response_head(interim, &mut headers, 1024)? else {
///     unreachable!()
/// };
/// assert!(head.is_interim());
/// assert_eq!(&interim[len..], b"HTTP/1.1 202 Accepted\r\n"); // the real head follows
/// # Ok::<(), CodecError>(())
/// ```
pub fn parse_response_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_body: usize,
) -> Result<Status<ResponseHead<'h, 'b>>, CodecError> {
    let mut response = httparse::Response::new(headers);
    let consumed = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(CodecError::HeadTooLarge)
            } else {
                Ok(Status::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooManyHeaders),
        Err(_) => return Err(CodecError::InvalidHead),
    };
    if consumed > MAX_HEAD_BYTES {
        return Err(CodecError::HeadTooLarge);
    }
    // httparse guarantees both are set on Complete; treat absence as malformed rather
    // than trusting that across versions.
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err(CodecError::InvalidHead);
    };
    // httparse takes any three digits; 000-099 are not status codes (RFC 9110 §15), and
    // an 0xx is neither interim nor final, so there is no sane way to frame it.
    if status < 100 {
        return Err(CodecError::InvalidHead);
    }
    let headers: &'h [httparse::Header<'b>] = response.headers;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_transfer_encoding = false;
    // A Transfer-Encoding field at all, even one with no coding in it: it still overrides
    // Content-Length (RFC 9112 §6.3), so an empty one cannot be read past.
    let mut te_field = false;
    let mut close = false;
    let mut keep_alive_token = false;
    // RFC 9112 §6.3 rule 1, which takes precedence over the rules on Content-Length and
    // Transfer-Encoding: a 1xx, 204 or 304 response ends at the blank line whatever its
    // headers say. Its framing headers frame nothing, so they are not read (an invalid one
    // is no error there; hyper ignores them too).
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    for h in headers {
        if no_body
            && (h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding"))
        {
            continue;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                let n = parse_decimal(trim_ows(part))?;
                match content_length {
                    Some(prev) if prev != n => return Err(CodecError::InvalidContentLength),
                    _ => content_length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_field = true;
            for coding in h.value.split(|&b| b == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() {
                    continue;
                }
                // Only a single `chunked` is meaningful to a client; anything layered
                // (gzip, a second chunked) we cannot decode, so refuse it outright.
                if coding.eq_ignore_ascii_case(b"chunked") && !saw_transfer_encoding {
                    chunked = true;
                    saw_transfer_encoding = true;
                } else {
                    return Err(CodecError::UnsupportedTransferEncoding);
                }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim_ows(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        }
    }

    if te_field && !chunked && !no_body {
        return Err(CodecError::UnsupportedTransferEncoding);
    }
    let framing = if no_body {
        Framing::Length(0)
    } else {
        match (chunked, content_length) {
            (true, Some(_)) => return Err(CodecError::ConflictingFraming),
            (true, None) => Framing::Chunked,
            (false, Some(n)) => {
                if n > max_body as u64 {
                    return Err(CodecError::BodyTooLarge);
                }
                Framing::Length(n)
            }
            (false, None) => Framing::CloseDelimited,
        }
    };
    let keep_alive = match framing {
        Framing::CloseDelimited => false,
        _ if close => false,
        // We never ask to switch protocols; whatever follows a 101 is not HTTP/1.1.
        _ if status == 101 => false,
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means its framing may
        // be faulty; the connection must be closed after it.
        _ if version == 0 && te_field => false,
        _ => version == 1 || keep_alive_token,
    };
    Ok(Status::Complete(
        ResponseHead {
            status,
            version,
            framing,
            keep_alive,
            headers,
        },
        consumed,
    ))
}

/// `s` without its leading `0`s, keeping the last digit (`"000"` is `"0"`).
pub(crate) fn strip_leading_zeros(mut s: &[u8]) -> &[u8] {
    while let [b'0', rest @ ..] = s
        && !rest.is_empty()
    {
        s = rest;
    }
    s
}

/// Strips optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a non-empty run of ASCII digits into a `u64`, refusing signs, spaces and
/// overflow (leading zeros are no overflow).
fn parse_decimal(s: &[u8]) -> Result<u64, CodecError> {
    if s.is_empty() {
        return Err(CodecError::InvalidContentLength);
    }
    let s = strip_leading_zeros(s);
    if s.len() > 19 {
        return Err(CodecError::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(CodecError::InvalidContentLength);
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{DEFAULT_MAX_BODY_BYTES, MAX_HEADERS};

    type Expected = Result<Option<(u16, Framing, bool, usize)>, CodecError>;

    /// Expected `consumed`: the whole input.
    const ALL: usize = usize::MAX;

    fn parse(input: &[u8]) -> Expected {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_response_head(input, &mut headers, DEFAULT_MAX_BODY_BYTES)? {
            Status::Complete(h, n) => Ok(Some((h.status, h.framing, h.keep_alive, n))),
            Status::Partial => Ok(None),
        }
    }

    #[test]
    fn table() {
        let long_head = {
            let mut v = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
            v.resize(MAX_HEAD_BYTES + 10, b'a');
            v
        };
        let many_headers = {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..=MAX_HEADERS {
                v.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            v
        };
        let cases: Vec<(&str, &[u8], Expected)> = vec![
            (
                "content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Ok(Some((200, Framing::Length(5), true, 38))),
            ),
            (
                "chunked",
                b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Some((202, Framing::Chunked, true, ALL))),
            ),
            (
                "chunked, case and ows",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked \r\n\r\n",
                Ok(Some((200, Framing::Chunked, true, ALL))),
            ),
            (
                "close-delimited",
                b"HTTP/1.1 200 OK\r\n\r\n",
                Ok(Some((200, Framing::CloseDelimited, false, ALL))),
            ),
            (
                "connection close",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Ok(Some((200, Framing::Length(0), false, ALL))),
            ),
            (
                "connection tokens",
                b"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n",
                Ok(Some((200, Framing::Length(0), false, ALL))),
            ),
            (
                "http/1.0 default close",
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                Ok(Some((200, Framing::Length(0), false, ALL))),
            ),
            (
                "http/1.0 keep-alive",
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                Ok(Some((200, Framing::Length(0), true, ALL))),
            ),
            (
                "204 has no body",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Ok(Some((204, Framing::Length(0), true, ALL))),
            ),
            // Found by the hyper property test: framing headers of a response that has no
            // body were still parsed, so an invalid one refused the response.
            (
                "204 ignores an invalid content-length",
                b"HTTP/1.1 204 No Content\r\nContent-Length: :70\r\n\r\n",
                Ok(Some((204, Framing::Length(0), true, ALL))),
            ),
            (
                "304 ignores transfer-encoding and content-length",
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\nContent-Length: 7\r\n\r\n",
                Ok(Some((304, Framing::Length(0), true, ALL))),
            ),
            (
                "100 continue is interim",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Ok(Some((100, Framing::Length(0), true, ALL))),
            ),
            (
                "repeated equal content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n",
                Ok(Some((200, Framing::Length(3), true, ALL))),
            ),
            ("partial status line", b"HTTP/1.1 20", Ok(None)),
            ("partial headers", b"HTTP/1.1 200 OK\r\nContent-Len", Ok(None)),
            ("empty", b"", Ok(None)),
            ("garbage", b"SSH-2.0-OpenSSH\r\n\r\n", Err(CodecError::InvalidHead)),
            ("bad status", b"HTTP/1.1 2x0 OK\r\n\r\n", Err(CodecError::InvalidHead)),
            // Found by the fuzz seeds: httparse accepts any three digits.
            ("status 000", b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", Err(CodecError::InvalidHead)),
            ("status 099", b"HTTP/1.1 099 X\r\n\r\n", Err(CodecError::InvalidHead)),
            ("status 999", b"HTTP/1.1 999 X\r\n\r\n", Ok(Some((999, Framing::CloseDelimited, false, ALL)))),
            ("space in header name", b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", Err(CodecError::InvalidHead)),
            (
                "differing content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            (
                "negative content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            (
                "plus content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            (
                "empty content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            (
                "overflowing content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            (
                "content-length over the body limit",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                Err(CodecError::BodyTooLarge),
            ),
            (
                "te and cl",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Err(CodecError::ConflictingFraming),
            ),
            (
                "gzip te",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(CodecError::UnsupportedTransferEncoding),
            ),
            (
                "double chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(CodecError::UnsupportedTransferEncoding),
            ),
            // From a review: an empty Transfer-Encoding still overrides Content-Length (RFC
            // 9112 §6.3), so a peer behind it reads on past where we would stop.
            (
                "empty te and cl",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\n",
                Err(CodecError::UnsupportedTransferEncoding),
            ),
            (
                "te of empty list elements",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , \r\n\r\n",
                Err(CodecError::UnsupportedTransferEncoding),
            ),
            (
                "chunked with empty list elements",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked,\r\n\r\n",
                Ok(Some((200, Framing::Chunked, true, ALL))),
            ),
            (
                "http/1.0 with te is closed after",
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                Ok(Some((200, Framing::Chunked, false, ALL))),
            ),
            (
                "unsolicited 101 is final and closes",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                Ok(Some((101, Framing::Length(0), false, ALL))),
            ),
            (
                "leading zeros are no overflow",
                b"HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000000000005\r\n\r\n",
                Ok(Some((200, Framing::Length(5), true, ALL))),
            ),
            (
                "zeros only",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000000000\r\n\r\n",
                Ok(Some((200, Framing::Length(0), true, ALL))),
            ),
            (
                "twenty significant digits overflow",
                b"HTTP/1.1 200 OK\r\nContent-Length: 010000000000000000000\r\n\r\n",
                Err(CodecError::InvalidContentLength),
            ),
            ("head too large", &long_head, Err(CodecError::HeadTooLarge)),
            ("too many headers", &many_headers, Err(CodecError::TooManyHeaders)),
        ];
        for (name, input, expected) in cases {
            let expected = expected
                .map(|o| o.map(|(s, f, k, n)| (s, f, k, if n == ALL { input.len() } else { n })));
            assert_eq!(parse(input), expected, "case {name}");
        }
    }

    /// Every prefix of a valid head is `Partial`, never an error, and the whole is
    /// `Complete` with the same result however it was split.
    #[test]
    fn every_prefix_is_partial() {
        let full: &[u8] = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: abc\r\n\
            Lambda-Runtime-Deadline-Ms: 123\r\nContent-Length: 2\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(full),
            Ok(Some((200, Framing::Length(2), true, full.len())))
        );
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let input = b"HTTP/1.1 200 OK\r\nlambda-runtime-aws-request-id: abc\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(Status::Complete(head, _)) = parse_response_head(input, &mut headers, 10) else {
            panic!("expected a complete head");
        };
        assert_eq!(
            head.header("Lambda-Runtime-Aws-Request-Id"),
            Some(&b"abc"[..])
        );
        assert_eq!(head.header("missing"), None);
    }

    #[test]
    fn trim() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
    }
}
