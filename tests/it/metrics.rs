//! `/metrics`, `/healthz` and `/readyz` of the running daemon, read as Prometheus and a
//! service manager would, and checked against what the database says happened.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sqlx::Executor;
use token_refresher::loopback_provider::LoopbackProvider;

use crate::support::TestDb;
use crate::support::bin::GOOGLE_SECRET;
use crate::support::cluster::Cluster;
use crate::support::daemon::Daemon;
use crate::support::provider::{free_address, loopback};
use crate::support::receiver::{Receiver, SECRET};

/// A daemon serving its metrics and probes on `address`; a refusal is final at once.
fn metrics_daemon(database_url: &str, provider: &LoopbackProvider, address: &str) -> Daemon {
    Daemon::start(&Daemon::command(database_url, provider).envs(&[
        ("TOKEN_REFRESHER__METRICS__LISTEN", address),
        ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
        ("TOKEN_REFRESHER__RETRY__PERMANENT_ATTEMPTS", "1"),
        ("TOKEN_REFRESHER__DATABASE__CONNECT_TIMEOUT", "1s"),
    ]))
}

/// GETs `path`; `None` while nothing listens.
async fn get(address: &str, path: &str) -> Option<(StatusCode, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = StatusCode::from_u16(response.status().as_u16()).ok()?;
    Some((status, response.text().await.ok()?))
}

/// Polls `path` until it answers `status`, returning the body.
async fn wait_for(address: &str, path: &str, status: StatusCode, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        match get(address, path).await {
            Some((got, body)) if got == status => return body,
            other => last = other,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} did not answer {status} within {limit:?}; last: {last:?}");
}

