//! One trace across two hops: a client calls server A, whose handler calls server B with a
//! retried call and a hedged one, all on 127.0.0.1, all through the presets. The SDK's
//! in-memory exporter collects the spans.
//!
//! In a test binary of its own: the subscriber and the propagator are process-wide.
#![cfg(all(feature = "opentelemetry", feature = "client", feature = "server"))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use prometheus::Registry;
use tower_lifeline::client::Client;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{Delays, Strategy};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Serves `app` through the `Server` preset on a free loopback port.
async fn serve(app: Router) -> String {
    let server = Server::builder()
        .registry(Registry::new())
        .build(app)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    format!("http://{addr}")
}

/// Server B: `/flaky` fails its first request with 503; `/slow-first` answers its first
/// request after 300 ms and the others at once.
async fn server_b() -> String {
    let flaky = Arc::new(AtomicU32::new(0));
    let slow = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/flaky",
            get(|State(n): State<Arc<AtomicU32>>| async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            })
            .with_state(flaky),
        )
        .route(
            "/slow-first",
            get(|State(n): State<Arc<AtomicU32>>| async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                StatusCode::OK
            })
            .with_state(slow),
        );
    serve(app).await
}

/// Server A: `/front` calls B's `/flaky` with retries, then `/slow-first` hedged after 30 ms.
async fn server_a(b: String) -> String {
    let client = Client::builder()
        .base_url(&b)
        .service_name("a")
        .build()
        .unwrap();
    let app = Router::new().route(
        "/front",
        get(|State(client): State<Client>| async move {
            let retried = client
                .get("/flaky")
                .route("/flaky")
                .strategy(Strategy::sequential(
                    3,
                    Delays::constant(Duration::from_millis(10)),
                ))
                .send()
                .await;
            let hedged = client
                .get("/slow-first")
                .route("/slow-first")
                .strategy(Strategy::parallel(
                    2,
                    Delays::constant(Duration::from_millis(30)),
                ))
                .send()
                .await;
            match (retried, hedged) {
                (Ok(r), Ok(h)) if r.status() == 200 && h.status() == 200 => StatusCode::OK,
                _ => StatusCode::BAD_GATEWAY,
            }
        })
        .with_state(client),
    );
    serve(app).await
}

