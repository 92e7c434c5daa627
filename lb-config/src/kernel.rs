//! What the config means for the XDP program: its node-wide settings, and
//! whether the SNAT pool carries the rates the services state.

use std::time::Duration;

use lb_common::Settings;

use crate::{problem::Problem, Config, VrrpConfig};

/// How long a backend that closed a connection first keeps its (source
/// address, source port) pair in TIME_WAIT: fixed at 60 s on Linux.
pub const BACKEND_TIME_WAIT: Duration = Duration::from_secs(60);

impl Config {
    /// The SNAT pool: the pair's shared addresses (`vrrp.snat_address`
    /// and `snat_pool`, the same on both nodes, so that a flow's SNAT index
    /// means the same address on either), else `node.snat_addresses`, else
    /// the private address alone.
    pub fn snat_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        let floating = self.floating_snat_addresses();
        if floating.is_empty() {
            self.node.snat_pool()
        } else {
            floating
        }
    }

    /// The shared SNAT addresses the VRRP master holds on the private
    /// interface; empty without `vrrp.snat_address`.
    pub fn floating_snat_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        self.vrrp
            .as_ref()
            .map(VrrpConfig::floating_snat)
            .unwrap_or_default()
    }

    /// The node-wide settings the XDP program reads, as far as the config
    /// decides them (interfaces' MACs, the clock and the half-open share
    /// are the agent's to fill in).
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
            port_min: self.node.port_range.first(),
            port_max: self.node.port_range.last(),
            tcp_handshake_ns: ns(self.conntrack.tcp_handshake_timeout),
            tcp_established_ns: ns(self.conntrack.tcp_established_timeout),
            tcp_closing_ns: ns(self.conntrack.tcp_closing_timeout),
            udp_ns: ns(self.conntrack.udp_timeout),
            ready: 1,
            half_open_per_cpu: 0,
            public_mac: [0; 6],
            private_mac: [0; 6],
            _pad_mac: [0; 4],
            tick_ns: 0,
            tick_offset_ns: 0,
            sync_events: u32::from(self.sync.is_some()),
            _pad_sync: 0,
            flow_cache_ttl_ns: lb_common::flow_cache_ttl_ns(ns(self
                .conntrack
                .tcp_established_timeout)),
            agent_silence_ns: self
                .vrrp
                .as_ref()
                .map_or(0, |vrrp| ns(vrrp.agent_silence())),
            vrrp_vrid: self
                .vrrp
                .as_ref()
                .map_or(0, |vrrp| u32::from(vrrp.vrid.get())),
            snat_floating: u32::from(!self.floating_snat_addresses().is_empty()),
        }
    }

    /// Services whose `expected_rate` the SNAT pool cannot carry with
    /// `nat_ports` usable ports (this node's slice of them): a NAT source towards a backend can be
    /// reused only after the backend's TIME_WAIT, so one backend takes at
    /// most `addresses x ports / 60 s` new connections per second.
    pub fn capacity_warnings(&self, nat_ports: u32) -> Vec<Problem> {
        let addresses = self.snat_addresses().len() as u64;
        let sources = addresses * u64::from(nat_ports);
        let pool = if self.floating_snat_addresses().is_empty() {
            "node.snat_addresses"
        } else {
            "vrrp.snat_pool"
        };
        let per_backend = sources / BACKEND_TIME_WAIT.as_secs();
        let mut warnings = Vec::new();
        for (index, service) in self.services.iter().enumerate() {
            let Some(rate) = service.expected_rate else {
                continue;
            };
            let total_weight: u64 = service
                .backends
                .iter()
                .map(|b| u64::from(b.weight.get()))
                .sum();
            let Some(busiest) = service.backends.iter().max_by_key(|b| b.weight) else {
                continue;
            };
            if total_weight == 0 {
                continue;
            }
            let share = u64::from(rate) * u64::from(busiest.weight.get()) / total_weight;
            if share > per_backend {
                warnings.push(
                    Problem::new(
                        service.path(index).key("expected_rate"),
                        format!(
                            "{rate} new connections/s gives backend {}:{} (weight {} of {total_weight}) {share}/s, \
                             but {addresses} SNAT address(es) x {nat_ports} NAT ports = {sources} sources carry {per_backend}/s per backend \
                             against its {} s TIME_WAIT",
                            busiest.address,
                            busiest.port_or(service.port),
                            busiest.weight,
                            BACKEND_TIME_WAIT.as_secs(),
                        ),
                    )
                    .with_hint(format!(
                        "add addresses to {pool} (each adds {}/s) or widen node.port_range",
                        u64::from(nat_ports) / BACKEND_TIME_WAIT.as_secs()
                    )),
                );
            }
        }
        warnings
    }

    /// The memory of the reply tables this config makes the program
    /// allocate: one per backend endpoint (address, port, protocol), with
    /// an entry for every port of every SNAT address.
    pub fn reply_table_bytes(&self) -> u64 {
        let endpoints: std::collections::HashSet<_> = self
            .services
            .iter()
            .flat_map(|service| {
                service
                    .backends
                    .iter()
                    .map(move |b| (b.address, b.port_or(service.port), service.protocol))
            })
            .collect();
        let addresses = self.snat_addresses().len() as u32;
        endpoints.len() as u64
            * u64::from(lb_common::reply_table_len(addresses))
            * std::mem::size_of::<lb_common::ReplyValue>() as u64
    }

    /// A warning when the reply tables would take more than a quarter of
    /// `memory_bytes` (the node's memory).
    pub fn reply_memory_warning(&self, memory_bytes: u64) -> Option<Problem> {
        let bytes = self.reply_table_bytes();
        if bytes <= memory_bytes / 4 {
            return None;
        }
        let mib = |b: u64| b / (1 << 20);
        let (section, field) = if self.floating_snat_addresses().is_empty() {
            ("node", "snat_addresses")
        } else {
            ("vrrp", "snat_pool")
        };
        Some(
            Problem::new(
                crate::problem::FieldPath::root().key(section).key(field),
                format!(
                    "the reply tables of these backends take {} MiB of the node's {} MiB \
                     ({} MiB per SNAT address and backend endpoint)",
                    mib(bytes),
                    mib(memory_bytes),
                    mib(u64::from(lb_common::reply_table_len(1))
                        * std::mem::size_of::<lb_common::ReplyValue>() as u64),
                ),
            )
            .with_hint(format!(
                "use fewer addresses in {section}.{field} or fewer backend endpoints, or give the node more memory"
            )),
        )
    }
}
