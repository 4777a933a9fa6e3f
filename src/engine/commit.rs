//! Group commit: providers' answers arriving from many refreshes at once are stored together
//! in one transaction, a commit group (per tenant in it, under that tenant's `app.tenant_id`:
//! the rows locked and read for the fence, one UPDATE, one INSERT of both audit rows), so the
//! database does a fraction of the work per refresh that one transaction per token costs.
//!
//! A commit group gathers answers for at most [`CommitTuning::linger`] after its first, then
//! goes out as soon as a transaction slot is free, taking along whatever arrived meanwhile. At low rates an answer
//! waits those few milliseconds; at high rates the database sees a few large transactions a
//! second instead of thousands of small ones. The bound on an answer's wait before its commit
//! starts is the linger plus one transaction.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::crypto::Keyring;
use crate::storage::refresh::{self as store, PendingAnswer, Stored};

use super::fence;

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

/// Why an answer could not be committed; a database error is shared by every answer in its
/// commit group.
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
/// times are histograms (three significant digits, microseconds up to an hour).
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
    Histogram::new_with_bounds(1, LONGEST_RECORDED_MICROS, 3)
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
    answer: Arc<PendingAnswer>,
    timing: AnswerTiming,
    reply: oneshot::Sender<Result<Stored, CommitError>>,
}

/// Takes answers from any number of refreshes and commits them in commit groups.
pub struct Committer {
    submissions: mpsc::UnboundedSender<Submission>,
    stats: Arc<Mutex<CommitStats>>,
}

impl Committer {
    /// Starts committing on `pool`, grouped as `tuning` says; `keyring` opens the rows'
    /// values for the fence; a grant end stored within `grant_warning` is reported with it.
    pub fn start(
        pool: PgPool,
        keyring: Arc<Keyring>,
        tuning: CommitTuning,
        grant_warning: Duration,
    ) -> Self {
        let (submissions, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let store = Store {
            pool,
            keyring,
            grant_warning,
        };
        tokio::spawn(group_loop(store, receiver, tuning, Arc::clone(&stats)));
        Committer { submissions, stats }
    }

    /// Commits `answer`, in a transaction with whatever other answers are waiting.
    pub async fn commit(
        &self,
        answer: Arc<PendingAnswer>,
        timing: AnswerTiming,
    ) -> Result<Stored, CommitError> {
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            answer,
            timing,
            reply,
        };
        if self.submissions.send(submission).is_err() {
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
}

async fn group_loop(
    store: Store,
    mut receiver: mpsc::UnboundedReceiver<Submission>,
    tuning: CommitTuning,
    stats: Arc<Mutex<CommitStats>>,
) {
    let slots = Arc::new(Semaphore::new(tuning.parallel.max(1)));
    while let Some(first) = receiver.recv().await {
        let linger_until = tokio::time::Instant::now() + tuning.linger;
        let mut group = vec![first];
        while group.len() < tuning.group_size {
            match tokio::time::timeout_at(linger_until, receiver.recv()).await {
                Ok(Some(submission)) => group.push(submission),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        while group.len() < tuning.group_size {
            match receiver.try_recv() {
                Ok(submission) => group.push(submission),
                Err(_) => break,
            }
        }
        let store = Store {
            pool: store.pool.clone(),
            keyring: Arc::clone(&store.keyring),
            grant_warning: store.grant_warning,
        };
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            commit_group(&store, group, &stats).await;
            drop(slot);
        });
    }
}

/// Commits a group and tells each submitter how it went. When the group fails, each answer is
/// tried alone, so one answer the database rejects cannot hold back the others.
async fn commit_group(store: &Store, submissions: Vec<Submission>, stats: &Mutex<CommitStats>) {
    let answers: Vec<&PendingAnswer> = submissions.iter().map(|s| &*s.answer).collect();
    let pool = &store.pool;
    let rules = fence::Rules {
        keyring: &store.keyring,
        grant_warning: store.grant_warning,
    };
    let started = Instant::now();
    match store::persist_answers(pool, &answers, &rules).await {
        Ok(outcomes) => {
            record(stats, &submissions, started);
            for (submission, stored) in submissions.into_iter().zip(outcomes) {
                let _ = submission.reply.send(Ok(stored));
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
                let reply = match store::persist_success(pool, &submission.answer, &rules).await {
                    Ok(stored) => {
                        record(stats, std::slice::from_ref(&submission), started);
                        Ok(stored)
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
    let done = Instant::now();
    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    stats.transactions += 1;
    stats.answers += submissions.len() as u64;
    stats.max_transaction = stats.max_transaction.max(done - started);
    for submission in submissions {
        let timing = submission.timing;
        record_time(&mut stats.commit_waits, done - timing.arrived);
        record_time(&mut stats.refresh_latencies, done - timing.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            stats.commit_wait(1.0).as_secs(),
            3600,
            "longer times count as an hour"
        );
    }
}
