//! Running user code: the handler and everything of the user's the runtime calls for an
//! invocation (its future, conversions, serialization, a response stream, drops), as the
//! invocation (span, [`Context::current`]), with panics caught, the deadline enforced and
//! slow polls flagged.

use super::*;

impl<I, A, H, S, Sp> Core<I, A, H, S, Sp>
where
    I: Io,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
    S: State<Conn<I::Stream>>,
{
    /// Runs the handler to completion, catching panics (when it is called and while its
    /// future is polled), cancelling it at the invocation's deadline when enforcement is
    /// on, and flagging polls that hold the thread longer than the slow-poll threshold.
    pub(super) async fn run_handler(
        &self,
        event: LambdaEvent<A>,
        target: &Target,
    ) -> Result<H::Response, Diagnostic> {
        let (span, current, deadline) = self.handler_scope(&event.context);
        let call = {
            let _entered = span.enter();
            let _current = current.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.call(event)))
        };
        let result = match call {
            Err(p) => Err(self.abnormal(target.request_id(), "the handler", Abnormal::Panic(p))),
            Ok(fut) => {
                // In an `Option` so that it can be dropped in place, under a guard: its
                // `Drop` is user code too (and runs mid-await when the deadline cancels
                // it).
                let mut fut = pin!(Some(fut));
                // The timer is only registered if the handler does not finish on its
                // first poll, so a handler that completes at once pays nothing for it.
                let mut timer = pin!(deadline.map(|d| self.io.sleep(d)));
                let polled = std::future::poll_fn(|cx| {
                    self.poll_handler_code(target, &span, &current, timer.as_mut(), cx, |cx| {
                        match fut.as_mut().as_pin_mut() {
                            Some(f) => f.poll(cx),
                            // Never: it is emptied only once this poll loop is over.
                            None => Poll::Pending,
                        }
                    })
                })
                .await
                .map_err(|abnormal| self.abnormal(target.request_id(), "the handler", abnormal));
                // A panic in the drop of a future that completed is counted and logged;
                // the handler's own answer still goes out.
                self.drop_user(target, &span, &current, "the handler's future's drop", fut);
                polled
            }
        };
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self
                .guard_user(target, "the handler's error conversion", || e.into())
                .unwrap_or_else(|d| d)),
            Err(d) => Err(d),
        }
    }

    /// What handler code of invocation `ctx` runs under: its span, its current-invocation
    /// marker, and the time left to its deadline when the deadline is enforced.
    pub(super) fn handler_scope(
        &self,
        ctx: &Context,
    ) -> (tracing::Span, CurrentInvocation, Option<Duration>) {
        (
            invocation_span(ctx),
            CurrentInvocation::for_context(ctx),
            self.settings.enforce_deadline.then(|| ctx.remaining()),
        )
    }

    /// Polls handler code (the handler's future, or its response stream) once, as its
    /// invocation (span and [`CURRENT`]), with its panics caught, the slow-poll watch,
    /// and the deadline `timer` (polled only when the code is pending, so code that
    /// finishes at once never registers it).
    pub(super) fn poll_handler_code<T, Tm: Future<Output = ()>>(
        &self,
        target: &Target,
        span: &tracing::Span,
        current: &CurrentInvocation,
        timer: std::pin::Pin<&mut Option<Tm>>,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(&mut std::task::Context<'_>) -> Poll<T>,
    ) -> Poll<Result<T, Abnormal>> {
        let polled = {
            let _entered = span.enter();
            let _current = current.enter();
            let slow = self.settings.slow_poll;
            let started = slow.map(|_| Instant::now());
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| poll(cx)));
            if let (Some(t0), Some(limit)) = (started, slow) {
                let took = t0.elapsed();
                if took > limit {
                    self.slow_poll(target, took);
                }
            }
            polled
        };
        match polled {
            Err(p) => Poll::Ready(Err(Abnormal::Panic(p))),
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Ok(Poll::Pending) => match timer.as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(Abnormal::Deadline)),
                _ => Poll::Pending,
            },
        }
    }

    /// Counts and logs handler code (`what`) that panicked or outlived its deadline, and
    /// returns the error to answer the invocation with.
    pub(super) fn abnormal(&self, request_id: &str, what: &str, abnormal: Abnormal) -> Diagnostic {
        match abnormal {
            Abnormal::Panic(p) => {
                self.state.bump(Stat::Panics);
                let message = panic_message(&*p);
                tracing::error!(
                    core = self.plan.index,
                    request_id,
                    panic = message,
                    "{what} panicked"
                );
                Diagnostic::new(ERROR_TYPE_HANDLER_PANIC, message)
            }
            Abnormal::Deadline => {
                self.state.bump(Stat::DeadlinesExceeded);
                tracing::warn!(
                    core = self.plan.index,
                    request_id,
                    "{what} still running at the invocation deadline; cancelled"
                );
                Diagnostic::new(
                    ERROR_TYPE_DEADLINE_EXCEEDED,
                    format!(
                        "{what} did not finish before the invocation deadline and was cancelled"
                    ),
                )
            }
        }
    }

    /// Runs user code that comes after the handler (error conversion, response
    /// conversion, serialization) with its panics caught: a panic there becomes a
    /// `Runtime.HandlerPanic` answer, like one in the handler, instead of unwinding
    /// through the runtime and leaving the invocation unanswered.
    pub(super) fn guard_user<T>(
        &self,
        target: &Target,
        what: &str,
        f: impl FnOnce() -> T,
    ) -> Result<T, Diagnostic> {
        std::panic::catch_unwind(AssertUnwindSafe(f))
            .map_err(|p| self.abnormal(target.request_id(), what, Abnormal::Panic(p)))
    }

    /// Drops handler code (its future, or its response stream) in place, as its
    /// invocation, with a panic in its `Drop` (`what`) caught, counted and logged. The
    /// invocation's answer is what it was: the drop comes after it was decided.
    pub(super) fn drop_user<T>(
        &self,
        target: &Target,
        span: &tracing::Span,
        current: &CurrentInvocation,
        what: &str,
        mut value: std::pin::Pin<&mut Option<T>>,
    ) {
        let _entered = span.enter();
        let _current = current.enter();
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| value.set(None))) {
            self.abnormal(target.request_id(), what, Abnormal::Panic(p));
        }
    }

    /// A single poll of a handler held the thread for `took`: every other invocation on
    /// this core waited that long. Counted always, logged at most once a second.
    pub(super) fn slow_poll(&self, target: &Target, took: Duration) {
        self.state.bump(Stat::SlowPolls);
        if once_a_second(&self.last_slow_log) {
            tracing::warn!(
                core = self.plan.index,
                request_id = target.request_id(),
                blocked_ms = took.as_millis() as u64,
                total_slow_polls = self.state.get(Stat::SlowPolls),
                "a handler blocked its core's thread (move blocking work off the core, e.g. \
                 lambda_tpc::compio::spawn_blocking)"
            );
        }
    }
}

