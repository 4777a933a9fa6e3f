//! How `refresh` reads a provider's answer: lifetimes it cannot believe fall back or are
//! capped, and say so in the log; a blank refresh token in an answer keeps the old one.

use serde_json::Value;
use token_refresher::crypto::Column;
use wiremock::ResponseTemplate;

use crate::support::TestDb;
use crate::support::bin::{Bin, Run};
use crate::support::provider::answering;
use crate::support::report::RefreshReport;
use crate::support::seed::{self, database_with_one_due_token};

/// Refreshes one due google token against an answer with `expires_in`; returns the run and
/// the seconds the stored token has left.
async fn refresh_with_expires_in(expires_in: Value) -> (Run, f64) {
    let db = database_with_one_due_token().await;
    let server = answering(
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-lifetime-secret", "expires_in": expires_in,
        })),
        Some(1),
    )
    .await;
    let run = Bin::refresh(&db.url, &server).args(&["--json"]).run();
    assert_eq!(run.report().results[0].outcome, "refreshed");
    let left = seed::token(&db.pool, 1)
        .await
        .seconds_to_expiry
        .expect("expiry");
    (run, left)
}

/// Refreshes the one due google token of a new database against `answer`; returns the
/// database and the report.
async fn refreshed_against(answer: ResponseTemplate) -> (TestDb, RefreshReport) {
    let db = database_with_one_due_token().await;
    let server = answering(answer, Some(1)).await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .run()
        .report();
    (db, report)
}

#[tokio::test]
async fn an_absurd_expires_in_is_capped_instead_of_losing_the_answer() {
    let db = database_with_one_due_token().await;
    let server = answering(
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-forever",
            "expires_in": u64::MAX,
        })),
        None,
    )
    .await;
    let report = Bin::refresh(&db.url, &server)
        .args(&["--json"])
        .run()
        .report();
    assert_eq!(report.results[0].outcome, "refreshed");
    let years = seed::token(&db.pool, 1)
        .await
        .seconds_to_expiry
        .unwrap_or(0.0)
        / (365.0 * 24.0 * 3600.0);
    assert!((9.9..=10.1).contains(&years), "{years} years");
}

#[tokio::test]
async fn an_unusable_expires_in_falls_back_to_the_default_and_is_logged() {
    let cases = [
        (serde_json::json!(0), "not_positive"),
        (serde_json::json!(-1), "not_positive"),
        (serde_json::json!("0"), "not_positive"),
        (serde_json::json!("abc"), "not_a_number"),
        (serde_json::json!("NaN"), "not_a_number"),
        (serde_json::json!(true), "not_a_number"),
    ];
    for (expires_in, problem) in cases {
        let (run, left) = refresh_with_expires_in(expires_in.clone()).await;
        assert!(
            (3500.0..=3600.0).contains(&left),
            "{expires_in}: google's default_expires_in applies, not {left}s"
        );
        let events = run.events();
        let warned = events.named("answer_expires_in_not_believed");
        assert_eq!(warned.len(), 1, "{expires_in}: {warned:?}");
        assert_eq!(warned[0]["level"], "WARN");
        assert_eq!(warned[0]["platform"], "google");
        assert_eq!(warned[0]["problem"], problem, "{expires_in}");
        assert!(!run.stderr.contains("at-lifetime-secret"));
    }
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_at_ten_years_and_logged() {
    for expires_in in [serde_json::json!(1e308), serde_json::json!("1e308")] {
        let (run, left) = refresh_with_expires_in(expires_in.clone()).await;
        let years = left / (365.0 * 24.0 * 3600.0);
        assert!((9.9..=10.1).contains(&years), "{expires_in}: {years} years");
        let events = run.events();
        let warned = events.named("answer_expires_in_not_believed");
        assert_eq!(warned.len(), 1, "{expires_in}: {warned:?}");
        assert_eq!(warned[0]["problem"], "too_long");
    }
}

#[tokio::test]
async fn an_ordinary_expires_in_is_believed_quietly() {
    let (run, left) = refresh_with_expires_in(serde_json::json!("7200")).await;
    assert!((7100.0..=7200.0).contains(&left), "{left}");
    assert_eq!(run.events().count("answer_expires_in_not_believed"), 0);
}

#[tokio::test]
async fn a_blank_refresh_token_in_an_answer_keeps_the_old_one() {
    for blank in ["", "  "] {
        let (db, report) =
            refreshed_against(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "at-new", "refresh_token": blank, "expires_in": 3600,
            })))
            .await;
        assert_eq!(report.results[0].outcome, "refreshed", "{blank:?}");
        let row = seed::token(&db.pool, 1).await;
        assert_eq!(row.opened(Column::RefreshToken), "rt-1", "{blank:?}");
    }
}

