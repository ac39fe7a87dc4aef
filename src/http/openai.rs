//! OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models` for text embedding models:
//! parse, run through the engine like `/v2` inference ([`super::text`]), encode in OpenAI's
//! shapes ([`crate::protocol::openai`]). Errors use OpenAI's error object.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::Json;
use http::HeaderMap;

use crate::protocol::openai::{
    embedding_response, model_list, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, ModelList,
};

use super::error::{ApiError, OpenAiError};
use super::text::{infer_rows, output, read_json, text_version, token_count, Arrival, Rows};
use super::AppState;

pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let mut names: Vec<String> = state
        .repository
        .slots()
        .into_iter()
        .map(|slot| slot.name.clone())
        .collect();
    names.sort();
    Json(model_list(names))
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EmbeddingResponse>, OpenAiError> {
    let started = Instant::now();
    let request: EmbeddingRequest = read_json(&state, &headers, body).await?;
    let (slot, version) = text_version(&state, &request.model, "embedding", &headers)?;
    let rows = match request.input {
        EmbeddingInput::Text(text) => Rows::Texts(vec![text]),
        EmbeddingInput::Texts(texts) => Rows::Texts(texts),
        EmbeddingInput::Ids(ids) => Rows::Ids(vec![ids]),
        EmbeddingInput::IdLists(lists) => Rows::Ids(lists),
    };
    let outputs = infer_rows(
        &state,
        &slot,
        &version,
        rows,
        Arrival {
            started,
            headers: &headers,
            route: "/v1/embeddings",
        },
    )
    .await?;
    let (values, rows) = output(&version, &outputs, "embedding")?;
    let width = values.len() / rows.max(1);
    if let Some(d) = request.dimensions {
        if d == 0 || d > width {
            return Err(ApiError::InvalidBody(format!(
                "dimensions must be between 1 and {width}, the model's embedding size; got {d}"
            ))
            .into());
        }
    }
    let normalises = version.model.parameters().get("normalize") == Some(&true.into());
    Ok(Json(embedding_response(
        &request.model,
        values,
        rows,
        request.dimensions,
        normalises,
        request.encoding_format,
        token_count(&outputs),
    )))
}
