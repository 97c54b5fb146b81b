//! Logging set up the way Lambda expects it (feature `logging`).
//!
//! Managed Instances accept only JSON logs. [`init`] installs a `tracing` subscriber that
//! honours `AWS_LAMBDA_LOG_FORMAT` (`JSON` or `Text`, compared case-insensitively; JSON when
//! `AWS_LAMBDA_INITIALIZATION_TYPE` is `lambda-managed-instances`, text otherwise) and the
//! level from `AWS_LAMBDA_LOG_LEVEL` (`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`),
//! else `RUST_LOG`, else `INFO`. In JSON, each line is one object:
//!
//! ```text
//! {"timestamp":"2026-11-27T21:05:01.123Z","level":"INFO","message":"hello","requestId":"8476a536-e9f4-11e8-9739-2dfe598c3fcd","xrayTraceId":"Root=1-...","target":"my_fn","user":"alice"}
//! ```
//!
//! Every invocation runs inside a span named [`INVOCATION_SPAN`] carrying `requestId`,
//! `xrayTraceId` and `tenantId` (when present), entered on every poll of the handler's
//! future, and the runtime marks the invocation being polled on the thread
//! ([`Context::current`](crate::Context::current)). So a log line written by handler code,
//! at any await depth, names the invocation it belongs to, even with dozens of
//! invocations interleaved on one core. Both formatters ([`JsonLines`], [`TextLines`])
//! read the thread's current invocation and so need no span (and no span allocation per
//! invocation); with your own subscriber, enable target [`INVOCATION_TARGET`] at `INFO` to
//! get the span. In text, a line is `timestamp<TAB>requestId<TAB>LEVEL<TAB>target: message
//! fields`, without colours.
//!
//! The X-Ray trace id is in the span and in [`Context::xray_trace_id`]; the runtime
//! never sets `_X_AMZN_TRACE_ID`: one process-wide variable cannot hold the trace ids of
//! concurrent invocations.
//!
//! [`Context::xray_trace_id`]: crate::Context::xray_trace_id
//!
//! ```no_run
//! fn main() -> Result<(), lambda_tpc::Error> {
//!     lambda_tpc::logging::init()?;
//!     lambda_tpc::compio::run_concurrent(|event: lambda_tpc::LambdaEvent<serde_json::Value>| async move {
//!         tracing::info!(user = "alice", "hello");
//!         Ok::<_, lambda_tpc::BoxError>(event.payload)
//!     })
//! }
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::error::Error;

pub use crate::api::{INVOCATION_SPAN, INVOCATION_TARGET};

/// `AWS_LAMBDA_LOG_FORMAT`
pub const ENV_LOG_FORMAT: &str = "AWS_LAMBDA_LOG_FORMAT";
/// `AWS_LAMBDA_LOG_LEVEL`
pub const ENV_LOG_LEVEL: &str = "AWS_LAMBDA_LOG_LEVEL";

/// The log line format, from `AWS_LAMBDA_LOG_FORMAT` (see [`LogSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line (required on Managed Instances).
    Json,
    /// Human-readable text.
    Text,
}

/// What [`init`] would install, read from the environment.
///
/// ```
/// use lambda_tpc::logging::{LogFormat, LogSettings};
///
/// let managed = LogSettings::from_env_with(|k| match k {
///     "AWS_LAMBDA_INITIALIZATION_TYPE" => Some("lambda-managed-instances".to_owned()),
///     "AWS_LAMBDA_LOG_LEVEL" => Some("WARN".to_owned()),
///     _ => None,
/// })?;
/// assert_eq!(managed, LogSettings { format: LogFormat::Json, filter: "warn".to_owned() });
///
/// let local = LogSettings::from_env_with(|k| (k == "RUST_LOG").then(|| "my_fn=debug".to_owned()))?;
/// assert_eq!(local, LogSettings { format: LogFormat::Text, filter: "my_fn=debug".to_owned() });
/// # Ok::<(), lambda_tpc::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The format.
    pub format: LogFormat,
    /// The filter directives (an `EnvFilter` string): the lower-cased
    /// `AWS_LAMBDA_LOG_LEVEL` (`FATAL` becomes `error`), else `RUST_LOG`, else `info`.
    pub filter: String,
}

