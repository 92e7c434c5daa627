//! The namespace lab of docs/lab.md: namespaces, bridges, veths,
//! nginx and UDP responders on the web servers, the agent on lb1; plus the
//! handle (`Lab`) and tear-down guard (`LabGuard`) the tests use.
//!
//! Everything the lab makes derives from its prefix: namespaces `<P>-<node>`,
//! run dir `/run/lb-lab/<P>/`, pins `/sys/fs/bpf/<P>-lbN`, agent sockets
//! `/run/lb-agent/<P>-lbN.sock`. Interface names do not: every node has its
//! own namespace, so they are fixed (`pub0`, `priv0`, `eth0`; `<node>[-pub|
//! -priv]` on the switch) and always short enough.

mod agent;
mod classic;
mod cloud;
pub mod process;
mod topology;
mod web;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Deref,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    str::FromStr,
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub use agent::{
    agent_config, agent_config_with, agent_model, vrrp_model, vrrp_section, www_check,
};
pub use classic::{ensure_classic_programs, haproxy_config, keepalived_config};
pub use cloud::{do_mock_binary, floating_ip_section, DO_API_PORT, DROPLETS, ENV_DO_MOCK_BIN};
pub use topology::{Link, LINKS};

use crate::{apt, build, cmd};

/// The prefix of `cargo xtask lab up` without `--prefix`.
pub const DEFAULT_PREFIX: &str = "lab";
/// File in the run dir that marks an HA lab.
const HA_MARKER: &str = "ha";
/// File in the run dir that names the XDP mode of a native-mode lab.
const XDP_MARKER: &str = "xdp";

/// The floating IP / VIP of both services.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);
/// Public network (client side), /24.
pub const PUBLIC_NET: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
/// Private network (web server side), /24.
pub const PRIVATE_NET: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// Prefix length of both networks.
pub const NET_PREFIX_LEN: u8 = 24;
/// The `www` service (TCP) port and the `dns` service (UDP) port.
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5353;
/// The agents serve Prometheus metrics on 127.0.0.1 of their node.
pub const METRICS_PORT: u16 = 9650;
/// Source ports the agents use towards the web servers: all of them; the
/// agent leaves out the node's ephemeral range (32768-60999), which keeps
/// 36,280 NAT ports per SNAT address.
pub const PORT_RANGE: (u16, u16) = (1024, 65535);
/// Where the lab keeps configs, logs and pid files (`<RUN_ROOT>/<prefix>`).
pub const RUN_ROOT: &str = "/run/lb-lab";
/// bpffs mount point; the agent pins under `<BPFFS>/<instance>`.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The agent's control sockets: `<AGENT_SOCKET_DIR>/<instance>.sock`.
pub const AGENT_SOCKET_DIR: &str = "/run/lb-agent";
/// How long `start_agent` waits for the control socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping lab processes.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The SNAT pools of the LB nodes beyond their private addresses (the one
/// place the lab defines them): the agents spread new connections over
/// private address + these four (`node.snat_addresses`): with one source
/// address a backend sees at most `PORT_RANGE` distinct connections from a
/// node, and a closed one keeps its port (and the backend its TIME_WAIT
/// socket) for a while, which caps new connections per second; each extra
/// address adds a whole port range. They sit on `priv0` as /32 (no second
/// subnet route, the node address stays the source of the node's own
/// traffic), so the node answers the backends' ARP for them; every web
/// server's nginx allows all of them.
pub const LB1_SNAT_EXTRA: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 200, 0, 111),
    Ipv4Addr::new(10, 200, 0, 112),
    Ipv4Addr::new(10, 200, 0, 113),
    Ipv4Addr::new(10, 200, 0, 114),
];
pub const LB2_SNAT_EXTRA: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 200, 0, 121),
    Ipv4Addr::new(10, 200, 0, 122),
    Ipv4Addr::new(10, 200, 0, 123),
    Ipv4Addr::new(10, 200, 0, 124),
];

