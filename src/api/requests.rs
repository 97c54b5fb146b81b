//! Sans-IO encoding of the requests the runtime sends.
//!
//! Each function *appends* one complete request to a buffer, so a response post and the
//! next `/next` can share one write when pipelining is enabled.
//!
//! Response and error bodies are serialized straight into the request buffer, after the
//! head: the head carries a fixed-width `Content-Length` field padded with leading spaces
//! (optional whitespace, RFC 9110 §5.6.3), filled in once the body length is known. That
//! keeps each request in one buffer and one write, without serializing into a scratch
//! buffer and copying.

use super::{
    Diagnostic, MAX_ERROR_BODY_BYTES, MAX_TRAILER_SECTION_BYTES, PATH_ERROR_SUFFIX,
    PATH_INIT_ERROR, PATH_INVOCATION_PREFIX, PATH_NEXT, PATH_RESPONSE_SUFFIX, RuntimeApi, header,
    is_safe_request_id,
};
use crate::http::{CodecError, Method, RequestWriter};

/// Error type posted when the event payload does not deserialize into the handler's
/// input type (the handler is not called).
pub const ERROR_TYPE_DESERIALIZE: &str = "Runtime.UnmarshalError";
/// Error type posted when the handler's output does not serialize.
pub const ERROR_TYPE_RESPONSE_SERIALIZE: &str = "Runtime.MarshalError";
/// Error type posted when the handler panicked.
pub const ERROR_TYPE_HANDLER_PANIC: &str = "Runtime.HandlerPanic";
/// Error type posted when the response is larger than the limit
/// ([`super::MAX_RESPONSE_BYTES`] by default), or the API answered 413.
pub const ERROR_TYPE_RESPONSE_TOO_LARGE: &str = "Function.ResponseSizeTooLarge";
/// Error type posted when the event payload is larger than the runtime's configured limit
/// (the handler is not called).
pub const ERROR_TYPE_EVENT_TOO_LARGE: &str = "Runtime.EventTooLarge";
/// Error type posted when the event's head arrived but its body could not be read (the
/// connection broke, or the body was malformed): the invocation is answered rather than
/// left to time out.
pub const ERROR_TYPE_EVENT_READ: &str = "Runtime.EventReadError";
/// Error type posted when the handler was still running at the invocation's deadline and
/// was cancelled (see [`ConfigBuilder::enforce_deadline`](crate::ConfigBuilder::enforce_deadline)).
pub const ERROR_TYPE_DEADLINE_EXCEEDED: &str = "Runtime.DeadlineExceeded";
/// Error type posted when a streamed response could not be delivered (the connection
/// broke while it was sent): the stream cannot be replayed, so the invocation is answered
/// with this error on a fresh connection rather than left to time out.
pub const ERROR_TYPE_STREAM_FAILED: &str = "Runtime.ResponseStreamFailed";
/// Error type posted for a `/next` reply whose headers were invalid (e.g. no deadline)
/// but whose request id was usable.
pub const ERROR_TYPE_INVALID_INVOCATION: &str = "Runtime.InvalidInvocation";

/// Width of the space-padded `Content-Length` value: enough for any body we may send
/// (the configured response limit is at most [`MAX_ENCODABLE_BODY_BYTES`]).
const LENGTH_WIDTH: usize = 10;

/// Largest body whose length fits the `Content-Length` slot: the upper bound of
/// `ConfigBuilder::max_response_bytes` (a configuration error above it).
pub const MAX_ENCODABLE_BODY_BYTES: u64 = 10u64.pow(LENGTH_WIDTH as u32) - 1;

