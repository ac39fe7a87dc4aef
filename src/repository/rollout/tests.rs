//! Unit tests of the rollout decision and the canary routing rule.

use super::*;

fn policy() -> RolloutPolicy {
    RolloutPolicy {
        canary_percent: 10.0,
        shadow_percent: 0.0,
        promote_after: Duration::from_secs(300),
        max_error_rate: 0.01,
        max_p99_ratio: 2.0,
        min_requests: 20,
    }
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

fn seen(elapsed_s: u64, candidate: Window, stable: Window) -> Observation {
    Observation {
        elapsed: Duration::from_secs(elapsed_s),
        candidate,
        stable,
        agreement: None,
        paused: false,
    }
}

fn window(requests: u64, errors: u64, p99: Option<Duration>) -> Window {
    Window {
        requests,
        errors,
        p99,
    }
}

fn decide_default(o: &Observation) -> Decision {
    decide(&policy(), &GoldenTolerance::default(), o)
}

#[test]
fn a_healthy_canary_is_promoted_after_the_window_and_not_before() {
    let healthy = window(100, 0, ms(2));
    let stable = window(900, 1, ms(2));
    assert_eq!(
        decide_default(&seen(299, healthy, stable)),
        Decision::Continue
    );
    assert_eq!(
        decide_default(&seen(300, healthy, stable)),
        Decision::Promote
    );
    // Without enough evidence it keeps waiting, however long.
    assert_eq!(
        decide_default(&seen(10_000, window(19, 0, ms(2)), stable)),
        Decision::Continue
    );
}

#[test]
fn errors_above_the_bound_roll_back_at_once_once_there_is_evidence() {
    let stable = window(900, 0, ms(2));
    // 1 failure of 5: not enough requests to judge yet.
    assert_eq!(
        decide_default(&seen(1, window(5, 1, ms(2)), stable)),
        Decision::Continue
    );
    let Decision::RollBack(reason) = decide_default(&seen(1, window(50, 2, ms(2)), stable)) else {
        panic!("not rolled back");
    };
    assert!(matches!(
        reason,
        RollbackReason::ErrorRate { requests: 50, .. }
    ));
    assert!(
        reason.to_string().contains("max_error_rate 0.01"),
        "{reason}"
    );
    // Exactly at the bound is allowed.
    assert_eq!(
        decide_default(&seen(1, window(100, 1, ms(2)), stable)),
        Decision::Continue
    );
}

#[test]
fn a_slow_canary_rolls_back_only_against_a_measured_stable_version() {
    let slow = window(100, 0, ms(5));
    let Decision::RollBack(RollbackReason::Latency { ratio, .. }) =
        decide_default(&seen(1, slow, window(900, 0, ms(2))))
    else {
        panic!("not rolled back");
    };
    assert!((ratio - 2.5).abs() < 1e-9);
    assert_eq!(
        decide_default(&seen(1, slow, window(5, 0, ms(2)))),
        Decision::Continue
    );
    assert_eq!(
        decide_default(&seen(1, window(100, 0, ms(4)), window(900, 0, ms(2)))),
        Decision::Continue
    );
}

#[test]
fn pausing_stops_promotion_but_not_rollback() {
    let mut o = seen(1_000, window(100, 0, ms(2)), window(900, 0, ms(2)));
    o.paused = true;
    assert_eq!(decide_default(&o), Decision::Continue);
    o.candidate.errors = 50;
    assert!(matches!(decide_default(&o), Decision::RollBack(_)));
}

#[test]
fn shadow_agreement_decides_by_the_golden_bounds() {
    let agree = Agreement {
        samples: 40,
        max_abs_diff: 1e-6,
        min_cosine: 1.0,
        argmax_agreement: 1.0,
    };
    let mut o = seen(300, Window::default(), window(900, 0, ms(2)));
    o.agreement = Some(agree);
    assert_eq!(decide_default(&o), Decision::Promote);
    o.agreement = Some(Agreement {
        samples: 10,
        ..agree
    });
    assert_eq!(decide_default(&o), Decision::Continue, "too few samples");
    for bad in [
        Agreement {
            max_abs_diff: 0.5,
            ..agree
        },
        Agreement {
            min_cosine: 0.9,
            ..agree
        },
        Agreement {
            argmax_agreement: 0.95,
            ..agree
        },
        Agreement {
            max_abs_diff: f64::NAN,
            ..agree
        },
    ] {
        o.agreement = Some(bad);
        let decision = decide_default(&o);
        assert!(
            matches!(
                decision,
                Decision::RollBack(RollbackReason::Disagreement { .. })
            ),
            "{bad:?}: {decision:?}"
        );
    }
}

#[test]
fn routing_is_sticky_and_its_share_is_within_the_binomial_interval() {
    let ids: Vec<String> = (0..1000).map(|i| format!("request-{i}")).collect();
    let picked = ids
        .iter()
        .filter(|id| routes_to_candidate(id.as_bytes(), 20.0))
        .count();
    // 99% interval of Binomial(1000, 0.2): 200 ± 2.576 · sqrt(1000 · 0.2 · 0.8) ≈ 200 ± 33.
    assert!((167..=233).contains(&picked), "{picked} of 1000");
    for id in &ids {
        assert_eq!(
            routes_to_candidate(id.as_bytes(), 20.0),
            routes_to_candidate(id.as_bytes(), 20.0)
        );
    }
    assert!(!ids.iter().any(|id| routes_to_candidate(id.as_bytes(), 0.0)));
    assert!(ids
        .iter()
        .all(|id| routes_to_candidate(id.as_bytes(), 100.0)));
}

#[test]
fn p99_is_the_nearest_rank() {
    assert_eq!(p99(&mut []), None);
    let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
    assert_eq!(p99(&mut samples), ms(99));
    assert_eq!(p99(&mut [Duration::from_millis(7)]), ms(7));
}

fn comparison(
    rows: usize,
    max_abs: f64,
    cosine: f64,
    argmax: f64,
) -> crate::repository::golden::OutputComparison {
    crate::repository::golden::OutputComparison {
        output: "output".to_string(),
        shape: vec![rows, 3],
        produced_shape: None,
        max_abs_diff: max_abs,
        min_cosine: cosine,
        argmax_agreement: argmax,
    }
}

#[test]
fn a_tally_keeps_the_worst_figures_and_the_share_of_agreeing_rows() {
    let mut tally = Tally::default();
    assert_eq!(
        tally.agreement(),
        Agreement {
            samples: 0,
            max_abs_diff: 0.0,
            min_cosine: 1.0,
            argmax_agreement: 1.0
        }
    );
    tally.add(&[comparison(4, 1e-6, 0.99999, 1.0)]);
    tally.add(&[comparison(4, 1e-3, 0.9, 0.5), comparison(2, 0.0, 1.0, 1.0)]);
    let a = tally.agreement();
    assert_eq!(a.samples, 2);
    assert_eq!(a.max_abs_diff, 1e-3);
    assert_eq!(a.min_cosine, 0.9);
    // 4 + 2 + 2 agreeing rows of 10.
    assert!((a.argmax_agreement - 0.8).abs() < 1e-12, "{a:?}");
    // A NaN (or a shape mismatch, which compares as NaN) sticks and breaks the bounds.
    tally.add(&[comparison(1, f64::NAN, f64::NAN, 0.0)]);
    tally.add(&[comparison(1, 0.0, 1.0, 1.0)]);
    let a = tally.agreement();
    assert!(a.max_abs_diff.is_nan() && a.min_cosine.is_nan());
    let mut p = policy();
    p.min_requests = 1;
    let seen = Observation {
        agreement: Some(a),
        ..seen(1, Window::default(), Window::default())
    };
    assert!(matches!(
        decide(&p, &GoldenTolerance::default(), &seen),
        Decision::RollBack(RollbackReason::Disagreement { .. })
    ));
}

#[test]
fn a_shadow_is_promoted_on_compared_samples_not_on_requests() {
    let mut p = policy();
    p.min_requests = 5;
    let agreement = |samples| Agreement {
        samples,
        max_abs_diff: 0.0,
        min_cosine: 1.0,
        argmax_agreement: 1.0,
    };
    let busy = window(1000, 0, None);
    let o = Observation {
        agreement: Some(agreement(4)),
        ..seen(600, busy, busy)
    };
    assert_eq!(
        decide(&p, &GoldenTolerance::default(), &o),
        Decision::Continue
    );
    let o = Observation {
        agreement: Some(agreement(5)),
        ..o
    };
    assert_eq!(
        decide(&p, &GoldenTolerance::default(), &o),
        Decision::Promote
    );
    // Paused: it waits; an operator's rollback reason names the token id, not the token.
    let o = Observation { paused: true, ..o };
    assert_eq!(
        decide(&p, &GoldenTolerance::default(), &o),
        Decision::Continue
    );
    let by_hand = RollbackReason::Operator {
        token_id: "1a2b3c4d".to_string(),
        reason: "p99 spikes".to_string(),
    };
    assert_eq!(by_hand.label(), "operator_rollback");
    assert_eq!(
        by_hand.to_string(),
        "rolled back by an operator (token 1a2b3c4d): p99 spikes"
    );
}
