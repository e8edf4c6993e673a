//! Hostile callers against the `Server` preset: whatever a caller puts in `X-Request-Timeout`,
//! `grpc-timeout`, `X-Request-Priority` or `X-Service-Name`, the server never panics, never
//! answers 500, clamps the deadline to its maximum, can ignore the priority, and keeps its
//! metric label sets bounded.

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, Request, StatusCode};
use prometheus::Registry;
use proptest::prelude::*;
use tower::ServiceExt;
use tower_lifeline::deadline::ServerDeadlineLayer;
use tower_lifeline::metrics::{self, MetricsConfig};
use tower_lifeline::server::Server;
use tower_lifeline::{Priority, RequestContext};

const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// A handler that reports the context the server stack gave it: remaining ms and priority.
fn app() -> Router {
    Router::new()
        .route(
            "/context",
            get(|ctx: RequestContext| async move {
                let remaining = ctx
                    .deadline()
                    .map_or(u128::MAX, |d| d.remaining().as_millis());
                format!("{remaining} {}", ctx.priority().as_str())
            }),
        )
        .route("/items/{id}", get(|| async { "item" }))
}

fn server(fixed: Option<Priority>, max_label_sets: usize) -> Server {
    let config = MetricsConfig {
        max_label_sets,
        max_server_label_sets: max_label_sets,
        ..MetricsConfig::default()
    };
    let mut builder = Server::builder()
        .registry(Registry::new())
        .metrics(config)
        .deadline(ServerDeadlineLayer::new().max_timeout(MAX_TIMEOUT));
    if let Some(priority) = fixed {
        builder = builder.fixed_priority(priority);
    }
    builder.build(app()).unwrap()
}

/// Sends one request with the given raw headers; returns the status and the body.
async fn send(
    router: &Router,
    path: &str,
    headers: &[(&str, HeaderValue)],
) -> (StatusCode, String) {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Header values a hostile caller might send: any bytes a `HeaderValue` accepts, and
/// number-shaped text that gets past a first glance.
fn hostile_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48)
            .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok()),
        "[0-9.eE+-]{1,40}[HMSmun]?".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
        (0u64..u64::MAX).prop_map(|n| HeaderValue::from_str(&n.to_string()).unwrap()),
        "(high|normal|low|HIGH|Low|critical|)".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
    ]
}

