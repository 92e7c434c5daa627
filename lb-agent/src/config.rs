//! The agent's TOML configuration: parsing, defaults and validation. The doc
//! comment on every field is the configuration reference (README mirrors it).

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{Settings, MAX_BACKENDS, MAX_SERVICES};
use serde::{Deserialize, Deserializer};

use crate::check::Finding;

/// A backend's weight, its share of new connections: every way a backend
/// gets in (config file, `backends add`, the state file) takes 1..=100.
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 100;
/// `rise` and `fall` of health checks and track scripts: 1..=100.
pub const MAX_RISE_FALL: u32 = 100;
/// More gratuitous ARPs than this only flood the segment; keepalived's
/// default is 5.
pub const MAX_GARP_COUNT: u32 = 100;
/// keepalived's own limit for `preempt_delay` (1,000 s).
pub const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);
/// Longest a track script may run: tracking decides failovers, and a script
/// that needs longer than this tells too late that the node is unfit.
pub const MAX_TRACK_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of reading and validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not text (binary garbage, another encoding).
    #[error("{path}:{line}: {}", not_utf8(*byte))]
    NotUtf8 {
        path: String,
        byte: usize,
        line: usize,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{}: {message}", at(path, *line))]
    Syntax {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// The file parsed but describes something that cannot work; each
    /// problem with the line it is about when that can be found.
    #[error("config {path} is invalid:\n{}", problems.iter().map(|p| format!("  {}: {}", at(path, p.line), p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Finding>,
    },
}

/// What is wrong with a file whose bytes stop being UTF-8 at `byte`.
pub fn not_utf8(byte: usize) -> String {
    format!(
        "not UTF-8 at byte {byte}; a config file is UTF-8 text (was another file copied over it?)"
    )
}

/// `FILE:LINE`, or `FILE` when the line is not known.
fn at(path: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{path}:{line}"),
        None => path.to_string(),
    }
}

/// The text of a config file; bytes that are not UTF-8 are reported with
/// their offset and line, which `read_to_string` does not tell.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|error| {
        let byte = error.utf8_error().valid_up_to();
        let line = error.as_bytes()[..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        ConfigError::NotUtf8 {
            path: shown,
            byte,
            line,
        }
    })
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node: interfaces, addresses, attach mode.
    pub node: NodeConfig,
    /// Connection tracking size and idle timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// The balanced services (`[[service]]` tables).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// High availability: VRRP election and the floating IP (`[vrrp]`);
    /// without it this node always holds the VIPs it serves.
    #[serde(default)]
    pub vrrp: Option<VrrpConfig>,
    /// Prometheus metrics (`[metrics]`); off without it.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `[metrics]`: where `GET /metrics` is served.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port, e.g. "127.0.0.1:9650" (keep it off public
    /// networks: it tells backends' addresses and health).
    pub listen: std::net::SocketAddr,
}

/// `[vrrp]`: one virtual router, keepalived-compatible.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// 2 (RFC 3768) or 3 (RFC 5798), as keepalived's `vrrp_version`.
    #[serde(default = "default_vrrp_version")]
    pub version: u8,
    /// `virtual_router_id`, 1-255; the same on both nodes.
    pub vrid: u8,
    /// `priority`, 1-255 (255 = address owner); the higher wins.
    pub priority: u8,
    /// `advert_int`: whole seconds with v2, centiseconds resolution with v3.
    #[serde(default = "default_advert_int", deserialize_with = "duration")]
    pub advert_int: Duration,
    /// Interface the advertisements use (default: node.private_interface).
    #[serde(default)]
    pub interface: Option<String>,
    /// `unicast_src_ip` (default: node.private_address).
    #[serde(default)]
    pub unicast_src: Option<Ipv4Addr>,
    /// `unicast_peer` addresses; empty = multicast to 224.0.0.18. Adverts
    /// from any other source are ignored.
    #[serde(default)]
    pub unicast_peers: Vec<Ipv4Addr>,
    /// v2 `auth_type PASS` password (up to 8 bytes); checked on receive.
    #[serde(default)]
    pub auth_pass: Option<String>,
    /// Take over from a lower-priority master (keepalived's default;
    /// false = `nopreempt`).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// `preempt_delay`.
    #[serde(default, deserialize_with = "duration")]
    pub preempt_delay: Duration,
    /// The floating addresses (default: every service VIP), added to
    /// node.public_interface as /32 while master.
    #[serde(default)]
    pub virtual_addresses: Vec<Ipv4Addr>,
    /// Gratuitous ARPs sent on becoming master (keepalived's
    /// `garp_master_repeat`), `garp_interval` apart.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    #[serde(default = "default_garp_interval", deserialize_with = "duration")]
    pub garp_interval: Duration,
    /// Hooks with keepalived's convention `TYPE NAME STATE PRIORITY`, run
    /// without blocking the election, killed after `notify_timeout`.
    #[serde(default)]
    pub notify_master: Option<String>,
    #[serde(default)]
    pub notify_backup: Option<String>,
    #[serde(default)]
    pub notify_fault: Option<String>,
    #[serde(default)]
    pub notify_stop: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
    #[serde(default = "default_notify_timeout", deserialize_with = "duration")]
    pub notify_timeout: Duration,
    /// FAULT while one of these services has no backend up (health checks).
    #[serde(default)]
    pub track_services: Vec<String>,
    /// FAULT while one of these interfaces is down (default: the node's
    /// public and private interfaces).
    #[serde(default)]
    pub track_interfaces: Option<Vec<String>>,
    /// FAULT while the XDP program is not attached to the node's interfaces.
    #[serde(default = "default_true")]
    pub track_program: bool,
    /// keepalived's `vrrp_script` + `track_script` (`[[vrrp.track_script]]`).
    #[serde(default)]
    pub track_script: Vec<TrackScript>,
    /// Where the floating IP lives while this node is master
    /// (`[vrrp.floating_ip]`; default the `local` provider).
    #[serde(default)]
    pub floating_ip: FloatingIpConfig,
}

/// Which floating IP provider moves the addresses.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// On node.public_interface, announced with gratuitous ARPs.
    #[default]
    Local,
    /// A DigitalOcean reserved IP, assigned through the API.
    Digitalocean,
    /// A user command (e.g. the classic `assign-ip` script).
    Exec,
}

