//! A slow download of `/slow` (SLOW_BYTES at SLOW_RATE) from the client,
//! as a curl child process writing headers and body to files in the lab's
//! run dir: what the drain and failover tests and the failover benchmark
//! watch to see whether an established connection survived.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Lab, Node, SLOW_BYTES};

/// The whole download's deadline (curl's `--max-time`).
const MAX_TIME: &str = "90";

/// How long a live download may go without a byte. nginx's `limit_rate`
/// reckons its allowance on a clock of whole seconds, so it sends a burst
/// about once a second, and on a busy machine (CI runs two lab tests at
/// once on two CPUs) the gap grows past a second: a 1 s window then
/// reports a healthy download as stalled.
const PROGRESS_WINDOW: Duration = Duration::from_secs(3);

pub struct Download {
    child: Child,
    headers: PathBuf,
    body: PathBuf,
}

impl Download {
    /// Starts `curl` in the client's namespace; `name` names its files.
    pub fn start(lab: &Lab, name: &str) -> Result<Self> {
        let headers = lab.run_dir().join(format!("{name}.headers"));
        let body = lab.run_dir().join(format!("{name}.body"));
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(Node::Client)])
            .args(["curl", "-s", "--max-time", MAX_TIME, "-D"])
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .arg("http://10.100.0.100/slow")
            .stdin(Stdio::null())
            .spawn()
            .context("starting curl in the client's namespace")?;
        Ok(Self {
            child,
            headers,
            body,
        })
    }

    /// Waits (≤ 5 s) for the response headers; returns the backend's name.
    pub fn backend(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&self.headers) {
                if let Some(line) = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("x-backend:"))
                {
                    return Some(line.split(':').nth(1)?.trim().to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn received(&self) -> u64 {
        std::fs::metadata(&self.body).map(|m| m.len()).unwrap_or(0)
    }

    /// Whether bytes still arrive: some within `PROGRESS_WINDOW`.
    pub fn progresses(&self) -> bool {
        let before = self.received();
        let deadline = Instant::now() + PROGRESS_WINDOW;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if self.received() > before {
                return true;
            }
        }
        false
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most `limit`) for curl to end; whether it got the whole
    /// body without an error (curl exit 0 and every byte of `/slow`).
    pub fn completes(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => return Err(format!("curl ended with {status}")),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!("still running after {limit:?}"))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(error) => return Err(format!("waiting for curl: {error}")),
            }
        }
        match self.received() {
            n if n == SLOW_BYTES as u64 => Ok(()),
            n => Err(format!("{n} of {SLOW_BYTES} bytes")),
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
