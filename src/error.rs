//! The public error type.
//!
//! Two tiers, as in hyper: the codec returns a small `Copy` enum
//! ([`crate::http::CodecError`]) on the hot path; everything that reaches a caller is one
//! opaque [`Error`] that answers questions through `is_*()` predicates, so variants can be
//! added without breaking anyone's `match`.

use std::fmt;

use crate::api::ContextError;
use crate::http::CodecError;

/// A boxed error, the usual error type of a handler (`?` converts any error into it).
/// The counterpart of `lambda_runtime::Error`.
///
/// It is posted under the box's type name; return your own error type with a
/// `From<YourError> for`[`Diagnostic`](crate::Diagnostic) for a meaningful `errorType`.
///
/// ```
/// use lambda_tpc::{BoxError, LambdaEvent};
///
/// async fn handler(event: LambdaEvent<String>) -> Result<u32, BoxError> {
///     let n: u32 = event.payload.trim().parse()?; // ParseIntError -> BoxError
///     if n == 0 {
///         return Err("zero is not allowed".into()); // &str -> BoxError
///     }
///     Ok(n * 2)
/// }
/// # let _ = handler;
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error from the runtime: configuration, I/O, protocol, or the Runtime API itself.
///
/// Opaque: ask it what it is with the `is_*()` predicates. `Display` gives a one-line
/// description (with its source, if any), suitable for logs.
///
/// What the run functions return:
///
/// * configuration errors ([`is_config`](Self::is_config)), before anything starts;
/// * I/O errors ([`is_io`](Self::is_io)) when the Runtime API's host does not resolve;
/// * start-up errors ([`is_startup`](Self::is_startup)) when a core's thread or runtime
///   cannot be created;
/// * initialisation errors ([`is_init`](Self::is_init)) when a per-core handler factory
///   failed (after posting `/runtime/init/error`);
/// * container errors ([`is_container_error`](Self::is_container_error)) when the
///   Runtime API answers `/next` with 500 or 403: the environment is going away;
/// * unreachable errors ([`is_unreachable`](Self::is_unreachable)) when `/next` kept
///   failing for the configured time;
/// * core failures ([`is_core_failure`](Self::is_core_failure)) when a core's thread
///   panicked while serving (a bug of ours; the other cores served on), or was still
///   blocked in handler code at the end of the shutdown grace period.
///
/// Other I/O and protocol failures while serving are logged and retried, not returned.
///
/// ```
/// use lambda_tpc::Config;
///
/// let err = Config::builder().build_with(|_| None).unwrap_err();
/// assert!(err.is_config());
/// assert_eq!(err.config_var(), Some("AWS_LAMBDA_RUNTIME_API"));
/// assert!(err.to_string().starts_with("invalid configuration: AWS_LAMBDA_RUNTIME_API: not set"));
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    source: Option<BoxError>,
}

/// What a failed `/next` is called in [`Kind::Status`] (and so in messages): the
/// request as sent, after the endpoint's prefix (a test holds it to
/// [`crate::api::PATH_NEXT`]).
pub(crate) const NEXT_REQUEST: &str = "GET /2018-06-01/runtime/invocation/next";

/// What an I/O error while reading a reply is called in [`Kind::Io`].
pub(crate) const READING_A_RESPONSE: &str = "reading a response";

