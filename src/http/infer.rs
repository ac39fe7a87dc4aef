//! `POST /v2/models/{m}[/versions/{v}]/infer`: parse, submit, encode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::config::BatchingConfig;
use crate::engine::{EngineError, Job, LoadedVersion, Outputs};
use crate::model::{common_request_rows, cut_request, ElemKind, HostTensor, Prepared};
use crate::protocol::{self, encode_response, Decoded, ResponseMeta, HEADER_CONTENT_LENGTH};
use crate::repository::shadow::{Sample, ShadowTap};
use crate::repository::ModelSlot;
use crate::telemetry::trace;

use super::body::{accepted_coding, compress, receive, Coding, Encoding, Received};
use super::error::ApiError;
use super::{request_id, AppState};

/// Bodies up to this size are decoded on the request's task: parsing them costs tens of
/// microseconds, less than a hop to the pool. Larger (and compressed) bodies go to the pool.
pub(crate) const INLINE_DECODE_BYTES: usize = 64 << 10;

/// Requests for models with text inputs are always prepared on the pool: tokenising costs far
/// more per byte than parsing numbers, and `prepare` tokenises.
pub(crate) fn prepares_text(version: &LoadedVersion) -> bool {
    version
        .signature
        .inputs
        .iter()
        .any(|s| s.kind == ElemKind::Bytes)
}

pub async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(state, model, None, headers, body).await
}

pub async fn infer_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(state, model, Some(version), headers, body).await
}

async fn run(
    state: AppState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (state, slot, headers) = (&state, &state.slot(&model)?, &headers);
    let call = Call {
        slot,
        version: version.as_deref(),
        headers,
        route: "/v2/infer",
    };
    let (_, response) = handle(state, call, |picked, shadow| async move {
        serve(state, slot, &picked, headers, body, shadow).await
    })
    .await?;
    Ok(response)
}

/// One inference request as its front end received it.
pub(crate) struct Call<'a> {
    pub slot: &'a Arc<ModelSlot>,
    /// The version the request names, if any.
    pub version: Option<&'a str>,
    /// Its headers (gRPC metadata are HTTP/2 headers): `x-request-id`, `traceparent`.
    pub headers: &'a HeaderMap,
    /// How its span names the route.
    pub route: &'static str,
}

/// What every KServe v2 front end (HTTP, gRPC) does around serving a request: picks the version
/// (a canary routes by `x-request-id`), opens the request's span (parented by `traceparent`),
/// samples it for a shadow when it names no version, runs `serve` inside the span, and counts
/// the outcome in the metrics and the rollout's judgement. Returns the version that answered.
pub(crate) async fn handle<T, F, Fut>(
    state: &AppState,
    call: Call<'_>,
    serve: F,
) -> Result<(Arc<LoadedVersion>, T), ApiError>
where
    F: FnOnce(Arc<LoadedVersion>, Option<ShadowCopy>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let started = Instant::now();
    let Call {
        slot,
        version,
        headers,
        route,
    } = call;
    let span = trace::request_span(headers, route, &slot.name);
    let picked = match state.route_version(slot, version, request_id(headers)) {
        Ok(picked) => picked,
        Err(e) => {
            trace::record_outcome(&span, false);
            state.finish_request(slot, None, e.outcome(), started.elapsed());
            return Err(e);
        }
    };
    trace::record_version(&span, picked.version, &picked.sha256);
    // A shadow copies a share of the requests naming no version to its candidate.
    let shadow = version
        .is_none()
        .then(|| shadow_copy(slot, &picked, request_id(headers)))
        .flatten();
    let result = serve(Arc::clone(&picked), shadow)
        .instrument(span.clone())
        .await;
    trace::record_outcome(&span, result.is_ok());
    let outcome = result
        .as_ref()
        .map_or_else(ApiError::outcome, |_| "success");
    state.finish_request(slot, Some(picked.version), outcome, started.elapsed());
    Ok((picked, result?))
}

/// Where a sampled request's copy goes: the shadow and its candidate.
pub(crate) struct ShadowCopy {
    tap: ShadowTap,
    candidate: Arc<LoadedVersion>,
}

