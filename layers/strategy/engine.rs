//! The engine: what follows the first attempt (retries, hedges, resends, rounds).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::{Delays, LatencyKey, PercentileDelays, Strategy};
use crate::body::{Replay, ReplayBody};
use crate::classify::Classify;
use crate::outcome::Outcome;
use crate::span::enter_recorded;
// A delay of `Duration::MAX` is a fair way to say "never": instants are capped, not overflowed.
use crate::context::{instant_after, Deadline, DeadlineShare};
use crate::error::BoxError;
use crate::headers;

use super::attempt::{finish, Attempt, AttemptOf, AttemptState, Attempted, Slot, Template};
use super::layer::{AttemptDeadline, Config};
use super::service::{innermost, is_breaker_refusal, planned_attempts, Answer, BoxFuture};
use super::stats::{bump, AttemptCount};

/// The state of one request's attempts.
pub(super) struct Attempts<S, C, B> {
    pub(super) service: S,
    pub(super) template: Template,
    pub(super) replay: Replay<B>,
    pub(super) config: Arc<Config<C>>,
    /// The deadline of the whole request, when there is one.
    pub(super) deadline: Option<Deadline>,
    pub(super) latency_key: Option<LatencyKey>,
    pub(super) tracker: Option<PercentileDelays>,
    pub(super) launched: u32,
    /// The attempts a round of the strategy plans.
    pub(super) planned: u32,
    /// Sends left for attempts that never reached the server (`connection_attempts` - 1).
    pub(super) resends_left: u32,
}

/// What a parallel round waits for next.
pub(super) enum Event<R> {
    Done(Attempted<R>),
    Judged(Answer<R>, Outcome, u32),
    StartNext,
}

/// How a round begins: its first attempt in the slot, or already finished and judged (the first
/// attempt of a request runs outside the engine, which is only made when a retry is needed).
pub(super) enum Begin<R> {
    InSlot,
    Judged(Answer<R>, Outcome),
}

impl<S, C, B, ResBody> Attempts<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    C: Classify,
{
    /// The next attempt's request, and its own deadline when attempts split the deadline.
    pub(super) fn request(
        &mut self,
        body: ReplayBody<B>,
        attempts_left: u32,
    ) -> (Request<ReplayBody<B>>, Option<Deadline>) {
        let t = &self.template;
        let mut request = Request::new(body);
        *request.method_mut() = t.method.clone();
        *request.uri_mut() = t.uri.clone();
        *request.version_mut() = t.version;
        *request.headers_mut() = t.headers.clone();
        *request.extensions_mut() = t.extensions.clone();
        // aio-request: `min(attempts_count_to_split, attempts_count) - attempt` shares.
        let split_among = match self.config.attempt_deadline {
            AttemptDeadline::PassThrough => None,
            AttemptDeadline::Split => Some(attempts_left),
            AttemptDeadline::SplitFirst(n) => {
                let uncounted = self.planned.saturating_sub(n.max(2).min(self.planned));
                Some(attempts_left.saturating_sub(uncounted))
            }
        };
        let own = match (split_among, self.deadline) {
            (Some(shares), Some(deadline)) => {
                let share = deadline.split(shares);
                // The propagation layer below sends this attempt's share.
                request.extensions_mut().insert(share);
                if share != deadline {
                    // An attempt timeout below that runs out at the share has not run out of
                    // the call's time: its failure is retryable.
                    request.extensions_mut().insert(DeadlineShare);
                }
                Some(share)
            }
            _ => None,
        };
        (request, own)
    }

    /// Makes an attempt of `state`: numbers it, gives it a span, times it when the latency is
    /// wanted, and bounds it by its own deadline when attempts split the deadline.
    pub(super) fn attempt(
        &mut self,
        state: AttemptState<S, Request<ReplayBody<B>>, S::Future>,
        own_deadline: Option<Deadline>,
        delay: Duration,
    ) -> AttemptOf<S, B> {
        let number = self.launched;
        self.launched += 1;
        let span = tracing::debug_span!(
            "attempt",
            number,
            delay_ms = delay.as_millis() as u64,
            outcome = tracing::field::Empty,
        );
        let timed = self.tracker.is_some() || tracing::enabled!(tracing::Level::DEBUG);
        Attempt {
            state,
            timer: own_deadline
                .map(|deadline| Box::pin(tokio::time::sleep_until(deadline.instant()))),
            allowed: own_deadline.map_or(Duration::ZERO, |deadline| deadline.remaining()),
            number,
            started: timed.then(Instant::now),
            span,
        }
    }

