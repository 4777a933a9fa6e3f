//! The completer: every way an attempt ends — an answer stored, replaced or gone, a failure,
//! a token given back, a dry run, a request answered — is one [`Completion`], and every
//! completion reaches the database here, in commit groups: one transaction of a fixed number
//! of statements (`storage::complete`) whatever the number of tenants and the mix of
//! outcomes, so the database does a fraction of the work per refresh that one transaction per
//! token costs.
//!
//! A commit group gathers completions for at most [`CommitTuning::linger`] after its first — less
//! when no other answer is on its way (every exchange started has handed its answer over, see
//! [`Committer::announce`]) — then goes out as soon as a transaction slot is free, taking along
//! whatever arrived meanwhile. At high rates the database sees a few large transactions a
//! second instead of thousands of small ones; a lone answer, or the last of a few, does not
//! wait for answers that are not coming. The bound on an answer's wait before its commit
//! starts is the linger plus one transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::crypto::Keyring;
use crate::outcome::Outcome;
use crate::spill::answer::PendingAnswer;
use crate::storage::audit::AuditEntry;
use crate::storage::complete::{
    AnswerWrite, Completing, FailureState, FailureWrite, LeaseRelease, Locked,
};
use crate::storage::requests::RequestAnswer;
use crate::storage::tenant::KnownScope;

use super::answer::written_times;
use super::audit::settled_audit;
use super::fence::{self, Fence};

/// Every way an attempt ends, as the completer writes it.
#[derive(Debug)]
pub enum Completion {
    /// A provider's answer: judged against its row as it is now, then stored or not.
    Answer(Arc<PendingAnswer>),
    /// A failed attempt charged to the token.
    Failure(FailedAttempt),
    /// A claimed token given back with its state untouched; with the audit rows of an
    /// attempt that made no difference to it (its platform refused the client).
    Release {
        token_id: i32,
        tenant_id: String,
        owner: String,
        audit: Option<AuditEntry>,
    },
    /// An attempt that changed nothing (a dry run): its audit rows only.
    Record {
        token_id: i32,
        tenant_id: String,
        audit: AuditEntry,
    },
    /// A request answered without a refresh.
    RequestAnswered {
        tenant_id: String,
        answer: RequestAnswer,
    },
}

/// A failed attempt: the state it leaves the token in, while the lease is still `owner`'s.
#[derive(Debug)]
pub struct FailedAttempt {
    pub token_id: i32,
    pub tenant_id: String,
    pub owner: String,
    pub state: FailureState,
    /// What a request waiting on the token is answered.
    pub outcome: Outcome,
    pub audit: AuditEntry,
}

impl Completion {
    /// The tenant whose token it is about, as the completion was made.
    fn tenant_id(&self) -> &str {
        match self {
            Completion::Answer(answer) => &answer.tenant_id,
            Completion::Failure(failed) => &failed.tenant_id,
            Completion::Release { tenant_id, .. }
            | Completion::Record { tenant_id, .. }
            | Completion::RequestAnswered { tenant_id, .. } => tenant_id,
        }
    }
}

/// How a completion went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// An answer's fate.
    Stored(Stored),
    /// A failure recorded: the token's failure count after it, if the lease was still its
    /// owner's (otherwise a newer result stands and nothing was written).
    Failed(Option<i32>),
    /// Anything else, written.
    Done,
}

/// How storing an answer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written; the token now expires at this time.
    Written { expires_at: DateTime<Utc> },
    /// The row (or its tenant) was deleted while the refresh ran.
    RowGone,
    /// Another writer put other values into the row meanwhile; nothing was written.
    Replaced,
    /// Another session holds the row locked; nothing was written, try again later.
    Locked,
}

/// How answers are grouped into transactions and how a failed commit is retried: one
/// place for the numbers, with the defaults the daemon runs with; tests may set others.
#[derive(Debug, Clone, Copy)]
pub struct CommitTuning {
    /// Most answers in one commit group (one transaction).
    pub group_size: usize,
    /// Longest a commit group waits for more answers after its first.
    pub linger: Duration,
    /// Transactions storing commit groups at once: two keep one filling while the other
    /// commits.
    pub parallel: usize,
    /// Pause before the first retry of a failed commit; it doubles up to `max_retry`.
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for CommitTuning {
    fn default() -> Self {
        CommitTuning {
            group_size: 200,
            linger: Duration::from_millis(5),
            parallel: 2,
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(5),
        }
    }
}

/// Why a completion could not be committed; a database error is shared by every completion
/// in its commit group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
    #[error("the committer has stopped")]
    Stopped,
    /// The process is exiting and no longer waits for the commit.
    #[error("the commit was abandoned at shutdown")]
    Abandoned,
    /// Another session holds the token's row locked.
    #[error("another session holds the token's row locked")]
    RowLocked,
}