/// The shadow copy of a request answered by `picked`, when a shadow runs and samples it.
pub(crate) fn shadow_copy(
    slot: &ModelSlot,
    picked: &LoadedVersion,
    request_id: Option<&[u8]>,
) -> Option<ShadowCopy> {
    let serving = slot.serving();
    let tap = serving.shadow.as_ref()?;
    if tap.stable != picked.version || !tap.samples(request_id) {
        return None;
    }
    Some(ShadowCopy {
        tap: tap.clone(),
        candidate: Arc::clone(serving.versions.get(&tap.candidate)?),
    })
}

async fn serve(
    state: &AppState,
    slot: &Arc<ModelSlot>,
    version: &Arc<LoadedVersion>,
    headers: &HeaderMap,
    body: Body,
    shadow: Option<ShadowCopy>,
) -> Result<Response, ApiError> {
    let header_len = inference_header_length(headers)?;
    refuse_when_full(slot)?;
    // From here until it is queued the request is on its way: the batching policy may wait
    // for it rather than run a batch without it.
    let incoming = slot.engine.incoming();
    let span = tracing::Span::current();
    let decode_span = crate::stage_span!(&span, "decode");
    let body = receive(body, headers, &state.limits.body, &state.inflight)
        .instrument(decode_span.clone())
        .await?;
    let config = slot.engine.config();
    let decoding = Instant::now();
    let keep = shadow.is_some();
    let (decoded, parts, copy) = decode(state, version, body, header_len, &config, keep)
        .instrument(decode_span)
        .await?;
    slot.metrics
        .compute_input(version.version, decoding.elapsed());
    let timeout = decoded.timeout.or(config.default_timeout);
    let admitted = Admitted {
        timeout,
        priority: decoded.priority,
        incoming,
    };
    let outputs = submit(slot, version, parts, admitted).await?;
    let encoding = Instant::now();
    let response = crate::stage_span!(&span, "encode")
        .in_scope(|| respond(version, &decoded, &outputs, accepted_coding(headers)))?;
    slot.metrics
        .compute_output(version.version, encoding.elapsed());
    // After the answer is encoded, and without waiting: a full shadow queue drops the copy.
    if let (Some(shadow), Some(inputs)) = (shadow, copy) {
        shadow.offer(slot, inputs, outputs.tensors);
    }
    Ok(response)
}

impl ShadowCopy {
    /// Hands the request's `inputs` and the stable version's `outputs` to the shadow, without
    /// waiting (a full queue drops them).
    pub(crate) fn offer(
        self,
        slot: &Arc<ModelSlot>,
        inputs: Vec<Option<HostTensor>>,
        stable: Vec<HostTensor>,
    ) {
        self.tap.offer(Sample {
            slot: Arc::clone(slot),
            candidate: self.candidate,
            inputs,
            stable,
        });
    }
}

/// Refuses before reading and decoding a body when the model's queue is full: overload must be
/// cheap to answer.
pub(crate) fn refuse_when_full(slot: &ModelSlot) -> Result<(), ApiError> {
    if slot.engine.is_full() {
        slot.metrics.rejected("queue_full");
        return Err(EngineError::QueueFull {
            model: slot.name.clone(),
            limit: slot.engine.config().max_queue_size,
        }
        .into());
    }
    Ok(())
}

/// How a decoded request goes to the queue.
pub(crate) struct Admitted {
    pub timeout: Option<std::time::Duration>,
    pub priority: Option<u64>,
    /// The announcement made before the body was read ([`crate::engine::Engine::incoming`]).
    pub incoming: crate::engine::Incoming,
}

