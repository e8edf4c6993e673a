use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::context::{Deadline, Priority, RequestContext};
use crate::error::find_source;
use crate::test_util::ReadinessChecked;

/// A client transport that answers after `delay`, echoing the deadline it was given in ms.
fn transport(
    delay: Duration,
) -> impl tower::Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone {
    service_fn(move |req: Request<()>| async move {
        let seen = req
            .extensions()
            .get::<Deadline>()
            .map(|d| d.remaining().as_millis().to_string())
            .unwrap_or_default();
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Response::new(seen))
    })
}

fn timed_out(error: BoxError) -> AttemptTimedOut {
    find_source::<AttemptTimedOut>(error.as_ref())
        .expect("an AttemptTimedOut")
        .clone()
}

#[tokio::test(start_paused = true)]
async fn an_attempt_within_its_limit_passes_through_and_sees_its_own_deadline() {
    let svc = AttemptTimeoutLayer::new(Duration::from_secs(2)).layer(transport(Duration::ZERO));
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(10)));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(
        res.body(),
        "2000",
        "propagation below sees the attempt's budget"
    );
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_fires_when_it_is_the_shorter() {
    let svc =
        AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(transport(Duration::from_secs(5)));
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(10)));
    let error = timed_out(svc.oneshot(req).await.unwrap_err());
    assert_eq!(error.after(), Duration::from_secs(1));
    assert!(!error.by_deadline());
    assert_eq!(error.to_string(), "attempt timed out after 1s");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_limits_the_attempt_when_it_is_nearer() {
    let svc =
        AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(transport(Duration::from_secs(5)));
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(250)));
    let error = timed_out(svc.oneshot(req).await.unwrap_err());
    assert_eq!(error.after(), Duration::from_millis(250));
    assert!(error.by_deadline());
}

#[tokio::test(start_paused = true)]
async fn without_an_extension_the_inherited_deadline_counts() {
    let svc =
        AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(transport(Duration::from_secs(5)));
    let ctx = RequestContext::new(
        Some(Deadline::after(Duration::from_millis(400))),
        Priority::Normal,
    );
    let error = ctx
        .scope(async { svc.oneshot(Request::new(())).await.unwrap_err() })
        .await;
    let error = timed_out(error);
    assert_eq!(error.after(), Duration::from_millis(400));
    assert!(error.by_deadline());
}

#[tokio::test(start_paused = true)]
async fn without_any_deadline_the_attempt_timeout_alone_applies() {
    let svc = AttemptTimeoutLayer::new(Duration::from_millis(700))
        .layer(transport(Duration::from_secs(5)));
    let error = timed_out(svc.oneshot(Request::new(())).await.unwrap_err());
    assert_eq!(error.after(), Duration::from_millis(700));
    assert!(!error.by_deadline());
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_boxed() {
    let failing = service_fn(|_req: Request<()>| async {
        Err::<Response<()>, _>(std::io::Error::other("connection refused"))
    });
    let svc = AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(failing);
    let error = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(error.downcast_ref::<std::io::Error>().is_some());
}

type Handled = std::pin::Pin<Box<dyn Future<Output = Response<String>> + Send>>;

fn slow(delay: Duration) -> impl FnMut(Request<()>) -> Handled + Clone {
    move |_req| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Response::new("finished".to_string())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_timeout_answers_504_instead_of_waiting() {
    let svc = ServerTimeoutLayer::new(Duration::from_secs(1))
        .layer(ReadinessChecked::new(slow(Duration::from_secs(30))));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.body(), "");
}

#[tokio::test(start_paused = true)]
async fn a_quick_handler_is_untouched_by_the_server_timeout() {
    let svc = ServerTimeoutLayer::new(Duration::from_secs(1))
        .layer(ReadinessChecked::new(slow(Duration::from_millis(10))));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "finished");
}

#[tokio::test(start_paused = true)]
async fn the_server_timeout_status_is_configurable() {
    let svc = ServerTimeoutLayer::new(Duration::from_secs(1))
        .status_code(StatusCode::SERVICE_UNAVAILABLE)
        .layer(ReadinessChecked::new(slow(Duration::from_secs(30))));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[cfg(feature = "strategy")]
#[tokio::test(start_paused = true)]
async fn an_attempt_out_of_its_share_of_a_split_deadline_says_so() {
    use crate::context::DeadlineShare;
    let hang = tower::service_fn(|_req: http::Request<()>| {
        std::future::pending::<Result<http::Response<()>, std::io::Error>>()
    });
    let svc = AttemptTimeoutLayer::new(Duration::from_secs(10)).layer(hang);
    let mut request = http::Request::new(());
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    request.extensions_mut().insert(DeadlineShare);
    let err = svc.clone().oneshot(request).await.unwrap_err();
    let timed_out = err.downcast_ref::<AttemptTimedOut>().unwrap();
    assert_eq!(timed_out.limit(), TimeLimit::DeadlineShare);
    assert!(!timed_out.by_deadline());
    assert!(timed_out.to_string().contains("share"), "{timed_out}");
    // Without the mark the same deadline is the call's own.
    let mut request = http::Request::new(());
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    let err = svc.oneshot(request).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<AttemptTimedOut>().unwrap().limit(),
        TimeLimit::Deadline
    );
}

#[tokio::test(start_paused = true)]
async fn the_services_are_made_by_name_as_tower_http_makes_them() {
    // `Service::new(inner, ..)`, beside `Layer::new(..).layer(inner)`.
    let direct = ServerTimeout::new(
        ReadinessChecked::new(slow(Duration::from_secs(10))),
        Duration::from_secs(1),
    );
    let response = direct.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    let attempt = AttemptTimeout::new(transport(Duration::from_secs(10)), Duration::from_secs(1));
    let error = attempt.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(timed_out(error).limit(), TimeLimit::Attempt);
}
