//! XDP full-NAT L4 load balancer: the entry point and per-packet control flow.
//!
//! Layout (after Katran's data path): `parsing` (headers), `lookup` (services,
//! scheduling, ports, conntrack), `nat` (rewrite and checksums), `forward`
//! (route lookup and transmit), `rst` (fast-fail resets), `counters`, `clock`,
//! `maps`.
#![no_std]
#![no_main]

mod clock;
mod counters;
mod forward;
mod lookup;
mod maps;
mod nat;
mod parsing;
mod ptr;
mod rst;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    flow_expired, flow_state, next_state, FlowValue, NextHop, Reason, ServiceKey, Settings,
};

use crate::{
    clock::now_ns,
    counters::{count, count_rejected, count_traffic},
    forward::{forward, DROP, PASS},
    lookup::{allocate_port, client_key, initial_state, reply_key, schedule, track},
    maps::{FLOWS, REPLIES, SERVICES, SETTINGS},
    nat::{rewrite, Rewrite},
    parsing::{parse, Packet, TCP_ACK, TCP_SYN},
    ptr::load,
    rst::reply_rst,
};

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    count(reason);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let Some(settings) = SETTINGS.get(0) else {
        return (PASS, Reason::PassNotReady);
    };
    if settings.ready == 0 {
        return (PASS, Reason::PassNotReady);
    }
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return (verdict.action, verdict.reason),
    };
    // SAFETY: `pkt.eth` was bounds-checked by `parse`; it starts the packet.
    if !settings.accepts_mac(&unsafe { load(core::ptr::addr_of!((*pkt.eth).dst_addr)) }) {
        return (PASS, Reason::PassOtherHost);
    }
    let now = now_ns(settings);
    if pkt.dst == settings.lb_addr
        && pkt.dport >= settings.port_min
        && pkt.dport <= settings.port_max
    {
        return from_backend(ctx, settings, &pkt, now);
    }
    // Tracked flows first: the common packet needs one lookup, not two.
    let client = client_key(&pkt);
    let is_syn =
        pkt.proto == lb_common::PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(entry) = FLOWS.get_ptr_mut(&client) {
        // SAFETY: the entry stays valid during this run; fields are plain
        // integers and the program is their only writer.
        let flow = unsafe { &mut *entry };
        if reusable(settings, flow, now, is_syn) {
            return established(ctx, settings, &pkt, flow, now);
        }
    }
    let key = ServiceKey {
        vip: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once; the agent replaces values whole.
    match unsafe { SERVICES.get(&key) }.copied() {
        Some(service) => new_flow(ctx, settings, &pkt, &service, &client, is_syn, now),
        None => (PASS, Reason::PassNotService),
    }
}

#[inline(always)]
fn reject(
    ctx: &XdpContext,
    pkt: &Packet,
    rst_reason: Reason,
    drop_reason: Reason,
) -> (u32, Reason) {
    if pkt.proto == lb_common::PROTO_TCP {
        if let Some(action) = reply_rst(ctx, pkt) {
            return (action, rst_reason);
        }
    }
    (DROP, drop_reason)
}

/// Client -> VIP on a tracked flow: NAT towards its backend.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    settings: &Settings,
    pkt: &Packet,
    flow: &mut FlowValue,
    now: u64,
) -> (u32, Reason) {
    flow.last_seen_ns = now;
    flow.state = next_state(flow.state, pkt.tcp_flags, false);
    let bytes = pkt.ip_len as u64;
    rewrite(
        pkt,
        &Rewrite {
            src: settings.lb_addr,
            dst: flow.backend_addr,
            sport: flow.lb_port,
            dport: flow.backend_port,
        },
    );
    match forward(
        ctx,
        pkt,
        settings.lb_addr,
        flow.backend_addr,
        &mut flow.to_backend,
        now,
    ) {
        Ok(action) => {
            count_traffic(flow.service_id, flow.backend_id, bytes, false);
            (action, Reason::ForwardedToBackend)
        }
        Err(reason) => (DROP, reason),
    }
}

