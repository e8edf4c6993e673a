use std::fmt;

use crate::error::BoxError;

/// A response body failed before it ended (the connection closed or was reset mid-body).
///
/// A failure of the attempt: the [classifier](crate::classify) calls it
/// [`Failure`](crate::outcome::Outcome::Failure). The transport's error is its source.
#[derive(Debug)]
pub struct ResponseBodyFailed {
    read: usize,
    source: BoxError,
}

impl ResponseBodyFailed {
    pub(super) fn new(read: usize, source: BoxError) -> Self {
        ResponseBodyFailed { read, source }
    }

    /// How many bytes had arrived before it failed.
    pub fn bytes_read(&self) -> usize {
        self.read
    }
}

impl fmt::Display for ResponseBodyFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "response body failed after {} bytes: {}",
            self.read, self.source
        )
    }
}

impl std::error::Error for ResponseBodyFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// A response body was longer than the cap.
///
/// Final: the same answer would come again, and a large body says nothing against the
/// destination; the [classifier](crate::classify) calls it
/// [`Refused`](crate::outcome::Outcome::Refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBodyTooLarge {
    limit: usize,
}

impl ResponseBodyTooLarge {
    pub(super) fn new(limit: usize) -> Self {
        ResponseBodyTooLarge { limit }
    }

    /// The cap it passed, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for ResponseBodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response body longer than {} bytes", self.limit)
    }
}

impl std::error::Error for ResponseBodyTooLarge {}
