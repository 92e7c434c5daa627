//! Flow sync's own handles on the pinned maps: it reads events and the
//! flow table and installs the peer's flows without taking the agent's
//! lock (the program and the agent's sweep tolerate a writer beside them:
//! every entry is replaced whole).

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, Queue, RingBuf};
use lb_common::{
    flow_expired, map_names, reply_claim, BackendValue, FlowEvent, FlowKey, FlowValue, ReplyValue,
    ServiceKey, ServiceValue, Settings,
};
use lb_sync::FlowRecord;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::records::{entries_of, reply_slot_of, Entries, LocalBackend, LocalView, Refusal};
use crate::dataplane::{
    batch, pins,
    port_pools::{take_held_out, Held, PoolNote, SlotLayout},
    reply_tables::{PinnedInner, PinnedReplyTables},
    DataplaneError,
};

/// How long the view of services and backends is trusted before a record
/// that names an unknown one makes it read again.
const VIEW_TTL: Duration = Duration::from_secs(1);

/// What installing a peer's record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The flow is in both tables.
    Flow,
    /// A deletion removed the flow.
    Removed,
    /// Nothing to do: a deletion of a flow this node does not have, or a
    /// record older than what this node has seen of the flow itself.
    Unchanged,
}

pub(crate) struct SyncMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    replies: PinnedReplyTables,
    queues: PinnedInner<Queue<MapData, u32>>,
    /// Pools given claims on sources still in their queues
    /// (`OWN_QUEUED`) since the last pass through them.
    queued_claims: BTreeSet<u32>,
    /// To the agent, which owns the queues' accounting.
    notes: mpsc::Sender<PoolNote>,
    notes_lost: u64,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: Array<MapData, BackendValue>,
    settings: Array<MapData, Settings>,
    lost: PerCpuArray<MapData, u64>,
    flow_cache_epoch: Array<MapData, u32>,
    layout: SlotLayout,
    view: LocalView,
    view_read: Option<Instant>,
}

fn open(dir: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let data = MapData::from_pin(pins::map_pin(dir, name)).map_err(DataplaneError::map(name))?;
    Ok(match name {
        map_names::FLOW_EVENTS => Map::RingBuf(data),
        map_names::BACKENDS | map_names::SETTINGS | map_names::FLOW_CACHE_EPOCH => Map::Array(data),
        map_names::FLOW_EVENTS_LOST => Map::PerCpuArray(data),
        // Read as the ids of the maps they hold (`PinnedInner`).
        map_names::REPLY_TABLES | map_names::PORT_QUEUES => Map::Array(data),
        _ => Map::HashMap(data),
    })
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open($dir, $name)?
            .try_into()
            .map_err(DataplaneError::map($name))?
    };
}

/// The event ring of the instance pinned at `dir`.
pub(crate) fn event_ring(dir: &Path) -> Result<RingBuf<MapData>, DataplaneError> {
    Ok(typed!(dir, map_names::FLOW_EVENTS))
}

impl SyncMaps {
    /// Opens the maps pinned at `dir`; `layout`: this node's own NAT
    /// sources (its port slice); `notes`: where the agent learns of the
    /// sources flow sync gives back or takes out of their queues.
    pub(crate) fn open(
        dir: &Path,
        layout: SlotLayout,
        notes: mpsc::Sender<PoolNote>,
    ) -> Result<Self, DataplaneError> {
        use map_names::*;
        Ok(Self {
            flows: typed!(dir, FLOWS),
            replies: PinnedReplyTables::new(typed!(dir, REPLY_TABLES)),
            queues: PinnedInner::new(typed!(dir, PORT_QUEUES), Map::Queue),
            queued_claims: BTreeSet::new(),
            notes,
            notes_lost: 0,
            services: typed!(dir, SERVICES),
            backends: typed!(dir, BACKENDS),
            settings: typed!(dir, SETTINGS),
            lost: typed!(dir, FLOW_EVENTS_LOST),
            flow_cache_epoch: typed!(dir, FLOW_CACHE_EPOCH),
            layout,
            view: LocalView::default(),
            view_read: None,
        })
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings.get(&0, 0).unwrap_or_default()
    }

