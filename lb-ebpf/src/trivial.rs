//! The benchmark's reference: the least an XDP program can do to bounce a
//! packet (swap MACs, XDP_TX). `cargo xtask bench` reports the balancer's
//! cost as a multiple of this program's, measured in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

const MAC_LEN: usize = 6;

#[xdp]
pub fn trivial(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 2 * MAC_LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let macs = start as *mut [u8; 2 * MAC_LEN];
    // SAFETY: bounds-checked above.
    unsafe {
        let old = *macs;
        let mut swapped = [0u8; 2 * MAC_LEN];
        swapped[..MAC_LEN].copy_from_slice(&old[MAC_LEN..]);
        swapped[MAC_LEN..].copy_from_slice(&old[..MAC_LEN]);
        *macs = swapped;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
