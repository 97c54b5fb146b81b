//! The invocation context, built from the headers of a `/next` reply.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::header;

/// Longest request id accepted, in bytes. Real ids are 36-byte UUIDs; a longer one is
/// refused as [`ContextError::UnsafeRequestId`].
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// Whether `id` may be placed in a request path: 1 to [`MAX_REQUEST_ID_BYTES`] bytes of
/// ASCII letters, digits, `-`, `_`, `.` and `:`, and not `.` or `..` (which a server
/// could normalise into a different path). Anything else, such as
/// `../../runtime/init/error`, is refused before it reaches a request line.
///
/// ```
/// use lambda_tpc::api::is_safe_request_id;
///
/// assert!(is_safe_request_id(b"8476a536-e9f4-11e8-9739-2dfe598c3fcd"));
/// assert!(!is_safe_request_id(b"../../runtime/init/error"));
/// assert!(!is_safe_request_id(b"id HTTP/1.1\r\nHost: evil"));
/// assert!(!is_safe_request_id(b".."));
/// ```
pub fn is_safe_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id != b"."
        && id != b".."
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Why a `/next` reply could not be turned into a [`Context`]; the `error` of an
/// [`InvalidInvocation`].
///
/// ```
/// use lambda_tpc::api::{ContextError, header};
/// use lambda_tpc::Context;
///
/// let headers = [httparse::Header { name: header::REQUEST_ID, value: b"req-1" }];
/// let invalid = Context::from_headers(&headers).unwrap_err();
/// assert_eq!(invalid.error, ContextError::MissingDeadline);
/// assert_eq!(invalid.error.to_string(), "missing Lambda-Runtime-Deadline-Ms");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextError {
    /// No `Lambda-Runtime-Aws-Request-Id` header.
    MissingRequestId,
    /// The request id fails [`is_safe_request_id`].
    UnsafeRequestId,
    /// No `Lambda-Runtime-Deadline-Ms` header.
    MissingDeadline,
    /// The deadline is not a decimal number of milliseconds.
    InvalidDeadline,
    /// A header we keep is not valid UTF-8.
    NonUtf8Header,
}

impl ContextError {
    /// A short human-readable description (also the `Display` output).
    pub fn as_str(self) -> &'static str {
        match self {
            ContextError::MissingRequestId => "missing Lambda-Runtime-Aws-Request-Id",
            ContextError::UnsafeRequestId => "request id has characters unsafe in a path",
            ContextError::MissingDeadline => "missing Lambda-Runtime-Deadline-Ms",
            ContextError::InvalidDeadline => "Lambda-Runtime-Deadline-Ms is not a number",
            ContextError::NonUtf8Header => "a Lambda-Runtime header is not UTF-8",
        }
    }
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ContextError {}

/// A `/next` reply that was not a valid invocation: the error of
/// [`Context::from_headers`].
///
/// When its request id is usable the runtime still answers it (on `/error`, as
/// `Runtime.InvalidInvocation`), so the invocation is not left to time out.
///
/// ```
/// use lambda_tpc::api::{ContextError, header};
/// use lambda_tpc::Context;
///
/// let headers = [
///     httparse::Header { name: header::REQUEST_ID, value: b"req-1" },
///     httparse::Header { name: header::DEADLINE_MS, value: b"soon" },
/// ];
/// let invalid = Context::from_headers(&headers).unwrap_err();
/// assert_eq!(invalid.error, ContextError::InvalidDeadline);
/// // The id is safe, so the invocation can still be answered with an error.
/// assert_eq!(invalid.request_id.as_deref(), Some("req-1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInvocation {
    /// What was wrong.
    pub error: ContextError,
    /// The request id, when present and safe.
    pub request_id: Option<String>,
    /// The invocation id, when present and valid.
    pub invocation_id: Option<String>,
}

/// Header values up to this total size are gathered on the stack before the one
/// allocation of a [`Context`].
const CONTEXT_STACK_BYTES: usize = 1024;