impl LogSettings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    ///
    /// A configuration error naming the variable when `AWS_LAMBDA_LOG_FORMAT` or
    /// `AWS_LAMBDA_LOG_LEVEL` has an unknown value, or the resulting filter does not parse
    /// (a bad `RUST_LOG`).
    pub fn from_env() -> Result<LogSettings, Error> {
        // Lossy, like the runtime's configuration: a value that is not UTF-8 is refused
        // as a bad value rather than taken for unset.
        LogSettings::from_env_with(|k| {
            std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Reads the settings through `env` (for tests). See the [type docs](Self) for an
    /// example.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn from_env_with(env: impl Fn(&str) -> Option<String>) -> Result<LogSettings, Error> {
        let format = match env(ENV_LOG_FORMAT) {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => {
                    return Err(Error::config(
                        Some(ENV_LOG_FORMAT),
                        format!("expected JSON or Text, got {v:?}"),
                    ));
                }
            },
            None if env("AWS_LAMBDA_INITIALIZATION_TYPE")
                .is_some_and(|t| t.eq_ignore_ascii_case("lambda-managed-instances")) =>
            {
                LogFormat::Json
            }
            None => LogFormat::Text,
        };
        let filter = match env(ENV_LOG_LEVEL) {
            Some(v) => {
                let level = match v.trim().to_ascii_lowercase().as_str() {
                    "trace" => "trace",
                    "debug" => "debug",
                    "info" => "info",
                    "warn" => "warn",
                    "error" | "fatal" => "error",
                    _ => {
                        return Err(Error::config(
                            Some(ENV_LOG_LEVEL),
                            format!("expected TRACE, DEBUG, INFO, WARN, ERROR or FATAL, got {v:?}"),
                        ));
                    }
                };
                level.to_owned()
            }
            // A blank RUST_LOG (`RUST_LOG=` in an env file) is unset, not "log nothing".
            None => env("RUST_LOG")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "info".to_owned()),
        };
        // Validate now, so a bad RUST_LOG is an error at start-up, not silence.
        EnvFilter::builder().parse(&filter).map_err(|e| {
            Error::config(Some("RUST_LOG"), format!("invalid filter {filter:?}: {e}"))
        })?;
        Ok(LogSettings { format, filter })
    }
}

/// Installs the global subscriber described by the environment, writing to stdout. Call
/// it first thing in `main`, before the runtime starts.
///
/// # Errors
///
/// A configuration error for invalid settings (see [`LogSettings::from_env`]), or if a
/// global subscriber is already installed.
///
/// ```
/// fn main() -> Result<(), lambda_tpc::Error> {
///     lambda_tpc::logging::init()?;
///     tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
///     assert!(lambda_tpc::logging::init().is_err(), "only once per process");
///     Ok(())
/// }
/// ```
pub fn init() -> Result<(), Error> {
    init_with_writer(LogSettings::from_env()?, std::io::stdout)
}

