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
///
/// A closure or an `async fn` is usually all it takes. Implement the trait by hand for a
/// handler type with a name (to store it, or to give it methods):
///
/// ```
/// use std::cell::Cell;
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use lambda_tpc::{BoxError, Context, Executor, Handler, LambdaEvent};
///
/// /// Counts the invocations of its core (an `Rc`: no lock, no `Send`).
/// struct Counter {
///     seen: Rc<Cell<u64>>,
/// }
///
/// impl Handler<serde_json::Value> for Counter {
///     type Response = u64;
///     type Error = BoxError;
///     type Future = Pin<Box<dyn Future<Output = Result<u64, BoxError>>>>;
///
///     fn call(&self, _event: LambdaEvent<serde_json::Value>) -> Self::Future {
///         let seen = self.seen.clone();
///         Box::pin(async move {
///             seen.set(seen.get() + 1);
///             Ok(seen.get())
///         })
///     }
/// }
///
/// let counter = Counter { seen: Rc::new(Cell::new(0)) };
/// let event = || LambdaEvent::new(serde_json::Value::Null, Context::for_test("req", Duration::from_secs(1)));
/// let exec = lambda_tpc::compio::CompioExecutor::default();
/// exec.block_on(counter.call(event()))?.unwrap();
/// assert_eq!(exec.block_on(counter.call(event()))?.unwrap(), 2);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Being `!Send`, such a handler is built on each core with
/// [`compio::run_per_core`](crate::compio::run_per_core).
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
///
/// ```no_run
/// use lambda_tpc::{BoxError, LambdaEvent, service_fn};
///
/// async fn handler(event: LambdaEvent<serde_json::Value>) -> Result<serde_json::Value, BoxError> {
///     Ok(event.payload)
/// }
///
/// fn main() -> Result<(), lambda_tpc::Error> {
///     lambda_tpc::compio::run_concurrent(service_fn(handler))
/// }
/// ```
pub fn service_fn<F>(f: F) -> F {
    f
}