/// Regression: a 200 carrying a rotated token was dropped as `malformed_response` when another
/// part of its body did not parse, and the rotated grant was lost with it.
#[tokio::test]
async fn a_rotated_token_beside_an_odd_member_is_stored() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"access_token":"at-odd","refresh_token":"rt-odd","scope":"\ud800"}"#.to_vec(),
        b"{\"access_token\":\"at-odd\",\"refresh_token\":\"rt-odd\",\"scope\":\"\xff\"}".to_vec(),
        br#"{"access_token":"at-odd","refresh_token":"rt-odd","expires_in":1e999}"#.to_vec(),
        format!(r#"{{"access_token":"at-odd","refresh_token":"rt-odd","x":{deep}}}"#).into_bytes(),
        b"\xef\xbb\xbf{\"access_token\":\"at-odd\",\"refresh_token\":\"rt-odd\"}".to_vec(),
        br#"{"access_token":"at-odd","refresh_token":"rt-odd"}trailing"#.to_vec(),
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        let (db, report) =
            refreshed_against(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
                .await;
        assert_eq!(report.results[0].outcome, "refreshed", "{shown}");
        let row = seed::token(&db.pool, 1).await;
        assert_eq!(row.opened(Column::AccessToken), "at-odd", "{shown}");
        assert_eq!(row.opened(Column::RefreshToken), "rt-odd", "{shown}");
    }
}

/// A 200 whose token cannot be read is an answer the provider may have rotated on: the
/// refusal of the old grant that follows is named `answer_lost`, with its alert.
#[tokio::test]
async fn a_refusal_after_an_unreadable_success_is_named_a_lost_answer() {
    let db = database_with_one_due_token().await;
    let unreadable = answering(
        ResponseTemplate::new(200).set_body_raw(
            br#"{"access_token":"at-x","refresh_token":"\udc00"}"#.to_vec(),
            "application/json",
        ),
        Some(1),
    )
    .await;
    let first = Bin::refresh(&db.url, &unreadable).args(&["--json"]).run();
    assert_eq!(
        first.report().results[0].error_kind.as_deref(),
        Some("malformed_response")
    );
    let refusing = answering(
        ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"})),
        Some(1),
    )
    .await;
    let second = Bin::refresh(&db.url, &refusing)
        .args(&["--json", "--force"])
        .run();
    assert_eq!(
        second.report().results[0].error_kind.as_deref(),
        Some("answer_lost")
    );
    assert_eq!(second.events().count("token_answer_lost"), 1);
}

/// Regression: a step of the host's wall clock during an exchange was subtracted from the new
/// lifetime (+55 min during a 2 s exchange stored 298 s instead of 3,600). The moment a request
/// was sent is told on the database's clock, from the claim and the monotonic time since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_during_an_exchange_leaves_the_lifetime_whole() {
    for step in ["+55m", "+70m", "-55m"] {
        let db = database_with_one_due_token().await;
        let server = answering(
            ResponseTemplate::new(200)
                .set_delay(std::time::Duration::from_secs(2))
                .set_body_json(
                    serde_json::json!({"access_token": "at-stepped", "expires_in": 3600}),
                ),
            Some(1),
        )
        .await;
        let clock = crate::support::clock::HostClock::off_by("+0");
        let refresh = clock
            .applied_to(Bin::refresh(&db.url, &server).args(&["--json"]))
            .spawn();
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        clock.step_to(step);
        let run = refresh.wait();
        assert_eq!(run.report().results[0].outcome, "refreshed", "{step}");
        let left = seed::token(&db.pool, 1)
            .await
            .seconds_to_expiry
            .expect("expiry");
        assert!((3_590.0..=3_600.0).contains(&left), "{step}: {left}s left");
    }
}