/// Installs the global subscriber for `settings`, writing to `writer` (any
/// `tracing_subscriber` `MakeWriter`: `std::io::stderr`, a file, a closure returning an
/// `io::Write`).
///
/// # Errors
///
/// A configuration error if a global subscriber is already installed.
///
/// Capturing the JSON lines of a run against the simulator, as a test of a function's
/// logging would:
///
/// ```
/// use std::io::Write;
/// use std::num::NonZeroUsize;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use lambda_tpc::logging::{LogSettings, init_with_writer};
/// use lambda_tpc::sim::{EventSource, Simulator};
/// use lambda_tpc::{BoxError, Config, Control, LambdaEvent};
///
/// /// An `io::Write` into a shared buffer.
/// #[derive(Clone, Default)]
/// struct Capture(Arc<Mutex<Vec<u8>>>);
///
/// impl Write for Capture {
///     fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
///         self.0.lock().unwrap().extend_from_slice(bytes);
///         Ok(bytes.len())
///     }
///     fn flush(&mut self) -> std::io::Result<()> {
///         Ok(())
///     }
/// }
///
/// # fn main() -> Result<(), BoxError> {
/// let logs = Capture::default();
/// let writer = logs.clone();
/// let settings = LogSettings::from_env_with(|k| (k == "AWS_LAMBDA_LOG_FORMAT").then(|| "JSON".to_owned()))?;
/// init_with_writer(settings, move || writer.clone())?;
///
/// let sim = Simulator::builder().max_concurrency(1).events(EventSource::repeat(r#""ada""#, 1)).start()?;
/// let control = Control::new();
/// let config = Config::builder()
///     .runtime_api(sim.runtime_api())
///     .max_concurrency(NonZeroUsize::MIN)
///     .control(control.clone())
///     .build_with(|_| None)?;
/// let runtime = std::thread::spawn(move || {
///     lambda_tpc::compio::run_concurrent_with_config(config, |event: LambdaEvent<String>| async move {
///         tracing::info!(user = %event.payload, "charged");
///         Ok::<_, BoxError>(())
///     })
/// });
/// assert!(sim.wait_until_done(Duration::from_secs(10)));
/// control.shutdown();
/// runtime.join().unwrap()?;
///
/// let logs = String::from_utf8(logs.0.lock().unwrap().clone())?;
/// let line = logs.lines().find(|l| l.contains(r#""message":"charged""#)).expect("logged");
/// let line: serde_json::Value = serde_json::from_str(line)?;
/// assert_eq!(line["level"], "INFO");
/// assert_eq!(line["user"], "ada");
/// assert_eq!(line["requestId"], sim.request_id(0)); // the invocation that logged it
/// assert!(line["xrayTraceId"].as_str().unwrap().starts_with("Root=1-"));
/// # Ok(())
/// # }
/// ```
pub fn init_with_writer<W>(settings: LogSettings, writer: W) -> Result<(), Error>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let result = match settings.format {
        // JSON lines take their ids from the invocation being polled on the thread, so the
        // invocation span need not be enabled (no span allocation per invocation); an
        // enclosing invocation span is used when the user's filter enables it.
        LogFormat::Json => tracing::subscriber::set_global_default(
            Registry::default()
                .with(filter(&format!(
                    "{},{INVOCATION_TARGET}=off",
                    settings.filter
                ))?)
                .with(InvocationFields)
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(JsonLines)
                        .with_writer(writer),
                ),
        ),
        // Text lines take their ids the same way, so the invocation span stays off here
        // too: with the `fmt` layer's own span formatting, a span per invocation cost
        // about 8,000 instructions (its fields formatted into a string on creation).
        LogFormat::Text => tracing::subscriber::set_global_default(
            Registry::default()
                .with(filter(&format!(
                    "{},{INVOCATION_TARGET}=off",
                    settings.filter
                ))?)
                .with(InvocationFields)
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(TextLines)
                        .with_ansi(false)
                        .with_writer(writer),
                ),
        ),
    };
    result.map_err(|e| {
        Error::config(
            None,
            format!("a global tracing subscriber is already set: {e}"),
        )
    })
}

fn filter(directives: &str) -> Result<EnvFilter, Error> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| Error::config(None, format!("invalid log filter: {e}")))
}

/// The invocation fields of an [`INVOCATION_SPAN`], kept in the span's extensions.
#[derive(Debug, Default, Clone)]
struct Invocation {
    request_id: Option<String>,
    xray_trace_id: Option<String>,
    tenant_id: Option<String>,
}

impl Visit for Invocation {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "requestId" => &mut self.request_id,
            "xrayTraceId" => &mut self.xray_trace_id,
            "tenantId" => &mut self.tenant_id,
            _ => return,
        };
        *slot = Some(value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &display(format_args!("{value:?}")));
    }
}

