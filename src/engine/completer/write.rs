//! One commit group's transaction: the answers' rows locked and judged, then each kind of
//! write once for the whole group (or, where the daemon's role sees one tenant at a time, for
//! each tenant's part of it).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crypto::Keyring;
use crate::engine::audit::settled_audit;
use crate::engine::lifetimes::written_times;
use crate::spill::answer::PendingAnswer;
use crate::storage::audit::AuditEntry;
use crate::storage::complete::{AnswerWrite, Completing, FailureWrite, LeaseRelease, Locked};
use crate::storage::requests::RequestAnswer;
use crate::storage::tenant::KnownScope;

use super::{Completed, Completion, Stored};
use crate::engine::fence::{self, Fence};

/// Where and by which rules commit groups are stored.
pub(super) struct Store {
    pub(super) pool: PgPool,
    pub(super) keyring: Arc<Keyring>,
    pub(super) grant_warning: Duration,
    pub(super) scope: Arc<KnownScope>,
}

/// Writes `completions` in one transaction: all at once, or one tenant's at a time where the
/// daemon's role sees one tenant at a time. Returns how each went, in order.
pub(super) async fn write_group(
    store: &Store,
    completions: &[&Completion],
) -> Result<Vec<Completed>, sqlx::Error> {
    let scope = store.scope.get(&store.pool).await?;
    let mut outcomes = vec![Completed::Done; completions.len()];
    let mut completing = Completing::begin(&store.pool).await?;
    let numbered: Vec<(usize, &Completion)> = completions.iter().copied().enumerate().collect();
    for (tenant_id, part) in scope.parts(numbered, |(_, completion)| completion.tenant_id()) {
        if let Some(tenant_id) = tenant_id {
            completing.act_for(&tenant_id).await?;
        }
        for (index, completed) in write_part(store, &mut completing, &part).await? {
            outcomes[index] = completed;
        }
    }
    completing.commit().await?;
    Ok(outcomes)
}

/// The statements of one part of a group: the answers' rows locked and judged, then each
/// kind of write once for the whole part.
async fn write_part(
    store: &Store,
    completing: &mut Completing,
    part: &[(usize, &Completion)],
) -> Result<Vec<(usize, Completed)>, sqlx::Error> {
    let answers: Vec<(usize, &PendingAnswer)> = part
        .iter()
        .filter_map(|(index, completion)| match completion {
            Completion::Answer(answer) => Some((*index, &**answer)),
            _ => None,
        })
        .collect();
    let ids: Vec<i32> = answers.iter().map(|(_, answer)| answer.token_id).collect();
    let locked = completing.lock(&ids).await?;
    let judged = judge_answers(store, &locked, &answers);
    let expiries = completing
        .store_answers(&judged.writes, store.grant_warning)
        .await?;
    let failures: Vec<FailureWrite<'_>> = part
        .iter()
        .filter_map(|(_, completion)| match completion {
            Completion::Failure(failed) => Some(FailureWrite {
                token_id: failed.token_id,
                owner: &failed.owner,
                state: failed.state,
                outcome: failed.outcome,
                trace_id: failed.audit.trace_id(),
                http_status: failed.audit.status_code,
            }),
            _ => None,
        })
        .collect();
    let failure_counts = completing.record_failures(&failures).await?;
    let mut releases = judged.releases.clone();
    releases.extend(part.iter().filter_map(|(_, completion)| match completion {
        Completion::Release {
            token_id, owner, ..
        } => Some(LeaseRelease {
            token_id: *token_id,
            owner,
        }),
        _ => None,
    }));
    completing.release_leases(&releases).await?;
    let request_answers: Vec<RequestAnswer> = part
        .iter()
        .filter_map(|(_, completion)| match completion {
            Completion::RequestAnswered { answer, .. } => Some(*answer),
            _ => None,
        })
        .collect();
    completing.answer_requests(&request_answers).await?;
    let mut outcomes = Vec::with_capacity(part.len());
    let mut audits: Vec<(i32, AuditEntry)> = Vec::new();
    for (index, completion) in part {
        let completed = match completion {
            Completion::Answer(answer) => {
                let stored = judged.stored_as(*index, answer.token_id, &expiries);
                if judged.to_record(*index, &stored) {
                    audits.push((answer.token_id, settled_audit(answer, &stored)));
                }
                Completed::Stored(stored)
            }
            Completion::Failure(failed) => {
                audits.push((failed.token_id, failed.audit.clone()));
                Completed::Failed(failure_counts.get(&failed.token_id).copied())
            }
            Completion::Release {
                token_id, audit, ..
            } => {
                if let Some(audit) = audit {
                    audits.push((*token_id, audit.clone()));
                }
                Completed::Done
            }
            Completion::Record {
                token_id, audit, ..
            } => {
                audits.push((*token_id, audit.clone()));
                Completed::Done
            }
            Completion::RequestAnswered { .. } => Completed::Done,
        };
        outcomes.push((*index, completed));
    }
    let audits: Vec<(i32, &AuditEntry)> = audits.iter().map(|(id, audit)| (*id, audit)).collect();
    completing.insert_audits(&audits).await?;
    Ok(outcomes)
}