/// A machine of the lab; its namespace is `<prefix>-<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// Holds the bridges `br-pub` and `br-priv`.
    Sw,
    /// The outside world, 10.100.0.10.
    Client,
    /// Primary LB node: 10.100.0.11 on `pub0`, 10.200.0.11 on `priv0`.
    Lb1,
    /// Standby LB node: 10.100.0.12 on `pub0`, 10.200.0.12 on `priv0`.
    Lb2,
    /// Web servers 10.200.0.21..23 (nginx :80, UDP responder :5353).
    Web1,
    Web2,
    /// The spare, not in the default config.
    Web3,
}

impl Node {
    pub const ALL: [Node; 7] = [
        Node::Sw,
        Node::Client,
        Node::Lb1,
        Node::Lb2,
        Node::Web1,
        Node::Web2,
        Node::Web3,
    ];
    pub const LBS: [Node; 2] = [Node::Lb1, Node::Lb2];
    pub const WEBS: [Node; 3] = [Node::Web1, Node::Web2, Node::Web3];

    /// `sw`, `client`, `lb1`, `lb2`, `web1`, `web2`, `web3`.
    pub fn name(self) -> &'static str {
        match self {
            Node::Sw => "sw",
            Node::Client => "client",
            Node::Lb1 => "lb1",
            Node::Lb2 => "lb2",
            Node::Web1 => "web1",
            Node::Web2 => "web2",
            Node::Web3 => "web3",
        }
    }

    /// Address on the public network (client and LB nodes).
    pub fn public_address(self) -> Option<Ipv4Addr> {
        match self {
            Node::Client => Some(Ipv4Addr::new(10, 100, 0, 10)),
            Node::Lb1 => Some(Ipv4Addr::new(10, 100, 0, 11)),
            Node::Lb2 => Some(Ipv4Addr::new(10, 100, 0, 12)),
            _ => None,
        }
    }

    /// Address on the private network (LB nodes and web servers).
    pub fn private_address(self) -> Option<Ipv4Addr> {
        match self {
            Node::Lb1 => Some(Ipv4Addr::new(10, 200, 0, 11)),
            Node::Lb2 => Some(Ipv4Addr::new(10, 200, 0, 12)),
            Node::Web1 => Some(Ipv4Addr::new(10, 200, 0, 21)),
            Node::Web2 => Some(Ipv4Addr::new(10, 200, 0, 22)),
            Node::Web3 => Some(Ipv4Addr::new(10, 200, 0, 23)),
            _ => None,
        }
    }

    /// An LB node's SNAT addresses beyond its private address (see
    /// `LB1_SNAT_EXTRA`); none for other nodes.
    pub fn snat_extra(self) -> &'static [Ipv4Addr] {
        match self {
            Node::Lb1 => &LB1_SNAT_EXTRA,
            Node::Lb2 => &LB2_SNAT_EXTRA,
            _ => &[],
        }
    }

    /// An LB node's whole SNAT pool, its private address first; empty for
    /// other nodes.
    pub fn snat_pool(self) -> Vec<Ipv4Addr> {
        self.private_address()
            .filter(|_| self.is_lb())
            .into_iter()
            .chain(self.snat_extra().iter().copied())
            .collect()
    }

    pub fn is_lb(self) -> bool {
        Self::LBS.contains(&self)
    }

    pub fn is_web(self) -> bool {
        Self::WEBS.contains(&self)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Node {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Node::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .with_context(|| format!("no lab node `{s}` (sw, client, lb1, lb2, web1..web3)"))
    }
}

/// How the agents attach their XDP program to the veths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpMode {
    /// Generic (skb) XDP: works on any veth as it is.
    #[default]
    Generic,
    /// Native (driver) XDP; the lab also puts the XDP_PASS program
    /// `lb-pass` on the switch-side ends of the LB nodes' veths, which
    /// veth needs to deliver natively transmitted and redirected frames.
    Native,
}

impl XdpMode {
    /// The agent's `node.xdp_mode` value.
    pub fn config_value(self) -> &'static str {
        match self {
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_value())
    }
}