    /// Events the program could not write to a full ring, so far.
    pub(crate) fn events_lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|values| values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
            .unwrap_or(0)
    }

    /// Every answered flow of the table as the event that would describe
    /// it now: a full transfer's content (the unanswered are not reported,
    /// as the program does not report them). Batched reads (a million flows
    /// in a fraction of a second); key by key on kernels without them.
    pub(crate) fn table(&self) -> Vec<FlowEvent> {
        use aya::maps::IterableMap;
        let answered: Vec<(FlowKey, FlowValue)> = batch::read_all(
            self.flows.map(),
            |(_, flow): &(FlowKey, FlowValue)| !lb_common::flow_state::is_unanswered(flow.state),
            || self.flows.iter().filter_map(Result::ok).collect(),
        );
        answered
            .iter()
            .map(|(key, flow)| FlowEvent::of(key, flow))
            .collect()
    }

    fn refresh_view(&mut self) {
        let mut view = LocalView::default();
        for (key, service) in self.services.iter().filter_map(Result::ok) {
            view.services
                .insert((key.vip, key.port, key.proto), service.id);
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let Ok(backend) = self.backends.get(&id, 0) else {
                continue;
            };
            if backend.addr == [0; 4] {
                continue;
            }
            view.backends.insert(
                (backend.service_id, backend.addr, backend.port),
                LocalBackend {
                    id,
                    service_id: backend.service_id,
                    port_pool: backend.port_pool,
                },
            );
        }
        self.view = view;
        self.view_read = Some(Instant::now());
    }

    /// Installs (or removes) the peer's flow `record`.
    pub(crate) fn install(
        &mut self,
        record: &FlowRecord,
        now_ns: u64,
    ) -> Result<Installed, Refusal> {
        if self.view_read.is_none() {
            self.refresh_view();
        }
        let settings = self.settings();
        let entries = match self.entries(record, &settings, now_ns) {
            Err(Refusal::UnknownService | Refusal::UnknownBackend)
                if self.view_read.is_some_and(|at| at.elapsed() > VIEW_TTL) =>
            {
                // A service or backend added since the view was read.
                self.refresh_view();
                self.entries(record, &settings, now_ns)?
            }
            other => other?,
        };
        let current = self.flows.get(&entries.client, 0).ok();
        if record.kind == lb_sync::RecordKind::Delete {
            return Ok(self.remove(&entries.client, current, &entries.flow, &settings, now_ns));
        }
        if let Some(current) = current {
            if current.last_seen_ns > entries.flow.last_seen_ns {
                // This node has seen the flow (or a newer one on these
                // client ports) more recently than the record: the peer's
                // older view, e.g. its refresh after this node took the
                // flows back, must not roll the state back.
                return Ok(Installed::Unchanged);
            }
            let (old_pool, old_slot) = reply_slot_of(&current);
            if (old_pool, old_slot) != (entries.pool, entries.slot) {
                self.end_claim(old_pool, old_slot, &entries.client);
            }
        }
        let mut reply = entries.reply;
        if reply.live == reply_claim::OWN_QUEUED {
            let here = self.replies.get(entries.pool, entries.slot);
            reply.live = claim_brought(here.as_ref(), &entries.client);
        }
        // Reply entry first: from the moment the forward entry exists the
        // program may forward, and the backend's answer needs the way back.
        if !self.replies.write(entries.pool, entries.slot, &reply) {
            // The backend's pool has no table yet (it is being made).
            return Err(Refusal::UnknownBackend);
        }
        if self.flows.insert(entries.client, entries.flow, 0).is_err() {
            self.end_claim(entries.pool, entries.slot, &entries.client);
            return Err(Refusal::TableFull);
        }
        if reply.live == reply_claim::OWN_QUEUED {
            self.queued_claims.insert(entries.pool);
        }
        if current.is_some() {
            self.end_flow_cache_copies();
        }
        Ok(Installed::Flow)
    }

    fn entries(
        &self,
        record: &FlowRecord,
        settings: &Settings,
        now_ns: u64,
    ) -> Result<Entries, Refusal> {
        let own = |index: u8, port: u16| {
            let slot = lb_common::port_slot(index, port);
            self.layout.contains(slot).then_some(slot)
        };
        entries_of(record, &self.view, settings, now_ns, own)
    }

    fn remove(
        &mut self,
        client: &FlowKey,
        current: Option<FlowValue>,
        doomed: &FlowValue,
        settings: &Settings,
        now_ns: u64,
    ) -> Installed {
        let Some(current) = current.filter(|c| deletion_applies(c, doomed, settings, now_ns))
        else {
            return Installed::Unchanged;
        };
        let _ = self.flows.remove(client);
        let (pool, slot) = reply_slot_of(&current);
        self.end_claim(pool, slot, client);
        self.end_flow_cache_copies();
        Installed::Removed
    }

    /// Ends the claim of the flow of `client` on `slot` of `pool`; a
    /// source this node's flow held outright goes back to its queue
    /// through the agent.
    fn end_claim(&mut self, pool: u32, slot: u32, client: &FlowKey) {
        if self.replies.end_claim(pool, slot, client) == Some(reply_claim::OWN) {
            self.tell(PoolNote::Released { pool, slot });
        }
    }

    fn tell(&mut self, note: PoolNote) {
        if self.notes.try_send(note).is_err() {
            // The agent is far behind (or gone): a released source stays
            // out of its queue, counted taken, until a restart.
            self.notes_lost += 1;
            if self.notes_lost == 1 {
                warn!(?note, "flow sync: the agent took no news of NAT sources; a source may be lost to its pool");
            }
        }
    }

    /// Whether flows sync brought hold sources still in their queues.
    pub(crate) fn has_queued_claims(&self) -> bool {
        !self.queued_claims.is_empty()
    }

    /// Takes the sources that flows sync brought hold out of their pools'
    /// queues, so that no new flow here meets them there: one pass through
    /// each pool's queue that got such claims (the rest keep their order).
    /// Done before this node leads after a full transfer, and whenever
    /// later records brought such claims.
    pub(crate) fn take_held_sources_out(&mut self) {
        let pools = std::mem::take(&mut self.queued_claims);
        for pool in pools {
            let claims: StdHashMap<u32, u64> = self
                .replies
                .claims(pool)
                .into_iter()
                .map(|(slot, entry)| (slot, entry.live))
                .collect();
            let Some(queue) = self.queues.get(pool) else {
                continue;
            };
            let replies = &mut self.replies;
            let passed = take_held_out(queue, &claims, |slot, live| {
                if live != reply_claim::OWN_QUEUED {
                    // Held outright: a copy that should not be queued.
                    return Held::Dropped;
                }
                // Read again: the flow may have ended since the claims were.
                match replies.get(pool, slot) {
                    Some(entry) if entry.live == reply_claim::OWN_QUEUED => {
                        let owned = ReplyValue {
                            live: reply_claim::OWN,
                            ..entry
                        };
                        if replies.write(pool, slot, &owned) {
                            Held::TakenOut
                        } else {
                            Held::Free
                        }
                    }
                    Some(entry) if entry.live == reply_claim::FREE => Held::Free,
                    _ => Held::Dropped,
                }
            });
            match passed {
                Ok(0) => {}
                Ok(count) => {
                    info!(
                        pool,
                        count,
                        "flow sync: NAT sources the peer's flows hold left their pool's queue"
                    );
                    self.tell(PoolNote::TakenOut { pool, count });
                }
                Err(error) => {
                    // Left to the program, which takes such sources out as
                    // it meets them.
                    warn!(pool, %error, "flow sync: a pass through a NAT source queue stopped");
                }
            }
        }
    }

    /// A flow this node had was rewritten or removed: copies of it in the
    /// CPUs' flow caches end (a failure leaves them their short life).
    fn end_flow_cache_copies(&mut self) {
        if let Err(error) =
            crate::dataplane::maps::end_flow_cache_copies(&mut self.flow_cache_epoch)
        {
            tracing::warn!(%error, "could not end the flow cache's copies at once");
        }
    }
}