/// Appends `GET /2018-06-01/runtime/invocation/next` (after the endpoint's prefix).
///
/// # Errors
///
/// [`CodecError::InvalidRequestPart`] if the endpoint's prefix or authority cannot go in
/// a request (never for a [`RuntimeApi::parse`]d one); the buffer is left as it was.
///
/// ```
/// use lambda_tpc::api::{RuntimeApi, encode_next};
///
/// let api = RuntimeApi::parse("http://127.0.0.1:9001/emulator")?;
/// let mut buf = Vec::new();
/// encode_next(&mut buf, &api)?;
/// assert_eq!(
///     buf,
///     b"GET /emulator/2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n",
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_next(buf: &mut Vec<u8>, api: &RuntimeApi) -> Result<(), CodecError> {
    RequestWriter::new(
        buf,
        Method::Get,
        &[api.prefix().as_bytes(), PATH_NEXT.as_bytes()],
        api.authority().as_bytes(),
    )?
    .finish(None);
    Ok(())
}

/// A request whose body is being appended, returned by [`encode_response`].
///
/// The head ends with a space-padded `Content-Length` field; the caller appends the body
/// to the same buffer, then calls [`finish`](Self::finish) to fill in its length, or
/// [`abort`](Self::abort) to take the whole request back out, e.g. when serialization
/// fails half-way:
///
/// ```
/// use lambda_tpc::api::{RuntimeApi, encode_response};
///
/// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
/// let mut buf = b"earlier request".to_vec();
/// let slot = encode_response(&mut buf, &api, "req-1", None)?;
/// buf.extend_from_slice(b"{\"partial\":");
/// assert_eq!(slot.body_len(&buf), 11);
/// slot.abort(&mut buf);
/// assert_eq!(buf, b"earlier request");
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
#[derive(Debug)]
#[must_use = "finish() fills in the Content-Length"]
pub struct BodySlot {
    /// Where this request starts in the buffer (to roll back).
    request_start: usize,
    /// Where the space-padded length field starts.
    length_at: usize,
    /// Where the body starts.
    body_start: usize,
}

impl BodySlot {
    /// Fills in the `Content-Length` for everything appended since the head and returns
    /// the body length. `buf` must be the buffer the head was appended to, with nothing
    /// but the body appended since. See [`encode_response`] for an example.
    pub fn finish(self, buf: &mut [u8]) -> usize {
        let len = buf.len() - self.body_start;
        let field = &mut buf[self.length_at..self.length_at + LENGTH_WIDTH];
        let mut n = len;
        for b in field.iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        len
    }

    /// Length of the body appended so far.
    pub fn body_len(&self, buf: &[u8]) -> usize {
        buf.len() - self.body_start
    }

    /// Removes the whole request (head and partial body) from the buffer.
    pub fn abort(self, buf: &mut Vec<u8>) {
        buf.truncate(self.request_start);
    }
}

fn begin_post(
    buf: &mut Vec<u8>,
    api: &RuntimeApi,
    target: &[&[u8]],
    headers: &[(&str, &[u8])],
) -> Result<BodySlot, CodecError> {
    let request_start = buf.len();
    let mut w = RequestWriter::new(buf, Method::Post, target, api.authority().as_bytes())?;
    for (name, value) in headers {
        w.header(name, value)?;
    }
    w.finish(None);
    // Replace the blank line with the padded length field and a new blank line.
    buf.truncate(buf.len() - 2);
    buf.extend_from_slice(b"Content-Length:");
    let length_at = buf.len();
    buf.extend_from_slice(&[b' '; LENGTH_WIDTH]);
    buf.extend_from_slice(b"\r\n\r\n");
    let body_start = buf.len();
    Ok(BodySlot {
        request_start,
        length_at,
        body_start,
    })
}

fn checked_id(request_id: &str) -> Result<&[u8], CodecError> {
    if is_safe_request_id(request_id.as_bytes()) {
        Ok(request_id.as_bytes())
    } else {
        Err(CodecError::InvalidRequestPart)
    }
}

