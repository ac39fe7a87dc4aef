//! The rollout decision for a candidate version as a pure function: what was observed of the
//! candidate and the stable version in, "continue", "promote" or "roll back, because ..." out.
//! No clocks, locks or requests here (like src/repository/plan.rs), so every rule is a unit test
//! below.
//!
//! src/repository/canary.rs applies the decisions to a running rollout; src/repository/shadow.rs
//! produces the shadow comparisons ([`Agreement`], accumulated by [`Tally`]).
//!
//! The rules:
//! - a candidate is rolled back as soon as a bound breaks, once it has at least
//!   `min_requests` of evidence (a single early failure says little): its error rate above
//!   `max_error_rate`, its p99 above `max_p99_ratio` times the stable version's (when both have
//!   enough requests), or, in shadow mode, its outputs outside the golden tolerances;
//! - rollback is checked even while the rollout is paused (pausing stops promotion, never the
//!   safety net);
//! - otherwise it is promoted once `promote_after` has passed with at least `min_requests` of
//!   evidence, unless paused; with less evidence it keeps waiting;
//! - which requests go to the candidate is decided by a hash of the request id, so a retry
//!   with the same id lands on the same version.

use std::time::Duration;

use serde::Serialize;

use crate::config::GoldenTolerance;
pub use crate::config::RolloutPolicy;

/// What was observed of one version since the rollout started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub p99: Option<Duration>,
}

/// The shadow comparison of the candidate's outputs with the stable version's, aggregated
/// like a golden report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    pub samples: u64,
    pub max_abs_diff: f64,
    pub min_cosine: f64,
    pub argmax_agreement: f64,
}

/// Everything one decision depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub elapsed: Duration,
    pub candidate: Window,
    pub stable: Window,
    /// Shadow mode's comparison (`None` for a canary).
    pub agreement: Option<Agreement>,
    pub paused: bool,
}

/// The running sum of shadow comparisons, one request at a time: the worst difference and
/// cosine seen, and the share of rows whose argmax agreed over every compared output.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    samples: u64,
    rows: u64,
    agreeing_rows: u64,
    max_abs_diff: Option<f64>,
    min_cosine: Option<f64>,
}

impl Tally {
    /// Adds one compared request: the comparison of each of its outputs (stable as expected,
    /// candidate as produced), from [`super::golden::compare`]. A NaN sticks: once a NaN was
    /// seen, the statistic stays NaN and breaks every bound.
    pub fn add(&mut self, outputs: &[super::golden::OutputComparison]) {
        self.samples += 1;
        for o in outputs {
            let rows = o.shape.first().copied().unwrap_or(1).max(1) as u64;
            self.rows += rows;
            // The share times the rows is a whole number of rows, up to rounding.
            self.agreeing_rows += (o.argmax_agreement * rows as f64).round() as u64;
            self.max_abs_diff = Some(match self.max_abs_diff {
                None => o.max_abs_diff,
                Some(m) => sticky(m, o.max_abs_diff, f64::max),
            });
            self.min_cosine = Some(match self.min_cosine {
                None => o.min_cosine,
                Some(m) => sticky(m, o.min_cosine, f64::min),
            });
        }
    }

    /// The comparison so far (a perfect one while nothing was compared).
    pub fn agreement(&self) -> Agreement {
        Agreement {
            samples: self.samples,
            max_abs_diff: self.max_abs_diff.unwrap_or(0.0),
            min_cosine: self.min_cosine.unwrap_or(1.0),
            argmax_agreement: if self.rows == 0 {
                1.0
            } else {
                self.agreeing_rows as f64 / self.rows as f64
            },
        }
    }
}

fn sticky(a: f64, b: f64, pick: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        pick(a, b)
    }
}

