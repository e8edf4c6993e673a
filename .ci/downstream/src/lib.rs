//! A crate of a tower-lifeline user, for CI: every `ServiceBuilderExt` method called with tower's
//! `full` features and tower-http's `ServiceBuilderExt` in scope (a name that collided would not
//! compile, or would silently pick tower's layer), and the README's Rust snippets as doc tests.

/// The README's Rust snippets, compiled (and run, unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct Readme;

/// The dashboards' README: wiring a service so every panel has data.
#[cfg(doctest)]
#[doc = include_str!("../../../dashboards/README.md")]
pub struct DashboardsReadme;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{routing::get, Router};
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_http::ServiceBuilderExt as _;
    use tower_lifeline::body::ReplayBody;
    use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
    use tower_lifeline::propagation::PropagateLayer;
    use tower_lifeline::shutdown::Shutdown;
    use tower_lifeline::strategy::StrategyLayer;
    use tower_lifeline::ServiceBuilderExt;

    #[tokio::test]
    async fn every_extension_method_beside_towers_full_and_tower_http() {
        let shutdown = Shutdown::new();
        let app = Router::new().route("/", get(|| async { "hello" })).layer(
            ServiceBuilder::new()
                .drain_on(&shutdown)
                .server_deadline(Duration::from_secs(20))
                .server_priority()
                .shed_load(512)
                .server_timeout(Duration::from_secs(30))
                // tower-http's and tower's own, in the same chain.
                .propagate_header(http::header::HeaderName::from_static("x-request-id"))
                .concurrency_limit(1024)
                .into_inner(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let transport =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<ReplayBody<Full<Bytes>>>();
        let client = ServiceBuilder::new()
            .client_deadline(Duration::from_secs(5))
            .strategy(StrategyLayer::new())
            .circuit_breaker(CircuitBreakerLayer::default().return_error())
            .attempt_timeout(Duration::from_secs(1))
            .propagate(PropagateLayer::new())
            .read_body(1 << 20)
            .service(transport);
        let request = http::Request::get(format!("http://{addr}/"))
            .header("x-request-id", "abc")
            .body(Full::default())
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-request-id"], "abc");
    }
}
