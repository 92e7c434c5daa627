//! Background processes of the lab: pid files, liveness, signals, stopping.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// How long `start_agent` waits for the control socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping lab processes.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a running (not zombie) process.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: `pid (comm) S ...`; comm may hold spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Whether the command line of `pid` contains `needle` (used to make sure a
/// pid from a stale pid file still names one of our processes).
pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .contains(needle)
        })
        .unwrap_or(false)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) -> Result<()> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        bail!("pid {pid} out of range");
    };
    // SAFETY: kill has no memory-safety preconditions; raw > 0 (no group
    // or broadcast semantics) because read pids are positive.
    if raw <= 0 || unsafe { libc::kill(raw, signal) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            bail!("kill -{signal} {pid}: {err}");
        }
    }
    Ok(())
}

/// SIGTERM to every pid, up to `grace` for them to exit, then SIGKILL to
/// the rest and up to 2 s more. Returns the pids still alive after that.
pub fn stop_all(pids: &[u32], grace: Duration) -> Vec<u32> {
    let live: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &pid in &live {
        let _ = signal(pid, libc::SIGTERM);
    }
    cmd::wait_until(grace, || live.iter().all(|&p| !alive(p)));
    let stubborn: Vec<u32> = live.iter().copied().filter(|&p| alive(p)).collect();
    for &pid in &stubborn {
        let _ = signal(pid, libc::SIGKILL);
    }
    cmd::wait_until(Duration::from_secs(2), || {
        stubborn.iter().all(|&p| !alive(p))
    });
    stubborn.into_iter().filter(|&p| alive(p)).collect()
}

/// Pids of the processes in network namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls until `pid` has exited or `timeout` passed; returns whether it exited.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    cmd::wait_until(timeout, || !alive(pid))
}

/// Creates (`present`) or removes the empty file at `flag`: the lab's
/// switches that scripts and nginx test for (an absent file is already
/// removed).
pub fn set_flag_file(flag: &Path, present: bool) -> Result<()> {
    if present {
        return std::fs::write(flag, "").with_context(|| format!("writing {}", flag.display()));
    }
    match std::fs::remove_file(flag) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", flag.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_named() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(!alive(u32::MAX - 1));
        assert!(cmdline_contains(me, "xtask"));
    }
}
