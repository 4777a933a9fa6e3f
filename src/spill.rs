//! Provider answers that could not be stored yet, kept on disk until they are.
//!
//! Once a provider has answered, the old token may already be dead; if the database is
//! unreachable at that moment the answer is written here (token values sealed, the replaced
//! values only as digests, mode 0600) and stored by a later attempt or cycle — also after a
//! restart, since every cycle first stores what waits here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;

use crate::crypto::Keyring;
use crate::engine::fence;
use crate::storage::refresh::{self, PendingAnswer, Stored};

/// Writes `pending` durably into `directory`; returns the file to remove once stored. A
/// failed write leaves nothing behind, so it can simply be tried again.
pub fn hold(directory: &Path, pending: &PendingAnswer) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(directory)?;
    let name = format!(
        "answer-{}-{}-{}.json",
        pending.token_id,
        pending.sent_at.timestamp_millis(),
        std::process::id()
    );
    let path = directory.join(&name);
    let partial = directory.join(format!(".{name}.partial"));
    let written = write_durably(&partial, &path, pending);
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::File::open(directory)?.sync_all()?;
    Ok(path)
}

/// Writes `pending` to `partial`, flushed to disk, then renames it to `path`.
fn write_durably(partial: &Path, path: &Path, pending: &PendingAnswer) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)?;
    file.write_all(&serde_json::to_vec(pending)?)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

/// Forgets a held answer once it is stored (or can never be).
pub fn release(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %error, "held_answer_not_removed");
    }
}

/// Stores every answer held in `directory`. One that cannot be stored (the database refuses
/// it) is logged and left for the next cycle without holding back the others; when the
/// database cannot be reached at all the rest wait for the next cycle too. Never fails:
/// returns how many were settled.
pub async fn store_held(
    pool: &PgPool,
    keyring: &Keyring,
    directory: &Path,
    grant_warning: Duration,
) -> usize {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    let rules = fence::Rules {
        keyring,
        grant_warning,
    };
    let mut settled = 0;
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let Some(pending) = read_held(&path) else {
            continue;
        };
        match refresh::persist_success(pool, &pending, &rules).await {
            Ok(Stored::Locked) => continue,
            Ok(stored) => report_stored(&pending, &stored),
            Err(error) if crate::storage::is_unreachable(&error) => break,
            Err(error) => {
                tracing::error!(alert = true, token_id = pending.token_id, tenant_id = %pending.tenant_id, path = %path.display(), error = %error, "held_answer_not_stored");
                continue;
            }
        }
        release(&path);
        settled += 1;
    }
    settled
}

/// The answer held in `path`, if it is one and can be read.
fn read_held(path: &Path) -> Option<PendingAnswer> {
    let is_answer = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("answer-") && name.ends_with(".json"));
    if !is_answer {
        return None;
    }
    match std::fs::read(path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(pending) => Some(pending),
        Err(error) => {
            tracing::error!(alert = true, path = %path.display(), error, "held_answer_unreadable");
            None
        }
    }
}

fn report_stored(pending: &PendingAnswer, stored: &Stored) {
    match stored {
        Stored::Written { expires_at } => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            platform = %pending.platform,
            expires_at = %expires_at,
            "held_answer_stored"
        ),
        Stored::RowGone => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            "token_deleted_during_refresh"
        ),
        Stored::Replaced => tracing::info!(
            token_id = pending.token_id,
            tenant_id = %pending.tenant_id,
            platform = %pending.platform,
            "token_replaced_during_refresh"
        ),
        Stored::Locked => {}
    }
}
