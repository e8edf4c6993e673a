use prometheus::core::Collector;
use prometheus::HistogramVec;

/// The names, labels and buckets of the metrics: Prometheus-style names with short labels by
/// default, aio-request's exactly (so that a service moving from aio-request keeps its
/// dashboards), or OpenTelemetry's HTTP metric conventions as Prometheus receives them from an
/// OpenTelemetry exporter.
///
/// ```
/// use tower_lifeline::metrics::MetricNames;
///
/// let aio = MetricNames::aio_request();
/// assert_eq!(aio.server_duration(), "aio_request_server_latency");
/// assert_eq!(aio.buckets().first(), Some(&0.005));
/// assert_eq!(aio.buckets().last(), Some(&20.0));
/// ```
#[derive(Debug, Clone)]
pub struct MetricNames {
    pub(crate) server_duration: &'static str,
    pub(crate) server_help: &'static str,
    /// client, method, route, status
    pub(crate) server_labels: [&'static str; 4],
    pub(crate) client_duration: &'static str,
    pub(crate) client_help: &'static str,
    /// endpoint, method, path, status, circuit_breaker
    pub(crate) client_labels: [&'static str; 5],
    pub(crate) attempt_duration: &'static str,
    pub(crate) attempt_help: &'static str,
    /// endpoint, method, path, status
    pub(crate) attempt_labels: [&'static str; 4],
    /// The circuit_breaker label's values: (answered by the breaker, not).
    pub(crate) breaker_values: (&'static str, &'static str),
    /// The client status label of calls that got no response.
    pub(crate) failure_values: FailureValues,
    pub(crate) buckets: Vec<f64>,
    /// Split the status and destination labels at scrape time (see `semconv.rs`).
    pub(crate) semantic_conventions: bool,
}

/// aio-request's buckets, 5 ms to 20 s.
const AIO_REQUEST_BUCKETS: [f64; 20] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1.0,
    5.0, 10.0, 15.0, 20.0,
];

/// OpenTelemetry's advised buckets for HTTP durations, 5 ms to 10 s.
const OPENTELEMETRY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The status label of a client call or attempt that ended without a response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailureValues {
    /// A transport error: refused, reset, a body cut short.
    pub(crate) error: &'static str,
    /// A deadline, an attempt timeout or a pool timeout ended it, or it was not sent for want
    /// of time.
    pub(crate) timeout: &'static str,
    /// An open circuit breaker refused it.
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) circuit_open: &'static str,
}

impl Default for MetricNames {
    fn default() -> Self {
        Self::opentelemetry()
    }
}

impl MetricNames {
    /// Prometheus and OpenTelemetry conventions: `http_server_request_duration_seconds`,
    /// `http_client_request_duration_seconds`, `http_client_attempt_duration_seconds`.
    pub fn opentelemetry() -> Self {
        MetricNames {
            server_duration: "http_server_request_duration_seconds",
            server_help: "Duration of HTTP server requests, until the response body ended.",
            server_labels: ["client", "method", "route", "status"],
            client_duration: "http_client_request_duration_seconds",
            client_help: "Duration of HTTP client calls as the caller saw them, retries included.",
            client_labels: ["endpoint", "method", "path", "status", "circuit_breaker"],
            attempt_duration: "http_client_attempt_duration_seconds",
            attempt_help: "Duration of each HTTP client attempt on the transport.",
            attempt_labels: ["endpoint", "method", "path", "status"],
            breaker_values: ("true", "false"),
            failure_values: FailureValues {
                error: "error",
                timeout: "timeout",
                circuit_open: "circuit_open",
            },
            buckets: OPENTELEMETRY_BUCKETS.to_vec(),
            semantic_conventions: false,
        }
    }