/// `[vrrp.floating_ip]`: the provider and its settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpConfig {
    #[serde(default)]
    pub provider: ProviderKind,
    /// While master, how often the provider checks that the addresses are
    /// still this node's (and re-asserts them if not).
    #[serde(default = "default_reconcile_interval", deserialize_with = "duration")]
    pub reconcile_interval: Duration,
    /// Attempts per assignment and the pause between them (the classic
    /// script: 10 tries, 3 s apart).
    #[serde(default = "default_provider_tries")]
    pub tries: u32,
    #[serde(default = "default_retry_interval", deserialize_with = "duration")]
    pub retry_interval: Duration,
    /// Limit of one API request or command run.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// digitalocean: API base URL.
    #[serde(default = "default_do_api_url")]
    pub api_url: String,
    /// digitalocean: metadata service base URL (droplet id).
    #[serde(default = "default_do_metadata_url")]
    pub metadata_url: String,
    /// digitalocean: this droplet's id; default: asked from the metadata service.
    #[serde(default)]
    pub droplet_id: Option<u64>,
    /// digitalocean: environment variable holding the API token.
    #[serde(default = "default_do_token_env")]
    pub token_env: String,
    /// digitalocean: file holding the API token (not readable by group or
    /// others); used instead of `token_env` when set.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// exec: command that moves the addresses here (`/bin/sh -c`, with
    /// LB_FLOATING_IPS, LB_INSTANCE, LB_STATE); exit 0 = done.
    #[serde(default)]
    pub assign: Option<String>,
    /// exec: command run on leaving MASTER (optional).
    #[serde(default)]
    pub release: Option<String>,
    /// exec: command telling whether the addresses are here (exit 0);
    /// while master, a failing check runs `assign` again.
    #[serde(default)]
    pub check: Option<String>,
}

impl Default for FloatingIpConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Local,
            reconcile_interval: default_reconcile_interval(),
            tries: default_provider_tries(),
            retry_interval: default_retry_interval(),
            request_timeout: default_request_timeout(),
            api_url: default_do_api_url(),
            metadata_url: default_do_metadata_url(),
            droplet_id: None,
            token_env: default_do_token_env(),
            token_file: None,
            assign: None,
            release: None,
            check: None,
        }
    }
}

fn default_reconcile_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_provider_tries() -> u32 {
    10
}
fn default_retry_interval() -> Duration {
    Duration::from_secs(3)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_do_api_url() -> String {
    "https://api.digitalocean.com".into()
}
fn default_do_metadata_url() -> String {
    "http://169.254.169.254".into()
}
fn default_do_token_env() -> String {
    "DIGITALOCEAN_TOKEN".into()
}

impl FloatingIpConfig {
    /// Everything wrong with the provider settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let at = "vrrp.floating_ip";
        if self.reconcile_interval < Duration::from_millis(100) {
            problems.push(format!("{at}.reconcile_interval must be at least 100ms"));
        }
        if !(1..=100).contains(&self.tries) {
            problems.push(format!("{at}.tries = {}: use 1..=100", self.tries));
        }
        if self.request_timeout.is_zero() {
            problems.push(format!("{at}.request_timeout must be longer than zero"));
        }
        let exec_fields = [&self.assign, &self.release, &self.check];
        match self.provider {
            ProviderKind::Local => {}
            ProviderKind::Digitalocean => {
                for (name, url) in [
                    ("api_url", &self.api_url),
                    ("metadata_url", &self.metadata_url),
                ] {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        problems.push(format!(
                            "{at}.{name} = {url:?}: write an http:// or https:// URL"
                        ));
                    }
                }
                if self.token_env.is_empty() && self.token_file.is_none() {
                    problems.push(format!(
                        "{at}: the digitalocean provider needs token_env or token_file (never the token itself)"
                    ));
                }
            }
            ProviderKind::Exec => {
                if self.assign.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    problems.push(format!(
                        "{at}: provider = \"exec\" needs assign = \"command\""
                    ));
                }
            }
        }
        if self.provider != ProviderKind::Exec && exec_fields.iter().any(|f| f.is_some()) {
            problems.push(format!(
                "{at}: assign/release/check belong to provider = \"exec\""
            ));
        }
        problems
    }
}

/// `[[vrrp.track_script]]`, with keepalived's `vrrp_script` semantics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackScript {
    /// Shown in logs and status.
    pub name: String,
    /// Run by /bin/sh -c; exit 0 = success.
    pub command: String,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// 0: FAULT while failing. Positive: added to the priority while it
    /// succeeds. Negative: added (lowering it) while it fails.
    #[serde(default)]
    pub weight: i32,
    #[serde(default = "default_one")]
    pub rise: u32,
    #[serde(default = "default_one")]
    pub fall: u32,
}

fn default_one() -> u32 {
    1
}

fn default_vrrp_version() -> u8 {
    2
}
fn default_advert_int() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_garp_count() -> u32 {
    5
}
fn default_garp_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}