/// Byte range of one value inside [`Context`]'s single string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// What a handler knows about its invocation.
///
/// Built once per invocation from the `/next` reply headers, with **one** allocation:
/// all header values live in one shared string and the accessors return slices of it.
/// Cloning is a reference-count increment. It is `Arc`, not `Rc`, so that a `Context`
/// can be moved into blocking or rayon work and used by the `Send` tokio shim; the count
/// is touched only by the core that owns the invocation, so the atomic never contends.
///
/// Unlike `lambda_runtime::Context`, fields are reached through methods
/// (`ctx.request_id()` instead of `ctx.request_id`).
///
/// ```
/// use std::time::Duration;
/// use lambda_tpc::{BoxError, Context, LambdaEvent};
///
/// async fn handler(event: LambdaEvent<String>) -> Result<String, BoxError> {
///     let ctx = &event.context;
///     if ctx.remaining() < Duration::from_millis(100) {
///         return Err("not enough time left".into());
///     }
///     Ok(format!("{} for {}", event.payload, ctx.request_id()))
/// }
///
/// // In a unit test, with a context made up for it:
/// use lambda_tpc::Executor;
/// let ctx = Context::for_test("req-1", Duration::from_secs(3));
/// let out = lambda_tpc::compio::CompioExecutor::default()
///     .block_on(handler(LambdaEvent::new("done".to_owned(), ctx)))?;
/// assert_eq!(out?, "done for req-1");
/// # Ok::<(), BoxError>(())
/// ```
#[derive(Clone)]
pub struct Context {
    raw: Arc<str>,
    request_id: Span,
    function_arn: Span,
    trace_id: Span,
    client_context: Span,
    identity: Span,
    tenant_id: Span,
    invocation_id: Span,
    deadline_ms: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("request_id", &self.request_id())
            .field("deadline_ms", &self.deadline_ms)
            .field("invoked_function_arn", &self.invoked_function_arn())
            .field("xray_trace_id", &self.xray_trace_id())
            .field("tenant_id", &self.tenant_id())
            .field("invocation_id", &self.invocation_id())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Builds a context from the header fields of a `/next` reply (names matched ASCII
    /// case-insensitively; headers that are not the Runtime API's are ignored; a repeated
    /// field keeps its first value).
    ///
    /// The request id and the deadline are required. A deadline too small to be epoch
    /// milliseconds (below September 2001) is read as relative, that many milliseconds
    /// from now: `cargo lambda watch` sends the function timeout there.
    ///
    /// # Errors
    ///
    /// An [`InvalidInvocation`] when the request id or the deadline is missing or unusable,
    /// or a kept header is not UTF-8; it carries the request id when that was safe, so the
    /// invocation can still be answered. A trace id that is not UTF-8 is dropped instead
    /// (the context has none): it only serves tracing, and the invocation is worth more.
    /// The tenant id is not treated so: a mangled tenant must not run as another.
    ///
    /// ```
    /// use lambda_tpc::api::header;
    /// use lambda_tpc::Context;
    ///
    /// let headers = [
    ///     httparse::Header { name: "lambda-runtime-aws-request-id", value: b"req-1" },
    ///     httparse::Header { name: header::DEADLINE_MS, value: b"1542409706888" },
    ///     httparse::Header { name: header::TENANT_ID, value: b"tenant-7" },
    ///     httparse::Header { name: "Content-Type", value: b"application/json" },
    /// ];
    /// let ctx = Context::from_headers(&headers).unwrap();
    /// assert_eq!(ctx.request_id(), "req-1");
    /// assert_eq!(ctx.deadline_ms(), 1542409706888);
    /// assert_eq!(ctx.tenant_id(), Some("tenant-7"));
    /// assert_eq!(ctx.xray_trace_id(), None);
    /// ```
    pub fn from_headers(headers: &[httparse::Header<'_>]) -> Result<Context, InvalidInvocation> {
        let mut request_id: Option<&[u8]> = None;
        let mut deadline: Option<&[u8]> = None;
        // Index order: arn, trace, client context, identity, tenant, invocation id.
        let mut optional: [Option<&[u8]>; 6] = [None; 6];
        for h in headers {
            // Every header we keep starts with "lambda-runtime-": skip the rest cheaply,
            // then tell ours apart by the length of the rest before comparing bytes.
            // (On bytes: a name is any `&str`, and byte 15 need not be a char boundary;
            // see `non_ascii_header_name`.)
            let name = h.name.as_bytes();
            if name.len() < 16 || !name[..15].eq_ignore_ascii_case(b"lambda-runtime-") {
                continue;
            }
            let rest = &name[15..];
            let is = |full: &str| rest.eq_ignore_ascii_case(&full.as_bytes()[15..]);
            let field = match rest.len() {
                14 if is(header::REQUEST_ID) => &mut request_id,
                14 if is(header::CLIENT_CONTEXT) => &mut optional[2],
                11 if is(header::DEADLINE_MS) => &mut deadline,
                20 if is(header::FUNCTION_ARN) => &mut optional[0],
                8 if is(header::TRACE_ID) => &mut optional[1],
                16 if is(header::COGNITO_IDENTITY) => &mut optional[3],
                13 if is(header::TENANT_ID) => &mut optional[4],
                13 if is(header::INVOCATION_ID) => &mut optional[5],
                _ => continue,
            };
            // A repeated field keeps its first value, as `http::HeaderMap::get` (and so
            // the official runtime) does: a later copy cannot replace the request id the
            // invocation is answered under.
            field.get_or_insert(h.value);
        }

        if optional[1].is_some_and(|v| std::str::from_utf8(v).is_err()) {
            optional[1] = None;
        }
        let invocation_id = optional[5]
            .filter(|v| !v.is_empty() && is_header_text(v))
            .and_then(|v| std::str::from_utf8(v).ok());
        let fail = |error: ContextError, id: Option<&[u8]>| InvalidInvocation {
            error,
            request_id: id
                .filter(|id| is_safe_request_id(id))
                .and_then(|id| std::str::from_utf8(id).ok())
                .map(str::to_owned),
            invocation_id: invocation_id.map(str::to_owned),
        };

        let Some(id) = request_id else {
            return Err(fail(ContextError::MissingRequestId, None));
        };
        if !is_safe_request_id(id) {
            return Err(fail(ContextError::UnsafeRequestId, None));
        }
        let Some(deadline) = deadline else {
            return Err(fail(ContextError::MissingDeadline, Some(id)));
        };
        let deadline_ms = parse_ms(deadline)
            .map(absolute_deadline)
            .ok_or_else(|| fail(ContextError::InvalidDeadline, Some(id)))?;

        // Concatenate the values on the stack and allocate once, for the `Arc`; only heads
        // with unusually large values (a full client context) take a second allocation.
        let total = id.len() + optional.iter().flatten().map(|v| v.len()).sum::<usize>();
        let mut stack = [0u8; CONTEXT_STACK_BYTES];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if total <= CONTEXT_STACK_BYTES {
            &mut stack[..total]
        } else {
            heap.resize(total, 0);
            &mut heap
        };
        let mut len = 0;
        let mut spans = [Span::default(); 7];
        let parts = std::iter::once((0, Some(id)))
            .chain(optional.iter().enumerate().map(|(i, v)| (i + 1, *v)));
        for (slot, value) in parts {
            if let Some(v) = value {
                if std::str::from_utf8(v).is_err() {
                    return Err(fail(ContextError::NonUtf8Header, Some(id)));
                }
                buf[len..len + v.len()].copy_from_slice(v);
                spans[slot] = Span {
                    start: len as u32,
                    end: (len + v.len()) as u32,
                };
                len += v.len();
            }
        }
        // Every part is valid UTF-8, so their concatenation is too.
        let raw = std::str::from_utf8(&buf[..len])
            .map_err(|_| fail(ContextError::NonUtf8Header, Some(id)))?;
        Ok(Context {
            raw: Arc::from(raw),
            request_id: spans[0],
            function_arn: spans[1],
            trace_id: spans[2],
            client_context: spans[3],
            identity: spans[4],
            tenant_id: spans[5],
            invocation_id: spans[6],
            deadline_ms,
        })
    }

    /// A context for tests and examples: the given request id, a deadline `timeout` from
    /// now (a timeout too long to express, `Duration::MAX` say, is the farthest deadline
    /// the header can carry), and no optional fields.
    ///
    /// # Panics
    /// If `request_id` is not a [safe request id](is_safe_request_id).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lambda_tpc::Context;
    ///
    /// let ctx = Context::for_test("req-1", Duration::from_secs(3));
    /// assert_eq!(ctx.request_id(), "req-1");
    /// assert!(ctx.remaining() > Duration::from_secs(2));
    /// assert_eq!(ctx.invoked_function_arn(), "");
    /// ```
    pub fn for_test(request_id: &str, timeout: Duration) -> Context {
        // The deadline header takes at most 19 digits.
        const FARTHEST_MS: u128 = 9_999_999_999_999_999_999;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let ms = now_ms
            .saturating_add(timeout.as_millis())
            .min(FARTHEST_MS)
            .to_string();
        let headers = [
            httparse::Header {
                name: header::REQUEST_ID,
                value: request_id.as_bytes(),
            },
            httparse::Header {
                name: header::DEADLINE_MS,
                value: ms.as_bytes(),
            },
        ];
        match Context::from_headers(&headers) {
            Ok(ctx) => ctx,
            Err(e) => panic!("Context::for_test: {}", e.error),
        }
    }

    fn get(&self, span: Span) -> &str {
        &self.raw[span.start as usize..span.end as usize]
    }

    fn get_opt(&self, span: Span) -> Option<&str> {
        Some(self.get(span)).filter(|s| !s.is_empty())
    }

    /// The request id (`Lambda-Runtime-Aws-Request-Id`); always a
    /// [safe request id](is_safe_request_id).
    pub fn request_id(&self) -> &str {
        self.get(self.request_id)
    }

    /// The deadline in milliseconds since the Unix epoch (a relative deadline from a local
    /// emulator was converted when the context was built).
    ///
    /// On Managed Instances the platform does not stop a handler at its deadline. The
    /// runtime does, by default: see
    /// [`ConfigBuilder::enforce_deadline`](crate::ConfigBuilder::enforce_deadline).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The deadline as a [`SystemTime`].
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.deadline_ms)
    }