/// Queues a request's prepared parts and waits for their outputs, joined back in order. Every
/// front end (KServe v2 over HTTP and gRPC, OpenAI, TEI) goes through here, so they share admission, batching,
/// deadlines and metrics.
pub(crate) async fn submit(
    slot: &ModelSlot,
    version: &Arc<LoadedVersion>,
    parts: Vec<Prepared>,
    admitted: Admitted,
) -> Result<Outputs, ApiError> {
    let Admitted {
        timeout,
        priority,
        incoming,
    } = admitted;
    let mut pending = Vec::with_capacity(parts.len());
    let mut incoming = Some(incoming);
    for prepared in parts {
        let (tx, rx) = oneshot::channel();
        // Every front end awaits this inside its request's span.
        let job = Job::new(Arc::clone(version), prepared, tx, timeout)
            .with_priority(priority)
            .with_span(tracing::Span::current());
        let (ticket, deadline) = (job.ticket(), job.deadline);
        if let Err(e) = slot.engine.submit(job, incoming.take()) {
            slot.metrics.rejected(match e {
                EngineError::QueueFull { .. } | EngineError::QueueTokensFull { .. } => "queue_full",
                _ => "refused",
            });
            return Err(e.into());
        }
        pending.push((rx, ticket, deadline));
    }
    let mut outputs = Vec::with_capacity(pending.len());
    for (rx, ticket, deadline) in pending {
        outputs.push(wait(rx, ticket, deadline, timeout, slot).await?);
    }
    Ok(match outputs.len() {
        1 => outputs.pop().ok_or(ApiError::ShuttingDown)?,
        _ => Outputs::concat(outputs).map_err(EngineError::Compute)?,
    })
}

/// Waits for the answer; at the request's deadline, gives up on it if it has not started
/// (a request already being computed is waited for: its work is done anyway).
async fn wait(
    mut rx: oneshot::Receiver<Result<Outputs, EngineError>>,
    ticket: crate::engine::Ticket,
    deadline: Option<std::time::Instant>,
    timeout: Option<std::time::Duration>,
    slot: &ModelSlot,
) -> Result<Outputs, ApiError> {
    let closed = |_| ApiError::ShuttingDown;
    let Some(deadline) = deadline else {
        return Ok(rx.await.map_err(closed)??);
    };
    tokio::select! {
        answer = &mut rx => Ok(answer.map_err(closed)??),
        () = tokio::time::sleep_until(deadline.into()) => {
            if ticket.abandon() {
                slot.metrics.rejected("timeout");
                let timeout_us = timeout.unwrap_or_default().as_micros();
                return Err(EngineError::Timeout { waited_us: timeout_us, timeout_us }.into());
            }
            Ok(rx.await.map_err(closed)??)
        }
    }
}

/// A decoded request, its prepared parts, and (when asked for a shadow) a copy of its inputs.
pub(crate) type DecodedParts = (Decoded, Vec<Prepared>, Option<Vec<Option<HostTensor>>>);

/// Decodes and prepares a request. Small plain bodies are decoded in place; large or
/// compressed ones, and every request of a text model, on the slow-work pool, reading the
/// body's chunks (freed as they are consumed) straight into typed tensors. With `keep`, the
/// decoded inputs are copied before `prepare` consumes them (a shadow prepares them again with
/// its candidate's model).
async fn decode(
    state: &AppState,
    version: &Arc<LoadedVersion>,
    mut body: Received,
    header_len: Option<u64>,
    batching: &BatchingConfig,
    keep: bool,
) -> Result<DecodedParts, ApiError> {
    let split = Split::new(version, batching);
    let mut limits = state.limits;
    limits.decode.max_rows = batching.max_request_rows as u64;
    let inline = body.encoding == Encoding::Identity
        && body.len() <= INLINE_DECODE_BYTES
        && !prepares_text(version);
    if inline {
        let bytes = body.contiguous();
        drop(body);
        let mut decoded = protocol::decode(&bytes, header_len, &version.signature, &limits.decode)?;
        let copy = keep.then(|| decoded.inputs.clone());
        let parts = split.prepare(version, std::mem::take(&mut decoded.inputs))?;
        return Ok((decoded, parts, copy));
    }
    if let Some(n) = header_len {
        if body.encoding == Encoding::Identity && n > body.len() as u64 {
            return Err(protocol::ProtocolError::HeaderLength {
                header_len: n,
                body_len: body.len() as u64,
            }
            .into());
        }
    }
    let version = Arc::clone(version);
    state
        .slow
        .run(move || {
            let size_hint = match body.encoding {
                Encoding::Identity => body.len() as u64,
                _ => limits.body.max_bytes as u64,
            };
            let overflow = Arc::new(AtomicBool::new(false));
            let reader = body.into_reader(limits.body.max_bytes, Arc::clone(&overflow));
            let decoded = protocol::decode_reader(
                reader,
                header_len,
                &version.signature,
                &limits.decode,
                size_hint,
            );
            let mut decoded = match decoded {
                Err(_) if overflow.load(Ordering::Acquire) => {
                    return Err(ApiError::BodyTooLarge {
                        limit: limits.body.max_bytes,
                    })
                }
                other => other?,
            };
            let copy = keep.then(|| decoded.inputs.clone());
            let parts = split.prepare(&version, std::mem::take(&mut decoded.inputs))?;
            Ok((decoded, parts, copy))
        })
        .await
}