impl VrrpConfig {
    pub fn problems(&self, node: &NodeConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != 2 && self.version != 3 {
            problems.push(format!("vrrp.version = {}: use 2 or 3", self.version));
        }
        if self.vrid == 0 {
            problems.push("vrrp.vrid = 0: use 1..=255, the same on both nodes".into());
        }
        if self.priority == 0 {
            problems.push("vrrp.priority = 0 is reserved for resigning: use 1..=255".into());
        }
        let cs = self.advert_int.as_millis() / 10;
        if self.version == 2
            && (self.advert_int.subsec_nanos() != 0
                || !(1..=255).contains(&self.advert_int.as_secs()))
        {
            problems.push(format!(
                "vrrp.advert_int = {:?}: VRRPv2 carries whole seconds 1..=255 (use version = 3 for shorter)",
                self.advert_int
            ));
        }
        if self.version == 3
            && (!(1..=4095).contains(&cs) || !self.advert_int.as_millis().is_multiple_of(10))
        {
            problems.push(format!(
                "vrrp.advert_int = {:?}: VRRPv3 carries 10 ms steps from 10 ms to 40.95 s",
                self.advert_int
            ));
        }
        if let Some(pass) = &self.auth_pass {
            if self.version == 3 {
                problems.push(
                    "vrrp.auth_pass: VRRPv3 has no authentication; remove it or use version = 2"
                        .into(),
                );
            }
            if pass.is_empty() || pass.len() > 8 {
                problems.push(
                    "vrrp.auth_pass must be 1-8 bytes (keepalived truncates longer ones)".into(),
                );
            }
        }
        for script in &self.track_script {
            if !(-253..=253).contains(&script.weight) {
                problems.push(format!(
                    "vrrp.track_script {:?}: weight {} is out of range -253..=253",
                    script.name, script.weight
                ));
            }
            if script.command.trim().is_empty() {
                problems.push(format!(
                    "vrrp.track_script {:?}: command is empty",
                    script.name
                ));
            }
            let at = format!("vrrp.track_script {:?}", script.name);
            problems.extend(rise_fall_problems(&at, script.rise, script.fall));
            if script.interval.is_zero() {
                problems.push(format!("{at}: interval must be longer than zero"));
            }
            if script.timeout.is_zero()
                || script.timeout > script.interval
                || script.timeout > MAX_TRACK_SCRIPT_TIMEOUT
            {
                problems.push(format!(
                    "{at}: timeout = {:?} must be longer than zero, at most the interval ({:?}) and at most {}s",
                    script.timeout,
                    script.interval,
                    MAX_TRACK_SCRIPT_TIMEOUT.as_secs()
                ));
            }
        }
        if self.garp_count > MAX_GARP_COUNT {
            problems.push(format!(
                "vrrp.garp_count = {}: use 0..={MAX_GARP_COUNT} (keepalived sends 5)",
                self.garp_count
            ));
        }
        if self.preempt_delay > MAX_PREEMPT_DELAY {
            problems.push(format!(
                "vrrp.preempt_delay = {:?}: at most {}s, as keepalived allows",
                self.preempt_delay,
                MAX_PREEMPT_DELAY.as_secs()
            ));
        }
        problems.extend(self.floating_ip.problems());
        let src = self.unicast_src.unwrap_or(node.private_address);
        if self.unicast_peers.contains(&src) {
            problems.push(format!(
                "vrrp.unicast_peers lists this node's own address {src}"
            ));
        }
        problems
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only; fails where the driver lacks XDP support.
    Native,
    /// Generic (skb) mode: works on any interface, slower.
    Generic,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Client-facing interface: VIP traffic arrives here.
    pub public_interface: String,
    /// Backend-facing interface (may be the same as `public_interface`).
    pub private_interface: String,
    /// This node's own IPv4 address on the private network: the source
    /// address backends see (put it in their allow lists).
    pub private_address: Ipv4Addr,
    /// "auto" (default), "native" or "generic".
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Inclusive NAT source port range towards backends (default: all of
    /// 1024-65535). The part inside the kernel's ephemeral range
    /// (`net.ipv4.ip_local_port_range`, the node's own source ports) is
    /// left out; the rest is reserved in `net.ipv4.ip_local_reserved_ports`.
    #[serde(default = "default_port_range", deserialize_with = "port_range")]
    pub port_range: [u16; 2],
    /// Source addresses towards backends, spread over new connections
    /// (the SNAT pool). Each address multiplies the connections a backend
    /// can take per TIME_WAIT period by the number of NAT ports. Every
    /// address must be on `private_interface`. Empty (default): just
    /// `private_address`.
    #[serde(default)]
    pub snat_addresses: Vec<Ipv4Addr>,
    /// Directory of the state file `<instance>.json` that keeps run-time
    /// backend changes across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM leave the program attached and the maps pinned, so
    /// traffic keeps flowing while the agent is stopped (e.g. for upgrades).
    #[serde(default)]
    pub keep_forwarding_on_exit: bool,
}

fn default_port_range() -> [u16; 2] {
    [1024, 65535]
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lb-agent")
}

/// `[conntrack]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Entries in each connection-tracking map (one per direction).
    pub max_flows: u32,
    /// Idle timeout of a TCP connection before the backend has answered.
    #[serde(deserialize_with = "duration")]
    pub tcp_handshake_timeout: Duration,
    /// Idle timeout of an established TCP connection.
    #[serde(deserialize_with = "duration")]
    pub tcp_established_timeout: Duration,
    /// Idle timeout after a FIN or RST.
    #[serde(deserialize_with = "duration")]
    pub tcp_closing_timeout: Duration,
    /// Idle timeout of a UDP flow.
    #[serde(deserialize_with = "duration")]
    pub udp_timeout: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            tcp_handshake_timeout: Duration::from_secs(30),
            tcp_established_timeout: Duration::from_secs(15 * 60),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `[[service]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name used by the CLI (`--service NAME`): [a-z0-9_-], at most 32 characters.
    pub name: String,
    /// The virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// The service port on the VIP.
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: Protocol,
    /// The backends (`[[service.backend]]` tables).
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
    /// How backends are checked (`[service.health_check]`); default: no checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// What happens to a backend's existing flows when it goes down:
    /// "keep-flows" (default: they may still finish) or "shutdown-flows".
    #[serde(default)]
    pub on_down: OnDown,
    /// A backend that comes back up ramps its weight from 1 to full over
    /// this time ("0s" = at once).
    #[serde(default, deserialize_with = "duration")]
    pub slow_start: Duration,
    /// Command run (by /bin/sh -c, not waited for, killed after 10 s) on
    /// every health transition of a backend, as `CMD SERVICE ADDR:PORT STATE`
    /// with STATE "up" or "down"; also in LB_SERVICE, LB_BACKEND, LB_STATE,
    /// LB_REASON.
    #[serde(default)]
    pub on_change: Option<String>,
    /// New connections per second the service must carry at its busiest
    /// (optional): `check-config` warns when the SNAT pool cannot.
    #[serde(default)]
    pub expected_rate: Option<u32>,
}

/// How long a backend that closed a connection first keeps its (source
/// address, source port) pair in TIME_WAIT: fixed at 60 s on Linux.
pub const BACKEND_TIME_WAIT: Duration = Duration::from_secs(60);

impl ServiceConfig {
    /// The health check of the backend at `address:port` (its own, else the
    /// service's), or `None` when it is not checked.
    pub fn check_for(&self, address: Ipv4Addr, port: u16) -> Option<&HealthCheckConfig> {
        self.backends
            .iter()
            .find(|b| b.address == address && b.port.unwrap_or(self.port) == port)
            .and_then(|b| b.health_check.as_ref())
            .or(self.health_check.as_ref())
            .filter(|c| c.kind != CheckKind::None)
    }
}

/// `on_down`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    #[default]
    KeepFlows,
    ShutdownFlows,
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP request whose status (and optionally body) is checked.
    Http,
    /// A command; exit 0 = healthy.
    Exec,
    /// No check: the backend is always up.
    None,
}

/// Health state of a backend when the agent starts, before any check.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAs {
    #[default]
    Up,
    Down,
}

/// `[service.health_check]` (also per backend, as `[service.backend.health_check]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// "tcp" (default), "http", "exec" or "none".
    #[serde(default, rename = "type")]
    pub kind: CheckKind,
    /// Time between checks of one backend.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// A check taking longer fails.
    #[serde(default = "default_check_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// "up" (default) or "down" until the checks say otherwise.
    #[serde(default)]
    pub start_as: StartAs,
    /// Each interval is randomly stretched or shrunk by up to this fraction
    /// (0.0..=0.5), so many backends are not probed in lock step.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Port to check; defaults to the backend's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// http: request method.
    #[serde(default = "default_method")]
    pub method: String,
    /// http: request path.
    #[serde(default = "default_path")]
    pub path: String,
    /// http: accepted status codes, inclusive range.
    #[serde(default = "default_expect_status", deserialize_with = "status_range")]
    pub expect_status: [u16; 2],
    /// http: Host header (default: the backend address).
    #[serde(default)]
    pub host: Option<String>,
    /// http: the body must contain this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// exec: command run by /bin/sh -c with LB_BACKEND_ADDR, LB_BACKEND_PORT
    /// and LB_SERVICE in its environment; exit 0 = healthy.
    #[serde(default)]
    pub command: Option<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_jitter() -> f64 {
    0.1
}
fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_expect_status() -> [u16; 2] {
    [200, 399]
}

/// `rise`/`fall` of a health check or track script outside 1..=MAX_RISE_FALL.
fn rise_fall_problems(at: &str, rise: u32, fall: u32) -> Vec<String> {
    [("rise", rise), ("fall", fall)]
        .into_iter()
        .filter(|(_, value)| !(1..=MAX_RISE_FALL).contains(value))
        .map(|(name, value)| format!("{at}: {name} = {value} is out of range 1..={MAX_RISE_FALL}"))
        .collect()
}

impl HealthCheckConfig {
    /// Everything wrong with this check, prefixed with `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kind == CheckKind::None {
            return problems;
        }
        if self.interval.is_zero() {
            problems.push(format!("{at}: interval must be longer than zero"));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            problems.push(format!(
                "{at}: timeout must be longer than zero and at most the interval"
            ));
        }
        problems.extend(rise_fall_problems(at, self.rise, self.fall));
        if !(0.0..=0.5).contains(&self.jitter) {
            problems.push(format!(
                "{at}: jitter = {} is out of range 0.0..=0.5",
                self.jitter
            ));
        }
        if self.port == Some(0) {
            problems.push(format!("{at}: port 0 cannot be checked"));
        }
        match self.kind {
            CheckKind::Http => {
                if !["GET", "HEAD", "POST", "OPTIONS"].contains(&self.method.as_str()) {
                    problems.push(format!(
                        "{at}: method {:?} is not one of GET, HEAD, POST, OPTIONS",
                        self.method
                    ));
                }
                if !self.path.starts_with('/') {
                    problems.push(format!("{at}: path {:?} must start with '/'", self.path));
                }
                // They go into the request as they are: a CR or LF would end
                // the line and start another header (or request), a space
                // would split the request line.
                if self.path.chars().any(|c| c.is_control() || c == ' ') {
                    problems.push(format!(
                        "{at}: path {:?} has a space or a control character (CR, LF, NUL, ...); percent-encode it, e.g. %20",
                        self.path
                    ));
                }
                if let Some(host) = &self.host {
                    if host.is_empty() || host.chars().any(|c| c.is_control() || c == ' ') {
                        problems.push(format!(
                            "{at}: host {host:?} must be a host name (and port), without spaces or control characters (CR, LF, NUL, ...)"
                        ));
                    }
                }
                let [low, high] = self.expect_status;
                if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
                    problems.push(format!(
                        "{at}: expect_status = [{low}, {high}]: write [lowest, highest] within 100..=599"
                    ));
                }
            }
            CheckKind::Exec => {
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    problems.push(format!("{at}: type = \"exec\" needs command = \"...\""));
                }
            }
            CheckKind::Tcp | CheckKind::None => {}
        }
        problems
    }
}