/// Appends the head of `POST .../{request_id}/response` (echoing `invocation_id` when
/// present) and returns the slot to finish after appending the body.
///
/// The body is written straight into `buf`, e.g. with `serde_json::to_writer`, with no
/// intermediate buffer: that is why the length is filled in afterwards.
///
/// # Errors
///
/// [`CodecError::InvalidRequestPart`] if `request_id` is not a
/// [safe request id](super::is_safe_request_id) or `invocation_id` is not a valid header
/// value; the buffer is left as it was.
///
/// ```
/// use lambda_tpc::api::{RuntimeApi, encode_response};
/// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
/// let mut buf = Vec::new();
/// let slot = encode_response(&mut buf, &api, "req-1", None)?;
/// buf.extend_from_slice(b"\"ok\"");
/// assert_eq!(slot.finish(&mut buf), 4);
/// assert!(buf.starts_with(b"POST /2018-06-01/runtime/invocation/req-1/response HTTP/1.1\r\n"));
/// assert!(buf.ends_with(b"Content-Length:         4\r\n\r\n\"ok\""));
///
/// // Request ids come from the network: one that could escape its path is refused.
/// assert!(encode_response(&mut buf, &api, "../../runtime/init/error", None).is_err());
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
pub fn encode_response(
    buf: &mut Vec<u8>,
    api: &RuntimeApi,
    request_id: &str,
    invocation_id: Option<&str>,
) -> Result<BodySlot, CodecError> {
    let id = checked_id(request_id)?;
    let target: [&[u8]; 4] = [
        api.prefix().as_bytes(),
        PATH_INVOCATION_PREFIX.as_bytes(),
        id,
        PATH_RESPONSE_SUFFIX.as_bytes(),
    ];
    match invocation_id {
        Some(inv) => begin_post(
            buf,
            api,
            &target,
            &[(header::INVOCATION_ID, inv.as_bytes())],
        ),
        None => begin_post(buf, api, &target, &[]),
    }
}

/// Appends the head of a streamed `POST .../{request_id}/response`: response mode
/// `streaming`, chunked transfer coding, the error trailers declared, and `content_type`
/// ([`CONTENT_TYPE_HTTP_INTEGRATION`](super::CONTENT_TYPE_HTTP_INTEGRATION) when the body
/// opens with an HTTP prelude, else as a rule
/// [`CONTENT_TYPE_OCTET_STREAM`](super::CONTENT_TYPE_OCTET_STREAM)). The body follows
/// as [`encode_chunk`](crate::http::encode_chunk)s and one
/// [`encode_last_chunk`](crate::http::encode_last_chunk), which carries the error
/// trailers if the stream failed.
///
/// # Errors
///
/// As [`encode_response`]; also [`CodecError::InvalidRequestPart`] for a `content_type`
/// that is not a valid header value. Nothing is appended then.
///
/// ```
/// use lambda_tpc::api::{
///     CONTENT_TYPE_OCTET_STREAM, RuntimeApi, encode_streaming_response_head, header,
/// };
/// use lambda_tpc::http::{encode_chunk, encode_last_chunk};
///
/// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
/// let mut buf = Vec::new();
/// encode_streaming_response_head(&mut buf, &api, "req-1", None, CONTENT_TYPE_OCTET_STREAM)?;
/// encode_chunk(&mut buf, b"first line\n");
/// // The stream failed after its first chunk: report it in the trailers.
/// encode_last_chunk(&mut buf, &[
///     (header::FUNCTION_ERROR_TYPE, b"Function.Upstream"),
///     (header::FUNCTION_ERROR_BODY, b"eyJlcnJvclR5cGUiOiJGdW5jdGlvbi5VcHN0cmVhbSJ9"),
/// ])?;
/// let text = String::from_utf8(buf).unwrap();
/// assert!(text.contains("Lambda-Runtime-Function-Response-Mode: streaming\r\n"));
/// assert!(text.ends_with("\r\n\r\nb\r\nfirst line\n\r\n0\r\nLambda-Runtime-Function-Error-Type: Function.Upstream\r\nLambda-Runtime-Function-Error-Body: eyJlcnJvclR5cGUiOiJGdW5jdGlvbi5VcHN0cmVhbSJ9\r\n\r\n"));
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
pub fn encode_streaming_response_head(
    buf: &mut Vec<u8>,
    api: &RuntimeApi,
    request_id: &str,
    invocation_id: Option<&str>,
    content_type: &str,
) -> Result<(), CodecError> {
    let id = checked_id(request_id)?;
    let start = buf.len();
    let mut w = RequestWriter::new(
        buf,
        Method::Post,
        &[
            api.prefix().as_bytes(),
            PATH_INVOCATION_PREFIX.as_bytes(),
            id,
            PATH_RESPONSE_SUFFIX.as_bytes(),
        ],
        api.authority().as_bytes(),
    )?;
    w.header(header::RESPONSE_MODE, b"streaming")?;
    w.header(
        "Trailer",
        b"Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body",
    )?;
    if let Err(e) = w.header(header::CONTENT_TYPE, content_type.as_bytes()) {
        buf.truncate(start);
        return Err(e);
    }
    if let Some(inv) = invocation_id
        && let Err(e) = w.header(header::INVOCATION_ID, inv.as_bytes())
    {
        buf.truncate(start);
        return Err(e);
    }
    w.finish_chunked();
    Ok(())
}

