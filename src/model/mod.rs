//! The model contract: what every architecture implements and everything above it uses.
//!
//! A [`Model`] is a runnable network with its weights. Requests reach it as [`HostTensor`]s
//! aligned with its [`Signature`]; [`Model::prepare`] checks one request on the request path and
//! turns client mistakes into an [`InputError`] (HTTP 400), and [`Model::forward`] runs several
//! prepared requests as one batch on the compute thread. This module sits at the bottom of the
//! dependency graph: the protocol codecs, the engine and the HTTP layer depend on it and on
//! nothing in `arch`, and it depends on nothing of wick's own.

pub mod naming;
mod tensor;

use std::collections::BTreeMap;

pub use tensor::{common_request_rows, cut_request, HostData, HostTensor, Ints};

/// Element types at the model's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemKind {
    F32,
    I64,
    /// Variable-length byte strings (UTF-8 text for text models).
    Bytes,
}

/// One input or output of a model. `dims` excludes the leading batch dimension; `-1` marks a
/// dimension that varies per request (e.g. sequence length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub kind: ElemKind,
    pub dims: Vec<i64>,
    pub optional: bool,
    /// BYTES inputs: the most bytes of an element the model reads (a text model's byte budget).
    /// Decoders keep only that much (plus a character, so the model sees the element was
    /// longer), whatever the client sends.
    pub max_bytes: Option<usize>,
    /// INT64 inputs that index a table: every value must lie in `0..bound`. Decoders refuse the
    /// first value outside at its element, and keep the values in 4 bytes ([`HostData::Ids`]).
    pub indices: Option<IndexBound>,
}

/// The size of the table an INT64 input indexes, and what the error says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexBound {
    pub bound: u32,
    /// The config field (or rule) the bound comes from, e.g. `vocab_size` or `0 or 1`.
    pub what: &'static str,
}

impl IoSpec {
    pub fn new(name: &str, kind: ElemKind, dims: &[i64]) -> IoSpec {
        IoSpec {
            name: name.to_string(),
            kind,
            dims: dims.to_vec(),
            optional: false,
            max_bytes: None,
            indices: None,
        }
    }

    pub fn optional(mut self) -> IoSpec {
        self.optional = true;
        self
    }

    pub fn max_bytes(mut self, max_bytes: usize) -> IoSpec {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Declares an INT64 input as indices into a table of `bound` rows (see [`IoSpec::indices`]).
    pub fn indices(mut self, bound: usize, what: &'static str) -> IoSpec {
        self.indices = Some(IndexBound {
            bound: u32::try_from(bound).unwrap_or(u32::MAX),
            what,
        });
        self
    }

    /// Whether a batched shape (batch dimension first) has this spec's rank and fixed dims.
    /// The one rule the protocol decoder and [`common_rows`] both apply.
    pub fn accepts_shape<I>(&self, shape: I) -> bool
    where
        I: IntoIterator<Item = u64>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut shape = shape.into_iter();
        shape.len() == self.dims.len() + 1
            && shape.next().is_some()
            && self
                .dims
                .iter()
                .zip(shape)
                .all(|(want, got)| *want < 0 || *want as u64 == got)
    }

    /// `[-1, 64]`-style text of the batched shape this spec accepts (`-1` = any).
    pub fn shape_text(&self) -> String {
        let mut parts = vec!["-1".to_string()];
        parts.extend(self.dims.iter().map(|d| d.to_string()));
        format!("[{}]", parts.join(", "))
    }
}

/// What a model takes and returns; every tensor is batched along its first dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// Per-request information a model returns beside its outputs (e.g. "this text was truncated").
pub type Notes = BTreeMap<String, serde_json::Value>;

/// One request's inputs after validation by the model: ready to be batched.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Rows this request contributes to a batch.
    pub rows: usize,
    /// Aligned with the signature's inputs (or the model's own internal layout).
    pub tensors: Vec<Option<HostTensor>>,
    pub notes: Notes,
}

