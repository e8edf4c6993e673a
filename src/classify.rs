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
//! - a call an open circuit breaker refused with a `CircuitOpen` error is final, as its
//!   synthetic 502 with `X-Do-Not-Retry` is;
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
        // An open breaker's refusal (its `return_error` mode) is final, as its 502 with
        // `X-Do-Not-Retry` is: retrying it would only spend the budget and wait out backoffs.
        #[cfg(feature = "circuit-breaker")]
        if crate::error::find_source::<crate::circuit_breaker::CircuitOpen>(error).is_some() {
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
}
