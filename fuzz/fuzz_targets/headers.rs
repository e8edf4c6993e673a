//! Every parser that reads the network, fed arbitrary bytes: `X-Request-Timeout`,
//! `grpc-timeout`, `X-Request-Priority`, `X-Service-Name`, `Retry-After`, and the destination
//! check of the propagation layer (URI and `Host` header). None may panic; what parses must
//! stay within the grammar's bounds.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower_layer::Layer;
use tower_lifeline::headers;
use tower_lifeline::propagation::PropagateLayer;
use tower_service::Service;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        if let Some(d) = headers::parse_timeout(&value) {
            // Whatever parses can be added to a clock reading without overflow checks failing.
            let _ = d.as_secs_f64();
        }
        if let Some(d) = headers::parse_grpc_timeout(&value) {
            assert!(d <= Duration::from_secs(99_999_999 * 3600));
        }
        let _ = headers::parse_priority(&value);
        if let Some(name) = headers::parse_service_name(&value) {
            assert!(name.len() <= headers::MAX_SERVICE_NAME_LEN);
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
        if let Some(wait) = headers::parse_retry_after(&value) {
            assert!(wait <= headers::MAX_RETRY_AFTER);
        }
        let mut map = HeaderMap::new();
        map.insert(headers::X_REQUEST_TIMEOUT, value.clone());
        map.insert(headers::GRPC_TIMEOUT, value.clone());
        let _ = headers::incoming_timeout(&map);

        // The propagation layer's destination check, on a hostile Host header.
        let mut client = PropagateLayer::new()
            .only_to_hosts(["inventory", ".svc.cluster.local"])
            .layer(Ready);
        let mut request = Request::new(());
        request.headers_mut().insert(http::header::HOST, value);
        drop(client.call(request));
    }
    // And on a hostile URI.
    if let Ok(uri) = http::Uri::try_from(data) {
        let mut client = PropagateLayer::new()
            .only_to(|host| host.ends_with(".internal"))
            .layer(Ready);
        let mut request = Request::new(());
        *request.uri_mut() = uri;
        drop(client.call(request));
    }
});

/// A transport that answers at once, so that only the layer's own work is exercised.
#[derive(Clone)]
struct Ready;

impl Service<Request<()>> for Ready {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<(), Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(()))
    }
}
