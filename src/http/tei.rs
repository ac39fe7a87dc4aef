//! TEI-compatible `POST /embed`, `/tokenize`, `/predict` and `/rerank` (Hugging Face
//! text-embeddings-inference's routes and shapes, [`crate::protocol::tei`]). TEI serves one
//! model; wick serves several, so the routes at the root take the one text model that fits
//! (an embedding model for `/embed`, a classification model for `/predict` and `/rerank`), and
//! `/tei/{model}/...` names it. Inference goes through the engine like `/v2` ([`super::text`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use http::HeaderMap;

use crate::engine::LoadedVersion;
use crate::protocol::tei::{
    normalise_rows, predict_rows, predictions, ranks, EmbedRequest, PredictRequest, RerankRequest,
    Sequence, SimpleToken, TokenizeRequest,
};
use crate::repository::ModelSlot;

use super::error::{ApiError, TeiError};
use super::text::{infer_rows, output, read_json, text_version, Arrival, Rows};
use super::{request_id, AppState};

const EMBEDDING: &str = "embedding";
const CLASSIFICATION: &str = "classification";

/// The model a TEI request goes to: the named one (which must do `task`), else the only served
/// text model doing `task` (`None`: any text model).
fn choose(
    state: &AppState,
    model: Option<&str>,
    task: Option<&str>,
    route: &str,
    headers: &HeaderMap,
) -> Result<(Arc<ModelSlot>, Arc<LoadedVersion>), ApiError> {
    let id = request_id(headers);
    if let Some(model) = model {
        return match task {
            Some(task) => text_version(state, model, task, headers),
            None => {
                let slot = state.slot(model)?;
                let version = state.route_version(&slot, None, id)?;
                Ok((slot, version))
            }
        };
    }
    let fits = |version: &LoadedVersion| {
        let params = version.model.parameters();
        let got = params.get("task").and_then(|t| t.as_str());
        got.is_some() && (task.is_none() || got == task)
    };
    let mut found: Vec<(Arc<ModelSlot>, Arc<LoadedVersion>)> = state
        .repository
        .slots()
        .into_iter()
        .filter_map(|slot| {
            // Routed like any request naming no version: a shadow's stable version, a
            // canary's split by the request id.
            let version = slot.serving().route(id).cloned()?;
            fits(&version).then_some((slot, version))
        })
        .collect();
    let what = task.map_or("text".to_string(), |t| format!("text {t}"));
    match found.len() {
        1 => found
            .pop()
            .ok_or_else(|| ApiError::Internal("vanished".into())),
        0 => Err(ApiError::Unsupported(format!("no {what} model is ready"))),
        _ => {
            let names: Vec<&str> = found.iter().map(|(s, _)| s.name.as_str()).collect();
            Err(ApiError::Unsupported(format!(
                "several {what} models are served ({}): name one with /tei/{{model}}{route}",
                names.join(", ")
            )))
        }
    }
}

pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    embed_with(state, None, headers, body).await
}

pub async fn embed_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    embed_with(state, Some(model), headers, body).await
}

async fn embed_with(
    state: AppState,
    model: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    let started = Instant::now();
    let request: EmbedRequest = read_json(&state, &headers, body).await?;
    let (slot, version) = choose(
        &state,
        model.as_deref(),
        Some(EMBEDDING),
        "/embed",
        &headers,
    )?;
    let rows = Rows::Texts(request.inputs.into_vec());
    let outputs = infer_rows(
        &state,
        &slot,
        &version,
        rows,
        Arrival {
            started,
            headers: &headers,
            route: "/embed",
        },
    )
    .await?;
    let (values, rows) = output(&version, &outputs, "embedding")?;
    let width = values.len() / rows.max(1);
    let mut values = values.to_vec();
    // A model that normalises already answers unit vectors; `normalize: false` cannot undo that.
    if request.normalize {
        normalise_rows(&mut values, width);
    }
    let embeddings: Vec<&[f32]> = values.chunks(width.max(1)).collect();
    Ok(Json(embeddings).into_response())
}

pub async fn tokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    tokenize_with(state, None, headers, body).await
}

pub async fn tokenize_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    tokenize_with(state, Some(model), headers, body).await
}