/// Appends a complete `POST .../{request_id}/error` carrying `diagnostic`.
///
/// The message is truncated so the body stays under [`MAX_ERROR_BODY_BYTES`]; an error
/// type that is not a valid header value is sent as `Runtime.Unknown` in the header (the
/// body keeps it).
///
/// # Errors
///
/// As [`encode_response`].
///
/// ```
/// use lambda_tpc::api::{RuntimeApi, encode_error};
/// use lambda_tpc::Diagnostic;
///
/// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
/// let mut buf = Vec::new();
/// encode_error(&mut buf, &api, "req-1", Some("inv-1"), &Diagnostic::new("Function.Oops", "bad input"))?;
/// let text = String::from_utf8(buf).unwrap();
/// assert!(text.starts_with("POST /2018-06-01/runtime/invocation/req-1/error HTTP/1.1\r\n"));
/// assert!(text.contains("Lambda-Runtime-Function-Error-Type: Function.Oops\r\n"));
/// assert!(text.contains("Lambda-Runtime-Invocation-Id: inv-1\r\n"));
/// assert!(text.ends_with(r#"{"errorType":"Function.Oops","errorMessage":"bad input"}"#));
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
pub fn encode_error(
    buf: &mut Vec<u8>,
    api: &RuntimeApi,
    request_id: &str,
    invocation_id: Option<&str>,
    diagnostic: &Diagnostic,
) -> Result<(), CodecError> {
    let id = checked_id(request_id)?;
    let target: [&[u8]; 4] = [
        api.prefix().as_bytes(),
        PATH_INVOCATION_PREFIX.as_bytes(),
        id,
        PATH_ERROR_SUFFIX.as_bytes(),
    ];
    let error_type = header_safe_error_type(&diagnostic.error_type);
    let slot = match invocation_id {
        Some(inv) => begin_post(
            buf,
            api,
            &target,
            &[
                (header::FUNCTION_ERROR_TYPE, error_type),
                (header::INVOCATION_ID, inv.as_bytes()),
            ],
        )?,
        None => begin_post(
            buf,
            api,
            &target,
            &[(header::FUNCTION_ERROR_TYPE, error_type)],
        )?,
    };
    write_diagnostic(buf, diagnostic);
    slot.finish(buf);
    Ok(())
}

/// Appends a complete `POST /2018-06-01/runtime/init/error` carrying `diagnostic`, with
/// the same bounds as [`encode_error`].
///
/// # Errors
///
/// As [`encode_next`].
///
/// ```
/// use lambda_tpc::api::{RuntimeApi, encode_init_error};
/// use lambda_tpc::Diagnostic;
///
/// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
/// let mut buf = Vec::new();
/// encode_init_error(&mut buf, &api, &Diagnostic::new("Runtime.InitError", "no database"))?;
/// assert!(buf.starts_with(b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\n"));
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
pub fn encode_init_error(
    buf: &mut Vec<u8>,
    api: &RuntimeApi,
    diagnostic: &Diagnostic,
) -> Result<(), CodecError> {
    let error_type = header_safe_error_type(&diagnostic.error_type);
    let slot = begin_post(
        buf,
        api,
        &[api.prefix().as_bytes(), PATH_INIT_ERROR.as_bytes()],
        &[(header::FUNCTION_ERROR_TYPE, error_type)],
    )?;
    write_diagnostic(buf, diagnostic);
    slot.finish(buf);
    Ok(())
}

