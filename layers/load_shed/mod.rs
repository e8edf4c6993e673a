//! Load shedding by priority and remaining deadline: when the server is full, drop the least
//! important work first, and never start work that cannot finish in time.
//!
//! [`LoadShedLayer`] limits how many requests run at once and admits each by the
//! [`Priority`] in its [`RequestContext`] (put there by the
//! [priority layer](crate::priority), so this layer sits inside it). The limit is either
//! adaptive ([`LoadShedLayer::adaptive`], the `Server` preset's default: found from the
//! requests' latency, see [`AdaptiveLimit`]) or a fixed capacity ([`LoadShedLayer::new`]):
//!
//! - `Low` is admitted while fewer than the low limit are in flight (half the limit by
//!   default);
//! - `Normal` while fewer than the normal limit are (the limit minus a fifth reserved for
//!   `High`);
//! - `High` up to the full limit.
//!
//! So as load grows, `Low` is shed first, then `Normal`, and a share stays free for `High`: the
//! SRE book's criticality. A shed request gets `503 Service Unavailable` with a short
//! `Retry-After` (1 s by default) so callers back off, without reaching the handler.
//!
//! Deadline-aware admission: the layer keeps a moving average (EWMA) of how long each route takes,
//! keyed by axum's `MatchedPath` (or a key function of your own), in a table bounded to 256 routes
//! by default. A request whose remaining deadline is shorter than its route's typical time is
//! refused with `503` and `X-Do-Not-Retry: 1` at once: it could not finish anyway, and another
//! attempt with the same deadline could not either. One such request in 16 is let through as a
//! probe, so that the estimate can come down when the route gets faster.
//!
//! [`LoadShedLayer::stats`] gives a [`LoadShedStats`] snapshot of what was admitted and what was
//! shed, and why.
//!
//! The layer answers in `call`, as axum's always-ready router needs, and its hot path is atomics
//! only; the route table takes a shared read lock, and a write lock only for a route's first
//! request. Every service the layer makes shares one limit, so `Router::layer` (which wraps each
//! route separately) still limits the whole server.
//!
//! A request counts as in flight until its response body ends or is dropped, so a streaming
//! response holds its slot while it streams, or until its deadline passes, whichever comes first:
//! a handler still running past its caller's deadline (with the deadline layer's
//! `cancel_on_expiry` off) keeps running, but gives its slot back, so callers that stall (a body
//! that never finishes) cannot hold the server's capacity past their deadline.
//!
//! The route's service time is what the server controls: measured to the response head, from
//! the end of the request body when a [`RequestBodyTimeoutLayer`](crate::body_timeout) outside
//! marked it (an upload's pace is the caller's), and only for requests that succeeded: one that
//! was dropped, failed (5xx, 408, an error) or whose body failed is no sample.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lifeline::load_shed::LoadShedLayer;
//! use tower_lifeline::priority::ServerPriorityLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A capacity of 10: Low may use 5 slots, Normal 8, High all 10.
//! let shed = LoadShedLayer::new(10);
//! let app = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(ServiceBuilder::new().layer(ServerPriorityLayer::new()).layer(shed.clone()));
//!
//! let request = Request::get("/").header("x-request-priority", "low").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(shed.stats().admitted, 1);
//! assert_eq!(shed.stats().shed_total(), 0);
//! # }
//! ```
//!
//! # Differences from `tower::load_shed` and `tower::limit::concurrency`
//!
//! tower's pair signals overload through `poll_ready` and fails with an error; axum's router is
//! always ready, and a dropped connection tells the caller nothing. Here admission is decided per
//! request in `call`, by priority and deadline, and the answer is an HTTP response the caller can
//! act on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tower_layer::Layer;

#[cfg(doc)]
use crate::context::{Priority, RequestContext};

mod adaptive;
mod body;
mod route;
mod service;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use adaptive::AdaptiveLimit;
use adaptive::Controller;
pub use body::ShedBody;
use route::RouteKey;
pub use service::{LoadShed, LoadShedFuture};
use state::{Config, Settings, State};
pub use stats::LoadShedStats;

/// The default number of routes whose service time is tracked.
pub const DEFAULT_MAX_ROUTES: usize = 256;

/// The default `Retry-After` of a shed request.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Sheds load by priority and refuses requests that cannot finish in time.
///
/// Clones share one limit and one set of counters, so that `Router::layer` (which wraps each
/// route separately) still limits the whole server. A setting changed on a clone changes that
/// clone's settings (its thresholds, its `Retry-After`), never the shared limit: the requests in
/// flight are counted once, whichever clone admitted them.
///
/// See the [module docs](self) for the behaviour and an example.
#[derive(Clone)]
pub struct LoadShedLayer {
    config: Arc<Config>,
}

