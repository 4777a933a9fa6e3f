//! The cycle's side passes beside the due tokens: keep-alive refreshes of idle tokens, dry
//! runs, and the tokens of platforms without credentials or configuration.

use super::*;

impl<'a> Engine<'a> {
    /// Active tokens idle past their platform's `keepalive_after`, refreshed though not due,
    /// because some providers revoke refresh tokens left unused.
    pub(super) async fn keepalive(
        &self,
        selection: &Selection,
        deadline: Instant,
        report: &mut CycleReport,
    ) -> Result<(), CycleError> {
        let keepalive: Vec<(String, Duration)> = self
            .selected_active_platforms(selection)
            .filter(|(name, _)| !self.watch.is_halted(name))
            .filter_map(|(name, platform)| {
                platform.keepalive_after.map(|idle| (name.to_owned(), idle))
            })
            .collect();
        if keepalive.is_empty() {
            return Ok(());
        }
        let batch_size = self.settings.scheduler.batch_size;
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            let page = store::idle_candidates(
                self.pool,
                &keepalive,
                selection.tenant.as_deref(),
                batch_size,
            )
            .await
            .map_err(CycleStep::Scan.failed())?;
            let full_page = page.len() == batch_size as usize;
            if page.is_empty() {
                break;
            }
            // Idle rows stay idle until refreshed, so a dry run or a page that claimed nothing
            // (all held by other workers) ends the pass instead of looping.
            let attempted = if selection.dry_run {
                let results = self.dry_run(page).await?;
                let attempted = results.len();
                self.record_all(report, results);
                attempted
            } else {
                let rule = ClaimRule {
                    leads: &[],
                    force: true,
                    past_halt: false,
                    requested: None,
                };
                let page = stream::once(async { Ok(page) });
                self.refresh_candidates(page, rule, deadline, report)
                    .await?
            };
            if selection.dry_run || !full_page || attempted == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Records what a dry run would refresh, page by page.
    pub(super) async fn dry_run_scan(
        &self,
        scan: &CandidateScan<'_>,
        deadline: Instant,
    ) -> Result<Vec<TokenResult>, CycleError> {
        let mut results = Vec::new();
        let mut start = PageStart::default();
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            let page = store::candidates(self.pool, scan, start)
                .await
                .map_err(CycleStep::Scan.failed())?;
            let Some(last) = page.last() else { break };
            start = PageStart::after(last);
            let full_page = page.len() == self.settings.scheduler.batch_size as usize;
            results.extend(self.dry_run(page).await?);
            if !full_page {
                break;
            }
        }
        Ok(results)
    }

    /// Records what a dry run would refresh; claims nothing and calls no provider. The page's
    /// records go to the completer together, so they share commit groups.
    pub(super) async fn dry_run(
        &self,
        page: Vec<Candidate>,
    ) -> Result<Vec<TokenResult>, CycleError> {
        let records = page.iter().map(|candidate| {
            let trace_id = uuid::Uuid::new_v4().simple().to_string();
            let platform = self.settings.platforms.get(&candidate.platform);
            let result = json!({
                "token_id": candidate.id,
                "platform": candidate.platform,
                "outcome": Outcome::DryRun.as_str(),
                "error_kind": null,
                "trace_id": trace_id,
                "expires_at": candidate.expires_at.map(|at| at.to_rfc3339()),
            });
            self.committer.complete(
                Completion::Record {
                    token_id: candidate.id,
                    tenant_id: candidate.tenant_id.clone(),
                    audit: self.audit(platform, None, result, true),
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
        &self,
        selection: &Selection,
    ) -> Result<Vec<TokenResult>, CycleError> {
        let lead = |platform: Option<&PlatformSettings>| {
            selection.due_within.unwrap_or_else(|| {
                platform.map_or(self.settings.scheduler.lead_time, |platform| {
                    platform.lead_time
                })
            })
        };
        let active: Vec<String> = self
            .settings
            .active_platforms()
            .map(|(name, _)| name.to_owned())
            .collect();
        let (leads, other_lead) = match &selection.platform {
            Some(wanted) if active.contains(wanted) => return Ok(Vec::new()),
            Some(wanted) => (
                vec![(wanted.clone(), lead(self.settings.platforms.get(wanted)))],
                None,
            ),
            None => (
                self.settings
                    .inactive_platforms()
                    .map(|name| (name.to_owned(), lead(self.settings.platforms.get(name))))
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
            limit: self.settings.scheduler.batch_size,
        };
        let mut results = Vec::new();
        let mut start = PageStart::default();
        loop {
            let page = store::candidates(self.pool, &scan, start)
                .await
                .map_err(CycleStep::Scan.failed())?;
            let Some(last) = page.last() else { break };
            start = PageStart::after(last);
            let full_page = page.len() == self.settings.scheduler.batch_size as usize;
            results.extend(page.into_iter().map(|candidate| {
                let kind = if self.settings.platforms.contains_key(&candidate.platform) {
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
}