/// What the fence made of a part's answers.
struct Judged<'a> {
    /// The answers to write.
    writes: Vec<AnswerWrite<'a>>,
    /// The leases of answers whose rows someone else rewrote.
    releases: Vec<LeaseRelease<'a>>,
    /// How each answer not written went, by its index in the group; an answer written is
    /// told by its new expiry.
    settled: std::collections::HashMap<usize, Stored>,
    /// Answers already in their rows: an earlier commit went through and recorded them.
    already_recorded: Vec<usize>,
}

impl Judged<'_> {
    /// How the answer at `index` went.
    fn stored_as(
        &self,
        index: usize,
        token_id: i32,
        expiries: &std::collections::HashMap<i32, DateTime<Utc>>,
    ) -> Stored {
        if let Some(stored) = self.settled.get(&index) {
            return stored.clone();
        }
        expiries
            .get(&token_id)
            .map_or(Stored::RowGone, |expires_at| Stored::Written {
                expires_at: *expires_at,
            })
    }

    /// Whether the answer at `index`, gone as `stored` says, gets its audit rows now.
    fn to_record(&self, index: usize, stored: &Stored) -> bool {
        *stored != Stored::Locked && !self.already_recorded.contains(&index)
    }
}

/// Judges each answer against its locked row: written, already there, replaced, gone, or
/// held by another session.
fn judge_answers<'a>(
    store: &Store,
    locked: &Locked,
    answers: &[(usize, &'a PendingAnswer)],
) -> Judged<'a> {
    let mut judged = Judged {
        writes: Vec::new(),
        releases: Vec::new(),
        settled: std::collections::HashMap::new(),
        already_recorded: Vec::new(),
    };
    for (index, answer) in answers {
        let Some(row) = locked.rows.get(&answer.token_id) else {
            let stored = if locked.held_elsewhere.contains(&answer.token_id) {
                Stored::Locked
            } else {
                Stored::RowGone
            };
            judged.settled.insert(*index, stored);
            continue;
        };
        match fence::judge(&store.keyring, row, answer) {
            Fence::Store {
                access_token,
                refresh_token,
            } => {
                let times = written_times(answer, row.now);
                judged.writes.push(AnswerWrite {
                    token_id: answer.token_id,
                    access_token,
                    refresh_token,
                    expires_at: times.expires_at,
                    owner: &answer.owner,
                    next_attempt_at: times.next_attempt_at,
                    grant_expires_at: times.grant_expires_at,
                    trace_id: answer.audit.trace_id(),
                    http_status: answer.audit.status_code,
                    metadata: serde_json::Value::Object(answer.metadata.clone()),
                });
            }
            Fence::AlreadyStored => {
                judged.already_recorded.push(*index);
                let expires_at = row.expires_at.unwrap_or(row.now);
                judged
                    .settled
                    .insert(*index, Stored::Written { expires_at });
            }
            Fence::Replaced => {
                judged.releases.push(LeaseRelease {
                    token_id: answer.token_id,
                    owner: &answer.owner,
                });
                judged.settled.insert(*index, Stored::Replaced);
            }
        }
    }
    judged
}
