//! The hyper-util pool at the bottom of the `Client` preset's stack.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::ResponseFuture;
use tower::ServiceExt;
use tower_service::Service;

use crate::body::ReplayBody;
use crate::error::BoxError;

use super::{ClientBody, TransportError};

/// The pool at the bottom of the stack, shared rather than boxed or copied: the stack is cloned
/// for every call and kept by the strategy for its retries, and hyper-util's client is several
/// hundred bytes and half a dozen reference counts to copy (it copies itself once more for each
/// request it sends). Its errors are boxed, as the layers' optional halves (`Either`) need one
/// error type.
pub(super) type Pooled<C> =
    tower::util::MapErr<SharedPool<C>, fn(hyper_util::client::legacy::Error) -> BoxError>;

/// hyper-util's client behind one reference count.
pub(super) struct SharedPool<C>(Arc<hyper_util::client::legacy::Client<C, ReplayBody<ClientBody>>>);

impl<C> Clone for SharedPool<C> {
    fn clone(&self) -> Self {
        SharedPool(self.0.clone())
    }
}

impl<C> Service<Request<ReplayBody<ClientBody>>> for SharedPool<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: it waits for a connection in the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<ClientBody>>) -> Self::Future {
        self.0.request(request)
    }
}

fn shared<C>(client: hyper_util::client::legacy::Client<C, ReplayBody<ClientBody>>) -> Pooled<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    SharedPool(Arc::new(client)).map_err(box_error as fn(_) -> _)
}

pub(super) fn box_error(error: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(TransportError(error))
}

#[cfg(feature = "tls")]
pub(super) fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    http2_only: bool,
    tls: rustls::ClientConfig,
) -> Pooled<hyper_rustls::HttpsConnector<HttpConnector>> {
    // The connector sets the ALPN protocols from the versions enabled below.
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    shared(pool.build(https))
}

#[cfg(not(feature = "tls"))]
pub(super) fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    _http2_only: bool,
) -> Pooled<HttpConnector> {
    shared(pool.build(http))
}
