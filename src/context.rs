//! The request context: the caller's [`Deadline`] and [`Priority`], and how they travel.
//!
//! A server layer ([`ServerDeadline`](crate::deadline::ServerDeadline),
//! [`ServerPriority`](crate::priority::ServerPriority)) puts a [`RequestContext`] into the
//! request's extensions and runs the handler inside a tokio task-local scope. Any client call
//! made while the handler runs, however deep in the call stack, finds it with
//! [`RequestContext::current`] and inherits it: the client deadline layer sends what is left of
//! the caller's time, and the propagation layer sends the caller's priority. So a deadline set at
//! the edge shrinks hop by hop across a whole call graph with nothing passed by hand.
//!
//! A task-local does not cross `tokio::spawn`: a spawned task starts with no context. Carry it
//! over with [`RequestContext::bind`], which captures the current context when it is called:
//!
//! ```
//! use std::time::Duration;
//! use tower_lifeline::context::{Deadline, Priority, RequestContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let ctx = RequestContext::new(Some(Deadline::after(Duration::from_secs(2))), Priority::High);
//! ctx.scope(async {
//!     // Inside a handler: the spawned task sees the handler's deadline and priority.
//!     let task = tokio::spawn(RequestContext::bind(async {
//!         RequestContext::current().map(|c| c.priority())
//!     }));
//!     assert_eq!(task.await.unwrap(), Some(Priority::High));
//! })
//! .await;
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

/// About thirty years: tokio's own stand-in for "never". `Instant + Duration` panics on overflow,
/// so every instant computed from a caller's or a user's number goes through [`instant_after`],
/// which caps at this instead.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `start + delay`, capped about thirty years ahead instead of overflowing the clock.
pub(crate) fn instant_after(start: Instant, delay: Duration) -> Instant {
    start
        .checked_add(delay.min(FAR_FUTURE))
        .unwrap_or(start + FAR_FUTURE)
}

/// An absolute point in time by which a request must be answered.
///
/// A deadline is a [`tokio::time::Instant`], never a `std::time::Instant`, so that tests running
/// with paused time see every read of the clock. On the wire it becomes the time remaining at the
/// moment of sending (`X-Request-Timeout: 4.997`), so the two ends need no clock sync.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::context::Deadline;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let deadline = Deadline::after(Duration::from_secs(9));
/// assert_eq!(deadline.remaining(), Duration::from_secs(9));
/// // Three attempts share it: the first gets a third.
/// assert_eq!(deadline.split(3).remaining(), Duration::from_secs(3));
/// tokio::time::advance(Duration::from_secs(10)).await;
/// assert!(deadline.is_expired());
/// assert_eq!(deadline.remaining(), Duration::ZERO);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline `timeout` from now. An absurdly long timeout is capped at about thirty years
    /// instead of overflowing the clock.
    pub fn after(timeout: Duration) -> Self {
        Deadline(instant_after(Instant::now(), timeout))
    }

    /// A deadline at the given instant.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The instant of the deadline.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// The time left before the deadline, zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// The time left at `now`, zero once it has passed: for a layer that has already read the
    /// clock for something else in the same call.
    pub(crate) fn remaining_at(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The deadline a request works to: its own [`Deadline`] extension, else the task-local
    /// [`RequestContext`]'s. Layers that bound work by the deadline all read it this way.
    pub fn of(extensions: &http::Extensions) -> Option<Deadline> {
        extensions
            .get::<Deadline>()
            .copied()
            .or_else(|| RequestContext::current().and_then(|c| c.deadline()))
    }

    /// The earlier of two deadlines.
    pub fn earliest(self, other: Deadline) -> Deadline {
        self.min(other)
    }

    /// The deadline for the next of `attempts_left` attempts that share this one equally, as
    /// aio-request's `split_deadline_between_attempts` does: 9 s over 3 attempts gives the first 3 s.
    ///
    /// Call it again before each attempt with the attempts still to come: an attempt that ends
    /// early leaves its unused time to the next, since the split is of what remains. With zero or
    /// one attempt left the whole deadline is returned.
    pub fn split(self, attempts_left: u32) -> Deadline {
        if attempts_left <= 1 {
            return self;
        }
        Deadline::after(self.remaining() / attempts_left).earliest(self)
    }
}

