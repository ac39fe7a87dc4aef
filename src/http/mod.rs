//! The HTTP front end: axum routes, tower layers, the connection loop, and the single
//! error → status mapping ([`error`]).
//!
//! Handlers are thin: they resolve the model and version, read the body within its limits,
//! decode it ([`crate::protocol`]), submit it to the model's engine and encode the answer. No
//! candle, no locks held across awaits, no environment lookups here. Connections are served by
//! hyper directly (not `axum::serve`) because only that way do HTTP/1 header-read timeouts work
//! (docs/security.md F5), and the number of open connections is capped.

pub mod admin;
pub mod body;
pub mod connections;
pub mod error;
mod health;
pub(crate) mod infer;
pub(crate) mod observe;
mod openai;
pub mod pool;
mod rollout;
mod server;
mod tei;
mod text;
pub(crate) mod triton;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;

use crate::engine::LoadedVersion;
use crate::model::naming::{parse_version, validate_model_name};
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
    /// `max_inflight_body_bytes`: request-body bytes received or decoded at once, server-wide.
    pub max_inflight_body_bytes: usize,
    /// Threads of the slow-work pool.
    pub slow_threads: usize,
}

/// Shared state of every handler: `Arc` handles only.
#[derive(Clone)]
pub struct AppState {
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Request-body bytes being received or decoded, bounded server-wide.
    pub inflight: body::Inflight,
    /// Where slow work (big decodes, decompression, tokenising) runs.
    pub slow: pool::SlowPool,
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
            inflight: body::Inflight::new(limits.max_inflight_body_bytes),
            slow: pool::SlowPool::new(limits.slow_threads),
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
        validate_model_name(model).map_err(ApiError::InvalidModelName)?;
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
        self.route_version(slot, version, None)
    }

    /// Counts a finished request in the model's metrics and, during a canary rollout, in the
    /// canary's judgement of the version that answered. Every inference route (KServe v2,
    /// OpenAI, TEI) ends here, so a candidate is judged on all of its traffic.
    pub fn finish_request(
        &self,
        slot: &ModelSlot,
        version: Option<u64>,
        outcome: &'static str,
        took: std::time::Duration,
    ) {
        slot.metrics.request(version, outcome, took);
        // A canary judges its versions by their own failures: server errors count against the
        // version that answered; client mistakes and overload say nothing about it.
        if let (Some(canary), Some(v), "success" | "error") =
            (&slot.serving().canary, version, outcome)
        {
            canary.record(v, outcome == "success", took);
        }
    }

    /// The version an inference request goes to: the one named; else, during a canary
    /// rollout, the candidate or the stable version by `request_id` (the `x-request-id`
    /// header), so a retry with the same id sticks; else the newest ready one.
    pub fn route_version(
        &self,
        slot: &ModelSlot,
        version: Option<&str>,
        request_id: Option<&[u8]>,
    ) -> Result<Arc<LoadedVersion>, ApiError> {
        let serving = slot.serving();
        match version {
            None => serving
                .route(request_id)
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

/// The header whose value pins a request to a canary's candidate or stable version.
pub const REQUEST_ID: &str = "x-request-id";

/// The request's `x-request-id`, the key a canary routes by.
pub fn request_id(headers: &http::HeaderMap) -> Option<&[u8]> {
    headers.get(REQUEST_ID).map(http::HeaderValue::as_bytes)
}

/// The inference listener's routes: KServe v2 health, metadata and inference, and `/metrics`.
/// The repository API is never served here (see [`admin`]).
pub fn router(state: AppState) -> Router {
    observe::layer(routes(state))
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2", get(health::server))
        .route("/v2/models/{model}", get(health::model))
        .route("/v2/models/{model}/ready", get(health::model_ready))
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route("/v2/models/{model}/config", get(triton::config))
        .route("/v2/models/stats", get(triton::stats_all))
        .route("/v2/models/{model}/stats", get(triton::stats))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(triton::config_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(triton::stats_version),
        )
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
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/embed", post(tei::embed))
        .route("/tokenize", post(tei::tokenize))
        .route("/predict", post(tei::predict))
        .route("/rerank", post(tei::rerank))
        .route("/tei/{model}/embed", post(tei::embed_model))
        .route("/tei/{model}/tokenize", post(tei::tokenize_model))
        .route("/tei/{model}/predict", post(tei::predict_model))
        .route("/tei/{model}/rerank", post(tei::rerank_model))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

async fn no_route(uri: http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A panic in a handler becomes a JSON 500; the connection and the process survive.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let detail = crate::telemetry::panic_message(panic.as_ref());
    let mut response = error::error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    response
        .extensions_mut()
        .insert(error::FailureDetail(format!("handler panicked: {detail}")));
    response
}
