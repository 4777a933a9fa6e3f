//! A host clock that is not the database's: the binary run under libfaketime (Debian's
//! `libfaketime`), with its wall clock off by a fixed offset or stepped while it runs. Its
//! monotonic clock stays real, as a host's does when an operator or NTP steps the time.

use std::path::PathBuf;

use super::bin::Bin;

/// The preloaded library that moves the wall clock of the processes it is loaded into.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A wall clock whose offset from the real one a test sets, and steps, while the binary runs.
pub struct HostClock {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl HostClock {
    /// A clock `offset` (libfaketime's form: `+2h`, `-30m`, `+0`) away from the real one.
    pub fn off_by(offset: &str) -> HostClock {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's libfaketime (.ci/run does)"
        );
        let dir = tempfile::tempdir().expect("clock directory");
        let file = dir.path().join("offset");
        let clock = HostClock { _dir: dir, file };
        clock.step_to(offset);
        clock
    }

    /// Moves the clock to `offset` from the real one, at once, for the running binary too.
    pub fn step_to(&self, offset: &str) {
        let partial = self.file.with_extension("partial");
        std::fs::write(&partial, format!("{offset}\n")).expect("clock offset");
        std::fs::rename(&partial, &self.file).expect("clock offset in place");
    }

    /// `bin` running on this clock.
    pub fn applied_to(&self, bin: Bin) -> Bin {
        bin.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    }
}
