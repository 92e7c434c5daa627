//! The `local` provider: adds the floating addresses to the client-facing
//! interface with rtnetlink and announces them with gratuitous ARPs; it
//! removes them on leaving MASTER, and at start (a crashed earlier run may
//! have left them) once another master is heard.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, State as OperState},
};
use rtnetlink::Handle;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, SockRef, Socket, Type};
use tracing::{info, warn};

use super::FloatingIpError;

/// The `local` provider.
pub struct LocalProvider {
    handle: Handle,
    interface: String,
    ifindex: u32,
    addresses: Vec<Ipv4Addr>,
    garp: Garp,
    /// When the addresses were last announced again and checked.
    refreshed: Option<Instant>,
    /// Address changes made and failed, for status and metrics.
    ops: u64,
    failures: u64,
    /// Times another node was found answering ARP for our addresses.
    second_owners: u64,
    /// The link state last seen while holding, to announce again after a
    /// flap (switches and neighbours forget while the link is down).
    link_was_up: Option<bool>,
}

const ETH_P_ARP: u16 = 0x0806;

/// How the floating addresses are announced: `count` gratuitous ARPs
/// `interval` apart on taking them, then one round every `refresh` while
/// master, each with a check for a second owner (`Duration::ZERO`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garp {
    pub count: u32,
    pub interval: Duration,
    pub refresh: Duration,
}

/// How long the check waits for another node's answer.
const SECOND_OWNER_WAIT: Duration = Duration::from_millis(150);

/// An ARP request from `mac`/`sender` asking who has `target`, broadcast.
pub fn arp_request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&sender.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// A gratuitous ARP request for `addr` from `mac` (who-has addr tell addr).
pub fn garp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    arp_request(mac, addr, addr)
}

/// An address change that failed only because it had been made already
/// (by a crashed earlier run, or by a reconcile just before) reached what
/// was wanted: not a failure.
fn already_done(result: Result<(), rtnetlink::Error>, errno: i32) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -errno => Ok(()),
        other => other,
    }
}

