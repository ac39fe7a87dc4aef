//! Request ids, the per-request log span, and failure logging, in one middleware.
//!
//! Every request gets an `x-request-id`: the client's own (up to 128 bytes), or a new one made
//! of a per-process prefix and a counter (no syscall per request, unlike random UUIDs). The id is
//! echoed in the response. At DEBUG level each request runs in a span carrying its id, method
//! and path and logs its status and duration; at the default INFO level that costs nothing.
//! Every 5xx is logged at ERROR with its id, path and the detail the error attached to the
//! response ([`super::error::FailureDetail`]), which never reaches the client. One middleware
//! instead of four tower layers: this sits on the hot path of every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http::{HeaderName, HeaderValue};
use tracing::Instrument;

use super::error::FailureDetail;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes request ids.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> RequestIds {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        RequestIds {
            prefix: format!("{:x}{:05x}-", std::process::id(), nanos & 0xfffff).into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.prefix.len() + 20);
        id.push_str(&self.prefix);
        id.push_str(itoa::Buffer::new().format(n));
        // Hex digits, a dash and decimal digits: always a valid header value.
        HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("wick"))
    }
}

/// Wraps `router` with the middleware.
pub fn layer(router: Router) -> Router {
    router.layer(middleware::from_fn_with_state(RequestIds::new(), observe))
}

async fn observe(State(ids): State<RequestIds>, request: Request, next: Next) -> Response {
    let id = match request.headers().get(&X_REQUEST_ID) {
        Some(given) if given.len() <= 128 => given.clone(),
        _ => ids.make(),
    };
    // Uri clones share their bytes: no allocation.
    let uri = request.uri().clone();
    let mut response = if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!("request", id = ?id, method = %request.method(), path = %uri.path());
        let started = Instant::now();
        let response = next.run(request).instrument(span.clone()).await;
        span.in_scope(|| {
            tracing::debug!(
                status = response.status().as_u16(),
                us = started.elapsed().as_micros() as u64,
                "answered"
            )
        });
        response
    } else {
        next.run(request).await
    };
    if response.status().is_server_error() {
        let detail = response
            .extensions()
            .get::<FailureDetail>()
            .map_or("", |d| d.0.as_str());
        tracing::error!(request_id = ?id, status = response.status().as_u16(), path = %uri.path(), %detail, "request failed");
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}
