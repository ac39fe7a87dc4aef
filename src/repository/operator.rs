//! Operators' control of a running rollout (admin listener, src/http/rollout.rs): promote the
//! candidate now, roll it back now, pause or resume the rollout. Each action names who asked
//! (a token id, never the token) and why, and is logged with both.
//!
//! Promotion and rollback go through the same code as the automatic decision
//! (src/repository/canary.rs): a rollback marks the candidate's files failed (and remembers
//! them in the `state_dir`), a promotion lets the version policy retire the old version. Pausing
//! stops automatic promotion only; the bounds still roll a bad candidate back.

use serde::Serialize;

use super::rollout::RollbackReason;
use super::{lock, ModelSlot, Repository};

/// What an operator asks of a model's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Promote,
    Rollback,
    Pause,
    Resume,
}

impl RolloutAction {
    /// The action named in a route (`promote`, `rollback`, `pause`, `resume`).
    pub fn parse(text: &str) -> Option<RolloutAction> {
        Some(match text {
            "promote" => RolloutAction::Promote,
            "rollback" => RolloutAction::Rollback,
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Promote => "promote",
            RolloutAction::Rollback => "rollback",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
        }
    }
}

/// Why an operator action was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {0:?} has no rollout in progress")]
    NoRollout(String),
}

/// The answer to an operator action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatus {
    pub model: String,
    pub action: &'static str,
    pub candidate: u64,
    pub stable: u64,
    pub mode: &'static str,
    /// The rollout's state after the action: `promoted`, `rolled_back`, `paused` or `running`.
    pub state: &'static str,
}

/// Who asked and why, as the logs and the rollback reason name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub token_id: String,
    pub reason: String,
}

impl Repository {
    /// Applies `action` to the rollout of `model`.
    pub fn rollout_action(
        &self,
        model: &str,
        action: RolloutAction,
        actor: &Actor,
    ) -> Result<RolloutStatus, RolloutError> {
        let slot = self
            .get(model)
            .ok_or_else(|| RolloutError::UnknownModel(model.to_string()))?;
        let status = {
            let _ops = lock(&slot.ops);
            let status = self.act_locked(&slot, action, actor)?;
            self.publish(&slot);
            status
        };
        match action {
            RolloutAction::Promote => self.promoted(&slot, "operator_promote"),
            RolloutAction::Rollback => self.reap(),
            RolloutAction::Pause | RolloutAction::Resume => {}
        }
        Ok(status)
    }

    /// The state change of [`Repository::rollout_action`], under the model's `ops` lock.
    fn act_locked(
        &self,
        slot: &ModelSlot,
        action: RolloutAction,
        actor: &Actor,
    ) -> Result<RolloutStatus, RolloutError> {
        let mut st = lock(&slot.state);
        let Some(active) = st.rollout.as_mut() else {
            return Err(RolloutError::NoRollout(slot.name.clone()));
        };
        let (candidate, stable, mode) = (active.candidate, active.stable, active.mode().as_str());
        tracing::warn!(model = %slot.name, candidate, stable, mode, action = action.as_str(),
            token_id = %actor.token_id, reason = %actor.reason, "operator rollout action");
        let state = match action {
            RolloutAction::Pause => {
                active.paused = Some(format!("token {}: {}", actor.token_id, actor.reason));
                "paused"
            }
            RolloutAction::Resume => {
                active.paused = None;
                "running"
            }
            RolloutAction::Promote => {
                st.rollout = None;
                "promoted"
            }
            RolloutAction::Rollback => {
                let Some(active) = st.rollout.take() else {
                    return Err(RolloutError::NoRollout(slot.name.clone()));
                };
                let reason = RollbackReason::Operator {
                    token_id: actor.token_id.clone(),
                    reason: actor.reason.clone(),
                };
                self.roll_back(slot, &mut st, &active, reason);
                "rolled_back"
            }
        };
        Ok(RolloutStatus {
            model: slot.name.clone(),
            action: action.as_str(),
            candidate,
            stable,
            mode,
            state,
        })
    }
}
