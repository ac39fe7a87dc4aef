//! The body deadline for gRPC requests: a request message must arrive whole within
//! `body_deadline_ms`, as an HTTP body must (src/http/body.rs). tonic reads the message itself,
//! so the deadline wraps the body it reads: past it, the body fails, tonic answers the RPC with
//! an error and the stream is released. Without it a client trickling one byte at a time would
//! hold a stream (and the buffer tonic reserved for the declared length) for ever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::Frame;

/// The error a late body fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request message was not received within {0:?} (body_deadline_ms)")]
pub struct Late(Duration);

/// A body that fails once `deadline` passes before its end.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    done: bool,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match poll {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done = true;
                    Poll::Ready(Some(Err(axum::Error::new(Late(self.limit)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `request` with its body bound by `limit`.
pub fn bound(request: Request, limit: Duration) -> Request {
    request.map(|inner| {
        Body::new(Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
            done: false,
        })
    })
}
