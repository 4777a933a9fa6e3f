//! Provider answers that could not be stored yet, kept on disk until they are.
//!
//! Once a provider has answered, the old token may already be dead; if the database is
//! unreachable at that moment the answer is written here (token values sealed, the replaced
//! values only as digests, mode 0600) and stored by a later attempt or cycle — also after a
//! restart, since every cycle first stores what waits here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sqlx::PgPool;

use crate::storage::refresh::{self, PendingAnswer, Stored};

/// Writes `pending` durably into `directory`; returns the file to remove once stored.
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
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(&serde_json::to_vec(pending)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(directory)?.sync_all()?;
    Ok(path)
}

/// Forgets a held answer once it is stored (or can never be).
pub fn release(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %error, "held_answer_not_removed");
    }
}

/// Stores every answer held in `directory`; stops at the first database error (the rest wait
/// for the next cycle). Returns how many were settled.
pub async fn store_held(pool: &PgPool, directory: &Path) -> Result<usize, sqlx::Error> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Ok(0);
    };
    let mut settled = 0;
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let is_answer = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("answer-") && name.ends_with(".json"));
        if !is_answer {
            continue;
        }
        let pending: PendingAnswer = match std::fs::read(&path)
            .map_err(|error| error.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
        {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(alert = true, path = %path.display(), error, "held_answer_unreadable");
                continue;
            }
        };
        match refresh::persist_success(pool, &pending).await? {
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
            Stored::ValuesChanged => tracing::error!(
                alert = true,
                token_id = pending.token_id,
                tenant_id = %pending.tenant_id,
                platform = %pending.platform,
                "token_answer_lost"
            ),
        }
        release(&path);
        settled += 1;
    }
    Ok(settled)
}
