//! A bound on the connections the `Client` preset opens to each destination, with a pool
//! timeout, as httpx's `Limits(max_connections)` and `Timeout(pool=...)` do.
//!
//! hyper-util's pool opens a new connection whenever every pooled one is busy, so without a
//! bound a burst of calls to one destination opens as many connections as there are calls. Here
//! each destination has a semaphore of `max_connections_per_host` permits; a call holds one from
//! before it is sent until its body has been read, which over HTTP/1.1 is exactly the life of its
//! hold on a connection (over HTTP/2 it bounds the streams in flight instead). A call that waits
//! longer than the pool timeout fails with [`PoolTimeout`]: a request that never left, retried
//! for any method, and no failure of the destination.
//!
//! The table of destinations is bounded: past [`MAX_DESTINATIONS`], destinations with no call in
//! flight are forgotten, and if none is idle the newcomers share one overflow semaphore of the
//! same size (a bound on all of them together, never a growing table).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::error::BoxError;

/// The most destinations whose connection bound is remembered.
pub const MAX_DESTINATIONS: usize = 1024;

/// No connection to the destination came free within the pool timeout.
///
/// The request never left: the [classifier](crate::classify) calls it
/// [`NotSentLocally`](crate::outcome::Outcome::NotSentLocally), which the strategy may send
/// again for any method and the breaker does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTimeout {
    destination: String,
    waited: Duration,
    max: usize,
}

impl PoolTimeout {
    /// The destination (`scheme://authority`).
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// How long the call waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection to {} came free within {:?} (all {} in use)",
            self.destination, self.waited, self.max
        )
    }
}

impl std::error::Error for PoolTimeout {}

/// The bounds, shared by every clone of the stack.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max: usize,
    timeout: Duration,
    destinations: RwLock<HashMap<Box<str>, Arc<Semaphore>>>,
    /// Shared by destinations that find the table full of busy ones.
    overflow: Arc<Semaphore>,
}

impl ConnectionLimits {
    pub(crate) fn new(max: usize, timeout: Duration) -> Arc<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionLimits {
            max,
            timeout,
            destinations: RwLock::new(HashMap::new()),
            overflow: Arc::new(Semaphore::new(max)),
        })
    }

    fn semaphore(&self, destination: &str) -> Arc<Semaphore> {
        if let Some(found) = self
            .destinations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(destination)
        {
            return found.clone();
        }
        let mut table = self
            .destinations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = table.get(destination) {
            return found.clone();
        }
        if table.len() >= MAX_DESTINATIONS {
            // Forget destinations with nothing in flight (a call waiting or holding a permit
            // holds a reference): their bound holds nobody.
            table.retain(|_, s| Arc::strong_count(s) > 1);
            if table.len() >= MAX_DESTINATIONS {
                return self.overflow.clone();
            }
        }
        let semaphore = Arc::new(Semaphore::new(self.max));
        table.insert(destination.into(), semaphore.clone());
        semaphore
    }

    #[cfg(test)]
    pub(crate) fn destinations(&self) -> usize {
        self.destinations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

thread_local! {
    /// The text of a request's destination, reused from call to call on a thread.
    static DESTINATION_TEXT: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// Makes [`ConnectionLimit`]s that share one set of bounds.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimitLayer {
    limits: Arc<ConnectionLimits>,
}

impl ConnectionLimitLayer {
    pub(crate) fn new(limits: Arc<ConnectionLimits>) -> Self {
        ConnectionLimitLayer { limits }
    }
}

impl<S> tower_layer::Layer<S> for ConnectionLimitLayer {
    type Service = ConnectionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectionLimit::new(inner, self.limits.clone())
    }
}

/// Holds a connection permit of the request's destination around the inner call.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit<S> {
    inner: S,
    limits: Arc<ConnectionLimits>,
}

impl<S> ConnectionLimit<S> {
    pub(crate) fn new(inner: S, limits: Arc<ConnectionLimits>) -> Self {
        ConnectionLimit { inner, limits }
    }
}