/// Formats user values for a log line without `format!`'s panic when a `Debug` or
/// `Display` implementation fails: what it wrote, and a note, instead.
fn display(args: fmt::Arguments<'_>) -> String {
    let mut out = String::new();
    if fmt::write(&mut out, args).is_err() {
        out.push_str("<formatting failed>");
    }
    out
}

/// A layer that stores the fields of invocation spans for [`JsonLines`] and [`TextLines`].
///
/// Only needed with a subscriber of your own that enables the [`INVOCATION_SPAN`]: it
/// lets [`JsonLines`] tag lines logged by tasks a handler spawned (which
/// [`Context::current`](crate::Context::current) does not cover) when they are
/// instrumented with the invocation's span. See [`JsonLines`] for an example.
pub struct InvocationFields;

impl<S> Layer<S> for InvocationFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().name() != INVOCATION_SPAN {
            return;
        }
        let mut fields = Invocation::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Invocation>()
        {
            values.record(fields);
        }
    }
}

/// Event formatter: one flat JSON object per line, with the invocation's ids.
///
/// The keys are `timestamp` (RFC 3339, UTC, milliseconds), `level`, `message`, then
/// `requestId`, `xrayTraceId` and `tenantId` when the line was logged by an invocation,
/// then `target` and the event's own fields.
///
/// [`init`] installs it; use it directly to compose a subscriber of your own, e.g. with
/// another layer or a different filter:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::{EnvFilter, fmt};
/// use lambda_tpc::logging::{InvocationFields, JsonLines};
///
/// let subscriber = tracing_subscriber::registry()
///     // The invocation span on, for tasks instrumented with it.
///     .with(EnvFilter::new("info,lambda_tpc::invocation=info"))
///     .with(InvocationFields)
///     .with(fmt::layer().event_format(JsonLines).with_writer(std::io::stderr));
/// tracing::subscriber::set_global_default(subscriber)?;
/// tracing::info!(order = 42, "shipped"); // outside any invocation: no requestId
/// # Ok::<(), tracing::subscriber::SetGlobalDefaultError>(())
/// ```
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let message = fields
            .0
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        let mut line = String::with_capacity(256);
        let put = |line: &mut String, key: &str, value: &Value| -> fmt::Result {
            line.push(if line.is_empty() { '{' } else { ',' });
            let key = serde_json::to_string(key).map_err(|_| fmt::Error)?;
            let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
            line.push_str(&key);
            line.push(':');
            line.push_str(&value);
            Ok(())
        };
        // Fixed keys first, in the order AWS's own runtimes write them.
        put(
            &mut line,
            "timestamp",
            &Value::String(rfc3339_millis(SystemTime::now())),
        )?;
        put(
            &mut line,
            "level",
            &Value::String(level_name(*event.metadata().level()).into()),
        )?;
        put(&mut line, "message", &message)?;
        let mut reserved: Vec<&str> = vec!["timestamp", "level", "message", "target"];
        if let Some(inv) = invocation_ids(ctx) {
            for (key, value) in [
                ("requestId", &inv.request_id),
                ("xrayTraceId", &inv.xray_trace_id),
                ("tenantId", &inv.tenant_id),
            ] {
                if let Some(v) = value {
                    put(&mut line, key, &Value::String(v.clone()))?;
                    reserved.push(key);
                }
            }
        }
        put(
            &mut line,
            "target",
            &Value::String(event.metadata().target().into()),
        )?;
        for (k, v) in &fields.0 {
            if !reserved.contains(&k.as_str()) {
                put(&mut line, k, v)?;
            }
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Event formatter: one tab-separated text line per event (a line break inside becomes a
/// carriage return, since Lambda takes each line as an event), with the invocation's request
/// id, in the layout of AWS's own runtimes' text logs:
///
/// ```text
/// 2026-11-27T21:05:01.123Z\t8476a536-e9f4-11e8-9739-2dfe598c3fcd\tINFO\tmy_fn: hello user="alice"
/// ```
///
/// The request id column is there only for lines logged by an invocation (found as in
/// [`JsonLines`]). No colours: CloudWatch shows escape codes as they are.
pub struct TextLines;

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}\t", rfc3339_millis(SystemTime::now()))?;
        if let Some(id) = invocation_ids(ctx).and_then(|i| i.request_id) {
            write!(writer, "{id}\t")?;
        }
        let meta = event.metadata();
        write!(writer, "{}\t{}: ", level_name(*meta.level()), meta.target())?;
        let mut fields = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        // One line per event: Lambda takes each line of stdout as a log event of its own.
        // A line break inside becomes a carriage return, as in AWS's Node.js runtime.
        writer.write_str(&fields.replace('\n', "\r"))?;
        writeln!(writer)
    }
}

