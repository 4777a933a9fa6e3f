//! The cycle's side passes beside the due tokens: keep-alive refreshes of idle tokens, dry
//! runs, and the tokens of platforms without credentials or configuration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::stream;

use crate::config::PlatformSettings;
use crate::engine::completer::Completion;
use crate::engine::pipeline::ClaimRule;
use crate::engine::report::{CycleReport, TokenResult};
use crate::engine::{CycleError, CycleStep, Engine, Selection, audit, pipeline, report, token_ids};
use crate::outcome::{ErrorKind, Outcome};
use crate::storage::audit::AuditResult;
use crate::storage::scan as store;
use crate::storage::scan::{Candidate, CandidateScan, PageStart};

/// Active tokens idle past their platform's `keepalive_after`, refreshed though not due,
/// because some providers revoke refresh tokens left unused.
pub(super) async fn keepalive(
    cx: &Engine<'_>,
    selection: &Selection,
    deadline: Instant,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let keepalive: Vec<(String, Duration)> = cx
        .selected_active_platforms(selection)
        .filter(|(name, _)| !cx.watch.is_halted(name))
        .filter_map(|(name, platform)| platform.keepalive_after.map(|idle| (name.to_owned(), idle)))
        .collect();
    if keepalive.is_empty() {
        return Ok(());
    }
    let batch_size = cx.settings.scheduler.batch_size;
    while Instant::now() < deadline && !cx.stop.is_cancelled() {
        let page =
            store::idle_candidates(cx.pool, &keepalive, selection.tenant.as_deref(), batch_size)
                .await
                .map_err(CycleStep::Scan.failed())?;
        let full_page = page.len() == batch_size as usize;
        if page.is_empty() {
            break;
        }
        // Idle rows stay idle until refreshed, so a dry run or a page that claimed nothing
        // (all held by other workers) ends the pass instead of looping.
        let attempted = if selection.dry_run {
            let results = dry_run(cx, page).await?;
            let attempted = results.len();
            report::record_all(cx, report, results);
            attempted
        } else {
            let rule = ClaimRule {
                leads: &[],
                force: true,
                past_halt: false,
                requested: None,
            };
            let page = stream::once(async { Ok(page) });
            pipeline::refresh_candidates(cx, page, rule, deadline, report).await?
        };
        if selection.dry_run || !full_page || attempted == 0 {
            break;
        }
    }
    Ok(())
}

/// Records what a dry run would refresh, page by page.
pub(super) async fn dry_run_scan(
    cx: &Engine<'_>,
    scan: &CandidateScan<'_>,
    deadline: Instant,
) -> Result<Vec<TokenResult>, CycleError> {
    let mut results = Vec::new();
    let mut start = PageStart::default();
    while Instant::now() < deadline && !cx.stop.is_cancelled() {
        let page = store::candidates(cx.pool, scan, start)
            .await
            .map_err(CycleStep::Scan.failed())?;
        let Some(last) = page.last() else { break };
        start = PageStart::after(last);
        let full_page = page.len() == cx.settings.scheduler.batch_size as usize;
        results.extend(dry_run(cx, page).await?);
        if !full_page {
            break;
        }
    }
    Ok(results)
}

/// Records what a dry run would refresh; claims nothing and calls no provider. The page's
/// records go to the completer together, so they share commit groups.
pub(super) async fn dry_run(
    cx: &Engine<'_>,
    page: Vec<Candidate>,
) -> Result<Vec<TokenResult>, CycleError> {
    let records = page.iter().map(|candidate| {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let platform = cx.settings.platforms.get(&candidate.platform);
        let result = AuditResult {
            token_id: candidate.id,
            platform: candidate.platform.clone(),
            outcome: Outcome::DryRun,
            error_kind: None,
            trace_id,
            expires_at: candidate.expires_at.map(|at| at.to_rfc3339()),
            http_status: None,
            provider: None,
            provider_message: None,
        };
        cx.committer.complete(
            Completion::Record {
                token_id: candidate.id,
                tenant_id: candidate.tenant_id.clone(),
                audit: audit::audit(cx, platform, None, result, true),
            },
            None,
        )
    });
    futures_util::future::try_join_all(records)
        .await
        .map_err(CycleStep::Record.not_committed())?;
    Ok(page
        .into_iter()
        .map(|candidate| TokenResult {
            token_id: candidate.id,
            tenant_id: candidate.tenant_id,
            platform: candidate.platform,
            outcome: Outcome::DryRun,
            error_kind: None,
            http_status: None,
            expires_at: candidate.expires_at,
        })
        .collect())
}

/// Due tokens whose platform has no credentials or no configuration at all: reported as
/// skipped, logged once per platform per cycle, never retried in a loop.
pub(super) async fn unconfigured(
    cx: &Engine<'_>,
    selection: &Selection,
) -> Result<Vec<TokenResult>, CycleError> {
    let lead = |platform: Option<&PlatformSettings>| {
        selection.due_within.unwrap_or_else(|| {
            platform.map_or(cx.settings.scheduler.lead_time, |platform| {
                platform.lead_time
            })
        })
    };
    let active: Vec<String> = cx
        .settings
        .active_platforms()
        .map(|(name, _)| name.to_owned())
        .collect();
    let (leads, other_lead) = match &selection.platform {
        Some(wanted) if active.contains(wanted) => return Ok(Vec::new()),
        Some(wanted) => (
            vec![(wanted.clone(), lead(cx.settings.platforms.get(wanted)))],
            None,
        ),
        None => (
            cx.settings
                .inactive_platforms()
                .map(|name| (name.to_owned(), lead(cx.settings.platforms.get(name))))
                .collect(),
            Some(lead(None)),
        ),
    };
    let scan = CandidateScan {
        leads: &leads,
        other_lead,
        exclude: &active,
        tenant: selection.tenant.as_deref(),
        token_ids: token_ids(selection),
        force: selection.force,
        limit: cx.settings.scheduler.batch_size,
    };
    let mut results = Vec::new();
    let mut start = PageStart::default();
    loop {
        let page = store::candidates(cx.pool, &scan, start)
            .await
            .map_err(CycleStep::Scan.failed())?;
        let Some(last) = page.last() else { break };
        start = PageStart::after(last);
        let full_page = page.len() == cx.settings.scheduler.batch_size as usize;
        results.extend(page.into_iter().map(|candidate| {
            let kind = if cx.settings.platforms.contains_key(&candidate.platform) {
                ErrorKind::PlatformNotConfigured
            } else {
                ErrorKind::UnknownPlatform
            };
            TokenResult {
                token_id: candidate.id,
                tenant_id: candidate.tenant_id,
                platform: candidate.platform,
                outcome: Outcome::Skipped,
                error_kind: Some(kind),
                http_status: None,
                expires_at: candidate.expires_at,
            }
        }));
        if !full_page {
            break;
        }
    }
    let mut per_platform: BTreeMap<(&str, ErrorKind), usize> = BTreeMap::new();
    for result in &results {
        if let Some(kind) = result.error_kind {
            *per_platform.entry((&result.platform, kind)).or_default() += 1;
        }
    }
    for ((platform, kind), tokens) in per_platform {
        tracing::warn!(
            platform,
            error_kind = kind.as_str(),
            tokens,
            "tokens_skipped"
        );
    }
    Ok(results)
}
