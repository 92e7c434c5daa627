//! `[vrrp]`: one virtual router, keepalived-compatible, and its track
//! scripts.

use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    bounded::{GarpCount, Priority, RiseFall, TrackWeight, Vrid, VrrpVersion},
    floating_ip::FloatingIpConfig,
    problem::{Element, FieldPath, Problems},
    NodeConfig, RestartOnly,
};

/// keepalived's own limit for `preempt_delay` (1,000 s).
pub const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);
/// Longest a track script may run: tracking decides failovers, and a script
/// that needs longer than this tells too late that the node is unfit.
pub const MAX_TRACK_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `auth_pass` VRRPv2 carries (keepalived truncates longer ones).
pub const MAX_AUTH_PASS: usize = 8;

/// `[vrrp]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// 2 (RFC 3768) or 3 (RFC 5798), as keepalived's `vrrp_version`.
    #[serde(default)]
    pub version: VrrpVersion,
    /// `virtual_router_id`, 1-255; the same on both nodes.
    pub vrid: Vrid,
    /// `priority`, 1-255 (255 = address owner); the higher wins.
    pub priority: Priority,
    /// `advert_int`: whole seconds with v2, centiseconds resolution with v3.
    #[serde(default = "default_advert_int", with = "crate::duration")]
    pub advert_int: Duration,
    /// Interface the advertisements use (default: node.private_interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `unicast_src_ip` (default: node.private_address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unicast_src: Option<Ipv4Addr>,
    /// `unicast_peer` addresses; empty = multicast to 224.0.0.18. Adverts
    /// from any other source are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unicast_peers: Vec<Ipv4Addr>,
    /// v2 `auth_type PASS` password (up to 8 bytes); checked on receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_pass: Option<String>,
    /// Take over from a lower-priority master (keepalived's default;
    /// false = `nopreempt`).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// `preempt_delay`, at most 1000s.
    #[serde(default, with = "crate::duration")]
    pub preempt_delay: Duration,
    /// The floating addresses (default: every service VIP), added to
    /// node.public_interface as /32 while master.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_addresses: Vec<Ipv4Addr>,
    /// Gratuitous ARPs sent on becoming master (keepalived's
    /// `garp_master_repeat`, 0..=100), `garp_interval` apart.
    #[serde(default)]
    pub garp_count: GarpCount,
    #[serde(default = "default_garp_interval", with = "crate::duration")]
    pub garp_interval: Duration,
    /// While master, announce the floating addresses again this often
    /// (keepalived's `vrrp_garp_master_refresh`; "0s": never), and check
    /// that no other node answers ARP for them: a neighbour that bound an
    /// address to a node that lost it (a stale cache, a dead agent's node)
    /// is corrected within this time, or at once when the check finds a
    /// second owner.
    #[serde(default = "default_garp_refresh", with = "crate::duration")]
    pub garp_refresh: Duration,
    /// Hooks with keepalived's convention `TYPE NAME STATE PRIORITY`, run
    /// without blocking the election, killed after `notify_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_stop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(default = "default_notify_timeout", with = "crate::duration")]
    pub notify_timeout: Duration,
    /// FAULT while one of these services has no backend up (health checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_services: Vec<String>,
    /// FAULT while one of these interfaces is down (default: the node's
    /// public and private interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_interfaces: Option<Vec<String>>,
    /// FAULT while the XDP program is not attached to the node's interfaces.
    #[serde(default = "default_true")]
    pub track_program: bool,
    /// keepalived's `vrrp_script` + `track_script` (`[[vrrp.track_script]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_script: Vec<TrackScript>,
    /// A private address the pair shares as the source towards backends
    /// (the floating SNAT address): the master holds it on
    /// node.private_interface, so after a failover the backends' replies
    /// reach the new master and established flows can carry on there.
    /// Replaces node.snat_addresses; put it in the backends' allow lists.
    /// Each node hands out its own half of the NAT ports (the node with
    /// the lower private address the lower half), so the two never use the
    /// same source. Without it (default) each node sends from its own
    /// addresses and established flows cannot survive a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_address: Option<Ipv4Addr>,
    /// Further shared SNAT addresses after `snat_address` (needs it), held
    /// and spread over like it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat_pool: Vec<Ipv4Addr>,
    /// Where the floating IP lives while this node is master
    /// (`[vrrp.floating_ip]`; default the `local` provider).
    #[serde(default)]
    pub floating_ip: FloatingIpConfig,
}

impl RestartOnly for VrrpConfig {
    const RESTART_ONLY: &'static [(&'static str, &'static str)] = &[
        (
            "snat_address",
            "live flows are NATed to it and hold ports of this node's slice",
        ),
        ("snat_pool", "live flows are NATed to its addresses"),
    ];
}

