//! `lb-pass`: an XDP program that passes every frame. The lab attaches it
//! to the far ends of the LB nodes' veths in native mode, because a veth
//! only delivers frames another veth sent it with native XDP_TX or
//! XDP_REDIRECT when an XDP program runs on it (that sets up the receive
//! queue those frames go to); without one they are dropped.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
