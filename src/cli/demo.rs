//! `token-refresher demo`: the embedded default for a newcomer.

use std::process::ExitCode;

use clap::Args;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::demo::{self, DemoError};

use super::{CommandError, failed, setup};

/// The `demo` arguments.
#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Keep the scratch database afterwards (its URL is printed).
    #[arg(long)]
    keep: bool,
}

pub(super) async fn run(args: &DemoArgs, settings: &Settings) -> Result<ExitCode, CommandError> {
    say!("token-refresher demo: a scratch database, a loopback provider, demo keys, one cycle");
    let server = settings
        .database
        .url
        .as_ref()
        .map(|url| url.expose_secret());
    let report = demo::run(server, args.keep)
        .await
        .map_err(|error| match error {
            DemoError::NoServer { .. } | DemoError::CreateDatabase { .. } => setup(error),
            other => failed(other),
        })?;
    say!();
    super::report::table_header();
    for result in &report.results {
        say!("{}", super::report::table_row(result));
    }
    super::report::table_summary(&report.cycle);
    say!();
    say!(
        "provider: {} exchanges, {} reused refresh tokens, {} revoked grants",
        report.provider.exchanges,
        report.provider.reuse,
        report.provider.revoked_grants
    );
    say!(
        "rows written: {} agent_executions, {} audit_events (one each per attempt, under the token's tenant)",
        report.agent_executions,
        report.audit_events
    );
    say!();
    say!("What happened:");
    say!("- due tokens were refreshed; their new values are stored as enc:v1 sealed values,");
    say!("  including the TikTok token that was stored as legacy plaintext;");
    say!("- the LinkedIn token is not yet due and was left alone;");
    say!("- Initech's revoked Google grant answered invalid_grant a second time: needs_reauth;");
    say!("- Initech's X provider is down (503): failing, retried after a backoff;");
    say!("- HubSpot has no credentials configured: skipped as platform_not_configured;");
    say!("- Acme's TikTok for Business token went out as a JSON body and came back wrapped in");
    say!("  data (body_format = \"json\", response_path = \"data\");");
    say!("- Globex's Salesforce token went to the token URL its row's provider_metadata names");
    say!("  ({{instance_url}}/oauth2/token), allowed by token_url_hosts.");
    say!("The ERROR lines above (token_refresh_failed, token_needs_reauth, alert=true) are what");
    say!("`journalctl -u token-refresher -p err` shows operators under systemd.");
    if report.kept {
        say!();
        say!("The scratch database is kept: {}", report.database);
        say!(
            "  psql '{}' -c 'SELECT id, tenant_id, platform, refresh_status, last_error_kind, expires_at FROM oauth_tokens'",
            report.database
        );
        say!(
            "  psql '{}' -c 'SELECT tenant_id, result FROM agent_executions'",
            report.database
        );
    } else {
        say!(
            "The scratch database {} was dropped (--keep keeps it).",
            report.database
        );
    }
    Ok(ExitCode::SUCCESS)
}