impl LoadShedLayer {
    /// At most `capacity` requests in flight (at least 1). `Low` may use half of it, `Normal` all
    /// but a fifth (reserved for `High`), `High` all of it. Deadline admission is on, keyed by
    /// axum's `MatchedPath`.
    pub fn new(capacity: usize) -> Self {
        Self::with_state(capacity, State::default())
    }

    /// No capacity to configure: the limit is found from the requests' latency (see
    /// [`AdaptiveLimit`]) and `Low` may use half of the current limit, `Normal` all but a fifth,
    /// `High` all of it. Deadline admission is on, keyed by axum's `MatchedPath`.
    pub fn adaptive() -> Self {
        Self::adaptive_with(AdaptiveLimit::new())
    }

    /// [`adaptive`](Self::adaptive), with settings of your own.
    pub fn adaptive_with(settings: AdaptiveLimit) -> Self {
        let state = State {
            adaptive: Some(Controller::new(settings)),
            ..State::default()
        };
        Self::with_state(usize::MAX, state)
    }

    fn with_state(capacity: usize, state: State) -> Self {
        let capacity = capacity.max(1);
        let reserve = (capacity / 5).max(usize::from(capacity > 1));
        let normal_limit = capacity - reserve;
        let low_limit = (capacity / 2).clamp(1, normal_limit.max(1));
        LoadShedLayer {
            config: Arc::new(Config {
                settings: Settings {
                    capacity,
                    low_limit,
                    normal_limit,
                    retry_after: retry_after_value(DEFAULT_RETRY_AFTER),
                    max_routes: DEFAULT_MAX_ROUTES,
                    deadline_admission: true,
                    route_key: RouteKey::MatchedPath,
                },
                state: Arc::new(state),
            }),
        }
    }

    /// Sets how many requests `Low` and `Normal` may have in flight; `High` may always use the
    /// whole capacity. Out-of-range values are clamped so that
    /// `1 <= low <= normal <= capacity`. An adaptive limit keeps its shares instead.
    pub fn priority_limits(self, low: usize, normal: usize) -> Self {
        self.configure(|s| {
            s.normal_limit = normal.clamp(1, s.capacity);
            s.low_limit = low.clamp(1, s.normal_limit);
        })
    }

    /// The `Retry-After` sent with a shed request, in whole seconds (default 1 s; rounded up).
    pub fn retry_after(self, after: Duration) -> Self {
        self.configure(|s| s.retry_after = retry_after_value(after))
    }

    /// Turns deadline-aware admission on or off (on by default).
    pub fn deadline_admission(self, on: bool) -> Self {
        self.configure(|s| s.deadline_admission = on)
    }

    /// The most routes whose service time is tracked (default 256); a route seen after the
    /// table is full is admitted without an estimate.
    pub fn max_routes(self, max: usize) -> Self {
        self.configure(|s| s.max_routes = max)
    }

    /// Names a request's route for its service-time estimate, in place of axum's `MatchedPath`.
    /// The function sees the request's method and URI; `None` means "no estimate". Return a
    /// bounded set of names: templates, never raw paths.
    pub fn route_key<F>(self, key: F) -> Self
    where
        F: Fn(&http::Method, &http::Uri) -> Option<String> + Send + Sync + 'static,
    {
        self.configure(|s| s.route_key = RouteKey::Custom(Arc::new(key)))
    }

    /// What has been admitted and shed so far, and how many requests are in flight now.
    pub fn stats(&self) -> LoadShedStats {
        self.config.state.stats(&self.config.settings)
    }

    /// Changes this layer's settings; the state stays shared with every clone.
    fn configure(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut Arc::make_mut(&mut self.config).settings);
        self
    }
}

fn retry_after_value(after: Duration) -> HeaderValue {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(seconds)
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field(
                "adaptive",
                &self.config.state.adaptive.as_ref().map(|c| c.settings()),
            )
            .field("capacity", &self.config.settings.capacity)
            .field("low_limit", &self.config.settings.low_limit)
            .field("normal_limit", &self.config.settings.normal_limit)
            .field(
                "deadline_admission",
                &self.config.settings.deadline_admission,
            )
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed::from_parts(inner, self.config.clone())
    }
}