/// Why a candidate was rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "bound", rename_all = "snake_case")]
pub enum RollbackReason {
    #[error("error rate {rate:.4} over {requests} requests is above max_error_rate {max}")]
    ErrorRate { rate: f64, requests: u64, max: f64 },
    #[error("p99 {candidate_ms:.3} ms is {ratio:.2}x the stable version's {stable_ms:.3} ms, above max_p99_ratio {max}")]
    Latency {
        candidate_ms: f64,
        stable_ms: f64,
        ratio: f64,
        max: f64,
    },
    #[error("shadow outputs disagree over {} samples: max abs diff {:.3e} (allowed {:e}), min cosine {:.6} (at least {}), argmax agreement {:.4} (at least {})",
        .agreement.samples, .agreement.max_abs_diff, .tolerance.max_abs, .agreement.min_cosine,
        .tolerance.min_cosine, .agreement.argmax_agreement, .tolerance.argmax_agreement)]
    Disagreement {
        agreement: Agreement,
        tolerance: GoldenTolerance,
    },
    /// An operator asked for it on the admin listener (src/http/rollout.rs).
    #[error("rolled back by an operator (token {token_id}): {reason}")]
    Operator { token_id: String, reason: String },
}

impl RollbackReason {
    /// The bound that broke, as the `outcome` label of `wick_rollouts_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RollbackReason::ErrorRate { .. } => "error_rate",
            RollbackReason::Latency { .. } => "latency",
            RollbackReason::Disagreement { .. } => "disagreement",
            RollbackReason::Operator { .. } => "operator_rollback",
        }
    }
}

/// What to do with the candidate now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    Promote,
    RollBack(RollbackReason),
}

/// The decision for one observation (see the module's rules).
pub fn decide(policy: &RolloutPolicy, tolerance: &GoldenTolerance, seen: &Observation) -> Decision {
    if let Some(reason) = broken_bound(policy, tolerance, seen) {
        return Decision::RollBack(reason);
    }
    let evidence = match seen.agreement {
        Some(a) => a.samples,
        None => seen.candidate.requests,
    };
    if !seen.paused && seen.elapsed >= policy.promote_after && evidence >= policy.min_requests {
        return Decision::Promote;
    }
    Decision::Continue
}

fn broken_bound(
    policy: &RolloutPolicy,
    tolerance: &GoldenTolerance,
    seen: &Observation,
) -> Option<RollbackReason> {
    let enough = |n: u64| n >= policy.min_requests.max(1);
    let c = &seen.candidate;
    if enough(c.requests) {
        let rate = c.errors as f64 / c.requests as f64;
        if rate > policy.max_error_rate {
            return Some(RollbackReason::ErrorRate {
                rate,
                requests: c.requests,
                max: policy.max_error_rate,
            });
        }
    }
    if let (true, true, Some(cp), Some(sp)) = (
        enough(c.requests),
        enough(seen.stable.requests),
        c.p99,
        seen.stable.p99,
    ) {
        let (candidate_ms, stable_ms) = (cp.as_secs_f64() * 1e3, sp.as_secs_f64() * 1e3);
        // A stable p99 of zero (a clock that did not tick) compares as one microsecond.
        let ratio = candidate_ms / stable_ms.max(1e-3);
        if ratio > policy.max_p99_ratio {
            return Some(RollbackReason::Latency {
                candidate_ms,
                stable_ms,
                ratio,
                max: policy.max_p99_ratio,
            });
        }
    }
    if let Some(a) = seen.agreement.filter(|a| enough(a.samples)) {
        // Written so that a NaN statistic breaks the bound.
        let within = a.max_abs_diff <= tolerance.max_abs
            && a.min_cosine >= tolerance.min_cosine
            && a.argmax_agreement >= tolerance.argmax_agreement;
        if !within {
            return Some(RollbackReason::Disagreement {
                agreement: a,
                tolerance: *tolerance,
            });
        }
    }
    None
}

/// Whether the request with `id` goes to the candidate: FNV-1a of the id, mapped onto
/// 10,000 buckets, below `percent` of them. The same id always gets the same answer.
pub fn routes_to_candidate(id: &[u8], percent: f64) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys that differ in their last byte; fold the high
    // half in before taking the bucket.
    let bucket = (hash ^ (hash >> 32)) % 10_000;
    (bucket as f64) < percent * 100.0
}

/// The 99th percentile (nearest rank) of `samples`, sorting them in place.
pub fn p99(samples: &mut [Duration]) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (samples.len() as f64 * 0.99).ceil() as usize;
    samples.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests;
