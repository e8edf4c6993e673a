//! When a request's body finished arriving: shared by the layer that watches the body and the
//! layers that measure the server's own work.
//!
//! [`RequestBodyTimeoutLayer`](crate::body_timeout::RequestBodyTimeoutLayer) puts an
//! [`UploadProgress`] into the extensions of every request that has a body, and marks it when the
//! body ends or fails. [Load shedding](crate::load_shed) reads it so that its estimate of a
//! route's service time leaves out the upload, which the caller controls, and leaves out requests
//! whose body failed.
//!
//! ```
//! use tokio::time::Instant;
//! use tower_lifeline::upload::{Upload, UploadProgress};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let progress = UploadProgress::starting_at(Instant::now());
//! assert_eq!(progress.state(), Upload::Receiving);
//! tokio::time::advance(std::time::Duration::from_millis(40)).await;
//! progress.finish();
//! assert_eq!(progress.state(), Upload::Finished(Instant::now()));
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Still arriving.
const RECEIVING: u64 = 0;
/// The body failed or timed out.
const FAILED: u64 = u64::MAX;

/// Where a request's body is: see the [module docs](self). Clones share one state.
#[derive(Clone)]
pub struct UploadProgress {
    shared: Arc<Shared>,
}

struct Shared {
    origin: Instant,
    /// [`RECEIVING`], [`FAILED`], or 1 + the nanoseconds from `origin` to the end of the body.
    state: AtomicU64,
}

/// What an [`UploadProgress`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upload {
    /// The body has not ended yet.
    Receiving,
    /// The body ended at this instant.
    Finished(Instant),
    /// The body failed (an error from the connection, or a timeout).
    Failed,
}

impl UploadProgress {
    /// A body that started arriving at `origin` (the request's arrival).
    pub fn starting_at(origin: Instant) -> Self {
        UploadProgress {
            shared: Arc::new(Shared {
                origin,
                state: AtomicU64::new(RECEIVING),
            }),
        }
    }

    /// Marks the body as ended now; a body marked before keeps its first mark.
    pub fn finish(&self) {
        let since = Instant::now().saturating_duration_since(self.shared.origin);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(FAILED - 1);
        self.mark(nanos.saturating_add(1).min(FAILED - 1));
    }

    /// Marks the body as failed; a body marked before keeps its first mark.
    pub fn fail(&self) {
        self.mark(FAILED);
    }

    fn mark(&self, state: u64) {
        let _ = self.shared.state.compare_exchange(
            RECEIVING,
            state,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Where the body is.
    pub fn state(&self) -> Upload {
        match self.shared.state.load(Ordering::Acquire) {
            RECEIVING => Upload::Receiving,
            FAILED => Upload::Failed,
            nanos => Upload::Finished(self.shared.origin + Duration::from_nanos(nanos - 1)),
        }
    }
}

impl fmt::Debug for UploadProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UploadProgress")
            .field(&self.state())
            .finish()
    }
}
