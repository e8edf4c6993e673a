//! Errors shared by the layers.
//!
//! Client layers that add failures return [`BoxError`] holding a small typed leaf error
//! (such as [`DeadlineExceeded`](crate::deadline::DeadlineExceeded)) that carries its context and
//! is found with `downcast_ref`, as tower does. Server layers keep the inner error type and
//! answer with an HTTP response instead, since a dropped connection tells the caller nothing.

/// A type-erased error, the error type of every client layer that can fail on its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Looks through an error and its chain of sources for one of type `E`.
///
/// Transport stacks wrap errors (hyper-util wraps hyper's, tower's `Buffer` wraps everything), so
/// a plain `downcast_ref` on the outermost error can miss the one that matters.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::deadline::DeadlineExceeded;
/// use tower_lifeline::error::{find_source, BoxError};
///
/// let err: BoxError = Box::new(DeadlineExceeded::elapsed(Duration::from_millis(250)));
/// assert!(find_source::<DeadlineExceeded>(err.as_ref()).is_some());
/// ```
pub fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        // `io::Error::source` skips the error an `io::Error` wraps and goes to that error's
        // source; look at the wrapped one itself (a TLS handshake's rustls error is one).
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}
