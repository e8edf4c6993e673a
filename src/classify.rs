//! Response classification: the [`Outcome`] of an attempt, the same judgement wherever it is read.
//!
//! One classifier is shared by the strategies (retry or not), the circuit breaker (count a
//! failure or not) and the percentile delays (a latency sample or not), so all of them agree on
//! what happened; the metrics label the same errors by their types. The default is aio-request's, in its order:
//!
//! - a per-status override ([`DefaultClassifier::with_status`]) comes first, as aio-request
//!   checks `verdict_for_status` first;
//! - a response carrying `X-Do-Not-Retry` is a [`Success`](Outcome::Success), whatever its
//!   status (aio-request accepts it; the server asked for no repeat);
//! - 5xx, 408 and 429 are a [`Failure`](Outcome::Failure);
//! - everything else is a [`Success`](Outcome::Success).
//!
//! Errors are judged by [`outcome_of_error`], which finds the typed errors of the stack:
//!
//! - the request never left ([`Outcome::NotSent`]): a connect error of hyper-util or reqwest
//!   (refused, timed out, DNS, a TLS handshake),
//!   `ECONNREFUSED`, an HTTP/2 stream the server refused (`RST_STREAM` with `REFUSED_STREAM`)
//!   or left unprocessed (above the last stream id of a graceful `GOAWAY`);
//! - no connection free in time ([`Outcome::NotSentLocally`]): the `Client` preset's
//!   [`PoolTimeout`](crate::client::PoolTimeout);
//! - refused here ([`Outcome::Refused`]): a call the deadline layer did not send for want of
//!   time, a call an open breaker refused, a response body over the cap;
//! - everything else, attempts that ran out of time included, whichever layer cut them, is a
//!   [`Failure`](Outcome::Failure).
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_lifeline::classify::{Classify, DefaultClassifier};
//! use tower_lifeline::outcome::Outcome;
//!
//! let classifier = DefaultClassifier::new().with_status(StatusCode::NOT_IMPLEMENTED, Outcome::Success);
//! let headers = HeaderMap::new();
//! assert_eq!(classifier.classify_response(StatusCode::SERVICE_UNAVAILABLE, &headers), Outcome::Failure);
//! assert_eq!(classifier.classify_response(StatusCode::NOT_IMPLEMENTED, &headers), Outcome::Success);
//! assert_eq!(classifier.classify_response(StatusCode::NOT_FOUND, &headers), Outcome::Success);
//! ```

use std::error::Error;

use http::{HeaderMap, StatusCode};

use crate::error::find_source;
use crate::headers;
pub use crate::outcome::Outcome;

/// Classifies responses and errors into an [`Outcome`].
///
/// It sees only the status and headers, never the body, so classifying costs nothing and works
/// for any body type. A body that fails is an error of the attempt when the body is read inside
/// it (the `Client` preset does, and so does [`ReadBodyLayer`](crate::read_body::ReadBodyLayer)).
pub trait Classify: Clone + Send + Sync + 'static {
    /// The outcome of a response.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome;

    /// The outcome of an error. By default [`outcome_of_error`].
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        outcome_of_error(error)
    }

    /// What a gRPC call that ended with `code` says about its destination, for the circuit
    /// breaker (the retry decision reads [`classify_response`](Self::classify_response) of a
    /// trailers-only answer instead). By default
    /// [`grpc::destination_outcome`](crate::grpc::destination_outcome).
    #[cfg(feature = "grpc")]
    fn classify_grpc_end(&self, code: tonic::Code) -> Outcome {
        crate::grpc::destination_outcome(code)
    }
}

/// The outcome of an error from the client stack: see the [module docs](self).
pub fn outcome_of_error(error: &(dyn Error + 'static)) -> Outcome {
    #[cfg(feature = "deadline")]
    if let Some(exceeded) = find_source::<crate::deadline::DeadlineExceeded>(error) {
        // Sent and cut at the deadline: the destination did not answer in time.
        return if exceeded.was_sent() {
            Outcome::Failure
        } else {
            Outcome::Refused
        };
    }
    #[cfg(feature = "circuit-breaker")]
    if find_source::<crate::circuit_breaker::CircuitOpen>(error).is_some() {
        return Outcome::Refused;
    }
    #[cfg(feature = "client")]
    if find_source::<crate::client::PoolTimeout>(error).is_some() {
        return Outcome::NotSentLocally;
    }
    #[cfg(feature = "read-body")]
    if find_source::<crate::read_body::ResponseBodyTooLarge>(error).is_some() {
        return Outcome::Refused;
    }
    // The response's head arrived: the request reached the server, whatever ended the body (a
    // stream reset with REFUSED_STREAM after the head included). Never "never left".
    #[cfg(feature = "read-body")]
    if find_source::<crate::read_body::ResponseBodyFailed>(error).is_some() {
        return Outcome::Failure;
    }
    if never_left(error) {
        return Outcome::NotSent;
    }
    Outcome::Failure
}

/// Why a call or attempt got no response, for labels (metrics' status, a span's `error.type`):
/// one rule, so that the two never name the same error differently.
#[cfg(any(feature = "metrics", feature = "opentelemetry"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// An open circuit breaker refused it.
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    CircuitOpen,
    /// A deadline, an attempt timeout or a pool timeout ended it, or it was not sent for want
    /// of time.
    Timeout,
    /// Any other failure: refused, reset, a body cut short.
    Error,
}