impl LocalProvider {
    pub fn new(
        interface: &str,
        addresses: Vec<Ipv4Addr>,
        garp: Garp,
    ) -> Result<Self, FloatingIpError> {
        let ifindex = crate::dataplane::loader::interface_index(interface)
            .ok_or_else(|| FloatingIpError::NoInterface(interface.to_string()))?;
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            interface: interface.to_string(),
            ifindex,
            addresses,
            garp,
            refreshed: None,
            ops: 0,
            failures: 0,
            second_owners: 0,
            link_was_up: None,
        })
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.ops, self.failures)
    }

    /// Times another node was found answering ARP for our addresses.
    pub fn second_owners(&self) -> u64 {
        self.second_owners
    }

    /// Counts one address change and turns its failure into an error that
    /// says what was being done.
    fn record(
        &mut self,
        action: &'static str,
        addr: Ipv4Addr,
        result: Result<(), rtnetlink::Error>,
    ) -> Result<(), FloatingIpError> {
        self.ops += 1;
        result.map_err(|source| {
            self.failures += 1;
            FloatingIpError::Address {
                action,
                addr,
                interface: self.interface.clone(),
                source,
            }
        })
    }

    /// While master: re-adds an address that went missing (then announces
    /// it), and announces again when the link came back up.
    pub async fn reconcile(&mut self) -> Result<(), FloatingIpError> {
        let link_up = self.link_up().await;
        let flapped = self.link_was_up == Some(false) && link_up == Some(true);
        self.link_was_up = link_up;
        let held = self.held().await;
        if held.len() < self.addresses.len() {
            warn!(interface = %self.interface, "a floating address went missing while master: adding it again");
            return self.acquire().await;
        }
        if flapped {
            info!(interface = %self.interface, "link up again: announcing the floating IP");
            self.announce().await;
        }
        let due = self
            .refreshed
            .is_none_or(|at| at.elapsed() >= self.garp.refresh);
        if !self.garp.refresh.is_zero() && due {
            self.refresh().await;
        }
        Ok(())
    }

    /// Announces the addresses once more (a neighbour whose binding went
    /// stale learns it again) and asks whether another node answers ARP
    /// for them (a node whose agent died keeps its addresses, and its
    /// kernel answers): if so, announces them at once in full.
    async fn refresh(&mut self) {
        self.refreshed = Some(Instant::now());
        let Some(mac) = self.mac().await else {
            return;
        };
        let (ifindex, addresses) = (self.ifindex, self.addresses.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let socket = packet_socket()?;
            for addr in &addresses {
                send_frame(&socket, ifindex, &garp_frame(mac, *addr))?;
            }
            check_second_owner(&socket, ifindex, mac, &addresses, SECOND_OWNER_WAIT)
        })
        .await;
        let owner = match checked {
            Ok(Ok(owner)) => owner,
            Ok(Err(error)) => {
                warn!(%error, interface = %self.interface, "checking for another owner of the floating addresses");
                None
            }
            Err(_) => None,
        };
        if let Some((addr, other)) = owner {
            self.second_owners += 1;
            if self.second_owners == 1 {
                warn!(addr = %addr, mac = %format_mac(&other), interface = %self.interface,
                    "another node answers ARP for a floating address this master holds (a node whose agent died?); \
                     announcing it again now, and at every garp_refresh while it lasts (counted in status, logged once)");
            }
            self.announce().await;
        }
    }

    pub fn addresses(&self) -> &[Ipv4Addr] {
        &self.addresses
    }

    /// Addresses of ours currently on the interface.
    pub async fn held(&self) -> Vec<Ipv4Addr> {
        let mut held = Vec::new();
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute();
        while let Ok(Some(message)) = dump.try_next().await {
            for attribute in &message.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a))
                | AddressAttribute::Address(IpAddr::V4(a)) = attribute
                {
                    if self.addresses.contains(a) && !held.contains(a) {
                        held.push(*a);
                    }
                }
            }
        }
        held
    }

    /// Adds the addresses (those missing) and sends gratuitous ARPs.
    pub async fn acquire(&mut self) -> Result<(), FloatingIpError> {
        let held = self.held().await;
        for addr in self.addresses.clone() {
            if held.contains(&addr) {
                continue;
            }
            let added = self
                .handle
                .address()
                .add(self.ifindex, IpAddr::V4(addr), 32)
                .execute()
                .await;
            self.record("adding", addr, already_done(added, libc::EEXIST))?;
            info!(addr = %addr, interface = %self.interface, "floating IP added");
        }
        self.link_was_up = self.link_up().await;
        self.announce().await;
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Sends `garp_count` gratuitous ARPs per address, `garp_interval`
    /// apart, in the background (the election must not wait for them).
    pub async fn announce(&self) {
        let Some(mac) = self.mac().await else {
            warn!(interface = %self.interface, "no MAC address: cannot send gratuitous ARPs");
            return;
        };
        let (ifindex, addresses) = (self.ifindex, self.addresses.clone());
        let (count, interval) = (self.garp.count, self.garp.interval);
        tokio::spawn(async move {
            let socket = match packet_socket() {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "cannot open a packet socket for gratuitous ARPs");
                    return;
                }
            };
            for round in 0..count {
                if round > 0 {
                    tokio::time::sleep(interval).await;
                }
                for addr in &addresses {
                    if let Err(error) = send_frame(&socket, ifindex, &garp_frame(mac, *addr)) {
                        warn!(%error, addr = %addr, "gratuitous ARP");
                    }
                }
            }
        });
    }

    /// Removes the addresses from the interface.
    pub async fn release(&mut self) -> Result<(), FloatingIpError> {
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute();
        let mut doomed = Vec::new();
        while let Ok(Some(message)) = dump.try_next().await {
            let ours = message.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if self.addresses.contains(x))
            });
            if ours {
                doomed.push(message);
            }
        }
        for message in doomed {
            let addr = message
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(x)) => Some(*x),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let removed = self.handle.address().del(message).execute().await;
            self.record("removing", addr, already_done(removed, libc::EADDRNOTAVAIL))?;
            info!(addr = %addr, interface = %self.interface, "floating IP removed");
        }
        Ok(())
    }

    /// Whether the interface is operationally up (`None`: unknown).
    pub async fn link_up(&self) -> Option<bool> {
        let mut links = self.handle.link().get().match_index(self.ifindex).execute();
        let link = links.try_next().await.ok()??;
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::OperState(state) => {
                Some(matches!(state, OperState::Up | OperState::Unknown))
            }
            _ => None,
        })
    }

    async fn mac(&self) -> Option<[u8; 6]> {
        let mut links = self.handle.link().get().match_index(self.ifindex).execute();
        let link = links.try_next().await.ok()??;
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(bytes);
                Some(mac)
            }
            _ => None,
        })
    }
}