/// Longest error type sent in the `Lambda-Runtime-Function-Error-Type` header (and in the
/// JSON body); a longer one is sent as `Runtime.Unknown` in the header and cut in the body.
const MAX_ERROR_TYPE_BYTES: usize = 1024;

/// The error type as it may go in a header: visible ASCII, not empty, at most
/// [`MAX_ERROR_TYPE_BYTES`]; anything else is `Runtime.Unknown`.
pub(crate) fn header_safe_error_type(t: &str) -> &[u8] {
    if !t.is_empty()
        && t.len() <= MAX_ERROR_TYPE_BYTES
        && t.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        t.as_bytes()
    } else {
        b"Runtime.Unknown"
    }
}

/// Appends the JSON of `d` as posted to `/error`: the type is cut to 1 KiB and the
/// message (at a character boundary) so that the body, escaped, stays within
/// [`MAX_ERROR_BODY_BYTES`].
///
/// ```
/// use lambda_tpc::api::{MAX_ERROR_BODY_BYTES, write_diagnostic_json};
/// use lambda_tpc::Diagnostic;
///
/// let mut buf = Vec::new();
/// write_diagnostic_json(&mut buf, &Diagnostic::new("Function.Quote", "say \"hi\""));
/// assert_eq!(buf, br#"{"errorType":"Function.Quote","errorMessage":"say \"hi\""}"#);
///
/// let mut big = Vec::new();
/// write_diagnostic_json(&mut big, &Diagnostic::new("Function.Big", "x".repeat(2 * MAX_ERROR_BODY_BYTES)));
/// assert!(big.len() < MAX_ERROR_BODY_BYTES);
/// ```
pub fn write_diagnostic_json(buf: &mut Vec<u8>, d: &Diagnostic) {
    write_diagnostic(buf, d)
}

fn write_diagnostic(buf: &mut Vec<u8>, d: &Diagnostic) {
    write_diagnostic_within(buf, d, MAX_ERROR_BODY_BYTES)
}

/// The base64 error body for the trailers of a streamed response that failed with `d`,
/// sent beside the error type header value `ty`: the JSON of [`write_diagnostic_json`],
/// cut so that the trailer section stays within [`MAX_TRAILER_SECTION_BYTES`].
pub(crate) fn error_trailer_body(d: &Diagnostic, ty: &[u8]) -> String {
    crate::streaming::base64(&error_trailer_json(d, ty))
}

/// The JSON that [`error_trailer_body`] encodes.
fn error_trailer_json(d: &Diagnostic, ty: &[u8]) -> Vec<u8> {
    // Both fields as `Name: value\r\n`, then the blank line that ends the section.
    let fixed = header::FUNCTION_ERROR_TYPE.len() + header::FUNCTION_ERROR_BODY.len() + 2 * 4 + 2;
    let room = MAX_TRAILER_SECTION_BYTES.saturating_sub(fixed + ty.len());
    let mut json = Vec::new();
    // Base64 makes four characters of every three bytes.
    write_diagnostic_within(&mut json, d, room / 4 * 3);
    json
}

