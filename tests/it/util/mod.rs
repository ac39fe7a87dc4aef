//! The helpers every area of the integration tests shares: temporary repositories and their
//! configs ([`repo`]), real servers on port 0 and a small HTTP client ([`server`]), fixture
//! readers, request builders and comparisons ([`tensors`]), text models' inputs and references
//! ([`text`]), the numeric cases of the architecture catalogue ([`catalogue`]), child processes
//! ([`process`]) and a slow test architecture ([`slow`]).

pub mod catalogue;
pub mod process;
pub mod python;
pub mod repo;
pub mod server;
pub mod slow;
pub mod tensors;
pub mod text;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use repo::{config_text, demo_models, simple_with, Repo, DIGITS, SIMPLE};
pub use server::{TestServer, TOKEN};
pub use tensors::{
    assert_close, assert_error, f32_tensor, f32s, infer_request, model_version, output_f32,
    raw_tensors, read_tensors, simple_io, write_safetensors, Tolerance, Values,
};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `models/<name>/<version>/model.safetensors` of the committed demo repository.
pub fn demo_model(name: &str, version: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .join(version.to_string())
        .join("model.safetensors")
}

/// How long a test waits for something the server does in the background (a reload, a queue
/// filling up) before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `f` holds (a state of the server the test can observe directly, such as a queue
/// length), failing the test after [`WAIT`].
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    assert!(
        eventually(WAIT, || std::future::ready(f())).await,
        "timed out waiting for {what}"
    );
}
