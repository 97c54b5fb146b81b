//! Answering an invocation: encoding the result (buffered or streamed), posting it, and
//! acting on the reply (a 413 becomes `Function.ResponseSizeTooLarge`; a post whose
//! connection failed before any byte of its reply is sent again, see [`Core::deliver`],
//! unless the API had replied before it took the whole post).

use super::*;

/// Largest pipelined post (head and body) whose reply is read with a raised low-water
/// mark ([`Conn::low_water_for_post_reply`]). A post near the Runtime API's response
/// limit may be refused with a 413 that the runtime answers with an error post: it
/// should be read when it comes, and a large post costs far more than a wake-up anyway.
const LOW_WATER_MAX_POST_BYTES: usize = 64 * 1024;

/// Largest buffered post (its whole write buffer, a pipelined `/next` included), and
/// largest start of a streamed response, that counts as small: its send is not bounded in
/// time, and the wait for its reply does not watch the API's progress (see
/// [`Core::within_progress`]). That much goes into the socket's buffers and the API's
/// receive window whether or not the API reads it, so its send cannot stall; beyond it a
/// send waits on the API to read. Not bounding the small ones keeps a timer off the hot
/// path, and not watching them a system call.
const SMALL_POST_BYTES: usize = 64 * 1024;

impl<I, A, H, S, Sp> Core<I, A, H, S, Sp>
where
    I: Io,
    A: DeserializeOwned + 'static,
    H: Handler<A>,
    S: State<Conn<I::Stream>>,
{
    /// Sends a post without waiting for its reply; see [`Core::slot_loop`]. Returns the
    /// post to settle later, if one was sent (it keeps the invocation in flight).
    pub(super) async fn post_deferred<'s>(
        &'s self,
        conn: &mut Conn<I::Stream>,
        target: Target,
        outcome: Result<H::Response, Diagnostic>,
        in_flight: InFlight<'s, S>,
    ) -> Option<PendingPost<'s, S>> {
        let Prepared::Buffered { is_error } =
            self.prepare_post(conn, &target, outcome, false).await
        else {
            return None;
        };
        let mut backoff = Backoff::default();
        match self.send_only(conn, &mut backoff).await {
            Ok(reused) => {
                // Counted as posted now (a slot parked on `/next` at shutdown never reads
                // its last reply); taken back in `settle` if the reply is a refusal.
                self.state.bump(Stat::answered(is_error));
                Some(PendingPost {
                    target,
                    _in_flight: in_flight,
                    is_error,
                    reused,
                    backoff,
                })
            }
            Err(e) => {
                self.state.bump(Stat::PostFailures);
                tracing::warn!(request_id = target.request_id(), error = %e, "posting the result failed");
                conn.close();
                None
            }
        }
    }

    /// Reads the reply to a deferred post and acts on it (a 413 is answered with
    /// `Function.ResponseSizeTooLarge`, other refusals are logged); its invocation is then
    /// finished (as `p` is dropped).
    pub(super) async fn settle(&self, conn: &mut Conn<I::Stream>, p: PendingPost<'_, S>) {
        // By now the reply is in the socket buffer, as a rule: taken at once, without a
        // round through the driver (an `io_uring_enter` and a task wake-up fewer).
        conn.expect_bytes = true;
        let mut backoff = p.backoff;
        let reply = self
            .read_unconfirmed(conn, p.reused, &mut backoff, false)
            .await;
        conn.expect_bytes = false;
        if let Ok((200..=299, _)) = reply {
            conn.trim_write_buffer();
            return;
        }
        // Counted when sent; from here on only failures and the 413 follow-up count.
        self.state.unbump(Stat::answered(p.is_error));
        self.conclude_post(conn, &p.target, p.is_error, false, reply)
            .await;
    }

    /// Posts an outcome (and, if `then_next`, a `/next` right behind it in the same
    /// write) and reads the reply. Returns whether that pipelined `/next` is now in flight
    /// on `conn` (always false without `then_next`). Failures are logged and counted,
    /// never propagated: one lost post must not stop the loop.
    pub(super) async fn post(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        outcome: Result<H::Response, Diagnostic>,
        then_next: bool,
    ) -> bool {
        match self.prepare_post(conn, target, outcome, then_next).await {
            Prepared::Buffered { is_error } => {
                let reply = self.send_and_read_status(conn).await;
                self.conclude_post(conn, target, is_error, then_next, reply)
                    .await
            }
            Prepared::Done => false,
        }
    }

    /// Posts an outcome with the slot's next `/next` behind it in the same write, and
    /// reads the post's reply when the invocation behind it arrives: the read runs with
    /// the socket's receive low-water mark past the reply's length
    /// ([`Conn::low_water_for_post_reply`]), so that the reply alone wakes nobody and the
    /// slot sleeps once per invocation. Returns whether the pipelined `/next` is in
    /// flight on `conn`.
    ///
    /// The invocation is finished (`in_flight` dropped) once the post is sent, and counted
    /// as answered then: the reply may not be read before the next invocation, which may
    /// be long after (or never, at shutdown), and neither a shutdown nor a core's idle
    /// ticker should wait for it. A refusal takes the count back and is logged when the
    /// reply is read; one still unread when the run ends stays counted as answered.
    /// Large posts, which may be refused with a 413 that is answered with an error post,
    /// are read as they come, with the invocation in flight until then.
    pub(super) async fn post_pipelined<'s>(
        &'s self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        outcome: Result<H::Response, Diagnostic>,
        in_flight: InFlight<'s, S>,
    ) -> bool {
        let Prepared::Buffered { is_error } = self.prepare_post(conn, target, outcome, true).await
        else {
            return false;
        };
        if conn.wbuf.len() > LOW_WATER_MAX_POST_BYTES {
            let reply = self.send_and_read_status(conn).await;
            return self
                .conclude_post(conn, target, is_error, true, reply)
                .await;
        }
        let mut backoff = Backoff::default();
        let reused = match self.send_only(conn, &mut backoff).await {
            Ok(reused) => reused,
            Err(e) => {
                return self
                    .conclude_post(conn, target, is_error, true, Err(e))
                    .await;
            }
        };
        let answered = Stat::answered(is_error);
        self.state.bump(answered);
        drop(in_flight);
        conn.low_water_for_post_reply();
        // Not bounded: the reply is read when the invocation behind it comes.
        let reply = self
            .read_unconfirmed(conn, reused, &mut backoff, true)
            .await;
        conn.low_water_next = 0;
        if let Ok((200..=299, _)) = reply {
            conn.note_post_reply();
            conn.trim_write_buffer();
            return conn.is_open();
        }
        // Counted when sent; from here on `conclude_post` decides what the reply means.
        self.state.unbump(answered);
        self.conclude_post(conn, target, is_error, true, reply)
            .await
    }

    /// Encodes a buffered outcome (and, if `then_next`, a `/next`) into `conn`'s write
    /// buffer, ready to send. A streamed response is sent here, whole, reply included.
    pub(super) async fn prepare_post(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        outcome: Result<H::Response, Diagnostic>,
        then_next: bool,
    ) -> Prepared {
        let outcome = match outcome.and_then(|response| {
            self.guard_user(target, "the handler's response conversion", || {
                response.into_function_response()
            })
        }) {
            Ok(response) => match response {
                FunctionResponse::Buffered(value) => Ok(value),
                FunctionResponse::Streaming(stream) => {
                    self.post_stream(conn, target, stream).await;
                    return Prepared::Done;
                }
            },
            Err(d) => Err(d),
        };
        let s = &self.settings;
        let mut is_error = outcome.is_err();
        conn.wbuf.clear();
        let encoded = match &outcome {
            Ok(response) => self.encode_response(conn, target, response, &mut is_error),
            Err(d) => self.encode_error_post(conn, target, d),
        };
        // The response's `Drop` is user code too; the post is encoded already and goes
        // out whatever it does.
        let _ = self.guard_user(target, "the response's drop", || drop(outcome));
        if let Err(e) = encoded {
            // Only ids that passed validation reach here, so this is a bug; log it rather
            // than send something malformed.
            tracing::error!(request_id = target.request_id(), error = %e, "could not encode the post");
            self.state.bump(Stat::PostFailures);
            return Prepared::Done;
        }
        if then_next && api::encode_next(&mut conn.wbuf, &s.api).is_err() {
            return Prepared::Done;
        }
        Prepared::Buffered { is_error }
    }

    /// Acts on the reply to a post: counts it, and answers a 413 with
    /// `Function.ResponseSizeTooLarge`. Returns whether a pipelined `/next` is in flight.
    pub(super) async fn conclude_post(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        is_error: bool,
        then_next: bool,
        reply: Result<(u16, String), Error>,
    ) -> bool {
        let (status, reply) = match reply {
            Ok(r) => r,
            Err(e) => {
                self.state.bump(Stat::PostFailures);
                tracing::warn!(request_id = target.request_id(), error = %e, "posting the result failed");
                conn.close();
                return false;
            }
        };
        conn.trim_write_buffer();
        // A reply that closed the connection means the server did not read on, so a
        // pipelined `/next` behind the post was not taken: the caller sends it again.
        let next_in_flight = then_next && conn.is_open();
        match status {
            200..=299 => self.state.bump(Stat::answered(is_error)),
            413 if !is_error => {
                tracing::warn!(
                    request_id = target.request_id(),
                    reply = %reply,
                    "Runtime API answered 413; reporting Function.ResponseSizeTooLarge"
                );
                let d = Diagnostic::new(
                    ERROR_TYPE_RESPONSE_TOO_LARGE,
                    "the Runtime API refused the response as too large (413)",
                );
                // A pipelined `/next` is parked on `conn` and must not be abandoned, so
                // the error goes on another connection in that case.
                let mut other = Conn::new();
                let via = if next_in_flight {
                    &mut other
                } else {
                    &mut *conn
                };
                let posted = self.encode_error_post(via, target, &d).is_ok()
                    && match self.send_and_read_status(via).await {
                        Ok((200..=299, _)) => true,
                        // AWS's emulator ends the invocation itself on a 413 (the caller
                        // gets `Function.ResponseSizeTooLarge`), and so refuses this
                        // follow-up as out of turn: answered all the same.
                        Ok((status @ (400 | 403), reply)) => {
                            tracing::debug!(
                                request_id = target.request_id(),
                                status,
                                reply = %reply,
                                "the follow-up to a 413 was refused: the Runtime API had ended the invocation itself"
                            );
                            true
                        }
                        other => {
                            tracing::warn!(
                                request_id = target.request_id(),
                                reply = ?other,
                                "the follow-up to a 413 (Function.ResponseSizeTooLarge) failed"
                            );
                            false
                        }
                    };
                self.state.bump(if posted {
                    Stat::Errors
                } else {
                    Stat::PostFailures
                });
            }
            code => {
                self.state.bump(Stat::PostFailures);
                tracing::warn!(
                    request_id = target.request_id(),
                    status = code,
                    reply = %reply,
                    "Runtime API did not accept the result"
                );
            }
        }
        next_in_flight
    }

    /// Serializes a response into the write buffer; on a serialization failure or an
    /// oversized body, encodes the corresponding error instead.
    pub(super) fn encode_response(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        response: &impl serde::Serialize,
        is_error: &mut bool,
    ) -> Result<(), CodecError> {
        let s = &self.settings;
        let id = target.request_id();
        let inv = target.invocation_id();
        let slot = api::encode_response(&mut conn.wbuf, &s.api, id, inv)?;
        let written = self.guard_user(target, "the response's serialization", || {
            serde_json::to_writer(&mut conn.wbuf, response)
        });
        let failure = match written {
            Err(panicked) => Some(panicked),
            Ok(Err(e)) => Some(Diagnostic::new(
                ERROR_TYPE_RESPONSE_SERIALIZE,
                format!("failed to serialize the response: {e}"),
            )),
            Ok(Ok(())) if slot.body_len(&conn.wbuf) > s.max_response_bytes => {
                Some(Diagnostic::new(
                    ERROR_TYPE_RESPONSE_TOO_LARGE,
                    format!(
                        "response of {} bytes exceeds the limit of {} bytes",
                        slot.body_len(&conn.wbuf),
                        s.max_response_bytes
                    ),
                ))
            }
            Ok(Ok(())) => None,
        };
        match failure {
            None => {
                slot.finish(&mut conn.wbuf);
                Ok(())
            }
            Some(d) => {
                tracing::error!(request_id = id, error_type = %d.error_type, error = %d.error_message, "response not sent");
                slot.abort(&mut conn.wbuf);
                *is_error = true;
                api::encode_error(&mut conn.wbuf, &s.api, id, inv, &d)
            }
        }
    }

    /// Streams a response: the head (and prelude) first, then each chunk as the handler's
    /// stream yields it, then the last chunk, with the error trailers if the stream
    /// failed, panicked or outgrew [`MAX_STREAM_BYTES`].
    pub(super) async fn post_stream<St, B, E>(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        response: StreamResponse<St>,
    ) where
        St: futures_util::Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: Into<Diagnostic>,
    {
        let s = &self.settings;
        // The stream is handler code: it is polled as the invocation (its log lines carry
        // the request id) and cut off at the deadline like the handler, or a stream that
        // never ends would hold its slot forever. In an `Option` so that it is dropped in
        // place under a guard however this ends: its `Drop` is user code too.
        let (span, current, deadline) = match target {
            Target::Ctx(ctx) => self.handler_scope(ctx),
            Target::Ids { .. } => (tracing::Span::none(), CurrentInvocation(None), None),
        };
        let mut stream = pin!(Some(response.stream));
        conn.wbuf.clear();
        let content_type = match response.metadata_prelude {
            Some(_) => api::CONTENT_TYPE_HTTP_INTEGRATION,
            None => api::CONTENT_TYPE_OCTET_STREAM,
        };
        if let Err(e) = api::encode_streaming_response_head(
            &mut conn.wbuf,
            &s.api,
            target.request_id(),
            target.invocation_id(),
            content_type,
        ) {
            tracing::error!(request_id = target.request_id(), error = %e, "could not encode the streamed post");
            self.state.bump(Stat::PostFailures);
            self.drop_user(
                target,
                &span,
                &current,
                "the response stream's drop",
                stream,
            );
            return;
        }
        if let Some(prelude) = &response.metadata_prelude {
            let mut chunk = match serde_json::to_vec(prelude) {
                Ok(v) => v,
                Err(_) => b"{}".to_vec(),
            };
            chunk.extend_from_slice(&PRELUDE_SEPARATOR);
            crate::http::encode_chunk(&mut conn.wbuf, &chunk);
        }
        // A stream cannot be replayed, so it never goes on a connection that the server
        // may have closed while it sat idle (the retry that buffered posts get is not
        // possible here).
        if conn.is_reused() {
            conn.close();
        }
        // Set once the head has gone out. A failure before that took nothing from the
        // stream, and has been retried already (`send_stream_head`).
        let mut started = false;
        let sent = async {
            // Bytes sent so far: the sends are bounded once more than the socket buffers
            // could take unread has gone out.
            let mut on_wire = conn.wbuf.len();
            self.send_stream_head(conn).await?;
            started = true;
            let mut total: u64 = 0;
            let mut timer = pin!(deadline.map(|d| self.io.sleep(d)));
            // The timer only fires while the stream waits; a stream that never waits (its
            // chunks always ready) is held to the deadline by the clock instead.
            let deadline_at = deadline.map(|d| Instant::now() + d);
            let mut empty_in_a_row = 0u32;
            let failure = loop {
                if deadline_at.is_some_and(|at| Instant::now() >= at) {
                    break Some(self.abnormal(
                        target.request_id(),
                        "the response stream",
                        Abnormal::Deadline,
                    ));
                }
                let next = std::future::poll_fn(|cx| {
                    self.poll_handler_code(target, &span, &current, timer.as_mut(), cx, |cx| {
                        match stream.as_mut().as_pin_mut() {
                            Some(st) => st.poll_next(cx),
                            None => Poll::Ready(None),
                        }
                    })
                })
                .await;
                match next {
                    Ok(Some(Ok(chunk))) => {
                        // The chunk type's `as_ref` and `Drop` are user code: the chunk is
                        // encoded (when within the limit) and dropped under a guard.
                        let wbuf = &mut conn.wbuf;
                        let encoded =
                            self.guard_user(target, "the response stream's chunk", || {
                                let bytes = chunk.as_ref();
                                let len = bytes.len() as u64;
                                if len > 0 && total + len <= MAX_STREAM_BYTES {
                                    wbuf.clear();
                                    crate::http::encode_chunk(wbuf, bytes);
                                }
                                drop(chunk);
                                len
                            });
                        let len = match encoded {
                            Ok(len) => len,
                            Err(d) => break Some(d),
                        };
                        total += len;
                        if total > MAX_STREAM_BYTES {
                            break Some(Diagnostic::new(
                                ERROR_TYPE_RESPONSE_TOO_LARGE,
                                format!("streamed response exceeds {MAX_STREAM_BYTES} bytes"),
                            ));
                        }
                        if len == 0 {
                            // Nothing to send, so nothing awaited: let the core's other
                            // tasks run now and then rather than spin on a stream of
                            // empty chunks.
                            empty_in_a_row += 1;
                            if empty_in_a_row.is_multiple_of(64) {
                                yield_now().await;
                            }
                            continue;
                        }
                        empty_in_a_row = 0;
                        on_wire += conn.wbuf.len();
                        self.send_bounded(conn, on_wire > SMALL_POST_BYTES).await?;
                    }
                    Ok(Some(Err(e))) => {
                        break Some(
                            self.guard_user(
                                target,
                                "the response stream's error conversion",
                                || e.into(),
                            )
                            .unwrap_or_else(|d| d),
                        );
                    }
                    Ok(None) => break None,
                    Err(abnormal) => {
                        break Some(self.abnormal(
                            target.request_id(),
                            "the response stream",
                            abnormal,
                        ));
                    }
                }
            };
            conn.wbuf.clear();
            let trailers_ok = match &failure {
                None => crate::http::encode_last_chunk(&mut conn.wbuf, &[]),
                Some(d) => {
                    tracing::warn!(request_id = target.request_id(), error_type = %d.error_type, "streamed response failed mid-stream");
                    let ty = api::header_safe_error_type(&d.error_type);
                    let body = api::error_trailer_body(d, ty);
                    crate::http::encode_last_chunk(
                        &mut conn.wbuf,
                        &[
                            (api::header::FUNCTION_ERROR_TYPE, ty),
                            (api::header::FUNCTION_ERROR_BODY, body.as_bytes()),
                        ],
                    )
                }
            };
            trailers_ok?;
            on_wire += conn.wbuf.len();
            self.send_bounded(conn, on_wire > SMALL_POST_BYTES).await?;
            let (status, _) = self
                .read_status_bounded(conn, on_wire > SMALL_POST_BYTES)
                .await?;
            Ok::<_, Error>((status, failure.is_some()))
        };
        let sent = sent.await;
        // Once the stream has ended (or failed), a panic in its drop is counted and
        // logged; what was sent stands.
        self.drop_user(
            target,
            &span,
            &current,
            "the response stream's drop",
            stream,
        );
        match sent {
            Ok((200..=299, failed)) => self.state.bump(Stat::answered(failed)),
            Ok((status, _)) => {
                self.state.bump(Stat::PostFailures);
                tracing::warn!(
                    request_id = target.request_id(),
                    status,
                    "Runtime API did not accept the streamed response"
                );
            }
            Err(e) if conn.has_early_reply() => {
                // The API refused the stream before it read all of it, and closed the
                // connection: its reply says why.
                let status = self.read_status(conn).await.map(|(status, _)| status);
                conn.close();
                tracing::warn!(
                    request_id = target.request_id(),
                    status = status.as_ref().ok(),
                    error = %e,
                    "Runtime API did not accept the streamed response"
                );
                match status {
                    // The invocation is unknown, answered or over: an error post would
                    // be refused too.
                    Ok(400 | 403 | 410) => self.state.bump(Stat::PostFailures),
                    // Not settled by the refusal (a 413, a 5xx): answered with an error.
                    _ => self.post_stream_failure(conn, target, &e).await,
                }
            }
            Err(e) if e.is_stalled() || e.is_no_reply() || !started => {
                // The API is hung, or could not be reached for the whole limit: an error
                // post would wait out the same limit again.
                self.state.bump(Stat::PostFailures);
                tracing::warn!(request_id = target.request_id(), error = %e, "streaming the response failed");
                conn.close();
            }
            Err(e) => {
                tracing::warn!(request_id = target.request_id(), error = %e, "streaming the response failed; answering with an error");
                conn.close();
                self.post_stream_failure(conn, target, &e).await;
            }
        }
        conn.trim_write_buffer();
    }

    /// Connects and sends a streamed response's head (and prelude) from the write buffer,
    /// again after each failure, with the `/next` backoff, up to the post limit as a
    /// buffered post is ([`Core::before_resend`]): nothing has been taken from the user's
    /// stream yet, so an API refusing connections for a moment costs a delay, not the
    /// answer. Only ever on a fresh connection, never a pooled one: a stream cannot be
    /// sent again once its chunks have gone, so it must not start on a connection the API
    /// may have closed while idle. A head the API stopped reading is not sent again.
    async fn send_stream_head(&self, conn: &mut Conn<I::Stream>) -> Result<(), Error> {
        let mut backoff = Backoff::default();
        loop {
            let e = match self.connect_and_send(conn).await {
                Ok(()) => return Ok(()),
                // Stalled, or refused with a reply: not sent again.
                Err(e) if e.is_stalled() || conn.has_early_reply() => return Err(e),
                Err(e) => e,
            };
            conn.close();
            let since = *backoff.failing_since.get_or_insert_with(Instant::now);
            let limit = self.post_limit(Some(since));
            let what = "a streamed response could not be started; retrying";
            match self.retry_delay(&mut backoff, &e, limit, &self.last_post_retry_log, what) {
                Ok(delay) => self.io.sleep(delay).await,
                Err(_) => return Err(e),
            }
        }
    }

    /// Answers an invocation whose streamed response broke off with
    /// [`ERROR_TYPE_STREAM_FAILED`], on a fresh connection, so that it ends now instead of
    /// at its timeout. If the API did receive the whole stream, it refuses this post
    /// (already answered), which is logged and counted like any refused post.
    pub(super) async fn post_stream_failure(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        e: &Error,
    ) {
        let d = Diagnostic::new(
            ERROR_TYPE_STREAM_FAILED,
            format!("the streamed response could not be delivered: {e}"),
        );
        if self.encode_error_post(conn, target, &d).is_err() {
            self.state.bump(Stat::PostFailures);
            return;
        }
        let reply = self.send_and_read_status(conn).await;
        self.conclude_post(conn, target, true, false, reply).await;
    }

    /// Puts `target`'s `/error` post of `d` in `conn`'s write buffer (replacing what was
    /// there).
    pub(super) fn encode_error_post(
        &self,
        conn: &mut Conn<I::Stream>,
        target: &Target,
        d: &Diagnostic,
    ) -> Result<(), CodecError> {
        conn.wbuf.clear();
        api::encode_error(
            &mut conn.wbuf,
            &self.settings.api,
            target.request_id(),
            target.invocation_id(),
            d,
        )
    }

    /// Reads the reply to a post sent earlier with [`Core::send_only`] (deferred or
    /// pipelined; `reused` and `backoff`: what that send returned and went through). If
    /// the connection fails before any byte of the reply, the write buffer (still holding
    /// the post, and a pipelined `/next` behind it) is delivered again as
    /// [`Core::deliver`] does, going on with the same streak, with the invocation counted
    /// in flight until its reply (the answer may not have gone out, and a shutdown must
    /// wait for it). `long_poll`: the reply comes with the next invocation (pipelining),
    /// so the wait is not bounded.
    pub(super) async fn read_unconfirmed(
        &self,
        conn: &mut Conn<I::Stream>,
        reused: bool,
        backoff: &mut Backoff,
        long_poll: bool,
    ) -> Result<(u16, String), Error> {
        let first = if long_poll {
            self.read_status(conn).await
        } else {
            let large = conn.wbuf.len() > SMALL_POST_BYTES;
            self.read_status_bounded(conn, large).await
        };
        match first {
            Err(e) if e.is_closed() || e.is_io() => {
                let _again = InFlight::start(&self.state);
                self.before_resend(conn, reused, backoff, e).await?;
                self.deliver(conn, backoff).await
            }
            r => r,
        }
    }

    /// [`Core::deliver`] with a streak of failures of its own.
    pub(super) async fn send_and_read_status(
        &self,
        conn: &mut Conn<I::Stream>,
    ) -> Result<(u16, String), Error> {
        self.deliver(conn, &mut Backoff::default()).await
    }

    /// Sends the write buffer and reads the first reply's status (and a snippet of its
    /// body for logs). A post whose connection failed before any byte of its reply (the
    /// connection refused, the send failed, or the connection closed or reset before the
    /// reply began) is sent again rather than lost: see [`Core::before_resend`]. The
    /// request bytes are still in `wbuf`: sending does not consume them.
    ///
    /// A post the API did receive before its connection broke is then posted twice; the
    /// API refuses the second as already answered, which is logged and counted as a
    /// refused post. That is the price of never losing one the API did not receive: the
    /// two cannot be told apart from here. Once part of the reply has come, or if no
    /// reply comes at all (see [`Core::read_status_bounded`]), or if the API replied before
    /// it took the whole post ([`Core::send_only`]), the post is not sent again.
    async fn deliver(
        &self,
        conn: &mut Conn<I::Stream>,
        backoff: &mut Backoff,
    ) -> Result<(u16, String), Error> {
        loop {
            let reused = self.send_only(conn, backoff).await?;
            let large = conn.wbuf.len() > SMALL_POST_BYTES;
            match self.read_status_bounded(conn, large).await {
                Err(e) if e.is_closed() || e.is_io() => {
                    self.before_resend(conn, reused, backoff, e).await?;
                }
                r => return r,
            }
        }
    }

    /// Connects if needed and sends the write buffer, again after each failure as
    /// [`Core::before_resend`] says. Returns whether it went out on a reused connection.
    /// Also returns (without sending again) when a send failed with the API's whole
    /// reply already come ([`Conn::has_early_reply`]): the caller reads that reply.
    pub(super) async fn send_only(
        &self,
        conn: &mut Conn<I::Stream>,
        backoff: &mut Backoff,
    ) -> Result<bool, Error> {
        loop {
            let reused = conn.is_reused();
            let e = match self.connect_and_send(conn).await {
                Ok(()) => return Ok(reused),
                // The API accepted the connection and stopped reading: hung, not gone,
                // and it may have part of the post. Not sent again.
                Err(e) if e.is_stalled() => return Err(e),
                // The API answered before it took the whole post (a refusal) and closed
                // the connection: its reply is read as the post's, and the post is not
                // sent again.
                Err(_) if conn.has_early_reply() => return Ok(reused),
                Err(e) => e,
            };
            self.before_resend(conn, reused, backoff, e).await?;
        }
    }

    /// Connects if needed (counted as a reconnect) and sends the write buffer once,
    /// bounded as [`Core::send_bounded`] says when it is large: one attempt of
    /// [`Core::send_only`] and of [`Core::send_stream_head`].
    async fn connect_and_send(&self, conn: &mut Conn<I::Stream>) -> Result<(), Error> {
        if conn.ensure_connected(&self.io, self.settings.addr).await? {
            self.state.bump(Stat::Reconnects);
        }
        let bounded = conn.wbuf.len() > SMALL_POST_BYTES;
        self.send_bounded(conn, bounded).await
    }

    /// Readies `conn` to send its write buffer again after failure `e`, or returns `e` if
    /// the post is to be given up. A reused keep-alive connection that failed had most
    /// likely been closed by the API while idle: a fresh one is tried at once. A fresh
    /// one that failed means the API is restarting or unreachable for a moment. An API
    /// that refuses new connections need not have dropped open ones, so an idle pooled
    /// keep-alive connection (its last reply read) is tried first, if the core has one;
    /// otherwise the retry waits the `/next` backoff. That goes on until the unreachable
    /// timeout has passed since the streak's first failure, or, once the runtime is
    /// shutting down, the end of the grace period ([`Core::post_limit`]).
    async fn before_resend(
        &self,
        conn: &mut Conn<I::Stream>,
        reused: bool,
        backoff: &mut Backoff,
        e: Error,
    ) -> Result<(), Error> {
        conn.close();
        if reused {
            tracing::debug!(error = %e, "keep-alive connection was closed; posting on a fresh one");
            return Ok(());
        }
        if let Some(mut pooled) = self.state.take_conn() {
            pooled.wbuf = std::mem::take(&mut conn.wbuf);
            *conn = pooled;
            return Ok(());
        }
        let since = *backoff.failing_since.get_or_insert_with(Instant::now);
        let limit = self.post_limit(Some(since));
        let what = "a post could not be delivered; retrying";
        match self.retry_delay(backoff, &e, limit, &self.last_post_retry_log, what) {
            Ok(delay) => {
                self.io.sleep(delay).await;
                Ok(())
            }
            Err(_) => Err(e),
        }
    }

    /// [`Conn::send`], and if `bounded` (a large post), giving up when the API has taken
    /// none of it for the unreachable timeout ([`Core::within_progress`]): an API that
    /// stopped reading a request (it hangs, and the socket's buffers fill) would otherwise
    /// hold the slot (or task) forever. The connection is then closed (the rest of the
    /// request cannot follow) and [`Error::stalled`] returned. The write buffer is then
    /// empty (the dropped send had it); a stalled post is not sent again.
    pub(super) async fn send_bounded(
        &self,
        conn: &mut Conn<I::Stream>,
        bounded: bool,
    ) -> Result<(), Error> {
        if !bounded {
            return conn.send().await;
        }
        let socket = conn.tcp_socket();
        let sent = {
            let send = pin!(conn.send());
            self.within_progress(send, socket, true).await
        };
        sent.unwrap_or_else(|limit| {
            conn.close();
            Err(Error::stalled(limit))
        })
    }

    /// Awaits `op`, a send or the read of a post's reply on the connection whose socket is
    /// `socket`, within [`Core::post_limit`]: `Err(limit)` once it has passed with `op`
    /// pending. If `track` (a large post), the limit counts from the last time the API
    /// was seen reading instead ([`tcp_progress`](crate::executor::tcp_progress): more of
    /// what was written acknowledged, or a wider receive window), checked every quarter of
    /// it: an API reading slowly (AWS caps a streamed response's bandwidth past its first
    /// 6 MB) is not taken for one that stopped, however long the whole post takes. Without
    /// a limit, `op` is awaited as is.
    ///
    /// `op` is kept across the checks, never dropped and made again (a dropped read may
    /// lose bytes), and pinned by the caller so that its state is not copied here. It
    /// borrows the connection, so the socket stays open while it is pending, provided
    /// that `op` never closes its stream and then awaits (none of [`Conn`]'s does).
    pub(super) async fn within_progress<F: Future>(
        &self,
        mut op: std::pin::Pin<&mut F>,
        socket: Option<std::os::fd::RawFd>,
        track: bool,
    ) -> Result<F::Output, Duration> {
        use futures_util::future::{Either, select};
        let Some(limit) = self.post_limit(None) else {
            return Ok(op.await);
        };
        if !track {
            return match select(op, pin!(self.io.sleep(limit))).await {
                Either::Left((out, _)) => Ok(out),
                Either::Right(_) => Err(limit),
            };
        }
        let period = (limit / 4).max(Duration::from_millis(1));
        let mut last_progress = Instant::now();
        // Read at the first check rather than now: most large sends are done by then, and
        // so pay no system call. Growth within the first period is not seen, which only
        // delays the first credit to the second check, well within the limit.
        let mut seen: Option<(u64, u32)> = None;
        loop {
            if let Either::Left((out, _)) = select(op.as_mut(), pin!(self.io.sleep(period))).await {
                return Ok(out);
            }
            let now = socket.and_then(crate::executor::tcp_progress);
            if let (Some((acked, window)), Some((acked_now, window_now))) = (seen, now)
                && (acked_now > acked || window_now > window)
            {
                last_progress = Instant::now();
            }
            seen = now;
            // Once shutting down, this is also cut at the grace period's end.
            let limit = self.post_limit(Some(last_progress)).unwrap_or(limit);
            if last_progress.elapsed() >= limit {
                return Err(limit);
            }
        }
    }

    /// [`Core::read_status`], giving up after the unreachable timeout: the Runtime API
    /// answers a post at once, and one that has not answered in that long is hung. Waiting
    /// on would hold the slot (or task) forever. The connection is then closed (a late
    /// reply would be read as the next request's) and the post counted as failed, not sent
    /// again: the API may have it. `large`: the post was large, and the API may still be
    /// reading what the socket buffers held when the send completed; the timeout then
    /// counts from when it last took some ([`Core::within_progress`]). Not for a pipelined
    /// post's reply read together with the next invocation, which is a long poll.
    pub(super) async fn read_status_bounded(
        &self,
        conn: &mut Conn<I::Stream>,
        large: bool,
    ) -> Result<(u16, String), Error> {
        let socket = if large { conn.tcp_socket() } else { None };
        let replied = {
            let read = pin!(self.read_status(&mut *conn));
            self.within_progress(read, socket, large).await
        };
        replied.unwrap_or_else(|limit| {
            // The read, dropped, may have discarded bytes it had received: the
            // connection goes anyway.
            conn.close();
            Err(Error::no_reply(limit))
        })
    }

    /// Reads one reply: its status and, for a refusal, the start of its body.
    pub(super) async fn read_status(
        &self,
        conn: &mut Conn<I::Stream>,
    ) -> Result<(u16, String), Error> {
        let (head, ()) = conn.read_head(DEFAULT_MAX_BODY_BYTES, |_| ()).await?;
        let body: Body = conn.read_body(&head, DEFAULT_MAX_BODY_BYTES).await?;
        let snippet = if (200..300).contains(&head.status) {
            String::new()
        } else {
            let b = conn.body(&body);
            String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
        };
        conn.finish(&head, &body);
        Ok((head.status, snippet))
    }
}
