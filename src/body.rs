//! Request bodies that can be sent more than once, for retries and hedged attempts.
//!
//! [`ReplayBody::replayable`] wraps a body so that every attempt reads the same bytes: the first
//! reader pulls frames from the original body and keeps them in a shared buffer; later readers,
//! even ones reading at the same time (hedged attempts), read the buffer and wait for the leader
//! at its end. Bodies already in memory (`Full<Bytes>`, `Bytes`, `String`) are one frame, kept by
//! reference count: replaying them copies nothing.
//!
//! The buffer has a cap (64 KiB by default, as linkerd's). A body that outgrows it stops being
//! buffered: the attempt reading at the front carries on streaming, [`Replay::replay`] gives no
//! further copies, so the request simply gets no further attempts. A hedged copy that had fallen
//! behind fails with [`ReplayError::Overflowed`]: it can no longer be sent whole.
//!
//! [`ReplayBody::direct`] wraps a body without any of this, for requests that get one attempt.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_lifeline::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (first, replay) = ReplayBody::replayable(Full::new(Bytes::from("hello")), 64 * 1024);
//! let second = replay.replay().unwrap();
//! assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;

/// The default cap on a buffered request body: 64 KiB, as linkerd's.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// Why a replayed body could not be read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReplayError {
    /// The body outgrew the replay buffer while this copy was behind the front; its bytes are gone.
    Overflowed {
        /// The cap that was passed.
        cap: usize,
    },
    /// The original body failed; every copy sees the same failure.
    Source(Arc<BoxError>),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Overflowed { cap } => {
                write!(
                    f,
                    "request body outgrew the {cap}-byte replay buffer; this attempt cannot send it whole"
                )
            }
            ReplayError::Source(err) => write!(f, "request body failed: {err}"),
        }
    }
}

impl std::error::Error for ReplayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::Overflowed { .. } => None,
            ReplayError::Source(err) => Some(err.as_ref().as_ref()),
        }
    }
}