/// Sample lines of the exposition, by name with labels (as written) to value.
fn samples(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} is not exposed: {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_cycle_match_the_database_and_pass_promtool() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'a', 'google', 'm-at-1', 'm-rt-1', now() + interval '5 minutes'),
             (2, 'b', 'google', 'm-at-2', 'm-rt-2', now() + interval '5 minutes'),
             (3, 'a', 'google', 'm-at-3', 'm-rt-revoked', now() + interval '5 minutes'),
             (4, 'b', 'google', 'm-at-4', 'm-rt-down', now() + interval '5 minutes'),
             (5, 'a', 'google', 'm-at-5', 'm-rt-5', now() + interval '3 days');
         UPDATE oauth_tokens SET grant_expires_at = now() + interval '300 days' WHERE id = 5;",
    )
    .execute(&db.pool)
    .await
    .expect("tokens");
    for token in ["m-rt-1", "m-rt-2", "m-rt-down", "m-rt-5"] {
        provider.grant(token);
    }
    provider.force("m-rt-down", StatusCode::SERVICE_UNAVAILABLE);
    let address = free_address();
    let _daemon = metrics_daemon(&db.url, &provider, &address);

    // Two refreshed, one refused for good, one failing with a 503; token 5 is not due.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        let body = wait_for(
            &address,
            "/metrics",
            StatusCode::OK,
            Duration::from_secs(10),
        )
        .await;
        let current = samples(&body);
        let state = |state: &str| {
            current
                .get(&format!(
                    "token_refresher_tokens{{platform=\"google\",state=\"{state}\"}}"
                ))
                .copied()
        };
        if state("needs_reauth") == Some(1.0) && state("failing") == Some(1.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "no cycle's gauges: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let current = samples(&exposition);
    let attempts = |outcome: &str| {
        value(
            &current,
            &format!(
                "token_refresher_refresh_attempts_total{{platform=\"google\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    let recorded: Vec<(String, i64)> = sqlx::query_as(
        "SELECT result::jsonb ->> 'outcome', count(*) FROM agent_executions GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("outcomes");
    let recorded: HashMap<String, i64> = recorded.into_iter().collect();
    for outcome in ["refreshed", "failed", "needs_reauth"] {
        assert_eq!(
            attempts(outcome),
            recorded.get(outcome).copied().unwrap_or(0) as f64,
            "{outcome} attempts against agent_executions"
        );
    }
    assert_eq!(
        (
            attempts("refreshed"),
            attempts("failed"),
            attempts("needs_reauth")
        ),
        (2.0, 1.0, 1.0)
    );
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT refresh_status, count(*) FROM oauth_tokens GROUP BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("states");
    for (state, count) in states {
        assert_eq!(
            value(
                &current,
                &format!("token_refresher_tokens{{platform=\"google\",state=\"{state}\"}}")
            ),
            count as f64,
            "{state} tokens"
        );
    }
    for (state, expected) in [("active", 1.0), ("suspended", 0.0), ("outage", 0.0)] {
        assert_eq!(
            value(
                &current,
                &format!("token_refresher_platform_state{{platform=\"google\",state=\"{state}\"}}")
            ),
            expected,
            "google {state}"
        );
    }
    // The soonest refreshable expiry is the failing token's, about five minutes away.
    let soonest = value(
        &current,
        "token_refresher_soonest_expiry_seconds{platform=\"google\"}",
    );
    assert!((200.0..=300.0).contains(&soonest), "{soonest}");
    assert_eq!(
        value(
            &current,
            "token_refresher_lead_time_seconds{platform=\"google\"}"
        ),
        600.0
    );
    assert_eq!(value(&current, "token_refresher_cycle_period_seconds"), 1.0);
    assert!(
        value(
            &current,
            "token_refresher_exchange_duration_seconds_count{platform=\"google\"}"
        ) >= 4.0
    );
    assert!(value(&current, "token_refresher_claim_batch_size_count") >= 1.0);
    assert!(
        exposition.contains(&format!(
            "token_refresher_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{exposition}"
    );
    for secret in ["m-rt-1", "m-at-1", GOOGLE_SECRET, "tenant", "token_id"] {
        assert!(!exposition.contains(secret), "{secret} in the metrics");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for name in dashboard_metric_names() {
        assert!(
            exposition.contains(&format!("\n{name}")),
            "the dashboard names {name}, which the daemon does not export:\n{exposition}"
        );
    }
}

/// Every PromQL expression of the shipped Grafana dashboard, with its panel's title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/token-refresher.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().expect("title").to_owned();
            let expr = target["expr"].as_str().expect("expr").to_owned();
            expressions.push((title, expr));
        }
    }
    expressions
}

/// The metric names the dashboard's expressions read: the daemon's own and its process's
/// (`up` comes from Prometheus itself, for the TokenRefresherDown panel).
fn dashboard_metric_names() -> std::collections::BTreeSet<String> {
    dashboard_expressions()
        .iter()
        .flat_map(|(_, expr)| selectors(expr))
        .map(|(name, _)| name)
        .filter(|name| name != "up")
        .collect()
}

/// The metric selectors of a PromQL expression: each name of the daemon's (`token_refresher_`),
/// its process's (`process_`) or `up`, with what its braces hold (empty without braces).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_len = rest[start..]
            .find(|c: char| !is_name(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let after = &rest[start + word_len..];
        let metric = word.starts_with("token_refresher_")
            || word.starts_with("process_")
            || (word == "up" && after.starts_with('{'));
        if metric {
            let matchers = after
                .strip_prefix('{')
                .and_then(|inside| inside.split_once('}'))
                .map_or("", |(matchers, _)| matchers);
            found.push((word.to_owned(), matchers.to_owned()));
        }
        rest = after;
    }
    found
}

/// The alert names of the shipped rules file.
fn shipped_alerts() -> Vec<String> {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus/token-refresher.rules.yml"
    ))
    .expect("alert rules");
    shipped
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_parses_with_promtool_and_has_a_panel_per_alert_rule() {
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 18, "{expressions:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in expressions.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_panel_{index}\n        expr: |\n"
        ));
        for line in expr.lines() {
            rules.push_str(&format!("          {line}\n"));
        }
    }
    let file = tempfile::Builder::new()
        .suffix(".yml")
        .tempfile()
        .expect("rules file");
    std::fs::write(file.path(), rules).expect("rules written");
    let checked = promtool(&["check", "rules", file.path().to_str().expect("UTF-8 path")]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", expressions.len())),
        "{checked}"
    );
    let alerts = shipped_alerts();
    assert_eq!(alerts.len(), 13);
    for alert in &alerts {
        assert!(
            expressions
                .iter()
                .any(|(title, _)| title == &format!("Alert: {alert}")),
            "no panel for the alert rule {alert}"
        );
    }
}

