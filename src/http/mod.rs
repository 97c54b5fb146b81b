//! Sans-IO HTTP/1.1 client codec.
//!
//! Nothing in this module performs I/O. Requests are *encoded* into a caller-owned,
//! reusable `Vec<u8>`; responses are *decoded* from whatever bytes the caller has read so
//! far. Every decode function follows the same contract as `httparse`:
//!
//! * `Ok(Status::Complete(value, consumed))`: a whole item was found in the first
//!   `consumed` bytes of the input;
//! * `Ok(Status::Partial)`: the input is a valid prefix, read more and call again with
//!   the longer input (incomplete input is **not** an error);
//! * `Err(CodecError)`: the input can never become valid, or a limit was hit.
//!
//! The codec is deliberately small: it speaks exactly the subset of HTTP/1.1 a Lambda
//! Runtime API client needs (GET and POST requests with `Content-Length` or chunked
//! bodies; responses framed by `Content-Length`, chunked transfer coding or connection
//! close), and it is strict where leniency would let a confused or hostile peer smuggle
//! a second message or make us allocate without bound.
//!
//! Every limit is a named constant below; the doc of each names the error it causes.
//!
//! Reading one response, fed in pieces as a socket would deliver them:
//!
//! ```
//! use lambda_tpc::http::{
//!     BodyDecoder, DEFAULT_MAX_BODY_BYTES, Decoded, MAX_HEADERS, Status, parse_response_head,
//! };
//!
//! let wire: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
//! let mut received = Vec::new();
//! let mut body = Vec::new();
//! let mut decoder = None; // set once the head is complete
//! let mut pos = 0; // bytes of `received` consumed
//! for piece in wire.chunks(7) {
//!     received.extend_from_slice(piece);
//!     if decoder.is_none() {
//!         let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
//!         match parse_response_head(&received, &mut headers, DEFAULT_MAX_BODY_BYTES)? {
//!             Status::Partial => continue, // read more
//!             Status::Complete(head, len) => {
//!                 assert_eq!(head.status, 200);
//!                 decoder = Some(BodyDecoder::new(head.framing, DEFAULT_MAX_BODY_BYTES));
//!                 pos = len;
//!             }
//!         }
//!     }
//!     let decoder = decoder.as_mut().unwrap();
//!     while let Status::Complete(decoded, used) = decoder.decode(&received[pos..])? {
//!         pos += used;
//!         match decoded {
//!             Decoded::Data(data) => body.extend_from_slice(data),
//!             Decoded::Done => break,
//!         }
//!     }
//! }
//! assert!(decoder.unwrap().is_done());
//! assert_eq!(body, b"hello");
//! # Ok::<(), lambda_tpc::http::CodecError>(())
//! ```

mod body;
mod encode;
mod head;

pub use body::{BodyDecoder, ChunkedDecoder, Decoded};
pub use encode::{Method, RequestWriter, encode_chunk, encode_last_chunk};
pub(crate) use head::trim_ows;
pub use head::{Framing, ResponseHead, parse_response_head};

/// Largest response head (status line plus headers plus the blank line) accepted, in bytes.
///
/// The biggest head the Runtime API sends is a `/next` reply carrying a client context
/// (up to 3,583 bytes of base64) and a Cognito identity: well under 16 KiB. 64 KiB leaves
/// room for proxies and emulators that add headers. Exceeding it is
/// [`CodecError::HeadTooLarge`].
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields accepted in one response head.
///
/// A `/next` reply has about ten. Exceeding it is [`CodecError::TooManyHeaders`].
/// It is also the size of the stack array the parser fills, so it bounds stack use.
pub const MAX_HEADERS: usize = 64;

/// Default largest response body accepted, in bytes: 6 MiB plus 64 KiB.
///
/// Lambda's synchronous invocation payload limit is 6 MB (AWS's emulator enforces
/// 6,291,556 bytes); the margin keeps a valid maximum-size event from being refused by a
/// rounding difference. Exceeding the configured limit is [`CodecError::BodyTooLarge`],
/// detected from `Content-Length` before the body is read (only what arrived with the
/// head is buffered), or as soon as the running total of chunk sizes passes it. (The
/// runtime parses a `/next` head without the limit, to learn the request id of an
/// oversized event, and answers that invocation with `Runtime.EventTooLarge`.)
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024 + 64 * 1024;

