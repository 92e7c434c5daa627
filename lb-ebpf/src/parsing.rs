//! Header parsing: Ethernet -> IPv4 -> TCP/UDP, with the checks that decide
//! whether a packet is ours to touch at all.

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use core::ptr::addr_of;

use crate::{
    maps::VIPS,
    ptr::{load, load_be16, ptr_at},
};

pub const IP_OFFSET: usize = EthHdr::LEN;
/// Packets with IP options are never rewritten, so L4 always starts here.
pub const L4_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;

pub const ETH_P_IPV4: u16 = 0x0800;
/// More-fragments flag and fragment offset in the flags/offset word.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Byte offsets of the data offset (high nibble) and the flags in the TCP header.
const TCP_DATA_OFFSET_OFFSET: usize = 12;
const TCP_FLAGS_OFFSET: usize = 13;

/// A parsed IPv4 TCP/UDP packet without options or fragmentation.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Start of the TCP or UDP header, bounds-checked for the full header of `proto`.
    pub l4: *mut u8,
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports in host order.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// IP total length in host order (the L3 packet size), checked
    /// against the frame and the headers.
    pub ip_len: u16,
    /// Length of the TCP header including options (8 for UDP), inside
    /// `ip_len`.
    pub l4_header_len: u16,
}

/// What to do with a packet that did not parse into a `Packet`.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

#[inline(always)]
fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: aya_ebpf::bindings::xdp_action::XDP_PASS,
        reason,
    }
}

#[inline(always)]
fn drop(reason: Reason) -> Verdict {
    Verdict {
        action: aya_ebpf::bindings::xdp_action::XDP_DROP,
        reason,
    }
}

#[inline(always)]
pub fn is_vip(addr: &[u8; 4]) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { VIPS.get(addr).is_some() }
}

/// Parses the headers. Anything that is not a plain IPv4 TCP/UDP packet is
/// passed to the stack, unless it is addressed to a VIP, in which case it
/// cannot be balanced safely and is dropped (fragments, IP options, cut-short
/// L4 headers): forwarding it anywhere would be wrong, and the node's stack
/// has no listener for the VIP.
///
/// Every length field is checked as the kernel's `ip_rcv`, `tcp_v4_rcv` and
/// `udp_rcv` would: the IPv4 total length against the frame and the headers,
/// the TCP data offset and the UDP length against the total length.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|()| pass(Reason::PassTruncated))?;
    // SAFETY: `eth` is bounds-checked.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IPV4 {
        return Err(pass(Reason::PassNotIpv4));
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, IP_OFFSET).map_err(|()| pass(Reason::PassTruncated))?;
    // SAFETY: `ip` is bounds-checked and starts at an even offset.
    let (vihl, proto, frags, dst, src, tot_len) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            load_be16(addr_of!((*ip).frags)),
            load(addr_of!((*ip).dst_addr)),
            load(addr_of!((*ip).src_addr)),
            load_be16(addr_of!((*ip).tot_len)),
        )
    };
    if vihl >> 4 != 4 {
        return Err(pass(Reason::PassNotIpv4));
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(pass(Reason::PassNotService));
    }
    if vihl & 0x0f != 5 {
        return Err(if is_vip(&dst) {
            drop(Reason::DropIpOptions)
        } else {
            pass(Reason::PassNotService)
        });
    }
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Err(if is_vip(&dst) {
            drop(Reason::DropFragment)
        } else {
            pass(Reason::PassNotService)
        });
    }
    let not_ours = |drop_reason, pass_reason| {
        if is_vip(&dst) {
            drop(drop_reason)
        } else {
            pass(pass_reason)
        }
    };
    let truncated = || not_ours(Reason::DropTruncated, Reason::PassTruncated);
    let bad_length = || not_ours(Reason::DropBadLength, Reason::PassBadLength);
    // Bytes past the total length are Ethernet padding: they leave with
    // the frame but are no part of the packet. A total length past the
    // frame's end is a cut packet the kernel would drop in `ip_rcv`.
    let frame_len = ctx.data_end() - ctx.data();
    if usize::from(tot_len) + IP_OFFSET > frame_len {
        return Err(bad_length());
    }
    let l4_room = tot_len
        .checked_sub(Ipv4Hdr::LEN as u16)
        .ok_or_else(bad_length)?;
    let (l4, tcp_flags, l4_header_len) = if proto == PROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, L4_OFFSET).map_err(|()| truncated())?;
        let tcp_bytes = tcp as *const u8;
        // SAFETY: both bytes lie inside the bounds-checked TCP header.
        let (offset_byte, flags) = unsafe {
            (
                *tcp_bytes.wrapping_add(TCP_DATA_OFFSET_OFFSET),
                *tcp_bytes.wrapping_add(TCP_FLAGS_OFFSET),
            )
        };
        let header_len = u16::from(offset_byte >> 4) * 4;
        if header_len < TcpHdr::LEN as u16 || header_len > l4_room {
            return Err(bad_length());
        }
        (tcp as *mut u8, flags, header_len)
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, L4_OFFSET).map_err(|()| truncated())?;
        // SAFETY: the length field lies inside the bounds-checked UDP
        // header, at an even offset.
        let udp_len = unsafe { load_be16(addr_of!((*udp).len)) };
        if udp_len < UdpHdr::LEN as u16 || udp_len > l4_room {
            return Err(bad_length());
        }
        (udp as *mut u8, 0, UdpHdr::LEN as u16)
    };
    // SAFETY: the first four bytes of TCP and UDP headers are the ports,
    // inside the checked header, which starts at an even offset.
    let (sport, dport) = unsafe {
        let ports = l4 as *const [u8; 2];
        (load_be16(ports), load_be16(ports.add(1)))
    };
    Ok(Packet {
        eth,
        ip,
        l4,
        proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags,
        ip_len: tot_len,
        l4_header_len,
    })
}
