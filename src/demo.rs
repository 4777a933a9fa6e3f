//! `token-refresher demo`: the real pipeline end to end for a newcomer, on a scratch database
//! and a loopback provider, with demo keys. Nothing outside the scratch database is touched.
//!
//! Seeded: three tenants with tokens on several platforms — some due (one stored as legacy
//! plaintext), one not yet due, one whose grant the provider has revoked (already failed once,
//! so this cycle makes it `needs_reauth`), one whose provider is down, and one on a platform
//! without credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use secrecy::SecretString;

use crate::config::{ConfigError, PlatformKind, Settings};
use crate::crypto::{self, Column, KeyError, Keyring, Place};
use crate::engine::{
    CycleError, CycleReport, Engine, ResultSink, SYSTEM_ACTOR, Selection, TokenResult, Worker,
};
use crate::loopback_provider::{Counters, LoopbackProvider};
use crate::providers::{ClientBuildError, ProviderClient};
use crate::storage::scratch::{self, SeedToken};
use crate::storage::{self, ConnectError, migrations};

/// The server the demo uses when no database URL is configured.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "no PostgreSQL server answers at {target}. The demo needs one where it may create a database: start one (on Debian: `sudo apt-get install -y postgresql && sudo pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`), or set DATABASE_URL to postgres://USER@HOST:PORT/postgres for a server where USER may CREATE DATABASE"
    )]
    NoServer { target: String, source: sqlx::Error },
    #[error("cannot create the scratch database {database}")]
    CreateDatabase {
        database: String,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot migrate the scratch database")]
    Migrate(#[from] migrations::MigrationError),
    #[error("cannot start the loopback provider")]
    Provider(#[source] std::io::Error),
    #[error(transparent)]
    Settings(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    HttpClient(#[from] ClientBuildError),
    #[error("the demo's database work failed")]
    Database(#[from] sqlx::Error),
    #[error("the demo's refresh cycle stopped")]
    Cycle(#[from] CycleError),
}

/// What the demo did, for printing.
#[derive(Debug)]
pub struct DemoReport {
    pub database: String,
    pub kept: bool,
    pub cycle: CycleReport,
    /// Each token's result, by token id.
    pub results: Vec<TokenResult>,
    pub agent_executions: i64,
    pub audit_events: i64,
    pub provider: Counters,
}

/// Runs the demo against the server of `server_url` (or [`DEFAULT_SERVER_URL`]).
pub async fn run(server_url: Option<&str>, keep: bool) -> Result<DemoReport, DemoError> {
    let server_url = server_url.unwrap_or(DEFAULT_SERVER_URL);
    let database = format!(
        "token_refresher_demo_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    scratch::create_database(server_url, &database)
        .await
        .map_err(|source| classify_create_error(server_url, &database, source))?;
    let url = scratch::database_url(server_url, &database).map_err(|_| DemoError::NoServer {
        target: storage::describe_target(server_url),
        source: sqlx::Error::Configuration("unparseable server URL".into()),
    })?;
    let outcome = run_in(&url).await;
    let kept = keep || outcome.is_err();
    if !kept {
        scratch::drop_database(server_url, &database).await?;
    }
    let (cycle, results, (agent_executions, audit_events), provider) = outcome?;
    Ok(DemoReport {
        database: if kept { url } else { database },
        kept,
        cycle,
        results,
        agent_executions,
        audit_events,
        provider,
    })
}

fn classify_create_error(server_url: &str, database: &str, source: sqlx::Error) -> DemoError {
    match source {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            DemoError::NoServer {
                target: storage::describe_target(server_url),
                source,
            }
        }
        source => DemoError::CreateDatabase {
            database: database.to_owned(),
            source,
        },
    }
}

/// What one demo run did: the cycle, each token's result, the audit row counts and what the
/// provider saw.
type DemoRun = (CycleReport, Vec<TokenResult>, (i64, i64), Counters);

async fn run_in(url: &str) -> Result<DemoRun, DemoError> {
    let provider = LoopbackProvider::start()
        .await
        .map_err(DemoError::Provider)?;
    let environment = demo_environment(url, &provider)?;
    let settings = Settings::load(None, &environment)?;
    let keyring = crypto::load_keyring(&settings.encryption, &environment)?;
    let pool = storage::connect(&settings.database).await?;
    migrations::migrate(&pool).await?;
    seed(&pool, &keyring, &provider).await?;
    let results = Arc::new(Mutex::new(Vec::new()));
    let client = ProviderClient::new(&settings.http)?;
    let engine = Engine::new(
        &pool,
        &settings,
        Arc::new(keyring),
        &client,
        Worker::one_shot(SYSTEM_ACTOR.to_owned(), collect_into(&results)),
    );
    let cycle = engine.run_cycle(&Selection::default()).await?;
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    results.sort_by_key(|result| result.token_id);
    let counts = scratch::audit_row_counts(&pool).await?;
    pool.close().await;
    Ok((cycle, results, counts, provider.counters()))
}

/// The demo's own configuration: the embedded defaults, the scratch database, demo keys, and
/// google, x, tiktok, meta and linkedin pointed at the loopback provider, tiktok_business at
/// its JSON endpoint, and salesforce at a token URL filled from each row's `instance_url`;
/// hubspot stays inactive.
fn demo_environment(
    url: &str,
    provider: &LoopbackProvider,
) -> Result<HashMap<String, String>, KeyError> {
    let mut environment = HashMap::from([
        ("DATABASE_URL".to_owned(), url.to_owned()),
        (
            "TOKEN_REFRESHER__DATABASE__MAX_CONNECTIONS".to_owned(),
            "4".to_owned(),
        ),
        ("TOKEN_REFRESHER__HTTP__TIMEOUT".to_owned(), "5s".to_owned()),
    ]);
    let key_line = crypto::generate_key_line(Some("demo"))?;
    environment.insert(crypto::KEYS_VAR.to_owned(), key_line.as_str().to_owned());
    for (platform, kind) in [
        ("google", PlatformKind::Oauth2),
        ("x", PlatformKind::Oauth2),
        ("linkedin", PlatformKind::Oauth2),
        ("tiktok", PlatformKind::Tiktok),
        ("meta", PlatformKind::MetaExchange),
    ] {
        let key = |field: &str| {
            format!(
                "TOKEN_REFRESHER__PLATFORMS__{}__{field}",
                platform.to_uppercase()
            )
        };
        environment.insert(key("TOKEN_URL"), provider.token_url(kind));
        environment.insert(key("CLIENT_ID"), format!("demo-{platform}-client"));
        environment.insert(key("CLIENT_SECRET"), format!("demo-{platform}-secret"));
    }
    for (platform, token_url) in [
        ("TIKTOK_BUSINESS", provider.business_token_url()),
        ("SALESFORCE", "{instance_url}/oauth2/token".to_owned()),
    ] {
        let key = |field: &str| format!("TOKEN_REFRESHER__PLATFORMS__{platform}__{field}");
        environment.insert(key("TOKEN_URL"), token_url);
        environment.insert(key("CLIENT_ID"), "demo-client".to_owned());
        environment.insert(key("CLIENT_SECRET"), "demo-secret".to_owned());
    }
    environment.insert(
        "TOKEN_REFRESHER__PLATFORMS__SALESFORCE__TOKEN_URL_HOSTS".to_owned(),
        "127.0.0.1".to_owned(),
    );
    Ok(environment)
}

/// One seeded token: where it belongs, when it expires, whether it is stored sealed or as
/// legacy plaintext, and how the provider treats its grant.
struct Seed {
    tenant: &'static str,
    platform: &'static str,
    expires_in: Duration,
    sealed: bool,
    /// The provider answers this for the grant instead of rotating it.
    forced: Option<StatusCode>,
    permanent_failures: i32,
}

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

const SEEDS: [Seed; 9] = [
    Seed {
        tenant: "acme",
        platform: "google",
        expires_in: MINUTE.saturating_mul(5),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "acme",
        platform: "tiktok",
        expires_in: MINUTE.saturating_mul(30),
        sealed: false,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "globex",
        platform: "meta",
        expires_in: DAY.saturating_mul(6),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "globex",
        platform: "linkedin",
        expires_in: DAY.saturating_mul(30),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "initech",
        platform: "google",
        expires_in: MINUTE.saturating_mul(4),
        sealed: true,
        forced: Some(StatusCode::BAD_REQUEST),
        permanent_failures: 1,
    },
    Seed {
        tenant: "initech",
        platform: "x",
        expires_in: MINUTE.saturating_mul(8),
        sealed: true,
        forced: Some(StatusCode::SERVICE_UNAVAILABLE),
        permanent_failures: 0,
    },
    Seed {
        tenant: "initech",
        platform: "hubspot",
        expires_in: MINUTE.saturating_mul(5),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "acme",
        platform: "tiktok_business",
        expires_in: MINUTE.saturating_mul(20),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
    Seed {
        tenant: "globex",
        platform: "salesforce",
        expires_in: MINUTE.saturating_mul(5),
        sealed: true,
        forced: None,
        permanent_failures: 0,
    },
];

async fn seed(
    pool: &sqlx::PgPool,
    keyring: &Keyring,
    provider: &LoopbackProvider,
) -> Result<(), sqlx::Error> {
    for (id, name) in [
        ("acme", "Acme Corp"),
        ("globex", "Globex"),
        ("initech", "Initech"),
    ] {
        scratch::insert_tenant(pool, id, name).await?;
    }
    for (index, seed) in SEEDS.iter().enumerate() {
        let access = format!("demo-access-{index}-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("demo-refresh-{index}-{}", uuid::Uuid::new_v4().simple());
        let rotating = if seed.platform == "meta" {
            &access
        } else {
            &refresh
        };
        provider.grant(rotating);
        if let Some(status) = seed.forced {
            provider.force(rotating, status);
        }
        let place = |column| Place {
            column,
            tenant_id: seed.tenant,
            platform: seed.platform,
        };
        let stored = |value: &str, column| {
            if seed.sealed {
                keyring
                    .seal(&SecretString::from(value), place(column))
                    .as_str()
                    .to_owned()
            } else {
                value.to_owned()
            }
        };
        let access_stored = stored(&access, Column::AccessToken);
        let refresh_stored =
            (seed.platform != "meta").then(|| stored(&refresh, Column::RefreshToken));
        scratch::insert_token(
            pool,
            &SeedToken {
                tenant_id: seed.tenant,
                platform: seed.platform,
                access_token: &access_stored,
                refresh_token: refresh_stored.as_deref(),
                expires_in: seed.expires_in,
                permanent_failures: seed.permanent_failures,
                provider_metadata: (seed.platform == "salesforce")
                    .then(|| serde_json::json!({"instance_url": provider.origin()})),
            },
        )
        .await?;
    }
    Ok(())
}

/// A sink keeping every result in `results`: the demo's cycle is a handful of tokens.
fn collect_into(results: &Arc<Mutex<Vec<TokenResult>>>) -> ResultSink {
    let results = Arc::clone(results);
    Box::new(move |result| {
        results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(result.clone());
    })
}
