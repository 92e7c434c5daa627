//! Running the operator's commands (health `exec` checks, `on_change` and
//! VRRP notify hooks, the `exec` floating IP provider): `/bin/sh -c
//! COMMAND` with positional arguments and environment, stdin closed, output
//! captured, and killed when it runs past its time (or when the caller
//! stops waiting).

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("cannot run it: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for it: {0}")]
    Wait(std::io::Error),
    #[error("timed out after {0:?}; killed")]
    TimedOut(Duration),
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The last non-empty line of stderr, or else of stdout: what a failing
    /// command usually says about why.
    pub fn last_words(&self) -> String {
        let last = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        };
        let words = last(&self.stderr)
            .or_else(|| last(&self.stdout))
            .unwrap_or_default();
        words.chars().take(200).collect()
    }

    /// The first non-empty line of stdout (a check's short report), at
    /// most 200 characters.
    pub fn first_line(&self) -> String {
        String::from_utf8_lossy(&self.stdout)
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .chars()
            .take(200)
            .collect()
    }
}

/// Runs `command` through `/bin/sh -c` with `args` as `$1...` (`$0` is
/// `name`) and `env` added; `timeout: None` waits as long as the caller
/// does.
pub async fn run(
    command: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Result<Finished, ShellError> {
    let mut shell = tokio::process::Command::new("/bin/sh");
    shell.arg("-c").arg(command).arg(name).args(args);
    for (key, value) in env {
        shell.env(key, value);
    }
    let child = shell
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ShellError::Spawn)?;
    let waited = match timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| ShellError::TimedOut(limit))?,
        None => child.wait_with_output().await,
    };
    let out = waited.map_err(ShellError::Wait)?;
    Ok(Finished {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_environment_output_and_time_limits() {
        let done = run(
            "echo \"$1 $LB_X\"; echo oops >&2; exit 3",
            "t",
            &["one"],
            &[("LB_X", "two")],
            Some(Duration::from_secs(5)),
        )
        .await
        .expect("ran");
        assert!(!done.success());
        assert_eq!(done.first_line(), "one two");
        assert_eq!(done.last_words(), "oops");
        let error = run("sleep 5", "t", &[], &[], Some(Duration::from_millis(50)))
            .await
            .expect_err("too slow");
        assert!(matches!(error, ShellError::TimedOut(_)), "{error}");
    }
}