#[test]
fn absurd_deadlines_are_clamped_to_the_maximum() {
    let rt = runtime();
    let server = server(None, 2_000);
    let router = server.router();
    rt.block_on(async {
        for raw in [
            "1e30",
            "99999999999999999999",
            "18446744073709551615.999",
            "1e308",
            "31",
        ] {
            let (status, body) = send(
                &router,
                "/context",
                &[("x-request-timeout", HeaderValue::from_static(raw))],
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{raw}");
            let remaining: u128 = body.split(' ').next().unwrap().parse().unwrap();
            assert!(remaining <= MAX_TIMEOUT.as_millis(), "{raw}: {body}");
        }
        let (_, body) = send(
            &router,
            "/context",
            &[("grpc-timeout", HeaderValue::from_static("99999999H"))],
        )
        .await;
        let remaining: u128 = body.split(' ').next().unwrap().parse().unwrap();
        assert!(remaining <= MAX_TIMEOUT.as_millis(), "grpc: {body}");
    });
}

#[test]
fn a_fixed_priority_ignores_what_the_caller_asks_for() {
    let rt = runtime();
    let server = server(Some(Priority::Low), 2_000);
    let router = server.router();
    rt.block_on(async {
        for raw in ["high", "HIGH", "normal", "low", "bogus"] {
            let (_, body) = send(
                &router,
                "/context",
                &[("x-request-priority", HeaderValue::from_static(raw))],
            )
            .await;
            assert!(body.ends_with(" low"), "{raw}: {body}");
        }
    });
}

#[test]
fn thousands_of_invented_service_names_and_paths_keep_the_label_sets_bounded() {
    const CAP: usize = 50;
    let rt = runtime();
    let server = server(None, CAP);
    let router = server.router();
    rt.block_on(async {
        for i in 0..3_000u32 {
            let name = HeaderValue::from_str(&format!("svc-{i}")).unwrap();
            let path = format!("/items/{i}");
            let (status, _) = send(&router, &path, &[("x-service-name", name)]).await;
            assert_eq!(status, StatusCode::OK);
            // Unrouted paths too: they must not mint a route label each.
            let junk = format!("/nowhere/{i}/x{i}");
            send(&router, &junk, &[]).await;
            // A real caller that keeps calling through the flood.
            if i % 10 == 0 {
                let steady = HeaderValue::from_static("billing");
                send(&router, "/items/1", &[("x-service-name", steady)]).await;
            }
        }
    });
    let text = metrics::render(server.registry()).unwrap();
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .count();
    assert!(series <= CAP, "{series} series:\n{text}");
    assert!(!text.contains("/nowhere/"), "raw paths never become labels");
    assert!(
        text.contains(r#"client="billing",method="GET",route="/items/{id}",status="200"} 300"#),
        "the caller that kept calling is still its own series:\n{text}"
    );
    assert!(!text.contains(r#"client="other""#), "{text}");
}

/// Invented statuses, names and paths: `/metrics` stays small.
#[test]
fn random_names_paths_and_statuses_keep_the_scrape_under_a_megabyte() {
    let rt = runtime();
    let app = Router::new().route(
        "/status/{code}",
        get(
            |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
            },
        ),
    );
    let server = Server::builder()
        .registry(Registry::new())
        .build(app)
        .unwrap();
    let router = server.router();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    rt.block_on(async {
        for i in 0..4_000u32 {
            let name = HeaderValue::from_str(&format!("svc-{}", next() % 100_000)).unwrap();
            let path = match i % 3 {
                0 => format!("/status/{}", 100 + next() % 900),
                1 => format!("/x{}/y{}", next() % 1000, next() % 1000),
                _ => "/status/200".to_owned(),
            };
            send(&router, &path, &[("x-service-name", name)]).await;
        }
    });
    let text = metrics::render(server.registry()).unwrap();
    assert!(text.len() < 1 << 20, "{} bytes", text.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_propagation_headers_get_an_answer_within_the_clamp(
        timeout in hostile_value(),
        grpc in hostile_value(),
        priority in hostile_value(),
        service in hostile_value(),
    ) {
        let rt = runtime();
        let server = server(None, 100);
        let router = server.router();
        let (status, body) = rt.block_on(send(&router, "/context", &[
            ("x-request-timeout", timeout),
            ("grpc-timeout", grpc),
            ("x-request-priority", priority),
            ("x-service-name", service),
        ]));
        // Either served, with a clamped deadline and a known priority, or refused as expired.
        prop_assert!(status == StatusCode::OK || status == StatusCode::REQUEST_TIMEOUT, "{}", status);
        if status == StatusCode::OK {
            let (remaining, priority) = body.split_once(' ').unwrap();
            let remaining: u128 = remaining.parse().unwrap();
            prop_assert!(remaining <= MAX_TIMEOUT.as_millis(), "{}", body);
            prop_assert!(["high", "normal", "low"].contains(&priority), "{}", body);
        }
        let text = metrics::render(server.registry()).unwrap();
        for line in text.lines().filter(|l| l.contains("client=\"")) {
            let client = line.split("client=\"").nth(1).unwrap().split('"').next().unwrap();
            prop_assert!(
                client.len() <= 64
                    && client.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "label {:?}", client
            );
        }
    }
}

/// Raw bytes that are not HTTP, invented methods, a huge path and a half-sent request held open,
/// all against the served `Server` preset: it keeps answering, and no method label is minted.
#[tokio::test]
async fn garbage_on_the_wire_leaves_the_server_serving_and_its_labels_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let server = server(None, 2_000);
    let registry = server.registry().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));

    async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    // A half-sent request, held open for the whole test.
    let mut loris = TcpStream::connect(addr).await.unwrap();
    loris
        .write_all(b"GET /context HTTP/1.1\r\nHost: x\r\nX-Req")
        .await
        .unwrap();

    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for len in [1usize, 7, 64, 512, 4_096] {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        exchange(addr, &garbage).await;
    }
    for method in ["PURGE", "FOO123", "X-ATTACK-1", "X-ATTACK-2"] {
        let answer = exchange(
            addr,
            format!("{method} /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 "), "{method}: {answer:?}");
    }
    let huge_path = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    exchange(addr, huge_path.as_bytes()).await;
    let answer = exchange(
        addr,
        b"GET /context HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 1e400\r\nX-Request-Priority: \xff\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // Still serving, with the half-sent request still open.
    let answer = exchange(
        addr,
        b"GET /context HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(!serving.is_finished());

    let text = metrics::render(&registry).unwrap();
    for line in text.lines().filter(|l| l.contains("method=\"")) {
        let method = line
            .split("method=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
                "_OTHER"
            ]
            .contains(&method),
            "{line}"
        );
    }
    assert!(text.contains(r#"method="_OTHER""#), "{text}");
    drop(loris);
    serving.abort();
}

/// `X-Request-Priority: high` from a peer outside the trusted networks is Normal; from inside,
/// High. Over a real loopback connection, whose peer is 127.0.0.1.
#[tokio::test]
async fn priority_is_believed_only_from_the_trusted_networks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_lifeline::priority::Network;

    async fn priority_seen(networks: &[&str]) -> String {
        let networks: Vec<Network> = networks.iter().map(|n| n.parse().unwrap()).collect();
        let server = Server::builder()
            .registry(Registry::new())
            .trust_priority_from(networks)
            .build(app())
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(server.serve(listener));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /context HTTP/1.1\r\nHost: x\r\nX-Request-Priority: high\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        serving.abort();
        answer.rsplit(' ').next().unwrap().to_owned()
    }

    assert_eq!(priority_seen(&["10.0.0.0/8", "fd00::/8"]).await, "normal");
    assert_eq!(priority_seen(&["127.0.0.0/8"]).await, "high");
    assert_eq!(priority_seen(&[]).await, "normal", "trusting nobody");
}