/// A request the model cannot run (HTTP 400), with the data to say why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the request has no inputs")]
    NoInputs,
    /// The caller did not align the inputs with the signature (a bug above the model).
    #[error("{got} input slots given for a signature of {expected} inputs")]
    Slots { expected: usize, got: usize },
    #[error("missing required input {input:?}")]
    Missing { input: String },
    #[error("input {input:?} must hold {expected:?} values")]
    Kind { input: String, expected: ElemKind },
    #[error("input {input:?} has shape {shape:?}; the model takes {expected}")]
    Shape {
        input: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("inputs {first:?} and {second:?} have different batch sizes ({first_rows} and {second_rows})")]
    RowMismatch {
        first: String,
        first_rows: usize,
        second: String,
        second_rows: usize,
    },
    #[error("input {input:?} has shape {shape:?} but {other:?} has {other_shape:?}")]
    ShapeMismatch {
        input: String,
        shape: Vec<usize>,
        other: String,
        other_shape: Vec<usize>,
    },
    #[error("input {input:?} has a batch of 0 rows")]
    EmptyBatch { input: String },
    #[error("input {input:?} has an empty dimension: shape {shape:?}")]
    EmptyDimension { input: String, shape: Vec<usize> },
    #[error("input {input:?} has {len} tokens per row; the model takes at most {max} ({limit})")]
    TooLong {
        input: String,
        len: usize,
        max: usize,
        limit: &'static str,
    },
    #[error("input {input:?}: value {value} at index {index} is outside [0, {bound}) ({what})")]
    OutOfRange {
        input: String,
        index: usize,
        value: i64,
        bound: i64,
        what: &'static str,
    },
    #[error("input {input:?} element {index} is not valid UTF-8")]
    NotUtf8 { input: String, index: usize },
    #[error("input {input:?} element {index} cannot be tokenised: {reason}")]
    Tokenize {
        input: String,
        index: usize,
        reason: String,
    },
    #[error("input {input:?} element {index} is longer than the limit of {limit} bytes (truncate = false)")]
    TextTooLong {
        input: String,
        index: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("input {input:?} element {index} has more than {max} tokens (max_seq_length; truncate = false)")]
    TooManyTokens {
        input: String,
        index: usize,
        max: usize,
    },
    #[error("this version has no {file}: send {instead}")]
    MissingAsset {
        file: &'static str,
        instead: &'static str,
    },
    #[error("input \"attention_mask\" row {row} attends to no token")]
    NothingAttended { row: usize },
    /// Inputs that cannot be combined, e.g. `text` and `input_ids` in one request.
    #[error("{0}")]
    Combination(&'static str),
}

/// Files a version has beside `model.safetensors`, by path relative to the version directory,
/// remembering the order they were added in (the architecture's order).
#[derive(Debug, Clone, Default)]
pub struct Assets {
    files: BTreeMap<String, Vec<u8>>,
    order: Vec<String>,
}

impl Assets {
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        if self.files.insert(name.to_string(), bytes).is_none() {
            self.order.push(name.to_string());
        }
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// `(name, bytes)` in the order they were added.
    pub fn order(&self) -> Vec<(&str, &[u8])> {
        self.order
            .iter()
            .filter_map(|n| self.files.get(n).map(|b| (n.as_str(), b.as_slice())))
            .collect()
    }
}

/// Limits of one forward pass, set by the model's batching config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardLimits {
    /// Padded tokens of one pass of a text model (0: no limit).
    pub max_batch_tokens: usize,
}

/// A runnable model with weights.
pub trait Model: Send + Sync {
    /// Checks one request's inputs (aligned with the signature, `None` for an absent optional
    /// input) and turns them into what `forward` batches. Runs before the request is queued,
    /// off the async workers when it can be slow (tokenising): make every client mistake an
    /// [`InputError`] here.
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError>;

    /// Runs several prepared requests as one batch and returns each request's outputs, aligned
    /// with the signature's outputs. An `Err` fails the whole batch; the engine then retries its
    /// requests one by one so one bad request cannot fail the others.
    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>>;

    /// [`Model::forward`] within the engine's limits for one forward pass. Models that split a
    /// batch into several passes (text models group rows by length) keep each pass within
    /// `limits.max_batch_tokens`; the others ignore the limits.
    fn forward_with(
        &self,
        batch: &[&Prepared],
        limits: &ForwardLimits,
    ) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let _ = limits;
        self.forward(batch)
    }

    /// What a prepared request costs a forward pass, in the unit `max_batch_tokens` counts:
    /// padded tokens for text models, rows for the others.
    fn cost(&self, prepared: &Prepared) -> usize {
        prepared.rows
    }

    /// Settings the model resolved when it was built that a client may want to know (e.g. the
    /// pooling a text encoder took from its sentence-transformers files): shown in the model
    /// metadata's `parameters` and in the load log.
    fn parameters(&self) -> Notes {
        Notes::new()
    }

    /// The tokens of `text` as the model's tokenizer makes them (with the special tokens of
    /// its template when `special`), for text models; `None` for models without a tokenizer.
    fn tokens(&self, text: &str, special: bool) -> Option<Result<Vec<Token>, InputError>> {
        let _ = (text, special);
        None
    }
}

