use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::route::{RouteEstimate, MIN_SAMPLES};
use super::service::service_time;
use super::*;
use crate::context::{Deadline, Priority, RequestContext};
use crate::test_util::ReadinessChecked;
use crate::upload::UploadProgress;
use tokio::time::Instant;

type Handled = Pin<Box<dyn Future<Output = Response<String>> + Send>>;

/// A handler that holds requests carrying `hold` until the gate gets permits, and sleeps for the
/// `sleep-ms` header's milliseconds.
fn handler(gate: Arc<Semaphore>) -> impl FnMut(Request<()>) -> Handled + Clone {
    move |req| {
        let gate = gate.clone();
        let hold = req.headers().contains_key("hold");
        let sleep = req
            .headers()
            .get("sleep-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_millis);
        Box::pin(async move {
            if hold {
                let _permit = gate.acquire().await.unwrap();
            }
            if let Some(sleep) = sleep {
                tokio::time::sleep(sleep).await;
            }
            Response::new("done".to_string())
        })
    }
}

fn request(priority: Priority, deadline: Option<Duration>, extra: &[&str]) -> Request<()> {
    let mut builder = Request::get("/");
    for name in extra {
        builder = builder.header(*name, "1");
    }
    let mut req = builder.body(()).unwrap();
    req.extensions_mut()
        .insert(RequestContext::new(deadline.map(Deadline::after), priority));
    req
}

/// Starts `count` held requests of `priority` and returns their join handles.
async fn hold<S>(
    svc: &S,
    priority: Priority,
    count: usize,
) -> Vec<tokio::task::JoinHandle<StatusCode>>
where
    S: Service<Request<()>, Response = Response<ShedBody<String>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let mut held = Vec::new();
    for _ in 0..count {
        let svc = svc.clone();
        held.push(tokio::spawn(async move {
            svc.oneshot(request(priority, None, &["hold"]))
                .await
                .unwrap()
                .status()
        }));
    }
    // Let each spawned call reach the handler and take its slot.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    held
}

