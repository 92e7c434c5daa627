//! Flows between the data path's layouts and the sync wire's records: an
//! event or a table entry becomes a `FlowRecord` (addresses and ports, an
//! age instead of a timestamp), and a peer's record becomes this node's
//! map entries, with this node's own service and backend ids.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_common::{
    flow_state, reply_claim, FlowEvent, FlowKey, FlowValue, NextHop, ReplyValue, Settings,
};
use lb_sync::{FlowRecord, RecordKind};

/// The record of `event` (a flow as the program last changed it), `now_ns`
/// on the program's clock.
pub(crate) fn record_of(
    event: &FlowEvent,
    settings: &Settings,
    now_ns: u64,
    kind: RecordKind,
) -> FlowRecord {
    let client = &event.client;
    let age_ns = now_ns.saturating_sub(event.at_ns);
    FlowRecord {
        kind,
        proto: client.proto,
        state: event.state,
        client: v4(client.src_addr, client.src_port),
        vip: v4(client.dst_addr, client.dst_port),
        backend: v4(event.backend_addr, event.backend_port),
        snat: v4(settings.snat_addr(event.snat_index), event.lb_port),
        age_ms: u32::try_from(age_ns / 1_000_000).unwrap_or(u32::MAX),
        ts_delta: event.ts_delta,
    }
}

fn v4(addr: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(addr)), port)
}

fn octets(endpoint: &SocketAddr) -> Option<[u8; 4]> {
    match endpoint.ip() {
        IpAddr::V4(addr) => Some(addr.octets()),
        IpAddr::V6(_) => None,
    }
}

/// Why a peer's record was not installed (each counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// An address family this node's data path does not carry yet.
    Family,
    /// No service here at the record's VIP, port and protocol (the two
    /// nodes' configs differ).
    UnknownService,
    /// The service has no backend at that address and port here.
    UnknownBackend,
    /// The NAT source address is not in this node's SNAT pool: backends
    /// would answer the other node (no floating `snat_address`).
    ForeignSnat,
    /// A state code the data path does not know.
    BadState,
    /// This node's flow table is full.
    TableFull,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Family => "family",
            Refusal::UnknownService => "unknown_service",
            Refusal::UnknownBackend => "unknown_backend",
            Refusal::ForeignSnat => "foreign_snat",
            Refusal::BadState => "bad_state",
            Refusal::TableFull => "table_full",
        }
    }
}

/// A backend as this node knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalBackend {
    pub id: u32,
    pub service_id: u32,
    pub port_pool: u32,
}

/// What this node's maps say about services and backends, for turning
/// peers' records into entries.
#[derive(Debug, Default, Clone)]
pub(crate) struct LocalView {
    /// (VIP, port, protocol) -> service id.
    pub services: HashMap<([u8; 4], u16, u8), u32>,
    /// (service id, address, port) -> backend.
    pub backends: HashMap<(u32, [u8; 4], u16), LocalBackend>,
}

/// The entries a peer's flow becomes here: the forward entry under its
/// client key and the reply entry that holds its NAT source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entries {
    pub client: FlowKey,
    pub flow: FlowValue,
    /// Where the reply entry goes: this node's pool of the backend and the
    /// NAT source's slot.
    pub pool: u32,
    pub slot: u32,
    pub reply: ReplyValue,
}

/// Whether a flow state code is one the data path uses.
fn known_state(state: u8) -> bool {
    (flow_state::TCP_HANDSHAKE..=flow_state::UDP_REPLIED).contains(&state)
}

/// This node's entries for `record`. `own_slot(index, port)`: whether the
/// NAT source belongs to this node's own port slice, so that it returns to
/// this node's pool when the flow ends (a source from the peer's slice
/// must never be handed out here).
pub(crate) fn entries_of(
    record: &FlowRecord,
    view: &LocalView,
    settings: &Settings,
    now_ns: u64,
    own_slot: impl Fn(u8, u16) -> Option<u32>,
) -> Result<Entries, Refusal> {
    let addrs = (
        octets(&record.client),
        octets(&record.vip),
        octets(&record.backend),
        octets(&record.snat),
    );
    let (Some(client_addr), Some(vip), Some(backend_addr), Some(snat)) = addrs else {
        return Err(Refusal::Family);
    };
    if !known_state(record.state) {
        return Err(Refusal::BadState);
    }
    let service_id = *view
        .services
        .get(&(vip, record.vip.port(), record.proto))
        .ok_or(Refusal::UnknownService)?;
    let backend = *view
        .backends
        .get(&(service_id, backend_addr, record.backend.port()))
        .ok_or(Refusal::UnknownBackend)?;
    let snat_index = snat_index(settings, snat).ok_or(Refusal::ForeignSnat)?;
    let lb_port = record.snat.port();
    let client = FlowKey {
        src_addr: client_addr,
        dst_addr: vip,
        src_port: record.client.port(),
        dst_port: record.vip.port(),
        proto: record.proto,
        _pad: [0; 3],
    };
    let flow = FlowValue {
        backend_addr,
        backend_port: record.backend.port(),
        lb_port,
        backend_id: backend.id,
        service_id,
        state: record.state,
        snat_index,
        _pad: 0,
        port_pool: backend.port_pool,
        last_seen_ns: now_ns.saturating_sub(u64::from(record.age_ms) * 1_000_000),
        to_backend: NextHop::default(),
        ts_delta: record.ts_delta,
        _pad_ts: 0,
    };
    let slot = lb_common::port_slot(snat_index, lb_port);
    // A source of the peer's slice must never be queued here; one of this
    // node's own is in its queue while free here (`SyncMaps::install`
    // keeps the claim this node already has).
    let live = match own_slot(snat_index, lb_port) {
        Some(_) => reply_claim::OWN_QUEUED,
        None => reply_claim::PEER,
    };
    Ok(Entries {
        client,
        flow,
        pool: backend.port_pool,
        slot,
        reply: ReplyValue {
            live,
            ..ReplyValue::of(client, &flow)
        },
    })
}

