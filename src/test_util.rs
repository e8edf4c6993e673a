//! Test doubles shared by the layers' unit tests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

/// Wraps a handler function and enforces tower's readiness contract: `call` panics unless
/// `poll_ready` readied this very instance, and a clone starts unready. Counts calls.
pub(crate) struct ReadinessChecked<F> {
    handler: F,
    ready: bool,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl<F: Clone> Clone for ReadinessChecked<F> {
    fn clone(&self) -> Self {
        ReadinessChecked {
            handler: self.handler.clone(),
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl<F> ReadinessChecked<F> {
    pub(crate) fn new(handler: F) -> Self {
        ReadinessChecked {
            handler,
            ready: false,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<F, Fut, B> Service<Request<B>> for ReadinessChecked<F>
where
    F: FnMut(Request<B>) -> Fut,
    Fut: Future<Output = Response<String>> + Send + 'static,
{
    type Response = Response<String>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(self.ready, "call without poll_ready on this instance");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fut = (self.handler)(req);
        Box::pin(async move { Ok(fut.await) })
    }
}