/// Client -> VIP without a live flow: schedule a backend, allocate a NAT
/// port, forward, and track the flow in both directions.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    settings: &Settings,
    pkt: &Packet,
    service: &lb_common::ServiceValue,
    client: &lb_common::FlowKey,
    is_syn: bool,
    now: u64,
) -> (u32, Reason) {
    if pkt.proto == lb_common::PROTO_TCP && !is_syn {
        // Mid-stream segment of a connection we do not know (removed with
        // --now, expired, or never ours): tell the client at once.
        return reject(ctx, pkt, Reason::RstNoFlow, Reason::RstNoFlow);
    }
    let Some((backend_id, backend)) = schedule(service) else {
        count_rejected(service.id);
        return reject(ctx, pkt, Reason::RstNoBackend, Reason::DropNoBackend);
    };
    let Some(lb_port) = allocate_port(settings, &backend, pkt.proto, now) else {
        return (DROP, Reason::DropPortExhausted);
    };
    let mut flow = FlowValue {
        backend_addr: backend.addr,
        backend_port: backend.port,
        lb_port,
        backend_id,
        service_id: service.id,
        state: initial_state(pkt.proto),
        _pad: [0; 7],
        last_seen_ns: now,
        to_backend: NextHop::default(),
        to_client: NextHop::default(),
    };
    let bytes = pkt.ip_len as u64;
    rewrite(
        pkt,
        &Rewrite {
            src: settings.lb_addr,
            dst: backend.addr,
            sport: lb_port,
            dport: backend.port,
        },
    );
    // Route first: a flow whose first packet cannot be sent is not
    // recorded, so the client's retransmission starts afresh.
    let action = match forward(
        ctx,
        pkt,
        settings.lb_addr,
        backend.addr,
        &mut flow.to_backend,
        now,
    ) {
        Ok(action) => action,
        Err(reason) => return (DROP, reason),
    };
    let reply = reply_key(&backend, settings, lb_port, pkt.proto);
    if !track(client, &flow, &reply) {
        return (DROP, Reason::DropFlowInsert);
    }
    count_traffic(service.id, backend_id, bytes, true);
    (action, Reason::ForwardedToBackend)
}

/// A tracked entry carries on unless it is idle past its timeout, or the
/// client opens a new connection on the same ports after the old one closed.
#[inline(always)]
fn reusable(settings: &Settings, flow: &FlowValue, now: u64, is_syn: bool) -> bool {
    if flow_expired(settings, flow, now) {
        return false;
    }
    !(is_syn && flow.state == flow_state::TCP_CLOSING)
}

/// Backend -> LB port: translate back to VIP -> client.
#[inline(always)]
fn from_backend(ctx: &XdpContext, settings: &Settings, pkt: &Packet, now: u64) -> (u32, Reason) {
    let reply = client_key(pkt);
    // SAFETY: copied out at once.
    let Some(client) = (unsafe { REPLIES.get(&reply) }).map(|r| r.client) else {
        return (PASS, Reason::PassReplyNoFlow);
    };
    let Some(entry) = FLOWS.get_ptr_mut(&client) else {
        return (PASS, Reason::PassReplyNoFlow);
    };
    // SAFETY: the entry stays valid during this run; fields are plain integers.
    let flow = unsafe {
        let flow = &mut *entry;
        // An entry for the same client ports may since belong to another
        // backend or port: only the flow this reply key points at matches.
        if flow.lb_port != pkt.dport
            || flow.backend_addr != pkt.src
            || flow.backend_port != pkt.sport
            || flow_expired(settings, flow, now)
        {
            return (PASS, Reason::PassReplyNoFlow);
        }
        flow.last_seen_ns = now;
        flow.state = next_state(flow.state, pkt.tcp_flags, true);
        flow
    };

    let bytes = pkt.ip_len as u64;
    rewrite(
        pkt,
        &Rewrite {
            src: client.dst_addr,
            dst: client.src_addr,
            sport: client.dst_port,
            dport: client.src_port,
        },
    );
    match forward(
        ctx,
        pkt,
        client.dst_addr,
        client.src_addr,
        &mut flow.to_client,
        now,
    ) {
        Ok(action) => {
            count_traffic(flow.service_id, flow.backend_id, bytes, false);
            (action, Reason::ForwardedToClient)
        }
        Err(reason) => (DROP, reason),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