impl FromStr for XdpMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "generic" => Ok(XdpMode::Generic),
            "native" => Ok(XdpMode::Native),
            other => bail!("no XDP mode `{other}` (generic or native)"),
        }
    }
}

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Short name every namespace and path derives from (≤ 12 chars,
    /// `[a-z0-9-]`), e.g. `lab`, `demo`, `t1`.
    pub prefix: String,
    /// Start the agent on lb1 (needs the built agent).
    pub agent: bool,
    /// High availability: agents on lb1 and lb2 elect a master with VRRP,
    /// which holds the VIP. Without it lb1 holds the VIP statically and
    /// only lb1 runs an agent.
    pub ha: bool,
    /// VRRP version (2 or 3) and advertisement interval ("1s", "100ms").
    pub vrrp_version: u8,
    pub advert_int: String,
    /// LB nodes that run the classic keepalived + HAProxy instead of the
    /// agent (a mixed pair, or the benchmark's reference pair).
    pub classic: Vec<Node>,
    /// Floating IP provider of the agents: "local" (the VIP on pub0, GARP)
    /// or "digitalocean" (the stand-in API in the client namespace routes
    /// the reserved IP to the droplet it is assigned to).
    pub provider: String,
    /// How the agents attach XDP (and whether the veth peers get `lb-pass`).
    pub xdp: XdpMode,
    /// The XDP_PASS program for native mode; default `$LB_PASS_OBJECT` or
    /// where `cargo xtask build` puts it.
    pub pass_object: Option<PathBuf>,
    /// The stand-in DigitalOcean API (`do-api-mock`); default
    /// `$LB_DO_MOCK_BIN`, or built into the target dir.
    pub do_mock_bin: Option<PathBuf>,
    /// The agent binary; default `$LB_AGENT_BIN` or `target/release/lb-agent`.
    pub agent_bin: Option<PathBuf>,
    /// The xtask binary (UDP responder/client); default `$LB_XTASK_BIN`,
    /// this process if it is xtask, or `target/debug/xtask`.
    pub xtask_bin: Option<PathBuf>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            agent: true,
            ha: true,
            vrrp_version: 2,
            advert_int: "1s".to_owned(),
            classic: Vec::new(),
            provider: "local".to_owned(),
            xdp: XdpMode::Generic,
            pass_object: None,
            do_mock_bin: None,
            agent_bin: None,
            xtask_bin: None,
        }
    }
}

impl LabOptions {
    /// Defaults with another prefix.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }
}

/// A handle to the lab with one prefix. Dropping it leaves the lab up (use
/// `LabGuard` or `Lab::down` to remove it).
pub struct Lab {
    prefix: String,
    run_dir: PathBuf,
    agent_bin: PathBuf,
    xtask_bin: PathBuf,
    /// Background processes this handle started, reaped once they exit.
    children: Mutex<Vec<Child>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

/// Checks that a prefix is short and made of `[a-z0-9-]`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=12).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-')
        && !prefix.ends_with('-');
    if !ok {
        bail!("lab prefix `{prefix}`: use 1-12 characters of a-z, 0-9 and inner `-`");
    }
    Ok(())
}

/// `/run/lb-lab/<prefix>`.
pub fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

