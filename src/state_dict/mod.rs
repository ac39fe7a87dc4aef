//! Checkpoints as data: safetensors state dicts, checked strictly before a byte is copied.
//!
//! - [`header`]: header-first validation of the file format (duplicates, unknown fields, caps,
//!   exact tiling, truncation, trailing bytes, foreign formats such as pickles);
//! - [`mapping`]: `strip_prefix` and `ignore` patterns between checkpoint and model names;
//! - [`recording`]: the recording backend that learns what an architecture expects;
//! - [`report`]: the comparison and the [`LoadReport`] that lists every problem at once;
//! - [`load`]: reading from disk: header, comparison, copy out, sha256;
//! - [`stream`]: the copy through a bounded window of positioned reads.
//!
//! Nothing here knows about HTTP or the model registry.

pub mod header;
pub mod load;
pub mod mapping;
pub mod recording;
pub mod report;
pub mod stream;

pub use header::{FileDtype, ForeignFormat, FormatError, Header, HeaderLimits, TensorEntry};
pub use load::{
    check, hex, load, read_header, read_small, FileIdentity, LoadError, LoadedStateDict,
};
pub use mapping::{Glob, KeyMapping};
pub use recording::{record, RecordError};
pub use report::{ExpectedSpec, LoadReport, ParamSpec};