/// The time left, as a person reads it: `4.997s left`, or `expired` once it has passed. An
/// instant means nothing outside the process; the time left is what a log line needs.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::context::Deadline;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let deadline = Deadline::after(Duration::from_millis(4_997));
/// assert_eq!(deadline.to_string(), "4.997s left");
/// tokio::time::advance(Duration::from_secs(5)).await;
/// assert_eq!(deadline.to_string(), "expired");
/// # }
/// ```
impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remaining = self.remaining();
        if remaining.is_zero() {
            f.write_str("expired")
        } else {
            write!(
                f,
                "{}.{:03}s left",
                remaining.as_secs(),
                remaining.subsec_millis()
            )
        }
    }
}

/// Marks a request whose [`Deadline`] is one attempt's share of the call's deadline (the strategy
/// layer's [`Split`](crate::strategy::AttemptDeadline::Split)), not the call's own: an attempt
/// timeout that runs out at it has spent its share, and the call may still have time to retry.
#[cfg(feature = "strategy")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadlineShare;

/// How important a request is: load shedding drops `Low` first and keeps room for `High`.
///
/// Parsed case-insensitively and displayed lowercase, as `X-Request-Priority` carries it.
///
/// ```
/// use tower_lifeline::context::Priority;
///
/// assert_eq!("HIGH".parse::<Priority>(), Ok(Priority::High));
/// assert_eq!(Priority::Low.to_string(), "low");
/// // A Low call made while serving a High request goes out as Normal.
/// assert_eq!(Priority::Low.normalize(Priority::High), Priority::Normal);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Shed first under load.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Shed last; load shedding keeps a reserved share for it.
    High,
}

impl Priority {
    /// The lowercase wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Parses the wire form from raw bytes, ignoring ASCII case and surrounding spaces.
    pub fn from_bytes(bytes: &[u8]) -> Option<Priority> {
        let trimmed = bytes.trim_ascii();
        [Priority::High, Priority::Normal, Priority::Low]
            .into_iter()
            .find(|p| trimmed.eq_ignore_ascii_case(p.as_str().as_bytes()))
    }