/// The claim to write for a flow of this node's slice that flow sync
/// brings, given the reply entry `here` of its source: the flow's own
/// claim stands as it is (in the queue or not); a source no flow holds
/// sits in its queue (or will: a pool still filling, a release on its
/// way), so the flow holds it `OWN_QUEUED`; one another flow holds
/// outright is out of the queue, so the new flow holds it `OWN`.
pub(crate) fn claim_brought(here: Option<&ReplyValue>, client: &FlowKey) -> u64 {
    match here {
        Some(entry)
            if entry.client == *client
                && matches!(entry.live, reply_claim::OWN | reply_claim::OWN_QUEUED) =>
        {
            entry.live
        }
        Some(entry) if entry.live == reply_claim::OWN || entry.live == reply_claim::PEER => {
            reply_claim::OWN
        }
        _ => reply_claim::OWN_QUEUED,
    }
}

/// How much later than a record says this node may place a flow's last
/// packet without having seen a newer one: ages cross the wire in whole
/// milliseconds and are read on arrival, so a record waiting in the socket
/// behind a full transfer or a burst reads older than the entry an earlier
/// record of the same packet made.
const AGE_SLACK_NS: u64 = 1_000_000_000;

/// Whether the peer's deletion of `doomed` ends `current`, this node's
/// entry under the same client key, at `now_ns`. Not when it is another
/// flow, when this node has seen the flow after the peer last did, or when
/// the peer gave up on a copy that had gone stale while the flow lives
/// here (a backup expiring what it was not refreshed of must never end the
/// master's flow; the slack above alone would let it, near the timeout).
pub(crate) fn deletion_applies(
    current: &FlowValue,
    doomed: &FlowValue,
    settings: &Settings,
    now_ns: u64,
) -> bool {
    if !same(current, doomed) {
        return false;
    }
    if current.last_seen_ns > doomed.last_seen_ns.saturating_add(AGE_SLACK_NS) {
        return false;
    }
    let stale_copy = flow_expired(settings, doomed, now_ns);
    !stale_copy || flow_expired(settings, current, now_ns)
}

