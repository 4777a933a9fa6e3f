//! A webhook receiver on loopback that checks each delivery's signature with the Python
//! `standardwebhooks` package (tests/interop/webhook_receiver.py), records every delivery, and
//! fails on demand. Killed when dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/webhook_receiver.py"
);

/// A test signing key: `whsec_` and the base64 of 32 bytes.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One POST the receiver got.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Delivery {
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    /// Whether `standardwebhooks` accepted the signature.
    pub verified: bool,
    pub body: String,
    /// The status it answered, or `"closed"`.
    pub answered: Value,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Its `webhook-id`.
    pub fn webhook_id(&self) -> &str {
        self.id.as_deref().expect("a webhook-id")
    }

    /// Whether the receiver took it (answered 2xx).
    pub fn accepted(&self) -> bool {
        self.answered
            .as_u64()
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// The running receiver.
pub struct Receiver {
    child: Child,
    directory: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    /// Starts a receiver checking signatures against [`SECRET`], answering 204.
    pub fn start() -> Receiver {
        let directory = tempfile::tempdir().expect("receiver directory");
        let mut child = Command::new("python3")
            .args([SCRIPT, "serve", SECRET])
            .arg(directory.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first_line)
            .expect("the receiver's port");
        let port = first_line.trim().parse().expect("a port number");
        Receiver {
            child,
            directory,
            port,
        }
    }

    /// Where events are to be POSTed.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// How the receiver answers from now on: `ok`, a status (`503`), `close`, `slow N`, or
    /// `refuse ID STATUS` (that status to the event with `webhook-id` ID, 204 to the others).
    pub fn answer(&self, mode: &str) {
        std::fs::write(self.directory.path().join("mode"), mode).expect("receiver mode");
    }

    /// Every delivery so far, in the order they arrived.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let path = self.directory.path().join("deliveries.jsonl");
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).expect("a delivery record"))
            .collect()
    }

    /// The deliveries it accepted.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(Delivery::accepted)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `standardwebhooks` accepts `body` with these headers under `secret`.
pub fn verifies(secret: &str, headers: &Value, body: &str) -> bool {
    let mut child = Command::new("python3")
        .args([SCRIPT, "verify", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the verifier");
    let request = serde_json::json!({"headers": headers, "body": body});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("request written");
    let output = child.wait_with_output().expect("verifier output");
    match String::from_utf8_lossy(&output.stdout).trim() {
        "valid" => true,
        "invalid" => false,
        other => panic!("verifier said {other:?}"),
    }
}
