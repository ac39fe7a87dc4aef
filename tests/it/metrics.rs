//! `/metrics` parses as Prometheus/OpenMetrics text and its counters move as requests are served.

use std::collections::{BTreeMap, HashMap};

use crate::util::{infer_request, TestServer};

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text exposition format: every sample belongs to a family declared by
/// `# TYPE`, names and labels are well-formed, values are numbers, histograms are cumulative
/// and end at `+Inf` = `_count`, and the body ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().expect("metadata names a family");
            assert!(valid_name(name), "bad family name {name:?}");
            match kind {
                "TYPE" => {
                    let t = parts.next().expect("type");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "summary",
                            "unknown"
                        ]
                        .contains(&t),
                        "{line}"
                    );
                    types.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown metadata line {line:?}"),
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    assert!(valid_name(k), "bad label name {k:?}");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(valid_name(&name), "bad sample name {name:?}");
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(&name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        if kind == "counter" {
            assert!(
                name.ends_with("_total") || name.ends_with("_created"),
                "counter sample {name}"
            );
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    check_histograms(&samples);
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A histogram series: its family and labels (without `le`).
type Series = (String, BTreeMap<String, String>);

fn check_histograms(samples: &[Sample]) {
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut labels = s.labels.clone();
        let le = labels.remove("le").expect("bucket has le");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        buckets
            .entry((s.name.trim_end_matches("_bucket").to_string(), labels))
            .or_default()
            .push((le, s.value));
    }
    for ((family, labels), series) in buckets {
        assert!(
            series
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family} buckets not cumulative"
        );
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count") && s.labels == labels)
            .expect("histogram has _count");
        assert_eq!(
            series.last().unwrap(),
            &(f64::INFINITY, count.value),
            "{family}: +Inf bucket != _count"
        );
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move() {
    let (server, _repo) = TestServer::demo("").await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let before = parse(&body.text());
    assert_eq!(
        value(
            &before,
            "wick_model_version_info",
            &[("model", "digits"), ("version", "1")]
        ),
        1.0
    );
    assert!(
        value(
            &before,
            "wick_model_weights_resident_bytes",
            &[("model", "digits")]
        ) > 60_000.0
    );
    assert_eq!(
        value(
            &before,
            "wick_model_loads_total",
            &[("model", "simple"), ("result", "success")]
        ),
        1.0
    );

    let good = infer_request("input", "FP32", [3, 10], vec![0.5f32; 30]);
    for _ in 0..5 {
        assert_eq!(
            server.post_json("/v2/models/simple/infer", &good).await.0,
            200
        );
    }
    let bad = infer_request("input", "FP32", [1, 9], vec![0.5f32; 9]);
    assert_eq!(
        server.post_json("/v2/models/simple/infer", &bad).await.0,
        400
    );

    let after = parse(&server.get("/metrics").await.1.text());
    let requests = |outcome: &str| {
        value(
            &after,
            "wick_requests_total",
            &[("model", "simple"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("success"), 5.0);
    assert_eq!(
        value(
            &after,
            "wick_requests_total",
            &[
                ("model", "simple"),
                ("version", "1"),
                ("outcome", "success")
            ]
        ),
        5.0
    );
    assert_eq!(requests("bad_request"), 1.0);
    assert_eq!(
        value(
            &after,
            "wick_request_duration_seconds_count",
            &[("model", "simple")]
        ),
        6.0
    );
    // Sequential requests each find the model idle: one forward pass of 3 rows each.
    assert_eq!(
        value(&after, "wick_forward_calls_total", &[("model", "simple")]),
        5.0
    );
    assert_eq!(
        value(&after, "wick_batch_size_rows_sum", &[("model", "simple")]),
        15.0
    );
    assert_eq!(
        value(
            &after,
            "wick_queue_duration_seconds_count",
            &[("model", "simple")]
        ),
        5.0
    );
    assert_eq!(
        value(&after, "wick_queue_depth", &[("model", "simple")]),
        0.0
    );
    assert!(
        value(
            &after,
            "wick_compute_duration_seconds_sum",
            &[("model", "simple")]
        ) > 0.0
    );
    server.shutdown().await;
}