/// Tokenising needs no forward pass: it runs on the slow-work pool, not through the engine.
async fn tokenize_with(
    state: AppState,
    model: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    let request: TokenizeRequest = read_json(&state, &headers, body).await?;
    let (slot, version) = choose(&state, model.as_deref(), None, "/tokenize", &headers)?;
    let texts = request.inputs.into_vec();
    let max = slot.engine.config().max_request_rows;
    if texts.len() > max {
        return Err(ApiError::InvalidBody(format!(
            "{} inputs; model {:?} takes at most {max} per request (max_request_rows)",
            texts.len(),
            slot.name
        ))
        .into());
    }
    let special = request.add_special_tokens;
    let tokens = state
        .slow
        .run(move || {
            texts
                .iter()
                .map(|text| match version.model.tokens(text, special) {
                    Some(tokens) => Ok(tokens?.into_iter().map(SimpleToken::from).collect()),
                    None => Err(ApiError::Unsupported("the model has no tokenizer".into())),
                })
                .collect::<Result<Vec<Vec<SimpleToken>>, ApiError>>()
        })
        .await?;
    Ok(Json(tokens).into_response())
}

pub async fn predict(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    predict_with(state, None, headers, body).await
}

pub async fn predict_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    predict_with(state, Some(model), headers, body).await
}

async fn predict_with(
    state: AppState,
    model: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    let started = Instant::now();
    let request: PredictRequest = read_json(&state, &headers, body).await?;
    let (sequences, batch) = predict_rows(request.inputs).map_err(ApiError::InvalidBody)?;
    let (slot, version) = choose(
        &state,
        model.as_deref(),
        Some(CLASSIFICATION),
        "/predict",
        &headers,
    )?;
    let rows = classification_rows(sequences)?;
    let outputs = infer_rows(
        &state,
        &slot,
        &version,
        rows,
        Arrival {
            started,
            headers: &headers,
            route: "/predict",
        },
    )
    .await?;
    let scores = if request.raw_scores {
        "logits"
    } else {
        "probabilities"
    };
    let (values, rows) = output(&version, &outputs, scores)?;
    let labels = labels(&version);
    let width = labels.len().max(1);
    let mut answer: Vec<_> = values
        .chunks(width)
        .take(rows)
        .map(|row| predictions(row, &labels))
        .collect();
    Ok(match (batch, answer.pop()) {
        (false, Some(single)) if answer.is_empty() => Json(single).into_response(),
        (_, last) => {
            answer.extend(last);
            Json(answer).into_response()
        }
    })
}

/// Rows of texts, or rows of pairs; a batch mixing both is refused (it would need two passes).
fn classification_rows(sequences: Vec<Sequence>) -> Result<Rows, ApiError> {
    if sequences.iter().all(|s| matches!(s, Sequence::Single(_))) {
        return Ok(Rows::Texts(
            sequences
                .into_iter()
                .filter_map(|s| match s {
                    Sequence::Single(t) => Some(t),
                    Sequence::Pair(..) => None,
                })
                .collect(),
        ));
    }
    sequences
        .into_iter()
        .map(|s| match s {
            Sequence::Pair(a, b) => Ok((a, b)),
            Sequence::Single(_) => Err(ApiError::InvalidBody(
                "a batch mixes single texts and pairs; send them in separate requests".into(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Rows::Pairs)
}

/// The classification labels a version resolved at load time, in logit order.
fn labels(version: &LoadedVersion) -> Vec<String> {
    version
        .model
        .parameters()
        .get("labels")
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
        .collect()
}

pub async fn rerank(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    rerank_with(state, None, headers, body).await
}

pub async fn rerank_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    rerank_with(state, Some(model), headers, body).await
}

/// Scores each `(query, text)` pair with a one-label cross-encoder (sigmoid unless raw_scores).
async fn rerank_with(
    state: AppState,
    model: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TeiError> {
    let started = Instant::now();
    let request: RerankRequest = read_json(&state, &headers, body).await?;
    let (slot, version) = choose(
        &state,
        model.as_deref(),
        Some(CLASSIFICATION),
        "/rerank",
        &headers,
    )?;
    if labels(&version).len() != 1 {
        return Err(ApiError::Unsupported(format!(
            "model {:?} has {} labels; reranking needs a cross-encoder with one",
            slot.name,
            labels(&version).len()
        ))
        .into());
    }
    let pairs = request
        .texts
        .iter()
        .map(|t| (request.query.clone(), t.clone()))
        .collect();
    let outputs = infer_rows(
        &state,
        &slot,
        &version,
        Rows::Pairs(pairs),
        Arrival {
            started,
            headers: &headers,
            route: "/rerank",
        },
    )
    .await?;
    let scores = if request.raw_scores {
        "logits"
    } else {
        "probabilities"
    };
    let (values, _) = output(&version, &outputs, scores)?;
    Ok(Json(ranks(values, request.texts, request.return_text)).into_response())
}