/// Whether two entries are one flow: same backend and NAT source.
fn same(a: &FlowValue, b: &FlowValue) -> bool {
    a.backend_addr == b.backend_addr
        && a.backend_port == b.backend_port
        && a.lb_port == b.lb_port
        && a.snat_index == b.snat_index
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::flow_state;

    const SECOND: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            tcp_established_ns: 900 * SECOND,
            udp_ns: 60 * SECOND,
            ..Settings::default()
        }
    }

    fn flow(last_seen_ns: u64) -> FlowValue {
        FlowValue {
            backend_addr: [10, 200, 0, 22],
            backend_port: 8080,
            lb_port: 20001,
            state: flow_state::UDP,
            snat_index: 1,
            last_seen_ns,
            ..FlowValue::default()
        }
    }

    #[test]
    fn a_deletion_ends_the_flow_as_the_peer_last_saw_it() {
        let now = 1_000 * SECOND;
        let here = flow(now - 5 * SECOND);
        assert!(deletion_applies(&here, &here, &settings(), now));
        // The same packet, read a little later here than the record says.
        let read_late = flow(now - 5 * SECOND - 300_000_000);
        assert!(deletion_applies(&here, &read_late, &settings(), now));
        // The peer saw more of the flow than this node.
        assert!(deletion_applies(
            &here,
            &flow(now - SECOND),
            &settings(),
            now
        ));
    }

    #[test]
    fn a_deletion_older_than_what_this_node_saw_changes_nothing() {
        let now = 1_000 * SECOND;
        let here = flow(now - SECOND);
        let peers_older_view = flow(now - 20 * SECOND);
        assert!(!deletion_applies(
            &here,
            &peers_older_view,
            &settings(),
            now
        ));
    }

    #[test]
    fn the_peer_expiring_its_stale_copy_never_ends_a_live_flow_here() {
        let now = 1_000 * SECOND;
        let stale_copy = flow(now - 60 * SECOND);
        // Seen here within the slack of the copy, yet still live.
        let live = flow(now - 60 * SECOND + 1);
        assert!(!deletion_applies(&live, &stale_copy, &settings(), now));
        // Expired here as well: the deletion merely beats this node's sweep.
        let expired = flow(now - 61 * SECOND);
        assert!(deletion_applies(&expired, &stale_copy, &settings(), now));
    }

    #[test]
    fn a_deletion_of_another_flow_on_the_client_ports_changes_nothing() {
        let now = 1_000 * SECOND;
        let here = flow(now - 5 * SECOND);
        let other = FlowValue {
            lb_port: 20002,
            ..here
        };
        assert!(!deletion_applies(&here, &other, &settings(), now));
    }

    fn entry(client: FlowKey, live: u64) -> ReplyValue {
        ReplyValue {
            client,
            live,
            ..ReplyValue::default()
        }
    }

    fn client(port: u16) -> FlowKey {
        FlowKey {
            src_addr: [10, 100, 0, 10],
            dst_addr: [10, 100, 0, 100],
            src_port: port,
            dst_port: 80,
            proto: lb_common::PROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn a_flow_sync_brings_keeps_the_claim_this_node_has_or_marks_its_queued_source() {
        let ours = client(40000);
        // This node's own flow: its claim stands, in the queue or out.
        for live in [reply_claim::OWN, reply_claim::OWN_QUEUED] {
            assert_eq!(claim_brought(Some(&entry(ours, live)), &ours), live);
        }
        // A free source is in its queue.
        assert_eq!(claim_brought(None, &ours), reply_claim::OWN_QUEUED);
        assert_eq!(
            claim_brought(Some(&entry(client(1), reply_claim::FREE)), &ours),
            reply_claim::OWN_QUEUED
        );
        // Another flow's source: out of the queue when held outright, in
        // it when that flow's claim said so.
        assert_eq!(
            claim_brought(Some(&entry(client(1), reply_claim::OWN)), &ours),
            reply_claim::OWN
        );
        assert_eq!(
            claim_brought(Some(&entry(client(1), reply_claim::OWN_QUEUED)), &ours),
            reply_claim::OWN_QUEUED
        );
    }
}