    /// Time left before the deadline (zero once it has passed), e.g. to bound a call to
    /// another service.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lambda_tpc::Context;
    ///
    /// let ctx = Context::for_test("req-1", Duration::from_secs(3));
    /// // Leave 200 ms to post the answer.
    /// let budget = ctx.remaining().saturating_sub(Duration::from_millis(200));
    /// assert!(budget > Duration::from_secs(2));
    /// assert_eq!(Context::for_test("late", Duration::ZERO).remaining(), Duration::ZERO);
    /// ```
    pub fn remaining(&self) -> Duration {
        self.deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// ARN of the invoked function (empty if the API did not send one).
    pub fn invoked_function_arn(&self) -> &str {
        self.get(self.function_arn)
    }

    /// The X-Ray trace header (`Lambda-Runtime-Trace-Id`), if any.
    ///
    /// The runtime never copies it into `_X_AMZN_TRACE_ID`: with concurrent invocations
    /// a process-wide variable would be wrong for all but one of them.
    pub fn xray_trace_id(&self) -> Option<&str> {
        self.get_opt(self.trace_id)
    }

    /// The raw client context JSON, if any.
    pub fn client_context_raw(&self) -> Option<&str> {
        self.get_opt(self.client_context)
    }

    /// The client context, parsed (`None` if absent or empty). Parsed on each call.
    ///
    /// ```
    /// use lambda_tpc::api::header;
    /// use lambda_tpc::Context;
    ///
    /// let headers = [
    ///     httparse::Header { name: header::REQUEST_ID, value: b"req-1" },
    ///     httparse::Header { name: header::DEADLINE_MS, value: b"1542409706888" },
    ///     httparse::Header {
    ///         name: header::CLIENT_CONTEXT,
    ///         value: br#"{"client":{"app_title":"shop"},"custom":{"tier":"gold"},"env":{"locale":"en_GB"}}"#,
    ///     },
    /// ];
    /// let ctx = Context::from_headers(&headers).unwrap();
    /// let client = ctx.client_context().unwrap()?;
    /// assert_eq!(client.client.app_title, "shop");
    /// assert_eq!(client.custom["tier"], "gold");
    /// assert_eq!(client.environment["locale"], "en_GB");
    /// assert!(ctx.identity().is_none());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn client_context(&self) -> Option<Result<ClientContext, serde_json::Error>> {
        self.client_context_raw().map(serde_json::from_str)
    }

