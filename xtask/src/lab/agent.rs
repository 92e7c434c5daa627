//! The agents on the LB nodes: config, start (in the node's network
//! namespace only), signals, and the CLI against their control sockets.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_config::{
    self as config, BackendConfig, CheckKind, Config, HealthCheckConfig, MaxFlows, MetricsConfig,
    NodeConfig, PortRange, Priority, Protocol, RiseFall, ServiceConfig, SyncConfig, TrackScript,
    Vrid, VrrpConfig, VrrpVersion,
};

use super::{
    process, run_dir, Lab, Node, Provider, XdpMode, AGENT_SOCKET_DIR, AGENT_START_TIMEOUT, BPFFS,
    FLOATING_SNAT, HTTP_PORT, METRICS_PORT, PORT_RANGE, STOP_GRACE, UDP_PORT, VIP,
};
use crate::cmd;

/// The lab's agent config for `node` (lb1 or lb2) with generic XDP: see
/// `agent_config_with`.
pub fn agent_config(prefix: &str, node: Node, xtask_bin: &Path) -> Result<String> {
    agent_config_with(prefix, node, xtask_bin, XdpMode::Generic)
}

/// The lab's agent config for `node` (lb1 or lb2) as TOML: see
/// `agent_model`.
pub fn agent_config_with(
    prefix: &str,
    node: Node,
    xtask_bin: &Path,
    xdp: XdpMode,
) -> Result<String> {
    lab_config_text(prefix, node, &agent_model(prefix, node, xtask_bin, xdp)?)
}

/// `model` as the lab writes it for `node`: TOML under a line saying whose.
fn lab_config_text(prefix: &str, node: Node, model: &Config) -> Result<String> {
    let body = model.to_toml().context("writing the lab config")?;
    Ok(format!(
        "# Agent of lab node {prefix}-{node}, written by `cargo xtask lab up`.\n{body}"
    ))
}

/// The lab's agent config for `node` (lb1 or lb2): its SNAT pool, `xdp`
/// mode, services `www` (TCP 80, HTTP check of /health) and `dns` (UDP
/// 5353, checked by a query sent with `xtask udp-query` from `xtask_bin`),
/// both to web1 and web2.
pub fn agent_model(prefix: &str, node: Node, xtask_bin: &Path, xdp: XdpMode) -> Result<Config> {
    let Some(private) = node.private_address().filter(|_| node.is_lb()) else {
        bail!("{node} is not an LB node");
    };
    let mut model = Config::new(NodeConfig {
        snat_addresses: node.snat_pool(),
        xdp_mode: match xdp {
            XdpMode::Generic => config::XdpMode::Generic,
            XdpMode::Native => config::XdpMode::Native,
        },
        port_range: PortRange::new(PORT_RANGE.0, PORT_RANGE.1)?,
        state_dir: match node {
            Node::Lb1 => run_dir(prefix).join("state"),
            _ => run_dir(prefix).join(format!("state-{node}")),
        },
        ..NodeConfig::new("pub0", "priv0", private)
    });
    model.conntrack.max_flows = MaxFlows::new(LAB_MAX_FLOWS)?;
    model.metrics = Some(MetricsConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)),
    });
    let www = www_check()?;
    let dns = HealthCheckConfig {
        kind: CheckKind::Exec,
        command: Some(format!(
            "{} udp-query --to $LB_BACKEND_ADDR:$LB_BACKEND_PORT --timeout 400ms | grep -q '^web'",
            xtask_bin.display()
        )),
        ..lab_check(Duration::from_millis(900))?
    };
    for (name, port, protocol, check) in [
        ("www", HTTP_PORT, Protocol::Tcp, www),
        ("dns", UDP_PORT, Protocol::Udp, dns),
    ] {
        model.services.push(ServiceConfig {
            health_check: Some(check),
            backends: [Node::Web1, Node::Web2]
                .iter()
                .filter_map(|n| n.private_address())
                .map(BackendConfig::new)
                .collect(),
            ..ServiceConfig::new(name, VIP, port, protocol)
        });
    }
    Ok(model)
}

