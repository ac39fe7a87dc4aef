//! The promotion settings of a model: the tolerances its golden outputs are checked with
//! (`golden = { max_abs, min_cosine, argmax_agreement }`). Parsing and validation only; the gate
//! itself lives in src/repository/golden.rs and docs/promotion.md explains the rules.

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
