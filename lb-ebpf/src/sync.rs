//! Flow sync's side of the data path: state changes go to a ring buffer,
//! from which the agent replicates them to its HA peer.
//!
//! A flow is first reported when the backend answers it (TCP's SYN-ACK,
//! UDP's first reply), not at its first packet. Until then a failover loses
//! nothing the peer could keep: the client's retransmission (of a SYN whose
//! answer went to the failed node, or of an unanswered datagram) opens the
//! flow afresh on the new master. And a flood of spoofed or unanswered
//! first packets then costs the sync ring, the link and the peer nothing,
//! while every connection's opening costs one event less.

use lb_common::{FlowEvent, FlowKey, FlowValue, Settings};

use crate::maps::{FLOW_EVENTS, FLOW_EVENTS_LOST};

/// Reports `flow` (as it is now) to the agent, when sync is on. A full ring
/// loses the event, counted: the flow goes on, only its copy on the peer
/// misses this change until the next refresh.
#[inline(always)]
pub fn report(settings: &Settings, client: &FlowKey, flow: &FlowValue) {
    if settings.sync_events == 0 {
        return;
    }
    // Written in place in the ring: no copy on the stack first.
    match FLOW_EVENTS.reserve(0) {
        Some(mut entry) => {
            entry.write(FlowEvent::of(client, flow));
            entry.submit(0);
        }
        None => {
            if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, only this CPU writes it while we run.
                unsafe { *lost += 1 };
            }
        }
    }
}

/// Moves `flow` to `state` and reports a change (to the peer, and to the
/// CPUs' flow caches, whose copies it ends).
#[inline(always)]
pub fn set_state(settings: &Settings, client: &FlowKey, flow: &mut FlowValue, state: u8) {
    if flow.state != state {
        flow.state = state;
        crate::flow_cache::changed(client);
        report(settings, client, flow);
    }
}