    /// Starts another attempt on a fresh clone of the service, or `None` when the body can no
    /// longer be replayed.
    pub(super) fn start(&mut self, attempts_left: u32, delay: Duration) -> Option<AttemptOf<S, B>> {
        let body = self.replay_body()?;
        Some(self.send(body, attempts_left, delay))
    }

    /// A fresh copy of the request body, or `None` once it has outgrown the replay buffer.
    pub(super) fn replay_body(&self) -> Option<ReplayBody<B>> {
        let body = self.replay.replay();
        if body.is_none() {
            tracing::debug!("request body outgrew the replay buffer: no further attempts");
        }
        body
    }

    /// Sends another attempt with `body` on a fresh clone of the service.
    pub(super) fn send(
        &mut self,
        body: ReplayBody<B>,
        attempts_left: u32,
        delay: Duration,
    ) -> AttemptOf<S, B> {
        let (request, own_deadline) = self.request(body, attempts_left);
        let state = AttemptState::Readying {
            service: self.service.clone(),
            request: Some(Box::new(request)),
        };
        self.attempt(state, own_deadline, delay)
    }

    /// Whether an extra attempt may start after waiting `wait`: time, body and budget allowing.
    pub(super) fn may_start_extra(&self, wait: Duration, kind: &'static str) -> bool {
        if let Some(deadline) = self.deadline {
            let left = deadline.remaining();
            if left < wait.saturating_add(self.config.low_time_threshold) {
                tracing::debug!(
                    kind,
                    ?wait,
                    ?left,
                    "no further attempt: it would pass the deadline"
                );
                return false;
            }
        }
        if !self.replay.is_replayable() {
            tracing::debug!(
                kind,
                "no further attempt: the request body cannot be replayed"
            );
            return false;
        }
        if let Some(budget) = &self.config.budget {
            if !budget.try_withdraw() {
                bump(&self.config.stats.budget_refusals);
                tracing::info!(kind, "no further attempt: the retry budget is spent");
                return false;
            }
        }
        true
    }

    /// Judges a finished attempt, and learns its latency if it is a complete success: only
    /// those are samples (aio-request records 2xx only), so that fast failures do not pull the
    /// hedge delay down and timeouts do not push it up.
    pub(super) fn judge(&self, attempted: Attempted<ResBody>) -> (Answer<ResBody>, Outcome, u32) {
        let classifier = &self.config.classifier;
        let outcome = match &attempted.outcome {
            Ok(response) => classifier.classify_response(response.status(), response.headers()),
            Err(error) => classifier.classify_error(error.as_ref()),
        };
        // Recorded on and entered only when someone records the span (see `Attempt::poll`).
        let span = &attempted.span;
        if !span.is_disabled() {
            span.record("outcome", outcome.as_str());
        }
        {
            let _entered = enter_recorded(span);
            tracing::debug!(
                latency = ?attempted.latency,
                status = attempted.outcome.as_ref().ok().map(|r| r.status().as_u16()),
                "attempt finished"
            );
        }
        let sample = outcome.is_success()
            && attempted
                .outcome
                .as_ref()
                .is_ok_and(|response| response.status().is_success());
        if sample {
            if let (Some(tracker), Some(key)) = (&self.tracker, &self.latency_key) {
                tracker.record(key, attempted.latency);
            }
        }
        (attempted.outcome, outcome, attempted.number)
    }

    /// Sends the attempt again while it never reached the server and `connection_attempts`,
    /// time, the body and the budget allow. Safe for any method: the server never saw it.
    pub(super) async fn resend_unsent(
        &mut self,
        judged: (Answer<ResBody>, Outcome),
        attempts_left: u32,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let (mut answer, mut outcome) = judged;
        while outcome.never_left() && self.resends_left > 0 {
            if !self.may_start_extra(Duration::ZERO, "resend") {
                break;
            }
            let Some(body) = self.replay_body() else {
                break;
            };
            self.resends_left -= 1;
            drop(answer);
            tracing::debug!("the attempt never reached the server: sending it again");
            slot.set(Some(self.send(body, attempts_left, Duration::ZERO)));
            bump(&self.config.stats.retries);
            let done = finish(slot.as_mut()).await;
            (answer, outcome, _) = self.judge(done);
        }
        (answer, outcome)
    }