/// `<prefix>-<node>`.
pub fn ns_name(prefix: &str, node: Node) -> String {
    format!("{prefix}-{}", node.name())
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

impl Lab {
    /// A handle to the lab `prefix` (whether or not it is up), with the
    /// default binaries.
    pub fn attach(prefix: &str) -> Result<Lab> {
        Self::attach_with(&LabOptions::with_prefix(prefix))
    }

    fn attach_with(options: &LabOptions) -> Result<Lab> {
        validate_prefix(&options.prefix)?;
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
            children: Mutex::new(Vec::new()),
        })
    }

    /// Builds the lab (tearing down an existing one with the same prefix
    /// first). On failure everything made so far is removed again.
    pub fn up(options: &LabOptions) -> Result<Lab> {
        if !cmd::is_root() {
            bail!("the lab needs root (network namespaces, BPF)");
        }
        let lab = Self::attach_with(options)?;
        if options.agent && !lab.agent_bin.exists() {
            bail!(
                "no agent binary at {} (run `cargo xtask build`, or use --no-agent)",
                lab.agent_bin.display()
            );
        }
        let pass_object = match options.xdp {
            XdpMode::Generic => None,
            XdpMode::Native => {
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
                Some(object)
            }
        };
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
        let (agent, ha) = (options.agent, options.ha);
        let p = &self.prefix;
        eprintln!("xtask: lab {p}: namespaces, bridges, veths, addresses...");
        create_dir(Path::new(RUN_ROOT))?;
        create_dir(&self.run_dir)?;
        let ha = ha && agent;
        if ha {
            std::fs::write(
                self.run_dir.join(HA_MARKER),
                format!("{} {}", options.vrrp_version, options.advert_int),
            )?;
        }
        if options.xdp != XdpMode::Generic {
            std::fs::write(self.run_dir.join(XDP_MARKER), options.xdp.config_value())?;
        }
        topology::build(p, !ha, pass_object)?;
        cmd::check_interrupted()?;
        eprintln!("xtask: lab {p}: nginx and UDP responders on web1..web3...");
        for node in Node::WEBS {
            web::start_nginx(self, node)?;
            web::start_responder(self, node)?;
        }
        cmd::check_interrupted()?;
        if agent {
            if ha && !options.classic.is_empty() {
                let names: Vec<&str> = options.classic.iter().map(|n| n.name()).collect();
                std::fs::write(self.run_dir.join(classic::CLASSIC_MARKER), names.join(" "))?;
            }
            if ha && options.provider != "local" {
                if options.provider != "digitalocean" {
                    bail!(
                        "no floating IP provider {:?} in the lab (local or digitalocean)",
                        options.provider
                    );
                }
                std::fs::write(self.run_dir.join(cloud::PROVIDER_MARKER), &options.provider)?;
                eprintln!(
                    "xtask: lab {p}: the stand-in DigitalOcean API in the client namespace..."
                );
                self.start_cloud(options.do_mock_bin.clone())?;
            }
            let classic = self.classic_nodes();
            for node in Node::LBS {
                if !ha && node == Node::Lb2 {
                    continue;
                }
                if classic.contains(&node) {
                    eprintln!(
                        "xtask: lab {p}: keepalived + HAProxy on {node} (the classic pair)..."
                    );
                    self.start_classic(node)?;
                } else {
                    eprintln!(
                        "xtask: lab {p}: agent on {node} ({})...",
                        self.agent_bin.display()
                    );
                    self.start_agent(node)?;
                }
            }
            if ha {
                eprintln!("xtask: lab {p}: VRRP election...");
                if !cmd::wait_until(Duration::from_secs(15), || {
                    self.vip_holder() == Some(Node::Lb1)
                }) {
                    bail!("lb1 did not become VRRP master within 15 s");
                }
            }
        }
        eprintln!(
            "xtask: lab {p} is up. Try: ip netns exec {} curl -s http://{VIP}/",
            self.ns(Node::Client)
        );
        Ok(())
    }

    /// Whether anything of the lab `prefix` exists (a namespace or its run dir).
    pub fn exists(prefix: &str) -> bool {
        run_dir(prefix).exists() || Node::ALL.iter().any(|&n| ns_exists(&ns_name(prefix, n)))
    }

    /// Removes everything of the lab `prefix`: stops its processes (SIGTERM,
    /// SIGKILL after 3 s), deletes its namespaces, pins, sockets and run
    /// dir. Succeeds on a half-built or already removed lab.
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

    /// Prints namespaces, processes and the agent's `services list`.
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
        out.push_str(&format!("  xdp mode                 {}\n", self.xdp_mode()));
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

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/run/lb-lab/<prefix>`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
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
            ],
        )?;
        Ok(out
            .lines()
            .map(|l| (l != crate::udp::NO_REPLY).then(|| l.to_owned()))
            .collect())
    }

    /// Stops `node`'s nginx (SIGTERM, SIGKILL after the grace time).
    pub fn stop_nginx(&self, node: Node) -> Result<()> {
        let pid_file = web::nginx_pid_path(self, node);
        if let Some(pid) = process::read_pid(&pid_file) {
            let left = process::stop_all(&[pid], STOP_GRACE);
            if !left.is_empty() {
                bail!("nginx of {} (pid {pid}) survived SIGKILL", self.ns(node));
            }
        }
        let _ = std::fs::remove_file(pid_file);
        Ok(())
    }

    /// Starts `node`'s nginx again (after `stop_nginx`).
    pub fn start_nginx(&self, node: Node) -> Result<()> {
        web::start_nginx(self, node)
    }

    /// Makes `node`'s `/health` page answer 500 (`true`) or 200 (`false`)
    /// while nginx keeps serving everything else.
    pub fn set_health_page_failing(&self, node: Node, failing: bool) -> Result<()> {
        let flag = web::web_dir(self, node).join("www/unhealthy");
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

    /// Whether this lab runs the HA pair (VRRP on lb1 and lb2).
    pub fn is_ha(&self) -> bool {
        self.run_dir.join(HA_MARKER).exists()
    }

    /// How this lab's agents attach XDP.
    pub fn xdp_mode(&self) -> XdpMode {
        std::fs::read_to_string(self.run_dir.join(XDP_MARKER))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_default()
    }

    /// The HA lab's VRRP version and advert interval.
    pub fn vrrp_settings(&self) -> (u8, String) {
        let text = std::fs::read_to_string(self.run_dir.join(HA_MARKER)).unwrap_or_default();
        let mut parts = text.split_whitespace();
        let version = parts.next().and_then(|v| v.parse().ok()).unwrap_or(2);
        let interval = parts.next().unwrap_or("1s").to_owned();
        (version, interval)
    }

    /// The LB node that has the VIP: on its public interface if exactly one
    /// has it, or, in a digitalocean lab, where the cloud routes it.
    pub fn vip_holder(&self) -> Option<Node> {
        if self.provider() == "digitalocean" {
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

    /// Path of a web server's nginx access log.
    pub fn access_log_path(&self, node: Node) -> PathBuf {
        web::web_dir(self, node).join("access.log")
    }

    /// Starts a background process in `node`'s network namespace (own
    /// process group, stdin closed, output appended to `log`) and keeps its
    /// handle for reaping. Returns its pid.
    fn spawn_in(&self, node: Node, program: &Path, args: &[&str], log: &Path) -> Result<u32> {
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

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
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

/// Everything any lab may run (also the classic keepalived + HAProxy
/// nodes), installed with apt when missing; `cargo xtask test` calls it
/// before the tests so parallel tests find it all in place.
pub fn ensure_all_lab_programs() -> Result<()> {
    ensure_lab_programs()?;
    classic::ensure_classic_programs()?;
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
fn create_dir(dir: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["lab", "demo", "t1", "a-b", "abcdefghijkl"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Lab", "a_b", "abcdefghijklm", "a/b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_round_trip_and_addresses() {
        for node in Node::ALL {
            assert_eq!(node.name().parse::<Node>().unwrap(), node);
        }
        assert_eq!(ns_name("t1", Node::Lb1), "t1-lb1");
        assert_eq!(
            Node::Lb1.private_address(),
            Some(Ipv4Addr::new(10, 200, 0, 11))
        );
        assert_eq!(
            Node::Web3.private_address(),
            Some(Ipv4Addr::new(10, 200, 0, 23))
        );
        assert_eq!(
            Node::Client.public_address(),
            Some(Ipv4Addr::new(10, 100, 0, 10))
        );
        assert!(Node::Client.private_address().is_none());
    }

    #[test]
    fn snat_pools_start_with_the_node_address_and_do_not_overlap() {
        let lb1 = Node::Lb1.snat_pool();
        let lb2 = Node::Lb2.snat_pool();
        assert_eq!(lb1.len(), 5);
        assert_eq!(lb1[0], Ipv4Addr::new(10, 200, 0, 11));
        assert_eq!(lb1[4], Ipv4Addr::new(10, 200, 0, 114));
        assert_eq!(lb2[0], Ipv4Addr::new(10, 200, 0, 12));
        assert_eq!(lb2[1], Ipv4Addr::new(10, 200, 0, 121));
        let taken: Vec<Ipv4Addr> = Node::ALL
            .into_iter()
            .filter(|n| !n.is_lb())
            .filter_map(|n| n.private_address())
            .chain(lb2.iter().copied())
            .collect();
        assert!(lb1.iter().all(|a| !taken.contains(a)), "{lb1:?} {taken:?}");
        assert!(lb1
            .iter()
            .chain(&lb2)
            .all(|a| a.octets()[..3] == PRIVATE_NET.octets()[..3]));
        assert!(Node::Web1.snat_pool().is_empty() && Node::Client.snat_pool().is_empty());
    }
}
