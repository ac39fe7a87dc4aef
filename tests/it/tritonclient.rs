//! NVIDIA's own Python client, `tritonclient[http]`, against a real wick (see
//! tests/python/tritonclient_compat.py for what it checks). The Python comes from
//! `WICK_TEST_PYTHON` (scripts/test.sh creates a venv with tests/python/requirements.txt), else
//! `python3`; a Python without tritonclient fails the test with instructions, never skips it.

use crate::util::{demo_models, Repo, TestServer, TOKEN};

#[tokio::test]
async fn tritonclient_http_works_against_wick() {
    let repo = Repo::demo();
    let server = TestServer::start_admin(repo.config("", &demo_models())).await;
    let python = std::env::var("WICK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/tritonclient_compat.py"
    );
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (url, admin) = (
        server.server().addr.to_string(),
        server.server().admin_addr.unwrap().to_string(),
    );
    // The client runs on the blocking pool: the test's runtime thread keeps serving meanwhile.
    let command = python.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&command)
            .args([script, &url, &admin, TOKEN, fixtures])
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!("cannot run {python}: {e}; run scripts/test.sh, which creates the test venv")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'tritonclient'") {
        panic!("{python} has no tritonclient: run scripts/test.sh, or pip install -r tests/python/requirements.txt and set WICK_TEST_PYTHON");
    }
    assert!(
        output.status.success(),
        "tritonclient checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    server.shutdown().await;
}
