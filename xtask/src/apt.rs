//! Installing missing Debian packages with apt-get (once, and saying so).

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Result};

use crate::cmd;

static UPDATED: AtomicBool = AtomicBool::new(false);
/// Tests bring labs up in parallel threads: one apt-get at a time.
static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether dpkg reports `package` as installed.
pub fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout == b"installed")
}

/// The installed version of `package`, if any.
pub fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.strip_prefix("installed ").map(str::to_owned)
}

/// Installs `packages` with `apt-get update` (once per process) and
/// `apt-get install -y`, printing what and why. Services that packages
/// would start (nginx) are kept from starting.
pub fn install(packages: &[&str], why: &str) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if cmd::which("apt-get").is_none() {
        bail!("missing {list} ({why}) and no apt-get here: install them, then retry");
    }
    if !cmd::is_root() {
        bail!("missing {list} ({why}): run as root so apt-get can install them");
    }
    if !UPDATED.swap(true, Ordering::SeqCst) {
        eprintln!("xtask: apt-get update (to find {list})...");
        cmd::run(apt("update").arg("-q"))?;
    }
    eprintln!("xtask: installing {list} with apt-get ({why})...");
    let _policy = NoServiceStarts::new();
    cmd::run(
        apt("install")
            .args(["-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// Installs the package of every `(program, package)` whose program is not
/// found.
pub fn ensure_programs(programs: &[(&str, &str)], why: &str) -> Result<()> {
    let _one_at_a_time = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| cmd::which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    install(&missing, why)?;
    for (program, package) in programs {
        if cmd::which(program).is_none() {
            bail!("{program} still missing after installing {package}");
        }
    }
    Ok(())
}

fn apt(action: &str) -> Command {
    let mut c = Command::new("apt-get");
    c.arg(action).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// A temporary `policy-rc.d` that tells maintainer scripts not to start
/// services (exit 101), removed on drop; left alone if one already exists.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        if Path::new(POLICY_RC_D).exists() {
            return Self { created: false };
        }
        let created = std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n").is_ok()
            && std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
                .is_ok();
        Self { created }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}
