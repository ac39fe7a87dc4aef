//! The HTTP front end: axum routes, tower layers, the connection loop, and the single
//! error → status mapping ([`error`]).
//!
//! Handlers are thin: they resolve the model and version, read the body within its limits,
//! decode it ([`crate::protocol`]), submit it to the model's engine and encode the answer. No
//! candle, no locks held across awaits, no environment lookups here. Connections are served by
//! hyper directly (not `axum::serve`) because only that way do HTTP/1 header-read timeouts work
//! (security.md F5), and the number of open connections is capped.

pub mod admin;
pub mod body;
pub mod error;
mod health;
mod infer;
mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::parse_version;
use crate::engine::LoadedVersion;
use crate::protocol::DecodeLimits;
use crate::repository::{ModelSlot, Repository, VersionState};
use crate::telemetry::Metrics;

pub use body::BodyLimits;
pub use error::ApiError;
pub use server::{serve, Listener, ServeOptions};

/// Limits applied while handling a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body: BodyLimits,
    pub decode: DecodeLimits,
}

/// Shared state of every handler: `Arc` handles only.
#[derive(Clone)]
pub struct AppState {
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Set when shutdown begins: readiness turns 503 at once.
    pub draining: Arc<AtomicBool>,
    /// Readiness requires every model to serve a version (otherwise: the process is up).
    pub strict_readiness: bool,
}

impl AppState {
    pub fn new(repository: Arc<Repository>, limits: Limits, strict_readiness: bool) -> AppState {
        AppState {
            metrics: Arc::clone(repository.metrics()),
            repository,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
            strict_readiness,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && (!self.strict_readiness || self.repository.is_ready())
    }

    /// Looks a model up by name; names outside the grammar are refused without a lookup.
    pub fn slot(&self, model: &str) -> Result<Arc<ModelSlot>, ApiError> {
        crate::config::validate_model_name(model).map_err(ApiError::InvalidModelName)?;
        self.repository
            .get(model)
            .ok_or_else(|| ApiError::UnknownModel(model.to_string()))
    }

    /// The version a request goes to: the one named, or the newest ready one.
    pub fn pick_version(
        &self,
        slot: &ModelSlot,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, ApiError> {
        let serving = slot.serving();
        match version {
            None => serving
                .newest()
                .cloned()
                .ok_or_else(|| ApiError::ModelNotReady(slot.name.clone())),
            Some(text) => {
                let v = parse_version(text)
                    .ok_or_else(|| ApiError::InvalidVersion(text.to_string()))?;
                if let Some(loaded) = serving.versions.get(&v) {
                    return Ok(Arc::clone(loaded));
                }
                match slot.version_state(v) {
                    Some(state) if state != VersionState::Ready => Err(ApiError::VersionNotReady {
                        model: slot.name.clone(),
                        version: v,
                        state,
                    }),
                    _ => Err(ApiError::UnknownVersion {
                        model: slot.name.clone(),
                        version: v,
                    }),
                }
            }
        }
    }
}

/// The inference listener's routes: KServe v2 health, metadata and inference, and `/metrics`.
/// The repository API is never served here (see [`admin`]).
pub fn router(state: AppState) -> Router {
    with_request_ids(routes(state))
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2", get(health::server))
        .route("/v2/models/{model}", get(health::model))
        .route("/v2/models/{model}/ready", get(health::model_ready))
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(health::model_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(health::model_version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer_version),
        )
        .route("/metrics", get(health::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Compresses only when the client asks (Accept-Encoding), as tritonclient can.
        .layer(CompressionLayer::new())
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Every request gets an `x-request-id` (the client's own, or a new one), carried by the
/// request's log span and echoed in the response.
pub fn with_request_ids(router: Router) -> Router {
    router
        .layer(axum::middleware::from_fn(log_failures))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG))
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
}

/// The per-request span (DEBUG: at the default INFO level it costs nothing; `RUST_LOG=debug`
/// shows every request with its id).
fn request_span(request: &http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!("request", id, method = %request.method(), path = %request.uri().path())
}

/// Logs every 5xx with its request id and the detail the error attached.
async fn log_failures(
    request: http::Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = request.headers().get("x-request-id").cloned();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if response.status().is_server_error() {
        let detail = response
            .extensions()
            .get::<error::FailureDetail>()
            .map_or("", |d| d.0.as_str());
        let id = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::error!(request_id = id, status = response.status().as_u16(), %path, %detail, "request failed");
    }
    response
}

/// Request ids: a per-process prefix and a counter (no syscall per request, unlike UUIDs).
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        RequestIds {
            prefix: format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff).into(),
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        http::HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

async fn no_route(uri: http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A panic in a handler becomes a JSON 500; the connection and the process survive.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let mut response = error::error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    response
        .extensions_mut()
        .insert(error::FailureDetail(format!("handler panicked: {detail}")));
    response
}
