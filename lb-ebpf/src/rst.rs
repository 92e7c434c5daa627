//! Answers a TCP segment with a RST built in place (RFC 9293 section 3.10.7.1),
//! sent back out of the interface it came in on. Used when a new connection
//! has no backend to go to and for segments of connections we do not track,
//! so clients fail fast instead of waiting for a timeout.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use lb_common::{
    checksum::{fold, sum_array},
    PROTO_TCP,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    parsing::{Packet, IP_OFFSET, L4_OFFSET, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    ptr::ptr_at,
};

const RST_FRAME_LEN: usize = L4_OFFSET + TcpHdr::LEN;
const RST_TTL: u8 = 64;

/// Builds the RST. Returns `None` when the segment must not be answered
/// (it is itself a RST, or it came to a broadcast or multicast MAC, which
/// no RST may carry as its source and which Linux's `tcp_v4_rcv` discards)
/// or the frame cannot be reshaped.
#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return None;
    }
    // SAFETY: `pkt.eth`/`pkt.l4` were bounds-checked for Ethernet and a full TCP header.
    let (client_mac, our_mac, seq, ack_seq) = unsafe {
        let tcp = pkt.l4 as *const TcpHdr;
        (
            (*pkt.eth).src_addr,
            (*pkt.eth).dst_addr,
            u32::from_be_bytes((*tcp).seq),
            u32::from_be_bytes((*tcp).ack_seq),
        )
    };
    if our_mac[0] & 1 == 1 {
        return None;
    }
    let data_offset = pkt.l4_header_len;
    let payload = pkt
        .ip_len
        .saturating_sub(Ipv4Hdr::LEN as u16)
        .saturating_sub(data_offset) as u32;
    let (rst_seq, rst_ack, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (ack_seq, 0, TCP_RST)
    } else {
        let syn_fin = (pkt.tcp_flags & TCP_SYN != 0) as u32 + (pkt.tcp_flags & TCP_FIN != 0) as u32;
        (
            0,
            seq.wrapping_add(payload).wrapping_add(syn_fin),
            TCP_RST | TCP_ACK,
        )
    };
    let (client, vip, client_port, vip_port) = (pkt.src, pkt.dst, pkt.sport, pkt.dport);

    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > RST_FRAME_LEN {
        let delta = RST_FRAME_LEN as i32 - frame_len as i32;
        // SAFETY: shrinking the tail of the frame we own; pointers are re-checked below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, delta) } != 0 {
            return None;
        }
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok()?;
    let ip: *mut [u8; Ipv4Hdr::LEN] = ptr_at(ctx, IP_OFFSET).ok()?;
    let tcp: *mut [u8; TcpHdr::LEN] = ptr_at(ctx, L4_OFFSET).ok()?;

    let tot_len = ((Ipv4Hdr::LEN + TcpHdr::LEN) as u16).to_be_bytes();
    let mut ip_hdr: [u8; Ipv4Hdr::LEN] = [
        0x45, 0, tot_len[0], tot_len[1], 0, 0, 0x40, 0, RST_TTL, PROTO_TCP, 0, 0, vip[0], vip[1],
        vip[2], vip[3], client[0], client[1], client[2], client[3],
    ];
    let ip_check = (!fold(sum_array(&ip_hdr, 0))).to_be_bytes();
    ip_hdr[10] = ip_check[0];
    ip_hdr[11] = ip_check[1];

    let sport = vip_port.to_be_bytes();
    let dport = client_port.to_be_bytes();
    let s = rst_seq.to_be_bytes();
    let a = rst_ack.to_be_bytes();
    let mut tcp_hdr: [u8; TcpHdr::LEN] = [
        sport[0], sport[1], dport[0], dport[1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3],
        0x50, flags, 0, 0, 0, 0, 0, 0,
    ];
    let mut pseudo = sum_array(&vip, 0);
    pseudo = sum_array(&client, pseudo);
    pseudo += PROTO_TCP as u32 + TcpHdr::LEN as u32;
    let tcp_check = (!fold(sum_array(&tcp_hdr, pseudo))).to_be_bytes();
    tcp_hdr[16] = tcp_check[0];
    tcp_hdr[17] = tcp_check[1];

    // SAFETY: all three pointers were bounds-checked after the tail adjustment.
    unsafe {
        (*eth).dst_addr = client_mac;
        (*eth).src_addr = our_mac;
        *ip = ip_hdr;
        *tcp = tcp_hdr;
    }
    Some(xdp_action::XDP_TX)
}
