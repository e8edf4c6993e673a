//! The server stack on real loopback sockets: deadline, priority, then load shedding, keyed by
//! axum's route templates.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_lifeline::load_shed::LoadShedLayer;
use tower_lifeline::{Priority, ServiceBuilderExt};

#[derive(Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

fn app(shed: LoadShedLayer, gate: Gate) -> Router {
    Router::new()
        .route(
            "/held",
            get(|State(gate): State<Gate>| async move {
                gate.entered.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.release.acquire().await.unwrap();
                "held"
            }),
        )
        .route("/quick", get(|| async { "quick" }))
        .route(
            "/slow/{id}",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "slow"
            }),
        )
        .with_state(gate)
        .layer(
            ServiceBuilder::new()
                .server_deadline(Duration::from_secs(20))
                .server_priority()
                .layer(shed),
        )
}

fn request(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).unwrap()
}

#[tokio::test]
async fn at_saturation_high_keeps_succeeding_while_low_is_shed() {
    // Capacity 4: Low may use 2 slots, Normal 3, High all 4.
    let shed = LoadShedLayer::new(4);
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let addr = common::serve(app(shed.clone(), gate.clone())).await;
    let client = common::http_client();

    let held: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .request(request(addr, "/held", &[("x-request-priority", "normal")]))
                    .await
            })
        })
        .collect();
    for _ in 0..500 {
        if gate.entered.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gate.entered.load(Ordering::SeqCst), 3);

    for round in 0..10 {
        let low = client
            .request(request(addr, "/quick", &[("x-request-priority", "low")]))
            .await
            .unwrap();
        assert_eq!(
            low.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        assert_eq!(low.headers()[header::RETRY_AFTER], "1");
        let normal = client
            .request(request(addr, "/quick", &[("x-request-priority", "normal")]))
            .await
            .unwrap();
        assert_eq!(
            normal.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        let high = client
            .request(request(addr, "/quick", &[("x-request-priority", "high")]))
            .await
            .unwrap();
        assert_eq!(high.status(), StatusCode::OK, "round {round}");
        assert_eq!(common::text(high.into_body()).await, "quick");
    }
    let stats = shed.stats();
    assert_eq!(stats.shed_for(Priority::Low), 10);
    assert_eq!(stats.shed_for(Priority::Normal), 10);
    assert_eq!(stats.shed_for(Priority::High), 0);

    gate.release.add_permits(3);
    for pending in held {
        assert_eq!(pending.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Load gone: Low is served again.
    let low = client
        .request(request(addr, "/quick", &[("x-request-priority", "low")]))
        .await
        .unwrap();
    assert_eq!(low.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_deadline_shorter_than_the_routes_typical_time_is_refused_per_route_template() {
    let shed = LoadShedLayer::new(100);
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let addr = common::serve(app(shed.clone(), gate)).await;
    let client = common::http_client();

    // Five requests (the fewest it trusts) teach the layer that `/slow/{id}` takes about 200 ms.
    for id in 0..5 {
        let path = format!("/slow/{id}");
        let first = client.request(request(addr, &path, &[])).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
    }

    // Another id, same template: 50 ms is not enough.
    let refused = client
        .request(request(addr, "/slow/2", &[("x-request-timeout", "0.05")]))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["x-do-not-retry"], "1");

    // Other routes have their own estimate, and enough time is enough.
    let quick = client
        .request(request(addr, "/quick", &[("x-request-timeout", "0.05")]))
        .await
        .unwrap();
    assert_eq!(quick.status(), StatusCode::OK);
    let patient = client
        .request(request(addr, "/slow/3", &[("x-request-timeout", "5")]))
        .await
        .unwrap();
    assert_eq!(patient.status(), StatusCode::OK);

    assert_eq!(shed.stats().refused_deadline, 1);
}

#[tokio::test]
async fn shed_requests_are_counted_in_prometheus() {
    use tower_lifeline::metrics;
    let registry = prometheus::Registry::new();
    let shed = LoadShedLayer::new(4);
    metrics::register_load_shed(&registry, shed.clone()).unwrap();
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let addr = common::serve(app(shed.clone(), gate.clone())).await;
    let client = common::http_client();
    // Fill the server with High requests held at the gate, then send Low ones: they are shed.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .request(request(addr, "/held", &[("x-request-priority", "high")]))
                    .await
            })
        })
        .collect();
    while gate.entered.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        let response = client
            .request(request(addr, "/held", &[("x-request-priority", "low")]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    gate.release.add_permits(4);
    for request in held {
        request.await.unwrap().unwrap();
    }
    let text = metrics::render(&registry).unwrap();
    assert!(
        text.contains(r#"http_server_shed_requests_total{priority="low",reason="overload"} 3"#),
        "{text}"
    );
}