/// The lab's check of `www`: GET /health every second.
pub fn www_check() -> Result<HealthCheckConfig> {
    Ok(HealthCheckConfig {
        kind: CheckKind::Http,
        path: "/health".into(),
        ..lab_check(Duration::from_millis(500))?
    })
}

/// Entries of each flow table on the lab's nodes.
const LAB_MAX_FLOWS: u32 = 65_536;

/// The lab checks every second and decides after two results, so that
/// tests see a backend's change within about two seconds.
fn lab_check(timeout: Duration) -> Result<HealthCheckConfig> {
    Ok(HealthCheckConfig {
        interval: Duration::from_secs(1),
        timeout,
        rise: RiseFall::new(2)?,
        fall: RiseFall::new(2)?,
        ..HealthCheckConfig::default()
    })
}

/// The lab's agent config for `node` (lb1 or lb2) in the HA pair, as
/// TOML: `agent_model` with `vrrp`. With a floating SNAT address (the
/// lab's default) the node's own pool is left out: the shared address
/// replaces it.
pub fn ha_agent_config(
    prefix: &str,
    node: Node,
    xtask_bin: &Path,
    xdp: XdpMode,
    vrrp: VrrpConfig,
) -> Result<String> {
    let mut model = agent_model(prefix, node, xtask_bin, xdp)?;
    if vrrp.snat_address.is_some() {
        model.node.snat_addresses.clear();
    }
    model.vrrp = Some(vrrp);
    lab_config_text(prefix, node, &model)
}

/// The lab's VRRP settings for `node` (see docs/lab.md): VRID
/// 33, unicast over the private net, lb1 priority 200 and lb2 100, by
/// default 1 s adverts and VRRPv2 with PASS `labpass` (v3 has no
/// authentication), and the floating SNAT address `FLOATING_SNAT`.
pub fn vrrp_model(
    node: Node,
    version: u8,
    advert_int: &str,
    track_flag: &Path,
) -> Result<VrrpConfig> {
    let (priority, peer) = match node {
        Node::Lb1 => (200, Node::Lb2),
        Node::Lb2 => (100, Node::Lb1),
        other => bail!("{other} is not an LB node"),
    };
    let mut vrrp = VrrpConfig::new(Vrid::new(33)?, Priority::new(priority)?);
    vrrp.version = VrrpVersion::try_from(i64::from(version))?;
    vrrp.advert_int = config::parse_duration(advert_int).map_err(anyhow::Error::msg)?;
    vrrp.unicast_peers = vec![peer.private_address().context("LB private address")?];
    vrrp.track_services = vec!["www".into()];
    vrrp.snat_address = Some(FLOATING_SNAT);
    if vrrp.version == VrrpVersion::V2 {
        vrrp.auth_pass = Some("labpass".into());
    }
    vrrp.track_script.push(TrackScript {
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(400),
        ..TrackScript::new("lab-flag", &format!("test ! -e {}", track_flag.display()))
    });
    Ok(vrrp)
}

impl Lab {
    /// File whose existence makes `node`'s lab track script fail.
    pub fn track_flag(&self, node: Node) -> PathBuf {
        self.run_dir().join(format!("{node}-track-fail"))
    }

