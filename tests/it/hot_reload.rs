//! Hot reload through the watcher, under load: new versions go live without a failed request,
//! broken versions never replace good ones, careless publishers and vanishing directories are
//! survived, and config changes apply without a restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{
    assert_error, demo_model, demo_models, eventually, fixture, output_f32, read_tensors,
    simple_with, Repo, TestServer, Tolerance, SIMPLE, WAIT,
};
use serde_json::{json, Value};

struct Io {
    x: Vec<f32>,
    y1: Vec<f32>,
    y2: Vec<f32>,
}

fn io() -> Io {
    let v1 = read_tensors(&fixture("simple_io.safetensors"));
    let v2 = read_tensors(&fixture("simple_v2_io.safetensors"));
    Io {
        x: v1["x"].1.f32().to_vec(),
        y1: v1["y"].1.f32().to_vec(),
        y2: v2["y"].1.f32().to_vec(),
    }
}

fn v1() -> std::path::PathBuf {
    demo_model("simple", 1)
}

fn v2() -> std::path::PathBuf {
    fixture("simple_v2.safetensors")
}

/// A server of `simple` over a new repository holding version 1, with the repository API if
/// `admin`.
async fn server_with_v1(admin: bool) -> (TestServer, Repo) {
    let repo = Repo::new();
    repo.install("simple", 1, &v1());
    let config = repo.config("", SIMPLE);
    let server = if admin {
        TestServer::start_admin(config).await
    } else {
        TestServer::start(config).await
    };
    (server, repo)
}

/// (status, version, outputs) of one inference of the fixture input.
async fn infer(server: &TestServer, x: &[f32]) -> Answer {
    let (status, answer) = server.infer_f32("simple", "input", &[8, 10], x).await;
    if status != 200 {
        return (status, String::new(), Vec::new());
    }
    let version = answer["model_version"].as_str().unwrap().to_string();
    (status, version, output_f32(&answer, "output"))
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| Tolerance::Absolute(1e-5).allows(*x, *y))
}

/// (status, version, outputs) of one answer.
type Answer = (u16, String, Vec<f32>);

/// Clients that query continuously until stopped, recording every answer.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Load {
    fn start(server: &Arc<TestServer>, clients: usize, x: &[f32]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (server, stop, answers, x) = (
                    Arc::clone(server),
                    Arc::clone(&stop),
                    Arc::clone(&answers),
                    x.to_vec(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = infer(&server, &x).await;
                        answers.lock().unwrap().push(answer);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            answers,
        }
    }

    fn seen(&self, version: &str) -> bool {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v, _)| v == version)
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap()
    }
}

/// Every answer succeeded and carries the outputs of the version it names.
fn check_answers(answers: &[Answer], io: &Io) {
    assert!(!answers.is_empty());
    for (status, version, output) in answers {
        assert_eq!(*status, 200, "a request failed during the swap");
        match version.as_str() {
            "1" => assert!(close(output, &io.y1), "version 1 answered {output:?}"),
            "2" => assert!(close(output, &io.y2), "version 2 answered {output:?}"),
            other => panic!("unexpected version {other}"),
        }
    }
}

async fn serving(server: &TestServer, x: &[f32], version: &str, expected: &[f32]) -> bool {
    let (status, v, out) = infer(server, x).await;
    status == 200 && v == version && close(&out, expected)
}

