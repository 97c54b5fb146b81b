//! Request encoding into a caller-owned buffer.
//!
//! Encoding *appends*, so several requests can be written back to back into one buffer
//! and sent with one write (HTTP/1.1 pipelining). Every piece that comes from outside the
//! crate (request ids in the target, header values) is checked for bytes that would end
//! the line or the field: an id like `x HTTP/1.1\r\nHost: evil` cannot inject a header or
//! a second request. On error the buffer is restored to its length before the call.

use super::CodecError;

/// The request methods the Runtime API uses (see [`RequestWriter::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
}

impl Method {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Method::Get => b"GET",
            Method::Post => b"POST",
        }
    }
}

/// Writes one request head into a buffer.
///
/// The head is *appended*, so several requests can be written back to back and sent with
/// one write. Every part that may come from outside (target, host, header names and
/// values) is checked for bytes that would end the line or the field, so a request id
/// like `x HTTP/1.1\r\nHost: evil` cannot inject a header or a second request; on such
/// an error the buffer is restored to its length before [`new`](Self::new).
///
/// ```
/// use lambda_tpc::http::{Method, RequestWriter};
/// let mut buf = Vec::new();
/// let mut req = RequestWriter::new(&mut buf, Method::Post, &[b"/a/", b"id-1", b"/response"], b"localhost:9001")?;
/// req.header("Lambda-Runtime-Invocation-Id", b"inv-1")?;
/// req.finish(Some(2));
/// buf.extend_from_slice(b"{}");
/// assert!(buf.starts_with(b"POST /a/id-1/response HTTP/1.1\r\nHost: localhost:9001\r\n"));
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
#[derive(Debug)]
pub struct RequestWriter<'a> {
    buf: &'a mut Vec<u8>,
    /// Length of `buf` before this request, to roll back on error.
    start: usize,
}

