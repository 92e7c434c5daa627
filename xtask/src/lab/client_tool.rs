//! xtask's own client tools run from the lab's client namespace.

use std::{
    process::{Command, Output, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{Lab, Node};

/// One of xtask's client tools (`probe`, `hold`, `udp-flood`) running in
/// the client's namespace on its own thread, e.g. while the master fails.
pub struct ClientTool {
    name: &'static str,
    thread: JoinHandle<std::io::Result<Output>>,
}

impl ClientTool {
    /// Starts `xtask <name> args...` in the client's namespace.
    pub fn start(lab: &Lab, name: &'static str, args: &[&str]) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &lab.ns(Node::Client)])
            .arg(lab.xtask_bin())
            .arg(name)
            .args(args)
            .stdin(Stdio::null());
        Self {
            name,
            thread: std::thread::spawn(move || command.output()),
        }
    }

    /// `xtask probe`: a new HTTP connection to `target` every `every` for
    /// `duration`, each failed after `timeout` (`probe::samples` reads
    /// what it prints).
    pub fn probe(
        lab: &Lab,
        target: &str,
        every: Duration,
        duration: Duration,
        timeout: Duration,
    ) -> Self {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let (every, duration, timeout) = (ms(every), ms(duration), ms(timeout));
        Self::start(
            lab,
            "probe",
            &[
                "--target",
                target,
                "--every",
                &every,
                "--duration",
                &duration,
                "--timeout",
                &timeout,
            ],
        )
    }

    /// Waits for the tool to end; the lines it printed.
    pub fn lines(self) -> Result<Vec<String>> {
        let name = self.name;
        let output = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread of xtask {name} panicked"))?
            .with_context(|| format!("running xtask {name}"))?;
        if !output.status.success() {
            bail!(
                "xtask {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}
