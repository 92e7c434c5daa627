//! The guard of a node whose agent died. Its pinned program goes on
//! forwarding, and its kernel keeps the floating addresses and goes on
//! answering ARP for them beside the new master: a neighbour that takes
//! this node's answer sends the master's traffic here. So once the agent's
//! heartbeat is older than `Settings::agent_silence_ns` while the peer's
//! VRRP advertisements say it is master, ARP requests for the floating
//! addresses are dropped. Flows that still arrive are forwarded as ever;
//! without a peer master (it is down too, or there is none) nothing
//! changes, and a restarted agent's heartbeat ends the guard at once.
//!
//! Only traffic `parse` leaves alone (not IPv4 TCP/UDP) comes here.

use aya_ebpf::programs::XdpContext;
use lb_common::{floating_addresses_lost, liveness, Reason, Settings};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use core::ptr::addr_of;

use crate::{
    clock::now_ns,
    forward::DROP,
    maps::AGENT_LIVENESS,
    parsing::{is_vip, Verdict, ETH_P_IPV4, IP_OFFSET, L4_OFFSET},
    ptr::{load, load_be16, ptr_at},
};

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const PROTO_VRRP: u8 = 112;
/// VRRP message type (low nibble of the first byte): advertisement.
const VRRP_ADVERTISEMENT: u8 = 1;

/// An ARP packet for IPv4 over Ethernet (fields at even packet offsets).
#[repr(C)]
struct ArpIpv4 {
    hardware: [u8; 2],
    protocol: [u8; 2],
    lengths: [u8; 2],
    op: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
}

/// `verdict` for a packet `parse` did not take, unless the guard drops it
/// (an ARP request for a floating address while they are lost); notes the
/// peer's VRRP advertisements on the way.
#[inline(always)]
pub fn other_traffic(ctx: &XdpContext, settings: &Settings, verdict: Verdict) -> Verdict {
    if settings.agent_silence_ns == 0 {
        return verdict;
    }
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return verdict;
    };
    // SAFETY: `eth` is bounds-checked.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_ARP if arp_for_lost_address(ctx, settings) => Verdict {
            action: DROP,
            reason: Reason::DropArpFloatingLost,
        },
        ETH_P_IPV4 => {
            note_peer_advert(ctx, settings);
            verdict
        }
        _ => verdict,
    }
}

#[inline(always)]
fn arp_for_lost_address(ctx: &XdpContext, settings: &Settings) -> bool {
    let Ok(arp) = ptr_at::<ArpIpv4>(ctx, EthHdr::LEN) else {
        return false;
    };
    // SAFETY: `arp` is bounds-checked; its fields sit at even offsets.
    let (op, target) = unsafe {
        (
            load_be16(addr_of!((*arp).op)),
            load(addr_of!((*arp).target_ip)),
        )
    };
    if op != ARP_REQUEST {
        return false;
    }
    let floating =
        is_vip(&target) || (settings.snat_floating != 0 && settings.is_snat_addr(target));
    floating && lost(settings)
}

#[inline(always)]
fn lost(settings: &Settings) -> bool {
    let read = |index| AGENT_LIVENESS.get(index).copied().unwrap_or(0);
    floating_addresses_lost(
        settings,
        read(liveness::AGENT),
        read(liveness::PEER_MASTER),
        now_ns(settings),
    )
}

/// Records the arrival of an advertisement of this node's virtual router
/// from another node that claims mastership (priority 0 is a master
/// leaving). Our own advertisements leave by this interface, never in.
#[inline(always)]
fn note_peer_advert(ctx: &XdpContext, settings: &Settings) {
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, IP_OFFSET) else {
        return;
    };
    // SAFETY: `ip` is bounds-checked.
    let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
    if proto != PROTO_VRRP || vihl != 0x45 {
        return;
    }
    let Ok(vrrp) = ptr_at::<[u8; 4]>(ctx, L4_OFFSET) else {
        return;
    };
    // SAFETY: bounds-checked, at an even offset.
    let [version_type, vrid, priority, _] = unsafe { load(vrrp) };
    if version_type & 0x0f != VRRP_ADVERTISEMENT
        || u32::from(vrid) != settings.vrrp_vrid
        || priority == 0
    {
        return;
    }
    if let Some(heard) = AGENT_LIVENESS.get_ptr_mut(liveness::PEER_MASTER) {
        // SAFETY: map memory valid during this run; a plain store.
        unsafe { *heard = now_ns(settings) };
    }
}
