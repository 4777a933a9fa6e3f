//! `token-refresher` running in the background: a guard that kills it when dropped, so a
//! failing test leaves no process behind, and the one place that sends it signals.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bin::Run;

/// A running `token-refresher`, its outputs read as they come so that it never blocks on a
/// full pipe; killed if dropped still running.
pub struct Process {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Process {
    /// Starts `command` with both outputs captured.
    pub(super) fn spawn(mut command: Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start token-refresher");
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        Process {
            child,
            stdout,
            stderr,
        }
    }

    /// Sends `signal` (`TERM`, `HUP`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the process").is_none()
    }

    /// Waits for it to exit, however long that takes.
    pub fn wait(mut self) -> Run {
        let status = self.child.wait().expect("wait for token-refresher");
        self.finish(status.code())
    }

    /// Waits for it to exit without blocking the test's runtime.
    pub async fn finished(self) -> Run {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .expect("wait for token-refresher")
    }

    /// Waits for it to exit, at most `limit`: past that it is killed and the test fails.
    pub fn exit_within(mut self, limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the process") {
                return self.finish(status.code());
            }
            if Instant::now() > deadline {
                self.child.kill().expect("kill a hung process");
                panic!("token-refresher did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it outright (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    fn finish(&mut self, code: Option<i32>) -> Run {
        let collect = |reader: Option<JoinHandle<Vec<u8>>>| {
            reader
                .map(|reader| reader.join().expect("output reader"))
                .unwrap_or_default()
        };
        let stdout = collect(self.stdout.take());
        let stderr = collect(self.stderr.take());
        Run::new(code, stdout, &stderr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Both are no-ops for a process already waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
