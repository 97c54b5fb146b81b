//! Response streaming: a handler returns a [`StreamResponse`] instead of a value, and the
//! runtime sends each chunk of its body as soon as the handler's stream yields it.
//!
//! On the wire this is a `POST .../response` with
//! `Lambda-Runtime-Function-Response-Mode: streaming` and a chunked body. An error after
//! the first chunk cannot change the status any more; it is reported in the trailers
//! `Lambda-Runtime-Function-Error-Type` and `Lambda-Runtime-Function-Error-Body` (the
//! JSON error, base64-encoded), as the Runtime API specifies; its message is cut so that
//! the trailers fit the 4 KiB a Go server reads
//! ([`MAX_TRAILER_SECTION_BYTES`](crate::api::MAX_TRAILER_SECTION_BYTES)). For function URLs and other
//! HTTP integrations, a [`MetadataPrelude`] (status, headers, cookies) goes first,
//! followed by eight NUL bytes.
//!
//! Whether Managed Instances accept streaming responses is not documented; the protocol
//! is the one Lambda uses for streaming functions.
//!
//! Any `futures` stream of `Result<B, E>` with `B: AsRef<[u8]>` and `E: Into<Diagnostic>`
//! works; it need not be `Send` on the compio runtime. A stream built from an
//! iterator:
//!
//! ```no_run
//! use lambda_tpc::streaming::StreamResponse;
//! use lambda_tpc::{BoxError, LambdaEvent};
//!
//! # fn main() -> Result<(), lambda_tpc::Error> {
//! lambda_tpc::compio::run_concurrent(|event: LambdaEvent<u32>| async move {
//!     let lines = (0..event.payload).map(|i| Ok::<_, BoxError>(format!("line {i}\n")));
//!     Ok::<_, BoxError>(StreamResponse::new(futures_util::stream::iter(lines)))
//! })
//! # }
//! ```
//!
//! A handler that produces its body over time can feed a channel from a task and return
//! the receiver as the stream (`futures_channel::mpsc` works on every executor).
//!
//! Streamed responses are not limited to [`MAX_RESPONSE_BYTES`](crate::api::MAX_RESPONSE_BYTES)
//! but to [`MAX_STREAM_BYTES`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;

use crate::api::Diagnostic;

/// Largest streamed response body: 200 MiB, Lambda's limit. A stream that goes beyond it
/// is cut off with a `Function.ResponseSizeTooLarge` error in the trailers.
pub const MAX_STREAM_BYTES: u64 = 200 * 1024 * 1024;

/// Eight NUL bytes: the separator after a [`MetadataPrelude`].
pub const PRELUDE_SEPARATOR: [u8; 8] = [0; 8];

/// A streamed response: an optional HTTP prelude and a body stream. Return it from a
/// handler in place of a value.
///
/// A stream item that is an `Err` ends the response: the chunks sent so far stay sent,
/// and the error goes in the trailers. A panic while the stream produces an item
/// (`Runtime.HandlerPanic`) and a body past [`MAX_STREAM_BYTES`] end it the same way.
///
/// ```
/// use std::collections::HashMap;
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::streaming::{MetadataPrelude, StreamResponse};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// # fn main() -> Result<(), BoxError> {
/// let sim = Simulator::builder()
///     .max_concurrency(2)
///     .events(EventSource::repeat("3", 2))
///     // What reaches the API: the prelude's JSON, eight NUL bytes, then the body.
///     .validator(|_event, body| body.starts_with(br#"{"statusCode":200"#) && body.ends_with(b"\0line 0\nline 1\nline 2\n"))
///     .start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::new(2).unwrap())
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<u32>| async move {
///         let lines = (0..event.payload).map(|i| Ok::<_, BoxError>(format!("line {i}\n")));
///         let prelude = MetadataPrelude {
///             status_code: 200,
///             headers: HashMap::from([("content-type".to_owned(), "text/plain".to_owned())]),
///             ..MetadataPrelude::default()
///         };
///         Ok::<_, BoxError>(StreamResponse::new(futures_util::stream::iter(lines)).with_prelude(prelude))
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
/// let ledger = sim.shutdown();
/// assert_eq!((ledger.streamed, ledger.answered_ok, ledger.mismatched), (2, 2, 0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StreamResponse<S> {
    /// Status, headers and cookies for HTTP integrations (function URLs); `None` for a
    /// plain byte stream.
    pub metadata_prelude: Option<MetadataPrelude>,
    /// The body.
    pub stream: S,
}

impl<S> StreamResponse<S> {
    /// A streamed response without prelude.
    pub fn new(stream: S) -> Self {
        StreamResponse {
            metadata_prelude: None,
            stream,
        }
    }

    /// Adds an HTTP prelude (for function URLs and other HTTP integrations).
    pub fn with_prelude(mut self, prelude: MetadataPrelude) -> Self {
        self.metadata_prelude = Some(prelude);
        self
    }
}

