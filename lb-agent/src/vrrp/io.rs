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
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

use super::packet::{MULTICAST_GROUP, PROTO_VRRP, TTL};

/// IPTOS_PREC_INTERNETCONTROL, what keepalived sets.
const TOS_INTERNETCONTROL: i32 = 0xc0;

/// An open, configured socket not yet registered with a runtime.
pub struct RawVrrpSocket {
    fd: OwnedFd,
    /// Where adverts go: the unicast peers, or the multicast group.
    destinations: Vec<Ipv4Addr>,
}

/// The socket registered with the runtime of the thread that uses it.
pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    destinations: Vec<Ipv4Addr>,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32, what: &str) -> io::Result<()> {
    // SAFETY: valid fd and a c_int option value of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

impl RawVrrpSocket {
    /// Opens the socket on `interface` with source `src`; unicast to
    /// `peers`, or multicast when `peers` is empty.
    pub fn open(src: Ipv4Addr, interface: &str, peers: &[Ipv4Addr]) -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(PROTO_VRRP),
            )
        };
        check(raw, "raw socket for VRRP (needs CAP_NET_RAW)")?;
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_TTL,
            i32::from(TTL),
            "IP_TTL",
        )?;
        set_int(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_TOS,
            TOS_INTERNETCONTROL,
            "IP_TOS",
        )?;
        let name = interface.as_bytes();
        // SAFETY: valid fd and buffer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        check(rc, &format!("binding the VRRP socket to {interface}"))?;
        if peers.is_empty() {
            set_int(
                &fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_TTL,
                i32::from(TTL),
                "IP_MULTICAST_TTL",
            )?;
            set_int(
                &fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_LOOP,
                0,
                "IP_MULTICAST_LOOP",
            )?;
            let request = libc::ip_mreq {
                imr_multiaddr: sockaddr(MULTICAST_GROUP).sin_addr,
                imr_interface: sockaddr(src).sin_addr,
            };
            // SAFETY: valid fd and ip_mreq.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_ADD_MEMBERSHIP,
                    (&request as *const libc::ip_mreq).cast(),
                    std::mem::size_of::<libc::ip_mreq>() as libc::socklen_t,
                )
            };
            check(rc, "joining 224.0.0.18")?;
            let interface_addr = sockaddr(src).sin_addr;
            // SAFETY: valid fd and in_addr.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MULTICAST_IF,
                    (&interface_addr as *const libc::in_addr).cast(),
                    std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
                )
            };
            check(rc, "IP_MULTICAST_IF")?;
        } else {
            // Unicast: the bound address is both our source and a filter on
            // what we receive.
            let local = sockaddr(src);
            // SAFETY: valid fd and sockaddr_in.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&local as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            check(rc, &format!("binding the VRRP socket to {src}"))?;
        }
        Ok(Self {
            fd,
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
        // SAFETY: `self.fd` is an open socket owned by the AsyncFd from here on.
        let fd = unsafe { AsyncFd::register(self.fd) }.map_err(io::Error::from)?;
        Ok(VrrpSocket {
            fd,
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
        let addr = sockaddr(to);
        loop {
            let mut guard = self.fd.writable().await?;
            // SAFETY: valid fd, buffer and sockaddr_in.
            let rc = unsafe {
                libc::sendto(
                    self.fd.get_ref().as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
    }

    /// Receives one IP packet (header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: valid fd and buffer.
            let rc = unsafe {
                libc::recv(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
    }
}