/// `[[service.backend]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend's private address.
    pub address: Ipv4Addr,
    /// Backend port; defaults to the service port.
    pub port: Option<u16>,
    /// Relative share of new connections, 1..=100.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Replaces the service's health check for this backend.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

fn default_weight() -> u32 {
    1
}

/// Parses a duration with a unit: "500ms", "30s", "15m", "1h", combined
/// "1m30s" (humantime's units; xtask reads durations by the same rule). A
/// bare number is refused: seconds or milliseconds, nobody can tell.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30s\"".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} has no unit; write e.g. \"{text}s\""));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!(
            "{text:?} is not a duration ({error}); write e.g. \"500ms\", \"30s\", \"15m\", \"1h\""
        )
    })
}

/// `[low, high]` and nothing else: a third item is a mistake (a list of
/// ranges meant?), not something to drop silently.
fn exactly_two<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &str,
) -> Result<[u16; 2], D::Error> {
    let items = Vec::<u16>::deserialize(deserializer)?;
    match items[..] {
        [low, high] => Ok([low, high]),
        _ => Err(serde::de::Error::custom(format!(
            "{field} has {} items; write exactly two, [first, last]",
            items.len()
        ))),
    }
}

fn port_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u16; 2], D::Error> {
    exactly_two(deserializer, "node.port_range")
}

