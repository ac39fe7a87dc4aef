//! Triton's model-repository extension, on its own listener: index, load, unload; and the
//! operator control of rollouts (src/http/rollout.rs).
//!
//! Off unless `admin_listen` is set, loopback by default, and every request needs
//! `Authorization: Bearer <WICK_ADMIN_TOKEN>`, compared in constant time (both sides hashed
//! first so not even the length leaks). The inference listener never routes these paths. No
//! parameter names a file, a path or a URL: `load` re-reads the configured repository only
//! (Triton's `config` and `file:` overrides are refused).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::naming::parse_version;
use crate::protocol::params::{ParamValue, Parameters};
use crate::repository::Repository;

use super::body::{receive, Encoding};
use super::error::ApiError;
use super::AppState;

#[derive(Clone)]
pub(super) struct AdminState {
    pub(super) app: AppState,
    token_digest: Arc<[u8; 32]>,
}

/// The admin listener's routes. `token` must not be empty. Surrounding whitespace of the
/// configured token is ignored as it is for the presented one: a token read from a file (a
/// Kubernetes secret) usually ends with a newline.
pub fn router(app: AppState, token: &str) -> Router {
    let app_state = app.clone();
    let state = AdminState {
        app,
        token_digest: Arc::new(Sha256::digest(token.trim().as_bytes()).into()),
    };
    let routes = Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route(
            "/v2/repository/models/{model}/rollout/{action}",
            post(super::rollout::rollout),
        )
        // The repository RPCs over gRPC (HTTP/2, `content-type: application/grpc`), behind
        // the same token check.
        .merge(crate::grpc::admin_routes(app_state))
        .fallback(|uri: http::Uri| async move {
            ApiError::NoRoute(uri.path().chars().take(200).collect())
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    super::observe::layer(routes)
}

async fn authorize(State(state): State<AdminState>, mut request: Request, next: Next) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() });
    match presented {
        Some(digest) if bool::from(digest.ct_eq(&*state.token_digest)) => {
            // Handlers that log an action name the token by this id, never by its value.
            request
                .extensions_mut()
                .insert(super::rollout::TokenId::of_digest(&digest));
            next.run(request).await
        }
        // gRPC clients read the status from the grpc-status header, not the HTTP status.
        _ if grpc => ApiError::Unauthorized.grpc_status().into_http(),
        _ => {
            let mut response = ApiError::Unauthorized.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 7235), the token trimmed of surrounding whitespace.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

#[derive(Deserialize, Default)]
struct ActionRequest {
    #[serde(default)]
    parameters: Parameters,
}

/// Parses an optional JSON body; tritonclient sends an empty one.
pub(super) async fn json_body<T: Default + serde::de::DeserializeOwned>(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let mut received = receive(body, headers, &app.limits.body, &app.inflight).await?;
    if received.encoding != Encoding::Identity {
        return Err(ApiError::Header {
            header: "Content-Encoding",
            message: "the repository API takes uncompressed bodies".to_string(),
        });
    }
    let bytes = received.contiguous();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| crate::protocol::ProtocolError::Json(e.to_string()).into())
}

async fn index(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: IndexRequest = json_body(&state.app, &headers, body).await?;
    Ok(Json(state.app.repository.index(request.ready)).into_response())
}

/// The optional `version` parameter (a wick extension: load or unload one version).
pub(crate) fn version_param(params: &Parameters) -> Result<Option<u64>, ApiError> {
    for key in params.keys() {
        if key == "config" || key.starts_with("file:") {
            return Err(crate::protocol::ProtocolError::Unsupported(
                "loading a model from a config or files sent in the request",
            )
            .into());
        }
    }
    match params.get("version") {
        None => Ok(None),
        Some(ParamValue::Str(s)) => parse_version(s)
            .map(Some)
            .ok_or_else(|| ApiError::InvalidVersion(s.clone())),
        Some(ParamValue::Uint(u)) if *u > 0 => Ok(Some(*u)),
        Some(_) => Err(ApiError::InvalidVersion(
            "(not a positive integer)".to_string(),
        )),
    }
}

/// What the repository API's load and unload routes ask of the repository.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Load,
    Unload,
}

async fn load(
    State(state): State<AdminState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    act(state, model, headers, body, Action::Load).await
}

async fn unload(
    State(state): State<AdminState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    act(state, model, headers, body, Action::Unload).await
}

async fn act(
    state: AdminState,
    model: String,
    headers: HeaderMap,
    body: Body,
    action: Action,
) -> Result<Response, ApiError> {
    let request: ActionRequest = json_body(&state.app, &headers, body).await?;
    apply(&state.app, model, &request.parameters, action).await?;
    Ok(StatusCode::OK.into_response())
}

/// Loads or unloads `model` as `parameters` say (HTTP's and gRPC's repository RPCs).
pub(crate) async fn apply(
    app: &AppState,
    model: String,
    parameters: &Parameters,
    action: Action,
) -> Result<(), ApiError> {
    let version = version_param(parameters)?;
    app.slot(&model)?;
    let repository: Arc<Repository> = Arc::clone(&app.repository);
    // Loading reads and checks files and runs a warm-up pass, and unloading may load the
    // version the policy picks instead: never on a tokio worker.
    tokio::task::spawn_blocking(move || match action {
        Action::Load => repository.load(&model, version),
        Action::Unload => repository.unload(&model, version),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("{action:?} task failed: {e}")))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc\n"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc  "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
    }
}
