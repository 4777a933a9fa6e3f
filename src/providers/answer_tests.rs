//! Unit tests of reading answers: lifetimes, blank tokens, grant lifetimes and answers that
//! are odd beside the token they carry.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{LifetimeProblem, MAX_EXPIRES_IN, Reading, TokenAnswer, parse};
use crate::outcome::ErrorKind;
use crate::providers::ProviderError;

fn answer(body: Value) -> Result<TokenAnswer, ProviderError> {
    parse(
        StatusCode::OK,
        body.to_string().as_bytes(),
        Reading::default(),
    )
}

fn lifetime_of(expires_in: Value) -> (Option<Duration>, Option<LifetimeProblem>) {
    let answer = answer(serde_json::json!({"access_token": "a", "expires_in": expires_in}))
        .expect("answer taken");
    (answer.expires_in, answer.expires_in_problem)
}

#[test]
fn believable_lifetimes_are_whole_seconds_from_numbers_or_strings() {
    let hour = Some(Duration::from_secs(3600));
    for expires_in in [
        serde_json::json!(3600),
        serde_json::json!(3600.9),
        serde_json::json!(" 3600 "),
        serde_json::json!("3.6e3"),
    ] {
        assert_eq!(
            lifetime_of(expires_in.clone()),
            (hour, None),
            "{expires_in}"
        );
    }
    assert_eq!(lifetime_of(Value::Null), (None, None));
}

#[test]
fn unbelievable_lifetimes_are_named_and_fall_back_or_are_capped() {
    let cases = [
        (serde_json::json!(0), None, LifetimeProblem::NotPositive),
        (serde_json::json!(-1), None, LifetimeProblem::NotPositive),
        (serde_json::json!(0.5), None, LifetimeProblem::NotPositive),
        (
            serde_json::json!("-3600"),
            None,
            LifetimeProblem::NotPositive,
        ),
        (serde_json::json!("abc"), None, LifetimeProblem::NotANumber),
        (serde_json::json!("inf"), None, LifetimeProblem::NotANumber),
        (serde_json::json!(""), None, LifetimeProblem::NotANumber),
        (serde_json::json!([3600]), None, LifetimeProblem::NotANumber),
        (
            serde_json::json!(1e308),
            Some(MAX_EXPIRES_IN),
            LifetimeProblem::TooLong,
        ),
        (
            serde_json::json!(u64::MAX),
            Some(MAX_EXPIRES_IN),
            LifetimeProblem::TooLong,
        ),
    ];
    for (expires_in, lifetime, problem) in cases {
        assert_eq!(
            lifetime_of(expires_in.clone()),
            (lifetime, Some(problem)),
            "{expires_in}"
        );
    }
}

#[test]
fn the_stored_lifetime_is_the_answers_else_the_default_never_past_the_cap() {
    let hour = Duration::from_secs(3600);
    let (with, without) = (
        answer(serde_json::json!({"access_token": "a", "expires_in": 60})).expect("answer"),
        answer(serde_json::json!({"access_token": "a", "expires_in": 0})).expect("answer"),
    );
    assert_eq!(with.lifetime(hour), Duration::from_secs(60));
    assert_eq!(without.lifetime(hour), hour);
    assert_eq!(without.lifetime(Duration::MAX), MAX_EXPIRES_IN);
}

#[test]
fn blank_tokens_are_no_tokens() {
    for blank in ["", " ", "\t\n"] {
        let kept = answer(serde_json::json!({"access_token": "a", "refresh_token": blank}))
            .expect("answer");
        assert!(kept.refresh_token.is_none(), "{blank:?}");
        let refused =
            answer(serde_json::json!({"access_token": blank})).expect_err("no access token");
        assert_eq!(refused.kind, ErrorKind::MalformedResponse, "{blank:?}");
    }
    let rotated =
        answer(serde_json::json!({"access_token": "a", "refresh_token": "r"})).expect("answer");
    assert_eq!(
        rotated
            .refresh_token
            .as_ref()
            .map(ExposeSecret::expose_secret),
        Some("r")
    );
}

