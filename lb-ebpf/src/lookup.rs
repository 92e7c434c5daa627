//! Service lookup, scheduling (weighted round robin over the agent-built
//! ring), NAT source port allocation and connection tracking.

use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
use lb_common::{
    flow_expired, flow_state, ring_base, BackendValue, FlowKey, FlowValue, ReplyValue,
    ServiceValue, Settings, PORT_ALLOC_TRIES, PROTO_TCP, RING_SIZE,
};

use crate::{
    maps::{BACKENDS, FLOWS, REPLIES, RINGS, RR_CURSORS},
    parsing::Packet,
};

/// The client-side key of `pkt`'s flow.
#[inline(always)]
pub fn client_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.sport,
        dst_port: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// The key under which the backend's replies to a flow are tracked.
#[inline(always)]
pub fn reply_key(backend: &BackendValue, settings: &Settings, lb_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: backend.addr,
        dst_addr: settings.lb_addr,
        src_port: backend.port,
        dst_port: lb_port,
        proto,
        _pad: [0; 3],
    }
}

/// Next backend of the service's weighted schedule. Each CPU walks the ring
/// with its own cursor; the ring interleaves backends, so every CPU spreads
/// its share of connections the same way.
#[inline(always)]
pub fn schedule(service: &ServiceValue) -> Option<(u32, BackendValue)> {
    if service.ring_len == 0 || service.ring_len > RING_SIZE {
        return None;
    }
    let cursor = RR_CURSORS.get_ptr_mut(service.id)?;
    // SAFETY: per-CPU slot, only this CPU touches it while we run.
    let position = unsafe {
        let position = *cursor;
        *cursor = position.wrapping_add(1);
        position
    };
    let slot = ring_base(service.id, service.ring_half) + position.checked_rem(service.ring_len)?;
    let backend_id = *RINGS.get(slot)?;
    let backend = *BACKENDS.get(backend_id)?;
    Some((backend_id, backend))
}

/// Whether the flow behind a reply entry is gone or idle past its timeout,
/// so its NAT port may be handed out again.
#[inline(always)]
fn reply_slot_free(reply: &FlowKey, settings: &Settings, now: u64) -> bool {
    // SAFETY: read-only copy of the entry.
    let Some(entry) = (unsafe { REPLIES.get(reply) }) else {
        return true;
    };
    let client = entry.client;
    // SAFETY: read-only copy of the entry.
    match unsafe { FLOWS.get(&client) } {
        None => true,
        Some(flow) => flow_expired(settings, flow, now),
    }
}

/// Picks a NAT source port towards `backend` that no live flow uses, at
/// random, so ports are not reused in a predictable order (and rarely meet
/// a backend's TIME_WAIT).
#[inline(always)]
pub fn allocate_port(
    settings: &Settings,
    backend: &BackendValue,
    proto: u8,
    now: u64,
) -> Option<u16> {
    let min = settings.port_min as u32;
    let max = settings.port_max as u32;
    if min == 0 || max < min {
        return None;
    }
    let span = max - min + 1;
    // Each try draws a fresh random port: probing neighbours of a busy port
    // would walk along the clusters that sequential use leaves behind.
    for _ in 0..PORT_ALLOC_TRIES {
        // SAFETY: helper without preconditions.
        let draw = unsafe { bpf_get_prandom_u32() };
        let port = (min + draw.checked_rem(span)?) as u16;
        let key = reply_key(backend, settings, port, proto);
        if reply_slot_free(&key, settings, now) {
            return Some(port);
        }
    }
    None
}

/// Initial state of a new flow.
#[inline(always)]
pub fn initial_state(proto: u8) -> u8 {
    if proto == PROTO_TCP {
        flow_state::TCP_HANDSHAKE
    } else {
        flow_state::UDP
    }
}

/// Records a new flow in both directions. Returns false if either insert failed.
#[inline(always)]
pub fn track(client: &FlowKey, flow: &FlowValue, reply: &FlowKey) -> bool {
    let back = ReplyValue { client: *client };
    if FLOWS.insert(client, flow, 0).is_err() {
        return false;
    }
    if REPLIES.insert(reply, &back, 0).is_err() {
        let _ = FLOWS.remove(client);
        return false;
    }
    true
}