async fn status<S>(svc: &S, req: Request<()>) -> Response<ShedBody<String>>
where
    S: Service<Request<()>, Response = Response<ShedBody<String>>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().oneshot(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn default_limits_reserve_a_fifth_for_high_and_half_for_low() {
    let layer = LoadShedLayer::new(10);
    assert_eq!(layer.config.settings.low_limit, 5);
    assert_eq!(layer.config.settings.normal_limit, 8);
    assert_eq!(layer.config.settings.capacity, 10);
    // Degenerate capacities stay usable rather than panicking.
    let one = LoadShedLayer::new(0);
    assert_eq!(
        (
            one.config.settings.low_limit,
            one.config.settings.normal_limit,
            one.config.settings.capacity
        ),
        (1, 1, 1)
    );
    let clamped = LoadShedLayer::new(4).priority_limits(100, 0);
    assert_eq!(
        (
            clamped.config.settings.low_limit,
            clamped.config.settings.normal_limit
        ),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn sheds_low_first_then_normal_and_keeps_room_for_high() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = LoadShedLayer::new(10);
    let svc = layer.layer(ReadinessChecked::new(handler(gate.clone())));

    let mut held = hold(&svc, Priority::Low, 5).await;
    let res = status(&svc, request(Priority::Low, None, &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "6th Low is shed"
    );
    assert_eq!(res.headers()[http::header::RETRY_AFTER], "1");

    held.extend(hold(&svc, Priority::Normal, 3).await);
    let res = status(&svc, request(Priority::Normal, None, &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "9th Normal is shed"
    );

    held.extend(hold(&svc, Priority::High, 2).await);
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "11th is over capacity"
    );

    let stats = layer.stats();
    assert_eq!(stats.in_flight, 10);
    assert_eq!(stats.admitted, 10);
    assert_eq!(stats.shed_for(Priority::Low), 1);
    assert_eq!(stats.shed_for(Priority::Normal), 1);
    assert_eq!(stats.shed_for(Priority::High), 1);

    gate.add_permits(held.len());
    for handle in held {
        assert_eq!(handle.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(layer.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn high_keeps_succeeding_while_low_is_shed_at_saturation() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = LoadShedLayer::new(10);
    let svc = layer.layer(ReadinessChecked::new(handler(gate.clone())));
    // Normal traffic fills everything it may: 8 of 10.
    let held = hold(&svc, Priority::Normal, 8).await;

    for round in 0..20 {
        let low = status(&svc, request(Priority::Low, None, &[])).await;
        assert_eq!(
            low.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        let high = status(&svc, request(Priority::High, None, &[])).await;
        assert_eq!(high.status(), StatusCode::OK, "round {round}");
        assert_eq!(high.body().get_ref(), "done");
    }
    let stats = layer.stats();
    assert_eq!(stats.shed_for(Priority::Low), 20);
    assert_eq!(stats.shed_for(Priority::High), 0);
    assert_eq!(stats.admitted, 8 + 20);

    gate.add_permits(held.len());
    for handle in held {
        assert_eq!(handle.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_shed_request_never_reaches_the_handler() {
    let gate = Arc::new(Semaphore::new(0));
    let inner = ReadinessChecked::new(handler(gate.clone()));
    let calls = inner.calls.clone();
    let svc = LoadShedLayer::new(1).layer(inner);
    let held = hold(&svc, Priority::High, 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    for handle in held {
        assert_eq!(handle.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_gives_its_slot_back() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = LoadShedLayer::new(1);
    let svc = layer.layer(ReadinessChecked::new(handler(gate)));
    let held = hold(&svc, Priority::High, 1).await;
    assert_eq!(layer.stats().in_flight, 1);
    for handle in &held {
        handle.abort();
    }
    for handle in held {
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    assert_eq!(layer.stats().in_flight, 0);
    let res = status(&svc, request(Priority::Low, None, &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_configurable_and_rounded_up() {
    let gate = Arc::new(Semaphore::new(0));
    let svc = LoadShedLayer::new(1)
        .retry_after(Duration::from_millis(2_500))
        .layer(ReadinessChecked::new(handler(gate.clone())));
    let held = hold(&svc, Priority::High, 1).await;
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(res.headers()[http::header::RETRY_AFTER], "3");
    gate.add_permits(1);
    for handle in held {
        handle.await.unwrap();
    }
}

/// A request whose handler takes 100 ms.
fn slow_request() -> Request<()> {
    let mut slow = request(Priority::Normal, None, &[]);
    slow.headers_mut()
        .insert("sleep-ms", "100".parse().unwrap());
    slow
}

fn one_route() -> LoadShedLayer {
    LoadShedLayer::new(100).route_key(|_method, _uri| Some("/route".to_string()))
}

#[tokio::test(start_paused = true)]
async fn refuses_a_deadline_shorter_than_the_routes_typical_time() {
    let layer = one_route();
    let inner = ReadinessChecked::new(handler(Arc::new(Semaphore::new(0))));
    let calls = inner.calls.clone();
    let svc = layer.layer(inner);

    // One sample is not enough to refuse anyone: a cold first request proves little.
    let res = status(&svc, slow_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = status(
        &svc,
        request(Priority::High, Some(Duration::from_millis(50)), &[]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "one sample refuses nobody");
    // Five teach the layer that the route takes 100 ms.
    for _ in 1..MIN_SAMPLES {
        status(&svc, slow_request()).await;
    }

    let res = status(
        &svc,
        request(Priority::High, Some(Duration::from_millis(50)), &[]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[crate::headers::X_DO_NOT_RETRY], "1");
    assert!(!res.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        MIN_SAMPLES as usize + 1,
        "refused before the handler"
    );

    let res = status(
        &svc,
        request(Priority::Low, Some(Duration::from_millis(500)), &[]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "enough time left");
    // No deadline at all: nothing to compare with.
    let res = status(&svc, request(Priority::Low, None, &[])).await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(layer.stats().refused_deadline, 1);
    assert_eq!(layer.stats().shed_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_in_sixteen_deadline_refusals_goes_through_as_a_probe() {
    let layer = one_route();
    let svc = layer.layer(ReadinessChecked::new(handler(Arc::new(Semaphore::new(0)))));
    for _ in 0..MIN_SAMPLES {
        status(&svc, slow_request()).await;
    }

    let mut admitted = 0;
    for _ in 0..32 {
        let res = status(
            &svc,
            request(Priority::Normal, Some(Duration::from_millis(50)), &[]),
        )
        .await;
        if res.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2);
    assert_eq!(layer.stats().refused_deadline, 30);
}

#[tokio::test(start_paused = true)]
async fn the_route_table_is_bounded() {
    let layer = LoadShedLayer::new(100)
        .max_routes(1)
        .route_key(|_method, uri| Some(uri.path().to_string()));
    let svc = layer.layer(ReadinessChecked::new(handler(Arc::new(Semaphore::new(0)))));
    for path in ["/a", "/b"] {
        for _ in 0..MIN_SAMPLES {
            let mut slow = Request::get(path)
                .header("sleep-ms", "100")
                .body(())
                .unwrap();
            slow.extensions_mut().insert(RequestContext::default());
            status(&svc, slow).await;
        }
    }
    assert_eq!(layer.config.state.routes.read().unwrap().len(), 1);
    let short = |path: &str| {
        let mut req = Request::get(path).body(()).unwrap();
        req.extensions_mut().insert(RequestContext::new(
            Some(Deadline::after(Duration::from_millis(50))),
            Priority::Normal,
        ));
        req
    };
    assert_eq!(
        status(&svc, short("/a")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // `/b` found the table full: no estimate, so it is admitted.
    assert_eq!(status(&svc, short("/b")).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn deadline_admission_can_be_turned_off() {
    let layer = one_route().deadline_admission(false);
    let svc = layer.layer(ReadinessChecked::new(handler(Arc::new(Semaphore::new(0)))));
    for _ in 0..MIN_SAMPLES {
        status(&svc, slow_request()).await;
    }
    let res = status(
        &svc,
        request(Priority::Normal, Some(Duration::from_millis(50)), &[]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_estimate_is_a_moving_average() {
    let estimate = RouteEstimate::default();
    assert_eq!(estimate.get(), None);
    for _ in 0..MIN_SAMPLES {
        estimate.record(Duration::from_millis(100));
    }
    assert_eq!(estimate.get(), Some(Duration::from_millis(100)));
    estimate.record(Duration::from_millis(200));
    assert_eq!(estimate.get(), Some(Duration::from_millis(120)));
    estimate.record(Duration::MAX);
    assert!(estimate.get().unwrap() > Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_request_holds_its_slot_until_its_body_ends() {
    use http_body_util::BodyExt;

    let layer = LoadShedLayer::new(1);
    let svc = layer.layer(ReadinessChecked::new(handler(Arc::new(Semaphore::new(0)))));
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(layer.stats().in_flight, 1, "the body has not been sent yet");
    let refused = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    assert_eq!(layer.stats().in_flight, 0);

    // A body dropped unread gives the slot back too.
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(layer.stats().in_flight, 1);
    drop(res);
    assert_eq!(layer.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_gives_its_slot_back_while_the_handler_runs_on() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = LoadShedLayer::new(1);
    let svc = layer.layer(ReadinessChecked::new(handler(gate.clone())));
    let stuck = tokio::spawn(svc.clone().oneshot(request(
        Priority::High,
        Some(Duration::from_secs(2)),
        &["hold"],
    )));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "full");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        layer.stats().in_flight,
        0,
        "the slot came back at the deadline"
    );
    assert_eq!(layer.stats().released_at_deadline, 1);
    let res = status(&svc, request(Priority::High, None, &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    assert!(!stuck.is_finished(), "the handler was not cancelled");
    gate.add_permits(1);
    assert_eq!(stuck.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(layer.stats().in_flight, 0);
}

/// A handler that answers after the `sleep-ms` header's time with the `status` header's code.
fn answering(req: Request<()>) -> Handled {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let sleep = Duration::from_millis(header("sleep-ms").unwrap_or(0));
    let status = header("status")
        .and_then(|c| StatusCode::from_u16(u16::try_from(c).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    Box::pin(async move {
        tokio::time::sleep(sleep).await;
        let mut response = Response::new(String::new());
        *response.status_mut() = status;
        response
    })
}

fn timed(sleep_ms: u64, status: u16, upload: Option<UploadProgress>) -> Request<()> {
    let mut req = request(Priority::Normal, None, &[]);
    req.headers_mut()
        .insert("sleep-ms", sleep_ms.to_string().parse().unwrap());
    req.headers_mut()
        .insert("status", status.to_string().parse().unwrap());
    if let Some(upload) = upload {
        req.extensions_mut().insert(upload);
    }
    req
}

fn estimate_of(layer: &LoadShedLayer) -> Option<Duration> {
    let routes = layer.config.state.routes.read().unwrap();
    routes.get("/route").and_then(|r| r.get())
}

#[tokio::test(start_paused = true)]
async fn the_estimate_leaves_out_upload_time_failures_and_failed_bodies() {
    let layer = one_route();
    let svc = layer.layer(ReadinessChecked::new(answering));

    // An upload that took 5 s, marked 5 s after the request arrived, then 10 ms of work.
    for _ in 0..MIN_SAMPLES {
        let progress = UploadProgress::starting_at(Instant::now());
        let uploading = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            uploading.finish();
        });
        status(&svc, timed(5_010, 200, Some(progress))).await;
    }
    assert_eq!(estimate_of(&layer), Some(Duration::from_millis(10)));

    // Slow failures, failed bodies and bodies still arriving are no samples.
    for code in [500, 503, 408] {
        status(&svc, timed(3_000, code, None)).await;
    }
    let failed = UploadProgress::starting_at(Instant::now());
    failed.fail();
    status(&svc, timed(3_000, 200, Some(failed))).await;
    let receiving = UploadProgress::starting_at(Instant::now());
    status(&svc, timed(3_000, 200, Some(receiving))).await;
    assert_eq!(estimate_of(&layer), Some(Duration::from_millis(10)));

    // A 4xx is the handler's own answer: it counts.
    status(&svc, timed(110, 404, None)).await;
    assert_eq!(estimate_of(&layer), Some(Duration::from_millis(30)));
}

#[tokio::test(start_paused = true)]
async fn a_handler_cut_at_its_deadline_counts_for_the_limit_but_not_the_route_whatever_its_status()
{
    let started = Instant::now();
    tokio::time::advance(Duration::from_millis(40)).await;
    let answer = |status: u16| {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok::<_, ()>(response)
    };
    // The deadline has come (a cut), or is still a second away.
    let deadline = |cut: bool| Some(Instant::now() + Duration::from_secs(u64::from(!cut)));
    let took = Some(Duration::from_millis(40));
    for (status, cut) in [(504, true), (408, false), (503, true)] {
        let sample = service_time(
            &answer(status),
            started,
            None,
            deadline(cut),
            Instant::now(),
        );
        assert_eq!(sample.limit, took, "{status} cut={cut}");
        assert_eq!(sample.route, None, "{status} cut={cut}");
    }
    // A 504 of the handler's own is a failure: no sample at all.
    let sample = service_time(&answer(504), started, None, deadline(false), Instant::now());
    assert_eq!((sample.limit, sample.route), (None, None));
}

#[tokio::test(start_paused = true)]
async fn a_setting_changed_on_a_clone_keeps_the_one_shared_limit() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = LoadShedLayer::new(2);
    // Configured after cloning: before, this started a second, separate limit of 2.
    let clone = layer.clone().retry_after(Duration::from_secs(7));
    let first = layer.layer(ReadinessChecked::new(handler(gate.clone())));
    let second = clone.layer(ReadinessChecked::new(handler(gate.clone())));
    let held = hold(&first, Priority::High, 2).await;
    let refused = status(&second, request(Priority::High, None, &[])).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The clone's own setting.
    assert_eq!(refused.headers()["retry-after"], "7");
    assert_eq!(layer.stats().in_flight, 2);
    assert_eq!(clone.stats().shed_for(Priority::High), 1);
    gate.add_permits(2);
    for status in held {
        assert_eq!(status.await.unwrap(), StatusCode::OK);
    }
}

#[cfg(feature = "deadline")]
#[tokio::test(start_paused = true)]
async fn a_request_cut_at_its_deadline_by_a_layer_outside_is_one_sample_for_the_adaptive_limit() {
    use crate::deadline::ServerDeadlineLayer;
    // With the handler cancelled at the deadline (the deadline layer answers 504 itself, this
    // layer's future is dropped unseen), and with it running on past the deadline.
    for cancel in [true, false] {
        let layer = LoadShedLayer::adaptive();
        let svc = ServerDeadlineLayer::new()
            .cancel_on_expiry(cancel)
            .layer(layer.layer(ReadinessChecked::new(handler(Arc::new(Semaphore::new(0))))));
        let request = Request::get("/")
            .header("x-request-timeout", "0.1")
            .header("sleep-ms", "1000")
            .body(())
            .unwrap();
        let response = svc.oneshot(request).await.unwrap();
        let expected = if cancel {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::OK
        };
        assert_eq!(response.status(), expected);
        drop(response);
        let controller = layer.config.state.adaptive.as_ref().unwrap();
        assert_eq!(controller.window_samples(), 1, "cancel_on_expiry({cancel})");
        assert_eq!(layer.stats().released_at_deadline, 1);
    }
}
