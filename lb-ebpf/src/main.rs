//! XDP full-NAT L4 load balancer: the entry point and per-packet control flow.
//!
//! Layout (after Katran's data path): `parsing` (headers), `lookup` (services,
//! scheduling, ports, conntrack), `nat` (rewrite and checksums), `forward`
//! (route lookup and transmit), `rst` (fast-fail resets), `half_open` (the
//! cap on half-open flows), `sync` (events for the HA peer), `guard` (a
//! dead agent's node gives up the floating addresses), `counters`,
//! `flow_cache` (each CPU's copies of established flows), `clock`, `maps`.
#![no_std]
#![no_main]
// BPF inline assembly (the compare-and-swap in `lookup`).
#![feature(asm_experimental_arch)]

mod clock;
mod counters;
mod flow_cache;
mod forward;
mod guard;
mod half_open;
mod lookup;
mod maps;
mod nat;
mod parsing;
mod ptr;
mod rst;
mod sync;
mod timestamps;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    flow_expired, flow_state, next_state, port_slot, tcp_flags, ts_clock_ms, FlowValue, NextHop,
    PoolKey, Reason, ReplyValue, ServiceKey, Settings,
};

use crate::{
    clock::now_ns,
    counters::{count, count_rejected, count_traffic},
    forward::{forward, DROP, PASS},
    lookup::{
        claim_nat_source, client_key, count_taken, give_back, initial_state, pool_of,
        release_replaced, reply_entry, schedule, track, ReplacedSource,
    },
    maps::{BACKEND_HOPS, FLOWS, SERVICES, SETTINGS},
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
        Err(verdict) => {
            let verdict = guard::other_traffic(ctx, settings, verdict);
            return (verdict.action, verdict.reason);
        }
    };
    // SAFETY: `pkt.eth` was bounds-checked by `parse`; it starts the packet.
    if !settings.accepts_mac(&unsafe { load(core::ptr::addr_of!((*pkt.eth).dst_addr)) }) {
        return (PASS, Reason::PassOtherHost);
    }
    let now = now_ns(settings);
    if pkt.dport >= settings.port_min && pkt.dport <= settings.port_max {
        if let Some(snat_index) = settings.snat_index_of(pkt.dst) {
            return from_backend(ctx, settings, &pkt, port_slot(snat_index, pkt.dport), now);
        }
    }
    // Tracked flows first: the common packet needs one lookup, not two,
    // and none while its flow is in this CPU's cache.
    let client = client_key(&pkt);
    let cache = flow_cache::probe(settings, &pkt, &client);
    if let Some(probe) = &cache {
        if let Some(flow) = flow_cache::find(settings, probe, &client, now) {
            // SAFETY: this CPU's cache slot, valid during this run.
            return to_backend(ctx, settings, &pkt, unsafe { &mut *flow }, now);
        }
    }
    let is_syn =
        pkt.proto == lb_common::PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // Plain zeroed fields, not an Option of a copied entry: the verifier
    // refuses the undefined bytes LLVM would spill for the None case.
    let mut replaced = ReplacedSource::default();
    let mut stale_entry = None;
    if let Some(entry) = FLOWS.get_ptr_mut(&client) {
        // SAFETY: the entry stays valid during this run; fields are plain
        // integers and the program is their only writer.
        let flow = unsafe { &mut *entry };
        if reusable(settings, flow, now, is_syn) {
            let verdict = established(ctx, settings, &pkt, &client, flow, now);
            if let Some(probe) = &cache {
                flow_cache::keep(probe, &client, flow);
            }
            return verdict;
        }
        replaced = ReplacedSource::of(flow);
        stale_entry = Some(entry);
    }
    let key = ServiceKey {
        vip: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once; the agent replaces values whole.
    match unsafe { SERVICES.get(&key) }.copied() {
        Some(service) => new_flow(
            ctx,
            settings,
            &pkt,
            &NewFlow {
                service: &service,
                client: &client,
                replaced: &replaced,
                stale_entry,
                is_syn,
            },
            now,
        ),
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
    client: &lb_common::FlowKey,
    flow: &mut FlowValue,
    now: u64,
) -> (u32, Reason) {
    flow.last_seen_ns = now;
    sync::set_state(
        settings,
        client,
        flow,
        next_state(flow.state, pkt.tcp_flags, false),
    );
    to_backend(ctx, settings, pkt, flow, now)
}

/// NATs and sends a client's packet on its flow (the flow's entry in
/// `flows`, or this CPU's copy of it).
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    settings: &Settings,
    pkt: &Packet,
    flow: &mut FlowValue,
    now: u64,
) -> (u32, Reason) {
    let bytes = pkt.ip_len as u64;
    let snat = settings.snat_addr(flow.snat_index);
    rewrite(
        pkt,
        &Rewrite {
            src: snat,
            dst: flow.backend_addr,
            sport: flow.lb_port,
            dport: flow.backend_port,
        },
    );
    if let Some(ts) = timestamps::find(ctx, pkt) {
        timestamps::to_backend(ctx, pkt, &ts, flow.ts_delta);
    }
    match forward(ctx, pkt, snat, flow.backend_addr, &mut flow.to_backend, now) {
        Ok(action) => {
            count_traffic(flow.service_id, flow.backend_id, bytes, false);
            (action, Reason::ForwardedToBackend)
        }
        Err(reason) => (DROP, reason),
    }
}

