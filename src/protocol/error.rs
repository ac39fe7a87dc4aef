//! Why a request cannot be accepted (HTTP 400), with the data to say so.
//!
//! Anything taken from the request and echoed in a message is clipped ([`clip`]): an error must
//! not repeat a 60 KB name or a 30,000-dimension shape back to the client (docs/security.md).

use super::datatype::Datatype;

/// A request the server cannot accept, with the data to say why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid JSON in request: {0}")]
    Json(String),
    #[error(
        "Inference-Header-Content-Length {header_len} is larger than the body ({body_len} bytes)"
    )]
    HeaderLength { header_len: u64, body_len: u64 },
    #[error("raw binary requests (Inference-Header-Content-Length: 0) are not supported; send a JSON header first")]
    RawBinary,
    #[error("the request has no \"inputs\"")]
    NoInputs,
    #[error("duplicate field `{0}`: it appears more than once")]
    DuplicateField(&'static str),
    #[error("{field} is longer than {limit} bytes")]
    TooLong { field: &'static str, limit: usize },
    #[error("unknown input {name:?}; the model's inputs are {known}")]
    UnknownInput { name: String, known: String },
    #[error("input {0:?} appears more than once")]
    DuplicateInput(String),
    #[error("an input without a \"{0}\"")]
    MissingField(&'static str),
    #[error("unknown output {name:?}; the model's outputs are {known}")]
    UnknownOutput { name: String, known: String },
    #[error("output {0:?} is requested more than once")]
    DuplicateOutput(String),
    #[error("input {input:?}: unknown datatype {datatype:?} (datatypes are upper case, e.g. FP32, INT64, BYTES)")]
    UnknownDatatype { input: String, datatype: String },
    #[error("input {input:?}: datatype {datatype} cannot be converted to the model's {expected} without loss{hint}")]
    DatatypeRefused {
        input: String,
        datatype: Datatype,
        expected: Datatype,
        hint: &'static str,
    },
    #[error("input {input:?}: shape {shape:?} does not match the model's {expected}")]
    Shape {
        input: String,
        shape: Vec<u64>,
        expected: String,
    },
    #[error("input {input:?} has {rows} rows; the model takes at most {limit} per request (max_request_rows)")]
    Rows {
        input: String,
        rows: u64,
        limit: u64,
    },
    #[error("input {input:?}: the shape has more than {limit} dimensions")]
    Rank { input: String, limit: usize },
    #[error("input {input:?}: shape {shape:?} holds {expected} elements but data has {actual}")]
    ElementCount {
        input: String,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },
    #[error("input {input:?}: data holds more than the {expected} elements its shape {shape:?} declares")]
    TooMuchData {
        input: String,
        shape: Vec<u64>,
        expected: u64,
    },
    #[error(
        "input {input:?}: nested data has shape {nested:?} but the declared shape is {shape:?}"
    )]
    NestedShape {
        input: String,
        nested: Vec<usize>,
        shape: Vec<u64>,
    },
    #[error("the request's tensors hold {elements} elements, above the limit of {limit}")]
    TooManyElements { elements: u64, limit: u64 },
    #[error("the request's BYTES tensors hold more than {limit} strings")]
    TooManyStrings { limit: u64 },
    #[error("input {input:?}: value {value} at index {index} is outside [0, {bound}) ({what})")]
    OutOfRange {
        input: String,
        index: usize,
        value: i128,
        bound: u32,
        what: &'static str,
    },
    #[error("input {input:?}: value {value} at index {index} {reason}")]
    Value {
        input: String,
        index: usize,
        value: String,
        reason: &'static str,
    },
    #[error("input {input:?}: {reason}")]
    Data { input: String, reason: String },
    #[error("input {input:?}: binary_data_size is {size} bytes but the shape {shape:?} of {datatype} needs {expected}")]
    BinarySize {
        input: String,
        size: u64,
        shape: Vec<u64>,
        datatype: Datatype,
        expected: u64,
    },
    #[error("input {input:?}: binary_data_size {size} runs past the end of the body")]
    BinaryPastEnd { input: String, size: u64 },
    #[error("the body has {0} bytes after the last binary input")]
    TrailingBinary(u64),
    #[error("{what} has more than {limit} entries")]
    TooMany { what: &'static str, limit: usize },
    #[error("parameter {name:?}: {reason}")]
    Parameter { name: String, reason: String },
    #[error("{0} is not supported by wick")]
    Unsupported(&'static str),
    #[error("the body could not be read: {0}")]
    Read(String),
    #[error("the body is larger than the limit of {limit} bytes once decompressed")]
    Inflated { limit: usize },
}

/// The most bytes of client-supplied text an error message repeats.
pub const CLIP_BYTES: usize = 128;

/// Client-supplied text echoed in an error is cut short, on a character boundary.
pub fn clip(text: &str) -> String {
    clip_to(text, CLIP_BYTES)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when it was cut.
pub fn clip_to(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
