//! Network-namespace guards: a namespace that is deleted when the guard
//! drops (also when a test panics), and running commands inside it.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), removed on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>`, unique within this test process.
    pub fn new(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    /// A handle to a namespace someone else made (not deleted on drop).
    pub fn existing(name: &str) -> ExistingNs {
        ExistingNs {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into this namespace. Child processes the
    /// thread starts afterwards inherit it. Test threads are not reused
    /// between tests, so nothing leaks into other tests.
    pub fn enter_current_thread(&self) {
        let file = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        // SAFETY: a valid namespace fd; setns only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// Runs `ip netns exec <ns> <args...>` and panics with its output on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// Like `exec`, but returns the output whatever the exit status.
    pub fn exec_unchecked(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn in {}: {e}", self.name))
    }
}

/// A namespace owned elsewhere (e.g. by the lab).
pub struct ExistingNs {
    name: String,
}

impl ExistingNs {
    /// See `NetNs::enter_current_thread`.
    pub fn enter_current_thread(&self) {
        enter(&self.name);
    }
}

fn enter(name: &str) {
    let file = File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: a valid namespace fd; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command and panics with its stderr when it fails.
pub fn run_checked(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
