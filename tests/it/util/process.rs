//! Child processes: the `wick` binary the CLI tests run, and a test that measures the process it
//! runs in (resident memory, descriptors, mappings) run alone in a child process of this test
//! binary, since the other tests share the parent and would move its figures.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use wick::bench::Target;

use super::{demo_models, Repo};

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

/// A `wick serve` child process and the address it listens on.
pub struct Process {
    pub child: Child,
    pub addr: String,
    /// The admin listener's address, when `admin_listen` is set.
    admin: Option<String>,
    /// The gRPC listener's address, when `grpc_listen` is set.
    grpc: Option<String>,
    /// Every line the process logged so far.
    log: Arc<Mutex<Vec<String>>>,
    repo: Repo,
}

impl Process {
    /// Serves the demo models with `extra_server` lines in `[server]`.
    pub fn start(extra_server: &str) -> Process {
        let repo = Repo::demo();
        let models = demo_models();
        Process::start_with(repo, extra_server, &models)
    }

    /// Serves `models` from `repo`.
    pub fn start_with(repo: Repo, extra_server: &str, models: &str) -> Process {
        Process::start_logged(repo, extra_server, models, &[])
    }

    /// Serves `models` from `repo` with `env` set for the child (e.g. `WICK_ADMIN_TOKEN`),
    /// keeping every line it logs.
    pub fn start_logged(
        repo: Repo,
        extra_server: &str,
        models: &str,
        env: &[(&str, &str)],
    ) -> Process {
        let config = repo.write_config(extra_server, models);
        let mut command = wick();
        command
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        // The startup log line names the bound addresses (port 0 was asked for).
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(listen) = value["listen"].as_str() {
                        let optional = |key: &str| {
                            value[key]
                                .as_str()
                                .and_then(|a| a.strip_prefix("Some(")?.strip_suffix(')'))
                                .map(str::to_string)
                        };
                        let _ = tx.send((listen.to_string(), optional("admin"), optional("grpc")));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (addr, admin, grpc) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("wick serve logged its address");
        Process {
            child,
            addr,
            admin,
            grpc,
            log,
            repo,
        }
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> String {
        self.admin.clone().expect("admin_listen is set")
    }

    /// The gRPC listener's address.
    pub fn grpc_addr(&self) -> String {
        self.grpc.clone().expect("grpc_listen is set")
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The first logged line `matches` accepts, waiting at most `limit` for it.
    pub fn wait_for_log(&self, limit: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| matches(l))
                .cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn target(&self) -> Target {
        Target::parse(&format!("http://{}", self.addr)).unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit code, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
