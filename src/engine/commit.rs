//! Group commit: providers' answers arriving from many refreshes at once are stored a
//! tenant's batch per transaction (one UPDATE, two INSERTs), so the database does a fraction
//! of the work per refresh that one transaction per token costs.
//!
//! There is no waiting for a batch to fill: an answer goes out with the next transaction
//! that starts. Batches grow only while every transaction slot is busy, so at low rates each
//! answer commits at once, and at high rates the database sees fewer, larger transactions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::storage::refresh::{self as store, PendingAnswer, Stored};

/// Most answers in one transaction.
const MAX_BATCH: usize = 500;

/// Why an answer could not be committed; a database error is shared by every answer in its
/// batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
    #[error("the committer has stopped")]
    Stopped,
}

/// What the committer has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Answers committed.
    pub answers: u64,
    /// Transactions that committed them.
    pub transactions: u64,
    /// Longest time from an answer's arrival to its commit.
    pub max_wait: Duration,
    /// For each committed answer, the time from its request being sent to its commit.
    pub refresh_latencies: Vec<Duration>,
}

impl CommitStats {
    /// The `quantile` (in `[0, 1]`) of the refresh latencies; zero when there are none.
    pub fn refresh_latency(&self, quantile: f64) -> Duration {
        let mut latencies = self.refresh_latencies.clone();
        latencies.sort_unstable();
        let last = latencies.len().saturating_sub(1);
        let index = ((last as f64) * quantile.clamp(0.0, 1.0)).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    }
}

/// When an answer's request went out and when the answer came back.
#[derive(Debug, Clone, Copy)]
pub struct AnswerTiming {
    pub sent: Instant,
    pub arrived: Instant,
}

struct Submission {
    answer: PendingAnswer,
    timing: AnswerTiming,
    reply: oneshot::Sender<Result<Stored, CommitError>>,
}

/// Takes answers from any number of refreshes and commits them in batches.
pub struct Committer {
    submissions: mpsc::UnboundedSender<Submission>,
    stats: Arc<Mutex<CommitStats>>,
}

impl Committer {
    /// Starts committing on `pool`, at most `parallel` transactions at a time.
    pub fn start(pool: PgPool, parallel: usize) -> Self {
        let (submissions, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        tokio::spawn(batch_loop(
            pool,
            receiver,
            parallel.max(1),
            Arc::clone(&stats),
        ));
        Committer { submissions, stats }
    }

    /// Commits `answer`, in a transaction with whatever other answers are waiting.
    pub async fn commit(
        &self,
        answer: PendingAnswer,
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

async fn batch_loop(
    pool: PgPool,
    mut receiver: mpsc::UnboundedReceiver<Submission>,
    parallel: usize,
    stats: Arc<Mutex<CommitStats>>,
) {
    let slots = Arc::new(Semaphore::new(parallel));
    while let Some(first) = receiver.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(submission) => batch.push(submission),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            for (tenant_id, submissions) in by_tenant(batch) {
                commit_batch(&pool, &tenant_id, submissions, &stats).await;
            }
            drop(slot);
        });
    }
}

fn by_tenant(batch: Vec<Submission>) -> BTreeMap<String, Vec<Submission>> {
    let mut tenants: BTreeMap<String, Vec<Submission>> = BTreeMap::new();
    for submission in batch {
        tenants
            .entry(submission.answer.tenant_id.clone())
            .or_default()
            .push(submission);
    }
    tenants
}

/// Commits one tenant's answers and tells each submitter how it went.
async fn commit_batch(
    pool: &PgPool,
    tenant_id: &str,
    submissions: Vec<Submission>,
    stats: &Mutex<CommitStats>,
) {
    let answers: Vec<&PendingAnswer> = submissions.iter().map(|s| &s.answer).collect();
    let committed = store::persist_answers(pool, tenant_id, &answers).await;
    let done = Instant::now();
    match committed {
        Ok(outcomes) => {
            {
                let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
                stats.transactions += 1;
                stats.answers += submissions.len() as u64;
                for submission in &submissions {
                    let timing = submission.timing;
                    stats.max_wait = stats.max_wait.max(done - timing.arrived);
                    stats.refresh_latencies.push(done - timing.sent);
                }
            }
            for (submission, stored) in submissions.into_iter().zip(outcomes) {
                let _ = submission.reply.send(Ok(stored));
            }
        }
        Err(error) => {
            let error = CommitError::Database(Arc::new(error));
            for submission in submissions {
                let _ = submission.reply.send(Err(error.clone()));
            }
        }
    }
}
