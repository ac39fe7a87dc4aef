//! Operator control of rollouts on the admin listener:
//! `POST /v2/repository/models/{model}/rollout/{promote|rollback|pause|resume}` with an optional
//! JSON body `{"reason": "..."}`. The admin listener's bearer token is required (src/http/admin.rs
//! checks it before any handler runs); the action is logged with the token's id (the first 8 hex
//! digits of its sha256, never the token) and the reason. The repository does the work
//! (src/repository/operator.rs); an unknown model is 404, a model without a rollout 409.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Json, Response};
use http::HeaderMap;
use serde::Deserialize;

use crate::repository::{Actor, Repository, RolloutAction};

use super::admin::{json_body, AdminState};
use super::error::ApiError;

/// The id of the token an admin request presented (set by the admin listener's authorisation).
#[derive(Debug, Clone)]
pub struct TokenId(pub String);

impl TokenId {
    /// The first 8 hex digits of the token's sha256: enough to tell tokens apart in logs,
    /// useless for guessing the token.
    pub fn of_digest(digest: &[u8; 32]) -> TokenId {
        TokenId(digest.iter().take(4).map(|b| format!("{b:02x}")).collect())
    }
}

/// Reasons are logged and shown in the repository index: bounded, one line.
const MAX_REASON_CHARS: usize = 300;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: String,
}

/// A reason fit for a log line: control characters (a forged second log line) become spaces,
/// and it is cut at [`MAX_REASON_CHARS`].
fn clean_reason(reason: &str) -> String {
    let text: String = reason
        .trim()
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.is_empty() {
        "no reason given".to_string()
    } else {
        text
    }
}

pub(super) async fn rollout(
    State(state): State<AdminState>,
    Path((model, action)): Path<(String, String)>,
    Extension(token): Extension<TokenId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let action = RolloutAction::parse(&action).ok_or_else(|| {
        ApiError::NoRoute(format!(
            "rollout action {:?}: use promote, rollback, pause or resume",
            action.chars().take(40).collect::<String>()
        ))
    })?;
    let request: ActionBody = json_body(&state.app, &headers, body).await?;
    state.app.slot(&model)?;
    let actor = Actor {
        token_id: token.0,
        reason: clean_reason(&request.reason),
    };
    let repository: Arc<Repository> = Arc::clone(&state.app.repository);
    // A promotion syncs the model (the version policy may load or retire versions): never on a
    // tokio worker.
    let status =
        tokio::task::spawn_blocking(move || repository.rollout_action(&model, action, &actor))
            .await
            .map_err(|e| ApiError::Internal(format!("rollout task failed: {e}")))??;
    Ok(Json(status).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(
            clean_reason("  bad p99\nFAKE log line "),
            "bad p99 FAKE log line"
        );
        assert_eq!(clean_reason(""), "no reason given");
        assert_eq!(clean_reason(&"x".repeat(1000)).len(), MAX_REASON_CHARS);
    }

    #[test]
    fn token_ids_are_eight_hex_digits() {
        let digest = [0xab; 32];
        assert_eq!(TokenId::of_digest(&digest).0, "abababab");
    }
}
