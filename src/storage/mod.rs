//! Storage: every SQL statement the daemon runs lives under this module.
//!
//! The rest of the crate asks for what it needs (a pool, the migration state, …) and never
//! sees SQL text.

mod adoption;
pub mod audit;
pub mod budgets;
pub mod claim;
pub mod complete;
pub mod events;
pub mod forecast;
pub mod grants;
pub mod migrations;
pub mod platforms;
pub mod requests;
pub mod scan;
pub mod scratch;
mod sql;
pub mod status;
pub mod tenant;
pub mod tokens;

use secrecy::ExposeSecret;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use url::Url;

use crate::config::DatabaseSettings;
use crate::outcome::{ErrorKind, PlatformState, TokenState};

/// Why the database could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No source set `database.url`.
    #[error(
        "database.url is not set (set it in the configuration file, DATABASE_URL or TOKEN_REFRESHER__DATABASE__URL)"
    )]
    NotConfigured,
    /// The server did not answer or refused the connection.
    #[error("database {target} is unreachable")]
    Unreachable { target: String, source: sqlx::Error },
}

/// Opens a pool on the configured database after proving, with one direct connection, that
/// it answers; the direct attempt reports why it failed where a pool would only time out.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, ConnectError> {
    let url = settings.url.as_ref().ok_or(ConnectError::NotConfigured)?;
    let unreachable = |source| ConnectError::Unreachable {
        target: describe_target(url.expose_secret()),
        source,
    };
    let options = PgConnectOptions::from_str(url.expose_secret()).map_err(unreachable)?;
    let probe = tokio::time::timeout(
        settings.connect_timeout,
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
    .map_err(unreachable)?;
    probe.close().await.map_err(unreachable)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .connect_lazy_with(options))
}

/// The server's version string, as `check` reports it.
pub async fn server_version(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(pool)
        .await
}

/// The database's clock: what every time the daemon compares or reports is measured against,
/// so that daemons on hosts with skewed clocks agree.
pub async fn database_now(pool: &PgPool) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

/// `host:port/database` of a database URL, with user and password left out, for messages.
pub fn describe_target(url: &str) -> String {
    let Ok(parsed) = Url::parse(url) else {
        return "(unparseable database.url)".to_owned();
    };
    let host = parsed.host_str().unwrap_or("localhost");
    let port = parsed.port().unwrap_or(5432);
    let database = parsed.path().trim_start_matches('/');
    format!("{host}:{port}/{database}")
}

/// Reads and writes a vocabulary enum as the TEXT its `as_str` names (the column's CHECK
/// constraint admits no other value); a name it does not know is a decoding error.
macro_rules! text_vocabulary {
    ($type:ty, $what:literal) => {
        impl sqlx::Type<sqlx::Postgres> for $type {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $type {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                <$type>::parse(name)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), name).into())
            }
        }

        impl sqlx::postgres::PgHasArrayType for $type {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $type {
            fn encode_by_ref(
                &self,
                buffer: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buffer)
            }
        }
    };
}

text_vocabulary!(TokenState, "token state");
text_vocabulary!(PlatformState, "platform state");
text_vocabulary!(ErrorKind, "error kind");

/// Whether `error` means the database could not be reached or serve at all (connection
/// lost, server shutting down or out of resources): an outage that passes by itself, rather
/// than the database refusing one statement.
///
/// A statement's own failure (a value that does not decode, a missing row or column) is no
/// outage: it would be retried forever as one, and named only as `database_unavailable`.
/// `25006` is a read-only transaction: a standby promoted, or about to be.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            ["08", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25006"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_told_from_a_statements_own_failure() {
        for outage in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            sqlx::Error::Protocol("unexpected end".to_owned()),
        ] {
            assert!(is_unreachable(&outage), "{outage}");
        }
        for own in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("expires_at".to_owned()),
            sqlx::Error::Decode("not a timestamp".into()),
        ] {
            assert!(!is_unreachable(&own), "{own}");
        }
    }
}
