//! The connection loop: hyper's HTTP/1.1 and HTTP/2 server with request-head deadlines, a fair
//! connection cap and a bounded graceful shutdown.
//!
//! Each connection speaks HTTP/1.1, or HTTP/2 when its first bytes are the HTTP/2 preface
//! (cleartext "prior knowledge", as gRPC clients and `curl --http2-prior-knowledge` connect).
//! The HTTP/1.1 `Upgrade: h2c` dance is not offered (hyper does not implement it, and RFC 9113
//! deprecates it): such a request is answered over HTTP/1.1, which the client accepts. HTTP/2
//! connections get the same connection cap and first-request deadline; per stream, hyper caps
//! concurrent streams and the header list size, and the same body deadline applies to every
//! request (src/http/body.rs).
//!
//! `axum::serve` builds hyper without a timer, which silently disables the header-read timeout
//! (docs/security.md F5): a client sending half a request line would hold a connection forever.
//! Here hyper has a timer (its header timeout is the keep-alive idle time: it starts whenever a
//! connection waits for a request), and [`super::connections`] adds what hyper cannot tell
//! apart: a new connection's first request head, and any head once its first byte arrived, must
//! be complete within `header_read_timeout`; at `max_connections` the connection idle longest
//! makes room for a new one. On shutdown the listener closes, idle keep-alive connections are
//! closed, in-flight requests get until `grace` to finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::connections::{Connections, Fairness, Tracked, Tracker};

pub type Listener = TcpListener;

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub keep_alive_idle: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// How long in-flight requests get after shutdown begins.
    pub grace: Duration,
}

/// HTTP/2 limits: concurrent streams per connection, the size of a request's header list, and
/// how often an idle connection is pinged (and how long the pong may take) to find dead peers.
const H2_MAX_STREAMS: u32 = 256;
const H2_MAX_HEADER_LIST: u32 = 64 << 10;
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How often overdue request heads are looked for.
const SWEEP: Duration = Duration::from_millis(200);

/// Serves `app` on `listener` until `shutdown` completes, then drains within `options.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Connections::new(Fairness {
        max_connections: options.max_connections,
        max_per_peer: options.max_connections_per_peer,
        header_read_timeout: options.header_read_timeout,
    });
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(&options);
    let sweeper = tokio::spawn({
        let connections = Arc::clone(&connections);
        async move {
            let mut tick = tokio::time::interval(SWEEP);
            loop {
                tick.tick().await;
                connections.sweep();
            }
        }
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let tracker = match connections.admit(peer.ip()) {
                    Ok(tracker) => tracker,
                    Err(why) => {
                        tracing::warn!(limit = options.max_connections, ?why, %peer, "connection refused: every slot serves a request");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(tracked_service(app.clone(), Arc::clone(&tracker)));
                let io = TokioIo::new(Tracked::new(stream, Arc::clone(&tracker)));
                let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
                let connections = Arc::clone(&connections);
                tokio::spawn(async move {
                    tokio::select! {
                        // Errors here are client-side: resets, header timeouts, malformed requests.
                        result = connection => if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        },
                        // Evicted, or its request head was overdue: dropping closes the socket.
                        () = tracker.killed() => {}
                    }
                    connections.release(&tracker);
                });
            }
            () = &mut shutdown => break,
        }
    }
    sweeper.abort();
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(grace_ms = options.grace.as_millis() as u64, "connections still open after the shutdown grace period; closing them");
        }
    }
}

/// HTTP/1.1 (header timeout = keep-alive idle, at most 128 headers) and HTTP/2 (prior
/// knowledge) with their limits.
fn connection_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.keep_alive_idle)
        .keep_alive(true)
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// The router behind a connection, telling the connection's tracker when a request starts and
/// when its response has been sent (a connection is never evicted in between).
fn tracked_service(
    app: Router,
    tracker: Arc<Tracker>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let tracker = Arc::clone(&tracker);
        if request.version() == http::Version::HTTP_2 {
            tracker.multiplexed();
        }
        tracker.request_started();
        async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|body| {
                Body::new(Finishing {
                    inner: body,
                    tracker: Some(tracker),
                })
            }))
        }
    })
}

/// A response body that marks its request finished once it is sent (or dropped).
struct Finishing {
    inner: Body,
    tracker: Option<Arc<Tracker>>,
}

impl Finishing {
    fn finish(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.request_finished();
        }
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
