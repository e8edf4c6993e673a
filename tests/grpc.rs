//! gRPC through the whole stacks, on loopback with real tonic servers and channels: retries on a
//! trailers-only `UNAVAILABLE` and on nothing else, a status in trailers after a message counted
//! by the breaker and the metrics, the server's refusals in gRPC's terms as a plain tonic client
//! reads them, the context inside a tonic handler, and one deadline across HTTP → gRPC → HTTP.

#[path = "../examples/support/bridge.rs"]
mod bridge;
mod common;
#[path = "../examples/support/context_grpc.rs"]
mod context_grpc;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use context_grpc::{ContextClient, ContextReply, ContextServer, GetRequest};
use http::{HeaderMap, Uri};
use http_body::Frame;
use prometheus::Registry;
use tonic::transport::Channel;
use tonic::Code;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_lifeline::circuit_breaker::{
    ByDestination, CircuitBreakerLayer, CircuitBreakerSettings, CircuitState, Respond502,
};
use tower_lifeline::deadline::{ClientDeadlineLayer, ServerDeadlineLayer};
use tower_lifeline::grpc::{GrpcTransportLayer, WatchedBody};
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
use tower_lifeline::propagation::PropagateLayer;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};
use tower_lifeline::{Deadline, Priority, RequestContext};

/// Serves a tonic service with tonic's routes on axum, no tower-lifeline layer: the peer.
async fn serve_bare(service: ContextServer) -> SocketAddr {
    common::serve(tonic::service::Routes::new(service).into_axum_router()).await
}

async fn serve_preset(server: Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

fn origin(addr: SocketAddr) -> Uri {
    format!("http://{addr}").parse().unwrap()
}

fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from(origin(addr)).connect_lazy()
}

/// The whole client stack, boxed: a type that can be named (and kept in axum state).
type StackService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<WatchedBody<tonic::body::Body>>,
    tower_lifeline::BoxError,
>;

/// The client layers over a channel, as the `grpc` module's docs compose them.
struct Stack {
    metrics: ClientMetrics,
    registry: Registry,
    breaker:
        CircuitBreakerLayer<tower_lifeline::classify::DefaultClassifier, ByDestination, Respond502>,
}

impl Stack {
    fn new(breaker: CircuitBreakerSettings) -> Stack {
        let registry = Registry::new();
        Stack {
            metrics: ClientMetrics::register(&registry, MetricsConfig::default()).unwrap(),
            registry,
            breaker: CircuitBreakerLayer::new(breaker).respond_502(),
        }
    }

    fn client(&self, addr: SocketAddr) -> ContextClient<StackService> {
        let service = ServiceBuilder::new()
            .layer(BoxCloneSyncService::layer())
            .layer(self.metrics.call_layer())
            .layer(ClientDeadlineLayer::new())
            .layer(StrategyLayer::new())
            .layer(self.breaker.clone())
            .layer(self.metrics.attempt_layer())
            .layer(PropagateLayer::new())
            .layer(GrpcTransportLayer::new())
            .service(channel(addr));
        ContextClient::with_origin(service, origin(addr))
    }

    fn metrics_text(&self) -> String {
        metrics::render(&self.registry).unwrap()
    }
}

/// A `Get` asking for up to three attempts: every gRPC call is a POST, so without this the
/// strategy sends it once.
fn get_with_retries() -> tonic::Request<GetRequest> {
    let mut request = tonic::Request::new(GetRequest {});
    request.extensions_mut().insert(Strategy::sequential(
        3,
        Delays::constant(Duration::from_millis(5)),
    ));
    request
}

/// A service whose `Get` fails with `code` for its first `failures` calls, then answers OK.
fn flaky(code: Code, failures: usize) -> (ContextServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let service = ContextServer::new(move |_request| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err(tonic::Status::new(code, "not now"))
            } else {
                Ok(tonic::Response::new(ContextReply { json: "{}".into() }))
            }
        }
    });
    (service, calls)
}

