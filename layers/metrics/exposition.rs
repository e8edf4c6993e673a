use http::{header, HeaderValue, Response, StatusCode};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    render_families(&registry.gather())
}

fn render_families(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(families, &mut buffer)?;
    String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// `registry`'s families, then those of the process-wide default registry that `registry` does
/// not have (an application's own metrics, registered by `prometheus`'s macros).
#[cfg(feature = "axum")]
fn gather_with_default(registry: &Registry) -> Vec<MetricFamily> {
    let mut families = registry.gather();
    let own: std::collections::HashSet<String> =
        families.iter().map(|f| f.name().to_owned()).collect();
    families.extend(
        prometheus::gather()
            .into_iter()
            .filter(|family| !own.contains(family.name())),
    );
    families
}

/// A `/metrics` response for `registry`: 200 with the text format, or 500 with the reason if it
/// cannot be rendered.
pub fn response(registry: &Registry) -> Response<String> {
    families_response(&registry.gather())
}

fn families_response(families: &[MetricFamily]) -> Response<String> {
    let (status, body) = match render_families(families) {
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
/// Scrapes never render side by side: one renders while the others wait, and those that arrived
/// before it began share its answer. A crowd of scrapers costs one render at a time, not one
/// core each (64 scrapers once took a server's `/hello` from under 1 ms to 0.3-0.9 s).
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
    serve(single_flight::Scrapes::new(registry, false))
}

/// [`route`] for `registry` and, after it, the process-wide default registry: the `Server`
/// preset's `/metrics`.
#[cfg(feature = "axum")]
pub(crate) fn route_with_default_registry<S: Clone + Send + Sync + 'static>(
    registry: Registry,
) -> axum::routing::MethodRouter<S> {
    serve(single_flight::Scrapes::new(registry, true))
}

#[cfg(feature = "axum")]
fn serve<S: Clone + Send + Sync + 'static>(
    scrapes: single_flight::Scrapes,
) -> axum::routing::MethodRouter<S> {
    let scrapes = std::sync::Arc::new(scrapes);
    axum::routing::get(move || {
        let scrapes = scrapes.clone();
        async move { scrapes.response().await }
    })
}

#[cfg(feature = "axum")]
mod single_flight {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::{Response, StatusCode};
    use prometheus::Registry;

    /// The renders of one registry, one at a time, the latest kept for the scrapes that waited.
    pub(super) struct Scrapes {
        registry: Registry,
        /// Whether the process-wide default registry is served too.
        with_default: bool,
        /// Renders begun so far; each is numbered by this count when it begins.
        begun: AtomicU64,
        rendering: tokio::sync::Mutex<()>,
        latest: Mutex<Option<(u64, StatusCode, Bytes)>>,
    }

    impl Scrapes {
        pub(super) fn new(registry: Registry, with_default: bool) -> Self {
            Scrapes {
                registry,
                with_default,
                begun: AtomicU64::new(0),
                rendering: tokio::sync::Mutex::new(()),
                latest: Mutex::new(None),
            }
        }

        pub(super) async fn response(&self) -> Response<axum::body::Body> {
            let arrived = self.begun.load(Ordering::Acquire);
            let _rendering = self.rendering.lock().await;
            let shared = {
                let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
                // A render that began after this scrape arrived is as fresh as its own would be.
                latest
                    .as_ref()
                    .filter(|(number, ..)| *number > arrived)
                    .map(|(_, status, body)| (*status, body.clone()))
            };
            let (status, body) = match shared {
                Some(found) => found,
                None => {
                    let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
                    let families = if self.with_default {
                        super::gather_with_default(&self.registry)
                    } else {
                        self.registry.gather()
                    };
                    let (parts, body) = super::families_response(&families).into_parts();
                    let body = Bytes::from(body);
                    let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
                    *latest = Some((number, parts.status, body.clone()));
                    (parts.status, body)
                }
            };
            let mut response = Response::new(axum::body::Body::from(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Arc;

        use super::*;

        #[tokio::test]
        async fn scrapes_that_wait_for_a_render_share_it_and_later_ones_render_afresh() {
            let scrapes = Arc::new(Scrapes::new(Registry::new(), false));
            let held = scrapes.rendering.lock().await;
            let waiting: Vec<_> = (0..16)
                .map(|_| {
                    let scrapes = scrapes.clone();
                    tokio::spawn(async move { scrapes.response().await.status() })
                })
                .collect();
            tokio::task::yield_now().await;
            drop(held);
            for scrape in waiting {
                assert_eq!(scrape.await.unwrap(), StatusCode::OK);
            }
            assert_eq!(
                scrapes.begun.load(Ordering::Acquire),
                1,
                "one render for 16"
            );
            scrapes.response().await;
            assert_eq!(
                scrapes.begun.load(Ordering::Acquire),
                2,
                "a later scrape is fresh"
            );
        }
    }
}