fn status_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u16; 2], D::Error> {
    exactly_two(deserializer, "health_check.expect_status")
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Addresses no service, node or backend can have: 0.0.0.0/8 ("this
/// network"), loopback, multicast, the reserved 240.0.0.0/4 and broadcast.
fn is_unusable(addr: Ipv4Addr) -> bool {
    addr.octets()[0] == 0 || addr.is_multicast() || addr.octets()[0] >= 240 || addr.is_loopback()
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in messages, and
    /// every problem carries the line it is about, as check-config shows
    /// it (so a refused start or reload points at the line too).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().trim().to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems: problems
                    .into_iter()
                    .map(|message| Finding::in_text(text, message))
                    .collect(),
            })
        }
    }

    /// Everything wrong with the config, each with where and how to fix it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let node = &self.node;
        if node.public_interface.is_empty() || node.private_interface.is_empty() {
            problems.push(
                "node: public_interface and private_interface must name interfaces (see `ip link`)"
                    .into(),
            );
        }
        if is_unusable(node.private_address) {
            problems.push(format!(
                "node.private_address = {} is not a usable unicast address; use this node's address on the backend network",
                node.private_address
            ));
        }
        if node.snat_addresses.len() > lb_common::MAX_SNAT_ADDRESSES {
            problems.push(format!(
                "node.snat_addresses has {} addresses; at most {} fit",
                node.snat_addresses.len(),
                lb_common::MAX_SNAT_ADDRESSES
            ));
        }
        for (index, addr) in node.snat_addresses.iter().enumerate() {
            if is_unusable(*addr) {
                problems.push(format!(
                    "node.snat_addresses[{index}] = {addr} is not a usable unicast address; use addresses of this node on the backend network"
                ));
            } else if node.snat_addresses[..index].contains(addr) {
                problems.push(format!(
                    "node.snat_addresses[{index}] = {addr} is listed twice; list each address once"
                ));
            }
        }
        if !node.state_dir.is_absolute() {
            problems.push(format!(
                "node.state_dir = {:?}: write an absolute directory, e.g. \"/var/lib/lb-agent\" (a relative one would depend on where the agent was started)",
                node.state_dir
            ));
        }
        if let Some(metrics) = &self.metrics {
            if metrics.listen.port() == 0 {
                problems.push(format!(
                    "metrics.listen = \"{}\": port 0 would listen on a random port nobody scrapes; give a fixed one, e.g. 9650",
                    metrics.listen
                ));
            }
        }
        let [low, high] = node.port_range;
        if low == 0 || low > high {
            problems.push(format!(
                "node.port_range = [{low}, {high}]: write [first, last] with 0 < first <= last"
            ));
        } else if u32::from(high) - u32::from(low) + 1 < 1024 {
            problems.push(format!(
                "node.port_range = [{low}, {high}] has {} ports; give it at least 1024 (each backend can have one flow per port)",
                u32::from(high) - u32::from(low) + 1
            ));
        }

        let ct = &self.conntrack;
        if !(1024..=16_777_216).contains(&ct.max_flows) {
            problems.push(format!(
                "conntrack.max_flows = {}: use 1024..=16777216",
                ct.max_flows
            ));
        }
        for (name, value) in [
            ("tcp_handshake_timeout", ct.tcp_handshake_timeout),
            ("tcp_established_timeout", ct.tcp_established_timeout),
            ("tcp_closing_timeout", ct.tcp_closing_timeout),
            ("udp_timeout", ct.udp_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("conntrack.{name} must be longer than zero"));
            }
        }
        if ct.tcp_handshake_timeout > ct.tcp_established_timeout
            || ct.tcp_closing_timeout > ct.tcp_established_timeout
        {
            problems.push("conntrack: tcp_handshake_timeout and tcp_closing_timeout must not exceed tcp_established_timeout".into());
        }

        if let Some(vrrp) = &self.vrrp {
            problems.extend(vrrp.problems(node));
            for name in &vrrp.track_services {
                if !self.services.iter().any(|s| &s.name == name) {
                    // On both nodes the same typo would keep both in FAULT.
                    problems.push(format!(
                        "vrrp.track_services: no service named {name:?}; name one of the [[service]] tables"
                    ));
                }
            }
        }
        if self.services.len() > MAX_SERVICES as usize {
            problems.push(format!(
                "{} services configured; at most {MAX_SERVICES} fit",
                self.services.len()
            ));
        }
        let total_backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        if total_backends > MAX_BACKENDS as usize {
            problems.push(format!(
                "{total_backends} backends configured; at most {MAX_BACKENDS} fit"
            ));
        }
        let mut names = HashSet::new();
        let mut endpoints = HashSet::new();
        for (index, service) in self.services.iter().enumerate() {
            let at = if service.name.is_empty() {
                format!("service #{}", index + 1)
            } else {
                format!("service {:?}", service.name)
            };
            let valid_name = !service.name.is_empty()
                && service.name.len() <= 32
                && service
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                problems.push(format!(
                    "{at}: name must be 1-32 characters of a-z, 0-9, '-' or '_'"
                ));
            }
            if !names.insert(service.name.clone()) {
                problems.push(format!(
                    "{at}: the name is used twice; names must be unique"
                ));
            }
            if !endpoints.insert((service.vip, service.port, service.protocol)) {
                problems.push(format!(
                    "{at}: {}:{}/{} is already another service's; each (vip, port, protocol) once",
                    service.vip,
                    service.port,
                    format!("{:?}", service.protocol).to_lowercase()
                ));
            }
            if is_unusable(service.vip) {
                problems.push(format!(
                    "{at}: vip {} is not a usable unicast address",
                    service.vip
                ));
            }
            if service.vip == node.private_address {
                problems.push(format!(
                    "{at}: vip {} is node.private_address, the NAT source; give the service its own address",
                    service.vip
                ));
            }
            if service.port == 0 {
                problems.push(format!("{at}: port 0 is not a service port"));
            }
            if let Some(check) = &service.health_check {
                problems.extend(check.problems(&format!("{at} health_check")));
            }
            let mut seen = HashSet::new();
            for backend in &service.backends {
                let port = backend.port.unwrap_or(service.port);
                let who = format!("{at} backend {}:{port}", backend.address);
                if !seen.insert((backend.address, port)) {
                    problems.push(format!("{who}: listed twice"));
                }
                for reason in self.backend_problems(backend.address, port, backend.weight) {
                    problems.push(format!("{who}: {reason}"));
                }
                if let Some(check) = &backend.health_check {
                    problems.extend(check.problems(&format!("{who} health_check")));
                }
            }
        }
        problems
    }

    /// What is wrong with a backend `address:port` of `weight` in this
    /// config: the one set of rules for every way a backend gets in (the
    /// config file, `lb-agent backends add`, the state file). Each reason
    /// starts with the field it is about, for the caller to prefix with
    /// the backend.
    pub fn backend_problems(&self, address: Ipv4Addr, port: u16, weight: u32) -> Vec<String> {
        let mut problems = Vec::new();
        let node = &self.node;
        let floating = self
            .vrrp
            .as_ref()
            .is_some_and(|v| v.virtual_addresses.contains(&address));
        if is_unusable(address) {
            problems.push(format!(
                "address {address} is not a unicast address a server can have (0.0.0.0/8, loopback, multicast, 240.0.0.0/4 and broadcast cannot be); use the server's address on the backend network"
            ));
        } else if self.services.iter().any(|s| s.vip == address) || floating {
            problems.push(format!(
                "address {address} is a VIP of this balancer (a service's vip or a floating address); a backend must be a server's own address, not a VIP"
            ));
        } else if address == node.private_address || node.snat_addresses.contains(&address) {
            problems.push(format!(
                "address {address} is this node's own address (node.private_address or node.snat_addresses), so the balancer would send connections to itself; use the server's address"
            ));
        }
        if port == 0 {
            problems.push("port 0 is not a backend port; use 1-65535".into());
        }
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
            problems.push(format!(
                "weight {weight} is out of range {MIN_WEIGHT}..={MAX_WEIGHT}"
            ));
        }
        problems
    }

    /// Services whose `expected_rate` the SNAT pool cannot carry with
    /// `nat_ports` usable ports: a NAT source towards a backend can be
    /// reused only after the backend's TIME_WAIT, so one backend takes at
    /// most `addresses x ports / 60 s` new connections per second.
    pub fn capacity_warnings(&self, nat_ports: u32) -> Vec<String> {
        let addresses = self.snat_addresses().len() as u64;
        let sources = addresses * u64::from(nat_ports);
        let per_backend = sources / BACKEND_TIME_WAIT.as_secs();
        let mut warnings = Vec::new();
        for service in &self.services {
            let Some(rate) = service.expected_rate else {
                continue;
            };
            let total_weight: u64 = service.backends.iter().map(|b| u64::from(b.weight)).sum();
            let Some(busiest) = service.backends.iter().max_by_key(|b| b.weight) else {
                continue;
            };
            if total_weight == 0 {
                continue;
            }
            let share = u64::from(rate) * u64::from(busiest.weight) / total_weight;
            if share > per_backend {
                warnings.push(format!(
                    "service {:?}: expected_rate = {rate} new connections/s gives backend {}:{} (weight {} of {total_weight}) {share}/s, \
                     but {addresses} SNAT address(es) x {nat_ports} NAT ports = {sources} sources carry {per_backend}/s per backend \
                     against its {} s TIME_WAIT; add addresses to node.snat_addresses (each adds {}/s) or widen node.port_range",
                    service.name,
                    busiest.address,
                    busiest.port.unwrap_or(service.port),
                    busiest.weight,
                    BACKEND_TIME_WAIT.as_secs(),
                    u64::from(nat_ports) / BACKEND_TIME_WAIT.as_secs(),
                ));
            }
        }
        warnings
    }

    /// The SNAT pool: `node.snat_addresses`, or the private address alone.
    pub fn snat_addresses(&self) -> Vec<Ipv4Addr> {
        if self.node.snat_addresses.is_empty() {
            vec![self.node.private_address]
        } else {
            self.node.snat_addresses.clone()
        }
    }

    /// The node-wide settings the XDP program reads.
    pub fn to_settings(&self) -> Settings {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let pool = self.snat_addresses();
        let mut snat_addrs = [[0u8; 4]; lb_common::MAX_SNAT_ADDRESSES];
        for (slot, addr) in snat_addrs.iter_mut().zip(&pool) {
            *slot = addr.octets();
        }
        Settings {
            snat_addrs,
            snat_count: pool.len().min(lb_common::MAX_SNAT_ADDRESSES) as u32,
            port_min: self.node.port_range[0],
            port_max: self.node.port_range[1],
            tcp_handshake_ns: ns(self.conntrack.tcp_handshake_timeout),
            tcp_established_ns: ns(self.conntrack.tcp_established_timeout),
            tcp_closing_ns: ns(self.conntrack.tcp_closing_timeout),
            udp_ns: ns(self.conntrack.udp_timeout),
            ready: 1,
            // Follows from the table's size and the CPUs (daemon).
            half_open_per_cpu: 0,
            // Filled in from the interfaces once they are known (daemon).
            public_mac: [0; 6],
            private_mac: [0; 6],
            _pad_mac: [0; 4],
            // Calibrated against the running kernel (daemon).
            tick_ns: 0,
            tick_offset_ns: 0,
        }
    }
}

