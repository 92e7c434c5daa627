//! Service lookup, scheduling (weighted round robin over the agent-built
//! ring), NAT source allocation from the port pools and connection tracking.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    flow_state, port_slot, reply_key, ring_base, slot_address_index, slot_port, BackendValue,
    FlowKey, FlowValue, ReplyValue, ServiceValue, Settings, PORT_CLAIM_TRIES, PROTO_TCP, RING_SIZE,
};

use crate::{
    maps::{BACKENDS, FLOWS, PORT_POOLS, PORT_QUEUES, PORT_TAKEN, REPLIES, RINGS, RR_CURSORS},
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

/// A NAT source held for a new flow: the slot taken from its pool's queue
/// and the reply entry that claims it.
pub struct NatSource {
    pub pool: u32,
    pub slot: u32,
    pub snat_index: u8,
    pub addr: [u8; 4],
    pub port: u16,
    pub reply: FlowKey,
}

/// Takes the least recently released free NAT source towards `backend`
/// from its pool's queue, O(1): a pop, and the insert of the flow's reply
/// entry, which fails if a live flow holds that source (then the next slot
/// is tried and the held one dropped: its flow gives it back when it ends).
#[inline(always)]
pub fn claim_nat_source(
    settings: &Settings,
    backend: &BackendValue,
    proto: u8,
    back: &ReplyValue,
) -> Option<NatSource> {
    let pool = backend.port_pool;
    if PORT_POOLS.get(pool)?.live == 0 {
        return None;
    }
    let queue = PORT_QUEUES.get(pool)?;
    for _ in 0..PORT_CLAIM_TRIES {
        let slot = queue.pop().ok()??;
        let snat_index = slot_address_index(slot);
        if u32::from(snat_index) >= settings.snat_count {
            // Left from a larger pool before a restart: not ours to use.
            continue;
        }
        let addr = settings.snat_addr(snat_index);
        let port = slot_port(slot);
        let reply = reply_key(backend.addr, backend.port, addr, port, proto);
        if REPLIES.insert(&reply, back, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(NatSource {
                pool,
                slot,
                snat_index,
                addr,
                port,
                reply,
            });
        }
    }
    None
}

/// Undoes a claim whose flow could not be set up: the source goes back
/// to its queue.
#[inline(always)]
pub fn give_back(source: &NatSource) {
    let _ = REPLIES.remove(&source.reply);
    if let Some(queue) = PORT_QUEUES.get(source.pool) {
        let _ = queue.push(source.slot, 0);
    }
}

/// Counts a claim kept by a new flow.
#[inline(always)]
pub fn count_taken(pool: u32) {
    if let Some(taken) = PORT_TAKEN.get_ptr_mut(pool) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *taken = (*taken).wrapping_add(1) };
    }
}

/// The NAT source of a flow the program itself ends: one a new flow of the
/// same client ports replaces (the old one ended, or expired before the
/// agent collected it), or a half-open one that gives way (`half_open`).
#[derive(Default)]
pub struct ReplacedSource {
    /// 0: nothing is replaced.
    pub present: u8,
    pub snat_index: u8,
    pub backend_port: u16,
    pub backend_addr: [u8; 4],
    pub lb_port: u16,
    pub port_pool: u32,
}

impl ReplacedSource {
    #[inline(always)]
    pub fn of(flow: &FlowValue) -> Self {
        Self {
            present: 1,
            snat_index: flow.snat_index,
            backend_port: flow.backend_port,
            backend_addr: flow.backend_addr,
            lb_port: flow.lb_port,
            port_pool: flow.port_pool,
        }
    }
}

/// Frees an ended flow's reply entry and gives its slot back; without this
/// both would be lost, since the agent never sees that flow again.
#[inline(always)]
pub fn release_replaced(old: &ReplacedSource, proto: u8, settings: &Settings) {
    if old.present == 0 {
        return;
    }
    let reply = reply_key(
        old.backend_addr,
        old.backend_port,
        settings.snat_addr(old.snat_index),
        old.lb_port,
        proto,
    );
    if REPLIES.remove(&reply).is_err() {
        return;
    }
    if let Some(queue) = PORT_QUEUES.get(old.port_pool) {
        if queue
            .push(port_slot(old.snat_index, old.lb_port), 0)
            .is_ok()
        {
            if let Some(taken) = PORT_TAKEN.get_ptr_mut(old.port_pool) {
                // SAFETY: per-CPU slot, as in `count_taken`.
                unsafe { *taken = (*taken).wrapping_sub(1) };
            }
        }
    }
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

/// Records a new flow's forward entry (its reply entry is its claim).
#[inline(always)]
pub fn track(client: &FlowKey, flow: &FlowValue) -> bool {
    FLOWS.insert(client, flow, 0).is_ok()
}
