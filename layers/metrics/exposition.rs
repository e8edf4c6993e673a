use http::{header, HeaderValue, Response, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// A `/metrics` response for `registry`: 200 with the text format, or 500 with the reason if it
/// cannot be rendered.
pub fn response(registry: &Registry) -> Response<String> {
    let (status, body) = match render(registry) {
        Ok(text) => (StatusCode::OK, text),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {err}"),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// An axum route serving `registry` at whatever path it is mounted on.
///
/// ```
/// use axum::Router;
/// use prometheus::Registry;
///
/// let registry = Registry::new();
/// let app: Router = Router::new().route("/metrics", tower_lifeline::metrics::route(registry));
/// # let _ = app;
/// ```
#[cfg(feature = "axum")]
pub fn route<S: Clone + Send + Sync + 'static>(
    registry: Registry,
) -> axum::routing::MethodRouter<S> {
    axum::routing::get(move || {
        let registry = registry.clone();
        async move { response(&registry) }
    })
}
