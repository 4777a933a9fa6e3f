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
//!
//! Where each part lives: this file, the completions and the committer's handle; `groups`,
//! how completions gather into commit groups; `write`, one group's transaction; `stats`, what
//! the committer has done.

mod groups;
mod stats;
mod write;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::crypto::Keyring;
use crate::outcome::Outcome;
use crate::spill::answer::PendingAnswer;
use crate::storage::audit::AuditEntry;
use crate::storage::complete::FailureState;
use crate::storage::requests::RequestAnswer;
use crate::storage::tenant::KnownScope;

pub use groups::Expected;
pub use stats::CommitStats;

use groups::{Coming, Groups};
use write::{Store, write_group};

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
    /// Pause before the first retry of an answer whose row another session held locked; it
    /// doubles until it reaches `first_retry`, when the answer is held and retried as a failed
    /// commit.
    pub first_locked_retry: Duration,
    pub max_retry: Duration,
}

impl Default for CommitTuning {
    fn default() -> Self {
        CommitTuning {
            group_size: 200,
            linger: Duration::from_millis(5),
            parallel: 2,
            first_retry: Duration::from_millis(500),
            first_locked_retry: Duration::from_millis(10),
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

/// Counts a transaction of `submissions`, begun at `started`, that just committed.
fn record(stats: &Mutex<CommitStats>, submissions: &[Submission], started: Instant) {
    let answers = submissions
        .iter()
        .filter(|submission| matches!(submission.completion, Completion::Answer(_)))
        .count();
    let timings = submissions
        .iter()
        .filter_map(|submission| submission.timing);
    stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .count_transaction(started, answers, timings);
}
