//! NVIDIA's own Python client, `tritonclient[http]`, against a real wick (see
//! tests/python/tritonclient_compat.py for what it checks). The Python comes from
//! `WICK_TEST_PYTHON` (scripts/test.sh creates a venv with tests/python/requirements.txt), else
//! `python3`; a Python without tritonclient fails the test with instructions, never skips it.

use crate::util::python::run_python;
use crate::util::{demo_models, Repo, TestServer, TOKEN};

#[tokio::test]
async fn tritonclient_http_works_against_wick() {
    let repo = Repo::demo();
    let server = TestServer::start_admin(repo.config("", &demo_models())).await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (url, admin) = (
        server.server().addr.to_string(),
        server.server().admin_addr.unwrap().to_string(),
    );
    let stdout = run_python(
        "tritonclient_compat.py",
        &[&url, &admin, TOKEN, fixtures],
        "tritonclient",
    )
    .await;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    server.shutdown().await;
}