impl<'a> RequestWriter<'a> {
    /// Appends the request line (`target` is the concatenation of its parts) and the
    /// `Host` header.
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidRequestPart`] if the target is empty, or the target or host
    /// contains a byte other than visible ASCII; nothing is appended.
    pub fn new(
        buf: &'a mut Vec<u8>,
        method: Method,
        target: &[&[u8]],
        host: &[u8],
    ) -> Result<Self, CodecError> {
        if target.iter().all(|p| p.is_empty())
            || !target.iter().all(|p| all_target_bytes(p))
            || !all_target_bytes(host)
        {
            return Err(CodecError::InvalidRequestPart);
        }
        let start = buf.len();
        let w = RequestWriter { buf, start };
        w.buf.extend_from_slice(method.as_bytes());
        w.buf.push(b' ');
        for part in target {
            w.buf.extend_from_slice(part);
        }
        w.buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        w.buf.extend_from_slice(host);
        w.buf.extend_from_slice(b"\r\n");
        Ok(w)
    }

    /// Appends a header field. The name must be an HTTP token; the value must not
    /// contain a control character other than HTAB (CR, LF, NUL, DEL, ...). Returns
    /// `self`, so calls chain.
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidRequestPart`] for a bad name or value. The **whole request**
    /// written so far is removed from the buffer, so a half-written head is never sent;
    /// the writer must not be used further.
    ///
    /// ```
    /// use lambda_tpc::http::{CodecError, Method, RequestWriter};
    ///
    /// let mut buf = Vec::new();
    /// let mut req = RequestWriter::new(&mut buf, Method::Get, &[b"/next"], b"h:1")?;
    /// assert_eq!(req.header("X-Id", b"a\r\nEvil: 1").err(), Some(CodecError::InvalidRequestPart));
    /// assert!(buf.is_empty());
    /// # Ok::<(), CodecError>(())
    /// ```
    pub fn header(&mut self, name: &str, value: &[u8]) -> Result<&mut Self, CodecError> {
        if name.is_empty() || !name.bytes().all(is_token_byte) || !is_field_value(value) {
            self.buf.truncate(self.start);
            return Err(CodecError::InvalidRequestPart);
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
        Ok(self)
    }

    /// Ends the head, with a `Content-Length` header when `content_length` is given. The
    /// caller appends exactly that many body bytes (or sends them in a second buffer).
    /// See the [type docs](Self) for an example.
    pub fn finish(self, content_length: Option<usize>) {
        if let Some(n) = content_length {
            self.buf.extend_from_slice(b"Content-Length: ");
            push_decimal(self.buf, n as u64);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Ends the head with `Transfer-Encoding: chunked`; the caller follows with
    /// [`encode_chunk`] calls and one [`encode_last_chunk`].
    ///
    /// ```
    /// use lambda_tpc::http::{Method, RequestWriter, encode_chunk, encode_last_chunk};
    ///
    /// let mut buf = Vec::new();
    /// RequestWriter::new(&mut buf, Method::Post, &[b"/upload"], b"h:1")?.finish_chunked();
    /// encode_chunk(&mut buf, b"hello");
    /// encode_last_chunk(&mut buf, &[])?;
    /// assert_eq!(
    ///     buf,
    ///     b"POST /upload HTTP/1.1\r\nHost: h:1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    /// );
    /// # Ok::<(), lambda_tpc::http::CodecError>(())
    /// ```
    pub fn finish_chunked(self) {
        self.buf
            .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    }
}

/// Appends one chunk holding `data`. Empty data writes nothing, because a zero-size chunk
/// would end the body.
///
/// ```
/// use lambda_tpc::http::encode_chunk;
///
/// let mut buf = Vec::new();
/// encode_chunk(&mut buf, &[b'x'; 26]);
/// assert!(buf.starts_with(b"1a\r\nxxx")); // the size is hexadecimal
/// encode_chunk(&mut buf, b"");
/// assert_eq!(buf.len(), 2 + 2 + 26 + 2);
/// ```
pub fn encode_chunk(buf: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(buf, data.len() as u64);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the given trailer fields, ending a chunked body. Trailer
/// names and values are checked like headers.
///
/// # Errors
///
/// [`CodecError::InvalidRequestPart`] for a bad trailer name or value; nothing is
/// appended.
///
/// ```
/// use lambda_tpc::http::encode_last_chunk;
///
/// let mut buf = Vec::new();
/// encode_last_chunk(&mut buf, &[("Checksum", b"abc")])?;
/// assert_eq!(buf, b"0\r\nChecksum: abc\r\n\r\n");
/// assert!(encode_last_chunk(&mut buf, &[("Bad Name", b"v")]).is_err());
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
pub fn encode_last_chunk(buf: &mut Vec<u8>, trailers: &[(&str, &[u8])]) -> Result<(), CodecError> {
    for (name, value) in trailers {
        if name.is_empty() || !name.bytes().all(is_token_byte) || !is_field_value(value) {
            return Err(CodecError::InvalidRequestPart);
        }
    }
    buf.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// Visible ASCII other than space: what may appear in a request target or host.
fn is_target_byte(b: u8) -> bool {
    b.wrapping_sub(0x21) < 0x7f - 0x21
}

/// Whether every byte is a target byte. A fold rather than a short-circuiting `all`, so
/// the compiler vectorizes it: this runs over every request line.
fn all_target_bytes(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| ok & is_target_byte(b))
}

/// RFC 9110 `field-value`: HTAB, SP, visible ASCII and obs-text, no other control
/// character. CR, LF and NUL would end the field; the other controls and DEL make a
/// request that a conforming server (httparse, hence hyper; Go's net/http) refuses.
fn is_field_value(value: &[u8]) -> bool {
    // A fold rather than a short-circuiting `all`, so it vectorizes, like
    // [`all_target_bytes`].
    value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | ((b >= 0x20) & (b != 0x7f)))
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `n` in decimal without going through `fmt` (this is on every request).
pub(crate) fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_hex(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &[&[u8]]) -> Result<Vec<u8>, CodecError> {
        let mut buf = b"prev".to_vec();
        RequestWriter::new(&mut buf, Method::Get, target, b"h:1")?.finish(None);
        Ok(buf)
    }

    /// Name, target parts, expected encoding.
    type Case<'a> = (&'a str, &'a [&'a [u8]], Result<&'a [u8], CodecError>);

    #[test]
    fn request_table() {
        let cases: Vec<Case> =
            vec![
            (
                "plain",
                &[b"/2018-06-01/runtime/invocation/next"],
                Ok(b"prevGET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: h:1\r\n\r\n"),
            ),
            ("parts", &[b"/a", b"/b"], Ok(b"prevGET /a/b HTTP/1.1\r\nHost: h:1\r\n\r\n")),
            ("space", &[b"/a b"], Err(CodecError::InvalidRequestPart)),
            ("crlf", &[b"/a\r\nX: y"], Err(CodecError::InvalidRequestPart)),
            ("nul", &[b"/a\0"], Err(CodecError::InvalidRequestPart)),
            ("del", &[b"/a\x7f"], Err(CodecError::InvalidRequestPart)),
            ("non-ascii", &[b"/\xc3\xa9"], Err(CodecError::InvalidRequestPart)),
            // Found by the fuzz seeds: an empty target made `GET  HTTP/1.1`.
            ("empty", &[], Err(CodecError::InvalidRequestPart)),
            ("empty parts", &[b"", b""], Err(CodecError::InvalidRequestPart)),
        ];
        for (name, target, expected) in cases {
            assert_eq!(get(target), expected.map(<[u8]>::to_vec), "case {name}");
        }
    }

    #[test]
    fn headers_and_length() {
        let mut buf = Vec::new();
        let mut w = RequestWriter::new(&mut buf, Method::Post, &[b"/x"], b"h").unwrap();
        w.header("A", b"1").unwrap();
        assert_eq!(
            w.header("B", b"x\r\nEvil: 1").err(),
            Some(CodecError::InvalidRequestPart)
        );
        // A refused header rolls the whole request back.
        assert!(buf.is_empty());

        let mut w = RequestWriter::new(&mut buf, Method::Post, &[b"/x"], b"h").unwrap();
        assert_eq!(
            w.header("Bad Name", b"v").err(),
            Some(CodecError::InvalidRequestPart)
        );
        assert!(buf.is_empty());

        let mut w = RequestWriter::new(&mut buf, Method::Post, &[b"/x"], b"h").unwrap();
        w.header("A", b"1")
            .unwrap()
            .header("B", b"two words\t")
            .unwrap();
        w.finish(Some(1234567890));
        assert_eq!(
            buf,
            b"POST /x HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: two words\t\r\nContent-Length: 1234567890\r\n\r\n"
        );
    }

    /// Found by the fuzz seeds: control characters other than CR, LF and NUL were
    /// written into field values, making requests httparse (and so hyper) refuses.
    #[test]
    fn control_characters_in_field_values() {
        for (value, ok) in [
            (&b"a\x01b"[..], false),
            (b"a\x1fb", false),
            (b"a\x7fb", false),
            (b"a\x0bb", false),
            (b"a\tb c", true),
            (b"caf\xc3\xa9", true),
            (b"", true),
        ] {
            let mut buf = Vec::new();
            let mut w = RequestWriter::new(&mut buf, Method::Get, &[b"/x"], b"h").unwrap();
            assert_eq!(w.header("X", value).is_ok(), ok, "{value:?}");
            let mut chunked = Vec::new();
            assert_eq!(
                encode_last_chunk(&mut chunked, &[("T", value)]).is_ok(),
                ok,
                "trailer {value:?}"
            );
        }
    }

    #[test]
    fn chunks() {
        let mut buf = Vec::new();
        RequestWriter::new(&mut buf, Method::Post, &[b"/x"], b"h")
            .unwrap()
            .finish_chunked();
        encode_chunk(&mut buf, b"");
        encode_chunk(&mut buf, &[b'a'; 26]);
        encode_last_chunk(&mut buf, &[("T", b"v")]).unwrap();
        assert_eq!(
            buf,
            [
                &b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\n"[..],
                &[b'a'; 26],
                b"\r\n0\r\nT: v\r\n\r\n"
            ]
            .concat()
        );
        let before = buf.len();
        assert_eq!(
            encode_last_chunk(&mut buf, &[("T", b"a\nb")]),
            Err(CodecError::InvalidRequestPart)
        );
        assert_eq!(buf.len(), before);
    }

    #[test]
    fn numbers() {
        for n in [0u64, 1, 9, 10, 99, 100, 65535, u64::MAX] {
            let mut b = Vec::new();
            push_decimal(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
            let mut h = Vec::new();
            push_hex(&mut h, n);
            assert_eq!(h, format!("{n:x}").as_bytes());
        }
    }

    /// Our encoder's output is a request that httparse (a parser we did not write)
    /// accepts, with the same method, target and headers.
    #[test]
    fn httparse_accepts_our_requests() {
        let mut buf = Vec::new();
        let mut w = RequestWriter::new(
            &mut buf,
            Method::Post,
            &[b"/2018-06-01/runtime/invocation/", b"abc-123", b"/error"],
            b"127.0.0.1:9001",
        )
        .unwrap();
        w.header("Lambda-Runtime-Function-Error-Type", b"Runtime.X")
            .unwrap();
        w.finish(Some(2));
        buf.extend_from_slice(b"{}");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&buf).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(req.method, Some("POST"));
        assert_eq!(
            req.path,
            Some("/2018-06-01/runtime/invocation/abc-123/error")
        );
        assert_eq!(req.headers.len(), 3);
        assert_eq!(req.headers[2].value, b"2");
        assert_eq!(&buf[n..], b"{}");
    }
}