/// What the committer has done so far, in a size that does not grow with the answers: the
/// times are histograms (two significant digits, microseconds up to an hour: 27 KB each, small
/// enough to make afresh for every requests pass).
#[derive(Debug, Clone)]
pub struct CommitStats {
    /// Answers committed.
    pub answers: u64,
    /// Transactions that committed them.
    pub transactions: u64,
    /// Longest single transaction.
    pub max_transaction: Duration,
    /// For each committed answer, the time from its arrival to its commit.
    commit_waits: Histogram<u64>,
    /// For each committed answer, the time from its request being sent to its commit.
    refresh_latencies: Histogram<u64>,
}

/// Longest time a histogram tells apart (longer ones count as this): an hour, in µs.
const LONGEST_RECORDED_MICROS: u64 = 3_600_000_000;

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            answers: 0,
            transactions: 0,
            max_transaction: Duration::ZERO,
            commit_waits: time_histogram(),
            refresh_latencies: time_histogram(),
        }
    }
}

/// An empty histogram of times. Its bounds are constants that `new_with_bounds` accepts (the
/// unit test below builds one), so it cannot fail.
fn time_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LONGEST_RECORDED_MICROS, 2)
        .expect("constant histogram bounds are valid")
}

impl CommitStats {
    /// The `quantile` (in `[0, 1]`) of the times from answers' arrival to their commit.
    pub fn commit_wait(&self, quantile: f64) -> Duration {
        quantile_of(&self.commit_waits, quantile)
    }

    /// The `quantile` (in `[0, 1]`) of the refresh latencies.
    pub fn refresh_latency(&self, quantile: f64) -> Duration {
        quantile_of(&self.refresh_latencies, quantile)
    }
}

/// The `quantile` of `times`; zero when it is empty.
fn quantile_of(times: &Histogram<u64>, quantile: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_micros(times.value_at_quantile(quantile.clamp(0.0, 1.0)))
}

/// Counts `time` in `times`, an hour at most.
fn record_time(times: &mut Histogram<u64>, time: Duration) {
    let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
    times.saturating_record(micros.clamp(1, LONGEST_RECORDED_MICROS));
}

/// When an answer's request went out and when the answer came back.
#[derive(Debug, Clone, Copy)]
pub struct AnswerTiming {
    pub sent: Instant,
    pub arrived: Instant,
}

struct Submission {
    completion: Completion,
    /// An answer's times, for the statistics.
    timing: Option<AnswerTiming>,
    reply: oneshot::Sender<Result<Completed, CommitError>>,
}

/// Takes completions from any number of attempts and commits them in commit groups.
pub struct Committer {
    submissions: mpsc::UnboundedSender<Submission>,
    stats: Arc<Mutex<CommitStats>>,
    coming: Arc<Coming>,
}

/// How many answers are on their way to the committer (their exchanges are under way), and a
/// signal when none is.
#[derive(Default)]
struct Coming {
    answers: AtomicUsize,
    none: Notify,
}

/// An attempt's completion on its way: from the start of its exchange until its answer or
/// failure is handed to the completer (or it is dropped). While any is, a commit group
/// lingers for it, up to [`CommitTuning::linger`].
pub struct Expected {
    coming: Arc<Coming>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        if self.coming.answers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.coming.none.notify_waiters();
        }
    }
}