    /// The raw Cognito identity JSON, if any.
    pub fn identity_raw(&self) -> Option<&str> {
        self.get_opt(self.identity)
    }

    /// The Cognito identity, parsed (`None` if absent or empty). Parsed on each call;
    /// see [`client_context`](Self::client_context) for an example.
    pub fn identity(&self) -> Option<Result<CognitoIdentity, serde_json::Error>> {
        self.identity_raw().map(serde_json::from_str)
    }

    /// The tenant id (`Lambda-Runtime-Aws-Tenant-Id`), if any.
    pub fn tenant_id(&self) -> Option<&str> {
        self.get_opt(self.tenant_id)
    }

    /// The invocation id (`Lambda-Runtime-Invocation-Id`), if any; the runtime echoes it
    /// on the response or error post.
    pub fn invocation_id(&self) -> Option<&str> {
        self.get_opt(self.invocation_id)
            .filter(|v| is_header_text(v.as_bytes()))
    }

    /// The context of the invocation whose handler is running on this thread, if any.
    ///
    /// It lets code deep in a call stack find its request id without passing the context
    /// down. Returns a clone (a reference-count increment).
    ///
    /// Only set inside the handler's own future (not in tasks it spawns or closures sent
    /// to other threads), and only once a `tracing` subscriber has been installed (e.g.
    /// with `lambda_tpc::logging::init`): without one, nobody reads it, so the runtime
    /// does not pay for setting it on every poll.
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use std::time::Duration;
    /// use lambda_tpc::sim::{EventSource, Simulator};
    /// use lambda_tpc::{BoxError, Config, Context, Control, LambdaEvent};
    ///
    /// /// Deep in the call stack, with no context passed down.
    /// fn audit_line(what: &str) -> String {
    ///     match Context::current() {
    ///         Some(ctx) => format!("[{}] {what}", ctx.request_id()),
    ///         None => format!("[-] {what}"),
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), BoxError> {
    /// tracing::subscriber::set_global_default(tracing_subscriber::registry())?;
    /// assert_eq!(audit_line("start-up"), "[-] start-up"); // not in a handler
    ///
    /// let sim = Simulator::builder()
    ///     .max_concurrency(2)
    ///     .events(EventSource::repeat("{}", 3))
    ///     // Each response names its own invocation: `"[<request id>] charged"`.
    ///     .validator(|_event, response| response.starts_with(b"\"[") && !response.starts_with(b"\"[-]"))
    ///     .start()?;
    /// let control = Control::new();
    /// let config = Config::builder()
    ///     .runtime_api(sim.runtime_api())
    ///     .max_concurrency(NonZeroUsize::new(2).unwrap())
    ///     .control(control.clone())
    ///     .build_with(|_| None)?;
    /// let runtime = std::thread::spawn(move || {
    ///     lambda_tpc::compio::run_concurrent_with_config(config, |_: LambdaEvent<serde_json::Value>| async {
    ///         Ok::<_, BoxError>(audit_line("charged"))
    ///     })
    /// });
    /// assert!(sim.wait_until_done(Duration::from_secs(10)));
    /// control.shutdown();
    /// runtime.join().unwrap()?;
    /// let ledger = sim.shutdown();
    /// assert_eq!((ledger.answered_ok, ledger.mismatched), (3, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn current() -> Option<Context> {
        crate::runtime::core::current_context()
    }

    /// The function's static configuration (name, memory, version, log group and
    /// stream), read once from the process environment and shared by every invocation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lambda_tpc::Context;
    ///
    /// let ctx = Context::for_test("req-1", Duration::from_secs(3));
    /// let env = ctx.env();
    /// // Empty outside Lambda (unless AWS_LAMBDA_FUNCTION_NAME is set).
    /// println!("{} ({:?} MB)", env.function_name, env.memory_size_mb);
    /// ```
    pub fn env(&self) -> &'static FunctionEnv {
        FunctionEnv::get()
    }
}

