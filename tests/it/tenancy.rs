//! Tenant correctness by construction: every row the daemon writes takes its tenant from the
//! token row it touches, in the same statement, so one commit group may cover any number of
//! tenants and no completion can record anything under a tenant that is not its token's.

use std::sync::Arc;
use std::time::Duration;

use token_refresher::engine::completer::{
    CommitTuning, Committer, Completed, Completion, FailedAttempt,
};
use token_refresher::outcome::{ErrorKind, Outcome, TokenState};
use token_refresher::storage::audit::{AuditEntry, AuditResult};
use token_refresher::storage::complete::FailureState;
use token_refresher::storage::tenant::KnownScope;

use crate::support::bin::Bin;
use crate::support::provider::loopback;
use crate::support::seed::{self, granted_series};
use crate::support::{TestDb, test_keyring};

fn committer(db: &TestDb) -> Committer {
    Committer::start(
        db.pool.clone(),
        Arc::new(test_keyring()),
        CommitTuning::default(),
        Duration::from_secs(14 * 24 * 3600),
        Arc::new(KnownScope::default()),
    )
}

fn audit(token_id: i32) -> AuditEntry {
    AuditEntry {
        dry_run: true,
        result: AuditResult {
            token_id,
            platform: "google".to_owned(),
            outcome: Outcome::DryRun,
            error_kind: None,
            trace_id: format!("trace-{token_id}"),
            expires_at: None,
            http_status: None,
            provider: None,
            provider_message: None,
        },
        user_id: "test".to_owned(),
        endpoint: String::new(),
        method: "POST".to_owned(),
        status_code: None,
        latency_ms: 0,
    }
}

/// `(token_id, tenant_id)` of every `agent_executions` row, in token order.
async fn recorded_under(db: &TestDb) -> Vec<(i32, String)> {
    sqlx::query_as(
        "SELECT (result::json ->> 'token_id')::int, tenant_id::text FROM agent_executions
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("agent_executions")
}

/// A completion that names tenant `a` for a token of tenant `b` — in one group with a
/// completion of `a`'s own — records under `b`, the token's tenant, and changes `b`'s row.
#[tokio::test]
async fn a_completion_naming_another_tenant_writes_under_its_tokens_own() {
    let db = TestDb::migrated().await;
    seed::tenants(&db.pool, &["a", "b"]).await;
    seed::tokens(
        &db.pool,
        "",
        &[(1, "a", "google", "1 hour"), (2, "b", "google", "1 hour")],
    )
    .await;
    sqlx::query("UPDATE oauth_tokens SET lease_owner = 'me', lease_expires_at = now() + interval '1 minute' WHERE id = 2")
        .execute(&db.pool)
        .await
        .expect("lease");
    let committer = committer(&db);
    let own = committer.complete(
        Completion::Record {
            token_id: 1,
            tenant_id: "a".to_owned(),
            audit: audit(1),
        },
        None,
    );
    let misnamed_record = committer.complete(
        Completion::Record {
            token_id: 2,
            tenant_id: "a".to_owned(),
            audit: audit(2),
        },
        None,
    );
    let misnamed_failure = committer.complete(
        Completion::Failure(FailedAttempt {
            token_id: 2,
            tenant_id: "a".to_owned(),
            owner: "me".to_owned(),
            state: FailureState {
                refresh_status: TokenState::Failing,
                permanent_failures: 0,
                retry_in: Some(Duration::from_secs(60)),
                error_kind: ErrorKind::ServerError,
            },
            outcome: Outcome::Failed,
            audit: audit(2),
        }),
        None,
    );
    let (own, record, failure) = tokio::join!(own, misnamed_record, misnamed_failure);
    assert_eq!(own.expect("own"), Completed::Done);
    assert_eq!(record.expect("record"), Completed::Done);
    assert_eq!(failure.expect("failure"), Completed::Failed(Some(1)));
    assert_eq!(
        recorded_under(&db).await,
        [(1, "a".into()), (2, "b".into()), (2, "b".into())]
    );
    let states: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT id, tenant_id::text, refresh_status FROM oauth_tokens ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(
        states,
        [
            (1, "a".into(), "active".into()),
            (2, "b".into(), "failing".into())
        ]
    );
    let audit_events: i64 = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM audit_events WHERE tenant_id = 'a'",
    )
    .await;
    assert_eq!(audit_events, 1, "only token 1's attempt is tenant a's");
}

/// Many tenants' answers in one run: every audit row is under its own token's tenant, and each
/// token's values open for its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_over_many_tenants_records_each_under_its_own() {
    let db = TestDb::migrated().await;
    let provider = loopback().await;
    let names: Vec<String> = (0..40).map(|n| format!("t{n}")).collect();
    let tenants: Vec<&str> = names.iter().map(String::as_str).collect();
    seed::tenants(&db.pool, &tenants).await;
    granted_series(
        &db.pool,
        &provider,
        "",
        120,
        &tenants,
        "now() + interval '1 minute'",
    )
    .await;
    let run = Bin::worker(&db.url, &provider, &["refresh", "--json"]).run();
    run.expect_code(0);
    assert_eq!(run.report().summary.refreshed, 120);
    let misplaced = seed::scalar(
        &db.pool,
        "SELECT count(*) FROM agent_executions AS e
         LEFT JOIN oauth_tokens AS t
             ON t.id = (e.result::json ->> 'token_id')::int AND t.tenant_id = e.tenant_id
         WHERE t.id IS NULL",
    )
    .await;
    assert_eq!(misplaced, 0, "an audit row landed under another tenant");
    assert_eq!(seed::audit_row_counts(&db.pool).await, (120, 120));
    for id in [1, 2, 60, 120] {
        let row = seed::token(&db.pool, id).await;
        assert!(
            row.plaintext(token_refresher::crypto::Column::AccessToken)
                .is_some(),
            "token {id}'s new value opens for its own tenant"
        );
    }
}
