//! Service lookup, scheduling (weighted round robin over the agent-built
//! ring), NAT source allocation from the port pools, the reply path's pool
//! lookup (with each CPU's copies of it) and connection tracking.

use lb_common::{
    flow_state, pool_cache_slot, port_slot, reply_claim, ring_base, slot_address_index, slot_port,
    BackendValue, FlowKey, FlowValue, PoolCacheEntry, PoolKey, ReplyValue, ServiceValue, Settings,
    PORT_CLAIM_TRIES, PROTO_TCP, RING_SIZE,
};

use crate::{
    maps::{
        BACKENDS, FLOWS, POOL_CACHE, POOL_IDS, PORT_POOLS, PORT_QUEUES, PORT_TAKEN, REPLY_TABLES,
        RINGS, RR_CURSORS,
    },
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
    let cursor = unsafe { &mut *cursor };
    // The cursor stays below the ring's length, so no division is needed
    // (one costs as much as a map lookup); the rare cursor past a ring that
    // the agent just shortened starts over.
    let mut position = *cursor;
    if position >= service.ring_len {
        position = 0;
    }
    *cursor = if position + 1 == service.ring_len {
        0
    } else {
        position + 1
    };
    let slot = ring_base(service.id, service.ring_half) + position;
    let backend_id = *RINGS.get(slot)?;
    let backend = *BACKENDS.get(backend_id)?;
    Some((backend_id, backend))
}

/// A NAT source held for a new flow: the slot taken from its pool's queue
/// and claimed in the pool's reply table.
pub struct NatSource {
    pub pool: u32,
    pub slot: u32,
    pub snat_index: u8,
    pub addr: [u8; 4],
    pub port: u16,
}

/// The port pool of backend endpoint `endpoint`: this CPU's copy of its
/// `pool_ids` entry while the pool's record still names the endpoint (two
/// array reads the verifier inlines), else the `pool_ids` hash, whose
/// answer is copied. The hash lookup is three kernel calls, which on CPUs
/// with return mitigations cost about as much as the rest of a reply.
#[inline(always)]
pub fn pool_of(endpoint: &PoolKey) -> Option<u32> {
    let copy = POOL_CACHE.get_ptr_mut(pool_cache_slot(endpoint));
    if let Some(copy) = copy {
        // SAFETY: per-CPU slot, only this CPU touches it while we run.
        let cached = unsafe { *copy };
        if cached.endpoint == *endpoint && pool_serves(cached.pool, endpoint) {
            return Some(cached.pool);
        }
    }
    // SAFETY: copied out at once.
    let pool = *unsafe { POOL_IDS.get(endpoint) }?;
    if let Some(copy) = copy {
        // SAFETY: as above.
        unsafe {
            *copy = PoolCacheEntry {
                endpoint: *endpoint,
                pool,
            }
        };
    }
    Some(pool)
}

/// Whether the agent's record of pool `pool` gives it to `endpoint`.
#[inline(always)]
fn pool_serves(pool: u32, endpoint: &PoolKey) -> bool {
    let Some(record) = PORT_POOLS.get_ptr(pool) else {
        return false;
    };
    // SAFETY: array map value, valid during this run. The agent writes it
    // whole; a record torn by that write fails one of the compares or
    // still names the pool the endpoint had a moment ago.
    let record = unsafe { &*record };
    record.live == 1
        && record.backend_addr == endpoint.addr
        && record.backend_port == endpoint.port
        && record.proto == endpoint.proto
}

/// The reply entry of NAT source `slot` in pool `pool`'s table.
#[inline(always)]
pub fn reply_entry(pool: u32, slot: u32) -> Option<*mut ReplyValue> {
    REPLY_TABLES.get_value_ptr_mut(pool, &slot)
}

/// Flips the entry's `live` word from `from` to `to`; false if another
/// run (or an earlier flow) got there first. A compare-and-swap in BPF
/// assembly: Rust's BPF target offers atomic loads and stores only, while
/// the ISA (v3) has `cmpxchg` and the verifier allows it on map values.
#[inline(always)]
fn flip_live(entry: *mut ReplyValue, from: u64, to: u64) -> bool {
    let mut seen = from;
    // SAFETY: map memory, valid during this run and aligned for a u64;
    // program runs change `live` only through this instruction.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({live} + 0, r0, {to})",
            live = in(reg) core::ptr::addr_of_mut!((*entry).live),
            to = in(reg) to,
            inout("r0") seen,
            options(nostack),
        );
    }
    seen == from
}

/// Takes the least recently released free NAT source towards `backend`
/// from its pool's queue, O(1): a pop, and the claim of the slot's reply
/// entry, which fails if a live flow holds that source (then the next slot
/// is tried and the held one leaves the queue: its flow gives it back when
/// it ends).
#[inline(always)]
pub fn claim_nat_source(
    settings: &Settings,
    backend: &BackendValue,
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
            // Left from a larger pool before a restart, or the marker of
            // the agent's pass through the queue: not ours to use.
            continue;
        }
        let Some(entry) = reply_entry(pool, slot) else {
            continue;
        };
        if !flip_live(entry, reply_claim::FREE, reply_claim::OWN) {
            // A flow sync brought holds it: the source is out of the queue
            // now, taken for that flow, whose end must queue it again.
            if flip_live(entry, reply_claim::OWN_QUEUED, reply_claim::OWN) {
                count_taken(pool);
            }
            continue;
        }
        // SAFETY: as in `flip_live`; the claim makes this run the entry's
        // only writer until the flow ends.
        unsafe {
            *entry = ReplyValue {
                live: reply_claim::OWN,
                ..*back
            }
        };
        return Some(NatSource {
            pool,
            slot,
            snat_index,
            addr: settings.snat_addr(snat_index),
            port: slot_port(slot),
        });
    }
    None
}

/// Undoes a claim whose flow could not be set up: the source goes back
/// to its queue.
#[inline(always)]
pub fn give_back(source: &NatSource) {
    if let Some(entry) = reply_entry(source.pool, source.slot) {
        flip_live(entry, reply_claim::OWN, reply_claim::FREE);
    }
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
    pub lb_port: u16,
    pub port_pool: u32,
}

impl ReplacedSource {
    #[inline(always)]
    pub fn of(flow: &FlowValue) -> Self {
        Self {
            present: 1,
            snat_index: flow.snat_index,
            lb_port: flow.lb_port,
            port_pool: flow.port_pool,
        }
    }
}

/// Frees the reply entry of the ended flow of client key `client` and gives
/// its slot back; without this both would be lost, since the agent never
/// sees that flow again.
#[inline(always)]
pub fn release_replaced(old: &ReplacedSource, client: &FlowKey) {
    if old.present == 0 {
        return;
    }
    let slot = port_slot(old.snat_index, old.lb_port);
    let Some(entry) = reply_entry(old.port_pool, slot) else {
        return;
    };
    // Only that flow's own claim: the agent may have ended the flow and
    // another may hold the source since.
    // SAFETY: as in `flip_live`; a plain read of the claim's key.
    if unsafe { (*entry).client } != *client {
        return;
    }
    if !flip_live(entry, reply_claim::OWN, reply_claim::FREE) {
        // A source still in the queue, or one of the peer's slice: freed
        // here, never queued (again).
        if !flip_live(entry, reply_claim::OWN_QUEUED, reply_claim::FREE) {
            flip_live(entry, reply_claim::PEER, reply_claim::FREE);
        }
        return;
    }
    if let Some(queue) = PORT_QUEUES.get(old.port_pool) {
        if queue.push(slot, 0).is_ok() {
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
