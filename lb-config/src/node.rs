//! `[node]`, `[conntrack]` and `[metrics]`: this node and its tables.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    bounded::{MaxFlows, PortRange},
    problem::{FieldPath, Problems},
    RestartOnly,
};

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    #[serde(default)]
    pub port_range: PortRange,
    /// Source addresses towards backends, spread over new connections
    /// (the SNAT pool). Each address multiplies the connections a backend
    /// can take per TIME_WAIT period by the number of NAT ports. Every
    /// address must be on `private_interface`. Empty (default): just
    /// `private_address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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

impl RestartOnly for NodeConfig {
    const RESTART_ONLY: &'static [(&'static str, &'static str)] = &[
        ("public_interface", "the program is attached to it"),
        ("private_interface", "the program is attached to it"),
        ("private_address", "live flows are NATed to it"),
        ("xdp_mode", "chosen when attaching"),
        ("port_range", "live flows hold ports of it"),
        ("state_dir", "run-time changes are kept there"),
    ];
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lb-agent")
}

impl NodeConfig {
    /// A node with these interfaces and address and defaults for the rest.
    pub fn new(public_interface: &str, private_interface: &str, private_address: Ipv4Addr) -> Self {
        Self {
            public_interface: public_interface.to_string(),
            private_interface: private_interface.to_string(),
            private_address,
            xdp_mode: XdpMode::default(),
            port_range: PortRange::default(),
            snat_addresses: Vec::new(),
            state_dir: default_state_dir(),
            keep_forwarding_on_exit: false,
        }
    }

    /// The SNAT pool: `snat_addresses`, or the private address alone.
    pub fn snat_pool(&self) -> Vec<Ipv4Addr> {
        if self.snat_addresses.is_empty() {
            vec![self.private_address]
        } else {
            self.snat_addresses.clone()
        }
    }

    pub(crate) fn check(&self, at: &FieldPath, problems: &mut Problems) {
        for (field, name) in [
            ("public_interface", &self.public_interface),
            ("private_interface", &self.private_interface),
        ] {
            if name.is_empty() {
                problems.push_with_hint(at.key(field), "must name an interface", "see `ip link`");
            }
        }
        if crate::is_unusable(self.private_address) {
            problems.push_with_hint(
                at.key("private_address"),
                format!("{} is not a usable unicast address", self.private_address),
                "use this node's address on the backend network",
            );
        }
        let pool = at.key("snat_addresses");
        if self.snat_addresses.len() > lb_common::MAX_SNAT_ADDRESSES {
            problems.push(
                pool.clone(),
                format!(
                    "has {} addresses; at most {} fit",
                    self.snat_addresses.len(),
                    lb_common::MAX_SNAT_ADDRESSES
                ),
            );
        }
        for (index, addr) in self.snat_addresses.iter().enumerate() {
            let here = pool.index(index, None);
            if crate::is_unusable(*addr) {
                problems.push_with_hint(
                    here,
                    format!("{addr} is not a usable unicast address"),
                    "use addresses of this node on the backend network",
                );
            } else if self.snat_addresses[..index].contains(addr) {
                problems.push_with_hint(
                    here,
                    format!("{addr} is listed twice"),
                    "list each address once",
                );
            }
        }
        if !self.state_dir.is_absolute() {
            problems.push_with_hint(
                at.key("state_dir"),
                format!("{:?} is not an absolute directory", self.state_dir),
                "write an absolute directory, e.g. \"/var/lib/lb-agent\" (a relative one would depend on where the agent was started)",
            );
        }
    }
}

/// `[conntrack]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Entries in each connection-tracking map (one per direction),
    /// 1024..=16777216.
    pub max_flows: MaxFlows,
    /// Idle timeout of a TCP connection before the backend has answered.
    #[serde(with = "crate::duration")]
    pub tcp_handshake_timeout: Duration,
    /// Idle timeout of an established TCP connection.
    #[serde(with = "crate::duration")]
    pub tcp_established_timeout: Duration,
    /// Idle timeout after a FIN or RST.
    #[serde(with = "crate::duration")]
    pub tcp_closing_timeout: Duration,
    /// Idle timeout of a UDP flow.
    #[serde(with = "crate::duration")]
    pub udp_timeout: Duration,
}

impl RestartOnly for ConntrackConfig {
    const RESTART_ONLY: &'static [(&'static str, &'static str)] =
        &[("max_flows", "the flow tables are sized when loading")];
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_flows: MaxFlows::default(),
            tcp_handshake_timeout: Duration::from_secs(30),
            tcp_established_timeout: Duration::from_secs(15 * 60),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
        }
    }
}

impl ConntrackConfig {
    pub(crate) fn check(&self, at: &FieldPath, problems: &mut Problems) {
        for (name, value) in [
            ("tcp_handshake_timeout", self.tcp_handshake_timeout),
            ("tcp_established_timeout", self.tcp_established_timeout),
            ("tcp_closing_timeout", self.tcp_closing_timeout),
            ("udp_timeout", self.udp_timeout),
        ] {
            if value.is_zero() {
                problems.push(at.key(name), "must be longer than zero");
            }
        }
        for (name, value) in [
            ("tcp_handshake_timeout", self.tcp_handshake_timeout),
            ("tcp_closing_timeout", self.tcp_closing_timeout),
        ] {
            if value > self.tcp_established_timeout {
                problems.push(
                    at.key(name),
                    format!(
                        "{} must not exceed tcp_established_timeout ({})",
                        crate::duration::format_duration(value),
                        crate::duration::format_duration(self.tcp_established_timeout)
                    ),
                );
            }
        }
    }
}

/// `[metrics]`: where `GET /metrics` is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port, e.g. "127.0.0.1:9650" (keep it off public
    /// networks: it tells backends' addresses and health).
    pub listen: SocketAddr,
}

impl MetricsConfig {
    pub(crate) fn check(&self, at: &FieldPath, problems: &mut Problems) {
        if self.listen.port() == 0 {
            problems.push_with_hint(
                at.key("listen"),
                format!(
                    "\"{}\": port 0 would listen on a random port nobody scrapes",
                    self.listen
                ),
                "give a fixed one, e.g. 9650",
            );
        }
    }
}
