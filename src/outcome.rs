//! The outcome of one attempt: the one judgement that every client layer reads.
//!
//! Four layers ask four different questions of the same attempt:
//!
//! | layer | question | answered by |
//! |---|---|---|
//! | strategy | try again? | [`Outcome::is_retryable`], [`Outcome::never_left`] |
//! | circuit breaker | is the destination failing? | [`Outcome::destination_failed`] |
//! | percentile delays | is this a latency sample? | [`Outcome::is_success`] (and a 2xx status) |
//! | metrics | what happened? | the status, or the error's type (`timeout`, `error`, `circuit_open`) |
//!
//! One bit cannot answer all four, which is why a hanging destination once never opened the
//! breaker: an attempt cut by the deadline was "final" to the strategy and therefore counted as a
//! success. The outcome keeps the distinctions apart, after linkerd's response classes and
//! tower-http's `ClassifyResponse`:
//!
//! - **Success**: the destination answered and the answer is kept (a 2xx, most 4xx, a status
//!   the server marked `X-Do-Not-Retry`).
//! - **Failure**: the destination failed after the request left (a 5xx, 408 or 429, a reset, a
//!   body cut short, an attempt that ran out of time whichever layer cut it). The breaker counts
//!   it; the strategy retries it when the method, the time and the budget allow.
//! - **NotSent**: the request never left because the destination could not be reached (connect
//!   refused or timed out, DNS, an HTTP/2 stream the server refused). Retried for *any* method,
//!   since the server never saw it; the breaker counts it.
//! - **NotSentLocally**: the request never left for a reason of ours (no connection free within
//!   the pool timeout). Retried for any method; says nothing about the destination.
//! - **Refused**: refused here before sending (too little time left, an open breaker). Final, and
//!   says nothing about the destination.
//! - **Cancelled**: we gave up on it (a hedge that lost the race, a caller that went away). Says
//!   nothing about the destination.
//!
//! ```
//! use tower_lifeline::outcome::Outcome;
//!
//! assert!(Outcome::Failure.is_retryable() && Outcome::Failure.destination_failed() == Some(true));
//! assert!(Outcome::NotSent.never_left() && Outcome::NotSent.is_retryable());
//! assert_eq!(Outcome::Cancelled.destination_failed(), None);
//! assert_eq!(Outcome::Refused.as_str(), "refused");
//! ```

use std::fmt;

/// What one attempt came to. See the [module docs](self).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The destination answered and the answer is kept.
    Success,
    /// The destination failed after the request left; worth another attempt where allowed.
    Failure,
    /// The request never left: the destination could not be reached.
    NotSent,
    /// The request never left for a local reason (no connection free in time).
    NotSentLocally,
    /// Refused here before sending: too little time, or an open circuit breaker. Final.
    Refused,
    /// Cancelled by us: a hedge that lost, or a caller that went away.
    Cancelled,
}

impl Outcome {
    /// Whether the answer is a success to keep.
    pub fn is_success(self) -> bool {
        self == Outcome::Success
    }

    /// Whether another attempt could mend it (time, budget and method permitting).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::Failure | Outcome::NotSent | Outcome::NotSentLocally
        )
    }

    /// Whether the request never reached the destination, so that repeating it is safe for any
    /// method, a `POST` without `Idempotency-Key` included.
    pub fn never_left(self) -> bool {
        matches!(self, Outcome::NotSent | Outcome::NotSentLocally)
    }

    /// What the attempt says about the destination: `Some(true)` a failure, `Some(false)` a
    /// success, `None` nothing (refused or cancelled here, or held up on our side).
    pub fn destination_failed(self) -> Option<bool> {
        match self {
            Outcome::Success => Some(false),
            Outcome::Failure | Outcome::NotSent => Some(true),
            Outcome::NotSentLocally | Outcome::Refused | Outcome::Cancelled => None,
        }
    }

    /// A short lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::NotSent => "not_sent",
            Outcome::NotSentLocally => "not_sent_locally",
            Outcome::Refused => "refused",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Failure,
        Outcome::NotSent,
        Outcome::NotSentLocally,
        Outcome::Refused,
        Outcome::Cancelled,
    ];

    #[test]
    fn only_what_never_left_may_be_repeated_for_any_method() {
        for outcome in ALL {
            assert_eq!(
                outcome.never_left(),
                matches!(outcome, Outcome::NotSent | Outcome::NotSentLocally),
                "{outcome}"
            );
            if outcome.never_left() {
                assert!(outcome.is_retryable(), "{outcome}");
            }
        }
    }

    #[test]
    fn refusals_and_cancellations_say_nothing_about_the_destination() {
        for outcome in [
            Outcome::Refused,
            Outcome::Cancelled,
            Outcome::NotSentLocally,
        ] {
            assert_eq!(outcome.destination_failed(), None, "{outcome}");
        }
        assert!(!Outcome::Refused.is_retryable());
        assert!(!Outcome::Cancelled.is_retryable());
    }
}