/// A header value we may echo back verbatim: visible ASCII and spaces only.
fn is_header_text(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// Deadlines below this (September 2001, in epoch milliseconds) cannot be real.
const EARLIEST_EPOCH_DEADLINE_MS: u64 = 1_000_000_000_000;

/// The Runtime API sends the deadline in epoch milliseconds. Some local emulators
/// (`cargo lambda watch` 1.9, which sends `600000`) send the function timeout instead; read
/// under the epoch rule, that deadline is decades past and every handler would be "late".
/// A value that cannot be an epoch deadline is taken as that many milliseconds from now.
fn absolute_deadline(ms: u64) -> u64 {
    if ms >= EARLIEST_EPOCH_DEADLINE_MS {
        return ms;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add(ms)
}

fn parse_ms(v: &[u8]) -> Option<u64> {
    let v = crate::http::trim_ows(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')))
}

/// The function's static configuration, from the variables Lambda sets in every
/// execution environment. Read once, on first use, and shared by every core (it never
/// changes, so there is nothing to contend on). Reached with [`Context::env`].
///
/// ```
/// use lambda_tpc::api::FunctionEnv;
///
/// let env = FunctionEnv::from_process_env();
/// let managed = env.initialization_type == "lambda-managed-instances";
/// # let _ = managed;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionEnv {
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub function_name: String,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB, if set and numeric.
    pub memory_size_mb: Option<u32>,
    /// `AWS_LAMBDA_FUNCTION_VERSION`.
    pub version: String,
    /// `AWS_LAMBDA_LOG_STREAM_NAME`.
    pub log_stream: String,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`.
    pub log_group: String,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE` (`lambda-managed-instances` on Managed Instances).
    pub initialization_type: String,
}

impl FunctionEnv {
    /// Reads the variables from the process environment (missing ones are empty).
    pub fn from_process_env() -> FunctionEnv {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        FunctionEnv {
            function_name: var("AWS_LAMBDA_FUNCTION_NAME"),
            memory_size_mb: var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").trim().parse().ok(),
            version: var("AWS_LAMBDA_FUNCTION_VERSION"),
            log_stream: var("AWS_LAMBDA_LOG_STREAM_NAME"),
            log_group: var("AWS_LAMBDA_LOG_GROUP_NAME"),
            initialization_type: var("AWS_LAMBDA_INITIALIZATION_TYPE"),
        }
    }

    fn get() -> &'static FunctionEnv {
        static ENV: OnceLock<FunctionEnv> = OnceLock::new();
        ENV.get_or_init(FunctionEnv::from_process_env)
    }
}

/// The event and context handed to a handler.
///
/// `#[non_exhaustive]`: build one with [`new`](Self::new) (in tests, with
/// [`Context::for_test`]).
///
/// ```
/// use std::time::Duration;
/// use lambda_tpc::{Context, LambdaEvent};
///
/// let event = LambdaEvent::new(vec![1, 2, 3], Context::for_test("req-1", Duration::from_secs(1)));
/// assert_eq!(event.payload.len(), 3);
/// let (payload, context) = event.into_parts();
/// assert_eq!((payload, context.request_id()), (vec![1, 2, 3], "req-1"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LambdaEvent<T> {
    /// The deserialized event payload.
    pub payload: T,
    /// The invocation's context.
    pub context: Context,
}

impl<T> LambdaEvent<T> {
    /// Pairs a payload with its context.
    pub fn new(payload: T, context: Context) -> Self {
        LambdaEvent { payload, context }
    }