/// The [`FailureKind`] of an error from the client stack.
#[cfg(any(feature = "metrics", feature = "opentelemetry"))]
pub(crate) fn failure_kind(error: &(dyn Error + 'static)) -> FailureKind {
    #[cfg(feature = "circuit-breaker")]
    if find_source::<crate::circuit_breaker::CircuitOpen>(error).is_some() {
        return FailureKind::CircuitOpen;
    }
    #[cfg(feature = "timeout")]
    if find_source::<crate::timeout::AttemptTimedOut>(error).is_some() {
        return FailureKind::Timeout;
    }
    #[cfg(feature = "deadline")]
    if find_source::<crate::deadline::DeadlineExceeded>(error).is_some() {
        return FailureKind::Timeout;
    }
    #[cfg(feature = "client")]
    if find_source::<crate::client::PoolTimeout>(error).is_some() {
        return FailureKind::Timeout;
    }
    if find_source::<std::io::Error>(error)
        .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    {
        return FailureKind::Timeout;
    }
    FailureKind::Error
}

/// Whether an error says the request never reached the server.
fn never_left(error: &(dyn Error + 'static)) -> bool {
    #[cfg(feature = "client")]
    if find_source::<hyper_util::client::legacy::Error>(error).is_some_and(|e| e.is_connect()) {
        return true;
    }
    #[cfg(feature = "client")]
    if find_source::<h2::Error>(error).is_some_and(|e| {
        // RFC 9113, 8.7: a stream reset with REFUSED_STREAM was not processed, and a graceful
        // GOAWAY (NO_ERROR) fails only the streams above the server's last processed one. A
        // GOAWAY with an error code is not enough: h2 then fails every open stream with it,
        // processed ones included.
        e.is_remote()
            && ((e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
                || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
    }) {
        return true;
    }
    #[cfg(feature = "reqwest")]
    if find_source::<reqwest::Error>(error).is_some_and(reqwest::Error::is_connect) {
        return true;
    }
    find_source::<std::io::Error>(error)
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// aio-request's classification, with per-status overrides. See the [module docs](self).
///
/// With the `grpc` feature, a trailers-only gRPC answer (its `grpc-status` in the head) is
/// classified by its code: `OK` a success, a retryable code (by default `UNAVAILABLE`, as gRPC's
/// retry policy; see [`with_grpc_retryable`](Self::with_grpc_retryable)) a
/// [`Failure`](Outcome::Failure), any other code an answer not to repeat, a
/// [`Success`](Outcome::Success), as a 4xx is.
#[derive(Debug, Clone)]
pub struct DefaultClassifier {
    overrides: Vec<(StatusCode, Outcome)>,
    /// The retryable gRPC codes, one bit per code.
    #[cfg(feature = "grpc")]
    grpc_retryable: u32,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        DefaultClassifier {
            overrides: Vec::new(),
            #[cfg(feature = "grpc")]
            grpc_retryable: 1 << tonic::Code::Unavailable as u32,
        }
    }
}

impl DefaultClassifier {
    /// The default classification with no overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gRPC codes of a trailers-only answer that are worth another attempt (replacing the
    /// default, `UNAVAILABLE`). gRPC's retry policy names them per method; `DEADLINE_EXCEEDED`
    /// is rarely one (the time is gone), `RESOURCE_EXHAUSTED` sometimes (a busy server, not a
    /// quota).
    #[cfg(feature = "grpc")]
    pub fn with_grpc_retryable(mut self, codes: impl IntoIterator<Item = tonic::Code>) -> Self {
        self.grpc_retryable = codes
            .into_iter()
            .fold(0, |bits, code| bits | 1 << code as u32);
        self
    }

    /// Gives `status` the outcome `outcome`, whatever the default says. It comes before
    /// `X-Do-Not-Retry`, as aio-request's `verdict_for_status` does.
    pub fn with_status(mut self, status: StatusCode, outcome: Outcome) -> Self {
        self.overrides.retain(|(s, _)| *s != status);
        self.overrides.push((status, outcome));
        self
    }
}

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        // A short linear scan: overrides are few, and a Vec keeps the default allocation-free.
        if let Some((_, outcome)) = self.overrides.iter().find(|(s, _)| *s == status) {
            return *outcome;
        }
        if headers::is_do_not_retry(headers) {
            return Outcome::Success;
        }
        // A trailers-only gRPC answer: the code decides, not the HTTP 200 it rides on.
        #[cfg(feature = "grpc")]
        if let Some(code) = crate::grpc::status_in(headers) {
            return if code == tonic::Code::Ok {
                Outcome::Success
            } else if self.grpc_retryable & (1 << code as u32) != 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
        }
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        let c = DefaultClassifier::new();
        let empty = HeaderMap::new();
        for (code, outcome) in [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (301, Outcome::Success),
            (400, Outcome::Success),
            (404, Outcome::Success),
            (408, Outcome::Failure),
            (429, Outcome::Failure),
            (500, Outcome::Failure),
            (502, Outcome::Failure),
            (503, Outcome::Failure),
            (599, Outcome::Failure),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(c.classify_response(status, &empty), outcome, "{code}");
        }
    }

    #[test]
    fn do_not_retry_is_a_success_unless_an_override_says_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
        let c = DefaultClassifier::new().with_status(StatusCode::BAD_GATEWAY, Outcome::Failure);
        // aio-request checks `verdict_for_status` before the header.
        assert_eq!(
            c.classify_response(StatusCode::BAD_GATEWAY, &headers),
            Outcome::Failure
        );
        assert_eq!(
            c.classify_response(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Outcome::Success
        );
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn a_trailers_only_grpc_answer_is_judged_by_its_code() {
        let answer = |code: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", http::HeaderValue::from_static(code));
            headers
        };
        let c = DefaultClassifier::new();
        let ok = StatusCode::OK;
        assert_eq!(c.classify_response(ok, &answer("0")), Outcome::Success);
        assert_eq!(c.classify_response(ok, &answer("14")), Outcome::Failure);
        assert_eq!(c.classify_response(ok, &answer("13")), Outcome::Success);
        assert_eq!(c.classify_response(ok, &answer("4")), Outcome::Success);
        let c = c.with_grpc_retryable([tonic::Code::ResourceExhausted]);
        assert_eq!(c.classify_response(ok, &answer("8")), Outcome::Failure);
        assert_eq!(c.classify_response(ok, &answer("14")), Outcome::Success);
        // The breaker's question has its own answer: INTERNAL is the destination failing.
        assert_eq!(c.classify_grpc_end(tonic::Code::Internal), Outcome::Failure);
    }

    #[test]
    fn overrides_replace_earlier_overrides() {
        let c = DefaultClassifier::new()
            .with_status(StatusCode::CONFLICT, Outcome::Failure)
            .with_status(StatusCode::CONFLICT, Outcome::Success);
        assert_eq!(
            c.classify_response(StatusCode::CONFLICT, &HeaderMap::new()),
            Outcome::Success
        );
    }

    #[cfg(feature = "circuit-breaker")]
    #[test]
    fn an_open_breakers_refusal_is_refused_not_a_failure() {
        let open: crate::error::BoxError = Box::new(crate::circuit_breaker::CircuitOpen::new(
            "http://backend".into(),
            crate::circuit_breaker::CircuitState::Open,
            None,
        ));
        assert_eq!(
            DefaultClassifier::new().classify_error(open.as_ref()),
            Outcome::Refused
        );
    }

    #[test]
    fn a_reset_is_a_failure_and_a_refused_connection_never_left() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            DefaultClassifier::new().classify_error(&reset),
            Outcome::Failure
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            DefaultClassifier::new().classify_error(&refused),
            Outcome::NotSent
        );
    }

    #[cfg(feature = "deadline")]
    #[test]
    fn a_call_refused_for_want_of_time_is_refused_and_one_cut_after_sending_failed() {
        use crate::deadline::DeadlineExceeded;
        use std::time::Duration;
        let c = DefaultClassifier::new();
        let not_sent =
            DeadlineExceeded::not_sent(Duration::from_millis(1), Duration::from_millis(5));
        assert_eq!(c.classify_error(&not_sent), Outcome::Refused);
        let elapsed = DeadlineExceeded::elapsed(Duration::from_secs(1));
        assert_eq!(c.classify_error(&elapsed), Outcome::Failure);
    }

    #[cfg(feature = "timeout")]
    #[tokio::test(start_paused = true)]
    async fn an_attempt_cut_by_the_deadline_or_its_own_timeout_is_a_failure_of_the_destination() {
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
            Outcome::Failure,
            "deadline"
        );
        assert_eq!(
            classify(Duration::from_secs(10)).await,
            Outcome::Failure,
            "own timeout"
        );
    }

    #[cfg(feature = "circuit-breaker")]
    #[tokio::test(start_paused = true)]
    async fn a_breaker_refusal_is_refused() {
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
            Outcome::Failure
        );
        let refused = layer.layer(failing).oneshot(request()).await.unwrap_err();
        assert_eq!(
            DefaultClassifier::new().classify_error(refused.as_ref()),
            Outcome::Refused
        );
    }
}
