//! What the text front ends (OpenAI's `/v1/embeddings`, TEI's `/embed`, `/predict`, `/rerank`)
//! share: reading a JSON body within the body limits, turning texts, text pairs or token ids into
//! the model's inputs, and running them through the same split, admission, batching, deadlines
//! and metrics as `POST /v2/.../infer` ([`super::infer::submit`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::engine::{EngineError, LoadedVersion, Outputs};
use crate::model::{HostData, HostTensor, Signature};
use crate::repository::ModelSlot;
use crate::telemetry::trace;
use tracing::Instrument;

use super::body::{receive, Encoding};
use super::error::ApiError;
use super::infer::{refuse_when_full, shadow_copy, submit, Admitted, ShadowCopy, Split};
use super::{request_id, AppState};

/// Bodies up to this size are parsed on the request's task (as in [`super::infer`]).
const INLINE_PARSE_BYTES: usize = 64 << 10;

/// Reads a JSON request body (no Content-Type required; gzip and deflate as for `/v2`) and parses
/// it into `T`; large or compressed bodies are parsed on the slow-work pool.
pub(super) async fn read_json<T>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError>
where
    T: DeserializeOwned + Send + 'static,
{
    let mut body = receive(body, headers, &state.limits.body, &state.inflight).await?;
    let invalid = |e: serde_json::Error| {
        ApiError::InvalidBody(crate::protocol::clip(&e.to_string()).to_string())
    };
    if body.encoding == Encoding::Identity && body.len() <= INLINE_PARSE_BYTES {
        return serde_json::from_slice(&body.contiguous()).map_err(invalid);
    }
    let max = state.limits.body.max_bytes;
    state
        .slow
        .run(move || {
            let overflow = Arc::new(AtomicBool::new(false));
            let reader = body.into_reader(max, Arc::clone(&overflow));
            let parsed = serde_json::from_reader(reader);
            if overflow.load(std::sync::atomic::Ordering::Acquire) {
                return Err(ApiError::BodyTooLarge { limit: max });
            }
            parsed.map_err(invalid)
        })
        .await
}

/// The rows of a text request.
pub(super) enum Rows {
    Texts(Vec<String>),
    Pairs(Vec<(String, String)>),
    /// Token ids, one list per row (padded here, with an attention mask).
    Ids(Vec<Vec<i64>>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Texts(v) => v.len(),
            Rows::Pairs(v) => v.len(),
            Rows::Ids(v) => v.len(),
        }
    }

    /// The model's inputs, in signature order.
    fn into_inputs(self, signature: &Signature) -> Result<Vec<Option<HostTensor>>, ApiError> {
        let mut inputs: Vec<Option<HostTensor>> = vec![None; signature.inputs.len()];
        let slot = |name: &str| signature.inputs.iter().position(|s| s.name == name);
        let missing = |what: &str| {
            ApiError::Unsupported(format!("this model takes no {what} (its inputs: {})", {
                let names: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
                names.join(", ")
            }))
        };
        let strings = |index: usize, texts: Vec<String>| {
            let max = signature.inputs[index].max_bytes;
            let data = texts
                .into_iter()
                .map(|t| crate::protocol::clipped(t.as_bytes(), max).to_vec())
                .collect::<Vec<_>>();
            HostTensor {
                shape: vec![data.len()],
                data: HostData::Bytes(data),
            }
        };
        match self {
            Rows::Texts(texts) => {
                let text = slot("text").ok_or_else(|| missing("text"))?;
                inputs[text] = Some(strings(text, texts));
            }
            Rows::Pairs(pairs) => {
                let text = slot("text").ok_or_else(|| missing("text"))?;
                let pair = slot("text_pair").ok_or_else(|| missing("text pairs"))?;
                let (first, second): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
                inputs[text] = Some(strings(text, first));
                inputs[pair] = Some(strings(pair, second));
            }
            Rows::Ids(rows) => {
                let ids = slot("input_ids").ok_or_else(|| missing("token ids"))?;
                let mask = slot("attention_mask").ok_or_else(|| missing("token ids"))?;
                let (a, b) = pad_ids(&rows)?;
                inputs[ids] = Some(a);
                inputs[mask] = Some(b);
            }
        }
        Ok(inputs)
    }
}

/// `[rows, longest]` ids (0-padded) and the attention mask marking the real tokens.
fn pad_ids(rows: &[Vec<i64>]) -> Result<(HostTensor, HostTensor), ApiError> {
    if let Some(row) = rows.iter().position(Vec::is_empty) {
        return Err(ApiError::InvalidBody(format!(
            "token id list {row} is empty"
        )));
    }
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * len];
    let mut mask = vec![0i64; rows.len() * len];
    for (r, row) in rows.iter().enumerate() {
        ids[r * len..r * len + row.len()].copy_from_slice(row);
        mask[r * len..r * len + row.len()].fill(1);
    }
    let tensor = |values| HostTensor {
        shape: vec![rows.len(), len],
        data: HostData::I64(values),
    };
    Ok((tensor(ids), tensor(mask)))
}

