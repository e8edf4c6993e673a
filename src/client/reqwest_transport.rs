//! reqwest as the transport under the client stack (feature `reqwest`).
//!
//! Most Rust services already have a `reqwest::Client` with their TLS roots, proxies, cookies and
//! compression set up. [`ReqwestTransport`] makes it a `Service<http::Request<B>>` for the
//! client layers, and [`ClientBuilder::reqwest`](super::ClientBuilder::reqwest) puts the whole
//! `Client` preset over it. Request bodies (a [`ReplayBody`](crate::body::ReplayBody) included,
//! so retries and hedges replay them) go in as they are; responses come out as `http::Response`s
//! with reqwest's body.
//!
//! Errors stay reqwest's: the [classifier](crate::classify) reads `reqwest::Error::is_connect`
//! to tell a request that never left (resent for any method) from one that was sent and failed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::error::BoxError;

/// A `reqwest::Client` as a tower service of `http` requests and responses: request bodies
/// (a [`ReplayBody`](crate::body::ReplayBody) included) go in as they are, responses come out
/// with reqwest's body, errors stay reqwest's (the classifier reads `is_connect`). The `Client`
/// preset uses it through [`ClientBuilder::reqwest`](super::ClientBuilder::reqwest).
///
/// ```no_run
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_lifeline::client::ReqwestTransport;
///
/// # async fn run() -> Result<(), tower_lifeline::BoxError> {
/// let transport = ReqwestTransport::new(reqwest::Client::new());
/// let request = http::Request::get("http://127.0.0.1:8080/").body(Full::<bytes::Bytes>::default())?;
/// let response = transport.oneshot(request).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// Sends requests with `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestTransport { client }
    }

    /// The reqwest client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The response future of [`ReqwestTransport`]: reqwest's own future is not nameable, so it is
/// boxed (one allocation per attempt).
pub type ReqwestFuture =
    Pin<Box<dyn Future<Output = Result<Response<reqwest::Body>, BoxError>> + Send>>;

impl<B> Service<Request<B>> for ReqwestTransport
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest's client is always ready: its pool queues internally.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request = reqwest::Request::try_from(req.map(reqwest::Body::wrap));
        let client = self.client.clone();
        Box::pin(async move {
            let response = client.execute(request?).await?;
            Ok(Response::from(response))
        })
    }
}
