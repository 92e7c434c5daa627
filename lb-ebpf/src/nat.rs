//! Full-NAT rewrite of addresses and ports with incremental checksum updates
//! (RFC 1624, math shared with the agent's tests in `lb_common::checksum`).

use lb_common::{
    checksum::{udp_nonzero, update_addr, update_u16},
    PROTO_TCP,
};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::parsing::Packet;

/// The new 4-tuple of a packet.
pub struct Rewrite {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

#[inline(always)]
fn l4_check(check: u16, pkt: &Packet, new: &Rewrite) -> u16 {
    let check = update_addr(check, pkt.src, new.src);
    let check = update_addr(check, pkt.dst, new.dst);
    let check = update_u16(check, pkt.sport, new.sport);
    update_u16(check, pkt.dport, new.dport)
}

/// Rewrites IP addresses and L4 ports of `pkt` in place.
#[inline(always)]
pub fn rewrite(pkt: &Packet, new: &Rewrite) {
    // SAFETY: `pkt.ip` and `pkt.l4` were bounds-checked by `parse` for the
    // full IPv4 header and the full TCP or UDP header of `pkt.proto`.
    unsafe {
        let ip = pkt.ip;
        let check = u16::from_be_bytes((*ip).check);
        let check = update_addr(update_addr(check, pkt.src, new.src), pkt.dst, new.dst);
        (*ip).check = check.to_be_bytes();
        (*ip).src_addr = new.src;
        (*ip).dst_addr = new.dst;

        if pkt.proto == PROTO_TCP {
            let tcp = pkt.l4 as *mut TcpHdr;
            let check = l4_check(u16::from_be_bytes((*tcp).check), pkt, new);
            (*tcp).check = check.to_be_bytes();
            (*tcp).source = new.sport.to_be_bytes();
            (*tcp).dest = new.dport.to_be_bytes();
        } else {
            let udp = pkt.l4 as *mut UdpHdr;
            let old = u16::from_be_bytes((*udp).check);
            // Zero means the sender did not checksum the datagram; keep it so.
            if old != 0 {
                (*udp).check = udp_nonzero(l4_check(old, pkt, new)).to_be_bytes();
            }
            (*udp).src = new.sport.to_be_bytes();
            (*udp).dst = new.dport.to_be_bytes();
        }
    }
}
