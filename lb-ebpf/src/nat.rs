//! Full-NAT rewrite of addresses and ports with incremental checksum updates
//! (RFC 1624, math shared with the agent's tests in `lb_common::checksum`).

use core::ptr::addr_of_mut;

use lb_common::{
    checksum::{addr_change, apply, udp_nonzero, word_change},
    PROTO_TCP,
};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::{
    parsing::Packet,
    ptr::{load_be16, store, store_be16},
};

/// The new 4-tuple of a packet.
pub struct Rewrite {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

/// Rewrites IP addresses and L4 ports of `pkt` in place.
#[inline(always)]
pub fn rewrite(pkt: &Packet, new: &Rewrite) {
    // The addresses are covered by both checksums (the L4 one through the
    // pseudo-header): their change is summed once and applied to both.
    let addrs = addr_change(pkt.src, new.src) + addr_change(pkt.dst, new.dst);
    let l4 = addrs + word_change(pkt.sport, new.sport) + word_change(pkt.dport, new.dport);
    // SAFETY: `pkt.ip` and `pkt.l4` were bounds-checked by `parse` for the
    // full IPv4 header and the full TCP or UDP header of `pkt.proto`; both
    // start at even offsets.
    unsafe {
        let ip = pkt.ip;
        let check = addr_of_mut!((*ip).check);
        store_be16(check, apply(load_be16(check), addrs));
        store(addr_of_mut!((*ip).src_addr), new.src);
        store(addr_of_mut!((*ip).dst_addr), new.dst);

        if pkt.proto == PROTO_TCP {
            let tcp = pkt.l4 as *mut TcpHdr;
            let check = addr_of_mut!((*tcp).check);
            store_be16(check, apply(load_be16(check), l4));
            store_be16(addr_of_mut!((*tcp).source), new.sport);
            store_be16(addr_of_mut!((*tcp).dest), new.dport);
        } else {
            let udp = pkt.l4 as *mut UdpHdr;
            let check = addr_of_mut!((*udp).check);
            let old = load_be16(check);
            // Zero means the sender did not checksum the datagram; keep it so.
            if old != 0 {
                store_be16(check, udp_nonzero(apply(old, l4)));
            }
            store_be16(addr_of_mut!((*udp).src), new.sport);
            store_be16(addr_of_mut!((*udp).dst), new.dport);
        }
    }
}