    /// OpenTelemetry's HTTP metric conventions under the names the OTel-to-Prometheus mapping
    /// gives them: `http.server.request.duration` is `http_server_request_duration_seconds` with
    /// `http_request_method`, `http_route`, `http_response_status_code` and `error_type`;
    /// `http.client.request.duration`, which the conventions count per request sent, is the
    /// per-attempt histogram `http_client_request_duration_seconds` with `server_address`,
    /// `server_port`, `url_scheme`, `url_template`, `http_request_method`,
    /// `http_response_status_code` and `error_type`. What the conventions do not cover keeps a
    /// `tower_lifeline` prefix: the caller (`tower_lifeline_caller`, from `X-Service-Name`), and
    /// the whole call, retries included (`tower_lifeline_client_call_duration_seconds`, with
    /// `tower_lifeline_circuit_breaker`).
    ///
    /// ```
    /// use tower_lifeline::metrics::MetricNames;
    ///
    /// let otel = MetricNames::semantic_conventions();
    /// assert_eq!(otel.server_duration(), "http_server_request_duration_seconds");
    /// assert_eq!(otel.attempt_duration(), "http_client_request_duration_seconds");
    /// assert_eq!(otel.client_duration(), "tower_lifeline_client_call_duration_seconds");
    /// ```
    pub fn semantic_conventions() -> Self {
        MetricNames {
            server_duration: "http_server_request_duration_seconds",
            server_help: "Duration of HTTP server requests (OpenTelemetry http.server.request.duration).",
            server_labels: [
                "tower_lifeline_caller",
                "http_request_method",
                "http_route",
                "http_response_status_code",
            ],
            client_duration: "tower_lifeline_client_call_duration_seconds",
            client_help: "Duration of HTTP client calls as the caller saw them, retries included.",
            client_labels: [
                "server_address",
                "http_request_method",
                "url_template",
                "http_response_status_code",
                "tower_lifeline_circuit_breaker",
            ],
            attempt_duration: "http_client_request_duration_seconds",
            attempt_help: "Duration of HTTP client requests, one per attempt (OpenTelemetry http.client.request.duration).",
            attempt_labels: [
                "server_address",
                "http_request_method",
                "url_template",
                "http_response_status_code",
            ],
            breaker_values: ("true", "false"),
            failure_values: FailureValues {
                error: "error",
                timeout: "timeout",
                circuit_open: "circuit_open",
            },
            buckets: OPENTELEMETRY_BUCKETS.to_vec(),
            semantic_conventions: true,
        }
    }

    /// What to register for the server histogram: the vec itself, or under
    /// [`semantic_conventions`](Self::semantic_conventions) the vec behind the collector that
    /// splits its labels (a 5xx is an error).
    pub(crate) fn server_collector(
        &self,
        vec: HistogramVec,
    ) -> Result<Box<dyn Collector>, prometheus::Error> {
        self.collector(
            vec,
            self.server_duration,
            self.server_help,
            &self.server_labels,
            500,
        )
    }

    /// As [`server_collector`](Self::server_collector), for the client's call histogram
    /// (`attempt = false`) or attempt histogram (a 4xx is an error there).
    pub(crate) fn client_collector(
        &self,
        vec: HistogramVec,
        attempt: bool,
    ) -> Result<Box<dyn Collector>, prometheus::Error> {
        if attempt {
            self.collector(
                vec,
                self.attempt_duration,
                self.attempt_help,
                &self.attempt_labels,
                400,
            )
        } else {
            self.collector(
                vec,
                self.client_duration,
                self.client_help,
                &self.client_labels,
                400,
            )
        }
    }

    fn collector(
        &self,
        vec: HistogramVec,
        name: &str,
        help: &str,
        labels: &[&str],
        error_from: u16,
    ) -> Result<Box<dyn Collector>, prometheus::Error> {
        if !self.semantic_conventions {
            return Ok(Box::new(vec));
        }
        let wrapped =
            super::semconv::SemanticConventions::new(vec, name, help, labels, error_from)?;
        Ok(Box::new(wrapped))
    }

    /// aio-request's names, labels, values and buckets, exactly: `aio_request_server_latency`,
    /// `aio_request_latency`, `aio_request_transport_latency`, the `request_*` and `response_*`
    /// labels, `circuit_breaker` as Python writes a bool (`True`/`False`), buckets 5 ms to 20 s,
    /// and failures as aio-request records them: `489` for a transport error (its
    /// `network_errors_code`), `408` for a timeout (its transport's and its low-timeout answer),
    /// `502` with `circuit_breaker="True"` for an open breaker (its fallback response).
    pub fn aio_request() -> Self {
        MetricNames {
            server_duration: "aio_request_server_latency",
            server_help: "Duration of HTTP server requests.",
            server_labels: [
                "request_client",
                "request_method",
                "request_path",
                "response_status",
            ],
            client_duration: "aio_request_latency",
            client_help: "Duration of client requests.",
            client_labels: [
                "request_endpoint",
                "request_method",
                "request_path",
                "response_status",
                "circuit_breaker",
            ],
            attempt_duration: "aio_request_transport_latency",
            attempt_help: "Duration of transport requests.",
            attempt_labels: [
                "request_endpoint",
                "request_method",
                "request_path",
                "response_status",
            ],
            breaker_values: ("True", "False"),
            failure_values: FailureValues {
                error: "489",
                timeout: "408",
                circuit_open: "502",
            },
            buckets: AIO_REQUEST_BUCKETS.to_vec(),
            semantic_conventions: false,
        }
    }

    /// Other histogram buckets, in seconds.
    pub fn with_buckets(mut self, buckets: Vec<f64>) -> Self {
        self.buckets = buckets;
        self
    }

    /// The server histogram's name.
    pub fn server_duration(&self) -> &'static str {
        self.server_duration
    }

    /// The client (whole call) histogram's name.
    pub fn client_duration(&self) -> &'static str {
        self.client_duration
    }

    /// The per-attempt histogram's name.
    pub fn attempt_duration(&self) -> &'static str {
        self.attempt_duration
    }

    /// The histogram buckets, in seconds.
    pub fn buckets(&self) -> &[f64] {
        &self.buckets
    }
}
