//! Response classification: whether an outcome is a success to keep or a failure to retry.
//!
//! One classifier is shared by the strategies (retry or not) and the circuit breaker (count a
//! failure or not), so both layers agree on what failed. The default is aio-request's:
//!
//! - a response carrying `X-Do-Not-Retry` is accepted, whatever its status;
//! - 5xx, 408 and 429 are rejected;
//! - transport errors (refused, reset, timed out) are rejected;
//! - a call the deadline layer refused to send, for want of time, is final: no time is left
//!   for another attempt;
//! - a call an open circuit breaker refused is final: the breaker answers for the destination;
//! - an attempt the caller's deadline cut short is final, and no failure of the destination;
//! - everything else is accepted.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_lifeline::classify::{Classify, DefaultClassifier, Verdict};
//!
//! let classifier = DefaultClassifier::new().with_status(StatusCode::NOT_IMPLEMENTED, Verdict::Accept);
//! let headers = HeaderMap::new();
//! assert_eq!(classifier.classify_response(StatusCode::SERVICE_UNAVAILABLE, &headers), Verdict::Reject);
//! assert_eq!(classifier.classify_response(StatusCode::NOT_IMPLEMENTED, &headers), Verdict::Accept);
//! assert_eq!(classifier.classify_response(StatusCode::NOT_FOUND, &headers), Verdict::Accept);
//! ```

use std::error::Error;

use http::{HeaderMap, StatusCode};

use crate::headers;

/// What a classifier makes of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A success, or a failure that repeating would not mend: keep it, count it as a success.
    Accept,
    /// A failure worth another attempt: retry it (budget allowing), count it against the breaker.
    Reject,
}

/// Classifies responses and transport errors.
///
/// It sees only the status and headers, never the body, so classifying costs nothing and works
/// for any body type.
pub trait Classify: Clone + Send + Sync + 'static {
    /// The verdict on a response.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Verdict;

    /// The verdict on a transport error. By default every error is rejected.
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Verdict {
        let _ = error;
        Verdict::Reject
    }
}

/// aio-request's classification, with per-status overrides. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct DefaultClassifier {
    overrides: Vec<(StatusCode, Verdict)>,
}