#[test]
fn a_grant_lifetime_is_read_from_either_field_and_never_believed_blindly() {
    let grant = |fields: Value| answer(fields).expect("answer").grant_expires_in;
    let day = Duration::from_secs(86_400);
    assert_eq!(
        grant(serde_json::json!({"access_token": "a", "refresh_token_expires_in": 86_400})),
        Some(day)
    );
    assert_eq!(
        grant(serde_json::json!({"access_token": "a", "refresh_expires_in": "86400"})),
        Some(day)
    );
    assert_eq!(
        grant(
            serde_json::json!({"access_token": "a", "refresh_token_expires_in": "x",
                                 "refresh_expires_in": 86_400})
        ),
        Some(day),
        "an unusable first field gives way to the second"
    );
    assert_eq!(
        grant(serde_json::json!({"access_token": "a", "refresh_expires_in": 1e300})),
        Some(MAX_EXPIRES_IN)
    );
    for unusable in [
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!("soon"),
        serde_json::json!(null),
        serde_json::json!({"days": 1}),
    ] {
        assert_eq!(
            grant(serde_json::json!({"access_token": "a", "refresh_expires_in": unusable})),
            None,
            "{unusable}"
        );
    }
    assert_eq!(grant(serde_json::json!({"access_token": "a"})), None);
}
fn raw_answer(body: &[u8]) -> Result<TokenAnswer, ProviderError> {
    parse(StatusCode::OK, body, Reading::default())
}

#[test]
fn an_odd_member_beside_a_rotated_token_costs_only_that_member() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"access_token":"a","refresh_token":"r","scope":"\ud800"}"#.to_vec(),
        b"{\"access_token\":\"a\",\"refresh_token\":\"r\",\"scope\":\"x\xff\xfe\"}".to_vec(),
        br#"{"access_token":"a","refresh_token":"r","issued_at":1e999}"#.to_vec(),
        format!(r#"{{"access_token":"a","refresh_token":"r","other":{deep}}}"#).into_bytes(),
        b"\xef\xbb\xbf{\"access_token\":\"a\",\"refresh_token\":\"r\"}".to_vec(),
        br#"{"access_token":"a","refresh_token":"r"} and then some"#.to_vec(),
    ];
    for body in bodies {
        let taken = raw_answer(&body).unwrap_or_else(|error| {
            panic!(
                "{} refused: {:?}",
                String::from_utf8_lossy(&body),
                error.kind
            )
        });
        assert_eq!(taken.access_token.expose_secret(), "a");
        assert_eq!(
            taken
                .refresh_token
                .as_ref()
                .map(ExposeSecret::expose_secret),
            Some("r")
        );
    }
}

#[test]
fn an_unreadable_expires_in_is_named_and_the_default_applies() {
    let taken = raw_answer(br#"{"access_token":"a","expires_in":1e999}"#).expect("answer");
    assert_eq!(taken.expires_in, None);
    assert_eq!(taken.expires_in_problem, Some(LifetimeProblem::NotANumber));
}

#[test]
fn a_token_that_cannot_be_read_whole_is_never_stored_nor_kept_in_place_of_a_rotated_one() {
    for body in [
        br#"{"access_token":"\ud800","refresh_token":"r"}"#.to_vec(),
        br#"{"access_token":"a","refresh_token":"\udc00x"}"#.to_vec(),
        b"{\"access_token\":\"a\",\"refresh_token\":\"r\xff\"}".to_vec(),
        b"{\"access_token\":\"a\xc3\",\"refresh_token\":\"r\"}".to_vec(),
        b"not json at all".to_vec(),
    ] {
        let refused = raw_answer(&body).expect_err("unreadable token");
        assert_eq!(
            refused.kind,
            ErrorKind::MalformedResponse,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn a_token_object_under_a_path_is_read_past_odd_siblings() {
    let path = ["data".to_owned()];
    let reading = Reading {
        response_path: &path,
        ..Reading::default()
    };
    let body = br#"{"code":0,"extra":1e999,"data":{"access_token":"a","n":1e999}}"#;
    let taken = parse(StatusCode::OK, body, reading).expect("answer");
    assert_eq!(taken.access_token.expose_secret(), "a");
}
