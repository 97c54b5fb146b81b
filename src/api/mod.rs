//! The Lambda Runtime API: paths, headers, the invocation [`Context`], the
//! [`LambdaEvent`] handed to handlers, the [`Diagnostic`] posted for errors, and the
//! sans-IO encoding of every request the runtime sends.
//!
//! Nothing here does I/O; the executors in [`crate::compio`] (and the others) move the
//! bytes. Each `encode_*` function *appends* one request to a caller's buffer, so that a
//! result post and the next poll can go out in one write (see
//! [`ConfigBuilder::pipelining`](crate::ConfigBuilder::pipelining)):
//!
//! ```
//! use lambda_tpc::api::{RuntimeApi, encode_next, encode_response};
//!
//! let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
//! let mut buf = Vec::new();
//! let slot = encode_response(&mut buf, &api, "req-1", None)?;
//! serde_json::to_writer(&mut buf, &serde_json::json!({"ok": true})).unwrap();
//! slot.finish(&mut buf);
//! encode_next(&mut buf, &api)?;
//! let text = String::from_utf8(buf).unwrap();
//! assert!(text.starts_with("POST /2018-06-01/runtime/invocation/req-1/response HTTP/1.1\r\n"));
//! assert!(text.ends_with("{\"ok\":true}GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n"));
//! # Ok::<(), lambda_tpc::http::CodecError>(())
//! ```

mod context;
mod diagnostic;
mod endpoint;
mod requests;

pub use context::{
    ClientApplication, ClientContext, CognitoIdentity, Context, ContextError, FunctionEnv,
    InvalidInvocation, LambdaEvent, MAX_REQUEST_ID_BYTES, is_safe_request_id,
};
pub use diagnostic::Diagnostic;
pub use endpoint::{RESOLVE_PROBE_TIMEOUT, RuntimeApi};
pub use requests::{
    BodySlot, ERROR_TYPE_DEADLINE_EXCEEDED, ERROR_TYPE_DESERIALIZE, ERROR_TYPE_EVENT_READ,
    ERROR_TYPE_EVENT_TOO_LARGE, ERROR_TYPE_HANDLER_PANIC, ERROR_TYPE_INVALID_INVOCATION,
    ERROR_TYPE_RESPONSE_SERIALIZE, ERROR_TYPE_RESPONSE_TOO_LARGE, ERROR_TYPE_STREAM_FAILED,
    MAX_ENCODABLE_BODY_BYTES, encode_error, encode_init_error, encode_next, encode_response,
    encode_streaming_response_head, write_diagnostic_json,
};
pub(crate) use requests::{error_trailer_body, header_safe_error_type};

/// Path of the long poll for the next invocation.
pub const PATH_NEXT: &str = "/2018-06-01/runtime/invocation/next";
/// Prefix of the per-invocation paths; the request id follows.
pub const PATH_INVOCATION_PREFIX: &str = "/2018-06-01/runtime/invocation/";
/// Suffix (after the request id) of the path a successful result is posted to.
pub const PATH_RESPONSE_SUFFIX: &str = "/response";
/// Suffix (after the request id) of the path a handler error is posted to.
pub const PATH_ERROR_SUFFIX: &str = "/error";
/// Path an initialisation failure is posted to.
pub const PATH_INIT_ERROR: &str = "/2018-06-01/runtime/init/error";

/// Largest response body the Runtime API accepts for a buffered (non-streaming)
/// response: 6,291,556 bytes, the limit of AWS's own emulator. A larger result is not
/// sent; `Function.ResponseSizeTooLarge` is posted to `/error` instead.
pub const MAX_RESPONSE_BYTES: usize = 6_291_556;

/// Largest error body we post. AWS's emulator caps error bodies at 1 MiB; we truncate
/// the message to stay under it rather than have the error itself refused.
pub const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;

/// Largest trailer section lambda-tpc sends: the error type and base64 error body that
/// end a streamed response which failed, with their names, line ends and the blank line
/// closing the section. The Runtime API is served by Go's `net/http`, which reads a
/// request's trailers only if they fit its connection's 4 KiB read buffer; a longer
/// section fails the whole body ("suspiciously long trailer after chunked body") and the
/// stream's error is lost. The error message is cut to fit. The simulator
/// ([`crate::sim`]) refuses a longer section with 400, as a check.
pub const MAX_TRAILER_SECTION_BYTES: usize = 4096;

