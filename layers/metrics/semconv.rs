//! OpenTelemetry's HTTP metric conventions, as the OTel-to-Prometheus mapping exposes them.
//!
//! [`MetricNames::semantic_conventions`](super::MetricNames::semantic_conventions) names the
//! histograms and most labels directly; two of OpenTelemetry's attributes need values split
//! apart, which this collector does when Prometheus scrapes, so requests pay nothing for it:
//!
//! - `http_response_status_code` keeps numeric statuses only; a call that got no response
//!   (`timeout`, `circuit_open`, `error`) has `error_type` instead, and a failing status (from
//!   500 on a server, from 400 on a client, as the conventions say) has both;
//! - `server_address` (`http://api:8080`, as the breaker scopes name destinations) becomes
//!   `server_address="api"`, `server_port="8080"`, `url_scheme="http"`.
//!
//! Labels with no value are left out of the series, as OpenTelemetry leaves out absent
//! attributes.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily};
use prometheus::HistogramVec;

const STATUS: &str = "http_response_status_code";
const ERROR_TYPE: &str = "error_type";
const ADDRESS: &str = "server_address";
const PORT: &str = "server_port";
const SCHEME: &str = "url_scheme";

/// A histogram vec exposed with its status and destination labels split as above.
pub(crate) struct SemanticConventions {
    inner: HistogramVec,
    desc: Desc,
    /// The first status that is an error: 500 for servers, 400 for clients.
    error_from: u16,
}

impl SemanticConventions {
    /// Wraps `inner`, whose labels are `labels` and whose help is `help`.
    pub(crate) fn new(
        inner: HistogramVec,
        name: &str,
        help: &str,
        labels: &[&str],
        error_from: u16,
    ) -> Result<Self, prometheus::Error> {
        let mut exposed: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        if labels.contains(&STATUS) {
            exposed.push(ERROR_TYPE.to_owned());
        }
        if labels.contains(&ADDRESS) {
            exposed.extend([PORT.to_owned(), SCHEME.to_owned()]);
        }
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            exposed,
            Default::default(),
        )?;
        Ok(SemanticConventions {
            inner,
            desc,
            error_from,
        })
    }

    fn rewrite(&self, metric: &mut Metric) {
        let mut labels: Vec<LabelPair> = Vec::with_capacity(metric.get_label().len() + 3);
        for pair in metric.take_label() {
            match pair.name() {
                STATUS => {
                    let value = pair.value();
                    match value.parse::<u16>() {
                        Ok(code) => {
                            if code >= self.error_from {
                                labels.push(label(ERROR_TYPE, value));
                            }
                            labels.push(pair);
                        }
                        Err(_) => labels.push(label(ERROR_TYPE, value)),
                    }
                }
                ADDRESS => {
                    let (scheme, host, port) = split_endpoint(pair.value());
                    labels.push(label(ADDRESS, host));
                    labels.push(label(PORT, port));
                    labels.push(label(SCHEME, scheme));
                }
                _ => labels.push(pair),
            }
        }
        labels.retain(|pair| !pair.value().is_empty());
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        metric.set_label(labels);
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

/// `http://api:8080` → (`http`, `api`, `8080`); the port from the scheme when absent; a value
/// that is not a URL (`unknown`, `other`) is the address alone.
fn split_endpoint(endpoint: &str) -> (&str, &str, &str) {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return ("", endpoint, "");
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => "",
    };
    // `[::1]:8080`: the port follows the bracket.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], &rest[i + 1..]),
        _ => (rest, default_port),
    };
    (scheme, host, port)
}

impl Collector for SemanticConventions {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        for family in &mut families {
            for metric in family.mut_metric() {
                self.rewrite(metric);
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use prometheus::Registry;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::context::RouteTemplate;
    use crate::metrics::{render, ClientMetrics, MetricsConfig};

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn server_requests_carry_the_conventions_attributes() {
        use axum::{body::Body, http::StatusCode, routing::get, Router};
        use http_body_util::BodyExt;

        use crate::metrics::ServerMetrics;

        let registry = Registry::new();
        let server =
            ServerMetrics::register(&registry, MetricsConfig::semantic_conventions()).unwrap();
        let app = Router::new()
            .route("/users/{id}", get(|| async { "hello" }))
            .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .layer(server.layer());
        for path in ["/users/42", "/down"] {
            let request = Request::get(path)
                .header("x-service-name", "billing")
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        let text = render(&registry).unwrap();
        assert_lines(
            &text,
            &[
                r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",tower_lifeline_caller="billing"} 1"#,
                r#"http_server_request_duration_seconds_count{error_type="503",http_request_method="GET",http_response_status_code="503",http_route="/down",tower_lifeline_caller="billing"} 1"#,
            ],
        );
    }

    #[tokio::test]
    async fn client_attempts_are_http_client_request_duration_with_split_labels() {
        let registry = Registry::new();
        let metrics =
            ClientMetrics::register(&registry, MetricsConfig::semantic_conventions()).unwrap();
        let transport = tower::service_fn(|req: Request<()>| async move {
            if req.uri().path() == "/slow" {
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
            } else {
                Ok(Response::new(()))
            }
        });
        let client = metrics
            .call_layer()
            .layer(metrics.attempt_layer().layer(transport));
        for uri in ["http://api:8080/users/42", "https://api/slow"] {
            let mut request = Request::get(uri).body(()).unwrap();
            let template = if uri.ends_with("slow") {
                "/slow"
            } else {
                "/users/{id}"
            };
            request
                .extensions_mut()
                .insert(RouteTemplate::owned(template.to_owned()));
            let _ = client.clone().oneshot(request).await;
        }
        let text = render(&registry).unwrap();
        assert_lines(
            &text,
            &[
                r#"http_client_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",server_address="api",server_port="8080",url_scheme="http",url_template="/users/{id}"} 1"#,
                r#"http_client_request_duration_seconds_count{error_type="timeout",http_request_method="GET",server_address="api",server_port="443",url_scheme="https",url_template="/slow"} 1"#,
                r#"tower_lifeline_client_call_duration_seconds_count{error_type="timeout",http_request_method="GET",server_address="api",server_port="443",tower_lifeline_circuit_breaker="false",url_scheme="https",url_template="/slow"} 1"#,
            ],
        );
    }

    #[test]
    fn endpoints_split_into_scheme_address_and_port() {
        assert_eq!(split_endpoint("http://api:8080"), ("http", "api", "8080"));
        assert_eq!(split_endpoint("https://api"), ("https", "api", "443"));
        assert_eq!(
            split_endpoint("http://[::1]:9000"),
            ("http", "[::1]", "9000")
        );
        assert_eq!(split_endpoint("http://[::1]"), ("http", "[::1]", "80"));
        assert_eq!(split_endpoint("unknown"), ("", "unknown", ""));
    }
}
