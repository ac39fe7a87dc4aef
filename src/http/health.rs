//! Health, readiness, server and model metadata, and `/metrics`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use http::{header, HeaderValue, StatusCode};

use crate::protocol::metadata::{model_metadata, server_metadata};

use super::error::ApiError;
use super::AppState;

pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// 200 when every model serves a version and the server is not draining (Triton's strict
/// readiness); otherwise 503, which Kubernetes and tritonclient both read as "not ready".
pub async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub async fn server(State(_): State<AppState>) -> Json<crate::protocol::metadata::ServerMetadata> {
    Json(server_metadata())
}

pub async fn model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    metadata(&state, &model, None)
}

pub async fn model_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata(&state, &model, Some(&version))
}

fn metadata(state: &AppState, model: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let slot = state.slot(model)?;
    let serving = slot.serving();
    let versions: Vec<u64> = serving.versions.keys().rev().copied().collect();
    let described = match version {
        Some(v) => Some(state.pick_version(&slot, Some(v))?),
        None => serving.newest().cloned(),
    };
    // Without a ready version the configured architecture still tells the signature.
    let (signature, parameters) = match described {
        Some(v) => (v.signature.clone(), v.model.parameters()),
        None => (
            slot.config().architecture.signature().clone(),
            Default::default(),
        ),
    };
    Ok(Json(model_metadata(model, &versions, &signature, parameters)).into_response())
}

pub async fn model_ready(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    let slot = state.slot(&model)?;
    Ok(if slot.is_ready() && !state.is_draining() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let slot = state.slot(&model)?;
    Ok(match state.pick_version(&slot, Some(&version)) {
        Ok(_) if !state.is_draining() => StatusCode::OK,
        Ok(_) | Err(ApiError::VersionNotReady { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        Err(e) => return Err(e),
    })
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