/// Name of the `tracing` span every invocation's handler runs in. It carries the fields
/// `requestId`, `xrayTraceId` and `tenantId` (the last two when present), and is entered on
/// every poll of the handler's future, so logs from handler code carry their invocation.
///
/// The span exists only when the subscriber enables [`INVOCATION_TARGET`] at `INFO`. The
/// JSON format of `lambda_tpc::logging` leaves it off and reads
/// [`Context::current`] instead, which costs no span per invocation.
pub const INVOCATION_SPAN: &str = "lambda_invocation";
/// Target of the [`INVOCATION_SPAN`] (level `INFO`): the directive
/// `lambda_tpc::invocation=info` turns the span on.
pub const INVOCATION_TARGET: &str = "lambda_tpc::invocation";

/// Header names of the Runtime API (matched ASCII case-insensitively when read).
///
/// ```
/// use lambda_tpc::api::header;
///
/// assert!(header::REQUEST_ID.eq_ignore_ascii_case("lambda-runtime-aws-request-id"));
/// ```
pub mod header {
    /// `/next` reply: the invocation's request id (required).
    pub const REQUEST_ID: &str = "Lambda-Runtime-Aws-Request-Id";
    /// `/next` reply: the deadline, epoch milliseconds (required).
    pub const DEADLINE_MS: &str = "Lambda-Runtime-Deadline-Ms";
    /// `/next` reply: ARN of the invoked function.
    pub const FUNCTION_ARN: &str = "Lambda-Runtime-Invoked-Function-Arn";
    /// `/next` reply: the X-Ray trace header.
    pub const TRACE_ID: &str = "Lambda-Runtime-Trace-Id";
    /// `/next` reply: the mobile client context, JSON (may be present but empty).
    pub const CLIENT_CONTEXT: &str = "Lambda-Runtime-Client-Context";
    /// `/next` reply: the Cognito identity, JSON (may be present but empty).
    pub const COGNITO_IDENTITY: &str = "Lambda-Runtime-Cognito-Identity";
    /// `/next` reply: the tenant id of a multi-tenant function.
    pub const TENANT_ID: &str = "Lambda-Runtime-Aws-Tenant-Id";
    /// `/next` reply, and echoed on the response or error post: lets the API reject a
    /// stale reply.
    pub const INVOCATION_ID: &str = "Lambda-Runtime-Invocation-Id";
    /// Error posts: the error type, e.g. `Runtime.HandlerPanic`.
    pub const FUNCTION_ERROR_TYPE: &str = "Lambda-Runtime-Function-Error-Type";
    /// Streaming responses: trailer carrying the base64 error body.
    pub const FUNCTION_ERROR_BODY: &str = "Lambda-Runtime-Function-Error-Body";
    /// Response posts: `streaming` for a streamed response.
    pub const RESPONSE_MODE: &str = "Lambda-Runtime-Function-Response-Mode";
    /// Streamed response posts: what the body is ([`CONTENT_TYPE_HTTP_INTEGRATION`] when
    /// it opens with an HTTP prelude); the API passes it on to the caller.
    ///
    /// [`CONTENT_TYPE_HTTP_INTEGRATION`]: super::CONTENT_TYPE_HTTP_INTEGRATION
    pub const CONTENT_TYPE: &str = "Content-Type";
}

/// `Content-Type` of a streamed response whose body opens with an HTTP prelude (status,
/// headers, cookies) and its eight NUL bytes. It is what tells Lambda's HTTP integrations
/// (function URLs) to take the prelude apart; without it the caller would get the prelude
/// inside the body and status 200. The official Rust and Node.js runtimes send the same.
pub const CONTENT_TYPE_HTTP_INTEGRATION: &str =
    "application/vnd.awslambda.http-integration-response";

/// `Content-Type` of a streamed response without prelude: raw bytes (the Node.js runtime's
/// default for a response stream).
pub const CONTENT_TYPE_OCTET_STREAM: &str = "application/octet-stream";
