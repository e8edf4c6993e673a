//! [`RequestBuilder`], one call being put together, and [`ClientResponse`], its answer.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::context::{Deadline, Priority, RouteTemplate};
use crate::error::BoxError;
use crate::read_body::FullBody;
use crate::strategy::{AttemptCount, Strategy};

use super::{Client, ClientBody, InvalidRequest, NoRedirects};

/// One request being put together; [`send`](Self::send) it.
#[derive(Debug)]
pub struct RequestBuilder<'a> {
    pub(super) client: &'a Client,
    pub(super) request: Request<ClientBody>,
    pub(super) error: Option<InvalidRequest>,
}

impl RequestBuilder<'_> {
    /// Adds a header. An invalid name or value fails the request at `send`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.request.headers_mut().append(name, value);
            }
            _ => self.error = Some(InvalidRequest(format!("bad header {name}: {value:?}"))),
        }
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        *self.request.body_mut() = Full::new(body.into());
        self
    }

    /// A JSON body, with `Content-Type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.request
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *self.request.body_mut() = Full::new(Bytes::from(body));
            }
            Err(err) => self.error = Some(InvalidRequest(format!("cannot encode JSON: {err}"))),
        }
        self
    }

    /// This call's time limit, counted from now (the inherited deadline still applies if sooner).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.deadline(Deadline::after(timeout))
    }

    /// This call's deadline.
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.request.extensions_mut().insert(deadline);
        self
    }

    /// This call's priority (normalised against an inherited one).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.request.extensions_mut().insert(priority);
        self
    }

    /// This call's strategy, in place of the client's choice by method.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.request.extensions_mut().insert(strategy);
        self
    }

    /// The route template, for metrics and percentile delays (`/users/{id}`).
    pub fn route(mut self, template: &'static str) -> Self {
        self.request
            .extensions_mut()
            .insert(RouteTemplate::new(template));
        self
    }

    /// Whether to follow redirects for this call (default: as the client's
    /// [`max_redirects`](super::ClientBuilder::max_redirects)), aio-request's `allow_redirects`.
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        if follow {
            self.request.extensions_mut().remove::<NoRedirects>();
        } else {
            self.request.extensions_mut().insert(NoRedirects);
        }
        self
    }

    /// Marks an unsafe-method request as safe to retry.
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header(crate::headers::IDEMPOTENCY_KEY.as_str(), key)
    }

    /// Sends the request through the client's stack. See [`Client::send`] for the errors.
    pub async fn send(self) -> Result<ClientResponse, BoxError> {
        if let Some(err) = self.error {
            return Err(Box::new(err));
        }
        self.client.send(self.request).await
    }
}

/// A response, its body already read whole inside the attempt.
#[derive(Debug)]
pub struct ClientResponse {
    pub(super) response: Response<FullBody>,
    pub(super) deadline: Deadline,
}

impl ClientResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// How many attempts the call took.
    pub fn attempts(&self) -> u32 {
        self.response
            .extensions()
            .get::<AttemptCount>()
            .map_or(1, |count| count.0)
    }

    /// The underlying response.
    pub fn into_inner(self) -> Response<FullBody> {
        self.response
    }

    /// The call's deadline.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// The whole body. It was read inside the attempt, up to the client's `max_response_body`,
    /// so this cannot fail or wait; it stays `async` and fallible for the transports to come.
    pub async fn bytes(self) -> Result<Bytes, BoxError> {
        // The body is one frame already in memory: taken as it is, not collected into a list.
        let frame = self.response.into_body().frame().await;
        Ok(match frame {
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            Some(Err(never)) => match never {},
            None => Bytes::new(),
        })
    }

    /// The whole body as UTF-8 text (invalid sequences replaced).
    pub async fn text(self) -> Result<String, BoxError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The whole body parsed as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }
}
