//! `token-refresher` running in the background: a guard that kills it when dropped, so a
//! failing test leaves no process behind, and the one place that sends it signals.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bin::Run;

/// A running `token-refresher`, its outputs read as they come so that it never blocks on a
/// full pipe; killed if dropped still running.
pub struct Process {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    /// Standard error as read so far, and the thread reading the rest.
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
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
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child
            .stderr
            .take()
            .map(|pipe| read_into(pipe, Arc::clone(&stderr)));
        Process {
            child,
            stdout,
            stderr,
            stderr_reader,
        }
    }

    /// What it has written to standard error so far, while it runs.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
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
        let stdout = self
            .stdout
            .take()
            .map(|reader| reader.join().expect("stdout reader"))
            .unwrap_or_default();
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        let stderr = std::mem::take(&mut *self.stderr.lock().expect("stderr"));
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

/// Appends what `pipe` yields to `buffer` as it comes, on a thread of its own.
fn read_into(mut pipe: impl Read + Send + 'static, buffer: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(read) = pipe.read(&mut chunk) {
            if read == 0 {
                break;
            }
            buffer
                .lock()
                .expect("stderr")
                .extend_from_slice(&chunk[..read]);
        }
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
