//! The handler abstraction.

use std::future::Future;

use crate::api::{Diagnostic, LambdaEvent};
use crate::streaming::IntoFunctionResponse;

/// A Lambda function: takes an event, returns a future of a response or an error.
///
/// Implemented for every `Fn(LambdaEvent<A>) -> impl Future<Output = Result<R, E>>` with
/// `R: Serialize` (or a [`StreamResponse`](crate::streaming::StreamResponse)) and
/// `E: Into<Diagnostic>`. The future may be `!Send`: it runs on the
/// core that received the invocation and never moves.
pub trait Handler<A>: 'static {
    /// The successful result: serialized to JSON as the response body, or streamed.
    type Response: IntoFunctionResponse;
    /// The error, posted to `/error` as a [`Diagnostic`].
    type Error: Into<Diagnostic>;
    /// The future of one invocation.
    type Future: Future<Output = Result<Self::Response, Self::Error>> + 'static;

    /// Starts handling one invocation.
    fn call(&self, event: LambdaEvent<A>) -> Self::Future;
}

impl<A, F, Fut, R, E> Handler<A> for F
where
    F: Fn(LambdaEvent<A>) -> Fut + 'static,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: IntoFunctionResponse,
    E: Into<Diagnostic>,
{
    type Response = R;
    type Error = E;
    type Future = Fut;

    fn call(&self, event: LambdaEvent<A>) -> Fut {
        self(event)
    }
}

/// Returns `f` unchanged. Exists so that code written for `lambda_runtime`
/// (`run_concurrent(service_fn(handler))`) compiles after changing only the imports.
pub fn service_fn<F>(f: F) -> F {
    f
}