fn kind(span: &SpanData) -> &SpanKind {
    &span.span_kind
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The spans of `kind` named `name` whose parent is `parent`.
fn children<'a>(
    spans: &'a [SpanData],
    parent: SpanId,
    kind_wanted: SpanKind,
    name: &str,
) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent && *kind(s) == kind_wanted && s.name == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_two_hops_with_retried_and_hedged_attempts_as_siblings() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let b = server_b().await;
    let b_port: i64 = b.rsplit(':').next().unwrap().parse().unwrap();
    let a = server_a(b).await;
    let client = Client::builder().service_name("edge").build().unwrap();
    let root = tracing::info_span!("edge request");
    let response = client
        .get(format!("{a}/front"))
        .route("/front")
        .timeout(Duration::from_secs(5))
        .send()
        .instrument(root.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(root);

    // The hedge that lost ends on B when its handler does (300 ms): wait for all the spans of
    // these layers: the root, the edge call and attempt, A's server span, A's two calls with
    // two attempts each, and B's four server spans. (The strategy engine's own debug spans,
    // named `attempt`, come on top.)
    let ours = |spans: &[SpanData]| spans.iter().filter(|s| s.name != "attempt").count();
    let mut spans = Vec::new();
    for _ in 0..50 {
        spans = exporter.get_finished_spans().unwrap();
        if ours(&spans) >= 14 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.span_kind))
        .collect();
    assert_eq!(ours(&spans), 14, "{names:#?}");

    // One trace.
    let traces: HashMap<TraceId, usize> = spans.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.span_context.trace_id()).or_default() += 1;
        m
    });
    assert_eq!(traces.len(), 1, "{names:#?}");

    // edge request → GET /front call → GET /front attempt → A's GET /front server span.
    let root = spans.iter().find(|s| s.name == "edge request").unwrap();
    let [edge_call] = children(
        &spans,
        root.span_context.span_id(),
        SpanKind::Internal,
        "GET /front",
    )[..] else {
        panic!("one call under the root: {names:#?}");
    };
    let [edge_attempt] = children(
        &spans,
        edge_call.span_context.span_id(),
        SpanKind::Client,
        "GET /front",
    )[..] else {
        panic!("one attempt under the edge call: {names:#?}");
    };
    let [a_server] = children(
        &spans,
        edge_attempt.span_context.span_id(),
        SpanKind::Server,
        "GET /front",
    )[..] else {
        panic!("A's server span under the edge attempt: {names:#?}");
    };
    assert_eq!(
        attribute(a_server, "http.route"),
        Some(&Value::from("/front"))
    );

    // In A's handler: the retried call has two sibling attempts, each with B's server span.
    for (route, statuses) in [("/flaky", [503, 200]), ("/slow-first", [200, 200])] {
        let name = format!("GET {route}");
        let [call] = children(
            &spans,
            a_server.span_context.span_id(),
            SpanKind::Internal,
            &name,
        )[..] else {
            panic!("one {name} call under A's server span: {names:#?}");
        };
        let mut attempts = children(&spans, call.span_context.span_id(), SpanKind::Client, &name);
        attempts.sort_by_key(|s| match attribute(s, "tower_lifeline.attempt") {
            Some(Value::I64(n)) => *n,
            _ => 0,
        });
        assert_eq!(
            attempts.len(),
            2,
            "{name}: two sibling attempts: {names:#?}"
        );
        assert_eq!(
            attribute(attempts[1], "http.request.resend_count"),
            Some(&Value::I64(1)),
            "{name}"
        );
        // The destination, read from the URI only for a span that is recorded.
        for span in [call, attempts[0], attempts[1]] {
            assert_eq!(
                attribute(span, "server.address"),
                Some(&Value::from("127.0.0.1")),
                "{name}"
            );
            assert_eq!(
                attribute(span, "server.port"),
                Some(&Value::I64(b_port)),
                "{name}"
            );
        }
        assert_eq!(
            attribute(call, "tower_lifeline.attempts"),
            Some(&Value::I64(2)),
            "{name}"
        );
        let kinds: Vec<_> = attempts
            .iter()
            .map(|a| attribute(a, "tower_lifeline.attempt_kind"))
            .collect();
        let second = if route == "/flaky" { "retry" } else { "hedge" };
        assert_eq!(
            kinds,
            [Some(&Value::from("first")), Some(&Value::from(second))],
            "{name}"
        );
        if route == "/slow-first" {
            // The hedge went out after its 30 ms delay, long before the first attempt's 300 ms.
            let Some(Value::I64(sent_after)) =
                attribute(attempts[1], "tower_lifeline.sent_after_ms")
            else {
                panic!("no sent_after_ms on the hedge");
            };
            assert!(
                (30..300).contains(sent_after),
                "hedge sent after {sent_after} ms"
            );
        }
        for (attempt, status) in attempts.iter().zip(statuses) {
            let [b_server] = children(
                &spans,
                attempt.span_context.span_id(),
                SpanKind::Server,
                &name,
            )[..] else {
                panic!("B's server span under each {name} attempt: {names:#?}");
            };
            if route == "/flaky" {
                assert_eq!(
                    attribute(b_server, "http.response.status_code"),
                    Some(&Value::I64(status)),
                    "{name}"
                );
            }
        }
    }
    let _ = provider.shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn trace_context_goes_only_where_the_propagation_headers_go() {
    use http::{HeaderMap, Request, Response};
    use tower::{service_fn, Layer, ServiceExt};
    use tower_lifeline::propagation::PropagateLayer;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    // This thread's own subscriber: the other test owns the global one.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("withheld")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let echo = service_fn(|req: Request<()>| async move {
        Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
    });
    let client = PropagateLayer::new()
        .only_to_hosts(["inventory"])
        .layer(echo);
    let span = tracing::info_span!("caller");
    let send = |uri: &str| {
        let request = Request::get(uri)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        client.clone().oneshot(request).instrument(span.clone())
    };
    let internal: HeaderMap = send("http://inventory/stock").await.unwrap().into_body();
    let trace_id = span.context().span().span_context().trace_id();
    assert!(
        internal["traceparent"]
            .to_str()
            .unwrap()
            .contains(&trace_id.to_string()),
        "the caller's span, not the hand-set value: {:?}",
        internal["traceparent"]
    );
    let third_party: HeaderMap = send("https://api.example/charge")
        .await
        .unwrap()
        .into_body();
    assert!(third_party.get("traceparent").is_none(), "{third_party:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_span_lasts_until_the_response_body_ends() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_lifeline::otel::ServerTraceLayer;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // This thread's own subscriber: the first test owns the global one.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("streamed")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let (mut sender, body) = http_body_util::channel::Channel::<Bytes>::new(1);
    let body = std::sync::Mutex::new(Some(body));
    let server = ServerTraceLayer::new().layer(service_fn(move |_req: Request<()>| {
        let body = body.lock().unwrap().take().unwrap();
        async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
    }));
    let response = server
        .oneshot(Request::get("/stream").body(()).unwrap())
        .await
        .unwrap();
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "the headers are out, the body is not"
    );
    let streamer = tokio::spawn(async move {
        sender.send_data(Bytes::from("all of it")).await.unwrap();
    });
    let body = response.into_body().collect().await.unwrap().to_bytes();
    streamer.await.unwrap();
    assert_eq!(body, "all of it");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_kind, SpanKind::Server);
}