/// The count of a histogram series whose labels include all of `labels`.
fn count(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}_count{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_trailers_only_unavailable_is_retried_when_the_caller_asked() {
    let (service, calls) = flaky(Code::Unavailable, 2);
    let addr = serve_bare(service).await;
    let stack = Stack::new(CircuitBreakerSettings::default());

    let reply = stack.client(addr).get(get_with_retries()).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let text = stack.metrics_text();
    let attempts = "http_client_attempt_duration_seconds";
    assert_eq!(
        count(&text, attempts, &[r#"status="UNAVAILABLE""#]),
        2,
        "{text}"
    );
    assert_eq!(count(&text, attempts, &[r#"status="OK""#]), 1, "{text}");
    assert_eq!(
        count(
            &text,
            "http_client_request_duration_seconds",
            &[r#"status="OK""#]
        ),
        1,
        "{text}"
    );

    // Without the caller's request, a POST is sent once, as every non-idempotent request.
    let (service, calls) = flaky(Code::Unavailable, 1);
    let addr = serve_bare(service).await;
    let status = stack
        .client(addr)
        .get(tonic::Request::new(GetRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn codes_outside_the_retryable_set_are_not_retried() {
    for code in [
        Code::Internal,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
    ] {
        let (service, calls) = flaky(code, 10);
        let addr = serve_bare(service).await;
        let stack = Stack::new(CircuitBreakerSettings::default());
        let status = stack
            .client(addr)
            .get(get_with_retries())
            .await
            .unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}");
    }
}

/// A gRPC frame around an encoded message.
fn grpc_frame(message: &ContextReply) -> Bytes {
    let encoded = prost::Message::encode_to_vec(message);
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

/// A hand-made gRPC server: a message, then trailers with `grpc-status: 14`; the status comes
/// only at the end of the stream, which tonic turns into the call's error.
async fn serve_message_then_unavailable() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        context_grpc::GET_PATH,
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "14".parse().unwrap());
                trailers.insert("grpc-message", "went away".parse().unwrap());
                let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                    Ok(Frame::data(grpc_frame(&ContextReply { json: "{}".into() }))),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(axum::body::Body::new(body))
                    .unwrap()
            }
        }),
    );
    (common::serve(app).await, calls)
}

#[tokio::test]
async fn a_status_in_the_trailers_trips_the_breaker_and_names_the_metrics() {
    let (addr, calls) = serve_message_then_unavailable().await;
    let stack = Stack::new(
        CircuitBreakerSettings::builder()
            .consecutive_failures(3)
            .break_duration(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let mut client = stack.client(addr);
    for _ in 0..3 {
        let status = client.get(get_with_retries()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    // An answer that carried a message is never retried: one request per call.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let scope = format!("http://{addr}");
    assert_eq!(
        stack.breaker.registry().state(&scope),
        Some(CircuitState::Open),
        "{:?}",
        stack.breaker.registry().snapshot()
    );
    // Open: the next call is refused here and never reaches the server.
    let refused = client.get(get_with_retries()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "{refused:?}");
    let text = stack.metrics_text();
    assert_eq!(
        count(
            &text,
            "http_client_attempt_duration_seconds",
            &[r#"status="UNAVAILABLE""#]
        ),
        3,
        "{text}"
    );
}

/// A hostile gRPC server: the response's head, then nothing, for ever (until the test ends).
async fn serve_head_then_stall() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        context_grpc::GET_PATH,
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                let stall = futures_util::stream::pending::<
                    Result<Frame<Bytes>, std::convert::Infallible>,
                >();
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(axum::body::Body::new(http_body_util::StreamBody::new(
                        stall,
                    )))
                    .unwrap()
            }
        }),
    );
    (common::serve(app).await, calls)
}

#[tokio::test]
async fn a_server_that_stalls_after_the_head_is_cut_at_the_deadline_and_counted() {
    let (addr, calls) = serve_head_then_stall().await;
    let stack = Stack::new(
        CircuitBreakerSettings::builder()
            .consecutive_failures(2)
            .break_duration(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let mut client = stack.client(addr);
    for _ in 0..2 {
        // An inherited deadline (tonic's own `set_timeout` would cut the call itself).
        let inbound = RequestContext::new(
            Some(Deadline::after(Duration::from_millis(300))),
            Priority::Normal,
        );
        let call = inbound.scope(client.get(tonic::Request::new(GetRequest {})));
        // Bounded, so that without the body's deadline the test fails rather than hangs.
        let status = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("cut at the deadline, not left hanging")
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        stack.breaker.registry().state(&format!("http://{addr}")),
        Some(CircuitState::Open)
    );
    let text = stack.metrics_text();
    assert_eq!(
        count(
            &text,
            "http_client_attempt_duration_seconds",
            &[r#"status="timeout""#]
        ),
        2,
        "{text}"
    );
}

/// The server preset around a tonic service whose `Get` sleeps `hold` then reports its
/// context and the `grpc-timeout` it was sent.
fn context_server(hold: Duration) -> ContextServer {
    ContextServer::new(move |request| async move {
        tokio::time::sleep(hold).await;
        let ctx = RequestContext::current().expect("the stack's context around the handler");
        let json = serde_json::json!({
            "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
            "priority": ctx.priority().as_str(),
            "grpc_timeout": request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            // The context is in the request's extensions too.
            "in_extensions": request.extensions().get::<RequestContext>() == Some(&ctx),
        });
        Ok(tonic::Response::new(ContextReply {
            json: json.to_string(),
        }))
    })
}

#[tokio::test]
async fn refusals_reach_a_plain_tonic_client_in_grpc_terms() {
    let registry = Registry::new();
    let server = Server::builder()
        .registry(registry.clone())
        // Refuse what has under 200 ms left: tonic's client gives up on its own at its deadline,
        // so the server must refuse well before it for the client to read the refusal.
        .deadline(ServerDeadlineLayer::new().low_time_threshold(Duration::from_millis(200)))
        .capacity(1)
        .build(
            tonic::service::Routes::new(context_server(Duration::from_millis(300)))
                .into_axum_router(),
        )
        .unwrap();
    let addr = serve_preset(server).await;
    // A plain tonic client: no tower-lifeline layer between it and the server.
    let plain = ContextClient::with_origin(channel(addr), origin(addr));

    // 100 ms (`grpc-timeout`) is under the server's threshold: refused before the handler, as
    // DEADLINE_EXCEEDED, not the HTTP 408 a gRPC client would read as UNKNOWN.
    let mut request = tonic::Request::new(GetRequest {});
    request.set_timeout(Duration::from_millis(100));
    let status = plain.clone().get(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("HTTP 408"), "{status:?}");

    // One call holds the only slot; the next is shed as UNAVAILABLE, with gRPC's pushback.
    let holder = tokio::spawn({
        let mut plain = plain.clone();
        async move { plain.get(tonic::Request::new(GetRequest {})).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = plain
        .clone()
        .get(tonic::Request::new(GetRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.metadata().get("grpc-retry-pushback-ms").is_some(),
        "{:?}",
        status.metadata()
    );
    assert!(holder.await.unwrap().is_ok());

    // A method the service does not have: UNIMPLEMENTED, and its invented name mints no series.
    let mut grpc = tonic::client::Grpc::with_origin(channel(addr), origin(addr));
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<GetRequest, ContextReply, _>(
            tonic::Request::new(GetRequest {}),
            "/lifeline.example.Context/Invented".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    let text = metrics::render(&registry).unwrap();
    let duration = "http_server_request_duration_seconds";
    let get = r#"route="/lifeline.example.Context/Get""#;
    assert_eq!(
        count(&text, duration, &[get, r#"status="OK""#]),
        1,
        "{text}"
    );
    assert_eq!(
        count(&text, duration, &[get, r#"status="DEADLINE_EXCEEDED""#]),
        1,
        "{text}"
    );
    assert_eq!(
        count(&text, duration, &[get, r#"status="UNAVAILABLE""#]),
        1,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            duration,
            &[
                r#"route="/lifeline.example.Context/{*rest}""#,
                r#"status="UNIMPLEMENTED""#
            ]
        ),
        1,
        "{text}"
    );
    assert!(!text.contains("Invented"), "{text}");
}

#[tokio::test]
async fn the_context_reaches_a_tonic_handler_through_grpc_timeout() {
    let server = Server::builder()
        .registry(Registry::new())
        .build(tonic::service::Routes::new(context_server(Duration::ZERO)).into_axum_router())
        .unwrap();
    let addr = serve_preset(server).await;
    let stack = Stack::new(CircuitBreakerSettings::default());

    // Inside a High request with 2 s left: the call inherits both.
    let inbound = RequestContext::new(
        Some(Deadline::after(Duration::from_secs(2))),
        Priority::High,
    );
    let mut client = stack.client(addr);
    let reply = inbound
        .scope(client.get(tonic::Request::new(GetRequest {})))
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&reply.into_inner().json).unwrap();
    let left = seen["deadline_ms"].as_u64().unwrap();
    assert!((1_000..=2_000).contains(&left), "{seen}");
    assert_eq!(seen["priority"], "high", "{seen}");
    assert_eq!(seen["in_extensions"], true, "{seen}");
    let wire = seen["grpc_timeout"]
        .as_str()
        .expect("grpc-timeout was written");
    let sent = tower_lifeline::headers::parse_grpc_timeout(&wire.parse().unwrap()).unwrap();
    assert!(
        sent <= Duration::from_secs(2) && sent > Duration::from_secs(1),
        "{wire}"
    );

    // A tonic `set_timeout` is the call's explicit deadline: the server is told no more.
    let mut request = tonic::Request::new(GetRequest {});
    request.set_timeout(Duration::from_millis(300));
    let reply = client.get(request).await.unwrap();
    let seen: serde_json::Value = serde_json::from_str(&reply.into_inner().json).unwrap();
    assert!(seen["deadline_ms"].as_u64().unwrap() <= 300, "{seen}");
}

#[tokio::test]
async fn one_deadline_and_priority_across_http_grpc_http() {
    let a = bridge::start().await;
    let hops = bridge::call(a, Duration::from_millis(2_500), Priority::Low).await;
    let names: Vec<&str> = hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(names, ["A (HTTP)", "B (gRPC)", "C (HTTP)"]);
    let mut previous = 2_500;
    for hop in &hops {
        let left = hop.deadline_ms.expect("every hop has the deadline");
        assert!(left <= previous, "{hops:?}");
        assert!(left > 1_000, "{hops:?}");
        assert_eq!(hop.priority, "low", "{hops:?}");
        previous = left;
    }
}
