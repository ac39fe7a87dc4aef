//! Unit tests of the config parser: the documented shape, unknown keys with their lines,
//! environment overrides, name and version grammars.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), Path::new("/base"), &no_env)
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
repository = "models"

[[models]]
name = "simple"
architecture = "linear"
config = { in_features = 10, out_features = 1 }

[[models]]
name = "digits"
architecture = "mlp"
config = { in_features = 64, hidden = [128, 64], out_features = 10, activation = "relu", layer_names = ["fc1", "fc2", "fc3"] }
load = { strip_prefix = "model.", ignore = ["optimizer.*"] }
batching = { max_batch_size = 32, max_queue_delay_us = 2000, max_queue_size = 8 }
version_policy = { latest = 2 }
"#;

#[test]
fn parses_the_documented_shape() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.repository, PathBuf::from("/base/models"));
    assert_eq!(config.models.len(), 2);
    let digits = config.model("digits").unwrap();
    assert_eq!(digits.architecture.name(), "mlp");
    assert_eq!(digits.batching.max_batch_size, 32);
    assert_eq!(digits.batching.max_queue_delay, Duration::from_micros(2000));
    assert_eq!(digits.version_policy, VersionPolicy::Latest(2));
    assert_eq!(
        config.model("simple").unwrap().version_policy,
        VersionPolicy::Latest(1)
    );
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let text = GOOD.replace(
        "repository = \"models\"",
        "repository = \"models\"\nlisten_port = 3",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("listen_port"), "{err}");
    assert!(err.contains("line 5"), "{err}");

    let text = GOOD.replace("out_features = 1 }", "out_feature = 1 }");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("out_feature"), "{err}");
    assert!(err.contains("line 9"), "{err}");
}

#[test]
fn unknown_architecture_is_named() {
    let text = GOOD.replace("\"linear\"", "\"linaer\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("linaer") && err.contains("line 8"), "{err}");
}

#[test]
fn duplicate_and_bad_names_are_refused() {
    let text = GOOD.replace("name = \"digits\"", "name = \"simple\"");
    assert!(parse(&text)
        .unwrap_err()
        .to_string()
        .contains("already used"));
    let text = GOOD.replace("name = \"digits\"", "name = \"../etc\"");
    assert!(parse(&text).unwrap_err().to_string().contains("'/'"));
}

#[test]
fn env_overrides_the_server_section() {
    let env = |k: &str| match k {
        "WICK_LISTEN" => Some("0.0.0.0:9000".to_string()),
        "WICK_REPOSITORY" => Some("/models".to_string()),
        "WICK_ADMIN_LISTEN" => Some("127.0.0.1:9001".to_string()),
        "WICK_GRPC_LISTEN" => Some("127.0.0.1:9002".to_string()),
        _ => None,
    };
    let config = Config::parse(GOOD, Path::new("t"), Path::new("/base"), &env).unwrap();
    assert_eq!(config.server.grpc_listen.unwrap().port(), 9002);
    // gRPC is off unless set; "off" turns a configured one off.
    assert_eq!(parse(GOOD).unwrap().server.grpc_listen, None);
    let off = |k: &str| (k == "WICK_GRPC_LISTEN").then(|| "off".to_string());
    let text = GOOD.replace("[server]", "[server]\ngrpc_listen = \"127.0.0.1:9003\"");
    let config_off = Config::parse(&text, Path::new("t"), Path::new("/b"), &off).unwrap();
    assert_eq!(config_off.server.grpc_listen, None);
    assert_eq!(config.server.listen.port(), 9000);
    assert_eq!(config.server.repository, PathBuf::from("/models"));
    assert_eq!(config.server.admin_listen.unwrap().port(), 9001);
    let bad = |k: &str| (k == "WICK_COMPUTE_THREADS").then(|| "many".to_string());
    let err = Config::parse(GOOD, Path::new("t"), Path::new("/b"), &bad).unwrap_err();
    assert!(err.to_string().contains("WICK_COMPUTE_THREADS"), "{err}");
}

#[test]
fn version_policy_forms() {
    for (policy, expected) in [
        ("{ all = true }", VersionPolicy::All),
        ("{ specific = [1, 3] }", VersionPolicy::Specific(vec![1, 3])),
    ] {
        let text = GOOD.replace("{ latest = 2 }", policy);
        assert_eq!(
            parse(&text)
                .unwrap()
                .model("digits")
                .unwrap()
                .version_policy,
            expected
        );
    }
    for bad in [
        "{ latest = 0 }",
        "{ latest = 1, all = true }",
        "{ specific = [] }",
        "{}",
    ] {
        let text = GOOD.replace("{ latest = 2 }", bad);
        assert!(parse(&text).is_err(), "{bad} accepted");
    }
    assert_eq!(VersionPolicy::Latest(2).select(&[1, 5, 3]), vec![5, 3]);
    assert_eq!(
        VersionPolicy::Specific(vec![1, 9]).select(&[1, 5, 3]),
        vec![1]
    );
}

#[test]
fn golden_tolerances_default_and_validate() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config.model("digits").unwrap().golden,
        GoldenTolerance::default()
    );
    let text = format!("{GOOD}golden = {{ max_abs = 0.01, argmax_agreement = 0.9 }}\n");
    let golden = parse(&text).unwrap().model("digits").unwrap().golden;
    assert_eq!(golden.max_abs, 0.01);
    assert_eq!(golden.min_cosine, 0.9999);
    assert_eq!(golden.argmax_agreement, 0.9);
    for bad in [
        "{ max_abs = -1.0 }",
        "{ min_cosine = 1.5 }",
        "{ argmax_agreement = 2.0 }",
        "{ max_abs = nan }",
        "{ tolerance = 1.0 }",
    ] {
        let text = format!("{GOOD}golden = {bad}\n");
        let error = parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(
            error.to_string().contains("golden") || bad.contains("tolerance"),
            "{error}"
        );
    }
}
