//! Waiting for what a daemon or a concurrent run does in its own time: poll until it shows,
//! and fail the test, saying what never happened, once the time allowed is over.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Polls `check` every 50 ms until it holds; fails with `what` after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the SQL boolean expression `condition` on `pool` until it is true.
pub async fn until_sql(pool: &PgPool, condition: &str, limit: Duration) {
    until(limit, condition, || async move {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {condition}")))
            .fetch_one(pool)
            .await
            .expect("condition")
    })
    .await;
}