/// A whole config like the lab's, for tests across the crate.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
[node]
public_interface = "pub0"
private_interface = "priv0"
private_address = "10.200.0.11"
xdp_mode = "generic"
port_range = [20000, 29999]
state_dir = "/run/lb-lab/lab/state"
[conntrack]
max_flows = 65536
[[service]]
name = "www"
vip = "10.100.0.100"
port = 80
protocol = "tcp"
  [[service.backend]]
  address = "10.200.0.21"
  [[service.backend]]
  address = "10.200.0.22"
  weight = 3
[[service]]
name = "dns"
vip = "10.100.0.100"
port = 5353
protocol = "udp"
  [[service.backend]]
  address = "10.200.0.21"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    use super::TEST_CONFIG as LAB;

    #[test]
    fn lab_config_parses_with_defaults() {
        let config = Config::parse(LAB, "lab.toml").expect("lab config is valid");
        assert_eq!(config.node.xdp_mode, XdpMode::Generic);
        assert_eq!(config.services.len(), 2);
        let www = &config.services[0];
        assert_eq!(www.backends[0].weight, 1);
        assert_eq!(www.backends[0].port, None);
        assert_eq!(www.backends[1].weight, 3);
        assert_eq!(config.conntrack.max_flows, 65536);
        assert_eq!(
            config.conntrack.tcp_established_timeout,
            Duration::from_secs(900)
        );
        let settings = config.to_settings();
        assert_eq!(settings.snat_addrs[0], [10, 200, 0, 11]);
        assert_eq!(settings.snat_count, 1);
        assert_eq!((settings.port_min, settings.port_max), (20000, 29999));
        assert_eq!(settings.udp_ns, 60_000_000_000);
        assert_eq!(settings.ready, 1);
    }

    #[test]
    fn health_check_defaults_and_overrides() {
        let text = LAB.replacen(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\non_down = \"shutdown-flows\"\nslow_start = \"30s\"\n  [service.health_check]\n  type = \"http\"\n  path = \"/health\"\n",
            1,
        )
        .replacen(
            "  weight = 3\n",
            "  weight = 3\n  [service.backend.health_check]\n  type = \"tcp\"\n  port = 8080\n",
            1,
        );
        let config = Config::parse(&text, "h.toml").expect("valid");
        let www = &config.services[0];
        assert_eq!(www.on_down, OnDown::ShutdownFlows);
        assert_eq!(www.slow_start, Duration::from_secs(30));
        let check = www
            .check_for(Ipv4Addr::new(10, 200, 0, 21), 80)
            .expect("service check applies");
        assert_eq!(check.kind, CheckKind::Http);
        assert_eq!((check.rise, check.fall), (2, 3));
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.timeout, Duration::from_secs(1));
        assert_eq!(check.expect_status, [200, 399]);
        assert_eq!(check.start_as, StartAs::Up);
        let own = www
            .check_for(Ipv4Addr::new(10, 200, 0, 22), 80)
            .expect("backend check applies");
        assert_eq!((own.kind, own.port), (CheckKind::Tcp, Some(8080)));
        assert!(
            config.services[1]
                .check_for(Ipv4Addr::new(10, 200, 0, 21), 5353)
                .is_none(),
            "dns unchecked"
        );
    }

    #[test]
    fn broken_health_checks_are_explained() {
        for (check, expected) in [
            ("type = \"exec\"", "needs command"),
            ("type = \"http\"\npath = \"health\"", "must start with '/'"),
            (
                "type = \"http\"\nexpect_status = [500, 200]",
                "expect_status",
            ),
            (
                "interval = \"1s\"\ntimeout = \"2s\"",
                "at most the interval",
            ),
            ("rise = 0", "rise = 0 is out of range"),
            ("jitter = 0.9", "jitter = 0.9"),
            ("type = \"http\"\nmethod = \"DELETE\"", "method \"DELETE\""),
            ("type = \"smtp\"", "unknown variant"),
            (
                "type = \"http\"\npath = \"/health\\r\\nX-Injected: 1\"",
                "control character",
            ),
            ("type = \"http\"\npath = \"/a b\"", "percent-encode"),
            (
                "type = \"http\"\nhost = \"www\\u0000.example.com\"",
                "host \"www\\0.example.com\" must be a host name",
            ),
            ("type = \"http\"\nhost = \"a\\nb\"", "control characters"),
            (
                "type = \"http\"\nexpect_status = [200, 299, 399]",
                "expect_status has 3 items",
            ),
        ] {
            let text = LAB.replacen(
                "protocol = \"tcp\"\n",
                &format!("protocol = \"tcp\"\n  [service.health_check]\n  {check}\n"),
                1,
            );
            let message = Config::parse(&text, "h.toml").unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{check:?}: expected {expected:?} in {message}"
            );
        }
    }

    #[test]
    fn vrrp_section_parses_and_is_checked() {
        let text = format!(
            "{LAB}\n[vrrp]\nvrid = 33\npriority = 200\nunicast_peers = [\"10.200.0.12\"]\nauth_pass = \"labpass\"\n"
        );
        let config = Config::parse(&text, "v.toml").expect("valid");
        let vrrp = config.vrrp.expect("vrrp");
        assert_eq!((vrrp.version, vrrp.vrid, vrrp.priority), (2, 33, 200));
        assert_eq!(vrrp.advert_int, Duration::from_secs(1));
        assert!(vrrp.preempt);
        assert_eq!(vrrp.garp_count, 5);
        for (extra, expected) in [
            ("advert_int = \"100ms\"", "whole seconds"),
            ("version = 3", "VRRPv3 has no authentication"),
            ("priority = 0", "reserved for resigning"),
            (
                "track_services = [\"www\", \"wwww\"]",
                "vrrp.track_services: no service named \"wwww\"",
            ),
            (
                "garp_count = 100000000",
                "vrrp.garp_count = 100000000: use 0..=100",
            ),
            ("preempt_delay = \"1000000h\"", "vrrp.preempt_delay"),
            (
                "[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nrise = 0",
                "vrrp.track_script \"t\": rise = 0 is out of range",
            ),
            (
                "[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nfall = 0",
                "vrrp.track_script \"t\": fall = 0 is out of range",
            ),
            (
                "[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"0s\"",
                "vrrp.track_script \"t\": interval must be longer than zero",
            ),
            (
                "[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"2h\"\ntimeout = \"1h\"",
                "at most 60s",
            ),
            (
                "[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"2s\"\ntimeout = \"3s\"",
                "at most the interval",
            ),
        ] {
            let text = format!(
                "{LAB}\n[vrrp]\nvrid = 33\npriority = 200\nauth_pass = \"labpass\"\n{extra}\n"
            )
            .replacen(
                "priority = 200\nauth_pass",
                if extra.starts_with("priority") {
                    "auth_pass"
                } else {
                    "priority = 200\nauth_pass"
                },
                1,
            );
            let message = Config::parse(&text, "v.toml").unwrap_err().to_string();
            assert!(message.contains(expected), "{extra}: {message}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert_eq!(
            parse_duration("2 days"),
            Ok(Duration::from_secs(2 * 86_400))
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5q").unwrap_err().contains("not a duration"));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    fn broken(replace: &str, with: &str) -> String {
        assert!(LAB.contains(replace), "fixture lacks {replace:?}");
        let text = LAB.replacen(replace, with, 1);
        match Config::parse(&text, "broken.toml") {
            Ok(_) => panic!("config with {with:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn broken_configs_say_what_and_where() {
        let table: &[(&str, &str, &str)] = &[
            ("name = \"dns\"", "name = \"www\"", "the name is used twice"),
            (
                "name = \"dns\"",
                "name = \"DNS!\"",
                "name must be 1-32 characters",
            ),
            (
                "port = 5353\nprotocol = \"udp\"",
                "port = 80\nprotocol = \"tcp\"",
                "already another service's",
            ),
            (
                "vip = \"10.100.0.100\"\nport = 80",
                "vip = \"224.0.0.1\"\nport = 80",
                "not a usable unicast address",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.21\"",
                "listed twice",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"10.100.0.100\"",
                "not a VIP",
            ),
            ("weight = 3", "weight = 0", "weight 0 is out of range"),
            (
                "port_range = [20000, 29999]",
                "port_range = [30000, 20000]",
                "0 < first <= last",
            ),
            (
                "port_range = [20000, 29999]",
                "port_range = [20000, 20010]",
                "at least 1024",
            ),
            (
                "max_flows = 65536",
                "max_flows = 10",
                "conntrack.max_flows = 10",
            ),
            (
                "max_flows = 65536",
                "max_flows = 65536\nudp_timeout = \"0s\"",
                "udp_timeout must be longer than zero",
            ),
            (
                "max_flows = 65536",
                "max_flows = 65536\ntcp_handshake_timeout = \"2h\"",
                "must not exceed",
            ),
            (
                "private_address = \"10.200.0.11\"",
                "private_address = \"0.0.0.0\"",
                "node.private_address",
            ),
            (
                "xdp_mode = \"generic\"",
                "xdp_mode = \"fast\"",
                "unknown variant",
            ),
            (
                "max_flows = 65536",
                "max_flow = 65536",
                "unknown field `max_flow`",
            ),
            (
                "vip = \"10.100.0.100\"\nport = 80",
                "vip = \"10.100.0.300\"\nport = 80",
                "invalid IPv4 address",
            ),
            (
                "max_flows = 65536",
                "max_flows = 65536\nudp_timeout = \"60\"",
                "has no unit",
            ),
            (
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.100.0.100\"",
                "is node.private_address",
            ),
            (
                "port_range = [20000, 29999]",
                "port_range = [20000, 29999, 40000]",
                "node.port_range has 3 items",
            ),
            (
                "state_dir = \"/run/lb-lab/lab/state\"",
                "state_dir = \"\"",
                "node.state_dir = \"\": write an absolute directory",
            ),
            (
                "state_dir = \"/run/lb-lab/lab/state\"",
                "state_dir = \"state\"",
                "node.state_dir = \"state\": write an absolute directory",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.11\"",
                "backend 10.200.0.11:80: address 10.200.0.11 is this node's own address",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"255.255.255.255\"",
                "not a unicast address",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"127.0.0.1\"",
                "not a unicast address",
            ),
            (
                "address = \"10.200.0.22\"",
                "address = \"0.0.0.0\"",
                "not a unicast address",
            ),
            (
                "max_flows = 65536",
                "max_flows = 65536\n[metrics]\nlisten = \"127.0.0.1:0\"",
                "metrics.listen = \"127.0.0.1:0\": port 0",
            ),
        ];
        for (replace, with, expected) in table {
            let message = broken(replace, with);
            assert!(
                message.contains(expected),
                "{with:?}: expected {expected:?} in:\n{message}"
            );
            assert!(
                message.contains("broken.toml"),
                "message names the file: {message}"
            );
        }
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let text = LAB.replacen("port = 80", "port = \"eighty\"", 1);
        let line = text
            .lines()
            .position(|l| l == "port = \"eighty\"")
            .expect("line")
            + 1;
        let message = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("x.toml:{line}: ")),
            "{message}"
        );
    }

    #[test]
    fn validation_errors_carry_their_line_as_check_config_shows_it() {
        // What `lb-agent run` and a refused reload print.
        let text = LAB.replacen("weight = 3", "weight = 300", 1);
        let line = text
            .lines()
            .position(|l| l == "  weight = 300")
            .expect("line")
            + 1;
        let message = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            message.contains(&format!(
                "x.toml:{line}: service \"www\" backend 10.200.0.22:80: weight 300"
            )),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_is_reported_at_its_byte_and_line() {
        let dir = std::env::temp_dir().join(format!("lb-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("binary.toml");
        let mut bytes = b"[node]\npublic_interface = \"pub0\"\n".to_vec();
        let byte = bytes.len() + 3;
        bytes.extend_from_slice(b"pri\xff\xfe\x00garbage\n");
        std::fs::write(&path, &bytes).expect("write");
        let message = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "{}:3: not UTF-8 at byte {byte}; a config file is UTF-8 text (was another file copied over it?)",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_backend_at_one_of_the_nodes_own_or_floating_addresses_is_refused() {
        let text = LAB
            .replacen(
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.11\", \"10.200.0.111\"]",
                1,
            )
            .replacen("address = \"10.200.0.22\"", "address = \"10.200.0.111\"", 1);
        let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            message.contains(
                "backend 10.200.0.111:80: address 10.200.0.111 is this node's own address"
            ),
            "{message}"
        );
        let text = format!(
            "{}\n[vrrp]\nvrid = 1\npriority = 100\nvirtual_addresses = [\"10.100.0.200\"]\n",
            LAB.replacen("address = \"10.200.0.22\"", "address = \"10.100.0.200\"", 1)
        );
        let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            message.contains("10.100.0.200 is a VIP of this balancer"),
            "{message}"
        );
    }

    #[test]
    fn pool_capacity_against_a_stated_rate() {
        // www: backends of weight 1 and 3; 10,000 NAT ports.
        let with_rate = TEST_CONFIG.replacen(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nexpected_rate = 1000",
            1,
        );
        let config = Config::parse(&with_rate, "t.toml").expect("valid");
        // One address: 10,000 sources / 60 s = 166/s; the weight-3 backend gets 750/s.
        let warnings = config.capacity_warnings(10_000);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("750/s") && warnings[0].contains("166/s per backend"),
            "{}",
            warnings[0]
        );
        // Five addresses: 833/s per backend carry it.
        let pooled = with_rate.replacen(
            "private_address = \"10.200.0.11\"",
            "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.11\", \"10.200.0.111\", \"10.200.0.112\", \"10.200.0.113\", \"10.200.0.114\"]",
            1,
        );
        let config = Config::parse(&pooled, "t.toml").expect("valid");
        assert_eq!(config.snat_addresses().len(), 5);
        assert!(config.capacity_warnings(10_000).is_empty());
        assert_eq!(config.to_settings().snat_count, 5);
    }

    #[test]
    fn snat_addresses_are_checked() {
        let text = TEST_CONFIG.replacen(
            "private_address = \"10.200.0.11\"",
            "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.111\", \"224.0.0.1\", \"10.200.0.111\"]",
            1,
        );
        let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            message.contains("snat_addresses[1] = 224.0.0.1 is not a usable"),
            "{message}"
        );
        assert!(
            message.contains("snat_addresses[2] = 10.200.0.111 is listed twice"),
            "{message}"
        );
    }
}