thread_local! {
    /// The invocation whose handler is being polled on this thread, if any: what
    /// [`Context::current`] returns and what the JSON log formatter tags lines with. Set
    /// only while a subscriber is installed.
    static CURRENT: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` as invocation `ctx` on this thread (in its span, and what [`CURRENT`] says),
/// for handler code that runs off the core: the rayon pool's jobs, `spawn_blocking`'s
/// closures.
pub(crate) fn as_invocation<T>(ctx: &Context, f: impl FnOnce() -> T) -> T {
    let span = invocation_span(ctx);
    let current = CurrentInvocation::for_context(ctx);
    let _entered = span.enter();
    let _current = current.enter();
    f()
}

/// Sets [`CURRENT`] around each poll of a handler.
pub(super) struct CurrentInvocation(pub(super) Option<Context>);

impl CurrentInvocation {
    fn for_context(ctx: &Context) -> Self {
        // Without a subscriber nobody reads it: skip the per-poll cost entirely.
        CurrentInvocation(tracing::dispatcher::has_been_set().then(|| ctx.clone()))
    }

    fn enter(&self) -> impl Drop + '_ {
        RestoreCurrent(
            self.0
                .as_ref()
                .map(|ctx| CURRENT.with(|c| c.replace(Some(ctx.clone())))),
        )
    }
}

/// What [`CURRENT`] said before an invocation entered, put back when it leaves (`None`:
/// it was not touched). Restored, not cleared: code can run nested in another
/// invocation's, e.g. a rayon job that a handler's `rayon::join` runs on its thread while
/// it waits, and the outer invocation must still be current afterwards.
struct RestoreCurrent(Option<Option<Context>>);

impl Drop for RestoreCurrent {
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            CURRENT.with(|c| c.replace(previous));
        }
    }
}

/// The context of the invocation being handled on this thread (see [`Context::current`]).
pub(crate) fn current_context() -> Option<Context> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The span an invocation's handler runs in (see [`crate::api::INVOCATION_SPAN`]).
/// Without a subscriber interested in it this is a disabled span and costs a branch.
fn invocation_span(ctx: &Context) -> tracing::Span {
    // Literals must match `api::INVOCATION_TARGET` and `api::INVOCATION_SPAN`.
    let span = tracing::info_span!(
        target: "lambda_tpc::invocation",
        "lambda_invocation",
        requestId = ctx.request_id(),
        xrayTraceId = tracing::field::Empty,
        tenantId = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(t) = ctx.xray_trace_id() {
            span.record("xrayTraceId", t);
        }
        if let Some(t) = ctx.tenant_id() {
            span.record("tenantId", t);
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn current_id() -> Option<String> {
        current_context().map(|c| c.request_id().to_owned())
    }

    #[test]
    fn a_nested_invocation_leaves_the_outer_one_current() {
        let outer = CurrentInvocation(Some(Context::for_test("outer", Duration::from_secs(3))));
        let inner = CurrentInvocation(Some(Context::for_test("inner", Duration::from_secs(3))));
        let untracked = CurrentInvocation(None);
        assert_eq!(current_id(), None);
        {
            let _outer = outer.enter();
            assert_eq!(current_id().as_deref(), Some("outer"));
            {
                // E.g. another invocation's rayon job, run on this thread by `rayon::join`.
                let _inner = inner.enter();
                assert_eq!(current_id().as_deref(), Some("inner"));
            }
            assert_eq!(current_id().as_deref(), Some("outer"));
            {
                // Without a subscriber nothing is recorded, and nothing is changed.
                let _untracked = untracked.enter();
                assert_eq!(current_id().as_deref(), Some("outer"));
            }
            assert_eq!(current_id().as_deref(), Some("outer"));
        }
        assert_eq!(current_id(), None);
    }
}