/// What `new_flow` needs to know about the packet's connection.
struct NewFlow<'a> {
    service: &'a lb_common::ServiceValue,
    client: &'a lb_common::FlowKey,
    /// The entry of the same client ports that this flow replaces.
    replaced: &'a ReplacedSource,
    /// That entry itself: the new flow is written over it in place, which
    /// spares the LRU map a node allocation and a free.
    stale_entry: Option<*mut FlowValue>,
    is_syn: bool,
}

/// Client -> VIP without a live flow: schedule a backend, claim a NAT
/// source, forward, and track the flow in both directions.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    settings: &Settings,
    pkt: &Packet,
    new: &NewFlow,
    now: u64,
) -> (u32, Reason) {
    if pkt.proto == lb_common::PROTO_TCP && !new.is_syn {
        // Mid-stream segment of a connection we do not know (removed with
        // --now, expired, or never ours): tell the client at once.
        return reject(ctx, pkt, Reason::RstNoFlow, Reason::RstNoFlow);
    }
    let service = new.service;
    let Some((backend_id, backend)) = schedule(service) else {
        count_rejected(service.id);
        return reject(ctx, pkt, Reason::RstNoBackend, Reason::DropNoBackend);
    };
    // The replaced flow is over: its source goes back first, so that a
    // client reusing its ports is served even from a nearly empty pool.
    release_replaced(new.replaced, new.client);
    let timestamps = timestamps::find(ctx, pkt);
    let ts_delta = match &timestamps {
        Some(ts) => timestamps::tsval(ctx, ts).map_or(0, |v| ts_clock_ms(now).wrapping_sub(v)),
        None => 0,
    };
    let back = ReplyValue {
        client: *new.client,
        to_client: NextHop::default(),
        ts_delta,
        service_id: service.id,
        backend_id,
        _pad: 0,
        live: lb_common::reply_claim::OWN,
    };
    let Some(source) = claim_nat_source(settings, &backend, &back) else {
        return (DROP, Reason::DropPortExhausted);
    };
    let mut flow = FlowValue {
        backend_addr: backend.addr,
        backend_port: backend.port,
        lb_port: source.port,
        backend_id,
        service_id: service.id,
        state: initial_state(pkt.proto),
        snat_index: source.snat_index,
        _pad: 0,
        port_pool: source.pool,
        last_seen_ns: now,
        to_backend: NextHop::default(),
        ts_delta,
        _pad_ts: 0,
    };
    if let Some(ts) = &timestamps {
        timestamps::to_backend(ctx, pkt, ts, ts_delta);
    }
    let bytes = pkt.ip_len as u64;
    rewrite(
        pkt,
        &Rewrite {
            src: source.addr,
            dst: backend.addr,
            sport: source.port,
            dport: backend.port,
        },
    );
    let hop_cache = BACKEND_HOPS.get_ptr_mut(backend_id);
    if let Some(cached) = hop_cache {
        // SAFETY: per-CPU slot, only this CPU touches it while we run.
        flow.to_backend = unsafe { *cached };
    }
    // Route first: a flow whose first packet cannot be sent is not
    // recorded, so the client's retransmission starts afresh.
    let action = match forward(
        ctx,
        pkt,
        source.addr,
        backend.addr,
        &mut flow.to_backend,
        now,
    ) {
        Ok(action) => action,
        Err(reason) => {
            give_back(&source);
            return (DROP, reason);
        }
    };
    if let Some(cached) = hop_cache {
        // SAFETY: as above.
        unsafe { *cached = flow.to_backend };
    }
    if let Some(entry) = new.stale_entry {
        // SAFETY: the entry stays valid during this run; the program is
        // its only writer, and the agent deletes only expired entries,
        // after checking that they still are.
        unsafe { *entry = flow };
    } else if !track(new.client, &flow) {
        give_back(&source);
        return (DROP, Reason::DropFlowInsert);
    }
    // No CPU's cached copy of the flow these client ports had can serve
    // any more, so the generation needs no atomic bump here: only
    // established flows are copied, a flow leaves that state through
    // `sync::set_state` (which bumps it), and an established flow is only
    // replaced once idle past `tcp_established`, four times longer than a
    // copy serves. An entry the agent removed ended its copies by the epoch.
    half_open::record(settings, new.client, &flow);
    // No sync event yet: the peer learns of the flow from its first answer
    // (`sync`), so nothing is reported for the unanswered.
    count_taken(source.pool);
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

/// Backend -> NAT source `slot`: translate back to VIP -> client.
#[inline(always)]
fn from_backend(
    ctx: &XdpContext,
    settings: &Settings,
    pkt: &Packet,
    slot: u32,
    now: u64,
) -> (u32, Reason) {
    let endpoint = PoolKey {
        addr: pkt.src,
        port: pkt.sport,
        proto: pkt.proto,
        _pad: 0,
    };
    let Some(pool) = pool_of(&endpoint) else {
        return (PASS, Reason::PassReplyNoFlow);
    };
    let Some(entry) = reply_entry(pool, slot) else {
        return (PASS, Reason::PassReplyNoFlow);
    };
    // SAFETY: the entry stays valid during this run; fields are plain
    // integers and the flow's own packets are the only writers of its
    // next hop.
    let back = unsafe { &mut *entry };
    if back.live == lb_common::reply_claim::FREE {
        return (PASS, Reason::PassReplyNoFlow);
    }
    let client = back.client;
    if touches_flow(pkt) && !refresh_flow(settings, pkt, &client, now) {
        return (PASS, Reason::PassReplyNoFlow);
    }
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
    if let Some(ts) = timestamps::find(ctx, pkt) {
        timestamps::to_client(ctx, pkt, &ts, back.ts_delta);
    }
    match forward(
        ctx,
        pkt,
        client.dst_addr,
        client.src_addr,
        &mut back.to_client,
        now,
    ) {
        Ok(action) => {
            count_traffic(back.service_id, back.backend_id, bytes, false);
            (action, Reason::ForwardedToClient)
        }
        Err(reason) => (DROP, reason),
    }
}

/// Whether a reply changes its flow's state or freshness: TCP segments
/// with SYN, FIN or RST (a backend's plain data and ACKs are followed by
/// the client's ACKs, which keep the flow fresh), and every UDP datagram.
#[inline(always)]
fn touches_flow(pkt: &Packet) -> bool {
    pkt.proto != lb_common::PROTO_TCP
        || pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
}

/// Brings the reply's forward entry up to date; false if the flow is gone
/// or idle past its timeout (the reply is then not ours to forward).
#[inline(always)]
fn refresh_flow(settings: &Settings, pkt: &Packet, client: &lb_common::FlowKey, now: u64) -> bool {
    let Some(entry) = FLOWS.get_ptr_mut(client) else {
        return false;
    };
    // SAFETY: the entry stays valid during this run; fields are plain integers.
    let flow = unsafe { &mut *entry };
    // The entry for these client ports may since belong to another flow:
    // only the one this reply entry was made for matches.
    if flow.lb_port != pkt.dport
        || flow.backend_addr != pkt.src
        || flow.backend_port != pkt.sport
        || flow_expired(settings, flow, now)
    {
        return false;
    }
    flow.last_seen_ns = now;
    sync::set_state(
        settings,
        client,
        flow,
        next_state(flow.state, pkt.tcp_flags, true),
    );
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