/// The HTTP metadata sent before a streamed body for function URLs: serialized as JSON
/// (`statusCode`, `headers`, `cookies`), followed by [`PRELUDE_SEPARATOR`].
///
/// `Default` gives status code 0: set `status_code` (see [`StreamResponse`] for an
/// example).
///
/// ```
/// use lambda_tpc::streaming::MetadataPrelude;
///
/// let prelude = MetadataPrelude {
///     status_code: 302,
///     cookies: vec!["session=abc; Secure".to_owned()],
///     ..MetadataPrelude::default()
/// };
/// assert_eq!(
///     serde_json::to_string(&prelude)?,
///     r#"{"statusCode":302,"headers":{},"cookies":["session=abc; Secure"]}"#,
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataPrelude {
    /// HTTP status code.
    pub status_code: u16,
    /// Response headers.
    pub headers: HashMap<String, String>,
    /// `Set-Cookie` values.
    pub cookies: Vec<String>,
}

/// What a handler returns: a value serialized to JSON (buffered), or a
/// [`StreamResponse`]. Implemented for every `Serialize` type and for `StreamResponse`
/// (of a stream of `Result<B, E>` with `B: AsRef<[u8]>` and `E: Into<Diagnostic>`); there
/// is rarely a reason to implement it yourself.
///
/// ```
/// use lambda_tpc::streaming::{FunctionResponse, IntoFunctionResponse, NoStream, StreamResponse};
///
/// let buffered: FunctionResponse<u32, NoStream> = 42u32.into_function_response();
/// assert!(matches!(buffered, FunctionResponse::Buffered(42)));
///
/// let chunks = futures_util::stream::iter([Ok::<_, String>("a"), Ok("b")]);
/// let streamed = StreamResponse::new(chunks).into_function_response();
/// assert!(matches!(streamed, FunctionResponse::Streaming(_)));
/// ```
pub trait IntoFunctionResponse {
    /// The buffered value's type (`()` for a stream).
    type Buffered: Serialize;
    /// The stream's type ([`NoStream`] for a buffered value).
    type Stream: Stream<Item = Result<Self::Chunk, Self::Error>>;
    /// A chunk of a streamed body.
    type Chunk: AsRef<[u8]>;
    /// A mid-stream error.
    type Error: Into<Diagnostic>;

    /// Which of the two this response is.
    fn into_function_response(self) -> FunctionResponse<Self::Buffered, Self::Stream>;
}

/// A response that may cross threads with its stream (what the multi-thread tokio shim
/// needs). Implemented for every [`IntoFunctionResponse`] whose parts are `Send`.
///
/// Appears as a bound on `lambda_tpc::tokio::run_concurrent` (feature `tokio`), and on
/// your own code generic over handlers for it:
///
/// ```
/// use lambda_tpc::streaming::SendFunctionResponse;
///
/// fn check<R: SendFunctionResponse>() {}
/// check::<String>();
/// check::<serde_json::Value>();
/// ```
pub trait SendFunctionResponse:
    IntoFunctionResponse<Buffered: Send, Stream: Send, Chunk: Send, Error: Send> + Send
{
}

impl<T> SendFunctionResponse for T
where
    T: IntoFunctionResponse + Send,
    T::Buffered: Send,
    T::Stream: Send,
    T::Chunk: Send,
    T::Error: Send,
{
}

/// A response, buffered or streamed: what
/// [`IntoFunctionResponse::into_function_response`] returns (see there for an example).
#[derive(Debug)]
pub enum FunctionResponse<T, S> {
    /// Serialized to JSON and sent in one piece.
    Buffered(T),
    /// Sent chunk by chunk.
    Streaming(StreamResponse<S>),
}

impl<T: Serialize> IntoFunctionResponse for T {
    type Buffered = T;
    type Stream = NoStream;
    type Chunk = Vec<u8>;
    type Error = Diagnostic;

    fn into_function_response(self) -> FunctionResponse<T, NoStream> {
        FunctionResponse::Buffered(self)
    }
}

impl<S, B, E> IntoFunctionResponse for StreamResponse<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: Into<Diagnostic>,
{
    type Buffered = ();
    type Stream = S;
    type Chunk = B;
    type Error = E;

    fn into_function_response(self) -> FunctionResponse<(), S> {
        FunctionResponse::Streaming(self)
    }
}

/// The stream type of a buffered response: an uninhabited type, so the `Streaming` case of
/// its [`FunctionResponse`] cannot occur (see [`IntoFunctionResponse`] for an example).
#[derive(Debug)]
pub enum NoStream {}

impl Stream for NoStream {
    type Item = Result<Vec<u8>, Diagnostic>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match *self {}
    }
}

impl From<Infallible> for NoStream {
    fn from(e: Infallible) -> Self {
        match e {}
    }
}

/// Standard base64 with padding (RFC 4648 §4), for the error-body trailer.
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn prelude_json() {
        let p = MetadataPrelude {
            status_code: 201,
            headers: HashMap::from([("content-type".into(), "text/plain".into())]),
            cookies: vec!["a=b".into()],
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"statusCode":201,"headers":{"content-type":"text/plain"},"cookies":["a=b"]}"#
        );
    }
}
