//! Keeps the next hops of backends resolved in the kernel's neighbour table,
//! so `bpf_fib_lookup` in the XDP program finds a MAC for the first packet
//! of a flow instead of failing with NO_NEIGH (which drops it: a rewritten
//! packet cannot be handed to the stack, whose source is now a local address).
//!
//! Resolution is asked of the kernel itself (RTM_NEWNEIGH with NTF_USE, as a
//! packet would trigger it): the agent sends no traffic of its own.

use std::{collections::HashMap, net::Ipv4Addr, sync::Mutex};

use futures::TryStreamExt;
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{debug, info, warn};

/// Errors of the neighbour keeper.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A netlink request failed.
    #[error("netlink {what} for {addr}: {source}")]
    Netlink {
        what: &'static str,
        addr: Ipv4Addr,
        #[source]
        source: rtnetlink::Error,
    },
    /// No route leads to the address.
    #[error(
        "no route to {addr}: the XDP program cannot forward to it (check `ip route get {addr}`)"
    )]
    NoRoute { addr: Ipv4Addr },
}

/// What was found for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The next hop has a usable MAC.
    Resolved,
    /// Resolution was asked for; check again shortly.
    Requested,
}

pub struct NeighborKeeper {
    handle: Handle,
    unreachable: Mutex<Unreachable>,
}

/// Destinations without a next hop, and why: each is logged when it
/// becomes unreachable (or the reason changes) and when it recovers, not
/// on every upkeep pass.
#[derive(Debug, Default)]
struct Unreachable {
    why: HashMap<Ipv4Addr, String>,
}

/// Bounds the record: addresses come from the config, the CLI and the
/// data path's misses.
const MAX_UNREACHABLE: usize = 4096;

impl Unreachable {
    /// Records `addr` as unreachable; `true` when that is news.
    fn failed(&mut self, addr: Ipv4Addr, why: &str) -> bool {
        if self.why.get(&addr).is_some_and(|w| w == why) {
            return false;
        }
        if self.why.len() >= MAX_UNREACHABLE && !self.why.contains_key(&addr) {
            self.why.clear();
        }
        self.why.insert(addr, why.to_string());
        true
    }

    /// Records `addr` as reachable; `true` when it was not before.
    fn recovered(&mut self, addr: Ipv4Addr) -> bool {
        self.why.remove(&addr).is_some()
    }
}

fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

impl NeighborKeeper {
    /// Opens a netlink connection driven by a background task.
    pub fn new() -> Result<Self, NeighborError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            unreachable: Mutex::default(),
        })
    }

    fn record(&self, f: impl FnOnce(&mut Unreachable) -> bool) -> bool {
        match self.unreachable.lock() {
            Ok(mut unreachable) => f(&mut unreachable),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Next hop (gateway, or the address itself when on-link) and output interface.
    async fn next_hop(&self, addr: Ipv4Addr) -> Result<(Ipv4Addr, u32), NeighborError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .build();
        let mut routes = self.handle.route().get(request).execute();
        let route = routes
            .try_next()
            .await
            .map_err(|source| NeighborError::Netlink {
                what: "route get",
                addr,
                source,
            })?
            .ok_or(NeighborError::NoRoute { addr })?;
        let mut hop = addr;
        let mut oif = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => hop = *gateway,
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        Ok((hop, oif.ok_or(NeighborError::NoRoute { addr })?))
    }

    /// Current neighbour states, keyed by (ifindex, address).
    async fn table(&self) -> Result<HashMap<(u32, Ipv4Addr), NeighbourState>, NeighborError> {
        let mut entries = HashMap::new();
        let mut dump = self.handle.neighbours().get().execute();
        while let Some(message) =
            dump.try_next()
                .await
                .map_err(|source| NeighborError::Netlink {
                    what: "neighbour dump",
                    addr: Ipv4Addr::UNSPECIFIED,
                    source,
                })?
        {
            for attribute in &message.attributes {
                if let NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) = attribute {
                    entries.insert((message.header.ifindex, *addr), message.header.state);
                }
            }
        }
        Ok(entries)
    }

    /// Makes sure the next hops towards `destinations` are resolved or being resolved.
    pub async fn ensure(
        &self,
        destinations: &[Ipv4Addr],
    ) -> Result<Vec<(Ipv4Addr, Resolution)>, NeighborError> {
        let table = self.table().await?;
        let mut results = Vec::with_capacity(destinations.len());
        for &addr in destinations {
            let (hop, oif) = match self.next_hop(addr).await {
                Ok(found) => {
                    if self.record(|u| u.recovered(addr)) {
                        info!(%addr, "next hop found again");
                    }
                    found
                }
                Err(error) => {
                    let why = error.to_string();
                    if self.record(|u| u.failed(addr, &why)) {
                        warn!(%addr, %error, "cannot find the next hop (logged again when it changes)");
                    }
                    continue;
                }
            };
            if table.get(&(oif, hop)).copied().is_some_and(usable) {
                results.push((addr, Resolution::Resolved));
                continue;
            }
            let mut request = self
                .handle
                .neighbours()
                .add(oif, hop.into())
                .state(NeighbourState::None)
                .flags(NeighbourFlags::Use)
                .replace();
            request.message_mut().header.state = NeighbourState::None;
            match request.execute().await {
                Ok(()) => {
                    debug!(%addr, %hop, oif, "asked the kernel to resolve the next hop");
                    results.push((addr, Resolution::Requested));
                }
                Err(source) => {
                    return Err(NeighborError::Netlink {
                        what: "neighbour use",
                        addr: hop,
                        source,
                    })
                }
            }
        }
        Ok(results)
    }

    /// Resolves `destinations`, waiting up to `rounds` × 100 ms for answers.
    pub async fn resolve_now(&self, destinations: &[Ipv4Addr], rounds: u32) {
        for _ in 0..rounds {
            match self.ensure(destinations).await {
                Ok(results) if results.iter().all(|(_, r)| *r == Resolution::Resolved) => {
                    info!(count = destinations.len(), "backend next hops resolved");
                    return;
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "neighbour resolution"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        warn!("some backend next hops are still unresolved; their first packets may be dropped (counted as drop_fib_no_neigh)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_next_hop_is_logged_on_change_only() {
        let mut record = Unreachable::default();
        let addr = Ipv4Addr::new(192, 0, 2, 55);
        let why = "no route to 192.0.2.55";
        assert!(record.failed(addr, why), "news the first time");
        for _ in 0..100 {
            assert!(!record.failed(addr, why), "not again every second");
        }
        assert!(
            record.failed(addr, "netlink route get failed"),
            "a new reason"
        );
        assert!(record.recovered(addr), "recovery is news");
        assert!(!record.recovered(addr), "once");
        assert!(record.failed(addr, why), "and failing again too");
    }

    #[test]
    fn the_record_stays_bounded() {
        let mut record = Unreachable::default();
        for n in 0..(MAX_UNREACHABLE as u32 * 3) {
            record.failed(Ipv4Addr::from(n), "no route");
        }
        assert!(record.why.len() <= MAX_UNREACHABLE);
    }
}
