//! The cap on half-open flows, against SYN floods and spoofed UDP.
//!
//! Each CPU records the flows it opens in a ring of
//! `Settings::half_open_per_cpu` slots. A new flow takes the slot the
//! CPU's cursor has come round to; if the flow recorded there before is
//! still half-open (`flow_state::is_half_open`: no completed handshake, no
//! answer), that flow ends, both entries and its NAT source. So half-open
//! flows never hold more than their share of the table and of the NAT
//! ports, a flood of spoofed sources only ever displaces other half-open
//! flows, and established connections stay. A real client's handshake
//! gives way only if more new flows than the ring holds reach its CPU
//! within its round trip.
//!
//! Chosen over SYN cookies in XDP: a cookie proxy would have to answer for
//! the backend and shift every later segment's sequence numbers, on the
//! hot path of every connection; the ring costs one per-CPU slot per new
//! flow and leaves the backend's own SYN cookies to guard the backend.

use lb_common::{
    flow_state::is_half_open, FlowKey, FlowValue, HalfOpenEntry, Settings, HALF_OPEN_SLOTS,
};

use crate::{
    lookup::{release_replaced, ReplacedSource},
    maps::{FLOWS, HALF_OPEN, HALF_OPEN_CURSORS},
};

/// Records a flow this CPU has just opened in the slot its cursor has come
/// round to, first ending the half-open flow recorded there before, unless
/// that flow is the one this flow replaced in place.
#[inline(always)]
pub fn record(settings: &Settings, client: &FlowKey, flow: &FlowValue) {
    let Some(cursor) = HALF_OPEN_CURSORS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while we run.
    let cursor = unsafe { &mut *cursor };
    // Kept below the ring's length instead of taken modulo it: a division
    // costs a new flow as much as a map lookup. A cursor left past a ring
    // made shorter (a reload) starts over.
    let len = ring_len(settings);
    let mut index = cursor.next;
    if index >= len {
        index = 0;
    }
    cursor.next = if index + 1 == len { 0 } else { index + 1 };
    let Some(slot) = HALF_OPEN.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: per-CPU slot, as above; read in place (the program's stack
    // has no room for a copy).
    let recorded = unsafe { &mut *slot };
    if recorded.client.proto != 0 && recorded.client != *client && end_if_half_open(recorded) {
        cursor.evicted = cursor.evicted.wrapping_add(1);
    }
    *recorded = HalfOpenEntry {
        client: *client,
        lb_port: flow.lb_port,
        snat_index: flow.snat_index,
        _pad: 0,
        port_pool: flow.port_pool,
    };
}

#[inline(always)]
fn ring_len(settings: &Settings) -> u32 {
    let wanted = settings.half_open_per_cpu;
    if wanted == 0 || wanted > HALF_OPEN_SLOTS {
        HALF_OPEN_SLOTS
    } else {
        wanted
    }
}

/// Ends the recorded flow if its entry still holds that flow (same NAT
/// source; a later flow of the same client ports has another) and it is
/// still half-open.
#[inline(always)]
fn end_if_half_open(recorded: &HalfOpenEntry) -> bool {
    let Some(entry) = FLOWS.get_ptr(&recorded.client) else {
        return false;
    };
    // SAFETY: the entry stays valid until removed below; fields are plain
    // integers. Read before the removal, which frees the element.
    let flow = unsafe { &*entry };
    if !is_half_open(flow.state)
        || flow.lb_port != recorded.lb_port
        || flow.snat_index != recorded.snat_index
        || flow.port_pool != recorded.port_pool
    {
        return false;
    }
    let source = ReplacedSource::of(flow);
    // Only the one who removes the entry ends the flow: the agent's expiry
    // may be at it too.
    if FLOWS.remove(&recorded.client).is_err() {
        return false;
    }
    release_replaced(&source, &recorded.client);
    true
}