    /// The priority an outbound call made while serving an `inbound` request should carry, as
    /// aio-request normalises it: the two extremes meet in the middle, so a `Low` call under a
    /// `High` request becomes `Normal`, and a `High` call under a `Low` request becomes `Normal`.
    /// A low-priority caller cannot buy high priority downstream, and a high-priority request is
    /// not starved by its own low-priority sub-calls.
    pub fn normalize(self, inbound: Priority) -> Priority {
        match (self, inbound) {
            (Priority::Low, Priority::High) | (Priority::High, Priority::Low) => Priority::Normal,
            (own, _) => own,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Priority`] from something other than `high`, `normal` or `low`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPriority(());

impl fmt::Display for InvalidPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("priority must be one of high, normal, low")
    }
}

impl std::error::Error for InvalidPriority {}

impl FromStr for Priority {
    type Err = InvalidPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::from_bytes(s.as_bytes()).ok_or(InvalidPriority(()))
    }
}

/// The route template of an outbound request (`/users/{id}`), set by the caller in the request's
/// extensions. Per-route state (percentile delays, metric labels) is keyed by it instead of the
/// raw path, whose ids would make every request a new key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteTemplate(std::borrow::Cow<'static, str>);

impl RouteTemplate {
    /// A template known at compile time.
    pub const fn new(template: &'static str) -> Self {
        RouteTemplate(std::borrow::Cow::Borrowed(template))
    }

    /// A template built at run time.
    pub fn owned(template: String) -> Self {
        RouteTemplate(std::borrow::Cow::Owned(template))
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The deadline and priority of the request being served.
///
/// See the [module docs](self) for how it travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestContext {
    deadline: Option<Deadline>,
    priority: Priority,
}

impl RequestContext {
    /// A context with the given deadline (`None`: no deadline) and priority.
    pub fn new(deadline: Option<Deadline>, priority: Priority) -> Self {
        RequestContext { deadline, priority }
    }

    /// The deadline, if there is one.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// This context with another deadline.
    pub fn with_deadline(self, deadline: Option<Deadline>) -> Self {
        RequestContext { deadline, ..self }
    }

    /// This context with another priority.
    pub fn with_priority(self, priority: Priority) -> Self {
        RequestContext { priority, ..self }
    }

    /// The context the server layers stored in `req`'s extensions, or the default (no deadline,
    /// `Normal`) when there is none.
    pub fn of<B>(req: &http::Request<B>) -> RequestContext {
        RequestContext::in_extensions(req.extensions())
    }

    /// Stores this context in `req`'s extensions: in place when one is there already (a layer
    /// further out put it), which spares the box a new extension costs.
    #[cfg(any(feature = "deadline", feature = "priority"))]
    pub(crate) fn store_in<B>(self, req: &mut http::Request<B>) {
        match req.extensions_mut().get_mut::<RequestContext>() {
            Some(existing) => *existing = self,
            None => {
                req.extensions_mut().insert(self);
            }
        }
    }

    fn in_extensions(extensions: &http::Extensions) -> RequestContext {
        extensions
            .get::<RequestContext>()
            .copied()
            .unwrap_or_default()
    }

    /// The context of the request whose handler is running on this task, if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(|ctx| *ctx).ok()
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> InContext<F> {
        InContext {
            inner: CURRENT.scope(self, future),
        }
    }

    /// Runs a synchronous closure with this context as the current one.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Wraps `future` in the context current at this call (or the default context when there is
    /// none), so that it keeps it when it runs elsewhere, typically in `tokio::spawn`.
    pub fn bind<F: Future>(future: F) -> InContext<F> {
        RequestContext::current().unwrap_or_default().scope(future)
    }
}

pin_project! {
    /// A future that runs inside a [`RequestContext`]; made by [`RequestContext::scope`] and
    /// [`RequestContext::bind`].
    pub struct InContext<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, F>,
    }
}

impl<F> fmt::Debug for InContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InContext").finish_non_exhaustive()
    }
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    /// The context the server layers stored, or the default (no deadline, `Normal`) when they
    /// are not installed.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(RequestContext::in_extensions(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn split_shares_what_remains_between_attempts() {
        let deadline = Deadline::after(Duration::from_secs(9));
        let first = deadline.split(3);
        assert_eq!(first.remaining(), Duration::from_secs(3));
        // The first attempt answers after 1 s: its 2 unused seconds go to the next two.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(deadline.split(2).remaining(), Duration::from_secs(4));
        assert_eq!(deadline.split(1), deadline);
        assert_eq!(deadline.split(0), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_and_remaining() {
        let deadline = Deadline::after(Duration::from_millis(100));
        assert!(!deadline.is_expired());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(deadline.is_expired());
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_timeouts_do_not_overflow_the_clock() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.remaining() >= FAR_FUTURE - Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_picks_the_sooner() {
        let a = Deadline::after(Duration::from_secs(1));
        let b = Deadline::after(Duration::from_secs(2));
        assert_eq!(a.earliest(b), a);
        assert_eq!(b.earliest(a), a);
    }

    #[test]
    fn priority_parses_case_insensitively_and_displays_lowercase() {
        for (text, expected) in [
            ("high", Priority::High),
            ("HIGH", Priority::High),
            (" Normal ", Priority::Normal),
            ("lOw", Priority::Low),
        ] {
            assert_eq!(text.parse::<Priority>(), Ok(expected), "{text:?}");
        }
        for bad in ["", "urgent", "hi", "highh", "1"] {
            assert!(bad.parse::<Priority>().is_err(), "{bad:?}");
        }
        assert_eq!(Priority::High.to_string(), "high");
        assert_eq!(Priority::Normal.to_string(), "normal");
    }

    #[test]
    fn normalisation_meets_in_the_middle() {
        use Priority::*;
        let table = [
            (Low, High, Normal),
            (High, Low, Normal),
            (Low, Low, Low),
            (High, High, High),
            (Low, Normal, Low),
            (High, Normal, High),
            (Normal, High, Normal),
            (Normal, Low, Normal),
        ];
        for (own, inbound, expected) in table {
            assert_eq!(own.normalize(inbound), expected, "{own} under {inbound}");
        }
    }

    #[tokio::test]
    async fn current_is_set_inside_scope_only() {
        assert_eq!(RequestContext::current(), None);
        let ctx = RequestContext::new(None, Priority::Low);
        let seen = ctx.scope(async { RequestContext::current() }).await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(RequestContext::current(), None);
    }

    #[tokio::test]
    async fn spawned_tasks_see_nothing_unless_bound() {
        let ctx = RequestContext::new(None, Priority::High);
        let (unbound, bound) = ctx
            .scope(async {
                let unbound = tokio::spawn(async { RequestContext::current() });
                let bound = tokio::spawn(RequestContext::bind(async { RequestContext::current() }));
                (unbound.await.unwrap(), bound.await.unwrap())
            })
            .await;
        assert_eq!(unbound, None);
        assert_eq!(bound, Some(ctx));
    }
}
