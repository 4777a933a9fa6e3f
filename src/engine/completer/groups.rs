//! How completions gather into commit groups: the next one, and those that arrive within the
//! linger after it while more are on their way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use super::CommitTuning;

/// How many answers are on their way to the committer (their exchanges are under way), and a
/// signal when none is.
#[derive(Default)]
pub(super) struct Coming {
    pub(super) answers: AtomicUsize,
    pub(super) none: Notify,
}

/// An attempt's completion on its way: from the start of its exchange until its answer or
/// failure is handed to the completer (or it is dropped). While any is, a commit group
/// lingers for it, up to [`CommitTuning::linger`].
pub struct Expected {
    pub(super) coming: Arc<Coming>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        if self.coming.answers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.coming.none.notify_waiters();
        }
    }
}

/// Where commit groups (of submissions, `T`) are gathered from, and how.
pub(super) struct Groups<T> {
    pub(super) receiver: mpsc::UnboundedReceiver<T>,
    pub(super) tuning: CommitTuning,
    pub(super) coming: Arc<Coming>,
}

impl<T> Groups<T> {
    /// The next commit group: the next answer, and those that arrive within the linger after
    /// it while more are on their way.
    pub(super) async fn gather(&mut self) -> Option<Vec<T>> {
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
    pub(super) fn top_up(&mut self, group: &mut Vec<T>) {
        while group.len() < self.tuning.group_size {
            match self.receiver.try_recv() {
                Ok(submission) => group.push(submission),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;

    use super::{Coming, Expected, Groups};
    use crate::engine::completer::CommitTuning;

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
}
