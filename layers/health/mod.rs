//! Health checks for axum: `/healthz` for liveness, `/readyz` for readiness.
//!
//! - `/healthz` answers `200 ok` as long as the process can answer at all. It touches no
//!   upstream: a failing dependency must not get every instance restarted at once.
//! - `/readyz` answers `200 ready` when the instance should get traffic, and `503` with the
//!   reasons otherwise: while a [`Shutdown`] is draining (so load balancers move traffic away
//!   before the listener closes), or when one of the optional checks fails. Each check is an
//!   async closure with its own timeout (a check that does not answer in time fails); checks run
//!   concurrently, and a check that panics fails without taking the probe down.
//!
//! A check is for something that makes this instance useless *and* that another instance might
//! not share, for example "no circuit breaker to the database is open". Both endpoints send
//! `Cache-Control: no-store`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_lifeline::health::Health;
//! use tower_lifeline::shutdown::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let health = Health::new()
//!     .shutdown(&shutdown)
//!     .check("cache", Duration::from_millis(200), || async { Ok(()) });
//! let app = Router::new().route("/", get(|| async { "hello" })).merge(health.router());
//!
//! let get = |path| Request::get(path).body(Body::empty()).unwrap();
//! assert_eq!(app.clone().oneshot(get("/readyz")).await.unwrap().status(), StatusCode::OK);
//!
//! shutdown.trigger();
//! let response = app.clone().oneshot(get("/readyz")).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
//! assert_eq!(&body[..], b"not ready: draining\n");
//! // Still alive: draining is no reason to be restarted.
//! assert_eq!(app.oneshot(get("/healthz")).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};

use crate::error::BoxError;

/// How long a `/readyz` result is reused before the checks run again.
pub const PROBE_CACHE: Duration = Duration::from_secs(1);

type RecentProbe = Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Readiness)>>>;
use crate::shutdown::Shutdown;

#[cfg(test)]
mod tests;

/// The liveness path.
pub const LIVENESS_PATH: &str = "/healthz";

/// The readiness path.
pub const READINESS_PATH: &str = "/readyz";

type CheckFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync;

#[derive(Clone)]
struct Check {
    name: String,
    timeout: Duration,
    run: Arc<CheckFn>,
}

/// Liveness and readiness: the checks, the shutdown handle, and the router that serves them.
///
/// See the [module docs](self).
#[derive(Clone, Default)]
pub struct Health {
    shutdown: Option<Shutdown>,
    checks: Arc<Vec<Check>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("Health")
            .field("shutdown", &self.shutdown)
            .field("checks", &names)
            .finish()
    }
}

impl Health {
    /// Health with no checks and no shutdown handle: always live, always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Readiness fails while `shutdown` is draining.
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Adds a readiness check: `check` runs on every `/readyz` probe and must answer `Ok(())`
    /// within `timeout`.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, timeout: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let run: Arc<CheckFn> = Arc::new(move || Box::pin(check()));
        let check = Check {
            name: name.into(),
            timeout,
            run,
        };
        Arc::make_mut(&mut self.checks).push(check);
        self
    }

    /// Whether the instance is live: always, since answering at all is the proof.
    pub fn liveness(&self) -> bool {
        true
    }

    /// Runs the readiness checks (skipped while draining) and reports.
    pub async fn readiness(&self) -> Readiness {
        if self.shutdown.as_ref().is_some_and(Shutdown::is_draining) {
            return Readiness {
                draining: true,
                failures: Vec::new(),
            };
        }
        let running: Vec<_> = self
            .checks
            .iter()
            .map(|check| {
                let run = check.run.clone();
                let timeout = check.timeout;
                let task = tokio::spawn(async move { tokio::time::timeout(timeout, run()).await });
                (check.name.clone(), timeout, task)
            })
            .collect();
        let mut failures = Vec::new();
        for (name, timeout, task) in running {
            let reason = match task.await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(error))) => error.to_string(),
                Ok(Err(_elapsed)) => format!("no answer within {timeout:?}"),
                Err(join) if join.is_panic() => "panicked".to_string(),
                Err(_) => "cancelled".to_string(),
            };
            failures.push(CheckFailure { name, reason });
        }
        Readiness {
            draining: false,
            failures,
        }
    }

    /// Readiness for a probe: fresh while draining, else the last result if recent enough.
    async fn probe(&self, recent: &RecentProbe) -> Readiness {
        if self.shutdown.as_ref().is_some_and(Shutdown::is_draining) {
            return self.readiness().await;
        }
        // Held across the checks: concurrent probes wait for one run instead of starting many.
        let mut recent = recent.lock().await;
        if let Some((at, readiness)) = recent.as_ref() {
            if at.elapsed() < PROBE_CACHE {
                return readiness.clone();
            }
        }
        let readiness = self.readiness().await;
        for failure in &readiness.failures {
            tracing::warn!(check = %failure.name, reason = %failure.reason, "readiness check failed");
        }
        *recent = Some((tokio::time::Instant::now(), readiness.clone()));
        readiness
    }

    /// A router serving [`LIVENESS_PATH`] and [`READINESS_PATH`], to `merge` into the app.
    ///
    /// The probe endpoint is public and sits outside load shedding, so its checks run at most
    /// once per [`PROBE_CACHE`]: probes in that time share the last result, and probes that
    /// arrive while the checks run wait for that one run. Draining is never cached.
    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let recent: RecentProbe = Arc::default();
        Router::new()
            .route(
                LIVENESS_PATH,
                get(|| async { no_store((StatusCode::OK, "ok\n")) }),
            )
            .route(
                READINESS_PATH,
                get(move || {
                    let (health, recent) = (self.clone(), recent.clone());
                    async move { health.probe(&recent).await.into_response() }
                }),
            )
    }
}

fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    // A cached probe answer would hide a change of state.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The outcome of a readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Shutdown has been triggered (checks are not run then).
    pub draining: bool,
    /// The checks that failed.
    pub failures: Vec<CheckFailure>,
}

impl Readiness {
    /// Whether the instance should get traffic.
    pub fn is_ready(&self) -> bool {
        !self.draining && self.failures.is_empty()
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.draining {
            return writeln!(f, "not ready: draining");
        }
        if self.failures.is_empty() {
            return writeln!(f, "ready");
        }
        for failure in &self.failures {
            writeln!(f, "not ready: {}: {}", failure.name, failure.reason)?;
        }
        Ok(())
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let status = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // The public answer names the failing checks; their errors, which can reveal internals
        // (hosts, credentials in URLs), go to the log instead.
        let body = if self.draining {
            "not ready: draining\n".to_string()
        } else if self.failures.is_empty() {
            "ready\n".to_string()
        } else {
            self.failures
                .iter()
                .map(|f| format!("not ready: {}\n", f.name))
                .collect()
        };
        no_store((status, body))
    }
}

/// A readiness check that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The check's name.
    pub name: String,
    /// Its error, or the timeout it missed.
    pub reason: String,
}
