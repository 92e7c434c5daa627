//! A lab's life: `up` (build it, with everything undone on failure),
//! `attach` (a handle to a lab that is up), `down` (remove everything of a
//! prefix, whatever state it is in) and the guard that calls `down`.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    ns_exists, ns_name, process, run_dir, topology, validate_prefix, web, Lab, LabOptions,
    LabState, Node, Provider, XdpMode, AGENT_SOCKET_DIR, BPFFS, RUN_ROOT, STOP_GRACE, VIP,
};
use crate::{apt, build, cmd};

impl Lab {
    /// A handle to the lab `prefix`, which must be up (its state file says
    /// how it was brought up), with the default binaries.
    pub fn attach(prefix: &str) -> Result<Lab> {
        validate_prefix(prefix)?;
        let state = LabState::read(prefix, &run_dir(prefix))?;
        Self::handle(&LabOptions::with_prefix(prefix), state)
    }

    fn handle(options: &LabOptions, state: LabState) -> Result<Lab> {
        let agent_bin = match &options.agent_bin {
            Some(path) => path.clone(),
            None => std::env::var_os(build::ENV_AGENT_BIN)
                .map(PathBuf::from)
                .unwrap_or_else(|| build::agent_binary_path(false)),
        };
        let xtask_bin = match &options.xtask_bin {
            Some(path) => path.clone(),
            None => build::xtask_binary()?,
        };
        Ok(Lab {
            prefix: options.prefix.clone(),
            run_dir: run_dir(&options.prefix),
            agent_bin,
            xtask_bin,
            state,
            children: Mutex::new(Vec::new()),
        })
    }

    /// Builds the lab (tearing down an existing one with the same prefix
    /// first). On failure everything made so far is removed again.
    pub fn up(options: &LabOptions) -> Result<Lab> {
        if !cmd::is_root() {
            bail!("the lab needs root (network namespaces, BPF)");
        }
        options.validate()?;
        let lab = Self::handle(options, LabState::of(options))?;
        let runs_agent = options
            .lbs
            .active_lbs()
            .iter()
            .any(|n| !options.classic.contains(n));
        if runs_agent && !lab.agent_bin.exists() {
            bail!(
                "no agent binary at {} (run `cargo xtask build`, or use --no-agent)",
                lab.agent_bin.display()
            );
        }
        let pass_object = pass_object(options)?;
        ensure_lab_programs()?;
        ensure_bpffs()?;
        if Self::exists(&lab.prefix) {
            eprintln!("xtask: lab {} exists; tearing it down first", lab.prefix);
            Self::down(&lab.prefix)?;
        }
        match lab.build(options, pass_object.as_deref()) {
            Ok(()) => Ok(lab),
            Err(err) => {
                eprintln!("xtask: lab {} failed to come up; tearing down", lab.prefix);
                if let Err(down_err) = Self::down(&lab.prefix) {
                    eprintln!("xtask: tear-down failed too: {down_err:#}");
                }
                lab.reap();
                Err(err)
            }
        }
    }

    /// `up`, wrapped in a guard that tears the lab down when dropped.
    pub fn up_guarded(options: &LabOptions) -> Result<LabGuard> {
        Self::up(options).map(LabGuard::new)
    }

    fn build(&self, options: &LabOptions, pass_object: Option<&Path>) -> Result<()> {
        let p = &self.prefix;
        create_dir(Path::new(RUN_ROOT))?;
        create_dir(&self.run_dir)?;
        // First, so that whatever attaches to the lab from now on (also a
        // half-built one) sees the options it is being built with.
        self.state.write(&self.run_dir)?;
        eprintln!("xtask: lab {p}: namespaces, bridges, veths, addresses...");
        topology::build(p, !self.state.is_ha(), pass_object)?;
        cmd::check_interrupted()?;
        eprintln!("xtask: lab {p}: nginx and UDP responders on web1..web3...");
        for node in Node::WEBS {
            web::start_nginx(self, node)?;
            web::start_responder(self, node)?;
        }
        cmd::check_interrupted()?;
        if self.state.provider == Provider::Digitalocean {
            eprintln!("xtask: lab {p}: the stand-in DigitalOcean API in the client namespace...");
            self.start_cloud(options.do_mock_bin.clone())?;
        }
        self.start_lbs()?;
        eprintln!(
            "xtask: lab {p} is up. Try: ip netns exec {} curl -s http://{VIP}/",
            self.ns(Node::Client)
        );
        Ok(())
    }

    /// The agent or the classic pair on every LB node the setup uses; with
    /// the HA pair, waits until lb1 has won the election.
    fn start_lbs(&self) -> Result<()> {
        let p = &self.prefix;
        for &node in self.state.lbs.active_lbs() {
            if self.state.is_classic(node) {
                eprintln!("xtask: lab {p}: keepalived + HAProxy on {node} (the classic pair)...");
                self.start_classic(node)?;
            } else {
                eprintln!(
                    "xtask: lab {p}: agent on {node} ({})...",
                    self.agent_bin.display()
                );
                self.start_agent(node)?;
            }
        }
        if self.state.is_ha() {
            eprintln!("xtask: lab {p}: VRRP election...");
            if !cmd::wait_until(Duration::from_secs(15), || {
                self.vip_holder() == Some(Node::Lb1)
            }) {
                bail!("lb1 did not become VRRP master within 15 s");
            }
        }
        Ok(())
    }