#[tokio::test]
async fn a_new_version_goes_live_under_load_without_a_failed_request() {
    let io = io();
    let (server, repo) = server_with_v1(false).await;
    let server = Arc::new(server);
    let load = Load::start(&server, 6, &io.x);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = Instant::now();
    repo.install("simple", 2, &v2());
    assert!(
        eventually(WAIT, || async { load.seen("2") }).await,
        "version 2 never answered"
    );
    let live_after = published.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = load.finish().await;
    check_answers(&answers, &io);
    assert!(answers.iter().any(|(_, v, _)| v == "1"));
    // latest = 1: once version 2 is ready, version 1 is no longer served.
    assert!(serving(&server, &io.x, "2", &io.y2).await);
    let (status, _) = server.infer_f32("simple", "input", &[8, 10], &io.x).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.get("/v2/models/simple/versions/1/ready").await.0,
        503
    );
    eprintln!("version 2 answered {live_after:?} after its rename");
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn broken_versions_never_replace_the_good_one() {
    let io = io();
    let (server, repo) = server_with_v1(true).await;
    let cases = [
        (
            "broken/missing_bias.safetensors",
            "Missing key(s) in state_dict: \"linear.bias\"",
        ),
        (
            "broken/wrong_shape.safetensors",
            "size mismatch for linear.weight",
        ),
        ("broken/truncated.safetensors", "truncated"),
        ("broken/pickle_zip.safetensors", "zip archive"),
        ("broken/empty.safetensors", "empty file"),
        (
            "broken/int_bias.safetensors",
            "dtype mismatch for linear.bias",
        ),
    ];
    for (i, (file, needle)) in cases.iter().enumerate() {
        let version = 2 + i as u64;
        repo.install("simple", version, &fixture(file));
        let reported = eventually(WAIT, || async {
            server
                .index_entry("simple", version)
                .await
                .is_some_and(|e| {
                    e["state"] == "UNAVAILABLE"
                        && e["reason"].as_str().unwrap_or("").contains(needle)
                })
        })
        .await;
        assert!(
            reported,
            "{file}: not reported: {:?}",
            server.index_entry("simple", version).await
        );
        assert!(
            serving(&server, &io.x, "1", &io.y1).await,
            "{file}: version 1 stopped serving"
        );
        assert_eq!(server.get("/v2/health/ready").await.0, 200);
    }
    let entry = server.index_entry("simple", 2).await.unwrap();
    assert_eq!(entry["report"]["missing"], json!(["linear.bias"]));
    let v1 = server.index_entry("simple", 1).await.unwrap();
    assert_eq!(v1["state"], "READY");
    let metrics = server.get("/metrics").await.1.text();
    assert!(
        metrics.contains(r#"wick_model_load_failures_total{model="simple",kind="missing_key"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"wick_model_load_failures_total{model="simple",kind="foreign_format"} 1"#),
        "{metrics}"
    );
    // A failed file is not retried until it changes: wait several polls, the count stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = server.get("/metrics").await.1.text();
    assert!(
        again.contains(r#"wick_model_load_failures_total{model="simple",kind="missing_key"} 1"#),
        "{again}"
    );
    server.shutdown().await;
}

/// Writes `bytes` into `path` in place, `chunks` pieces with `pause` between them.
async fn write_slowly(path: &Path, bytes: &[u8], chunks: usize, pause: Duration) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(chunks)) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn a_slow_in_place_writer_is_never_loaded_half_written() {
    let io = io();
    let (server, repo) = server_with_v1(false).await;
    let server = Arc::new(server);
    let load = Load::start(&server, 4, &io.x);
    let dir = repo.version_dir("simple", 2);
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(v2()).unwrap();
    write_slowly(
        &dir.join("model.safetensors"),
        &bytes,
        10,
        Duration::from_millis(70),
    )
    .await;
    assert!(
        eventually(WAIT, || async { load.seen("2") }).await,
        "version 2 never went live"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_answers(&load.finish().await, &io);
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn overwriting_the_served_file_in_place_does_not_disturb_serving() {
    let io = io();
    let (server, repo) = server_with_v1(true).await;
    let server = Arc::new(server);
    let load = Load::start(&server, 4, &io.x);
    let file = repo.version_dir("simple", 1).join("model.safetensors");
    let original = std::fs::read(&file).unwrap();
    // Garbage of the same length, written in place over the file version 1 was loaded from.
    write_slowly(
        &file,
        &vec![0x5a; original.len()],
        3,
        Duration::from_millis(30),
    )
    .await;
    let refused = eventually(WAIT, || async {
        server.index_entry("simple", 1).await.is_some_and(|e| {
            e["state"] == "READY"
                && e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("newer file for this version was refused")
        })
    })
    .await;
    assert!(refused, "{:?}", server.index_entry("simple", 1).await);
    // Writing the real weights back in place is picked up as a change and loads again.
    write_slowly(&file, &original, 2, Duration::from_millis(10)).await;
    let reloaded = eventually(WAIT, || async {
        server
            .index_entry("simple", 1)
            .await
            .is_some_and(|e| e["state"] == "READY" && e["reason"].as_str().unwrap_or("").is_empty())
    })
    .await;
    assert!(reloaded, "{:?}", server.index_entry("simple", 1).await);
    let answers = load.finish().await;
    check_answers(&answers, &io);
    assert!(answers.iter().all(|(_, v, _)| v == "1"));
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn delete_and_readd_a_version() {
    let io = io();
    let repo = Repo::new();
    repo.install("simple", 1, &v1());
    repo.install("simple", 2, &v2());
    let server = TestServer::start(repo.config("", SIMPLE)).await;
    assert!(serving(&server, &io.x, "2", &io.y2).await);
    std::fs::remove_dir_all(repo.version_dir("simple", 2)).unwrap();
    assert!(
        eventually(WAIT, || serving(&server, &io.x, "1", &io.y1)).await,
        "version 1 did not take over"
    );
    assert_eq!(
        server.get("/v2/models/simple/versions/2/ready").await.0,
        404
    );
    repo.install("simple", 2, &v2());
    assert!(
        eventually(WAIT, || serving(&server, &io.x, "2", &io.y2)).await,
        "version 2 did not come back"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_versions_ends_on_the_newest() {
    let io = io();
    let (server, repo) = server_with_v1(false).await;
    for version in 2..=5 {
        let file = if version % 2 == 0 { v2() } else { v1() };
        repo.install("simple", version, &file);
    }
    assert!(
        eventually(WAIT, || serving(&server, &io.x, "5", &io.y1)).await,
        "version 5 never served"
    );
    let metadata = server.get("/v2/models/simple").await.1.json();
    assert_eq!(metadata["versions"], json!(["5"]));
    server.shutdown().await;
}

#[tokio::test]
async fn a_symlink_swap_of_the_model_directory_is_seen() {
    let io = io();
    let repo = Repo::new();
    // Inside the repository, as Kubernetes lays out a mounted volume (`..2026_01_01/` folders and
    // a `..data` link): links may not point outside the repository by default.
    let store = repo.path().join("..store");
    for (name, file) in [("a", v1()), ("b", v2())] {
        let dir = store.join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&file, dir.join("model.safetensors")).unwrap();
    }
    std::os::unix::fs::symlink(store.join("a"), repo.path().join("simple")).unwrap();
    let server = TestServer::start(repo.config("", SIMPLE)).await;
    assert!(serving(&server, &io.x, "1", &io.y1).await);
    // Kubernetes-style atomic swap: a new symlink renamed over the old one.
    let tmp = repo.path().join(".simple-swap");
    std::os::unix::fs::symlink(store.join("b"), &tmp).unwrap();
    std::fs::rename(&tmp, repo.path().join("simple")).unwrap();
    assert!(
        eventually(WAIT, || serving(&server, &io.x, "1", &io.y2)).await,
        "the swapped weights were not loaded"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_vanished_model_directory_keeps_the_last_good_version() {
    let io = io();
    let (server, repo) = server_with_v1(false).await;
    let away = repo.path().join(".away");
    std::fs::rename(repo.path().join("simple"), &away).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(serving(&server, &io.x, "1", &io.y1).await);
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
    std::fs::rename(&away, repo.path().join("simple")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(serving(&server, &io.x, "1", &io.y1).await);
    server.shutdown().await;
}

#[tokio::test]
async fn starting_without_versions_then_one_arrives() {
    let io = io();
    let repo = Repo::new();
    let server = TestServer::start(repo.config("", SIMPLE)).await;
    assert_eq!(server.get("/v2/health/live").await.0, 200);
    assert_eq!(server.get("/v2/health/ready").await.0, 503);
    assert_eq!(server.get("/v2/models/simple/ready").await.0, 503);
    let answer = server.infer_f32("simple", "input", &[8, 10], &io.x).await;
    assert_error(
        "no version yet",
        (answer.0, &answer.1),
        503,
        "no ready version",
    );
    repo.install("simple", 1, &v1());
    assert!(
        eventually(WAIT, || async {
            server.get("/v2/health/ready").await.0 == 200
        })
        .await
    );
    assert!(serving(&server, &io.x, "1", &io.y1).await);
    server.shutdown().await;
}

#[tokio::test]
async fn config_changes_apply_without_a_restart_all_or_nothing() {
    let io = io();
    let repo = Repo::demo();
    let path = repo.write_config("", SIMPLE);
    let config = wick::config::Config::load(&path, &|_| None).unwrap();
    let server = TestServer::start(config).await;
    assert_eq!(server.get("/v2/models/digits").await.0, 404);

    // A model added to the file goes live.
    repo.write_config("", &demo_models());
    assert!(
        eventually(WAIT, || async {
            server.get("/v2/models/digits/ready").await.0 == 200
        })
        .await,
        "digits was not added"
    );

    // An invalid file changes nothing (and is reported in the metrics).
    let broken = demo_models().replace("out_features = 10", "out_feature = 10");
    repo.write_config("", &broken);
    let counted = eventually(WAIT, || async {
        server
            .get("/metrics")
            .await
            .1
            .text()
            .contains(r#"wick_config_reloads_total{result="failure"} 1"#)
    })
    .await;
    assert!(counted);
    assert_eq!(server.get("/v2/models/digits/ready").await.0, 200);
    assert!(serving(&server, &io.x, "1", &io.y1).await);

    // Batching changes apply to the running engine; removing a model unloads it.
    let smaller = simple_with("{ max_batch_size = 4, max_request_rows = 4 }");
    repo.write_config("", &smaller);
    assert!(
        eventually(WAIT, || async {
            server.get("/v2/models/digits").await.0 == 404
        })
        .await,
        "digits was not removed"
    );
    let answer = server.infer_f32("simple", "input", &[8, 10], &io.x).await;
    assert_error(
        "8 rows",
        (answer.0, &answer.1),
        400,
        "at most 4 per request",
    );

    // SIGHUP (what `wick serve` turns it into): a reload on demand.
    repo.write_config("", SIMPLE);
    server
        .server()
        .watcher()
        .unwrap()
        .send(wick::repository::watch::Command::ReloadConfig)
        .unwrap();
    assert!(
        eventually(WAIT, || async {
            server.infer_f32("simple", "input", &[8, 10], &io.x).await.0 == 200
        })
        .await
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_response_names_the_weights_that_computed_it() {
    use sha2::Digest;
    let io = io();
    let (server, _repo) = server_with_v1(false).await;
    let (_, answer) = server.infer_f32("simple", "input", &[8, 10], &io.x).await;
    let expected = wick::state_dict::hex(&sha2::Sha256::digest(std::fs::read(v1()).unwrap()));
    assert_eq!(
        answer["parameters"]["weights_sha256"],
        Value::String(expected)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn at_startup_a_broken_newest_version_leaves_the_good_one_serving_at_once() {
    // v1 good, v2 and v3 broken, `latest 1`: the policy first picks v3, then v2, and must end
    // with v1 serving when startup completes, not one poll later (the poll here is an hour).
    let io = io();
    let repo = Repo::new();
    repo.install("simple", 1, &v1());
    repo.install("simple", 2, &fixture("broken/missing_bias.safetensors"));
    repo.install("simple", 3, &fixture("broken/wrong_shape.safetensors"));
    let mut config = repo.config("", SIMPLE);
    config.server.poll_interval = Duration::from_secs(3600);
    let server = TestServer::start_admin(config).await;
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
    let (status, answer) = server.infer_f32("simple", "input", &[8, 10], &io.x).await;
    assert_eq!(status, 200, "{answer:?}");
    assert_eq!(answer["model_version"], "1");
    for version in [2, 3] {
        let entry = server.index_entry("simple", version).await.unwrap();
        assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    }
    server.shutdown().await;
}
