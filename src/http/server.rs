//! The connection loop: hyper's HTTP/1 server with a header-read timeout, a connection cap and a
//! bounded graceful shutdown.
//!
//! `axum::serve` builds hyper without a timer, which silently disables the header-read timeout
//! (docs/security.md F5): a client sending half a request line would hold a connection forever. Here
//! the timer is set, so a connection that does not deliver a complete request head within
//! `header_read_timeout` (also the idle keep-alive time) is closed. Connections beyond
//! `max_connections` are closed at once. On shutdown the listener closes, idle keep-alive
//! connections are closed, in-flight requests get until `grace` to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub type Listener = TcpListener;

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests get after shutdown begins.
    pub grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains within `options.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        .max_headers(128);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::warn!(limit = options.max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    // Errors here are client-side: resets, header timeouts, malformed requests.
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(grace_ms = options.grace.as_millis() as u64, "connections still open after the shutdown grace period; closing them");
        }
    }
}
