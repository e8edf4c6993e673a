use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::context::{Deadline, Priority};
use crate::upload::Upload;

/// A handler that reads the whole body and answers how it went and where the upload stands.
async fn read_all<B>(req: Request<TimeoutBody<B>>) -> Result<Response<String>, Infallible>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let progress = req.extensions().get::<UploadProgress>().cloned();
    let outcome = match req.into_body().collect().await {
        Ok(collected) => format!("read {}", collected.to_bytes().len()),
        Err(error) => match error.downcast_ref::<BodyTimedOut>() {
            Some(timed_out) => format!("timed out after {:?}", timed_out.after()),
            None => format!("failed: {error}"),
        },
    };
    let upload = progress.map(|p| p.state());
    Ok(Response::new(format!("{outcome}; {upload:?}")))
}

async fn answer_to<B>(timeout: Duration, req: Request<B>) -> String
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = RequestBodyTimeoutLayer::new(timeout).layer(service_fn(read_all::<B>));
    service.oneshot(req).await.unwrap().into_body()
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_ends_fails_at_the_timeout() {
    let started = Instant::now();
    let (_sender, body) = Channel::<Bytes, Infallible>::new(1);
    let answer = answer_to(Duration::from_secs(3), Request::new(body)).await;
    assert!(answer.starts_with("timed out after 3s"), "{answer}");
    assert!(answer.ends_with("Some(Failed)"), "{answer}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_steady_trickle_fails_at_the_timeout_however_often_it_sends() {
    let started = Instant::now();
    let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        // One byte a second for a minute: each frame well inside any per-frame timeout.
        for _ in 0..60 {
            if sender.send_data(Bytes::from_static(b"x")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let answer = answer_to(Duration::from_secs(3), Request::new(body)).await;
    assert!(answer.starts_with("timed out after 3s"), "{answer}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_the_body_sooner_than_the_timeout() {
    let (_sender, body) = Channel::<Bytes, Infallible>::new(1);
    let mut req = Request::new(body);
    req.extensions_mut().insert(RequestContext::new(
        Some(Deadline::after(Duration::from_millis(500))),
        Priority::Normal,
    ));
    let answer = answer_to(Duration::from_secs(30), req).await;
    assert!(answer.starts_with("timed out after 500ms"), "{answer}");
}

#[tokio::test(start_paused = true)]
async fn a_body_in_time_is_read_whole_and_its_end_marked() {
    let started = Instant::now();
    let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sender
            .send_data(Bytes::from_static(b"hello"))
            .await
            .unwrap();
    });
    let answer = answer_to(Duration::from_secs(3), Request::new(body)).await;
    let finished = started + Duration::from_millis(200);
    assert_eq!(
        answer,
        format!("read 5; Some({:?})", Upload::Finished(finished))
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_body_is_passed_through_untimed() {
    let answer = answer_to(Duration::from_secs(3), Request::new(Empty::<Bytes>::new())).await;
    assert_eq!(answer, "read 0; None");
    let answer = answer_to(
        Duration::from_secs(3),
        Request::new(Full::new(Bytes::from_static(b"abc"))),
    )
    .await;
    assert!(answer.starts_with("read 3; Some(Finished"), "{answer}");
}
