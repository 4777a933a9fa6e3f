//! Many workers at once over thousands of rotating tokens, and a cycle over bad rows: nothing
//! is exchanged twice, nothing is lost, and a bad row never stops the cycle.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use token_refresher::config::PlatformKind;
use token_refresher::loopback_provider::LoopbackProvider;

use crate::support::TEST_KEYS;
use crate::support::TestDb;

const TOKENS: i32 = 5000;

pub(crate) fn worker(db: &TestDb, provider: &LoopbackProvider, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-refresher"));
    command
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("TOKEN_REFRESHER_KEYS", TEST_KEYS)
        .env("TOKEN_REFRESHER__LOG__LEVEL", "warn")
        .env("TOKEN_REFRESHER__LOG__FORMAT", "json")
        .env("TOKEN_REFRESHER__SCHEDULER__CRON", "* * * * * *")
        .env("TOKEN_REFRESHER__SCHEDULER__BATCH_SIZE", "50")
        .env("TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS", "4")
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__TOKEN_URL",
            provider.token_url(PlatformKind::Oauth2),
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_ID",
            "load-client",
        )
        .env(
            "TOKEN_REFRESHER__PLATFORMS__GOOGLE__CLIENT_SECRET",
            "load-secret",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Kills the daemons if the test ends early.
pub(crate) struct Workers(pub(crate) Vec<Child>);

impl Workers {
    /// Sends every daemon SIGTERM and hands them over, to wait for.
    pub(crate) fn terminate(&mut self) -> Vec<Child> {
        for child in &self.0 {
            let stopped = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(stopped.success());
        }
        self.0.drain(..).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_daemons_and_two_manual_runs_exchange_each_rotating_token_exactly_once() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('t0', 'T0'), ('t1', 'T1'), ('t2', 'T2');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at)
             SELECT g, 't' || (g % 3), 'google', 'load-at-' || g, 'load-rt-' || g,
                    now() + interval '5 minutes'
             FROM generate_series(1, 5000) AS g;",
    )
    .execute(&db.pool)
    .await
    .expect("tokens");
    for id in 1..=TOKENS {
        provider.grant(&format!("load-rt-{id}"));
    }

    let mut workers = Workers(
        (0..4)
            .map(|_| worker(&db, &provider, &["run"]).spawn().expect("daemon"))
            .collect(),
    );
    let manual: Vec<Child> = (0..2)
        .map(|_| {
            worker(&db, &provider, &["refresh", "--json"])
                .spawn()
                .expect("manual refresh")
        })
        .collect();
    let mut manual_refreshed = 0;
    for run in manual {
        let output = run.wait_with_output().expect("manual run");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        manual_refreshed += report["summary"]["refreshed"].as_u64().unwrap_or(0);
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM oauth_tokens WHERE last_refreshed_at IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .expect("count");
        if done == i64::from(TOKENS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {TOKENS} refreshed in time"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for child in workers.terminate() {
        let output = child.wait_with_output().expect("daemon exit");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let counters = provider.counters();
    assert_eq!(
        counters.reuse, 0,
        "a rotated-out refresh token was presented again"
    );
    assert_eq!(counters.revoked_grants, 0);
    assert_eq!(
        counters.exchanges, TOKENS as u64,
        "exactly one exchange per token"
    );
    assert!(manual_refreshed > 0 || counters.exchanges > 0);
    let (executions, events, leased, failing): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM audit_events),
                (SELECT count(*) FROM oauth_tokens WHERE lease_owner IS NOT NULL),
                (SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'active')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!(
        (executions, events),
        (i64::from(TOKENS), i64::from(TOKENS)),
        "one audit row each per attempt"
    );
    assert_eq!((leased, failing), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_rows_are_each_reported_once_and_never_stop_the_cycle() {
    let db = TestDb::migrated().await;
    let provider = LoopbackProvider::start().await.expect("provider");
    // Tenant 'bare' has no tenant_config row; the daemon does not need one.
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('ok', 'OK'), ('bare', 'Bare');
         INSERT INTO tenant_config (tenant_id) VALUES ('ok');
         INSERT INTO oauth_tokens (id, tenant_id, platform, access_token, refresh_token, expires_at) VALUES
             (1, 'ok',   'google',  'good-at', 'good-rt', now() + interval '5 minutes'),
             (2, 'ok',   'google',  'no-rt',   NULL,      now() + interval '5 minutes'),
             (3, 'ok',   'myspace', 'odd-at',  'odd-rt',  now() + interval '5 minutes'),
             (4, 'ok',   'google',  'page-at', 'page-rt', NULL),
             (5, 'ok',   'google',  'enc:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'x', now() + interval '5 minutes'),
             (6, 'bare', 'google',  'bare-at', 'bare-rt', now() + interval '5 minutes');",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    for token in ["good-rt", "bare-rt"] {
        provider.grant(token);
    }
    let output = worker(&db, &provider, &["refresh", "--json"])
        .output()
        .expect("refresh");
    assert_eq!(output.status.code(), Some(1), "two rows failed");
    let outcomes = crate::invariants::results(&output);
    let expected: Vec<(i64, String, Value)> = vec![
        (1, "refreshed".into(), Value::Null),
        (2, "needs_reauth".into(), "missing_refresh_token".into()),
        (3, "skipped".into(), "unknown_platform".into()),
        (5, "failed".into(), "undecryptable".into()),
        (6, "refreshed".into(), Value::Null),
    ];
    assert_eq!(
        outcomes, expected,
        "a row without expiry is never due; every other row once"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("\"token_refresh_failed\"").count(),
        2,
        "{stderr}"
    );
    assert_eq!(stderr.matches("\"tokens_skipped\"").count(), 1, "{stderr}");
}