    /// Splits into payload and context.
    pub fn into_parts(self) -> (T, Context) {
        (self.payload, self.context)
    }
}

/// The client context sent by the AWS Mobile SDK; see [`Context::client_context`].
///
/// The keys are those Lambda sends and AWS's other runtimes read (`client`, `custom`,
/// `env`); `environment`, the key `lambda_runtime` expects, is accepted too. As in the Go
/// and Java runtimes, `custom` and `env` map strings to strings. Every field defaults when
/// absent, so a partial object parses:
///
/// ```
/// use lambda_tpc::api::ClientContext;
///
/// let cc: ClientContext = serde_json::from_str(r#"{"custom":{"tier":"gold"}}"#)?;
/// assert_eq!(cc.custom["tier"], "gold");
/// assert_eq!(cc.client.app_title, "");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientContext {
    /// Information about the mobile application.
    #[serde(default)]
    pub client: ClientApplication,
    /// Custom values set by the client application.
    #[serde(default)]
    pub custom: HashMap<String, String>,
    /// Environment values set by the SDK (key `env`).
    #[serde(default, rename = "env", alias = "environment")]
    pub environment: HashMap<String, String>,
}

/// The mobile application that invoked the function: the `client` object of a
/// [`ClientContext`]. Its keys are snake case on the wire (`app_title`), as the Mobile SDK
/// sends them; the camelCase keys `lambda_runtime` expects (`appTitle`) are accepted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientApplication {
    /// Installation id.
    #[serde(default, alias = "installationId")]
    pub installation_id: String,
    /// Application title.
    #[serde(default, alias = "appTitle")]
    pub app_title: String,
    /// Version name.
    #[serde(default, alias = "appVersionName")]
    pub app_version_name: String,
    /// Version code.
    #[serde(default, alias = "appVersionCode")]
    pub app_version_code: String,
    /// Package name.
    #[serde(default, alias = "appPackageName")]
    pub app_package_name: String,
}

