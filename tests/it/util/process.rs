//! Child processes: the `wick` binary the CLI tests run, and a test that measures the process it
//! runs in (resident memory, descriptors, mappings) run alone in a child process of this test
//! binary, since the other tests share the parent and would move its figures.

use std::process::Command;

/// The `wick` binary cargo built for these tests.
pub fn wick() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wick"))
}

/// Set in the child process to the name of the one test it runs.
const ALONE: &str = "WICK_IT_ALONE";

/// Runs `body` in a process of its own: called from the test named `test` (as the runner names
/// it: `module::function`), it starts this test binary again with only that test selected, and
/// passes if it passed there; in that child it runs `body`. The child's output is printed.
pub fn alone(test: &str, body: impl FnOnce()) {
    if std::env::var(ALONE).as_deref() == Ok(test) {
        body();
        return;
    }
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(binary)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{test} failed in its own process:\n{stdout}\n{stderr}"
    );
    // A renamed test would select nothing and "pass": it must have run, once.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its own process:\n{stdout}"
    );
}