impl Committer {
    /// Starts committing on `pool`, grouped as `tuning` says; `keyring` opens the rows'
    /// values for the fence; a grant end stored within `grant_warning` is reported with it;
    /// `scope` says how many tenants one statement may cover.
    pub fn start(
        pool: PgPool,
        keyring: Arc<Keyring>,
        tuning: CommitTuning,
        grant_warning: Duration,
        scope: Arc<KnownScope>,
    ) -> Self {
        let (submissions, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let coming = Arc::new(Coming::default());
        let store = Arc::new(Store {
            pool,
            keyring,
            grant_warning,
            scope,
        });
        let groups = Groups {
            receiver,
            tuning,
            coming: Arc::clone(&coming),
        };
        tokio::spawn(group_loop(store, groups, Arc::clone(&stats)));
        Committer {
            submissions,
            stats,
            coming,
        }
    }

    /// Announces an answer whose exchange is starting, so that commit groups wait for it
    /// (within their linger); the announcement ends when the returned value is handed to
    /// [`Committer::commit`] or dropped.
    pub fn announce(&self) -> Expected {
        self.coming.answers.fetch_add(1, Ordering::AcqRel);
        Expected {
            coming: Arc::clone(&self.coming),
        }
    }

    /// Commits `answer`, in a transaction with whatever other completions are waiting;
    /// `expected` is its announcement, if it had one, which ends once the answer is queued.
    pub async fn commit(
        &self,
        answer: Arc<PendingAnswer>,
        timing: Option<AnswerTiming>,
        expected: Option<Expected>,
    ) -> Result<Stored, CommitError> {
        match self
            .submit(Completion::Answer(answer), timing, expected)
            .await?
        {
            Completed::Stored(stored) => Ok(stored),
            Completed::Failed(_) | Completed::Done => Err(CommitError::Stopped),
        }
    }

    /// Commits `completion` (not an answer: see [`Committer::commit`]), in a transaction with
    /// whatever other completions are waiting; `expected` is the announcement of the attempt it
    /// ends, if it had one, which ends once the completion is queued.
    pub async fn complete(
        &self,
        completion: Completion,
        expected: Option<Expected>,
    ) -> Result<Completed, CommitError> {
        self.submit(completion, None, expected).await
    }

    async fn submit(
        &self,
        completion: Completion,
        timing: Option<AnswerTiming>,
        expected: Option<Expected>,
    ) -> Result<Completed, CommitError> {
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            completion,
            timing,
            reply,
        };
        let queued = self.submissions.send(submission);
        drop(expected);
        if queued.is_err() {
            return Err(CommitError::Stopped);
        }
        outcome.await.unwrap_or(Err(CommitError::Stopped))
    }

    /// What it has done so far.
    pub fn stats(&self) -> CommitStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where and by which rules commit groups are stored.
struct Store {
    pool: PgPool,
    keyring: Arc<Keyring>,
    grant_warning: Duration,
    scope: Arc<KnownScope>,
}

/// Where commit groups (of submissions, `T`) are gathered from, and how.
struct Groups<T> {
    receiver: mpsc::UnboundedReceiver<T>,
    tuning: CommitTuning,
    coming: Arc<Coming>,
}

impl<T> Groups<T> {
    /// The next commit group: the next answer, and those that arrive within the linger after
    /// it while more are on their way.
    async fn gather(&mut self) -> Option<Vec<T>> {
        let first = self.receiver.recv().await?;
        let linger_until = tokio::time::Instant::now() + self.tuning.linger;
        let mut group = vec![first];
        while group.len() < self.tuning.group_size {
            if let Ok(submission) = self.receiver.try_recv() {
                group.push(submission);
                continue;
            }
            let coming = Arc::clone(&self.coming);
            let none_coming = coming.none.notified();
            tokio::pin!(none_coming);
            none_coming.as_mut().enable();
            if coming.answers.load(Ordering::Acquire) == 0 {
                // Every answer announced is queued: take what is there and go.
                self.top_up(&mut group);
                break;
            }
            tokio::select! {
                submission = self.receiver.recv() => match submission {
                    Some(submission) => group.push(submission),
                    None => break,
                },
                () = &mut none_coming => {}
                () = tokio::time::sleep_until(linger_until) => break,
            }
        }
        Some(group)
    }

    /// Adds to `group` what has arrived, up to the group size.
    fn top_up(&mut self, group: &mut Vec<T>) {
        while group.len() < self.tuning.group_size {
            match self.receiver.try_recv() {
                Ok(submission) => group.push(submission),
                Err(_) => break,
            }
        }
    }
}

async fn group_loop(
    store: Arc<Store>,
    mut groups: Groups<Submission>,
    stats: Arc<Mutex<CommitStats>>,
) {
    let slots = Arc::new(Semaphore::new(groups.tuning.parallel.max(1)));
    while let Some(mut group) = groups.gather().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        groups.top_up(&mut group);
        let store = Arc::clone(&store);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            commit_group(&store, group, &stats).await;
            drop(slot);
        });
    }
}