/// The Amazon Cognito identity that authorised the request; see [`Context::identity`].
///
/// The keys are those the Runtime API sends (`cognitoIdentityId`, `cognitoIdentityPoolId`);
/// `identityId` and `identityPoolId`, the keys `lambda_runtime` expects, are accepted too.
///
/// ```
/// use lambda_tpc::api::CognitoIdentity;
///
/// let id: CognitoIdentity = serde_json::from_str(
///     r#"{"cognitoIdentityId":"eu-west-1:abc","cognitoIdentityPoolId":"eu-west-1:pool"}"#,
/// )?;
/// assert_eq!(id.identity_id, "eu-west-1:abc");
/// assert_eq!(id.identity_pool_id, "eu-west-1:pool");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CognitoIdentity {
    /// The Cognito identity id.
    #[serde(default, rename = "cognitoIdentityId", alias = "identityId")]
    pub identity_id: String,
    /// The Cognito identity pool id.
    #[serde(default, rename = "cognitoIdentityPoolId", alias = "identityPoolId")]
    pub identity_pool_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn full_context() {
        let headers = [
            hdr("Content-Type", "application/json"),
            hdr(
                "lambda-runtime-aws-request-id",
                "8476a536-e9f4-11e8-9739-2dfe598c3fcd",
            ),
            hdr("Lambda-Runtime-Deadline-Ms", "1542409706888"),
            hdr(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-2:1:function:f",
            ),
            hdr(
                "Lambda-Runtime-Trace-Id",
                "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419",
            ),
            hdr(
                "Lambda-Runtime-Client-Context",
                r#"{"client":{"app_title":"t"},"custom":{"k":"v"}}"#,
            ),
            hdr("Lambda-Runtime-Cognito-Identity", ""),
            hdr("Lambda-Runtime-Aws-Tenant-Id", "tenant-7"),
            hdr("Lambda-Runtime-Invocation-Id", "inv-1"),
        ];
        let ctx = Context::from_headers(&headers).unwrap();
        assert_eq!(ctx.request_id(), "8476a536-e9f4-11e8-9739-2dfe598c3fcd");
        assert_eq!(ctx.deadline_ms(), 1542409706888);
        assert_eq!(
            ctx.invoked_function_arn(),
            "arn:aws:lambda:us-east-2:1:function:f"
        );
        assert!(ctx.xray_trace_id().unwrap().starts_with("Root=1-5bef4de7"));
        let cc = ctx.client_context().unwrap().unwrap();
        assert_eq!(cc.client.app_title, "t");
        assert_eq!(cc.custom["k"], "v");
        assert!(ctx.identity().is_none(), "empty header means absent");
        assert_eq!(ctx.tenant_id(), Some("tenant-7"));
        assert_eq!(ctx.invocation_id(), Some("inv-1"));
    }

    /// A test context with a timeout too long to express has the farthest deadline
    /// instead of panicking (found by a review: `Duration::MAX` overflowed the clock).
    #[test]
    fn for_test_takes_any_timeout() {
        for timeout in [Duration::ZERO, Duration::from_secs(1 << 40), Duration::MAX] {
            let ctx = Context::for_test("r", timeout);
            assert!(
                ctx.remaining() <= timeout.max(Duration::from_millis(1)),
                "{timeout:?}"
            );
        }
        let far = Context::for_test("r", Duration::MAX);
        assert!(far.remaining() > Duration::from_secs(100 * 365 * 24 * 3600));
    }

    /// The shapes Lambda sends (the emulator's Go model for the identity; the Mobile SDK's
    /// client context, as AWS's Python, Java and Go runtimes read it), and the keys
    /// `lambda_runtime` expects.
    #[test]
    fn client_context_and_identity_wire_keys() {
        let wire = r#"{"client":{"installation_id":"i-1","app_title":"shop","app_version_name":"1.2","app_version_code":"12","app_package_name":"com.example.shop"},"custom":{"tier":"gold"},"env":{"platform":"Android","locale":"en_GB"}}"#;
        let legacy = r#"{"client":{"installationId":"i-1","appTitle":"shop","appVersionName":"1.2","appVersionCode":"12","appPackageName":"com.example.shop"},"custom":{"tier":"gold"},"environment":{"platform":"Android","locale":"en_GB"}}"#;
        for (case, json) in [("wire", wire), ("legacy", legacy)] {
            let cc: ClientContext = serde_json::from_str(json).expect(case);
            assert_eq!(
                (
                    cc.client.installation_id.as_str(),
                    cc.client.app_title.as_str(),
                    cc.client.app_version_name.as_str(),
                    cc.client.app_version_code.as_str(),
                    cc.client.app_package_name.as_str(),
                ),
                ("i-1", "shop", "1.2", "12", "com.example.shop"),
                "{case}"
            );
            assert_eq!(cc.custom["tier"], "gold", "{case}");
            assert_eq!(cc.environment["locale"], "en_GB", "{case}");
            assert_eq!(cc.environment.len(), 2, "{case}");
        }
        // Written back with the wire keys.
        let cc: ClientContext = serde_json::from_str(legacy).expect("legacy");
        let back = serde_json::to_value(&cc).expect("serialize");
        assert_eq!(back["client"]["app_title"], "shop");
        assert_eq!(back["env"]["locale"], "en_GB");

        for (case, json) in [
            (
                "wire",
                r#"{"cognitoIdentityId":"us-east-1:abc","cognitoIdentityPoolId":"us-east-1:pool"}"#,
            ),
            (
                "legacy",
                r#"{"identityId":"us-east-1:abc","identityPoolId":"us-east-1:pool"}"#,
            ),
        ] {
            let headers = [
                hdr(header::REQUEST_ID, "r"),
                hdr(header::DEADLINE_MS, "1"),
                hdr(header::COGNITO_IDENTITY, json),
            ];
            let ctx = Context::from_headers(&headers).expect(case);
            let id = ctx.identity().expect(case).expect(case);
            assert_eq!(
                (id.identity_id.as_str(), id.identity_pool_id.as_str()),
                ("us-east-1:abc", "us-east-1:pool"),
                "{case}"
            );
        }
    }

    #[test]
    fn errors_table() {
        let cases: Vec<(&str, Vec<httparse::Header<'_>>, ContextError, Option<&str>)> = vec![
            (
                "no id",
                vec![hdr(header::DEADLINE_MS, "1")],
                ContextError::MissingRequestId,
                None,
            ),
            (
                "traversal id",
                vec![
                    hdr(header::REQUEST_ID, "../../runtime/init/error"),
                    hdr(header::DEADLINE_MS, "1"),
                ],
                ContextError::UnsafeRequestId,
                None,
            ),
            (
                "crlf id",
                vec![
                    hdr(header::REQUEST_ID, "a\r\nb"),
                    hdr(header::DEADLINE_MS, "1"),
                ],
                ContextError::UnsafeRequestId,
                None,
            ),
            (
                "dotdot id",
                vec![hdr(header::REQUEST_ID, ".."), hdr(header::DEADLINE_MS, "1")],
                ContextError::UnsafeRequestId,
                None,
            ),
            (
                "no deadline",
                vec![hdr(header::REQUEST_ID, "abc")],
                ContextError::MissingDeadline,
                Some("abc"),
            ),
            (
                "bad deadline",
                vec![
                    hdr(header::REQUEST_ID, "abc"),
                    hdr(header::DEADLINE_MS, "12x"),
                ],
                ContextError::InvalidDeadline,
                Some("abc"),
            ),
            (
                "negative deadline",
                vec![
                    hdr(header::REQUEST_ID, "abc"),
                    hdr(header::DEADLINE_MS, "-1"),
                ],
                ContextError::InvalidDeadline,
                Some("abc"),
            ),
        ];
        for (name, headers, error, id) in cases {
            let err = Context::from_headers(&headers).unwrap_err();
            assert_eq!(err.error, error, "case {name}");
            assert_eq!(err.request_id.as_deref(), id, "case {name}");
        }
        let bad_utf8 = |name| {
            [
                hdr(header::REQUEST_ID, "abc"),
                hdr(header::DEADLINE_MS, "5"),
                httparse::Header {
                    name,
                    value: b"\xff\xfe",
                },
            ]
        };
        let err = Context::from_headers(&bad_utf8(header::TENANT_ID)).unwrap_err();
        assert_eq!(err.error, ContextError::NonUtf8Header);
        assert_eq!(err.request_id.as_deref(), Some("abc"));
        // Only the trace id is dropped rather than refused.
        let ctx = Context::from_headers(&bad_utf8(header::TRACE_ID)).unwrap();
        assert_eq!((ctx.request_id(), ctx.xray_trace_id()), ("abc", None));
    }

    /// A repeated field keeps its first value (as the official runtime, through
    /// `http::HeaderMap::get`, does).
    #[test]
    fn repeated_fields_keep_the_first_value() {
        let ctx = Context::from_headers(&[
            hdr(header::REQUEST_ID, "first"),
            hdr(header::DEADLINE_MS, "1542409706888"),
            hdr(header::TENANT_ID, "tenant-a"),
            hdr("LAMBDA-RUNTIME-AWS-REQUEST-ID", "second"),
            hdr(header::DEADLINE_MS, "1"),
            hdr(header::TENANT_ID, "tenant-b"),
        ])
        .unwrap();
        assert_eq!(ctx.request_id(), "first");
        assert_eq!(ctx.deadline_ms(), 1542409706888);
        assert_eq!(ctx.tenant_id(), Some("tenant-a"));
    }

    /// A head whose values do not fit the stack buffer (a large client context) builds
    /// the same context.
    #[test]
    fn large_values() {
        let big = format!(r#"{{"custom":{{"k":"{}"}}}}"#, "v".repeat(4000));
        let ctx = Context::from_headers(&[
            hdr(header::REQUEST_ID, "abc"),
            hdr(header::DEADLINE_MS, "1542409706888"),
            hdr(header::CLIENT_CONTEXT, &big),
            hdr(header::TENANT_ID, "t"),
        ])
        .unwrap();
        assert_eq!(ctx.request_id(), "abc");
        assert_eq!(ctx.client_context_raw(), Some(big.as_str()));
        assert_eq!(ctx.tenant_id(), Some("t"));
    }

    /// cargo-lambda sends the timeout (600000) where the API sends an epoch deadline.
    #[test]
    fn relative_deadline_from_emulators() {
        let ctx = Context::from_headers(&[
            hdr(header::REQUEST_ID, "a"),
            hdr(header::DEADLINE_MS, "600000"),
        ])
        .unwrap();
        let left = ctx.remaining();
        assert!(
            left > Duration::from_secs(590) && left <= Duration::from_secs(600),
            "{left:?}"
        );
        let epoch = Context::from_headers(&[
            hdr(header::REQUEST_ID, "a"),
            hdr(header::DEADLINE_MS, "1542409706888"),
        ])
        .unwrap();
        assert_eq!(epoch.deadline_ms(), 1542409706888);
    }

    /// Found by the fuzz seeds: a non-ASCII header name whose byte 15 is inside a
    /// character made the prefix check, then `&h.name[..15]`, slice a `&str` off a char
    /// boundary and panic.
    #[test]
    fn non_ascii_header_name() {
        let headers = [
            hdr("Lambda-Runtime\u{e9}: x", "v"),
            hdr("Lambda-Runtime\u{e9}", "v"),
            hdr("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}", "v"),
            hdr(header::REQUEST_ID, "abc"),
            hdr(header::DEADLINE_MS, "1"),
        ];
        let ctx = Context::from_headers(&headers).unwrap();
        assert_eq!(ctx.request_id(), "abc");
    }

    #[test]
    fn safe_ids() {
        let long = "a".repeat(MAX_REQUEST_ID_BYTES + 1);
        for (id, ok) in [
            ("8476a536-e9f4-11e8-9739-2dfe598c3fcd", true),
            ("a.b:c_d-e", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
            ("a%2f", false),
            ("a?b", false),
            (long.as_str(), false),
        ] {
            assert_eq!(is_safe_request_id(id.as_bytes()), ok, "{id:?}");
        }
    }

    #[test]
    fn for_test_context() {
        let ctx = Context::for_test("req-1", Duration::from_secs(3));
        assert_eq!(ctx.request_id(), "req-1");
        assert!(ctx.remaining() > Duration::from_secs(1));
        let clone = ctx.clone();
        assert_eq!(clone.request_id(), "req-1");
    }
}
