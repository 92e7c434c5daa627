//! VRRP socket I/O: a raw IPv4 socket for protocol 112 that sends with
//! TTL 255 and TOS 0xc0 (as keepalived does) to the unicast peers or the
//! multicast group, and receives whole IP packets for the decoder.
//!
//! The socket is opened on the agent's side (so that a missing capability
//! or interface is reported before anything changes) and registered with
//! the VRRP thread's own runtime there (`RawVrrpSocket::register`): its
//! readiness must be driven by the thread that times the adverts, not by
//! the agent's main runtime.

use std::{
    io::{self, Read},
    net::{Ipv4Addr, SocketAddrV4},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{MULTICAST_GROUP, PROTO_VRRP, TTL};

/// IPTOS_PREC_INTERNETCONTROL, what keepalived sets.
const TOS_INTERNETCONTROL: u32 = 0xc0;

/// An open, configured socket not yet registered with a runtime.
pub struct RawVrrpSocket {
    socket: Socket,
    /// Where adverts go: the unicast peers, or the multicast group.
    destinations: Vec<Ipv4Addr>,
}

/// The socket registered with the runtime of the thread that uses it.
pub struct VrrpSocket {
    socket: AsyncFd<Socket>,
    destinations: Vec<Ipv4Addr>,
}

/// Names the step that failed in `error`.
fn step(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |error| io::Error::new(error.kind(), format!("{what}: {error}"))
}

fn socket_address(addr: Ipv4Addr) -> SockAddr {
    SocketAddrV4::new(addr, 0).into()
}

impl RawVrrpSocket {
    /// Opens the socket on `interface` with source `src`; unicast to
    /// `peers`, or multicast when `peers` is empty.
    pub fn open(src: Ipv4Addr, interface: &str, peers: &[Ipv4Addr]) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW.nonblocking().cloexec(),
            Some(Protocol::from(i32::from(PROTO_VRRP))),
        )
        .map_err(step("raw socket for VRRP (needs CAP_NET_RAW)"))?;
        socket.set_ttl_v4(u32::from(TTL)).map_err(step("IP_TTL"))?;
        socket
            .set_tos_v4(TOS_INTERNETCONTROL)
            .map_err(step("IP_TOS"))?;
        socket
            .bind_device(Some(interface.as_bytes()))
            .map_err(step(format!("binding the VRRP socket to {interface}")))?;
        if peers.is_empty() {
            socket
                .set_multicast_ttl_v4(u32::from(TTL))
                .map_err(step("IP_MULTICAST_TTL"))?;
            socket
                .set_multicast_loop_v4(false)
                .map_err(step("IP_MULTICAST_LOOP"))?;
            socket
                .join_multicast_v4(&MULTICAST_GROUP, &src)
                .map_err(step("joining 224.0.0.18"))?;
            socket
                .set_multicast_if_v4(&src)
                .map_err(step("IP_MULTICAST_IF"))?;
        } else {
            // Unicast: the bound address is both our source and a filter on
            // what we receive.
            socket
                .bind(&socket_address(src))
                .map_err(step(format!("binding the VRRP socket to {src}")))?;
        }
        Ok(Self {
            socket,
            destinations: if peers.is_empty() {
                vec![MULTICAST_GROUP]
            } else {
                peers.to_vec()
            },
        })
    }

    /// Registers the socket with the runtime of the calling thread (it
    /// must run inside that runtime).
    pub fn register(self) -> io::Result<VrrpSocket> {
        // SAFETY: the AsyncFd owns the socket from here on, so the fd
        // stays open while registered.
        let socket = unsafe { AsyncFd::register(self.socket) }?;
        Ok(VrrpSocket {
            socket,
            destinations: self.destinations,
        })
    }
}

impl VrrpSocket {
    /// Where adverts are sent (the checksum of v3 covers the destination).
    pub fn destinations(&self) -> &[Ipv4Addr] {
        &self.destinations
    }

    /// Sends one VRRP message to `to`.
    pub async fn send_to(&self, message: &[u8], to: Ipv4Addr) -> io::Result<()> {
        let addr = socket_address(to);
        loop {
            let mut guard = self.socket.writable().await?;
            match guard.try_io(|socket| socket.get_ref().send_to(message, &addr)) {
                Ok(sent) => return sent.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one IP packet (header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|socket| socket.get_ref().read(buf)) {
                Ok(received) => return received,
                Err(_would_block) => continue,
            }
        }
    }
}
