//! Asking who has an address: an ARP request from inside a namespace and
//! every distinct answer, to check that exactly one node answers for the
//! VIP.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use lb_agent::floating_ip::{arp_request, packet_socket, send_frame};

use crate::netns::NetNs;

const ETH_P_ARP: u16 = 0x0806;

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
        let socket = packet_socket().expect("packet socket");
        // Receive only what arrives on this interface.
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
        send_frame(&socket, ifindex, &arp_request(mac, sender, target)).expect("send");
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
