//! The promotion settings of a model: the tolerances its golden outputs are checked with
//! (`golden = { max_abs, min_cosine, argmax_agreement }`) and its rollout (`rollout =
//! { canary_percent | shadow_percent, promote_after_s, max_error_rate, max_p99_ratio,
//! min_requests }`). Parsing and validation only; the gate lives in src/repository/golden.rs,
//! the rollout in src/repository/rollout.rs, src/repository/canary.rs and
//! src/repository/shadow.rs, and docs/promotion.md explains them.
//!
//! A rollout is a canary *or* a shadow, never both: a canary lets the candidate answer clients,
//! a shadow promises that it never does, and one rollout cannot keep both promises for the same
//! request. Setting both is refused with a message saying so.

use std::time::Duration;

use serde::Deserialize;

/// How close a version's outputs must be to the ones its `golden.safetensors` stores.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GoldenTolerance {
    /// The largest absolute difference allowed at any element.
    pub max_abs: f64,
    /// The smallest cosine similarity allowed between an output row and its golden row.
    pub min_cosine: f64,
    /// The smallest share of rows whose argmax must equal the golden row's argmax.
    pub argmax_agreement: f64,
}

impl Default for GoldenTolerance {
    /// Tight enough that another epoch or a forgotten normalisation fails, loose enough that
    /// the same weights on another CPU (a different summation order) pass.
    fn default() -> Self {
        GoldenTolerance {
            max_abs: 1e-4,
            min_cosine: 0.9999,
            argmax_agreement: 1.0,
        }
    }
}

/// The `golden` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGolden {
    max_abs: Option<f64>,
    min_cosine: Option<f64>,
    argmax_agreement: Option<f64>,
}

impl RawGolden {
    /// The tolerances with defaults filled in; an error text names the bad field.
    pub(super) fn resolve(self) -> Result<GoldenTolerance, String> {
        let d = GoldenTolerance::default();
        let t = GoldenTolerance {
            max_abs: self.max_abs.unwrap_or(d.max_abs),
            min_cosine: self.min_cosine.unwrap_or(d.min_cosine),
            argmax_agreement: self.argmax_agreement.unwrap_or(d.argmax_agreement),
        };
        if !(t.max_abs >= 0.0 && t.max_abs.is_finite()) {
            return Err(format!(
                "golden.max_abs must be a finite number >= 0, not {}",
                t.max_abs
            ));
        }
        if !(-1.0..=1.0).contains(&t.min_cosine) {
            return Err(format!(
                "golden.min_cosine must be within [-1, 1], not {}",
                t.min_cosine
            ));
        }
        if !(0.0..=1.0).contains(&t.argmax_agreement) {
            return Err(format!(
                "golden.argmax_agreement must be within [0, 1], not {}",
                t.argmax_agreement
            ));
        }
        Ok(t)
    }
}

/// Whether the candidate answers clients (canary) or computes on copies (shadow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    Canary,
    Shadow,
}

impl RolloutMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMode::Canary => "canary",
            RolloutMode::Shadow => "shadow",
        }
    }
}

/// The bounds of one model's rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutPolicy {
    /// Share of the requests that name no version sent to the candidate, in percent (0, 100];
    /// 0 in shadow mode.
    pub canary_percent: f64,
    /// Share of the requests that name no version copied to the candidate, in percent
    /// (0, 100]; 0 in canary mode.
    pub shadow_percent: f64,
    pub promote_after: Duration,
    pub max_error_rate: f64,
    pub max_p99_ratio: f64,
    /// Requests the candidate (and, for the latency bound, the stable version) needs before a
    /// bound is judged or the candidate promoted.
    pub min_requests: u64,
}

/// The `rollout` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    canary_percent: Option<f64>,
    shadow_percent: Option<f64>,
    #[serde(default = "default_promote_after_s")]
    promote_after_s: u64,
    #[serde(default = "default_max_error_rate")]
    max_error_rate: f64,
    #[serde(default = "default_max_p99_ratio")]
    max_p99_ratio: f64,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
}

impl RolloutPolicy {
    pub fn mode(&self) -> RolloutMode {
        if self.shadow_percent > 0.0 {
            RolloutMode::Shadow
        } else {
            RolloutMode::Canary
        }
    }
}

fn default_promote_after_s() -> u64 {
    300
}

fn default_max_error_rate() -> f64 {
    0.01
}

fn default_max_p99_ratio() -> f64 {
    2.0
}

fn default_min_requests() -> u64 {
    20
}

impl RawRollout {
    pub(super) fn resolve(self) -> Result<RolloutPolicy, String> {
        let (name, percent) = match (self.canary_percent, self.shadow_percent) {
            (Some(_), Some(_)) => {
                return Err("rollout: set canary_percent or shadow_percent, not both (a canary's candidate answers clients, a shadow's never does)".to_string())
            }
            (None, None) => {
                return Err("rollout: set canary_percent (the candidate answers that share of requests) or shadow_percent (it computes on copies of that share)".to_string())
            }
            (Some(p), None) => ("canary_percent", p),
            (None, Some(p)) => ("shadow_percent", p),
        };
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(format!(
                "rollout.{name} must be within (0, 100], not {percent}"
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(format!(
                "rollout.max_error_rate must be within [0, 1], not {}",
                self.max_error_rate
            ));
        }
        if !(self.max_p99_ratio >= 1.0 && self.max_p99_ratio.is_finite()) {
            return Err(format!(
                "rollout.max_p99_ratio must be a finite number >= 1, not {}",
                self.max_p99_ratio
            ));
        }
        Ok(RolloutPolicy {
            canary_percent: self.canary_percent.unwrap_or(0.0),
            shadow_percent: self.shadow_percent.unwrap_or(0.0),
            promote_after: Duration::from_secs(self.promote_after_s),
            max_error_rate: self.max_error_rate,
            max_p99_ratio: self.max_p99_ratio,
            min_requests: self.min_requests.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(text: &str) -> Result<RolloutPolicy, String> {
        let raw: RawRollout = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.resolve()
    }

    #[test]
    fn a_rollout_is_a_canary_or_a_shadow_never_both() {
        let canary = rollout("canary_percent = 10").unwrap();
        assert_eq!(
            (canary.mode(), canary.shadow_percent),
            (RolloutMode::Canary, 0.0)
        );
        let shadow = rollout("shadow_percent = 20\npromote_after_s = 60").unwrap();
        assert_eq!(shadow.mode(), RolloutMode::Shadow);
        assert_eq!((shadow.canary_percent, shadow.shadow_percent), (0.0, 20.0));
        assert_eq!(shadow.promote_after, Duration::from_secs(60));
        let both = rollout("canary_percent = 10\nshadow_percent = 20").unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let neither = rollout("promote_after_s = 60").unwrap_err();
        assert!(neither.contains("shadow_percent"), "{neither}");
        let bad = rollout("shadow_percent = 0").unwrap_err();
        assert!(
            bad.contains("rollout.shadow_percent must be within (0, 100]"),
            "{bad}"
        );
    }
}