/// A raw packet socket for ARP frames (close-on-exec, as socket2 opens
/// every socket).
pub fn packet_socket() -> std::io::Result<OwnedFd> {
    let protocol = Protocol::from(i32::from(ETH_P_ARP.to_be()));
    Ok(Socket::new(Domain::PACKET, Type::RAW, Some(protocol))?.into())
}

/// Sends an ARP probe (sender address 0.0.0.0, so no neighbour learns
/// anything from it) for each of `addresses` out of `ifindex`, and waits
/// up to `wait` for an answer from a MAC other than `own`: the address and
/// that MAC. A node holding the address answers the probe to `own`.
fn check_second_owner(
    socket: &OwnedFd,
    ifindex: u32,
    own: [u8; 6],
    addresses: &[Ipv4Addr],
    wait: Duration,
) -> std::io::Result<Option<(Ipv4Addr, [u8; 6])>> {
    let sock = SockRef::from(socket);
    sock.bind(&broadcast_on(ifindex))?;
    for addr in addresses {
        send_frame(
            socket,
            ifindex,
            &arp_request(own, Ipv4Addr::UNSPECIFIED, *addr),
        )?;
    }
    let deadline = Instant::now() + wait;
    let mut frame = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let len = match sock.recv(&mut frame) {
            Ok(len) => len,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(error) => return Err(error),
        };
        // SAFETY: recv initialised the first `len` bytes.
        let bytes: Vec<u8> = frame[..len.min(frame.len())]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(found) = other_owner(&bytes, own, addresses) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The address and MAC of an ARP reply in `frame` that claims one of
/// `addresses` for a MAC other than `own`.
fn other_owner(frame: &[u8], own: [u8; 6], addresses: &[Ipv4Addr]) -> Option<(Ipv4Addr, [u8; 6])> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() || frame[20..22] != [0, 2] {
        return None;
    }
    let mac: [u8; 6] = frame[22..28].try_into().ok()?;
    let addr = Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]);
    (mac != own && addresses.contains(&addr)).then_some((addr, mac))
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends one Ethernet `frame` (to the broadcast address) out of `ifindex`.
pub fn send_frame(fd: &OwnedFd, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    SockRef::from(fd).send_to(frame, &broadcast_on(ifindex))?;
    Ok(())
}

/// The link-layer broadcast address on `ifindex`, for ARP. Neither socket2
/// nor nix builds a `sockaddr_ll`, so it is written into socket2's storage.
fn broadcast_on(ifindex: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: the storage is sized and aligned for every address type,
    // and all zeroes is a valid sockaddr_ll.
    let addr = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a sockaddr_ll of that length.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_macs_arp_reply_for_a_floating_address_is_a_second_owner() {
        let (own, other) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let vip = Ipv4Addr::new(10, 100, 0, 100);
        let reply = |mac: [u8; 6], addr: Ipv4Addr| {
            let mut frame = arp_request(mac, addr, Ipv4Addr::UNSPECIFIED);
            frame[20..22].copy_from_slice(&[0, 2]);
            frame
        };
        assert_eq!(
            other_owner(&reply(other, vip), own, &[vip]),
            Some((vip, other))
        );
        assert_eq!(other_owner(&reply(own, vip), own, &[vip]), None, "our own");
        let elsewhere = Ipv4Addr::new(10, 100, 0, 7);
        assert_eq!(other_owner(&reply(other, elsewhere), own, &[vip]), None);
        assert_eq!(
            other_owner(&arp_request(other, vip, vip), own, &[vip]),
            None,
            "a request"
        );
        assert_eq!(
            other_owner(&reply(other, vip)[..41], own, &[vip]),
            None,
            "short"
        );
    }

    #[test]
    fn garp_is_a_broadcast_request_for_the_address_itself() {
        let mac = [2, 0, 0, 0, 0, 0x11];
        let vip = Ipv4Addr::new(10, 100, 0, 100);
        let f = garp_frame(mac, vip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 1, "request");
        assert_eq!(&f[28..32], &vip.octets(), "sender = VIP");
        assert_eq!(&f[38..42], &vip.octets(), "target = VIP");
        assert_eq!(&f[22..28], &mac);
    }
}
