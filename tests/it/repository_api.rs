//! Triton's model-repository extension on the admin listener: authentication, index, load and
//! unload (whole model or one version, i.e. rollback), and consistency under concurrent use.

use std::sync::Arc;
use std::time::Duration;

use crate::util::{assert_error, demo_model, fixture, simple_io, Repo, TestServer, SIMPLE, TOKEN};
use serde_json::Value;

fn x() -> Vec<f32> {
    simple_io().0
}

async fn served_version(server: &TestServer) -> Option<String> {
    let (status, answer) = server.infer_f32("simple", "input", &[8, 10], &x()).await;
    (status == 200).then(|| answer["model_version"].as_str().unwrap().to_string())
}

async fn admin_server(repo: &Repo) -> TestServer {
    TestServer::start_admin(repo.config("", SIMPLE)).await
}

/// A repository holding versions 1 and 2 of `simple`.
fn two_versions() -> Repo {
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    repo.install("simple", 2, &fixture("simple_v2.safetensors"));
    repo
}

/// `POST /v2/repository/models/simple/{action}` (`load` or `unload`) with the token.
async fn act(server: &TestServer, action: &str, body: &str) -> (u16, Value) {
    let path = format!("/v2/repository/models/simple/{action}");
    server.admin(&path, body, Some(TOKEN)).await
}

/// The body that names version 2 (a wick extension of the repository API).
const VERSION_2: &str = r#"{"parameters":{"version":"2"}}"#;

#[tokio::test]
async fn the_api_needs_the_bearer_token() {
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let server = admin_server(&repo).await;
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("test-token-12345"),
        Some("test-token-123"),
    ] {
        for path in [
            "/v2/repository/index",
            "/v2/repository/models/simple/unload",
        ] {
            let (status, body) = server.admin(path, "", token).await;
            assert_eq!(status, 401, "{path} with {token:?}");
            assert!(body["error"].is_string());
        }
    }
    // Nothing was unloaded by the refused calls.
    assert_eq!(served_version(&server).await.as_deref(), Some("1"));
    let (status, body) = server.admin("/v2/repository/index", "", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!([{"name": "simple", "version": "1", "state": "READY"}])
    );
    // The inference listener never serves these paths, token or not.
    let (status, _) = server
        .request(
            http::Method::POST,
            "/v2/repository/index",
            &[("authorization", format!("Bearer {TOKEN}"))],
            "",
        )
        .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn an_admin_listener_without_a_token_refuses_to_start() {
    let repo = Repo::new();
    let config = repo.config("admin_listen = \"127.0.0.1:0\"", SIMPLE);
    let error = wick::app::start(config, wick::app::StartOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("WICK_ADMIN_TOKEN"), "{error}");
}

#[tokio::test]
async fn unload_and_load_a_model() {
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let server = admin_server(&repo).await;
    let (status, _) = act(
        &server,
        "unload",
        r#"{"parameters":{"unload_dependents":false}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served_version(&server).await, None);
    assert_eq!(server.get("/v2/models/simple/ready").await.0, 503);
    let entry = server.index().await;
    assert_eq!(entry[0]["state"], "UNAVAILABLE");
    assert!(entry[0]["reason"].as_str().unwrap().contains("unloaded"));
    // The watcher leaves an unloaded model alone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_version(&server).await, None);
    // `ready: true` lists only ready versions.
    let (_, ready) = server
        .admin("/v2/repository/index", r#"{"ready": true}"#, Some(TOKEN))
        .await;
    assert_eq!(ready, serde_json::json!([]));

    assert_eq!(act(&server, "load", "{}").await.0, 200);
    assert_eq!(served_version(&server).await.as_deref(), Some("1"));

    // Unknown models, file or config overrides, bad versions.
    assert_eq!(
        server
            .admin("/v2/repository/models/nope/load", "", Some(TOKEN))
            .await
            .0,
        404
    );
    for body in [
        r#"{"parameters":{"config":"{}"}}"#,
        r#"{"parameters":{"file:1/model.safetensors":"AAAA"}}"#,
        r#"{"parameters":{"version":"01"}}"#,
        "{not json",
    ] {
        let (status, answer) = act(&server, "load", body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_load_that_fails_reports_why() {
    let repo = Repo::new();
    repo.install("simple", 1, &fixture("broken/wrong_shape.safetensors"));
    let server = admin_server(&repo).await;
    let (status, body) = server
        .admin("/v2/repository/models/simple/load", "", Some(TOKEN))
        .await;
    assert_error(
        "load",
        (status, &body),
        400,
        "size mismatch for linear.weight",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rollback_by_unloading_the_bad_version() {
    let repo = two_versions();
    let server = admin_server(&repo).await;
    assert_eq!(served_version(&server).await.as_deref(), Some("2"));
    assert_eq!(act(&server, "unload", VERSION_2).await.0, 200);
    assert_eq!(served_version(&server).await.as_deref(), Some("1"));
    // It stays rolled back across watcher scans...
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_version(&server).await.as_deref(), Some("1"));
    // ...until version 2 is explicitly loaded again.
    assert_eq!(act(&server, "load", VERSION_2).await.0, 200);
    assert_eq!(served_version(&server).await.as_deref(), Some("2"));
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_loads_and_unloads_leave_a_consistent_state() {
    let repo = two_versions();
    let server = Arc::new(admin_server(&repo).await);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                let (action, body) = match (t + i) % 4 {
                    0 => ("unload", ""),
                    1 => ("load", ""),
                    2 => ("unload", VERSION_2),
                    _ => ("load", VERSION_2),
                };
                let (status, answer) = act(&server, action, body).await;
                // Loads may race with unloads; every answer is still a well-formed success or
                // a 400 with a reason, never a 5xx.
                assert!(
                    status == 200 || status == 400,
                    "{action} {body}: {status} {answer}"
                );
                // Inference meanwhile answers 200 or 503 (model unloaded), never anything else.
                let (status, _) = server.infer_f32("simple", "input", &[8, 10], &x()).await;
                assert!(
                    status == 200 || status == 503,
                    "inference answered {status}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // One final explicit load decides the state, and the index agrees with what is served.
    assert_eq!(act(&server, "load", "").await.0, 200);
    assert_eq!(served_version(&server).await.as_deref(), Some("2"));
    let index = server.index().await;
    let ready: Vec<&Value> = index.iter().filter(|e| e["state"] == "READY").collect();
    assert_eq!(ready.len(), 1, "{index:?}");
    assert_eq!(ready[0]["version"], "2");
    TestServer::shutdown_shared(server).await;
}