impl DefaultClassifier {
    /// The default classification with no overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `status` the verdict `verdict`, whatever the default says. `X-Do-Not-Retry` still
    /// wins over an override: the server's word is final.
    pub fn with_status(mut self, status: StatusCode, verdict: Verdict) -> Self {
        self.overrides.retain(|(s, _)| *s != status);
        self.overrides.push((status, verdict));
        self
    }
}

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if headers::is_do_not_retry(headers) {
            return Verdict::Accept;
        }
        // A short linear scan: overrides are few, and a Vec keeps the default allocation-free.
        if let Some((_, verdict)) = self.overrides.iter().find(|(s, _)| *s == status) {
            return *verdict;
        }
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Verdict::Reject
        } else {
            Verdict::Accept
        }
    }

    fn classify_error(&self, error: &(dyn Error + 'static)) -> Verdict {
        #[cfg(feature = "deadline")]
        if crate::error::find_source::<crate::deadline::DeadlineExceeded>(error)
            .is_some_and(|e| !e.was_sent())
        {
            return Verdict::Accept;
        }
        #[cfg(feature = "circuit-breaker")]
        if crate::error::find_source::<crate::circuit_breaker::CircuitOpen>(error).is_some() {
            return Verdict::Accept;
        }
        // An attempt cut short by the caller's own deadline says nothing about the destination
        // (a breaker must not open on a healthy one) and leaves no time for another attempt.
        #[cfg(feature = "timeout")]
        if crate::error::find_source::<crate::timeout::AttemptTimedOut>(error)
            .is_some_and(|e| e.by_deadline())
        {
            return Verdict::Accept;
        }
        let _ = error;
        Verdict::Reject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        let c = DefaultClassifier::new();
        let empty = HeaderMap::new();
        for (code, verdict) in [
            (200, Verdict::Accept),
            (204, Verdict::Accept),
            (301, Verdict::Accept),
            (400, Verdict::Accept),
            (404, Verdict::Accept),
            (408, Verdict::Reject),
            (429, Verdict::Reject),
            (500, Verdict::Reject),
            (502, Verdict::Reject),
            (503, Verdict::Reject),
            (599, Verdict::Reject),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(c.classify_response(status, &empty), verdict, "{code}");
        }
    }

    #[test]
    fn do_not_retry_accepts_any_status() {
        let mut headers = HeaderMap::new();
        headers.insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
        let c = DefaultClassifier::new().with_status(StatusCode::BAD_GATEWAY, Verdict::Reject);
        assert_eq!(
            c.classify_response(StatusCode::BAD_GATEWAY, &headers),
            Verdict::Accept
        );
        assert_eq!(
            c.classify_response(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Verdict::Accept
        );
    }

    #[test]
    fn overrides_replace_earlier_overrides() {
        let c = DefaultClassifier::new()
            .with_status(StatusCode::CONFLICT, Verdict::Reject)
            .with_status(StatusCode::CONFLICT, Verdict::Accept);
        assert_eq!(
            c.classify_response(StatusCode::CONFLICT, &HeaderMap::new()),
            Verdict::Accept
        );
    }

    #[cfg(feature = "circuit-breaker")]
    #[test]
    fn an_open_breakers_refusal_is_final() {
        let open: crate::error::BoxError = Box::new(crate::circuit_breaker::CircuitOpen::new(
            "http://backend".into(),
            crate::circuit_breaker::CircuitState::Open,
            None,
        ));
        assert_eq!(
            DefaultClassifier::new().classify_error(open.as_ref()),
            Verdict::Accept
        );
    }

    #[test]
    fn errors_are_rejected() {
        let err = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            DefaultClassifier::new().classify_error(&err),
            Verdict::Reject
        );
    }

    #[cfg(feature = "deadline")]
    #[test]
    fn a_call_refused_for_want_of_time_is_final() {
        use crate::deadline::DeadlineExceeded;
        use std::time::Duration;
        let c = DefaultClassifier::new();
        let not_sent =
            DeadlineExceeded::not_sent(Duration::from_millis(1), Duration::from_millis(5));
        assert_eq!(c.classify_error(&not_sent), Verdict::Accept);
        let elapsed = DeadlineExceeded::elapsed(Duration::from_secs(1));
        assert_eq!(c.classify_error(&elapsed), Verdict::Reject);
    }

    #[cfg(feature = "timeout")]
    #[tokio::test(start_paused = true)]
    async fn an_attempt_cut_by_the_deadline_is_final_but_its_own_timeout_is_not() {
        use crate::context::Deadline;
        use std::time::Duration;
        use tower::{Layer, ServiceExt};
        let hang = tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::io::Error>>()
        });
        let classify = |deadline: Duration| async move {
            let mut request = http::Request::new(());
            request.extensions_mut().insert(Deadline::after(deadline));
            let svc = crate::timeout::AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(hang);
            let err = svc.oneshot(request).await.unwrap_err();
            DefaultClassifier::new().classify_error(err.as_ref())
        };
        assert_eq!(
            classify(Duration::from_millis(100)).await,
            Verdict::Accept,
            "deadline"
        );
        assert_eq!(
            classify(Duration::from_secs(10)).await,
            Verdict::Reject,
            "own timeout"
        );
    }

    #[cfg(feature = "circuit-breaker")]
    #[tokio::test(start_paused = true)]
    async fn a_breaker_refusal_is_final() {
        use crate::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings};
        use std::time::Duration;
        use tower::{Layer, ServiceExt};
        let settings = CircuitBreakerSettings::builder()
            .minimum_throughput(1)
            .failure_threshold(0.5)
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap();
        let layer = CircuitBreakerLayer::new(settings).return_error();
        let failing = tower::service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<()>, _>(std::io::Error::other("down"))
        });
        let request = || http::Request::get("http://down/").body(()).unwrap();
        let first = layer.layer(failing).oneshot(request()).await.unwrap_err();
        assert_eq!(
            DefaultClassifier::new().classify_error(first.as_ref()),
            Verdict::Reject
        );
        let refused = layer.layer(failing).oneshot(request()).await.unwrap_err();
        assert_eq!(
            DefaultClassifier::new().classify_error(refused.as_ref()),
            Verdict::Accept
        );
    }
}