#[derive(Debug)]
pub(crate) enum Kind {
    /// A configuration value (from the builder or the environment) is invalid.
    Config {
        /// The environment variable it came from, if any.
        var: Option<&'static str>,
        message: String,
    },
    /// A socket operation failed.
    Io { what: &'static str },
    /// The peer sent something the codec refused, or closed the connection in the middle
    /// of a reply.
    Codec(CodecError),
    /// The peer closed the connection before any byte of its reply.
    Closed,
    /// A `/next` reply had unusable headers.
    Context(ContextError),
    /// The Runtime API answered with an unexpected status.
    Status {
        status: u16,
        what: &'static str,
        body: String,
    },
    /// Building the handler (the per-core factory) failed; reported to `/init/error`.
    Init { message: String },
    /// The runtime could not start (runtime build, thread spawn, affinity).
    Startup { message: String },
    /// `/next` kept failing to reach the Runtime API at `api` for this long; the source
    /// is the last failure.
    Unreachable {
        after: std::time::Duration,
        api: String,
    },
    /// The Runtime API did not reply to a post within this long (the unreachable
    /// timeout); the connection was closed.
    NoReply { after: std::time::Duration },
    /// The Runtime API stopped reading a post (its socket buffers full) for this long (the
    /// unreachable timeout); the connection was closed.
    Stalled { after: std::time::Duration },
    /// A core's thread ended in a panic while serving (a bug in lambda-tpc: handler
    /// panics are caught; the other cores served on until shutdown), or was still blocked
    /// in handler code when the shutdown grace period ended (it was left behind).
    CoreFailed { core: usize, how: &'static str },
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner { kind, source: None }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn config(var: Option<&'static str>, message: impl Into<String>) -> Self {
        Error::new(Kind::Config {
            var,
            message: message.into(),
        })
    }

    pub(crate) fn io(what: &'static str, e: std::io::Error) -> Self {
        Error::new(Kind::Io { what }).with_source(e)
    }

    pub(crate) fn closed() -> Self {
        Error::new(Kind::Closed)
    }

    pub(crate) fn no_reply(after: std::time::Duration) -> Self {
        Error::new(Kind::NoReply { after })
    }

    pub(crate) fn stalled(after: std::time::Duration) -> Self {
        Error::new(Kind::Stalled { after })
    }

    /// A post's reply given up on ([`Error::no_reply`]): the API is hung.
    pub(crate) fn is_no_reply(&self) -> bool {
        matches!(self.inner.kind, Kind::NoReply { .. })
    }

    /// A send given up because the peer stopped reading ([`Error::stalled`]): not to be
    /// sent again, the API is hung.
    pub(crate) fn is_stalled(&self) -> bool {
        matches!(self.inner.kind, Kind::Stalled { .. })
    }

    /// The request went out and reading its reply failed: the connection closed or broke
    /// before or during the reply (not a refused connection, a failed send, or a reply
    /// with an unexpected status or bad syntax).
    pub(crate) fn is_reply_read_failure(&self) -> bool {
        match &self.inner.kind {
            Kind::Closed | Kind::Codec(CodecError::UnexpectedEof) => true,
            Kind::Io { what } => *what == READING_A_RESPONSE,
            _ => false,
        }
    }

    pub(crate) fn status(status: u16, what: &'static str, body: &[u8]) -> Self {
        // Keep enough of the body to diagnose, never the whole of it.
        let shown = &body[..body.len().min(512)];
        Error::new(Kind::Status {
            status,
            what,
            body: String::from_utf8_lossy(shown).into_owned(),
        })
    }

    pub(crate) fn init(message: impl Into<String>) -> Self {
        Error::new(Kind::Init {
            message: message.into(),
        })
    }

    pub(crate) fn unreachable(after: std::time::Duration, api: String, last: Error) -> Self {
        Error::new(Kind::Unreachable { after, api }).with_source(last)
    }

    pub(crate) fn core_failed(core: usize, how: &'static str) -> Self {
        Error::new(Kind::CoreFailed { core, how })
    }

    pub(crate) fn startup(message: impl Into<String>) -> Self {
        Error::new(Kind::Startup {
            message: message.into(),
        })
    }

    /// A configuration value (builder or environment) was invalid or missing.
    pub fn is_config(&self) -> bool {
        matches!(self.inner.kind, Kind::Config { .. })
    }

    /// The environment variable a configuration error came from (`None` for a value set
    /// with the builder, or an error of another kind).
    pub fn config_var(&self) -> Option<&'static str> {
        match self.inner.kind {
            Kind::Config { var, .. } => var,
            _ => None,
        }
    }

    /// A socket or resolver operation failed (resolve, connect, read, write); the
    /// `std::io::Error` is the [`source`](std::error::Error::source).
    pub fn is_io(&self) -> bool {
        matches!(self.inner.kind, Kind::Io { .. })
    }

    /// The Runtime API sent bytes that are not valid HTTP, exceeded a codec limit, or
    /// closed the connection in the middle of a reply; or (rarely) a request could not be
    /// encoded ([`CodecError::InvalidRequestPart`]).
    pub fn is_protocol(&self) -> bool {
        matches!(self.inner.kind, Kind::Codec(_))
    }

    /// The codec error, for protocol errors.
    ///
    /// ```
    /// use lambda_tpc::http::CodecError;
    ///
    /// let err = lambda_tpc::Error::from(CodecError::HeadTooLarge);
    /// assert_eq!(err.codec_error(), Some(CodecError::HeadTooLarge));
    /// assert_eq!(err.to_string(), "Runtime API protocol error: response head too large");
    /// ```
    pub fn codec_error(&self) -> Option<CodecError> {
        match self.inner.kind {
            Kind::Codec(e) => Some(e),
            _ => None,
        }
    }

    /// A `/next` reply's headers did not describe a usable invocation (made from a
    /// [`ContextError`]). The runtime answers such replies itself; the run functions do
    /// not return this.
    pub fn is_invalid_invocation(&self) -> bool {
        matches!(self.inner.kind, Kind::Context(_))
    }

    /// The Runtime API answered with an unexpected HTTP status.
    pub fn is_status(&self) -> bool {
        matches!(self.inner.kind, Kind::Status { .. })
    }

    /// The unexpected HTTP status, if this is a status error.
    pub fn status_code(&self) -> Option<u16> {
        match self.inner.kind {
            Kind::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The Runtime API reported a container error (500 or 403 on `/next`): the
    /// environment is being torn down and the runtime must exit.
    pub fn is_container_error(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Status {
                status: 500 | 403,
                what: NEXT_REQUEST,
                ..
            }
        )
    }

    /// Handler initialisation (the per-core factory) failed.
    pub fn is_init(&self) -> bool {
        matches!(self.inner.kind, Kind::Init { .. })
    }

    /// The runtime could not start: a runtime or thread could not be created.
    pub fn is_startup(&self) -> bool {
        matches!(self.inner.kind, Kind::Startup { .. })
    }

    /// A core did not end cleanly: its thread panicked while serving, outside any handler
    /// (a bug in lambda-tpc; the run went on with the other cores), or it was still
    /// blocked in handler code when the shutdown grace period ended (the run returned
    /// without it, its invocations unanswered). Returned at the end of the run, so that
    /// neither is mistaken for a clean run.
    pub fn is_core_failure(&self) -> bool {
        matches!(self.inner.kind, Kind::CoreFailed { .. })
    }

    /// `/next` kept failing to reach the Runtime API for longer than the
    /// [unreachable timeout](crate::config::ConfigBuilder::unreachable_timeout); the
    /// [source](std::error::Error::source) is the last failure.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.inner.kind, Kind::Unreachable { .. })
    }

    /// The Runtime API closed the connection before any byte of its reply: typically a
    /// keep-alive connection it had closed while idle, so the request may not have been
    /// received and is sent again on a fresh connection. A close in the middle of a
    /// reply is a protocol error ([`CodecError::UnexpectedEof`]) instead: the request was
    /// received, and posting a result again would be refused as a duplicate.
    pub fn is_closed(&self) -> bool {
        matches!(self.inner.kind, Kind::Closed)
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::new(Kind::Codec(e))
    }
}

impl From<ContextError> for Error {
    fn from(e: ContextError) -> Self {
        Error::new(Kind::Context(e))
    }
}

/// The message, as [`Display`](fmt::Display) gives it: a `main` that returns this error
/// prints it (Rust prints the `Debug` form) and it should read as a message there, not
/// as a struct. The alternate form (`{:#?}`) shows the structure.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::Config {
                var: Some(var),
                message,
            } => write!(f, "invalid configuration: {var}: {message}")?,
            Kind::Config { var: None, message } => write!(f, "invalid configuration: {message}")?,
            Kind::Io { what } => write!(f, "I/O error while {what}")?,
            Kind::Codec(e) => write!(f, "Runtime API protocol error: {e}")?,
            Kind::Closed => f.write_str("the Runtime API closed the connection before replying")?,
            Kind::Context(e) => write!(f, "invalid invocation: {e}")?,
            Kind::Status { status, what, body } => {
                write!(f, "Runtime API answered {status} to {what}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
            }
            Kind::Init { message } => write!(f, "handler initialisation failed: {message}")?,
            Kind::Startup { message } => write!(f, "runtime start-up failed: {message}")?,
            Kind::CoreFailed { core, how } => write!(f, "core {core} {how}")?,
            Kind::NoReply { after } => write!(
                f,
                "the Runtime API did not reply to a post within {} ms",
                after.as_millis()
            )?,
            Kind::Stalled { after } => write!(
                f,
                "the Runtime API stopped reading a post for {} ms",
                after.as_millis()
            )?,
            Kind::Unreachable { after, api } => write!(
                f,
                "no invocation could be fetched from the Runtime API at {api} for {} ms \
                 (retried with backoff; last failure",
                after.as_millis()
            )?,
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        if let Kind::Unreachable { .. } = self.inner.kind {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_and_display() {
        let e = Error::config(
            Some("AWS_LAMBDA_MAX_CONCURRENCY"),
            "expected a positive integer, got \"abc\"",
        );
        assert!(e.is_config() && !e.is_io());
        assert_eq!(e.config_var(), Some("AWS_LAMBDA_MAX_CONCURRENCY"));
        assert_eq!(
            e.to_string(),
            "invalid configuration: AWS_LAMBDA_MAX_CONCURRENCY: expected a positive integer, got \"abc\""
        );
        let e = Error::status(500, NEXT_REQUEST, b"{\"errorType\":\"x\"}");
        assert!(e.is_status() && e.is_container_error());
        assert_eq!(e.status_code(), Some(500));
        let e = Error::status(400, "response", b"");
        assert!(!e.is_container_error());
        // `Debug` is the message (what a `main` returning the error prints); `{:#?}` the
        // structure.
        let e = Error::config(Some("AWS_LAMBDA_RUNTIME_API"), "not set");
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(format!("{e:#?}").contains("Config"));
        let e = Error::unreachable(
            std::time::Duration::from_millis(2215),
            "127.0.0.1:9004/wrong".into(),
            Error::status(404, NEXT_REQUEST, b""),
        );
        assert!(e.is_unreachable());
        assert_eq!(
            e.to_string(),
            "no invocation could be fetched from the Runtime API at 127.0.0.1:9004/wrong for \
             2215 ms (retried with backoff; last failure: Runtime API answered 404 to GET \
             /2018-06-01/runtime/invocation/next)"
        );
        assert_eq!(
            NEXT_REQUEST.strip_prefix("GET "),
            Some(crate::api::PATH_NEXT),
            "messages name the path actually requested"
        );
        let e: Error = CodecError::UnexpectedEof.into();
        assert!(e.is_protocol() && !e.is_closed());
        let e = Error::closed();
        assert!(e.is_closed() && !e.is_protocol());
        assert_eq!(
            e.to_string(),
            "the Runtime API closed the connection before replying"
        );
        let e = Error::io("connecting", std::io::Error::other("refused"));
        assert_eq!(e.to_string(), "I/O error while connecting: refused");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            std::mem::size_of::<Result<(), Error>>(),
            std::mem::size_of::<usize>()
        );
    }
}