impl<S, B> Service<Request<B>> for ConnectionLimit<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ConnectionLimitFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Written into a per-thread buffer rather than a `String` per call: only a call that has
        // to wait keeps a copy, for its error.
        let mut destination = DESTINATION_TEXT.take();
        destination.clear();
        crate::destination::write_destination(req.uri(), req.headers(), &mut destination);
        let semaphore = self.limits.semaphore(&destination);
        let state = match semaphore.clone().try_acquire_owned() {
            // The common case: a permit at once, the readied instance called in place, nothing
            // cloned or boxed.
            Ok(permit) => State::Calling {
                future: self.inner.call(req),
                permit: Some(permit),
            },
            Err(_) => {
                // The readied instance goes into the future; a clone stays for the next call.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let timeout = self.limits.timeout;
                // Boxed, request and all: the future every call moves stays the size of a call.
                State::Waiting {
                    waiting: Box::new(Waiting {
                        permit: Box::pin(async move {
                            tokio::time::timeout(timeout, semaphore.acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        }),
                        call: Some((inner, req)),
                        error: PoolTimeout {
                            destination: destination.clone(),
                            waited: timeout,
                            max: self.limits.max,
                        },
                    }),
                }
            }
        };
        DESTINATION_TEXT.set(destination);
        ConnectionLimitFuture { state }
    }
}

/// A call waiting for a permit of its destination.
struct Waiting<S, R> {
    permit: Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>,
    call: Option<(S, R)>,
    error: PoolTimeout,
}

pin_project! {
    /// The response future of [`ConnectionLimit`].
    pub(crate) struct ConnectionLimitFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<R>, R> {
        Done,
        Waiting {
            waiting: Box<Waiting<S, R>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            // Held until the call (its body read included, below) ends.
            permit: Option<OwnedSemaphorePermit>,
        },
    }
}

impl<S, R> Future for ConnectionLimitFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { waiting } => {
                    let Some(permit) = ready!(waiting.permit.as_mut().poll(cx)) else {
                        let error = Box::new(waiting.error.clone());
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    };
                    let Some((mut inner, req)) = waiting.call.take() else {
                        return Poll::Ready(Err("connection limit polled after completion".into()));
                    };
                    let future = inner.call(req);
                    this.state.set(State::Calling {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Calling { future, permit } => {
                    let result = ready!(future.poll(cx));
                    permit.take();
                    this.state.set(State::Done);
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Done => {
                    return Poll::Ready(Err("connection limit polled after completion".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn hold_until(
        release: Arc<tokio::sync::Notify>,
    ) -> impl Service<
        Request<()>,
        Response = (),
        Error = BoxError,
        Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| {
            let release = release.clone();
            Box::pin(async move {
                release.notified().await;
                Ok(())
            }) as Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_bound_waits_then_fails_with_a_pool_timeout() {
        let release = Arc::new(tokio::sync::Notify::new());
        let limits = ConnectionLimits::new(2, Duration::from_secs(5));
        let service = ConnectionLimit::new(hold_until(release.clone()), limits.clone());
        let request = || Request::get("http://inventory:8080/x").body(()).unwrap();
        let first = tokio::spawn(service.clone().oneshot(request()));
        let second = tokio::spawn(service.clone().oneshot(request()));
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let err = service.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let timeout = err.downcast_ref::<PoolTimeout>().expect("typed");
        assert_eq!(timeout.destination(), "http://inventory:8080");
        // Another destination is not held up by this one.
        let other = tokio::spawn(
            service
                .clone()
                .oneshot(Request::get("http://other/").body(()).unwrap()),
        );
        tokio::task::yield_now().await;
        release.notify_waiters();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        other.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_goes_as_soon_as_a_permit_is_free() {
        let release = Arc::new(tokio::sync::Notify::new());
        let limits = ConnectionLimits::new(1, Duration::from_secs(5));
        let service = ConnectionLimit::new(hold_until(release.clone()), limits);
        let request = || Request::get("http://a/").body(()).unwrap();
        let first = tokio::spawn(service.clone().oneshot(request()));
        tokio::task::yield_now().await;
        let second = tokio::spawn(service.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        release.notify_one();
        first.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        release.notify_one();
        second.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_table_of_destinations_is_bounded() {
        let limits = ConnectionLimits::new(1, Duration::from_secs(1));
        let service = ConnectionLimit::new(
            tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) }),
            limits.clone(),
        );
        for i in 0..(MAX_DESTINATIONS + 200) {
            let uri = format!("http://host-{i}/");
            service
                .clone()
                .oneshot(Request::get(uri).body(()).unwrap())
                .await
                .unwrap();
        }
        assert!(limits.destinations() <= MAX_DESTINATIONS);
    }
}
