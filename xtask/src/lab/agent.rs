//! The agents on the LB nodes: config, start (in the node's network
//! namespace only), signals, and the CLI against their control sockets.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    process, run_dir, Lab, Node, Provider, XdpMode, AGENT_SOCKET_DIR, AGENT_START_TIMEOUT, BPFFS,
    HTTP_PORT, METRICS_PORT, PORT_RANGE, STOP_GRACE, UDP_PORT, VIP,
};
use crate::cmd;

/// The lab's agent config for `node` (lb1 or lb2) with generic XDP: see
/// `agent_config_with`.
pub fn agent_config(prefix: &str, node: Node, xtask_bin: &Path) -> Result<String> {
    agent_config_with(prefix, node, xtask_bin, XdpMode::Generic)
}

/// The lab's agent config for `node` (lb1 or lb2): its SNAT pool, `xdp`
/// mode, services `www` (TCP 80, HTTP check of /health) and `dns` (UDP
/// 5353, checked by a query sent with `xtask udp-query` from `xtask_bin`),
/// both to web1 and web2.
pub fn agent_config_with(
    prefix: &str,
    node: Node,
    xtask_bin: &Path,
    xdp: XdpMode,
) -> Result<String> {
    let Some(private) = node.private_address().filter(|_| node.is_lb()) else {
        bail!("{node} is not an LB node");
    };
    let state_dir = match node {
        Node::Lb1 => run_dir(prefix).join("state"),
        _ => run_dir(prefix).join(format!("state-{node}")),
    };
    let snat: Vec<String> = node
        .snat_pool()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let backends: String = [Node::Web1, Node::Web2]
        .iter()
        .filter_map(|n| n.private_address())
        .map(|a| format!("  [[service.backend]]\n  address = \"{a}\"\n"))
        .collect();
    Ok(format!(
        r#"# Agent of lab node {prefix}-{node}, written by `cargo xtask lab up`.
[node]
public_interface = "pub0"
private_interface = "priv0"
private_address = "{private}"
snat_addresses = [{snat}]
xdp_mode = "{xdp}"
port_range = [{}, {}]
state_dir = "{}"

[conntrack]
max_flows = 65536

[metrics]
listen = "127.0.0.1:{METRICS_PORT}"

[[service]]
name = "www"
vip = "{VIP}"
port = {HTTP_PORT}
protocol = "tcp"
  [service.health_check]
  type = "http"
  path = "/health"
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 2
{backends}
[[service]]
name = "dns"
vip = "{VIP}"
port = {UDP_PORT}
protocol = "udp"
  [service.health_check]
  type = "exec"
  command = "{xtask} udp-query --to $LB_BACKEND_ADDR:$LB_BACKEND_PORT --timeout 400ms | grep -q '^web'"
  interval = "1s"
  timeout = "900ms"
  rise = 2
  fall = 2
{backends}"#,
        PORT_RANGE.0,
        PORT_RANGE.1,
        state_dir.display(),
        snat = snat.join(", "),
        xdp = xdp.config_value(),
        xtask = xtask_bin.display(),
    ))
}

/// The lab's VRRP settings for `node` (see docs/lab.md): VRID
/// 33, unicast over the private net, lb1 priority 200 and lb2 100, by
/// default 1 s adverts and VRRPv2 with PASS `labpass` (v3 has no
/// authentication).
pub fn vrrp_section(
    node: Node,
    version: u8,
    advert_int: &str,
    track_flag: &Path,
) -> Result<String> {
    let (priority, peer) = match node {
        Node::Lb1 => (200, Node::Lb2),
        Node::Lb2 => (100, Node::Lb1),
        other => bail!("{other} is not an LB node"),
    };
    let peer = peer.private_address().context("LB private address")?;
    let auth = if version == 2 {
        "auth_pass = \"labpass\"\n"
    } else {
        ""
    };
    Ok(format!(
        r#"
[vrrp]
version = {version}
vrid = 33
priority = {priority}
advert_int = "{advert_int}"
unicast_peers = ["{peer}"]
track_services = ["www"]
{auth}
[[vrrp.track_script]]
name = "lab-flag"
command = "test ! -e {flag}"
interval = "500ms"
timeout = "400ms"
weight = 0
"#,
        flag = track_flag.display()
    ))
}