fn default_advert_int() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_garp_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_garp_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}

impl VrrpConfig {
    /// How long the agent may be silent before its node's data path stops
    /// answering ARP for the floating addresses (while a peer is master):
    /// four advert intervals, past any peer's master-down interval (three
    /// intervals and a skew of less than one), so a live agent that is
    /// merely late never loses them.
    pub fn agent_silence(&self) -> Duration {
        self.advert_int * 4
    }

    /// Virtual router `vrid` at `priority`, keepalived's defaults for the rest.
    pub fn new(vrid: Vrid, priority: Priority) -> Self {
        Self {
            version: VrrpVersion::default(),
            vrid,
            priority,
            advert_int: default_advert_int(),
            interface: None,
            unicast_src: None,
            unicast_peers: Vec::new(),
            auth_pass: None,
            preempt: true,
            preempt_delay: Duration::ZERO,
            virtual_addresses: Vec::new(),
            garp_count: GarpCount::default(),
            garp_interval: default_garp_interval(),
            garp_refresh: default_garp_refresh(),
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify_stop: None,
            notify: None,
            notify_timeout: default_notify_timeout(),
            track_services: Vec::new(),
            track_interfaces: None,
            track_program: true,
            track_script: Vec::new(),
            snat_address: None,
            snat_pool: Vec::new(),
            floating_ip: FloatingIpConfig::default(),
        }
    }

    /// The shared SNAT addresses, `snat_address` first; empty without it.
    pub fn floating_snat(&self) -> Vec<Ipv4Addr> {
        self.snat_address
            .iter()
            .chain(
                self.snat_pool
                    .iter()
                    .filter(|_| self.snat_address.is_some()),
            )
            .copied()
            .collect()
    }

    pub(crate) fn check(&self, at: &FieldPath, own_address: Ipv4Addr, problems: &mut Problems) {
        self.check_advert_int(at, problems);
        if let Some(pass) = &self.auth_pass {
            if self.version == VrrpVersion::V3 {
                problems.push_with_hint(
                    at.key("auth_pass"),
                    "VRRPv3 has no authentication",
                    "remove it or use version = 2",
                );
            }
            if pass.is_empty() || pass.len() > MAX_AUTH_PASS {
                problems.push(
                    at.key("auth_pass"),
                    format!("must be 1-{MAX_AUTH_PASS} bytes (keepalived truncates longer ones)"),
                );
            }
        }
        for (index, script) in self.track_script.iter().enumerate() {
            script.check(&script.path(at, index), problems);
        }
        if self.preempt_delay > MAX_PREEMPT_DELAY {
            problems.push(
                at.key("preempt_delay"),
                format!(
                    "{}: at most {}s, as keepalived allows",
                    crate::duration::format_duration(self.preempt_delay),
                    MAX_PREEMPT_DELAY.as_secs()
                ),
            );
        }
        self.floating_ip.check(&at.key("floating_ip"), problems);
        let src = self.unicast_src.unwrap_or(own_address);
        if let Some(index) = self.unicast_peers.iter().position(|p| *p == src) {
            problems.push(
                at.key("unicast_peers").index(index, None),
                format!("{src} is this node's own address"),
            );
        }
    }

    /// The shared SNAT addresses against the node and the VIPs: none may
    /// be an address a node or a service already has.
    pub(crate) fn check_snat(
        &self,
        at: &FieldPath,
        node: &NodeConfig,
        vips: &[Ipv4Addr],
        problems: &mut Problems,
    ) {
        let Some(first) = self.snat_address else {
            if !self.snat_pool.is_empty() {
                problems.push_with_hint(
                    at.key("snat_pool"),
                    "needs vrrp.snat_address",
                    "set snat_address, the first shared address",
                );
            }
            return;
        };
        let here = at.key("snat_address");
        if !node.snat_addresses.is_empty() {
            problems.push_with_hint(
                FieldPath::root().key("node").key("snat_addresses"),
                format!("the floating SNAT address {first} replaces this node's own pool"),
                "remove node.snat_addresses (list shared addresses in vrrp.snat_pool)",
            );
        }
        if self.unicast_peers.is_empty() {
            problems.push_with_hint(
                here.clone(),
                "needs vrrp.unicast_peers: each node's slice of the NAT ports is decided by comparing its private address with its peer's",
                "list the peer's private address in unicast_peers",
            );
        }
        let all = self.floating_snat();
        if all.len() > lb_common::MAX_SNAT_ADDRESSES {
            problems.push(
                at.key("snat_pool"),
                format!(
                    "snat_address and snat_pool are {} addresses; at most {} fit",
                    all.len(),
                    lb_common::MAX_SNAT_ADDRESSES
                ),
            );
        }
        for (index, addr) in all.iter().enumerate() {
            let path = match index {
                0 => here.clone(),
                n => at.key("snat_pool").index(n - 1, None),
            };
            if let Some((message, hint)) = self.snat_conflict(*addr, &all[..index], node, vips) {
                problems.push_with_hint(path, format!("{addr} {message}"), hint);
            }
        }
    }