/// [`write_diagnostic_json`] within `max` bytes. A type that goes whole in the error type
/// header ([`header_safe_error_type`]) goes whole here too, so that the two agree: escaped
/// it at most doubles, and every caller's `max` leaves room for that (a trailer section
/// with a 1 KiB type still has over 2 KiB for the JSON). Any other type is cut to an
/// eighth of `max` (1 KiB at most), so that even escaped (up to six-fold) it leaves room.
fn write_diagnostic_within(buf: &mut Vec<u8>, d: &Diagnostic, max: usize) {
    let start = buf.len();
    let type_max = if header_safe_error_type(&d.error_type) == d.error_type.as_bytes() {
        MAX_ERROR_TYPE_BYTES
    } else {
        MAX_ERROR_TYPE_BYTES.min(max / 8)
    };
    let error_type = truncate_at_char(&d.error_type, type_max);
    // Half the limit leaves room for escaping in all but pathological messages (quotes,
    // backslashes and control characters grow up to six-fold); those are cut further.
    let mut budget = max / 2;
    loop {
        buf.truncate(start);
        let body = DiagnosticRef {
            error_type,
            error_message: truncate_at_char(&d.error_message, budget),
        };
        // Serializing two &str into a Vec cannot fail.
        if serde_json::to_writer(&mut *buf, &body).is_err() {
            buf.truncate(start);
            buf.extend_from_slice(br#"{"errorType":"Runtime.Unknown","errorMessage":""}"#);
            return;
        }
        let len = buf.len() - start;
        if len <= max || budget == 0 {
            return;
        }
        // Scale by the escaping growth seen so far (always a cut, so this ends; in
        // practice in one or two more passes).
        let scaled = (budget as u128 * max as u128 / len as u128) as usize;
        budget = scaled.min(budget - 1);
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DiagnosticRef<'a> {
    error_type: &'a str,
    error_message: &'a str,
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_trailers_fit_go_net_http_whatever_the_error() {
        use super::super::{MAX_TRAILER_SECTION_BYTES, header};
        let long_type = format!("Function.{}", "\"".repeat(1015));
        let plain_type = format!("Function.{}", "T".repeat(990));
        for (error_type, message) in [
            ("Function.Short", "boom".to_owned()),
            ("Function.Long", "x".repeat(100_000)),
            ("Function.Quotes", "\"".repeat(100_000)),
            ("Function.Control", "\u{1}".repeat(100_000)),
            (long_type.as_str(), "\\".repeat(100_000)),
            (plain_type.as_str(), "x".repeat(100_000)),
            ("not a header value\n", "é".repeat(100_000)),
        ] {
            let d = crate::Diagnostic::new(error_type, message);
            let ty = super::header_safe_error_type(&d.error_type);
            let body = super::error_trailer_body(&d, ty);
            let mut section = Vec::new();
            crate::http::encode_last_chunk(
                &mut section,
                &[
                    (header::FUNCTION_ERROR_TYPE, ty),
                    (header::FUNCTION_ERROR_BODY, body.as_bytes()),
                ],
            )
            .expect("encodable");
            // What Go reads as the trailer section: everything after the last chunk line.
            let trailers = &section[b"0\r\n".len()..];
            assert!(
                trailers.len() <= MAX_TRAILER_SECTION_BYTES,
                "{error_type:.20}: {} bytes",
                trailers.len()
            );
            // The type in the JSON is the header's, whole, whenever the header has it.
            let json = super::error_trailer_json(&d, ty);
            assert_eq!(body, crate::streaming::base64(&json));
            let v: serde_json::Value = serde_json::from_slice(&json).expect("JSON body");
            if ty != b"Runtime.Unknown" {
                assert_eq!(
                    v["errorType"].as_str().map(str::as_bytes),
                    Some(ty),
                    "{error_type:.20}: the body's type is the header's"
                );
            }
            // A long message is cut, not dropped: the JSON keeps a good part of it.
            let cut = d.error_message.len() > MAX_TRAILER_SECTION_BYTES;
            assert!(
                !cut || body.len() > 1000,
                "{error_type:.20}: {} base64 bytes",
                body.len()
            );
        }
    }

    #[test]
    fn error_bodies_stay_within_the_limit_whatever_the_escaping() {
        use super::super::MAX_ERROR_BODY_BYTES;
        for message in [
            "x".repeat(3 * MAX_ERROR_BODY_BYTES),
            "\"".repeat(600_000),
            "\\".repeat(600_000),
            "\u{1}".repeat(600_000),
            "é\u{1}\"".repeat(300_000),
        ] {
            let d = crate::Diagnostic::new("Function.Big", message);
            let mut buf = b"prefix".to_vec();
            super::write_diagnostic_json(&mut buf, &d);
            let json = &buf[6..];
            assert!(json.len() <= MAX_ERROR_BODY_BYTES, "{} bytes", json.len());
            assert!(
                json.len() > MAX_ERROR_BODY_BYTES / 3,
                "cut too much: {}",
                json.len()
            );
            let v: serde_json::Value = serde_json::from_slice(json).expect("valid JSON");
            assert_eq!(v["errorType"], "Function.Big");
            let mut small = Vec::new();
            super::write_diagnostic_within(&mut small, &d, 4096);
            assert!(small.len() <= 4096, "{} bytes", small.len());
        }
    }

    #[test]
    fn error_types_that_cannot_be_a_header_are_sent_as_unknown() {
        for (t, sent) in [
            ("Function.Mine", "Function.Mine"),
            ("", "Runtime.Unknown"),
            ("has space", "Runtime.Unknown"),
            ("ünï", "Runtime.Unknown"),
        ] {
            assert_eq!(super::header_safe_error_type(t), sent.as_bytes());
        }
        let long = format!("Function.{}", "A".repeat(2000));
        assert_eq!(super::header_safe_error_type(&long), b"Runtime.Unknown");
    }

    use super::*;

    fn api() -> RuntimeApi {
        RuntimeApi::parse("http://127.0.0.1:9001/pre").unwrap()
    }

    fn parse_request(buf: &[u8]) -> (String, String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(buf).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial request"),
        };
        let hs: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let len: usize = hs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse().unwrap())
            .unwrap_or(0);
        (
            req.method.unwrap().to_owned(),
            req.path.unwrap().to_owned(),
            hs,
            buf[n..n + len].to_vec(),
        )
    }

    #[test]
    fn next() {
        let mut buf = Vec::new();
        encode_next(&mut buf, &api()).unwrap();
        assert_eq!(
            buf,
            b"GET /pre/2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n"
        );
    }

    #[test]
    fn response_and_pipelined_next() {
        let mut buf = Vec::new();
        let slot = encode_response(&mut buf, &api(), "abc-1", Some("inv-9")).unwrap();
        buf.extend_from_slice(br#"{"hello":"world"}"#);
        assert_eq!(slot.finish(&mut buf), 17);
        let first_len = buf.len();
        encode_next(&mut buf, &api()).unwrap();
        let (method, path, headers, body) = parse_request(&buf[..first_len]);
        assert_eq!(method, "POST");
        assert_eq!(path, "/pre/2018-06-01/runtime/invocation/abc-1/response");
        assert!(headers.contains(&("Lambda-Runtime-Invocation-Id".into(), "inv-9".into())));
        assert_eq!(body, br#"{"hello":"world"}"#);
        let (method, path, _, _) = parse_request(&buf[first_len..]);
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/pre/2018-06-01/runtime/invocation/next")
        );
    }

    #[test]
    fn length_field_widths() {
        // `finish` writes the real body length, right-aligned, into the padded field.
        for len in [0usize, 1, 9, 10, 12345, 70_000] {
            let mut buf = Vec::new();
            let slot = encode_response(&mut buf, &api(), "a", None).unwrap();
            let start = slot.length_at;
            buf.resize(buf.len() + len, b'x');
            assert_eq!(slot.finish(&mut buf), len);
            let field = std::str::from_utf8(&buf[start..start + LENGTH_WIDTH]).unwrap();
            assert_eq!(
                field.trim_start().parse::<usize>().ok(),
                Some(len),
                "{field:?}"
            );
            assert!(!field.ends_with(' '), "right-aligned: {field:?}");
        }
        // Wide enough for any buffered body we post.
        for max in [super::super::MAX_RESPONSE_BYTES, MAX_ERROR_BODY_BYTES] {
            assert!(max.to_string().len() <= LENGTH_WIDTH, "{max}");
        }
    }

    #[test]
    fn unsafe_ids_refused() {
        let mut buf = Vec::new();
        for id in ["../../runtime/init/error", "a b", "a\r\nHost: x", ""] {
            assert_eq!(
                encode_response(&mut buf, &api(), id, None).err(),
                Some(CodecError::InvalidRequestPart)
            );
            assert_eq!(
                encode_error(&mut buf, &api(), id, None, &Diagnostic::new("T", "m")),
                Err(CodecError::InvalidRequestPart)
            );
        }
        assert!(buf.is_empty());
        assert_eq!(
            encode_response(&mut buf, &api(), "ok", Some("x\r\nEvil: 1")).err(),
            Some(CodecError::InvalidRequestPart)
        );
        assert!(buf.is_empty(), "a refused header rolls the request back");
    }

    #[test]
    fn error_post() {
        let mut buf = Vec::new();
        let d = Diagnostic::new("Bad\nType", "x".repeat(MAX_ERROR_BODY_BYTES * 2));
        encode_error(&mut buf, &api(), "id-1", None, &d).unwrap();
        let (_, path, headers, body) = parse_request(&buf);
        assert_eq!(path, "/pre/2018-06-01/runtime/invocation/id-1/error");
        assert!(headers.contains(&(
            "Lambda-Runtime-Function-Error-Type".into(),
            "Runtime.Unknown".into()
        )));
        assert!(body.len() < MAX_ERROR_BODY_BYTES);
        let parsed: Diagnostic = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.error_type, "Bad\nType");
    }

    #[test]
    fn streaming_head() {
        let mut buf = Vec::new();
        encode_streaming_response_head(
            &mut buf,
            &api(),
            "id-9",
            Some("inv"),
            super::super::CONTENT_TYPE_HTTP_INTEGRATION,
        )
        .unwrap();
        crate::http::encode_chunk(&mut buf, b"hello");
        crate::http::encode_last_chunk(&mut buf, &[]).unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&buf).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(
            req.path,
            Some("/pre/2018-06-01/runtime/invocation/id-9/response")
        );
        let get = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.to_vec())
        };
        assert_eq!(
            get("Lambda-Runtime-Function-Response-Mode"),
            Some(b"streaming".to_vec())
        );
        assert_eq!(get("Transfer-Encoding"), Some(b"chunked".to_vec()));
        assert_eq!(get("Lambda-Runtime-Invocation-Id"), Some(b"inv".to_vec()));
        assert_eq!(
            get("Content-Type"),
            Some(b"application/vnd.awslambda.http-integration-response".to_vec())
        );
        assert_eq!(&buf[n..], b"5\r\nhello\r\n0\r\n\r\n");
        // A content type that is no header value is refused, and leaves nothing behind.
        let mut buf = b"kept".to_vec();
        assert!(encode_streaming_response_head(&mut buf, &api(), "id-9", None, "a\nb").is_err());
        assert_eq!(buf, b"kept");
    }

    #[test]
    fn init_error() {
        let mut buf = Vec::new();
        encode_init_error(
            &mut buf,
            &api(),
            &Diagnostic::new("Runtime.InitError", "no db"),
        )
        .unwrap();
        let (_, path, headers, body) = parse_request(&buf);
        assert_eq!(path, "/pre/2018-06-01/runtime/init/error");
        assert!(headers.contains(&(
            "Lambda-Runtime-Function-Error-Type".into(),
            "Runtime.InitError".into()
        )));
        assert_eq!(
            body,
            br#"{"errorType":"Runtime.InitError","errorMessage":"no db"}"#
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_at_char("héllo", 2), "h");
        assert_eq!(truncate_at_char("héllo", 3), "hé");
        assert_eq!(truncate_at_char("abc", 10), "abc");
    }
}
