use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::classify::outcome_of_error;
use crate::outcome::Outcome;

/// A body that yields its chunks, then fails if told to.
struct Chunks {
    chunks: VecDeque<&'static str>,
    fail_at_end: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))),
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Poll::Ready(Some(Err(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                ))))
            }
            None => Poll::Ready(None),
        }
    }
}

async fn read(max: usize, chunks: &[&'static str], fail_at_end: bool) -> Result<Bytes, BoxError> {
    let chunks: VecDeque<_> = chunks.iter().copied().collect();
    let server = service_fn(move |_req: Request<()>| {
        let body = Chunks {
            chunks: chunks.clone(),
            fail_at_end,
        };
        async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
    });
    let response = ReadBodyLayer::new(max)
        .layer(server)
        .oneshot(Request::new(()))
        .await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

#[tokio::test]
async fn a_whole_body_is_read_before_the_call_ends() {
    assert_eq!(
        read(64, &["ab", "cd", "ef"], false).await.unwrap(),
        "abcdef"
    );
}

#[tokio::test]
async fn a_body_cut_short_fails_the_attempt_as_a_failure_of_the_destination() {
    let err = read(64, &["ab", "cd"], true).await.unwrap_err();
    let failed = err.downcast_ref::<ResponseBodyFailed>().expect("typed");
    assert_eq!(failed.bytes_read(), 4);
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Failure);
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_not_a_failure() {
    let err = read(5, &["abc", "def"], false).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ResponseBodyTooLarge>().unwrap().limit(),
        5
    );
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Refused);
    // Exactly at the cap is fine.
    assert_eq!(read(6, &["abc", "def"], false).await.unwrap(), "abcdef");
}
