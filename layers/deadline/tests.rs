use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::context::{Deadline, Priority, RequestContext};
use crate::headers::{X_DO_NOT_RETRY, X_REQUEST_TIMEOUT};
use crate::test_util::ReadinessChecked;

type Handled = std::pin::Pin<Box<dyn std::future::Future<Output = Response<String>> + Send>>;

/// A handler that reports the remaining deadline it sees, in ms, from the task-local context.
fn remaining_ms() -> impl FnMut(Request<()>) -> std::future::Ready<Response<String>> + Clone {
    |_req| {
        let ms = RequestContext::current()
            .and_then(|c| c.deadline())
            .map(|d| d.remaining().as_millis().to_string())
            .unwrap_or_else(|| "none".into());
        std::future::ready(Response::new(ms))
    }
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn server_reads_the_callers_timeout() {
    let svc = ServerDeadlineLayer::new().layer(ReadinessChecked::new(remaining_ms()));
    let res = svc
        .oneshot(request(&[("x-request-timeout", "1.5")]))
        .await
        .unwrap();
    assert_eq!(res.body(), "1500");
}

#[tokio::test(start_paused = true)]
async fn server_reads_grpc_timeout_when_there_is_no_x_request_timeout() {
    let svc = ServerDeadlineLayer::new().layer(ReadinessChecked::new(remaining_ms()));
    let res = svc
        .oneshot(request(&[("grpc-timeout", "250m")]))
        .await
        .unwrap();
    assert_eq!(res.body(), "250");
}

#[tokio::test(start_paused = true)]
async fn server_uses_the_default_without_a_header() {
    let svc = ServerDeadlineLayer::new()
        .default_timeout(Duration::from_secs(7))
        .layer(ReadinessChecked::new(remaining_ms()));
    let res = svc.oneshot(request(&[])).await.unwrap();
    assert_eq!(res.body(), "7000");
}

#[tokio::test(start_paused = true)]
async fn server_clamps_to_its_maximum() {
    let layer = ServerDeadlineLayer::new().max_timeout(Duration::from_secs(10));
    for value in ["3600", "1e9", "99999999H"] {
        let header = if value.ends_with('H') {
            "grpc-timeout"
        } else {
            "x-request-timeout"
        };
        let svc = layer.layer(ReadinessChecked::new(remaining_ms()));
        let res = svc.oneshot(request(&[(header, value)])).await.unwrap();
        assert_eq!(res.body(), "10000", "{header}: {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn server_ignores_malformed_headers() {
    let table = [
        "", "-1", "NaN", "inf", "1e309", "abc", "4,5", "0x10", "1.2.3",
    ];
    for value in table {
        let inner = ReadinessChecked::new(remaining_ms());
        let calls = inner.calls.clone();
        let svc = ServerDeadlineLayer::new().layer(inner);
        let res = svc
            .oneshot(request(&[
                ("x-request-timeout", value),
                ("grpc-timeout", "123456789S"),
            ]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{value:?}");
        assert_eq!(res.body(), "20000", "{value:?} falls back to the default");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn server_refuses_expired_and_nearly_expired_requests_without_calling_the_handler() {
    for value in ["0", "0.000", "0.004", "1e-05"] {
        let inner = ReadinessChecked::new(remaining_ms());
        let calls = inner.calls.clone();
        let svc = ServerDeadlineLayer::new().layer(inner);
        let res = svc
            .oneshot(request(&[("x-request-timeout", value)]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT, "{value}");
        assert!(res.headers().contains_key(X_DO_NOT_RETRY));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{value} must not reach the handler"
        );
    }
    // Just at the threshold is enough.
    let svc = ServerDeadlineLayer::new().layer(ReadinessChecked::new(remaining_ms()));
    let res = svc
        .oneshot(request(&[("x-request-timeout", "0.005")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn server_threshold_is_configurable() {
    let svc = ServerDeadlineLayer::new()
        .low_time_threshold(Duration::from_millis(100))
        .layer(ReadinessChecked::new(remaining_ms()));
    let res = svc
        .oneshot(request(&[("x-request-timeout", "0.05")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
}

fn slow(delay: Duration) -> impl FnMut(Request<()>) -> Handled + Clone {
    move |_req| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Response::new("finished".to_string())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn server_lets_a_late_handler_finish_by_default() {
    let svc = ServerDeadlineLayer::new().layer(ReadinessChecked::new(slow(Duration::from_secs(2))));
    let res = svc
        .oneshot(request(&[("x-request-timeout", "1")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "finished");
}

#[tokio::test(start_paused = true)]
async fn server_cancels_at_expiry_when_asked() {
    let svc = ServerDeadlineLayer::new()
        .cancel_on_expiry(true)
        .layer(ReadinessChecked::new(slow(Duration::from_secs(2))));
    let started = tokio::time::Instant::now();
    let res = svc
        .oneshot(request(&[("x-request-timeout", "1")]))
        .await
        .unwrap();
    // 504, not 408: the server ran out of the caller's time (see `expiry_status`).
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-do-not-retry"], "1");
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    let svc = ServerDeadlineLayer::new()
        .cancel_on_expiry(true)
        .expiry_status(StatusCode::SERVICE_UNAVAILABLE)
        .layer(ReadinessChecked::new(slow(Duration::from_secs(2))));
    let res = svc
        .oneshot(request(&[("x-request-timeout", "1")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn route_timeout_replaces_the_default_but_not_the_callers_deadline() {
    let app = |inner| {
        ServerDeadlineLayer::new()
            .layer(RouteTimeoutLayer::new(Duration::from_secs(45)).layer(inner))
    };
    let res = app(ReadinessChecked::new(remaining_ms()))
        .oneshot(request(&[]))
        .await
        .unwrap();
    assert_eq!(res.body(), "45000");
    let res = app(ReadinessChecked::new(remaining_ms()))
        .oneshot(request(&[("x-request-timeout", "2")]))
        .await
        .unwrap();
    assert_eq!(res.body(), "2000");
}

#[tokio::test(start_paused = true)]
async fn route_timeout_is_capped_by_the_server_maximum() {
    let svc = ServerDeadlineLayer::new()
        .max_timeout(Duration::from_secs(30))
        .layer(
            RouteTimeoutLayer::new(Duration::from_secs(45))
                .layer(ReadinessChecked::new(remaining_ms())),
        );
    let res = svc.oneshot(request(&[])).await.unwrap();
    assert_eq!(res.body(), "30000");
}

#[tokio::test(start_paused = true)]
async fn route_timeout_moves_the_cancel_timer_later_and_earlier() {
    for (route, handler, expected_status, expected_elapsed) in [
        // Longer than the 20 s default: the handler's 30 s finish inside the route's 45 s.
        (45, 30, StatusCode::OK, 30),
        // Longer, but the handler overruns it: cancelled at 45 s, not at the default 20 s.
        (45, 60, StatusCode::GATEWAY_TIMEOUT, 45),
        // Shorter: cancelled at 2 s.
        (2, 10, StatusCode::GATEWAY_TIMEOUT, 2),
    ] {
        let svc = ServerDeadlineLayer::new().cancel_on_expiry(true).layer(
            RouteTimeoutLayer::new(Duration::from_secs(route))
                .layer(ReadinessChecked::new(slow(Duration::from_secs(handler)))),
        );
        let started = tokio::time::Instant::now();
        let res = svc.oneshot(request(&[])).await.unwrap();
        assert_eq!(
            res.status(),
            expected_status,
            "route {route}s, handler {handler}s"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(expected_elapsed));
    }
}

#[tokio::test(start_paused = true)]
async fn route_timeout_alone_acts_as_a_server_deadline() {
    let svc =
        RouteTimeoutLayer::new(Duration::from_secs(3)).layer(ReadinessChecked::new(remaining_ms()));
    let res = svc.oneshot(request(&[])).await.unwrap();
    assert_eq!(res.body(), "3000");
    // A caller's deadline still wins, and is still capped by the default maximum (60 s).
    for (header, expected) in [("2", "2000"), ("600", "60000")] {
        let svc = RouteTimeoutLayer::new(Duration::from_secs(3))
            .layer(ReadinessChecked::new(remaining_ms()));
        let res = svc
            .oneshot(request(&[("x-request-timeout", header)]))
            .await
            .unwrap();
        assert_eq!(res.body(), expected, "header {header}");
    }
}

#[tokio::test(start_paused = true)]
async fn server_keeps_a_priority_set_further_out() {
    let svc = ServerDeadlineLayer::new().layer(ReadinessChecked::new(|_req: Request<()>| {
        let ctx = RequestContext::current().unwrap();
        std::future::ready(Response::new(ctx.priority().to_string()))
    }));
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(RequestContext::new(None, Priority::High));
    assert_eq!(svc.oneshot(req).await.unwrap().body(), "high");
}

/// A transport that answers after `delay` with the `X-Request-Timeout` it was sent.
fn transport(delay: Duration) -> ReadinessChecked<impl FnMut(Request<()>) -> Handled + Clone> {
    ReadinessChecked::new(move |req: Request<()>| {
        let sent = req
            .headers()
            .get(X_REQUEST_TIMEOUT)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Response::new(sent)
        }) as Handled
    })
}

#[tokio::test(start_paused = true)]
async fn client_takes_explicit_capped_by_inherited_else_inherited_else_default() {
    let layer = ClientDeadlineLayer::new().default_timeout(Duration::from_secs(10));
    let cases = [
        (None, None, "10.000"),
        (Some(3), None, "3.000"),
        (None, Some(4), "4.000"),
        (Some(3), Some(4), "3.000"),
        (Some(5), Some(2), "2.000"),
        // The default never shortens an explicit or an inherited deadline (aio-request's
        // `deadline or context.deadline or default`); an explicit one is capped by the inherited.
        (Some(30), Some(40), "30.000"),
        (Some(30), None, "30.000"),
        (None, Some(45), "45.000"),
    ];
    for (explicit, inherited, expected) in cases {
        let svc = layer.layer(transport(Duration::ZERO));
        let mut req = request(&[]);
        if let Some(secs) = explicit {
            req.extensions_mut()
                .insert(Deadline::after(Duration::from_secs(secs)));
        }
        let ctx = RequestContext::new(
            inherited.map(|s| Deadline::after(Duration::from_secs(s))),
            Priority::Normal,
        );
        let res = ctx.scope(svc.oneshot(req)).await.unwrap();
        assert_eq!(
            res.body(),
            expected,
            "explicit {explicit:?}, inherited {inherited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn client_refuses_to_send_with_too_little_time_left() {
    let inner = transport(Duration::ZERO);
    let calls = inner.calls.clone();
    let svc = ClientDeadlineLayer::new().layer(inner);
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(4)));
    let err = svc.oneshot(req).await.unwrap_err();
    let exceeded = err.downcast_ref::<DeadlineExceeded>().expect("typed error");
    assert!(!exceeded.was_sent());
    assert_eq!(exceeded.allowed(), Duration::from_millis(4));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn client_stops_waiting_at_the_deadline() {
    let svc = ClientDeadlineLayer::new().layer(transport(Duration::from_secs(5)));
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(250)));
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    let exceeded = err.downcast_ref::<DeadlineExceeded>().expect("typed error");
    assert!(exceeded.was_sent());
    assert_eq!(err.to_string(), "deadline exceeded after 250ms");
}

#[tokio::test(start_paused = true)]
async fn client_answers_408_with_do_not_retry_in_response_mode() {
    // Refused before sending...
    let svc = ClientDeadlineLayer::new()
        .respond_408()
        .layer(transport(Duration::ZERO));
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(1)));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(res.headers()[X_DO_NOT_RETRY], "1");
    // ...and timed out after sending.
    let svc = ClientDeadlineLayer::new()
        .respond_408()
        .layer(transport(Duration::from_secs(5)));
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(res.headers()[X_DO_NOT_RETRY], "1");
}

#[tokio::test(start_paused = true)]
async fn client_leaves_the_effective_deadline_for_layers_below() {
    let svc = ClientDeadlineLayer::new()
        .default_timeout(Duration::from_secs(2))
        .write_header(false)
        .layer(ReadinessChecked::new(|req: Request<()>| {
            assert!(
                req.headers().get(X_REQUEST_TIMEOUT).is_none(),
                "header turned off"
            );
            let left = req.extensions().get::<Deadline>().unwrap().remaining();
            std::future::ready(Response::new(left.as_millis().to_string()))
        }));
    assert_eq!(svc.oneshot(request(&[])).await.unwrap().body(), "2000");
}

#[tokio::test(start_paused = true)]
async fn layers_follow_the_readiness_contract_across_clones() {
    // `ReadinessChecked` panics if `call` reaches an instance that `poll_ready` did not ready.
    // `ServiceExt::ready` then `call` on the same instance, repeatedly, through each layer.
    let mut server = ServerDeadlineLayer::new().layer(ReadinessChecked::new(remaining_ms()));
    let mut client = ClientDeadlineLayer::new().layer(transport(Duration::ZERO));
    for _ in 0..3 {
        server
            .ready()
            .await
            .unwrap()
            .call(request(&[]))
            .await
            .unwrap();
        client
            .ready()
            .await
            .unwrap()
            .call(request(&[]))
            .await
            .unwrap();
        // A clone starts unready; it must be readied on its own before use.
        let mut clone = server.clone();
        clone
            .ready()
            .await
            .unwrap()
            .call(request(&[]))
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "call without poll_ready")]
async fn readiness_checker_catches_a_call_on_an_unready_clone() {
    // The check above is worth something only if the double does catch a violation.
    let mut server = ServerDeadlineLayer::new().layer(ReadinessChecked::new(remaining_ms()));
    server.ready().await.unwrap();
    let mut clone = server.clone();
    let _ = clone.call(request(&[])).await;
}