fn snat_index(settings: &Settings, addr: [u8; 4]) -> Option<u8> {
    let count = (settings.snat_count as usize).min(lb_common::MAX_SNAT_ADDRESSES);
    settings.snat_addrs[..count]
        .iter()
        .position(|a| *a == addr)
        .and_then(|i| u8::try_from(i).ok())
}

/// The pool and slot of the reply entry a forward entry's flow holds.
pub(crate) fn reply_slot_of(flow: &FlowValue) -> (u32, u32) {
    (
        flow.port_pool,
        lb_common::port_slot(flow.snat_index, flow.lb_port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::PROTO_TCP;

    const SNAT: [u8; 4] = [10, 200, 0, 10];

    fn settings() -> Settings {
        let mut settings = Settings::default();
        settings.snat_addrs[0] = [10, 200, 0, 11];
        settings.snat_addrs[1] = SNAT;
        settings.snat_count = 2;
        settings
    }

    fn event() -> FlowEvent {
        FlowEvent {
            client: FlowKey {
                src_addr: [10, 100, 0, 10],
                dst_addr: [10, 100, 0, 100],
                src_port: 40000,
                dst_port: 80,
                proto: PROTO_TCP,
                _pad: [0; 3],
            },
            backend_addr: [10, 200, 0, 22],
            backend_port: 8080,
            lb_port: 20001,
            ts_delta: 77,
            state: flow_state::TCP_ESTABLISHED,
            snat_index: 1,
            _pad: 0,
            at_ns: 5_000_000_000,
        }
    }

    /// The peer's view: same services and backends under other ids.
    fn peer_view() -> LocalView {
        let mut view = LocalView::default();
        view.services.insert(([10, 100, 0, 100], 80, PROTO_TCP), 7);
        view.backends.insert(
            (7, [10, 200, 0, 22], 8080),
            LocalBackend {
                id: 42,
                service_id: 7,
                port_pool: 3,
            },
        );
        view
    }

    #[test]
    fn a_flow_crosses_to_the_peer_with_its_age_and_the_peers_ids() {
        let record = record_of(&event(), &settings(), 5_250_000_000, RecordKind::Upsert);
        assert_eq!(record.age_ms, 250);
        assert_eq!(record.snat, "10.200.0.10:20001".parse().expect("addr"));
        let now_on_peer = 90_000_000_000;
        let entries = entries_of(&record, &peer_view(), &settings(), now_on_peer, |_, _| {
            Some(0)
        })
        .expect("installs");
        assert_eq!(entries.client, event().client);
        let flow = entries.flow;
        assert_eq!(
            (flow.backend_id, flow.service_id, flow.port_pool),
            (42, 7, 3)
        );
        assert_eq!((flow.snat_index, flow.lb_port), (1, 20001));
        assert_eq!(flow.last_seen_ns, now_on_peer - 250_000_000);
        assert_eq!(flow.state, flow_state::TCP_ESTABLISHED);
        assert_eq!(flow.ts_delta, 77);
        assert_eq!((entries.pool, entries.slot), reply_slot_of(&flow));
        assert_eq!(entries.reply.live, reply_claim::OWN_QUEUED);
        assert_eq!(entries.reply.client, entries.client);
        assert_eq!(entries.reply.backend_id, 42);
    }

    #[test]
    fn a_source_of_the_peers_slice_never_joins_a_pool_here() {
        let record = record_of(&event(), &settings(), 5_000_000_000, RecordKind::Upsert);
        let entries =
            entries_of(&record, &peer_view(), &settings(), 1, |_, _| None).expect("installs");
        // Its reply entry sits in the backend's table here, marked so that
        // neither the program nor the agent queues the source when it ends.
        assert_eq!(entries.pool, 3);
        assert_eq!(entries.reply.live, reply_claim::PEER);
    }

    #[test]
    fn records_this_node_cannot_serve_are_refused_with_a_reason() {
        let good = record_of(&event(), &settings(), 5_000_000_000, RecordKind::Upsert);
        let own = |_: u8, _: u16| Some(0);
        let refused = |record: FlowRecord| {
            entries_of(&record, &peer_view(), &settings(), 1, own).expect_err("refused")
        };
        let mut other_vip = good;
        other_vip.vip = "10.100.0.101:80".parse().expect("addr");
        assert_eq!(refused(other_vip), Refusal::UnknownService);
        let mut other_backend = good;
        other_backend.backend = "10.200.0.23:8080".parse().expect("addr");
        assert_eq!(refused(other_backend), Refusal::UnknownBackend);
        let mut foreign = good;
        foreign.snat = "10.200.0.12:20001".parse().expect("addr");
        assert_eq!(refused(foreign), Refusal::ForeignSnat);
        let mut v6 = good;
        v6.client = "[2001:db8::1]:40000".parse().expect("addr");
        assert_eq!(refused(v6), Refusal::Family);
        let mut state = good;
        state.state = 99;
        assert_eq!(refused(state), Refusal::BadState);
    }
}