    /// Whether anything of the lab `prefix` exists (a namespace or its run dir).
    pub fn exists(prefix: &str) -> bool {
        run_dir(prefix).exists() || Node::ALL.iter().any(|&n| ns_exists(&ns_name(prefix, n)))
    }

    /// Removes everything of the lab `prefix`: stops its processes (SIGTERM,
    /// SIGKILL after 3 s), deletes its namespaces, pins, sockets and run
    /// dir. Needs no state file, so it also clears a half-built lab, one of
    /// an older build, or none at all.
    pub fn down(prefix: &str) -> Result<()> {
        validate_prefix(prefix)?;
        let run_dir = run_dir(prefix);
        let mut problems = Vec::new();

        // Our processes, by pid file, if the pid still names one of them.
        let marker = format!("{}/", run_dir.display());
        let pids: Vec<u32> = pid_files(&run_dir)
            .iter()
            .filter_map(|f| process::read_pid(f))
            .filter(|&pid| process::alive(pid) && process::cmdline_contains(pid, &marker))
            .collect();
        process::stop_all(&pids, STOP_GRACE);

        // Whatever else still runs inside the namespaces.
        let namespaces: Vec<String> = Node::ALL
            .iter()
            .map(|&n| ns_name(prefix, n))
            .filter(|ns| ns_exists(ns))
            .collect();
        let pids: Vec<u32> = namespaces
            .iter()
            .flat_map(|ns| process::netns_pids(ns))
            .collect();
        let left = process::stop_all(&pids, STOP_GRACE);
        if !left.is_empty() {
            problems.push(format!("processes {left:?} survived SIGKILL"));
        }

        for ns in &namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            if ns_exists(ns) {
                problems.push(format!("namespace {ns} could not be deleted"));
            }
        }
        for node in Node::LBS {
            let pins = Path::new(BPFFS).join(ns_name(prefix, node));
            if pins.exists() {
                if let Err(err) = std::fs::remove_dir_all(&pins) {
                    problems.push(format!("removing {}: {err}", pins.display()));
                }
            }
        }
        for socket in agent_sockets(prefix) {
            if let Err(err) = std::fs::remove_file(&socket) {
                problems.push(format!("removing {}: {err}", socket.display()));
            }
        }
        if run_dir.exists() {
            if let Err(err) = std::fs::remove_dir_all(&run_dir) {
                problems.push(format!("removing {}: {err}", run_dir.display()));
            }
        }
        if !problems.is_empty() {
            bail!("lab {prefix} tear-down incomplete: {}", problems.join("; "));
        }
        Ok(())
    }
}

/// Tears the lab down when dropped (also when a test panics).
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
}

impl LabGuard {
    pub fn new(lab: Lab) -> Self {
        Self { lab }
    }
}

impl Deref for LabGuard {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(err) = Lab::down(&self.lab.prefix) {
            eprintln!("xtask: {err:#}");
        }
        self.lab.reap();
    }
}

/// The XDP_PASS program native mode puts on the veth peers; none in
/// generic mode.
fn pass_object(options: &LabOptions) -> Result<Option<PathBuf>> {
    if options.xdp == XdpMode::Generic {
        return Ok(None);
    }
    let object = options
        .pass_object
        .clone()
        .unwrap_or_else(build::pass_object);
    if !object.exists() {
        bail!(
            "no XDP_PASS program at {} for native mode (run `cargo xtask build`)",
            object.display()
        );
    }
    Ok(Some(object))
}

/// Everything any lab may run (also the classic keepalived + HAProxy
/// nodes), installed with apt when missing; `cargo xtask test` calls it
/// before the tests so parallel tests find it all in place.
pub fn ensure_all_lab_programs() -> Result<()> {
    ensure_lab_programs()?;
    super::ensure_classic_programs()?;
    apt::ensure_programs(
        &[("wrk", "wrk")],
        "for the sustained-load tests (tests/tests/connrate.rs)",
    )?;
    apt::ensure_programs(
        &[("vagrant", "vagrant")],
        "to validate vagrant/Vagrantfile (no VM is booted)",
    )
}

/// Programs the lab runs, installed with apt when missing.
fn ensure_lab_programs() -> Result<()> {
    apt::ensure_programs(
        &[
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("ethtool", "ethtool"),
            ("nginx", "nginx-light"),
            ("curl", "curl"),
        ],
        "for the namespace lab",
    )
}

/// Mounts bpffs on /sys/fs/bpf in this mount namespace unless it is there.
fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if !mounted {
        eprintln!("xtask: mounting bpffs on {BPFFS}");
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    Ok(())
}

/// Creates `dir` (and parents) readable by nginx's unprivileged workers.
pub(super) fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// Every `*.pid` in the run dir and its subdirectories.
fn pid_files(run_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![run_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if path.parent() == Some(run_dir) {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "pid") {
                found.push(path);
            }
        }
    }
    found
}

/// `/run/lb-agent/<prefix>-lb<N>.sock` files that exist.
fn agent_sockets(prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(AGENT_SOCKET_DIR) else {
        return Vec::new();
    };
    let head = format!("{prefix}-lb");
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&head))
                .and_then(|n| n.strip_suffix(".sock"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}
