use std::fmt;
use std::time::Duration;

/// A client call ran out of time: either it was refused before sending because too little time
/// was left, or it was sent and the deadline passed before the response came.
///
/// Returned inside a [`BoxError`](crate::error::BoxError) by [`ClientDeadline`](super::ClientDeadline);
/// find it with `downcast_ref` or [`find_source`](crate::error::find_source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineExceeded {
    allowed: Duration,
    not_sent_below: Option<Duration>,
}

impl DeadlineExceeded {
    /// The request was sent with `allowed` time and got no response in it.
    pub fn elapsed(allowed: Duration) -> Self {
        DeadlineExceeded {
            allowed,
            not_sent_below: None,
        }
    }

    /// The request was not sent: only `left` remained, under the `threshold` needed to send.
    pub fn not_sent(left: Duration, threshold: Duration) -> Self {
        DeadlineExceeded {
            allowed: left,
            not_sent_below: Some(threshold),
        }
    }

    /// The time the request had: what was left when it was sent, or when it was refused.
    pub fn allowed(&self) -> Duration {
        self.allowed
    }

    /// Whether the request went out at all. `false` means the server never saw it, so even a
    /// non-idempotent request is safe to try again with a fresh deadline.
    pub fn was_sent(&self) -> bool {
        self.not_sent_below.is_none()
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.not_sent_below {
            None => write!(f, "deadline exceeded after {:?}", self.allowed),
            Some(threshold) => write!(
                f,
                "deadline too close to send the request: {:?} left, under the {:?} threshold",
                self.allowed, threshold
            ),
        }
    }
}

impl std::error::Error for DeadlineExceeded {}
