//! Shadow rollouts through a running server: clients only ever get the stable version's answer
//! while the candidate computes on copies; the comparison shows in the metrics and the index; a
//! candidate whose outputs differ beyond the golden tolerances is rolled back and one that
//! agrees is promoted. Also what outlives a rollout: a `state_dir` keeps a rolled-back version
//! from being served after a restart (without one it goes through the gate again), and a config
//! reload keeps the rollout running; a text model's shadow samples its OpenAI and TEI requests too.

use serde_json::Value;

use crate::util::{
    demo_model, eventually, fixture, infer_request, read_tensors, Repo, TestServer, SIMPLE, TOKEN,
    WAIT,
};

/// `simple` with a rollout (`rollout` is the inside of the TOML inline table) and `extra` lines.
fn simple_with_rollout(rollout: &str, extra: &str) -> String {
    format!("{SIMPLE}rollout = {{ {rollout} }}\n{extra}")
}

fn fixture_x() -> Vec<f32> {
    read_tensors(&fixture("simple_io.safetensors"))["x"]
        .1
        .f32()
        .to_vec()
}

/// One inference naming no version, with `x-request-id: id`: status and answering version.
pub(crate) async fn infer_with_id(server: &TestServer, x: &[f32], id: &str) -> (u16, String) {
    let body = serde_json::to_vec(&infer_request("input", "FP32", [8, 10], x)).unwrap();
    let (status, answer) = server
        .request(
            http::Method::POST,
            "/v2/models/simple/infer",
            &[("x-request-id", id.to_string())],
            body,
        )
        .await;
    let version = if status == 200 {
        let value: Value = answer.json();
        value["model_version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        String::new()
    };
    (status, version)
}

pub(crate) async fn state_of(server: &TestServer, version: u64) -> (String, String) {
    let entry = server
        .index_entry("simple", version)
        .await
        .unwrap_or_default();
    (
        entry["state"].as_str().unwrap_or_default().to_string(),
        entry["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// A server of `simple` (with `models`' rollout and `extra_server` lines) over `repo`, which
/// serves version 1; publishes `candidate` as version 2 and waits until its rollout runs (the
/// index reason starts with `mode`).
pub(crate) async fn rollout_server(
    repo: &Repo,
    extra_server: &str,
    models: &str,
    candidate: &std::path::Path,
    mode: &str,
) -> TestServer {
    repo.install("simple", 1, &demo_model("simple", 1));
    let server = TestServer::start_admin(repo.config(extra_server, models)).await;
    repo.install("simple", 2, candidate);
    let started = eventually(WAIT, || async {
        let (state, reason) = state_of(&server, 2).await;
        state == "READY" && reason.starts_with(mode)
    })
    .await;
    assert!(started, "{:?}", server.index().await);
    server
}

async fn metrics(server: &TestServer) -> String {
    server.get("/metrics").await.1.text()
}

/// The value of the metric line starting with `series` (name and labels), if exported.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

const PAIR: &str = r#"{model="simple",candidate="2",stable="1"}"#;

fn compared(text: &str) -> f64 {
    let series =
        r#"wick_shadow_samples_total{model="simple",candidate="2",stable="1",outcome="compared"}"#;
    metric(text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn clients_only_see_the_stable_version_and_the_comparison_moves() {
    let repo = Repo::new();
    // The candidate has the stable version's weights: it agrees, but is never promoted here.
    let models = simple_with_rollout("shadow_percent = 50, promote_after_s = 3600", "");
    let server = rollout_server(&repo, "", &models, &demo_model("simple", 1), "shadow").await;
    let x = fixture_x();
    for i in 0..200 {
        let (status, version) = infer_with_id(&server, &x, &format!("req-{i}")).await;
        assert_eq!((status, version.as_str()), (200, "1"), "req-{i}");
    }
    // Requests without an id are sampled too (numbered), and answered by the stable version.
    for _ in 0..20 {
        let (status, answer) = server
            .post_json(
                "/v2/models/simple/infer",
                &infer_request("input", "FP32", [8, 10], &x),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], "1");
    }
    // The copies are compared off the request path: wait for them to be counted.
    let moved = eventually(WAIT, || async { compared(&metrics(&server).await) >= 50.0 }).await;
    let text = metrics(&server).await;
    assert!(moved, "{text}");
    assert_eq!(
        metric(&text, &format!("wick_shadow_max_abs_diff{PAIR}")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("wick_shadow_argmax_agreement{PAIR}")),
        Some(1.0)
    );
    assert!(text.contains(r#"wick_rollout_state{model="simple",state="shadow"} 1"#));
    assert!(text.contains(r#"wick_rollout_candidate_version{model="simple"} 2"#));
    // Sampled share: about half of 220 requests, and never more than were sent.
    assert!(compared(&text) <= 220.0, "{text}");
    let (state, reason) = state_of(&server, 2).await;
    assert_eq!(state, "READY");
    assert!(
        reason.contains("stable version 1") && reason.contains("compared"),
        "{reason}"
    );
    // Naming the candidate reaches it (an operator trying it by hand), as during a canary.
    let (status, answer) = server.infer_f32("simple", "input", &[8, 10], &x).await;
    assert_eq!(status, 200, "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_candidate_that_disagrees_is_rolled_back() {
    let repo = Repo::new();
    // simple_v2 has other weights: every key and shape right, the outputs different.
    let models = simple_with_rollout(
        "shadow_percent = 100, promote_after_s = 3600, min_requests = 5",
        "",
    );
    let server = rollout_server(
        &repo,
        "",
        &models,
        &fixture("simple_v2.safetensors"),
        "shadow",
    )
    .await;
    let x = fixture_x();
    let mut i = 0;
    let rolled_back = eventually(WAIT, || {
        i += 1;
        let (server, x) = (&server, &x);
        async move {
            let (status, version) = infer_with_id(server, x, &format!("req-{i}")).await;
            assert_eq!((status, version.as_str()), (200, "1"));
            state_of(server, 2).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(rolled_back, "{:?}", server.index().await);
    let (_, reason) = state_of(&server, 2).await;
    assert!(
        reason.contains("rolled back from its shadow") && reason.contains("disagree"),
        "{reason}"
    );
    let text = metrics(&server).await;
    assert!(
        text.contains(r#"wick_rollouts_total{model="simple",outcome="disagreement"} 1"#),
        "{text}"
    );
    let diff = metric(&text, &format!("wick_shadow_max_abs_diff{PAIR}")).unwrap_or(0.0);
    assert!(diff > 1e-4, "{text}");
    assert!(text.contains(r#"wick_rollout_state{model="simple",state="none"} 1"#));
    // Not loaded again while its files are unchanged.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(state_of(&server, 2).await.0, "UNAVAILABLE");
    assert_eq!(infer_with_id(&server, &x, "after").await, (200, "1".into()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_candidate_that_agrees_is_promoted() {
    let repo = Repo::new();
    let models = simple_with_rollout(
        "shadow_percent = 100, promote_after_s = 1, min_requests = 5",
        "",
    );
    let server = rollout_server(&repo, "", &models, &demo_model("simple", 1), "shadow").await;
    let x = fixture_x();
    let mut i = 0;
    let promoted = eventually(WAIT, || {
        i += 1;
        let (server, x) = (&server, &x);
        async move {
            let (status, _) = infer_with_id(server, x, &format!("req-{i}")).await;
            assert_eq!(status, 200);
            state_of(server, 1).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(promoted, "{:?}", server.index().await);
    for i in 0..20 {
        let answer = infer_with_id(&server, &x, &format!("after-{i}")).await;
        assert_eq!(answer, (200, "2".to_string()));
    }
    let text = metrics(&server).await;
    assert!(
        text.contains(r#"wick_rollouts_total{model="simple",outcome="promoted"} 1"#),
        "{text}"
    );
    assert!(compared(&text) >= 5.0, "{text}");
    server.shutdown().await;
}

/// Rolls version 2 (other weights) back through its shadow on a server with `extra_server`,
/// then stops the server.
async fn roll_back_version_2(repo: &Repo, extra_server: &str) {
    let models = simple_with_rollout(
        "shadow_percent = 100, promote_after_s = 3600, min_requests = 3",
        "",
    );
    let server = rollout_server(
        repo,
        extra_server,
        &models,
        &fixture("simple_v2.safetensors"),
        "shadow",
    )
    .await;
    let x = fixture_x();
    let mut i = 0;
    let rolled_back = eventually(WAIT, || {
        i += 1;
        let (server, x) = (&server, &x);
        async move {
            infer_with_id(server, x, &format!("req-{i}")).await;
            state_of(server, 2).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(rolled_back, "{:?}", server.index().await);
    server.shutdown().await;
}

#[tokio::test]
async fn a_state_dir_keeps_a_rolled_back_version_out_after_a_restart() {
    let repo = Repo::new();
    let state = tempfile::tempdir().unwrap();
    let extra = format!("state_dir = {:?}", state.path().display().to_string());
    roll_back_version_2(&repo, &extra).await;
    let saved = std::fs::read_to_string(state.path().join("rolled_back.json")).unwrap();
    assert!(
        saved.contains("\"simple\"") && saved.contains("disagree"),
        "{saved}"
    );

    // A new server over the same repository and state_dir: version 1 serves, 2 stays out.
    let models = simple_with_rollout("shadow_percent = 100", "");
    let server = TestServer::start_admin(repo.config(&extra, &models)).await;
    let x = fixture_x();
    for i in 0..20 {
        let answer = infer_with_id(&server, &x, &format!("restart-{i}")).await;
        assert_eq!(answer, (200, "1".to_string()));
    }
    let (state_2, reason) = state_of(&server, 2).await;
    assert_eq!(state_2, "UNAVAILABLE", "{reason}");
    assert!(reason.contains("before the server restarted"), "{reason}");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(state_of(&server, 2).await.0, "UNAVAILABLE");

    // New files for version 2 (the same weights as 1, renamed into place) load again, as a
    // candidate, and the entry goes once they load.
    std::fs::remove_dir_all(repo.version_dir("simple", 2)).unwrap();
    repo.install("simple", 2, &demo_model("simple", 1));
    let again = eventually(WAIT, || async {
        let (state, reason) = state_of(&server, 2).await;
        state == "READY" && reason.starts_with("shadow")
    })
    .await;
    assert!(again, "{:?}", server.index().await);
    let saved = std::fs::read_to_string(state.path().join("rolled_back.json")).unwrap();
    assert!(!saved.contains("\"simple\""), "{saved}");
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_state_dir_a_restart_gates_the_version_again() {
    let repo = Repo::new();
    roll_back_version_2(&repo, "").await;
    // The first server forgot it when it stopped: the restart loads version 2 through the
    // load gate (strict keys, warm-up, golden outputs when it has a golden file) and, with no
    // stable version to compare with at startup, serves it.
    let models = simple_with_rollout("shadow_percent = 100", "");
    let server = TestServer::start_admin(repo.config("", &models)).await;
    assert_eq!(state_of(&server, 2).await.0, "READY");
    let x = fixture_x();
    assert_eq!(
        infer_with_id(&server, &x, "restart").await,
        (200, "2".to_string())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_config_reload_keeps_the_rollout_state() {
    let repo = Repo::new();
    let rollout = "shadow_percent = 100, promote_after_s = 1, min_requests = 3";
    let models = simple_with_rollout(rollout, "");
    let server = rollout_server(&repo, "", &models, &demo_model("simple", 1), "shadow").await;
    let x = fixture_x();
    // Paused: it would be promoted after 1 s otherwise.
    let (status, answer) = server
        .admin(
            "/v2/repository/models/simple/rollout/pause",
            r#"{"reason": "hold during the reload"}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for i in 0..10 {
        infer_with_id(&server, &x, &format!("req-{i}")).await;
    }
    assert!(eventually(WAIT, || async { compared(&metrics(&server).await) >= 3.0 }).await);
    let before = state_of(&server, 2).await.1;

    // A batching change keeps the model's slot: the same rollout, its comparisons and pause.
    let batching = simple_with_rollout(rollout, "batching = { max_batch_size = 4 }\n");
    server
        .server()
        .repository()
        .reconfigure(&repo.config("", &batching))
        .unwrap();
    let after = state_of(&server, 2).await;
    assert_eq!(after.0, "READY");
    assert!(
        after.1.starts_with("shadow") && after.1.contains("paused"),
        "{after:?}"
    );
    let count = |reason: &str| -> u64 {
        let (_, rest) = reason.split_once("; ").unwrap_or_default();
        rest.split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
    };
    assert!(count(&after.1) >= count(&before), "{before} / {}", after.1);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        state_of(&server, 1).await.0,
        "READY",
        "promoted while paused"
    );

    // A key-mapping change rebuilds the model in a fresh slot: it takes the rollout over (both
    // versions loaded, the candidate still a paused candidate, answers still from version 1).
    let remapped = simple_with_rollout(rollout, "load = { ignore = [\"unused.*\"] }\n");
    server
        .server()
        .repository()
        .reconfigure(&repo.config("", &remapped))
        .unwrap();
    let (state_2, reason) = state_of(&server, 2).await;
    assert_eq!(state_2, "READY");
    assert!(
        reason.starts_with("shadow") && reason.contains("paused"),
        "{reason}"
    );
    assert_eq!(state_of(&server, 1).await.0, "READY");
    for i in 0..10 {
        let answer = infer_with_id(&server, &x, &format!("remapped-{i}")).await;
        assert_eq!(answer, (200, "1".to_string()));
    }
    // Resumed, it is promoted.
    let (status, _) = server
        .admin(
            "/v2/repository/models/simple/rollout/resume",
            "",
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    let mut i = 0;
    let promoted = eventually(WAIT, || {
        i += 1;
        let (server, x) = (&server, &x);
        async move {
            infer_with_id(server, x, &format!("resumed-{i}")).await;
            state_of(server, 1).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(promoted, "{:?}", server.index().await);
    server.shutdown().await;
}

#[tokio::test]
async fn a_text_shadow_samples_openai_and_tei_requests() {
    crate::canary::promoted_on_text_traffic(
        "shadow_percent = 100, promote_after_s = 1, min_requests = 5",
        "shadow",
    )
    .await;
}
