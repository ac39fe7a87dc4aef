//! Operator control of rollouts on the admin listener: promote now, roll back now, pause and
//! resume; each needs the bearer token, answers 404/409 with `{"error": ...}` when there is no
//! such model or rollout, and is logged with the token's id (never the token) and the reason.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::shadow::{infer_with_id, rollout_server, state_of};
use crate::util::{demo_model, fixture, read_tensors, Repo, SIMPLE, TOKEN, WAIT};

/// `simple` with a canary `rollout`. The tests pass `max_p99_ratio = 1000.0` where requests
/// are sent: latencies of a few microseconds make the p99 bound noise, and a canary rolled back
/// for latency would hide what the operator did.
fn canary(rollout: &str) -> String {
    format!("{SIMPLE}rollout = {{ {rollout} }}\n")
}

fn fixture_x() -> Vec<f32> {
    read_tensors(&fixture("simple_io.safetensors"))["x"]
        .1
        .f32()
        .to_vec()
}

const ROUTE: &str = "/v2/repository/models/simple/rollout";

#[tokio::test]
async fn operators_pause_and_roll_back_with_the_token() {
    let repo = Repo::new();
    let models = canary(
        "canary_percent = 50, promote_after_s = 1, min_requests = 3, max_p99_ratio = 1000.0",
    );
    let server = rollout_server(&repo, "", &models, &demo_model("simple", 1), "canary").await;
    let x = fixture_x();

    // The token is required, and checked before the model or the action.
    for token in [None, Some("wrong")] {
        let (status, _) = server.admin(&format!("{ROUTE}/pause"), "", token).await;
        assert_eq!(status, 401);
    }
    let (status, body) = server
        .admin("/v2/repository/models/nope/rollout/pause", "", Some(TOKEN))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (status, _) = server
        .admin(&format!("{ROUTE}/explode"), "", Some(TOKEN))
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .admin(&format!("{ROUTE}/pause"), r#"{"why": "x"}"#, Some(TOKEN))
        .await;
    assert_eq!(status, 400, "{body}");

    // Pause: promotion waits however healthy the candidate is.
    let (status, body) = server
        .admin(
            &format!("{ROUTE}/pause"),
            r#"{"reason": "waiting for the dashboard"}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "paused");
    assert_eq!(
        (body["candidate"].as_u64(), body["stable"].as_u64()),
        (Some(2), Some(1))
    );
    let token_id: String = Sha256::digest(TOKEN.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let (_, reason) = state_of(&server, 2).await;
    assert!(
        reason.contains(&format!(
            "paused by token {token_id}: waiting for the dashboard"
        )),
        "{reason}"
    );
    for i in 0..30 {
        assert_eq!(infer_with_id(&server, &x, &format!("p-{i}")).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        state_of(&server, 1).await.0,
        "READY",
        "promoted while paused"
    );
    let text = server.get("/metrics").await.1.text();
    assert!(
        text.contains(r#"wick_rollout_state{model="simple",state="paused"} 1"#),
        "{text}"
    );

    // Roll back now: the candidate is unloaded with the operator's reason.
    let (status, body) = server
        .admin(
            &format!("{ROUTE}/rollback"),
            r#"{"reason": "p99 spikes on the dashboard"}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "rolled_back");
    let (state, reason) = state_of(&server, 2).await;
    assert_eq!(state, "UNAVAILABLE");
    assert!(
        reason.contains(&format!("by an operator (token {token_id}): p99 spikes")),
        "{reason}"
    );
    assert!(!reason.contains(TOKEN), "{reason}");
    for i in 0..20 {
        let answer = infer_with_id(&server, &x, &format!("r-{i}")).await;
        assert_eq!(answer, (200, "1".to_string()));
    }
    // No rollout any more: 409.
    let (status, body) = server
        .admin(&format!("{ROUTE}/promote"), "", Some(TOKEN))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no rollout"),
        "{body}"
    );

    let text = server.get("/metrics").await.1.text();
    let line = r#"wick_rollouts_total{model="simple",outcome="operator_rollback"} 1"#;
    assert!(text.contains(line), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn operators_resume_and_promote_now() {
    let repo = Repo::new();
    let models = canary("canary_percent = 50, promote_after_s = 3600, max_p99_ratio = 1000.0");
    let server = rollout_server(&repo, "", &models, &demo_model("simple", 1), "canary").await;
    let x = fixture_x();
    let (status, body) = server
        .admin(&format!("{ROUTE}/pause"), "", Some(TOKEN))
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("paused")));
    let (_, reason) = state_of(&server, 2).await;
    assert!(reason.contains("paused by token"), "{reason}");
    let (status, body) = server
        .admin(&format!("{ROUTE}/resume"), "", Some(TOKEN))
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("running")));
    assert!(!state_of(&server, 2).await.1.contains("paused"));
    // Promote now: long before promote_after_s, the candidate takes all traffic and the
    // version policy retires the old version.
    let (status, body) = server
        .admin(
            &format!("{ROUTE}/promote"),
            r#"{"reason": "verified by hand"}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "promoted");
    assert_eq!(state_of(&server, 1).await.0, "UNAVAILABLE");
    for i in 0..20 {
        let answer = infer_with_id(&server, &x, &format!("q-{i}")).await;
        assert_eq!(answer, (200, "2".to_string()));
    }
    let text = server.get("/metrics").await.1.text();
    let line = r#"wick_rollouts_total{model="simple",outcome="operator_promote"} 1"#;
    assert!(text.contains(line), "{text}");
    assert!(text.contains(r#"wick_rollout_state{model="simple",state="none"} 1"#));
    server.shutdown().await;
}

#[test]
fn operator_actions_are_logged_with_the_token_id_and_reason() {
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let token = "a-secret-admin-token";
    let models = canary("canary_percent = 10, promote_after_s = 3600");
    let process = crate::util::process::Process::start_logged(
        repo,
        "admin_listen = \"127.0.0.1:0\"",
        &models,
        &[("WICK_ADMIN_TOKEN", token)],
    );
    let admin = process.admin_addr();
    process
        .repo()
        .install("simple", 2, &fixture("simple_v2.safetensors"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let target = wick::bench::Target::parse(&format!("http://{admin}")).unwrap();
        let mut status = 0;
        for _ in 0..200 {
            let mut conn = target.connect().await.unwrap();
            let (s, _) = conn
                .send(
                    http::Method::POST,
                    &format!("{ROUTE}/rollback"),
                    &[("authorization", format!("Bearer {token}"))],
                    bytes::Bytes::from_static(br#"{"reason": "bad canary\nforged line"}"#),
                )
                .await
                .unwrap();
            status = s.as_u16();
            if status == 200 {
                break;
            }
            // 409 until the candidate has loaded and its canary runs.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 200);
    });
    let token_id: String = Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let logged = process.wait_for_log(WAIT, |line| {
        line.contains("operator rollout action") && line.contains("\"action\":\"rollback\"")
    });
    let line = logged.expect("the action was logged");
    assert!(
        line.contains(&format!("\"token_id\":\"{token_id}\"")),
        "{line}"
    );
    assert!(line.contains("bad canary forged line"), "{line}");
    assert!(!line.contains(token), "{line}");
}
