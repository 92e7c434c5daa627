//! The lab's machines and the network contract of docs/lab.md: addresses,
//! nets, ports and SNAT pools. Tests and tools rely on every value here.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{Context as _, Result};

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

/// The HA pair's floating SNAT address (`vrrp.snat_address`): the VRRP
/// master holds it on `priv0` as /32 and sends to the web servers from
/// it, so their replies follow a failover; no node has it otherwise.
/// Every web server's nginx allows it.
pub const FLOATING_SNAT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);

/// A machine of the lab; its namespace is `<prefix>-<name>`. The lab state
/// file stores nodes by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_and_addresses() {
        for node in Node::ALL {
            assert_eq!(node.name().parse::<Node>().unwrap(), node);
            let json = serde_json::to_string(&node).unwrap();
            assert_eq!(json, format!("\"{node}\""));
        }
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
        assert!(!taken.contains(&FLOATING_SNAT) && !lb1.contains(&FLOATING_SNAT));
    }
}
