//! `Lab`, the handle to one lab: where its parts are, commands inside its
//! namespaces, and the background processes it started.

use std::{
    fmt,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{ns_exists, ns_name, process, web, LabState, Node, Provider, VIP};
use crate::cmd;

/// A handle to the lab with one prefix. Dropping it leaves the lab up (use
/// `LabGuard` or `Lab::down` to remove it).
pub struct Lab {
    pub(super) prefix: String,
    pub(super) run_dir: PathBuf,
    pub(super) agent_bin: PathBuf,
    pub(super) xtask_bin: PathBuf,
    pub(super) state: LabState,
    /// Background processes this handle started, reaped once they exit.
    pub(super) children: Mutex<Vec<Child>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("run_dir", &self.run_dir)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Lab {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/run/lb-lab/<prefix>`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The options the lab was brought up with.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The agent binary this handle starts.
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    /// The xtask binary (UDP responder and client).
    pub fn xtask_bin(&self) -> &Path {
        &self.xtask_bin
    }

    /// The namespace of `node`: `<prefix>-<node>`.
    pub fn ns(&self, node: Node) -> String {
        ns_name(&self.prefix, node)
    }

    /// `ip netns exec <ns> args...`; the output whatever the exit status.
    pub fn exec(&self, node: Node, args: &[&str]) -> Result<Output> {
        cmd::output(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(node)])
                .args(args),
        )
    }

    /// Waits in `at`'s namespace until a VRRP advertisement from `from`
    /// arrives (`xtask wait-advert`): a failure right after it comes at the
    /// same phase of `at`'s master-down timer in every run.
    pub fn wait_advert(&self, at: Node, from: Node) -> Result<()> {
        let from = from
            .private_address()
            .with_context(|| format!("{from:?} has no private address"))?
            .to_string();
        let xtask = self.xtask_bin().to_string_lossy().into_owned();
        self.exec_ok(at, &[&xtask, "wait-advert", "--from", &from])
            .map(drop)
    }

    /// Like `exec`, but fails (quoting stderr) unless it exits 0; returns stdout.
    pub fn exec_ok(&self, node: Node, args: &[&str]) -> Result<String> {
        cmd::stdout_of(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(node)])
                .args(args),
        )
    }

    /// `nsenter --net=/run/netns/<ns> args...`: only the network namespace
    /// changes, so /sys/fs/bpf pins stay visible (`ip netns exec` remounts /sys).
    pub fn exec_net(&self, node: Node, args: &[&str]) -> Result<Output> {
        cmd::output(self.nsenter(node).args(args))
    }

    /// A `nsenter --net=...` command for `node`, program and arguments still to add.
    pub fn nsenter(&self, node: Node) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(node)));
        c
    }

    /// `curl -s --max-time 2 <url>` from `node`; the body, or an error.
    pub fn http_get(&self, from: Node, url: &str) -> Result<String> {
        self.exec_ok(from, &["curl", "-sS", "--max-time", "2", url])
    }

    /// `count` UDP queries (each from a fresh source port) from `from` to
    /// `to`; each reply's text (trimmed), or `None` after `timeout`.
    pub fn udp_query(
        &self,
        from: Node,
        to: SocketAddrV4,
        count: u32,
        timeout: Duration,
    ) -> Result<Vec<Option<String>>> {
        self.udp_query_from(from, 0, to, count, timeout)
    }

    /// Like `udp_query`, all from `source_port` (0: a fresh one each).
    pub fn udp_query_from(
        &self,
        from: Node,
        source_port: u16,
        to: SocketAddrV4,
        count: u32,
        timeout: Duration,
    ) -> Result<Vec<Option<String>>> {
        let xtask = self.xtask_bin.to_string_lossy().into_owned();
        let out = self.exec_ok(
            from,
            &[
                &xtask,
                "udp-query",
                "--to",
                &to.to_string(),
                "--timeout",
                &format!("{}ms", timeout.as_millis()),
                "--count",
                &count.to_string(),
                "--source-port",
                &source_port.to_string(),
            ],
        )?;
        Ok(out
            .lines()
            .map(|l| (l != crate::udp::NO_REPLY).then(|| l.to_owned()))
            .collect())
    }

    /// The LB node that has the VIP: on its public interface if exactly one
    /// has it, or, in a digitalocean lab, where the cloud routes it.
    pub fn vip_holder(&self) -> Option<Node> {
        if self.state.provider == Provider::Digitalocean {
            return self.vip_route_holder();
        }
        let holders: Vec<Node> = Node::LBS
            .into_iter()
            .filter(|&n| {
                self.exec_ok(n, &["ip", "-4", "addr", "show", "dev", "pub0"])
                    .is_ok_and(|out| out.contains(&format!("inet {VIP}/")))
            })
            .collect();
        match holders.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Namespaces, the lab's options, processes and the agents' `services
    /// list`.
    pub fn status(&self) -> String {
        let mut out = format!(
            "lab {} (run dir {}):\n",
            self.prefix,
            self.run_dir.display()
        );
        for node in Node::ALL {
            let ns = self.ns(node);
            let state = if ns_exists(&ns) { "present" } else { "MISSING" };
            out.push_str(&format!("  namespace {ns:<14} {state}\n"));
        }
        let s = &self.state;
        out.push_str(&format!("  LB nodes                 {}\n", s.lbs));
        if s.is_ha() {
            let classic: Vec<&str> = s.classic.iter().map(|n| n.name()).collect();
            out.push_str(&format!(
                "  VRRP                     {} every {}, provider {}{}\n",
                s.vrrp,
                s.advert_int_text(),
                s.provider,
                if classic.is_empty() {
                    String::new()
                } else {
                    format!(", classic {}", classic.join(","))
                }
            ));
        }
        out.push_str(&format!("  xdp mode                 {}\n", s.xdp));
        let mut show = |what: &str, pid: Option<u32>| {
            let state = match pid {
                Some(pid) if process::alive(pid) => format!("running (pid {pid})"),
                _ => "not running".to_owned(),
            };
            out.push_str(&format!("  {what:<24} {state}\n"));
        };
        for node in Node::LBS {
            show(&format!("agent {node}"), self.agent_pid(node));
        }
        for node in Node::WEBS {
            show(
                &format!("nginx {node}"),
                process::read_pid(&web::nginx_pid_path(self, node)),
            );
            show(
                &format!("udp responder {node}"),
                process::read_pid(&web::responder_pid_path(self, node)),
            );
        }
        for node in Node::LBS {
            if !self.socket_path(node).exists() {
                continue;
            }
            out.push_str(&format!("  {} services list:\n", self.instance(node)));
            match self.agent_cli(node, &["services", "list"]) {
                Ok(o) => {
                    for line in String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .chain(String::from_utf8_lossy(&o.stderr).lines())
                    {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
                Err(err) => out.push_str(&format!("    {err:#}\n")),
            }
        }
        out
    }

    /// Starts a background process in `node`'s network namespace (own
    /// process group, stdin closed, output appended to `log`) and keeps its
    /// handle for reaping. Returns its pid.
    pub(super) fn spawn_in(
        &self,
        node: Node,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<u32> {
        use std::os::unix::process::CommandExt as _;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = self.nsenter(node);
        command
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
        let pid = child.id();
        self.lock_children().push(child);
        Ok(pid)
    }

    fn lock_children(&self) -> MutexGuard<'_, Vec<Child>> {
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Collects exited background children (no zombies left behind).
    pub fn reap(&self) {
        self.lock_children()
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
    }
}
