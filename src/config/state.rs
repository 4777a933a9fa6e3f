//! `state.directory` must be able to hold answers before one has to be held there: a bad one
//! would otherwise show only during a database outage, when an answer is written there.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::{ConfigError, Settings, invalid};

impl Settings {
    /// For `check`: the state directory, or the nearest existing directory it would be created
    /// in, is a directory this process can write in. Nothing is left behind.
    pub fn check_state_directory(&self) -> Result<(), ConfigError> {
        let Some(directory) = &self.state_directory else {
            return Ok(());
        };
        let existing = nearest_existing(directory);
        let problem = match writable_directory(existing) {
            Ok(()) => return Ok(()),
            Err(problem) if existing == directory.as_path() => problem,
            Err(problem) => format!(
                "does not exist and cannot be created: {} {problem}",
                existing.display()
            ),
        };
        Err(refused(directory, &problem))
    }

    /// At start: creates the state directory if it is missing (readable by this user only),
    /// then checks that this process can write in it.
    pub fn prepare_state_directory(&self) -> Result<(), ConfigError> {
        let Some(directory) = &self.state_directory else {
            return Ok(());
        };
        if directory.symlink_metadata().is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(directory)
                .map_err(|error| refused(directory, &format!("cannot be created: {error}")))?;
        }
        writable_directory(directory).map_err(|problem| refused(directory, &problem))
    }
}

/// `path` itself if it exists, else its nearest existing ancestor (a relative path's is `.`).
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty())
        .find(|ancestor| ancestor.symlink_metadata().is_ok())
        .unwrap_or(Path::new("."))
}

fn refused(directory: &Path, problem: &str) -> ConfigError {
    invalid(
        "state.directory",
        format!("{} {problem}", directory.display()),
    )
}

/// Whether `directory` is a directory that can be listed and written in, proved by writing
/// and removing a probe file; the problem otherwise.
fn writable_directory(directory: &Path) -> Result<(), String> {
    let metadata =
        std::fs::metadata(directory).map_err(|error| format!("cannot be read: {error}"))?;
    if !metadata.is_dir() {
        return Err("is not a directory".to_owned());
    }
    std::fs::read_dir(directory).map_err(|error| format!("cannot be listed: {error}"))?;
    let probe = directory.join(format!(".write-probe-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|error| format!("is not writable: {error}"))?;
    std::fs::remove_file(&probe).map_err(|error| format!("keeps files written in it: {error}"))
}