/// Longest chunk-size line (hex size, optional extensions, CRLF) accepted, in bytes.
///
/// Chunk extensions are legal but useless to us; this bounds how much of them we buffer
/// before deciding. Exceeding it is [`CodecError::InvalidChunk`].
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// Largest trailer section after the last chunk accepted, in bytes.
///
/// Trailers are skipped, not interpreted, but a peer must not make us buffer an endless
/// trailer. Exceeding it is [`CodecError::TrailersTooLarge`].
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Result of an incremental decode step: complete (with the number of input bytes
/// consumed) or in need of more input. See the [module docs](self) for a read loop.
///
/// ```
/// use lambda_tpc::http::{MAX_HEADERS, Status, parse_response_head};
///
/// let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
/// let status = parse_response_head(b"HTTP/1.1 202 Accepted\r\n", &mut headers, 1024)?;
/// assert!(!status.is_complete()); // no blank line yet: read more
/// # Ok::<(), lambda_tpc::http::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A complete item, and how many input bytes it used.
    Complete(T, usize),
    /// The input is a valid but incomplete prefix: read more, then call again.
    Partial,
}

impl<T> Status<T> {
    /// `true` for [`Status::Complete`].
    pub fn is_complete(&self) -> bool {
        matches!(self, Status::Complete(..))
    }
}

/// Why the codec refused its input: the hot-path error tier.
///
/// Small and `Copy`, so decode functions can return it without allocating; the public
/// [`crate::Error`] wraps it at the API edge (see [`crate::Error::codec_error`]).
///
/// ```
/// use lambda_tpc::http::{CodecError, MAX_HEADERS, parse_response_head};
///
/// // Both framings at once: a request-smuggling signature, refused.
/// let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
/// let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
/// let err = parse_response_head(head, &mut headers, 1024).unwrap_err();
/// assert_eq!(err, CodecError::ConflictingFraming);
/// assert_eq!(err.to_string(), "both transfer-encoding and content-length");
/// let public: lambda_tpc::Error = err.into();
/// assert!(public.is_protocol());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecError {
    /// The response head is longer than [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// The response head has more than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// The status line or a header line is not valid HTTP/1.x.
    InvalidHead,
    /// A `Content-Length` value is not a decimal number, overflows, or two of them differ.
    InvalidContentLength,
    /// Both `Transfer-Encoding` and `Content-Length` are present (a request-smuggling
    /// signature; RFC 9112 §6.3 lets a client treat it as an error, and we do).
    ConflictingFraming,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    UnsupportedTransferEncoding,
    /// The body is larger than the configured limit (default [`DEFAULT_MAX_BODY_BYTES`]).
    BodyTooLarge,
    /// A chunk-size line is malformed or longer than [`MAX_CHUNK_LINE_BYTES`], or chunk
    /// data is not followed by CRLF.
    InvalidChunk,
    /// The trailer section is longer than [`MAX_TRAILER_BYTES`] or a trailer line is not
    /// terminated by CRLF.
    TrailersTooLarge,
    /// The peer closed the connection before the message was complete.
    UnexpectedEof,
    /// A request target or header value we were asked to encode contains a byte that
    /// would end the line or the field or that the field may not carry (a control
    /// character; in the target or host also a space or a non-ASCII byte), or the target
    /// is empty.
    InvalidRequestPart,
}

impl CodecError {
    /// A short, stable, human-readable description.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecError::HeadTooLarge => "response head too large",
            CodecError::TooManyHeaders => "too many response headers",
            CodecError::InvalidHead => "malformed response head",
            CodecError::InvalidContentLength => "invalid content-length",
            CodecError::ConflictingFraming => "both transfer-encoding and content-length",
            CodecError::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            CodecError::BodyTooLarge => "body too large",
            CodecError::InvalidChunk => "malformed chunked body",
            CodecError::TrailersTooLarge => "malformed or oversized trailers",
            CodecError::UnexpectedEof => "connection closed mid-message",
            CodecError::InvalidRequestPart => "request part contains a forbidden byte",
        }
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for CodecError {}
