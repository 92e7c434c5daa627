//! Namespaces, bridges, veth pairs, addresses and sysctls of the lab.

use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{ns_name, Node, NET_PREFIX_LEN, VIP};
use crate::cmd;

/// One veth pair: `dev` in the node's namespace, `sw_dev` in `<P>-sw`
/// enslaved to `bridge`.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub node: Node,
    pub dev: &'static str,
    pub sw_dev: &'static str,
    pub bridge: &'static str,
    pub address: Ipv4Addr,
}

pub const BRIDGE_PUBLIC: &str = "br-pub";
pub const BRIDGE_PRIVATE: &str = "br-priv";

const fn link(
    node: Node,
    dev: &'static str,
    sw_dev: &'static str,
    bridge: &'static str,
    address: [u8; 4],
) -> Link {
    Link {
        node,
        dev,
        sw_dev,
        bridge,
        address: Ipv4Addr::new(address[0], address[1], address[2], address[3]),
    }
}

/// Every wire of the lab.
pub const LINKS: [Link; 8] = [
    link(
        Node::Client,
        "eth0",
        "client",
        BRIDGE_PUBLIC,
        [10, 100, 0, 10],
    ),
    link(
        Node::Lb1,
        "pub0",
        "lb1-pub",
        BRIDGE_PUBLIC,
        [10, 100, 0, 11],
    ),
    link(
        Node::Lb1,
        "priv0",
        "lb1-priv",
        BRIDGE_PRIVATE,
        [10, 200, 0, 11],
    ),
    link(
        Node::Lb2,
        "pub0",
        "lb2-pub",
        BRIDGE_PUBLIC,
        [10, 100, 0, 12],
    ),
    link(
        Node::Lb2,
        "priv0",
        "lb2-priv",
        BRIDGE_PRIVATE,
        [10, 200, 0, 12],
    ),
    link(Node::Web1, "eth0", "web1", BRIDGE_PRIVATE, [10, 200, 0, 21]),
    link(Node::Web2, "eth0", "web2", BRIDGE_PRIVATE, [10, 200, 0, 22]),
    link(Node::Web3, "eth0", "web3", BRIDGE_PRIVATE, [10, 200, 0, 23]),
];

/// `ip -n <ns> args...`, failing with its stderr.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    cmd::stdout_of(Command::new("ip").args(["-n", ns]).args(args)).map(drop)
}

/// Writes a sysctl inside `ns` (through /proc/sys, which shows the caller's
/// network namespace; no dependency on procps).
fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    cmd::stdout_of(
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!("echo {value} > {path}")),
    )
    .map(drop)
    .with_context(|| format!("sysctl {key}={value} in {ns}"))
}

/// Creates namespaces, bridges and veths, assigns addresses (the LB nodes'
/// SNAT pools too), disables TX checksum offload, sets the LB nodes'
/// sysctls and puts the VIP on lb1. With `pass_object` (native XDP) it
/// attaches that XDP_PASS program in native mode to the switch-side end of
/// every LB node's veth.
pub fn build(prefix: &str, static_vip: bool, pass_object: Option<&Path>) -> Result<()> {
    for node in Node::ALL {
        let ns = ns_name(prefix, node);
        cmd::stdout_of(Command::new("ip").args(["netns", "add", &ns]))?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        // IPv6 would only add router solicitations and MLD noise to the
        // program's counters; the lab is IPv4.
        for scope in ["all", "default"] {
            let _ = sysctl(&ns, &format!("net.ipv6.conf.{scope}.disable_ipv6"), "1");
        }
    }
    let sw = ns_name(prefix, Node::Sw);
    // With br_netfilter loaded (Docker loads it) every frame the switch
    // bridges also runs the iptables hooks: a few percent of the machine's
    // CPU under load that no real switch spends, and that the benchmarks
    // would charge to whichever balancer is measured. The setting is the
    // switch namespace's own (absent when the module is not loaded).
    for family in ["iptables", "ip6tables", "arptables"] {
        let _ = sysctl(&sw, &format!("net.bridge.bridge-nf-call-{family}"), "0");
    }
    for bridge in [BRIDGE_PUBLIC, BRIDGE_PRIVATE] {
        ip(&sw, &["link", "add", bridge, "type", "bridge"])?;
        ip(&sw, &["link", "set", bridge, "up"])?;
    }
    for l in &LINKS {
        let ns = ns_name(prefix, l.node);
        ip(
            &sw,
            &[
                "link", "add", l.sw_dev, "type", "veth", "peer", "name", l.dev, "netns", &ns,
            ],
        )?;
        ip(&sw, &["link", "set", l.sw_dev, "master", l.bridge, "up"])?;
        let cidr = format!("{}/{NET_PREFIX_LEN}", l.address);
        ip(&ns, &["addr", "add", &cidr, "dev", l.dev])?;
        ip(&ns, &["link", "set", l.dev, "up"])?;
        // An XDP program rewrites packets in flight; with CHECKSUM_PARTIAL
        // (TX offload) they would leave with half-computed checksums.
        for (ns, dev) in [(&sw, l.sw_dev), (&ns, l.dev)] {
            cmd::stdout_of(
                Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]),
            )
            .with_context(|| format!("ethtool -K {dev} tx off in {ns}"))?;
        }
        if let Some(object) = pass_object.filter(|_| l.node.is_lb()) {
            // A native XDP_TX or XDP_REDIRECT out of the LB node's end is
            // only delivered if this end runs an XDP program; the bridge
            // then forwards as usual, so no other end needs one.
            let object = object.to_string_lossy();
            ip(
                &sw,
                &[
                    "link", "set", "dev", l.sw_dev, "xdpdrv", "obj", &object, "sec", "xdp",
                ],
            )
            .with_context(|| format!("attaching {object} to {} in {sw}", l.sw_dev))?;
        }
    }
    for node in Node::LBS {
        let ns = ns_name(prefix, node);
        for address in node.snat_extra() {
            ip(
                &ns,
                &["addr", "add", &format!("{address}/32"), "dev", "priv0"],
            )?;
        }
        sysctl(&ns, "net.ipv4.ip_forward", "0")?;
        for scope in ["all", "default", "pub0", "priv0"] {
            sysctl(&ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        }
    }
    // Without the HA pair lb1 holds the VIP statically; with it, the
    // VRRP master adds it.
    if static_vip {
        let vip = format!("{VIP}/{NET_PREFIX_LEN}");
        ip(
            &ns_name(prefix, Node::Lb1),
            &["addr", "add", &vip, "dev", "pub0"],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_are_unique_per_namespace() {
        let mut per_ns: Vec<(Node, &str)> = Vec::new();
        for l in &LINKS {
            per_ns.push((l.node, l.dev));
            per_ns.push((Node::Sw, l.sw_dev));
        }
        per_ns.push((Node::Sw, BRIDGE_PUBLIC));
        per_ns.push((Node::Sw, BRIDGE_PRIVATE));
        for (i, (node, name)) in per_ns.iter().enumerate() {
            assert!(name.len() <= 15, "{name} too long");
            assert!(
                !per_ns[i + 1..].contains(&(*node, name)),
                "{name} twice in {node}"
            );
        }
        for node in Node::ALL {
            if node == Node::Sw {
                continue;
            }
            for l in LINKS.iter().filter(|l| l.node == node) {
                let expected = if l.bridge == BRIDGE_PUBLIC {
                    node.public_address()
                } else {
                    node.private_address()
                };
                assert_eq!(Some(l.address), expected, "{node} {}", l.dev);
            }
        }
    }
}