/// Commits a group and tells each submitter how it went. When the group fails, each
/// completion is tried alone, so one the database rejects cannot hold back the others.
async fn commit_group(store: &Store, submissions: Vec<Submission>, stats: &Mutex<CommitStats>) {
    let completions: Vec<&Completion> = submissions.iter().map(|s| &s.completion).collect();
    let started = Instant::now();
    match write_group(store, &completions).await {
        Ok(outcomes) => {
            record(stats, &submissions, started);
            for (submission, completed) in submissions.into_iter().zip(outcomes) {
                let _ = submission.reply.send(Ok(completed));
            }
        }
        Err(error) if submissions.len() == 1 => {
            let error = CommitError::Database(Arc::new(error));
            for submission in submissions {
                let _ = submission.reply.send(Err(error.clone()));
            }
        }
        Err(_) => {
            for submission in submissions {
                let started = Instant::now();
                let reply = match write_group(store, &[&submission.completion]).await {
                    Ok(mut outcomes) => {
                        record(stats, std::slice::from_ref(&submission), started);
                        Ok(outcomes.pop().unwrap_or(Completed::Done))
                    }
                    Err(error) => Err(CommitError::Database(Arc::new(error))),
                };
                let _ = submission.reply.send(reply);
            }
        }
    }
}

/// Writes `completions` in one transaction: all at once, or one tenant's at a time where the
/// daemon's role sees one tenant at a time. Returns how each went, in order.
async fn write_group(
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

/// Counts a transaction of `submissions`, begun at `started`, that just committed.
fn record(stats: &Mutex<CommitStats>, submissions: &[Submission], started: Instant) {
    let done = Instant::now();
    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    stats.transactions += 1;
    stats.answers += submissions
        .iter()
        .filter(|submission| matches!(submission.completion, Completion::Answer(_)))
        .count() as u64;
    stats.max_transaction = stats.max_transaction.max(done - started);
    for timing in submissions
        .iter()
        .filter_map(|submission| submission.timing)
    {
        record_time(&mut stats.commit_waits, done - timing.arrived);
        record_time(&mut stats.refresh_latencies, done - timing.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups of numbers, lingering `linger`, and how many answers are on their way.
    fn groups(linger: Duration) -> (mpsc::UnboundedSender<u32>, Groups<u32>, Arc<Coming>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let coming = Arc::new(Coming::default());
        let tuning = CommitTuning {
            linger,
            ..CommitTuning::default()
        };
        let groups = Groups {
            receiver,
            tuning,
            coming: Arc::clone(&coming),
        };
        (sender, groups, coming)
    }

    fn announce(coming: &Arc<Coming>) -> Expected {
        coming.answers.fetch_add(1, Ordering::AcqRel);
        Expected {
            coming: Arc::clone(coming),
        }
    }

    #[tokio::test]
    async fn a_group_goes_at_once_when_no_other_answer_is_on_its_way() {
        let (sender, mut groups, _coming) = groups(Duration::from_secs(60));
        sender.send(1).expect("queued");
        sender.send(2).expect("queued");
        let started = Instant::now();
        let group = groups.gather().await.expect("a group");
        assert_eq!(group, [1, 2]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it did not linger"
        );
    }

    #[tokio::test]
    async fn a_group_waits_for_the_answers_announced_and_no_longer() {
        let (sender, mut groups, coming) = groups(Duration::from_secs(60));
        let first = announce(&coming);
        let second = announce(&coming);
        sender.send(1).expect("queued");
        drop(first);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.send(2).expect("queued");
            drop(second);
            sender
        });
        let started = Instant::now();
        let group = groups.gather().await.expect("a group");
        assert_eq!(group, [1, 2], "the announced answer joined the group");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it stopped once none was coming"
        );
        late.await.expect("sender");
    }

    #[tokio::test]
    async fn an_answer_that_does_not_come_holds_a_group_back_no_longer_than_the_linger() {
        let (sender, mut groups, coming) = groups(Duration::from_millis(100));
        let _never_sent = announce(&coming);
        sender.send(1).expect("queued");
        let started = Instant::now();
        let group = groups.gather().await.expect("a group");
        assert_eq!(group, [1]);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(5),
            "lingered {waited:?}"
        );
    }

    #[test]
    fn times_are_summarised_in_a_fixed_size_with_their_quantiles() {
        let mut stats = CommitStats::default();
        assert_eq!(stats.commit_wait(0.99), Duration::ZERO, "nothing yet");
        for millis in 1..=1000 {
            record_time(&mut stats.commit_waits, Duration::from_millis(millis));
        }
        record_time(&mut stats.commit_waits, Duration::from_secs(100_000));
        let p50 = stats.commit_wait(0.5).as_millis();
        assert!((495..=505).contains(&p50), "p50 {p50} ms");
        let longest = stats.commit_wait(1.0).as_secs();
        assert!(
            (3600..=3636).contains(&longest),
            "longer times count as an hour, within 1%: {longest} s"
        );
    }
}