/// The ids of the invocation a line belongs to: the invocation being polled on this thread
/// (set by the runtime around every poll of a handler), else an enclosing invocation span
/// (e.g. an instrumented task the handler spawned, when the filter enables the span).
fn invocation_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<Invocation>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    match crate::Context::current() {
        Some(c) => Some(Invocation {
            request_id: Some(c.request_id().to_owned()),
            xray_trace_id: c.xray_trace_id().map(str::to_owned),
            tenant_id: c.tenant_id().map(str::to_owned),
        }),
        None => ctx.event_scope().and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<Invocation>().cloned())
        }),
    }
}

/// Collects an event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(
            field.name().into(),
            Value::String(display(format_args!("{value}"))),
        );
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().into(),
            Value::String(display(format_args!("{value:?}"))),
        );
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC.
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// A value whose `Debug` fails (as a buggy one can).
    struct FailsToFormat;

    impl fmt::Debug for FailsToFormat {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Err(fmt::Error)
        }
    }

    #[test]
    fn text_lines_stay_one_line_per_event() {
        let buf = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(TextLines)
            .with_ansi(false)
            .with_writer(buf.clone());
        tracing::subscriber::with_default(Registry::default().with(layer), || {
            tracing::info!(detail = %"a\nb", "first\nsecond");
            tracing::warn!("plain");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(
            lines[0].contains("first\rsecond") && lines[0].contains("a\rb"),
            "{text:?}"
        );
    }

    #[test]
    fn a_value_that_fails_to_format_does_not_panic_the_json_line() {
        let buf = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(buf.clone());
        tracing::subscriber::with_default(Registry::default().with(layer), || {
            tracing::info!(value = ?FailsToFormat, "logged anyway");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "logged anyway");
        assert_eq!(line["value"], "<formatting failed>");
    }

    #[test]
    fn settings_from_env() {
        let s = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            LogSettings::from_env_with(move |k| {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(s(&[]).unwrap().format, LogFormat::Text);
        assert_eq!(
            s(&[("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances")])
                .unwrap()
                .format,
            LogFormat::Json
        );
        assert_eq!(
            s(&[(ENV_LOG_FORMAT, "json")]).unwrap().format,
            LogFormat::Json
        );
        assert_eq!(
            s(&[(ENV_LOG_FORMAT, "TEXT")]).unwrap().format,
            LogFormat::Text
        );
        assert_eq!(s(&[(ENV_LOG_LEVEL, "Fatal")]).unwrap().filter, "error");
        assert_eq!(
            s(&[(ENV_LOG_LEVEL, "debug"), ("RUST_LOG", "trace")])
                .unwrap()
                .filter,
            "debug"
        );
        assert_eq!(
            s(&[("RUST_LOG", "my_fn=debug")]).unwrap().filter,
            "my_fn=debug"
        );
        assert_eq!(s(&[]).unwrap().filter, "info");
        // `RUST_LOG=` in an env file: unset, not every log off.
        assert_eq!(s(&[("RUST_LOG", "")]).unwrap().filter, "info");
        assert_eq!(s(&[("RUST_LOG", "  ")]).unwrap().filter, "info");
        for (var, value) in [
            (ENV_LOG_FORMAT, "xml"),
            (ENV_LOG_LEVEL, "loud"),
            ("RUST_LOG", "a=b=c"),
        ] {
            let e = s(&[(var, value)]).unwrap_err();
            assert!(e.is_config() && e.to_string().contains(var), "{e}");
        }
    }
}
