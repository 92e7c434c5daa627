//! Flow sync's side of the data path: new flows and state changes go to a
//! ring buffer, from which the agent replicates them to its HA peer.

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

/// Moves `flow` to `state` and reports a change.
#[inline(always)]
pub fn set_state(settings: &Settings, client: &FlowKey, flow: &mut FlowValue, state: u8) {
    if flow.state != state {
        flow.state = state;
        report(settings, client, flow);
    }
}
