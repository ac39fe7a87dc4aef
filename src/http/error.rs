//! Every error an HTTP or gRPC client can see, and the one place that maps them to HTTP status
//! codes ([`ApiError::status`]) and gRPC codes ([`ApiError::grpc_code`]).
//!
//! The mapping follows Triton's (`HttpCodeFromError`): client mistakes are 400, unknown models or
//! versions 404, a full queue 429 with `Retry-After`, not-ready 503, our own bugs 500. gRPC gets
//! the codes Triton's gRPC front end uses: INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, INTERNAL,
//! with RESOURCE_EXHAUSTED for a full queue and DEADLINE_EXCEEDED for a request's timeout. Bodies are
//! always `{"error": "..."}` so tritonclient raises a readable exception. 5xx details travel as
//! a response extension to the logging middleware (so the log line carries the request id) and
//! are never sent to the client; messages never carry filesystem paths.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::engine::EngineError;
use crate::model::InputError;
use crate::protocol::ProtocolError;
use crate::repository::{RepositoryError, RolloutError, VersionState};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("invalid model name: {0}")]
    InvalidModelName(crate::model::naming::NameError),
    #[error("invalid version {0:?}: versions are positive integers without leading zeros")]
    InvalidVersion(String),
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("unknown version {version} of model {model:?}")]
    UnknownVersion { model: String, version: u64 },
    #[error("model {0:?} has no ready version")]
    ModelNotReady(String),
    #[error("version {version} of model {model:?} is not ready ({state:?})")]
    VersionNotReady {
        model: String,
        version: u64,
        state: VersionState,
    },
    #[error("invalid {header} header: {message}")]
    Header {
        header: &'static str,
        message: String,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body was not received within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server is receiving and decoding its limit of {limit} bytes of request bodies (max_inflight_body_bytes); retry later")]
    Busy { limit: usize },
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Protocol(_)
            | ApiError::Input(_)
            | ApiError::InvalidModelName(_)
            | ApiError::InvalidVersion(_)
            | ApiError::Header { .. }
            | ApiError::InvalidBody(_)
            | ApiError::Unsupported(_)
            | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::Engine(e) => match e {
                EngineError::QueueFull { .. } | EngineError::QueueTokensFull { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                EngineError::TooManyRows { .. } => StatusCode::BAD_REQUEST,
                EngineError::Timeout { .. } | EngineError::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                EngineError::Compute(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Repository(RepositoryError::UnknownModel(_)) => StatusCode::NOT_FOUND,
            ApiError::Repository(RepositoryError::LoadFailed { .. }) => StatusCode::BAD_REQUEST,
            ApiError::Rollout(RolloutError::UnknownModel(_)) => StatusCode::NOT_FOUND,
            ApiError::Rollout(RolloutError::NoRollout(_)) => StatusCode::CONFLICT,
            ApiError::UnknownModel(_) | ApiError::UnknownVersion { .. } | ApiError::NoRoute(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::ModelNotReady(_)
            | ApiError::VersionNotReady { .. }
            | ApiError::ShuttingDown
            | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code of this error, beside its HTTP status (README, "gRPC").
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::Engine(
                EngineError::QueueFull { .. } | EngineError::QueueTokensFull { .. },
            )
            | ApiError::BodyTooLarge { .. } => Code::ResourceExhausted,
            ApiError::Engine(EngineError::Timeout { .. }) | ApiError::BodyTimeout { .. } => {
                Code::DeadlineExceeded
            }
            ApiError::Rollout(RolloutError::NoRollout(_)) => Code::FailedPrecondition,
            ApiError::MethodNotAllowed => Code::Unimplemented,
            ApiError::Unauthorized => Code::Unauthenticated,
            other => match other.status() {
                StatusCode::NOT_FOUND => Code::NotFound,
                StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
                s if s.is_server_error() => Code::Internal,
                _ => Code::InvalidArgument,
            },
        }
    }

    /// This error as a gRPC status: the same clipped message as an HTTP body; a server-side
    /// detail is logged, never sent.
    pub fn grpc_status(&self) -> tonic::Status {
        let (message, detail) = self.public();
        if let Some(FailureDetail(detail)) = detail {
            tracing::error!(detail, "gRPC request failed");
        }
        tonic::Status::new(self.grpc_code(), message)
    }

    /// The request-metrics outcome label of this error.
    pub fn outcome(&self) -> &'static str {
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS => "rejected",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "error",
            _ => "bad_request",
        }
    }
}

/// The longest error message a client is sent.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A JSON error response with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The detail of a server-side failure, attached to the response (never sent to the client)
/// and logged with the request's id by the observing middleware ([`super::observe`]).
#[derive(Debug, Clone)]
pub struct FailureDetail(pub String);

impl ApiError {
    /// What the client is told (clipped), and what only the log gets.
    fn public(&self) -> (String, Option<FailureDetail>) {
        let detail = match self {
            ApiError::Internal(detail) => Some(detail.clone()),
            ApiError::Engine(EngineError::Compute(error)) => Some(error.to_string()),
            _ => None,
        };
        let message = match self {
            ApiError::Engine(EngineError::Compute(_)) => {
                "inference failed; see the server log".to_string()
            }
            _ => self.to_string(),
        };
        // Messages quote the request (names, shapes, values); whatever quotes survived the
        // clipping at their source, no error body repeats more than this much of it.
        let message = crate::protocol::error::clip_to(&message, MAX_MESSAGE_BYTES);
        (message, detail.map(FailureDetail))
    }

    /// The response in a given error body shape (every front end's status codes are these).
    fn render(&self, body: impl FnOnce(StatusCode, &str) -> String) -> Response {
        let status = self.status();
        let (message, detail) = self.public();
        let mut response = (status, body(status, &message)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(detail) = detail {
            response.extensions_mut().insert(detail);
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(|_, message| serde_json::json!({ "error": message }).to_string())
    }
}

/// An [`ApiError`] answered in OpenAI's error shape (`/v1/...`): `{"error": {"message",
/// "type", "param", "code"}}`, with the same status codes.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> OpenAiError {
        OpenAiError(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let code = match &self.0 {
            ApiError::UnknownModel(_) | ApiError::InvalidModelName(_) => Some("model_not_found"),
            _ => None,
        };
        let param = code.map(|_| "model");
        self.0.render(|status, message| {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
                s if s.is_server_error() => "server_error",
                _ => "invalid_request_error",
            };
            crate::protocol::openai::error_body(message, kind, param, code)
        })
    }
}

/// An [`ApiError`] answered in TEI's error shape: `{"error": "...", "error_type": "..."}`,
/// with the same status codes.
#[derive(Debug)]
pub struct TeiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for TeiError {
    fn from(e: E) -> TeiError {
        TeiError(e.into())
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        self.0.render(|status, message| {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => "overloaded",
                StatusCode::SERVICE_UNAVAILABLE => "unhealthy",
                s if s.is_server_error() => "backend",
                _ => "validation",
            };
            serde_json::json!({ "error": message, "error_type": kind }).to_string()
        })
    }
}
