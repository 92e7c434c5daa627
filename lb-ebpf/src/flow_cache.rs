//! Each CPU's cache of established flows: a copy of the flow's entry in a
//! per-CPU array slot, which the verifier inlines, so that a flow's common
//! packets skip the `flows` hash lookup (three kernel calls: hashing, the
//! bucket walk and the key compare, each with a return that CPUs with
//! return mitigations make dear).
//!
//! A copy is only good while nothing changed its flow. A state change in
//! either direction, on any CPU, moves the flow's generation on
//! (`changed`); the agent moves its epoch on when it removes or rewrites
//! live flows itself. A copy also serves only `flow_cache_ttl_ns` (at most
//! a quarter of the established timeout), after which the packet takes
//! the hash lookup again, which refreshes the flow's `last_seen_ns` for
//! the agent's expiry and makes a new copy; so a flow that is replaced or
//! expired for having been idle a whole timeout has no copy left. Only
//! plain TCP segments of established flows use it: SYN, FIN and RST always
//! go to the hash.

use lb_common::{
    flow_cache_slots, flow_state, FlowCacheEntry, FlowKey, FlowValue, Settings, PROTO_TCP,
};

use crate::{
    maps::{FLOW_CACHE, FLOW_CACHE_EPOCH, FLOW_GENERATIONS},
    parsing::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Where a packet's flow is cached, and the generation and epoch read
/// before its entry in `flows`: a copy made from that entry carries them,
/// so a change made after the read ends the copy at once.
pub struct Probe {
    slot: u32,
    generation: u32,
    epoch: u32,
}

/// The cache probe for `pkt`, or None when the cache is off or the packet
/// may change its flow (not a plain TCP segment).
#[inline(always)]
pub fn probe(settings: &Settings, pkt: &Packet, key: &FlowKey) -> Option<Probe> {
    if settings.flow_cache_ttl_ns == 0
        || pkt.proto != PROTO_TCP
        || pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
    {
        return None;
    }
    let (slot, generation_index) = flow_cache_slots(key);
    let generation = FLOW_GENERATIONS.get_ptr(generation_index)?;
    let epoch = FLOW_CACHE_EPOCH.get_ptr(0)?;
    // SAFETY: array map values, valid during this run; volatile so that
    // the reads stay before the `flows` lookup that follows them.
    unsafe {
        Some(Probe {
            slot,
            generation: core::ptr::read_volatile(generation),
            epoch: core::ptr::read_volatile(epoch),
        })
    }
}

/// This CPU's copy of the flow of `key`, if it is still good.
#[inline(always)]
pub fn find(settings: &Settings, probe: &Probe, key: &FlowKey, now: u64) -> Option<*mut FlowValue> {
    let entry = FLOW_CACHE.get_ptr_mut(probe.slot)?;
    // SAFETY: per-CPU slot, only this CPU touches it while we run.
    let cached = unsafe { &mut *entry };
    if cached.key != *key
        || cached.generation != probe.generation
        || cached.epoch != probe.epoch
        || now.wrapping_sub(cached.flow.last_seen_ns) >= settings.flow_cache_ttl_ns
    {
        return None;
    }
    Some(core::ptr::addr_of_mut!(cached.flow))
}

/// Copies an established flow, just looked up in `flows`, into this CPU's
/// cache.
#[inline(always)]
pub fn keep(probe: &Probe, key: &FlowKey, flow: &FlowValue) {
    if flow.state != flow_state::TCP_ESTABLISHED {
        return;
    }
    if let Some(entry) = FLOW_CACHE.get_ptr_mut(probe.slot) {
        // SAFETY: per-CPU slot, only this CPU touches it while we run.
        unsafe {
            *entry = FlowCacheEntry {
                key: *key,
                flow: *flow,
                generation: probe.generation,
                epoch: probe.epoch,
            }
        };
    }
}

/// Ends every CPU's copy of the flow of `key`: called after the change to
/// its entry in `flows` is written.
#[inline(always)]
pub fn changed(key: &FlowKey) {
    let (_, generation_index) = flow_cache_slots(key);
    if let Some(generation) = FLOW_GENERATIONS.get_ptr_mut(generation_index) {
        // SAFETY: array map value, valid during this run and aligned for a
        // u32. An atomic add: two CPUs changing flows of one generation
        // at once must both move it on.
        unsafe {
            core::arch::asm!(
                "lock *(u32 *)({generation} + 0) += {one}",
                generation = in(reg) generation,
                one = in(reg) 1u32,
                options(nostack),
            );
        }
    }
}
