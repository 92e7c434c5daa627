//! Per-CPU counters: why a packet was handled as it was, and traffic per
//! service and backend. Per-CPU slots need no atomics.

use lb_common::Reason;

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    let new = new_flow as u64;
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            (*stats).new_flows += new;
        }
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            (*stats).new_flows += new;
        }
    }
}

/// Counts a new connection refused because the service had no backend up.
#[inline(always)]
pub fn count_rejected(service_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*stats).rejected += 1 };
    }
}
