//! The error report posted to `/error` and `/init/error`.

use std::any::type_name;

use serde::{Deserialize, Serialize};

/// What the runtime posts when a handler fails: `{"errorType": ..., "errorMessage": ...}`.
///
/// A handler's error type `E` only needs `Into<Diagnostic>`. Conversions exist for the
/// usual error carriers (`Box<dyn Error + Send + Sync>`, which is what `?` produces in a
/// handler returning [`crate::BoxError`], `Box<dyn Error>`, `String`, `&str`,
/// `std::io::Error`, `serde_json::Error`, `std::fmt::Error`, [`crate::Error`] and
/// `Infallible`); for these the error type is the Rust type name, as in the official
/// runtime:
///
/// ```
/// use lambda_tpc::{BoxError, Diagnostic};
///
/// let d: Diagnostic = std::io::Error::other("disk full").into();
/// assert_eq!(d.error_type, "std::io::error::Error");
/// assert_eq!(d.error_message, "disk full");
///
/// // A `BoxError` is reported under the type name of the box, not of the error inside
/// // it (and, since that name has spaces, as `Runtime.Unknown` in the error-type header).
/// let boxed: BoxError = "no such user".into();
/// let d = Diagnostic::from(boxed);
/// assert!(d.error_type.starts_with("alloc::boxed::Box<dyn core::error::Error"));
/// assert_eq!(d.error_message, "no such user");
/// ```
///
/// Implement `From<YourError> for Diagnostic` to choose a more useful `error_type`:
///
/// ```
/// use lambda_tpc::Diagnostic;
///
/// struct NotFound(String);
///
/// impl From<NotFound> for Diagnostic {
///     fn from(e: NotFound) -> Diagnostic {
///         Diagnostic::new("Function.NotFound", format!("no item {}", e.0))
///     }
/// }
/// let d: Diagnostic = NotFound("42".into()).into();
/// assert_eq!(d.error_type, "Function.NotFound");
/// assert_eq!(
///     serde_json::to_string(&d)?,
///     r#"{"errorType":"Function.NotFound","errorMessage":"no item 42"}"#,
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// The error's category, e.g. `Runtime.HandlerPanic`. AWS's emulator keeps values of
    /// the form `(Runtime|Function).Name` and reports others as `Runtime.Unknown`.
    pub error_type: String,
    /// The error's message.
    pub error_message: String,
}

impl Diagnostic {
    /// A diagnostic with the given type and message.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        Diagnostic {
            error_type: error_type.into(),
            error_message: error_message.into(),
        }
    }

    /// A diagnostic whose type is the Rust type name of `E` and whose message is its
    /// `Display` output: what the built-in conversions use, and a one-line
    /// `From<YourError>` for an error type that implements `Display`.
    ///
    /// ```
    /// use lambda_tpc::Diagnostic;
    ///
    /// let err = "x".parse::<u32>().unwrap_err();
    /// let d = Diagnostic::from_display(&err);
    /// assert_eq!(d.error_type, "core::num::error::ParseIntError");
    /// assert_eq!(d.error_message, "invalid digit found in string");
    /// ```
    pub fn from_display<E: std::fmt::Display + ?Sized>(e: &E) -> Self {
        Diagnostic {
            error_type: type_name::<E>().to_owned(),
            error_message: e.to_string(),
        }
    }
}

macro_rules! diagnostic_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Diagnostic {
            fn from(e: $t) -> Self {
                Diagnostic::from_display(&e)
            }
        }
    )*};
}

diagnostic_from!(
    Box<dyn std::error::Error + Send + Sync>,
    Box<dyn std::error::Error>,
    String,
    &str,
    std::io::Error,
    serde_json::Error,
    std::fmt::Error,
);

impl From<std::convert::Infallible> for Diagnostic {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

impl From<crate::Error> for Diagnostic {
    fn from(e: crate::Error) -> Self {
        Diagnostic::from_display(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let d: Diagnostic = "boom".into();
        assert_eq!(d.error_message, "boom");
        let boxed: Box<dyn std::error::Error + Send + Sync> = "io".into();
        let d: Diagnostic = boxed.into();
        assert_eq!(d.error_message, "io");
        let d: Diagnostic = std::io::Error::other("disk").into();
        assert_eq!(d.error_type, "std::io::error::Error");
        let json = serde_json::to_string(&Diagnostic::new("T", "m")).unwrap();
        assert_eq!(json, r#"{"errorType":"T","errorMessage":"m"}"#);
    }
}
