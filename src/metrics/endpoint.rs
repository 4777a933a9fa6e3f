//! The HTTP endpoint on `metrics.listen`: `GET /` (a landing page linking the others),
//! `GET /metrics` (Prometheus text format, with the process's own `process_*` metrics),
//! `GET /healthz` (the scheduler is making progress) and `GET /readyz` (the database answers
//! and its migrations are current).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_process::Collector;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::describe::describe;
use crate::metrics::{
    CLAIM_BATCH_SIZE, CYCLE_DURATION, EXCHANGE_DURATION, SOONEST_GRANT_EXPIRY, configured,
    cycle_healthy, progress, silence, silence_allowed,
};
use crate::storage::migrations::{self, MigrationState};

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen: cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder")]
    Recorder(#[source] BuildError),
}

/// What the probes read; the pool is set once the database has been reached.
#[derive(Clone)]
pub struct Probes {
    handle: PrometheusHandle,
    process: Collector,
    pool: Arc<OnceLock<PgPool>>,
}

impl Probes {
    /// Gives `/readyz` the database to check.
    pub fn database_connected(&self, pool: PgPool) {
        let _ = self.pool.set(pool);
    }
}

/// Installs the recorder, describes every metric, and serves the endpoints on `address` until
/// `stop` is cancelled. `settings` are the ones the daemon starts with, so the probes answer
/// while it waits for the database.
pub async fn serve(
    address: SocketAddr,
    settings: &Settings,
    stop: CancellationToken,
) -> Result<Probes, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(EXCHANGE_DURATION.into()),
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(CYCLE_DURATION.into()),
                &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            )
        })
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(CLAIM_BATCH_SIZE.into()),
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(MetricsError::Recorder)?;
    describe();
    let process = Collector::default();
    process.describe();
    configured(settings);
    progress();
    let probes = Probes {
        handle,
        process,
        pool: Arc::new(OnceLock::new()),
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Listen { address, source })?;
    let router = Router::new()
        .route("/", get(landing_page))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probes.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(alert = true, error = %error, "metrics_endpoint_failed");
        }
    });
    tracing::info!(%address, "metrics_listening");
    Ok(probes)
}

/// The landing page: what this endpoint is and where its pages are, for a person who opens
/// the address in a browser.
const LANDING_PAGE: &str = concat!(
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>token-refresher</title></head>\n",
    "<body>\n<h1>token-refresher</h1>\n<p>version ",
    env!("CARGO_PKG_VERSION"),
    "</p>\n<ul>\n",
    "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n",
    "<li><a href=\"/healthz\">/healthz</a>: the scheduler is making progress</li>\n",
    "<li><a href=\"/readyz\">/readyz</a>: the database answers and its migrations are current</li>\n",
    "</ul>\n</body>\n</html>\n"
);

async fn landing_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        LANDING_PAGE,
    )
        .into_response()
}

/// The exposition, the process's own metrics read at the moment of the scrape.
async fn metrics_page(State(probes): State<Probes>) -> Response {
    probes.process.collect();
    probes.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        without_unknown_grants(&probes.handle.render()),
    )
        .into_response()
}

/// The exposition without [`SOONEST_GRANT_EXPIRY`] samples of platforms whose grant ends are
/// no longer known (set to NaN by [`soonest_grants`]): the series is absent then, not NaN.
fn without_unknown_grants(exposition: &str) -> String {
    exposition
        .lines()
        .filter(|line| !(line.starts_with(SOONEST_GRANT_EXPIRY) && line.ends_with(" NaN")))
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// 200 while the scheduler has made progress within twice its period.
async fn healthz() -> Response {
    let allowed = silence_allowed();
    let silent = silence();
    if !cycle_healthy() {
        let message = "cycle broken: the last cycle failed (see cycle_failed or cycle_panicked)\n";
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    } else if silent <= allowed {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let message = format!(
            "scheduler stalled: no progress for {}s (period {}s)\n",
            silent.as_secs(),
            (allowed / 2).as_secs()
        );
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

/// 200 when the database answers and its migrations are current.
async fn readyz(State(probes): State<Probes>) -> Response {
    let unready = |message: String| (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    let Some(pool) = probes.pool.get() else {
        return unready("database not reached yet\n".into());
    };
    match tokio::time::timeout(READY_TIMEOUT, migrations::migration_state(pool)).await {
        Ok(Ok(MigrationState::Current { .. })) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Ok(state)) => unready(format!("migrations not current: {state:?}\n")),
        Ok(Err(error)) => unready(format!("database error: {error}\n")),
        Err(_) => unready("database did not answer in time\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::SOONEST_GRANT_EXPIRY;
    use crate::metrics::endpoint::without_unknown_grants;

    #[test]
    fn unknown_grant_ends_are_left_out_of_the_exposition() {
        let exposition = format!(
            "# TYPE {SOONEST_GRANT_EXPIRY} gauge\n{SOONEST_GRANT_EXPIRY}{{platform=\"google\"}} NaN\n{SOONEST_GRANT_EXPIRY}{{platform=\"x\"}} 12.5\n"
        );
        assert_eq!(
            without_unknown_grants(&exposition),
            format!(
                "# TYPE {SOONEST_GRANT_EXPIRY} gauge\n{SOONEST_GRANT_EXPIRY}{{platform=\"x\"}} 12.5\n"
            )
        );
    }
}