/// The version of `model` a request goes to (the newest ready one, or a canary's pick by the
/// request's `x-request-id`), which must be a text model doing `task`.
pub(super) fn text_version(
    state: &AppState,
    model: &str,
    task: &str,
    headers: &HeaderMap,
) -> Result<(Arc<ModelSlot>, Arc<LoadedVersion>), ApiError> {
    let slot = state.slot(model)?;
    let version = state.route_version(&slot, None, request_id(headers))?;
    let has = version
        .model
        .parameters()
        .get("task")
        .and_then(|t| t.as_str())
        == Some(task);
    if !has {
        return Err(ApiError::Unsupported(format!(
            "model {model:?} is not a text {task} model"
        )));
    }
    Ok((slot, version))
}

/// How a text request arrived: when, with which headers, on which route (for its span).
pub(super) struct Arrival<'a> {
    pub started: Instant,
    pub headers: &'a HeaderMap,
    pub route: &'static str,
}

/// Runs a text request through the model's engine, counted in its metrics and statistics like
/// a `/v2` request (`started`: when the request arrived); a shadow samples it like a `/v2`
/// request naming no version, by its `x-request-id`.
pub(super) async fn infer_rows(
    state: &AppState,
    slot: &Arc<ModelSlot>,
    version: &Arc<LoadedVersion>,
    rows: Rows,
    arrival: Arrival<'_>,
) -> Result<Outputs, ApiError> {
    let Arrival {
        started,
        headers,
        route,
    } = arrival;
    let shadow = shadow_copy(slot, version, request_id(headers));
    let span = trace::request_span(headers, route, &slot.name);
    trace::record_version(&span, version.version, &version.sha256);
    let result = run(state, slot, version, rows, shadow)
        .instrument(span.clone())
        .await;
    trace::record_outcome(&span, result.is_ok());
    let outcome = result
        .as_ref()
        .map_or_else(ApiError::outcome, |_| "success");
    state.finish_request(slot, Some(version.version), outcome, started.elapsed());
    result
}

async fn run(
    state: &AppState,
    slot: &Arc<ModelSlot>,
    version: &Arc<LoadedVersion>,
    rows: Rows,
    shadow: Option<ShadowCopy>,
) -> Result<Outputs, ApiError> {
    let config = slot.engine.config();
    if rows.len() == 0 {
        return Err(ApiError::InvalidBody("no input".to_string()));
    }
    if rows.len() > config.max_request_rows {
        return Err(EngineError::TooManyRows {
            model: slot.name.clone(),
            rows: rows.len(),
            max: config.max_request_rows,
        }
        .into());
    }
    refuse_when_full(slot)?;
    let incoming = slot.engine.incoming();
    let preparing = Instant::now();
    let split = Split::new(version, &config);
    let target = Arc::clone(version);
    let keep = shadow.is_some();
    // Tokenising is slow work: off the async workers, as for `/v2` text requests.
    let (parts, copy) = state
        .slow
        .run(move || {
            let inputs = rows.into_inputs(&target.signature)?;
            let copy = keep.then(|| inputs.clone());
            Ok::<_, ApiError>((split.prepare(&target, inputs)?, copy))
        })
        .instrument(crate::stage_span!(&tracing::Span::current(), "decode"))
        .await?;
    slot.metrics
        .compute_input(version.version, preparing.elapsed());
    let admitted = Admitted {
        timeout: config.default_timeout,
        priority: None,
        incoming,
    };
    let outputs = submit(slot, version, parts, admitted).await?;
    if let (Some(shadow), Some(inputs)) = (shadow, copy) {
        shadow.offer(slot, inputs, outputs.tensors.clone());
    }
    Ok(outputs)
}

/// The `[rows, width]` values of output `name`, and the rows.
pub(super) fn output<'a>(
    version: &LoadedVersion,
    outputs: &'a Outputs,
    name: &str,
) -> Result<(&'a [f32], usize), ApiError> {
    let index = version
        .signature
        .outputs
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| ApiError::Internal(format!("the model has no output {name:?}")))?;
    match outputs.tensors.get(index) {
        Some(HostTensor {
            shape,
            data: HostData::F32(values),
        }) => Ok((values, shape.first().copied().unwrap_or(0))),
        _ => Err(ApiError::Internal(format!("output {name:?} is not FP32"))),
    }
}

/// The total of the per-row `tokens` note a text model returns.
pub(super) fn token_count(outputs: &Outputs) -> u64 {
    outputs
        .notes
        .get("tokens")
        .and_then(|t| t.as_array())
        .map_or(0, |rows| rows.iter().filter_map(|v| v.as_u64()).sum())
}
