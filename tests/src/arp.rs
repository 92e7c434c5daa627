//! Asking who has an address: an ARP request from inside a namespace and
//! every distinct answer, to check that exactly one node answers for the
//! VIP.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

const ETH_P_ARP: u16 = 0x0806;

fn request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
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

/// Sends one ARP request for `target` from `sender` on `interface` of the
/// namespace `ns` and returns the MACs of every reply within `wait`.
pub fn who_has(
    ns: &str,
    interface: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    wait: Duration,
) -> BTreeSet<[u8; 6]> {
    let (ns, interface) = (ns.to_string(), interface.to_string());
    std::thread::spawn(move || {
        NetNs::existing(&ns).enter_current_thread();
        let mac = lb_agent::dataplane::loader::interface_mac(&interface)
            .unwrap_or_else(|| panic!("MAC of {interface} in {ns}"));
        let ifindex = lb_agent::dataplane::loader::interface_index(&interface)
            .unwrap_or_else(|| panic!("{interface} in {ns}"));
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid fd and sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                len,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let frame = request(mac, sender, target);
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: valid fd, buffer and sockaddr_ll.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                len,
            )
        };
        assert_eq!(sent, 42, "send: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid fd and option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let mut answers = BTreeSet::new();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let is_reply = n >= 42
                && buf[12..14] == ETH_P_ARP.to_be_bytes()
                && buf[20..22] == [0, 2]
                && buf[28..32] == target.octets();
            if is_reply {
                let mut sender_mac = [0u8; 6];
                sender_mac.copy_from_slice(&buf[22..28]);
                answers.insert(sender_mac);
            }
        }
        answers
    })
    .join()
    .expect("ARP thread")
}