/// One token of a text: its id, its text, whether the tokenizer's template added it, and for
/// tokens of the text its byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub span: Option<(usize, usize)>,
}

/// A request with one row of zeros for every required input (variable dimensions set to 1).
pub fn zeros_request(signature: &Signature) -> Vec<Option<HostTensor>> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            if spec.optional {
                return None;
            }
            let mut shape = vec![1usize];
            shape.extend(
                spec.dims
                    .iter()
                    .map(|d| if *d < 0 { 1 } else { *d as usize }),
            );
            Some(HostTensor::zeros(spec.kind, shape))
        })
        .collect()
}

/// Checks the parts of a request every model needs checked: required inputs present, kinds and
/// fixed dimensions as the signature says, and every present input with the same number of
/// rows. Returns that row count.
pub fn common_rows(
    signature: &Signature,
    inputs: &[Option<HostTensor>],
) -> Result<usize, InputError> {
    if inputs.len() != signature.inputs.len() {
        return Err(InputError::Slots {
            expected: signature.inputs.len(),
            got: inputs.len(),
        });
    }
    let mut rows: Option<(usize, &str)> = None;
    for (spec, input) in signature.inputs.iter().zip(inputs) {
        let Some(t) = input else {
            if spec.optional {
                continue;
            }
            return Err(InputError::Missing {
                input: spec.name.clone(),
            });
        };
        if t.data.kind() != spec.kind {
            return Err(InputError::Kind {
                input: spec.name.clone(),
                expected: spec.kind,
            });
        }
        if !spec.accepts_shape(t.shape.iter().map(|d| *d as u64)) {
            return Err(InputError::Shape {
                input: spec.name.clone(),
                shape: t.shape.clone(),
                expected: spec.shape_text(),
            });
        }
        let r = t.rows();
        match rows {
            None => rows = Some((r, &spec.name)),
            Some((other, other_name)) if other != r => {
                return Err(InputError::RowMismatch {
                    first: other_name.to_string(),
                    first_rows: other,
                    second: spec.name.clone(),
                    second_rows: r,
                });
            }
            Some(_) => {}
        }
    }
    match rows {
        Some((0, name)) => Err(InputError::EmptyBatch {
            input: name.to_string(),
        }),
        Some((r, _)) => Ok(r),
        None => Err(InputError::NoInputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                IoSpec::new("a", ElemKind::F32, &[3]),
                IoSpec::new("b", ElemKind::I64, &[-1]).optional(),
            ],
            outputs: vec![IoSpec::new("y", ElemKind::F32, &[1])],
        }
    }

    #[test]
    fn accepts_shape_checks_rank_and_fixed_dims() {
        let spec = IoSpec::new("x", ElemKind::F32, &[3, -1]);
        assert!(spec.accepts_shape([2, 3, 7]));
        assert!(!spec.accepts_shape([2, 4, 7]));
        assert!(!spec.accepts_shape([2, 3]));
        assert_eq!(spec.shape_text(), "[-1, 3, -1]");
    }

    #[test]
    fn common_rows_refuses_each_kind_of_mistake() {
        let a = |rows: usize| Some(HostTensor::zeros(ElemKind::F32, vec![rows, 3]));
        let b = |rows: usize| Some(HostTensor::zeros(ElemKind::I64, vec![rows, 5]));
        assert_eq!(common_rows(&sig(), &[a(2), None]), Ok(2));
        assert_eq!(common_rows(&sig(), &[a(2), b(2)]), Ok(2));
        assert!(matches!(
            common_rows(&sig(), &[None, b(2)]),
            Err(InputError::Missing { .. })
        ));
        assert!(matches!(
            common_rows(&sig(), &[a(2), b(3)]),
            Err(InputError::RowMismatch {
                first_rows: 2,
                second_rows: 3,
                ..
            })
        ));
        assert!(matches!(
            common_rows(&sig(), &[a(0), None]),
            Err(InputError::EmptyBatch { .. })
        ));
        let wrong_kind = Some(HostTensor::zeros(ElemKind::I64, vec![1, 3]));
        assert!(matches!(
            common_rows(&sig(), &[wrong_kind, None]),
            Err(InputError::Kind { .. })
        ));
        let wrong_shape = Some(HostTensor::zeros(ElemKind::F32, vec![1, 4]));
        assert!(matches!(
            common_rows(&sig(), &[wrong_shape, None]),
            Err(InputError::Shape { .. })
        ));
    }
}
