//! Runs the Python client checks of tests/python/ against a running server. The Python comes
//! from `WICK_TEST_PYTHON` (scripts/test.sh creates a venv with tests/python/requirements.txt),
//! else `python3`; a Python without the client package fails the test with instructions, never
//! skips it.

/// Runs tests/python/`script` with `args` on the blocking pool (the test's runtime keeps serving
/// meanwhile) and returns its stdout; panics with both streams if it fails. `package` is the
/// import the script needs, named in the failure when it is missing.
pub async fn run_python(script: &str, args: &[&str], package: &str) -> String {
    let python = std::env::var("WICK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let command = python.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&command)
            .arg(&path)
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!("cannot run {python}: {e}; run scripts/test.sh, which creates the test venv")
    });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains(&format!("No module named '{package}'")) {
        panic!("{python} has no {package}: run scripts/test.sh, or pip install -r tests/python/requirements.txt and set WICK_TEST_PYTHON");
    }
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    stdout
}