    /// Why `addr` cannot be a shared SNAT address (`earlier` are the ones
    /// before it), with the fix.
    fn snat_conflict(
        &self,
        addr: Ipv4Addr,
        earlier: &[Ipv4Addr],
        node: &NodeConfig,
        vips: &[Ipv4Addr],
    ) -> Option<(&'static str, &'static str)> {
        const SHARED: &str = "give the pair an address of the private network no node has";
        if crate::is_unusable(addr) {
            Some(("is not a usable unicast address", SHARED))
        } else if addr == node.private_address || self.unicast_src == Some(addr) {
            // The backup would lose its own address with it.
            Some(("is this node's own address", SHARED))
        } else if self.unicast_peers.contains(&addr) {
            Some(("is the peer's address (vrrp.unicast_peers)", SHARED))
        } else if vips.contains(&addr) || self.virtual_addresses.contains(&addr) {
            Some(("is a VIP of this balancer", SHARED))
        } else if earlier.contains(&addr) {
            Some(("is listed twice", "list each address once"))
        } else {
            None
        }
    }

    fn check_advert_int(&self, at: &FieldPath, problems: &mut Problems) {
        let int = self.advert_int;
        let shown = crate::duration::format_duration(int);
        match self.version {
            VrrpVersion::V2 if int.subsec_nanos() != 0 || !(1..=255).contains(&int.as_secs()) => {
                problems.push_with_hint(
                    at.key("advert_int"),
                    format!("{shown}: VRRPv2 carries whole seconds 1..=255"),
                    "use version = 3 for shorter",
                );
            }
            VrrpVersion::V3
                if !(1..=4095).contains(&(int.as_millis() / 10))
                    || !int.as_millis().is_multiple_of(10) =>
            {
                problems.push(
                    at.key("advert_int"),
                    format!("{shown}: VRRPv3 carries 10 ms steps from 10 ms to 40.95 s"),
                );
            }
            _ => {}
        }
    }
}

/// `[[vrrp.track_script]]`, with keepalived's `vrrp_script` semantics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackScript {
    /// Shown in logs and status.
    pub name: String,
    /// Run by /bin/sh -c; exit 0 = success.
    pub command: String,
    #[serde(default = "default_script_interval", with = "crate::duration")]
    pub interval: Duration,
    #[serde(default = "default_script_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// 0: FAULT while failing. Positive: added to the priority while it
    /// succeeds. Negative: added (lowering it) while it fails. -253..=253.
    #[serde(default)]
    pub weight: TrackWeight,
    #[serde(default)]
    pub rise: RiseFall,
    #[serde(default)]
    pub fall: RiseFall,
}

fn default_script_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_script_timeout() -> Duration {
    Duration::from_secs(1)
}

impl TrackScript {
    /// Script `name` running `command` with keepalived's defaults.
    pub fn new(name: &str, command: &str) -> Self {
        Self {
            name: name.to_string(),
            command: command.to_string(),
            interval: default_script_interval(),
            timeout: default_script_timeout(),
            weight: TrackWeight::default(),
            rise: RiseFall::default(),
            fall: RiseFall::default(),
        }
    }

    fn path(&self, vrrp: &FieldPath, index: usize) -> FieldPath {
        vrrp.key("track_script")
            .element(index, Element::Named(&self.name))
    }

    fn check(&self, at: &FieldPath, problems: &mut Problems) {
        if self.command.trim().is_empty() {
            problems.push(at.key("command"), "is empty");
        }
        if self.interval.is_zero() {
            problems.push(at.key("interval"), "must be longer than zero");
        }
        if self.timeout.is_zero()
            || self.timeout > self.interval
            || self.timeout > MAX_TRACK_SCRIPT_TIMEOUT
        {
            problems.push(
                at.key("timeout"),
                format!(
                    "{} must be longer than zero, at most the interval ({}) and at most {}s",
                    crate::duration::format_duration(self.timeout),
                    crate::duration::format_duration(self.interval),
                    MAX_TRACK_SCRIPT_TIMEOUT.as_secs()
                ),
            );
        }
    }
}
