//! The benchmark's references, built with the balancer and measured in the
//! same run by `cargo xtask bench`:
//!
//! - `trivial`: the least an XDP program can do to bounce a packet (swap
//!   MACs, XDP_TX). The balancer's cost is reported as a multiple of it.
//! - `conntrack_floor`: only the connection tracking that a new flow needs
//!   in this design (a forward and a reply entry in two LRU hash maps with
//!   the balancer's key and value layouts, the reply keyed by a random NAT
//!   port), then XDP_TX. No parsing, scheduling, route lookup or rewrite:
//!   what no new flow can cost less than.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::HashMap,
    helpers::generated::bpf_get_prandom_u32,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{FlowKey, FlowValue, ReplyValue, DEFAULT_MAX_FLOWS, PROTO_TCP};

const MAC_LEN: usize = 6;
const FLOWS_MAX: usize = DEFAULT_MAX_FLOWS as usize;
/// The benchmark's NAT port range (`xdp-bench`).
const PORT_MIN: u32 = 20000;
const PORT_SPAN: u32 = 40001;

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

/// Same names and kinds as the balancer's maps, so the benchmark sizes them alike.
#[btf_map(name = "flows")]
static FLOWS: HashMap<FlowKey, FlowValue, FLOWS_MAX> = HashMap::new();

#[btf_map(name = "replies")]
static REPLIES: HashMap<FlowKey, ReplyValue, FLOWS_MAX> = HashMap::new();

#[xdp]
pub fn conntrack_floor(_ctx: XdpContext) -> u32 {
    // The benchmark's new-flow frame: one client, a fresh random NAT port.
    let client = FlowKey {
        src_addr: [10, 100, 0, 10],
        dst_addr: [10, 100, 0, 100],
        src_port: 39999,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    // SAFETY: helper without preconditions.
    let port = PORT_MIN + unsafe { bpf_get_prandom_u32() } % PORT_SPAN;
    let reply = FlowKey {
        src_addr: [10, 100, 0, 100],
        dst_addr: [10, 100, 0, 10],
        src_port: 80,
        dst_port: port as u16,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let flow = FlowValue {
        lb_port: port as u16,
        ..FlowValue::default()
    };
    if FLOWS.insert(&client, &flow, 0).is_err()
        || REPLIES
            .insert(&reply, &ReplyValue::of(client, &FlowValue::default()), 0)
            .is_err()
    {
        return xdp_action::XDP_DROP;
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