impl Lab {
    /// File whose existence makes `node`'s lab track script fail.
    pub fn track_flag(&self, node: Node) -> PathBuf {
        self.run_dir().join(format!("{node}-track-fail"))
    }

    /// Makes `node`'s track script fail (`true`) or pass (`false`).
    pub fn set_track_failing(&self, node: Node, failing: bool) -> Result<()> {
        let flag = self.track_flag(node);
        if failing {
            std::fs::write(&flag, "").with_context(|| format!("writing {}", flag.display()))
        } else {
            match std::fs::remove_file(&flag) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", flag.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// The agent instance name of `node`: its namespace name, `<P>-lbN`.
    pub fn instance(&self, node: Node) -> String {
        self.ns(node)
    }

    /// `/run/lb-agent/<P>-lbN.sock`.
    pub fn socket_path(&self, node: Node) -> PathBuf {
        Path::new(AGENT_SOCKET_DIR).join(format!("{}.sock", self.instance(node)))
    }

    /// `/sys/fs/bpf/<P>-lbN`, where the agent pins its maps and links.
    pub fn pin_dir(&self, node: Node) -> PathBuf {
        Path::new(BPFFS).join(self.instance(node))
    }

    /// `/run/lb-lab/<P>/lbN.toml`.
    pub fn agent_config_path(&self, node: Node) -> PathBuf {
        self.run_dir().join(format!("{node}.toml"))
    }

    /// `/run/lb-lab/<P>/lbN-agent.log` (appended to on every start).
    pub fn agent_log_path(&self, node: Node) -> PathBuf {
        self.run_dir().join(format!("{node}-agent.log"))
    }

    fn agent_pid_path(&self, node: Node) -> PathBuf {
        self.run_dir().join(format!("{node}-agent.pid"))
    }

    /// The pid of `node`'s agent, if it is running.
    pub fn agent_pid(&self, node: Node) -> Option<u32> {
        self.reap();
        process::read_pid(&self.agent_pid_path(node)).filter(|&pid| process::alive(pid))
    }

    /// Starts the agent of `node` with its config file, written with the
    /// default (`agent_config`) if there is none yet; so a restart after
    /// `kill_agent` keeps a config set by `start_agent_with_config`.
    pub fn start_agent(&self, node: Node) -> Result<u32> {
        let config = self.agent_config_path(node);
        if !config.exists() {
            let state = self.state();
            let mut text = agent_config_with(&self.prefix, node, self.xtask_bin(), state.xdp)?;
            if state.is_ha() {
                text.push_str(&vrrp_section(
                    node,
                    state.vrrp.number(),
                    &state.advert_int_text(),
                    &self.track_flag(node),
                )?);
                if state.provider == Provider::Digitalocean {
                    text.push_str(&super::floating_ip_section(&self.do_token_file())?);
                }
            }
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
        }
        self.launch_agent(node)
    }

    /// Writes `toml` as `node`'s config, then starts the agent with it.
    pub fn start_agent_with_config(&self, node: Node, toml: &str) -> Result<u32> {
        let config = self.agent_config_path(node);
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        self.launch_agent(node)
    }

    /// `nsenter --net=/run/netns/<P>-lbN lb-agent --instance <P>-lbN run
    /// --config ...` in the background; waits (≤ 10 s) for the control
    /// socket. Returns the agent's pid.
    fn launch_agent(&self, node: Node) -> Result<u32> {
        if !node.is_lb() {
            bail!("{node} is not an LB node");
        }
        if let Some(pid) = self.agent_pid(node) {
            bail!("the agent of {} already runs (pid {pid})", self.ns(node));
        }
        if !self.agent_bin().exists() {
            bail!(
                "no agent binary at {} (run `cargo xtask build`)",
                self.agent_bin().display()
            );
        }
        let socket = self.socket_path(node);
        // Left behind by a killed agent; no live agent owns it (checked above).
        let _ = std::fs::remove_file(&socket);
        let log = self.agent_log_path(node);
        let instance = self.instance(node);
        let config = self.agent_config_path(node).to_string_lossy().into_owned();
        let pid = self.spawn_in(
            node,
            self.agent_bin(),
            &["--instance", &instance, "run", "--config", &config],
            &log,
        )?;
        std::fs::write(self.agent_pid_path(node), format!("{pid}\n"))?;
        let ready = cmd::wait_until(AGENT_START_TIMEOUT, || {
            socket.exists() || !process::alive(pid)
        });
        if ready && socket.exists() && process::alive(pid) {
            return Ok(pid);
        }
        let why = if process::alive(pid) {
            process::stop_all(&[pid], STOP_GRACE);
            format!(
                "no control socket {} after {AGENT_START_TIMEOUT:?}",
                socket.display()
            )
        } else {
            "it exited".to_owned()
        };
        self.reap();
        let _ = std::fs::remove_file(self.agent_pid_path(node));
        bail!(
            "the agent of {} did not start ({why}); {}:\n{}",
            self.ns(node),
            log.display(),
            cmd::tail(&log, 20)
        )
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) to `node`'s agent. For SIGTERM,
    /// SIGINT, SIGQUIT and SIGKILL also waits (≤ 10 s) until it has exited.
    pub fn kill_agent(&self, node: Node, signal: i32) -> Result<()> {
        let Some(pid) = self.agent_pid(node) else {
            bail!("the agent of {} is not running", self.ns(node));
        };
        process::signal(pid, signal)?;
        if [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGKILL].contains(&signal) {
            if !process::wait_exit(pid, Duration::from_secs(10)) {
                bail!(
                    "the agent of {} (pid {pid}) ignored signal {signal}",
                    self.ns(node)
                );
            }
            self.reap();
            let _ = std::fs::remove_file(self.agent_pid_path(node));
        }
        Ok(())
    }

    /// Stops `node`'s agent if it runs: SIGTERM, SIGKILL after 3 s.
    pub fn stop_agent(&self, node: Node) -> Result<()> {
        if let Some(pid) = self.agent_pid(node) {
            let left = process::stop_all(&[pid], STOP_GRACE);
            if !left.is_empty() {
                bail!(
                    "the agent of {} (pid {pid}) survived SIGKILL",
                    self.ns(node)
                );
            }
        }
        self.reap();
        let _ = std::fs::remove_file(self.agent_pid_path(node));
        Ok(())
    }

    /// A command running the agent's CLI for `node`'s instance inside its
    /// network namespace: `nsenter --net=... lb-agent --instance <P>-lbN`.
    pub fn agent_command(&self, node: Node) -> Command {
        let mut c = self.nsenter(node);
        c.arg(self.agent_bin())
            .arg("--instance")
            .arg(self.instance(node));
        c
    }

    /// Runs `lb-agent --instance <P>-lbN args...` (e.g. `["backends", "list",
    /// "--service", "www"]`); the output whatever the exit status.
    pub fn agent_cli(&self, node: Node, args: &[&str]) -> Result<Output> {
        cmd::output(self.agent_command(node).args(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb1_config_matches_the_lab_contract() {
        let text = agent_config("t1", Node::Lb1, Path::new("/x/xtask")).unwrap();
        assert!(text.contains("private_address = \"10.200.0.11\""));
        assert!(text.contains("state_dir = \"/run/lb-lab/t1/state\""));
        assert!(text.contains("port_range = [1024, 65535]"));
        assert!(text.contains("xdp_mode = \"generic\""));
        assert!(text.contains(
            "snat_addresses = [\"10.200.0.11\", \"10.200.0.111\", \"10.200.0.112\", \"10.200.0.113\", \"10.200.0.114\"]\n"
        ));
        let lb2 = agent_config("t1", Node::Lb2, Path::new("/x/xtask")).unwrap();
        assert!(lb2.contains("snat_addresses = [\"10.200.0.12\", \"10.200.0.121\", "));
        assert_eq!(text.matches("[[service]]").count(), 2);
        assert_eq!(text.matches("[[service.backend]]").count(), 4);
        assert!(text.contains("address = \"10.200.0.22\""));
        assert!(!text.contains("10.200.0.23"));
        assert!(agent_config("t1", Node::Web1, Path::new("/x/xtask")).is_err());
        let native =
            agent_config_with("t1", Node::Lb2, Path::new("/x/xtask"), XdpMode::Native).unwrap();
        assert!(native.contains("xdp_mode = \"native\"\n") && !native.contains("generic"));
    }
}
