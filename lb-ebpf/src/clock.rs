//! The program's clock: jiffies scaled to nanoseconds when the agent has
//! calibrated it (`Settings::tick_ns`), the coarse clock helper otherwise.
//! Either resolution (one tick) is ample for idle timeouts and route-cache
//! ages; the jiffies read costs a load, the helper a call and return.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use lb_common::Settings;

/// Now, in nanoseconds of CLOCK_MONOTONIC.
#[inline(always)]
pub fn now_ns(settings: &Settings) -> u64 {
    // SAFETY: helpers without preconditions; the verifier inlines jiffies.
    match settings.ticks_to_ns(unsafe { bpf_jiffies64() }) {
        Some(now) => now,
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}