/// A daemon on an empty database serving its probes, once `/healthz` says it is healthy.
async fn healthy_daemon() -> (TestDb, LoopbackProvider, String, Daemon) {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    let address = free_address();
    let daemon = metrics_daemon(&db.url, &provider, &address);
    wait_for(
        &address,
        "/healthz",
        StatusCode::OK,
        Duration::from_secs(15),
    )
    .await;
    (db, provider, address, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_the_scheduler_is_wedged_and_recovers() {
    let (db, _provider, address, _daemon) = healthy_daemon().await;

    // A migration-style lock on the tokens table stops every cycle in its first query.
    let mut wedge = db.pool.begin().await.expect("transaction");
    sqlx::query("LOCK TABLE oauth_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *wedge)
        .await
        .expect("lock");
    let body = wait_for(
        &address,
        "/healthz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    assert!(body.contains("no progress"), "{body}");
    wedge.rollback().await.expect("unlock");
    wait_for(
        &address,
        "/healthz",
        StatusCode::OK,
        Duration::from_secs(10),
    )
    .await;
}

/// A cycle the database refuses every time (here: a function it needs is missing) is no
/// outage: `/healthz` fails, so the service manager hears of it, until a cycle succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_cycles_fail_and_recovers() {
    let (db, _provider, address, _daemon) = healthy_daemon().await;
    let signature = "token_refresher_candidates(jsonb, interval, text[], text, integer[], boolean,
                                                timestamptz, integer, integer)";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER FUNCTION {signature} RENAME TO token_refresher_candidates_away"
    )))
    .execute(&db.pool)
    .await
    .expect("rename away");
    let body = wait_for(
        &address,
        "/healthz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    assert!(body.contains("cycle_failed"), "{body}");
    assert_eq!(
        get(&address, "/readyz").await.map(|(status, _)| status),
        Some(StatusCode::OK),
        "the database itself is fine"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER FUNCTION {} RENAME TO token_refresher_candidates",
        signature.replace(
            "token_refresher_candidates(",
            "token_refresher_candidates_away("
        )
    )))
    .execute(&db.pool)
    .await
    .expect("rename back");
    wait_for(
        &address,
        "/healthz",
        StatusCode::OK,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_away_and_back() {
    let (cluster, pool) = Cluster::migrated().await;
    pool.close().await;
    let provider = loopback().await;
    let address = free_address();
    let _daemon = metrics_daemon(&cluster.url(), &provider, &address);
    wait_for(&address, "/readyz", StatusCode::OK, Duration::from_secs(15)).await;

    cluster.stop();
    wait_for(
        &address,
        "/readyz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    cluster.start_again();
    wait_for(&address, "/readyz", StatusCode::OK, Duration::from_secs(20)).await;
}

/// Runs promtool with `args` from the repository's root and asserts it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool (Debian package prometheus) runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {printed}");
    printed
}

#[test]
fn the_shipped_alert_rules_are_valid_and_pass_their_unit_tests() {
    let checked = promtool(&[
        "check",
        "rules",
        "config/prometheus/token-refresher.rules.yml",
    ]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool(&[
        "test",
        "rules",
        "config/prometheus/token-refresher.rules.test.yml",
    ]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every distinct `platform` label value in an exposition.
fn platform_labels(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .split("platform=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(value, _)| value.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_labels_are_configured_platforms_or_other() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    // Not due, so only the token gauges see them: 300 stray platform names and one of 10 kB,
    // beside a google and a meta (configured, inactive) token.
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT 'a', 'stray-' || g, 'at', 'rt', now() + interval '3 days'
             FROM generate_series(1, 300) AS g;
         INSERT INTO oauth_tokens (tenant_id, platform, access_token, refresh_token, expires_at)
         VALUES ('a', repeat('x', 10000), 'at', 'rt', now() + interval '3 days'),
                ('a', 'google', 'at', 'rt', now() + interval '3 days'),
                ('a', 'meta', 'at', 'rt', now() + interval '30 days');",
    )
    .execute(&db.pool)
    .await
    .expect("tokens");
    let address = free_address();
    let _daemon = Daemon::start(&Daemon::command(&db.url, &provider).envs(&[
        ("TOKEN_REFRESHER__METRICS__LISTEN", address.as_str()),
        ("TOKEN_REFRESHER__LOG__LEVEL", "error"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        let body = wait_for(
            &address,
            "/metrics",
            StatusCode::OK,
            Duration::from_secs(10),
        )
        .await;
        let google = "token_refresher_tokens{platform=\"google\",state=\"active\"}";
        if samples(&body).get(google) == Some(&1.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "no cycle's gauges: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let configured = [
        "google",
        "hubspot",
        "linkedin",
        "meta",
        "microsoft",
        "salesforce",
        "tiktok",
        "x",
        "other",
    ];
    let labels = platform_labels(&exposition);
    let unexpected: Vec<&String> = labels
        .iter()
        .filter(|label| !configured.contains(&label.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} unexpected platform labels, such as {:.80?}",
        unexpected.len(),
        unexpected.first()
    );
    let current = samples(&exposition);
    let tokens = |platform: &str| {
        value(
            &current,
            &format!("token_refresher_tokens{{platform=\"{platform}\",state=\"active\"}}"),
        )
    };
    assert_eq!(tokens("other"), 301.0);
    assert_eq!(tokens("meta"), 1.0);
    let soonest = value(
        &current,
        "token_refresher_soonest_expiry_seconds{platform=\"other\"}",
    );
    assert!((250_000.0..=260_000.0).contains(&soonest), "{soonest}");
}

/// Regression: the soonest-expiry gauge counted from the host's clock, so a daemon 2 h fast
/// reported a token with an hour left as expired (a false page), and one 2 h slow hid a real
/// expiry; the last successful cycle was dated by it too. Every instance reports the
/// database's view, whatever its own clock says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauges_follow_the_databases_clock_not_the_hosts() {
    for offset in ["+2h", "-2h"] {
        let db = TestDb::migrated().await;
        let provider = loopback().await;
        sqlx::raw_sql(
            "INSERT INTO tenants (id, name) VALUES ('a', 'A');
             INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token,
                                       expires_at, grant_expires_at)
             VALUES (1, 'a', 'google', 'c-at-1', 'c-rt-1', now() + interval '1 hour',
                     now() + interval '10 days')",
        )
        .execute(&db.pool)
        .await
        .expect("seed");
        let address = free_address();
        let clock = crate::support::clock::HostClock::off_by(offset);
        let _daemon = Daemon::start(&clock.applied_to(Daemon::command(&db.url, &provider).envs(
            &[
                ("TOKEN_REFRESHER__METRICS__LISTEN", &address),
                ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
            ],
        )));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (expiry, grant) = loop {
            if let Some((StatusCode::OK, body)) = get(&address, "/metrics").await {
                let samples = samples(&body);
                let expiry = samples
                    .get(r#"token_refresher_soonest_expiry_seconds{platform="google"}"#)
                    .copied();
                let grant = samples
                    .get(r#"token_refresher_soonest_grant_expiry_seconds{platform="google"}"#)
                    .copied();
                if let (Some(expiry), Some(grant)) = (expiry, grant) {
                    break (expiry, grant);
                }
            }
            assert!(Instant::now() < deadline, "{offset}: no expiry gauges");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!((3_500.0..=3_600.0).contains(&expiry), "{offset}: {expiry}");
        let (_, body) = get(&address, "/metrics").await.expect("metrics");
        let cycle = value(
            &samples(&body),
            "token_refresher_last_successful_cycle_timestamp_seconds",
        );
        let real_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            (real_now - cycle).abs() < 60.0,
            "{offset}: the last cycle dated {cycle}, the database says about {real_now}"
        );
        let ten_days = 10.0 * 86_400.0;
        assert!(
            (ten_days - 100.0..=ten_days).contains(&grant),
            "{offset}: {grant}"
        );
    }
}

/// Regression: `/healthz` measured the scheduler's silence with the wall clock, so a step of
/// the host's clock forward failed a working daemon (and a liveness probe would restart it).
/// It counts on the monotonic clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_not_fooled_by_a_step_of_the_wall_clock() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    let address = free_address();
    let clock = crate::support::clock::HostClock::off_by("+0");
    let _daemon = Daemon::start(
        &clock.applied_to(Daemon::command(&db.url, &provider).envs(&[
            ("TOKEN_REFRESHER__METRICS__LISTEN", &address),
            ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
        ])),
    );
    wait_for(
        &address,
        "/healthz",
        StatusCode::OK,
        Duration::from_secs(20),
    )
    .await;
    clock.step_to("+2h");
    for _ in 0..10 {
        let answered = get(&address, "/healthz").await.map(|(status, _)| status);
        assert_eq!(answered, Some(StatusCode::OK), "after a step of 2 h");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `/metrics` shows every one of `wanted` (series as written, value), returning the
/// last exposition.
async fn wait_for_samples(address: &str, wanted: &[(&str, f64)], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((StatusCode::OK, body)) = get(address, "/metrics").await {
            let current = samples(&body);
            if wanted
                .iter()
                .all(|(series, value)| current.get(*series) == Some(value))
            {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics did not show {wanted:?} within {limit:?}:\n{body}"
            );
        }
        assert!(Instant::now() < deadline, "/metrics did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_landing_page_links_metrics_healthz_and_readyz() {
    let (_db, _provider, address, _daemon) = healthy_daemon().await;
    let response = reqwest::get(format!("http://{address}/"))
        .await
        .expect("the landing page");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.expect("body");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert!(page.contains(&format!("href=\"{path}\"")), "{page}");
    }
}

/// The database going away shows in `token_refresher_database_up` within a cycle, and the
/// outage's log line names its cause as `check` does; the gauge returns to 1 with the database.
/// The process's own metrics are there throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_shows_in_database_up_and_its_log_line_names_the_cause() {
    let (cluster, pool) = Cluster::migrated().await;
    pool.close().await;
    let provider = loopback().await;
    let address = free_address();
    let daemon = metrics_daemon(&cluster.url(), &provider, &address);
    let up = [("token_refresher_database_up", 1.0)];
    let exposition = wait_for_samples(&address, &up, Duration::from_secs(20)).await;
    let current = samples(&exposition);
    assert!(value(&current, "process_cpu_seconds_total") >= 0.0);
    for positive in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(value(&current, positive) > 0.0, "{positive}: {exposition}");
    }
    let started = value(&current, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!((now - 120.0..=now + 1.0).contains(&started), "{started}");
    assert_eq!(value(&current, "token_refresher_requests_waiting"), 0.0);

    cluster.stop();
    let down = [("token_refresher_database_up", 0.0)];
    let exposition = wait_for_samples(&address, &down, Duration::from_secs(20)).await;
    assert!(
        exposition.contains("process_resident_memory_bytes "),
        "{exposition}"
    );
    let outage = daemon
        .wait_for("database_unavailable", 1, Duration::from_secs(10))
        .await;
    let error = outage["error"].as_str().expect("the outage's error");
    assert!(
        error.contains("is unreachable: ") && error.contains("refused"),
        "the cause, as check names it: {error}"
    );

    cluster.start_again();
    wait_for_samples(&address, &up, Duration::from_secs(30)).await;
}

/// A receiver answering 500 shows in the webhook metrics: failed deliveries counted, the event
/// pending and aging, then given up once `webhooks.max_age` old, when nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_receiver_shows_in_the_delivery_metrics() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
         VALUES (1, 'a', 'google', 'w-at-1', 'w-rt-down', now() + interval '5 minutes');",
    )
    .execute(&db.pool)
    .await
    .expect("a token");
    provider.grant("w-rt-down");
    provider.force("w-rt-down", StatusCode::SERVICE_UNAVAILABLE);
    let receiver = Receiver::start();
    receiver.answer("500");
    let address = free_address();
    let _daemon = Daemon::start(&Daemon::command(&db.url, &provider).envs(&[
        ("TOKEN_REFRESHER__METRICS__LISTEN", address.as_str()),
        ("TOKEN_REFRESHER__LOG__LEVEL", "warn"),
        ("TOKEN_REFRESHER__WEBHOOKS__URL", receiver.url().as_str()),
        ("TOKEN_REFRESHER__WEBHOOKS__SECRET", SECRET),
        ("TOKEN_REFRESHER__WEBHOOKS__MAX_AGE", "8s"),
        ("TOKEN_REFRESHER__RETRY__BASE_DELAY", "1s"),
        ("TOKEN_REFRESHER__RETRY__MAX_DELAY", "1s"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (failed, pending, oldest) = loop {
        if let Some((StatusCode::OK, body)) = get(&address, "/metrics").await {
            let current = samples(&body);
            let read = |series: &str| current.get(series).copied().unwrap_or(0.0);
            let failed = read(r#"token_refresher_webhook_deliveries_total{result="failed"}"#);
            let pending = read("token_refresher_webhook_pending");
            let oldest = read("token_refresher_webhook_oldest_pending_seconds");
            if failed >= 2.0 && pending == 1.0 && oldest >= 1.0 {
                assert_eq!(
                    read(r#"token_refresher_webhook_deliveries_total{result="delivered"}"#),
                    0.0
                );
                break (failed, pending, oldest);
            }
        }
        assert!(Instant::now() < deadline, "no failed deliveries pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!((1.0..=8.5).contains(&oldest), "{failed} {pending} {oldest}");
    wait_for_samples(
        &address,
        &[
            (
                r#"token_refresher_webhook_deliveries_total{result="given_up"}"#,
                1.0,
            ),
            ("token_refresher_webhook_pending", 0.0),
            ("token_refresher_webhook_oldest_pending_seconds", 0.0),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(receiver.deliveries().len() >= 2);
}

/// The metrics that carry a `platform` label: a dashboard query of them is filtered by the
/// `platform` variable too.
const PLATFORM_METRICS: [&str; 7] = [
    "token_refresher_refresh_attempts_total",
    "token_refresher_exchange_duration_seconds_bucket",
    "token_refresher_tokens",
    "token_refresher_platform_state",
    "token_refresher_soonest_expiry_seconds",
    "token_refresher_soonest_grant_expiry_seconds",
    "token_refresher_lead_time_seconds",
];

/// Grafana's file provisioning loads a dashboard as it is, with no import step to fill in
/// `__inputs`: the data source must be a variable of the dashboard itself, and so must the
/// job, instance and platform every query is narrowed to.
#[test]
fn the_dashboard_loads_by_file_provisioning_with_its_variables_in_every_query() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/token-refresher.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(dashboard.get("__inputs").is_none(), "import-only __inputs");
    assert!(
        !text.contains("${DS_"),
        "an import-time data source reference"
    );
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()));
    assert!(
        dashboard["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty())
    );
    assert!(
        dashboard["id"].is_null(),
        "a provisioned dashboard has no fixed id"
    );

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|variable| variable["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    let data_source = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for (name, label) in [
        ("job", "job"),
        ("instance", "instance"),
        ("platform", "platform"),
    ] {
        let variable = variable(name);
        assert_eq!(variable["type"], "query", "{name}");
        assert_eq!(variable["datasource"], data_source, "{name}");
        let query = variable["query"]["query"].as_str().expect("a query");
        assert!(
            query.starts_with("label_values(token_refresher_")
                && query.ends_with(&format!(", {label})")),
            "{name}: {query}"
        );
    }

    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        let Some(targets) = panel["targets"].as_array() else {
            assert_eq!(panel["type"], "row", "{title} has no queries");
            continue;
        };
        assert_eq!(panel["datasource"], data_source, "{title}");
        for target in targets {
            assert_eq!(target["datasource"], data_source, "{title}");
            let expr = target["expr"].as_str().expect("expr");
            let selectors = selectors(expr);
            assert!(!selectors.is_empty(), "{title}: {expr}");
            for (metric, matchers) in selectors {
                let mut wanted = vec![r#"job=~"$job""#, r#"instance=~"$instance""#];
                if PLATFORM_METRICS.contains(&metric.as_str()) {
                    wanted.push(r#"platform=~"$platform""#);
                }
                for matcher in wanted {
                    assert!(
                        matchers.contains(matcher),
                        "{title}: {metric} not narrowed by {matcher}: {expr}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "{checked} selectors");
}

/// README's alert table is where an operator looks up an alert that fired: it lists every
/// rule the rules file ships, and no other.
#[test]
fn readme_lists_every_shipped_alert_and_no_other() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let listed: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `TokenRefresher"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| format!("TokenRefresher{name}"))
        .collect();
    let shipped: std::collections::BTreeSet<String> = shipped_alerts().into_iter().collect();
    assert_eq!(listed, shipped);
}

/// A refresh request another worker's lease holds back waits, and shows in
/// `token_refresher_requests_waiting` until it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_another_workers_lease_shows_in_requests_waiting() {
    let (db, provider, address, _daemon) = healthy_daemon().await;
    wait_for_samples(
        &address,
        &[("token_refresher_requests_waiting", 0.0)],
        Duration::from_secs(10),
    )
    .await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('a', 'A');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at,
                                   lease_owner, lease_expires_at)
         VALUES (1, 'a', 'google', 'q-at-1', 'q-rt-1', now() + interval '1 day',
                 'elsewhere', now() + interval '10 minutes');",
    )
    .execute(&db.pool)
    .await
    .expect("a token leased elsewhere");
    provider.grant("q-rt-1");
    let recorded: bool = sqlx::query_scalar("SELECT token_refresher_request_refresh('a', 1)")
        .fetch_one(&db.pool)
        .await
        .expect("the request");
    assert!(recorded);
    wait_for_samples(
        &address,
        &[("token_refresher_requests_waiting", 1.0)],
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("UPDATE oauth_tokens SET lease_owner = NULL, lease_expires_at = NULL")
        .execute(&db.pool)
        .await
        .expect("the lease given back");
    wait_for_samples(
        &address,
        &[("token_refresher_requests_waiting", 0.0)],
        Duration::from_secs(20),
    )
    .await;
}

/// `token_refresher_usable_ratio` is each platform's share of usable tokens: active, or
/// failing and not yet expired, on a platform that is not suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usable_ratio_counts_active_and_unexpired_failing_tokens() {
    let (db, _provider, address, _daemon) = healthy_daemon().await;
    crate::support::seed::tenants(&db.pool, &["a", "b"]).await;
    crate::support::seed::tokens(
        &db.pool,
        "",
        &[
            (1, "a", "google", "5 days"),
            (2, "b", "google", "5 days"),
            (3, "a", "google", "5 days"),
            (4, "b", "google", "-1 hour"),
        ],
    )
    .await;
    db.pool
        .execute(
            "UPDATE oauth_tokens SET refresh_status = 'failing' WHERE id IN (2, 4);
             UPDATE oauth_tokens SET refresh_status = 'needs_reauth' WHERE id = 3;",
        )
        .await
        .expect("states");
    wait_for_samples(
        &address,
        &[("token_refresher_usable_ratio{platform=\"google\"}", 0.5)],
        Duration::from_secs(20),
    )
    .await;
}
