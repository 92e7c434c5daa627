//! Forwarding: route lookup with `bpf_fib_lookup`, new MACs, then `XDP_TX`
//! when the next hop is behind the interface the packet came in on, or a
//! redirect through the `tx_ports` devmap otherwise.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{NextHop, Reason, NEXT_HOP_TTL_NS};

use crate::{
    maps::{NEIGH_MISSES, TX_PORTS},
    parsing::Packet,
    ptr::store,
};

const AF_INET: u8 = 2;

/// Sends the (already rewritten) packet towards `dst`, using the flow's
/// cached next hop while it is fresh (a route lookup is the most expensive
/// step of the established path) and refreshing it otherwise. Returns the
/// XDP action or the reason the packet must be dropped.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    src: [u8; 4],
    dst: [u8; 4],
    hop: &mut NextHop,
    now: u64,
) -> Result<u32, Reason> {
    if hop.ifindex == 0 || now.wrapping_sub(hop.looked_up_ns) > NEXT_HOP_TTL_NS {
        *hop = route(ctx, pkt, src, dst, now)?;
    }
    // SAFETY: `pkt.eth` was bounds-checked by `parse`; it starts the packet.
    unsafe {
        store(addr_of_mut!((*pkt.eth).dst_addr), hop.dst_mac);
        store(addr_of_mut!((*pkt.eth).src_addr), hop.src_mac);
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(xdp_action::XDP_TX);
    }
    TX_PORTS
        .redirect(hop.ifindex, 0)
        .map_err(|_| Reason::DropNoTxPort)
}

/// Asks the kernel's FIB for egress interface and MACs towards `dst`.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    pkt: &Packet,
    src: [u8; 4],
    dst: [u8; 4],
    now: u64,
) -> Result<NextHop, Reason> {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of integers).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.proto;
    params.__bindgen_anon_1.tot_len = pkt.ip_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);

    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The agent resolves it; the sender's retransmission then passes.
        let _ = NEIGH_MISSES.insert(&dst, &now, 0);
        return Err(Reason::DropFibNoNeigh);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Reason::DropFibFailed);
    }
    Ok(NextHop {
        ifindex: params.ifindex,
        src_mac: params.smac,
        dst_mac: params.dmac,
        looked_up_ns: now,
    })
}

/// The action that drops a packet.
pub const DROP: u32 = xdp_action::XDP_DROP;
/// The action that hands a packet to the kernel stack untouched.
pub const PASS: u32 = xdp_action::XDP_PASS;