    /// The wait a rejected 429 or 503 asks for, capped.
    pub(super) fn retry_after(&self, outcome: &Answer<ResBody>) -> Option<Duration> {
        let response = outcome.as_ref().ok()?;
        if !matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            return None;
        }
        let wait = headers::parse_retry_after(response.headers().get(headers::RETRY_AFTER)?)?;
        Some(wait.min(self.config.max_retry_after))
    }

    pub(super) fn delay(&self, delays: &Delays, k: u32) -> Duration {
        delays.delay_for(k, self.latency_key.as_ref())
    }

    /// Runs the strategy: one round of attempts; with `until_deadline`, rounds until one is
    /// accepted or time runs out. One function rather than one per level, so that the request's
    /// future stays small.
    pub(super) async fn run(
        &mut self,
        strategy: &Strategy,
        begin: Begin<ResBody>,
        mut slot: Slot<'_, S, B>,
    ) -> Answer<ResBody> {
        let (round, between_rounds) = match strategy {
            Strategy::UntilDeadline { inner, delays } => (innermost(inner), Some(delays)),
            other => (other, None),
        };
        let mut rounds = 1;
        let mut begin = begin;
        loop {
            let (outcome, verdict) = match round {
                Strategy::Sequential { attempts, delays } => {
                    self.sequential(*attempts, delays, begin, slot.as_mut())
                        .await
                }
                Strategy::Parallel { attempts, delays } => {
                    self.parallel(*attempts, delays, begin, slot.as_mut()).await
                }
                _ => self.first_of_round(begin, 1, slot.as_mut()).await,
            };
            let Some(delays) = between_rounds else {
                return outcome;
            };
            if !verdict.is_retryable() || self.deadline.is_none() {
                return outcome;
            }
            let wait = self
                .retry_after(&outcome)
                .unwrap_or_else(|| self.delay(delays, rounds));
            if !self.may_start_extra(wait, "round") {
                return outcome;
            }
            let Some(body) = self.replay_body() else {
                return outcome;
            };
            // As between sequential attempts: the rejected response goes before the wait.
            drop(outcome);
            // Boxed: only a repeated round waits, and a timer would double this future's size.
            Box::pin(tokio::time::sleep(wait)).await;
            slot.set(Some(self.send(body, planned_attempts(round), wait)));
            begin = Begin::InSlot;
            bump(&self.config.stats.retries);
            rounds += 1;
        }
    }

    /// The judged first attempt of a round, as it began or once it finishes, sent again while
    /// it never reached the server.
    pub(super) async fn first_of_round(
        &mut self,
        begin: Begin<ResBody>,
        attempts_left: u32,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let judged = match begin {
            Begin::Judged(answer, outcome) => (answer, outcome),
            Begin::InSlot => {
                // Await first, then judge: `&self` held across an await would need `S: Sync`.
                let done = finish(slot.as_mut()).await;
                let (answer, outcome, _) = self.judge(done);
                (answer, outcome)
            }
        };
        self.resend_unsent(judged, attempts_left, slot).await
    }

    /// The rest of the request as one boxed future: every attempt still to come lives in it.
    pub(super) fn into_engine(
        mut self,
        strategy: Strategy,
        begin: Begin<ResBody>,
        first: Option<AttemptOf<S, B>>,
    ) -> BoxFuture<Answer<ResBody>>
    where
        C: Send + Sync + 'static,
    {
        Box::pin(async move {
            let slot = pin!(first);
            let outcome = self.run(&strategy, begin, slot).await;
            let launched = self.launched;
            outcome.map(|mut response| {
                // Absent means one: a request answered at its first attempt (most of them)
                // pays no extension map.
                if launched > 1 {
                    response.extensions_mut().insert(AttemptCount(launched));
                }
                response
            })
        })
    }

    pub(super) async fn sequential(
        &mut self,
        attempts: u32,
        delays: &Delays,
        begin: Begin<ResBody>,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let (mut outcome, mut verdict) = self.first_of_round(begin, attempts, slot.as_mut()).await;
        for k in 1..attempts {
            if !verdict.is_retryable() {
                break;
            }
            let wait = self
                .retry_after(&outcome)
                .unwrap_or_else(|| self.delay(delays, k));
            if !self.may_start_extra(wait, "retry") {
                break;
            }
            let Some(body) = self.replay_body() else {
                break;
            };
            // Committed to another attempt: let the rejected response go before the wait, so
            // that its connection returns to the pool instead of idling through the backoff.
            drop(outcome);
            // Boxed: only a retry waits, and a timer would double this future's size.
            Box::pin(tokio::time::sleep(wait)).await;
            slot.set(Some(self.send(body, attempts - k, wait)));
            bump(&self.config.stats.retries);
            let done = finish(slot.as_mut()).await;
            let (answer, judged, _) = self.judge(done);
            (outcome, verdict) = self
                .resend_unsent((answer, judged), attempts - k, slot.as_mut())
                .await;
        }
        (outcome, verdict)
    }

    pub(super) async fn parallel(
        &mut self,
        attempts: u32,
        delays: &Delays,
        begin: Begin<ResBody>,
        slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let started = Instant::now();
        // Attempt numbers run on across rounds of `until_deadline`: this round's first is here.
        let first_number = self.launched.saturating_sub(1);
        // The first attempt (in the slot) and the hedge timer live in the request's future; only
        // hedges, which most requests never start, get boxes of their own.
        let mut first = slot;
        let mut hedges: Vec<Pin<Box<AttemptOf<S, B>>>> = Vec::new();
        let mut launched = 1;
        let mut next = pin!(tokio::time::sleep_until(instant_after(
            started,
            if attempts > 1 {
                self.delay(delays, 1)
            } else {
                Duration::MAX
            },
        )));
        let mut armed = attempts > 1;
        let mut last_rejected = None;
        // A round that begins judged (its first attempt finished before the engine was made)
        // takes that verdict as its first event.
        let mut judged_first = match begin {
            Begin::Judged(outcome, verdict) => Some(Event::Judged(outcome, verdict, first_number)),
            Begin::InSlot => None,
        };
        loop {
            let event = match judged_first.take() {
                Some(event) => event,
                None => {
                    poll_fn(|cx| {
                        if let Some(attempt) = first.as_mut().as_pin_mut() {
                            if let Poll::Ready(done) = attempt.poll(cx) {
                                first.set(None);
                                return Poll::Ready(Event::Done(done));
                            }
                        }
                        for i in 0..hedges.len() {
                            if let Poll::Ready(done) = hedges[i].as_mut().poll(cx) {
                                drop(hedges.swap_remove(i));
                                return Poll::Ready(Event::Done(done));
                            }
                        }
                        if armed && next.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::StartNext);
                        }
                        Poll::Pending
                    })
                    .await
                }
            };
            let idle = first.is_none() && hedges.is_empty();
            let (outcome, verdict, number) = match event {
                Event::Done(done) => self.judge(done),
                Event::Judged(outcome, verdict, number) => (outcome, verdict, number),
                Event::StartNext => {
                    armed = false;
                    if self.may_start_extra(Duration::ZERO, "hedge") {
                        let since_first = started.elapsed();
                        if let Some(attempt) = self.start(attempts - launched, since_first) {
                            bump(&self.config.stats.hedges);
                            tracing::debug!(number = launched, "hedged attempt started");
                            hedges.push(Box::pin(attempt));
                            launched += 1;
                            if launched < attempts {
                                let at = instant_after(started, self.delay(delays, launched))
                                    .max(Instant::now());
                                next.as_mut().reset(at);
                                armed = true;
                            }
                            continue;
                        }
                    }
                    // No more attempts will start: wait for those in flight, if any.
                    launched = attempts;
                    if idle {
                        break;
                    }
                    continue;
                }
            };
            if !verdict.is_retryable() && !idle && is_breaker_refusal(&outcome) {
                // A hedge refused by the breaker must not end the race: an attempt in
                // flight may be the breaker's probe, and only its answer can close it.
                // Keep the refusal as the fallback and start nothing more.
                last_rejected = Some((outcome, verdict));
                launched = attempts;
                armed = false;
                continue;
            }
            if !verdict.is_retryable() {
                if number > first_number {
                    bump(&self.config.stats.hedge_wins);
                    tracing::debug!(number, "hedged attempt won");
                }
                // Returning drops the attempts still in flight: hyper cancels them.
                return (outcome, verdict);
            }
            let pushback = self.retry_after(&outcome);
            last_rejected = Some((outcome, verdict));
            if launched >= attempts {
                if idle {
                    break;
                }
                continue;
            }
            let now = Instant::now();
            let scheduled = armed.then(|| next.deadline());
            let at = match (pushback, idle) {
                // The server asked for a pause: no attempt before it is over.
                (Some(wait), _) => {
                    let after = instant_after(now, wait);
                    scheduled.map_or(after, |s| s.max(after))
                }
                // Everything in flight failed: the next attempt need not wait its turn.
                (None, true) => now,
                (None, false) => continue,
            };
            next.as_mut().reset(at);
            armed = true;
        }
        last_rejected.unwrap_or_else(|| (Err("no attempt finished".into()), Outcome::Failure))
    }
}