#[derive(Clone)]
enum Buffered {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Buffered {
    fn to_frame(&self) -> Frame<Bytes> {
        match self {
            Buffered::Data(data) => Frame::data(data.clone()),
            Buffered::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

struct Shared<B> {
    /// The original body; `None` once it has ended or failed.
    source: Option<Pin<Box<B>>>,
    /// Frames read so far, while under the cap; emptied when the cap is passed.
    frames: Vec<Buffered>,
    /// How many frames have been read from the source in all.
    produced: usize,
    buffered_bytes: usize,
    cap: usize,
    overflowed: bool,
    failed: Option<Arc<BoxError>>,
    /// Readers waiting at the front for the source's next frame.
    waiters: Arc<WakeAll>,
    /// The waker the source is polled with: it wakes every waiting reader, not only the one that
    /// polled last. Otherwise a hedge could stall behind an attempt whose connection is
    /// back-pressured (hyper does not poll a body it cannot send), since most bodies keep only the
    /// last waker they were given.
    fan_out: Waker,
    hint: SizeHint,
}

impl<B> Shared<B> {
    fn wake_all(&mut self) {
        self.waiters.wake_by_ref();
    }
}

/// Wakes every registered reader at once.
#[derive(Default)]
struct WakeAll(Mutex<Vec<Waker>>);

impl WakeAll {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in wakers {
            waker.wake();
        }
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic while holding the lock leaves plain data behind, still consistent: carry on.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pin_project! {
    /// A request body that can be read by several attempts. See the [module docs](self).
    pub struct ReplayBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Direct { #[pin] body: B },
        // A body that had ended before the first attempt (most GETs): every copy is empty, and
        // nothing needs buffering or sharing.
        Empty { hint: SizeHint },
        Shared { reader: Reader<B> },
    }
}

/// A copy's place in the shared buffer.
struct Reader<B> {
    shared: Arc<Mutex<Shared<B>>>,
    position: usize,
}

impl<B> Drop for Reader<B> {
    fn drop(&mut self) {
        // The source may have registered only this reader's waker: hand the front to another.
        lock(&self.shared).wake_all();
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Direct { .. } => f.write_str("ReplayBody::Direct"),
            Inner::Empty { .. } => f.write_str("ReplayBody::Empty"),
            Inner::Shared { reader } => f
                .debug_struct("ReplayBody::Shared")
                .field("position", &reader.position)
                .finish(),
        }
    }
}

/// Makes further copies of a [`ReplayBody`].
pub struct Replay<B> {
    source: Source<B>,
}

enum Source<B> {
    /// The body had ended before it was read: copies are empty bodies with its size hint.
    Empty(SizeHint),
    Shared(Arc<Mutex<Shared<B>>>),
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay {
            source: match &self.source {
                Source::Empty(hint) => Source::Empty(*hint),
                Source::Shared(shared) => Source::Shared(shared.clone()),
            },
        }
    }
}

impl<B> Replay<B> {
    /// A new copy reading from the start, or `None` once the body has outgrown the cap.
    pub fn replay(&self) -> Option<ReplayBody<B>> {
        let inner = match &self.source {
            Source::Empty(hint) => Inner::Empty { hint: *hint },
            Source::Shared(shared) if lock(shared).overflowed => return None,
            Source::Shared(shared) => Inner::Shared {
                reader: Reader {
                    shared: shared.clone(),
                    position: 0,
                },
            },
        };
        Some(ReplayBody { inner })
    }

    /// Whether further copies can still be made.
    pub fn is_replayable(&self) -> bool {
        match &self.source {
            Source::Empty(_) => true,
            Source::Shared(shared) => !lock(shared).overflowed,
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for a single attempt: no buffer, no lock, nothing shared.
    pub fn direct(body: B) -> Self {
        ReplayBody {
            inner: Inner::Direct { body },
        }
    }

    /// Wraps `body` so it can be read again, buffering up to `cap` bytes; returns the first copy
    /// and the handle that makes more.
    pub fn replayable(body: B, cap: usize) -> (Self, Replay<B>) {
        let hint = body.size_hint();
        if body.is_end_stream() {
            // Nothing to read, so nothing to buffer: no lock and no allocation for the copies.
            let first = ReplayBody {
                inner: Inner::Empty { hint },
            };
            return (
                first,
                Replay {
                    source: Source::Empty(hint),
                },
            );
        }
        // A body known to be larger than the cap will not be replayed; say so at once.
        let overflowed = hint.lower() > cap as u64;
        let waiters = Arc::new(WakeAll::default());
        let shared = Arc::new(Mutex::new(Shared {
            source: Some(Box::pin(body)),
            frames: Vec::new(),
            produced: 0,
            buffered_bytes: 0,
            cap,
            overflowed,
            failed: None,
            fan_out: Waker::from(waiters.clone()),
            waiters,
            hint,
        }));
        let first = ReplayBody {
            inner: Inner::Shared {
                reader: Reader {
                    shared: shared.clone(),
                    position: 0,
                },
            },
        };
        (
            first,
            Replay {
                source: Source::Shared(shared),
            },
        )
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Direct { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            InnerProj::Empty { .. } => Poll::Ready(None),
            InnerProj::Shared { reader } => poll_shared(&reader.shared, &mut reader.position, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Direct { body } => body.is_end_stream(),
            Inner::Empty { .. } => true,
            Inner::Shared { reader } => {
                let shared = lock(&reader.shared);
                shared.source.is_none()
                    && shared.failed.is_none()
                    && reader.position == shared.produced
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct { body } => body.size_hint(),
            Inner::Empty { hint } => *hint,
            // Unread, a copy has the original's size: hyper sends it as Content-Length.
            Inner::Shared { reader } if reader.position == 0 => lock(&reader.shared).hint,
            Inner::Shared { .. } => SizeHint::default(),
        }
    }
}

fn poll_shared<B>(
    shared: &Mutex<Shared<B>>,
    position: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut state = lock(shared);
    if let Some(frame) = state.frames.get(*position) {
        let frame = frame.to_frame();
        *position += 1;
        return Poll::Ready(Some(Ok(frame)));
    }
    if *position < state.produced {
        // Behind the front, and the frames in between were dropped at the cap.
        let cap = state.cap;
        return Poll::Ready(Some(Err(Box::new(ReplayError::Overflowed { cap }))));
    }
    if let Some(err) = &state.failed {
        return Poll::Ready(Some(Err(Box::new(ReplayError::Source(err.clone())))));
    }
    // Registered before polling, so that a wake-up during the poll is not missed.
    state.waiters.register(cx.waker());
    let fan_out = state.fan_out.clone();
    let Some(source) = state.source.as_mut() else {
        return Poll::Ready(None);
    };
    match source
        .as_mut()
        .poll_frame(&mut Context::from_waker(&fan_out))
    {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Some(Ok(frame))) => {
            let frame = match frame.into_data() {
                Ok(mut data) => Buffered::Data(data.copy_to_bytes(data.remaining())),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Buffered::Trailers(trailers),
                    // A frame kind this crate does not know: skip it, as hyper would.
                    Err(_) => return Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
                },
            };
            state.produced += 1;
            *position += 1;
            let size = match &frame {
                Buffered::Data(data) => data.len(),
                Buffered::Trailers(_) => 0,
            };
            if !state.overflowed && state.buffered_bytes + size <= state.cap {
                state.buffered_bytes += size;
                state.frames.push(frame.clone());
            } else if !state.overflowed {
                tracing::debug!(
                    cap = state.cap,
                    "request body outgrew the replay buffer: no further attempts"
                );
                state.overflowed = true;
                state.frames = Vec::new();
            }
            state.wake_all();
            Poll::Ready(Some(Ok(frame.to_frame())))
        }
        Poll::Ready(Some(Err(err))) => {
            let err = Arc::new(err.into());
            // Not counted as a frame: every copy that reaches this point sees the failure.
            state.failed = Some(err.clone());
            state.source = None;
            state.wake_all();
            Poll::Ready(Some(Err(Box::new(ReplayError::Source(err)))))
        }
        Poll::Ready(None) => {
            state.source = None;
            state.wake_all();
            Poll::Ready(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;

    /// A streaming body over a list of frames that answers `Pending` before every frame (and
    /// wakes itself), so that readers really do meet at the front and wait for each other.
    struct Frames<E> {
        frames: std::collections::VecDeque<Result<Frame<Bytes>, E>>,
        pending_next: bool,
    }

    impl<E: Unpin> Body for Frames<E> {
        type Data = Bytes;
        type Error = E;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
            if std::mem::replace(&mut self.pending_next, false) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending_next = true;
            Poll::Ready(self.frames.pop_front())
        }
    }

    fn frames<E>(frames: Vec<Result<Frame<Bytes>, E>>) -> Frames<E> {
        Frames {
            frames: frames.into(),
            pending_next: true,
        }
    }

    fn chunks(parts: &[&'static str]) -> Frames<Infallible> {
        frames(
            parts
                .iter()
                .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect(),
        )
    }

    #[tokio::test]
    async fn every_copy_reads_the_whole_body() {
        let (first, replay) = ReplayBody::replayable(chunks(&["a", "bc", "def"]), 1024);
        let second = replay.replay().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdef");
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
        let third = replay.replay().unwrap();
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn an_ended_body_gives_empty_copies_with_its_size_hint() {
        let (first, replay) = ReplayBody::replayable(http_body_util::Full::new(Bytes::new()), 8);
        assert!(
            matches!(first.inner, Inner::Empty { .. }),
            "nothing is shared"
        );
        assert!(replay.is_replayable());
        for copy in [first, replay.replay().unwrap(), replay.replay().unwrap()] {
            assert!(copy.is_end_stream());
            assert_eq!(copy.size_hint().exact(), Some(0));
            assert!(copy.collect().await.unwrap().to_bytes().is_empty());
        }
    }

    #[tokio::test]
    async fn concurrent_copies_read_the_same_bytes() {
        let (first, replay) = ReplayBody::replayable(chunks(&["x"; 50]), 1024);
        let second = replay.replay().unwrap();
        let (a, b) = tokio::join!(first.collect(), second.collect());
        assert_eq!(a.unwrap().to_bytes(), "x".repeat(50));
        assert_eq!(b.unwrap().to_bytes(), "x".repeat(50));
    }

    #[tokio::test]
    async fn past_the_cap_the_front_reader_goes_on_and_no_copies_are_made() {
        let (first, replay) = ReplayBody::replayable(chunks(&["12345", "67890", "abcde"]), 8);
        let lagging = replay.replay().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "1234567890abcde");
        assert!(!replay.is_replayable());
        assert!(replay.replay().is_none());
        let err = lagging.collect().await.unwrap_err();
        assert!(err.to_string().contains("8-byte replay buffer"), "{err}");
    }

    #[tokio::test]
    async fn a_body_known_to_be_too_large_is_not_replayable_from_the_start() {
        let (first, replay) = ReplayBody::replayable(Full::new(Bytes::from(vec![0u8; 100])), 10);
        assert!(replay.replay().is_none());
        assert_eq!(first.collect().await.unwrap().to_bytes().len(), 100);
    }

    #[tokio::test]
    async fn an_unread_copy_keeps_the_exact_size_for_content_length() {
        let (first, replay) = ReplayBody::replayable(Full::new(Bytes::from("hello")), 1024);
        assert_eq!(first.size_hint().exact(), Some(5));
        let _ = first.collect().await.unwrap();
        assert_eq!(replay.replay().unwrap().size_hint().exact(), Some(5));
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let list: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let (first, replay) = ReplayBody::replayable(frames(list), 1024);
        let second = replay.replay().unwrap();
        for copy in [first, second] {
            let collected = copy.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), "body");
        }
    }

    #[tokio::test]
    async fn a_failing_source_fails_every_copy() {
        let list: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ok"))),
            Err(std::io::Error::other("disk gone")),
        ];
        let (first, replay) = ReplayBody::replayable(frames(list), 1024);
        let second = replay.replay().unwrap();
        assert!(first
            .collect()
            .await
            .unwrap_err()
            .to_string()
            .contains("disk gone"));
        assert!(second
            .collect()
            .await
            .unwrap_err()
            .to_string()
            .contains("disk gone"));
    }

    #[tokio::test]
    async fn direct_bodies_pass_through() {
        let body = ReplayBody::direct(Full::new(Bytes::from("once")));
        assert_eq!(body.size_hint().exact(), Some(4));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "once");
    }

    /// A source that, like most bodies, keeps only the last waker it was polled with.
    #[derive(Clone, Default)]
    struct Manual(Arc<Mutex<ManualState>>);

    #[derive(Default)]
    struct ManualState {
        ready: Option<Bytes>,
        waker: Option<Waker>,
    }

    impl Body for Manual {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let mut state = self.0.lock().unwrap();
            if let Some(data) = state.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_frame_wakes_every_waiting_copy_not_only_the_last_to_poll() {
        let source = Manual::default();
        let (first, replay) = ReplayBody::replayable(source.clone(), 1024);
        let mut first = Box::pin(first);
        let mut hedge = Box::pin(replay.replay().unwrap());
        let (hedge_flag, first_flag) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
        let (hedge_waker, first_waker) = (
            Waker::from(hedge_flag.clone()),
            Waker::from(first_flag.clone()),
        );
        // The hedge waits first; then the first copy polls last (and is then back-pressured:
        // never polled again).
        assert!(hedge
            .as_mut()
            .poll_frame(&mut Context::from_waker(&hedge_waker))
            .is_pending());
        assert!(first
            .as_mut()
            .poll_frame(&mut Context::from_waker(&first_waker))
            .is_pending());
        // Data arrives: the source wakes the one waker it kept.
        let waker = {
            let mut state = source.0.lock().unwrap();
            state.ready = Some(Bytes::from_static(b"data"));
            state.waker.take().unwrap()
        };
        waker.wake();
        assert!(
            hedge_flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "the hedge was woken"
        );
        match hedge
            .as_mut()
            .poll_frame(&mut Context::from_waker(&hedge_waker))
        {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "data"),
            other => panic!(
                "the hedge should read the frame, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
