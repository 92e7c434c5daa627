//! Running the operator's commands (health `exec` checks, `on_change` and
//! VRRP notify hooks, the `exec` floating IP provider): `/bin/sh -c
//! COMMAND` with positional arguments and environment, stdin closed, output
//! captured, and killed with its whole process group when it runs past its
//! time (or when the caller stops waiting). Every child process the agent
//! starts goes through here, so this is also where secrets (the API token)
//! are kept out of children's environments.

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    process::{ExitStatus, Stdio},
    sync::RwLock,
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use tokio::io::AsyncReadExt;

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

/// The environment variable the DigitalOcean token is read from by
/// default, and where packaging's `EnvironmentFile` puts it: never handed
/// to a child, whatever the config says.
pub const DEFAULT_TOKEN_ENV: &str = "DIGITALOCEAN_TOKEN";

/// Further variables that hold secrets (a configured `token_env`).
static SECRETS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Keeps the variable `name` out of every command's environment from now on.
pub fn hide_from_children(name: &str) {
    if name.is_empty() {
        return;
    }
    match SECRETS.write() {
        Ok(mut secrets) => {
            secrets.insert(name.to_string());
        }
        Err(poisoned) => {
            poisoned.into_inner().insert(name.to_string());
        }
    }
}

fn is_secret(name: &OsStr) -> bool {
    if name == DEFAULT_TOKEN_ENV {
        return true;
    }
    let Some(name) = name.to_str() else {
        return false;
    };
    match SECRETS.read() {
        Ok(secrets) => secrets.contains(name),
        Err(poisoned) => poisoned.into_inner().contains(name),
    }
}

/// Most output kept of each stream; the rest is read and dropped, so a
/// chatty command neither blocks on a full pipe nor fills memory.
const MAX_OUTPUT: usize = 64 << 10;

async fn read_capped(
    stream: Option<impl tokio::io::AsyncRead + Unpin>,
) -> std::io::Result<Vec<u8>> {
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// A started command. Until it has been waited for, dropping it kills its
/// whole process group: a shell's children (`sleep 15` in a script) would
/// otherwise outlive a timeout and keep running, unseen.
struct Running {
    child: tokio::process::Child,
    group: Option<Pid>,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(group) = self.group {
            // The leader is not reaped yet, so the group id is still ours.
            let _ = killpg(group, Signal::SIGKILL);
        }
        // kill_on_drop kills and reaps the leader itself.
    }
}

/// Runs `command` through `/bin/sh -c` with `args` as `$1...` (`$0` is
/// `name`) and `env` added to the agent's environment less its secrets;
/// `timeout: None` waits as long as the caller does. On a timeout, or
/// when the caller stops waiting, the command's process group is killed.
pub async fn run(
    command: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Result<Finished, ShellError> {
    let inherited = std::env::vars_os().collect();
    run_with(command, name, args, env, inherited, timeout).await
}

/// `run` with `inherited` in place of the agent's own environment.
async fn run_with(
    command: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    inherited: Vec<(OsString, OsString)>,
    timeout: Option<Duration>,
) -> Result<Finished, ShellError> {
    let mut shell = tokio::process::Command::new("/bin/sh");
    shell.arg("-c").arg(command).arg(name).args(args);
    shell
        .env_clear()
        .envs(inherited.into_iter().filter(|(key, _)| !is_secret(key)));
    for (key, value) in env {
        shell.env(key, value);
    }
    let mut child = shell
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(ShellError::Spawn)?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut running = Running {
        group: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
        child,
        finished: false,
    };
    let work = async {
        let (status, stdout, stderr) = tokio::join!(
            running.child.wait(),
            read_capped(stdout),
            read_capped(stderr)
        );
        Ok::<_, std::io::Error>(Finished {
            status: status?,
            stdout: stdout?,
            stderr: stderr?,
        })
    };
    let waited = match timeout {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ShellError::TimedOut(limit))?,
        None => work.await,
    };
    let done = waited.map_err(ShellError::Wait)?;
    running.finished = true;
    Ok(done)
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

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("lb-shell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pid_file = dir.join("pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let error = run(&command, "t", &[], &[], Some(Duration::from_millis(300)))
            .await
            .expect_err("too slow");
        assert!(matches!(error, ShellError::TimedOut(_)), "{error}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("the script wrote its child's pid")
            .trim()
            .parse()
            .expect("a pid");
        let _ = std::fs::remove_dir_all(&dir);
        // Gone, or a zombie waiting for init to reap it: not running.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(')').next().map(|s| s.trim().to_string()))
                .is_some_and(|rest| !rest.starts_with('Z'))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!running(), "the script's background sleep {pid} survived");
    }

    #[tokio::test]
    async fn children_never_see_the_api_token() {
        hide_from_children("LB_TEST_CONFIGURED_TOKEN");
        let inherited = [
            ("PATH", "/usr/bin:/bin"),
            (DEFAULT_TOKEN_ENV, "dop_v1_default_secret"),
            ("LB_TEST_CONFIGURED_TOKEN", "configured_secret"),
            ("LB_TEST_KEEP", "kept"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .to_vec();
        let done = run_with(
            "env",
            "t",
            &[],
            &[("LB_SERVICE", "www")],
            inherited,
            Some(Duration::from_secs(5)),
        )
        .await
        .expect("ran");
        assert!(done.success());
        let env = String::from_utf8_lossy(&done.stdout);
        assert!(env.contains("LB_TEST_KEEP=kept"), "{env}");
        assert!(env.contains("LB_SERVICE=www"), "{env}");
        assert!(!env.contains("secret"), "a token reached the child:\n{env}");
        assert!(!env.contains(DEFAULT_TOKEN_ENV), "{env}");
    }

    #[tokio::test]
    async fn output_is_kept_up_to_a_bound_and_the_rest_drained() {
        // 1 MiB on stdout: the command must not block on a full pipe.
        let done = run(
            "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo done >&2",
            "t",
            &[],
            &[],
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("ran");
        assert!(done.success());
        assert_eq!(done.stdout.len(), MAX_OUTPUT);
        assert_eq!(done.last_words(), "done");
    }
}