/// How a request's rows are cut into batches.
pub(crate) struct Split {
    max_batch_size: usize,
    max_request_rows: usize,
    model: String,
}

impl Split {
    pub(crate) fn new(version: &LoadedVersion, batching: &BatchingConfig) -> Split {
        Split {
            max_batch_size: batching.max_batch_size,
            max_request_rows: batching.max_request_rows,
            model: version.model_name.clone(),
        }
    }

    /// Prepares a request, cut into parts of at most `max_batch_size` rows when it has more
    /// (each part batches on its own; the answers are joined back in order). More rows than
    /// `max_request_rows` are refused before any row is tokenised or computed.
    pub(crate) fn prepare(
        &self,
        version: &LoadedVersion,
        inputs: Vec<Option<HostTensor>>,
    ) -> Result<Vec<Prepared>, ApiError> {
        // Inputs that disagree on their rows are not split: the model refuses them whole.
        let first = match common_request_rows(&inputs) {
            Some(rows) if rows > self.max_batch_size => rows,
            _ => return Ok(vec![version.model.prepare(inputs)?]),
        };
        if first > self.max_request_rows {
            return Err(EngineError::TooManyRows {
                model: self.model.clone(),
                rows: first,
                max: self.max_request_rows,
            }
            .into());
        }
        cut_request(inputs, first, self.max_batch_size)
            .into_iter()
            .map(|part| version.model.prepare(part).map_err(ApiError::from))
            .collect()
    }
}

fn respond(
    version: &LoadedVersion,
    decoded: &Decoded,
    outputs: &Outputs,
    coding: Option<Coding>,
) -> Result<Response, ApiError> {
    let meta = ResponseMeta {
        model_name: &version.model_name,
        model_version: version.version,
        id: decoded.id.as_deref(),
        weights_sha256: &version.sha256,
        notes: &outputs.notes,
    };
    let encoded = encode_response(
        &meta,
        &version.signature,
        &outputs.tensors,
        &decoded.outputs,
    );
    // Compressed only when the client asked; Inference-Header-Content-Length still counts the
    // uncompressed JSON (tritonclient decompresses before splitting).
    let body = match coding {
        None => encoded.body,
        Some(coding) => compress(&encoded.body, coding)
            .map_err(|e| ApiError::Internal(format!("cannot compress the response: {e}")))?,
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    if let Some(coding) = coding {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.name()),
        );
    }
    if let Ok(sha) = HeaderValue::from_str(&version.sha256) {
        headers.insert("x-wick-weights-sha256", sha);
    }
    headers.insert("x-wick-model-version", HeaderValue::from(version.version));
    match encoded.json_len {
        Some(n) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(response)
}

/// `Inference-Header-Content-Length`, parsed strictly (digits only, u64).
fn inference_header_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    let bad = |message: &str| ApiError::Header {
        header: "Inference-Header-Content-Length",
        message: message.to_string(),
    };
    let text = value.to_str().map_err(|_| bad("not ASCII"))?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be a non-negative integer"));
    }
    text.parse::<u64>().map(Some).map_err(|_| bad("too large"))
}
