//! Triton's model configuration and statistics extensions over HTTP:
//! `GET /v2/models/{m}[/versions/{v}]/config` and `GET /v2/models[/{m}[/versions/{v}]]/stats`.

use axum::extract::{Path, State};
use axum::response::Json;

use crate::protocol::triton::{
    model_config, model_statistics, ConfigParts, ModelConfig, StatisticsResponse,
};
use crate::repository::ModelSlot;

use super::error::ApiError;
use super::AppState;

pub async fn config(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelConfig>, ApiError> {
    describe(&state, &model, None).map(Json)
}

pub async fn config_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelConfig>, ApiError> {
    describe(&state, &model, Some(&version)).map(Json)
}

/// The configuration of a model as served: the named version's signature and resolved settings
/// (else the newest ready version's; else the configured architecture's signature). gRPC's
/// ModelConfig answers the same.
pub(crate) fn describe(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<ModelConfig, ApiError> {
    let slot = state.slot(model)?;
    let config = slot.config();
    let described = match version {
        Some(v) => Some(state.pick_version(&slot, Some(v))?),
        None => slot.serving().newest().cloned(),
    };
    let (signature, resolved) = match &described {
        Some(v) => (v.signature.clone(), v.model.parameters()),
        None => (config.architecture.signature().clone(), Default::default()),
    };
    Ok(model_config(&ConfigParts {
        name: model,
        architecture: config.architecture.name(),
        signature: &signature,
        version_policy: &config.version_policy,
        batching: &slot.engine.config(),
        resolved: &resolved,
    }))
}

pub async fn stats_all(State(state): State<AppState>) -> Json<StatisticsResponse> {
    let mut model_stats = Vec::new();
    for slot in state.repository.slots() {
        model_stats.extend(version_stats(&slot, None));
    }
    Json(StatisticsResponse { model_stats })
}

pub async fn stats(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<StatisticsResponse>, ApiError> {
    let slot = state.slot(&model)?;
    Ok(Json(StatisticsResponse {
        model_stats: version_stats(&slot, None),
    }))
}

pub async fn stats_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<StatisticsResponse>, ApiError> {
    let slot = state.slot(&model)?;
    let version = state.pick_version(&slot, Some(&version))?;
    Ok(Json(StatisticsResponse {
        model_stats: version_stats(&slot, Some(version.version)),
    }))
}

/// The statistics of one served version, or of every served version, highest first (gRPC's
/// ModelStatistics reads the same).
pub(crate) fn version_stats(
    slot: &ModelSlot,
    only: Option<u64>,
) -> Vec<crate::protocol::triton::ModelStatistics> {
    let versions: Vec<u64> = match only {
        Some(v) => vec![v],
        None => slot.serving().versions.keys().rev().copied().collect(),
    };
    versions
        .into_iter()
        .map(|v| model_statistics(&slot.name, v, slot.metrics.stats_snapshot(v)))
        .collect()
}