    /// Makes `node`'s track script fail (`true`) or pass (`false`).
    pub fn set_track_failing(&self, node: Node, failing: bool) -> Result<()> {
        let flag = self.track_flag(node);
        super::process::set_flag_file(&flag, failing)
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

    /// The model of the config this lab gives `node`'s agent by default:
    /// `agent_model`, in an HA lab with `vrrp_model` (and with the
    /// digitalocean provider, `floating_ip_model`). Tests change its typed
    /// fields and start or reload the agent with it.
    pub fn default_agent_model(&self, node: Node) -> Result<Config> {
        let state = self.state();
        let mut model = agent_model(&self.prefix, node, self.xtask_bin(), state.xdp)?;
        if state.is_ha() {
            let mut vrrp = vrrp_model(
                node,
                state.vrrp.number(),
                &state.advert_int_text(),
                &self.track_flag(node),
            )?;
            if state.provider == Provider::Digitalocean {
                vrrp.floating_ip = super::floating_ip_model(&self.do_token_file())?;
            }
            if vrrp.snat_address.is_some() {
                model.node.snat_addresses.clear();
            }
            model.vrrp = Some(vrrp);
            if state.classic.is_empty() {
                model.sync = Some(SyncConfig::new(self.sync_key()?));
            }
        }
        Ok(model)
    }

    /// The pair's flow-sync key (made on first use, readable by root only).
    pub fn sync_key(&self) -> Result<PathBuf> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let path = self.run_dir().join("sync.key");
        if path.exists() {
            return Ok(path);
        }
        let mut random = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .context("reading /dev/urandom for the lab's sync key")?;
        let key: String = random.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{key}"))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts the agent of `node` with its config file, written with the
    /// default (`default_agent_model`) if there is none yet; so a restart
    /// after `kill_agent` keeps a config set by `start_agent_with_config`.
    pub fn start_agent(&self, node: Node) -> Result<u32> {
        let config = self.agent_config_path(node);
        if !config.exists() {
            let model = self.default_agent_model(node)?;
            self.write_agent_config(node, &lab_config_text(&self.prefix, node, &model)?)?;
        }
        self.launch_agent(node)
    }

    /// Writes `toml` as `node`'s config, then starts the agent with it.
    pub fn start_agent_with_config(&self, node: Node, toml: &str) -> Result<u32> {
        self.write_agent_config(node, toml)?;
        self.launch_agent(node)
    }

    /// Writes `model` as `node`'s config, then starts the agent with it.
    pub fn start_agent_with_model(&self, node: Node, model: &Config) -> Result<u32> {
        self.write_agent_model(node, model)?;
        self.launch_agent(node)
    }

    /// Writes `model` as `node`'s config (for a reload; a running agent
    /// reads it only then).
    pub fn write_agent_model(&self, node: Node, model: &Config) -> Result<()> {
        let text = model.to_toml().context("writing the agent config")?;
        self.write_agent_config(node, &text)
    }

    fn write_agent_config(&self, node: Node, toml: &str) -> Result<()> {
        let config = self.agent_config_path(node);
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))
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

    /// `node` is lost as when its machine dies: its agent killed (kill -9),
    /// its links down.
    pub fn lose_node(&self, node: Node) -> Result<()> {
        self.kill_agent(node, libc::SIGKILL)?;
        self.set_links(node, false)
    }

    /// Takes `node`'s two links (`pub0`, `priv0`) up or down.
    pub fn set_links(&self, node: Node, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        for link in ["pub0", "priv0"] {
            self.exec_ok(node, &["ip", "link", "set", link, state])?;
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

    /// `node`'s `lb-agent status --json`; `Null` when the agent does not
    /// answer (stopped, killed, starting).
    pub fn status_json(&self, node: Node) -> serde_json::Value {
        self.agent_cli(node, &["status", "--json"])
            .ok()
            .and_then(|out| serde_json::from_slice(&out.stdout).ok())
            .unwrap_or(serde_json::Value::Null)
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
        let model = lb_config::Config::parse(&text, "lb1.toml").expect("valid");
        assert_eq!(
            model.node.port_range,
            PortRange::new(1024, 65535).expect("range")
        );
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

    #[test]
    fn the_ha_pair_shares_the_floating_snat_address_instead_of_its_pools() {
        for node in Node::LBS {
            let vrrp = vrrp_model(node, 2, "1s", Path::new("/run/flag")).unwrap();
            let text =
                ha_agent_config("t1", node, Path::new("/x/xtask"), XdpMode::Generic, vrrp).unwrap();
            let model = lb_config::Config::parse(&text, "ha.toml").expect("valid");
            assert!(model.node.snat_addresses.is_empty(), "{text}");
            assert_eq!(model.snat_addresses(), [FLOATING_SNAT], "{text}");
            assert!(text.contains("snat_address = \"10.200.0.10\"\n"), "{text}");
        }
    }
}
